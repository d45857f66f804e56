// SPDX-License-Identifier: MIT
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <llmos/result.hh>
#include <span>
#include <string>
#include <vector>

namespace llmos {

/// A mindspace saved to a file (`llmosctl ms save`): a 4096-byte header,
/// then the mindspace's bytes, with holes where pages are zero.
///
/// Header (little-endian): magic "LLMOSMS1", u32 version (1), u32 header
/// size (4096), u64 length, u32 flags (LLMOS_MS_*), u32 mode, s32 NUMA
/// node (-1: any), u32 CRC-32 of the data, u64 creation time (ns),
/// char name[64], zeros.
struct ms_file_meta {
    uint64_t length = 0;
    uint32_t flags = 0;
    uint32_t mode = 0;
    int32_t numa_node = -1;
    uint32_t crc32 = 0;
    uint64_t created_ns = 0;
    std::string name;
};

constexpr size_t ms_file_header_size = 4096;
using ms_file_header = std::array<std::byte, ms_file_header_size>;

ms_file_header encode_ms_file_header(const ms_file_meta& m);
/// Errors: errc::not_ms_file (magic), errc::ms_file_version,
/// errc::ms_file_corrupt (sizes, a name no mindspace may have, mode or
/// flags bits that are not a mindspace's, a NUMA node below -1, reserved
/// bytes).
result<ms_file_meta> decode_ms_file_header(std::span<const std::byte> h);

/// CRC-32 (zlib's) of `data`, continuing from `crc` (start with 0).
uint32_t crc32_update(uint32_t crc, std::span<const std::byte> data) noexcept;
/// The same for `n` zero bytes, in O(log n), for any `n`.
uint32_t crc32_zeros(uint32_t crc, uint64_t n) noexcept;

/// A run of bytes: [offset, offset + length).
struct byte_range {
    uint64_t offset = 0;
    uint64_t length = 0;
};

/// Writes `m` and `data` to `fd` (at its start; the file is truncated):
/// zero pages become holes. m.length and m.crc32 are taken from `data`.
/// With `data_ranges` (sorted, as mindspace::data_ranges() gives), only
/// those parts of `data` are read: the rest is known to be zero and is
/// never touched (reading it would allocate a mindspace's pages).
/// EINVAL, with the file untouched, for what would make a file that cannot
/// be loaded: `data` empty or not whole pages, m.mode past 0777, flags other
/// than LLMOS_MS_PERSISTENT and LLMOS_MS_NODE, a name valid_ms_name()
/// refuses, ranges unsorted or out of bounds, an O_APPEND fd. Other errors
/// (a failed write) leave the file truncated.
[[nodiscard]] std::error_code save_ms_file(int fd, ms_file_meta m, std::span<const std::byte> data,
                                           const std::vector<byte_range>* data_ranges = nullptr);

/// Reads the header of the file at `fd` and checks the file's size.
result<ms_file_meta> read_ms_file_meta(int fd);

/// Reads the data of the file at `fd` into `dest` (m.length bytes, which
/// must be zero-filled already, as a new mindspace is): only the file's
/// data regions are read and only non-zero pages are written, so a sparse
/// mindspace stays sparse. Checks the CRC (errc::ms_file_corrupt).
[[nodiscard]] std::error_code load_ms_file_data(int fd, const ms_file_meta& m,
                                                std::span<std::byte> dest);

namespace detail {
/// Makes the pages of `bytes`, in a shared mapping, writable now (Linux
/// 5.14's MADV_POPULATE_WRITE), so that writing them cannot raise SIGBUS:
/// std::errc::no_space_on_device where no page could be had for them (a
/// full store, a spent quota), the errno otherwise (ENOMEM); nothing where
/// the kernel or the mapping cannot tell (the writes then find out).
[[nodiscard]] std::error_code make_pages_writable(std::span<std::byte> bytes) noexcept;
/// Whether this machine has NUMA node `node` online, as the module asks
/// of MS_CREATE (node 0 is there also without NUMA support, and its sysfs).
bool numa_node_online(int node);
} // namespace detail

} // namespace llmos
