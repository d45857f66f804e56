// SPDX-License-Identifier: MIT
//
// The engine behind the worker pool (local backend): generation requests in
// a mindspace, the conformance model's greedy continuation as text, stop
// strings, a conversation's KV cache kept in its mindspace across requests
// and across a worker's death, and malformed requests.
//
// Built twice: llm_engine_test runs the CPU engine, cuda_llm_engine_test
// (LLMOS_TEST_CUDA) the same cases on the GPU engine, whose K/V rows live
// in a kv_pool of device memory; it skips, saying why, without a GPU.
#include "../support/paths.hh"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <limits>
#include <linux/llmos.h>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/cuda_memory.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/vocab.hh>
#include <llmos/generation.hh>
#include <llmos/llm_engine.hh>
#include <llmos/mindspace.hh>
#include <llmos/worker_pool.hh>
#ifdef LLMOS_CUDA_EMU
#include <cuda_emu.hh> // fault_kernel()
#endif
#include <set>
#include <sstream>

namespace {

using namespace std::chrono_literals;
namespace eng = llmos::engine;

const std::string tiny = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

#ifdef LLMOS_TEST_CUDA
constexpr bool on_gpu = true;
#else
constexpr bool on_gpu = false;
#endif

std::vector<int32_t> expected_greedy(const char* name) {
    std::ifstream in(std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32." + name +
                     ".txt");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("greedy_") && !line.starts_with("greedy_text")) {
            std::istringstream s(line.substr(line.find(": ") + 2));
            std::vector<int32_t> v;
            int32_t x;
            while (s >> x) {
                v.push_back(x);
            }
            return v;
        }
    }
    return {};
}

// Kills its worker (worker_abort) at the `at`-th decode step, once.
class dying_engine final : public llmos::inference_engine {
    std::unique_ptr<llmos::llm_engine> _e;
    std::atomic<int>* _left;
    int _steps = 0, _at;

public:
    dying_engine(std::unique_ptr<llmos::llm_engine> e, std::atomic<int>* left, int at)
        : _e(std::move(e))
        , _left(left)
        , _at(at) {}
    llmos::engine_status prefill(llmos::sequence& s) override { return _e->prefill(s); }
    void decode(std::span<llmos::sequence* const> b) override {
        if (++_steps == _at && _left->fetch_sub(1) > 0) {
            throw llmos::worker_abort{};
        }
        _e->decode(b);
    }
    void release(llmos::sequence& s) noexcept override { _e->release(s); }
};

