// SPDX-License-Identifier: MIT
//
// The CUDA backend. Without a device (or in a build without CUDA) the
// probe must say why, the device classes must refuse with that reason,
// and the KV cache's host bookkeeping (no CUDA call) is tested in full;
// every GPU case skips with the probe's reason. With a device: logits
// against the CPU engine on generated models of each weight type and
// both architectures, the external conformance vector, batching, KV
// resume across contexts, and the refusals that change nothing.
//
// cuda_emu_test is this file built over the host emulation of the device
// (tests/support/cuda_emu, LLMOS_CUDA_EMU): there the device cases
// run without a GPU, on the backend's own kernels and host code.
//
// Generated models need llmos-mkmodel: $LLMOS_MKMODEL, or the build's.
#include "../support/conformance.hh"
#include "../support/generated_model.hh"
#include "../support/paths.hh"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <iterator>
#include <llmos/engine/context.hh>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <vector>

#ifdef LLMOS_CUDA_EMU
#include <cuda_emu.hh> // fail_captures(), fail_allocations()
#endif

using namespace llmos::engine;

namespace {

const std::string tiny = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

std::string lower(std::string s) {
    for (char& c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

// Host memory for a cache's bookkeeping, 4096-aligned, zeroed.
struct host_mem : kv_memory {
    explicit host_mem(size_t bytes)
        : kv_memory(bytes, true) {}
};

using llmos::testing::generated_model;

/// A model with its file.
struct loaded {
    std::unique_ptr<gguf_file> file;
    std::unique_ptr<model> m;
    explicit loaded(const std::string& path)
        : file(std::make_unique<gguf_file>(gguf_file::open(path)))
        , m(std::make_unique<model>(model::load(*file))) {}
};

int32_t argmax(const std::vector<float>& v) {
    return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
        den += double(ref[i]) * ref[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

/// A replayed graph's logits against the launched step's: bit for bit on
/// the built-in kernels; with cuBLAS, contexts with and without graphs have
/// different workspaces, so cuBLAS may pick another algorithm.
void expect_as_launched(const std::vector<float>& got, const std::vector<float>& want, bool blas) {
    if (blas) {
        EXPECT_LE(rel_l2(got, want), 1e-5);
        EXPECT_EQ(std::max_element(got.begin(), got.end()) - got.begin(),
                  std::max_element(want.begin(), want.end()) - want.begin());
    } else {
        EXPECT_EQ(got, want);
    }
}

#ifdef LLMOS_CUDA_EMU
// On the emulated device (cuda_emu_test) every emulated thread is a fiber
// switch: 12 decode steps, which still take the cache past its first
// 16-token block.
constexpr int decode_steps = 12;
#else
constexpr int decode_steps = 32;
#endif

// Skips the current test unless there is a device.
#define REQUIRE_DEVICE()                                                                           \
    do {                                                                                           \
        const cuda_device_info di_ = cuda_probe();                                                 \
        if (!di_.available) {                                                                      \
            GTEST_SKIP() << "no CUDA device: " << di_.reason;                                      \
        }                                                                                          \
    } while (0)

} // namespace

// --- Without a device: the probe, the refusals, the host bookkeeping ---

TEST(cuda_probe, says_what_the_device_is_or_why_there_is_none) {
    const cuda_device_info i = cuda_probe();
    EXPECT_EQ(i.device, 0);
    if (!cuda_built()) {
        EXPECT_FALSE(i.available);
        EXPECT_NE(i.reason.find("built without CUDA"), std::string::npos) << i.reason;
        EXPECT_NE(i.reason.find("LLMOS_CUDA=ON"), std::string::npos) << i.reason;
        return;
    }
    EXPECT_GT(i.runtime_version, 0) << "the CUDA runtime is linked in";
    if (!i.available) {
        ASSERT_FALSE(i.reason.empty());
        // The failing call and CUDA's own error: no driver, or no device.
        EXPECT_NE(i.reason.find("cudaError"), std::string::npos) << i.reason;
        const std::string why = lower(i.reason.substr(i.reason.find("cudaError")));
        EXPECT_TRUE(why.find("driver") != std::string::npos ||
                    why.find("device") != std::string::npos)
            << i.reason;
        std::cout << "[ info     ] no device: " << i.reason << "\n";
        return;
    }
    EXPECT_TRUE(i.reason.empty()) << i.reason;
    EXPECT_FALSE(i.name.empty());
    EXPECT_GE(i.cc_major * 10 + i.cc_minor, 90);
    EXPECT_GT(i.total_mem, 1ull << 30);
    EXPECT_GT(i.multiprocessors, 0);
    EXPECT_GT(i.driver_version, 0);
    std::cout << "[ info     ] " << i.name << ", cc " << i.cc_major << "." << i.cc_minor << ", "
              << (i.total_mem >> 20) << " MiB, driver " << i.driver_version << ", runtime "
              << i.runtime_version << ", GPUDirect RDMA " << i.gpudirect_rdma << "\n";
}

TEST(cuda_probe, is_repeatable_and_refuses_devices_that_do_not_exist) {
    const cuda_device_info a = cuda_probe();
    for (int i = 0; i < 50; ++i) {
        const cuda_device_info b = cuda_probe();
        ASSERT_EQ(a.available, b.available);
        ASSERT_EQ(a.reason, b.reason);
        ASSERT_EQ(a.name, b.name);
    }
    for (int dev : {-1, 4096}) {
        const cuda_device_info i = cuda_probe(dev);
        EXPECT_FALSE(i.available) << dev;
        EXPECT_FALSE(i.reason.empty()) << dev;
        EXPECT_EQ(i.device, dev);
    }
}

TEST(cuda_blas, says_whether_cublas_loaded) {
    const cuda_blas_info b = cuda_blas();
    if (b.loaded) {
        EXPECT_NE(b.library.find("libcublas.so"), std::string::npos) << b.library;
        EXPECT_TRUE(b.reason.empty()) << b.reason;
    } else {
        EXPECT_FALSE(b.reason.empty());
        if (!cuda_built()) {
            EXPECT_NE(b.reason.find("built without CUDA"), std::string::npos) << b.reason;
        }
    }
    std::cout << "[ info     ] cuBLAS: "
              << (b.loaded ? "loaded from " + b.library : "not loaded: " + b.reason) << "\n";
}

TEST(cuda_model, without_a_device_the_classes_refuse_with_the_probe_reason) {
    const cuda_device_info di = cuda_probe();
    if (di.available) {
        GTEST_SKIP() << "a CUDA device is present (" << di.name << ")";
    }
    loaded l(tiny);
    try {
        cuda_model cm(*l.m);
        FAIL() << "a cuda_model without a device";
    } catch (const cuda_error& e) {
        EXPECT_NE(std::string(e.what()).find(di.reason), std::string::npos) << e.what();
    }
    EXPECT_THROW(cuda_device_buffer(4096), cuda_error);
}

// The errors after which CUDA fails every call of the process: CUDA 13's
// numbers (cudaError_t and CUresult alike; the backend's build checks them
// against the headers), and ones that must not count (out of memory, a
// launch too large, a capture invalidated by another thread: the device
// goes on).
TEST(cuda_errors, sticky_ones_are_those_that_leave_the_device_unusable) {
    for (int code : {214,    // ECC uncorrectable
                     220,    // NVLink uncorrectable
                     226,    // contained
                     700,    // illegal address
                     702,    // launch timeout
                     710,    // device assert
                     714,    // hardware stack error
                     715,    // illegal instruction
                     716,    // misaligned address
                     717,    // invalid address space
                     718,    // invalid PC
                     719,    // launch failure
                     721,    // tensor memory leak
                     810,    // MPS client terminated
                     911}) { // external device
        EXPECT_TRUE(cuda_error_is_sticky(code)) << code;
    }
    for (int code : {0, 1, 2, 101, 213, 215, 219, 221, 225, 400, 701, 720, 900, 901, 999}) {
        EXPECT_FALSE(cuda_error_is_sticky(code)) << code;
    }
}

class cuda_kv_host : public ::testing::Test {
protected:
    static void SetUpTestSuite() { l = std::make_unique<loaded>(tiny); }
    static void TearDownTestSuite() { l.reset(); }
    static inline std::unique_ptr<loaded> l;

    cuda_kv_options o{.block_tokens = 16, .max_tokens = 256};
    // Stands for device memory: the bookkeeping never touches it.
    alignas(256) static inline std::byte fake_device[256];
    void* dev() { return fake_device; }
    uint64_t dev_bytes() { return cuda_kv_cache::device_bytes_for(l->m->params(), o); }
};

TEST_F(cuda_kv_host, sizes_follow_the_geometry) {
    const model_params& p = l->m->params();
    // Per block: layers x (K, V) x block_tokens x kv_dim halves.
    const uint64_t block = uint64_t(p.n_layer) * 2 * 16 * p.kv_dim() * 2;
    EXPECT_EQ(cuda_kv_cache::device_bytes_for(p, o), (block + 255) / 256 * 256 * (256 / 16));
    EXPECT_GE(cuda_kv_cache::host_bytes_for(p, o), 128u + 256 * 4 + 2 * 16 * 4);
    cuda_kv_options big = o;
    big.max_tokens = 4096;
    EXPECT_GT(cuda_kv_cache::host_bytes_for(p, big), cuda_kv_cache::host_bytes_for(p, o));
    EXPECT_EQ(cuda_kv_cache::device_bytes_for(p, big), 16 * cuda_kv_cache::device_bytes_for(p, o));
}

TEST_F(cuda_kv_host, reserve_commit_and_resume) {
    host_mem h(cuda_kv_cache::host_bytes_for(l->m->params(), o));
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
        EXPECT_FALSE(kv.resumed());
        EXPECT_EQ(kv.n_tokens(), 0u);
        EXPECT_EQ(kv.capacity(), 256u);
        EXPECT_EQ(kv.device_blocks(), dev());
        EXPECT_EQ(kv.block_tokens(), 16u);
        ASSERT_TRUE(kv.reserve(20));
        auto t = kv.block_table();
        ASSERT_EQ(t.size(), 16u);
        EXPECT_NE(t[0], UINT32_MAX);
        EXPECT_NE(t[1], UINT32_MAX);
        EXPECT_NE(t[0], t[1]);
        EXPECT_EQ(t[2], UINT32_MAX);
        EXPECT_EQ(kv.n_tokens(), 0u) << "reserving commits nothing";
        std::vector<int32_t> toks(20);
        for (int i = 0; i < 20; ++i) {
            toks[size_t(i)] = 100 + i;
        }
        kv.commit(toks);
        EXPECT_EQ(kv.n_tokens(), 20u);
        EXPECT_EQ(std::vector<int32_t>(kv.tokens().begin(), kv.tokens().end()), toks);
        kv_usage u = kv.usage();
        EXPECT_EQ(u.tokens, 20u);
        EXPECT_EQ(u.blocks, 2u);
        EXPECT_EQ(u.bytes_allocated, 2 * kv.block_bytes());
        // Reserved but never committed: a worker killed mid-step.
        ASSERT_TRUE(kv.reserve(30));
    }
    auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
    EXPECT_TRUE(kv.resumed());
    EXPECT_EQ(kv.n_tokens(), 20u);
    EXPECT_EQ(kv.tokens()[19], 119);
    EXPECT_FALSE(kv.reserve(237)) << "20 + 237 > 256";
    EXPECT_EQ(kv.n_tokens(), 20u);
    EXPECT_TRUE(kv.reserve(236));
}

// The bookkeeping is a mindspace that other processes share, each with
// its own device memory: a cache whose rows another region wrote starts
// over, and records the rows it will write.
TEST_F(cuda_kv_host, rows_written_to_other_device_memory_are_not_resumed) {
    host_mem h(cuda_kv_cache::host_bytes_for(l->m->params(), o));
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o, false, 7);
        ASSERT_TRUE(kv.reserve(3));
        kv.commit(std::vector<int32_t>{1, 2, 3});
    }
    EXPECT_TRUE(cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o, false, 7).resumed());
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o, false, 8);
        EXPECT_FALSE(kv.resumed());
        EXPECT_EQ(kv.n_tokens(), 0u);
        ASSERT_TRUE(kv.reserve(2));
        kv.commit(std::vector<int32_t>{4, 5});
    }
    // The first region's rows are not those of the conversation now.
    auto first = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o, false, 7);
    EXPECT_FALSE(first.resumed());
    EXPECT_EQ(first.n_tokens(), 0u);
}

