// SPDX-License-Identifier: MIT
//
// Prefill attention on AVX-512 (attention.hh). The queries of a job (a KV
// head's G heads over a run of tokens) go 16 to a vector, transposed once
// ([d][lane], scaled); for each tile of 16 keys, whose K and V rows are
// widened to floats once for all the queries, a group of 16 queries gets
//   S[j] = sum over d of Q[d] * k_j[d]         16 vectors, lanes = queries
//   m'   = max(m, S[j] where key j is visible)  per lane
//   P[j] = e^(S[j] - m') (0 where not visible)
//   l    = l e^(m - m') + sum of P[j]
//   O[d] = O[d] e^(m - m') + sum of P[j] * v_j[d]
// and the output is O / l, transposed back.
//
// One token's attention (decode; further down) keeps the keys in lanes
// instead: scores 16 keys at a time, each key's 16 partial sums over d
// reduced with the others' into one vector of 16 scores.
#include "attention.hh"
#include "vec_avx512.hh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <llmos/engine/quant.hh>

#define LLMOS_AVX512 LLMOS_AVX512_VEC

namespace llmos::engine::detail {

namespace {

constexpr uint32_t lanes = 16;

/// D halves to floats, 16 at a time `step` floats apart.
LLMOS_AVX512 inline void widen(const uint16_t* src, float* dst, uint32_t D, size_t step = lanes) {
    for (uint32_t d = 0; d < D; d += lanes, dst += step) {
        _mm512_store_ps(
            dst, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + d))));
    }
}

/// r[i] lane j <- r[j] lane i: pairs interleaved, then fours, then the
/// 128-bit quarters rearranged twice.
LLMOS_AVX512 inline void transpose16(__m512* r) {
    __m512 t[lanes];
#pragma GCC unroll 8
    for (uint32_t i = 0; i < lanes; i += 2) { // per quarter: r_i[0] r_i+1[0] r_i[1] r_i+1[1]
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    __m512 u[lanes]; // u[4i + j], quarter k: rows 4i .. 4i + 3 of column 4k + j
#pragma GCC unroll 4
    for (uint32_t i = 0; i < lanes; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (uint32_t j = 0; j < 4; ++j) {
        // Quarters 0, 2 (even) and 1, 3 (odd) of u[j], u[4 + j], u[8 + j], u[12 + j].
        const __m512 e0 = _mm512_shuffle_f32x4(u[j], u[4 + j], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 e1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 o0 = _mm512_shuffle_f32x4(u[j], u[4 + j], _MM_SHUFFLE(3, 1, 3, 1));
        const __m512 o1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(3, 1, 3, 1));
        r[j] = _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0));
        r[8 + j] = _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1));
        r[4 + j] = _mm512_shuffle_f32x4(o0, o1, _MM_SHUFFLE(2, 0, 2, 0));
        r[12 + j] = _mm512_shuffle_f32x4(o0, o1, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

struct layout {
    uint32_t groups;
    float* qt;    ///< [group][d][lane]
    float* ot;    ///< [group][d][lane]
    float* kf;    ///< [d / 16][key][d % 16]
    float* vf;    ///< [d / 16][key][d % 16]
    float* mx;    ///< [group][lane]
    float* l;     ///< [group][lane]
    int32_t* pos; ///< [group][lane]: the query's position, -1 past the last
};

layout carve(float* scratch, uint32_t D, uint32_t M) {
    layout s{};
    s.groups = (M + lanes - 1) / lanes;
    const size_t per_group = size_t(D) * lanes;
    s.qt = scratch;
    s.ot = s.qt + s.groups * per_group;
    s.kf = s.ot + s.groups * per_group;
    s.vf = s.kf + size_t(lanes) * D;
    s.mx = s.vf + size_t(lanes) * D;
    s.l = s.mx + s.groups * lanes;
    s.pos = reinterpret_cast<int32_t*>(s.l + s.groups * lanes);
    return s;
}

/// One group of 16 queries against the tile of 16 keys from j0 (nk of them
/// real, widened in kf and vf). kf and vf hold 16 dimensions of the 16
/// keys at a time, [d / 16][key][d % 16], so every broadcast below is at a
/// fixed offset from one pointer per 16 dimensions.
LLMOS_AVX512 void tile(const layout& s, uint32_t g, uint32_t D, uint32_t j0) {
    const float* qt = s.qt + size_t(g) * D * lanes;
    float* ot = s.ot + size_t(g) * D * lanes;
    __m512 acc[lanes];
#pragma GCC unroll 16
    for (uint32_t j = 0; j < lanes; ++j) {
        acc[j] = _mm512_setzero_ps();
    }
    for (uint32_t c = 0; c < D; c += lanes) {
        const float* kc = s.kf + size_t(c) * lanes;
        const float* qc = qt + size_t(c) * lanes;
#pragma GCC unroll 16
        for (uint32_t dd = 0; dd < lanes; ++dd) {
            const __m512 q = _mm512_load_ps(qc + dd * lanes);
#pragma GCC unroll 16
            for (uint32_t j = 0; j < lanes; ++j) {
                acc[j] = _mm512_fmadd_ps(q, _mm512_set1_ps(kc[j * lanes + dd]), acc[j]);
            }
        }
    }
    // Key j0 + j is visible to a query at position p >= j0 + j (a key past
    // the sequence's end sits past every query).
    const __m512i pos = _mm512_load_si512(s.pos + size_t(g) * lanes);
    const __m512 m_old = _mm512_load_ps(s.mx + size_t(g) * lanes);
    __m512 m_new = m_old;
    __mmask16 seen[lanes];
#pragma GCC unroll 16
    for (uint32_t j = 0; j < lanes; ++j) {
        seen[j] = _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32(int32_t(j0 + j)));
        m_new = _mm512_mask_max_ps(m_new, seen[j], m_new, acc[j]);
    }
    // Lanes that have seen nothing yet keep -inf: their alpha is e^(clamped
    // NaN) ~ 0 on sums that are 0.
    const __m512 alpha = exp16(_mm512_sub_ps(m_old, m_new));
    __m512 sum = _mm512_mul_ps(_mm512_load_ps(s.l + size_t(g) * lanes), alpha);
#pragma GCC unroll 16
    for (uint32_t j = 0; j < lanes; ++j) {
        acc[j] = _mm512_maskz_mov_ps(seen[j], exp16(_mm512_sub_ps(acc[j], m_new)));
        sum = _mm512_add_ps(sum, acc[j]);
    }
    _mm512_store_ps(s.l + size_t(g) * lanes, sum);
    _mm512_store_ps(s.mx + size_t(g) * lanes, m_new);
    // Four dimensions at a time: four independent chains of 16 FMAs keep
    // the FMA units busy where one chain would wait on each FMA's latency.
    constexpr uint32_t chains = 4;
    for (uint32_t c = 0; c < D; c += lanes) {
        const float* vc = s.vf + size_t(c) * lanes;
        float* oc = ot + size_t(c) * lanes;
#pragma GCC unroll 4
        for (uint32_t dd = 0; dd < lanes; dd += chains) {
            __m512 o[chains];
#pragma GCC unroll 4
            for (uint32_t i = 0; i < chains; ++i) {
                o[i] = _mm512_mul_ps(_mm512_load_ps(oc + (dd + i) * lanes), alpha);
            }
#pragma GCC unroll 16
            for (uint32_t j = 0; j < lanes; ++j) {
#pragma GCC unroll 4
                for (uint32_t i = 0; i < chains; ++i) {
                    o[i] = _mm512_fmadd_ps(acc[j], _mm512_set1_ps(vc[j * lanes + dd + i]), o[i]);
                }
            }
#pragma GCC unroll 4
            for (uint32_t i = 0; i < chains; ++i) {
                _mm512_store_ps(oc + (dd + i) * lanes, o[i]);
            }
        }
    }
}

} // namespace

