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

std::error_code einval() {
    return std::make_error_code(std::errc::invalid_argument);
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

// A folder every user may add to and only owners remove from (like /tmp).
std::error_code make_dir(int at, const char* name) {
    if (::mkdirat(at, name, 01777) != 0) {
        return errno == EEXIST ? std::error_code{} : last_error();
    }
    if (::fchmodat(at, name, 01777, 0) != 0) { // past the umask
        return last_error();
    }
    return {};
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
        return std::error_code(ENOTDIR, std::system_category());
    }
    if (st.st_uid != ::geteuid() && st.st_uid != 0) {
        return std::error_code(EPERM, std::system_category());
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
        if (st.st_uid != ::geteuid()) {
            return std::error_code(EPERM, std::system_category());
        }
        // (Through the descriptor: the folder that was checked.)
        const std::string self = "/proc/self/fd/" + std::to_string(fd);
        if (::chmod(self.c_str(), (st.st_mode & 07777) | S_ISVTX) != 0) {
            return last_error();
        }
    }
    return {};
}

result<uint64_t> next_id(int store) {
    // Not through a link (symbolic or hard), only a plain file, and one of
    // the caller's, root's or the store's owner's.
    unique_fd fd{::openat(store, "next-id", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666)};
    if (!fd) {
        return last_error();
    }
    struct stat st, dir;
    if (::fstat(fd.get(), &st) != 0 || ::fstat(store, &dir) != 0) {
        return last_error();
    }
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1 ||
        (st.st_uid != ::geteuid() && st.st_uid != 0 && st.st_uid != dir.st_uid)) {
        return std::error_code(EPERM, std::system_category());
    }
    if (st.st_uid == ::geteuid()) {
        (void)::fchmod(fd.get(), 0666); // every user allocates ids
    }
    if (::flock(fd.get(), LOCK_EX) != 0) {
        return last_error();
    }
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof(buf) - 1, 0);
    if (n < 0) {
        return last_error();
    }
    uint64_t id = 0;
    std::from_chars(buf, buf + n, id);
    ++id;
    auto s = std::to_string(id) + "\n";
    if (::pwrite(fd.get(), s.data(), s.size(), 0) != static_cast<ssize_t>(s.size()) ||
        ::ftruncate(fd.get(), static_cast<off_t>(s.size())) != 0) {
        return last_error();
    }
    return id;
}

result<ms_file_meta> read_header(int fd) {
    ms_file_header h;
    ssize_t n = ::pread(fd, h.data(), h.size(), 0);
    if (n < 0) {
        return last_error();
    }
    if (static_cast<size_t>(n) != h.size()) {
        return errc::ms_file_corrupt;
    }
    auto m = decode_ms_file_header(h);
    if (!m) {
        return m.error() == errc::not_ms_file ? errc::ms_file_corrupt : m.error();
    }
    // Its bytes must all be there: mapping a shorter file gives SIGBUS
    // (the header is writable by whoever may write the mindspace).
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        return last_error();
    }
    if (m->length > max_length || static_cast<uint64_t>(st.st_size) < data_offset + m->length) {
        return errc::ms_file_corrupt;
    }
    return m;
}

/// The id a name stands for.
result<uint64_t> resolve(int store, const ms_key& key) {
    if (key.id) {
        return key.id;
    }
    if (!valid_ms_name(key.name) || key.name.empty()) {
        return einval();
    }
    char target[64];
    ssize_t n = ::readlinkat(store, ("by-name/" + key.name).c_str(), target, sizeof(target));
    if (n < 0) {
        return last_error();
    }
    std::string_view t{target, static_cast<size_t>(n)};
    if (t.substr(0, 6) != "../ms/") {
        return errc::ms_file_corrupt;
    }
    auto id = parse_id(t.substr(6));
    if (!id) {
        return errc::ms_file_corrupt;
    }
    return *id;
}

