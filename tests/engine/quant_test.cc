// SPDX-License-Identifier: MIT
//
// Weight types: half floats and bfloat16 exhaustively against values
// worked out from their definitions; each block format against blocks
// built byte by byte from the GGUF layout (the expected values come from
// the chosen fields, never from the dequantizer); quantize -> dequantize error on normal data
// and on edge cases; status codes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <gtest/gtest.h>
#include <llmos/engine/quant.hh>
#include <random>
#include <vector>

namespace {

using namespace llmos::engine;

// ---- half floats -----------------------------------------------------------

/// The value of half `h` from the definition: (-1)^s 2^(e-15) 1.m, or
/// 2^-14 0.m for e = 0.
double half_value(uint16_t h) {
    const int s = h >> 15;
    const int e = (h >> 10) & 31;
    const int m = h & 1023;
    double v = 0;
    if (e == 31) {
        v = m == 0 ? INFINITY : NAN;
    } else if (e == 0) {
        v = std::ldexp(static_cast<double>(m), -24);
    } else {
        v = std::ldexp(static_cast<double>(1024 + m), e - 25);
    }
    return s ? -v : v;
}

uint32_t bits(float f) {
    uint32_t u = 0;
    std::memcpy(&u, &f, 4);
    return u;
}

float from_bits(uint32_t u) {
    float f = 0;
    std::memcpy(&f, &u, 4);
    return f;
}

TEST(fp16, every_half_converts_to_its_value) {
    std::vector<uint16_t> all(65536);
    for (uint32_t h = 0; h < 65536; ++h) {
        all[h] = static_cast<uint16_t>(h);
    }
    std::vector<float> row(65536);
    fp16_to_fp32_row(all.data(), row.data(), 65536);
    for (uint32_t h = 0; h < 65536; ++h) {
        const double want = half_value(static_cast<uint16_t>(h));
        const float got = fp16_to_fp32(static_cast<uint16_t>(h));
        if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(got)) << h;
            // Quiet, same payload, same sign.
            ASSERT_EQ(bits(got), (h & 0x8000u) << 16 | 0x7fc00000u | (h & 0x3ffu) << 13) << h;
        } else {
            ASSERT_EQ(static_cast<double>(got), want) << h;
            ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << h;
        }
        // The row version (F16C where present) agrees to the bit.
        ASSERT_EQ(bits(row[h]), bits(got)) << h;
    }
}

TEST(fp16, every_half_survives_a_round_trip) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t back = fp32_to_fp16(fp16_to_fp32(static_cast<uint16_t>(h)));
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
            ASSERT_EQ(back, h | 0x200) << h; // NaNs come back quiet
        } else {
            ASSERT_EQ(back, h) << h;
        }
    }
}

/// fp32_to_fp16 and the row version on one input.
uint16_t both_ways(float f) {
    uint16_t row = 0;
    fp32_to_fp16_row(&f, &row, 1);
    const uint16_t one = fp32_to_fp16(f);
    EXPECT_EQ(one, row) << f;
    return one;
}

TEST(fp16, rounds_to_nearest_with_ties_to_even) {
    // Between every two neighbouring finite halves (and the largest and
    // infinity): the midpoint goes to the even one, a hair off it to the
    // nearer one.
    for (uint32_t h = 0; h < 0x7c00; ++h) {
        const double lo = half_value(static_cast<uint16_t>(h));
        const double hi = h + 1 == 0x7c00 ? 65536.0 : half_value(static_cast<uint16_t>(h + 1));
        const auto mid = static_cast<float>((lo + hi) / 2); // exact: 12 bits
        ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
        const uint32_t even = (h & 1) == 0 ? h : h + 1;
        for (const uint32_t sign : {0u, 0x8000u}) {
            const float s = sign ? -1.0f : 1.0f;
            ASSERT_EQ(both_ways(s * mid), even | sign) << h;
            ASSERT_EQ(both_ways(s * std::nextafter(mid, 0.0f)), h | sign) << h;
            ASSERT_EQ(both_ways(s * std::nextafter(mid, INFINITY)), (h + 1) | sign) << h;
        }
    }
    EXPECT_EQ(both_ways(65519.99f), 0x7bff);
    EXPECT_EQ(both_ways(65520.0f), 0x7c00);
    EXPECT_EQ(both_ways(1e30f), 0x7c00);
    EXPECT_EQ(both_ways(-INFINITY), 0xfc00);
    EXPECT_EQ(both_ways(0x1p-25f), 0x0000); // half the smallest subnormal: tie, to 0
    EXPECT_EQ(both_ways(-0x1p-40f), 0x8000);
    EXPECT_EQ(both_ways(from_bits(0x00000001)), 0x0000); // float subnormal
    const uint16_t nan = both_ways(from_bits(0x7f812345));
    EXPECT_EQ(nan & 0x7e00, 0x7e00); // quiet NaN
}

