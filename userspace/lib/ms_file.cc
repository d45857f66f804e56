// SPDX-License-Identifier: MIT
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/llmos.h>
#include <llmos/mindspace.hh>
#include <llmos/ms_file.hh>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>
#include <zlib.h>

namespace llmos {

namespace {

constexpr char magic[8] = {'L', 'L', 'M', 'O', 'S', 'M', 'S', '1'};
constexpr uint32_t format_version = 1;
constexpr size_t chunk = 1 << 20;
constexpr size_t page = 4096;
/// The flags a saved mindspace keeps (the others are not its own: a
/// dma-buf stays with its exporter).
constexpr uint32_t saved_flags = LLMOS_MS_PERSISTENT | LLMOS_MS_NODE;

// Field offsets in the header.
enum : size_t {
    off_magic = 0,
    off_version = 8,
    off_header_size = 12,
    off_length = 16,
    off_flags = 24,
    off_mode = 28,
    off_node = 32,
    off_crc = 36,
    off_created = 40,
    off_name = 48,
    off_end = off_name + LLMOS_NAME_MAX,
};

template <typename T>
void put_le(ms_file_header& h, size_t off, T v) {
    for (size_t i = 0; i < sizeof(T); ++i) {
        h[off + i] = static_cast<std::byte>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
    }
}

template <typename T>
T get_le(std::span<const std::byte> h, size_t off) {
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
        v |= static_cast<uint64_t>(h[off + i]) << (8 * i);
    }
    return static_cast<T>(v);
}

bool all_zero(std::span<const std::byte> s) {
    return std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; });
}

std::error_code write_all(int fd, const std::byte* p, size_t n, off_t off) {
    while (n) {
        ssize_t w = ::pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return last_error();
        }
        p += w;
        n -= static_cast<size_t>(w);
        off += w;
    }
    return {};
}

// Reads exactly n bytes; a short file is corrupt.
std::error_code read_all(int fd, std::byte* p, size_t n, off_t off) {
    while (n) {
        ssize_t r = ::pread(fd, p, n, off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return last_error();
        }
        if (r == 0) {
            return errc::ms_file_corrupt;
        }
        p += r;
        n -= static_cast<size_t>(r);
        off += r;
    }
    return {};
}

// What a saved mindspace of `length` bytes may say of itself: whole
// pages, permission bits, the flags it keeps, a node, a name a mindspace
// may have (a path, say, is none) or none. Both ends check it: save
// writes no file that load would refuse.
bool meta_ok(const ms_file_meta& m, uint64_t length) {
    return length && length % page == 0 && !(m.mode & ~0777u) && !(m.flags & ~saved_flags) &&
           m.numa_node >= LLMOS_NUMA_ANY && m.name.size() < LLMOS_NAME_MAX &&
           (m.name.empty() || valid_ms_name(m.name));
}

} // namespace

uint32_t crc32_update(uint32_t crc, std::span<const std::byte> data) noexcept {
    while (!data.empty()) {
        auto n = std::min<size_t>(data.size(), 1u << 30);
        crc = static_cast<uint32_t>(
            ::crc32(crc, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(n)));
        data = data.subspan(n);
    }
    return crc;
}

uint32_t crc32_zeros(uint32_t crc, uint64_t n) noexcept {
    // zeros[k]: the CRC of 2^k zero bytes (from a zero start).
    static const auto zeros = [] {
        std::array<uLong, 64> z{};
        static const Bytef zero = 0;
        z[0] = ::crc32(0, &zero, 1);
        for (size_t k = 1; k < z.size(); ++k) {
            z[k] =
                ::crc32_combine(z[k - 1], z[k - 1], static_cast<z_off_t>(uint64_t{1} << (k - 1)));
        }
        return z;
    }();
    // 2^63 is past z_off_t (zlib would loop forever on its negative
    // length): that bit is done as two 2^62 steps.
    const bool top = n >> 63;
    n &= ~(uint64_t{1} << 63);
    for (size_t k = 0; n; ++k, n >>= 1) {
        if (n & 1) {
            crc = static_cast<uint32_t>(
                ::crc32_combine(crc, zeros[k], static_cast<z_off_t>(uint64_t{1} << k)));
        }
    }
    for (int i = 0; top && i < 2; ++i) {
        crc = static_cast<uint32_t>(
            ::crc32_combine(crc, zeros[62], static_cast<z_off_t>(uint64_t{1} << 62)));
    }
    return crc;
}

