// SPDX-License-Identifier: MIT
//
// Half floats, dequantization and the reference quantizers of the ggml
// block formats (layouts in quant.hh).
//
// The quantizers follow what llama.cpp's reference ones aim at, written
// anew: Q8_0, Q4_0 and Q5_0 take the scale from the largest magnitude of
// the block and round to nearest; Q4_1 and Q5_1 keep the block's minimum
// as the offset and split its range evenly; the K-quants search each sub-block's scale
// (and min) for the least squared error, quantize those to the 6 or 8 bit
// codes of the super-block, try the neighbouring codes, and quantize the
// values again with the scales that will actually be stored.
#include "quant_kernels.hh"

#include <algorithm>
#include <cmath>
#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <cstdlib>
#include <cstring>
#include <limits>
#include <llmos/engine/quant.hh>

namespace llmos::engine {

namespace {

constexpr float max_half = 65504.0f;

/// v rounded to nearest (ties even) and clamped to [lo, hi]; NaN gives lo.
int round_clamp(float v, int lo, int hi) {
    if (!(v > static_cast<float>(lo))) {
        return lo;
    }
    if (!(v < static_cast<float>(hi))) {
        return hi;
    }
    return static_cast<int>(std::lrintf(v));
}

/// A non-negative scale as a finite half: its code and its value.
struct half_scale {
    uint16_t bits;
    float value;
};

half_scale to_half_scale(float s) {
    if (!(s > 0.0f)) {
        return {0, 0.0f};
    }
    const uint16_t h = fp32_to_fp16(std::min(s, max_half));
    return {h, fp16_to_fp32(h)};
}

// ---- Q8_0 ------------------------------------------------------------------

void quantize_q8_0(const float* x, block_q8_0* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += qk_block) {
        float amax = 0.0f;
        for (int j = 0; j < qk_block; ++j) {
            amax = std::max(amax, std::fabs(x[j]));
        }
        const half_scale d = to_half_scale(amax / 127.0f);
        const float id = d.value > 0.0f ? 1.0f / d.value : 0.0f;
        y[b].d = d.bits;
        for (int j = 0; j < qk_block; ++j) {
            y[b].qs[j] = static_cast<int8_t>(round_clamp(x[j] * id, -127, 127));
        }
    }
}

void dequantize_q8_0(const block_q8_0* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < qk_block; ++j) {
            *y++ = d * static_cast<float>(x[b].qs[j]);
        }
    }
}

// ---- Q4_0 / Q4_1 / Q5_0 / Q5_1 ---------------------------------------------

/// The fifth bits of a Q5_0/Q5_1 block as one word: bit j for element j.
uint32_t high_bits(const uint8_t* qh) {
    uint32_t h = 0;
    std::memcpy(&h, qh, sizeof h);
    return h;
}

/// An affine block (Q4_1, Q5_1): the offset m is the block's minimum and
/// the step d splits the range up to its maximum into nmax steps, both
/// rounded to half first so that the levels are chosen for the values the
/// file will hold. Writes the two halves and the 32 levels (0..nmax).
void code_min_max(const float* x, int nmax, uint16_t& d_bits, uint16_t& m_bits, int* levels) {
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < qk_block; ++j) {
        lo = std::min(lo, x[j]); // a NaN compares false and is skipped
        hi = std::max(hi, x[j]);
    }
    if (!(lo <= hi)) { // every value a NaN
        lo = 0.0f;
        hi = 0.0f;
    }
    m_bits = fp32_to_fp16(std::clamp(lo, -max_half, max_half));
    const float m = fp16_to_fp32(m_bits);
    const half_scale d = to_half_scale((hi - m) / static_cast<float>(nmax));
    d_bits = d.bits;
    const float id = d.value > 0.0f ? 1.0f / d.value : 0.0f;
    for (int j = 0; j < qk_block; ++j) {
        levels[j] = round_clamp((x[j] - m) * id, 0, nmax);
    }
}

