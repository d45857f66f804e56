// SPDX-License-Identifier: MIT
//
// llmosctl model|run|chat against a real llmosd: the daemon runs as its own
// process on the local backend with the conformance model, on loopback (or
// a unix socket), and the tests run the built llmosctl as a user would --
// output, one-line errors and exit codes.
#include "../support/llmosd_process.hh"
#include "../support/paths.hh"

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <httplib.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// As llmosctl passes paths on: absolute, normalized.
const std::string tiny =
    std::filesystem::path(std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf")
        .lexically_normal()
        .string();

// The greedy continuation of "Hello world" (the conformance vector).
std::string hello_continuation() {
    return " pu\xEF\xBF\xBD"
           "fo vxszg pq bguhergw\xEF\xBF\xBD wcf<woU vww bdjykfzkas pmtn t";
}

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// llmosd serving the conformance model. `unix_sock` empty: loopback, any
// free port.
class server : public llmos::testing::llmosd_process {
public:
    server(const std::string& state, std::vector<std::string> extra = {},
           std::string unix_sock = {})
        : llmosd_process(llmos::testing::llmosd_bin, state, with_model(std::move(extra)),
                         std::move(unix_sock)) {}
    /// The --server of this daemon.
    std::string url() const {
        return unix_path.empty() ? "http://127.0.0.1:" + std::to_string(port) : "unix:" + unix_path;
    }

private:
    static std::vector<std::string> with_model(std::vector<std::string> extra) {
        std::vector<std::string> a = {"--model", "tiny=" + tiny, "--ctx", "2048"};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }
};

struct ctl_result {
    int status = -1;
    std::string out, err;
};

class llmosctl_llmosd : public ::testing::Test {
protected:
    std::string _dir;
    std::string _cwd = "."; ///< where llmosctl runs
    void SetUp() override {
        char tmpl[] = "/tmp/llmosctl-llmosd-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        _dir = tmpl;
    }
    void TearDown() override { std::filesystem::remove_all(_dir); }

    /// Runs `program args` with `env` (VAR=VALUE ...) and `input` on its
    /// standard input; LLMOSD_URL and LLMOSD_API_KEY are unset otherwise.
    ctl_result run_program(const std::string& program, const std::string& args,
                           const std::string& env = "", const std::string& input = "") {
        std::ofstream(_dir + "/in") << input;
        std::string cmd = "cd " + _cwd + " && env -u LLMOSD_URL -u LLMOSD_API_KEY " + env + " " +
                          program + " " + args + " <" + _dir + "/in >" + _dir + "/out 2>" + _dir +
                          "/err";
        int st = std::system(cmd.c_str());
        return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp(_dir + "/out"), slurp(_dir + "/err")};
    }
    ctl_result ctl(const std::string& args, const std::string& env = "",
                   const std::string& input = "") {
        return run_program(llmos::testing::llmosctl_bin, args, env, input);
    }
    /// llmosctl --server (the daemon) ARGS.
    ctl_result ctl(const server& s, const std::string& args, const std::string& input = "") {
        return ctl("--server " + s.url() + " " + args, "", input);
    }
    static json chat_completion(const server& s, const json& messages, int max_tokens) {
        auto c = s.client();
        json body = {{"model", "tiny"},
                     {"messages", messages},
                     {"max_tokens", max_tokens},
                     {"temperature", 0}};
        auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
        EXPECT_TRUE(r);
        if (!r) {
            return {};
        }
        EXPECT_EQ(r->status, 200) << r->body;
        return json::parse(r->body);
    }
};

} // namespace

TEST_F(llmosctl_llmosd, model_list_as_a_table_and_as_json) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    auto r = ctl(s, "model list");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(r.out.starts_with("NAME ")) << r.out;
    EXPECT_NE(r.out.find("\ntiny "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" llama "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" F32 "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" ENGINE "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" cpu "), std::string::npos) << r.out; // where llmosd runs it
    EXPECT_NE(r.out.find(tiny), std::string::npos) << r.out;
    EXPECT_EQ(r.err, "");
    // --json before or after the command.
    for (const char* args : {"--json model list", "model list --json"}) {
        r = ctl(s, args);
        ASSERT_EQ(r.status, 0) << r.err;
        auto j = json::parse(r.out);
        ASSERT_TRUE(j.is_array()) << r.out;
        ASSERT_EQ(j.size(), 1u);
        EXPECT_EQ(j[0]["name"], "tiny");
        EXPECT_EQ(j[0]["architecture"], "llama");
        EXPECT_EQ(j[0]["path"], tiny);
        EXPECT_EQ(j[0]["n_vocab"], 1024);
        EXPECT_EQ(j[0]["in_flight"], 0);
        EXPECT_TRUE(j[0].value("engine", "").starts_with("cpu (")) << r.out;
    }
    // LLMOSD_URL stands for --server.
    r = ctl("model list", "LLMOSD_URL=" + s.url());
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("\ntiny "), std::string::npos) << r.out;
}

