// SPDX-License-Identifier: MIT
//
// matmul against a double-precision product of the dequantized weights,
// for every type, token counts that fill and split the tiles, row counts
// that do not divide among the threads, every kernel level the CPU runs
// (AVX-512 with packed weights); the levels against each other; packing
// and its refusals; results that do not depend on the thread count; the
// refusals. And the thread pool: every item once, the caller working,
// nesting, concurrent callers, construction and destruction.
#include "quant_kernels.hh" // the tile unit's model

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <llmos/engine/matmul.hh>
#include <llmos/engine/quant.hh>
#include <llmos/engine/thread_pool.hh>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

namespace {

using namespace llmos::engine;

long scaled(long n) {
    const char* s = std::getenv("LLMOS_TEST_SCALE");
    const double f = s && std::atof(s) > 0 ? std::atof(s) : 1.0;
    return std::max(1L, static_cast<long>(static_cast<double>(n) * f));
}

const ggml_type all_types[] = {ggml_type::f32,  ggml_type::f16,  ggml_type::bf16, ggml_type::q8_0,
                               ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1,
                               ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k};

/// Whether weights of `t` meet the activations as floats (no 8-bit rows).
bool float_type(ggml_type t) {
    return t == ggml_type::f32 || t == ggml_type::f16 || t == ggml_type::bf16;
}

std::string type_name(ggml_type t) {
    return std::string(info(t)->name);
}

std::vector<float> normal(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& f : v) {
        f = dist(rng);
    }
    return v;
}

/// A random matrix stored as `type`, with its dequantized values.
struct matrix {
    ggml_type type;
    int64_t rows;
    int64_t cols;
    std::vector<float> original;
    std::vector<uint8_t> bytes;
    std::vector<float> values; // what the bytes decode to

    weight_view view() const { return {type, bytes.data(), rows, cols, 0}; }
};

const matrix& random_matrix(ggml_type t, int64_t rows, int64_t cols) {
    static std::map<std::tuple<ggml_type, int64_t, int64_t>, matrix> cache;
    auto key = std::make_tuple(t, rows, cols);
    if (auto it = cache.find(key); it != cache.end()) {
        return it->second;
    }
    matrix m{t, rows, cols, normal(static_cast<size_t>(rows * cols), 11), {}, {}};
    const size_t rb = *row_bytes(t, static_cast<uint64_t>(cols));
    m.bytes.resize(rb * static_cast<size_t>(rows));
    m.values.resize(m.original.size());
    for (int64_t r = 0; r < rows; ++r) {
        EXPECT_EQ(quantize_row(t, m.original.data() + r * cols, m.bytes.data() + r * rb, cols),
                  quant_status::ok);
        EXPECT_EQ(dequantize_row(t, m.bytes.data() + r * rb, m.values.data() + r * cols, cols),
                  quant_status::ok);
    }
    return cache.emplace(key, std::move(m)).first->second;
}

/// 64-byte aligned bytes.
struct aligned_bytes {
    struct free_it {
        void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{64}); }
    };
    std::unique_ptr<std::byte[], free_it> p;
    size_t n = 0;

    explicit aligned_bytes(size_t size)
        : p(static_cast<std::byte*>(
              ::operator new[](std::max<size_t>(size, 1), std::align_val_t{64})))
        , n(size) {}
    std::span<std::byte> span() const { return {p.get(), n}; }
};

/// m as matmul at `level` computes with it: packed by pack_weights() when
/// the level packs m's type (as model::load does), its rows otherwise.
weight_view view_for(const matrix& m, simd_level level) {
    static std::map<std::tuple<const matrix*, simd_level>, aligned_bytes> cache;
    weight_view v = m.view();
    const size_t need = packed_weight_bytes(v, level);
    if (need == 0) {
        return v;
    }
    auto it = cache.find({&m, level});
    if (it == cache.end()) {
        aligned_bytes b(need);
        EXPECT_EQ(pack_weights(v, level, b.span()), matmul_status::ok);
        it = cache.emplace(std::make_tuple(&m, level), std::move(b)).first;
    }
    v.packed = it->second.p.get();
    return v;
}

std::vector<float> run(const matrix& m, const std::vector<float>& x, int64_t n_tokens,
                       thread_pool& pool, simd_level level, act_precision p = act_precision::int8) {
    std::vector<float> y(static_cast<size_t>(n_tokens * m.rows), NAN);
    const weight_view v = view_for(m, level);
    std::vector<std::byte> scratch(matmul_scratch_bytes(v, n_tokens, p));
    EXPECT_EQ(matmul(v, x.data(), n_tokens, y.data(), pool, scratch, level, p), matmul_status::ok);
    return y;
}

/// Largest |y - ref| / (|W_r| |x_t|) over the outputs, ref in double from
/// the weights `w` (rows x cols floats).
double worst_error(const std::vector<float>& w, int64_t rows, int64_t cols,
                   const std::vector<float>& x, int64_t n_tokens, const std::vector<float>& y) {
    double worst = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
        double xn = 0;
        for (int64_t k = 0; k < cols; ++k) {
            xn += static_cast<double>(x[t * cols + k]) * x[t * cols + k];
        }
        for (int64_t r = 0; r < rows; ++r) {
            double ref = 0;
            double wn = 0;
            for (int64_t k = 0; k < cols; ++k) {
                ref += static_cast<double>(w[r * cols + k]) * x[t * cols + k];
                wn += static_cast<double>(w[r * cols + k]) * w[r * cols + k];
            }
            const double e = std::fabs(y[t * rows + r] - ref) / std::sqrt(wn * xn + 1e-30);
            worst = std::max(worst, std::isnan(e) ? INFINITY : e);
        }
    }
    return worst;
}