TEST_F(cuda_kv_host, truncate_gives_blocks_back_for_reuse) {
    host_mem h(cuda_kv_cache::host_bytes_for(l->m->params(), o));
    auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
    std::vector<int32_t> toks(64, 7);
    ASSERT_TRUE(kv.reserve(64));
    kv.commit(toks);
    const std::vector<uint32_t> before(kv.block_table().begin(), kv.block_table().begin() + 4);
    kv.truncate(17); // keeps blocks 0 and 1
    EXPECT_EQ(kv.n_tokens(), 17u);
    EXPECT_EQ(kv.usage().blocks, 2u);
    EXPECT_EQ(kv.block_table()[2], UINT32_MAX);
    ASSERT_TRUE(kv.reserve(47));
    // The given-back blocks are reused: no block beyond the first four.
    std::vector<uint32_t> after(kv.block_table().begin(), kv.block_table().begin() + 4);
    EXPECT_EQ(after[0], before[0]);
    EXPECT_EQ(after[1], before[1]);
    for (uint32_t b : after) {
        EXPECT_LT(b, 4u);
    }
    std::sort(after.begin(), after.end());
    EXPECT_EQ(std::unique(after.begin(), after.end()), after.end()) << "a block mapped twice";
    kv.truncate(0);
    EXPECT_EQ(kv.n_tokens(), 0u);
    EXPECT_EQ(kv.usage().blocks, 0u);
}

TEST_F(cuda_kv_host, keeps_its_bookkeeping_from_memory_its_owner_can_rewrite) {
    // The host part lives in a mindspace its owner can write at any time;
    // the block table indexes device memory. The layout: the header, tokens
    // from byte 128, the block table and then the free stack, each 64-byte
    // aligned (max_blocks entries).
    host_mem h(cuda_kv_cache::host_bytes_for(l->m->params(), o));
    auto at = [&](uint64_t off) { return reinterpret_cast<uint32_t*>(h.span().data() + off); };
    const uint32_t max_blocks = o.max_tokens / o.block_tokens;
    const uint64_t table = (128 + 4ull * o.max_tokens + 63) / 64 * 64;
    const uint64_t stack = (table + 4ull * max_blocks + 63) / 64 * 64;
    uint32_t* n_tokens = at(28);
    uint32_t* next_block = at(40);
    uint32_t* n_free = at(44);
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
        ASSERT_TRUE(kv.reserve(40)); // blocks 0, 1, 2
        kv.commit(std::vector<int32_t>(40, 9));
        kv.truncate(20); // block 2 given back
        ASSERT_EQ(*n_tokens, 20u);
        ASSERT_EQ(*next_block, 3u);
        ASSERT_EQ(*n_free, 1u);
        ASSERT_EQ(*at(stack), 2u);
    }
    auto refused = [&](uint32_t* field, uint32_t bad) {
        const uint32_t was = *field;
        *field = bad;
        EXPECT_THROW(cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o), kv_error)
            << "value " << bad;
        *field = was;
    };
    refused(at(table), 0x7fffffff); // past the device memory
    refused(at(table + 4), 0);      // mapped twice
    refused(at(table), UINT32_MAX); // a hole under the tokens
    refused(at(stack), 0x7fffffff); // a free block past the device memory
    refused(at(stack), 0);          // a mapped block free
    refused(n_tokens, o.max_tokens + 1);
    refused(n_free, 3);
    auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
    ASSERT_TRUE(kv.resumed());
    // Rewritten while open: the table the kernels index stays the cache's.
    *at(table) = 0x7fffffff;
    *n_tokens = 1u << 30;
    *n_free = 1u << 30;
    *next_block = 0;
    EXPECT_EQ(kv.n_tokens(), 20u);
    ASSERT_TRUE(kv.reserve(30)); // block 2 again, then 3
    kv.commit(std::vector<int32_t>(30, 9));
    EXPECT_EQ(*n_tokens, 50u) << "changes are still written through";
    std::vector<uint32_t> t(kv.block_table().begin(), kv.block_table().begin() + 4);
    EXPECT_EQ(t, (std::vector<uint32_t>{0, 1, 2, 3}));
    EXPECT_EQ(kv.device_bytes_used(), 4 * kv.block_bytes());
    kv.truncate(0);
    EXPECT_EQ(*n_free, 4u);
}

TEST_F(cuda_kv_host, a_block_leaked_by_a_killed_worker_is_free_again) {
    host_mem h(cuda_kv_cache::host_bytes_for(l->m->params(), o));
    uint32_t* n_free = reinterpret_cast<uint32_t*>(h.span().data() + 44);
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
        ASSERT_TRUE(kv.reserve(40)); // blocks 0, 1, 2
        kv.commit(std::vector<int32_t>(40, 9));
        kv.truncate(20); // block 2 given back
    }
    *n_free = 0; // killed before the stack's count was written: block 2 leaked
    auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
    ASSERT_TRUE(kv.resumed());
    EXPECT_EQ(*n_free, 1u) << "free again, and written through";
    EXPECT_TRUE(kv.reserve(o.max_tokens - kv.n_tokens())) << "no block is missing";
    EXPECT_EQ(kv.device_bytes_used(), uint64_t(o.max_tokens / o.block_tokens) * kv.block_bytes());
}

