// SPDX-License-Identifier: MIT
//
// The local backend's mindspaces, for machines without the llmos module.
//
// A store is a folder (default /dev/shm/llmos, on tmpfs) shared by every
// process of the machine:
//
//   ms/ID            one file per mindspace: a 4096-byte header (the saved-
//                    mindspace header, llmos/ms_file.hh) then its bytes; the
//                    file's owner and mode are the mindspace's, its sticky
//                    bit says it is persistent, its set-group-ID bit that
//                    its create has not finished
//   by-name/NAME     symlink to ../ms/ID, made by the mindspace's owner
//   next-id          the id counter, updated under flock; made with the
//                    store by its owner
//
// A store root makes is shared: its folders are sticky and writable by
// everyone, like /tmp. Anyone else's is theirs alone (0700). In a shared
// store any user can add files and links, so none is trusted: a name is
// followed only through a link of the mindspace's owner or root, to a
// mindspace whose header bears the name; ms/ files are opened without
// following links or blocking and must be plain files; ids already taken
// are passed over, and neither the counter nor files far past the ids in
// use can use the ids up; the counter's lock is waited for 2 s at most.
// Names change (a link checked, removed, made) only under an exclusive
// flock of by-name/, waited for 2 s at most.
//
// Whoever may write a mindspace may rewrite its header, so what only its
// owner decides is in the file's mode: persistence (a header's flag only
// keeps a mindspace, as holding it would), and whether a create finished.
// A name whose owner's link leads to a header bearing another name is
// refused as damaged and stays taken.
//
// Each process that has a mindspace open holds a read lock (an OFD lock:
// a mapping keeps the file, and so the lock) on its file, and a shared
// flock where it can (which an earlier version's processes see). A reader
// can take no lock that keeps others out: the write lock needs a
// descriptor open for writing, and opens wait 2 s at most for it (EBUSY).
// A mindspace that is not persistent and whose file nobody holds is
// removed by the next open, info, list or create that comes across it (of
// its owner or root, under the write lock: others leave it, gone to them);
// so is a file whose create died, once a minute old. tmpfs keeps the bytes
// until then, and until the machine restarts; holes stay unallocated.
#pragma once

#include <llmos/device.hh>
#include <llmos/mindspace.hh>

namespace llmos::local {

constexpr uint64_t data_offset = 4096;

/// Creates the store's folders if needed; returns the store folder.
result<unique_fd> open_store(const std::string& dir);
abi_version version() noexcept;

struct opened {
    unique_fd fd;
    ms_info info;
};

result<opened> create(int store, const ms_create_options& o);
result<opened> open(int store, const ms_key& key, bool read_only);
result<ms_info> info(int fd, uint64_t id);
result<ms_info> info(int store, const ms_key& key);
std::error_code destroy(int store, const ms_key& key);
result<std::vector<ms_info>> list(int store);

} // namespace llmos::local