/// What the 8-bit activations may cost, relative to |W_r| |x_t|.
double tolerance(ggml_type t) {
    switch (t) {
    case ggml_type::f32:
    case ggml_type::f16:
    case ggml_type::bf16:
        return 1e-5; // float rounding only: the reference has the same weights
    default:
        return 1e-2;
    }
}

/// Every kernel level this CPU runs.
std::vector<simd_level> levels() {
    std::vector<simd_level> l;
    for (const simd_level s :
         {simd_level::scalar, simd_level::avx2, simd_level::avx512, simd_level::amx}) {
        if (s <= detected_simd()) {
            l.push_back(s);
        }
    }
    return l;
}

TEST(matmul, matches_double_reference_for_every_type_and_shape) {
    thread_pool pools[] = {thread_pool(1), thread_pool(3)};
    for (const ggml_type t : all_types) {
        for (const int64_t cols : {256, 2048}) {
            const int64_t rows = 37; // not a multiple of any thread count
            const matrix& m = random_matrix(t, rows, cols);
            for (const int64_t n_tokens : {1, 3, 17}) {
                const auto x = normal(static_cast<size_t>(n_tokens * cols), 5);
                for (const simd_level level : levels()) {
                    for (auto& pool : pools) {
                        const auto y = run(m, x, n_tokens, pool, level);
                        const double e = worst_error(m.values, rows, cols, x, n_tokens, y);
                        EXPECT_LE(e, tolerance(t))
                            << type_name(t) << " cols " << cols << " tokens " << n_tokens << " "
                            << simd_name(level) << " threads " << pool.size();
                    }
                }
            }
        }
    }
}

TEST(matmul, quantized_error_is_what_8_bit_activations_explain) {
    // The activation rounding is random with respect to the weights: the
    // error relative to |W_r| |x_t| is about 0.5% / sqrt(3 cols) per
    // output. Check the typical size, well under the worst-case bound.
    thread_pool pool(2);
    for (const ggml_type t : all_types) {
        const int64_t cols = 2048;
        const matrix& m = random_matrix(t, 64, cols);
        const auto x = normal(static_cast<size_t>(4 * cols), 6);
        for (const simd_level level : levels()) {
            const auto y = run(m, x, 4, pool, level);
            const double e = worst_error(m.values, 64, cols, x, 4, y);
            EXPECT_LE(e, float_type(t) ? 1e-6 : 1e-3) << type_name(t) << " " << simd_name(level);
            std::printf("%-5s %-6s worst error / (|W_r| |x_t|) = %.2e\n", type_name(t).c_str(),
                        std::string(simd_name(level)).c_str(), e);
        }
    }
}

TEST(matmul, two_level_activations_leave_a_hundredth_of_the_rounding) {
    // int8x2: the activations' rounding error is itself quantized to 8
    // bits, so what is left is ~1/100 of int8's (the second level's step
    // is ~1/254 of the first's). Token counts that fill kernel tiles with
    // pairs or leave one pair alone, both kernel sets, 1 and 3 threads.
    thread_pool pools[] = {thread_pool(1), thread_pool(3)};
    for (const ggml_type t : all_types) {
        const int64_t cols = 2048;
        const matrix& m = random_matrix(t, 37, cols);
        for (const int64_t n_tokens : {1, 2, 3, 5}) {
            const auto x = normal(static_cast<size_t>(n_tokens * cols), 9);
            for (const simd_level level : levels()) {
                for (auto& pool : pools) {
                    const auto one = run(m, x, n_tokens, pool, level);
                    const auto two = run(m, x, n_tokens, pool, level, act_precision::int8x2);
                    const double e1 = worst_error(m.values, 37, cols, x, n_tokens, one);
                    const double e2 = worst_error(m.values, 37, cols, x, n_tokens, two);
                    SCOPED_TRACE(type_name(t) + " tokens " + std::to_string(n_tokens) + " " +
                                 std::string(simd_name(level)));
                    if (float_type(t)) {
                        EXPECT_EQ(one, two); // float activations either way
                    } else {
                        EXPECT_LE(e2, 2e-5);
                        EXPECT_LE(e2 * 20, e1);
                    }
                }
            }
        }
    }
}

TEST(matmul, a_token_gets_the_same_result_alone_or_in_a_tile) {
    // The tile kernels of every quantized type and level sum exactly as
    // the one-token kernel does: prefill and decode agree bit for bit.
    // 11 tokens fill
    // the AVX-512 kernels' tile of 8 and leave 3 (two-level: 22 rows, 2
    // tiles and 6), the AVX2 ones' tiles of 4.
    thread_pool pool(2);
    const int64_t n = 11;
    for (const ggml_type t : {ggml_type::q8_0, ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0,
                              ggml_type::q5_1, ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k}) {
        // 8-block groups and a tail of 3 blocks; K-quants: 9 super-blocks.
        const int64_t cols = info(t)->block_elems == 256 ? 2304 : 2048 + 96;
        const matrix& m = random_matrix(t, 19, cols);
        const auto x = normal(static_cast<size_t>(n * cols), 10);
        for (const simd_level level : levels()) {
            for (const act_precision p : {act_precision::int8, act_precision::int8x2}) {
                const auto all = run(m, x, n, pool, level, p);
                for (int64_t tok = 0; tok < n; ++tok) {
                    const std::vector<float> one_x(x.begin() + tok * cols,
                                                   x.begin() + (tok + 1) * cols);
                    const auto one = run(m, one_x, 1, pool, level, p);
                    for (int64_t r = 0; r < 19; ++r) {
                        ASSERT_EQ(one[size_t(r)], all[size_t(tok * 19 + r)])
                            << type_name(t) << " " << simd_name(level) << " token " << tok
                            << " row " << r << (p == act_precision::int8x2 ? " int8x2" : "");
                    }
                }
            }
        }
    }
}

