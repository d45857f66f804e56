// SPDX-License-Identifier: MIT
#include "local.hh"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <linux/llmos.h>
#include <llmos/mindspace.hh>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace llmos {

namespace {

// Copies a name into a fixed UAPI field; the kernel rejects (EINVAL) a
// name that does not fit with its NUL, so a long one is passed on whole.
void put_name(char (&dst)[LLMOS_NAME_MAX], const std::string& name) {
    std::memset(dst, 0, sizeof(dst));
    std::memcpy(dst, name.data(), std::min(name.size(), sizeof(dst)));
}

ms_info from_uapi(const llmos_ms_info& i) {
    ms_info o;
    o.id = i.id;
    o.length = i.length;
    o.resident = i.resident;
    o.created_ns = i.created_ns;
    o.flags = i.flags;
    o.mode = i.mode;
    o.uid = i.uid;
    o.gid = i.gid;
    o.numa_node = i.numa_node;
    o.map_count = i.map_count;
    o.open_count = i.open_count;
    o.name.assign(i.name, strnlen(i.name, sizeof(i.name)));
    return o;
}

result<ms_info> query(int fd, unsigned long cmd, const ms_key* key) {
    llmos_ms_info info{};
    llmos_ms_query q{};
    q.size = sizeof(q);
    if (key) {
        q.id = key->id;
        put_name(q.name, key->name);
    }
    q.info_uptr = reinterpret_cast<uintptr_t>(&info);
    q.info_size = sizeof(info);
    if (::ioctl(fd, cmd, &q) != 0) {
        return last_error();
    }
    return from_uapi(info);
}

} // namespace

ms_key ms_key::parse(std::string_view s) {
    ms_key k;
    uint64_t id = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
    if (ec == std::errc{} && end == s.data() + s.size() && id != 0 && s[0] != '+') {
        k.id = id;
        return k;
    }
    k.name = std::string{s};
    return k;
}

bool valid_ms_name(std::string_view name) noexcept {
    if (name.empty()) {
        return true;
    }
    auto alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    };
    if (name.size() >= LLMOS_NAME_MAX || (!alnum(name[0]) && name[0] != '_')) {
        return false;
    }
    bool digits = true;
    for (char c : name) {
        if (!alnum(c) && c != '.' && c != '_' && c != ':' && c != '-') {
            return false;
        }
        digits &= c >= '0' && c <= '9';
    }
    return !digits;
}

uint64_t mindspace::data_offset() const noexcept {
    return _kind == backend_kind::local ? local::data_offset : 0;
}

bool ms_info::persistent() const noexcept {
    return flags & LLMOS_MS_PERSISTENT;
}

bool ms_info::dmabuf() const noexcept {
    return flags & LLMOS_MS_DMABUF;
}

size_t page_size() noexcept {
    static const size_t ps = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

mapping::mapping(mapping&& o) noexcept
    : _addr(std::exchange(o._addr, nullptr))
    , _len(std::exchange(o._len, 0))
    , _writable(o._writable) {
}

mapping& mapping::operator=(mapping&& o) noexcept {
    if (this != &o) {
        unmap();
        _addr = std::exchange(o._addr, nullptr);
        _len = std::exchange(o._len, 0);
        _writable = o._writable;
    }
    return *this;
}

// A mapping may begin inside its first page (map() at an offset that is
// not a page's start): what is unmapped starts at that page.
void mapping::unmap() noexcept {
    if (_addr) {
        const auto skip = reinterpret_cast<uintptr_t>(_addr) % page_size();
        ::munmap(_addr - skip, _len + skip);
    }
}

mapping::~mapping() {
    unmap();
}

result<mindspace> mindspace::create(const device& dev, const ms_create_options& o) {
    if (dev.kind() == backend_kind::local) {
        auto m = local::create(dev.fd(), o);
        if (!m) {
            return m.error();
        }
        return mindspace{std::move(m->fd), m->info.id, m->info.length, true, backend_kind::local};
    }
    llmos_ms_create c{};
    c.size = sizeof(c);
    c.length = o.length;
    c.mode = o.mode;
    put_name(c.name, o.name);
    if (o.persistent) {
        c.flags |= LLMOS_MS_PERSISTENT;
    }
    if (o.node) {
        c.flags |= LLMOS_MS_NODE;
        c.numa_node = *o.node;
    }
    if (o.dmabuf_fd >= 0) {
        c.flags |= LLMOS_MS_DMABUF;
        c.dmabuf_fd = o.dmabuf_fd;
    }
    if (::ioctl(dev.fd(), LLMOS_IOC_MS_CREATE, &c) != 0) {
        return last_error();
    }
    unique_fd fd{c.out_fd};
    auto i = query(fd.get(), LLMOS_MSFD_IOC_INFO, nullptr);
    if (!i) {
        return i.error();
    }
    return mindspace{std::move(fd), c.out_id, i->length, true, backend_kind::kernel};
}

result<mindspace> mindspace::open(const device& dev, const ms_key& key, bool read_only) {
    if (dev.kind() == backend_kind::local) {
        auto m = local::open(dev.fd(), key, read_only);
        if (!m) {
            return m.error();
        }
        return mindspace{std::move(m->fd), m->info.id, m->info.length, !read_only,
                         backend_kind::local};
    }
    llmos_ms_open o{};
    o.size = sizeof(o);
    o.flags = read_only ? LLMOS_MS_OPEN_RDONLY : 0;
    o.id = key.id;
    put_name(o.name, key.name);
    if (::ioctl(dev.fd(), LLMOS_IOC_MS_OPEN, &o) != 0) {
        return last_error();
    }
    unique_fd fd{o.out_fd};
    auto i = query(fd.get(), LLMOS_MSFD_IOC_INFO, nullptr);
    if (!i) {
        return i.error();
    }
    return mindspace{std::move(fd), i->id, i->length, !read_only, backend_kind::kernel};
}

result<ms_info> mindspace::info() const {
    if (_kind == backend_kind::local) {
        return local::info(_fd.get(), _id);
    }
    return query(_fd.get(), LLMOS_MSFD_IOC_INFO, nullptr);
}

result<mapping> mindspace::map(uint64_t offset, uint64_t length) const {
    if (offset > _length || length > _length - offset) {
        // Past the end: the module refuses it, a local file would SIGBUS.
        return std::make_error_code(std::errc::invalid_argument);
    }
    if (length == 0) {
        length = _length - offset;
    }
    // mmap maps whole pages from a page's start in the fd: an offset inside
    // a page (given, or made by the local backend's 4096-byte header on a
    // kernel with larger pages) maps from the start of that page.
    const uint64_t pos = data_offset() + offset;
    const uint64_t skip = pos % page_size();
    int prot = PROT_READ | (_writable ? PROT_WRITE : 0);
    void* p =
        ::mmap(nullptr, length + skip, prot, MAP_SHARED, _fd.get(), static_cast<off_t>(pos - skip));
    if (p == MAP_FAILED) {
        return last_error();
    }
    return mapping{static_cast<std::byte*>(p) + skip, length, _writable};
}

result<std::vector<byte_range>> mindspace::data_ranges() const {
    std::vector<byte_range> out;
    const auto base = static_cast<off_t>(data_offset());
    off_t pos = base;
    const auto end = base + static_cast<off_t>(_length);
    while (pos < end) {
        off_t data = ::lseek(_fd.get(), pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                break; // no data after pos
            }
            return last_error();
        }
        off_t hole = ::lseek(_fd.get(), data, SEEK_HOLE);
        if (hole < 0) {
            return last_error();
        }
        hole = std::min(hole, end);
        if (data >= end) {
            break;
        }
        out.push_back({static_cast<uint64_t>(data - base), static_cast<uint64_t>(hole - data)});
        pos = hole;
    }
    return out;
}