TEST_F(cuda_kv_host, refuses_other_geometry_small_or_misaligned_memory) {
    host_mem h(cuda_kv_cache::host_bytes_for(l->m->params(), o));
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
        ASSERT_TRUE(kv.reserve(3));
        kv.commit(std::vector<int32_t>{1, 2, 3});
    }
    cuda_kv_options other = o;
    other.block_tokens = 32;
    EXPECT_THROW(cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, other), kv_error);
    // Still the first cache: the refusal wrote nothing.
    EXPECT_EQ(cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o).n_tokens(), 3u);
    // Fresh: overwritten.
    EXPECT_EQ(cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, other, true).n_tokens(), 0u);
    EXPECT_THROW(cuda_kv_cache::open(h.span().first(64), dev(), dev_bytes(), *l->m, o), kv_error);
    EXPECT_THROW(cuda_kv_cache::open(h.span(), dev(), dev_bytes() - 1, *l->m, o), kv_error);
    EXPECT_THROW(cuda_kv_cache::open(h.span(), nullptr, dev_bytes(), *l->m, o), kv_error);
    EXPECT_THROW(cuda_kv_cache::open(h.span(), fake_device + 2, dev_bytes(), *l->m, o), kv_error);
    EXPECT_THROW(cuda_kv_cache::open(h.span().subspan(8), dev(), dev_bytes(), *l->m, o), kv_error);
}

TEST_F(cuda_kv_host, a_cache_of_another_model_is_refused) {
    std::string why;
    const std::string other = generated_model("other", "--preset tiny --n-ff 128", why);
    ASSERT_FALSE(other.empty()) << why; // the build makes llmos-mkmodel: a failure, not a skip
    loaded l2(other);
    ASSERT_NE(l2.m->fingerprint(), l->m->fingerprint());
    const uint64_t hb = std::max(cuda_kv_cache::host_bytes_for(l->m->params(), o),
                                 cuda_kv_cache::host_bytes_for(l2.m->params(), o));
    host_mem h(hb);
    {
        auto kv = cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o);
        ASSERT_TRUE(kv.reserve(1));
        kv.commit(std::vector<int32_t>{5});
    }
    try {
        cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l2.m, o);
        FAIL() << "another model's cache was taken";
    } catch (const kv_error& e) {
        EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
    }
    EXPECT_EQ(cuda_kv_cache::open(h.span(), dev(), dev_bytes(), *l->m, o).n_tokens(), 1u);
}

// A shape the GPU's kernels do not take is refused at load, saying why,
// with a device or without: not loaded to fail every step.
TEST(cuda_model_shape, heads_wider_than_the_attention_takes_are_refused) {
    if (!cuda_built()) {
        GTEST_SKIP() << "built without CUDA: cuda_model says only that";
    }
    std::string why;
    const std::string wide =
        generated_model("wide_heads", "--preset tiny --n-embd 1024 --n-head 1 --n-head-kv 1", why);
    ASSERT_FALSE(wide.empty()) << why; // the build makes llmos-mkmodel: a failure, not a skip
    loaded l(wide);
    ASSERT_EQ(l.m->params().head_dim, 1024u);
    try {
        cuda_model cm(*l.m, 0);
        FAIL() << "a model with heads of 1024 dimensions was loaded";
    } catch (const cuda_error& e) {
        EXPECT_NE(std::string(e.what()).find("heads of 1024 dimensions; the GPU's attention "
                                             "takes up to 512"),
                  std::string::npos)
            << e.what();
    }
}

// --- With a device ---

namespace {

/// A cache on the device: host bookkeeping plus cudaMalloc'd blocks.
struct gpu_kv {
    host_mem host;
    cuda_device_buffer dev;
    cuda_kv_cache kv;
    gpu_kv(const model& m, const cuda_kv_options& o)
        : host(cuda_kv_cache::host_bytes_for(m.params(), o))
        , dev(cuda_kv_cache::device_bytes_for(m.params(), o))
        , kv(cuda_kv_cache::open(host.span(), dev.get(), dev.size(), m, o)) {}
};

/// Logits of the prompt's last position, then of each token of `forced`
/// fed one step at a time, on a CPU or GPU context (Entry: its batch entry
/// type) with the cache `kv`.
template <typename Entry, typename Ctx, typename Kv>
std::vector<std::vector<float>> forced_logits(Ctx& ctx, Kv& kv, uint32_t n_vocab,
                                              const std::vector<int32_t>& prompt,
                                              const std::vector<int32_t>& forced) {
    std::vector<std::vector<float>> out;
    std::vector<float> lg(n_vocab);
    Entry e{.kv = &kv, .tokens = prompt, .logits = lg.data()};
    EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
    out.push_back(lg);
    for (int32_t t : forced) {
        e.tokens = {&t, 1};
        EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
        out.push_back(lg);
    }
    return out;
}

std::vector<std::vector<float>> cpu_logits(const model& m, const std::vector<int32_t>& prompt,
                                           const std::vector<int32_t>& forced, bool exact) {
    context ctx(m, {.n_threads = 2, .exact_activations = exact});
    kv_options ko{.type = kv_type::f32, .block_tokens = 16, .max_tokens = 256};
    host_mem mem(kv_cache::bytes_for(m.params(), ko));
    auto kv = kv_cache::open(mem.span(), m, ko);
    return forced_logits<batch_entry>(ctx, kv, m.params().n_vocab, prompt, forced);
}

std::vector<std::vector<float>> gpu_logits(const cuda_model& cm, cuda_context& ctx,
                                           const std::vector<int32_t>& prompt,
                                           const std::vector<int32_t>& forced) {
    gpu_kv g(cm.get_model(), {.block_tokens = 16, .max_tokens = 256});
    return forced_logits<cuda_batch_entry>(ctx, g.kv, cm.get_model().params().n_vocab, prompt,
                                           forced);
}

/// Greedy tokens after `prompt` (n of them) on the device.
std::vector<int32_t> gpu_greedy(cuda_context& ctx, cuda_kv_cache& kv, std::vector<int32_t> toks,
                                int n, std::vector<float>* first = nullptr) {
    std::vector<float> lg(ctx.get_model().get_model().params().n_vocab);
    std::vector<int32_t> out;
    for (int i = 0; static_cast<int>(out.size()) < n; ++i) {
        cuda_batch_entry e{.kv = &kv, .tokens = toks, .logits = lg.data()};
        EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
        if (i == 0 && first) {
            *first = lg;
        }
        toks = {argmax(lg)};
        out.push_back(toks[0]);
    }
    return out;
}

using expected = llmos::testing::conformance_vector;

using llmos::testing::expect_logits;
using llmos::testing::load_conformance;
using llmos::testing::max_abs_difference;

struct gen_case {
    const char* name;
    const char* args;
    /// Prompt tokens: 32 or more take the quantized types' prefill through
    /// cuBLAS (weights dequantized to F16) when it is loaded.
    size_t prompt_len = 8;
};

// For ctest's test names.
void PrintTo(const gen_case& c, std::ostream* os) {
    *os << c.name;
}

std::string case_name(const ::testing::TestParamInfo<gen_case>& i) {
    return i.param.name;
}

/// The reference tests' shape: 256 wide, so every type's rows are whole
/// K-quant super-blocks.
#define SHAPE "--preset tiny --n-embd 256 --n-ff 512 --n-head 4 --n-head-kv 2 "

} // namespace

class cuda_vs_cpu : public ::testing::TestWithParam<gen_case> {};

// The CPU reference runs with exact_activations (weights widened to F32,
// activations not quantized): what is left between it and the device is
// the device's own rounding -- the F16 KV cache (2^-11 relative per
// element), F16 activations into cuBLAS for F16 weights and for block
// weights in prefill (dequantized to F16 there), BF16 activations into
// cuBLAS for BF16 weights (2^-9), and F32 sums in another order. Each is ~1e-3 relative on the
// logits; 3e-2 bounds their sum over 32 steps with a wide margin while still catching any wrong
// layout (a wrong nibble order or RoPE pairing gives errors of order 1).
// The top token may flip where two logits are within that noise: all but
// 3 of the positions must agree.
TEST_P(cuda_vs_cpu, logits_follow_the_cpu_engine_for_a_prompt_and_decode_steps) {
    REQUIRE_DEVICE();
    std::string why;
    const std::string path = generated_model(GetParam().name, GetParam().args, why);
    ASSERT_FALSE(path.empty()) << why; // the build makes llmos-mkmodel: a failure, not a skip
    loaded l(path);
    std::vector<int32_t> prompt{1, 17, 42, 300, 7, 99, 511, 256};
    for (size_t i = prompt.size(); i < GetParam().prompt_len; ++i) {
        prompt.push_back(static_cast<int32_t>((i * 37 + 5) % l.m->params().n_vocab));
    }
    // The forced continuation: the CPU engine's greedy tokens.
    std::vector<int32_t> forced;
    {
        std::vector<int32_t> toks = prompt;
        context ctx(*l.m, {.n_threads = 2, .exact_activations = true});
        kv_options ko{.type = kv_type::f32, .block_tokens = 16, .max_tokens = 256};
        host_mem mem(kv_cache::bytes_for(l.m->params(), ko));
        auto kv = kv_cache::open(mem.span(), *l.m, ko);
        std::vector<float> lg(l.m->params().n_vocab);
        for (int i = 0; i < decode_steps; ++i) {
            batch_entry e{.kv = &kv, .tokens = toks, .logits = lg.data()};
            ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
            toks = {argmax(lg)};
            forced.push_back(toks[0]);
        }
    }
    const auto ref = cpu_logits(*l.m, prompt, forced, true);
    cuda_model cm(*l.m);
    std::cout << "[ info     ] " << l.m->type_summary() << " -> " << cm.layout_summary() << ", "
              << (cm.device_bytes() >> 10) << " KiB\n";
    // Every matrix stays as the file has it (nothing widened at upload).
    EXPECT_EQ(cm.layout_summary().find("as F16"), std::string::npos) << cm.layout_summary();
    for (bool blas : {true, false}) {
        SCOPED_TRACE(blas ? "cuBLAS wanted" : "built-in kernels");
        cuda_context ctx(cm, {.use_cublas = blas});
        const auto got = gpu_logits(cm, ctx, prompt, forced);
        ASSERT_EQ(got.size(), ref.size());
        double worst = 0;
        int agree = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
            worst = std::max(worst, rel_l2(got[i], ref[i]));
            agree += argmax(got[i]) == argmax(ref[i]);
        }
        std::cout << "[ info     ] " << ctx.gemm_path() << ": worst relative L2 " << worst
                  << ", top token " << agree << "/" << ref.size() << "\n";
        EXPECT_LE(worst, 3e-2);
        EXPECT_GE(agree, static_cast<int>(ref.size()) - 3);
    }
}