TEST(matmul, panel_kernels_compute_with_the_packed_weights) {
    if (detected_simd() < simd_level::avx512) {
        GTEST_SKIP() << "this CPU has no AVX-512 VNNI: detected " << simd_name(detected_simd());
    }
    // A view whose rows are one matrix and packed copy another: AVX-512
    // computes the packed one, AVX2 too where it has panel kernels (the
    // same panels), the rows for F32, F16, Q5_K and Q6_K.
    thread_pool pool(2);
    for (const ggml_type t : all_types) {
        const matrix& a = random_matrix(t, 37, 256);
        const matrix& b = random_matrix(t, 37, 512); // other values, first 256 columns
        matrix c{t, 37, 256, {}, {}, {}};
        const size_t rb = *row_bytes(t, 256);
        for (int64_t r = 0; r < 37; ++r) {
            c.bytes.insert(c.bytes.end(), b.bytes.begin() + r * 2 * rb,
                           b.bytes.begin() + r * 2 * rb + rb);
        }
        const auto x = normal(3 * 256, 13);
        aligned_bytes c_packed(packed_weight_bytes(c.view(), simd_level::avx512));
        ASSERT_EQ(pack_weights(c.view(), simd_level::avx512, c_packed.span()), matmul_status::ok);
        weight_view mixed = a.view();
        mixed.packed = c_packed.p.get();
        std::vector<float> y(3 * 37);
        std::vector<std::byte> scratch(matmul_scratch_bytes(mixed, 3));
        ASSERT_EQ(matmul(mixed, x.data(), 3, y.data(), pool, scratch, simd_level::avx512),
                  matmul_status::ok);
        weight_view cv = c.view();
        cv.packed = c_packed.p.get();
        std::vector<float> want(3 * 37);
        ASSERT_EQ(matmul(cv, x.data(), 3, want.data(), pool, scratch, simd_level::avx512),
                  matmul_status::ok);
        EXPECT_EQ(y, want) << type_name(t);
        ASSERT_EQ(matmul(c.view(), x.data(), 3, want.data(), pool, scratch, simd_level::avx2),
                  matmul_status::ok);
        EXPECT_NE(y, want) << type_name(t); // not the rows
        ASSERT_EQ(matmul(mixed, x.data(), 3, y.data(), pool, scratch, simd_level::avx2),
                  matmul_status::ok);
        const bool rows = float_type(t) || t == ggml_type::q5_k || t == ggml_type::q6_k;
        EXPECT_EQ(packed_weight_bytes(c.view(), simd_level::avx2) != 0, !rows) << type_name(t);
        ASSERT_EQ(matmul(cv, x.data(), 3, want.data(), pool, scratch, simd_level::avx2),
                  matmul_status::ok);
        EXPECT_EQ(y, rows ? run(a, x, 3, pool, simd_level::avx2) : want) << type_name(t);
        EXPECT_NE(y, rows ? want : run(a, x, 3, pool, simd_level::avx2)) << type_name(t);
    }
}

TEST(matmul, the_avx512_panel_quantizer_writes_the_avx2_ones_bits) {
    if (detected_simd() < simd_level::avx512) {
        GTEST_SKIP() << "this CPU has no AVX-512 VNNI: detected " << simd_name(detected_simd());
    }
    // Rows of 1 to 65 blocks (the AVX-512 one takes 16 at a time, the
    // last ones fewer), with a block of zeros, a huge and a tiny one.
    for (const ggml_type t :
         {ggml_type::q8_0, ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1}) {
        for (const int64_t cols : {32, 480, 512, 544, 768, 2080}) {
            auto x = normal(static_cast<size_t>(cols), static_cast<uint32_t>(cols));
            for (int64_t i = 0; i < cols; ++i) {
                const int64_t b = i / 32;
                x[size_t(i)] *= b == 2 ? 0.0f : b == 5 ? 1e4f : b == 7 ? 1e-30f : 1.0f;
            }
            const size_t n = detail::act_panel_row_bytes(t, cols);
            std::vector<std::byte> a(n, std::byte{0xa5}), b(n, std::byte{0xa5});
            detail::panel_quantizer_at(t, simd_level::avx512)(x.data(), a.data(), cols);
            detail::panel_quantizer_at(t, simd_level::avx2)(x.data(), b.data(), cols);
            EXPECT_TRUE(a == b) << type_name(t) << ", " << cols << " columns";
        }
    }
}

/// The quantized types the tile unit computes (all that pack).
const ggml_type tile_types[] = {ggml_type::q8_0, ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0,
                                ggml_type::q5_1, ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k};

/// The tile model, counting the kernel calls of type `counted`.
std::atomic<long> tile_calls{0};
ggml_type counted = ggml_type::q8_0;

void counting_kernel(const void* panel, const void* levels, const void* act, size_t act_stride,
                     int nt, int64_t cols, float* out, size_t out_stride) {
    ++tile_calls;
    detail::amx_tile_model().kernel_of(counted)(panel, levels, act, act_stride, nt, cols, out,
                                                out_stride);
}

const detail::amx_backend counting_model{
    detail::amx_tile_model().unpacker_of,
    [](ggml_type) noexcept -> detail::amx_kernel { return counting_kernel; },
    detail::amx_tile_model().begin, detail::amx_tile_model().end};