TEST(fp16, scalar_and_row_conversion_agree_on_random_floats) {
    std::mt19937 rng(7);
    std::vector<float> in(1 << 16);
    for (auto& f : in) {
        f = from_bits(static_cast<uint32_t>(rng()));
    }
    std::vector<uint16_t> row(in.size());
    fp32_to_fp16_row(in.data(), row.data(), static_cast<int64_t>(in.size()));
    for (size_t i = 0; i < in.size(); ++i) {
        ASSERT_EQ(row[i], fp32_to_fp16(in[i])) << bits(in[i]);
    }
}

// ---- bfloat16 ---------------------------------------------------------------

/// The value of bfloat16 `b` from the definition: (-1)^s 2^(e-127) 1.m, or
/// 2^-126 0.m for e = 0 (7 bits of m).
double bf16_value(uint16_t b) {
    const int s = b >> 15;
    const int e = (b >> 7) & 255;
    const int m = b & 127;
    double v = 0;
    if (e == 255) {
        v = m == 0 ? INFINITY : NAN;
    } else if (e == 0) {
        v = std::ldexp(static_cast<double>(m), -133);
    } else {
        v = std::ldexp(static_cast<double>(128 + m), e - 134);
    }
    return s ? -v : v;
}

TEST(bf16, every_bfloat16_converts_to_its_value) {
    std::vector<uint16_t> all(65536);
    for (uint32_t b = 0; b < 65536; ++b) {
        all[b] = static_cast<uint16_t>(b);
    }
    std::vector<float> row(65536);
    bf16_to_fp32_row(all.data(), row.data(), 65536);
    std::vector<float> dq(65536);
    ASSERT_EQ(dequantize_row(ggml_type::bf16, all.data(), dq.data(), 65536), quant_status::ok);
    for (uint32_t b = 0; b < 65536; ++b) {
        const double want = bf16_value(static_cast<uint16_t>(b));
        const float got = bf16_to_fp32(static_cast<uint16_t>(b));
        if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(got)) << b;
        } else {
            ASSERT_EQ(static_cast<double>(got), want) << b;
        }
        // Every one is the upper half of its float, NaN payloads included.
        ASSERT_EQ(bits(got), b << 16) << b;
        ASSERT_EQ(bits(row[b]), bits(got)) << b;
        ASSERT_EQ(bits(dq[b]), bits(got)) << b;
    }
}

TEST(bf16, every_bfloat16_survives_a_round_trip) {
    for (uint32_t b = 0; b < 65536; ++b) {
        const uint16_t back = fp32_to_bf16(bf16_to_fp32(static_cast<uint16_t>(b)));
        if ((b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0) {
            ASSERT_EQ(back, b | 0x40) << b; // NaNs come back quiet
        } else {
            ASSERT_EQ(back, b) << b;
        }
    }
}

/// fp32_to_bf16 and quantize_row on one input.
uint16_t bf16_both_ways(float f) {
    uint16_t row = 0;
    EXPECT_EQ(quantize_row(ggml_type::bf16, &f, &row, 1), quant_status::ok);
    const uint16_t one = fp32_to_bf16(f);
    EXPECT_EQ(one, row) << f;
    return one;
}

TEST(bf16, rounds_to_nearest_with_ties_to_even) {
    // As for halves: between every two neighbouring finite bfloat16
    // numbers (and the largest and infinity), the midpoint goes to the
    // even one, a hair off it to the nearer one.
    for (uint32_t b = 0; b < 0x7f80; ++b) {
        const double lo = bf16_value(static_cast<uint16_t>(b));
        const double hi = b + 1 == 0x7f80 ? 0x1p128 : bf16_value(static_cast<uint16_t>(b + 1));
        const auto mid = static_cast<float>((lo + hi) / 2); // exact: 9 bits
        ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << b;
        const uint32_t even = (b & 1) == 0 ? b : b + 1;
        for (const uint32_t sign : {0u, 0x8000u}) {
            const float s = sign ? -1.0f : 1.0f;
            ASSERT_EQ(bf16_both_ways(s * mid), even | sign) << b;
            ASSERT_EQ(bf16_both_ways(s * std::nextafter(mid, 0.0f)), b | sign) << b;
            ASSERT_EQ(bf16_both_ways(s * std::nextafter(mid, INFINITY)), (b + 1) | sign) << b;
        }
    }
    EXPECT_EQ(bf16_both_ways(3.4028235e38f), 0x7f80); // FLT_MAX: past the midpoint
    EXPECT_EQ(bf16_both_ways(-INFINITY), 0xff80);
    EXPECT_EQ(bf16_both_ways(1.0f), 0x3f80);
    EXPECT_EQ(bf16_both_ways(-0.0f), 0x8000);
    EXPECT_EQ(bf16_both_ways(from_bits(0x00000001)), 0x0000); // far below the last place
    for (const uint32_t nan : {0x7f812345u, 0xffc00001u, 0x7f800001u}) {
        const uint16_t b = bf16_both_ways(from_bits(nan));
        EXPECT_EQ(b & 0x7fc0, 0x7fc0) << std::hex << nan; // quiet NaN
        EXPECT_EQ(b & 0x8000, (nan >> 16) & 0x8000) << std::hex << nan;
    }
}

// ---- known bytes -----------------------------------------------------------

void put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
    b[at] = static_cast<uint8_t>(v & 0xff); // little-endian, as GGUF
    b[at + 1] = static_cast<uint8_t>(v >> 8);
}