/// Removes the link `name`, if it still points to `id`.
void unlink_name(int store, const std::string& name, uint64_t id) {
    if (auto named = resolve(store, ms_key{0, name}); named && *named == id) {
        (void)::unlinkat(store, ("by-name/" + name).c_str(), 0);
    }
}

/// Removes the by-name links to `id` (when its header, which names it,
/// cannot be read).
void unlink_names_of(int store, uint64_t id) {
    unique_fd dfd{::openat(store, "by-name", O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    DIR* d = dfd ? ::fdopendir(dfd.get()) : nullptr;
    if (!d) {
        return;
    }
    (void)dfd.release(); // closedir closes it
    const std::string target = "../" + ms_path(id);
    std::vector<std::string> names;
    while (auto* e = ::readdir(d)) {
        char t[64];
        ssize_t n = ::readlinkat(::dirfd(d), e->d_name, t, sizeof(t));
        if (n > 0 && std::string_view(t, static_cast<size_t>(n)) == target) {
            names.emplace_back(e->d_name);
        }
    }
    for (const auto& name : names) {
        (void)::unlinkat(::dirfd(d), name.c_str(), 0);
    }
    ::closedir(d);
}

/// Removes `id` if it is not persistent and no process holds it. Returns
/// whether it is gone.
bool reap_if_stale(int store, uint64_t id) {
    unique_fd fd{::openat(store, ms_path(id).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)};
    if (!fd) {
        return errno == ENOENT;
    }
    auto m = read_header(fd.get());
    if (!m || (m->flags & LLMOS_MS_PERSISTENT)) {
        return false;
    }
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        return false; // somebody holds it
    }
    if (!m->name.empty()) {
        unlink_name(store, m->name, id);
    }
    return ::unlinkat(store, ms_path(id).c_str(), 0) == 0;
}

} // namespace

