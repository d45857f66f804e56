// SPDX-License-Identifier: MIT
#include "local.hh"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <linux/llmos.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

namespace llmos::local {

namespace {

constexpr uint64_t max_length = uint64_t{1} << 44;
// Ids create tries before it gives up on finding a free one (each try past
// the last: only files put there by hand take ids the counter hands out).
constexpr int max_create_tries = 8;
// How a mindspace's file is opened: never through a link, and never
// blocking (a FIFO put in ms/ would block a reader).
constexpr int ms_open_flags = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
// A lock another process holds is waited for this many tries, a
// millisecond apart (2 s), then given up on: a holder that never lets go
// stalls the caller, never for good.
constexpr int lock_tries = 2000;
// The widest gap between two ids in use that is taken for a run of ids
// create handed out: an id further past the others (a file or a counter
// value that somebody put there) is not built upon, so that nobody can
// make create run out of ids.
constexpr uint64_t max_id_gap = uint64_t{1} << 32;
// A file create left unfinished (its mode still says so) that nobody
// holds is removed by its owner once it is this old: its creator died.
constexpr time_t unfinished_age_s = 60;
// The mode bits of a mindspace's file that are not its mode: only its owner
// (or root) may set them, unlike the header, which every writer may change.
// Persistent: kept when nobody holds it. Unfinished: made by a create that
// has not set its mode yet (without S_IXGRP, writing the file keeps it).
constexpr mode_t persistent_bit = S_ISVTX;
constexpr mode_t unfinished_bit = S_ISGID;

std::error_code einval() {
    return std::make_error_code(std::errc::invalid_argument);
}

std::error_code enoent() {
    return std::make_error_code(std::errc::no_such_file_or_directory);
}

std::error_code sys_error(int e) {
    return {e, std::system_category()};
}

std::string ms_path(uint64_t id) {
    return "ms/" + std::to_string(id);
}

std::optional<uint64_t> parse_id(std::string_view s) {
    uint64_t id = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
    if (ec != std::errc{} || end != s.data() + s.size() || id == 0) {
        return std::nullopt;
    }
    return id;
}

uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

/// Calls `try_lock` (a lock taken without blocking: 0, or -1 and errno)
/// until it succeeds, for 2 s at most. Errors: EBUSY past that, those of
/// `try_lock` other than its lock being held.
template <typename TryLock>
std::error_code wait_for_lock(TryLock try_lock) {
    for (int tries = 0; try_lock() != 0; ++tries) {
        if (errno != EWOULDBLOCK && errno != EAGAIN && errno != EACCES && errno != EINTR) {
            return last_error();
        }
        if (tries >= lock_tries) {
            return sys_error(EBUSY);
        }
        ::usleep(1000);
    }
    return {};
}

// A mindspace's file is locked with open file description locks (fcntl
// F_OFD_*: they belong to the open file, as flock's do, so a mapping keeps
// them). Unlike flock, their write lock needs a descriptor open for
// writing: a user who may only read a mindspace can take the read lock,
// which keeps nobody from opening it, never the write lock.

/// Takes an OFD lock (F_RDLCK, F_WRLCK) of all of `fd`'s file without
/// blocking: 0, or -1 and errno (EAGAIN: another holds it).
int ofd_lock(int fd, short type) {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    return ::fcntl(fd, F_OFD_SETLK, &fl);
}

/// Whether another open file than `fd`'s holds a lock of its file: an OFD
/// lock, or a flock (an earlier version's holders hold a shared flock).
/// True where it cannot tell. Takes an exclusive flock of `fd` meanwhile,
/// which it keeps where nobody else holds the file.
bool held_by_others(int fd) {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0 || fl.l_type != F_UNLCK) {
        return true;
    }
    return ::flock(fd, LOCK_EX | LOCK_NB) != 0;
}

/// Holds the file at `fd` (a read lock, waited for 2 s at most: EBUSY),
/// which keeps it from being removed while this open file or a mapping of
/// it lasts. Also a shared flock where it can be had at once, which
/// processes of an earlier version (which know only flock) see.
std::error_code hold(int fd) {
    if (auto ec = wait_for_lock([fd] { return ofd_lock(fd, F_RDLCK); })) {
        return ec;
    }
    (void)::flock(fd, LOCK_SH | LOCK_NB);
    return {};
}

/// Whether a mindspace's file is persistent: its mode says so, or (for
/// files of an earlier version, which kept it there only) its header. A
/// writer can set the header's flag, which only keeps a mindspace as
/// holding it would; clearing the flag changes nothing the mode says.
bool persistent(const struct stat& st, const ms_file_meta& m) {
    return (st.st_mode & persistent_bit) || (m.flags & LLMOS_MS_PERSISTENT);
}

/// Whether a file of ms/ is one that a create left unfinished long enough
/// ago that its creator is surely gone (its mtime: the creator's writes
/// and the file's making set it, only its owner may set it back).
bool unfinished_long_ago(const struct stat& st) {
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    return (st.st_mode & unfinished_bit) && now.tv_sec - st.st_mtim.tv_sec > unfinished_age_s;
}

// Whether users other than the store's owner may add to it: root's store
// made by the library, the tmpfiles entry's, or one an administrator made
// for a group.
bool shared_store(const struct stat& st) {
    return (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
}

// A folder `mode` (01777: every user may add to it and only owners remove
// from it, like /tmp; 0700: its maker's alone).
std::error_code make_dir(int at, const char* name, mode_t mode) {
    if (::mkdirat(at, name, mode) != 0) {
        return errno == EEXIST ? std::error_code{} : last_error();
    }
    if (::fchmodat(at, name, mode, 0) != 0) { // past the umask
        return last_error();
    }
    return {};
}

// The path of what `fd` (an O_PATH descriptor too) refers to, for the calls
// that take only a path (chmod of the very file that was checked).
std::string fd_path(int fd) {
    return "/proc/self/fd/" + std::to_string(fd);
}

// A folder of the store must be the caller's or root's: a user who made it
// first could otherwise put links and files of theirs where the caller
// writes. One that others may write to must be sticky: the caller's own
// (a mkdir under umask 002) is made so.
std::error_code check_dir(int fd) {
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        return last_error();
    }
    if (!S_ISDIR(st.st_mode)) {
        return sys_error(ENOTDIR);
    }
    if (st.st_uid != ::geteuid() && st.st_uid != 0) {
        return sys_error(EPERM);
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
        if (st.st_uid != ::geteuid()) {
            return sys_error(EPERM);
        }
        // (Through the descriptor: the folder that was checked.)
        if (::chmod(fd_path(fd).c_str(), (st.st_mode & 07777) | S_ISVTX) != 0) {
            return last_error();
        }
    }
    return {};
}

// Makes the id counter of a store of the caller's, if it has none: every
// user of a shared store takes ids from it.
std::error_code make_counter(int store, const struct stat& dir) {
    const mode_t mode = shared_store(dir) ? 0666 : 0600;
    unique_fd fd{::openat(store, "next-id", O_RDWR | O_CREAT | O_EXCL | ms_open_flags, mode)};
    if (!fd) {
        return errno == EEXIST ? std::error_code{} : last_error();
    }
    if (::fchmod(fd.get(), mode) != 0) { // past the umask
        return last_error();
    }
    return {};
}

/// The top of the ids in use: the highest id of the files in ms/ reached
/// from 0 in steps of at most max_id_gap (0: none). Files further up (put
/// there by hand, or by another user of a shared store) are left out: a
/// file named 18446744073709551615 does not use the store's ids up.
result<uint64_t> highest_id(int store) {
    unique_fd dfd{::openat(store, "ms", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)};
    DIR* d = dfd ? ::fdopendir(dfd.get()) : nullptr;
    if (!d) {
        return last_error();
    }
    (void)dfd.release(); // closedir closes it
    std::vector<uint64_t> ids;
    while (auto* e = ::readdir(d)) {
        if (auto id = parse_id(e->d_name)) {
            ids.push_back(*id);
        }
    }
    ::closedir(d);
    std::sort(ids.begin(), ids.end());
    uint64_t top = 0;
    for (uint64_t id : ids) {
        if (id - top > max_id_gap) {
            break;
        }
        top = id;
    }
    return top;
}

/// The counter's value, where it is one this library wrote: a number and a
/// newline (nothing: a counter just made).
std::optional<uint64_t> parse_counter(std::string_view s) {
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || std::string_view(end, s.data() + s.size()) != "\n") {
        return std::nullopt;
    }
    return v;
}

