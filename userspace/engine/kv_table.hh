// SPDX-License-Identifier: MIT
//
// Private to the engine: a KV cache's block table (logical block ->
// physical block), the same for the CPU cache and the CUDA one. The table
// maps a prefix of the logical blocks; the caches keep their own copy and
// write each change through to the memory they persist in, which its owner
// may write too: what is read from there is checked here.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace llmos::engine::detail {

inline constexpr uint32_t no_block = UINT32_MAX;

/// One word of memory its owner may write at any time (a mindspace), read
/// exactly once: what is checked is what is used (a plain read may be
/// read again by the compiler, between the check and the use).
inline uint32_t read_once(const uint32_t* p) noexcept {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/// The first logical block at or after `b` that is not mapped.
inline uint32_t mapped_end(std::span<const uint32_t> table, uint32_t b) noexcept {
    while (b < table.size() && table[b] != no_block) {
        ++b;
    }
    return b;
}

/// Whether `phys`, a block found in the memory, is one of the `taken.size()`
/// blocks taken so far and not seen before; marks it in `taken`.
inline bool take_block(uint32_t phys, std::vector<bool>& taken) {
    if (phys >= taken.size() || taken[phys]) {
        return false;
    }
    taken[phys] = true;
    return true;
}

/// Copies `found` (the table as found in the memory, which its owner may
/// be writing: each entry is read once, into `tab`, and checked there)
/// into `tab` when it maps a prefix of the logical blocks, covering
/// `n_tokens` at `block_tokens` a block, to distinct blocks taken so far
/// (marked in `taken`, one entry per block taken). False, with `tab`
/// partly written, when it does not.
inline bool take_table(std::span<const uint32_t> found, uint64_t n_tokens, uint32_t block_tokens,
                       std::vector<bool>& taken, std::vector<uint32_t>& tab) {
    for (size_t b = 0; b < found.size(); ++b) {
        tab[b] = read_once(&found[b]);
    }
    const uint32_t mapped = mapped_end(tab, 0);
    for (uint32_t b = 0; b < mapped; ++b) {
        if (!take_block(tab[b], taken)) {
            return false;
        }
    }
    for (uint32_t b = mapped; b < tab.size(); ++b) {
        if (tab[b] != no_block) {
            return false; // mapped past a hole
        }
    }
    return mapped >= (n_tokens + block_tokens - 1) / block_tokens;
}

} // namespace llmos::engine::detail