INSTANTIATE_TEST_SUITE_P(
    types, cuda_vs_cpu,
    ::testing::Values(
        gen_case{"llama_f32", SHAPE "--type f32"}, gen_case{"llama_f16", SHAPE "--type f16"},
        gen_case{"llama_bf16", SHAPE "--type bf16"}, gen_case{"llama_q8_0", SHAPE "--type q8_0"},
        gen_case{"llama_q4_0", SHAPE "--type q4_0"},
        gen_case{"llama_q4_k_m", SHAPE "--type q4_k_m"},
        // Rows of 320: Q5_K and its fallback Q5_1 (and Q8_0
        // for the head), read by the kernels and, with 40
        // tokens, dequantized for cuBLAS.
        gen_case{"llama_q5_k_320",
                 "--preset tiny --n-embd 320 --n-ff 512 --n-head 5 --n-head-kv 1 "
                 "--type q5_k",
                 40},
        gen_case{"llama_q4_1", SHAPE "--type q4_1"}, gen_case{"llama_q5_0", SHAPE "--type q5_0"},
        gen_case{"tiny_q8_0", "--preset tiny --type q8_0"},
        gen_case{"qwen2_q8_0", SHAPE "--arch qwen2 --vocab bpe --type q8_0"},
        gen_case{"qwen2_q4_k_m", SHAPE "--arch qwen2 --vocab bpe --type q4_k_m"},
        gen_case{"llama_q4_0_tied", SHAPE "--type q4_0 --tied"},
        gen_case{"llama_q8_0_prompt40", SHAPE "--type q8_0", 40},
        gen_case{"llama_q4_0_prompt40", SHAPE "--type q4_0", 40},
        gen_case{"llama_q4_k_m_prompt40", SHAPE "--type q4_k_m", 40}),
    case_name);

namespace {

// The parameter of the conformance cases: cuBLAS or the built-in kernels.
std::string gemm_name(const ::testing::TestParamInfo<bool>& i) {
    return i.param ? "cublas" : "kernels";
}

} // namespace

class cuda_conformance : public ::testing::TestWithParam<bool> {
protected:
    static void SetUpTestSuite() { l = std::make_unique<loaded>(tiny); }
    static void TearDownTestSuite() { l.reset(); }
    static inline std::unique_ptr<loaded> l;
};

// The external vector (F32 weights, llama.cpp with an F32 cache): the F16
// cache is the only rounding beyond F32 sums (logits within 1e-3).
TEST_P(cuda_conformance, prompt_logits_and_greedy_tokens_match_the_other_implementation) {
    REQUIRE_DEVICE();
    cuda_model cm(*l->m);
    cuda_context ctx(cm, {.use_cublas = GetParam()});
    std::cout << "[ info     ] " << ctx.gemm_path() << "\n";
    for (const char* name : {"hello", "fox", "bytes"}) {
        SCOPED_TRACE(name);
        expected ex = load_conformance(name);
        ASSERT_FALSE(ex.tokens.empty());
        ASSERT_FALSE(ex.greedy.empty());
        gpu_kv g(*l->m, {.block_tokens = 16, .max_tokens = 256});
        std::vector<float> first;
        auto got = gpu_greedy(ctx, g.kv, ex.tokens, static_cast<int>(ex.greedy.size()), &first);
        EXPECT_EQ(got, ex.greedy);
        expect_logits(ex, name, first, 1e-3f);
    }
}

INSTANTIATE_TEST_SUITE_P(gemm, cuda_conformance, ::testing::Values(true, false), gemm_name);

// Two sequences in one step (a prefill mixed with a decode, then decodes
// side by side) give the tokens each gives alone, logits within float
// noise (cuBLAS may pick another algorithm for another width).
TEST_P(cuda_conformance, batching_changes_nothing_but_float_noise) {
    REQUIRE_DEVICE();
    cuda_model cm(*l->m);
    cuda_context ctx(cm, {.use_cublas = GetParam()});
    const uint32_t V = l->m->params().n_vocab;
    expected a = load_conformance("hello"), b = load_conformance("fox");
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 256};
    gpu_kv sa(*l->m, ko), sb(*l->m, ko), ka(*l->m, ko), kb(*l->m, ko);
    auto single_a = gpu_greedy(ctx, sa.kv, a.tokens, 32);
    auto single_b = gpu_greedy(ctx, sb.kv, b.tokens, 32);
    std::vector<float> la(V), lb(V);
    std::vector<int32_t> ta = a.tokens, tb, got_a, got_b;
    for (int step = 0; got_a.size() < 32 || got_b.size() < 32; ++step) {
        std::vector<cuda_batch_entry> batch;
        if (got_a.size() < 32) {
            batch.push_back({.kv = &ka.kv, .tokens = ta, .logits = la.data()});
        }
        if (step == 1) {
            tb = b.tokens;
        }
        if (step >= 1 && got_b.size() < 32) {
            batch.push_back({.kv = &kb.kv, .tokens = tb, .logits = lb.data()});
        }
        ASSERT_EQ(ctx.step(batch), step_status::ok);
        if (got_a.size() < 32) {
            got_a.push_back(argmax(la));
            ta = {got_a.back()};
        }
        if (step >= 1 && got_b.size() < 32) {
            got_b.push_back(argmax(lb));
            tb = {got_b.back()};
        }
    }
    EXPECT_EQ(got_a, single_a);
    EXPECT_EQ(got_b, single_b);
    // all_logits of a prefill equal the per-step last logits.
    gpu_kv kc(*l->m, ko), kd(*l->m, ko);
    std::vector<float> all(a.tokens.size() * V), last(V), one(V);
    cuda_batch_entry e{
        .kv = &kc.kv, .tokens = a.tokens, .logits = last.data(), .all_logits = all.data()};
    ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    EXPECT_EQ(std::vector<float>(all.end() - V, all.end()), last);
    for (size_t t = 0; t < a.tokens.size(); ++t) {
        cuda_batch_entry s{.kv = &kd.kv, .tokens = {&a.tokens[t], 1}, .logits = one.data()};
        ASSERT_EQ(ctx.step({&s, 1}), step_status::ok);
        std::vector<float> row(all.begin() + long(t * V), all.begin() + long((t + 1) * V));
        EXPECT_LE(rel_l2(row, one), 1e-3) << "position " << t;
    }
}

// Attention in parts (4, and the most, of 32 positions and mostly empty),
// replayed as graphs, beside another sequence: the tokens and, within
// float noise, the logits of whole rows. One sequence's prompt is 12 times
// "hello"'s (some 100 positions), so that its rows do split into 4 (on
// cuBLAS: on the emulator a prefill that long through the built-in kernels
// takes too long, and there the prompt is "hello" alone).
TEST_P(cuda_conformance, attention_in_parts_gives_what_whole_rows_give) {
    REQUIRE_DEVICE();
    cuda_model cm(*l->m);
    const uint32_t V = l->m->params().n_vocab;
    expected a = load_conformance("hello"), b = load_conformance("fox");
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 256};
    auto run = [&](uint32_t parts, std::vector<float>& last_a) {
        cuda_context ctx(cm, {.use_cublas = GetParam(), .attention_parts = parts});
        gpu_kv ka(*l->m, ko), kb(*l->m, ko);
        std::vector<float> la(V), lb(V);
        std::vector<int32_t> ta, tb = b.tokens, got;
        for (int r = 0; r < (GetParam() ? 12 : 1); ++r) {
            ta.insert(ta.end(), a.tokens.begin(), a.tokens.end());
        }
        for (int step = 0; step < 16; ++step) {
            cuda_batch_entry batch[2] = {{.kv = &ka.kv, .tokens = ta, .logits = la.data()},
                                         {.kv = &kb.kv, .tokens = tb, .logits = lb.data()}};
            EXPECT_EQ(ctx.step(batch), step_status::ok);
            ta = {argmax(la)};
            tb = {argmax(lb)};
            got.push_back(ta[0]);
            got.push_back(tb[0]);
        }
        last_a = la;
        if (ctx.uses_graphs()) {
            EXPECT_GT(ctx.graph_stats().replayed, 0u) << parts << " parts";
        }
        return got;
    };
    std::vector<float> whole_logits, part_logits;
    const std::vector<int32_t> whole = run(1, whole_logits);
    for (uint32_t parts : {4u, cuda_max_attention_parts}) {
        SCOPED_TRACE(std::to_string(parts) + " parts");
        EXPECT_EQ(run(parts, part_logits), whole);
        EXPECT_LE(rel_l2(part_logits, whole_logits), 1e-5);
    }
    EXPECT_THROW(cuda_context(cm, {.attention_parts = cuda_max_attention_parts + 1}),
                 std::invalid_argument);
    // A step's rows are one launch's grid: no more than it can hold.
    EXPECT_THROW(cuda_context(cm, {.max_batch_tokens = cuda_max_batch_tokens + 1}),
                 std::invalid_argument);
}