/// An id to create, past `floor`: the counter's next, or, where the store
/// has no counter the caller may trust or another process holds its lock
/// for more than 2 s, the one past the top of the ids in use. A counter
/// that is not a number, or is far past the top of the ids in use, is set
/// back to that top. Never 0: an id that would wrap is refused (EOVERFLOW).
/// `counter`: whether to use the counter; set to false when its lock was
/// held too long (the caller's next try does without it at once).
result<uint64_t> next_id(int store, uint64_t floor, bool& counter) {
    struct stat dir;
    if (::fstat(store, &dir) != 0) {
        return last_error();
    }
    auto past = [](uint64_t id) -> result<uint64_t> {
        if (id == UINT64_MAX) {
            return std::make_error_code(std::errc::value_too_large);
        }
        return id + 1;
    };
    auto past_highest = [&]() -> result<uint64_t> {
        auto top = highest_id(store);
        if (!top) {
            return top.error();
        }
        return past(std::max(*top, floor));
    };
    if (!counter) {
        return past_highest();
    }
    // Not through a link (symbolic or hard), only a plain file.
    unique_fd fd{::openat(store, "next-id", O_RDWR | ms_open_flags)};
    if (!fd && errno == ENOENT && dir.st_uid == ::geteuid()) {
        if (auto ec = make_counter(store, dir)) {
            return ec;
        }
        fd.reset(::openat(store, "next-id", O_RDWR | ms_open_flags));
    }
    if (!fd) {
        // None (its store's owner has not opened the store since it went).
        return errno == ENOENT ? past_highest() : last_error();
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) {
        return last_error();
    }
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
        return sys_error(EPERM);
    }
    if (st.st_uid != ::geteuid() && st.st_uid != 0 && st.st_uid != dir.st_uid) {
        // Another user's (made before the store's owner made one): its owner
        // could keep the others from creating. Not used.
        return past_highest();
    }
    // Every user of a shared store may lock it: one who holds it for long
    // does not keep the others from creating (O_EXCL keeps ids apart).
    if (auto ec = wait_for_lock([&] { return ::flock(fd.get(), LOCK_EX | LOCK_NB); })) {
        if (ec != std::errc::device_or_resource_busy) {
            return ec;
        }
        counter = false;
        return past_highest();
    }
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof(buf) - 1, 0);
    if (n < 0) {
        return last_error();
    }
    auto last = parse_counter({buf, static_cast<size_t>(n)});
    // Checked against the ids in use only when it could be far past them.
    if (!last || *last > max_id_gap) {
        auto top = highest_id(store);
        if (!top) {
            return top.error();
        }
        if (!last || (*last > *top && *last - *top > max_id_gap)) {
            last = *top;
        }
    }
    auto id = past(std::max(*last, floor));
    if (!id) {
        return id.error();
    }
    auto s = std::to_string(*id) + "\n";
    if (::pwrite(fd.get(), s.data(), s.size(), 0) != static_cast<ssize_t>(s.size()) ||
        ::ftruncate(fd.get(), static_cast<off_t>(s.size())) != 0) {
        return last_error();
    }
    return id;
}