size_t prefill_attn_scratch_floats(uint32_t D, uint32_t M) noexcept {
    const size_t groups = (M + lanes - 1) / lanes;
    return 2 * groups * D * lanes + 2 * size_t(lanes) * D + 3 * groups * lanes;
}

LLMOS_AVX512 void prefill_attend_avx512(const prefill_attn_args& a) noexcept {
    const uint32_t D = a.D;
    const uint32_t G = a.G;
    const uint32_t M = a.T * G;
    const layout s = carve(a.scratch, D, M);
    // Query m is token m / G's head m % G; a group's 16 queries are
    // transposed 16 dimensions at a time.
    const __m512 scale = _mm512_set1_ps(a.scale);
    for (uint32_t g = 0; g < s.groups; ++g) {
        float* qt = s.qt + size_t(g) * D * lanes;
        const float* q[lanes];
        for (uint32_t lane = 0; lane < lanes; ++lane) {
            const uint32_t m = g * lanes + lane;
            q[lane] = m < M ? a.q + (m / G) * a.q_stride + size_t(m % G) * D : nullptr;
            s.pos[size_t(g) * lanes + lane] = m < M ? int32_t(a.pos0 + m / G) : -1;
        }
        for (uint32_t c = 0; c < D; c += lanes) {
            __m512 r[lanes];
#pragma GCC unroll 16
            for (uint32_t lane = 0; lane < lanes; ++lane) {
                r[lane] = q[lane] ? _mm512_mul_ps(_mm512_loadu_ps(q[lane] + c), scale)
                                  : _mm512_setzero_ps();
            }
            transpose16(r);
#pragma GCC unroll 16
            for (uint32_t dd = 0; dd < lanes; ++dd) {
                _mm512_store_ps(qt + size_t(c + dd) * lanes, r[dd]);
            }
        }
        std::fill_n(s.ot + size_t(g) * D * lanes, size_t(D) * lanes, 0.0f);
        std::fill_n(s.mx + size_t(g) * lanes, lanes, -INFINITY);
        std::fill_n(s.l + size_t(g) * lanes, lanes, 0.0f);
    }
    const uint32_t n_keys = a.pos0 + a.T;
    const uint32_t bt = a.kv->block_tokens();
    const uint16_t* k = nullptr;
    const uint16_t* v = nullptr;
    for (uint32_t j0 = 0; j0 < n_keys; j0 += lanes) {
        const uint32_t nk = std::min(lanes, n_keys - j0);
        for (uint32_t j = 0; j < lanes; ++j) {
            if (j < nk) {
                // A block's rows lie head_dim apart: look the block up once.
                if (j == 0 || (j0 + j) % bt == 0) {
                    k = static_cast<const uint16_t*>(a.kv->k_row(a.layer, j0 + j, a.head));
                    v = static_cast<const uint16_t*>(a.kv->v_row(a.layer, j0 + j, a.head));
                } else {
                    k += D;
                    v += D;
                }
                widen(k, s.kf + size_t(j) * lanes, D, size_t(lanes) * lanes);
                widen(v, s.vf + size_t(j) * lanes, D, size_t(lanes) * lanes);
            } else { // never visible, but 0 * (stale bits) could be a NaN
                for (uint32_t c = 0; c < D; c += lanes) {
                    std::fill_n(s.kf + size_t(c) * lanes + size_t(j) * lanes, lanes, 0.0f);
                    std::fill_n(s.vf + size_t(c) * lanes + size_t(j) * lanes, lanes, 0.0f);
                }
            }
        }
        for (uint32_t g = 0; g < s.groups; ++g) {
            const uint32_t last_m = std::min(M, (g + 1) * lanes) - 1;
            if (a.pos0 + last_m / G < j0) {
                continue; // no query of this group sees these keys
            }
            tile(s, g, D, j0);
        }
    }
    // O / l, transposed back 16 dimensions at a time.
    for (uint32_t g = 0; g < s.groups; ++g) {
        const float* ot = s.ot + size_t(g) * D * lanes;
        const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_load_ps(s.l + g * lanes));
        const uint32_t n = std::min(lanes, M - g * lanes);
        for (uint32_t c = 0; c < D; c += lanes) {
            __m512 r[lanes];
#pragma GCC unroll 16
            for (uint32_t dd = 0; dd < lanes; ++dd) {
                r[dd] = _mm512_mul_ps(_mm512_load_ps(ot + size_t(c + dd) * lanes), inv);
            }
            transpose16(r);
            for (uint32_t lane = 0; lane < n; ++lane) {
                const uint32_t m = g * lanes + lane;
                _mm512_storeu_ps(a.out + (m / G) * a.out_stride + size_t(m % G) * D + c, r[lane]);
            }
        }
    }
}

