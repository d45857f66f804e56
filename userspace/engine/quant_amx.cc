// SPDX-License-Identifier: MIT
//
// AMX kernels: the packed panels (quant_kernels.hh) on the tile unit. One
// TDPBSSD multiplies a tile of 16 tokens' int8 activations (A: 16 rows of
// one block's q, each token's row read where the act rows hold it) by one
// block of a panel's levels (B: the block's vectors, rows of 64 bytes of 4
// elements for each of the 16 weight rows) into 16 x 16 int32 sums (C, a
// row per token), in 16 cycles whatever the block's depth. The unit knows
// no scales, so each block's sums go to memory and AVX-512 multiplies them
// by d_w * d_x into float sums kept in registers, in the AVX-512 kernel's
// order: the same bits as it. That epilogue, 3 vector operations per token
// and block, is what bounds these kernels (about 24 cycles a 32-deep
// block against the tile unit's 16), so two blocks are in flight: the tile
// unit works on the next while the vector units scale the last.
//
// The levels are unpacked once per panel into a buffer, less the type's
// zero for the 32-element types (so that the sums come out with z already
// in them), as they are for the K-quants (whose offsets, as in AVX-512,
// are the mins' and Q6_K's -32 products with the activations' sums).
#include "panel_avx512.hh"
#include "quant_kernels.hh"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#define LLMOS_AMX                                                                                  \
    __attribute__((                                                                                \
        target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

#if defined(LLMOS_AMX_MODEL)
// The model (quant_amx_model.cc compiles this file again with it): each
// tile instruction is a call into the thread's emulated tile unit.
#define LLMOS_TILE_CONFIG(cfg) tile_model::configure(cfg)
#define LLMOS_TILE_RELEASE() tile_model::release()
#define LLMOS_TILE_LOAD(t, p, stride) tile_model::load(t, p, stride)
#define LLMOS_TILE_STORE(t, p, stride) tile_model::store(t, p, stride)
#define LLMOS_TILE_ZERO(t) tile_model::zero(t)
#define LLMOS_TILE_DPBSSD(c, a, b) tile_model::dpbssd(c, a, b)
#define LLMOS_AMX_BACKEND amx_tile_model
#else
#define LLMOS_TILE_CONFIG(cfg) _tile_loadconfig(cfg)
#define LLMOS_TILE_RELEASE() _tile_release()
// GCC's tile loads and stores are asm statements that name no memory: a
// compiler barrier on each side keeps the compiler's own loads and stores
// of the same bytes (the unpacked levels, the sums' buffers) in order with
// them.
#define LLMOS_TILE_LOAD(t, p, stride)                                                              \
    do {                                                                                           \
        __asm__ volatile("" ::: "memory");                                                         \
        _tile_loadd(t, p, stride);                                                                 \
    } while (0)
#define LLMOS_TILE_STORE(t, p, stride)                                                             \
    do {                                                                                           \
        __asm__ volatile("" ::: "memory");                                                         \
        _tile_stored(t, p, stride);                                                                \
        __asm__ volatile("" ::: "memory");                                                         \
    } while (0)
#define LLMOS_TILE_ZERO(t) _tile_zero(t)
#define LLMOS_TILE_DPBSSD(c, a, b) _tile_dpbssd(c, a, b)
#define LLMOS_AMX_BACKEND amx_tile_unit
#endif

/// One step: tile c = tile a * tile b for a's rows at pa (stride bytes
/// apart) and b's at pb, stored to pc. Slot 0 is tiles 0, 2, 4, slot 1
/// tiles 1, 3, 5 (the tile numbers must be literals).
#define LLMOS_TILE_STEP(c, a, b, pa, stride, pb, pc)                                               \
    do {                                                                                           \
        LLMOS_TILE_LOAD(a, pa, stride);                                                            \
        LLMOS_TILE_LOAD(b, pb, 64);                                                                \
        LLMOS_TILE_ZERO(c);                                                                        \
        LLMOS_TILE_DPBSSD(c, a, b);                                                                \
        LLMOS_TILE_STORE(c, pc, 64);                                                               \
    } while (0)
#define LLMOS_TILE_STEP0(pa, stride, pb, pc) LLMOS_TILE_STEP(0, 2, 4, pa, stride, pb, pc)
#define LLMOS_TILE_STEP1(pa, stride, pb, pc) LLMOS_TILE_STEP(1, 3, 5, pa, stride, pb, pc)

namespace llmos::engine::detail {

namespace {

/// The tile unit's configuration (palette 1): per tile its bytes per row
/// and rows.
struct alignas(64) tile_config {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
static_assert(sizeof(tile_config) == 64);

/// Tiles 0-1 hold sums (16 tokens x 16 rows of int32), 2-3 activations (16
/// tokens x `depth` bytes), 4-5 levels (depth / 4 rows of 64 bytes).
constexpr tile_config make_config(int depth) {
    tile_config c;
    for (int s = 0; s < 2; ++s) {
        c.colsb[s] = 64;
        c.rows[s] = amx_tile;
        c.colsb[2 + s] = static_cast<uint16_t>(depth);
        c.rows[2 + s] = amx_tile;
        c.colsb[4 + s] = 64;
        c.rows[4 + s] = static_cast<uint8_t>(depth / 4);
    }
    return c;
}

/// Blocks of 32 (the 32-element types, Q4_K and Q5_K's sub-blocks) and of
/// 16 (Q6_K's sub-blocks).
constexpr tile_config config32 = make_config(32);
constexpr tile_config config16 = make_config(16);

#if defined(LLMOS_AMX_MODEL)
/// A thread's emulated tile unit: palette 1's eight tiles of up to 16 rows
/// of 64 bytes, shaped by the loaded configuration. What the hardware
/// faults on (a tile used unconfigured or with shapes that do not fit,
/// an instruction with no configuration loaded) aborts.
namespace tile_model {

struct unit {
    bool configured = false;
    tile_config cfg;
    alignas(64) uint8_t tile[8][16][64] = {};
};

thread_local unit self;

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "tile model: %s\n", what);
        std::abort();
    }
}

void configure(const tile_config* c) {
    require(c->palette == 1, "palette is not 1");
    for (int t = 0; t < 8; ++t) {
        require(c->colsb[t] <= 64 && c->rows[t] <= 16, "a tile is larger than 16 x 64");
    }
    self.cfg = *c;
    self.configured = true;
    std::memset(self.tile, 0, sizeof self.tile);
}

void release() {
    self.configured = false;
}

void shaped(int t) {
    require(self.configured, "tile instruction without a configuration");
    require(self.cfg.rows[t] != 0 && self.cfg.colsb[t] != 0, "tile not configured");
}

void load(int t, const void* p, size_t stride) {
    shaped(t);
    const auto* src = static_cast<const uint8_t*>(p);
    for (int r = 0; r < self.cfg.rows[t]; ++r) {
        std::memcpy(self.tile[t][r], src + r * stride, self.cfg.colsb[t]);
    }
}

void store(int t, void* p, size_t stride) {
    shaped(t);
    auto* dst = static_cast<uint8_t*>(p);
    for (int r = 0; r < self.cfg.rows[t]; ++r) {
        std::memcpy(dst + r * stride, self.tile[t][r], self.cfg.colsb[t]);
    }
}

void zero(int t) {
    shaped(t);
    std::memset(self.tile[t], 0, sizeof self.tile[t]);
}

/// TDPBSSD: c[m][n] += sum over k < colsb(a) / 4 and i < 4 of
/// int8 a[m][4k + i] * int8 b[k][4n + i], in int32 (wrapping).
void dpbssd(int c, int a, int b) {
    shaped(c);
    shaped(a);
    shaped(b);
    const tile_config& g = self.cfg;
    require(g.rows[c] == g.rows[a], "rows of c and a differ");
    require(g.colsb[c] == g.colsb[b], "columns of c and b differ");
    require(g.colsb[a] == 4 * g.rows[b], "depth of a and b differ");
    for (int m = 0; m < g.rows[c]; ++m) {
        for (int n = 0; n < g.colsb[c] / 4; ++n) {
            uint32_t sum;
            std::memcpy(&sum, &self.tile[c][m][4 * n], 4);
            for (int k = 0; k < g.rows[b]; ++k) {
                for (int i = 0; i < 4; ++i) {
                    const auto x = static_cast<int8_t>(self.tile[a][m][4 * k + i]);
                    const auto y = static_cast<int8_t>(self.tile[b][k][4 * n + i]);
                    sum += static_cast<uint32_t>(static_cast<int32_t>(x) * y);
                }
            }
            std::memcpy(&self.tile[c][m][4 * n], &sum, 4);
        }
    }
}

} // namespace tile_model
#endif

/// Bytes of one 32-element group's unpacked levels (16 rows of 32).
constexpr size_t group_levels = 512;

// ---- 32-element types --------------------------------------------------------

template <typename Block>
LLMOS_AMX void unpack32(const void* panel, int64_t cols, void* dst) {
    using tr = block32_traits<Block>;
    const auto* pan = static_cast<const uint8_t*>(panel);
    auto* out = static_cast<uint8_t*>(dst);
    const __m512i zero = _mm512_set1_epi8(static_cast<char>(tr::panel_zero));
    const int64_t nb = cols / qk_block;
    for (int64_t b = 0; b < nb; ++b, out += group_levels) {
        const uint8_t* lv = pan + group32_at<Block>(nb, b).levels;
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            __m512i w0;
            __m512i w1;
            levels_pair<Block>(lv, j, w0, w1);
            _mm512_store_si512(out + 128 * j, _mm512_sub_epi8(w0, zero));
            _mm512_store_si512(out + 128 * j + 64, _mm512_sub_epi8(w1, zero));
        }
    }
}

/// As panel_dot's per block: facc[t] += float(sum) * (d_w * d_x) (and
/// the affine types' m_w * ds_x), the sums from c.
template <typename Block>
LLMOS_AMX inline __attribute__((always_inline)) void
scale32(const int32_t* c, __m512 d, __m512 m, const std::byte* xd, const std::byte* xds,
        size_t stride, __m512* facc) {
#pragma GCC unroll 16
    for (int t = 0; t < amx_tile; ++t) {
        const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(load_f32(xd + t * stride)));
        facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * t)), dd, facc[t]);
        if constexpr (block32_traits<Block>::affine) {
            facc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(load_f32(xds + t * stride)), facc[t]);
        }
    }
}