/// A symmetric block (Q4_0: half = 8, Q5_0: 16), x ~ d * (level - half):
/// the value of largest magnitude becomes level 0 (-half d) exactly, with
/// the sign of d chosen for it; the other side reaches (half - 1) d.
/// Returns d's code and writes the 32 levels (0..2 half - 1).
uint16_t code_symmetric(const float* x, int half, int* levels) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < qk_block; ++j) {
        if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    const half_scale d = to_half_scale(amax / static_cast<float>(half));
    const bool negative = max > 0.0f && d.bits != 0;
    const float id = d.value > 0.0f ? (negative ? -1.0f : 1.0f) / d.value : 0.0f;
    for (int j = 0; j < qk_block; ++j) {
        levels[j] = round_clamp(x[j] * id, -half, half - 1) + half;
    }
    return negative ? static_cast<uint16_t>(d.bits | 0x8000u) : d.bits;
}

/// Packs 32 levels: low four bits as Q4_0's nibbles into qs, fifth bits
/// (when qh is not null) into qh.
void pack_levels(const int* levels, uint8_t* qs, uint8_t* qh) {
    uint32_t h = 0;
    for (int j = 0; j < qk_block / 2; ++j) {
        const int lo = levels[j];
        const int hi = levels[j + qk_block / 2];
        qs[j] = static_cast<uint8_t>((lo & 0xf) | (hi & 0xf) << 4);
        h |= static_cast<uint32_t>(lo >> 4) << j | static_cast<uint32_t>(hi >> 4) << (j + 16);
    }
    if (qh) {
        std::memcpy(qh, &h, sizeof h);
    }
}

void quantize_q4_0(const float* x, block_q4_0* y, int64_t nb) {
    int levels[qk_block];
    for (int64_t b = 0; b < nb; ++b, x += qk_block) {
        y[b].d = code_symmetric(x, 8, levels);
        pack_levels(levels, y[b].qs, nullptr);
    }
}

void dequantize_q4_0(const block_q4_0* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_block) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < qk_block / 2; ++j) {
            y[j] = d * static_cast<float>((x[b].qs[j] & 0xf) - 8);
            y[j + qk_block / 2] = d * static_cast<float>((x[b].qs[j] >> 4) - 8);
        }
    }
}

void quantize_q4_1(const float* x, block_q4_1* y, int64_t nb) {
    int levels[qk_block];
    for (int64_t b = 0; b < nb; ++b, x += qk_block) {
        code_min_max(x, 15, y[b].d, y[b].m, levels);
        pack_levels(levels, y[b].qs, nullptr);
    }
}

void dequantize_q4_1(const block_q4_1* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_block) {
        const float d = fp16_to_fp32(x[b].d);
        const float m = fp16_to_fp32(x[b].m);
        for (int j = 0; j < qk_block / 2; ++j) {
            y[j] = d * static_cast<float>(x[b].qs[j] & 0xf) + m;
            y[j + qk_block / 2] = d * static_cast<float>(x[b].qs[j] >> 4) + m;
        }
    }
}

void quantize_q5_0(const float* x, block_q5_0* y, int64_t nb) {
    int levels[qk_block];
    for (int64_t b = 0; b < nb; ++b, x += qk_block) {
        y[b].d = code_symmetric(x, 16, levels);
        pack_levels(levels, y[b].qs, y[b].qh);
    }
}

void dequantize_q5_0(const block_q5_0* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_block) {
        const float d = fp16_to_fp32(x[b].d);
        const uint32_t h = high_bits(x[b].qh);
        for (int j = 0; j < qk_block / 2; ++j) {
            const int lo = (x[b].qs[j] & 0xf) | static_cast<int>((h >> j) & 1) << 4;
            const int hi = (x[b].qs[j] >> 4) | static_cast<int>((h >> (j + 16)) & 1) << 4;
            y[j] = d * static_cast<float>(lo - 16);
            y[j + qk_block / 2] = d * static_cast<float>(hi - 16);
        }
    }
}

