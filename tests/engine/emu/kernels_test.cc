// SPDX-License-Identifier: MIT
//
// The CUDA backend's kernels (cuda_kernels.cu, through its launch
// functions) against references computed here in double: every weight
// layout of the matmul, with token counts and row counts that are not
// multiples of the kernels' tiles; the conversions to halves (rows beyond
// their range scaled, not clamped, and the scale undone); the norms with
// and without a gather; RoPE in both pairings, partial and scaled; K/V rows
// written to a paged cache with shuffled block tables at the documented
// layout, and attention over it with GQA, several 128-key chunks and head
// sizes up to the largest; an allocation that fails leaving no error for
// the next launch.
//
// Built twice: cuda_emu_kernels_test on the host emulation of the device
// (LLMOS_CUDA_EMU), where the results are bit for bit what the host's math
// gives and the emulator itself is tested too: that it catches what a
// device would (a host pointer, a bad launch, a copy the wrong way) and
// shows what a device would hide (a missing barrier); and its graphs:
// captured work runs at each launch of the graph, with the arguments of
// the capture, and what a capture forbids fails as on a device. And
// cuda_kernels_test on the CUDA backend itself, for a GPU (the device's
// math library and FMA contraction allowed a few units in the last place;
// every case skips, saying why, without a device).
#include "cuda_backend.hh"
#include "cuda_backend_kernels.hh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <gtest/gtest.h>
#include <limits>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/quant.hh>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

using namespace llmos::engine;
using namespace llmos::engine::cuda_detail;

