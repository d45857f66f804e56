// SPDX-License-Identifier: MIT
//
// Weights packed in panels of 16 rows for the AVX-512 kernels and, read as
// two halves of 8 rows, the AVX2 ones (the layout is in quant_kernels.hh).
// Portable code: a model is packed once, at load. Every type goes through
// the same step: a row's 32-element group as 32 levels (unsigned), written
// into lane r of the group's vectors.
#include "quant_kernels.hh"

#include <cstring>
#include <type_traits>

namespace llmos::engine::detail {

namespace {

// ---- one group of 32 levels into lane r ------------------------------------

/// Vector i's byte 4r + k is element 4i + k: Q8_0's levels as bytes (512).
void put_bytes(const uint8_t* lev, int r, uint8_t* out) {
    for (int i = 0; i < 8; ++i) {
        std::memcpy(out + 64 * i + 4 * r, lev + 4 * i, 4);
    }
}

/// The low 4 bits in nibbles (256 bytes): chunk j's low nibbles are vector
/// 2j (elements 8j..8j+3), its high nibbles vector 2j + 1 (8j+4..8j+7).
void put_nibbles(const uint8_t* lev, int r, uint8_t* out) {
    for (int j = 0; j < 4; ++j) {
        for (int k = 0; k < 4; ++k) {
            out[64 * j + 4 * r + k] =
                static_cast<uint8_t>((lev[8 * j + k] & 0x0f) | (lev[8 * j + 4 + k] & 0x0f) << 4);
        }
    }
}

/// Bit 4 as 8 masks of 64 bits (64 bytes): bit 4r + k of mask i is that of
/// element 4i + k.
void put_fifth(const uint8_t* lev, int r, uint8_t* out) {
    for (int i = 0; i < 8; ++i) {
        uint64_t mask = 0;
        std::memcpy(&mask, out + 8 * i, sizeof mask);
        for (int k = 0; k < 4; ++k) {
            mask |= static_cast<uint64_t>((lev[4 * i + k] >> 4) & 1u) << (4 * r + k);
        }
        std::memcpy(out + 8 * i, &mask, sizeof mask);
    }
}

/// Bits 4 and 5 in a 2-bit plane (128 bytes): byte 4r + k of chunk c holds
/// vector 4c + q's element in bits 2q, 2q + 1.
void put_high2(const uint8_t* lev, int r, uint8_t* out) {
    for (int c = 0; c < 2; ++c) {
        for (int k = 0; k < 4; ++k) {
            unsigned v = 0;
            for (int q = 0; q < 4; ++q) {
                v |= ((lev[4 * (4 * c + q) + k] >> 4) & 3u) << (2 * q);
            }
            out[64 * c + 4 * r + k] = static_cast<uint8_t>(v);
        }
    }
}

// ---- the 32-element types --------------------------------------------------

/// A 32-element block's levels: Q8_0's q + 128, the others' nibbles (and
/// fifth bits).
template <typename Block>
void levels_of(const Block& blk, uint8_t* lev) {
    if constexpr (block32_traits<Block>::q8) {
        for (int e = 0; e < qk_block; ++e) {
            lev[e] = static_cast<uint8_t>(blk.qs[e]) ^ 0x80u;
        }
    } else {
        uint32_t qh = 0;
        if constexpr (block32_traits<Block>::five) {
            std::memcpy(&qh, blk.qh, sizeof qh);
        }
        for (int e = 0; e < 16; ++e) {
            lev[e] = static_cast<uint8_t>((blk.qs[e] & 0x0f) | ((qh >> e) & 1u) << 4);
            lev[e + 16] = static_cast<uint8_t>((blk.qs[e] >> 4) | ((qh >> (e + 16)) & 1u) << 4);
        }
    }
}

template <typename Block>
void pack_small(const std::byte* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
                uint8_t* dst) {
    using tr = block32_traits<Block>;
    const int64_t nb = cols / qk_block;
    for (int r = 0; r < panel_rows && r0 + r < rows; ++r) {
        const auto* row = reinterpret_cast<const Block*>(w + static_cast<size_t>(r0 + r) * stride);
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t lev[qk_block];
            levels_of(row[b], lev);
            const group32_offsets at = group32_at<Block>(nb, b);
            uint8_t* out = dst + at.levels;
            if constexpr (tr::q8) {
                put_bytes(lev, r, out);
            } else {
                put_nibbles(lev, r, out);
                if constexpr (tr::five) {
                    put_fifth(lev, r, out + 256);
                }
            }
            std::memcpy(dst + at.d + 2 * r, &row[b].d, 2);
            if constexpr (tr::affine) {
                std::memcpy(dst + at.m + 2 * r, &row[b].m, 2);
            }
        }
    }
}

// ---- K-quants --------------------------------------------------------------

/// Sub-block s's 6-bit scale and min of a Q4_K/Q5_K super-block.
void scale_min(const uint8_t* b, int s, uint8_t& sc, uint8_t& m) {
    if (s < 4) {
        sc = b[s] & 63;
        m = b[s + 4] & 63;
    } else {
        sc = static_cast<uint8_t>((b[s + 4] & 0xf) | (b[s - 4] >> 6) << 4);
        m = static_cast<uint8_t>((b[s + 4] >> 4) | (b[s] >> 6) << 4);
    }
}

template <typename Block>
void pack_affine_k(const std::byte* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
                   uint8_t* dst) {
    constexpr bool five = std::is_same_v<Block, block_q5_k>;
    constexpr size_t lb = five ? 320 : 256;
    const size_t sb_bytes = panel_bytes(five ? ggml_type::q5_k : ggml_type::q4_k, qk_super);
    for (int r = 0; r < panel_rows && r0 + r < rows; ++r) {
        const auto* row = reinterpret_cast<const Block*>(w + static_cast<size_t>(r0 + r) * stride);
        for (int64_t b = 0; b < cols / qk_super; ++b) {
            const Block& blk = row[b];
            uint8_t* sb = dst + static_cast<size_t>(b) * sb_bytes;
            uint8_t* sc = sb + 8 * lb;
            auto* mins = reinterpret_cast<int16_t*>(sc + 8 * panel_rows);
            auto* d = reinterpret_cast<uint16_t*>(mins + 8 * panel_rows);
            for (int s = 0; s < 8; ++s) {
                // Sub-block s: the low (s even) or high nibbles of chunk s / 2.
                uint8_t lev[32];
                for (int l = 0; l < 32; ++l) {
                    unsigned v = (blk.qs[32 * (s / 2) + l] >> (4 * (s & 1))) & 0x0fu;
                    if constexpr (five) {
                        v |= ((blk.qh[l] >> s) & 1u) << 4;
                    }
                    lev[l] = static_cast<uint8_t>(v);
                }
                put_nibbles(lev, r, sb + lb * static_cast<size_t>(s));
                if constexpr (five) {
                    put_fifth(lev, r, sb + lb * static_cast<size_t>(s) + 256);
                }
                uint8_t m = 0;
                scale_min(blk.scales, s, sc[s * panel_rows + r], m);
                // Mins in pairs: vector p, lane r = (m[2p], m[2p + 1]).
                mins[(s / 2) * 2 * panel_rows + 2 * r + (s & 1)] = m;
            }
            d[r] = blk.d;
            d[panel_rows + r] = blk.dmin;
        }
    }
}

void pack_q6_k(const std::byte* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
               uint8_t* dst) {
    const size_t sb_bytes = panel_bytes(ggml_type::q6_k, qk_super);
    for (int r = 0; r < panel_rows && r0 + r < rows; ++r) {
        const auto* row =
            reinterpret_cast<const block_q6_k*>(w + static_cast<size_t>(r0 + r) * stride);
        for (int64_t b = 0; b < cols / qk_super; ++b) {
            const block_q6_k& blk = row[b];
            uint8_t* sb = dst + static_cast<size_t>(b) * sb_bytes;
            // Element 128h + 32k + l: ql[64h + 32(k & 1) + l] (low nibble for
            // k < 2, high otherwise) and bits 2k, 2k + 1 of qh[32h + l].
            uint8_t lev[qk_super];
            for (int h = 0; h < 2; ++h) {
                for (int k = 0; k < 4; ++k) {
                    for (int l = 0; l < 32; ++l) {
                        const unsigned lo =
                            (blk.ql[64 * h + 32 * (k & 1) + l] >> (k < 2 ? 0 : 4)) & 0x0fu;
                        const unsigned hi = (blk.qh[32 * h + l] >> (2 * k)) & 3u;
                        lev[128 * h + 32 * k + l] = static_cast<uint8_t>(lo | hi << 4);
                    }
                }
            }
            for (int g = 0; g < 8; ++g) {
                put_nibbles(lev + 32 * g, r, sb + 384 * static_cast<size_t>(g));
                put_high2(lev + 32 * g, r, sb + 384 * static_cast<size_t>(g) + 256);
            }
            // Scales in pairs: vector p, lane r = (sc[2p], sc[2p + 1]).
            auto* sc = reinterpret_cast<int16_t*>(sb + 8 * 384);
            for (int j = 0; j < 16; ++j) {
                sc[(j / 2) * 2 * panel_rows + 2 * r + (j & 1)] = blk.scales[j];
            }
            std::memcpy(sb + 8 * 384 + 16 * 2 * panel_rows + 2 * r, &blk.d, sizeof blk.d);
        }
    }
}

// ---- float types -------------------------------------------------------------

/// Column k of the 16 rows as 16 values of W (F32 or F16 bits) in a row.
template <typename W>
void pack_float(const std::byte* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
                uint8_t* dst) {
    auto* out = reinterpret_cast<W*>(dst);
    for (int r = 0; r < panel_rows && r0 + r < rows; ++r) {
        const auto* row = reinterpret_cast<const W*>(w + static_cast<size_t>(r0 + r) * stride);
        for (int64_t k = 0; k < cols; ++k) {
            out[k * panel_rows + r] = row[k];
        }
    }
}

} // namespace