TEST_F(llmosctl_llmosd, model_load_swap_unload_and_their_errors) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    auto r = ctl(s, "model load second " + tiny);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(r.out.starts_with("loaded model second (llama, F32, 616K) from " + tiny + " in "))
        << r.out;
    r = ctl(s, "--json model list");
    EXPECT_EQ(json::parse(r.out).size(), 2u) << r.out;

    r = ctl(s, "model load second " + tiny);
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: cannot load model 'second': a model named 'second' is loaded "
                     "already\n");
    EXPECT_EQ(r.out, "");
    r = ctl(s, "model load bad /nonexistent/model.gguf");
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(r.err.starts_with("llmosctl: cannot load model 'bad': cannot load "
                                  "/nonexistent/model.gguf: "))
        << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    // A relative path is the caller's, made absolute.
    std::filesystem::copy_file(tiny, _dir + "/copy.gguf");
    r = ctl(s, "--json model load rel copy.gguf");
    EXPECT_EQ(r.status, 1) << "relative to llmosctl's directory: " << r.out;
    _cwd = _dir;
    r = ctl(s, "--json model load rel copy.gguf");
    _cwd = ".";
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["path"], _dir + "/copy.gguf");

    // With several models, run and chat need --model.
    r = ctl(s, "run hello");
    EXPECT_EQ(r.status, 2);
    EXPECT_EQ(r.err, "llmosctl: llmosd serves several models (rel, second, tiny): choose one with "
                     "--model\n");

    r = ctl(s, "model swap second " + tiny);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(r.out.starts_with("swapped model second (llama, F32, 616K) to " + tiny)) << r.out;
    r = ctl(s, "model swap nothere " + tiny);
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: cannot swap model 'nothere': the model 'nothere' does not exist\n");
    r = ctl(s, "model swap second /nonexistent/model.gguf");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("cannot load /nonexistent/model.gguf"), std::string::npos) << r.err;

    // A name is a name, not a query: this one does not exist.
    r = ctl(s, "model unload 'second?force=1'");
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
    r = ctl(s, "model unload second");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "unloaded model second\n");
    r = ctl(s, "--json model unload rel");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["unloaded"], "rel");
    r = ctl(s, "model unload second");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: cannot unload model 'second': the model 'second' does not exist\n");
    r = ctl(s, "run hello --model second");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: model 'second': the model 'second' does not exist\n");

    // Usage errors: 2, before anything is sent.
    EXPECT_EQ(ctl(s, "model load onlyname").status, 2);
    EXPECT_EQ(ctl(s, "model").status, 2);
}

TEST_F(llmosctl_llmosd, run_streams_the_greedy_continuation) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    // --raw: the prompt as is, the conformance continuation.
    auto r = ctl(s, "run --raw 'Hello world' --temperature 0 --max-tokens 16");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, hello_continuation() + "\n");
    EXPECT_EQ(r.err, "");
    // The chat template: the same text as a whole (non-streamed) completion.
    auto whole = chat_completion(s,
                                 {{{"role", "system"}, {"content", "Be brief."}},
                                  {{"role", "user"}, {"content", "Say something"}}},
                                 12);
    std::string want = whole["choices"][0]["message"]["content"];
    ASSERT_FALSE(want.empty());
    r = ctl(s, "run 'Say something' --system 'Be brief.' -t 0 -n 12 --verbose");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, want + "\n");
    EXPECT_TRUE(r.err.starts_with(
        "llmosctl: " + std::to_string(whole["usage"]["prompt_tokens"].get<int>()) +
        " prompt + 12 completion tokens in "))
        << r.err;
    EXPECT_NE(r.err.find(" tokens/s (length)\n"), std::string::npos) << r.err;
    // The prompt from standard input.
    r = ctl(s, "run - -t 0 -n 12 --system 'Be brief.'", "Say something");
    EXPECT_EQ(r.out, want + "\n") << r.err;
    // --json: one object at the end.
    r = ctl(s, "--json run 'Say something' --system 'Be brief.' -t 0 -n 12 --seed 7");
    ASSERT_EQ(r.status, 0) << r.err;
    auto j = json::parse(r.out);
    EXPECT_EQ(j["text"], want);
    EXPECT_EQ(j["model"], "tiny");
    EXPECT_EQ(j["finish_reason"], "length");
    EXPECT_EQ(j["usage"]["completion_tokens"], 12);
    EXPECT_GT(j["tokens_per_s"].get<double>(), 0);
    EXPECT_LE(j["time_to_first_token_s"].get<double>(), j["seconds"].get<double>());
}

namespace {

// A stand-in for llmosd that streams hand-made events: SSE framing llmosd
// itself never uses (CRLF, comments, multi-line data, events split across
// writes), and a pause that only ends once llmosctl has printed the first
// piece -- which it can only do if it parses the stream as it comes.
class fake_stream_server {
public:
    std::atomic<bool> first_seen{false};
    std::atomic<bool> waited_out{false};
    const std::string tail; ///< what follows the first event

