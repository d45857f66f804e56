// SPDX-License-Identifier: MIT
//
// llmosd's --engine: where models run. Everywhere: a GPU that cannot be
// used is refused at start with the probe's reason, a malformed device is
// refused, auto and the default say where the models run. With a GPU (the
// gpu_llmosd cases, ctest label gpu; they skip, saying why, without one):
// greedy completions on the GPU match the CPU daemon's, and a session's
// next turn resumes from the KV rows kept in GPU memory, which a restarted
// daemon no longer has and does not believe it has.
#include "../support/llmosd_process.hh"
#include "../support/paths.hh"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <gtest/gtest.h>
#include <httplib.h>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/cuda_memory.hh>
#include <llmos/engine/quant.hh>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <thread>

using nlohmann::json;

namespace {

namespace eng = llmos::engine;

const std::string tiny = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

// Why device `d` cannot run models, or "" when it can (what llmosd asks).
std::string gpu_unusable(int d) {
    const eng::cuda_device_info di = eng::cuda_probe(d);
    if (!di.available) {
        return di.reason;
    }
    const eng::gpu_probe_result gp = eng::probe_gpu(d);
    return gp.usable ? "" : "its KV memory: " + gp.reason;
}

struct ran {
    int status = -1;
    std::string output;
};

// llmosd with `args` that is expected to stop by itself (a refusal).
ran run_to_exit(const std::string& dir, const std::string& args) {
    const std::string cmd = "LLMOS_LOCAL_DIR=" + dir + "/ms timeout 30 " +
                            llmos::testing::llmosd_bin + " --backend local --model tiny=" + tiny +
                            " --listen 127.0.0.1:0 " + args + " 2>&1";
    ran r;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) {
        return r;
    }
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) {
        r.output.append(buf, n);
    }
    const int st = ::pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

class engine_test : public ::testing::Test {
protected:
    std::string _dir;
    void SetUp() override {
        char tmpl[] = "/tmp/llmosd-device-XXXXXX";
        _dir = ::mkdtemp(tmpl);
    }
    void TearDown() override { std::filesystem::remove_all(_dir); }

    // The first model's description (GET /llmos/v1/models).
    static json description(llmos::testing::llmosd_process& d) {
        auto c = d.client();
        auto r = c.Get("/llmos/v1/models");
        if (!r || r->status != 200) {
            ADD_FAILURE() << "llmosd did not answer:\n" << d.log();
            return json::object();
        }
        json j = json::parse(r->body, nullptr, false);
        if (!j.is_object() || !j["models"].is_array() || j["models"].empty()) {
            ADD_FAILURE() << r->body;
            return json::object();
        }
        return j["models"][0];
    }
    static std::string engine_of(llmos::testing::llmosd_process& d) {
        return description(d).value("engine", "");
    }
    static std::string cpu_description() {
        return "cpu (" + std::string(eng::simd_name(eng::default_simd())) + ")";
    }
};

TEST_F(engine_test, a_gpu_that_cannot_be_used_is_refused_with_the_probe_s_reason) {
    // No machine has device 4096.
    auto r = run_to_exit(_dir, "--engine cuda:4096");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("llmosd: --engine cuda:4096: " + eng::cuda_probe(4096).reason),
              std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("serving"), std::string::npos) << r.output;

    const std::string why = gpu_unusable(0);
    if (why.empty()) {
        llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/gpu",
                                         {"--model", "tiny=" + tiny, "--engine", "cuda"});
        ASSERT_TRUE(d.ready()) << d.log();
        EXPECT_TRUE(engine_of(d).starts_with("cuda:0 (")) << engine_of(d);
        return;
    }
    r = run_to_exit(_dir, "--engine cuda");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("llmosd: --engine cuda: " + why), std::string::npos) << r.output;
}

TEST_F(engine_test, a_malformed_device_is_refused) {
    for (const char* d : {"gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1x", "CPU"}) {
        auto r = run_to_exit(_dir, std::string("--engine ") + d);
        EXPECT_EQ(r.status, 1) << d << ": " << r.output;
        EXPECT_NE(
            r.output.find(std::string("--engine ") + d + ": expected cpu, cuda, cuda:N or auto"),
            std::string::npos)
            << d << ": " << r.output;
    }
    auto r = run_to_exit(_dir, "--gpu-kv-memory lots");
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("--gpu-kv-memory"), std::string::npos) << r.output;
}

TEST_F(engine_test, publishing_kv_rows_on_the_cpu_engine_is_refused) {
    auto r = run_to_exit(_dir, "--publish-gpu-kv");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("llmosd: --publish-gpu-kv: the models run on the CPU"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("serving"), std::string::npos) << r.output;
}

