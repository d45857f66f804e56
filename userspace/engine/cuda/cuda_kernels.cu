// SPDX-License-Identifier: MIT
//
// The CUDA backend's kernels. Simple on purpose: one warp per weight row
// (8 tokens at a time, each lane 32 elements at a time, every weight type
// read in its GGUF blocks) for the linear layers the engine computes itself,
// one block per row for norms and RoPE, one block per (token, head, part of
// its positions) for attention with an online softmax over the paged cache. Math in F32 (the
// norms' sums of squares and RoPE's angles in double, as context.cc).
#include "cuda_backend_kernels.hh"

#include <algorithm>

#ifdef LLMOS_CUDA_EMU
// Tests compile this file as C++ over the host emulation (cuda_emu.hh).
#define LLMOS_LAUNCH(k, grid, block, stream) ::llmos::cuda_emu::launch(#k, grid, block, stream, k)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#define LLMOS_LAUNCH(k, grid, block, stream) k<<<grid, block, 0, stream>>>
#endif

namespace llmos::engine::cuda_detail {

namespace {

constexpr int warp = 32;
constexpr int mm_tile = 8;  // tokens per warp
constexpr int mm_warps = 8; // weight rows per block

__device__ __forceinline__ float half_at(const void* p) {
    return __half2float(*static_cast<const __half*>(p));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = warp / 2; o > 0; o /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = warp / 2; o > 0; o /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

// Sum or max over the block (blockDim.x a multiple of 32, at most 1024);
// every thread gets the result. `tmp`: 32 floats of shared memory.
template <bool Max>
__device__ float block_reduce(float v, float* tmp) {
    const int lane = threadIdx.x % warp, w = threadIdx.x / warp;
    const int nw = blockDim.x / warp;
    v = Max ? warp_max(v) : warp_sum(v);
    __syncthreads(); // tmp may still be read by a previous call
    if (lane == 0) {
        tmp[w] = v;
    }
    __syncthreads();
    float r = lane < nw ? tmp[lane] : (Max ? -CUDART_INF_F : 0.0f);
    return Max ? warp_max(r) : warp_sum(r);
}

template <wkind W>
constexpr bool float_kind = !block_kind(W);

// The kinds whose values are a * q + c with an offset c per 32 elements.
template <wkind W>
constexpr bool has_offset =
    W == wkind::q4_1 || W == wkind::q5_1 || W == wkind::q4_k || W == wkind::q5_k;

// Bytes and elements of one GGUF block of a block kind.
template <wkind W>
__host__ __device__ constexpr int block_bytes() {
    switch (W) {
    case wkind::q8_0:
        return 34;
    case wkind::q4_0:
        return 18;
    case wkind::q4_1:
        return 20;
    case wkind::q5_0:
        return 22;
    case wkind::q5_1:
        return 24;
    case wkind::q4_k:
        return 144;
    case wkind::q5_k:
        return 176;
    case wkind::q6_k:
        return 210;
    default:
        return 0;
    }
}

template <wkind W>
__host__ __device__ constexpr int block_elems() {
    return W == wkind::q4_k || W == wkind::q5_k || W == wkind::q6_k ? 256 : 32;
}

// Row r of a block kind's rows x cols matrix at w.
template <wkind W>
__device__ __forceinline__ const unsigned char* block_row(const void* w, int64_t r, int64_t cols) {
    return static_cast<const unsigned char*>(w) + r * (cols / block_elems<W>()) * block_bytes<W>();
}

// Little-endian 32-bit word at p (any alignment).
__device__ __forceinline__ uint32_t le32(const unsigned char* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// Sub-block s's 6-bit scale and min of a Q4_K/Q5_K super-block (12 packed
// bytes): for s < 4 the low 6 bits of bytes s and s + 4; for the others
// the low (scale) or high (min) nibble of byte s + 4, with the top two bits
// of byte s - 4 (scale) or s (min) above it.
__device__ __forceinline__ void scale_min(const unsigned char* b, int s, float& sc, float& m) {
    if (s < 4) {
        sc = float(b[s] & 63);
        m = float(b[s + 4] & 63);
    } else {
        sc = float((b[s + 4] & 0xf) | (b[s - 4] >> 6) << 4);
        m = float((b[s + 4] >> 4) | (b[s] >> 6) << 4);
    }
}

// Elements 32 b .. 32 b + 31 of a row of kind W, as GGUF stores it: each
// element is a * q[l] + c.
template <wkind W>
__device__ __forceinline__ void load_chunk(const unsigned char* row, int64_t b, float* q, float& a,
                                           float& c) {
    c = 0.0f;
    if constexpr (block_elems<W>() == 32) {
        const unsigned char* p = row + b * block_bytes<W>();
        a = half_at(p);
        if constexpr (W == wkind::q8_0) {
            // half d, int8 qs[32]; blocks are 34 bytes, so qs is 2-byte aligned.
            const auto* qs = reinterpret_cast<const unsigned short*>(p + 2);
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                const unsigned short v = qs[j];
                q[2 * j] = static_cast<float>(static_cast<signed char>(v & 0xff));
                q[2 * j + 1] = static_cast<float>(static_cast<signed char>(v >> 8));
            }
        } else {
            // half d, (Q4_1/Q5_1: half m), (Q5_0/Q5_1: the fifth bits as a
            // little-endian word), uint8 qs[16]: element j in the low nibble
            // of qs[j], element j + 16 in its high one. Q4_0: d (q - 8),
            // Q5_0: d (q - 16), Q4_1 and Q5_1: d q + m.
            constexpr bool affine = W == wkind::q4_1 || W == wkind::q5_1;
            constexpr bool five = W == wkind::q5_0 || W == wkind::q5_1;
            constexpr int zero = affine ? 0 : five ? 16 : 8;
            const unsigned char* qs = p + block_bytes<W>() - 16;
            uint32_t qh = 0;
            if constexpr (affine) {
                c = half_at(p + 2);
            }
            if constexpr (five) {
                qh = le32(qs - 4);
            }
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                int lo = qs[j] & 15, hi = qs[j] >> 4;
                if constexpr (five) {
                    lo |= int((qh >> j) & 1) << 4;
                    hi |= int((qh >> (j + 16)) & 1) << 4;
                }
                q[j] = static_cast<float>(lo - zero);
                q[j + 16] = static_cast<float>(hi - zero);
            }
        }
    } else {
        // Sub-block j of super-block b / 8.
        const unsigned char* p = row + (b >> 3) * block_bytes<W>();
        const int j = static_cast<int>(b & 7);
        if constexpr (W == wkind::q6_k) {
            // uint8 ql[128], qh[64], int8 scales[16], half d. Half h of the
            // super-block: 32 elements from the low (k = 0, 1) or high (k =
            // 2, 3) nibbles of ql[64 h + 32 (k & 1) + l], their top two bits
            // at bit 2 k of qh[32 h + l]; scale 8 h + 2 k + l / 16.
            const int h = j >> 2, k = j & 3;
            const unsigned char* ql = p + 64 * h + 32 * (k & 1);
            const unsigned char* qh = p + 128 + 32 * h;
            const auto* sc = reinterpret_cast<const signed char*>(p + 192) + 8 * h + 2 * k;
            const int shift = (k >> 1) * 4;
            a = half_at(p + 208);
#pragma unroll
            for (int l = 0; l < 32; ++l) {
                const int v = ((ql[l] >> shift) & 15) | ((qh[l] >> (2 * k)) & 3) << 4;
                q[l] = static_cast<float>(int(sc[l >> 4]) * (v - 32));
            }
        } else {
            // half d, half dmin, scales[12], (Q5_K: uint8 qh[32], the fifth
            // bit of element l of sub-block j at bit j of qh[l]), uint8
            // qs[128]: sub-block j in the low (j even) or high nibbles of
            // qs[32 (j / 2) + l]. Element d sc q - dmin m.
            constexpr bool five = W == wkind::q5_k;
            const unsigned char* qs = p + (five ? 48 : 16) + 32 * (j >> 1);
            const int shift = (j & 1) * 4;
            float sc, m;
            scale_min(p + 4, j, sc, m);
            a = half_at(p) * sc;
            c = -half_at(p + 2) * m;
#pragma unroll
            for (int l = 0; l < 32; ++l) {
                int v = (qs[l] >> shift) & 15;
                if constexpr (five) {
                    v |= ((p[16 + l] >> j) & 1) << 4;
                }
                q[l] = static_cast<float>(v);
            }
        }
    }
}

template <wkind W>
__global__ void k_matmul(const void* w, int64_t rows, int64_t cols, const float* x,
                         int64_t n_tokens, float* y) {
    const int lane = threadIdx.x % warp;
    const int64_t r = int64_t(blockIdx.x) * mm_warps + threadIdx.x / warp;
    const int64_t t0 = int64_t(blockIdx.y) * mm_tile;
    if (r >= rows) {
        return; // the whole warp: r is the same for its lanes
    }
    const int nt = n_tokens - t0 < mm_tile ? static_cast<int>(n_tokens - t0) : mm_tile;
    const float* xt = x + t0 * cols;
    float acc[mm_tile];
#pragma unroll
    for (int i = 0; i < mm_tile; ++i) {
        acc[i] = 0.0f;
    }
    if constexpr (float_kind<W>) {
        for (int64_t k = lane; k < cols; k += warp) {
            float wv;
            if constexpr (W == wkind::f32) {
                wv = static_cast<const float*>(w)[r * cols + k];
            } else if constexpr (W == wkind::f16) {
                wv = __half2float(static_cast<const __half*>(w)[r * cols + k]);
            } else {
                wv = __bfloat162float(static_cast<const __nv_bfloat16*>(w)[r * cols + k]);
            }
#pragma unroll
            for (int i = 0; i < mm_tile; ++i) {
                if (i < nt) {
                    acc[i] += wv * xt[i * cols + k];
                }
            }
        }
    } else {
        const unsigned char* row = block_row<W>(w, r, cols);
        for (int64_t b = lane; b < cols / 32; b += warp) {
            float q[32], a, c;
            load_chunk<W>(row, b, q, a, c);
#pragma unroll
            for (int i = 0; i < mm_tile; ++i) {
                if (i < nt) {
                    const float4* xv = reinterpret_cast<const float4*>(xt + i * cols + b * 32);
                    float s = 0.0f, sx = 0.0f;
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const float4 v = xv[j];
                        s += q[4 * j] * v.x + q[4 * j + 1] * v.y + q[4 * j + 2] * v.z +
                             q[4 * j + 3] * v.w;
                        if constexpr (has_offset<W>) {
                            sx += v.x + v.y + v.z + v.w;
                        }
                    }
                    acc[i] += a * s + c * sx;
                }
            }
        }
    }
    // nt is the same for the whole warp: its lanes all reduce, or none.
#pragma unroll
    for (int i = 0; i < mm_tile; ++i) {
        if (i < nt) {
            const float v = warp_sum(acc[i]);
            if (lane == 0) {
                y[(t0 + i) * rows + r] = v;
            }
        }
    }
}

// Float kinds: one element per thread; block kinds: 32 elements per thread.
template <wkind W>
__global__ void k_dequant_f16(const void* w, int64_t rows, int64_t cols, __half* out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if constexpr (float_kind<W>) {
        if (i >= rows * cols) {
            return;
        }
        if constexpr (W == wkind::f32) {
            out[i] = __float2half_rn(static_cast<const float*>(w)[i]);
        } else if constexpr (W == wkind::f16) {
            out[i] = static_cast<const __half*>(w)[i];
        } else {
            out[i] = __float2half_rn(__bfloat162float(static_cast<const __nv_bfloat16*>(w)[i]));
        }
    } else {
        const int64_t per_row = cols / 32;
        if (i >= rows * per_row) {
            return;
        }
        const int64_t r = i / per_row, b = i % per_row;
        float q[32], a, c;
        load_chunk<W>(block_row<W>(w, r, cols), b, q, a, c);
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            out[r * cols + b * 32 + l] = __float2half_rn(has_offset<W> ? a * q[l] + c : a * q[l]);
        }
    }
}