// ---- one token -------------------------------------------------------------

namespace {

constexpr uint32_t max_one_token_D = 256;

/// The G heads' scores against every position: tiles of 16 keys (never
/// across a block, whose rows are the only ones sure to be contiguous),
/// widened once.
template <int G>
LLMOS_AVX512 void one_token_scores(const one_token_attn_args& a) {
    const uint32_t bt = a.kv->block_tokens();
    const uint32_t D = a.D;
    alignas(64) float kf[lanes * max_one_token_D];
    const __m512 scale = _mm512_set1_ps(a.scale);
    for (uint32_t j0 = 0; j0 < a.n; j0 += bt) {
        const auto* rows = static_cast<const uint16_t*>(a.kv->k_row(a.layer, j0, a.head));
        const uint32_t m = std::min(bt, a.n - j0);
        for (uint32_t s0 = 0; s0 < m; s0 += lanes) {
            const uint32_t nk = std::min(lanes, m - s0);
            for (uint32_t s = 0; s < nk; ++s) {
                widen(rows + size_t(s0 + s) * D, kf + size_t(s) * D, D);
            }
            if (nk < lanes) { // lanes stored masked off, but keep them finite
                std::fill(kf + size_t(nk) * D, kf + size_t(lanes) * D, 0.0f);
            }
            const __mmask16 keep = _cvtu32_mask16((1u << nk) - 1);
#pragma GCC unroll 1
            for (int h = 0; h < G; ++h) {
                const float* q = a.q + size_t(h) * D;
                __m512 acc[lanes];
#pragma GCC unroll 16
                for (uint32_t s = 0; s < lanes; ++s) {
                    acc[s] = _mm512_setzero_ps();
                }
                for (uint32_t d = 0; d < D; d += lanes) {
                    const __m512 qv = _mm512_loadu_ps(q + d);
#pragma GCC unroll 16
                    for (uint32_t s = 0; s < lanes; ++s) {
                        acc[s] =
                            _mm512_fmadd_ps(qv, _mm512_load_ps(kf + size_t(s) * D + d), acc[s]);
                    }
                }
                _mm512_mask_storeu_ps(a.scores + size_t(h) * a.stride + j0 + s0, keep,
                                      _mm512_mul_ps(across16(acc, add16), scale));
            }
        }
    }
}

/// e^(s - max) over a row of n scores, in place; returns 1 / their sum.
LLMOS_AVX512 float exp_row(float* sc, uint32_t n) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    uint32_t j = 0;
    for (; j + lanes <= n; j += lanes) {
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(sc + j));
    }
    const __mmask16 tail = _cvtu32_mask16((1u << (n - j)) - 1);
    mv = _mm512_mask_max_ps(mv, tail, mv, _mm512_maskz_loadu_ps(tail, sc + j));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j + lanes <= n; j += lanes) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(sc + j), mx));
        _mm512_storeu_ps(sc + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    const __m512 e =
        _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, sc + j), mx)));
    _mm512_mask_storeu_ps(sc + j, tail, e);
    sum = _mm512_add_ps(sum, e);
    return static_cast<float>(1.0 / double(_mm512_reduce_add_ps(sum)));
}