// 20 tokens, the context and cache object gone, a new context over the
// same host and device memory: the same continuation as without a break.
TEST_P(cuda_conformance, a_new_context_resumes_the_cache_without_prefill) {
    REQUIRE_DEVICE();
    cuda_model cm(*l->m);
    expected a = load_conformance("hello");
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 256};
    std::vector<int32_t> whole;
    {
        cuda_context ctx(cm, {.use_cublas = GetParam()});
        gpu_kv g(*l->m, ko);
        whole = gpu_greedy(ctx, g.kv, a.tokens, 40);
    }
    host_mem host(cuda_kv_cache::host_bytes_for(l->m->params(), ko));
    cuda_device_buffer dev(cuda_kv_cache::device_bytes_for(l->m->params(), ko));
    std::vector<int32_t> first, next;
    int32_t pending;
    {
        cuda_context ctx(cm, {.use_cublas = GetParam()});
        auto kv = cuda_kv_cache::open(host.span(), dev.get(), dev.size(), *l->m, ko);
        first = gpu_greedy(ctx, kv, a.tokens, 20);
        pending = first.back(); // generated, not yet in the cache
        EXPECT_EQ(kv.n_tokens(), a.tokens.size() + 19);
    }
    {
        cuda_model cm2(*l->m); // a new worker: weights uploaded again
        cuda_context ctx(cm2, {.use_cublas = GetParam()});
        auto kv = cuda_kv_cache::open(host.span(), dev.get(), dev.size(), *l->m, ko);
        ASSERT_TRUE(kv.resumed());
        ASSERT_EQ(kv.n_tokens(), a.tokens.size() + 19);
        next = gpu_greedy(ctx, kv, {pending}, 20);
    }
    first.insert(first.end(), next.begin(), next.end());
    EXPECT_EQ(first, whole);
}

// Refused batches change nothing: not the cache, not the logits.
TEST_P(cuda_conformance, bad_batches_change_nothing) {
    REQUIRE_DEVICE();
    cuda_model cm(*l->m);
    cuda_context ctx(cm, {.max_batch_tokens = 64, .use_cublas = GetParam()});
    const uint32_t V = l->m->params().n_vocab;
    gpu_kv g(*l->m, {.block_tokens = 16, .max_tokens = 32});
    std::vector<int32_t> prompt{1, 259, 260};
    std::vector<float> lg(V, 0.0f);
    cuda_batch_entry e{.kv = &g.kv, .tokens = prompt, .logits = lg.data()};
    ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    const std::vector<float> before = lg;
    std::vector<float> sentinel(V, -7.0f);

    std::vector<int32_t> bad{5, int32_t(V)};
    cuda_batch_entry eb{.kv = &g.kv, .tokens = bad, .logits = sentinel.data()};
    EXPECT_EQ(ctx.step({&eb, 1}), step_status::bad_token);
    std::vector<int32_t> neg{-1};
    eb.tokens = neg;
    EXPECT_EQ(ctx.step({&eb, 1}), step_status::bad_token);
    std::vector<int32_t> many(30, 5);
    eb.tokens = many;
    EXPECT_EQ(ctx.step({&eb, 1}), step_status::cache_full);
    std::vector<int32_t> big(65, 5);
    gpu_kv g2(*l->m, {.block_tokens = 16, .max_tokens = 256});
    cuda_batch_entry e2{.kv = &g2.kv, .tokens = big, .logits = sentinel.data()};
    EXPECT_EQ(ctx.step({&e2, 1}), step_status::too_many_tokens);
    std::vector<int32_t> one{5};
    cuda_batch_entry twice[2] = {{.kv = &g.kv, .tokens = one}, {.kv = &g.kv, .tokens = one}};
    EXPECT_EQ(ctx.step(twice), step_status::bad_batch);
    cuda_batch_entry none{.kv = nullptr, .tokens = one};
    EXPECT_EQ(ctx.step({&none, 1}), step_status::bad_batch);
    // A cache made for a model of more layers: this one's rows would not
    // be where its blocks are.
    std::string why;
    const std::string deeper = generated_model("layers4", "--preset tiny --n-layer 4", why);
    ASSERT_FALSE(deeper.empty()) << why;
    loaded l4(deeper);
    ASSERT_NE(l4.m->params().n_layer, l->m->params().n_layer);
    gpu_kv g4(*l4.m, {.block_tokens = 16, .max_tokens = 32});
    cuda_batch_entry e4{.kv = &g4.kv, .tokens = one, .logits = sentinel.data()};
    EXPECT_EQ(ctx.step({&e4, 1}), step_status::bad_batch);
    EXPECT_EQ(g4.kv.n_tokens(), 0u);

    EXPECT_EQ(g.kv.n_tokens(), 3u);
    EXPECT_EQ(g2.kv.n_tokens(), 0u);
    EXPECT_EQ(sentinel, std::vector<float>(V, -7.0f));
    // And the cache still gives what it gave: the next token's logits
    // equal a fresh run's.
    std::vector<int32_t> next{argmax(before)};
    cuda_batch_entry en{.kv = &g.kv, .tokens = next, .logits = lg.data()};
    ASSERT_EQ(ctx.step({&en, 1}), step_status::ok);
    gpu_kv fresh(*l->m, {.block_tokens = 16, .max_tokens = 32});
    std::vector<int32_t> all{1, 259, 260, next[0]};
    std::vector<float> lf(V);
    cuda_batch_entry ef{.kv = &fresh.kv, .tokens = all, .logits = lf.data()};
    ASSERT_EQ(ctx.step({&ef, 1}), step_status::ok);
    EXPECT_LE(rel_l2(lg, lf), 1e-3);
    EXPECT_EQ(argmax(lg), argmax(lf));
}

// Graphs against launches, for each GEMM path: a context with graphs and
// one without on the conformance model. Skipped without a device, and
// when graphs are off (LLMOS_CUDA_GRAPHS=0).
class cuda_graphs : public cuda_conformance {
protected:
    void SetUp() override {
        REQUIRE_DEVICE();
        _cm.emplace(*l->m);
        _graphs.emplace(*_cm, cuda_context_options{.use_cublas = GetParam()});
        _launches.emplace(*_cm,
                          cuda_context_options{.use_cublas = GetParam(), .use_graphs = false});
        if (!_graphs->uses_graphs()) {
            GTEST_SKIP() << "graphs are off: " << _graphs->graph_path();
        }
    }
    std::optional<cuda_model> _cm;
    std::optional<cuda_context> _graphs, _launches;
};

INSTANTIATE_TEST_SUITE_P(gemm, cuda_graphs, ::testing::Values(true, false), gemm_name);

