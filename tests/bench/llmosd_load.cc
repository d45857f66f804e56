// SPDX-License-Identifier: MIT
//
// llmosd under load: the daemon runs as its own process on the local
// backend with a generated tiny model, and N streaming clients (threads,
// loopback only) each send R chat completions one after the other. The
// daemon's --max-queue is smaller than N, so some requests get 429; a
// client then waits Retry-After and sends it again.
//
// Reports requests served, 429s, other errors, time to first token and
// total latency (p50/p99, of the attempt that was served), aggregate
// tokens/s, the daemon's peak RSS (VmHWM) before and after the load, and
// the kernel's count of connections turned away by a full accept queue.
// The baseline, measured first in the same run: one client alone sending
// the same requests; the loaded figures are also given as ratios to it.
// A benchmark: it fails (exit 1) only on errors other than 429, never on
// timings.
//
//   llmosd_load [--clients 64] [--requests 4] [--max-queue 4]
//               [--max-tokens 32] [--model FILE.gguf] [--keep-alive]
//
// Each request opens its own connection, unless --keep-alive (one per
// client, reused).
#include "../support/llmosd_process.hh"
#include "../support/paths.hh"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <httplib.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using nlohmann::json;
using clk = std::chrono::steady_clock;

namespace {

double secs_since(clk::time_point t0) {
    return std::chrono::duration<double>(clk::now() - t0).count();
}

struct config {
    int clients = 64;
    int requests = 4;
    int max_queue = 4;
    int max_tokens = 32;
    bool keep_alive = false; ///< one connection per client, reused
    std::string model;       ///< empty: generate one
};

// The daemon, started on loopback (any free port) and stopped with SIGTERM.
class daemon_proc : public llmos::testing::llmosd_process {
public:
    daemon_proc(const std::string& dir, const std::string& model, int max_queue)
        : llmosd_process(llmos::testing::llmosd_bin, dir,
                         {"--model", "bench=" + model, "--max-queue", std::to_string(max_queue),
                          "--ctx", "1024"}) {}
    /// VmHWM (peak resident set) in KiB, or 0.
    long peak_rss_kib() const {
        std::ifstream in("/proc/" + std::to_string(pid) + "/status");
        std::string line;
        while (std::getline(in, line)) {
            if (line.rfind("VmHWM:", 0) == 0) {
                return std::strtol(line.c_str() + 6, nullptr, 10);
            }
        }
        return 0;
    }
};

// What one client saw.
struct tally {
    int ok = 0;
    int rejected = 0;        ///< 429 before the stream
    int rejected_stream = 0; ///< "overloaded" as an error event after the 200
    int errors = 0;
    long tokens = 0;
    std::vector<double> ttft_s, total_s;
    std::vector<double> e2e_s;            ///< from the first attempt, waits for 429 included
    std::vector<std::string> error_words; ///< the first few
};

enum class outcome { ok, retry, error };

// One streamed chat completion. Fills `t` and returns what to do next;
// `retry_after_s` is set on 429.
outcome one_request(httplib::Client& c, const json& body, tally& t, double& retry_after_s) {
    int status = 0;
    std::string buffer, refusal;
    bool done = false, first = false, overloaded = false;
    std::string stream_error;
    long usage_tokens = -1;
    auto t0 = clk::now();
    double ttft = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.response_handler = [&](const httplib::Response& r) {
        status = r.status;
        if (status == 429) {
            retry_after_s = std::atof(r.get_header_value("Retry-After").c_str());
        }
        return true;
    };
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        if (status != 200) {
            refusal.append(d, n);
            return true;
        }
        buffer.append(d, n);
        size_t end;
        while ((end = buffer.find("\n\n")) != std::string::npos) {
            std::string ev = buffer.substr(0, end);
            buffer.erase(0, end + 2);
            if (ev.rfind("data: ", 0) != 0) {
                continue;
            }
            ev.erase(0, 6);
            if (ev == "[DONE]") {
                done = true;
                continue;
            }
            json j = json::parse(ev, nullptr, false);
            if (j.is_discarded()) {
                stream_error = "an event that is not JSON";
                continue;
            }
            if (j.contains("error")) {
                overloaded = j["error"].value("code", json()) == "overloaded";
                stream_error = j["error"].value("message", std::string{"?"});
                continue;
            }
            if (j.contains("usage") && j["usage"].is_object()) {
                usage_tokens = j["usage"].value("completion_tokens", 0L);
            }
            if (!first && !j["choices"].empty()) {
                const json& delta = j["choices"][0]["delta"];
                if (delta.contains("content") && !delta["content"].get<std::string>().empty()) {
                    first = true;
                    ttft = secs_since(t0);
                }
            }
        }
        return true;
    };
    auto res = c.send(req);
    auto note = [&](const std::string& w) {
        if (t.error_words.size() < 5) {
            t.error_words.push_back(w);
        }
    };
    if (!res) {
        note(httplib::to_string(res.error()) + " after " + std::to_string(secs_since(t0)) +
             " s, no reply");
        return outcome::error;
    }
    if (status == 429) {
        t.rejected++;
        return outcome::retry;
    }
    if (status != 200) {
        note("HTTP " + std::to_string(status) + ": " + refusal);
        return outcome::error;
    }
    if (overloaded) {
        t.rejected_stream++;
        retry_after_s = 1;
        return outcome::retry;
    }
    if (!stream_error.empty() || !done || usage_tokens < 0) {
        note(!stream_error.empty() ? stream_error
             : !done               ? std::string{"no [DONE]"}
                                   : std::string{"no usage"});
        return outcome::error;
    }
    t.ok++;
    t.tokens += usage_tokens;
    if (first) { // not when the first token sampled was the end
        t.ttft_s.push_back(ttft);
    }
    t.total_s.push_back(secs_since(t0));
    return outcome::ok;
}