result<unique_fd> mindspace::export_dmabuf() const {
    if (_kind == backend_kind::local) {
        return std::make_error_code(std::errc::operation_not_supported);
    }
    llmos_ms_export e{};
    e.size = sizeof(e);
    if (::ioctl(_fd.get(), LLMOS_MSFD_IOC_EXPORT_DMABUF, &e) != 0) {
        return last_error();
    }
    return unique_fd{e.out_fd};
}

result<std::vector<ms_info>> list_mindspaces(const device& dev) {
    if (dev.kind() == backend_kind::local) {
        return local::list(dev.fd());
    }
    std::vector<llmos_ms_info> buf(16);
    for (;;) {
        llmos_ms_list l{};
        l.size = sizeof(l);
        l.entry_size = sizeof(llmos_ms_info);
        l.count = static_cast<uint32_t>(buf.size());
        l.entries_uptr = reinterpret_cast<uintptr_t>(buf.data());
        if (::ioctl(dev.fd(), LLMOS_IOC_MS_LIST, &l) == 0) {
            std::vector<ms_info> out;
            out.reserve(l.count);
            for (uint32_t i = 0; i < l.count; ++i) {
                out.push_back(from_uapi(buf[i]));
            }
            return out;
        }
        if (errno != EOVERFLOW) {
            return last_error();
        }
        // More appeared: grow with room for newcomers and try again.
        buf.resize(l.count + l.count / 2 + 16);
    }
}

result<ms_info> mindspace_info(const device& dev, const ms_key& key) {
    if (dev.kind() == backend_kind::local) {
        return local::info(dev.fd(), key);
    }
    return query(dev.fd(), LLMOS_IOC_MS_INFO, &key);
}

std::error_code destroy_mindspace(const device& dev, const ms_key& key) {
    if (dev.kind() == backend_kind::local) {
        return local::destroy(dev.fd(), key);
    }
    llmos_ms_destroy d{};
    d.size = sizeof(d);
    d.id = key.id;
    put_name(d.name, key.name);
    if (::ioctl(dev.fd(), LLMOS_IOC_MS_DESTROY, &d) != 0) {
        return last_error();
    }
    return {};
}

result<quota_info> quota(const device& dev, uint32_t uid, std::optional<uint64_t> set) {
    if (dev.kind() == backend_kind::local) {
        return std::make_error_code(std::errc::operation_not_supported);
    }
    llmos_quota q{};
    q.size = sizeof(q);
    q.uid = uid;
    if (set) {
        q.flags = LLMOS_QUOTA_SET;
        q.limit = *set;
    }
    if (::ioctl(dev.fd(), LLMOS_IOC_QUOTA, &q) != 0) {
        return last_error();
    }
    return quota_info{q.out_used, q.out_limit};
}

} // namespace llmos
