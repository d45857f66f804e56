// SPDX-License-Identifier: MIT
//
// Decode-speed check of the matmul kernels: weight bytes streamed per
// second by matmul with one token, per type, on matrices far larger than
// the L3 cache, next to a plain read of a buffer of the same size (the
// memory's read bandwidth measured the same way), on 1 and 2 threads. Also
// prefill (several tokens per pass) in multiply-adds per second.
//
// Not wired into the build; build by hand against the engine library:
//   g++ -O2 -std=c++20 -Iuserspace/engine/include tests/bench/engine_kernels_bench.cc
//       build/DIR/userspace/engine/libllmos_engine.a -lpthread -o engine_kernels_bench
// Environment: BENCH_MB (weight bytes per matrix, default 256), BENCH_COLS
// (columns, default 8192; a model's are often 768 or 2048),
// BENCH_REPS (default 7), BENCH_TYPES (names to run, e.g. Q4_0,Q8_0),
// LLMOS_ENGINE_SIMD=scalar for the portable kernels.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include <llmos/engine/matmul.hh>
#include <llmos/engine/quant.hh>
#include <llmos/engine/thread_pool.hh>
#include <memory>
#include <new>
#include <random>
#include <vector>

namespace {

using namespace llmos::engine;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

long env_long(const char* name, long def) {
    const char* s = std::getenv(name);
    return s && std::atol(s) > 0 ? std::atol(s) : def;
}

/// Best time of `reps` runs of f.
template <typename F>
double best_of(int reps, F&& f) {
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
        const auto t0 = clock_type::now();
        f();
        best = std::min(best, seconds_since(t0));
    }
    return best;
}

__attribute__((target("avx2"))) uint64_t read_range(const uint8_t* p, size_t n) {
    __m256i acc0 = _mm256_setzero_si256();
    __m256i acc1 = _mm256_setzero_si256();
    for (size_t i = 0; i + 64 <= n; i += 64) {
        acc0 = _mm256_add_epi64(acc0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        acc1 =
            _mm256_add_epi64(acc1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    }
    acc0 = _mm256_add_epi64(acc0, acc1);
    uint64_t out[4];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), acc0);
    return out[0] + out[1] + out[2] + out[3];
}

/// Weight bytes of plausible content (finite scales, normal halves) made
/// fast: random bytes with every half field set to a normal value.
std::vector<uint8_t> fake_weights(ggml_type t, int64_t rows, int64_t cols) {
    const size_t rb = *row_bytes(t, static_cast<uint64_t>(cols));
    std::vector<uint8_t> w(rb * static_cast<size_t>(rows));
    std::mt19937_64 rng(1);
    for (size_t i = 0; i + 8 <= w.size(); i += 8) {
        const uint64_t v = rng();
        std::memcpy(&w[i], &v, 8);
    }
    auto set_half = [&](size_t at) {
        const uint16_t h = static_cast<uint16_t>(0x1c00 + (w[at] & 0x3ff));
        std::memcpy(&w[at], &h, 2);
    };
    const size_t bytes = info(t)->block_bytes;
    for (size_t b = 0; b < w.size(); b += bytes) {
        switch (t) {
        case ggml_type::f16:
            for (size_t i = 0; i < bytes; i += 2) {
                set_half(b + i);
            }
            break;
        case ggml_type::bf16: {
            // Exponent 2^-8 .. 2^-1, random sign and significand.
            uint16_t h = 0;
            std::memcpy(&h, &w[b], 2);
            h = static_cast<uint16_t>((h & 0x807f) | (0x3b80 + ((h >> 7) & 7) * 0x80));
            std::memcpy(&w[b], &h, 2);
            break;
        }
        case ggml_type::f32: {
            const float f = static_cast<float>(w[b] & 0xff) / 256.0f - 0.5f;
            std::memcpy(&w[b], &f, 4);
            break;
        }
        case ggml_type::q8_0:
        case ggml_type::q4_0:
        case ggml_type::q5_0:
            set_half(b);
            break;
        case ggml_type::q4_1:
        case ggml_type::q5_1:
        case ggml_type::q4_k:
        case ggml_type::q5_k:
            set_half(b);
            set_half(b + 2);
            break;
        case ggml_type::q6_k:
            set_half(b + 208);
            break;
        default:
            break;
        }
    }
    return w;
}

} // namespace