TEST_F(engine_test, models_run_on_the_cpu_unless_asked_and_auto_says_where) {
    {
        llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/cpu",
                                         {"--model", "tiny=" + tiny});
        ASSERT_TRUE(d.ready()) << d.log();
        EXPECT_EQ(engine_of(d), cpu_description());
        EXPECT_NE(d.log().find("local backend, " + cpu_description()), std::string::npos)
            << d.log();
    }
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/auto",
                                     {"--model", "tiny=" + tiny, "--engine", "auto"});
    ASSERT_TRUE(d.ready()) << d.log();
    const std::string why = gpu_unusable(0);
    if (why.empty()) {
        EXPECT_TRUE(engine_of(d).starts_with("cuda:0 (")) << engine_of(d);
        return;
    }
    EXPECT_EQ(engine_of(d), cpu_description());
    EXPECT_NE(d.log().find("--engine auto: no GPU (" + why + "): models run on the CPU"),
              std::string::npos)
        << d.log();
    // And it serves there.
    auto c = d.client();
    auto res = c.Post("/v1/completions",
                      json{{"model", "tiny"}, {"prompt", "Hello"}, {"max_tokens", 2}}.dump(),
                      "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
}

TEST_F(engine_test, a_session_whose_cache_outgrew_its_mindspace_keeps_its_conversation) {
    // A session made by a daemon with a smaller cache per conversation (as
    // --engine cuda makes: its rows are on the GPU) goes on in a daemon
    // that needs a larger one: the mindspace is replaced, the conversation
    // carried over.
    auto complete = [](llmos::testing::llmosd_process& d, const json& body) {
        auto c = d.client();
        auto r = c.Post("/v1/completions", body.dump(), "application/json");
        EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no answer") << d.log();
        return r && r->status == 200 ? json::parse(r->body)["choices"][0].value("text", "")
                                     : std::string();
    };
    const json turn1 = {{"model", "tiny"},
                        {"prompt", "Hello world"},
                        {"max_tokens", 8},
                        {"temperature", 0},
                        {"session", "bob"}};
    std::string said;
    {
        llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/s",
                                         {"--model", "tiny=" + tiny, "--ctx", "64"});
        ASSERT_TRUE(d.ready()) << d.log();
        said = complete(d, turn1);
        ASSERT_FALSE(said.empty());
    }
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/s",
                                     {"--model", "tiny=" + tiny, "--ctx", "2048"});
    ASSERT_TRUE(d.ready()) << d.log();
    json turn2 = turn1;
    turn2["prompt"] = " and more";
    const std::string t2 = complete(d, turn2);
    json whole = turn1;
    whole.erase("session");
    whole["prompt"] = "Hello world" + said + " and more";
    EXPECT_EQ(t2, complete(d, whole));
    EXPECT_NE(t2, complete(d, json{{"model", "tiny"},
                                   {"prompt", " and more"},
                                   {"max_tokens", 8},
                                   {"temperature", 0}}))
        << "the conversation was lost";
}

// --- With a GPU ---

class gpu_llmosd : public engine_test {
protected:
    void SetUp() override {
        if (std::string why = gpu_unusable(0); !why.empty()) {
            GTEST_SKIP() << "no GPU to serve on: " << why;
        }
        engine_test::SetUp();
    }
    static json complete(llmos::testing::llmosd_process& d, const json& body) {
        auto c = d.client();
        auto r = c.Post("/v1/completions", body.dump(), "application/json");
        if (!r || r->status != 200) {
            ADD_FAILURE() << (r ? r->body : "no answer") << "\n" << d.log();
            return {};
        }
        return json::parse(r->body);
    }
    static std::string text_of(const json& j) {
        return j.is_object() ? j["choices"][0].value("text", "") : "";
    }
    static uint64_t metric(llmos::testing::llmosd_process& d, const std::string& name) {
        auto c = d.client();
        auto r = c.Get("/metrics");
        if (!r) {
            return 0;
        }
        auto at = r->body.find("\n" + name + " ");
        return at == std::string::npos ? 0 : std::stoull(r->body.substr(at + name.size() + 2));
    }
};