    /// Set up before its thread starts: the thread reads them.
    explicit fake_stream_server(std::string what_follows, bool seen = false)
        : first_seen(seen)
        , tail(std::move(what_follows)) {
        _svr.Post("/v1/completions", [this](const httplib::Request&, httplib::Response& res) {
            res.set_chunked_content_provider(
                "text/event-stream", [this](size_t, httplib::DataSink& sink) {
                    std::string first = ": hello\r\ndata: {\"choices\":[{\"index\":0,"
                                        "\"text\":\"first\"}]}\r\n\r\n";
                    sink.write(first.data(), first.size());
                    auto until = std::chrono::steady_clock::now() + 10s;
                    while (!first_seen && std::chrono::steady_clock::now() < until) {
                        std::this_thread::sleep_for(5ms);
                    }
                    waited_out = !first_seen;
                    // One event in two writes, then the rest at once.
                    size_t half = tail.size() / 3;
                    sink.write(tail.data(), half);
                    std::this_thread::sleep_for(20ms);
                    sink.write(tail.data() + half, tail.size() - half);
                    sink.done();
                    return true;
                });
        });
        _port = _svr.bind_to_any_port("127.0.0.1");
        _thread = std::thread([this] { _svr.listen_after_bind(); });
    }
    ~fake_stream_server() {
        _svr.stop();
        _thread.join();
    }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(_port); }

private:
    httplib::Server _svr;
    int _port = 0;
    std::thread _thread;
};

// Runs llmosctl ARGS, watching its standard output as it comes: sets
// `seen` once `want` is in it. The exit status; stdout and stderr in `r`.
int run_watching(const std::string& args, const std::string& want, std::atomic<bool>& seen,
                 std::string& out) {
    std::string cmd =
        std::string("env -u LLMOSD_API_KEY ") + llmos::testing::llmosctl_bin + " " + args + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) {
        return -1;
    }
    char buf[4096];
    ssize_t n;
    while ((n = ::read(::fileno(p), buf, sizeof(buf))) > 0) {
        out.append(buf, static_cast<size_t>(n));
        if (out.find(want) != std::string::npos) {
            seen = true;
        }
    }
    int st = ::pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

} // namespace