namespace {

/// Device memory of n T's, freed with it.
template <typename T>
struct dmem {
    T* p = nullptr;
    size_t n = 0;
    explicit dmem(size_t count)
        : n(count) {
        void* q = nullptr;
        EXPECT_EQ(cudaMalloc(&q, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
        p = static_cast<T*>(q);
    }
    explicit dmem(const std::vector<T>& v)
        : dmem(v.size()) {
        put(v);
    }
    ~dmem() { cudaFree(p); }
    dmem(const dmem&) = delete;
    dmem& operator=(const dmem&) = delete;
    void put(const std::vector<T>& v) {
        ASSERT_EQ(v.size(), n);
        ASSERT_EQ(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    std::vector<T> get() const {
        std::vector<T> v(n);
        EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
        return v;
    }
};

std::vector<float> randoms(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) {
        x = d(g);
    }
    return v;
}

ggml_type gguf_type(wkind k) {
    switch (k) {
    case wkind::f32:
        return ggml_type::f32;
    case wkind::f16:
        return ggml_type::f16;
    case wkind::bf16:
        return ggml_type::bf16;
    case wkind::q8_0:
        return ggml_type::q8_0;
    case wkind::q4_0:
        return ggml_type::q4_0;
    case wkind::q4_1:
        return ggml_type::q4_1;
    case wkind::q5_0:
        return ggml_type::q5_0;
    case wkind::q5_1:
        return ggml_type::q5_1;
    case wkind::q4_k:
        return ggml_type::q4_k;
    case wkind::q5_k:
        return ggml_type::q5_k;
    case wkind::q6_k:
        return ggml_type::q6_k;
    }
    return ggml_type::f32;
}

const wkind all_kinds[] = {wkind::f32,  wkind::f16,  wkind::bf16, wkind::q8_0,
                           wkind::q4_0, wkind::q4_1, wkind::q5_0, wkind::q5_1,
                           wkind::q4_k, wkind::q5_k, wkind::q6_k};

/// Row widths to try: not whole 64-element steps for the 32-element types,
/// one and two super-blocks for the K-quants.
std::vector<int64_t> widths(wkind k) {
    if (info(gguf_type(k))->block_elems == 256) {
        return {256, 512};
    }
    return {64, 96};
}

std::string kind_name(wkind k) {
    return std::string(info(gguf_type(k))->name);
}

/// A rows x cols weight matrix in `k`'s GGUF layout, and its values as the
/// engine's dequantizer reads them back.
struct weights {
    std::vector<uint8_t> bytes;
    std::vector<float> values;
};

weights make_weights(wkind k, int64_t rows, int64_t cols, uint32_t seed) {
    const ggml_type t = gguf_type(k);
    const uint64_t rb = *row_bytes(t, uint64_t(cols));
    const std::vector<float> src = randoms(size_t(rows * cols), seed);
    weights w;
    w.bytes.resize(size_t(rb * uint64_t(rows)));
    w.values.resize(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
        uint8_t* dst = w.bytes.data() + size_t(r) * rb;
        if (k == wkind::f32) {
            std::memcpy(dst, src.data() + r * cols, size_t(cols) * 4);
        } else {
            EXPECT_EQ(quantize_row(t, src.data() + r * cols, dst, cols), quant_status::ok);
        }
        EXPECT_EQ(dequantize_row(t, dst, w.values.data() + r * cols, cols), quant_status::ok);
    }
    return w;
}

#ifdef LLMOS_CUDA_EMU
/// The host's math, exactly (the emulator runs the kernels' code on it).
constexpr bool emulated = true;
#else
constexpr bool emulated = false;
#endif

/// The kernel cases: they skip without a device.
class kernels : public ::testing::Test {
protected:
    void SetUp() override {
        const cuda_device_info di = cuda_probe();
        if (!di.available) {
            GTEST_SKIP() << "no CUDA device: " << di.reason;
        }
    }
};

using cuda_kernel_matmul = kernels;
using cuda_kernel_dequant = kernels;
using cuda_kernel_elementwise = kernels;
using cuda_kernel_rms_norm = kernels;
using cuda_kernel_rope = kernels;
using cuda_kernel_attention = kernels;
using cuda_kernel_errors = kernels;

} // namespace

TEST_F(cuda_kernel_matmul, every_weight_layout_matches_a_double_reference) {
    for (wkind k : all_kinds) {
        for (int64_t rows : {13, 40}) {
            for (int64_t cols : widths(k)) {
                const weights w = make_weights(k, rows, cols, uint32_t(rows * 7 + cols));
                dmem<uint8_t> dw(w.bytes);
                for (int64_t T : {1, 8, 9, 17}) {
                    SCOPED_TRACE(kind_name(k) + " " + std::to_string(rows) + "x" +
                                 std::to_string(cols) + ", " + std::to_string(T) + " tokens");
                    const std::vector<float> x = randoms(size_t(T * cols), uint32_t(T + cols));
                    dmem<float> dx(x), dy(size_t(T * rows));
                    ASSERT_EQ(matmul(k, dw.p, rows, cols, dx.p, T, dy.p, nullptr), cudaSuccess);
                    const std::vector<float> y = dy.get();
                    for (int64_t t = 0; t < T; ++t) {
                        for (int64_t r = 0; r < rows; ++r) {
                            double ref = 0, mag = 0;
                            for (int64_t c = 0; c < cols; ++c) {
                                ref += double(w.values[size_t(r * cols + c)]) *
                                       x[size_t(t * cols + c)];
                                mag += std::fabs(double(w.values[size_t(r * cols + c)]) *
                                                 x[size_t(t * cols + c)]);
                            }
                            ASSERT_NEAR(y[size_t(t * rows + r)], ref, 1e-5 * mag + 1e-6)
                                << "token " << t << ", row " << r;
                        }
                    }
                }
            }
        }
    }
}

TEST_F(cuda_kernel_matmul, an_empty_product_launches_nothing) {
    EXPECT_EQ(matmul(wkind::f32, nullptr, 0, 64, nullptr, 4, nullptr, nullptr), cudaSuccess);
    EXPECT_EQ(matmul(wkind::f32, nullptr, 8, 64, nullptr, 0, nullptr, nullptr), cudaSuccess);
}

TEST_F(cuda_kernel_dequant, halves_are_the_dequantized_values_rounded) {
    for (wkind k : all_kinds) {
        SCOPED_TRACE(kind_name(k));
        const int64_t rows = 7, cols = widths(k).back();
        const weights w = make_weights(k, rows, cols, 99);
        dmem<uint8_t> dw(w.bytes);
        dmem<uint16_t> out(size_t(rows * cols));
        ASSERT_EQ(dequant_f16(k, dw.p, rows, cols, out.p, nullptr), cudaSuccess);
        const std::vector<uint16_t> h = out.get();
        for (size_t i = 0; i < h.size(); ++i) {
            if (emulated) {
                ASSERT_EQ(h[i], fp32_to_fp16(w.values[i])) << "element " << i;
            } else {
                // d q + m may be one FMA on a device: a half's last place.
                const float want = fp16_to_fp32(fp32_to_fp16(w.values[i]));
                ASSERT_NEAR(fp16_to_fp32(h[i]), want, std::ldexp(std::fabs(want), -10) + 6e-8f)
                    << "element " << i;
            }
        }
    }
}

// Rows beyond F16's range are scaled by a power of two into it, each row
// by its own, not clamped; a row that fits is converted as it is; inf and
// NaN stay. unscale() gives the rows their magnitude back, exactly.
TEST_F(cuda_kernel_elementwise, to_f16_scales_rows_beyond_the_halves_range_and_unscale_undoes_it) {
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t cols : {333, 40}) { // 256 threads a row and more; one warp pair
        SCOPED_TRACE(std::to_string(cols) + " columns");
        const int64_t rows = 7;
        std::vector<float> x = randoms(size_t(rows * cols), uint32_t(cols), -8, 8);
        auto at = [&](int64_t r, int64_t c) -> float& { return x[size_t(r * cols + c)]; };
        // Row 0 fits. Row 1 peaks at 70000 (halved), row 2 at -1e30,
        // row 3 at F16's largest (fits), row 4 just past it (halved; it
        // would round to 65504, but the test is the value), row 5 has
        // inf, -inf and NaN beside 1e5 (halved; they stay), row 6 is zeros.
        at(1, cols / 2) = 70000.0f;
        at(2, 3) = -1e30f;
        at(3, cols - 1) = 65504.0f;
        at(4, 0) = 65519.0f;
        at(5, 1) = inf;
        at(5, 2) = -inf;
        at(5, 5) = nan;
        at(5, cols - 2) = 1e5f;
        for (int64_t c = 0; c < cols; ++c) {
            at(6, c) = 0.0f;
        }
        float big = 1.0f; // the scale of row 2: 2^-k, the first that fits
        while (1e30f * big > 65504.0f) {
            big *= 0.5f;
        }
        const std::vector<float> want_scale{1.0f, 0.5f, big, 1.0f, 0.5f, 0.5f, 1.0f};
        dmem<float> dx(x), scale(static_cast<size_t>(rows));
        dmem<uint16_t> h(static_cast<size_t>(rows * cols));
        ASSERT_EQ(to_f16(dx.p, h.p, scale.p, rows, cols, nullptr), cudaSuccess);
        const std::vector<float> got_scale = scale.get();
        EXPECT_EQ(got_scale, want_scale);
        const std::vector<uint16_t> got = h.get();
        for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
                const float v = at(r, c);
                const uint16_t g = got[size_t(r * cols + c)];
                if (std::isnan(v)) {
                    EXPECT_EQ(g & 0x7c00, 0x7c00) << "NaN: all exponent bits,";
                    EXPECT_NE(g & 0x03ff, 0) << "and a mantissa";
                } else if (std::isinf(v)) {
                    EXPECT_EQ(g, v > 0 ? 0x7c00 : 0xfc00);
                } else {
                    ASSERT_EQ(g, fp32_to_fp16(v * want_scale[size_t(r)]))
                        << "row " << r << ", column " << c;
                    ASSERT_LE(std::fabs(fp16_to_fp32(g)), 65504.0f);
                }
            }
        }
        // Three outputs of rows x (5, 7, 300): the scaled rows multiplied
        // back, the others untouched, bit for bit.
        std::vector<std::vector<float>> ys;
        std::vector<std::unique_ptr<dmem<float>>> dys;
        std::vector<scaled_rows> outs;
        for (int64_t w : {5, 7, 300}) {
            ys.push_back(randoms(size_t(rows * w), uint32_t(w), -2, 2));
            dys.push_back(std::make_unique<dmem<float>>(ys.back()));
            outs.push_back({dys.back()->p, w});
        }
        for (size_t n : {size_t(1), outs.size()}) {
            ASSERT_EQ(unscale(scale.p, rows, std::span(outs).first(n), nullptr), cudaSuccess);
            for (size_t o = 0; o < outs.size(); ++o) {
                const int64_t w = outs[o].width;
                std::vector<float> want = ys[o];
                if (o < n) {
                    for (size_t i = 0; i < want.size(); ++i) {
                        want[i] /= want_scale[i / size_t(w)];
                    }
                    ys[o] = want;
                }
                EXPECT_EQ(dys[o]->get(), want) << "output " << o << " of " << n;
            }
        }
        const scaled_rows four[4] = {outs[0], outs[1], outs[2], outs[0]};
        EXPECT_EQ(unscale(scale.p, rows, four, nullptr), cudaErrorInvalidValue);
    }
}

