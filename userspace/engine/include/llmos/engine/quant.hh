// SPDX-License-Identifier: MIT
//
// Weight types: IEEE half floats and the ggml block formats (Q8_0, Q4_0,
// Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), bit for bit as GGUF files store
// them, with reference quantizers and dequantizers.
//
// Every block starts at an address that is a multiple of alignof(block)
// (2 bytes: GGUF aligns tensor data to 32 and every block size is even).
// Multi-byte fields are little-endian, as in GGUF; the engine runs on
// little-endian hosts only.
//
//   Q8_0  32 elements: half d, int8 qs[32];              x = d * q
//   Q4_0  32 elements: half d, uint8 qs[16];              x = d * (q - 8),
//         element j < 16 in the low nibble of qs[j], element j + 16 in
//         its high nibble.
//   Q4_1  32 elements: half d, half m, uint8 qs[16];      x = d * q + m,
//         nibbles as in Q4_0.
//   Q5_0  32 elements: half d, uint8 qh[4], uint8 qs[16]; x = d * (q - 16),
//         q = nibble | fifth bit << 4, nibbles as in Q4_0; the fifth bit of
//         element j is bit j of qh read as a little-endian uint32 (bit j %
//         8 of qh[j / 8]): bits 0-15 for the low nibbles, 16-31 for the
//         high ones.
//   Q5_1  32 elements: half d, half m, uint8 qh[4], uint8 qs[16];
//         x = d * q + m, q as in Q5_0.
//   Q4_K  256 elements in 8 sub-blocks of 32: half d, half dmin, 12 bytes
//         of 6-bit scales and mins, uint8 qs[128];
//         x = d * sc[s] * q - dmin * m[s]. qs holds 4 chunks of 64
//         elements, 32 bytes each: the low nibbles are elements 0..31 of
//         the chunk (sub-block 2c), the high nibbles 32..63 (2c + 1).
//         Scale bytes: for s < 4 sc[s] = b[s] & 63, m[s] = b[s + 4] & 63;
//         for s >= 4 sc[s] = (b[s + 4] & 15) | (b[s - 4] >> 6) << 4 and
//         m[s] = (b[s + 4] >> 4) | (b[s] >> 6) << 4.
//   Q5_K  as Q4_K plus uint8 qh[32] (between scales and qs): bit 2c of
//         qh[l] is the fifth bit of element 64c + l, bit 2c + 1 that of
//         element 64c + 32 + l; q is 0..31.
//   Q6_K  256 elements in 16 sub-blocks of 16: uint8 ql[128], uint8
//         qh[64], int8 scales[16], half d; x = d * scales[e / 16] *
//         (q - 32). In each half h (128 elements) and for l < 32:
//         element l = ql[64h + l] low | (qh[32h + l] & 3) << 4,
//         element l + 32 = ql[64h + 32 + l] low | (qh >> 2 & 3) << 4,
//         element l + 64 = ql[64h + l] high | (qh >> 4 & 3) << 4,
//         element l + 96 = ql[64h + 32 + l] high | (qh >> 6 & 3) << 4.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <llmos/engine/types.hh>
#include <string_view>

namespace llmos::engine {

inline constexpr int qk_block = 32;  ///< elements per Q8_0, Q4_0/1, Q5_0/1 block
inline constexpr int qk_super = 256; ///< elements per K-quant super-block
inline constexpr int k_scale_bytes = 12;

struct block_q8_0 {
    uint16_t d;
    int8_t qs[qk_block];
};

struct block_q4_0 {
    uint16_t d;
    uint8_t qs[qk_block / 2];
};

struct block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[qk_block / 2];
};

struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[qk_block / 2];
};

struct block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[qk_block / 2];
};

struct block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[k_scale_bytes];
    uint8_t qs[qk_super / 2];
};

struct block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[k_scale_bytes];
    uint8_t qh[qk_super / 8];
    uint8_t qs[qk_super / 2];
};

struct block_q6_k {
    uint8_t ql[qk_super / 2];
    uint8_t qh[qk_super / 4];
    int8_t scales[qk_super / 16];
    uint16_t d;
};

static_assert(sizeof(block_q8_0) == info(ggml_type::q8_0)->block_bytes);
static_assert(sizeof(block_q4_0) == info(ggml_type::q4_0)->block_bytes);
static_assert(sizeof(block_q4_1) == info(ggml_type::q4_1)->block_bytes);
static_assert(sizeof(block_q5_0) == info(ggml_type::q5_0)->block_bytes);
static_assert(sizeof(block_q5_1) == info(ggml_type::q5_1)->block_bytes);
static_assert(sizeof(block_q4_k) == info(ggml_type::q4_k)->block_bytes);
static_assert(sizeof(block_q5_k) == info(ggml_type::q5_k)->block_bytes);
static_assert(sizeof(block_q6_k) == info(ggml_type::q6_k)->block_bytes);

/// The value of an IEEE binary16 number (exact: zeros, subnormals and
/// infinities included; a NaN gives a quiet NaN with the same payload, as
/// F16C does). Any thread.
constexpr float fp16_to_fp32(uint16_t h) noexcept {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) {
        const uint32_t quiet = man != 0 ? 0x00400000u : 0u;
        return std::bit_cast<float>(sign | 0x7f800000u | quiet | man << 13);
    }
    if (exp == 0) {
        // Zero or subnormal: man * 2^-24, exact in binary32.
        const float v = static_cast<float>(man) * 0x1p-24f;
        return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(v));
    }
    return std::bit_cast<float>(sign | (exp + 112) << 23 | man << 13);
}