void client(int port, const config& cfg, int id, tally& t) {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(10, 0);
    c.set_read_timeout(300, 0);
    c.set_keep_alive(cfg.keep_alive);
    static const char* topics[] = {"the sea",  "a small robot", "winter", "bread",
                                   "the moon", "a train",       "music",  "a garden"};
    for (int r = 0; r < cfg.requests; ++r) {
        json body = {{"model", "bench"},
                     {"messages",
                      {{{"role", "user"},
                        {"content", std::string{"Tell me about "} + topics[(id + r) % 8] + "."}}}},
                     {"max_tokens", cfg.max_tokens},
                     {"temperature", 0.7},
                     {"seed", id * 100 + r},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
        auto t0 = clk::now();
        for (int attempt = 0;; ++attempt) {
            double wait_s = 1;
            auto o = one_request(c, body, t, wait_s);
            if (o == outcome::ok) {
                t.e2e_s.push_back(secs_since(t0));
                break;
            }
            if (o == outcome::error || attempt > 200) {
                if (o != outcome::error && t.error_words.size() < 5) {
                    t.error_words.push_back("still 429 after 200 tries");
                }
                t.errors++;
                break;
            }
            std::this_thread::sleep_for(
                std::chrono::duration<double>(std::clamp(wait_s, 0.05, 5.0)));
        }
    }
}

// TcpExt ListenOverflows from /proc/net/netstat (all of this network
// namespace's sockets): connections a full accept queue turned away.
long listen_overflows() {
    std::ifstream in("/proc/net/netstat");
    std::string names, values;
    while (std::getline(in, names) && std::getline(in, values)) {
        if (names.rfind("TcpExt:", 0) != 0) {
            continue;
        }
        std::istringstream n(names), v(values);
        std::string name, value;
        while (n >> name && v >> value) {
            if (name == "ListenOverflows") {
                return std::strtol(value.c_str(), nullptr, 10);
            }
        }
    }
    return -1;
}

double quantile(std::vector<double> v, double q) {
    if (v.empty()) {
        return 0;
    }
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

bool parse_args(int argc, char** argv, config& cfg) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--keep-alive") {
            cfg.keep_alive = true;
            continue;
        }
        if (i + 1 >= argc) {
            return false;
        }
        std::string v = argv[++i];
        if (a == "--model") {
            cfg.model = v;
            continue;
        }
        int n = std::atoi(v.c_str());
        if (n < 1) {
            return false;
        }
        if (a == "--clients") {
            cfg.clients = std::min(n, 1024);
        } else if (a == "--requests") {
            cfg.requests = n;
        } else if (a == "--max-queue") {
            cfg.max_queue = n;
        } else if (a == "--max-tokens") {
            cfg.max_tokens = n;
        } else {
            return false;
        }
    }
    return true;
}

} // namespace