template <typename Block>
LLMOS_AMX void dot32(const void* panel, const void* levels, const void* act, size_t stride, int nt,
                     int64_t cols, float* out, size_t out_stride) {
    using tr = block32_traits<Block>;
    const int64_t nb = cols / qk_block;
    const auto* pan = static_cast<const uint8_t*>(panel);
    const auto* lv = static_cast<const uint8_t*>(levels);
    const auto* a = static_cast<const std::byte*>(act);
    const auto* xq = reinterpret_cast<const std::byte*>(act32_qs(a));
    const auto* xd = reinterpret_cast<const std::byte*>(act32_d(a, cols));
    const auto* xds = reinterpret_cast<const std::byte*>(act32_ds(a, cols));
    alignas(64) int32_t c[2][amx_tile * panel_rows];
    __m512 facc[amx_tile];
#pragma GCC unroll 16
    for (int t = 0; t < amx_tile; ++t) {
        facc[t] = _mm512_setzero_ps();
    }
    const auto scales = [&](int64_t b, __m512& d, __m512& m) LLMOS_AMX {
        const group32_offsets at = group32_at<Block>(nb, b);
        d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pan + at.d)));
        m = tr::affine
                ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pan + at.m)))
                : _mm512_setzero_ps();
    };
    LLMOS_TILE_STEP0(xq, stride, lv, c[0]);
    for (int64_t b = 0; b < nb; b += 2) {
        __m512 d;
        __m512 m;
        if (b + 1 < nb) {
            LLMOS_TILE_STEP1(xq + qk_block * (b + 1), stride, lv + group_levels * (b + 1), c[1]);
        }
        scales(b, d, m);
        scale32<Block>(c[0], d, m, xd + 4 * b, xds + 4 * b, stride, facc);
        if (b + 1 < nb) {
            if (b + 2 < nb) {
                LLMOS_TILE_STEP0(xq + qk_block * (b + 2), stride, lv + group_levels * (b + 2),
                                 c[0]);
            }
            scales(b + 1, d, m);
            scale32<Block>(c[1], d, m, xd + 4 * (b + 1), xds + 4 * (b + 1), stride, facc);
        }
    }