TEST_F(llmosctl_llmosd, run_prints_each_piece_as_it_arrives) {
    fake_stream_server f("data: {\"choices\":[{\"index\":0,\n"
                         "data: \"text\":\" second\"}]}\n\n"
                         "data: {\"choices\":[{\"index\":0,\"text\":\" third\",\"finish_reason\":"
                         "\"length\"}]}\r\r"
                         "event: ignored\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,"
                         "\"completion_tokens\":3}}\n\n"
                         "data: [DONE]\n\n");
    std::string out;
    int rc = run_watching("--server " + f.url() + " run --raw -m fake hi -v", "first", f.first_seen,
                          out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_FALSE(f.waited_out) << "the first piece was not printed before the stream went on";
    EXPECT_TRUE(out.starts_with("first second third\n")) << out;
    EXPECT_NE(out.find("llmosctl: 2 prompt + 3 completion tokens in "), std::string::npos) << out;
}

TEST_F(llmosctl_llmosd, an_error_event_or_a_cut_stream_fails) {
    fake_stream_server f("data: {\"error\":{\"message\":\"the worker failed\",\"type\":"
                         "\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n",
                         true);
    auto r = ctl("--server " + f.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.out, "first\n");
    EXPECT_EQ(r.err, "llmosctl: model 'fake': the worker failed\n");

    fake_stream_server cut("data: {\"choices\":[{\"index\":0,\"text\":\" more\"}]}\n\n", true);
    r = ctl("--server " + cut.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.out, "first more\n");
    EXPECT_EQ(r.err, "llmosctl: model 'fake': the stream ended before [DONE] (llmosd at " +
                         cut.url() + ")\n");

    fake_stream_server junk("data: not json\n\n", true);
    r = ctl("--server " + junk.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("llmosd sent an event that is not JSON"), std::string::npos) << r.err;
}

// A 429 says which limit was hit: the server's --max-queue gets the hint,
// a tenant's own limit speaks for itself.
TEST_F(llmosctl_llmosd, a_full_queue_is_told_apart_from_a_tenant_s_limit) {
    httplib::Server svr;
    svr.Post("/v1/completions", [](const httplib::Request& req, httplib::Response& res) {
        // The tenant comes from the key; here a priority marks the one.
        const bool tenant = req.body.find("\"priority\"") != std::string::npos;
        res.status = 429;
        res.set_content(json{{"error",
                              {{"message", tenant ? "tenant 3 is at its limit" : "too many"},
                               {"type", "rate_limit_error"},
                               {"param", nullptr},
                               {"code", tenant ? "tenant_overloaded" : "overloaded"}}}}
                            .dump(),
                        "application/json");
    });
    const int port = svr.bind_to_any_port("127.0.0.1");
    std::thread t([&] { svr.listen_after_bind(); });
    const std::string url = "--server http://127.0.0.1:" + std::to_string(port);
    auto full = ctl(url + " run --raw -m fake hi");
    auto mine = ctl(url + " run --raw -m fake --priority 3 hi");
    svr.stop();
    t.join();
    EXPECT_EQ(full.status, 1);
    EXPECT_EQ(full.err, "llmosctl: model 'fake': too many (llmosd is at its --max-queue)\n");
    EXPECT_EQ(mine.status, 1);
    EXPECT_EQ(mine.err, "llmosctl: model 'fake': tenant 3 is at its limit\n");
}

TEST_F(llmosctl_llmosd, text_that_is_not_utf8_is_refused_with_the_reason) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    auto r = ctl(s, "run -t 0 -n 2 -", "caf\xe9\n");
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_EQ(r.err, "llmosctl: the prompt is not UTF-8 text\n");
    // In a chat the line is dropped and the conversation goes on.
    r = ctl(s, "--json chat -t 0 -n 2", "caf\xe9\nHello world\n");
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_NE(r.err.find("that line is not UTF-8 text"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one turn: " << r.out;
}

TEST_F(llmosctl_llmosd, chat_keeps_the_conversation_until_quit) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    const std::string input = "Hello world\n\nAnd then?\n/quit\nnever sent\n";
    auto r = ctl(s, "--json chat -t 0 -n 6", input);
    ASSERT_EQ(r.status, 0) << r.err;
    std::vector<json> turns;
    std::istringstream lines(r.out);
    for (std::string l; std::getline(lines, l);) {
        turns.push_back(json::parse(l));
    }
    ASSERT_EQ(turns.size(), 2u) << r.out;
    // Each reply is what the whole conversation so far gets.
    json conv = {{{"role", "user"}, {"content", "Hello world"}}};
    auto first = chat_completion(s, conv, 6);
    EXPECT_EQ(turns[0]["text"], first["choices"][0]["message"]["content"]);
    conv.push_back({{"role", "assistant"}, {"content", turns[0]["text"]}});
    conv.push_back({{"role", "user"}, {"content", "And then?"}});
    auto second = chat_completion(s, conv, 6);
    EXPECT_EQ(turns[1]["text"], second["choices"][0]["message"]["content"]);
    EXPECT_EQ(turns[1]["usage"]["prompt_tokens"], second["usage"]["prompt_tokens"]);

    // Text mode: the replies, one per line; end of input leaves too.
    r = ctl(s, "chat -t 0 -n 6", "Hello world\nAnd then?\n");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, turns[0]["text"].get<std::string>() + "\n" +
                         turns[1]["text"].get<std::string>() + "\n");

    // A server-side session: llmosd keeps the conversation, same replies.
    r = ctl(s, "chat --session alice -t 0 -n 6", "Hello world\nAnd then?\n/quit\n");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, turns[0]["text"].get<std::string>() + "\n" +
                         turns[1]["text"].get<std::string>() + "\n");
    r = ctl(s, "chat --session 'no/slash'", "hi\n");
    EXPECT_EQ(r.status, 2);
    EXPECT_EQ(r.err, "llmosctl: bad --session 'no/slash' (1 to 48 characters of A-Z a-z 0-9 . _ "
                     "-, not only dots)\n");

    // Listed: its name, model and kind, used just now.
    r = ctl(s, "session ls");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(r.out.starts_with("NAME ")) << r.out;
    EXPECT_NE(r.out.find("\nalice "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" tiny "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" chat "), std::string::npos) << r.out;
    r = ctl(s, "--json session ls");
    ASSERT_EQ(r.status, 0) << r.err;
    auto listed = json::parse(r.out);
    ASSERT_EQ(listed.size(), 1u) << r.out;
    EXPECT_EQ(listed[0]["id"], "alice");
    EXPECT_EQ(listed[0]["kind"], "chat");
    EXPECT_LE(listed[0]["last_used"].get<uint64_t>(), uint64_t(::time(nullptr)));

    // Ended, the session starts over: the first reply again, for the
    // second line.
    r = ctl(s, "session rm alice");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "ended session alice\n");
    r = ctl(s, "chat --session alice -t 0 -n 6", "Hello world\n/quit\n");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, turns[0]["text"].get<std::string>() + "\n");
    r = ctl(s, "session rm nobody");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: cannot end session 'nobody': there is no session 'nobody'\n");
    r = ctl(s, "session rm 'no/slash'");
    EXPECT_EQ(r.status, 2);
    EXPECT_EQ(r.err, "llmosctl: bad session name 'no/slash' (1 to 48 characters of A-Z a-z 0-9 . "
                     "_ -, not only dots)\n");
}

// A line past 16 MiB is not read whole, nor sent: the chat goes on.
TEST_F(llmosctl_llmosd, chat_refuses_a_line_past_the_cap_and_goes_on) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    auto want = ctl(s, "chat -t 0 -n 6", "Hello world\n");
    ASSERT_EQ(want.status, 0) << want.err;
    auto r = ctl(s, "chat -t 0 -n 6", std::string((16u << 20) + 1, 'a') + "\nHello world\n");
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_EQ(r.err, "llmosctl: that line is longer than 16 MiB: not sent\n");
    EXPECT_EQ(r.out, want.out);
}

