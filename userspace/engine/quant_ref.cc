// SPDX-License-Identifier: MIT
//
// Portable dot kernels and activation quantizers: the reference the AVX2
// kernels are tested against, and what runs on CPUs without AVX2 (or with
// LLMOS_ENGINE_SIMD=scalar). Quantized weights meet 8-bit activations in
// integer sums, one float multiply per block (per sub-block scale for the
// K-quants, folded into the integer sum).
#include "quant_kernels.hh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace llmos::engine::detail {

namespace {

int round_act(float v) {
    if (!(v > -127.0f)) {
        return -127;
    }
    if (!(v < 127.0f)) {
        return 127;
    }
    return static_cast<int>(std::lrintf(v));
}

void quantize_act_q8_32(const float* x, void* dst, int64_t cols) {
    auto* qs = static_cast<int8_t*>(dst);
    auto* d = const_cast<float*>(act32_d(dst, cols));
    auto* ds = const_cast<float*>(act32_ds(dst, cols));
    for (int64_t b = 0; b < cols / qk_block; ++b, x += qk_block, qs += qk_block) {
        float amax = 0.0f;
        for (int j = 0; j < qk_block; ++j) {
            amax = std::max(amax, std::fabs(x[j]));
        }
        const float db = amax / 127.0f;
        const float id = db > 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < qk_block; ++j) {
            const int q = round_act(x[j] * id);
            qs[j] = static_cast<int8_t>(q);
            sum += q;
        }
        d[b] = db;
        ds[b] = db * static_cast<float>(sum);
    }
}

void quantize_act_q8_256(const float* x, void* dst, int64_t cols) {
    auto* y = static_cast<act_q8_256*>(dst);
    for (int64_t b = 0; b < cols / qk_super; ++b, x += qk_super) {
        float amax = 0.0f;
        for (int j = 0; j < qk_super; ++j) {
            amax = std::max(amax, std::fabs(x[j]));
        }
        const float d = amax / 127.0f;
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int g = 0; g < qk_super / 16; ++g) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; ++j) {
                const int q = round_act(x[j] * id);
                y[b].qs[j] = static_cast<int8_t>(q);
                sum += q;
            }
            y[b].bsums[g] = static_cast<int16_t>(sum);
        }
        y[b].d = d;
    }
}

template <typename Block>
const Block* act_row(const void* act, size_t stride, int t) {
    return reinterpret_cast<const Block*>(static_cast<const std::byte*>(act) +
                                          static_cast<size_t>(t) * stride);
}

void dot_f32(const void* w_row, const void* act, size_t stride, int nt, int64_t cols, float* out) {
    const auto* w = static_cast<const float*>(w_row);
    for (int t = 0; t < nt; ++t) {
        const float* x = act_row<float>(act, stride, t);
        float s = 0.0f;
        for (int64_t k = 0; k < cols; ++k) {
            s += w[k] * x[k];
        }
        out[t] = s;
    }
}

/// F16 and BF16 weights: 16-bit floats widened by `Widen`.
template <float (*Widen)(uint16_t) noexcept>
void dot_16(const void* w_row, const void* act, size_t stride, int nt, int64_t cols, float* out) {
    const auto* w = static_cast<const uint16_t*>(w_row);
    for (int t = 0; t < nt; ++t) {
        const float* x = act_row<float>(act, stride, t);
        float s = 0.0f;
        for (int64_t k = 0; k < cols; ++k) {
            s += Widen(w[k]) * x[k];
        }
        out[t] = s;
    }
}

void dot_q8_0(const void* w_row, const void* act, size_t stride, int nt, int64_t cols, float* out) {
    const auto* w = static_cast<const block_q8_0*>(w_row);
    for (int t = 0; t < nt; ++t) {
        const void* row = static_cast<const std::byte*>(act) + static_cast<size_t>(t) * stride;
        const int8_t* xq = act32_qs(row);
        const float* xd = act32_d(row, cols);
        float s = 0.0f;
        for (int64_t b = 0; b < cols / qk_block; ++b, xq += qk_block) {
            int sumi = 0;
            for (int j = 0; j < qk_block; ++j) {
                sumi += w[b].qs[j] * xq[j];
            }
            s += fp16_to_fp32(w[b].d) * xd[b] * static_cast<float>(sumi);
        }
        out[t] = s;
    }
}

