// SPDX-License-Identifier: MIT
//
// y = x W^T for a weight matrix in any supported type: the engine's
// linear layers. Quantized weights meet 8-bit activations (x is quantized
// once per call) in integer dot products, so a decode step streams the
// weights at close to memory speed; F16 weights are widened on the fly
// (F16C) and F32 ones used as they are, with FMA. Several tokens (prefill)
// share each pass over a weight row, so the weights are read from memory
// once per call, not once per token. Rows are spread over a thread_pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <llmos/engine/quant.hh>
#include <llmos/engine/thread_pool.hh>
#include <llmos/engine/types.hh>
#include <span>
#include <string_view>

namespace llmos::engine {

/// A weight matrix of `rows` x `cols` elements of `type`, row r at
/// data + r * row_stride bytes (0 means packed: row_bytes(type, cols)).
/// The data must be aligned to 4 bytes for F32 and 2 for the others, as
/// in a mapped GGUF file.
///
/// `packed`, when set, is the same matrix as pack_weights() rearranged it
/// for simd_level::avx512: matmul at that level reads it instead of the
/// rows (the level's fastest kernels need it; without it the AVX2 ones
/// run). The other levels read the rows.
struct weight_view {
    ggml_type type = ggml_type::f32;
    const void* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
    size_t row_stride = 0;
    const void* packed = nullptr;
};

enum class matmul_status : uint8_t {
    ok,
    unsupported_type,  ///< the engine does not compute with w.type
    bad_shape,         ///< negative sizes, cols not whole blocks, stride too small
    misaligned,        ///< data or row_stride not aligned for the type
    scratch_too_small, ///< smaller than matmul_scratch_bytes()
};

/// How quantized weights meet the activations (F32 and F16 weights always
/// take them as floats).
enum class act_precision : uint8_t {
    /// Quantized to 8 bits per 32 (or 256) values, once per call: integer
    /// dot products at full speed; each matmul's output carries the
    /// rounding, ~0.5% relative, which a model compounds to 1-2% at the
    /// logits (llama.cpp's CPU kernels do the same).
    int8,
    /// 8 bits, then their rounding error in 8 more bits: every token is
    /// two activation rows that share each pass over a weight row, and
    /// their sums add up. ~1e-4 relative at the logits; the weights are
    /// still read once, the integer arithmetic doubles.
    int8x2,
};

/// Rows of a packed matrix per group: a sub-matrix of a packed view must
/// start at a multiple of it (see sub_rows).
inline constexpr int64_t packed_row_group = 16;

/// Bytes pack_weights() needs for `w` at `level` (a multiple of 64, about
/// the rows' size); 0 when that level's kernels read w's rows as they are
/// (simd_level::scalar; simd_level::avx2 for F32, F16, Q5_K and Q6_K) or w
/// is malformed (what matmul would refuse). The packing is the same at
/// every level that packs. Any thread.
size_t packed_weight_bytes(const weight_view& w, simd_level level) noexcept;

/// Writes w's rows rearranged for `level`'s kernels into dst, which must
/// hold packed_weight_bytes(w, level) bytes at a 64-byte aligned address;
/// the view with packed = dst.data() then computes with them. Refuses
/// (writing nothing) what matmul would refuse, a too small or misaligned
/// dst (scratch_too_small, misaligned), and a type or level that takes no
/// packing (unsupported_type). Any thread; allocates nothing.
matmul_status pack_weights(const weight_view& w, simd_level level,
                           std::span<std::byte> dst) noexcept;

/// Rows r0 .. r1 - 1 of w as a view of their own (packed too when w is;
/// then r0 must be a multiple of packed_row_group or the result is not
/// packed). 0 <= r0 <= r1 <= w.rows.
weight_view sub_rows(const weight_view& w, int64_t r0, int64_t r1) noexcept;

/// "ok", "unsupported type", ...
std::string_view matmul_status_name(matmul_status s) noexcept;

/// Bytes of scratch a matmul of `w` with n_tokens tokens needs (the
/// quantized activations; 0 for F32 and F16 weights, and for a shape
/// matmul would refuse). Any thread.
size_t matmul_scratch_bytes(const weight_view& w, int64_t n_tokens,
                            act_precision p = act_precision::int8) noexcept;

/// y[t * w.rows + r] = sum over k of W[r][k] * x[t * w.cols + k], for
/// t < n_tokens and r < w.rows (x: n_tokens x cols, y: n_tokens x rows,
/// both row-major, not overlapping). Runs on the pool's threads, the
/// caller's included, with the kernels of `level` (or of the CPU's best
/// below it, when it lacks `level`). On failure y is untouched.
/// Allocates nothing but, with AMX, each pool thread's buffer for a
/// panel's unpacked levels the first time a width needs more (out of
/// memory there ends the process). Any thread; calls on one pool take
/// turns.
matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, std::span<std::byte> scratch, simd_level level,
                     act_precision p = act_precision::int8) noexcept;

/// The same with default_simd() and a scratch buffer owned by the calling
/// thread, grown when a call needs more than any before it (so a thread
/// allocates only during its first calls of each new size).
matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, act_precision p = act_precision::int8);

/// The same with the kernels of `level`.
matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, simd_level level, act_precision p = act_precision::int8);

/// One product of matmul_many(): w times the shared activations into y
/// (n_tokens x w.rows).
struct matmul_job {
    const weight_view* w;
    float* y;
};

/// matmul() of several weights with the same activations x, all of the
/// same columns (a layer's Q, K and V; its gate and up): x is quantized
/// once for all the products whose kernels read it in the same form, then
/// each product runs as matmul() runs it, with the same results. scratch:
/// the sum of matmul_scratch_bytes() of the jobs. Every job is checked
/// before any runs: on failure every y is untouched. Allocates what
/// matmul() does.
matmul_status matmul_many(std::span<const matmul_job> jobs, const float* x, int64_t n_tokens,
                          thread_pool& pool, std::span<std::byte> scratch, simd_level level,
                          act_precision p = act_precision::int8) noexcept;

/// The same with a scratch buffer owned by the calling thread (as matmul()).
matmul_status matmul_many(std::span<const matmul_job> jobs, const float* x, int64_t n_tokens,
                          thread_pool& pool, simd_level level,
                          act_precision p = act_precision::int8);

} // namespace llmos::engine