// The engine description (GET /llmos/v1/models, the start line) says how
// the GPU computes: the linear layers, and the decode steps.
TEST_F(gpu_llmosd, says_how_the_gpu_computes) {
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/how",
                                     {"--model", "tiny=" + tiny, "--engine", "cuda"});
    ASSERT_TRUE(d.ready()) << d.log();
    const std::string e = engine_of(d);
    EXPECT_TRUE(e.starts_with("cuda:0 (" + eng::cuda_probe(0).name + ", compute ")) << e;
    const eng::cuda_blas_info bi = eng::cuda_blas();
    EXPECT_NE(e.find(bi.loaded ? "; linear layers: cuBLAS (" + bi.library + ")"
                               : "; linear layers: built-in kernels (no cuBLAS: " + bi.reason),
              std::string::npos)
        << e;
    EXPECT_NE(e.find(eng::cuda_graphs_wanted() ? "; decode: CUDA graphs)"
                                               : "; decode: kernel launches (LLMOS_CUDA_GRAPHS=0)"),
              std::string::npos)
        << e;
    EXPECT_NE(d.log().find(e), std::string::npos) << "the start line says it too: " << d.log();
}

// A completion's decode steps replay as CUDA graphs, and /metrics counts
// them: one capture for the one-sequence decode shape, the steps after it
// replayed, no failed capture.
TEST_F(gpu_llmosd, decode_steps_replay_as_graphs_and_the_metrics_count_them) {
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/graphs",
                                     {"--model", "tiny=" + tiny, "--engine", "cuda"});
    ASSERT_TRUE(d.ready()) << d.log();
    EXPECT_EQ(metric(d, "llmosd_gpu_steps_replayed_total"), 0u);
    const json r = complete(
        d, {{"model", "tiny"}, {"prompt", "Hello world"}, {"max_tokens", 12}, {"temperature", 0}});
    const int n = r.is_object() ? r["usage"].value("completion_tokens", 0) : 0;
    ASSERT_GE(n, 8) << r.dump();
    const uint64_t replayed = metric(d, "llmosd_gpu_steps_replayed_total");
    const uint64_t captures = metric(d, "llmosd_gpu_graph_captures_total");
    EXPECT_EQ(metric(d, "llmosd_gpu_graph_failures_total"), 0u);
    auto c = d.client();
    auto all = c.Get("/metrics");
    ASSERT_TRUE(all);
    for (const char* name : {"llmosd_gpu_steps_replayed_total", "llmosd_gpu_graph_captures_total",
                             "llmosd_gpu_graph_failures_total"}) {
        EXPECT_NE(all->body.find(std::string("\n") + name + " "), std::string::npos) << name;
    }
    std::cout << "[ info     ] " << n << " tokens: " << captures << " capture(s), " << replayed
              << " steps replayed\n";
    if (!eng::cuda_graphs_wanted()) {
        EXPECT_EQ(replayed + captures, 0u) << "LLMOS_CUDA_GRAPHS=0";
        return;
    }
    EXPECT_GE(captures, 1u);
    // About n - 1 decode steps after the prompt's: the first launched, the
    // rest replayed (the first of them right after its capture).
    EXPECT_GE(replayed, uint64_t(n - 3));
    EXPECT_LE(replayed, uint64_t(n - 1));
}

#ifdef LLMOS_CUDA_EMU
// A kernel that faults (the emulated device injects an illegal address)
// leaves the GPU unusable by the process: the request in flight gets 503
// saying so, and llmosd exits with status 1, saying why, to be started
// again (its systemd unit restarts it on failure).
TEST_F(gpu_llmosd, a_gpu_that_fails_for_good_gets_503_and_ends_the_daemon) {
    ::setenv("LLMOS_CUDA_EMU_FAULT_AT", "5", 1);
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/lost",
                                     {"--model", "tiny=" + tiny, "--engine", "cuda"});
    ::unsetenv("LLMOS_CUDA_EMU_FAULT_AT");
    ASSERT_TRUE(d.ready()) << d.log();
    auto c = d.client();
    const json req = {
        {"model", "tiny"}, {"prompt", "Hello world"}, {"max_tokens", 8}, {"temperature", 0}};
    auto r = c.Post("/v1/completions", req.dump(), "application/json");
    ASSERT_TRUE(r) << d.log();
    EXPECT_EQ(r->status, 503) << r->body;
    const json body = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << r->body;
    EXPECT_EQ(body["error"].value("code", ""), "device_lost") << r->body;
    const std::string msg = body["error"].value("message", "");
    EXPECT_NE(msg.find("cudaErrorIllegalAddress"), std::string::npos) << msg;
    EXPECT_NE(msg.find("retry"), std::string::npos) << msg;
    // One that comes after (if it comes before the exit) is told the same.
    if (auto again = d.client().Post("/v1/completions", req.dump(), "application/json")) {
        EXPECT_EQ(again->status, 503) << again->body;
        EXPECT_NE(again->body.find("device_lost"), std::string::npos) << again->body;
    }
    EXPECT_EQ(d.wait_exit(std::chrono::seconds(30)), 1) << d.log();
    const std::string log = d.log();
    EXPECT_NE(log.find("the GPU failed for good"), std::string::npos) << log;
    EXPECT_NE(log.find("llmosd: stopped: the GPU failed for good"), std::string::npos) << log;
}