// One block per row: the row's largest finite magnitude m, then the row
// times scale = 2^-k, the smallest k >= 0 with m 2^-k <= 65504 (F16's
// largest value), as halves. A power of two is exact (but for what falls
// into F16's subnormals), so a row that fits is converted as it is and one
// that does not loses only its smallest values' low bits; unscale() undoes
// the scale on the GEMM's F32 result. Infinities and NaNs stay.
__global__ void k_to_f16(const float* x, __half* y, float* scale, int64_t cols) {
    __shared__ float tmp[32];
    const int64_t row = blockIdx.x;
    const float* xr = x + row * cols;
    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        const float a = fabsf(xr[i]);
        if (isfinite(a)) {
            m = fmaxf(m, a);
        }
    }
    m = block_reduce<true>(m, tmp);
    float s = 1.0f;
    while (m * s > 65504.0f) {
        s *= 0.5f;
    }
    if (threadIdx.x == 0) {
        scale[row] = s;
    }
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        y[row * cols + i] = __float2half_rn(xr[i] * s);
    }
}

// Block (row, output): that output's row divided by the row's scale, when
// it is not 1 (a power of two: exact).
__global__ void k_unscale(const float* scale, float* y0, int64_t w0, float* y1, int64_t w1,
                          float* y2, int64_t w2) {
    const int64_t row = blockIdx.x;
    const float s = scale[row];
    if (s == 1.0f) {
        return;
    }
    float* y = blockIdx.y == 0 ? y0 : blockIdx.y == 1 ? y1 : y2;
    const int64_t w = blockIdx.y == 0 ? w0 : blockIdx.y == 1 ? w1 : w2;
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < w; i += blockDim.x) {
        y[row * w + i] *= inv;
    }
}