TEST_F(cuda_kernel_elementwise, to_f16_to_bf16_add_bias_add_and_swiglu) {
    const int64_t rows = 3, width = 333, n = rows * width; // not whole 256-thread blocks
    const std::vector<float> a = randoms(size_t(n), 1, -8, 8), b = randoms(size_t(n), 2, -8, 8);
    const std::vector<float> bias = randoms(size_t(width), 3);
    dmem<float> da(a), db(b), dbias(bias), scale(static_cast<size_t>(rows));
    dmem<uint16_t> h(static_cast<size_t>(n)), bh(static_cast<size_t>(n));
    ASSERT_EQ(to_f16(da.p, h.p, scale.p, rows, width, nullptr), cudaSuccess);
    EXPECT_EQ(scale.get(), std::vector<float>(size_t(rows), 1.0f));
    ASSERT_EQ(to_bf16(da.p, bh.p, n, nullptr), cudaSuccess);
    const std::vector<uint16_t> hv = h.get(), bv = bh.get();
    for (size_t i = 0; i < hv.size(); ++i) {
        ASSERT_EQ(hv[i], fp32_to_fp16(a[i])) << i;
        ASSERT_EQ(bv[i], fp32_to_bf16(a[i])) << i;
    }
    ASSERT_EQ(add_bias(da.p, dbias.p, rows, width, nullptr), cudaSuccess);
    std::vector<float> ref = a;
    for (int64_t i = 0; i < n; ++i) {
        ref[size_t(i)] += bias[size_t(i % width)];
    }
    EXPECT_EQ(da.get(), ref);
    ASSERT_EQ(add(da.p, db.p, n, nullptr), cudaSuccess);
    for (size_t i = 0; i < ref.size(); ++i) {
        ref[i] += b[i];
    }
    EXPECT_EQ(da.get(), ref);
    ASSERT_EQ(swiglu(da.p, db.p, n, nullptr), cudaSuccess);
    for (size_t i = 0; i < ref.size(); ++i) {
        const float g = ref[i];
        ref[i] = g / (1.0f + std::exp(-g)) * b[i];
    }
    const std::vector<float> got = da.get();
    if (emulated) {
        EXPECT_EQ(got, ref);
    } else {
        // The device's expf: within a few units in the last place.
        for (size_t i = 0; i < ref.size(); ++i) {
            ASSERT_NEAR(got[i], ref[i], 1e-6f * (std::fabs(ref[i]) + 1e-3f)) << i;
        }
    }
}