std::vector<float> dequant(ggml_type t, const std::vector<uint8_t>& bytes, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n), -12345.0f);
    EXPECT_EQ(dequantize_row(t, bytes.data(), out.data(), n), quant_status::ok);
    return out;
}

TEST(known_bytes, q8_0) {
    // Two blocks: d = 0.5 (0x3800) and -0.25 (0xb400), qs[j] = j - 16 and
    // 3 * j - 50.
    std::vector<uint8_t> b(68);
    put16(b, 0, 0x3800);
    put16(b, 34, 0xb400);
    for (int j = 0; j < 32; ++j) {
        b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
        b[36 + j] = static_cast<uint8_t>(static_cast<int8_t>(3 * j - 50));
    }
    const auto y = dequant(ggml_type::q8_0, b, 64);
    for (int j = 0; j < 32; ++j) {
        EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 16)) << j;
        EXPECT_EQ(y[32 + j], -0.25f * static_cast<float>(3 * j - 50)) << j;
    }
}

TEST(known_bytes, q4_0) {
    // d = -2 (0xc000); byte 2 + j holds element j (low nibble) and element
    // j + 16 (high nibble); value = (q - 8) * d.
    std::vector<uint8_t> b(18);
    put16(b, 0, 0xc000);
    int q[32];
    for (int j = 0; j < 32; ++j) {
        q[j] = (5 * j + 3) % 16;
    }
    for (int j = 0; j < 16; ++j) {
        b[2 + j] = static_cast<uint8_t>(q[j] | q[j + 16] << 4);
    }
    const auto y = dequant(ggml_type::q4_0, b, 32);
    for (int j = 0; j < 32; ++j) {
        EXPECT_EQ(y[j], -2.0f * static_cast<float>(q[j] - 8)) << j;
    }
    // Spelled out: byte 2 = 0x?3 (q0 = 3), its high nibble q16 = (80 + 3) % 16 = 3.
    EXPECT_EQ(b[2], 0x33);
    EXPECT_EQ(y[0], 10.0f);
    EXPECT_EQ(y[16], 10.0f);
    EXPECT_EQ(y[1], -2.0f * 0); // q1 = 8
}

TEST(known_bytes, q4_1) {
    // d = 0.25 (0x3400), m = -1.5 (0xbe00), then qs[16] at byte 4: byte
    // 4 + j holds element j (low nibble) and j + 16 (high); x = q * d + m.
    std::vector<uint8_t> b(20);
    put16(b, 0, 0x3400);
    put16(b, 2, 0xbe00);
    int q[32];
    for (int j = 0; j < 32; ++j) {
        q[j] = (5 * j + 3) % 16;
    }
    for (int j = 0; j < 16; ++j) {
        b[4 + j] = static_cast<uint8_t>(q[j] | q[j + 16] << 4);
    }
    const auto y = dequant(ggml_type::q4_1, b, 32);
    for (int j = 0; j < 32; ++j) {
        EXPECT_EQ(y[j], 0.25f * static_cast<float>(q[j]) - 1.5f) << j;
    }
    // Spelled out: q1 = 8 and q17 = 88 % 16 = 8: byte 5 = 0x88.
    EXPECT_EQ(b[5], 0x88);
    EXPECT_EQ(y[1], 0.5f);
    EXPECT_EQ(y[17], 0.5f);
    EXPECT_EQ(y[3], 0.25f * 2 - 1.5f); // q3 = 18 % 16
}

/// The fifth bit of element j (0..31) of a Q5_0/Q5_1 block: bit j of the
/// four qh bytes read as a little-endian 32-bit word, i.e. bit j % 8 of
/// byte j / 8.
void set_fifth_bit(std::vector<uint8_t>& b, size_t qh_at, int j) {
    b[qh_at + static_cast<size_t>(j / 8)] |= static_cast<uint8_t>(1u << (j % 8));
}