class llm_engine_test : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        file = std::make_unique<eng::gguf_file>(eng::gguf_file::open(tiny));
        model = std::make_unique<eng::model>(eng::model::load(*file));
        vocab = std::make_unique<eng::vocab>(eng::from_gguf(*file));
        if (!on_gpu) {
            return;
        }
        const eng::cuda_device_info di = eng::cuda_probe();
        const eng::gpu_probe_result gp = eng::probe_gpu();
        if (!di.available || !gp.usable) {
            no_gpu = !di.available ? di.reason : gp.reason;
            return;
        }
        cuda = std::make_unique<eng::cuda_model>(*model);
        kv_mem = std::make_unique<llmos::kv_pool>(
            llmos::kv_pool_options{.capacity = 1ull << 30, .make = [](uint64_t bytes) {
                                       return llmos::make_gpu_region(bytes, 0);
                                   }});
    }
    static void TearDownTestSuite() {
        kv_mem.reset();
        cuda.reset();
        vocab.reset();
        model.reset();
        file.reset();
    }
    static inline std::unique_ptr<eng::gguf_file> file;
    static inline std::unique_ptr<eng::model> model;
    static inline std::unique_ptr<eng::vocab> vocab;
    static inline std::unique_ptr<eng::cuda_model> cuda;  // on_gpu, with a GPU
    static inline std::unique_ptr<llmos::kv_pool> kv_mem; // its KV rows
    static inline std::string no_gpu;                     // why there is none

    std::string _dir;
    std::optional<llmos::device> _dev;
    std::optional<llmos::mindspace> _ms;
    std::optional<llmos::mapping> _map;
    std::mutex _m;
    std::map<uint64_t, std::string> _streamed;
    std::atomic<llmos::llm_engine*> _last{nullptr};
    uint32_t _default_max = 256; ///< the engines' default_max_tokens
    uint32_t _kv_max = 256;      ///< the engines' caches' capacity, in tokens

    void SetUp() override {
        if (on_gpu && !cuda) {
            GTEST_SKIP() << "no GPU to run the engine on: " << no_gpu;
        }
        char tmpl[] = "/tmp/llmos-llm-XXXXXX";
        _dir = ::mkdtemp(tmpl);
        _dev.emplace(llmos::device::open_local(_dir).value());
        _ms.emplace(llmos::mindspace::create(*_dev, {.length = 8 << 20, .name = "llm"}).value());
        _map.emplace(_ms->map().value());
    }
    void TearDown() override {
        _map.reset();
        _ms.reset();
        _dev.reset();
        std::filesystem::remove_all(_dir);
    }
    llmos::llm_engine_options eopts() {
        return {.context = {.n_threads = 1},
                .kv = {.type = eng::kv_type::f32, .block_tokens = 16, .max_tokens = _kv_max},
                .default_max_tokens = _default_max};
    }
    llmos::worker_pool_options popts(std::function<std::unique_ptr<llmos::inference_engine>()> mk) {
        llmos::worker_pool_options o;
        o.cpus = {sched_first_cpu()};
        o.slots = 4;
        o.engine = [mk](unsigned) { return mk(); };
        o.on_output = [this](unsigned, const llmos::descriptor& d) {
            if (d.kind == uint32_t(llmos::output_kind::tokens)) {
                std::lock_guard lk(_m);
                _streamed[d.request].append(
                    reinterpret_cast<const char*>(bytes().data()) + d.offset, d.length);
            }
        };
        return o;
    }
    static int sched_first_cpu() {
        cpu_set_t set;
        CPU_ZERO(&set);
        ::sched_getaffinity(0, sizeof(set), &set);
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (CPU_ISSET(c, &set)) {
                return c;
            }
        }
        return 0;
    }
    std::unique_ptr<llmos::llm_engine> make_engine() {
        auto e = on_gpu ? std::make_unique<llmos::llm_engine>(*cuda, *vocab, *kv_mem, eopts())
                        : std::make_unique<llmos::llm_engine>(*model, *vocab, eopts());
        EXPECT_EQ(e->on_gpu(), on_gpu);
        _last = e.get();
        return e;
    }
    std::unique_ptr<llmos::inference_engine> plain() { return make_engine(); }
    std::span<std::byte> bytes() { return _map->bytes(); }
    // The text a stream of `ids` gives (a continuation: its leading space
    // stays; bytes that form no character are U+FFFD).
    static std::string text_of(const std::vector<int32_t>& ids) {
        eng::stream_decoder d(*vocab);
        std::string s;
        for (int32_t id : ids) {
            d.push(id, s);
        }
        d.flush(s);
        return s;
    }

    // Writes a request at `off`; returns submit options for it.
    llmos::submit_options request(uint64_t off, std::string_view text, uint32_t max_tokens,
                                  std::vector<std::string> stop = {}, uint64_t kv_off = 0,
                                  uint64_t kv_len = 0) {
        llmos::gen_request_header h;
        h.temperature = 0;
        h.max_tokens = max_tokens;
        h.kv_off = kv_off;
        h.kv_len = kv_len;
        auto b = llmos::build_gen_request(h, text, stop);
        std::memcpy(bytes().data() + off, b.data(), b.size());
        return {.cost = max_tokens, .ms_id = _ms->id(), .prompt_off = off, .prompt_len = b.size()};
    }
    // Writes a request with `flags` (and special-token spans) at `off`.
    llmos::submit_options request_with(uint64_t off, std::string_view text, uint32_t max_tokens,
                                       uint32_t flags, std::vector<llmos::gen_span> spans = {}) {
        llmos::gen_request_header h;
        h.temperature = 0;
        h.max_tokens = max_tokens;
        h.flags = flags;
        auto b = llmos::build_gen_request(h, text, {}, spans);
        std::memcpy(bytes().data() + off, b.data(), b.size());
        return {.cost = max_tokens, .ms_id = _ms->id(), .prompt_off = off, .prompt_len = b.size()};
    }
    struct outcome {
        llmos::finished_request f;
        std::string text;
    };
    outcome run(llmos::sched_client& c, const llmos::submit_options& o) {
        auto id = c.submit(o).value();
        auto f = c.wait(id, llmos::wait_for::at_most(60s)).value();
        return {f, std::string(reinterpret_cast<const char*>(bytes().data()) + f.result_off,
                               f.result_len)};
    }
    uint64_t kv_bytes() {
        return llmos::llm_engine::kv_region_bytes(model->params(), eopts().kv, on_gpu);
    }
};

} // namespace

TEST_F(llm_engine_test, greedy_generation_reproduces_the_conformance_continuation) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    auto want = expected_greedy("hello");
    ASSERT_EQ(want.size(), 16u);
    auto r = run(c, request(0, "Hello world", 16));
    EXPECT_EQ(r.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(r.f.tokens, 16u);
    EXPECT_EQ(r.text, text_of(want));
    std::lock_guard lk(_m);
    EXPECT_EQ(_streamed[r.f.id], r.text) << "streamed pieces add up to the output";
}

TEST_F(llm_engine_test, two_requests_batched_give_what_each_gives_alone) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    auto a = c.submit(request(0, "Hello world", 16)).value();
    auto b = c.submit(request(65536, "The quick brown fox jumps over the lazy dog", 16)).value();
    auto fa = c.wait(a, llmos::wait_for::at_most(60s)).value();
    auto fb = c.wait(b, llmos::wait_for::at_most(60s)).value();
    std::string ta(reinterpret_cast<const char*>(bytes().data()) + fa.result_off, fa.result_len);
    std::string tb(reinterpret_cast<const char*>(bytes().data()) + fb.result_off, fb.result_len);
    EXPECT_EQ(ta, text_of(expected_greedy("hello")));
    EXPECT_EQ(tb, text_of(expected_greedy("fox")));
}

TEST_F(llm_engine_test, a_stop_string_ends_the_text_before_it) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    std::string full = text_of(expected_greedy("hello"));
    ASSERT_GT(full.size(), 12u);
    std::string stop = full.substr(8, 3);
    auto r = run(c, request(0, "Hello world", 16, {stop}));
    EXPECT_EQ(r.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(r.text, full.substr(0, full.find(stop)));
}