void quantize_q5_1(const float* x, block_q5_1* y, int64_t nb) {
    int levels[qk_block];
    for (int64_t b = 0; b < nb; ++b, x += qk_block) {
        code_min_max(x, 31, y[b].d, y[b].m, levels);
        pack_levels(levels, y[b].qs, y[b].qh);
    }
}

void dequantize_q5_1(const block_q5_1* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_block) {
        const float d = fp16_to_fp32(x[b].d);
        const float m = fp16_to_fp32(x[b].m);
        const uint32_t h = high_bits(x[b].qh);
        for (int j = 0; j < qk_block / 2; ++j) {
            const int lo = (x[b].qs[j] & 0xf) | static_cast<int>((h >> j) & 1) << 4;
            const int hi = (x[b].qs[j] >> 4) | static_cast<int>((h >> (j + 16)) & 1) << 4;
            y[j] = d * static_cast<float>(lo) + m;
            y[j + qk_block / 2] = d * static_cast<float>(hi) + m;
        }
    }
}

// ---- K-quant scale codes ---------------------------------------------------

/// Sub-block s's 6-bit scale and min from the 12 packed bytes.
void unpack_scale_min(const uint8_t* b, int s, int& sc, int& m) {
    if (s < 4) {
        sc = b[s] & 63;
        m = b[s + 4] & 63;
    } else {
        sc = (b[s + 4] & 0xf) | (b[s - 4] >> 6) << 4;
        m = (b[s + 4] >> 4) | (b[s] >> 6) << 4;
    }
}

void pack_scales_mins(const int* sc, const int* m, uint8_t* b) {
    std::memset(b, 0, k_scale_bytes);
    for (int s = 0; s < 4; ++s) {
        b[s] = static_cast<uint8_t>(sc[s] & 63);
        b[s + 4] = static_cast<uint8_t>(m[s] & 63);
    }
    for (int s = 4; s < 8; ++s) {
        b[s + 4] = static_cast<uint8_t>((sc[s] & 0xf) | (m[s] & 0xf) << 4);
        b[s - 4] = static_cast<uint8_t>(b[s - 4] | (sc[s] >> 4) << 6);
        b[s] = static_cast<uint8_t>(b[s] | (m[s] >> 4) << 6);
    }
}

// ---- K-quant sub-block fits -----------------------------------------------

/// Fits x[0..n) ~ a * L + b with integer L in [0, nmax], a >= 0, b <= 0,
/// for the least squared error; returns a and -b (the min).
void fit_affine(const float* x, int n, int nmax, float& scale, float& min) {
    float xmin = 0.0f;
    float xmax = 0.0f;
    for (int i = 0; i < n; ++i) {
        xmin = std::min(xmin, x[i]);
        xmax = std::max(xmax, x[i]);
    }
    if (!(xmax > xmin)) { // all zero, or constant and negative
        scale = 0.0f;
        min = std::isfinite(xmin) ? -xmin : 0.0f;
        return;
    }
    float best_a = (xmax - xmin) / static_cast<float>(nmax);
    float best_b = xmin;
    float best_err = std::numeric_limits<float>::infinity();
    auto try_fit = [&](float a0, float b0) {
        // Levels for (a0, b0), then the least-squares line through them.
        float sl = 0.0f;
        float sll = 0.0f;
        float sx = 0.0f;
        float slx = 0.0f;
        int levels[qk_block];
        for (int i = 0; i < n; ++i) {
            const int l = round_clamp((x[i] - b0) / a0, 0, nmax);
            levels[i] = l;
            const auto lf = static_cast<float>(l);
            sl += lf;
            sll += lf * lf;
            sx += x[i];
            slx += lf * x[i];
        }
        const auto nf = static_cast<float>(n);
        const float det = nf * sll - sl * sl;
        float a = 0.0f;
        float b = 0.0f;
        if (det > 0.0f) {
            a = (nf * slx - sl * sx) / det;
            b = (sll * sx - sl * slx) / det;
        }
        if (!(det > 0.0f) || b > 0.0f) {
            b = 0.0f;
            a = sll > 0.0f ? slx / sll : 0.0f;
        }
        if (!(a > 0.0f)) {
            return;
        }
        float err = 0.0f;
        for (int i = 0; i < n; ++i) {
            const float e = a * static_cast<float>(levels[i]) + b - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_a = a;
            best_b = b;
        }
    };
    const float range = xmax - xmin;
    for (int k = -10; k <= 10; ++k) {
        const float steps = static_cast<float>(nmax) + 0.1f * static_cast<float>(k);
        try_fit(range / steps, xmin);
    }
    for (int iter = 0; iter < 2; ++iter) {
        try_fit(best_a, best_b);
    }
    scale = best_a;
    min = -best_b;
}