#pragma GCC unroll 16
    for (int t = 0; t < amx_tile; ++t) {
        if (t < nt) {
            _mm512_storeu_ps(out + t * out_stride, facc[t]);
        }
    }
}

// ---- K-quants ----------------------------------------------------------------

/// Q4_K, Q5_K: 8 groups of 32 a super-block, each 16 rows of 32 levels.
template <bool Five>
LLMOS_AMX void unpack_affine_k(const void* panel, int64_t cols, void* dst) {
    constexpr size_t lb = Five ? 320 : 256;
    constexpr size_t sbb = k_panel_bytes(Five ? ggml_type::q5_k : ggml_type::q4_k);
    const auto* sb = static_cast<const uint8_t*>(panel);
    auto* out = static_cast<uint8_t*>(dst);
    for (int64_t b = 0; b < cols / qk_super; ++b, sb += sbb) {
        for (int s = 0; s < 8; ++s, out += group_levels) {
            const uint8_t* lv = sb + lb * static_cast<size_t>(s);
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
                __m512i w0;
                __m512i w1;
                nibble_pair(lv, j, w0, w1);
                if constexpr (Five) {
                    fifth_pair(lv + 256, j, w0, w1);
                }
                _mm512_store_si512(out + 128 * j, w0);
                _mm512_store_si512(out + 128 * j + 64, w1);
            }
        }
    }
}