// Two sequences decoding side by side, on a context with graphs and on
// one without: the same logits (bit for bit on the built-in kernels; the
// contexts' cuBLAS workspaces differ, so its algorithm may too), from one
// graph captured at the second step of the shape and replayed after, while
// the caches grow past a block (the metadata the graph reads stays put).
TEST_P(cuda_graphs, graph_replays_give_what_launches_give) {
    cuda_context& graphs = *_graphs;
    cuda_context& launches = *_launches;
    EXPECT_FALSE(launches.uses_graphs());
    EXPECT_EQ(launches.graph_path(), "kernel launches (graphs not wanted)");
    std::cout << "[ info     ] " << graphs.graph_path() << "\n";
    const uint32_t V = l->m->params().n_vocab;
    expected a = load_conformance("hello"), b = load_conformance("fox");
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 256};
    gpu_kv ga(*l->m, ko), gb(*l->m, ko), la(*l->m, ko), lb(*l->m, ko);
    std::vector<float> lga(V), lgb(V), lla(V), llb(V);
    auto same = [&](const std::vector<float>& got, const std::vector<float>& want) {
        expect_as_launched(got, want, graphs.uses_cublas());
    };
    std::vector<int32_t> ta = a.tokens, tb = b.tokens;
    // The prompts, one sequence a step (shapes seen once: launched).
    for (auto [kv, lkv, toks, lg, llg] :
         {std::tuple{&ga, &la, &ta, &lga, &lla}, std::tuple{&gb, &lb, &tb, &lgb, &llb}}) {
        cuda_batch_entry g{.kv = &kv->kv, .tokens = *toks, .logits = lg->data()};
        cuda_batch_entry x{.kv = &lkv->kv, .tokens = *toks, .logits = llg->data()};
        ASSERT_EQ(graphs.step({&g, 1}), step_status::ok);
        ASSERT_EQ(launches.step({&x, 1}), step_status::ok);
        same(*lg, *llg);
    }
    const size_t shortest = std::min(a.tokens.size(), b.tokens.size());
    const int steps = std::max(decode_steps, 18 - int(std::min<size_t>(shortest, 16)));
    for (int step = 0; step < steps; ++step) {
        SCOPED_TRACE("decode step " + std::to_string(step));
        ta = {argmax(lla)};
        tb = {argmax(llb)};
        cuda_batch_entry g[2] = {{.kv = &ga.kv, .tokens = ta, .logits = lga.data()},
                                 {.kv = &gb.kv, .tokens = tb, .logits = lgb.data()}};
        cuda_batch_entry x[2] = {{.kv = &la.kv, .tokens = ta, .logits = lla.data()},
                                 {.kv = &lb.kv, .tokens = tb, .logits = llb.data()}};
        ASSERT_EQ(graphs.step(g), step_status::ok);
        ASSERT_EQ(launches.step(x), step_status::ok);
        same(lga, lla);
        same(lgb, llb);
    }
    EXPECT_GT(ga.kv.n_tokens(), 16u) << "past the first block";
    EXPECT_GT(gb.kv.n_tokens(), 16u) << "past the first block";
    const cuda_graph_stats gs = graphs.graph_stats(), ls = launches.graph_stats();
    EXPECT_EQ(gs.captured, 1u);
    EXPECT_EQ(gs.replayed, uint64_t(steps - 1));
    EXPECT_EQ(gs.launched, 3u) << "two prompts and the first decode step";
    EXPECT_EQ(gs.dropped, 0u);
    EXPECT_EQ(gs.cached, 1u);
    EXPECT_EQ(ls.captured + ls.replayed + ls.cached, 0u);
    EXPECT_EQ(ls.launched, uint64_t(steps + 2));
}

// One sequence decoding from its first token: a graph for it, kept while
// the cache grows past a block and while another sequence's prompt runs.
// Then a step with more logit rows than any graph step moves the scratch
// the graph points into: it is dropped and captured again, and decoding
// goes on giving what launches give (a graph replayed into the old
// scratch would read freed memory).
TEST_P(cuda_graphs, graphs_follow_the_scratch_when_it_moves) {
    cuda_context& graphs = *_graphs;
    cuda_context& launches = *_launches;
    const uint32_t V = l->m->params().n_vocab;
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 256};
    gpu_kv ga(*l->m, ko), la(*l->m, ko);
    std::vector<float> lg(V), ll(V);
    std::vector<int32_t> tok{1};
    auto decode = [&](int n) {
        for (int i = 0; i < n; ++i) {
            cuda_batch_entry g{.kv = &ga.kv, .tokens = tok, .logits = lg.data()};
            cuda_batch_entry x{.kv = &la.kv, .tokens = tok, .logits = ll.data()};
            ASSERT_EQ(graphs.step({&g, 1}), step_status::ok);
            ASSERT_EQ(launches.step({&x, 1}), step_status::ok);
            expect_as_launched(lg, ll, graphs.uses_cublas());
            tok = {argmax(ll)};
        }
    };
    // Launched, captured, replayed 17 times: past the cache's first block,
    // with one more block table entry in the step's metadata.
    decode(18);
    ASSERT_EQ(ga.kv.n_tokens(), 18u);
    ASSERT_EQ(graphs.graph_stats().captured, 1u) << "the metadata stayed put";
    ASSERT_EQ(graphs.graph_stats().replayed, 17u);
    // A 48-token prompt of another sequence fits the scratch (sized for
    // the largest step at the first one): the graph stays.
    gpu_kv big(*l->m, ko);
    std::vector<int32_t> prompt(200);
    for (size_t i = 0; i < prompt.size(); ++i) {
        prompt[i] = int32_t(3 + i * 7 % (V - 3));
    }
    cuda_batch_entry e{.kv = &big.kv, .tokens = {prompt.data(), 48}, .logits = lg.data()};
    ASSERT_EQ(graphs.step({&e, 1}), step_status::ok);
    EXPECT_EQ(graphs.graph_stats().dropped, 0u);
    EXPECT_EQ(graphs.graph_stats().cached, 1u);
    // 130 more with the logits of every one: more logit rows than a
    // graph step has, so the logits buffer moves.
    std::vector<float> all(130 * size_t(V));
    e.tokens = {prompt.data() + 48, 130};
    e.all_logits = all.data();
    ASSERT_EQ(graphs.step({&e, 1}), step_status::ok);
    EXPECT_EQ(graphs.graph_stats().dropped, 1u);
    EXPECT_EQ(graphs.graph_stats().cached, 0u);
    decode(4); // launched, captured again, replayed twice
    const cuda_graph_stats gs = graphs.graph_stats();
    EXPECT_EQ(gs.captured, 2u);
    EXPECT_EQ(gs.replayed, 20u);
    EXPECT_EQ(gs.launched, 4u);
    EXPECT_EQ(gs.cached, 1u);
}

namespace {

/// Sequences decoding greedily side by side on a context with graphs and
/// one without, the logits compared at every step.
struct twin_decoder {
    struct seq {
        gpu_kv g, l;
        std::vector<float> lg, ll;
        std::vector<int32_t> tok{1};
    };
    cuda_context& graphs;
    cuda_context& launches;
    std::vector<std::unique_ptr<seq>> seqs;

    twin_decoder(const model& m, cuda_context& gr, cuda_context& la, size_t n)
        : graphs(gr)
        , launches(la) {
        const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 256};
        const uint32_t V = m.params().n_vocab;
        for (size_t i = 0; i < n; ++i) {
            seqs.push_back(std::make_unique<seq>(
                seq{gpu_kv(m, ko), gpu_kv(m, ko), std::vector<float>(V), std::vector<float>(V)}));
        }
    }

    /// One token for each of the first `b` sequences, in one step of each
    /// context.
    void step(size_t b) {
        std::vector<cuda_batch_entry> g, x;
        for (size_t i = 0; i < b; ++i) {
            seq& s = *seqs[i];
            g.push_back({.kv = &s.g.kv, .tokens = s.tok, .logits = s.lg.data()});
            x.push_back({.kv = &s.l.kv, .tokens = s.tok, .logits = s.ll.data()});
        }
        ASSERT_EQ(graphs.step(g), step_status::ok);
        ASSERT_EQ(launches.step(x), step_status::ok);
        for (size_t i = 0; i < b; ++i) {
            seq& s = *seqs[i];
            expect_as_launched(s.lg, s.ll, graphs.uses_cublas());
            s.tok = {argmax(s.ll)};
        }
    }
};

} // namespace

// Two graphs kept: a third shape's capture drops the least recently
// replayed one, not the first captured, and a dropped shape is launched,
// then captured again.
TEST_P(cuda_graphs, the_least_recently_replayed_graph_goes_when_they_are_too_many) {
    cuda_context graphs(*_cm, {.use_cublas = GetParam(), .max_graphs = 2});
    cuda_context& launches = *_launches;
    twin_decoder d(*l->m, graphs, launches, 3);
    auto stats = [&] {
        const cuda_graph_stats s = graphs.graph_stats();
        return std::vector<uint64_t>{s.captured, s.replayed, s.launched, s.dropped, s.cached};
    };
    using v = std::vector<uint64_t>; // captured, replayed, launched, dropped, cached
    for (size_t b : {1, 1, 1, 2, 2, 2}) {
        d.step(b); // each shape: launched, captured, replayed
    }
    ASSERT_EQ(stats(), (v{2, 4, 2, 0, 2}));
    d.step(1); // the first shape's graph is now the more recently replayed
    for (size_t b : {3, 3, 3}) {
        d.step(b); // its capture drops the 2-sequence graph
    }
    ASSERT_EQ(stats(), (v{3, 7, 3, 1, 2}));
    d.step(1);
    EXPECT_EQ(stats(), (v{3, 8, 3, 1, 2})) << "the first graph captured is still there";
    d.step(2); // dropped: launched (a shape seen once), then captured again
    d.step(2);
    EXPECT_EQ(stats(), (v{4, 9, 4, 2, 2})) << "the 3-sequence graph went this time";
    d.step(1);
    d.step(3);
    EXPECT_EQ(stats(), (v{4, 10, 5, 2, 2}));
}