TEST(known_bytes, q5_0) {
    // d = 0.5 (0x3800), qh[4] at byte 2, qs[16] at byte 6 (nibbles as in
    // Q4_0); q = nibble + 16 * fifth bit, x = (q - 16) * d.
    std::vector<uint8_t> b(22);
    put16(b, 0, 0x3800);
    int q[32];
    for (int j = 0; j < 32; ++j) {
        q[j] = (7 * j + 5) % 32;
        if (q[j] >= 16) {
            set_fifth_bit(b, 2, j);
        }
    }
    for (int j = 0; j < 16; ++j) {
        b[6 + j] = static_cast<uint8_t>((q[j] & 15) | (q[j + 16] & 15) << 4);
    }
    const auto y = dequant(ggml_type::q5_0, b, 32);
    for (int j = 0; j < 32; ++j) {
        EXPECT_EQ(y[j], 0.5f * static_cast<float>(q[j] - 16)) << j;
    }
    // Spelled out: q0 = 5 (no fifth bit); q17 = 124 % 32 = 28: bit 17 of the
    // word is bit 1 of qh[2], and the high nibble of byte 6 + 1 is 12.
    EXPECT_EQ(q[17], 28);
    EXPECT_EQ(b[2] & 1, 0);
    EXPECT_EQ(b[4] & 0x02, 0x02);
    EXPECT_EQ(b[7] >> 4, 12);
    EXPECT_EQ(y[0], -5.5f);
    EXPECT_EQ(y[17], 6.0f);
    // Every qh bit set and every nibble 15: all 31, x = 15 d.
    std::vector<uint8_t> full(22, 0xff);
    put16(full, 0, 0x3800);
    for (const float v : dequant(ggml_type::q5_0, full, 32)) {
        EXPECT_EQ(v, 7.5f);
    }
}

TEST(known_bytes, q5_1) {
    // d = 2 (0x4000), m = 0.5 (0x3800), qh[4] at byte 4, qs[16] at byte 8;
    // x = q * d + m.
    std::vector<uint8_t> b(48);
    for (int blk = 0; blk < 2; ++blk) {
        put16(b, 24 * blk, blk == 0 ? 0x4000 : 0xc000); // block 1: d = -2
        put16(b, 24 * blk + 2, 0x3800);
    }
    int q[64];
    for (int e = 0; e < 64; ++e) {
        q[e] = (11 * e + 7) % 32;
        if (q[e] >= 16) {
            set_fifth_bit(b, 24 * (e / 32) + 4, e % 32);
        }
    }
    for (int blk = 0; blk < 2; ++blk) {
        for (int j = 0; j < 16; ++j) {
            const int* qb = q + 32 * blk;
            b[24 * blk + 8 + j] = static_cast<uint8_t>((qb[j] & 15) | (qb[j + 16] & 15) << 4);
        }
    }
    const auto y = dequant(ggml_type::q5_1, b, 64);
    for (int e = 0; e < 64; ++e) {
        const float d = e < 32 ? 2.0f : -2.0f;
        EXPECT_EQ(y[e], d * static_cast<float>(q[e]) + 0.5f) << e;
    }
    // Spelled out: element 31 of block 0: q = 348 % 32 = 28, bit 7 of qh[3];
    // element 8 of block 1 (e = 40): q = 447 % 32 = 31, bit 0 of qh[1].
    EXPECT_EQ(b[7] & 0x80, 0x80);
    EXPECT_EQ(y[31], 56.5f);
    EXPECT_EQ(b[24 + 5] & 0x01, 0x01);
    EXPECT_EQ(y[40], -61.5f);
}

/// Packs 8 six-bit scales and mins into the 12 bytes as GGUF does: bytes
/// 0-3 low six bits of sc0-3 (top two bits: sc4-7 >> 4), bytes 4-7 the
/// same for m0-3 (top two: m4-7 >> 4), bytes 8-11 sc4-7 low nibble | m4-7
/// low nibble << 4.
std::vector<uint8_t> k_scales(const int* sc, const int* m) {
    std::vector<uint8_t> b(12, 0);
    for (int i = 0; i < 4; ++i) {
        b[i] = static_cast<uint8_t>(sc[i] | (sc[i + 4] >> 4) << 6);
        b[i + 4] = static_cast<uint8_t>(m[i] | (m[i + 4] >> 4) << 6);
        b[i + 8] = static_cast<uint8_t>((sc[i + 4] & 15) | (m[i + 4] & 15) << 4);
    }
    return b;
}

