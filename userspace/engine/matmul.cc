// SPDX-License-Identifier: MIT
//
// matmul: quantize the activations once (in parallel over tokens), then
// hand out weight rows to the pool. A thread walks its rows in blocks that
// stay in its L2 cache, and for each block runs through the tokens
// max_tile at a time: a kernel call takes one weight row and up to
// max_tile tokens, so a row is unpacked once per tile. The tokens go in
// passes whose activations fit in L2 beside the row block: the weights
// come from memory once per pass (once per call unless the batch is
// large, and then the work is compute-bound anyway). Splitting the columns
// into panels as well (so a tile's activations stay in L1) was measured:
// no faster.
#include "quant_kernels.hh"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <llmos/engine/matmul.hh>
#include <vector>

namespace llmos::engine {

namespace {

/// Weight bytes a thread keeps hot while it sweeps the token tiles.
constexpr size_t row_block_bytes = 128 * 1024;

constexpr size_t max_block_rows = 64;

/// Activation bytes of the tokens that share one pass over the weights.
constexpr size_t pass_act_bytes = 512 * 1024;

constexpr size_t scratch_align = alignof(detail::act_q8_256);

matmul_status check(const weight_view& w, int64_t n_tokens, size_t& stride) {
    const auto i = info(w.type);
    if (!i || !i->supported) {
        return matmul_status::unsupported_type;
    }
    if (w.rows < 0 || w.cols < 0 || n_tokens < 0) {
        return matmul_status::bad_shape;
    }
    const auto packed = row_bytes(w.type, static_cast<uint64_t>(w.cols));
    if (!packed) {
        return matmul_status::bad_shape;
    }
    stride = w.row_stride != 0 ? w.row_stride : *packed;
    if (stride < *packed) {
        return matmul_status::bad_shape;
    }
    const size_t align = w.type == ggml_type::f32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(w.data) % align != 0 || stride % align != 0) {
        return matmul_status::misaligned;
    }
    return matmul_status::ok;
}

} // namespace

std::string_view matmul_status_name(matmul_status s) noexcept {
    switch (s) {
    case matmul_status::ok:
        return "ok";
    case matmul_status::unsupported_type:
        return "unsupported type";
    case matmul_status::bad_shape:
        return "bad shape";
    case matmul_status::misaligned:
        return "misaligned";
    case matmul_status::scratch_too_small:
        return "scratch too small";
    }
    return "?";
}

size_t matmul_scratch_bytes(const weight_view& w, int64_t n_tokens, act_precision p) noexcept {
    size_t stride = 0;
    if (check(w, n_tokens, stride) != matmul_status::ok) {
        return 0;
    }
    const detail::act_format f = detail::act_format_of(w.type);
    if (f == detail::act_format::f32 || n_tokens == 0) {
        return 0;
    }
    const auto n = static_cast<size_t>(n_tokens);
    const size_t rows = detail::act_row_bytes(f, w.cols) * n;
    if (p == act_precision::int8x2) {
        // Two rows per token, and each token's rounding error as floats.
        return 2 * rows + n * static_cast<size_t>(w.cols) * sizeof(float) + scratch_align;
    }
    return rows + scratch_align;
}

matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, std::span<std::byte> scratch, simd_level level,
                     act_precision prec) noexcept {
    size_t stride = 0;
    if (const matmul_status s = check(w, n_tokens, stride); s != matmul_status::ok) {
        return s;
    }
    if (scratch.size() < matmul_scratch_bytes(w, n_tokens, prec)) {
        return matmul_status::scratch_too_small;
    }
    if (n_tokens == 0 || w.rows == 0) {
        return matmul_status::ok;
    }
    if (w.cols == 0) {
        std::fill_n(y, n_tokens * w.rows, 0.0f);
        return matmul_status::ok;
    }
    const bool avx2 = level == simd_level::avx2 && detected_simd() == simd_level::avx2;
    const detail::row_kernel kernel =
        avx2 ? detail::row_kernel_avx2(w.type) : detail::row_kernel_ref(w.type);
    const detail::act_format f = detail::act_format_of(w.type);

    const void* act = x;
    size_t act_stride = static_cast<size_t>(w.cols) * sizeof(float);
    // Activation rows per token: 2 when each token's rounding error gets
    // a row of its own (the kernels' outputs for the pair are added).
    const int per_token = f != detail::act_format::f32 && prec == act_precision::int8x2 ? 2 : 1;
    if (f != detail::act_format::f32) {
        const detail::act_quantizer quantize =
            avx2 ? detail::act_quantizer_avx2(f) : detail::act_quantizer_ref(f);
        const auto base = reinterpret_cast<uintptr_t>(scratch.data());
        auto* dst = reinterpret_cast<std::byte*>((base + scratch_align - 1) &
                                                 ~static_cast<uintptr_t>(scratch_align - 1));
        act = dst;
        act_stride = detail::act_row_bytes(f, w.cols);
        const int64_t cols = w.cols;
        // int8x2: each token's rounding error, after both rows of every token.
        float* err =
            per_token == 2
                ? reinterpret_cast<float*>(dst + 2 * static_cast<size_t>(n_tokens) * act_stride)
                : nullptr;
        pool.parallel_for(n_tokens, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                std::byte* row = dst + static_cast<size_t>(t * per_token) * act_stride;
                quantize(x + t * cols, row, cols);
                if (per_token == 2) {
                    float* e = err + t * cols;
                    detail::act_dequantize(f, row, cols, e);
                    for (int64_t k = 0; k < cols; ++k) {
                        e[k] = x[t * cols + k] - e[k];
                    }
                    quantize(e, row + act_stride, cols);
                }
            }
        });
    }
    const int64_t act_rows = n_tokens * per_token;

    const auto* data = static_cast<const std::byte*>(w.data);
    const int64_t rows = w.rows;
    const int64_t cols = w.cols;
    const auto block_rows =
        static_cast<int64_t>(std::clamp<size_t>(row_block_bytes / stride, 1, max_block_rows));
    // Tokens per pass over the weights: as many as keep their activations
    // in L2 next to the row block (a multiple of the tile).
    const int64_t pass_tokens =
        std::max<int64_t>(detail::max_tile, static_cast<int64_t>(pass_act_bytes / act_stride) /
                                                detail::max_tile * detail::max_tile);
    static_assert(detail::max_tile % 2 == 0, "a tile must hold whole pairs of rows");
    pool.parallel_for(rows, [&](int64_t r0, int64_t r1) {
        float out[detail::max_tile];
        for (int64_t p0 = 0; p0 < act_rows; p0 += pass_tokens) {
            const int64_t p1 = std::min(p0 + pass_tokens, act_rows);
            for (int64_t rb = r0; rb < r1; rb += block_rows) {
                const int64_t re = std::min(rb + block_rows, r1);
                for (int64_t t0 = p0; t0 < p1; t0 += detail::max_tile) {
                    const int nt = static_cast<int>(std::min<int64_t>(detail::max_tile, p1 - t0));
                    const auto* a =
                        static_cast<const std::byte*>(act) + static_cast<size_t>(t0) * act_stride;
                    for (int64_t r = rb; r < re; ++r) {
                        kernel(data + static_cast<size_t>(r) * stride, a, act_stride, nt, cols,
                               out);
                        if (per_token == 2) {
                            for (int i = 0; i < nt; i += 2) {
                                y[(t0 + i) / 2 * rows + r] = out[i] + out[i + 1];
                            }
                        } else {
                            for (int i = 0; i < nt; ++i) {
                                y[(t0 + i) * rows + r] = out[i];
                            }
                        }
                    }
                }
            }
        }
    });
    return matmul_status::ok;
}

matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, act_precision p) {
    thread_local std::vector<std::byte> scratch;
    const size_t need = matmul_scratch_bytes(w, n_tokens, p);
    if (scratch.size() < need) {
        scratch.resize(need);
    }
    return matmul(w, x, n_tokens, y, pool, scratch, default_simd(), p);
}

} // namespace llmos::engine