// Graph captures that fail (the emulated device invalidates the first
// three, as another thread's device-wide call would) cost no token: their
// steps are launched, the completion is the one a daemon with working
// captures gives, /metrics counts the failures, and the log says what
// failed and that the worker launches every step from then on.
TEST_F(gpu_llmosd, failed_graph_captures_are_logged_and_lose_nothing) {
    if (!eng::cuda_graphs_wanted()) {
        GTEST_SKIP() << "LLMOS_CUDA_GRAPHS=0: no captures to fail";
    }
    const json req = {
        {"model", "tiny"}, {"prompt", "Hello world"}, {"max_tokens", 12}, {"temperature", 0}};
    std::string want;
    {
        llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/ok",
                                         {"--model", "tiny=" + tiny, "--engine", "cuda"});
        ASSERT_TRUE(d.ready()) << d.log();
        want = text_of(complete(d, req));
    }
    ASSERT_FALSE(want.empty());
    ::setenv("LLMOS_CUDA_EMU_FAIL_CAPTURES", "3", 1);
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/failing",
                                     {"--model", "tiny=" + tiny, "--engine", "cuda"});
    ::unsetenv("LLMOS_CUDA_EMU_FAIL_CAPTURES");
    ASSERT_TRUE(d.ready()) << d.log();
    const json r = complete(d, req);
    EXPECT_EQ(text_of(r), want) << r.dump();
    // Decode steps: launched, failed, launched, failed, launched, failed;
    // then launched.
    EXPECT_EQ(metric(d, "llmosd_gpu_graph_failures_total"), 3u);
    EXPECT_EQ(metric(d, "llmosd_gpu_graph_captures_total"), 0u);
    EXPECT_EQ(metric(d, "llmosd_gpu_steps_replayed_total"), 0u);
    const std::string log = d.log();
    const std::string failed = "model 'tiny': a CUDA graph capture failed, its step was launched "
                               "kernel by kernel: ";
    size_t n = 0;
    for (size_t at = log.find(failed); at != std::string::npos; at = log.find(failed, at + 1)) {
        ++n;
    }
    EXPECT_EQ(n, 2u) << log;
    EXPECT_NE(log.find("cudaErrorStreamCaptureInvalidated"), std::string::npos) << log;
    EXPECT_NE(log.find("model 'tiny': a worker now launches every step: kernel launches (3 graph "
                       "captures failed in a row; the last: "),
              std::string::npos)
        << log;
}

// A session's request cancelled in a step longer than llmosd waits for
// its worker (10 s; the emulated device holds the step) keeps the
// session's turn until the worker ends it: the worker writes its output
// after the step, into the session's request area. The next turn, sent at
// once with a longer prompt (whose bytes that output would land in),
// waits for it and answers as it does in a session of its own.
TEST_F(gpu_llmosd, a_long_step_of_a_cancelled_request_keeps_its_session_busy) {
    const std::string hold = _dir + "/hold";
    ::setenv("LLMOS_CUDA_EMU_HOLD", hold.c_str(), 1);
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/held",
                                     {"--model", "tiny=" + tiny, "--engine", "cuda"});
    ::unsetenv("LLMOS_CUDA_EMU_HOLD");
    ASSERT_TRUE(d.ready()) << d.log();
    std::string prompt2 = "Hello";
    for (int i = 0; i < 40; ++i) {
        prompt2 += " world";
    }
    const json turn2 = {{"model", "tiny"},
                        {"prompt", prompt2},
                        {"max_tokens", 8},
                        {"temperature", 0},
                        {"session", "held"}};
    json alone = turn2;
    alone["session"] = "alone";
    const std::string want = text_of(complete(d, alone));
    ASSERT_FALSE(want.empty()) << d.log();

    // The first turn: its first piece comes, the device holds the next
    // step, and its client goes.
    {
        auto c = d.client();
        httplib::Request req;
        req.method = "POST";
        req.path = "/v1/completions";
        req.body = json{{"model", "tiny"},  {"prompt", "Hello"}, {"max_tokens", 500},
                        {"temperature", 0}, {"stream", true},    {"session", "held"}}
                       .dump();
        req.set_header("Content-Type", "application/json");
        req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
            std::FILE* f = std::fopen(hold.c_str(), "w");
            if (f) {
                std::fclose(f);
            }
            return false;
        };
        (void)c.send(req);
    }
    ASSERT_TRUE(std::filesystem::exists(hold)) << "no piece came\n" << d.log();
    // The step ends 13 s on: llmosd has waited 10 s for the worker by then.
    std::thread let_go([&] {
        std::this_thread::sleep_for(std::chrono::seconds(13));
        std::filesystem::remove(hold);
    });
    const auto t0 = std::chrono::steady_clock::now();
    const std::string got = text_of(complete(d, turn2));
    const auto waited = std::chrono::steady_clock::now() - t0;
    let_go.join();
    EXPECT_EQ(got, want) << d.log();
    EXPECT_GE(waited, std::chrono::seconds(12)) << "the step was not held";
}
#endif