TEST_F(llm_engine_test, special_tokens_are_tokens_only_inside_the_request_s_spans) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    // "</s>" is the model's EOS, a control token: with gen_parse_special
    // it is that token, without it is text. Spans decide per occurrence.
    const std::string text = "Hello</s> world</s> again";
    const auto special = run(c, request_with(0, text, 8, llmos::gen_parse_special));
    const auto plain = run(c, request_with(0, text, 8, 0));
    ASSERT_EQ(special.f.state, LLMOS_REQ_COMPLETED);
    ASSERT_EQ(plain.f.state, LLMOS_REQ_COMPLETED);
    ASSERT_NE(special.text, plain.text) << "the two tokenizations must lead apart for this test";
    const uint32_t spans = llmos::gen_special_spans;
    // Spans over both: as gen_parse_special; none: as plain text.
    EXPECT_EQ(run(c, request_with(0, text, 8, spans, {{5, 4}, {15, 4}})).text, special.text);
    EXPECT_EQ(run(c, request_with(0, text, 8, spans)).text, plain.text);
    // A span that covers only part of the token's text is no span for it.
    EXPECT_EQ(run(c, request_with(0, text, 8, spans, {{5, 3}, {16, 4}})).text, plain.text);
    // Spans out of order, or past the text, and unknown flags: refused.
    EXPECT_EQ(run(c, request_with(0, text, 8, spans, {{15, 4}, {5, 4}})).f.status, -EINVAL);
    EXPECT_EQ(run(c, request_with(0, text, 8, spans, {{20, 6}})).f.status, -EINVAL);
    EXPECT_EQ(run(c, request_with(0, text, 8, 1u << 7)).f.status, -EINVAL);
    // A conversation's cache may not lie over the spans either (they are
    // read again when the request is): the request ends 8 bytes into the
    // page where the cache would start.
    llmos::gen_request_header h;
    h.temperature = 0;
    h.max_tokens = 8;
    h.flags = spans;
    const std::vector<llmos::gen_span> at{{5, 4}, {15, 4}};
    const auto b = llmos::build_gen_request(h, text, {}, at);
    const uint64_t off = 2 * 4096 + 8 - b.size();
    ASSERT_LE(off + sizeof(h) + text.size(), 2 * 4096u) << "only the spans reach past";
    h.kv_off = 2 * 4096;
    h.kv_len = kv_bytes();
    const auto k = llmos::build_gen_request(h, text, {}, at);
    std::memcpy(bytes().data() + off, k.data(), k.size());
    EXPECT_EQ(
        run(c, {.cost = 8, .ms_id = _ms->id(), .prompt_off = off, .prompt_len = k.size()}).f.status,
        -EINVAL);
}

TEST(gen_request, spans_round_trip_and_malformed_ones_are_named) {
    llmos::gen_request_header h;
    h.flags = llmos::gen_special_spans;
    const std::vector<std::string> stop{"x", "yz"};
    const std::vector<llmos::gen_span> at{{0, 2}, {4, 1}};
    auto b = llmos::build_gen_request(h, "abcdef", stop, at);
    std::string why;
    auto r = llmos::parse_gen_request(b, &why);
    ASSERT_TRUE(r) << why;
    EXPECT_EQ(r->size, b.size());
    EXPECT_EQ(r->text, "abcdef");
    EXPECT_EQ(r->stop, stop);
    ASSERT_EQ(r->special_at.size(), 2u);
    EXPECT_EQ(r->special_at[1].off, 4u);
    EXPECT_EQ(r->special_at[1].len, 1u);
    // Without the flag the spans are not written, nor read.
    h.flags = 0;
    const auto plain = llmos::build_gen_request(h, "abcdef", stop, at);
    EXPECT_EQ(plain.size() + 4 + 2 * sizeof(llmos::gen_span), b.size());
    ASSERT_TRUE(llmos::parse_gen_request(plain, &why)) << why;
    EXPECT_TRUE(llmos::parse_gen_request(plain, &why)->special_at.empty());
    EXPECT_EQ(llmos::parse_gen_request(plain, &why)->size, plain.size());
    // Cut anywhere in the spans: refused, saying so.
    for (size_t cut = plain.size(); cut < b.size(); ++cut) {
        EXPECT_FALSE(llmos::parse_gen_request(std::span(b).first(cut), &why)) << cut;
        EXPECT_EQ(why, "special-token spans run past the request") << cut;
    }
    // A count far past the bytes there are.
    auto huge = b;
    const uint32_t n = 0xffffffffu;
    std::memcpy(huge.data() + plain.size(), &n, sizeof(n));
    EXPECT_FALSE(llmos::parse_gen_request(huge, &why));
    EXPECT_EQ(why, "special-token spans run past the request");
    // Overlapping spans, and a span that wraps past 2^32.
    for (const std::vector<llmos::gen_span>& bad :
         {std::vector<llmos::gen_span>{{0, 3}, {2, 1}},
          std::vector<llmos::gen_span>{{1, 0xffffffffu}}}) {
        h.flags = llmos::gen_special_spans;
        EXPECT_FALSE(
            llmos::parse_gen_request(llmos::build_gen_request(h, "abcdef", stop, bad), &why));
        EXPECT_EQ(why, "special-token spans out of order or past the text");
    }
    h.flags = 1u << 5;
    EXPECT_FALSE(llmos::parse_gen_request(llmos::build_gen_request(h, "a", {}), &why));
    EXPECT_EQ(why, "unknown generation request flags");
}