TEST(matmul, the_tile_model_computes_the_avx512_panels_bits) {
    if (detected_simd() < simd_level::avx512) {
        GTEST_SKIP() << "this CPU has no AVX-512 VNNI (the tile kernels' epilogue): detected "
                     << simd_name(detected_simd());
    }
    // The AMX kernels and their driver, each tile instruction emulated:
    // every packed type, rows that end a panel short (37 = 2 x 16 + 5),
    // an odd count of 32-blocks (96 columns: the second step in flight
    // has none to take), token counts that fill tiles or leave 1 or 15
    // rows of the last one, both activation precisions, 2 threads.
    thread_pool pool(2);
    for (const ggml_type t : tile_types) {
        const bool k = info(t)->block_elems == 256;
        for (const int64_t cols : {k ? int64_t{256} : int64_t{96}, int64_t{512}}) {
            const matrix& m = random_matrix(t, 37, cols);
            const weight_view v = view_for(m, simd_level::avx512);
            ASSERT_NE(v.packed, nullptr) << type_name(t);
            for (const int64_t n : {16, 17, 31, 33, 100}) {
                const auto x = normal(static_cast<size_t>(n * cols), static_cast<unsigned>(n));
                for (const act_precision p : {act_precision::int8, act_precision::int8x2}) {
                    const auto want = run(m, x, n, pool, simd_level::avx512, p);
                    std::vector<float> y(want.size(), NAN);
                    std::vector<std::byte> scratch(matmul_scratch_bytes(v, n, p));
                    counted = t;
                    tile_calls = 0;
                    ASSERT_EQ(detail::matmul_on_tiles(counting_model, v, x.data(), n, y.data(),
                                                      pool, scratch, p),
                              matmul_status::ok);
                    const long rows = n * (p == act_precision::int8x2 ? 2 : 1);
                    // A call per panel and tile of 16 rows (one pass: the
                    // activations are small).
                    EXPECT_EQ(tile_calls, 3 * ((rows + 15) / 16)) << type_name(t) << " " << n;
                    EXPECT_EQ(y, want) << type_name(t) << " cols " << cols << " tokens " << n
                                       << (p == act_precision::int8x2 ? " int8x2" : " int8");
                }
            }
        }
    }
    // Fewer than 16 rows stay on AVX-512; F16 has no tile kernels.
    const matrix& m = random_matrix(ggml_type::q8_0, 37, 96);
    const weight_view v = view_for(m, simd_level::avx512);
    const auto x = normal(15 * 96, 15);
    std::vector<float> y(15 * 37);
    std::vector<std::byte> scratch(matmul_scratch_bytes(v, 15));
    tile_calls = 0;
    ASSERT_EQ(detail::matmul_on_tiles(counting_model, v, x.data(), 15, y.data(), pool, scratch,
                                      act_precision::int8),
              matmul_status::ok);
    EXPECT_EQ(tile_calls, 0);
    EXPECT_EQ(y, run(m, x, 15, pool, simd_level::avx512));
    EXPECT_EQ(detail::amx_levels_bytes(ggml_type::f16, 256), 0u);
    EXPECT_EQ(detail::amx_tile_model().kernel_of(ggml_type::f16), nullptr);
}

TEST(matmul, the_tile_unit_computes_the_avx512_panels_bits) {
    if (detected_simd() < simd_level::amx) {
        GTEST_SKIP() << "this CPU (or its kernel) gives no AMX-TILE and AMX-INT8: detected "
                     << simd_name(detected_simd());
    }
    // The hardware: what the model shows above, from matmul at the level.
    thread_pool pool(2);
    for (const ggml_type t : tile_types) {
        const int64_t cols = info(t)->block_elems == 256 ? 512 : 96;
        const matrix& m = random_matrix(t, 37, cols);
        for (const int64_t n : {16, 17, 33, 100}) {
            const auto x = normal(static_cast<size_t>(n * cols), static_cast<unsigned>(n));
            for (const act_precision p : {act_precision::int8, act_precision::int8x2}) {
                EXPECT_EQ(run(m, x, n, pool, simd_level::amx, p),
                          run(m, x, n, pool, simd_level::avx512, p))
                    << type_name(t) << " tokens " << n;
            }
        }
    }
}

TEST(matmul, packing_refuses_what_it_cannot_pack) {
    std::vector<uint8_t> w(4096 * 4);
    aligned_bytes dst(1 << 16);
    const weight_view q4{ggml_type::q4_0, w.data(), 17, 64, 0};
    EXPECT_EQ(packed_weight_bytes(q4, simd_level::avx512), 2 * 2 * (256 + 32) / 64 * 64u);
    EXPECT_EQ(pack_weights(q4, simd_level::avx512, dst.span()), matmul_status::ok);
    // AVX2 reads the same panels; the scalar kernels, and AVX2's for F32,
    // F16, BF16, Q5_K and Q6_K, take the rows; types the engine does not
    // compute with.
    EXPECT_EQ(packed_weight_bytes(q4, simd_level::avx2),
              packed_weight_bytes(q4, simd_level::avx512));
    EXPECT_EQ(packed_weight_bytes(q4, simd_level::scalar), 0u);
    EXPECT_EQ(pack_weights(q4, simd_level::scalar, dst.span()), matmul_status::unsupported_type);
    for (const ggml_type t :
         {ggml_type::f32, ggml_type::f16, ggml_type::bf16, ggml_type::q5_k, ggml_type::q6_k}) {
        const weight_view v{t, w.data(), 2, 256, 0};
        EXPECT_EQ(packed_weight_bytes(v, simd_level::avx2), 0u) << type_name(t);
        EXPECT_EQ(pack_weights(v, simd_level::avx2, dst.span()), matmul_status::unsupported_type);
    }
    for (const ggml_type t : {ggml_type::q8_1, ggml_type::q2_k}) {
        const weight_view v{t, w.data(), 2, 256, 0};
        EXPECT_EQ(packed_weight_bytes(v, simd_level::avx512), 0u) << type_name(t);
        EXPECT_EQ(pack_weights(v, simd_level::avx512, dst.span()), matmul_status::unsupported_type);
    }
    for (const ggml_type t : all_types) { // every type the engine computes with packs
        EXPECT_GT(packed_weight_bytes({t, w.data(), 2, 256, 0}, simd_level::avx512), 0u)
            << type_name(t);
    }
    // What matmul refuses, a short or misaligned destination.
    EXPECT_EQ(pack_weights({ggml_type::q8_0, w.data(), 2, 33, 0}, simd_level::avx512, dst.span()),
              matmul_status::bad_shape);
    EXPECT_EQ(packed_weight_bytes({ggml_type::q8_0, w.data(), -1, 32, 0}, simd_level::avx512), 0u);
    EXPECT_EQ(
        pack_weights({ggml_type::q8_0, w.data() + 1, 2, 32, 0}, simd_level::avx512, dst.span()),
        matmul_status::misaligned);
    const size_t need = packed_weight_bytes(q4, simd_level::avx512);
    EXPECT_EQ(pack_weights(q4, simd_level::avx512, dst.span().first(need - 1)),
              matmul_status::scratch_too_small);
    EXPECT_EQ(pack_weights(q4, simd_level::avx512, dst.span().subspan(32)),
              matmul_status::misaligned);
}