__global__ void k_to_bf16(const float* x, __nv_bfloat16* y, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = __float2bfloat16_rn(x[i]);
    }
}

__global__ void k_rms_norm(const float* x, const float* w, float* y, int64_t n, float eps,
                           const int32_t* src) {
    __shared__ double tmp[32];
    const int64_t row = blockIdx.x;
    const float* xr = x + (src ? src[row] : row) * n;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        ss += double(xr[i]) * xr[i];
    }
    for (int o = warp / 2; o > 0; o /= 2) {
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    }
    if (threadIdx.x % warp == 0) {
        tmp[threadIdx.x / warp] = ss;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (unsigned i = 0; i < blockDim.x / warp; ++i) {
            t += tmp[i];
        }
        tmp[0] = t;
    }
    __syncthreads();
    const float scale = static_cast<float>(1.0 / sqrt(tmp[0] / double(n) + double(eps)));
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        y[row * n + i] = xr[i] * scale * w[i];
    }
}

__global__ void k_add_bias(float* y, const float* b, int64_t total, int64_t width) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total) {
        y[i] += b[i % width];
    }
}

__global__ void k_add(float* x, const float* y, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] += y[i];
    }
}

__global__ void k_swiglu(float* gate, const float* up, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

__global__ void k_rope(float* x, int64_t stride, uint32_t n_heads, uint32_t head_dim,
                       uint32_t n_rot, bool neox, const row_desc* rows_d, const double* inv_freq,
                       double rope_scale) {
    const int64_t row = blockIdx.x;
    const uint32_t half = n_rot / 2;
    const double at = double(rows_d[row].pos) / rope_scale;
    float* xr = x + row * stride;
    for (uint32_t k = threadIdx.x; k < n_heads * half; k += blockDim.x) {
        const uint32_t h = k / half, i = k % half;
        double s, c;
        sincos(at * inv_freq[i], &s, &c);
        const float cf = static_cast<float>(c), sf = static_cast<float>(s);
        float* v = xr + size_t(h) * head_dim;
        const uint32_t a = neox ? i : 2 * i;
        const uint32_t b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * cf - x1 * sf;
        v[b] = x0 * sf + x1 * cf;
    }
}

// Layer `layer`'s K (v = 0) or V (v = 1) row of position `pos` in a
// sequence's paged cache.
__device__ __forceinline__ __half* kv_row(const seq_desc& sd, const uint32_t* tables,
                                          uint32_t layer, uint32_t kv_dim, uint32_t pos, int v) {
    const uint32_t phys = tables[sd.table_off + pos / sd.block_tokens];
    const uint32_t slot = pos % sd.block_tokens;
    const uint64_t off =
        phys * sd.block_bytes + ((uint64_t(layer) * 2 + v) * sd.block_tokens + slot) * kv_dim * 2;
    return reinterpret_cast<__half*>(sd.blocks + off);
}

__global__ void k_kv_write(const float* k, const float* v, uint32_t kv_dim, uint32_t layer,
                           const row_desc* rows_d, const seq_desc* seqs, const uint32_t* tables) {
    const int64_t row = blockIdx.x;
    const row_desc rd = rows_d[row];
    const seq_desc sd = seqs[rd.seq];
    __half* kd = kv_row(sd, tables, layer, kv_dim, uint32_t(rd.pos), 0);
    __half* vd = kv_row(sd, tables, layer, kv_dim, uint32_t(rd.pos), 1);
    for (uint32_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kd[i] = __float2half_rn(k[row * kv_dim + i]);
        vd[i] = __float2half_rn(v[row * kv_dim + i]);
    }
}

constexpr int attn_threads = 128;
constexpr int attn_dims = max_head_dim / attn_threads; // dims per thread, at most

// Positions [b, e) of n that part z of `parts` takes: whole warps of keys,
// so that the parts of a short row are the first ones (the rest empty).
__device__ __forceinline__ void attention_span(uint32_t n, uint32_t z, uint32_t parts, uint32_t& b,
                                               uint32_t& e) {
    const uint32_t span = parts == 1 ? n : ((n + parts - 1) / parts + warp - 1) / warp * warp;
    b = min(n, z * span);
    e = min(n, b + span);
}

// One block per (row, head, part): the part's positions in chunks of
// attn_threads keys. A chunk's scores: each warp takes 32 of its keys one
// after the other, the lanes reading a key's dims side by side (a row of K
// is contiguous; the keys are not), then summing across the warp. Its
// values: each thread a dim, all the chunk's keys. With one part the
// output is normalized in place; with several, `part` gets the unnormalized
// sums and the part's max and sum for k_attention_merge.
__global__ void __launch_bounds__(attn_threads)
    k_attention(const float* q, float* out, float* part, uint32_t n_head, uint32_t group,
                uint32_t head_dim, uint32_t kv_dim, uint32_t layer, float scale,
                const row_desc* rows_d, const seq_desc* seqs, const uint32_t* tables) {
    __shared__ float qs[max_head_dim];
    __shared__ float p[attn_threads];
    __shared__ float tmp[32];
    const int64_t row = blockIdx.x;
    const uint32_t h = blockIdx.y, kvh = h / group, D = head_dim, parts = gridDim.z;
    const int lane = int(threadIdx.x) % warp, w = int(threadIdx.x) / warp;
    const row_desc rd = rows_d[row];
    const seq_desc sd = seqs[rd.seq];
    uint32_t b = 0, e = 0;
    attention_span(uint32_t(rd.pos) + 1, blockIdx.z, parts, b, e);
    const int64_t base = row * int64_t(n_head) * D + int64_t(h) * D;
    for (uint32_t d = threadIdx.x; d < D; d += attn_threads) {
        qs[d] = q[base + d];
    }
    __syncthreads();
    float acc[attn_dims];
#pragma unroll
    for (int a = 0; a < attn_dims; ++a) {
        acc[a] = 0.0f;
    }
    float m = -CUDART_INF_F, l = 0.0f;
    for (uint32_t c0 = b; c0 < e; c0 += attn_threads) {
        // This thread's score is key c0 + threadIdx.x's (-inf past e).
        float s = -CUDART_INF_F;
        for (int i = 0; i < warp; ++i) {
            const uint32_t j = c0 + uint32_t(w * warp + i);
            if (j >= e) {
                break; // the same for the whole warp
            }
            const __half* k = kv_row(sd, tables, layer, kv_dim, j, 0) + size_t(kvh) * D;
            float dot = 0.0f;
            for (uint32_t d = uint32_t(lane); d < D; d += warp) {
                dot += qs[d] * __half2float(k[d]);
            }
            dot = warp_sum(dot);
            if (lane == i) {
                s = dot * scale;
            }
        }
        const float m_new = fmaxf(m, block_reduce<true>(s, tmp));
        const float ex = c0 + threadIdx.x < e ? expf(s - m_new) : 0.0f;
        p[threadIdx.x] = ex;
        const float sum = block_reduce<false>(ex, tmp); // syncs: p is visible
        const float corr = expf(m - m_new);             // 0 on the first chunk
        l = l * corr + sum;
        m = m_new;
        const uint32_t cn = min(uint32_t(attn_threads), e - c0);
#pragma unroll
        for (int a = 0; a < attn_dims; ++a) {
            const uint32_t d = threadIdx.x + uint32_t(a) * attn_threads;
            if (d < D) {
                float v = acc[a] * corr;
                for (uint32_t i = 0; i < cn; ++i) {
                    const __half* vr = kv_row(sd, tables, layer, kv_dim, c0 + i, 1);
                    v += p[i] * __half2float(vr[size_t(kvh) * D + d]);
                }
                acc[a] = v;
            }
        }
        __syncthreads(); // p is rewritten by the next chunk
    }
    if (parts == 1) {
        const float inv = 1.0f / l;
#pragma unroll
        for (int a = 0; a < attn_dims; ++a) {
            const uint32_t d = threadIdx.x + uint32_t(a) * attn_threads;
            if (d < D) {
                out[base + d] = acc[a] * inv;
            }
        }
        return;
    }
    // An empty part leaves m = -inf and l = 0: it weighs nothing.
    float* pp = part + ((row * n_head + h) * parts + blockIdx.z) * (int64_t(D) + 2);
#pragma unroll
    for (int a = 0; a < attn_dims; ++a) {
        const uint32_t d = threadIdx.x + uint32_t(a) * attn_threads;
        if (d < D) {
            pp[d] = acc[a];
        }
    }
    if (threadIdx.x == 0) {
        pp[D] = m;
        pp[D + 1] = l;
    }
}

// One block per (row, head): the parts' sums rescaled to the largest max,
// over the parts' rescaled sums of weights. Part 0 is never empty, so the
// largest max is finite.
__global__ void k_attention_merge(const float* part, float* out, uint32_t n_head, uint32_t head_dim,
                                  uint32_t parts) {
    const int64_t row = blockIdx.x;
    const uint32_t h = blockIdx.y, D = head_dim;
    const int64_t stride = int64_t(D) + 2;
    const float* pp = part + (row * n_head + h) * parts * stride;
    float mx = -CUDART_INF_F;
    for (uint32_t z = 0; z < parts; ++z) {
        mx = fmaxf(mx, pp[z * stride + D]);
    }
    float l = 0.0f;
    for (uint32_t z = 0; z < parts; ++z) {
        l += pp[z * stride + D + 1] * expf(pp[z * stride + D] - mx);
    }
    const float inv = 1.0f / l;
    const int64_t base = row * int64_t(n_head) * D + int64_t(h) * D;
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.0f;
        for (uint32_t z = 0; z < parts; ++z) {
            o += pp[z * stride + d] * expf(pp[z * stride + D] - mx);
        }
        out[base + d] = o * inv;
    }
}