TEST(gen_request, version_1_is_read_with_its_window_and_bad_words_are_refused) {
    llmos::gen_request_header h;
    h.repeat_last_n = 7;
    h.top_k = 3;
    const std::vector<std::string> stop{"zz"};
    const auto v2 = llmos::build_gen_request(h, "hello", stop);
    std::string why;
    auto r = llmos::parse_gen_request(v2, &why);
    ASSERT_TRUE(r) << why;
    EXPECT_EQ(r->h.version, 2u);
    EXPECT_EQ(r->h.repeat_last_n, 7);
    EXPECT_EQ(r->size, v2.size());
    // The same request as version 1 wrote it: 80 bytes of header, no
    // window (64).
    ASSERT_EQ(llmos::gen_header_size(1), 80u);
    auto v1 = v2;
    v1.erase(v1.begin() + 80, v1.begin() + long(sizeof(llmos::gen_request_header)));
    const uint32_t one = 1;
    std::memcpy(v1.data() + 4, &one, sizeof(one));
    r = llmos::parse_gen_request(v1, &why);
    ASSERT_TRUE(r) << why;
    EXPECT_EQ(r->h.version, 1u);
    EXPECT_EQ(r->h.repeat_last_n, 64);
    EXPECT_EQ(r->h.top_k, 3);
    EXPECT_EQ(r->text, "hello");
    EXPECT_EQ(r->stop, stop);
    EXPECT_EQ(r->size, v1.size());
    // A version 1 header cut short, and versions not known.
    EXPECT_FALSE(llmos::parse_gen_request(std::span(v1).first(79), &why));
    EXPECT_EQ(why, "request shorter than its header");
    for (uint32_t v : {0u, 3u}) {
        auto b = v2;
        std::memcpy(b.data() + 4, &v, sizeof(v));
        EXPECT_FALSE(llmos::parse_gen_request(b, &why)) << v;
        EXPECT_EQ(why, "unsupported generation request version");
    }
    // A window below -1, a reserved word that is not 0.
    h.repeat_last_n = -2;
    EXPECT_FALSE(llmos::parse_gen_request(llmos::build_gen_request(h, "a", {}), &why));
    EXPECT_EQ(why, "bad repeat_last_n or reserved word");
    h.repeat_last_n = -1;
    EXPECT_TRUE(llmos::parse_gen_request(llmos::build_gen_request(h, "a", {}), &why)) << why;
    h.reserved = 1;
    EXPECT_FALSE(llmos::parse_gen_request(llmos::build_gen_request(h, "a", {}), &why));
    EXPECT_EQ(why, "bad repeat_last_n or reserved word");
}

TEST_F(llm_engine_test, a_conversation_s_cache_in_its_mindspace_skips_the_prefix) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    auto first = run(c, request(0, "Hello world", 8, {}, kv_off, kv_bytes()));
    ASSERT_EQ(first.f.state, LLMOS_REQ_COMPLETED);
    auto before = _last.load()->stats();
    // The next turn: the conversation so far, and more.
    std::string turn = "Hello world" + first.text + " and more";
    auto second = run(c, request(65536, turn, 8, {}, kv_off, kv_bytes()));
    ASSERT_EQ(second.f.state, LLMOS_REQ_COMPLETED);
    auto after = _last.load()->stats();
    uint64_t prompt = vocab->encode(turn, true, false).size();
    EXPECT_GE(after.cached_tokens - before.cached_tokens, 3u) << "the first prompt was cached";
    EXPECT_LT(after.prefilled - before.prefilled, prompt);
    // The same turn without a cache gives the same text.
    auto fresh = run(c, request(131072, turn, 8));
    EXPECT_EQ(second.text, fresh.text);
}

TEST_F(llm_engine_test, one_request_at_a_time_writes_a_conversation_s_cache) {
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    // Two requests on the same cache, taken together (queued before the
    // worker starts): one runs, the other is refused for now (EAGAIN)
    // instead of writing the cache beside it.
    auto a = c.submit(request(0, "Hello world", 24, {}, kv_off, kv_bytes())).value();
    auto b = c.submit(request(65536, "Hello there", 24, {}, kv_off, kv_bytes())).value();
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto fa = c.wait(a, llmos::wait_for::at_most(60s)).value();
    auto fb = c.wait(b, llmos::wait_for::at_most(60s)).value();
    const bool a_ran = fa.state == LLMOS_REQ_COMPLETED;
    EXPECT_NE(a_ran, fb.state == LLMOS_REQ_COMPLETED) << "exactly one of them ran";
    EXPECT_EQ((a_ran ? fb : fa).status, -EAGAIN);
    // Free again: the next request on it runs.
    auto again = run(c, request(131072, "Hello world", 8, {}, kv_off, kv_bytes()));
    EXPECT_EQ(again.f.state, LLMOS_REQ_COMPLETED);
}

// max_tokens 0 is "no limit of its own" wherever it comes from: a
// request's 0 takes the worker's default, and a default of 0 lets the
// request generate up to its cache's capacity, whether the cache is its
// own (once made exactly the prompt's size: E2BIG) or kept in its
// mindspace (once ended after one token).
TEST_F(llm_engine_test, max_tokens_0_generates_up_to_the_cache_s_capacity) {
    _kv_max = 64; // generated to the end four times: a short end
    const std::string text = "Hello world";
    const uint32_t room = eopts().kv.max_tokens - uint32_t(vocab->encode(text, true, false).size());
    auto c = llmos::sched_client::open(*_dev).value();
    for (const uint32_t def : {0u, 5u}) {
        SCOPED_TRACE("default_max_tokens " + std::to_string(def));
        _default_max = def;
        auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
        const auto all = run(c, request(0, text, room));
        ASSERT_EQ(all.f.state, LLMOS_REQ_COMPLETED);
        ASSERT_GT(all.f.tokens, 5u);
        // A request's own limit wins over the default.
        const auto three = run(c, request(0, text, 3));
        EXPECT_EQ(three.f.state, LLMOS_REQ_COMPLETED);
        EXPECT_EQ(three.f.tokens, 3u);
        for (const bool kept : {false, true}) {
            SCOPED_TRACE(kept ? "its cache kept in the mindspace" : "a cache of its own");
            const auto r = kept ? run(c, request(65536, text, 0, {}, 4 << 20, kv_bytes()))
                                : run(c, request(65536, text, 0));
            ASSERT_EQ(r.f.state, LLMOS_REQ_COMPLETED) << "status " << r.f.status;
            if (def) {
                EXPECT_EQ(r.f.tokens, def);
                EXPECT_EQ(r.text, run(c, request(0, text, def)).text);
            } else {
                EXPECT_EQ(r.f.tokens, all.f.tokens);
                EXPECT_EQ(r.text, all.text);
            }
        }
    }
}