TEST_F(cuda_kernel_rms_norm, rows_and_gathered_rows) {
    const int64_t rows = 5, n = 300;
    const std::vector<float> x = randoms(size_t(rows * n), 4, -3, 3), w = randoms(size_t(n), 5);
    dmem<float> dx(x), dw(w), dy(size_t(rows * n));
    const std::vector<int32_t> gather{4, 0, 2};
    dmem<int32_t> dg(gather);
    for (bool gathered : {false, true}) {
        SCOPED_TRACE(gathered ? "gathered" : "all rows");
        const int64_t out_rows = gathered ? int64_t(gather.size()) : rows;
        ASSERT_EQ(
            rms_norm(dx.p, dw.p, dy.p, out_rows, n, 1e-5f, gathered ? dg.p : nullptr, nullptr),
            cudaSuccess);
        const std::vector<float> y = dy.get();
        for (int64_t r = 0; r < out_rows; ++r) {
            const int64_t src = gathered ? gather[size_t(r)] : r;
            double ss = 0;
            for (int64_t i = 0; i < n; ++i) {
                ss += double(x[size_t(src * n + i)]) * x[size_t(src * n + i)];
            }
            const double scale = 1.0 / std::sqrt(ss / double(n) + 1e-5);
            for (int64_t i = 0; i < n; ++i) {
                ASSERT_NEAR(y[size_t(r * n + i)], x[size_t(src * n + i)] * scale * w[size_t(i)],
                            1e-5)
                    << "row " << r << ", element " << i;
            }
        }
    }
}

TEST_F(cuda_kernel_rope, both_pairings_partial_rotation_and_scale) {
    const uint32_t heads = 3, hd = 16;
    const int64_t stride = heads * hd + 8; // rows further apart than their heads
    const std::vector<row_desc> rd{{0, 0}, {0, 5}, {1, 300}, {0, 4095}};
    dmem<row_desc> drd(rd);
    for (bool neox : {false, true}) {
        for (uint32_t n_rot : {16u, 8u}) {
            for (double scale : {1.0, 4.0}) {
                SCOPED_TRACE(std::string(neox ? "neox" : "pairs") + ", n_rot " +
                             std::to_string(n_rot) + ", scale " + std::to_string(scale));
                std::vector<double> inv(n_rot / 2);
                for (uint32_t i = 0; i < n_rot / 2; ++i) {
                    inv[i] = std::pow(10000.0, -2.0 * i / n_rot);
                }
                dmem<double> dinv(inv);
                const std::vector<float> x = randoms(size_t(int64_t(rd.size()) * stride), 6);
                dmem<float> dx(x);
                ASSERT_EQ(rope(dx.p, int64_t(rd.size()), stride, heads, hd, n_rot, neox, drd.p,
                               dinv.p, scale, nullptr),
                          cudaSuccess);
                const std::vector<float> y = dx.get();
                std::vector<float> ref = x;
                for (size_t r = 0; r < rd.size(); ++r) {
                    for (uint32_t h = 0; h < heads; ++h) {
                        float* v = ref.data() + r * size_t(stride) + h * hd;
                        for (uint32_t i = 0; i < n_rot / 2; ++i) {
                            const double ang = double(rd[r].pos) / scale * inv[i];
                            const uint32_t a = neox ? i : 2 * i,
                                           b = neox ? i + n_rot / 2 : 2 * i + 1;
                            const double x0 = v[a], x1 = v[b];
                            v[a] = float(x0 * std::cos(ang) - x1 * std::sin(ang));
                            v[b] = float(x0 * std::sin(ang) + x1 * std::cos(ang));
                        }
                    }
                }
                for (size_t i = 0; i < y.size(); ++i) {
                    ASSERT_NEAR(y[i], ref[i], 2e-6) << "element " << i;
                }
            }
        }
    }
}

namespace {

/// A paged cache for the attention tests: two sequences with their own
/// block memory and shuffled block tables.
struct paged {
    uint32_t layers = 2, block_tokens = 16, kv_dim;
    uint64_t block_bytes;
    std::vector<uint32_t> tables; // both sequences' tables, back to back
    std::vector<seq_desc> seqs;
    explicit paged(uint32_t kvd)
        : kv_dim(kvd)
        , block_bytes(uint64_t(2) * 2 * 16 * kvd * 2) {}
};

} // namespace