unsigned blocks_for(int64_t n, int threads) {
    return static_cast<unsigned>((n + threads - 1) / threads);
}

// Calls f.template operator()<W>() for the kind t names; then the launch's
// error.
template <typename F>
cudaError_t by_kind(wkind t, F&& f) {
    switch (t) {
    case wkind::f32:
        f.template operator()<wkind::f32>();
        break;
    case wkind::f16:
        f.template operator()<wkind::f16>();
        break;
    case wkind::bf16:
        f.template operator()<wkind::bf16>();
        break;
    case wkind::q8_0:
        f.template operator()<wkind::q8_0>();
        break;
    case wkind::q4_0:
        f.template operator()<wkind::q4_0>();
        break;
    case wkind::q4_1:
        f.template operator()<wkind::q4_1>();
        break;
    case wkind::q5_0:
        f.template operator()<wkind::q5_0>();
        break;
    case wkind::q5_1:
        f.template operator()<wkind::q5_1>();
        break;
    case wkind::q4_k:
        f.template operator()<wkind::q4_k>();
        break;
    case wkind::q5_k:
        f.template operator()<wkind::q5_k>();
        break;
    case wkind::q6_k:
        f.template operator()<wkind::q6_k>();
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

#ifndef LLMOS_CUDA_EMU
// Loads `k`'s module now (under lazy loading, the default since CUDA 12.2,
// a kernel is loaded at its first launch otherwise).
template <typename K>
cudaError_t load(K* k) {
    cudaFuncAttributes a{};
    return cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(k));
}
#endif

} // namespace