// kv_len says whether a request keeps its cache: at offset 0 it does, and
// an offset without a length is refused rather than read as "none".
TEST_F(llm_engine_test, kv_len_says_whether_a_request_keeps_its_cache) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    EXPECT_EQ(run(c, request(0, "Hello world", 4, {}, 4 << 20, 0)).f.status, -EINVAL);
    const auto first = run(c, request(1 << 20, "Hello world", 8, {}, 0, kv_bytes()));
    ASSERT_EQ(first.f.state, LLMOS_REQ_COMPLETED);
    const auto before = _last.load()->stats();
    const auto second =
        run(c, request(2 << 20, "Hello world" + first.text + " and more", 4, {}, 0, kv_bytes()));
    ASSERT_EQ(second.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_GE(_last.load()->stats().cached_tokens - before.cached_tokens, 3u)
        << "the first turn was kept at offset 0";
}

// Two requests whose cache regions share bytes (at different offsets)
// would write each other's rows: as for one region, one runs and the
// other is refused for now (EAGAIN). Regions that touch but do not
// overlap run together.
TEST_F(llm_engine_test, requests_whose_caches_overlap_do_not_run_together) {
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    const uint64_t next = kv_off + (kv_bytes() + 4095) / 4096 * 4096;
    auto a = c.submit(request(0, "Hello world", 16, {}, kv_off, kv_bytes())).value();
    // A page before a's, reaching into it (a GPU's region may be under a page).
    const uint64_t b_off = kv_off - 4096, b_len = kv_bytes() + 4096;
    auto b = c.submit(request(65536, "Hello there", 16, {}, b_off, b_len)).value();
    auto d = c.submit(request(131072, "Hello again", 16, {}, next, kv_bytes())).value();
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto fa = c.wait(a, llmos::wait_for::at_most(60s)).value();
    auto fb = c.wait(b, llmos::wait_for::at_most(60s)).value();
    auto fd = c.wait(d, llmos::wait_for::at_most(60s)).value();
    const bool a_ran = fa.state == LLMOS_REQ_COMPLETED;
    EXPECT_NE(a_ran, fb.state == LLMOS_REQ_COMPLETED) << "exactly one of them ran";
    EXPECT_EQ((a_ran ? fb : fa).status, -EAGAIN);
    EXPECT_EQ(fd.state, LLMOS_REQ_COMPLETED) << "status " << fd.status;
    // Free again: the one refused runs now.
    auto again = run(c, request(196608, "Hello there", 8, {}, b_off, b_len));
    EXPECT_EQ(again.f.state, LLMOS_REQ_COMPLETED);
}

// How a prompt is cut into steps (prefill_chunk, and what the other
// sequences of a step leave) does not change what a request generates,
// sampled or greedy, on an F16 cache (the prefill and one-token attention
// kernels of AVX-512 differ in the last bits: a prompt's tokens take the
// same one in chunks of any size).
TEST_F(llm_engine_test, what_a_request_generates_does_not_depend_on_its_prompt_s_chunks) {
    if (on_gpu) {
        GTEST_SKIP() << "the CPU engine's promise (context.hh: token_kind)";
    }
    const std::string a_text = "The quick brown fox jumps over the lazy dog",
                      b_text = "Hello world";
    auto sampled = [&](uint64_t off, std::string_view text) {
        llmos::gen_request_header h;
        h.temperature = 1.0f;
        h.top_k = 0;
        h.top_p = 1.0f;
        h.min_p = 0.0f;
        h.seed = 7;
        h.max_tokens = 24;
        const auto b = llmos::build_gen_request(h, text, {});
        std::memcpy(bytes().data() + off, b.data(), b.size());
        return llmos::submit_options{
            .cost = 24, .ms_id = _ms->id(), .prompt_off = off, .prompt_len = b.size()};
    };
    std::vector<std::string> want;
    for (const uint32_t chunk : {256u, 1u, 3u, 7u}) {
        SCOPED_TRACE("prefill_chunk " + std::to_string(chunk));
        auto c = llmos::sched_client::open(*_dev).value();
        // Queued together: one batch, the prompts' chunks side by side.
        const std::vector<llmos::submit_options> reqs{
            request(0, a_text, 24), request(65536, b_text, 24), sampled(131072, a_text),
            sampled(196608, b_text)};
        std::vector<uint64_t> ids;
        for (auto& r : reqs) {
            ids.push_back(c.submit(r).value());
        }
        auto o = eopts();
        o.context.n_threads = 2;
        o.kv.type = eng::kv_type::f16;
        o.context.max_batch_tokens = 16;
        o.prefill_chunk = chunk;
        auto pool = llmos::worker_pool::start(*_dev, popts([&] {
                        return std::make_unique<llmos::llm_engine>(*model, *vocab, o);
                    })).value();
        std::vector<std::string> got;
        for (const uint64_t id : ids) {
            const auto f = c.wait(id, llmos::wait_for::at_most(60s)).value();
            EXPECT_EQ(f.state, LLMOS_REQ_COMPLETED);
            got.emplace_back(reinterpret_cast<const char*>(bytes().data()) + f.result_off,
                             f.result_len);
        }
        if (want.empty()) {
            want = got;
        }
        EXPECT_EQ(got, want);
    }
}