ms_file_header encode_ms_file_header(const ms_file_meta& m) {
    ms_file_header h{};
    std::memcpy(h.data() + off_magic, magic, sizeof(magic));
    put_le<uint32_t>(h, off_version, format_version);
    put_le<uint32_t>(h, off_header_size, ms_file_header_size);
    put_le<uint64_t>(h, off_length, m.length);
    put_le<uint32_t>(h, off_flags, m.flags);
    put_le<uint32_t>(h, off_mode, m.mode);
    put_le<uint32_t>(h, off_node, static_cast<uint32_t>(m.numa_node));
    put_le<uint32_t>(h, off_crc, m.crc32);
    put_le<uint64_t>(h, off_created, m.created_ns);
    std::memcpy(h.data() + off_name, m.name.data(),
                std::min<size_t>(m.name.size(), LLMOS_NAME_MAX - 1));
    return h;
}

result<ms_file_meta> decode_ms_file_header(std::span<const std::byte> h) {
    if (h.size() < ms_file_header_size || std::memcmp(h.data(), magic, sizeof(magic)) != 0) {
        return errc::not_ms_file;
    }
    if (get_le<uint32_t>(h, off_version) != format_version) {
        return errc::ms_file_version;
    }
    ms_file_meta m;
    m.length = get_le<uint64_t>(h, off_length);
    m.flags = get_le<uint32_t>(h, off_flags);
    m.mode = get_le<uint32_t>(h, off_mode);
    m.numa_node = static_cast<int32_t>(get_le<uint32_t>(h, off_node));
    m.crc32 = get_le<uint32_t>(h, off_crc);
    m.created_ns = get_le<uint64_t>(h, off_created);
    auto name = reinterpret_cast<const char*>(h.data() + off_name);
    size_t name_len = strnlen(name, LLMOS_NAME_MAX);
    if (get_le<uint32_t>(h, off_header_size) != ms_file_header_size || name_len == LLMOS_NAME_MAX ||
        !all_zero(h.subspan(off_name + name_len, LLMOS_NAME_MAX - name_len)) ||
        !all_zero(h.subspan(off_end, ms_file_header_size - off_end))) {
        return errc::ms_file_corrupt;
    }
    m.name.assign(name, name_len);
    if (!meta_ok(m, m.length)) {
        return errc::ms_file_corrupt;
    }
    return m;
}

std::error_code save_ms_file(int fd, ms_file_meta m, std::span<const std::byte> data,
                             const std::vector<byte_range>* data_ranges) {
    std::vector<byte_range> all{{0, data.size()}};
    if (!data_ranges) {
        data_ranges = &all;
    }
    // Whatever would make a file that cannot be loaded is refused before
    // the file is touched.
    const auto bad = std::make_error_code(std::errc::invalid_argument);
    if (!meta_ok(m, data.size())) {
        return bad;
    }
    for (uint64_t end = 0; const auto& r : *data_ranges) {
        if (r.offset < end || r.offset > data.size() || r.length > data.size() - r.offset) {
            return bad;
        }
        end = r.offset + r.length;
    }
    // pwrite() at an offset writes at the end of an O_APPEND file.
    if (const int fl = ::fcntl(fd, F_GETFL); fl < 0) {
        return last_error();
    } else if (fl & O_APPEND) {
        return bad;
    }
    if (::ftruncate(fd, 0) != 0) {
        return last_error();
    }
    uint32_t crc = 0;
    uint64_t pos = 0;
    for (const auto& r : *data_ranges) {
        crc = crc32_zeros(crc, r.offset - pos);
        auto run = data.subspan(r.offset, r.length);
        // Page by page through a copy: the CRC is of the bytes written,
        // even while someone writes the mindspace.
        std::vector<std::byte> copy(page);
        for (size_t off = 0; off < run.size(); off += page) {
            const size_t n = std::min(page, run.size() - off);
            std::memcpy(copy.data(), run.data() + off, n);
            std::span<const std::byte> p(copy.data(), n);
            crc = crc32_update(crc, p);
            if (all_zero(p)) {
                continue; // a hole
            }
            if (auto ec = write_all(fd, p.data(), p.size(),
                                    static_cast<off_t>(ms_file_header_size + r.offset + off))) {
                return ec;
            }
        }
        pos = r.offset + r.length;
    }
    crc = crc32_zeros(crc, data.size() - pos);
    m.length = data.size();
    m.crc32 = crc;
    auto h = encode_ms_file_header(m);
    if (auto ec = write_all(fd, h.data(), h.size(), 0)) {
        return ec;
    }
    if (::ftruncate(fd, static_cast<off_t>(ms_file_header_size + data.size())) != 0) {
        return last_error();
    }
    return {};
}