/// Checks that `fd` is a mindspace's file: one plain file (not a FIFO, a
/// folder or a link that another user or a mistake put in ms/), still in
/// ms/. Makes it blocking again.
result<unique_fd> checked_ms_file(unique_fd fd) {
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) {
        return last_error();
    }
    if (!S_ISREG(st.st_mode) || st.st_nlink > 1) {
        return errc::local_ms_damaged;
    }
    if (st.st_nlink == 0) {
        return enoent(); // just removed
    }
    int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) != 0) {
        return last_error();
    }
    return fd;
}

/// Opens ms/ID with `flags` (O_RDONLY or O_RDWR). Errors: those of open(2)
/// (ENOENT, EACCES), errc::local_ms_damaged for anything but a plain file.
result<unique_fd> open_ms(int store, uint64_t id, int flags) {
    unique_fd fd{::openat(store, ms_path(id).c_str(), flags | ms_open_flags)};
    if (!fd) {
        // A symbolic link, a socket, a folder opened for writing.
        if (errno == ELOOP || errno == ENXIO || errno == EISDIR) {
            return errc::local_ms_damaged;
        }
        return last_error();
    }
    return checked_ms_file(std::move(fd));
}

/// Opens ms/ID with `flags` (O_RDONLY, or O_RDWR: to take its write
/// lock), as open_ms, and also when it is the caller's and its mode does
/// not let its owner do so: the module lets an owner list and destroy
/// theirs whatever the mode, and the local backend must read the header
/// (and lock the file) to know whether it may remove it. The owner grants
/// itself the access (which nobody else gains from) for as long as opening
/// takes, through the descriptor of the file checked.
result<unique_fd> open_own_ms(int store, uint64_t id, int flags) {
    auto fd = open_ms(store, id, flags);
    if (fd || fd.error() != std::errc::permission_denied) {
        return fd;
    }
    unique_fd path{::openat(store, ms_path(id).c_str(), O_PATH | O_CLOEXEC | O_NOFOLLOW)};
    struct stat st;
    if (!path || ::fstat(path.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != ::geteuid()) {
        return fd.error();
    }
    const std::string self = fd_path(path.get());
    const mode_t want = flags == O_RDWR ? S_IRUSR | S_IWUSR : S_IRUSR;
    // A mode that lets its owner in is left as it is (another process of
    // the owner may be granting itself access: its mode is not ours to keep).
    const mode_t was = st.st_mode & 07777;
    const bool grant = (was & want) != want;
    if (grant && ::chmod(self.c_str(), was | want) != 0) {
        return fd.error();
    }
    // (Not O_NOFOLLOW: the path is /proc's link to the file checked.)
    unique_fd r{::open(self.c_str(), flags | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)};
    const int err = errno;
    // Put back, unless its owner changed the mode meanwhile.
    if (struct stat now;
        grant && ::fstat(path.get(), &now) == 0 && (now.st_mode & 07777) == (was | want)) {
        (void)::chmod(self.c_str(), was);
    }
    if (!r) {
        return sys_error(err);
    }
    return checked_ms_file(std::move(r));
}

result<ms_file_meta> read_header(int fd) {
    ms_file_header h;
    ssize_t n = ::pread(fd, h.data(), h.size(), 0);
    if (n < 0) {
        return last_error();
    }
    if (static_cast<size_t>(n) != h.size()) {
        return errc::local_ms_damaged;
    }
    // Not a header of this format (whatever the reason: the file is not
    // one this library can serve, and its owner may remove it).
    auto m = decode_ms_file_header(h);
    if (!m || !valid_ms_name(m->name)) {
        return errc::local_ms_damaged;
    }
    // Its bytes must all be there: mapping a shorter file gives SIGBUS
    // (the header is writable by whoever may write the mindspace).
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        return last_error();
    }
    if (m->length > max_length || static_cast<uint64_t>(st.st_size) < data_offset + m->length) {
        return errc::local_ms_damaged;
    }
    return m;
}