TEST_F(llmosctl_llmosd, an_unreachable_server_is_one_clear_line) {
    for (const char* args : {"model list", "run hello", "chat", "model load x /tmp/x.gguf",
                             "session rm x", "session ls"}) {
        auto r = ctl(std::string("--server http://127.0.0.1:1 ") + args, "", "hi\n");
        EXPECT_EQ(r.status, 1) << args;
        EXPECT_EQ(r.err, "llmosctl: cannot reach llmosd at http://127.0.0.1:1: could not connect "
                         "(is llmosd running? set --server or LLMOSD_URL)\n")
            << args;
    }
    auto r = ctl("model list", "LLMOSD_URL=unix:" + _dir + "/no.sock");
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(r.err.starts_with("llmosctl: cannot reach llmosd at unix:" + _dir + "/no.sock"))
        << r.err;
    r = ctl("--server ftp://example model list");
    EXPECT_EQ(r.status, 2);
    EXPECT_EQ(r.err, "llmosctl: bad --server 'ftp://example' (http://HOST:PORT, "
                     "https://HOST:PORT or unix:/PATH)\n");
    EXPECT_EQ(ctl("run hello --temperature 3").status, 2);
    EXPECT_EQ(ctl("run").status, 2);
    // Malformed addresses: refused before anything is sent.
    for (const char* bad :
         {"http://[zz]:1", "http://[::1]x", "http://h:1x", "http://[]:1", "http://h:0",
          "http://[::1", "http://[fe80::1%]:1", "http://[fe80::1%a/b]:1"}) {
        r = ctl(std::string("--server '") + bad + "' model list");
        EXPECT_EQ(r.status, 2) << bad << ": " << r.err;
        EXPECT_TRUE(r.err.starts_with("llmosctl: bad --server")) << bad << ": " << r.err;
    }
    // NaN passes a range check: it is still no temperature.
    r = ctl("run hello -t nan");
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_EQ(r.err, "llmosctl: --temperature must be a number from 0 to 2\n");
}

TEST_F(llmosctl_llmosd, ipv6_addresses_with_letters_and_text_that_json_cannot_carry) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    // An IPv6 address with letters (the IPv4-mapped form of the loopback
    // address, so that the IPv4 listener answers it).
    const std::string port = std::to_string(s.port);
    auto r = ctl("--server 'http://[::ffff:127.0.0.1]:" + port + "/v1' model list");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("tiny"), std::string::npos) << r.out;
    r = ctl("--server 'http://[::FFFF:7f00:1]:" + port + "' run --raw -t 0 -n 16 'Hello world'");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, hello_continuation() + "\n");
    // Names, paths and system prompts go as JSON text: UTF-8 only.
    for (const auto& [args, what] : std::vector<std::pair<std::string, std::string>>{
             {"run -m \"$(printf '\\377')\" hi", "the model name"},
             {"run --system \"$(printf '\\377')\" hi", "the system prompt"},
             {"chat -m \"$(printf '\\377')\"", "the model name"},
             {"model load x /tmp/\"$(printf '\\377')\".gguf", "the path"},
             {"model unload \"$(printf '\\377')\"", "the model name"}}) {
        r = ctl(s, args);
        EXPECT_EQ(r.status, 2) << args << ": " << r.err;
        EXPECT_EQ(r.err, "llmosctl: " + what + " is not UTF-8 text\n") << args;
    }
}

TEST_F(llmosctl_llmosd, a_session_s_system_message_is_sent_once) {
    server s(_dir + "/d");
    ASSERT_GT(s.port, 0) << s.log();
    // run --session with --system, twice: the second turn's conversation
    // is system, user, assistant, user (not a second system message).
    auto r = ctl(s, "--json run --session once --system 'Be brief.' -t 0 -n 4 'Hello world'");
    ASSERT_EQ(r.status, 0) << r.err;
    const json first = json::parse(r.out);
    r = ctl(s, "--json run --session once --system 'Be brief.' -t 0 -n 4 'And then?'");
    ASSERT_EQ(r.status, 0) << r.err;
    const json second = json::parse(r.out);
    const json stateless = chat_completion(s,
                                           {{{"role", "system"}, {"content", "Be brief."}},
                                            {{"role", "user"}, {"content", "Hello world"}},
                                            {{"role", "assistant"}, {"content", first["text"]}},
                                            {{"role", "user"}, {"content", "And then?"}}},
                                           4);
    EXPECT_EQ(second["usage"]["prompt_tokens"], stateless["usage"]["prompt_tokens"]);
    EXPECT_EQ(second["text"], stateless["choices"][0]["message"]["content"]);
}