/// Q4_1 and Q5_1 store an offset m per block; Q5_0 and Q5_1 a fifth bit
/// per element.
template <typename Block>
constexpr bool has_min = std::is_same_v<Block, block_q4_1> || std::is_same_v<Block, block_q5_1>;
template <typename Block>
constexpr bool has_fifth_bit =
    std::is_same_v<Block, block_q5_0> || std::is_same_v<Block, block_q5_1>;

/// Level j (0..15, or 0..31 with a fifth bit) of a Q4_0/Q4_1/Q5_0/Q5_1
/// block; `high` holds the fifth bits (bit j for element j).
template <typename Block>
int level32(const Block& w, uint32_t high, int j) {
    int q = j < qk_block / 2 ? w.qs[j] & 0xf : w.qs[j - qk_block / 2] >> 4;
    if constexpr (has_fifth_bit<Block>) {
        q |= static_cast<int>((high >> j) & 1) << 4;
    }
    return q;
}

/// Q4_0, Q4_1, Q5_0, Q5_1: the levels meet the activations in an integer
/// sum, and the offset of every weight comes from the activation sums
/// (ds = d_x * sum(q_x)): + m * ds for Q4_1/Q5_1, - 8 or 16 * d_w * ds
/// for Q4_0/Q5_0.
template <typename Block>
void dot_q32_offset(const void* w_row, const void* act, size_t stride, int nt, int64_t cols,
                    float* out) {
    const auto* w = static_cast<const Block*>(w_row);
    constexpr bool affine = has_min<Block>;
    constexpr bool five = has_fifth_bit<Block>;
    constexpr float zero = five ? 16.0f : 8.0f; // the symmetric types' middle level
    for (int t = 0; t < nt; ++t) {
        const void* row = static_cast<const std::byte*>(act) + static_cast<size_t>(t) * stride;
        const int8_t* xq = act32_qs(row);
        const float* xd = act32_d(row, cols);
        const float* xds = act32_ds(row, cols);
        float s = 0.0f;
        float offset = 0.0f;
        for (int64_t b = 0; b < cols / qk_block; ++b, xq += qk_block) {
            uint32_t high = 0;
            if constexpr (five) {
                std::memcpy(&high, w[b].qh, sizeof high);
            }
            int sumi = 0;
            for (int j = 0; j < qk_block; ++j) {
                sumi += level32(w[b], high, j) * xq[j];
            }
            const float dw = fp16_to_fp32(w[b].d);
            s += dw * xd[b] * static_cast<float>(sumi);
            if constexpr (affine) {
                offset += fp16_to_fp32(w[b].m) * xds[b];
            } else {
                offset += dw * xds[b];
            }
        }
        out[t] = affine ? s + offset : s - zero * offset;
    }
}

/// Sub-block s's 6-bit scale and min (layout in quant.hh).
void scale_min(const uint8_t* b, int s, int& sc, int& m) {
    if (s < 4) {
        sc = b[s] & 63;
        m = b[s + 4] & 63;
    } else {
        sc = (b[s + 4] & 0xf) | (b[s - 4] >> 6) << 4;
        m = (b[s + 4] >> 4) | (b[s] >> 6) << 4;
    }
}

/// Q4_K and Q5_K: `high` is the qh array for Q5_K, null for Q4_K.
template <typename Block, bool Five>
void dot_affine_k(const void* w_row, const void* act, size_t stride, int nt, int64_t cols,
                  float* out) {
    const auto* w = static_cast<const Block*>(w_row);
    for (int t = 0; t < nt; ++t) {
        const auto* x = act_row<act_q8_256>(act, stride, t);
        float s = 0.0f;
        for (int64_t b = 0; b < cols / qk_super; ++b) {
            int sumi = 0;
            int summ = 0;
            for (int sub = 0; sub < 8; ++sub) {
                int sc = 0;
                int m = 0;
                scale_min(w[b].scales, sub, sc, m);
                const int ch = sub / 2;
                const int shift = 4 * (sub & 1);
                const uint8_t* q = w[b].qs + 32 * ch;
                const int8_t* xq = x[b].qs + 32 * sub;
                int dot = 0;
                for (int l = 0; l < 32; ++l) {
                    int v = (q[l] >> shift) & 0xf;
                    if constexpr (Five) {
                        v |= ((w[b].qh[l] >> sub) & 1) << 4;
                    }
                    dot += v * xq[l];
                }
                sumi += sc * dot;
                summ += m * (x[b].bsums[2 * sub] + x[b].bsums[2 * sub + 1]);
            }
            const float d = fp16_to_fp32(w[b].d) * x[b].d;
            const float dmin = fp16_to_fp32(w[b].dmin) * x[b].d;
            s += d * static_cast<float>(sumi) - dmin * static_cast<float>(summ);
        }
        out[t] = s;
    }
}