TEST(matmul, rows_of_a_packed_matrix_as_a_view_of_their_own) {
    // sub_rows keeps the packed copy at whole groups of 16 rows, and falls
    // back to the rows elsewhere; either way the rows' results are those
    // of the whole matrix (bit for bit where both run the same kernels).
    thread_pool pool(2);
    for (const simd_level level : levels()) {
        for (const ggml_type t : {ggml_type::q4_0, ggml_type::q8_0, ggml_type::q4_k}) {
            const matrix& m = random_matrix(t, 53, 512);
            const auto x = normal(2 * 512, 14);
            const weight_view whole = view_for(m, level);
            const auto all = run(m, x, 2, pool, level);
            for (const auto& [r0, r1] : {std::pair<int64_t, int64_t>{16, 53}, {32, 48}, {5, 20}}) {
                const weight_view v = sub_rows(whole, r0, r1);
                EXPECT_EQ(v.rows, r1 - r0);
                EXPECT_EQ(v.packed != nullptr, whole.packed != nullptr && r0 % 16 == 0);
                std::vector<float> y(size_t(2 * (r1 - r0)));
                std::vector<std::byte> scratch(matmul_scratch_bytes(v, 2));
                ASSERT_EQ(matmul(v, x.data(), 2, y.data(), pool, scratch, level),
                          matmul_status::ok);
                for (int64_t tok = 0; tok < 2; ++tok) {
                    for (int64_t r = r0; r < r1; ++r) {
                        const float want = all[size_t(tok * 53 + r)];
                        const float got = y[size_t(tok * (r1 - r0) + r - r0)];
                        if (v.packed == whole.packed || v.packed) {
                            ASSERT_EQ(got, want) << type_name(t) << " " << simd_name(level);
                        } else {
                            ASSERT_NEAR(got, want, 1e-2 * std::fabs(want) + 1e-3)
                                << type_name(t) << " " << simd_name(level);
                        }
                    }
                }
            }
        }
    }
}

TEST(matmul, f16_weights_track_the_float_originals) {
    thread_pool pool(2);
    const matrix& m = random_matrix(ggml_type::f16, 37, 2048);
    const auto x = normal(3 * 2048, 7);
    const auto y = run(m, x, 3, pool, default_simd());
    EXPECT_LE(worst_error(m.original, 37, 2048, x, 3, y), 1e-3);
}

TEST(matmul, bf16_weights_track_the_float_originals) {
    // BF16 keeps 8 significant bits: each weight within half a unit in
    // the last place, 2^-8 of itself.
    thread_pool pool(2);
    const matrix& m = random_matrix(ggml_type::bf16, 37, 2048);
    for (size_t i = 0; i < m.original.size(); ++i) {
        ASSERT_LE(std::fabs(m.values[i] - m.original[i]), std::fabs(m.original[i]) * 0x1p-8f) << i;
    }
    const auto x = normal(3 * 2048, 7);
    for (const simd_level level : levels()) {
        const auto y = run(m, x, 3, pool, level);
        EXPECT_LE(worst_error(m.original, 37, 2048, x, 3, y), 1e-2) << simd_name(level);
        EXPECT_LE(worst_error(m.values, 37, 2048, x, 3, y), 1e-6) << simd_name(level);
    }
}

TEST(matmul, simd_and_scalar_agree) {
    if (detected_simd() == simd_level::scalar) {
        GTEST_SKIP() << "no SIMD kernels on this CPU";
    }
    thread_pool pool(2);
    for (const ggml_type t : all_types) {
        const matrix& m = random_matrix(t, 37, 2048);
        for (const int64_t n_tokens : {1, 2, 3, 4, 5, 17}) {
            const auto x = normal(static_cast<size_t>(n_tokens * 2048), 8);
            const auto a = run(m, x, n_tokens, pool, simd_level::scalar);
            // Same integer sums, floats added in another order.
            double scale = 0;
            for (float v : a) {
                scale = std::max(scale, static_cast<double>(std::fabs(v)));
            }
            for (const simd_level level : levels()) {
                const auto b = run(m, x, n_tokens, pool, level);
                for (size_t i = 0; i < a.size(); ++i) {
                    ASSERT_NEAR(a[i], b[i], 1e-5 * scale)
                        << type_name(t) << " " << simd_name(level) << " " << i;
                }
            }
        }
    }
}