result<ms_file_meta> read_ms_file_meta(int fd) {
    ms_file_header h;
    if (auto ec = read_all(fd, h.data(), h.size(), 0)) {
        return ec == errc::ms_file_corrupt ? errc::not_ms_file : ec;
    }
    auto m = decode_ms_file_header(h);
    if (!m) {
        return m;
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        return last_error();
    }
    if (static_cast<uint64_t>(st.st_size) != ms_file_header_size + m->length) {
        return errc::ms_file_corrupt;
    }
    return m;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 // Linux 5.14
#endif

bool detail::numa_node_online(int node) {
    return node == 0 ||
           (node > 0 &&
            ::access(("/sys/devices/system/node/node" + std::to_string(node)).c_str(), F_OK) == 0);
}

std::error_code detail::make_pages_writable(std::span<std::byte> bytes) noexcept {
    static const auto sys_page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto at = reinterpret_cast<uintptr_t>(bytes.data());
    const uintptr_t start = at - at % sys_page;
    while (::madvise(reinterpret_cast<void*>(start), bytes.size() + (at - start),
                     MADV_POPULATE_WRITE) != 0) {
        if (errno == EINVAL) {
            return {};
        }
        if (errno != EINTR) {
            return std::make_error_code(errno == EFAULT ? std::errc::no_space_on_device
                                                        : static_cast<std::errc>(errno));
        }
    }
    return {};
}

std::error_code load_ms_file_data(int fd, const ms_file_meta& m, std::span<std::byte> dest) {
    if (dest.size() != m.length) {
        return std::make_error_code(std::errc::invalid_argument);
    }
    std::vector<std::byte> buf(chunk);
    uint32_t crc = 0;
    uint64_t pos = 0; // data offset up to which the CRC has been computed
    while (pos < m.length) {
        // The next data region at or after pos; holes read as zeros.
        off_t data = ::lseek(fd, static_cast<off_t>(ms_file_header_size + pos), SEEK_DATA);
        uint64_t data_pos = m.length;
        if (data >= 0) {
            data_pos =
                std::min<uint64_t>(static_cast<uint64_t>(data) - ms_file_header_size, m.length);
        } else if (errno != ENXIO) {
            return last_error();
        }
        data_pos -= data_pos % page;
        if (pos < data_pos) {
            crc = crc32_zeros(crc, data_pos - pos);
            pos = data_pos;
        }
        if (pos >= m.length) {
            break;
        }
        auto n = std::min<uint64_t>(chunk, m.length - pos);
        if (auto ec = read_all(fd, buf.data(), n, static_cast<off_t>(ms_file_header_size + pos))) {
            return ec;
        }
        auto in = std::span{buf}.first(n);
        crc = crc32_update(crc, in);
        // Runs of pages that are not all zero: their pages are made first
        // (a full store or a spent quota is an error here, where a write
        // into the mapping would be SIGBUS), then written.
        for (size_t off = 0; off < n;) {
            auto page_at = [&](size_t o) { return in.subspan(o, std::min<size_t>(page, n - o)); };
            if (all_zero(page_at(off))) {
                off += page;
                continue;
            }
            size_t end = off + page;
            while (end < n && !all_zero(page_at(end))) {
                end += page;
            }
            end = std::min(end, n);
            if (auto ec = detail::make_pages_writable(dest.subspan(pos + off, end - off))) {
                return ec;
            }
            std::memcpy(dest.data() + pos + off, in.data() + off, end - off);
            off = end;
        }
        pos += n;
    }
    if (crc != m.crc32) {
        return errc::ms_file_corrupt;
    }
    return {};
}

} // namespace llmos