cudaError_t load_kernels() {
#ifdef LLMOS_CUDA_EMU
    return cudaSuccess; // the emulation loads nothing
#else
    cudaError_t e = cudaSuccess;
    auto keep = [&e](cudaError_t x) {
        if (e == cudaSuccess) {
            e = x;
        }
    };
    for (wkind t : {wkind::f32, wkind::f16, wkind::bf16, wkind::q8_0, wkind::q4_0, wkind::q4_1,
                    wkind::q5_0, wkind::q5_1, wkind::q4_k, wkind::q5_k, wkind::q6_k}) {
        keep(by_kind(t, [&]<wkind W>() {
            keep(load(k_matmul<W>));
            keep(load(k_dequant_f16<W>));
        }));
    }
    keep(load(k_to_f16));
    keep(load(k_unscale));
    keep(load(k_to_bf16));
    keep(load(k_rms_norm));
    keep(load(k_add_bias));
    keep(load(k_add));
    keep(load(k_swiglu));
    keep(load(k_rope));
    keep(load(k_kv_write));
    keep(load(k_attention));
    keep(load(k_attention_merge));
    (void)cudaGetLastError(); // the error is returned, not left for a later check
    return e;
#endif
}

cudaError_t matmul(wkind t, const void* w, int64_t rows, int64_t cols, const float* x,
                   int64_t n_tokens, float* y, cudaStream_t s) {
    if (rows <= 0 || n_tokens <= 0) {
        return cudaSuccess;
    }
    const dim3 grid(blocks_for(rows, mm_warps), blocks_for(n_tokens, mm_tile));
    const dim3 block(mm_warps * warp);
    return by_kind(t, [&]<wkind W>() {
        LLMOS_LAUNCH(k_matmul<W>, grid, block, s)(w, rows, cols, x, n_tokens, y);
    });
}

