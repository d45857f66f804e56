// SPDX-License-Identifier: MIT
//
// Weights packed in panels of 16 rows for the AVX-512 kernels (the layout
// is in quant_kernels.hh). Portable code: a model is packed once, at load.
#include "quant_kernels.hh"

#include <cstring>
#include <type_traits>

namespace llmos::engine::detail {

namespace {

/// Bytes of one block's levels in a panel.
size_t level_bytes(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return 512;
    case ggml_type::q4_0:
    case ggml_type::q4_1:
        return 256;
    case ggml_type::q5_0:
    case ggml_type::q5_1:
        return 320;
    default:
        return 0;
    }
}

bool affine(ggml_type t) noexcept {
    return t == ggml_type::q4_1 || t == ggml_type::q5_1;
}

template <typename Block>
constexpr bool has_m = std::is_same_v<Block, block_q4_1> || std::is_same_v<Block, block_q5_1>;

template <typename Block>
constexpr bool has_qh = std::is_same_v<Block, block_q5_0> || std::is_same_v<Block, block_q5_1>;

/// One row's block into its lane r of the panel's block b.
template <typename Block>
void put_block(const Block& blk, int r, uint8_t* levels, uint16_t* d, uint16_t* m) {
    d[r] = blk.d;
    if constexpr (has_m<Block>) {
        m[r] = blk.m;
    }
    if constexpr (std::is_same_v<Block, block_q8_0>) {
        for (int i = 0; i < 8; ++i) {
            for (int k = 0; k < 4; ++k) {
                levels[64 * i + 4 * r + k] = static_cast<uint8_t>(blk.qs[4 * i + k]) ^ 0x80u;
            }
        }
    } else {
        // Element e < 16 is the low nibble of qs[e], e >= 16 the high
        // nibble of qs[e - 16]; vector 2j holds elements 8j..8j+3, vector
        // 2j + 1 elements 8j+4..8j+7.
        for (int j = 0; j < 4; ++j) {
            for (int k = 0; k < 4; ++k) {
                const int e0 = 8 * j + k;
                const int e1 = e0 + 4;
                const auto nib = [&](int e) {
                    return e < 16 ? blk.qs[e] & 0x0fu : static_cast<unsigned>(blk.qs[e - 16] >> 4);
                };
                levels[64 * j + 4 * r + k] = static_cast<uint8_t>(nib(e0) | nib(e1) << 4);
            }
        }
        if constexpr (has_qh<Block>) {
            uint32_t qh = 0;
            std::memcpy(&qh, blk.qh, sizeof qh);
            for (int i = 0; i < 8; ++i) {
                uint64_t mask = 0;
                std::memcpy(&mask, levels + 256 + 8 * i, sizeof mask);
                for (int k = 0; k < 4; ++k) {
                    mask |= static_cast<uint64_t>((qh >> (4 * i + k)) & 1u) << (4 * r + k);
                }
                std::memcpy(levels + 256 + 8 * i, &mask, sizeof mask);
            }
        }
    }
}

template <typename Block, ggml_type T>
void pack(const void* w, size_t stride, int64_t rows, int64_t cols, int64_t r0, void* dst) {
    const int64_t nb = cols / qk_block;
    const size_t lb = level_bytes(T);
    auto* levels = static_cast<uint8_t*>(dst);
    auto* d = reinterpret_cast<uint16_t*>(levels + static_cast<size_t>(nb) * lb);
    auto* m = d + nb * panel_rows;
    // Padding rows (and the masks' bits) start as zeros: d = 0, m = 0.
    std::memset(dst, 0, panel_bytes(T, cols));
    for (int r = 0; r < panel_rows && r0 + r < rows; ++r) {
        const auto* row = reinterpret_cast<const Block*>(static_cast<const std::byte*>(w) +
                                                         static_cast<size_t>(r0 + r) * stride);
        for (int64_t b = 0; b < nb; ++b) {
            put_block(row[b], r, levels + static_cast<size_t>(b) * lb, d + b * panel_rows,
                      m + b * panel_rows);
        }
    }
}

} // namespace

size_t panel_bytes(ggml_type t, int64_t cols) noexcept {
    const size_t lb = level_bytes(t);
    if (lb == 0 || cols < 0 || cols % qk_block != 0) {
        return 0;
    }
    const auto nb = static_cast<size_t>(cols / qk_block);
    const size_t scales = (affine(t) ? 2 : 1) * panel_rows * sizeof(uint16_t);
    return (nb * (lb + scales) + 63) / 64 * 64;
}

void pack_panel(ggml_type t, const void* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
                void* dst) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return pack<block_q8_0, ggml_type::q8_0>(w, stride, rows, cols, r0, dst);
    case ggml_type::q4_0:
        return pack<block_q4_0, ggml_type::q4_0>(w, stride, rows, cols, r0, dst);
    case ggml_type::q4_1:
        return pack<block_q4_1, ggml_type::q4_1>(w, stride, rows, cols, r0, dst);
    case ggml_type::q5_0:
        return pack<block_q5_0, ggml_type::q5_0>(w, stride, rows, cols, r0, dst);
    case ggml_type::q5_1:
        return pack<block_q5_1, ggml_type::q5_1>(w, stride, rows, cols, r0, dst);
    default:
        return;
    }
}

size_t act_panel_row_bytes(int64_t cols) noexcept {
    return act_row_bytes(act_format::q8_32, cols) +
           static_cast<size_t>(cols / qk_block) * sizeof(int32_t);
}

} // namespace llmos::engine::detail