TEST_F(llm_engine_test, a_vocabulary_larger_than_the_embedding_is_refused) {
    // Its extra ids would fail every step they were in.
    eng::vocab_data d = eng::from_gguf(*file);
    d.tokens.push_back("<extra>");
    if (!d.scores.empty()) {
        d.scores.push_back(0);
    }
    if (!d.types.empty()) {
        d.types.push_back(d.types.back());
    }
    eng::vocab bigger(std::move(d));
    ASSERT_EQ(uint64_t(bigger.n_tokens()), uint64_t(model->params().n_vocab) + 1);
    try {
        llmos::llm_engine::check_vocab(*model, bigger);
        FAIL() << "a vocabulary of " << bigger.n_tokens() << " tokens was taken";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("the model's embedding"), std::string::npos)
            << e.what();
    }
    EXPECT_THROW(llmos::llm_engine(*model, bigger, eopts()), std::invalid_argument);
    EXPECT_NO_THROW(llmos::llm_engine::check_vocab(*model, *vocab));
    // A prefill chunk of no tokens would never end a prompt.
    auto zero = eopts();
    zero.prefill_chunk = 0;
    EXPECT_THROW(llmos::llm_engine(*model, *vocab, zero), std::invalid_argument);
}

TEST_F(llm_engine_test, the_output_stops_where_the_conversation_s_cache_starts) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    // A request whose output room, up to the cache, is 64 bytes: 40 tokens
    // take more.
    const uint64_t len = request(0, "Hello world", 40, {}, kv_off, kv_bytes()).prompt_len;
    const uint64_t off = kv_off - 64 - (len + 63) / 64 * 64;
    auto first = run(c, request(off, "Hello world", 40, {}, kv_off, kv_bytes()));
    ASSERT_EQ(first.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(first.f.result_off, kv_off - 64);
    EXPECT_LE(first.f.result_len, 64u);
    EXPECT_LT(first.f.tokens, 40u) << "it ended when its room did";
    // The cache was not written over: the next turn finds the first.
    auto before = _last.load()->stats();
    auto second = run(c, request(65536, "Hello world" + first.text, 4, {}, kv_off, kv_bytes()));
    ASSERT_EQ(second.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_GE(_last.load()->stats().cached_tokens - before.cached_tokens, 3u);
    // An output that would start inside the cache is refused.
    auto inside = request(kv_off, "Hello world", 4, {}, kv_off, kv_bytes());
    ASSERT_LT(llmos::output_offset(kv_off, inside.prompt_len), kv_off + kv_bytes());
    EXPECT_EQ(run(c, inside).f.status, -EINVAL);
    // So is a request that lies in its own cache (its output after it):
    // prefilled again after a crash, its text would be cache rows.
    auto over = request(kv_off + kv_bytes() - 32, "Hello world", 4, {}, kv_off, kv_bytes());
    ASSERT_GE(llmos::output_offset(kv_off + kv_bytes() - 32, over.prompt_len), kv_off + kv_bytes());
    EXPECT_EQ(run(c, over).f.status, -EINVAL);
}

TEST_F(llm_engine_test, a_worker_that_dies_mid_generation_is_resumed_from_the_mindspace) {
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    std::string uninterrupted;
    {
        auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
        uninterrupted = run(c, request(0, "The quick brown fox jumps over the lazy dog", 40)).text;
    }
    std::atomic<int> deaths{1};
    auto pool = llmos::worker_pool::start(*_dev, popts([&] {
                    return std::make_unique<dying_engine>(make_engine(), &deaths, 20);
                })).value();
    auto r = run(c, request(65536, "The quick brown fox jumps over the lazy dog", 40, {}, kv_off,
                            kv_bytes()));
    EXPECT_LE(deaths.load(), 0) << "the worker died";
    EXPECT_EQ(r.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(r.text, uninterrupted);
    // The new worker found the prompt in the cache.
    auto st = _last.load()->stats();
    uint64_t prompt =
        vocab->encode("The quick brown fox jumps over the lazy dog", true, false).size();
    EXPECT_EQ(st.cached_tokens, prompt - 1);
    EXPECT_EQ(st.prefilled, 1u);
}

TEST_F(llm_engine_test, malformed_requests_fail_alone_with_clear_statuses) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    auto status_of = [&](const llmos::submit_options& o) { return run(c, o).f.status; };
    auto junk = request(0, "Hello", 4);
    std::memset(bytes().data(), 0x5a, 4); // bad magic
    EXPECT_EQ(status_of(junk), -EINVAL);
    auto past = request(0, "Hello", 4);
    past.prompt_len = sizeof(llmos::gen_request_header) + 2; // text runs past the request
    EXPECT_EQ(status_of(past), -EINVAL);
    EXPECT_EQ(status_of(request(0, "Hello", 4, {}, 4096 * 3, 64 << 20)), -EINVAL);
    EXPECT_EQ(status_of(request(0, "Hello", 4, {}, 4 << 20, kv_bytes() / 2)), -ENOSPC);
    auto bad_p = request(0, "Hello", 4);
    llmos::gen_request_header h;
    std::memcpy(&h, bytes().data(), sizeof(h));
    h.top_p = 0;
    std::memcpy(bytes().data(), &h, sizeof(h));
    EXPECT_EQ(status_of(bad_p), -EINVAL);
    // A text far past the context (refused before it is encoded).
    EXPECT_EQ(status_of(request(0, std::string(1 << 20, 'a'), 4)), -E2BIG);
    // One past the context with a conversation's cache: refused before the
    // cache is opened (on a GPU no KV region is kept for it: one per
    // conversation, reserved for the whole context, until forgotten).
    const uint32_t regions = kv_mem ? kv_mem->stats().regions : 0;
    std::string words;
    for (int i = 0; i < 600; ++i) {
        words += "hello ";
    }
    EXPECT_EQ(status_of(request(0, words, 4, {}, 4 << 20, kv_bytes())), -E2BIG);
    if (kv_mem) {
        EXPECT_EQ(kv_mem->stats().regions, regions);
    }
    // And the worker still serves.
    auto ok = run(c, request(0, "Hello world", 4));
    EXPECT_EQ(ok.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(ok.f.tokens, 4u);
}

// Embedding rows past the vocabulary (padding) are never sampled: with a
// vocabulary cut below every token greedy generation would pick, those
// picks are out of reach and it picks tokens that make text.
TEST_F(llm_engine_test, rows_past_the_vocabulary_are_never_sampled) {
    if (on_gpu) {
        GTEST_SKIP() << "the cut vocabulary below is tried on the CPU only";
    }
    auto want = expected_greedy("hello");
    ASSERT_FALSE(want.empty());
    const int32_t cut = *std::min_element(want.begin(), want.end());
    ASSERT_GT(cut, 3) << "the greedy tokens start too low to cut below them";
    eng::vocab_data d = eng::from_gguf(*file);
    d.tokens.resize(size_t(cut));
    if (!d.scores.empty()) {
        d.scores.resize(size_t(cut));
    }
    if (!d.types.empty()) {
        d.types.resize(size_t(cut));
    }
    const eng::vocab smaller(std::move(d));
    ASSERT_EQ(smaller.n_tokens(), cut);
    auto o = popts([&] { return std::make_unique<llmos::llm_engine>(*model, smaller, eopts()); });
    auto pool = llmos::worker_pool::start(*_dev, std::move(o)).value();
    auto c = llmos::sched_client::open(*_dev).value();
    auto r = run(c, request(0, "Hello world", 8));
    ASSERT_EQ(r.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(r.f.tokens, 8u);
    // Tokens the cut vocabulary has: each makes text.
    EXPECT_FALSE(r.text.empty()) << "padding rows were sampled (they make no text)";
}

TEST_F(llm_engine_test, a_request_with_nothing_to_sample_fails_alone) {
    if (on_gpu) {
        GTEST_SKIP() << "the patched model below is loaded for the CPU only";
    }
    // B's text with the model as it is.
    std::string b_text;
    {
        auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
        auto c = llmos::sched_client::open(*_dev).value();
        b_text = run(c, request(0, "Hello world", 6)).text;
    }
    // A copy of the model whose embedding rows of tokens only A has are
    // NaN: A's logits are all NaN, B's are what they were.
    std::set<int32_t> in_b;
    for (auto& t : {std::string("Hello world"), b_text}) {
        for (int32_t id : vocab->encode(t, true, false)) {
            in_b.insert(id);
        }
    }
    std::vector<int32_t> poison;
    for (int32_t id : vocab->encode("The quick brown fox", false, false)) {
        if (!in_b.contains(id)) {
            poison.push_back(id);
        }
    }
    ASSERT_FALSE(poison.empty());
    const std::string path = _dir + "/poisoned.gguf";
    std::filesystem::copy_file(tiny, path);
    const eng::gguf_tensor* emb = nullptr;
    for (auto& t : file->tensors()) {
        emb = t.name == "token_embd.weight" ? &t : emb;
    }
    ASSERT_NE(emb, nullptr);
    ASSERT_EQ(emb->type, eng::ggml_type::f32);
    {
        std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
        const std::vector<float> nan(emb->ne[0], std::numeric_limits<float>::quiet_NaN());
        for (int32_t id : poison) {
            f.seekp(static_cast<std::streamoff>(file->data_offset() + emb->offset +
                                                uint64_t(id) * emb->row_bytes));
            f.write(reinterpret_cast<const char*>(nan.data()), emb->row_bytes);
        }
        ASSERT_TRUE(f.good());
    }
    const eng::gguf_file pf = eng::gguf_file::open(path);
    const eng::model pm = eng::model::load(pf);
    const eng::vocab pv(eng::from_gguf(pf));
    auto o = popts([&] { return std::make_unique<llmos::llm_engine>(pm, pv, eopts()); });
    auto c = llmos::sched_client::open(*_dev).value();
    // Both queued before the worker starts: it takes them in one batch.
    const auto a_id = c.submit(request(0, "The quick brown fox", 6)).value();
    const auto b_id = c.submit(request(65536, "Hello world", 6)).value();
    auto pool = llmos::worker_pool::start(*_dev, std::move(o)).value();
    auto fa = c.wait(a_id, llmos::wait_for::at_most(60s)).value();
    EXPECT_EQ(fa.state, LLMOS_REQ_FAILED);
    EXPECT_EQ(fa.status, -EIO);
    auto fb = c.wait(b_id, llmos::wait_for::at_most(60s)).value();
    ASSERT_EQ(fb.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(
        std::string(reinterpret_cast<const char*>(bytes().data()) + fb.result_off, fb.result_len),
        b_text);
}

#ifdef LLMOS_TEST_CUDA
TEST_F(llm_engine_test, a_conversation_whose_gpu_rows_were_dropped_starts_over) {
    auto pool = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    auto first = run(c, request(0, "Hello world", 8, {}, kv_off, kv_bytes()));
    ASSERT_EQ(first.f.state, LLMOS_REQ_COMPLETED);
    std::string turn = "Hello world" + first.text + " and more";
    auto fresh = run(c, request(131072, turn, 8));
    // The rows went (memory wanted elsewhere); the bookkeeping in the
    // mindspace still speaks of them, and must not be believed.
    ASSERT_TRUE(kv_mem->forget({_ms->id(), kv_off}));
    auto before = _last.load()->stats();
    auto second = run(c, request(65536, turn, 8, {}, kv_off, kv_bytes()));
    ASSERT_EQ(second.f.state, LLMOS_REQ_COMPLETED);
    auto after = _last.load()->stats();
    EXPECT_EQ(after.cached_tokens, before.cached_tokens);
    EXPECT_EQ(second.text, fresh.text);
    // And the turn after that finds its rows again.
    auto third = run(c, request(65536, turn + second.text, 4, {}, kv_off, kv_bytes()));
    ASSERT_EQ(third.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_GT(_last.load()->stats().cached_tokens, after.cached_tokens);
}

// Two processes (two pools of device memory) share a conversation's
// mindspace: after the other one has continued it with rows in its own
// memory, this one's rows are stale, and the conversation starts over
// here instead of reading them.
TEST_F(llm_engine_test, a_conversation_continued_elsewhere_starts_over) {
    llmos::kv_pool elsewhere({.capacity = 1ull << 30, .make = [](uint64_t bytes) {
                                  return llmos::make_gpu_region(bytes, 0);
                              }});
    auto c = llmos::sched_client::open(*_dev).value();
    const uint64_t kv_off = 4 << 20;
    // Serves one request with an engine whose rows are in `rows`; `cached`
    // gets the prompt tokens it found in the cache.
    auto serve = [&](llmos::kv_pool& rows, const llmos::submit_options& o, uint64_t* cached) {
        auto pool = llmos::worker_pool::start(*_dev, popts([&] {
                        auto e = std::make_unique<llmos::llm_engine>(*cuda, *vocab, rows, eopts());
                        _last = e.get();
                        return e;
                    })).value();
        auto out = run(c, o);
        *cached = _last.load()->stats().cached_tokens;
        return out;
    };
    uint64_t cached = 0;
    auto first = serve(*kv_mem, request(0, "Hello world", 8, {}, kv_off, kv_bytes()), &cached);
    ASSERT_EQ(first.f.state, LLMOS_REQ_COMPLETED);
    std::string turn = "Hello world" + first.text + " and more";
    auto second = serve(elsewhere, request(65536, turn, 8, {}, kv_off, kv_bytes()), &cached);
    ASSERT_EQ(second.f.state, LLMOS_REQ_COMPLETED);
    turn += second.text + " again";
    auto fresh = serve(*kv_mem, request(131072, turn, 8), &cached);
    ASSERT_EQ(fresh.f.state, LLMOS_REQ_COMPLETED);
    auto third = serve(*kv_mem, request(196608, turn, 8, {}, kv_off, kv_bytes()), &cached);
    ASSERT_EQ(third.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(cached, 0u) << "resumed from rows written elsewhere";
    EXPECT_EQ(third.text, fresh.text);
    // Its own rows again from then on.
    auto fourth =
        serve(*kv_mem, request(262144, turn + third.text, 4, {}, kv_off, kv_bytes()), &cached);
    ASSERT_EQ(fourth.f.state, LLMOS_REQ_COMPLETED);
    EXPECT_GT(cached, 0u);
}
#endif

#if defined(LLMOS_TEST_CUDA) && defined(LLMOS_CUDA_EMU)
// A kernel that faults (the emulated device injects an illegal address)
// leaves CUDA failing every call of the process: the engine says the
// device is lost, and its worker gives the request back as it was,
// uncounted, says so once and ends without making another engine.
TEST_F(llm_engine_test, a_kernel_that_faults_loses_the_device_but_not_the_request) {
    struct clear {
        ~clear() { llmos::cuda_emu::clear_fault(); }
    } cleared;
    std::atomic<int> made{0};
    std::mutex m;
    std::vector<std::string> said;
    auto o = popts([this, &made] {
        made.fetch_add(1);
        return plain();
    });
    o.on_device_lost = [&](unsigned, const std::string& why) {
        std::lock_guard lk(m);
        said.push_back(why);
    };
    auto pool = llmos::worker_pool::start(*_dev, o).value();
    auto c = llmos::sched_client::open(*_dev).value();
    const auto want = run(c, request(0, "Hello world", 8));
    ASSERT_EQ(want.f.state, LLMOS_REQ_COMPLETED);
    llmos::cuda_emu::fault_kernel(5); // in the prompt's layers
    const auto opts = request(65536, "Hello world", 8);
    const uint64_t id = c.submit(opts).value();
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (!pool->info(0).device_lost.load() && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE(pool->info(0).device_lost.load()) << pool->info(0).last_error();
    {
        std::lock_guard lk(m);
        ASSERT_EQ(said.size(), 1u);
        EXPECT_NE(said[0].find("cudaErrorIllegalAddress"), std::string::npos) << said[0];
        EXPECT_NE(said[0].find("the GPU cannot be used by this process any more"),
                  std::string::npos)
            << said[0];
    }
    // Back in the scheduler as it was submitted.
    auto w = llmos::sched_worker::open(*_dev, 1).value();
    auto got = w.dispatch(1, llmos::wait_for::at_most(10s)).value();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].id, id);
    EXPECT_EQ(got[0].requeues, 0u);
    EXPECT_EQ(made.load(), 1);
    // Only an emulated device comes back: a new pool serves the request,
    // with what the first one gave.
    llmos::cuda_emu::clear_fault();
    ASSERT_FALSE(w.give_back(id));
    pool->stop();
    auto again = llmos::worker_pool::start(*_dev, popts([this] { return plain(); })).value();
    auto f = c.wait(id, llmos::wait_for::at_most(60s)).value();
    ASSERT_EQ(f.state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(
        std::string(reinterpret_cast<const char*>(bytes().data()) + f.result_off, f.result_len),
        want.text);
}
#endif