/// Q6_K: the same, the 2-bit plane ORed in (levels 0..63; the -32 is
/// applied through the activations' sums).
LLMOS_AMX void unpack_q6_k(const void* panel, int64_t cols, void* dst) {
    constexpr size_t sbb = k_panel_bytes(ggml_type::q6_k);
    const auto* sb = static_cast<const uint8_t*>(panel);
    auto* out = static_cast<uint8_t*>(dst);
    for (int64_t b = 0; b < cols / qk_super; ++b, sb += sbb) {
        for (int g = 0; g < 8; ++g, out += group_levels) {
            const uint8_t* lv = sb + 384 * static_cast<size_t>(g);
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
                __m512i w0;
                __m512i w1;
                nibble_pair(lv, j, w0, w1);
                high2_pair(lv + 256, j, w0, w1);
                _mm512_store_si512(out + 128 * j, w0);
                _mm512_store_si512(out + 128 * j + 64, w1);
            }
        }
    }
}

/// sumf[t] += float(sum) * dsc, the sums from c (a sub-block's step).
LLMOS_AMX inline __attribute__((always_inline)) void scale_k(const int32_t* c, __m512 dsc,
                                                             __m512* sumf) {
#pragma GCC unroll 16
    for (int t = 0; t < amx_tile; ++t) {
        sumf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * t)), dsc, sumf[t]);
    }
}