TEST(known_bytes, k_scale_packing_by_hand) {
    // sc = 1..8 plus high bits on 4-7, m = 9..16 plus high bits: worked
    // out by hand from the layout.
    const int sc[8] = {1, 2, 3, 4, 5 + 16, 6 + 32, 7 + 48, 8};
    const int m[8] = {9, 10, 11, 12, 13 + 48, 14, 15 + 32, 16 + 16};
    const auto b = k_scales(sc, m);
    const std::vector<uint8_t> want = {
        0x41, 0x82, 0xc3, 0x04, // sc0-3, sc4-7 high bits
        0xc9, 0x0a, 0x8b, 0x8c, // m0-3, m4-7 high bits (16+16=32: 2)
        0xd5, 0xe6, 0xf7, 0x08, // sc4-7 | m4-7 low nibbles
    };
    EXPECT_EQ(b, want);
}

struct k_case {
    float d;
    uint16_t d_bits;
    float dmin;
    uint16_t dmin_bits;
    int sc[8];
    int m[8];
};

const k_case k_params = {
    1.0f, 0x3c00, 0.5f, 0x3800, {1, 2, 3, 63, 17, 33, 48, 62}, {0, 5, 63, 7, 20, 40, 9, 61}};

TEST(known_bytes, q4_k) {
    // Layout: d, dmin (2 + 2 bytes), 12 scale bytes, qs[128]: chunk c (64
    // elements) is bytes 16 + 32c .. +32, low nibbles elements 64c + l,
    // high nibbles 64c + 32 + l. x = d * sc[e / 32] * q - dmin * m[e / 32].
    const k_case& k = k_params;
    std::vector<uint8_t> b(144, 0);
    put16(b, 0, k.d_bits);
    put16(b, 2, k.dmin_bits);
    const auto s = k_scales(k.sc, k.m);
    std::copy(s.begin(), s.end(), b.begin() + 4);
    int q[256];
    for (int e = 0; e < 256; ++e) {
        q[e] = (7 * e + 3) % 16;
        const int c = e / 64;
        const int l = e % 32;
        const bool high = e % 64 >= 32;
        b[16 + 32 * c + l] |= static_cast<uint8_t>(high ? q[e] << 4 : q[e]);
    }
    const auto y = dequant(ggml_type::q4_k, b, 256);
    for (int e = 0; e < 256; ++e) {
        const int sub = e / 32;
        const float want =
            k.d * static_cast<float>(k.sc[sub] * q[e]) - k.dmin * static_cast<float>(k.m[sub]);
        EXPECT_EQ(y[e], want) << e;
    }
    // Spelled out: byte 16 = q0 | q32 << 4 = 3 | 3 << 4 (7*32+3 = 227 = 14*16+3).
    EXPECT_EQ(b[16], 0x33);
    EXPECT_EQ(y[0], 1.0f * 1 * 3 - 0.5f * 0);
    EXPECT_EQ(y[32], 1.0f * 2 * 3 - 0.5f * 5);
    // Element 255: sub-block 7 (sc 62, m 61), q = (7*255+3) % 16 = 12.
    EXPECT_EQ(y[255], 62.0f * 12 - 0.5f * 61);
}

TEST(known_bytes, q5_k) {
    // As Q4_K with qh[32] at byte 16 and qs at byte 48: bit 2c of qh[l]
    // is the fifth bit of element 64c + l, bit 2c + 1 that of 64c + 32 + l.
    const k_case& k = k_params;
    std::vector<uint8_t> b(176, 0);
    put16(b, 0, k.d_bits);
    put16(b, 2, k.dmin_bits);
    const auto s = k_scales(k.sc, k.m);
    std::copy(s.begin(), s.end(), b.begin() + 4);
    int q[256];
    for (int e = 0; e < 256; ++e) {
        q[e] = (11 * e + 5) % 32;
        const int c = e / 64;
        const int l = e % 32;
        const bool high = e % 64 >= 32;
        b[48 + 32 * c + l] |= static_cast<uint8_t>(high ? (q[e] & 15) << 4 : q[e] & 15);
        b[16 + l] |= static_cast<uint8_t>((q[e] >> 4) << (2 * c + (high ? 1 : 0)));
    }
    const auto y = dequant(ggml_type::q5_k, b, 256);
    for (int e = 0; e < 256; ++e) {
        const int sub = e / 32;
        const float want =
            k.d * static_cast<float>(k.sc[sub] * q[e]) - k.dmin * static_cast<float>(k.m[sub]);
        EXPECT_EQ(y[e], want) << e;
    }
    // Spelled out: element 97 (chunk 1, high half, l = 1): q = (1067+5)%32 = 16,
    // so bit 3 of qh[1] is set and its nibble in byte 48 + 32 + 1 is 0.
    EXPECT_EQ(q[97], 16);
    EXPECT_NE(b[16 + 1] & 0x08, 0);
    EXPECT_EQ(y[97], 63.0f * 16 - 0.5f * 7); // sub-block 3
}