TEST_F(llmosctl_llmosd, api_keys_from_the_option_or_the_environment) {
    std::filesystem::create_directories(_dir + "/d");
    std::ofstream(_dir + "/d/keys") << "secret-one 7\noperator admin\n";
    server s(_dir + "/d", {"--api-key-file", _dir + "/d/keys"});
    ASSERT_GT(s.port, 0) << s.log();
    auto r = ctl(s, "model list");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: cannot list models: an API key is required (Authorization: "
                     "Bearer KEY) (give the key with --api-key or LLMOSD_API_KEY)\n");
    r = ctl(s, "--api-key wrong run hello");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("the API key is not valid"), std::string::npos) << r.err;
    r = ctl(s, "--api-key secret-one model list");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err,
              "llmosctl: cannot list models: this API key may not use the administration "
              "API (/llmos/v1/models): that needs a key marked admin in llmosd's API key file\n");
    r = ctl(s, "--api-key operator model list");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("\ntiny "), std::string::npos) << r.out;
    r = ctl("--server " + s.url() + " run --raw 'Hello world' -t 0 -n 16",
            "LLMOSD_API_KEY=secret-one");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, hello_continuation() + "\n");
}

TEST_F(llmosctl_llmosd, a_unix_socket_server) {
    server s(_dir + "/d", {}, _dir + "/llmosd.sock");
    ASSERT_TRUE(s.ready()) << s.log();
    auto r = ctl(s, "run --raw 'Hello world' -t 0 -n 16");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, hello_continuation() + "\n");
    r = ctl(s, "model list");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("\ntiny "), std::string::npos) << r.out;
}

namespace {

// A stand-in for llmosd on loopback: set its routes, then start().
class fake_server {
public:
    httplib::Server svr;
    void start() {
        _port = svr.bind_to_any_port("127.0.0.1");
        _thread = std::thread([this] { svr.listen_after_bind(); });
    }
    ~fake_server() {
        svr.stop();
        if (_thread.joinable()) {
            _thread.join();
        }
    }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(_port); }

private:
    int _port = 0;
    std::thread _thread;
};

std::string sse(const json& ev) {
    return "data: " + ev.dump() + "\n\n";
}

} // namespace

// A reply of more than 64 MiB is not read to its end.
TEST_F(llmosctl_llmosd, a_reply_past_64_mib_is_refused) {
    fake_server f;
    f.svr.Get("/llmos/v1/models", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("{\"models\":[\"" + std::string((64u << 20) + 1, 'x') + "\"]}",
                        "application/json");
    });
    f.start();
    auto r = ctl("--server " + f.url() + " model list");
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_EQ(r.err, "llmosctl: cannot list models: the reply is larger than 64 MiB (llmosd at " +
                         f.url() + ")\n");
    EXPECT_EQ(r.out, "");
}

// The server's only model is used by name; a name with control characters
// (not llmosd's) is printed with them written out, never raw.
TEST_F(llmosctl_llmosd, a_model_name_from_the_server_is_printed_safely) {
    fake_server f;
    f.svr.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(R"({"object":"list","data":[{"id":"evil\u001b[31mRED"}]})",
                        "application/json");
    });
    for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
        f.svr.Post(path, [](const httplib::Request&, httplib::Response& res) {
            res.status = 400;
            res.set_content(R"({"error":{"message":"no","type":"invalid_request_error"}})",
                            "application/json");
        });
    }
    f.start();
    for (const char* args : {"run hi", "run --raw hi", "chat"}) {
        auto r = ctl("--server " + f.url() + " " + args, "", "hi\n");
        EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << args << ": " << r.err;
        EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << args << ": " << r.out;
        EXPECT_NE(r.err.find("model 'evil\\x1b[31mRED'"), std::string::npos)
            << args << ": " << r.err;
    }
}

// JSON, but not as llmosd types it: the not-llmosd error, before any table.
TEST_F(llmosctl_llmosd, a_session_list_of_odd_types_is_not_llmosd_s) {
    for (const char* body : {R"({"data":[1]})", R"({"data":[{"id":"a","readable":"yes"}]})",
                             R"({"data":[{"id":"a","full":null}]})"}) {
        fake_server f;
        f.svr.Get("/llmos/v1/sessions", [body](const httplib::Request&, httplib::Response& res) {
            res.set_content(body, "application/json");
        });
        f.start();
        auto r = ctl("--server " + f.url() + " session ls");
        EXPECT_EQ(r.status, 1) << body << ": " << r.err;
        EXPECT_EQ(r.err, "llmosctl: cannot list sessions: the reply from " + f.url() +
                             " is not llmosd's (an entry of its list is not what llmosd sends)\n")
            << body;
        EXPECT_EQ(r.out, "") << body;
    }
}