/// Fits x[0..n) ~ a * L with integer L in [-nlo, nhi]; returns a (either
/// sign).
float fit_symmetric(const float* x, int n, int nlo, int nhi) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int i = 0; i < n; ++i) {
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    }
    if (!(amax > 0.0f) || !std::isfinite(amax)) {
        return 0.0f;
    }
    float best_a = max / static_cast<float>(-nlo);
    float best_err = std::numeric_limits<float>::infinity();
    auto try_fit = [&](float a0) {
        float sll = 0.0f;
        float slx = 0.0f;
        int levels[qk_block];
        for (int i = 0; i < n; ++i) {
            const int l = round_clamp(x[i] / a0, -nlo, nhi);
            levels[i] = l;
            sll += static_cast<float>(l * l);
            slx += static_cast<float>(l) * x[i];
        }
        if (!(sll > 0.0f)) {
            return;
        }
        const float a = slx / sll;
        float err = 0.0f;
        for (int i = 0; i < n; ++i) {
            const float e = a * static_cast<float>(levels[i]) - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_a = a;
        }
    };
    for (int k = -10; k <= 10; ++k) {
        const float f = 0.1f * static_cast<float>(k);
        try_fit(max / (-static_cast<float>(nlo) + f)); // max near -nlo
        try_fit(max / (static_cast<float>(nhi) + f));  // max near +nhi
    }
    try_fit(best_a);
    return best_a;
}

/// Squared error of x[0..n) coded with step a and offset -m, levels
/// [lo, hi]; the levels go to `out` when it is not null.
float code_error(const float* x, int n, float a, float m, int lo, int hi, int* out) {
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = a != 0.0f ? round_clamp((x[i] + m) / a, lo, hi) : std::max(lo, 0);
        const float e = a * static_cast<float>(l) - m - x[i];
        err += e * e;
        if (out) {
            out[i] = l;
        }
    }
    return err;
}

/// Codes of the 8 sub-blocks of a Q4_K/Q5_K super-block: scale and min
/// codes (0..63), the two halves, and every element's level (0..nmax).
struct affine_codes {
    half_scale d;
    half_scale dmin;
    int sc[8];
    int m[8];
    int levels[qk_super];
};