/// Q4_K, Q5_K as panel_dot_affine_k: per sub-block s, sumf += sum * d *
/// sc[s]; per super-block facc += sumf * d_x - dmin * d_x * (the mins
/// times the activations' sums of 32). The steps are the sub-blocks, in
/// flight across the super-blocks' ends; facc lives in memory (the 16
/// sumf take the registers).
template <bool Five>
LLMOS_AMX void dot_affine_k(const void* panel, const void* levels, const void* act, size_t stride,
                            int nt, int64_t cols, float* out, size_t out_stride) {
    constexpr size_t lb = Five ? 320 : 256;
    constexpr size_t sbb = k_panel_bytes(Five ? ggml_type::q5_k : ggml_type::q4_k);
    const int64_t nsb = cols / qk_super;
    const auto* lv = static_cast<const uint8_t*>(levels);
    const auto* a = static_cast<const std::byte*>(act);
    alignas(64) int32_t c[2][amx_tile * panel_rows];
    alignas(64) float facc[amx_tile][panel_rows] = {};
    __m512 sumf[amx_tile];
    // Step k = 8 b + s: sub-block s of super-block b.
    const auto qs = [&](int64_t k) {
        return a + static_cast<size_t>(k / 8) * sizeof(act_k_panel) + 32 * (k % 8);
    };
    LLMOS_TILE_STEP0(qs(0), stride, lv, c[0]);
    for (int64_t b = 0; b < nsb; ++b) {
        const uint8_t* sb = static_cast<const uint8_t*>(panel) + static_cast<size_t>(b) * sbb;
        const uint8_t* sc = sb + 8 * lb;
        const uint8_t* mins = sc + 8 * panel_rows;
        const auto* dd = reinterpret_cast<const __m256i*>(mins + 16 * panel_rows);
        const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(dd));
        const __m512 dmin = _mm512_cvtph_ps(_mm256_load_si256(dd + 1));
        const auto dsc = [&](int s) LLMOS_AMX {
            return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(
                                        reinterpret_cast<const __m128i*>(sc + panel_rows * s)))));
        };
#pragma GCC unroll 16
        for (int t = 0; t < amx_tile; ++t) {
            sumf[t] = _mm512_setzero_ps();
        }
        for (int s = 0; s < 8; s += 2) {
            const int64_t k = 8 * b + s;
            LLMOS_TILE_STEP1(qs(k + 1), stride, lv + group_levels * (k + 1), c[1]);
            scale_k(c[0], dsc(s), sumf);
            if (k + 2 < 8 * nsb) {
                LLMOS_TILE_STEP0(qs(k + 2), stride, lv + group_levels * (k + 2), c[0]);
            }
            scale_k(c[1], dsc(s + 1), sumf);
        }
#pragma GCC unroll 16
        for (int t = 0; t < amx_tile; ++t) {
            const auto* x = reinterpret_cast<const act_k_panel*>(a + t * stride) + b;
            __m512i macc = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int p = 0; p < 4; ++p) {
                macc = _mm512_dpwssd_epi32(macc, _mm512_load_si512(mins + 64 * p),
                                           _mm512_set1_epi32(load_i32(x->sums32 + 2 * p)));
            }
            const __m512 xd = _mm512_set1_ps(x->d);
            __m512 f = _mm512_fmadd_ps(sumf[t], xd, _mm512_load_ps(facc[t]));
            f = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(macc), _mm512_mul_ps(dmin, xd), f);
            _mm512_store_ps(facc[t], f);
        }
    }
    for (int t = 0; t < nt; ++t) {
        std::memcpy(out + t * out_stride, facc[t], sizeof facc[t]);
    }
}

/// Q6_K as panel_dot_q6_k: the steps are the 16-element sub-blocks (two
/// a group: its levels' first and second 256 bytes), sumf += sum * d *
/// sc; per super-block facc += sumf * d_x - 32 d d_x (the scales times
/// the activations' sums of 16).
LLMOS_AMX void dot_q6_k(const void* panel, const void* levels, const void* act, size_t stride,
                        int nt, int64_t cols, float* out, size_t out_stride) {
    constexpr size_t sbb = k_panel_bytes(ggml_type::q6_k);
    const int64_t nsb = cols / qk_super;
    const auto* lv = static_cast<const uint8_t*>(levels);
    const auto* a = static_cast<const std::byte*>(act);
    alignas(64) int32_t c[2][amx_tile * panel_rows];
    alignas(64) float facc[amx_tile][panel_rows] = {};
    __m512 sumf[amx_tile];
    // Step k = 16 b + 2 g + h: half h of group g of super-block b.
    const auto qs = [&](int64_t k) {
        return a + static_cast<size_t>(k / 16) * sizeof(act_k_panel) + 16 * (k % 16);
    };
    LLMOS_TILE_STEP0(qs(0), stride, lv, c[0]);
    for (int64_t b = 0; b < nsb; ++b) {
        const uint8_t* scp =
            static_cast<const uint8_t*>(panel) + static_cast<size_t>(b) * sbb + 8 * 384;
        const __m512 d = _mm512_cvtph_ps(
            _mm256_load_si256(reinterpret_cast<const __m256i*>(scp + 32 * panel_rows)));
#pragma GCC unroll 16
        for (int t = 0; t < amx_tile; ++t) {
            sumf[t] = _mm512_setzero_ps();
        }
        for (int g = 0; g < 8; ++g) {
            const int64_t k = 16 * b + 2 * g;
            const __m512i pair = _mm512_load_si512(scp + 64 * g);
            LLMOS_TILE_STEP1(qs(k + 1), stride, lv + 256 * (k + 1), c[1]);
            scale_k(c[0],
                    _mm512_mul_ps(
                        d, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(pair, 16), 16))),
                    sumf);
            if (k + 2 < 16 * nsb) {
                LLMOS_TILE_STEP0(qs(k + 2), stride, lv + 256 * (k + 2), c[0]);
            }
            scale_k(c[1], _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32(pair, 16))), sumf);
        }