TEST(matmul, rows_of_32_blocks_that_are_not_whole_256s) {
    // The widths of models whose rows fall back from the K-quants
    // (Qwen2.5-0.5B's 896, SmolLM's 576 and 960) and ones short of the
    // one-token kernel's 8-block groups: every block type of 32, both
    // levels, against the double reference and against each other.
    thread_pool pool(2);
    for (const ggml_type t :
         {ggml_type::q8_0, ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1}) {
        for (const int64_t cols : {32, 224, 576, 896, 960}) {
            const matrix& m = random_matrix(t, 19, cols);
            for (const int64_t n_tokens : {1, 2, 5}) {
                const auto x = normal(static_cast<size_t>(n_tokens * cols), 12);
                std::vector<std::vector<float>> ys;
                for (const simd_level level : levels()) {
                    ys.push_back(run(m, x, n_tokens, pool, level));
                    EXPECT_LE(worst_error(m.values, 19, cols, x, n_tokens, ys.back()), tolerance(t))
                        << type_name(t) << " cols " << cols << " tokens " << n_tokens << " "
                        << simd_name(level);
                }
                double scale = 0; // same integer sums, floats added in another order
                for (const float v : ys[0]) {
                    scale = std::max(scale, static_cast<double>(std::fabs(v)));
                }
                for (size_t l = 1; l < ys.size(); ++l) {
                    for (size_t i = 0; i < ys[0].size(); ++i) {
                        ASSERT_NEAR(ys[0][i], ys[l][i], 1e-5 * scale)
                            << type_name(t) << " cols " << cols << " tokens " << n_tokens << " "
                            << simd_name(levels()[l]) << " " << i;
                    }
                }
            }
        }
    }
}

TEST(matmul, thread_count_does_not_change_the_result) {
    thread_pool one(1);
    thread_pool four(4);
    for (const ggml_type t : all_types) {
        const matrix& m = random_matrix(t, 37, 256);
        const auto x = normal(17 * 256, 9);
        const auto a = run(m, x, 17, one, default_simd());
        const auto b = run(m, x, 17, four, default_simd());
        for (size_t i = 0; i < a.size(); ++i) {
            ASSERT_EQ(a[i], b[i]) << type_name(t) << " " << i;
        }
    }
}

TEST(matmul, padded_rows_and_the_convenience_overload) {
    thread_pool pool(2);
    for (const ggml_type t : all_types) {
        const matrix& m = random_matrix(t, 5, 256);
        const size_t rb = *row_bytes(t, 256);
        const size_t stride = rb + 64;
        std::vector<uint8_t> padded(stride * 5, 0xee);
        for (int r = 0; r < 5; ++r) {
            std::memcpy(padded.data() + r * stride, m.bytes.data() + r * rb, rb);
        }
        const auto x = normal(2 * 256, 10);
        std::vector<float> y(10);
        ASSERT_EQ(matmul({t, padded.data(), 5, 256, stride}, x.data(), 2, y.data(), pool),
                  matmul_status::ok);
        EXPECT_LE(worst_error(m.values, 5, 256, x, 2, y), tolerance(t)) << type_name(t);
    }
}

TEST(matmul, refuses_what_it_cannot_do_and_leaves_y_alone) {
    thread_pool pool(2);
    std::vector<uint8_t> w(4096 * 4);
    std::vector<float> x(1024, 1.0f);
    std::vector<float> y(64, 42.0f);
    std::vector<std::byte> scratch(1 << 16);
    auto mm = [&](weight_view v, int64_t n) {
        return matmul(v, x.data(), n, y.data(), pool, scratch, default_simd());
    };
    EXPECT_EQ(mm({ggml_type::q2_k, w.data(), 2, 256, 0}, 1), matmul_status::unsupported_type);
    EXPECT_EQ(mm({ggml_type::q8_k, w.data(), 2, 256, 0}, 1), matmul_status::unsupported_type);
    EXPECT_EQ(mm({ggml_type::q8_0, w.data(), 2, 33, 0}, 1), matmul_status::bad_shape);
    EXPECT_EQ(mm({ggml_type::q4_k, w.data(), 2, 128, 0}, 1), matmul_status::bad_shape);
    EXPECT_EQ(mm({ggml_type::q8_0, w.data(), -1, 32, 0}, 1), matmul_status::bad_shape);
    EXPECT_EQ(mm({ggml_type::q8_0, w.data(), 2, 32, 0}, -1), matmul_status::bad_shape);
    EXPECT_EQ(mm({ggml_type::q8_0, w.data(), 2, 64, 34}, 1), matmul_status::bad_shape);
    EXPECT_EQ(mm({ggml_type::f32, w.data() + 2, 2, 8, 0}, 1), matmul_status::misaligned);
    EXPECT_EQ(mm({ggml_type::q8_0, w.data() + 1, 2, 32, 0}, 1), matmul_status::misaligned);
    EXPECT_EQ(mm({ggml_type::q8_0, w.data(), 2, 32, 35}, 1), matmul_status::misaligned);
    for (const float v : y) {
        ASSERT_EQ(v, 42.0f);
    }
    const weight_view q{ggml_type::q6_k, w.data(), 2, 256, 0};
    EXPECT_EQ(matmul(q, x.data(), 3, y.data(), pool,
                     std::span(scratch).first(matmul_scratch_bytes(q, 3) - 1), default_simd()),
              matmul_status::scratch_too_small);
    EXPECT_EQ(matmul_scratch_bytes({ggml_type::f16, w.data(), 2, 256, 0}, 3), 0u);
    EXPECT_EQ(matmul_status_name(matmul_status::misaligned), "misaligned");
}