#ifdef LLMOS_CUDA_EMU
// The emulated device invalidates captures on demand, as another thread's
// device-wide call would: a step whose capture fails part way is launched
// and gives what launches give (the capture's half-run did not touch the
// caches); the shape is captured again later; a success resets the count,
// and three failures in a row turn graphs off for the context, which then
// says why.
TEST_P(cuda_graphs, failed_captures_launch_their_steps_and_three_in_a_row_end_graphs) {
    cuda_context& graphs = *_graphs;
    cuda_context& launches = *_launches;
    struct no_more_failures {
        ~no_more_failures() { llmos::cuda_emu::fail_captures(0); }
    } reset;
    twin_decoder d(*l->m, graphs, launches, 2);
    auto stats = [&] {
        const cuda_graph_stats s = graphs.graph_stats();
        return std::vector<uint64_t>{s.captured, s.replayed, s.launched, s.failed};
    };
    using v = std::vector<uint64_t>; // captured, replayed, launched, failed
    // Invalidated at its 20th piece of work (of 34): inside the layers.
    llmos::cuda_emu::fail_captures(1, 20);
    d.step(1); // launched
    d.step(1); // its capture fails: launched
    ASSERT_EQ(stats(), (v{0, 0, 2, 1}));
    EXPECT_NE(graphs.last_graph_failure().find("cudaErrorStreamCaptureInvalidated"),
              std::string::npos)
        << graphs.last_graph_failure();
    EXPECT_TRUE(graphs.uses_graphs());
    for (int i = 0; i < 4; ++i) {
        d.step(1); // launched, captured, replayed twice
    }
    ASSERT_EQ(stats(), (v{1, 3, 3, 1}));
    // A new shape's captures fail three times: graphs end there, not
    // after two (the success in between reset the count).
    llmos::cuda_emu::fail_captures(3, 20);
    for (int i = 0; i < 4; ++i) {
        d.step(2); // launched, failed, launched, failed
    }
    ASSERT_EQ(stats(), (v{1, 3, 7, 3}));
    EXPECT_TRUE(graphs.uses_graphs()) << graphs.graph_path();
    d.step(2);
    d.step(2);
    ASSERT_EQ(stats(), (v{1, 3, 9, 4}));
    EXPECT_FALSE(graphs.uses_graphs());
    EXPECT_EQ(graphs.graph_path(), "kernel launches (3 graph captures failed in a row; the last: " +
                                       graphs.last_graph_failure() + ")");
    // From now on every step is launched, the kept graph's shape too.
    d.step(1);
    d.step(2);
    d.step(2);
    EXPECT_EQ(stats(), (v{1, 3, 12, 4}));
}
#endif

namespace {

/// The generated model `name` (mkmodel `args`) with layer 0's ffn_norm
/// weights times `factor`, written beside it; "" with `why` set.
std::string with_ffn_norm_scaled(const std::string& name, const std::string& args, float factor,
                                 std::string& why) {
    const std::string path = generated_model(name, args, why);
    if (path.empty()) {
        return {};
    }
    const std::string out = llmos::testing::model_workdir() + "/" + name + "-ffn-norm-x" +
                            std::to_string(int(factor)) + ".gguf";
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const gguf_file f = gguf_file::open(path);
    const gguf_tensor* t = f.find_tensor("blk.0.ffn_norm.weight");
    if (!t || t->type != ggml_type::f32) {
        why = path + ": no F32 blk.0.ffn_norm.weight";
        return {};
    }
    for (uint64_t i = 0; i < t->data.size() / 4; ++i) {
        float v;
        char* p = bytes.data() + f.data_offset() + t->offset + i * 4;
        std::memcpy(&v, p, 4);
        v *= factor;
        std::memcpy(p, &v, 4);
    }
    std::ofstream(out, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    return out;
}

} // namespace

// Activations beyond F16's range (+-65504) on their way into cuBLAS: layer
// 0's ffn_norm weights 2000 times larger make gate * up, the input of
// ffn_down, of order 1e5 to 1e7 (real models -- Qwen2, Gemma, some Llama --
// reach 1e5 there), and the residual after it 1e5. The CPU engine keeps them
// in F32; the device's F16 GEMMs (F16 weights at every step, block weights
// dequantized in a 40-token prompt) get them scaled per row into F16's
// range and undone after, so the logits follow the CPU engine's within the
// tolerance of cuda_vs_cpu (clamped to 65504, they were off by far more).
TEST(cuda_context, activations_beyond_f16_range_follow_the_cpu_engine) {
    REQUIRE_DEVICE();
    struct scaled_case {
        const char* name;
        const char* args;
        size_t prompt_len;
    };
    for (const scaled_case& sc : {scaled_case{"llama_f16", SHAPE "--type f16", 8},
                                  scaled_case{"llama_q8_0", SHAPE "--type q8_0", 40}}) {
        SCOPED_TRACE(sc.name);
        std::string why;
        const std::string path = with_ffn_norm_scaled(sc.name, sc.args, 2000.0f, why);
        ASSERT_FALSE(path.empty()) << why;
        loaded l(path);
        const uint32_t V = l.m->params().n_vocab;
        std::vector<int32_t> prompt(sc.prompt_len);
        for (size_t i = 0; i < prompt.size(); ++i) {
            prompt[i] = static_cast<int32_t>((i * 37 + 5) % V);
        }
        const std::vector<int32_t> forced{3, 141, 59, 26};
        const auto ref = cpu_logits(*l.m, prompt, forced, true);
        cuda_model cm(*l.m);
        cuda_context ctx(cm);
        const auto got = gpu_logits(cm, ctx, prompt, forced);
        ASSERT_EQ(got.size(), ref.size());
        double worst = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
            worst = std::max(worst, rel_l2(got[i], ref[i]));
        }
        std::cout << "[ info     ] " << ctx.gemm_path() << ": worst relative L2 " << worst << "\n";
        EXPECT_LE(worst, 3e-2);
    }
}

#ifdef LLMOS_CUDA_EMU
// Device memory that runs out while a step sizes its scratch: the step
// throws cuda_error and commits nothing. The CUDA error the failed
// cudaMalloc left behind is not the next step's: that one is launched, the
// one after captured (not a failed capture), and they give what a context
// that never failed gives.
TEST(cuda_context, a_failed_allocation_fails_its_own_step_only) {
    REQUIRE_DEVICE();
    loaded l(tiny);
    cuda_model cm(*l.m);
    cuda_context ctx(cm), fresh(cm);
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 64};
    gpu_kv a(*l.m, ko), b(*l.m, ko);
    const uint32_t V = l.m->params().n_vocab;
    std::vector<float> la(V), lb(V);
    std::vector<int32_t> tok{1};
    cuda_batch_entry ea{.kv = &a.kv, .tokens = tok, .logits = la.data()};
    cuda_batch_entry eb{.kv = &b.kv, .tokens = tok, .logits = lb.data()};
    llmos::cuda_emu::fail_allocations(1);
    EXPECT_THROW(ctx.step({&ea, 1}), cuda_error);
    llmos::cuda_emu::fail_allocations(0);
    EXPECT_EQ(a.kv.n_tokens(), 0u);
    for (int i = 0; i < 4; ++i) {
        SCOPED_TRACE("step " + std::to_string(i));
        ASSERT_EQ(ctx.step({&ea, 1}), step_status::ok);
        ASSERT_EQ(fresh.step({&eb, 1}), step_status::ok);
        expect_as_launched(la, lb, ctx.uses_cublas());
        tok[0] = argmax(lb);
    }
    const cuda_graph_stats st = ctx.graph_stats();
    EXPECT_EQ(st.failed, 0u) << ctx.last_graph_failure();
    EXPECT_EQ(st.launched, 1u);
    EXPECT_EQ(st.captured, 1u);
    EXPECT_EQ(st.replayed, 3u);
    EXPECT_TRUE(ctx.uses_graphs()) << ctx.graph_path();
}
#endif