int main() {
    const size_t target = static_cast<size_t>(env_long("BENCH_MB", 256)) << 20;
    const int reps = static_cast<int>(env_long("BENCH_REPS", 7));
    const int64_t cols = env_long("BENCH_COLS", 8192);
    std::printf("kernels: %s; matrices of ~%zu MiB, %ld columns; best of %d\n",
                std::string(simd_name(default_simd())).c_str(), target >> 20, long(cols), reps);

    thread_pool pools[] = {thread_pool(1), thread_pool(2)};

    // Plain read bandwidth, the same buffer size, split the same way.
    {
        std::vector<uint8_t, std::allocator<uint8_t>> raw(target + 64, 1);
        auto* p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) &
                                             ~uintptr_t{63});
        for (auto& pool : pools) {
            volatile uint64_t sink = 0;
            const int64_t chunks = 4096;
            const size_t per = target / chunks / 64 * 64;
            const double s = best_of(reps, [&] {
                std::atomic<uint64_t> total{0};
                pool.parallel_for(chunks, [&](int64_t b, int64_t e) {
                    total += read_range(p + static_cast<size_t>(b) * per,
                                        static_cast<size_t>(e - b) * per);
                });
                sink = sink + total.load();
            });
            std::printf("%-6s %d thread(s): %6.1f GB/s\n", "read", pool.size(),
                        static_cast<double>(per * chunks) / s / 1e9);
        }
    }

    const ggml_type types[] = {ggml_type::f32,  ggml_type::f16,  ggml_type::bf16, ggml_type::q8_0,
                               ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1,
                               ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k};
    const char* only = std::getenv("BENCH_TYPES"); // e.g. "Q4_0,Q8_0"
    for (const ggml_type t : types) {
        if (only && !std::strstr(only, std::string(info(t)->name).c_str())) {
            continue;
        }
        const size_t rb = *row_bytes(t, cols);
        const auto rows = static_cast<int64_t>(target / rb);
        const auto w = fake_weights(t, rows, cols);
        weight_view v{t, w.data(), rows, cols, 0};
        // Packed for the kernels in use, as model::load does.
        std::unique_ptr<std::byte[], void (*)(std::byte*)> packed(
            nullptr, [](std::byte* b) { ::operator delete[](b, std::align_val_t{64}); });
        if (const size_t n = packed_weight_bytes(v, default_simd()); n != 0) {
            packed.reset(static_cast<std::byte*>(::operator new[](n, std::align_val_t{64})));
            if (pack_weights(v, default_simd(), {packed.get(), n}) != matmul_status::ok) {
                std::fprintf(stderr, "pack_weights failed\n");
                return 1;
            }
            v.packed = packed.get();
        }
        std::vector<float> x(static_cast<size_t>(cols) * 64);
        std::mt19937 rng(2);
        std::normal_distribution<float> dist;
        for (auto& f : x) {
            f = dist(rng);
        }
        std::vector<float> y(static_cast<size_t>(rows) * 64);
        for (auto& pool : pools) {
            const double s = best_of(reps, [&] { matmul(v, x.data(), 1, y.data(), pool); });
            std::printf("%-6s %d thread(s): %6.1f GB/s of weights (%.2f ms per token)\n",
                        std::string(info(t)->name).c_str(), pool.size(),
                        static_cast<double>(w.size()) / s / 1e9, s * 1e3);
        }
        // The same kernel on a slice that stays in the L2 cache: what it
        // costs when memory is not the limit.
        {
            const int64_t crows = std::max<int64_t>(1, (512 << 10) / static_cast<int64_t>(rb));
            const weight_view cv = sub_rows(v, 0, crows);
            const double s = best_of(reps, [&] {
                for (int i = 0; i < 100; ++i) {
                    matmul(cv, x.data(), 1, y.data(), pools[0]);
                }
            });
            std::printf("%-6s 1 thread(s): %6.1f GB/s of weights from L2\n",
                        std::string(info(t)->name).c_str(),
                        static_cast<double>(crows) * static_cast<double>(rb) * 100 / s / 1e9);
        }
        // Prefill: 64 tokens share each pass over the weights; a smaller
        // slice of rows keeps it short.
        const int64_t prows = std::min<int64_t>(rows, 1024);
        const weight_view pv = sub_rows(v, 0, prows);
        for (auto& pool : pools) {
            const double s =
                best_of(std::max(1, reps / 2), [&] { matmul(pv, x.data(), 64, y.data(), pool); });
            std::printf("%-6s %d thread(s): prefill 64 tokens %6.1f G multiply-adds/s\n",
                        std::string(info(t)->name).c_str(), pool.size(),
                        static_cast<double>(prows * cols * 64) / s / 1e9);
        }
    }
    return 0;
}