TEST(known_bytes, q6_k) {
    // ql[128] at 0, qh[64] at 128, int8 scales[16] at 192, d at 208.
    // Half h, quarter k (32 elements), l < 32: low nibble in ql[64h + 32(k&1)
    // + l] (k < 2 low, else high nibble), two high bits at qh[32h + l] bits
    // 2k..2k+1. x = d * scales[e / 16] * (q - 32).
    std::vector<uint8_t> b(210, 0);
    const float d = 0.25f;
    put16(b, 208, 0x3400);
    int8_t sc[16];
    for (int i = 0; i < 16; ++i) {
        sc[i] = static_cast<int8_t>(i % 2 ? -(8 * i + 1) : 8 * i + 3);
        b[192 + i] = static_cast<uint8_t>(sc[i]);
    }
    int q[256];
    for (int e = 0; e < 256; ++e) {
        q[e] = (13 * e + 7) % 64;
        const int h = e / 128;
        const int k = e % 128 / 32;
        const int l = e % 32;
        const int low = q[e] & 15;
        b[64 * h + 32 * (k & 1) + l] |= static_cast<uint8_t>(k < 2 ? low : low << 4);
        b[128 + 32 * h + l] |= static_cast<uint8_t>((q[e] >> 4) << (2 * k));
    }
    const auto y = dequant(ggml_type::q6_k, b, 256);
    for (int e = 0; e < 256; ++e) {
        EXPECT_EQ(y[e], d * static_cast<float>(sc[e / 16] * (q[e] - 32))) << e;
    }
    // Spelled out: element 64 (half 0, quarter 2, l 0) sits in the high
    // nibble of ql[0] and bits 4-5 of qh[0]: q = (832 + 7) % 64 = 7.
    EXPECT_EQ(q[64], 7);
    EXPECT_EQ(b[0] >> 4, 7);
    EXPECT_EQ((b[128] >> 4) & 3, 0);
    EXPECT_EQ(y[64], 0.25f * static_cast<float>(sc[4]) * (7 - 32));
}

TEST(known_bytes, f16_bf16_and_f32) {
    std::vector<uint8_t> b(8);
    put16(b, 0, 0x3c00); // 1
    put16(b, 2, 0xc500); // -5
    put16(b, 4, 0x0001); // 2^-24
    put16(b, 6, 0x7bff); // 65504
    const auto y = dequant(ggml_type::f16, b, 4);
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(y[1], -5.0f);
    EXPECT_EQ(y[2], 0x1p-24f);
    EXPECT_EQ(y[3], 65504.0f);
    std::vector<uint8_t> bb(6);
    put16(bb, 0, 0x3f80); // 1
    put16(bb, 2, 0xc0a0); // -5
    put16(bb, 4, 0x7f7f); // the largest: (2 - 2^-7) 2^127
    const auto by = dequant(ggml_type::bf16, bb, 3);
    EXPECT_EQ(by[0], 1.0f);
    EXPECT_EQ(by[1], -5.0f);
    EXPECT_EQ(by[2], 0x1.fep127f);
    const float f[2] = {1.5f, -0.0f};
    std::vector<uint8_t> fb(8);
    std::memcpy(fb.data(), f, 8);
    const auto z = dequant(ggml_type::f32, fb, 2);
    EXPECT_EQ(z[0], 1.5f);
    EXPECT_TRUE(std::signbit(z[1]));
}

// ---- quantize -> dequantize ------------------------------------------------

const ggml_type all_types[] = {ggml_type::f32,  ggml_type::f16,  ggml_type::bf16, ggml_type::q8_0,
                               ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1,
                               ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k};

std::string type_name(ggml_type t) {
    return std::string(info(t)->name);
}

/// Relative RMS error on normal data: the bound for each type, around
/// what llama.cpp's quantizers reach (measured values in the comments).
double bound(ggml_type t) {
    switch (t) {
    case ggml_type::f32:
        return 0.0;
    case ggml_type::f16:
        return 3e-4; // 2^-12 / sqrt(3) ~ 1.4e-4
    case ggml_type::bf16:
        return 2.5e-3; // 2^-9 / sqrt(3) ~ 1.1e-3
    case ggml_type::q8_0:
        return 0.0056; // measured 0.0054
    case ggml_type::q4_0:
        return 0.092; // measured 0.086
    case ggml_type::q4_1:
        return 0.083; // measured 0.079
    case ggml_type::q5_0:
        return 0.046; // measured 0.043
    case ggml_type::q5_1:
        return 0.040; // measured 0.038
    case ggml_type::q4_k:
        return 0.074; // measured 0.070 (an unconstrained affine fit per 32: 0.069)
    case ggml_type::q5_k:
        return 0.037; // measured 0.035
    case ggml_type::q6_k:
        return 0.018; // measured 0.017
    default:
        return 0.0;
    }
}

