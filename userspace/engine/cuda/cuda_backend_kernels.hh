// SPDX-License-Identifier: MIT
//
// The CUDA backend's kernels (cuda_kernels.cu), as host functions that
// launch them on a stream. Each returns cudaGetLastError() after its
// launch (a launch that could not start); errors inside a kernel show at
// the next synchronization. All matrices are row-major; "rows" of
// activations are the step's tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#ifdef LLMOS_CUDA_EMU
#include <cuda_emu.hh> // tests: the host emulation of the device
#else
#include <cuda_runtime_api.h>
#endif

namespace llmos::engine::cuda_detail {

/// Weight layouts the kernels read: plain floats, halves or bfloat16, and
/// every block type the engine computes with, exactly as GGUF stores it
/// (32 elements a block; 256 for the K-quants).
enum class wkind : uint8_t { f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k };

/// Whether the kernels read `k` in blocks (cols a multiple of the block).
constexpr bool block_kind(wkind k) {
    return k != wkind::f32 && k != wkind::f16 && k != wkind::bf16;
}

/// One sequence of a step, for the kernels that touch its KV cache.
struct seq_desc {
    uint64_t blocks;       ///< device address of the cache's physical blocks
    uint64_t block_bytes;  ///< bytes per physical block
    uint32_t block_tokens; ///< positions per block
    uint32_t table_off;    ///< where its block table starts in the step's tables
};

/// One token row of a step: its sequence and position.
struct row_desc {
    int32_t seq;
    int32_t pos;
};

/// Largest head_dim attention() takes.
inline constexpr uint32_t max_head_dim = 512;

/// Loads every kernel of this file into the current device's context now.
/// Under lazy loading (CUDA 12.2 on) a kernel's module is loaded at its
/// first launch, which may synchronize the context: done while another
/// thread captures a graph, that breaks the capture or fails the launch.
/// Once per model, before any context runs.
cudaError_t load_kernels();

/// y[t * rows + r] = sum over k of W[r][k] * x[t * cols + k] for t <
/// n_tokens: one warp per weight row and 8 tokens (F32 accumulation;
/// activations stay F32). cols must be whole blocks for the block kinds.
cudaError_t matmul(wkind t, const void* w, int64_t rows, int64_t cols, const float* x,
                   int64_t n_tokens, float* y, cudaStream_t s);

/// The rows x cols matrix `w` (any kind) as halves in `out`.
cudaError_t dequant_f16(wkind t, const void* w, int64_t rows, int64_t cols, uint16_t* out,
                        cudaStream_t s);

/// Row r of x (rows x cols floats) times scale[r] as halves in y (round to
/// nearest even). scale[r] is a power of two: 1 when the row's finite
/// values fit the halves' range (+-65504), otherwise the largest one that
/// brings them within it; infinities and NaNs stay. Activations beyond
/// F16's range (gate * up of some models reaches 1e5 and more) are so
/// scaled, not clamped, on their way into an F16 GEMM; unscale() undoes it
/// on the GEMM's F32 result. Per row, so that a token's result does not
/// depend on the others in its step.
cudaError_t to_f16(const float* x, uint16_t* y, float* scale, int64_t rows, int64_t cols,
                   cudaStream_t s);

/// One output of a GEMM over to_f16's halves: `rows` rows of `width`
/// floats (y null: none).
struct scaled_rows {
    float* y = nullptr;
    int64_t width = 0;
};

/// Most outputs one unscale() takes.
inline constexpr size_t max_scaled_outputs = 3;

/// Row r of each of `outs` (GEMMs of the same input: up to
/// max_scaled_outputs, in one launch) divided by scale[r], what to_f16
/// scaled the input's row r by (a power of two: exact); rows whose scale is
/// 1 are not touched.
cudaError_t unscale(const float* scale, int64_t rows, std::span<const scaled_rows> outs,
                    cudaStream_t s);

/// n floats to bfloat16 (round to nearest even).
cudaError_t to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s);

/// y row i = RMSNorm(x row (src ? src[i] : i)) * w, n wide, as context.cc
/// computes it (sum of squares in double).
cudaError_t rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps,
                     const int32_t* src, cudaStream_t s);

/// y[r][j] += b[j] for r < rows, j < width.
cudaError_t add_bias(float* y, const float* b, int64_t rows, int64_t width, cudaStream_t s);

/// x[i] += y[i].
cudaError_t add(float* x, const float* y, int64_t n, cudaStream_t s);

/// gate[i] = silu(gate[i]) * up[i].
cudaError_t swiglu(float* gate, const float* up, int64_t n, cudaStream_t s);

/// RoPE on n_heads heads of head_dim in each of `rows` rows (row r at x +
/// r * stride), at rows_d[r].pos / rope_scale, angle pos * inv_freq[i] for
/// pair i < n_rot / 2: pairs (2i, 2i+1), or (i, i + n_rot/2) with neox.
cudaError_t rope(float* x, int64_t rows, int64_t stride, uint32_t n_heads, uint32_t head_dim,
                 uint32_t n_rot, bool neox, const row_desc* rows_d, const double* inv_freq,
                 double rope_scale, cudaStream_t s);

/// Stores each row's K and V (kv_dim floats at k/v + r * kv_dim) as halves
/// at its position in its sequence's cache, layer `layer`.
cudaError_t kv_write(const float* k, const float* v, int64_t rows, uint32_t kv_dim, uint32_t layer,
                     const row_desc* rows_d, const seq_desc* seqs, const uint32_t* tables,
                     cudaStream_t s);

/// Most parts attention() splits a row's positions into.
inline constexpr uint32_t max_attention_parts = 32;
/// Fewest positions per part attention_parts() picks.
inline constexpr uint32_t attention_part_keys = 512;
/// Most rows attention_parts() splits (a step of more fills the device).
inline constexpr int64_t max_attention_part_rows = 16;

/// Causal attention of each row's query heads (q: rows x n_head*head_dim)
/// over its sequence's cache positions 0..pos, layer `layer`, GQA (query
/// head h reads KV head h / (n_head / n_head_kv)), scores scaled by
/// `scale`, softmax in F32 (online). One block per row, head and part of
/// the row's positions: with `parts` > 1 (at most max_attention_parts),
/// each part's unnormalized result goes to `part` (rows * n_head * parts *
/// (head_dim + 2) floats) and a second kernel merges them, so that a few
/// long rows still fill the device. Output like q.
cudaError_t attention(const float* q, float* out, int64_t rows, uint32_t n_head, uint32_t n_head_kv,
                      uint32_t head_dim, uint32_t layer, float scale, const row_desc* rows_d,
                      const seq_desc* seqs, const uint32_t* tables, float* part, uint32_t parts,
                      cudaStream_t s);

/// The parts for attention() over `rows` rows of `n_head` heads whose
/// longest row has `max_positions` positions, on a device of
/// `multiprocessors`: 1 where rows and heads fill the device already, or
/// rows are short; otherwise a power of two giving about two blocks per
/// multiprocessor, each part at least attention_part_keys positions.
uint32_t attention_parts(int64_t rows, uint32_t n_head, uint32_t max_positions,
                         int multiprocessors) noexcept;

} // namespace llmos::engine::cuda_detail