void code_affine(const float* x, int nmax, affine_codes& c) {
    float scales[8];
    float mins[8];
    float max_scale = 0.0f;
    float max_min = 0.0f;
    for (int s = 0; s < 8; ++s) {
        fit_affine(x + 32 * s, 32, nmax, scales[s], mins[s]);
        max_scale = std::max(max_scale, scales[s]);
        max_min = std::max(max_min, mins[s]);
    }
    c.d = to_half_scale(max_scale / 63.0f);
    c.dmin = to_half_scale(max_min / 63.0f);
    for (int s = 0; s < 8; ++s) {
        const float* xs = x + 32 * s;
        const int sc0 = c.d.value > 0.0f ? round_clamp(scales[s] / c.d.value, 0, 63) : 0;
        const int m0 = c.dmin.value > 0.0f ? round_clamp(mins[s] / c.dmin.value, 0, 63) : 0;
        float best = std::numeric_limits<float>::infinity();
        c.sc[s] = sc0;
        c.m[s] = m0;
        for (int dsc = -1; dsc <= 1; ++dsc) {
            for (int dm = -1; dm <= 1; ++dm) {
                const int sc = sc0 + dsc;
                const int m = m0 + dm;
                if (sc < 0 || sc > 63 || m < 0 || m > 63) {
                    continue;
                }
                const float a = c.d.value * static_cast<float>(sc);
                const float mv = c.dmin.value * static_cast<float>(m);
                const float err = code_error(xs, 32, a, mv, 0, nmax, nullptr);
                if (err < best) {
                    best = err;
                    c.sc[s] = sc;
                    c.m[s] = m;
                }
            }
        }
        const float a = c.d.value * static_cast<float>(c.sc[s]);
        const float mv = c.dmin.value * static_cast<float>(c.m[s]);
        code_error(xs, 32, a, mv, 0, nmax, c.levels + 32 * s);
    }
}

// ---- Q4_K / Q5_K / Q6_K ----------------------------------------------------

void quantize_q4_k(const float* x, block_q4_k* y, int64_t nb) {
    affine_codes c;
    for (int64_t b = 0; b < nb; ++b, x += qk_super) {
        code_affine(x, 15, c);
        y[b].d = c.d.bits;
        y[b].dmin = c.dmin.bits;
        pack_scales_mins(c.sc, c.m, y[b].scales);
        for (int ch = 0; ch < 4; ++ch) {
            for (int l = 0; l < 32; ++l) {
                const int lo = c.levels[64 * ch + l];
                const int hi = c.levels[64 * ch + 32 + l];
                y[b].qs[32 * ch + l] = static_cast<uint8_t>(lo | hi << 4);
            }
        }
    }
}

void dequantize_q4_k(const block_q4_k* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        for (int ch = 0; ch < 4; ++ch) {
            int sc0 = 0;
            int m0 = 0;
            int sc1 = 0;
            int m1 = 0;
            unpack_scale_min(x[b].scales, 2 * ch, sc0, m0);
            unpack_scale_min(x[b].scales, 2 * ch + 1, sc1, m1);
            const float d0 = d * static_cast<float>(sc0);
            const float d1 = d * static_cast<float>(sc1);
            const float mn0 = dmin * static_cast<float>(m0);
            const float mn1 = dmin * static_cast<float>(m1);
            const uint8_t* q = x[b].qs + 32 * ch;
            for (int l = 0; l < 32; ++l) {
                y[l] = d0 * static_cast<float>(q[l] & 0xf) - mn0;
            }
            for (int l = 0; l < 32; ++l) {
                y[32 + l] = d1 * static_cast<float>(q[l] >> 4) - mn1;
            }
            y += 64;
        }
    }
}

void quantize_q5_k(const float* x, block_q5_k* y, int64_t nb) {
    affine_codes c;
    for (int64_t b = 0; b < nb; ++b, x += qk_super) {
        code_affine(x, 31, c);
        y[b].d = c.d.bits;
        y[b].dmin = c.dmin.bits;
        pack_scales_mins(c.sc, c.m, y[b].scales);
        std::memset(y[b].qh, 0, sizeof y[b].qh);
        for (int ch = 0; ch < 4; ++ch) {
            for (int l = 0; l < 32; ++l) {
                const int lo = c.levels[64 * ch + l];
                const int hi = c.levels[64 * ch + 32 + l];
                y[b].qs[32 * ch + l] = static_cast<uint8_t>((lo & 0xf) | (hi & 0xf) << 4);
                y[b].qh[l] = static_cast<uint8_t>(y[b].qh[l] | (lo >> 4) << (2 * ch) |
                                                  (hi >> 4) << (2 * ch + 1));
            }
        }
    }
}