result<unique_fd> open_store(const std::string& dir) {
    if (auto ec = make_dir(AT_FDCWD, dir.c_str())) {
        return ec;
    }
    unique_fd fd{::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)};
    if (!fd) {
        return last_error();
    }
    if (auto ec = check_dir(fd.get())) {
        return ec;
    }
    for (const char* sub : {"ms", "by-name"}) {
        if (auto ec = make_dir(fd.get(), sub)) {
            return ec;
        }
        unique_fd sfd{::openat(fd.get(), sub, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)};
        if (!sfd) {
            return last_error();
        }
        if (auto ec = check_dir(sfd.get())) {
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
    i.flags = m->flags;
    i.mode = st.st_mode & 0777;
    i.uid = st.st_uid;
    i.gid = st.st_gid;
    i.numa_node = m->numa_node;
    i.name = m->name;
    return i;
}

result<ms_info> info(int store, const ms_key& key) {
    auto id = resolve(store, key);
    if (!id) {
        return id.error();
    }
    if (reap_if_stale(store, *id)) {
        return std::make_error_code(std::errc::no_such_file_or_directory);
    }
    unique_fd fd{::openat(store, ms_path(*id).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)};
    if (!fd) {
        return last_error();
    }
    return info(fd.get(), *id);
}

result<opened> create(int store, const ms_create_options& o) {
    if (o.length == 0 || o.length % page_size() != 0 || o.length > max_length ||
        (o.mode & ~0777u) || !valid_ms_name(o.name) || (o.node && *o.node < 0)) {
        return einval();
    }
    if (o.dmabuf_fd >= 0) {
        return std::make_error_code(std::errc::operation_not_supported);
    }
    auto id = next_id(store);
    if (!id) {
        return id.error();
    }
    auto path = ms_path(*id);
    unique_fd fd{::openat(store, path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
    if (!fd) {
        return last_error();
    }
    auto fail = [&](std::error_code ec) {
        (void)::unlinkat(store, path.c_str(), 0);
        return ec;
    };
    // Held before the header makes it a mindspace: another process that
    // lists or opens meanwhile must not take it for a forgotten one.
    if (::flock(fd.get(), LOCK_SH) != 0) {
        return fail(last_error());
    }
    ms_file_meta m;
    m.length = o.length;
    m.flags = (o.persistent ? LLMOS_MS_PERSISTENT : 0) | (o.node ? LLMOS_MS_NODE : 0);
    m.mode = o.mode ? o.mode : 0600;
    m.numa_node = o.node ? *o.node : LLMOS_NUMA_ANY;
    m.created_ns = now_ns();
    m.name = o.name;
    auto h = encode_ms_file_header(m);
    if (::fchmod(fd.get(), m.mode) != 0 ||
        ::ftruncate(fd.get(), static_cast<off_t>(data_offset + o.length)) != 0 ||
        ::pwrite(fd.get(), h.data(), h.size(), 0) != static_cast<ssize_t>(h.size())) {
        return fail(last_error());
    }
    if (!o.name.empty()) {
        auto link = "by-name/" + o.name;
        auto target = "../" + path;
        int rc = ::symlinkat(target.c_str(), store, link.c_str());
        if (rc != 0 && errno == EEXIST) {
            // The name may belong to a forgotten, non-persistent mindspace.
            auto holder = resolve(store, ms_key{0, o.name});
            if (holder && reap_if_stale(store, *holder)) {
                // Gone (reaped now, or its file went without its link): the
                // link goes too, if it still points there.
                unlink_name(store, o.name, *holder);
                rc = ::symlinkat(target.c_str(), store, link.c_str());
            } else {
                errno = EEXIST;
            }
        }
        if (rc != 0) {
            return fail(last_error());
        }
    }
    auto i = info(fd.get(), *id);
    if (!i) {
        return fail(i.error());
    }
    return opened{std::move(fd), std::move(*i)};
}

result<opened> open(int store, const ms_key& key, bool read_only) {
    auto id = resolve(store, key);
    if (!id) {
        return id.error();
    }
    // A non-persistent mindspace nobody holds is gone, as with the module.
    if (reap_if_stale(store, *id)) {
        return std::make_error_code(std::errc::no_such_file_or_directory);
    }
    unique_fd fd{::openat(store, ms_path(*id).c_str(),
                          (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW)};
    if (!fd) {
        return last_error();
    }
    if (::flock(fd.get(), LOCK_SH) != 0) {
        return last_error();
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) {
        return last_error();
    }
    if (st.st_nlink == 0) {
        return std::make_error_code(std::errc::no_such_file_or_directory); // just reaped
    }
    auto i = info(fd.get(), *id);
    if (!i) {
        return i.error();
    }
    return opened{std::move(fd), std::move(*i)};
}

std::error_code destroy(int store, const ms_key& key) {
    auto id = resolve(store, key);
    if (!id) {
        return id.error();
    }
    auto path = ms_path(*id);
    struct stat st;
    if (::fstatat(store, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return last_error();
    }
    if (st.st_uid != ::geteuid() && ::geteuid() != 0) {
        return std::make_error_code(std::errc::operation_not_permitted);
    }
    // A damaged one (its header, or a file cut short) can still be removed
    // by its owner.
    auto i = info(store, ms_key{*id, {}});
    if (!i && i.error() != errc::ms_file_corrupt) {
        return i.error();
    }
    if (i && !i->persistent()) {
        return einval();
    }
    if (!i) {
        unlink_names_of(store, *id); // its header, which names it, is damaged
    } else if (!i->name.empty()) {
        unlink_name(store, i->name, *id);
    }
    if (::unlinkat(store, path.c_str(), 0) != 0) {
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
    std::vector<ms_info> out;
    for (uint64_t id : ids) {
        if (reap_if_stale(store, id)) {
            continue;
        }
        auto i = info(store, ms_key{id, {}});
        if (i) {
            out.push_back(std::move(*i));
        } else if (i.error() != std::errc::permission_denied &&
                   i.error() != std::errc::no_such_file_or_directory &&
                   i.error() != errc::ms_file_corrupt) { // damaged: info and open say so
            return i.error();
        }
    }
    return out;
}

} // namespace llmos::local