TEST_F(cuda_kernel_attention, paged_cache_layout_gqa_and_several_chunks) {
    struct shape {
        uint32_t n_head, n_head_kv, head_dim;
    };
    for (shape s :
         {shape{4, 2, 16}, shape{4, 4, 64}, shape{8, 1, 128}, shape{2, 2, 256}, shape{2, 1, 512}}) {
        SCOPED_TRACE(std::to_string(s.n_head) + " heads, " + std::to_string(s.n_head_kv) +
                     " KV heads of " + std::to_string(s.head_dim));
        const uint32_t KV = s.n_head_kv * s.head_dim, QW = s.n_head * s.head_dim;
        const uint32_t len[2] = {300, 41}; // positions per sequence
        paged pc(KV);
        // Sequence 0: 19 blocks mapped in reverse over its own memory;
        // sequence 1: 3 blocks at physical 5, 0, 2 of another.
        const uint32_t nb0 = (len[0] + 15) / 16;
        std::vector<uint32_t> t0(nb0), t1{5, 0, 2};
        for (uint32_t b = 0; b < nb0; ++b) {
            t0[b] = nb0 - 1 - b;
        }
        pc.tables = t0;
        pc.tables.insert(pc.tables.end(), t1.begin(), t1.end());
        dmem<uint8_t> mem0(size_t(nb0 * pc.block_bytes)), mem1(size_t(6 * pc.block_bytes));
        pc.seqs = {{reinterpret_cast<uint64_t>(mem0.p), pc.block_bytes, 16, 0},
                   {reinterpret_cast<uint64_t>(mem1.p), pc.block_bytes, 16, nb0}};
        dmem<uint32_t> dtab(pc.tables);
        dmem<seq_desc> dseq(pc.seqs);
        const std::vector<uint8_t> before0 = mem0.get();

        // Every position's K and V, written to layer 1 in one launch.
        std::vector<row_desc> all;
        for (int32_t q = 0; q < 2; ++q) {
            for (uint32_t p = 0; p < len[q]; ++p) {
                all.push_back({q, int32_t(p)});
            }
        }
        const std::vector<float> k = randoms(all.size() * KV, 7), v = randoms(all.size() * KV, 8);
        {
            dmem<float> dk(k), dv(v);
            dmem<row_desc> drows(all);
            ASSERT_EQ(
                kv_write(dk.p, dv.p, int64_t(all.size()), KV, 1, drows.p, dseq.p, dtab.p, nullptr),
                cudaSuccess);
        }
        // The rows are where cuda.hh says: block table[pos / 16], then per
        // layer K then V as [16][kv_dim] halves. Layer 0 is untouched.
        const std::vector<uint8_t> after0 = mem0.get(), after1 = mem1.get();
        auto half_at = [&](int32_t q, uint32_t pos, int kv, uint32_t i) {
            const std::vector<uint8_t>& m = q ? after1 : after0;
            const uint32_t phys = (q ? t1 : t0)[pos / 16];
            const uint64_t off = phys * pc.block_bytes +
                                 ((uint64_t(1) * 2 + uint64_t(kv)) * 16 + pos % 16) * KV * 2 +
                                 uint64_t(i) * 2;
            uint16_t h;
            std::memcpy(&h, m.data() + off, 2);
            return h;
        };
        for (size_t r = 0; r < all.size(); r += 13) {
            for (uint32_t i = 0; i < KV; i += 7) {
                ASSERT_EQ(half_at(all[r].seq, uint32_t(all[r].pos), 0, i),
                          fp32_to_fp16(k[r * KV + i]));
                ASSERT_EQ(half_at(all[r].seq, uint32_t(all[r].pos), 1, i),
                          fp32_to_fp16(v[r * KV + i]));
            }
        }
        for (uint32_t b = 0; b < nb0; ++b) {
            const size_t layer0 = size_t(2 * 16 * KV * 2);
            ASSERT_TRUE(std::equal(before0.begin() + long(b * pc.block_bytes),
                                   before0.begin() + long(b * pc.block_bytes + layer0),
                                   after0.begin() + long(b * pc.block_bytes)))
                << "layer 0 of block " << b << " was written";
        }

        // Queries at the first position, inside the first chunk, at a
        // chunk's edges and at the end; one of the other sequence.
        const std::vector<row_desc> qr{{0, 0}, {0, 100}, {0, 127}, {0, 128}, {0, 299}, {1, 40}};
        const std::vector<float> q = randoms(qr.size() * QW, 9, -2, 2);
        dmem<float> dq(q);
        dmem<row_desc> dqr(qr);
        const float scale = 1.0f / std::sqrt(float(s.head_dim));
        // Whole rows, and rows in parts: 3 (of 128, 128 and 44 keys at 299),
        // 8 (5 of 64 keys, 3 empty) and 32 (the most: one warp each).
        std::vector<std::vector<float>> outs;
        for (uint32_t parts : {1u, 3u, 8u, max_attention_parts}) {
            dmem<float> dout(qr.size() * QW),
                dpart(qr.size() * s.n_head * parts * (s.head_dim + 2));
            ASSERT_EQ(attention(dq.p, dout.p, int64_t(qr.size()), s.n_head, s.n_head_kv, s.head_dim,
                                1, scale, dqr.p, dseq.p, dtab.p, parts > 1 ? dpart.p : nullptr,
                                parts, nullptr),
                      cudaSuccess)
                << parts << " parts";
            outs.push_back(dout.get());
        }
        for (size_t i = 1; i < outs.size(); ++i) {
            for (size_t j = 0; j < outs[0].size(); ++j) {
                ASSERT_NEAR(outs[i][j], outs[0][j], 2e-6) << "parts case " << i << ", value " << j;
            }
        }
        const std::vector<float>& out = outs[0];
        // Row index of (seq, pos) in `all`.
        auto at = [&](int32_t sq, uint32_t p) { return size_t(sq ? len[0] + p : p); };
        for (size_t r = 0; r < qr.size(); ++r) {
            for (uint32_t h = 0; h < s.n_head; ++h) {
                const uint32_t kvh = h / (s.n_head / s.n_head_kv);
                const uint32_t n = uint32_t(qr[r].pos) + 1;
                std::vector<double> sc(n);
                double mx = -INFINITY;
                for (uint32_t j = 0; j < n; ++j) {
                    double dot = 0;
                    for (uint32_t d = 0; d < s.head_dim; ++d) {
                        dot += double(q[r * QW + h * s.head_dim + d]) *
                               fp16_to_fp32(
                                   fp32_to_fp16(k[at(qr[r].seq, j) * KV + kvh * s.head_dim + d]));
                    }
                    sc[j] = dot * scale;
                    mx = std::max(mx, sc[j]);
                }
                double sum = 0;
                for (double& e : sc) {
                    e = std::exp(e - mx);
                    sum += e;
                }
                for (uint32_t d = 0; d < s.head_dim; ++d) {
                    double o = 0;
                    for (uint32_t j = 0; j < n; ++j) {
                        o += sc[j] / sum *
                             fp16_to_fp32(
                                 fp32_to_fp16(v[at(qr[r].seq, j) * KV + kvh * s.head_dim + d]));
                    }
                    ASSERT_NEAR(out[r * QW + h * s.head_dim + d], o, 2e-5)
                        << "query " << r << ", head " << h << ", dim " << d;
                }
            }
        }
    }
}