void dequantize_q5_k(const block_q5_k* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        for (int ch = 0; ch < 4; ++ch) {
            int sc0 = 0;
            int m0 = 0;
            int sc1 = 0;
            int m1 = 0;
            unpack_scale_min(x[b].scales, 2 * ch, sc0, m0);
            unpack_scale_min(x[b].scales, 2 * ch + 1, sc1, m1);
            const float d0 = d * static_cast<float>(sc0);
            const float d1 = d * static_cast<float>(sc1);
            const float mn0 = dmin * static_cast<float>(m0);
            const float mn1 = dmin * static_cast<float>(m1);
            const uint8_t* q = x[b].qs + 32 * ch;
            const uint8_t* qh = x[b].qh;
            for (int l = 0; l < 32; ++l) {
                const int v = (q[l] & 0xf) | ((qh[l] >> (2 * ch)) & 1) << 4;
                y[l] = d0 * static_cast<float>(v) - mn0;
            }
            for (int l = 0; l < 32; ++l) {
                const int v = (q[l] >> 4) | ((qh[l] >> (2 * ch + 1)) & 1) << 4;
                y[32 + l] = d1 * static_cast<float>(v) - mn1;
            }
            y += 64;
        }
    }
}

void quantize_q6_k(const float* x, block_q6_k* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += qk_super) {
        float scales[16];
        float amax = 0.0f;
        for (int s = 0; s < 16; ++s) {
            scales[s] = fit_symmetric(x + 16 * s, 16, 32, 31);
            amax = std::max(amax, std::fabs(scales[s]));
        }
        const half_scale d = to_half_scale(amax / 127.0f);
        int levels[qk_super];
        for (int s = 0; s < 16; ++s) {
            const float* xs = x + 16 * s;
            const int sc0 = d.value > 0.0f ? round_clamp(scales[s] / d.value, -128, 127) : 0;
            int best_sc = sc0;
            float best = std::numeric_limits<float>::infinity();
            for (int sc = std::max(-128, sc0 - 1); sc <= std::min(127, sc0 + 1); ++sc) {
                const float a = d.value * static_cast<float>(sc);
                const float err = code_error(xs, 16, a, 0.0f, -32, 31, nullptr);
                if (err < best) {
                    best = err;
                    best_sc = sc;
                }
            }
            y[b].scales[s] = static_cast<int8_t>(best_sc);
            const float a = d.value * static_cast<float>(best_sc);
            code_error(xs, 16, a, 0.0f, -32, 31, levels + 16 * s);
        }
        y[b].d = d.bits;
        std::memset(y[b].qh, 0, sizeof y[b].qh);
        for (int e = 0; e < qk_super; ++e) {
            const int q = levels[e] + 32; // 0..63
            const int h = e / 128;
            const int k = (e % 128) / 32; // which quarter of the half
            const int l = e % 32;
            uint8_t& low = y[b].ql[64 * h + 32 * (k & 1) + l];
            if (k < 2) {
                low = static_cast<uint8_t>((low & 0xf0) | (q & 0xf));
            } else {
                low = static_cast<uint8_t>((low & 0x0f) | (q & 0xf) << 4);
            }
            uint8_t& high = y[b].qh[32 * h + l];
            high = static_cast<uint8_t>(high | (q >> 4) << (2 * k));
        }
    }
}

void dequantize_q6_k(const block_q6_k* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = x[b].ql + 64 * h;
            const uint8_t* qh = x[b].qh + 32 * h;
            const int8_t* sc = x[b].scales + 8 * h;
            for (int l = 0; l < 32; ++l) {
                const int q0 = ((ql[l] & 0xf) | (qh[l] & 3) << 4) - 32;
                const int q1 = ((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q2 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q3 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                const int s = l / 16;
                y[l] = d * static_cast<float>(sc[s] * q0);
                y[l + 32] = d * static_cast<float>(sc[s + 2] * q1);
                y[l + 64] = d * static_cast<float>(sc[s + 4] * q2);
                y[l + 96] = d * static_cast<float>(sc[s + 6] * q3);
            }
            y += 128;
        }
    }
}

