// SPDX-License-Identifier: MIT
//
// Private to the engine: the per-row dot kernels behind matmul, and the
// 8-bit activation formats they read. quant_ref.cc has the portable
// kernels, quant_avx2.cc the AVX2 + FMA + F16C ones; both compute the
// same integer sums, so they differ only in the order floats are added.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <llmos/engine/matmul.hh>
#include <llmos/engine/quant.hh>
#include <span>
#include <type_traits>

namespace llmos::engine::detail {

/// Activations quantized for the 32-element weight types (Q8_0, Q4_0,
/// Q4_1, Q5_0, Q5_1), one row of `cols` values in blocks of 32, laid out
/// by field so that the scales of 8 blocks load as one vector: int8
/// q[cols] (x = d * q, q in -127..127), then float d[cols / 32], then
/// float ds[cols / 32] = d * sum(q) of the block: what the weights'
/// offsets need (Q4_0's -8 d_w and Q5_0's -16 d_w, Q4_1's and Q5_1's m
/// are the same for the whole block, so they multiply the block's sum).
/// act_row_bytes() gives the size.
inline const int8_t* act32_qs(const void* row) {
    return static_cast<const int8_t*>(row);
}
inline const float* act32_d(const void* row, int64_t cols) {
    return reinterpret_cast<const float*>(static_cast<const std::byte*>(row) + cols);
}
inline const float* act32_ds(const void* row, int64_t cols) {
    return act32_d(row, cols) + cols / qk_block;
}

/// Activations quantized for K-quant weights: 256 values, x = d * q with
/// q in -127..127, and the sum of each 16 consecutive q (the mins and
/// offsets of Q4_K, Q5_K and Q6_K).
struct alignas(32) act_q8_256 {
    int8_t qs[qk_super];
    int16_t bsums[qk_super / 16];
    float d;
};
static_assert(sizeof(act_q8_256) == 320);

/// A BF16 weight: its own type, so that the float kernels' templates (over
/// float, uint16_t for F16, and this) tell it from an F16 one.
struct bf16 {
    uint16_t bits;
};
static_assert(sizeof(bf16) == 2);

/// How a weight type wants its activations.
enum class act_format : uint8_t {
    f32,    ///< the float rows themselves (F32, F16 and BF16 weights)
    q8_32,  ///< act32 rows (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
    q8_256, ///< act_q8_256 blocks (Q4_K, Q5_K, Q6_K)
};

/// The most tokens one kernel call handles (one weight row, several
/// activation rows: the weights are loaded and unpacked once for all).
inline constexpr int max_tile = 4;

/// out[t] = sum over k < cols of W[k] * x_t[k] for t < nt (1..max_tile),
/// where W is one weight row and x_t the activation row at
/// act + t * act_stride bytes, in the format of the weight type.
using row_kernel = void (*)(const void* w_row, const void* act, size_t act_stride, int nt,
                            int64_t cols, float* out);

/// Quantizes one row of `cols` floats into activation format blocks.
using act_quantizer = void (*)(const float* x, void* dst, int64_t cols);

/// The activation format of a supported weight type (f32 for others).
act_format act_format_of(ggml_type t) noexcept;

/// Bytes of one activation row of `cols` values in format `f` (cols a
/// whole number of the format's blocks).
size_t act_row_bytes(act_format f, int64_t cols) noexcept;

/// Kernels for a type at a level; nullptr for an unsupported type.
row_kernel row_kernel_ref(ggml_type t) noexcept;
row_kernel row_kernel_avx2(ggml_type t) noexcept;

/// The values a quantized activation row stands for (d * q), into `out`
/// (cols floats); f must not be act_format::f32.
void act_dequantize(act_format f, const void* row, int64_t cols, float* out) noexcept;

/// Activation quantizers; nullptr for act_format::f32.
act_quantizer act_quantizer_ref(act_format f) noexcept;
act_quantizer act_quantizer_avx2(act_format f) noexcept;

// ---- AVX-512: packed weights ---------------------------------------------
//
// The AVX-512 kernels of the quantized types (and the AVX2 ones of some,
// each 64-byte vector as two halves of 8 rows) read weights packed in panels
// of 16 rows (one per 32-bit lane), the last one padded with zero rows,
// panel after panel, each panel_bytes() long and 64-byte aligned. Every
// group of 32 elements of the 16 rows is 8 vectors of 64 bytes of unsigned
// levels: byte 4r + k of vector i is element 4i + k of row r's group, so
// one vpdpbusd of vector i with 4 activations broadcast adds them to all
// 16 rows' sums. Levels are stored as
//
//   bytes    Q8_0's q + 128 (512 bytes a group);
//   nibbles  the low 4 bits (256 bytes: the low nibbles of 64-byte chunk j
//            are vector 2j, the high ones vector 2j + 1), then for 5-bit
//            levels 8 64-bit masks (bit 4r + k of mask i: bit 4 of that
//            element; 64 bytes), for Q6_K's 6-bit ones a 2-bit plane (byte
//            4r + k of 64-byte chunk c: bits 2q, 2q + 1 are bits 4, 5 of
//            vector 4c + q's element; 128 bytes).
//
// 32-element types, per group: the levels (bytes for Q8_0, nibbles and
// masks for the others), the 16 rows' d as halves (32 bytes) and for
// Q4_1/Q5_1 their m (32 bytes). Groups go in pairs, [levels 0][levels 1]
// [d 0][d 1]([m 0][m 1]), a whole number of 64-byte lines; a last odd
// group is alone, [levels][d]([m]), padded to 64 bytes at the panel's end
// (group32_at()). So a panel is read front to back, one stream: with the
// scales after all of a panel's levels, the hardware prefetchers stopped
// at every panel and a decode step read its weights at about half the
// memory's read bandwidth. A weight is d * (level - zero) (+ m): zero is
// 128 for Q8_0, 8 for Q4_0, 16 for Q5_0 and 0 for the affine types.
//
// F32 and F16: column after column, the 16 rows' values (64 or 32 bytes).
//
// K-quants, one super-block of 256 after another (k_panel_bytes() each):
//   Q4_K, Q5_K  8 groups' levels (nibbles, + masks for Q5_K), the 6-bit
//               scales as bytes [sub-block][row] (128), the mins as int16
//               pairs [pair p][row] = (m[2p], m[2p + 1]) (256), then d and
//               dmin, 16 halves each.
//   Q6_K        8 groups' levels (nibbles and 2-bit plane), the int8
//               scales of the 16-element sub-blocks as int16 pairs [p][row]
//               = (sc[2p], sc[2p + 1]) (512), d (16 halves), padding to 64.

/// Unaligned loads of a 32-bit value from the panels' and activation
/// rows' bytes (no target attribute: they inline into any kernel).
inline int32_t load_i32(const void* p) {
    int32_t v = 0;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline uint32_t load_u32(const void* p) {
    uint32_t v = 0;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline float load_f32(const void* p) {
    float v = 0;
    std::memcpy(&v, p, sizeof v);
    return v;
}

/// Rows per panel.
inline constexpr int panel_rows = 16;

/// What a 32-element block type is, and the size of its group in a panel
/// (the layout above): Q8_0 stores bytes, the others nibbles (+ masks for
/// the 5-bit Q5_0/Q5_1), the affine Q4_1/Q5_1 an m beside each d.
template <typename Block>
struct block32_traits {
    static constexpr bool q8 = std::is_same_v<Block, block_q8_0>;
    static constexpr bool affine =
        std::is_same_v<Block, block_q4_1> || std::is_same_v<Block, block_q5_1>;
    static constexpr bool five =
        std::is_same_v<Block, block_q5_0> || std::is_same_v<Block, block_q5_1>;
    /// The packed levels' offset: a weight is d * (level - zero) (+ m).
    static constexpr int panel_zero = q8 ? 128 : affine ? 0 : five ? 16 : 8;
    /// Bytes of one group's levels, and of the group with its scales.
    static constexpr size_t level_bytes = q8 ? 512 : five ? 320 : 256;
    static constexpr size_t group_bytes =
        level_bytes + (affine ? 2 : 1) * panel_rows * sizeof(uint16_t);
    static_assert(2 * group_bytes % 64 == 0, "a pair of groups is whole 64-byte lines");
};

/// Byte offsets in a panel of nb groups of group b's levels, d and m (m
/// only for the affine types): the layout above.
struct group32_offsets {
    size_t levels;
    size_t d;
    size_t m;
};

template <typename Block>
constexpr group32_offsets group32_at(int64_t nb, int64_t b) noexcept {
    using tr = block32_traits<Block>;
    constexpr size_t scale = panel_rows * sizeof(uint16_t);
    const size_t pair = static_cast<size_t>(b / 2) * 2 * tr::group_bytes;
    const size_t n = b / 2 * 2 + 1 < nb ? 2 : 1; // groups in b's pair
    const size_t i = static_cast<size_t>(b % 2);
    const size_t d = pair + n * tr::level_bytes;
    return {pair + i * tr::level_bytes, d + i * scale, d + n * scale + i * scale};
}

/// The most tokens one panel kernel call handles.
inline constexpr int panel_tile = 8;

/// Bytes of one K-quant super-block of a panel (0 for other types).
constexpr size_t k_panel_bytes(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q4_k:
        return 8 * 256 + 8 * panel_rows + 8 * 2 * panel_rows + 2 * 2 * panel_rows;
    case ggml_type::q5_k:
        return 8 * 320 + 8 * panel_rows + 8 * 2 * panel_rows + 2 * 2 * panel_rows;
    case ggml_type::q6_k:
        return (8 * 384 + 16 * 2 * panel_rows + 2 * panel_rows + 63) / 64 * 64;
    default:
        return 0;
    }
}
static_assert(k_panel_bytes(ggml_type::q4_k) % 64 == 0 && k_panel_bytes(ggml_type::q5_k) % 64 == 0);

/// Bytes of one panel of `cols` columns of type t (a multiple of 64); 0
/// when t has no packed form or cols is not whole blocks of it.
size_t panel_bytes(ggml_type t, int64_t cols) noexcept;

/// Packs rows r0 .. r0 + 15 of w (those below rows; zeros past it) into
/// one panel at dst (panel_bytes(t, cols) bytes). w is whole blocks of a
/// packable type, `stride` bytes between rows.
void pack_panel(ggml_type t, const void* w, size_t stride, int64_t rows, int64_t cols, int64_t r0,
                void* dst) noexcept;

/// Activations of the panel kernels, per row. 32-element types: an act32
/// row (q, d, ds) followed by int32 z[cols / 32] = -zero * sum(q) of each
/// block (zero: the weight type's). K-quants: act_k_panel blocks. F32 and
/// F16: the floats themselves.
inline const int32_t* act_panel_z(const void* row, int64_t cols) {
    return reinterpret_cast<const int32_t*>(act32_ds(row, cols) + cols / qk_block);
}

/// act_q8_256 with the sums of each 32 values (the Q4_K/Q5_K sub-blocks)
/// in what is padding there.
struct alignas(32) act_k_panel {
    int8_t qs[qk_super];
    int16_t bsums[qk_super / 16];
    float d;
    int16_t sums32[qk_super / 32];
};
static_assert(sizeof(act_k_panel) == sizeof(act_q8_256) &&
              offsetof(act_k_panel, d) == offsetof(act_q8_256, d) &&
              offsetof(act_k_panel, bsums) == offsetof(act_q8_256, bsums));

/// act_k_panel rows: the AVX2 quantizer's act_q8_256 blocks, then each
/// block's sums of 32 (the K-quants' quantizer at avx2 and avx512).
void quantize_act_k_panel(const float* x, void* dst, int64_t cols) noexcept;

/// Bytes of one activation row for the panel kernels of type t.
size_t act_panel_row_bytes(ggml_type t, int64_t cols) noexcept;

/// out[t * out_stride + r] = the dot product of row r (< panel_rows) of
/// the panel at `panel` with the activation row at act + t * act_stride,
/// t < nt (1..panel_tile).
using panel_kernel = void (*)(const void* panel, const void* act, size_t act_stride, int nt,
                              int64_t cols, float* out, size_t out_stride);

/// The AVX-512 panel kernel and activation quantizer of a packable type
/// (nullptr for others, and the quantizer of F32 and F16). The quantizers'
/// q and d are those of the AVX2 ones for the same format.
panel_kernel panel_kernel_avx512(ggml_type t) noexcept;
act_quantizer panel_quantizer_avx512(ggml_type t) noexcept;

/// The AVX2 ones (panel_avx2.cc): the same panels read as two halves of 8
/// rows, for the 32-element types and Q4_K (nullptr for the others, whose
/// AVX2 kernels read the rows). The quantizers make the AVX-512 ones' rows.
panel_kernel panel_kernel_avx2(ggml_type t) noexcept;
act_quantizer panel_quantizer_avx2(ggml_type t) noexcept;

/// The panel kernel and quantizer matmul runs at `level` (already what
/// the CPU has): AVX-512's, AVX2's, or nullptr (none at that level).
inline panel_kernel panel_kernel_at(ggml_type t, simd_level level) noexcept {
    return level >= simd_level::avx512 ? panel_kernel_avx512(t)
           : level >= simd_level::avx2 ? panel_kernel_avx2(t)
                                       : nullptr;
}
inline act_quantizer panel_quantizer_at(ggml_type t, simd_level level) noexcept {
    return level >= simd_level::avx512 ? panel_quantizer_avx512(t)
           : level >= simd_level::avx2 ? panel_quantizer_avx2(t)
                                       : nullptr;
}

// ---- AMX: the same panels on the tile unit -----------------------------------
//
// A tile instruction multiplies 16 tokens' activations (the A tile: 16 rows
// of one block's 32 int8 q, straight from the act32 rows) by a panel's
// block (the B tile: its 8 vectors of 64 bytes, the levels less the type's
// zero as int8) into 16 x 16 int32 sums, one row per token: the integer
// sums the AVX-512 kernel forms, z included. The levels are unpacked once
// per panel into a buffer (amx_levels_bytes()) that every token tile of
// the panel reads; the scales are applied as the AVX-512 kernel does, in
// its order, so the results are its bits.

/// Tokens per tile (the tile unit's rows).
inline constexpr int amx_tile = 16;

/// Bytes of a panel's unpacked levels (0: the type has no AMX kernel).
size_t amx_levels_bytes(ggml_type t, int64_t cols) noexcept;

/// Unpacks the levels of the panel at `panel` (cols columns of type t)
/// into dst (amx_levels_bytes(), 64-byte aligned).
using amx_unpacker = void (*)(const void* panel, int64_t cols, void* dst);

/// out[t * out_stride + r] for t < nt (1..amx_tile), r < panel_rows, as
/// panel_kernel, with `levels` the panel's unpacked levels. The activation
/// rows are read for all amx_tile tokens: the rows past nt must be there
/// (any bits; matmul zeroes them).
using amx_kernel = void (*)(const void* panel, const void* levels, const void* act,
                            size_t act_stride, int nt, int64_t cols, float* out, size_t out_stride);

/// The tile unit's kernels, or a model of it: the same code with each tile
/// instruction done by scalar code over a thread's emulated tiles (and the
/// hardware's checks of the tiles' shapes, as aborts), which runs on any
/// AVX-512 CPU and so tests the kernels and their driver where the unit is
/// missing.
struct amx_backend {
    /// The unpacker and kernel of type t (nullptr for those it has none).
    amx_unpacker (*unpacker_of)(ggml_type t) noexcept;
    amx_kernel (*kernel_of)(ggml_type t) noexcept;
    /// Loads the tile configuration of type t's kernel into the calling
    /// thread, and hands the tiles back (the thread's state small again
    /// for the kernel's context switches). A thread runs the kernels
    /// between the two.
    void (*begin)(ggml_type t) noexcept;
    void (*end)() noexcept;
};

/// The hardware's (only for CPUs at simd_level::amx) and the model's.
const amx_backend& amx_tile_unit() noexcept;
const amx_backend& amx_tile_model() noexcept;

/// matmul() at simd_level::avx512 with `tiles` running the panels of 16
/// activation rows or more, as matmul at simd_level::amx runs
/// amx_tile_unit(): how the tile model is put behind the whole matmul.
matmul_status matmul_on_tiles(const amx_backend& tiles, const weight_view& w, const float* x,
                              int64_t n_tokens, float* y, thread_pool& pool,
                              std::span<std::byte> scratch, act_precision prec) noexcept;

/// AVX-512 row kernels for the types that take float activations (F32,
/// F16); nullptr for the others.
row_kernel row_kernel_avx512(ggml_type t) noexcept;

/// F16C row conversions (the caller checks the CPU has them).
void fp16_to_fp32_row_f16c(const uint16_t* src, float* dst, int64_t n) noexcept;
void fp32_to_fp16_row_f16c(const float* src, uint16_t* dst, int64_t n) noexcept;

} // namespace llmos::engine::detail