TEST_F(cuda_kernel_attention, refuses_heads_and_parts_it_cannot_take) {
    float part = 0;
    auto att = [&](uint32_t n_head, uint32_t n_head_kv, uint32_t head_dim, float* pt,
                   uint32_t parts) {
        return attention(nullptr, nullptr, 1, n_head, n_head_kv, head_dim, 0, 1.0f, nullptr,
                         nullptr, nullptr, pt, parts, nullptr);
    };
    EXPECT_EQ(att(4, 4, max_head_dim + 2, nullptr, 1), cudaErrorInvalidValue);
    EXPECT_EQ(att(6, 4, 64, nullptr, 1), cudaErrorInvalidValue);
    EXPECT_EQ(att(4, 0, 64, nullptr, 1), cudaErrorInvalidValue);
    EXPECT_EQ(att(4, 4, 64, nullptr, 0), cudaErrorInvalidValue);
    EXPECT_EQ(att(4, 4, 64, nullptr, 2), cudaErrorInvalidValue) << "parts without their memory";
    EXPECT_EQ(att(4, 4, 64, &part, max_attention_parts + 1), cudaErrorInvalidValue);
}

TEST(cuda_attention_parts, fill_an_idle_device_over_long_rows_only) {
    // 132 multiprocessors, 32 heads: one row of 4096 positions fills it
    // with 8 parts of 512 (about two blocks each: 9, down to a power of
    // two); of 1024, 2; shorter, none.
    EXPECT_EQ(attention_parts(1, 32, 4096, 132), 8u);
    EXPECT_EQ(attention_parts(1, 32, 1 << 20, 132), 8u);
    EXPECT_EQ(attention_parts(1, 32, 1024, 132), 2u);
    EXPECT_EQ(attention_parts(1, 32, 1023, 132), 1u);
    // More rows or heads: fewer parts; a full device: none.
    EXPECT_EQ(attention_parts(2, 32, 1 << 20, 132), 4u);
    EXPECT_EQ(attention_parts(4, 32, 1 << 20, 132), 2u);
    EXPECT_EQ(attention_parts(5, 32, 1 << 20, 132), 1u);
    EXPECT_EQ(attention_parts(1, 1, 1 << 20, 132), max_attention_parts);
    // Too many rows, no rows, an unknown device.
    EXPECT_EQ(attention_parts(max_attention_part_rows + 1, 1, 1 << 20, 100000), 1u);
    EXPECT_EQ(attention_parts(0, 32, 4096, 132), 1u);
    EXPECT_EQ(attention_parts(1, 32, 4096, 0), 1u);
}

// A failed allocation is reported by the call (an exception here); the
// CUDA error it leaves as the thread's last error (cudaErrorMemoryAllocation,
// not sticky) must not be taken by the next launch as its own.
TEST_F(cuda_kernel_errors, a_failed_allocation_is_not_the_next_launchs_error) {
    const uint64_t too_much = uint64_t(1) << 50; // more than any device has
    const std::vector<float> a = randoms(64, 30), b = randoms(64, 31);
    dmem<float> da(a), db(b);
    std::vector<float> want = a;
    for (int round = 0; round < 2; ++round) {
        SCOPED_TRACE(round == 0 ? "scratch (dev_buf)" : "cuda_device_buffer");
        try {
            if (round == 0) {
                dev_buf buf;
                buf.ensure(too_much, "a test");
            } else {
                cuda_device_buffer buf(too_much);
            }
            FAIL() << "1 PiB of device memory";
        } catch (const cuda_error& e) {
            EXPECT_NE(std::string(e.what()).find("cudaErrorMemoryAllocation"), std::string::npos)
                << e.what();
        }
        ASSERT_EQ(add(da.p, db.p, 64, nullptr), cudaSuccess);
        for (size_t i = 0; i < want.size(); ++i) {
            want[i] += b[i];
        }
        EXPECT_EQ(da.get(), want);
    }
}

#ifdef LLMOS_CUDA_EMU

// --- The emulator itself ---