/// A new, empty ms/ID file, held (a read lock) before its header makes it
/// a mindspace: another process that lists or opens meanwhile must not
/// take it for a forgotten one, nor destroy it (EBUSY). Made with the
/// unfinished bit in its mode, which create clears when it sets the mode:
/// one whose creator died before is removed by its owner later on.
struct new_ms_file {
    unique_fd fd;
    uint64_t id = 0;
};

result<new_ms_file> make_ms_file(int store) {
    // Past ids taken by files that another user, or a counter set back,
    // put where the counter's next would go.
    uint64_t floor = 0;
    bool counter = true;
    for (int tries = 1;; ++tries) {
        auto id = next_id(store, floor, counter);
        if (!id) {
            return id.error();
        }
        const auto path = ms_path(*id);
        // (The umask leaves the unfinished bit: it takes only 0777's.)
        unique_fd fd{::openat(store, path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
                              unfinished_bit | 0600)};
        if (!fd) {
            if (errno != EEXIST || tries == max_create_tries) {
                return last_error();
            }
            // The next id past the one taken and the run of ids in use
            // it is part of (not past files far further up).
            auto top = highest_id(store);
            floor = std::max(*id, top ? *top : 0);
            continue;
        }
        struct stat st;
        if (auto ec = hold(fd.get()); ec || ::fstat(fd.get(), &st) != 0) {
            int err = ec ? ec.value() : errno;
            (void)::unlinkat(store, path.c_str(), 0);
            return sys_error(err);
        }
        if (st.st_nlink != 0) {
            return new_ms_file{std::move(fd), *id};
        }
        // Destroyed by id before it was held: another id.
        if (tries == max_create_tries) {
            return std::make_error_code(std::errc::file_exists);
        }
        floor = *id;
    }
}

/// by-name/NAME: the id it links to and the link's owner.
struct name_link {
    uint64_t id = 0;
    uid_t owner = 0;
};

result<name_link> read_link(int store, const std::string& name) {
    if (!valid_ms_name(name) || name.empty()) {
        return einval();
    }
    // The link itself, so that its owner and its target are of one link.
    unique_fd fd{::openat(store, ("by-name/" + name).c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC)};
    struct stat st;
    if (!fd || ::fstat(fd.get(), &st) != 0) {
        return last_error();
    }
    if (!S_ISLNK(st.st_mode)) {
        return errc::local_ms_damaged;
    }
    char target[64];
    ssize_t n = ::readlinkat(fd.get(), "", target, sizeof(target));
    if (n < 0) {
        return last_error();
    }
    std::string_view t{target, static_cast<size_t>(n)};
    if (t.substr(0, 6) != "../ms/") {
        return errc::local_ms_damaged;
    }
    auto id = parse_id(t.substr(6));
    if (!id) {
        return errc::local_ms_damaged;
    }
    return name_link{*id, st.st_uid};
}

/// The id a key stands for, and for a name, the link's owner.
struct resolved {
    uint64_t id = 0;
    std::optional<uid_t> link_owner;
};