// A prompt chunk's shape that recurs (40 tokens: with cuBLAS, block
// weights dequantized to F16 for it) on a Q8_0 model: the second prompt is
// captured, the third replayed, each giving what launches give; then the
// three sequences' decode steps, replayed too.
TEST(cuda_context, a_recurring_prompt_shape_replays_with_dequantized_weights) {
    REQUIRE_DEVICE();
    std::string why;
    const std::string path = generated_model("llama_q8_0", SHAPE "--type q8_0", why);
    ASSERT_FALSE(path.empty()) << why;
    loaded l(path);
    cuda_model cm(*l.m);
    cuda_context graphs(cm), launches(cm, {.use_graphs = false});
    if (!graphs.uses_graphs()) {
        GTEST_SKIP() << "graphs are off: " << graphs.graph_path();
    }
    std::cout << "[ info     ] " << graphs.gemm_path() << "\n";
    const uint32_t V = l.m->params().n_vocab;
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 128};
    std::vector<std::unique_ptr<gpu_kv>> gk, lk;
    std::vector<std::vector<float>> gl(3, std::vector<float>(V)), ll = gl;
    for (int s = 0; s < 3; ++s) {
        SCOPED_TRACE("prompt " + std::to_string(s));
        gk.push_back(std::make_unique<gpu_kv>(*l.m, ko));
        lk.push_back(std::make_unique<gpu_kv>(*l.m, ko));
        std::vector<int32_t> prompt(40);
        for (size_t i = 0; i < prompt.size(); ++i) {
            prompt[i] = int32_t((i * 31 + size_t(s) * 7 + 3) % V);
        }
        cuda_batch_entry g{.kv = &gk.back()->kv, .tokens = prompt, .logits = gl[s].data()};
        cuda_batch_entry x{.kv = &lk.back()->kv, .tokens = prompt, .logits = ll[s].data()};
        ASSERT_EQ(graphs.step({&g, 1}), step_status::ok);
        ASSERT_EQ(launches.step({&x, 1}), step_status::ok);
        expect_as_launched(gl[s], ll[s], graphs.uses_cublas());
    }
    EXPECT_EQ(graphs.graph_stats().captured, 1u);
    EXPECT_EQ(graphs.graph_stats().replayed, 2u);
    for (int step = 0; step < 3; ++step) {
        SCOPED_TRACE("decode step " + std::to_string(step));
        std::vector<int32_t> tok(3);
        std::vector<cuda_batch_entry> g, x;
        for (int s = 0; s < 3; ++s) {
            tok[s] = argmax(ll[s]);
        }
        for (int s = 0; s < 3; ++s) {
            g.push_back({.kv = &gk[s]->kv, .tokens = {&tok[s], 1}, .logits = gl[s].data()});
            x.push_back({.kv = &lk[s]->kv, .tokens = {&tok[s], 1}, .logits = ll[s].data()});
        }
        ASSERT_EQ(graphs.step(g), step_status::ok);
        ASSERT_EQ(launches.step(x), step_status::ok);
        for (int s = 0; s < 3; ++s) {
            expect_as_launched(gl[s], ll[s], graphs.uses_cublas());
        }
    }
    const cuda_graph_stats st = graphs.graph_stats();
    EXPECT_EQ(st.captured, 2u);
    EXPECT_EQ(st.replayed, 4u);
    EXPECT_EQ(st.launched, 2u);
}

// A block-quantized matrix larger than the context's dequantization tile
// (an 8B model's output head is a GB in F16) is dequantized and multiplied
// a tile of rows at a time: the logits are those of the whole matrix at
// once, whether the tiles divide its rows or not.
TEST(cuda_context, quantized_weights_dequantized_in_row_tiles_give_the_same_logits) {
    REQUIRE_DEVICE();
    std::string why;
    const std::string path = generated_model("llama_q8_0", SHAPE "--type q8_0", why);
    ASSERT_FALSE(path.empty()) << why;
    loaded l(path);
    cuda_model cm(*l.m);
    const uint32_t V = l.m->params().n_vocab;
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 128};
    std::vector<int32_t> prompt(40); // 32 or more: the dequantized path
    for (size_t i = 0; i < prompt.size(); ++i) {
        prompt[i] = int32_t((i * 29 + 11) % V);
    }
    auto logits = [&](uint64_t tile_bytes) {
        cuda_context ctx(cm, {.use_graphs = false, .dequant_tile_bytes = tile_bytes});
        EXPECT_TRUE(ctx.uses_cublas()) << ctx.gemm_path();
        gpu_kv kv(*l.m, ko);
        std::vector<float> lg(V);
        cuda_batch_entry e{.kv = &kv.kv, .tokens = prompt, .logits = lg.data()};
        EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
        return lg;
    };
    const std::vector<float> whole = logits(64ull << 20);
    // 18 rows of the widest (512) matrices, 36 of the others: tiles that
    // leave a remainder of every matrix.
    expect_as_launched(logits(18 * 512 * 2 + 100), whole, true);
}

// Graphs are captured on one thread while another makes and frees device
// memory and uploads a model, calls that synchronize the device (which a
// device refuses during any thread's capture, invalidating it): neither
// side fails, and graphs stay on: 18 batch sizes, each stepped twice, are
// up to 18 captures beside the uploads (a capture waits for the other
// thread's call to end), then replayed.
TEST(cuda_context, captures_and_device_wide_calls_on_other_threads_keep_apart) {
    REQUIRE_DEVICE();
    loaded l(tiny);
    cuda_model cm(*l.m);
    std::atomic<bool> done{false};
    std::string other_error;
    std::atomic<int> uploads{0};
    std::thread other([&] {
        try {
            while (!done) {
                cuda_device_buffer b(1 << 20);
                cuda_model again(*l.m);
                ++uploads;
            }
        } catch (const std::exception& e) {
            other_error = e.what();
        }
    });
    std::string error;
    cuda_context ctx(cm);
    while (uploads == 0 && other_error.empty()) {
        std::this_thread::yield(); // the other thread is at it
    }
    try {
        const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 128};
        std::vector<std::unique_ptr<gpu_kv>> kv;
        for (int i = 0; i < 18; ++i) {
            kv.push_back(std::make_unique<gpu_kv>(*l.m, ko));
        }
        std::vector<float> lg(size_t(18) * l.m->params().n_vocab);
        std::vector<int32_t> tok(18, 1);
        for (int round = 0; round < 2; ++round) {
            for (size_t n = 1; n <= 18; ++n) {
                for (int twice = 0; twice < 2; ++twice) {
                    std::vector<cuda_batch_entry> batch;
                    for (size_t i = 0; i < n; ++i) {
                        batch.push_back({.kv = &kv[i]->kv,
                                         .tokens = {&tok[i], 1},
                                         .logits = lg.data() + i * l.m->params().n_vocab});
                    }
                    if (const step_status st = ctx.step(batch); st != step_status::ok) {
                        throw std::runtime_error("step: " + std::string(step_status_name(st)));
                    }
                }
            }
        }
    } catch (const std::exception& e) {
        error = e.what();
    }
    done = true;
    other.join();
    EXPECT_EQ(error, "");
    EXPECT_EQ(other_error, "");
    EXPECT_TRUE(ctx.uses_graphs()) << ctx.graph_path();
    const cuda_graph_stats st = ctx.graph_stats();
    std::cout << "[ info     ] " << uploads << " uploads beside " << st.captured << " captures, "
              << st.replayed << " replays, " << st.launched << " launched\n";
    // A capture that waited too long leaves its shape to a later step.
    EXPECT_GE(st.captured, 9u);
    EXPECT_LE(st.captured, 18u);
    EXPECT_EQ(st.failed, 0u);
    EXPECT_EQ(st.replayed + st.launched, 72u);
}

TEST(cuda_context, graphs_can_be_turned_off_from_the_environment) {
    REQUIRE_DEVICE();
    loaded l(tiny);
    cuda_model cm(*l.m);
    const char* old = std::getenv("LLMOS_CUDA_GRAPHS");
    const std::string saved = old ? old : "";
    ::setenv("LLMOS_CUDA_GRAPHS", "0", 1);
    cuda_context off(cm);
    ::setenv("LLMOS_CUDA_GRAPHS", "1", 1);
    cuda_context on(cm);
    if (old) {
        ::setenv("LLMOS_CUDA_GRAPHS", saved.c_str(), 1);
    } else {
        ::unsetenv("LLMOS_CUDA_GRAPHS");
    }
    EXPECT_FALSE(off.uses_graphs());
    EXPECT_EQ(off.graph_path(), "kernel launches (LLMOS_CUDA_GRAPHS=0)");
    EXPECT_TRUE(on.uses_graphs()) << on.graph_path();
    const cuda_kv_options ko{.block_tokens = 16, .max_tokens = 64};
    for (cuda_context* ctx : {&off, &on}) {
        gpu_kv g(*l.m, ko);
        std::vector<float> lg(l.m->params().n_vocab);
        std::vector<int32_t> tok{1};
        for (int i = 0; i < 4; ++i) {
            cuda_batch_entry e{.kv = &g.kv, .tokens = tok, .logits = lg.data()};
            ASSERT_EQ(ctx->step({&e, 1}), step_status::ok);
        }
    }
    EXPECT_EQ(off.graph_stats().launched, 4u);
    EXPECT_EQ(off.graph_stats().replayed, 0u);
    EXPECT_EQ(on.graph_stats().launched, 1u);
    EXPECT_EQ(on.graph_stats().replayed, 3u);
}

TEST(cuda_context, says_which_gemm_path_it_uses) {
    REQUIRE_DEVICE();
    loaded l(tiny);
    cuda_model cm(*l.m);
    cuda_context with(cm, {.use_cublas = true}), without(cm, {.use_cublas = false});
    if (!cuda_blas().loaded) {
        EXPECT_FALSE(with.uses_cublas());
    }
    std::cout << "[ info     ] with cuBLAS wanted: " << with.gemm_path() << "\n";
    EXPECT_FALSE(without.uses_cublas());
    EXPECT_NE(without.gemm_path().find("built-in"), std::string::npos);
    if (cuda_blas().loaded) {
        EXPECT_NE(with.gemm_path().find("cuBLAS"), std::string::npos) << with.gemm_path();
    }
    EXPECT_EQ(cm.layout_summary(), "F32 x15");
    EXPECT_GT(cm.device_bytes(), 0u);
}