TEST(matmul, many_products_of_one_input_give_each_matmuls_bits) {
    // A layer's Q, K and V (and its gate and up) as a K-quant model mixes
    // them: two Q8_0 matrices (their rows shared), a Q4_K and a Q6_K one
    // (the K-quants' rows shared), an F16 one (no rows), and first a Q8_0
    // one with no rows (nothing to quantize for, nor to share).
    thread_pool pool(2);
    const int64_t cols = 512;
    const matrix& a = random_matrix(ggml_type::q8_0, 37, cols);
    const matrix& b = random_matrix(ggml_type::q8_0, 64, cols);
    const matrix& c = random_matrix(ggml_type::q4_k, 48, cols);
    const matrix& d = random_matrix(ggml_type::q6_k, 33, cols);
    const matrix& e = random_matrix(ggml_type::f16, 20, cols);
    const matrix* ms[] = {&a, &b, &c, &d, &e};
    for (const simd_level level : levels()) {
        for (const act_precision prec : {act_precision::int8, act_precision::int8x2}) {
            for (const int64_t n : {1, 5, 17, 40}) {
                SCOPED_TRACE(std::string(simd_name(level)) + ", " + std::to_string(n) + " tokens" +
                             (prec == act_precision::int8x2 ? ", int8x2" : ""));
                const auto x = normal(static_cast<size_t>(n * cols), 5);
                std::vector<weight_view> views{{ggml_type::q8_0, a.bytes.data(), 0, cols, 0}};
                for (const matrix* m : ms) {
                    views.push_back(view_for(*m, level));
                }
                std::vector<std::vector<float>> ys;
                std::vector<matmul_job> jobs;
                size_t need = 0;
                for (const weight_view& v : views) {
                    ys.emplace_back(static_cast<size_t>(n * v.rows), NAN);
                    need += matmul_scratch_bytes(v, n, prec);
                }
                for (size_t i = 0; i < views.size(); ++i) {
                    jobs.push_back({&views[i], ys[i].data()});
                }
                std::vector<std::byte> scratch(need, std::byte{0xab});
                ASSERT_EQ(matmul_many(jobs, x.data(), n, pool, scratch, level, prec),
                          matmul_status::ok);
                for (size_t i = 0; i < std::size(ms); ++i) {
                    const auto want = run(*ms[i], x, n, pool, level, prec);
                    ASSERT_EQ(0, std::memcmp(want.data(), ys[i + 1].data(), want.size() * 4))
                        << type_name(ms[i]->type);
                }
                // The rowless job quantized nothing, and b read a's rows:
                // their parts of the scratch were never written.
                const size_t none_bytes = matmul_scratch_bytes(views[0], n, prec);
                const size_t a_bytes = matmul_scratch_bytes(views[1], n, prec);
                const size_t b_bytes = matmul_scratch_bytes(views[2], n, prec);
                ASSERT_GT(b_bytes, 0u);
                const auto untouched = [&](size_t from, size_t bytes) {
                    return size_t(std::count(scratch.begin() + long(from),
                                             scratch.begin() + long(from + bytes),
                                             std::byte{0xab}));
                };
                EXPECT_EQ(untouched(0, none_bytes), none_bytes);
                EXPECT_EQ(untouched(none_bytes + a_bytes, b_bytes), b_bytes);
            }
        }
    }
}

TEST(matmul, many_products_check_every_job_before_running_any) {
    thread_pool pool(2);
    const matrix& a = random_matrix(ggml_type::q8_0, 16, 256);
    const matrix& b = random_matrix(ggml_type::q8_0, 16, 512);
    const auto x = normal(512 * 3, 5);
    std::vector<float> ya(16 * 3, 42.0f), yb(16 * 3, 42.0f);
    std::vector<std::byte> scratch(1 << 20);
    const weight_view va = view_for(a, default_simd()), vb = view_for(b, default_simd());
    const weight_view bad{ggml_type::q2_k, b.bytes.data(), 16, 256, 0};
    const matmul_job mixed[] = {{&va, ya.data()}, {&vb, yb.data()}};
    EXPECT_EQ(matmul_many(mixed, x.data(), 3, pool, scratch, default_simd()),
              matmul_status::bad_shape); // columns differ
    const matmul_job unsupported[] = {{&va, ya.data()}, {&bad, yb.data()}};
    EXPECT_EQ(matmul_many(unsupported, x.data(), 3, pool, scratch, default_simd()),
              matmul_status::unsupported_type);
    const matmul_job no_y[] = {{&va, ya.data()}, {&va, nullptr}};
    EXPECT_EQ(matmul_many(no_y, x.data(), 3, pool, scratch, default_simd()),
              matmul_status::bad_shape);
    const matmul_job two[] = {{&va, ya.data()}, {&va, yb.data()}};
    const size_t one = matmul_scratch_bytes(va, 3);
    EXPECT_EQ(
        matmul_many(two, x.data(), 3, pool, std::span(scratch).first(2 * one - 1), default_simd()),
        matmul_status::scratch_too_small);
    for (const float v : ya) {
        ASSERT_EQ(v, 42.0f);
    }
    for (const float v : yb) {
        ASSERT_EQ(v, 42.0f);
    }
    EXPECT_EQ(matmul_many(two, x.data(), 3, pool, default_simd()), matmul_status::ok);
    EXPECT_EQ(ya, yb);
    EXPECT_EQ(ya, run(a, x, 3, pool, default_simd()));
}

TEST(matmul, empty_shapes) {
    thread_pool pool(2);
    std::vector<float> x(16, 1.0f);
    std::vector<float> y(16, 42.0f);
    std::vector<uint8_t> w(64);
    EXPECT_EQ(matmul({ggml_type::f32, w.data(), 4, 0, 0}, x.data(), 2, y.data(), pool),
              matmul_status::ok);
    for (int i = 0; i < 8; ++i) {
        EXPECT_EQ(y[i], 0.0f); // a sum of nothing
    }
    EXPECT_EQ(y[8], 42.0f);
    EXPECT_EQ(matmul({ggml_type::q8_0, w.data(), 0, 32, 0}, x.data(), 2, y.data(), pool),
              matmul_status::ok);
    EXPECT_EQ(matmul({ggml_type::q8_0, w.data(), 1, 32, 0}, x.data(), 0, y.data(), pool),
              matmul_status::ok);
    EXPECT_EQ(y[8], 42.0f);
}