#if defined(__x86_64__)
/// Whether the CPU has AMX-TILE and AMX-INT8, the kernel saves the tiles
/// (XCR0's XTILECFG and XTILEDATA) and grants this process their use
/// (Linux asks for it: a thread's first tile instruction is killed with
/// SIGILL otherwise). Asked once; the grant is the whole process's.
bool amx_usable() {
    unsigned a = 0;
    unsigned b = 0;
    unsigned c = 0;
    unsigned d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        return false;
    }
    constexpr unsigned amx_tile = 1u << 24;
    constexpr unsigned amx_int8 = 1u << 25;
    if ((d & (amx_tile | amx_int8)) != (amx_tile | amx_int8)) {
        return false;
    }
    __get_cpuid(1, &a, &b, &c, &d);
    constexpr unsigned osxsave = 1u << 27;
    if ((c & osxsave) == 0) {
        return false;
    }
    uint32_t lo = 0;
    uint32_t hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    constexpr uint32_t xtile = 3u << 17; // XTILECFG, XTILEDATA
    if ((lo & xtile) != xtile) {
        return false;
    }
    constexpr long arch_req_xcomp_perm = 0x1023;
    constexpr long xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
}
#endif

bool has_f16c() {
    static const bool yes = detected_simd() >= simd_level::avx2;
    return yes;
}

} // namespace

simd_level detected_simd() noexcept {
#if defined(__x86_64__)
    __builtin_cpu_init();
    // libgcc checks that the kernel saves the registers too (XCR0).
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
        !__builtin_cpu_supports("f16c")) {
        return simd_level::scalar;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni")) {
        static const bool amx = amx_usable();
        return amx ? simd_level::amx : simd_level::avx512;
    }
    return simd_level::avx2;
#else
    return simd_level::scalar;
#endif
}

simd_level default_simd() noexcept {
    static const simd_level level = [] {
        const simd_level best = detected_simd();
        const char* env = std::getenv("LLMOS_ENGINE_SIMD");
        if (!env) {
            return best;
        }
        for (const simd_level l :
             {simd_level::scalar, simd_level::avx2, simd_level::avx512, simd_level::amx}) {
            if (simd_name(l) == env) {
                return std::min(l, best);
            }
        }
        return best;
    }();
    return level;
}

std::string_view simd_name(simd_level l) noexcept {
    switch (l) {
    case simd_level::scalar:
        return "scalar";
    case simd_level::avx2:
        return "avx2";
    case simd_level::avx512:
        return "avx512";
    case simd_level::amx:
        return "amx";
    }
    return "?";
}

std::string_view quant_status_name(quant_status s) noexcept {
    switch (s) {
    case quant_status::ok:
        return "ok";
    case quant_status::unsupported_type:
        return "unsupported type";
    case quant_status::bad_length:
        return "bad length";
    }
    return "?";
}

void fp16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) noexcept {
    if (has_f16c()) {
        detail::fp16_to_fp32_row_f16c(src, dst, n);
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        dst[i] = fp16_to_fp32(src[i]);
    }
}

void fp32_to_fp16_row(const float* src, uint16_t* dst, int64_t n) noexcept {
    if (has_f16c()) {
        detail::fp32_to_fp16_row_f16c(src, dst, n);
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        dst[i] = fp32_to_fp16(src[i]);
    }
}

void bf16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) noexcept {
    for (int64_t i = 0; i < n; ++i) {
        dst[i] = bf16_to_fp32(src[i]);
    }
}

