// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <llmos/device.hh>
#include <llmos/ms_file.hh>
#include <llmos/result.hh>
#include <llmos/unique_fd.hh>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmos {

/// Names a mindspace: by id, or by name.
struct ms_key {
    uint64_t id = 0;
    std::string name{};

    /// "123" is an id, anything else a name.
    static ms_key parse(std::string_view s);
    std::string to_string() const { return id ? std::to_string(id) : name; }
};

/// What the module reports about a mindspace (struct llmos_ms_info).
struct ms_info {
    uint64_t id = 0;
    uint64_t length = 0;
    uint64_t resident = 0;
    uint64_t created_ns = 0;
    uint32_t flags = 0; ///< LLMOS_MS_*
    uint32_t mode = 0;
    uint32_t uid = 0;
    uint32_t gid = 0;
    int32_t numa_node = -1;
    uint32_t map_count = 0;
    uint32_t open_count = 0;
    std::string name{};

    bool persistent() const noexcept;
    bool dmabuf() const noexcept;
};

struct ms_create_options {
    uint64_t length = 0;       ///< bytes, a multiple of the page size (0 with a dma-buf: its size)
    std::string name{};        ///< empty: anonymous
    bool persistent = false;   ///< outlives its fds until destroyed
    uint32_t mode = 0;         ///< permission bits; 0 = 0600
    std::optional<int> node{}; ///< NUMA node for host pages
    int dmabuf_fd = -1;        ///< back it with this dma-buf (not consumed)
};

/// A mapping of (part of) a mindspace; unmapped when destroyed. Move-only.
/// Made by mindspace::map(); one made by hand takes what mmap() returned,
/// or an address inside its first page (the whole of that page, up to
/// addr + len, is unmapped).
/// A mindspace opened read-only is mapped read-only: a write through
/// bytes() or data() then faults (SIGSEGV); writable() says which it is,
/// and view() is the read-only span either way.
class mapping {
    std::byte* _addr = nullptr;
    size_t _len = 0;
    bool _writable = true;

    void unmap() noexcept;

public:
    mapping() noexcept = default;
    mapping(std::byte* addr, size_t len, bool writable = true) noexcept
        : _addr(addr)
        , _len(len)
        , _writable(writable) {}
    mapping(const mapping&) = delete;
    mapping& operator=(const mapping&) = delete;
    mapping(mapping&& o) noexcept;
    mapping& operator=(mapping&& o) noexcept;
    ~mapping();

    std::span<std::byte> bytes() const noexcept { return {_addr, _len}; }
    std::span<const std::byte> view() const noexcept { return {_addr, _len}; }
    std::byte* data() const noexcept { return _addr; }
    size_t size() const noexcept { return _len; }
    bool writable() const noexcept { return _writable; }
};

/// An open mindspace (a mindspace fd). Move-only; closing it drops this
/// process's reference (a persistent mindspace stays).
class mindspace {
    unique_fd _fd;
    uint64_t _id = 0;
    uint64_t _length = 0;
    bool _writable = true;
    backend_kind _kind = backend_kind::kernel;

    mindspace(unique_fd fd, uint64_t id, uint64_t length, bool writable, backend_kind kind)
        : _fd(std::move(fd))
        , _id(id)
        , _length(length)
        , _writable(writable)
        , _kind(kind) {}
    /// Where the mindspace's bytes start in its fd (the local backend's
    /// files begin with a header page).
    uint64_t data_offset() const noexcept;

public:
    /// LLMOS_IOC_MS_CREATE (or the local backend's equivalent). Errors: the
    /// errno of the ioctl (EINVAL, EEXIST, EDQUOT, ENOSPC, EBADF, ...); the
    /// local backend has no quotas and no dma-buf mindspaces (EOPNOTSUPP).
    static result<mindspace> create(const device& dev, const ms_create_options& o);
    /// LLMOS_IOC_MS_OPEN, read-write or read-only. Errors: ENOENT, EACCES.
    static result<mindspace> open(const device& dev, const ms_key& key, bool read_only = false);

    /// LLMOS_MSFD_IOC_INFO.
    result<ms_info> info() const;
    /// Maps [offset, offset + length) (length 0: to the end), any offset:
    /// the pages holding the range are mapped, and the mapping's bytes
    /// begin at offset. Writable unless the mindspace was opened read-only.
    result<mapping> map(uint64_t offset = 0, uint64_t length = 0) const;
    /// The touched parts of the mindspace (SEEK_DATA/SEEK_HOLE on its fd),
    /// sorted; what is outside them reads as zeros. Allocates nothing.
    result<std::vector<byte_range>> data_ranges() const;
    /// LLMOS_MSFD_IOC_EXPORT_DMABUF: a dma-buf fd for its memory.
    result<unique_fd> export_dmabuf() const;

    uint64_t id() const noexcept { return _id; }
    uint64_t length() const noexcept { return _length; }
    bool writable() const noexcept { return _writable; }
    int fd() const noexcept { return _fd.get(); }
};

/// LLMOS_IOC_MS_LIST: every mindspace the caller may read, by id.
result<std::vector<ms_info>> list_mindspaces(const device& dev);
/// LLMOS_IOC_MS_INFO.
result<ms_info> mindspace_info(const device& dev, const ms_key& key);
/// LLMOS_IOC_MS_DESTROY (persistent mindspaces).
std::error_code destroy_mindspace(const device& dev, const ms_key& key);

struct quota_info {
    uint64_t used = 0;
    uint64_t limit = 0; ///< UINT64_MAX: unlimited
};

constexpr uint32_t uid_self = UINT32_MAX;

/// LLMOS_IOC_QUOTA: read the quota of `uid`, or set it first when `set`
/// has a value (0 = module default, UINT64_MAX = unlimited). The local
/// backend has no quotas (EOPNOTSUPP).
result<quota_info> quota(const device& dev, uint32_t uid = uid_self,
                         std::optional<uint64_t> set = std::nullopt);

/// Whether `name` is a valid mindspace name: empty (anonymous), or 1 to 63
/// characters of [A-Za-z0-9._:-], starting with a letter, digit or '_',
/// not all digits (the module applies the same rule).
bool valid_ms_name(std::string_view name) noexcept;

/// The system page size.
size_t page_size() noexcept;

} // namespace llmos