/// `f` rounded to the nearest binary16, ties to even; overflow gives an
/// infinity, a NaN stays a (quiet) NaN with the top payload bits. Any
/// thread.
constexpr uint16_t fp32_to_fp16(float f) noexcept {
    uint32_t x = std::bit_cast<uint32_t>(f);
    const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) {
        return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    }
    if (x >= 0x477ff000u) { // 65520 and up round to infinity
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (x < 0x38800000u) { // below 2^-14: a subnormal half (or zero)
        // Adding 0.5 leaves a float whose last place is 2^-24: the
        // addition itself rounds to the nearest half subnormal, ties even.
        const float r = std::bit_cast<float>(x) + 0.5f;
        return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(r) - 0x3f000000u));
    }
    x -= 0x38000000u; // rebias the exponent from 127 to 15
    x += 0xfffu + ((x >> 13) & 1u);
    return static_cast<uint16_t>(sign | (x >> 13));
}

/// The value of a bfloat16 number: the upper half of a binary32, so every
/// one (NaNs, infinities, subnormals) widens exactly. Any thread.
constexpr float bf16_to_fp32(uint16_t b) noexcept {
    return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

/// `f` rounded to the nearest bfloat16, ties to even; values past the
/// largest one round to an infinity, a NaN stays a (quiet) NaN with its
/// sign and top payload bits. Any thread.
constexpr uint16_t fp32_to_bf16(float f) noexcept {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return static_cast<uint16_t>(x >> 16 | 0x0040u);
    }
    return static_cast<uint16_t>((x + 0x7fffu + (x >> 16 & 1u)) >> 16);
}

/// Instruction sets the kernels are built for, each a superset of the one
/// before it.
enum class simd_level : uint8_t {
    scalar, ///< portable C++
    avx2,   ///< AVX2 + FMA + F16C
    /// AVX-512 F, BW, VL, DQ and VNNI (with AVX2's): 512-bit integer dot
    /// products (and FMA for F32 and F16) over weights packed by
    /// pack_weights() (matmul.hh) in panels of 16 rows, one per lane;
    /// weights not packed take the AVX2 kernels (F32 and F16: AVX-512 ones
    /// over the rows).
    avx512,
    /// AVX-512's, and AMX-TILE + AMX-INT8 (with the kernel's permission to
    /// use the tiles, asked for once per process): a matmul of 16
    /// activation rows or more (a row a token; two with
    /// act_precision::int8x2) over packed quantized weights runs on the
    /// tile unit, 16 rows of activations by 16 of weights by 32 columns an
    /// instruction, with AVX-512 applying the blocks' scales; its integer
    /// sums and float steps are AVX-512's, so the results are the same
    /// bits. Fewer rows, and F32 or F16 weights, take the AVX-512 kernels.
    amx,
};

/// The best level this CPU (and the kernel's saving of its registers)
/// runs. Any thread.
simd_level detected_simd() noexcept;

/// The level the engine uses: detected_simd(), unless the environment
/// variable LLMOS_ENGINE_SIMD names a lower one ("scalar", "avx2",
/// "avx512", "amx"; read once, on the first call; a level the CPU lacks or an
/// unknown name leaves detected_simd()). Any thread.
simd_level default_simd() noexcept;

/// "scalar", "avx2", "avx512" or "amx".
std::string_view simd_name(simd_level l) noexcept;

enum class quant_status : uint8_t {
    ok,
    unsupported_type, ///< the engine does not compute with this type
    bad_length,       ///< n < 0 or not a whole number of blocks
};

/// "ok", "unsupported type" or "bad length".
std::string_view quant_status_name(quant_status s) noexcept;

/// Converts n halves to floats (F16C where the CPU has it). Any thread;
/// allocates nothing.
void fp16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) noexcept;

/// Converts n floats to halves, rounding to nearest even. Any thread;
/// allocates nothing.
void fp32_to_fp16_row(const float* src, uint16_t* dst, int64_t n) noexcept;

/// Converts n bfloat16 numbers to floats (exact). Any thread; allocates
/// nothing.
void bf16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) noexcept;

/// Expands n elements of type `t` (n / block_elems blocks at `src`) into
/// floats. Fails, writing nothing, for a type the engine does not support
/// or an n that is not a whole number of blocks. Any thread; allocates
/// nothing.
quant_status dequantize_row(ggml_type t, const void* src, float* dst, int64_t n) noexcept;

/// Encodes n floats as type `t` into row_bytes(t, n) bytes at `dst`, with
/// the reference quantizer: round to nearest for F16, BF16, Q8_0, Q4_0 and Q5_0
/// (the scales llama.cpp picks), the block's range split evenly for Q4_1
/// and Q5_1 (min and max kept), an error-minimizing search of sub-block scales
/// (and mins) for the K-quants. Non-finite input gives unspecified but
/// valid blocks. Same failures as dequantize_row. Any thread; allocates
/// nothing; not fast (meant for model conversion and tests).
quant_status quantize_row(ggml_type t, const float* src, void* dst, int64_t n) noexcept;

} // namespace llmos::engine