size_t panel_bytes(ggml_type t, int64_t cols) noexcept {
    if (cols < 0) {
        return 0;
    }
    const auto n32 = static_cast<size_t>(cols / qk_block);
    const auto n256 = static_cast<size_t>(cols / qk_super);
    size_t bytes = 0;
    switch (t) {
    case ggml_type::q8_0:
        bytes = n32 * block32_traits<block_q8_0>::group_bytes;
        break;
    case ggml_type::q4_0:
        bytes = n32 * block32_traits<block_q4_0>::group_bytes;
        break;
    case ggml_type::q4_1:
        bytes = n32 * block32_traits<block_q4_1>::group_bytes;
        break;
    case ggml_type::q5_0:
        bytes = n32 * block32_traits<block_q5_0>::group_bytes;
        break;
    case ggml_type::q5_1:
        bytes = n32 * block32_traits<block_q5_1>::group_bytes;
        break;
    case ggml_type::q4_k:
    case ggml_type::q5_k:
    case ggml_type::q6_k:
        bytes = n256 * k_panel_bytes(t);
        break;
    case ggml_type::f32:
        bytes = static_cast<size_t>(cols) * panel_rows * sizeof(float);
        break;
    case ggml_type::f16:
    case ggml_type::bf16:
        bytes = static_cast<size_t>(cols) * panel_rows * sizeof(uint16_t);
        break;
    default:
        return 0;
    }
    const size_t block = info(t)->block_elems;
    if (cols % static_cast<int64_t>(block) != 0) {
        return 0;
    }
    return (bytes + 63) / 64 * 64;
}