result<resolved> resolve(int store, const ms_key& key) {
    if (key.id) {
        return resolved{key.id, std::nullopt};
    }
    auto l = read_link(store, key.name);
    if (!l) {
        return l.error();
    }
    return resolved{l->id, l->owner};
}

/// Whether a name's link may be followed to a file of `file_owner`'s: a
/// link only its owner or root made (in a shared store, any user may add
/// a link to any mindspace).
bool trusted_link(const resolved& r, uid_t file_owner) {
    return !r.link_owner || *r.link_owner == file_owner || *r.link_owner == 0;
}

/// Whether the mindspace at `fd` is the one `key` names: by id, any; by
/// name, one whose header bears the name, through a link its owner or
/// root made. Errors: ENOENT for a link of another user's, or one left to
/// a mindspace that bears another name (its owner's link of that name
/// leads to it); errc::local_ms_damaged where the owner's link leads to a
/// mindspace whose header bears another name that no link of the owner's
/// confirms: a writer may have rewritten the header, and the name stays
/// that mindspace's (never another's, never free) until its owner removes
/// it by id.
std::error_code check_named(int store, int fd, const ms_key& key, const resolved& r,
                            const std::string& header_name) {
    if (!r.link_owner) {
        return {};
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        return last_error();
    }
    if (!trusted_link(r, st.st_uid)) {
        return enoent();
    }
    if (header_name == key.name) {
        return {};
    }
    if (!header_name.empty()) {
        auto own = read_link(store, header_name);
        if (own && own->id == r.id && trusted_link({own->id, own->owner}, st.st_uid)) {
            return enoent();
        }
    }
    return errc::local_ms_damaged;
}

/// Holds the store's names lock: a flock on by-name/, which every change of
/// a name (checking a link and removing it, making one) is made under, so
/// that two processes cannot both take one name. No lock of a mindspace's
/// file may be waited for while it is held (reap and destroy take theirs
/// without waiting; open and create take theirs before it). In a
/// shared store any user may take it too: it is waited for 2 s at most,
/// then EBUSY (a holder that never lets go stalls name changes, never a
/// caller for good).
result<unique_fd> lock_names(int store) {
    unique_fd fd{::openat(store, "by-name", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)};
    if (!fd) {
        return last_error();
    }
    if (auto ec = wait_for_lock([&] { return ::flock(fd.get(), LOCK_EX | LOCK_NB); })) {
        return ec;
    }
    return fd;
}

/// Removes the link `name`, if it still points to `id`. Under the names lock.
void unlink_name(int store, const std::string& name, uint64_t id, const unique_fd& /*names*/) {
    if (auto l = read_link(store, name); l && l->id == id) {
        (void)::unlinkat(store, ("by-name/" + name).c_str(), 0);
    }
}