cudaError_t dequant_f16(wkind t, const void* w, int64_t rows, int64_t cols, uint16_t* out,
                        cudaStream_t s) {
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    auto* o = reinterpret_cast<__half*>(out);
    return by_kind(t, [&]<wkind W>() {
        const int64_t n = float_kind<W> ? rows * cols : rows * (cols / 32);
        LLMOS_LAUNCH(k_dequant_f16<W>, blocks_for(n, 256), 256, s)(w, rows, cols, o);
    });
}

cudaError_t to_f16(const float* x, uint16_t* y, float* scale, int64_t rows, int64_t cols,
                   cudaStream_t s) {
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    // Whole warps, no more than a narrow row needs.
    const int threads = cols >= 256 ? 256 : int((cols + 31) / 32 * 32);
    LLMOS_LAUNCH(k_to_f16, static_cast<unsigned>(rows), threads, s)
    (x, reinterpret_cast<__half*>(y), scale, cols);
    return cudaGetLastError();
}

cudaError_t unscale(const float* scale, int64_t rows, std::span<const scaled_rows> outs,
                    cudaStream_t s) {
    if (outs.size() > max_scaled_outputs) {
        return cudaErrorInvalidValue;
    }
    scaled_rows y[max_scaled_outputs] = {};
    unsigned n = 0;
    for (const scaled_rows& o : outs) {
        if (o.y && o.width > 0) {
            y[n++] = o;
        }
    }
    if (rows <= 0 || n == 0) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_unscale, dim3(static_cast<unsigned>(rows), n), 128, s)
    (scale, y[0].y, y[0].width, y[1].y, y[1].width, y[2].y, y[2].width);
    return cudaGetLastError();
}

