// SPDX-License-Identifier: MIT
//
// Private to the engine: reading the packed panels (the layout is in
// quant_kernels.hh) into 512-bit vectors, for the AVX-512 kernels
// (quant_avx512.cc) and the AMX ones' unpacking (quant_amx.cc). Every
// function carries its target attribute; callers only reach them after
// detected_simd() said avx512 or better.
#pragma once

#include "quant_kernels.hh"

#include <cstdint>
#include <cstring>

// GCC 12 takes the self-initialized _mm512_undefined_*() inside some
// AVX-512 intrinsics for an uninitialized read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define LLMOS_AVX512                                                                               \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define LLMOS_AVX512_INLINE LLMOS_AVX512 inline __attribute__((always_inline))

namespace llmos::engine::detail {

/// Vectors 2j and 2j + 1 of a group's nibbles at `lv`.
LLMOS_AVX512_INLINE void nibble_pair(const uint8_t* lv, int j, __m512i& a, __m512i& b) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i raw = _mm512_load_si512(lv + 64 * j);
    a = _mm512_and_si512(raw, m4);
    b = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
}

/// Adds bit 4 from the masks at `masks` to vectors 2j, 2j + 1.
LLMOS_AVX512_INLINE void fifth_pair(const uint8_t* masks, int j, __m512i& a, __m512i& b) {
    const __m512i c16 = _mm512_set1_epi8(0x10);
    uint64_t ma = 0;
    uint64_t mb = 0;
    std::memcpy(&ma, masks + 16 * j, sizeof ma);
    std::memcpy(&mb, masks + 16 * j + 8, sizeof mb);
    a = _mm512_mask_add_epi8(a, _cvtu64_mask64(ma), a, c16);
    b = _mm512_mask_add_epi8(b, _cvtu64_mask64(mb), b, c16);
}

/// ORs bits 4 and 5 from the 2-bit plane at `plane` into vectors 2j, 2j + 1.
LLMOS_AVX512_INLINE void high2_pair(const uint8_t* plane, int j, __m512i& a, __m512i& b) {
    const __m512i m30 = _mm512_set1_epi8(0x30);
    const __m512i h = _mm512_load_si512(plane + 64 * (j / 2));
    if (j % 2 == 0) { // vectors 4c and 4c + 1: bits 0-1 and 2-3
        a = _mm512_or_si512(a, _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
        b = _mm512_or_si512(b, _mm512_and_si512(_mm512_slli_epi16(h, 2), m30));
    } else { // vectors 4c + 2 and 4c + 3: bits 4-5 and 6-7
        a = _mm512_or_si512(a, _mm512_and_si512(h, m30));
        b = _mm512_or_si512(b, _mm512_and_si512(_mm512_srli_epi16(h, 2), m30));
    }
}

/// Vectors 2j and 2j + 1 of a 32-element block's levels at `lv`.
template <typename Block>
LLMOS_AVX512_INLINE void levels_pair(const uint8_t* lv, int j, __m512i& a, __m512i& b) {
    using tr = block32_traits<Block>;
    if constexpr (tr::q8) {
        a = _mm512_load_si512(lv + 128 * j);
        b = _mm512_load_si512(lv + 128 * j + 64);
    } else {
        nibble_pair(lv, j, a, b);
        if constexpr (tr::five) {
            fifth_pair(lv + 256, j, a, b);
        }
    }
}

} // namespace llmos::engine::detail