#pragma GCC unroll 16
        for (int t = 0; t < amx_tile; ++t) {
            const auto* x = reinterpret_cast<const act_k_panel*>(a + t * stride) + b;
            __m512i oacc = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int p = 0; p < 8; ++p) {
                oacc = _mm512_dpwssd_epi32(oacc, _mm512_load_si512(scp + 64 * p),
                                           _mm512_set1_epi32(load_i32(x->bsums + 2 * p)));
            }
            const float xd = x->d;
            __m512 f = _mm512_fmadd_ps(sumf[t], _mm512_set1_ps(xd), _mm512_load_ps(facc[t]));
            f = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(oacc),
                                 _mm512_mul_ps(d, _mm512_set1_ps(32.0f * xd)), f);
            _mm512_store_ps(facc[t], f);
        }
    }
    for (int t = 0; t < nt; ++t) {
        std::memcpy(out + t * out_stride, facc[t], sizeof facc[t]);
    }
}

amx_unpacker unpacker_of(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return unpack32<block_q8_0>;
    case ggml_type::q4_0:
        return unpack32<block_q4_0>;
    case ggml_type::q4_1:
        return unpack32<block_q4_1>;
    case ggml_type::q5_0:
        return unpack32<block_q5_0>;
    case ggml_type::q5_1:
        return unpack32<block_q5_1>;
    case ggml_type::q4_k:
        return unpack_affine_k<false>;
    case ggml_type::q5_k:
        return unpack_affine_k<true>;
    case ggml_type::q6_k:
        return unpack_q6_k;
    default:
        return nullptr;
    }
}

amx_kernel kernel_of(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return dot32<block_q8_0>;
    case ggml_type::q4_0:
        return dot32<block_q4_0>;
    case ggml_type::q4_1:
        return dot32<block_q4_1>;
    case ggml_type::q5_0:
        return dot32<block_q5_0>;
    case ggml_type::q5_1:
        return dot32<block_q5_1>;
    case ggml_type::q4_k:
        return dot_affine_k<false>;
    case ggml_type::q5_k:
        return dot_affine_k<true>;
    case ggml_type::q6_k:
        return dot_q6_k;
    default:
        return nullptr;
    }
}

LLMOS_AMX void tiles_begin(ggml_type t) noexcept {
    LLMOS_TILE_CONFIG(t == ggml_type::q6_k ? &config16 : &config32);
}

LLMOS_AMX void tiles_end() noexcept {
    LLMOS_TILE_RELEASE();
}

} // namespace

const amx_backend& LLMOS_AMX_BACKEND() noexcept {
    static constexpr amx_backend b{unpacker_of, kernel_of, tiles_begin, tiles_end};
    return b;
}

#if !defined(LLMOS_AMX_MODEL)
size_t amx_levels_bytes(ggml_type t, int64_t cols) noexcept {
    if (!kernel_of(t) || cols <= 0) {
        return 0;
    }
    const int64_t block = k_panel_bytes(t) != 0 ? qk_super : qk_block;
    if (cols % block != 0) {
        return 0;
    }
    return static_cast<size_t>(cols / qk_block) * group_levels;
}
#endif

} // namespace llmos::engine::detail