/// Removes the by-name links to `id` (when its header, which names it,
/// cannot be read). Under the names lock.
void unlink_names_of(uint64_t id, const unique_fd& names) {
    unique_fd dfd{::openat(names.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    DIR* d = dfd ? ::fdopendir(dfd.get()) : nullptr;
    if (!d) {
        return;
    }
    (void)dfd.release(); // closedir closes it
    const std::string target = "../" + ms_path(id);
    std::vector<std::string> found;
    while (auto* e = ::readdir(d)) {
        char t[64];
        ssize_t n = ::readlinkat(::dirfd(d), e->d_name, t, sizeof(t));
        if (n > 0 && std::string_view(t, static_cast<size_t>(n)) == target) {
            found.emplace_back(e->d_name);
        }
    }
    for (const auto& name : found) {
        (void)::unlinkat(::dirfd(d), name.c_str(), 0);
    }
    ::closedir(d);
}

/// Removes `id` if it is not persistent and no process holds it, or if it
/// is a file that a create which died long ago left unfinished. Returns
/// whether it is gone: true also for one the caller may not remove (another
/// user's, in a shared store), which is gone as far as opening, listing and
/// naming are concerned, and is removed by its owner or root when they come
/// across it. `names`: the names lock, if the caller holds it.
bool reap_if_stale(int store, uint64_t id, const unique_fd* names = nullptr) {
    auto fd = open_own_ms(store, id, O_RDONLY);
    if (!fd) {
        return fd.error() == std::errc::no_such_file_or_directory;
    }
    struct stat st;
    if (::fstat(fd->get(), &st) != 0) {
        return false;
    }
    const bool mine = ::geteuid() == 0 || st.st_uid == ::geteuid();
    // Only what its mode says (its owner's say) can make a file removable
    // whatever its header: writers may rewrite the header.
    const bool dead_create = unfinished_long_ago(st);
    auto m = read_header(fd->get());
    if (!dead_create && !m) {
        return false; // damaged: its owner removes it by id
    }
    if (!dead_create && persistent(st, *m)) {
        // One of an earlier version, persistent by its header alone: its
        // mode says so from now on, which its writers cannot undo.
        if (mine && !(st.st_mode & (persistent_bit | unfinished_bit))) {
            (void)::fchmod(fd->get(), (st.st_mode & 07777) | persistent_bit);
        }
        return false;
    }
    if (held_by_others(fd->get())) {
        return false;
    }
    if (!mine) {
        return true; // gone for the caller: its owner or root removes it
    }
    // Its write lock, which keeps anyone from holding it until it is gone,
    // takes a descriptor open for writing (the owner's, or root's).
    auto rw = open_own_ms(store, id, O_RDWR);
    if (!rw) {
        return rw.error() == std::errc::no_such_file_or_directory;
    }
    struct stat now;
    if (::fstat(rw->get(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev ||
        ofd_lock(rw->get(), F_WRLCK) != 0) {
        return false; // another file now, or somebody holds it
    }
    unique_fd own_lock;
    if (!names) {
        auto l = lock_names(store);
        if (!l) {
            return false;
        }
        own_lock = std::move(*l);
        names = &own_lock;
    }
    if (::fstat(rw->get(), &now) != 0) {
        return false;
    }
    if (now.st_nlink == 0) {
        return true; // reaped meanwhile
    }
    if (m && !m->name.empty()) {
        unlink_name(store, m->name, id, *names);
    }
    int rc = ::unlinkat(store, ms_path(id).c_str(), 0);
    return rc == 0 || errno == ENOENT || errno == EPERM || errno == EACCES;
}

/// Whether the name's link keeps nobody's mindspace: it points to a file
/// that is gone or reaped, or to a mindspace that bears another name (and
/// its owner's link of that name), or it was put there by a user who does
/// not own its target. Under the names lock.
bool name_is_free(int store, const std::string& name, const unique_fd& names) {
    auto l = read_link(store, name);
    if (!l) {
        // Gone meanwhile, or not a link this library made.
        return l.error() == std::errc::no_such_file_or_directory ||
               l.error() == errc::local_ms_damaged;
    }
    if (reap_if_stale(store, l->id, &names)) {
        return true;
    }
    const resolved r{l->id, l->owner};
    struct stat st;
    if (::fstatat(store, ms_path(l->id).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return errno == ENOENT;
    }
    if (!trusted_link(r, st.st_uid)) {
        return true;
    }
    auto fd = open_own_ms(store, l->id, O_RDONLY);
    if (!fd) {
        return false; // damaged (its owner removes it) or not the caller's to read
    }
    auto m = read_header(fd->get());
    return m && check_named(store, fd->get(), ms_key{0, name}, r, m->name) ==
                    std::errc::no_such_file_or_directory;
}

} // namespace

result<unique_fd> open_store(const std::string& dir) {
    // A user's store is theirs alone: others are refused a store of another
    // user's (check_dir), so they may not add to it either. Root's is how
    // users share one.
    const bool root = ::geteuid() == 0;
    if (auto ec = make_dir(AT_FDCWD, dir.c_str(), root ? 01777 : 0700)) {
        return ec;
    }
    unique_fd fd{::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)};
    if (!fd) {
        return last_error();
    }
    if (auto ec = check_dir(fd.get())) {
        return ec;
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) {
        return last_error();
    }
    // A user's not even readable by others (whoever may open by-name/ may
    // hold its lock); root's are read by the users it lets in.
    const mode_t sub_mode = !root ? 0700 : shared_store(st) ? 01777 : 0755;
    for (const char* sub : {"ms", "by-name"}) {
        if (auto ec = make_dir(fd.get(), sub, sub_mode)) {
            return ec;
        }
        unique_fd sfd{::openat(fd.get(), sub, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)};
        if (!sfd) {
            return last_error();
        }
        if (auto ec = check_dir(sfd.get())) {
            return ec;
        }
        // One of an earlier version's private stores (0755): made its
        // owner's alone too.
        struct stat sst;
        if (!root && ::fstat(sfd.get(), &sst) == 0 && sst.st_uid == ::geteuid() &&
            !shared_store(st) && !shared_store(sst) && (sst.st_mode & 077)) {
            (void)::chmod(fd_path(sfd.get()).c_str(), sst.st_mode & 07700);
        }
    }
    if (st.st_uid == ::geteuid()) {
        if (auto ec = make_counter(fd.get(), st)) {
            return ec;
        }
    }
    return fd;
}

abi_version version() noexcept {
    // What the in-process scheduler serves too: requests, and workers
    // handing back what they will not finish.
    return {LLMOS_ABI_MAJOR, LLMOS_ABI_MINOR,
            LLMOS_FEATURE_VERSION | LLMOS_FEATURE_MINDSPACE | LLMOS_FEATURE_SCHED |
                LLMOS_FEATURE_SCHED_RETURN};
}

result<ms_info> info(int fd, uint64_t id) {
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        return last_error();
    }
    auto m = read_header(fd);
    if (!m) {
        return m.error();
    }
    ms_info i;
    i.id = id;
    i.length = m->length;
    uint64_t blocks = static_cast<uint64_t>(st.st_blocks) * 512;
    i.resident = blocks > data_offset ? blocks - data_offset : 0;
    i.created_ns = m->created_ns;
    // Persistent as its mode says (writers may rewrite the header).
    i.flags = (m->flags & ~uint32_t{LLMOS_MS_PERSISTENT}) |
              (persistent(st, *m) ? LLMOS_MS_PERSISTENT : 0);
    i.mode = st.st_mode & 0777;
    i.uid = st.st_uid;
    i.gid = st.st_gid;
    i.numa_node = m->numa_node;
    i.name = m->name;
    return i;
}

result<ms_info> info(int store, const ms_key& key) {
    auto r = resolve(store, key);
    if (!r) {
        return r.error();
    }
    if (reap_if_stale(store, r->id)) {
        return enoent();
    }
    auto fd = open_ms(store, r->id, O_RDONLY);
    if (!fd) {
        return fd.error();
    }
    auto i = info(fd->get(), r->id);
    if (!i) {
        return i.error();
    }
    if (auto ec = check_named(store, fd->get(), key, *r, i->name)) {
        return ec;
    }
    return i;
}

result<opened> create(int store, const ms_create_options& o) {
    if (o.length == 0 || o.length % page_size() != 0 || o.length > max_length ||
        (o.mode & ~0777u) || !valid_ms_name(o.name) ||
        (o.node && !detail::numa_node_online(*o.node))) {
        return einval();
    }
    if (o.dmabuf_fd >= 0) {
        return std::make_error_code(std::errc::operation_not_supported);
    }
    auto made = make_ms_file(store);
    if (!made) {
        return made.error();
    }
    auto& [fd, id] = *made;
    const auto path = ms_path(id);
    auto fail = [&](std::error_code ec) {
        (void)::unlinkat(store, path.c_str(), 0);
        return ec;
    };
    ms_file_meta m;
    m.length = o.length;
    m.flags = (o.persistent ? LLMOS_MS_PERSISTENT : 0) | (o.node ? LLMOS_MS_NODE : 0);
    m.mode = o.mode ? o.mode : 0600;
    m.numa_node = o.node ? *o.node : LLMOS_NUMA_ANY;
    m.created_ns = now_ns();
    m.name = o.name;
    auto h = encode_ms_file_header(m);
    // The mode last: until the header is whole, its owner may read it.
    // Setting it clears the unfinished bit; persistence is kept there too,
    // where only the owner may change it.
    if (::ftruncate(fd.get(), static_cast<off_t>(data_offset + o.length)) != 0 ||
        ::pwrite(fd.get(), h.data(), h.size(), 0) != static_cast<ssize_t>(h.size()) ||
        ::fchmod(fd.get(), m.mode | (o.persistent ? persistent_bit : 0)) != 0) {
        return fail(last_error());
    }
    if (!o.name.empty()) {
        auto names = lock_names(store);
        if (!names) {
            return fail(names.error());
        }
        auto link = "by-name/" + o.name;
        auto target = "../" + path;
        int rc = ::symlinkat(target.c_str(), store, link.c_str());
        if (rc != 0 && errno == EEXIST) {
            // The name may belong to a forgotten, non-persistent mindspace,
            // to a file that is gone, or be a link that names nothing.
            if (name_is_free(store, o.name, *names)) {
                (void)::unlinkat(store, link.c_str(), 0);
                rc = ::symlinkat(target.c_str(), store, link.c_str());
            } else {
                errno = EEXIST;
            }
        }
        if (rc != 0) {
            return fail(last_error());
        }
    }
    auto i = info(fd.get(), id);
    if (!i) {
        return fail(i.error());
    }
    return opened{std::move(fd), std::move(*i)};
}

result<opened> open(int store, const ms_key& key, bool read_only) {
    auto r = resolve(store, key);
    if (!r) {
        return r.error();
    }
    // A non-persistent mindspace nobody holds is gone, as with the module.
    if (reap_if_stale(store, r->id)) {
        return enoent();
    }
    auto fd = open_ms(store, r->id, read_only ? O_RDONLY : O_RDWR);
    if (!fd) {
        return fd.error();
    }
    // Waited for 2 s at most (EBUSY): only a writer can take the write lock
    // that keeps it off, and no holder keeps others out for good.
    if (auto ec = hold(fd->get())) {
        return ec;
    }
    struct stat st;
    if (::fstat(fd->get(), &st) != 0) {
        return last_error();
    }
    if (st.st_nlink == 0) {
        return enoent(); // just reaped
    }
    auto i = info(fd->get(), r->id);
    if (!i) {
        return i.error();
    }
    if (auto ec = check_named(store, fd->get(), key, *r, i->name)) {
        return ec;
    }
    return opened{std::move(*fd), std::move(*i)};
}

std::error_code destroy(int store, const ms_key& key) {
    auto r = resolve(store, key);
    if (!r) {
        return r.error();
    }
    auto names = lock_names(store);
    if (!names) {
        return names.error();
    }
    const auto path = ms_path(r->id);
    struct stat st;
    if (::fstatat(store, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return last_error();
    }
    if (!trusted_link(*r, st.st_uid)) {
        return enoent();
    }
    if (st.st_uid != ::geteuid() && ::geteuid() != 0) {
        return std::make_error_code(std::errc::operation_not_permitted);
    }
    // Its owner may open it (open_own_ms: read-write, for the write lock
    // that tells whether anyone holds it); a damaged one (not a plain file,
    // its header, a file cut short) can still be removed by its owner, once
    // nobody holds it: one being made is held, and has no header yet.
    auto fd = open_own_ms(store, r->id, O_RDWR);
    if (!fd && fd.error() != errc::local_ms_damaged) {
        return fd.error();
    }
    auto m = fd ? read_header(fd->get()) : result<ms_file_meta>{errc::local_ms_damaged};
    if (!m && m.error() != errc::local_ms_damaged) {
        return m.error();
    }
    if (m) {
        // A header whose name was rewritten: refused by name, kept.
        if (auto ec = check_named(store, fd->get(), key, *r, m->name)) {
            return ec;
        }
    }
    struct stat now {};
    if (fd && ::fstat(fd->get(), &now) != 0) {
        return last_error();
    }
    const bool held =
        fd && (ofd_lock(fd->get(), F_WRLCK) != 0 || ::flock(fd->get(), LOCK_EX | LOCK_NB) != 0);
    // Its links: by name, that one (it names this mindspace); by id, or
    // where its header is damaged, every link to it (its header's name may
    // not be the one its owner gave it).
    auto unlink_names = [&] {
        if (r->link_owner && m) {
            unlink_name(store, key.name, r->id, *names);
        } else {
            unlink_names_of(r->id, *names);
        }
    };
    if (m && !persistent(now, *m)) {
        if (!held) {
            // Nobody holds it: gone already, as with the module.
            unlink_names();
            (void)::unlinkat(store, path.c_str(), 0);
            return enoent();
        }
        return einval();
    }
    if (!m && held) {
        return std::make_error_code(std::errc::device_or_resource_busy);
    }
    unlink_names();
    if (::unlinkat(store, path.c_str(), S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) != 0) {
        return last_error();
    }
    return {};
}

result<std::vector<ms_info>> list(int store) {
    unique_fd dfd{::openat(store, "ms", O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    if (!dfd) {
        return last_error();
    }
    DIR* d = ::fdopendir(dfd.get());
    if (!d) {
        return last_error();
    }
    (void)dfd.release(); // closedir closes it
    std::vector<uint64_t> ids;
    while (auto* e = ::readdir(d)) {
        if (auto id = parse_id(e->d_name)) {
            ids.push_back(*id);
        }
    }
    ::closedir(d);
    std::sort(ids.begin(), ids.end());
    // What the caller may not read, and what is not a mindspace (damaged:
    // info and open say so), is left out; only running out of descriptors
    // or memory fails the list.
    auto fatal = [](std::error_code ec) {
        return ec == std::errc::too_many_files_open ||
               ec == std::errc::too_many_files_open_in_system || ec == std::errc::not_enough_memory;
    };
    std::vector<ms_info> out;
    for (uint64_t id : ids) {
        if (reap_if_stale(store, id)) {
            continue;
        }
        // The caller's own whatever their mode, as the module lists them.
        auto fd = open_own_ms(store, id, O_RDONLY);
        auto i = fd ? info(fd->get(), id) : result<ms_info>{fd.error()};
        if (i) {
            out.push_back(std::move(*i));
        } else if (fatal(i.error())) {
            return i.error();
        }
    }
    return out;
}

} // namespace llmos::local