namespace {

__global__ void k_reverse(const float* in, float* out, bool sync) {
    __shared__ float s[64];
    s[threadIdx.x] = in[threadIdx.x];
    if (sync) {
        __syncthreads();
    }
    out[threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void k_sum(const float* in, float* out) {
    float v = in[threadIdx.x];
    for (int o = 16; o > 0; o /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    if (threadIdx.x % 32 == 0) {
        out[threadIdx.x / 32] = v;
    }
}

__global__ void k_half_warp_waits(float* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    } else {
        __syncthreads();
    }
}

__global__ void k_shuffle_after_exit(float* out) {
    if (threadIdx.x >= 16) {
        return;
    }
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

#define LAUNCH(k, g, b) ::llmos::cuda_emu::launch(#k, g, b, nullptr, k)

} // namespace

TEST(cuda_emulator, shows_a_missing_barrier_as_a_wrong_result) {
    const std::vector<float> a = randoms(64, 10), b = randoms(64, 11);
    dmem<float> da(a), db(b), out(64);
    LAUNCH(k_reverse, 1, 64)(da.p, out.p, true);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    std::vector<float> ra(a.rbegin(), a.rend()), rb(b.rbegin(), b.rend());
    EXPECT_EQ(out.get(), ra);
    LAUNCH(k_reverse, 1, 64)(db.p, out.p, true);
    EXPECT_EQ(out.get(), rb);
    // Without the barrier, thread 0 reads s[63] before thread 63 wrote it.
    LAUNCH(k_reverse, 1, 64)(da.p, out.p, false);
    const std::vector<float> got = out.get();
    EXPECT_NE(got, ra);
    EXPECT_EQ(got[0], b[63]) << "the previous launch's value";
}

TEST(cuda_emulator, warp_shuffles_exchange_between_lanes) {
    const std::vector<float> a = randoms(96, 12);
    dmem<float> da(a), out(3);
    LAUNCH(k_sum, 1, 96)(da.p, out.p);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> got = out.get();
    for (int w = 0; w < 3; ++w) {
        double ref = 0;
        for (int l = 0; l < 32; ++l) {
            ref += a[size_t(w * 32 + l)];
        }
        EXPECT_NEAR(got[size_t(w)], ref, 1e-5) << "warp " << w;
    }
}

TEST(cuda_emulator, refuses_launches_a_device_refuses) {
    dmem<float> da(2048), out(2048);
    LAUNCH(k_sum, 1, 1025)(da.p, out.p);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "not sticky";
    LAUNCH(k_sum, dim3(1, 65536), 32)(da.p, out.p);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(cuda_emulator, refuses_copies_whose_ends_are_not_what_the_kind_says) {
    dmem<float> d(16);
    std::vector<float> h(16, 1.0f);
    EXPECT_EQ(cudaMemcpy(h.data(), h.data() + 8, 32, cudaMemcpyHostToDevice),
              cudaErrorInvalidValue);
    EXPECT_EQ(cudaMemcpy(d.p, h.data(), 68, cudaMemcpyHostToDevice), cudaErrorInvalidValue)
        << "past the allocation's end";
    EXPECT_EQ(cudaMemcpy(d.p, h.data(), 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    EXPECT_EQ(cudaMemcpy(d.p, h.data(), 64, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue) << "the last failure";
}

TEST(cuda_emulator, a_host_pointer_in_a_kernel_is_a_sticky_fault) {
    EXPECT_EXIT(
        {
            std::vector<float> host(32, 1.0f);
            dmem<float> out(1);
            LAUNCH(k_sum, 1, 32)(host.data(), out.p);
            const bool launch = cudaGetLastError() == cudaErrorIllegalAddress;
            const bool sync = cudaDeviceSynchronize() == cudaErrorIllegalAddress;
            void* p = nullptr;
            const bool later = cudaMalloc(&p, 16) == cudaErrorIllegalAddress;
            std::exit(launch && sync && later ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "argument 0 is not device memory");
}

TEST(cuda_emulator, a_block_that_cannot_go_on_aborts_with_what_it_waits_for) {
    EXPECT_DEATH(
        {
            dmem<float> out(32);
            LAUNCH(k_half_warp_waits, 1, 32)(out.p);
        },
        "cannot go on: 16 threads wait at __syncthreads\\(\\), 16 at a warp shuffle");
    EXPECT_DEATH(
        {
            dmem<float> out(32);
            LAUNCH(k_shuffle_after_exit, 1, 32)(out.p);
        },
        "full-mask shuffle while some of its lanes have exited");
}

// --- Graphs ---

namespace {

/// A stream, destroyed with its owner.
struct stream {
    cudaStream_t s = nullptr;
    stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess); }
    ~stream() { cudaStreamDestroy(s); }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
};

cudaStreamCaptureStatus capture_status(cudaStream_t s) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    EXPECT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
    return st;
}

} // namespace

TEST(cuda_emulator_graphs, captured_work_runs_at_each_launch_on_the_memory_as_it_is_then) {
    stream st;
    const std::vector<float> a = randoms(300, 20), b = randoms(300, 21), b2 = randoms(300, 22);
    dmem<float> x(a), y(b);
    ASSERT_EQ(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_EQ(capture_status(st.s), cudaStreamCaptureStatusActive);
    ASSERT_EQ(add(x.p, y.p, 300, st.s), cudaSuccess); // x += y
    cudaGraph_t g = nullptr;
    ASSERT_EQ(cudaStreamEndCapture(st.s, &g), cudaSuccess);
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(capture_status(st.s), cudaStreamCaptureStatusNone);
    EXPECT_EQ(x.get(), a) << "captured, not run";
    cudaGraphExec_t e = nullptr;
    ASSERT_EQ(cudaGraphInstantiate(&e, g, 0), cudaSuccess);
    ASSERT_EQ(cudaGraphDestroy(g), cudaSuccess) << "the executable graph keeps its work";
    // Each launch adds y as it is at the launch, to every one of the 300.
    std::vector<float> want = a;
    for (int launch = 1; launch <= 3; ++launch) {
        if (launch == 3) {
            y.put(b2);
        }
        ASSERT_EQ(cudaGraphLaunch(e, st.s), cudaSuccess);
        ASSERT_EQ(cudaStreamSynchronize(st.s), cudaSuccess);
        const std::vector<float>& add_now = launch == 3 ? b2 : b;
        for (size_t i = 0; i < a.size(); ++i) {
            want[i] += add_now[i];
        }
        EXPECT_EQ(x.get(), want) << "launch " << launch;
    }
    EXPECT_EQ(cudaGraphExecDestroy(e), cudaSuccess);
    EXPECT_EQ(cudaGraphExecDestroy(e), cudaErrorInvalidValue);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
}

TEST(cuda_emulator_graphs, what_a_capture_forbids_fails_and_invalidates_it) {
    stream st;
    dmem<float> x(64), y(64);
    cudaGraph_t g = nullptr;
    // Synchronizing the capturing stream.
    ASSERT_EQ(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_EQ(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal),
              cudaErrorIllegalState);
    EXPECT_EQ(cudaStreamSynchronize(st.s), cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(capture_status(st.s), cudaStreamCaptureStatusInvalidated);
    EXPECT_EQ(add(x.p, y.p, 64, st.s), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(cudaStreamEndCapture(st.s, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(g, nullptr);
    EXPECT_EQ(capture_status(st.s), cudaStreamCaptureStatusNone) << "the capture is over";
    // An allocation on the capturing thread; the other thread's is fine
    // (thread-local mode), a global capture forbids it there too.
    for (cudaStreamCaptureMode mode :
         {cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeGlobal}) {
        ASSERT_EQ(cudaStreamBeginCapture(st.s, mode), cudaSuccess);
        void* theirs = nullptr;
        cudaError_t other = cudaSuccess;
        std::thread([&] { other = cudaMalloc(&theirs, 64); }).join();
        EXPECT_EQ(other, mode == cudaStreamCaptureModeGlobal ? cudaErrorStreamCaptureUnsupported
                                                             : cudaSuccess);
        EXPECT_EQ(capture_status(st.s), mode == cudaStreamCaptureModeGlobal
                                            ? cudaStreamCaptureStatusInvalidated
                                            : cudaStreamCaptureStatusActive);
        void* p = nullptr;
        EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
        EXPECT_EQ(p, nullptr);
        EXPECT_EQ(cudaStreamEndCapture(st.s, &g), cudaErrorStreamCaptureInvalidated);
        EXPECT_EQ(cudaFree(theirs), cudaSuccess);
    }
    // What synchronizes the device, on any thread, in any mode: a free, a
    // device synchronization, the legacy stream's.
    for (int call = 0; call < 3; ++call) {
        ASSERT_EQ(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        void* p = nullptr;
        if (call == 0) {
            std::thread([&] { ASSERT_EQ(cudaMalloc(&p, 64), cudaSuccess); }).join();
        }
        cudaError_t other = cudaSuccess;
        std::thread([&] {
            other = call == 0   ? cudaFree(p)
                    : call == 1 ? cudaDeviceSynchronize()
                                : cudaStreamSynchronize(nullptr);
        }).join();
        EXPECT_EQ(other, cudaErrorStreamCaptureUnsupported) << "call " << call;
        EXPECT_EQ(cudaStreamEndCapture(st.s, &g), cudaErrorStreamCaptureInvalidated);
        EXPECT_EQ(cudaFree(p), cudaSuccess);
    }
    // A synchronous copy; a captured one from pageable memory.
    std::vector<float> host(64, 1.0f);
    ASSERT_EQ(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_EQ(cudaMemcpyAsync(x.p, host.data(), 256, cudaMemcpyHostToDevice, st.s),
              cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(cudaMemcpy(x.p, host.data(), 256, cudaMemcpyHostToDevice),
              cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(cudaStreamEndCapture(st.s, &g), cudaErrorStreamCaptureInvalidated);
    // Ending from another thread, or a capture on the legacy stream.
    ASSERT_EQ(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    cudaError_t there = cudaSuccess;
    std::thread([&] { there = cudaStreamEndCapture(st.s, &g); }).join();
    EXPECT_EQ(there, cudaErrorStreamCaptureWrongThread);
    EXPECT_EQ(cudaStreamEndCapture(st.s, &g), cudaSuccess) << "still this thread's";
    EXPECT_EQ(cudaGraphDestroy(g), cudaSuccess);
    EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeThreadLocal),
              cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(cudaStreamEndCapture(st.s, &g), cudaErrorIllegalState) << "not capturing";
    cudaGetLastError();
    // None of it was a device fault: work goes on.
    EXPECT_EQ(add(x.p, y.p, 64, st.s), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(st.s), cudaSuccess);
}

TEST(cuda_emulator_graphs, a_replay_into_freed_memory_is_a_fault) {
    EXPECT_EXIT(
        {
            stream st;
            dmem<float> y(64);
            auto* x = new dmem<float>(64);
            cudaGraph_t g = nullptr;
            cudaGraphExec_t e = nullptr;
            const bool made =
                cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal) == cudaSuccess &&
                add(x->p, y.p, 64, st.s) == cudaSuccess &&
                cudaStreamEndCapture(st.s, &g) == cudaSuccess &&
                cudaGraphInstantiate(&e, g, 0) == cudaSuccess;
            const bool first = cudaGraphLaunch(e, st.s) == cudaSuccess &&
                               cudaStreamSynchronize(st.s) == cudaSuccess;
            delete x; // what the graph points at is gone
            cudaGraphLaunch(e, st.s);
            const bool fault = cudaStreamSynchronize(st.s) == cudaErrorIllegalAddress;
            std::exit(made && first && fault ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "argument 0 is not device memory");
}

#endif // LLMOS_CUDA_EMU