cudaError_t to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s) {
    if (n <= 0) {
        return cudaSuccess;
    }
    auto* o = reinterpret_cast<__nv_bfloat16*>(y);
    LLMOS_LAUNCH(k_to_bf16, blocks_for(n, 256), 256, s)(x, o, n);
    return cudaGetLastError();
}

cudaError_t rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps,
                     const int32_t* src, cudaStream_t s) {
    if (rows <= 0) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_rms_norm, static_cast<unsigned>(rows), 256, s)(x, w, y, n, eps, src);
    return cudaGetLastError();
}

cudaError_t add_bias(float* y, const float* b, int64_t rows, int64_t width, cudaStream_t s) {
    const int64_t n = rows * width;
    if (n <= 0) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_add_bias, blocks_for(n, 256), 256, s)(y, b, n, width);
    return cudaGetLastError();
}

cudaError_t add(float* x, const float* y, int64_t n, cudaStream_t s) {
    if (n <= 0) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_add, blocks_for(n, 256), 256, s)(x, y, n);
    return cudaGetLastError();
}

cudaError_t swiglu(float* gate, const float* up, int64_t n, cudaStream_t s) {
    if (n <= 0) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_swiglu, blocks_for(n, 256), 256, s)(gate, up, n);
    return cudaGetLastError();
}

