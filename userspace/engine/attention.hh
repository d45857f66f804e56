// SPDX-License-Identifier: MIT
//
// Private to the engine: attention kernels that context.cc picks by the
// kernel level.
#pragma once

#include <cstddef>
#include <cstdint>
#include <llmos/engine/context.hh>
#include <llmos/engine/kv_cache.hh>

namespace llmos::engine::detail {

/// The attention kernels context::step picks from.
enum class attn_kernel : uint8_t {
    generic,          ///< the portable loops (any cache type; dot products by level)
    one_token_avx2,   ///< one token's G heads over an F16 cache (AVX2)
    one_token_avx512, ///< the same on AVX-512 (one_token_attend_avx512)
    prefill_avx512,   ///< prefill_attend_avx512: 16 queries a vector
};

/// The kernel for the `n_tokens` tokens of an entry of `kind` at `level`
/// over a cache of `type`, for G query heads per KV head of size D. Prompt
/// tokens (token_kind::automatic: more than one) take the prefill kernel
/// where there is one, however few they are, and generated tokens the
/// one-token kernel: a token's arithmetic does not depend on how its
/// prompt was cut into chunks. Any thread.
attn_kernel attention_kernel(simd_level level, kv_type type, uint32_t G, uint32_t D,
                             token_kind kind, size_t n_tokens) noexcept;

/// Causal attention of one KV head's G query heads for T consecutive
/// tokens of one sequence over its F16 cache: token t sits at position
/// pos0 + t and attends positions 0 .. pos0 + t, whose K and V rows the
/// cache holds.
struct prefill_attn_args {
    const kv_cache* kv;
    uint32_t layer;
    uint32_t head;  ///< the KV head
    uint32_t D;     ///< head size, a multiple of 16
    uint32_t G;     ///< query heads of the KV head
    uint32_t T;     ///< tokens
    uint32_t pos0;  ///< token 0's position
    const float* q; ///< token t's G heads (G x D) at q + t * q_stride
    size_t q_stride;
    float* out; ///< token t's G heads' outputs at out + t * out_stride
    size_t out_stride;
    float scale;    ///< scores are q . k * scale
    float* scratch; ///< prefill_attn_scratch_floats(D, G * T), 64-byte aligned
};

/// Floats of scratch prefill_attend_avx512 needs for M = G * T queries.
size_t prefill_attn_scratch_floats(uint32_t D, uint32_t M) noexcept;

/// AVX-512 (F, DQ): 16 queries per vector, one per lane, against 16 keys
/// at a time with an online softmax, everything vertical: scores as 16
/// FMAs per dimension (the keys' values broadcast), the running maximum
/// and sum per lane, the output as 16 FMAs per dimension. Worth it from 16
/// queries on; the caller checks the CPU has AVX-512.
void prefill_attend_avx512(const prefill_attn_args& a) noexcept;

/// One token's attention for the G query heads that share a KV head, over
/// an F16 cache: positions 0 .. n - 1 are attended.
struct one_token_attn_args {
    const kv_cache* kv;
    uint32_t layer;
    uint32_t head;  ///< the KV head
    uint32_t D;     ///< head size
    uint32_t n;     ///< positions 0 .. n-1 are attended
    const float* q; ///< G x D
    float* out;     ///< G x D
    float* scores;  ///< G x stride
    size_t stride;  ///< >= n
    float scale;    ///< scores are q . k * scale
};

using one_token_attend_fn = void (*)(const one_token_attn_args&);

/// The AVX-512 (F, DQ) one-token kernel for G query heads per KV head and
/// head size D, or nullptr where it has none (G > 8, D not a multiple of
/// 16 or over 256). Scores: 16 keys at a time (their K rows widened once
/// for every head), each key's 16-lane partial sums reduced with the
/// others' by a transposing tree into one vector of 16 scores; softmax on
/// 512-bit vectors; values: each V row widened once, G heads' outputs in
/// registers. The caller checks the CPU has AVX-512.
one_token_attend_fn one_token_attend_avx512(uint32_t G, uint32_t D) noexcept;

/// One head's RoPE in place: pair i -- (i, i + half) in NeoX's layout,
/// (2i, 2i + 1) otherwise -- turned by the angle whose cos and sin are c[i]
/// and s[i], for i < half. The AVX2 version (x86-64 only; the CPU must
/// have AVX2 and FMA) rounds each output once less (fused multiply-adds).
void rope_head(float* v, uint32_t half, bool neox, const float* c, const float* s) noexcept;
#if defined(__x86_64__)
void rope_head_avx2(float* v, uint32_t half, bool neox, const float* c, const float* s) noexcept;
#endif

} // namespace llmos::engine::detail
