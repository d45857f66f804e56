// SPDX-License-Identifier: MIT
//
// Private to the engine: AVX-512 vector helpers shared by the kernels
// outside the matmul (attention, activations). Every function carries its
// target attribute; callers only reach them after detected_simd() said
// avx512.
#pragma once

// GCC 12 takes the self-initialized _mm512_undefined_*() inside some
// AVX-512 intrinsics for an uninitialized read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstddef>

#define LLMOS_AVX512_VEC __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")))

namespace llmos::engine::detail {

/// e^x for 16 floats, as context.cc's exp8: x = n ln2 + r, e^r by its
/// Taylor series to r^6, 2^n into the exponent; x clamped to [-87.3, 88.7].
LLMOS_AVX512_VEC inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}

/// g[i] = silu(g[i]) * up[i] (SwiGLU's gate), 16 at a time; the tail
/// masked. The same operations per element as the AVX2 version.
LLMOS_AVX512_VEC inline void silu_mul_avx512(float* g, const float* up, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, up + i)));
    }
}

/// Lane j of the result is op over v[j]'s 16 lanes: pairs of vectors are
/// interleaved and combined (within 128-bit lanes, then across them) until
/// one vector is left, j = 0 .. 15 in order. op combines two vectors lane
/// by lane (add16, max16, or integer ones on the same bits).
template <typename Op>
LLMOS_AVX512_VEC inline __m512 across16(const __m512* v, Op op) {
    __m512 w[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) { // per 128 bits: [a, b, a, b]
        w[i] = op(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                  _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    __m512 u[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) { // per 128 bits: 4i .. 4i + 3
        u[i] = op(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                  _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    }
    __m512 r[2];
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) { // 128-bit quarters combined in pairs
        r[i] = op(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                  _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    }
    return op(_mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

LLMOS_AVX512_VEC inline __m512 add16(__m512 a, __m512 b) {
    return _mm512_add_ps(a, b);
}

LLMOS_AVX512_VEC inline __m512 max16(__m512 a, __m512 b) {
    return _mm512_max_ps(a, b);
}

/// 32-bit integer lanes added, on float vectors' bits.
LLMOS_AVX512_VEC inline __m512 add16_i32(__m512 a, __m512 b) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

} // namespace llmos::engine::detail