/// out[h] = inv[h] * sum over positions of e[h][j] * v_j, NC vectors of
/// each head's output in registers at a time; each V row widened once.
template <int G, int NC>
LLMOS_AVX512 void one_token_values(const one_token_attn_args& a, const float* inv) {
    const uint32_t bt = a.kv->block_tokens();
    for (uint32_t dc = 0; dc < a.D; dc += lanes * NC) {
        __m512 acc[G][NC];
#pragma GCC unroll 8
        for (int h = 0; h < G; ++h) {
#pragma GCC unroll 4
            for (int c = 0; c < NC; ++c) {
                acc[h][c] = _mm512_setzero_ps();
            }
        }
        for (uint32_t j0 = 0; j0 < a.n; j0 += bt) {
            const auto* rows = static_cast<const uint16_t*>(a.kv->v_row(a.layer, j0, a.head)) + dc;
            const uint32_t m = std::min(bt, a.n - j0);
            for (uint32_t s = 0; s < m; ++s) {
                const uint16_t* v = rows + size_t(s) * a.D;
                __m512 vf[NC];
#pragma GCC unroll 4
                for (int c = 0; c < NC; ++c) {
                    vf[c] = _mm512_cvtph_ps(
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + lanes * c)));
                }
#pragma GCC unroll 8
                for (int h = 0; h < G; ++h) {
                    const __m512 w = _mm512_set1_ps(a.scores[size_t(h) * a.stride + j0 + s]);
#pragma GCC unroll 4
                    for (int c = 0; c < NC; ++c) {
                        acc[h][c] = _mm512_fmadd_ps(w, vf[c], acc[h][c]);
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int h = 0; h < G; ++h) {
            const __m512 iv = _mm512_set1_ps(inv[h]);
#pragma GCC unroll 4
            for (int c = 0; c < NC; ++c) {
                _mm512_storeu_ps(a.out + size_t(h) * a.D + dc + lanes * c,
                                 _mm512_mul_ps(acc[h][c], iv));
            }
        }
    }
}

template <int G>
LLMOS_AVX512 void one_token_attend(const one_token_attn_args& a) {
    one_token_scores<G>(a);
    float inv[G];
    for (int h = 0; h < G; ++h) {
        inv[h] = exp_row(a.scores + size_t(h) * a.stride, a.n);
    }
    // As many vectors per pass as the registers hold for G heads.
    constexpr int nc = (G + 1) * 4 <= 28 ? 4 : 2;
    if (a.D % (lanes * nc) == 0) {
        one_token_values<G, nc>(a, inv);
    } else {
        one_token_values<G, 1>(a, inv);
    }
}

} // namespace

one_token_attend_fn one_token_attend_avx512(uint32_t G, uint32_t D) noexcept {
    if (D % lanes != 0 || D > max_one_token_D) {
        return nullptr;
    }
    switch (G) {
    case 1:
        return one_token_attend<1>;
    case 2:
        return one_token_attend<2>;
    case 3:
        return one_token_attend<3>;
    case 4:
        return one_token_attend<4>;
    case 5:
        return one_token_attend<5>;
    case 6:
        return one_token_attend<6>;
    case 7:
        return one_token_attend<7>;
    case 8:
        return one_token_attend<8>;
    default:
        return nullptr;
    }
}

} // namespace llmos::engine::detail