std::vector<float> round_trip(ggml_type t, const std::vector<float>& x) {
    const auto n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> q(*row_bytes(t, static_cast<uint64_t>(n)) + 1, 0xa5);
    EXPECT_EQ(quantize_row(t, x.data(), q.data(), n), quant_status::ok);
    EXPECT_EQ(q.back(), 0xa5) << "wrote past the row";
    std::vector<float> y(x.size());
    EXPECT_EQ(dequantize_row(t, q.data(), y.data(), n), quant_status::ok);
    return y;
}

double rel_rms(const std::vector<float>& x, const std::vector<float>& y, size_t from = 0,
               size_t to = SIZE_MAX) {
    double num = 0;
    double den = 0;
    for (size_t i = from; i < std::min(to, x.size()); ++i) {
        num += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
        den += static_cast<double>(x[i]) * x[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

std::vector<float> normal(size_t n, float scale, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& f : v) {
        f = scale * dist(rng);
    }
    return v;
}

TEST(round_trip, normal_data_within_bounds) {
    const auto x = normal(8192, 1.0f, 1);
    for (const ggml_type t : all_types) {
        const double e = rel_rms(x, round_trip(t, x));
        EXPECT_LE(e, bound(t)) << type_name(t);
        RecordProperty(type_name(t), std::to_string(e));
        std::printf("%-5s relative RMS error %.5f (bound %.4f)\n", type_name(t).c_str(), e,
                    bound(t));
    }
}

TEST(round_trip, scale_does_not_matter_within_half_range) {
    for (const float scale : {1e-3f, 1e4f}) {
        const auto x = normal(4096, scale, 2);
        for (const ggml_type t : all_types) {
            const double e = rel_rms(x, round_trip(t, x));
            EXPECT_LE(e, bound(t) * 1.05 + 1e-9) << type_name(t) << " scale " << scale;
        }
    }
}

TEST(round_trip, zeros_stay_zero) {
    const std::vector<float> x(512, 0.0f);
    for (const ggml_type t : all_types) {
        const auto y = round_trip(t, x);
        for (size_t i = 0; i < y.size(); ++i) {
            ASSERT_EQ(y[i], 0.0f) << type_name(t) << " " << i;
        }
    }
}

TEST(round_trip, constants_come_back_nearly_exact) {
    for (const float c : {0.37f, -2.5f, 1000.0f}) {
        const std::vector<float> x(512, c);
        for (const ggml_type t : all_types) {
            const auto y = round_trip(t, x);
            for (size_t i = 0; i < y.size(); ++i) {
                // Only the scale's rounding to half precision is lost
                // (BF16: the value's own rounding to 8 significant bits).
                const double tol = t == ggml_type::bf16 ? 0x1p-8 : 1e-3;
                ASSERT_NEAR(y[i], c, std::fabs(c) * tol) << type_name(t) << " " << i;
            }
        }
    }
}

TEST(round_trip, positive_and_negative_only_data) {
    auto x = normal(2048, 1.0f, 3);
    for (auto& v : x) {
        v = std::fabs(v) + 0.5f;
    }
    auto neg = x;
    for (auto& v : neg) {
        v = -v;
    }
    for (const ggml_type t : all_types) {
        // A shifted block has less spread for its range: at most the normal bound.
        EXPECT_LE(rel_rms(x, round_trip(t, x)), bound(t)) << type_name(t);
        EXPECT_LE(rel_rms(neg, round_trip(t, neg)), bound(t)) << type_name(t);
    }
}

TEST(round_trip, a_single_outlier_costs_only_its_own_block) {
    auto x = normal(4096, 1.0f, 4);
    const size_t at = 1000; // super-block 3, sub-block 7 of it; Q8_0/Q4_0 block 31
    x[at] = 50.0f;
    for (const ggml_type t : all_types) {
        const auto y = round_trip(t, x);
        const size_t block = info(t)->block_elems == 1 ? 1 : info(t)->block_elems;
        const size_t b0 = at / block * block;
        // The outlier itself is kept well (it sets its block's scale).
        EXPECT_NEAR(y[at], 50.0f, 50.0f * std::max(bound(t), 1e-6)) << type_name(t);
        // Blocks without it are as good as on plain normal data.
        std::vector<float> xo;
        std::vector<float> yo;
        for (size_t i = 0; i < x.size(); ++i) {
            if (i < b0 || i >= b0 + block) {
                xo.push_back(x[i]);
                yo.push_back(y[i]);
            }
        }
        EXPECT_LE(rel_rms(xo, yo), bound(t)) << type_name(t);
        for (const float v : y) {
            ASSERT_TRUE(std::isfinite(v)) << type_name(t);
        }
    }
}

/// Types with an offset (min) per block: they need not keep signs.
bool affine(ggml_type t) {
    return t == ggml_type::q4_1 || t == ggml_type::q5_1 || t == ggml_type::q4_k ||
           t == ggml_type::q5_k;
}

TEST(round_trip, out_of_range_and_tiny_magnitudes_give_finite_values) {
    // Beyond what a half scale reaches: values saturate, stay finite, keep sign.
    auto big = normal(1024, 1e9f, 5);
    auto tiny = normal(1024, 1e-9f, 6);
    for (const ggml_type t : all_types) {
        if (t == ggml_type::f16) {
            continue; // a plain half: overflow is infinity by definition
        }
        const auto yb = round_trip(t, big);
        const auto yt = round_trip(t, tiny);
        for (size_t i = 0; i < big.size(); ++i) {
            ASSERT_TRUE(std::isfinite(yb[i])) << type_name(t);
            ASSERT_TRUE(std::isfinite(yt[i])) << type_name(t);
            ASSERT_LE(std::fabs(yt[i]), 1e-7f) << type_name(t);
            if (std::fabs(big[i]) > 1e8f && !affine(t)) {
                // Symmetric formats keep the sign of large values.
                ASSERT_EQ(std::signbit(yb[i]), std::signbit(big[i])) << type_name(t) << " " << i;
            }
        }
    }
}

TEST(round_trip, non_finite_input_gives_valid_blocks) {
    auto x = normal(512, 1.0f, 8);
    x[3] = NAN;
    x[300] = INFINITY;
    x[301] = -INFINITY;
    for (const ggml_type t : all_types) {
        std::vector<uint8_t> q(*row_bytes(t, 512));
        ASSERT_EQ(quantize_row(t, x.data(), q.data(), 512), quant_status::ok);
        std::vector<float> y(512);
        ASSERT_EQ(dequantize_row(t, q.data(), y.data(), 512), quant_status::ok);
    }
}

TEST(round_trip, quantizing_again_is_stable) {
    // Values already on a type's grid quantize to (nearly) the same values.
    const auto x = normal(2048, 1.0f, 9);
    for (const ggml_type t : all_types) {
        const auto y = round_trip(t, x);
        const auto z = round_trip(t, y);
        EXPECT_LE(rel_rms(y, z), bound(t) / 2) << type_name(t);
    }
}

// ---- status ----------------------------------------------------------------

TEST(status, unsupported_types_and_bad_lengths_are_refused) {
    std::vector<float> x(256, 1.0f);
    std::vector<uint8_t> q(1024);
    for (const ggml_type t : {ggml_type::q2_k, ggml_type::q3_k, ggml_type::q8_1, ggml_type::q8_k,
                              static_cast<ggml_type>(99)}) {
        EXPECT_EQ(quantize_row(t, x.data(), q.data(), 256), quant_status::unsupported_type);
        EXPECT_EQ(dequantize_row(t, q.data(), x.data(), 256), quant_status::unsupported_type);
    }
    EXPECT_EQ(quantize_row(ggml_type::q8_0, x.data(), q.data(), 33), quant_status::bad_length);
    EXPECT_EQ(dequantize_row(ggml_type::q4_k, q.data(), x.data(), 128), quant_status::bad_length);
    EXPECT_EQ(dequantize_row(ggml_type::f32, q.data(), x.data(), -1), quant_status::bad_length);
    EXPECT_EQ(dequantize_row(ggml_type::q6_k, q.data(), x.data(), 0), quant_status::ok);
    EXPECT_EQ(quant_status_name(quant_status::bad_length), "bad length");
}

TEST(status, simd_level_can_be_forced_to_scalar) {
    const char* env = std::getenv("LLMOS_ENGINE_SIMD");
    if (env && std::string_view(env) == "scalar") {
        EXPECT_EQ(default_simd(), simd_level::scalar);
    } else {
        EXPECT_EQ(default_simd(), detected_simd());
    }
    std::printf("simd: detected %s, in use %s\n", std::string(simd_name(detected_simd())).c_str(),
                std::string(simd_name(default_simd())).c_str());
}

} // namespace