int main(int argc, char** argv) {
    config cfg;
    if (!parse_args(argc, argv, cfg)) {
        std::fprintf(stderr, "usage: llmosd_load [--clients N] [--requests N] [--max-queue N] "
                             "[--max-tokens N] [--model FILE.gguf] [--keep-alive]\n");
        return 2;
    }
    std::signal(SIGPIPE, SIG_IGN);
    char tmpl[] = "/tmp/llmosd-load-XXXXXX";
    if (!::mkdtemp(tmpl)) {
        std::perror("mkdtemp");
        return 1;
    }
    const std::string dir = tmpl;
    struct cleanup {
        std::string d;
        ~cleanup() { std::filesystem::remove_all(d); }
    } cleanup_dir{dir};
    std::string model = cfg.model;
    if (model.empty()) {
        model = dir + "/tiny.gguf";
        std::string cmd = std::string(llmos::testing::mkmodel_bin) + " --preset tiny -o " + model +
                          " >" + dir + "/mkmodel.log 2>&1";
        if (std::system(cmd.c_str()) != 0) {
            std::fprintf(stderr, "llmosd_load: llmos-mkmodel failed (%s/mkmodel.log)\n",
                         dir.c_str());
            return 1;
        }
    }
    daemon_proc d(dir, model, cfg.max_queue);
    if (!d.port) {
        std::fprintf(stderr, "llmosd_load: llmosd did not start:\n");
        std::ifstream log(dir + "/log");
        std::fprintf(stderr, "%s\n", std::string(std::istreambuf_iterator<char>(log), {}).c_str());
        return 1;
    }
    // The baseline, in the same run: one client alone, the same requests.
    tally alone;
    auto tb = clk::now();
    client(d.port, cfg, 0, alone);
    const double alone_wall = secs_since(tb);

    const long rss_before = d.peak_rss_kib();
    const long overflows_before = listen_overflows();

    std::vector<tally> tallies(static_cast<size_t>(cfg.clients));
    std::vector<std::thread> threads;
    auto t0 = clk::now();
    for (int i = 0; i < cfg.clients; ++i) {
        threads.emplace_back(client, d.port, std::cref(cfg), i, std::ref(tallies[size_t(i)]));
    }
    for (auto& t : threads) {
        t.join();
    }
    const double wall = secs_since(t0);
    const long rss_after = d.peak_rss_kib();
    const long overflows = listen_overflows() - overflows_before;
    const int stopped = d.stop();

    tally all;
    for (auto& t : tallies) {
        all.ok += t.ok;
        all.rejected += t.rejected;
        all.rejected_stream += t.rejected_stream;
        all.errors += t.errors;
        all.tokens += t.tokens;
        all.ttft_s.insert(all.ttft_s.end(), t.ttft_s.begin(), t.ttft_s.end());
        all.total_s.insert(all.total_s.end(), t.total_s.begin(), t.total_s.end());
        all.e2e_s.insert(all.e2e_s.end(), t.e2e_s.begin(), t.e2e_s.end());
        for (auto& w : t.error_words) {
            if (all.error_words.size() < 5) {
                all.error_words.push_back(w);
            }
        }
    }
    for (auto& w : alone.error_words) {
        if (all.error_words.size() < 5) {
            all.error_words.push_back(w);
        }
    }
    std::printf("# llmosd_load: %d streaming clients x %d chat completions (max_tokens %d), "
                "--max-queue %d, local backend, loopback, %s\n",
                cfg.clients, cfg.requests, cfg.max_tokens, cfg.max_queue,
                cfg.keep_alive ? "keep-alive" : "a connection per request");
    std::printf("  requests ok          %d of %d\n", all.ok, cfg.clients * cfg.requests);
    std::printf("  429 (retried)        %d before the stream, %d as an error event after the 200\n",
                all.rejected, all.rejected_stream);
    std::printf("  other errors         %d\n", all.errors);
    std::printf("  time to first token  p50 %8.1f ms   p99 %8.1f ms\n",
                quantile(all.ttft_s, 0.5) * 1e3, quantile(all.ttft_s, 0.99) * 1e3);
    std::printf("  total latency        p50 %8.1f ms   p99 %8.1f ms   (the attempt served)\n",
                quantile(all.total_s, 0.5) * 1e3, quantile(all.total_s, 0.99) * 1e3);
    std::printf("  with the 429 waits   p50 %8.1f ms   p99 %8.1f ms   (from the first attempt)\n",
                quantile(all.e2e_s, 0.5) * 1e3, quantile(all.e2e_s, 0.99) * 1e3);
    std::printf("  tokens               %ld in %.2f s: %.0f tokens/s aggregate\n", all.tokens, wall,
                wall > 0 ? static_cast<double>(all.tokens) / wall : 0.0);
    const double alone_tps = alone_wall > 0 ? static_cast<double>(alone.tokens) / alone_wall : 0.0;
    std::printf("  one client alone     first token p50 %.1f ms, latency p50 %.1f ms, %.0f "
                "tokens/s (%d requests, %d errors)\n",
                quantile(alone.ttft_s, 0.5) * 1e3, quantile(alone.total_s, 0.5) * 1e3, alone_tps,
                alone.ok, alone.errors);
    if (quantile(alone.ttft_s, 0.5) > 0 && quantile(alone.total_s, 0.5) > 0 && alone_tps > 0) {
        std::printf("  under load / alone   first token p50 %.2fx, latency p50 %.2fx, "
                    "tokens/s %.2fx\n",
                    quantile(all.ttft_s, 0.5) / quantile(alone.ttft_s, 0.5),
                    quantile(all.total_s, 0.5) / quantile(alone.total_s, 0.5),
                    (wall > 0 ? static_cast<double>(all.tokens) / wall : 0.0) / alone_tps);
    }
    std::printf("  llmosd peak RSS      %.1f MiB idle, %.1f MiB after the load\n",
                static_cast<double>(rss_before) / 1024, static_cast<double>(rss_after) / 1024);
    if (overflows_before >= 0) {
        std::printf("  listen overflows     %ld (TcpExtListenOverflows during the run: "
                    "connections llmosd's accept queue turned away)\n",
                    overflows);
    }
    for (auto& w : all.error_words) {
        std::printf("  error: %s\n", w.c_str());
    }
    if (stopped != 0) {
        std::printf("  llmosd exited with status %d\n", stopped);
    }
    return all.errors == 0 && alone.errors == 0 && stopped == 0 ? 0 : 1;
}