TEST(matmul, extreme_activations_stay_finite) {
    thread_pool pool(2);
    for (const ggml_type t : all_types) {
        const matrix& m = random_matrix(t, 8, 256);
        std::vector<float> x(2 * 256, 0.0f); // token 0 all zeros
        for (int k = 0; k < 256; ++k) {
            x[256 + k] = k == 17 ? 3e4f : 1e-20f; // token 1: one spike
        }
        for (const simd_level level : levels()) {
            const auto y = run(m, x, 2, pool, level);
            for (int r = 0; r < 8; ++r) {
                EXPECT_EQ(y[r], 0.0f) << type_name(t);
                const double want = 3e4 * m.values[r * 256 + 17];
                EXPECT_NEAR(y[8 + r], want, 1e-3 * 3e4 * 4) << type_name(t);
            }
        }
    }
}

// ---- thread pool -----------------------------------------------------------

TEST(thread_pool, every_item_exactly_once_in_grain_sized_ranges) {
    for (int threads = 1; threads <= 4; ++threads) {
        thread_pool pool(threads);
        EXPECT_EQ(pool.size(), threads);
        for (const int64_t n : {0, 1, 2, 7, 100, 10007}) {
            for (const int64_t grain : {1, 5, 1000}) {
                std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
                std::mutex mu;
                std::vector<std::pair<int64_t, int64_t>> ranges;
                pool.parallel_for(
                    n,
                    [&](int64_t b, int64_t e) {
                        for (int64_t i = b; i < e; ++i) {
                            seen[static_cast<size_t>(i)].fetch_add(1);
                        }
                        std::lock_guard lock(mu);
                        ranges.emplace_back(b, e);
                    },
                    grain);
                for (int64_t i = 0; i < n; ++i) {
                    ASSERT_EQ(seen[static_cast<size_t>(i)].load(), 1)
                        << threads << " threads, n " << n << ", item " << i;
                }
                for (const auto& [b, e] : ranges) {
                    ASSERT_LT(b, e);
                    ASSERT_TRUE(e - b >= grain || e == n) << b << ".." << e;
                }
            }
        }
    }
}

TEST(thread_pool, ranges_shrink_toward_the_end_of_the_loop) {
    // So that no thread is left waiting on another's last big range: the
    // ranges that end the loop are far shorter than the first ones.
    thread_pool pool(2);
    std::mutex mu;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    pool.parallel_for(10007, [&](int64_t b, int64_t e) {
        std::lock_guard lock(mu);
        ranges.emplace_back(b, e);
    });
    std::sort(ranges.begin(), ranges.end());
    ASSERT_GE(ranges.size(), 3u);
    const int64_t first = ranges.front().second - ranges.front().first;
    const int64_t last = ranges.back().second - ranges.back().first;
    EXPECT_EQ(ranges.back().second, 10007);
    EXPECT_LE(last * 8, first) << "first range " << first << " items, last " << last;
}

TEST(thread_pool, the_caller_and_the_workers_share_the_work) {
    thread_pool pool(4);
    std::mutex mu;
    std::set<std::thread::id> ids;
    pool.parallel_for(
        16,
        [&](int64_t, int64_t) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            std::lock_guard lock(mu);
            ids.insert(std::this_thread::get_id());
        },
        1);
    EXPECT_GE(ids.size(), 2u);
    EXPECT_LE(ids.size(), 4u);

    thread_pool alone(1);
    ids.clear();
    alone.parallel_for(100, [&](int64_t, int64_t) { ids.insert(std::this_thread::get_id()); });
    EXPECT_EQ(ids, std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST(thread_pool, many_small_loops_in_a_row) {
    thread_pool pool(3);
    std::atomic<int64_t> sum{0};
    const long loops = scaled(20000);
    for (long i = 0; i < loops; ++i) {
        pool.parallel_for(
            6, [&](int64_t b, int64_t e) { sum.fetch_add(e - b, std::memory_order_relaxed); }, 1);
    }
    EXPECT_EQ(sum.load(), 6 * loops);
}

TEST(thread_pool, a_nested_loop_runs_inline) {
    thread_pool pool(3);
    std::atomic<int> inner{0};
    pool.parallel_for(
        8,
        [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
                pool.parallel_for(10, [&](int64_t ib, int64_t ie) {
                    inner.fetch_add(static_cast<int>(ie - ib));
                });
            }
        },
        1);
    EXPECT_EQ(inner.load(), 80);
}

TEST(thread_pool, callers_on_two_threads_take_turns) {
    thread_pool pool(3);
    std::atomic<int64_t> a{0};
    std::atomic<int64_t> b{0};
    const long loops = scaled(2000);
    auto caller = [&](std::atomic<int64_t>& sum) {
        for (long i = 0; i < loops; ++i) {
            pool.parallel_for(
                50, [&](int64_t lo, int64_t hi) { sum.fetch_add(hi - lo); }, 4);
        }
    };
    std::thread other(caller, std::ref(b));
    caller(a);
    other.join();
    EXPECT_EQ(a.load(), 50 * loops);
    EXPECT_EQ(b.load(), 50 * loops);
}

TEST(thread_pool, can_be_made_and_destroyed_at_any_time) {
    for (int i = 0; i < 50; ++i) {
        thread_pool idle(4); // never used
    }
    for (int i = 0; i < 50; ++i) {
        thread_pool used(3);
        std::atomic<int> n{0};
        used.parallel_for(
            100, [&](int64_t b, int64_t e) { n.fetch_add(static_cast<int>(e - b)); }, 1);
        EXPECT_EQ(n.load(), 100);
    } // destroyed right after a loop, workers possibly still spinning
    thread_pool sleepy(2);
    std::this_thread::sleep_for(std::chrono::milliseconds(20)); // workers asleep
    std::atomic<int> n{0};
    sleepy.parallel_for(10, [&](int64_t b, int64_t e) { n.fetch_add(static_cast<int>(e - b)); });
    EXPECT_EQ(n.load(), 10);
    thread_pool zero(0);
    EXPECT_EQ(zero.size(), 1);
}

} // namespace