cudaError_t rope(float* x, int64_t rows, int64_t stride, uint32_t n_heads, uint32_t head_dim,
                 uint32_t n_rot, bool neox, const row_desc* rows_d, const double* inv_freq,
                 double rope_scale, cudaStream_t s) {
    if (rows <= 0 || n_rot < 2) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_rope, static_cast<unsigned>(rows), 128, s)
    (x, stride, n_heads, head_dim, n_rot, neox, rows_d, inv_freq, rope_scale);
    return cudaGetLastError();
}

cudaError_t kv_write(const float* k, const float* v, int64_t rows, uint32_t kv_dim, uint32_t layer,
                     const row_desc* rows_d, const seq_desc* seqs, const uint32_t* tables,
                     cudaStream_t s) {
    if (rows <= 0) {
        return cudaSuccess;
    }
    LLMOS_LAUNCH(k_kv_write, static_cast<unsigned>(rows), 128, s)
    (k, v, kv_dim, layer, rows_d, seqs, tables);
    return cudaGetLastError();
}

cudaError_t attention(const float* q, float* out, int64_t rows, uint32_t n_head, uint32_t n_head_kv,
                      uint32_t head_dim, uint32_t layer, float scale, const row_desc* rows_d,
                      const seq_desc* seqs, const uint32_t* tables, float* part, uint32_t parts,
                      cudaStream_t s) {
    if (rows <= 0) {
        return cudaSuccess;
    }
    if (head_dim > max_head_dim || n_head_kv == 0 || n_head % n_head_kv != 0 || parts == 0 ||
        parts > max_attention_parts || (parts > 1 && !part)) {
        return cudaErrorInvalidValue;
    }
    const dim3 grid(static_cast<unsigned>(rows), n_head, parts);
    LLMOS_LAUNCH(k_attention, grid, attn_threads, s)
    (q, out, part, n_head, n_head / n_head_kv, head_dim, n_head_kv * head_dim, layer, scale, rows_d,
     seqs, tables);
    if (parts > 1) {
        if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
            return e;
        }
        const dim3 mgrid(static_cast<unsigned>(rows), n_head);
        LLMOS_LAUNCH(k_attention_merge, mgrid, attn_threads, s)(part, out, n_head, head_dim, parts);
    }
    return cudaGetLastError();
}

uint32_t attention_parts(int64_t rows, uint32_t n_head, uint32_t max_positions,
                         int multiprocessors) noexcept {
    const int64_t blocks = rows * int64_t(n_head);
    if (rows <= 0 || blocks >= multiprocessors || rows > max_attention_part_rows) {
        return 1;
    }
    // About two blocks per multiprocessor, each with a part of at least
    // attention_part_keys positions; a power of two, so that a growing
    // context changes the launch (and its graph) a few times only.
    const int64_t want = std::min<int64_t>((2 * int64_t(multiprocessors) + blocks - 1) / blocks,
                                           max_positions / attention_part_keys);
    uint32_t parts = 1;
    while (parts * 2 <= std::min<int64_t>(want, max_attention_parts)) {
        parts *= 2;
    }
    return parts;
}

} // namespace llmos::engine::cuda_detail