void dot_q6_k(const void* w_row, const void* act, size_t stride, int nt, int64_t cols, float* out) {
    const auto* w = static_cast<const block_q6_k*>(w_row);
    for (int t = 0; t < nt; ++t) {
        const auto* x = act_row<act_q8_256>(act, stride, t);
        float s = 0.0f;
        for (int64_t b = 0; b < cols / qk_super; ++b) {
            int sumi = 0;
            int offset = 0; // sum of scale * sum(q_x): the -32 of every weight
            for (int h = 0; h < 2; ++h) {
                const uint8_t* ql = w[b].ql + 64 * h;
                const uint8_t* qh = w[b].qh + 32 * h;
                for (int k = 0; k < 4; ++k) {
                    const uint8_t* low = ql + 32 * (k & 1);
                    const int low_shift = k < 2 ? 0 : 4;
                    for (int half16 = 0; half16 < 2; ++half16) {
                        const int sub = 8 * h + 2 * k + half16;
                        const int8_t* xq = x[b].qs + 16 * sub;
                        int dot = 0;
                        for (int i = 0; i < 16; ++i) {
                            const int l = 16 * half16 + i;
                            const int q = ((low[l] >> low_shift) & 0xf) | ((qh[l] >> (2 * k)) & 3)
                                                                              << 4;
                            dot += q * xq[i];
                        }
                        sumi += w[b].scales[sub] * dot;
                        offset += w[b].scales[sub] * x[b].bsums[sub];
                    }
                }
            }
            const float d = fp16_to_fp32(w[b].d) * x[b].d;
            s += d * static_cast<float>(sumi - 32 * offset);
        }
        out[t] = s;
    }
}

} // namespace

act_format act_format_of(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
    case ggml_type::q4_0:
    case ggml_type::q4_1:
    case ggml_type::q5_0:
    case ggml_type::q5_1:
        return act_format::q8_32;
    case ggml_type::q4_k:
    case ggml_type::q5_k:
    case ggml_type::q6_k:
        return act_format::q8_256;
    default:
        return act_format::f32;
    }
}

size_t act_row_bytes(act_format f, int64_t cols) noexcept {
    const auto n = static_cast<size_t>(cols);
    switch (f) {
    case act_format::f32:
        return n * sizeof(float);
    case act_format::q8_32:
        return n + n / qk_block * 2 * sizeof(float);
    case act_format::q8_256:
        return n / qk_super * sizeof(act_q8_256);
    }
    return 0;
}

void act_dequantize(act_format f, const void* row, int64_t cols, float* out) noexcept {
    if (f == act_format::q8_32) {
        const int8_t* q = act32_qs(row);
        const float* d = act32_d(row, cols);
        for (int64_t k = 0; k < cols; ++k) {
            out[k] = d[k / qk_block] * static_cast<float>(q[k]);
        }
    } else if (f == act_format::q8_256) {
        const auto* b = static_cast<const act_q8_256*>(row);
        for (int64_t k = 0; k < cols; ++k) {
            out[k] = b[k / qk_super].d * static_cast<float>(b[k / qk_super].qs[k % qk_super]);
        }
    }
}

row_kernel row_kernel_ref(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::f32:
        return dot_f32;
    case ggml_type::f16:
        return dot_16<fp16_to_fp32>;
    case ggml_type::bf16:
        return dot_16<bf16_to_fp32>;
    case ggml_type::q8_0:
        return dot_q8_0;
    case ggml_type::q4_0:
        return dot_q32_offset<block_q4_0>;
    case ggml_type::q4_1:
        return dot_q32_offset<block_q4_1>;
    case ggml_type::q5_0:
        return dot_q32_offset<block_q5_0>;
    case ggml_type::q5_1:
        return dot_q32_offset<block_q5_1>;
    case ggml_type::q4_k:
        return dot_affine_k<block_q4_k, false>;
    case ggml_type::q5_k:
        return dot_affine_k<block_q5_k, true>;
    case ggml_type::q6_k:
        return dot_q6_k;
    default:
        return nullptr;
    }
}

act_quantizer act_quantizer_ref(act_format f) noexcept {
    switch (f) {
    case act_format::q8_32:
        return quantize_act_q8_32;
    case act_format::q8_256:
        return quantize_act_q8_256;
    case act_format::f32:
        return nullptr;
    }
    return nullptr;
}

} // namespace llmos::engine::detail