// Without --session, the oldest turns go once the conversation outgrows
// the context (the system message stays); a line that does not fit even
// alone is said so, and the chat goes on.
TEST_F(llmosctl_llmosd, a_chat_that_outgrows_the_context_drops_its_oldest_turns) {
    fake_server f;
    std::vector<json> seen; // the messages of each request
    std::mutex m;
    f.svr.Post("/v1/chat/completions", [&](const httplib::Request& req, httplib::Response& res) {
        const json msgs = json::parse(req.body)["messages"];
        size_t chars = 0;
        for (const auto& msg : msgs) {
            chars += msg["content"].get<std::string>().size();
        }
        {
            std::lock_guard lk(m);
            seen.push_back(msgs);
        }
        if (chars > 40) { // the "context"
            res.status = 400;
            res.set_content(json{{"error",
                                  {{"message", "the prompt is " + std::to_string(chars) +
                                                   " tokens; this server's context holds 40"},
                                   {"type", "invalid_request_error"},
                                   {"param", "messages"},
                                   {"code", "context_length_exceeded"}}}}
                                .dump(),
                            "application/json");
            return;
        }
        res.set_content(sse({{"choices", {{{"index", 0}, {"delta", {{"content", "ok"}}}}}}}) +
                            "data: [DONE]\n\n",
                        "text/event-stream");
    });
    f.start();
    // system 3 + each turn 8 + 2: four turns fit, the fifth drops.
    auto r = ctl("--server " + f.url() + " chat -m fake --system sys", "",
                 "line-one\nline-two\nline-3rd\nline-4th\nline-5th\n" + std::string(40, 'z') +
                     "\nline-7th\n");
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_EQ(r.out, "ok\nok\nok\nok\nok\nok\n");
    EXPECT_EQ(r.err, "llmosctl: the conversation outgrew the model's context: dropped its "
                     "oldest 2 of 3 turns\n"
                     "llmosctl: the conversation outgrew the model's context: dropped its "
                     "oldest 2 of 3 turns\n"
                     "llmosctl: the conversation outgrew the model's context: dropped its "
                     "oldest 1 of 1 turns\n"
                     "llmosctl: model 'fake' (the line alone, without earlier turns): the prompt "
                     "is 43 tokens; this server's context holds 40\n");
    std::lock_guard lk(m);
    ASSERT_FALSE(seen.empty());
    // After the first drop: the system message, the third turn, the line.
    const json want = {{{"role", "system"}, {"content", "sys"}},
                       {{"role", "user"}, {"content", "line-3rd"}},
                       {{"role", "assistant"}, {"content", "ok"}},
                       {{"role", "user"}, {"content", "line-4th"}}};
    EXPECT_NE(std::find(seen.begin(), seen.end(), want), seen.end());
    EXPECT_EQ(seen.back().back()["content"], "line-7th");
    EXPECT_EQ(seen.back().front()["content"], "sys");
}

// What a server says goes out on one line, without terminal controls.
TEST_F(llmosctl_llmosd, a_server_s_text_is_printed_without_control_characters) {
    fake_server f;
    f.svr.Post("/v1/completions", [](const httplib::Request&, httplib::Response& res) {
        res.status = 400;
        res.set_content(R"({"error":{"message":"bad\nthing \u001b[31mred","code":null}})",
                        "application/json");
    });
    f.svr.Get("/llmos/v1/models", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(R"({"models":[{"name":"evil\u001b]0;title\u0007","path":"/a\nb"}]})",
                        "application/json");
    });
    f.svr.Get("/llmos/v1/sessions", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(R"({"data":[{"id":"s\r1","model":"m\u009b2J"}]})", "application/json");
    });
    f.start();
    auto r = ctl("--server " + f.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: model 'fake': bad\\x0athing \\x1b[31mred\n");
    r = ctl("--server " + f.url() + " model list");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\nevil\\x1b]0;title\\x07 "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("  /a\\x0ab\n"), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;
    r = ctl("--server " + f.url() + " session ls");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("\ns\\x0d1 "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" m\\u009b2J "), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;
}

// An error event that says nothing, or a bare string; a 200 that is no
// event stream.
TEST_F(llmosctl_llmosd, odd_stream_replies_are_named_for_what_they_are) {
    fake_stream_server bare("data: {\"error\":\"out of cheese\"}\n\ndata: [DONE]\n\n", true);
    auto r = ctl("--server " + bare.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: model 'fake': out of cheese\n");
    fake_stream_server odd("data: {\"error\":5}\n\ndata: [DONE]\n\n", true);
    r = ctl("--server " + odd.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: model 'fake': the stream ended with an error event that says "
                     "nothing more (llmosd at " +
                         odd.url() + ")\n");

    fake_server f;
    f.svr.Post("/v1/completions", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(R"({"choices":[{"text":"hi"}]})", "application/json");
    });
    f.start();
    r = ctl("--server " + f.url() + " run --raw -m fake hi");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: model 'fake': the reply from " + f.url() +
                         " is not llmosd's (not an event stream)\n");
}