void pack_panel(ggml_type t, const void* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
                void* dst) noexcept {
    // Padding rows (and the masks' bits) start as zeros: scales 0.
    std::memset(dst, 0, panel_bytes(t, cols));
    const auto* src = static_cast<const std::byte*>(w);
    auto* out = static_cast<uint8_t*>(dst);
    switch (t) {
    case ggml_type::q8_0:
        return pack_small<block_q8_0>(src, stride, rows, cols, r0, out);
    case ggml_type::q4_0:
        return pack_small<block_q4_0>(src, stride, rows, cols, r0, out);
    case ggml_type::q4_1:
        return pack_small<block_q4_1>(src, stride, rows, cols, r0, out);
    case ggml_type::q5_0:
        return pack_small<block_q5_0>(src, stride, rows, cols, r0, out);
    case ggml_type::q5_1:
        return pack_small<block_q5_1>(src, stride, rows, cols, r0, out);
    case ggml_type::q4_k:
        return pack_affine_k<block_q4_k>(src, stride, rows, cols, r0, out);
    case ggml_type::q5_k:
        return pack_affine_k<block_q5_k>(src, stride, rows, cols, r0, out);
    case ggml_type::q6_k:
        return pack_q6_k(src, stride, rows, cols, r0, out);
    case ggml_type::f32:
        return pack_float<float>(src, stride, rows, cols, r0, out);
    case ggml_type::f16:
    case ggml_type::bf16:
        return pack_float<uint16_t>(src, stride, rows, cols, r0, out);
    default:
        return;
    }
}

size_t act_panel_row_bytes(ggml_type t, int64_t cols) noexcept {
    switch (act_format_of(t)) {
    case act_format::q8_32:
        return act_row_bytes(act_format::q8_32, cols) +
               static_cast<size_t>(cols / qk_block) * sizeof(int32_t);
    case act_format::q8_256:
        return act_row_bytes(act_format::q8_256, cols);
    case act_format::f32:
        return static_cast<size_t>(cols) * sizeof(float);
    }
    return 0;
}

} // namespace llmos::engine::detail