namespace {

/// Checks t and n; the number of blocks when they are usable.
quant_status check(ggml_type t, int64_t n, int64_t& blocks) {
    const auto i = info(t);
    if (!i || !i->supported) {
        return quant_status::unsupported_type;
    }
    if (n < 0 || n % i->block_elems != 0) {
        return quant_status::bad_length;
    }
    blocks = n / i->block_elems;
    return quant_status::ok;
}

} // namespace

quant_status dequantize_row(ggml_type t, const void* src, float* dst, int64_t n) noexcept {
    int64_t nb = 0;
    if (const quant_status s = check(t, n, nb); s != quant_status::ok) {
        return s;
    }
    switch (t) {
    case ggml_type::f32:
        std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
        break;
    case ggml_type::f16:
        fp16_to_fp32_row(static_cast<const uint16_t*>(src), dst, n);
        break;
    case ggml_type::bf16:
        bf16_to_fp32_row(static_cast<const uint16_t*>(src), dst, n);
        break;
    case ggml_type::q8_0:
        dequantize_q8_0(static_cast<const block_q8_0*>(src), dst, nb);
        break;
    case ggml_type::q4_0:
        dequantize_q4_0(static_cast<const block_q4_0*>(src), dst, nb);
        break;
    case ggml_type::q4_1:
        dequantize_q4_1(static_cast<const block_q4_1*>(src), dst, nb);
        break;
    case ggml_type::q5_0:
        dequantize_q5_0(static_cast<const block_q5_0*>(src), dst, nb);
        break;
    case ggml_type::q5_1:
        dequantize_q5_1(static_cast<const block_q5_1*>(src), dst, nb);
        break;
    case ggml_type::q4_k:
        dequantize_q4_k(static_cast<const block_q4_k*>(src), dst, nb);
        break;
    case ggml_type::q5_k:
        dequantize_q5_k(static_cast<const block_q5_k*>(src), dst, nb);
        break;
    case ggml_type::q6_k:
        dequantize_q6_k(static_cast<const block_q6_k*>(src), dst, nb);
        break;
    default:
        return quant_status::unsupported_type;
    }
    return quant_status::ok;
}

quant_status quantize_row(ggml_type t, const float* src, void* dst, int64_t n) noexcept {
    int64_t nb = 0;
    if (const quant_status s = check(t, n, nb); s != quant_status::ok) {
        return s;
    }
    switch (t) {
    case ggml_type::f32:
        std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
        break;
    case ggml_type::f16:
        fp32_to_fp16_row(src, static_cast<uint16_t*>(dst), n);
        break;
    case ggml_type::bf16:
        for (int64_t i = 0; i < n; ++i) {
            static_cast<uint16_t*>(dst)[i] = fp32_to_bf16(src[i]);
        }
        break;
    case ggml_type::q8_0:
        quantize_q8_0(src, static_cast<block_q8_0*>(dst), nb);
        break;
    case ggml_type::q4_0:
        quantize_q4_0(src, static_cast<block_q4_0*>(dst), nb);
        break;
    case ggml_type::q4_1:
        quantize_q4_1(src, static_cast<block_q4_1*>(dst), nb);
        break;
    case ggml_type::q5_0:
        quantize_q5_0(src, static_cast<block_q5_0*>(dst), nb);
        break;
    case ggml_type::q5_1:
        quantize_q5_1(src, static_cast<block_q5_1*>(dst), nb);
        break;
    case ggml_type::q4_k:
        quantize_q4_k(src, static_cast<block_q4_k*>(dst), nb);
        break;
    case ggml_type::q5_k:
        quantize_q5_k(src, static_cast<block_q5_k*>(dst), nb);
        break;
    case ggml_type::q6_k:
        quantize_q6_k(src, static_cast<block_q6_k*>(dst), nb);
        break;
    default:
        return quant_status::unsupported_type;
    }
    return quant_status::ok;
}

} // namespace llmos::engine