// A server that takes the connection and never answers: a timeout, said
// so (after the 30 s a plain call waits).
TEST_F(llmosctl_llmosd, a_silent_server_is_a_timeout) {
    std::atomic<bool> gave_up{false}; // outlives the server's threads
    fake_server f;
    f.svr.Get("/llmos/v1/models", [&gave_up](const httplib::Request&, httplib::Response& res) {
        // Silent until llmosctl has given up (a minute at most).
        for (int i = 0; i < 600 && !gave_up; ++i) {
            std::this_thread::sleep_for(100ms);
        }
        res.set_content("{}", "application/json");
    });
    for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
        f.svr.Post(path, [&gave_up](const httplib::Request&, httplib::Response& res) {
            for (int i = 0; i < 600 && !gave_up; ++i) { // a first token that never comes
                std::this_thread::sleep_for(100ms);
            }
            res.set_content("{}", "application/json");
        });
    }
    f.start();
    // A generation waits 15 minutes for its next piece by default; this
    // long as --reply-timeout says.
    for (const char* args : {"run --model m hi", "run --raw --model m hi"}) {
        auto g = ctl("--server " + f.url() + " --reply-timeout 1 " + args);
        EXPECT_EQ(g.status, 1) << args;
        EXPECT_NE(g.err.find(": timed out waiting for the reply (nothing came for 1 s)"),
                  std::string::npos)
            << args << ": " << g.err;
    }
    // (30 s without --reply-timeout, which says the same with 30.)
    auto r = ctl("--server " + f.url() + " --reply-timeout 2 model list");
    gave_up = true;
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "llmosctl: cannot list models: timed out waiting for the reply (nothing "
                     "came for 2 s) (llmosd at " +
                         f.url() + ")\n");
    // Bad values are usage errors, before any call.
    for (const char* v : {"0", "86401", "-1", "1.5", "x", "''"}) {
        auto b = ctl("--server " + f.url() + " --reply-timeout " + v + " model list");
        EXPECT_EQ(b.status, 2) << v << ": " << b.err;
        EXPECT_NE(b.err.find("--reply-timeout"), std::string::npos) << v << ": " << b.err;
    }
}

TEST_F(llmosctl_llmosd, model_names_and_api_keys_llmosd_would_refuse_are_usage_errors) {
    for (const char* args :
         {"model unload ''", "model unload a/b", "model unload \"$(printf 'a\\033b')\"",
          "model unload \"$(printf 'a\\177b')\"", "model unload \"$(printf 'a\\302\\233b')\"",
          "model swap '' /tmp/x.gguf", "model load a/b /tmp/x.gguf", "model unload ..",
          "model load . /tmp/x.gguf"}) {
        auto r = ctl(std::string("--server http://127.0.0.1:1 ") + args);
        EXPECT_EQ(r.status, 2) << args << ": " << r.err;
        EXPECT_TRUE(r.err.starts_with("llmosctl: bad model name '")) << args << ": " << r.err;
        EXPECT_NE(r.err.find("(1 to 128 bytes, without '/' or control characters, not only "
                             "dots)\n"),
                  std::string::npos)
            << args << ": " << r.err;
    }
    for (const char* args : {"session rm ..", "run --session . hi", "chat --session ..."}) {
        auto r = ctl(std::string("--server http://127.0.0.1:1 ") + args);
        EXPECT_EQ(r.status, 2) << args << ": " << r.err;
        EXPECT_NE(r.err.find("not only dots)"), std::string::npos) << args << ": " << r.err;
    }
    for (const char* key : {"'a\\r\\nX-Evil: 1'", "'a b'", "'a\\177b'", "'a\\tb'"}) {
        auto r = ctl(std::string("--server http://127.0.0.1:1 --api-key \"$(printf ") + key +
                     ")\" model list");
        EXPECT_EQ(r.status, 2) << key << ": " << r.err;
        EXPECT_EQ(r.err, "llmosctl: the API key (--api-key or LLMOSD_API_KEY) holds a space or a "
                         "control character: a key is one word, as in llmosd's key file\n")
            << key;
        r = ctl("--server http://127.0.0.1:1 model list",
                std::string("LLMOSD_API_KEY=\"$(printf ") + key + ")\"");
        EXPECT_EQ(r.status, 2) << key << ": " << r.err;
    }
    // A word that is not ASCII goes as it is (nothing listens there: 1).
    auto r = ctl("--server http://127.0.0.1:1 --api-key \"$(printf 'caf\\303\\251')\" model list");
    EXPECT_EQ(r.status, 1) << r.err;
}

#ifdef LLMOS_TEST_STATIC_LLMOSCTL
TEST_F(llmosctl_llmosd, the_static_build_says_it_has_no_http) {
    for (const char* args :
         {"model list", "run hello", "chat", "model load a b", "session rm a", "session ls"}) {
        auto r = run_program(llmos::testing::llmosctl_static_bin, args);
        EXPECT_EQ(r.status, 1) << args; // a failure, not a usage error
        EXPECT_EQ(r.err, "llmosctl: this llmosctl was built without HTTP support; use the full "
                         "llmosctl\n")
            << args;
    }
    auto r = run_program(llmos::testing::llmosctl_static_bin, "--version");
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(r.out, "llmosctl " LLMOS_TEST_VERSION " (static, without HTTP)\n");
    r = run_program(llmos::testing::llmosctl_static_bin, "--backend local ms list",
                    "LLMOS_LOCAL_DIR=" + _dir + "/store");
    EXPECT_EQ(r.status, 0) << r.err;
}
#endif