TEST_F(gpu_llmosd, greedy_completions_match_the_cpu_daemon_s) {
    std::vector<std::string> cpu_texts, gpu_texts;
    const std::vector<std::string> prompts = {"Hello world",
                                              "The quick brown fox jumps over the lazy dog"};
    for (const char* dev : {"cpu", "cuda"}) {
        llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/" + dev,
                                         {"--model", "tiny=" + tiny, "--engine", dev});
        ASSERT_TRUE(d.ready()) << d.log();
        if (std::string(dev) == "cuda") {
            const json m = description(d);
            EXPECT_EQ(m.value("kernels", ""), "cuda") << m.dump();
            EXPECT_EQ(m.value("packed_bytes", uint64_t(1)), 0u) << "no CPU copy on a GPU";
            EXPECT_GT(m.value("gpu_weight_bytes", uint64_t(0)), 0u) << m.dump();
            EXPECT_FALSE(m.value("gpu_weights", "").empty()) << m.dump();
        }
        for (auto& p : prompts) {
            auto j = complete(
                d, {{"model", "tiny"}, {"prompt", p}, {"max_tokens", 16}, {"temperature", 0}});
            (std::string(dev) == "cpu" ? cpu_texts : gpu_texts).push_back(text_of(j));
        }
    }
    EXPECT_EQ(gpu_texts, cpu_texts);
}

// The rows become module mindspaces only on the kernel backend (the test
// VM runs that on the emulated device: tests/vm/llmosd_gpu_emu.sh).
TEST_F(gpu_llmosd, publishing_kv_rows_needs_the_kernel_backend) {
    auto r = run_to_exit(_dir, "--engine cuda --publish-gpu-kv");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("llmosd: --publish-gpu-kv needs the kernel backend"), std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("serving"), std::string::npos) << r.output;
}

TEST_F(gpu_llmosd, a_session_resumes_from_gpu_memory_and_starts_over_after_a_restart) {
    const json turn1 = {{"model", "tiny"},
                        {"prompt", "Hello world"},
                        {"max_tokens", 8},
                        {"temperature", 0},
                        {"session", "alice"}};
    std::string said, turn2_text;
    {
        llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/gpu",
                                         {"--model", "tiny=" + tiny, "--engine", "cuda"});
        ASSERT_TRUE(d.ready()) << d.log();
        said = text_of(complete(d, turn1));
        json turn2 = turn1;
        turn2["prompt"] = " and more";
        turn2_text = text_of(complete(d, turn2));
        EXPECT_GE(metric(d, "llmosd_gpu_kv_resumed_total"), 1u) << "the second turn found its rows";
        EXPECT_GT(metric(d, "llmosd_gpu_kv_bytes"), 0u);
        // The same conversation in one request, without a session.
        json whole = turn1;
        whole.erase("session");
        whole["prompt"] = "Hello world" + said + " and more";
        EXPECT_EQ(turn2_text, text_of(complete(d, whole)));
    }
    // A new daemon: the session's mindspace is there, its GPU rows are not.
    llmos::testing::llmosd_process d(llmos::testing::llmosd_bin, _dir + "/gpu",
                                     {"--model", "tiny=" + tiny, "--engine", "cuda"});
    ASSERT_TRUE(d.ready()) << d.log();
    json turn3 = turn1;
    turn3["prompt"] = " again";
    const std::string t3 = text_of(complete(d, turn3));
    EXPECT_EQ(metric(d, "llmosd_gpu_kv_resumed_total"), 0u);
    json whole = turn1;
    whole.erase("session");
    whole["prompt"] = "Hello world" + said + " and more" + turn2_text + " again";
    EXPECT_EQ(t3, text_of(complete(d, whole)));
}

} // namespace
