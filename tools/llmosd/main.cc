// SPDX-License-Identifier: MIT
//
// llmosd: serves models over an OpenAI-compatible HTTP API, with llmos's
// scheduler (the kernel module's, or the in-process local one) deciding
// which request runs when, and sessions whose conversation and KV cache
// live in persistent mindspaces.
//
//   llmosd --model tiny=model.gguf [--model NAME=PATH ...] [--listen 127.0.0.1:8080]
//          [--engine cpu|cuda[:N]|auto]
//
// SIGTERM or SIGINT drains: new requests get 503, those in flight finish.
#include "daemon.hh"
#include "http.hh"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <llmos/engine/gguf.hh>
#include <netdb.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <thread>

namespace {

std::atomic<int> g_signal{0};

void on_signal(int sig) {
    g_signal = sig;
}

// Each connection takes a descriptor, and so do the mindspaces and
// models: raises the soft limit as far as the hard one allows, and says
// so when that is short of `connections`.
// Room for `connections` served and as many waiting for a thread.
void raise_fd_limit(uint32_t connections) {
    const rlim_t want = 2 * rlim_t(connections) + 256;
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= want) {
        return;
    }
    r.rlim_cur = r.rlim_max == RLIM_INFINITY ? want : std::min(want, r.rlim_max);
    if (::setrlimit(RLIMIT_NOFILE, &r) != 0) {
        ::getrlimit(RLIMIT_NOFILE, &r);
    }
    if (r.rlim_cur < want) {
        std::fprintf(stderr,
                     "llmosd: only %llu file descriptors (ulimit -n): fewer than "
                     "--max-connections (%u) connections served and as many waiting may be "
                     "open at once\n",
                     static_cast<unsigned long long>(r.rlim_cur), connections);
    }
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmosd: the llmos model server (OpenAI-compatible HTTP API)"};
    llmosd::options o;
    std::vector<std::string> models;
    std::string listen = "127.0.0.1:8080", unix_path, port_file;
    uint32_t drain_s = 60;
    app.add_option("-m,--model", models,
                   "a model to serve: NAME=PATH.gguf, or PATH (named after "
                   "the file)");
    app.add_option("-l,--listen", listen, "HOST:PORT to serve HTTP on (port 0: any free one)")
        ->capture_default_str();
    app.add_option("--unix", unix_path, "serve on this unix socket instead");
    app.add_option("--port-file", port_file, "write the port it listens on to this file");
    app.add_option("--backend", o.backend, "auto, local or kernel")
        ->check(CLI::IsMember({"auto", "local", "kernel"}))
        ->capture_default_str();
    app.add_option("--engine", o.engine,
                   "where models run: cpu, cuda (the first GPU), cuda:N, or auto (a GPU when "
                   "one can be used, else the CPU)")
        ->capture_default_str();
    app.add_option("--gpu-kv-memory", o.gpu_kv_bytes,
                   "GPU memory for KV caches, all conversations together, e.g. 16G (default: "
                   "half the GPU's memory)")
        ->transform(CLI::AsSizeValue(false));
    app.add_flag("--publish-gpu-kv", o.publish_gpu_kv,
                 "with --engine cuda on the kernel backend: each session's K/V rows are also a "
                 "module mindspace, llmosd.k.NAME, over their dma-buf, for peer devices");
    app.add_option("--workers", o.workers, "inference workers")->check(CLI::Range(1, 256));
    app.add_option("--threads", o.threads, "threads per worker (0: the CPUs shared out)");
    std::string activations = "int8";
    app.add_option("--activations", activations,
                   "int8 (fastest) or int8x2 (quantized weights meet activations rounded "
                   "twice: ~1e-4 from exact instead of ~1e-2, slower prefill)")
        ->check(CLI::IsMember({"int8", "int8x2"}))
        ->capture_default_str();
    app.add_option("--slots", o.slots, "requests a worker runs at once")->check(CLI::Range(1, 256));
    app.add_option("--ctx", o.ctx, "tokens a conversation may hold")
        ->check(CLI::Range(16, 1 << 20))
        ->capture_default_str();
    app.add_option("--max-tokens", o.default_max_tokens, "default max_tokens")
        ->check(CLI::Range(1u, 1u << 20))
        ->capture_default_str();
    app.add_option("--max-sessions", o.max_sessions,
                   "sessions kept at once; a new one past them gets 403 (0: no limit)")
        ->capture_default_str();
    app.add_option("--max-sessions-per-tenant", o.max_sessions_per_tenant,
                   "sessions one tenant may keep; its new one past them gets 403 (0: no limit "
                   "of its own)")
        ->capture_default_str();
    uint32_t session_idle_s = 0;
    app.add_option("--session-idle-timeout", session_idle_s,
                   "a session no request used for this many seconds is ended (0: never)")
        ->capture_default_str();
    app.add_option("--max-queue", o.max_queue, "requests in flight before 429")
        ->capture_default_str();
    app.add_option("--max-queue-per-tenant", o.max_queue_per_tenant,
                   "requests one tenant may have in flight before its next gets 429 (0: no "
                   "limit of its own)")
        ->capture_default_str();
    auto* max_connections =
        app.add_option("--max-connections", o.max_connections,
                       "HTTP connections served at once, a thread each; more wait for one "
                       "(default: 1024, or --max-queue + 32 when that is more)")
            ->check(CLI::Range(8u, 65536u));
    app.add_option("--max-body", o.max_body, "largest request body, bytes")->capture_default_str();
    uint32_t header_timeout_s = 30;
    app.add_option("--header-timeout", header_timeout_s,
                   "longest a request's line and headers may take to arrive, seconds")
        ->check(CLI::Range(1u, 3600u))
        ->capture_default_str();
    uint32_t body_timeout_s = 60;
    app.add_option("--body-timeout", body_timeout_s,
                   "longest a request's body may take to arrive, seconds")
        ->check(CLI::Range(1u, 3600u))
        ->capture_default_str();
    uint32_t timeout_s = 300;
    app.add_option("--timeout", timeout_s, "longest a request may take, seconds (1 to 86400)")
        ->check(CLI::Range(1u, 86400u))
        ->capture_default_str();
    app.add_option("--drain-timeout", drain_s, "seconds to let requests finish on shutdown")
        ->capture_default_str();
    app.add_option("--api-key-file", o.api_key_file,
                   "require API keys: one per line, optionally followed by its tenant number");
    app.add_option("--allow-host", o.allowed_hosts,
                   "a host name llmosd on TCP without API keys answers to, besides localhost "
                   "and IP addresses; repeatable");
    app.add_option("--allow-origin", o.allowed_origins,
                   "a web origin (scheme://host[:port], or *) whose pages may use the API "
                   "without API keys; repeatable");
    CLI11_PARSE(app, argc, argv);
    o.request_timeout = std::chrono::seconds(timeout_s);
    o.header_timeout = std::chrono::seconds(header_timeout_s);
    o.body_timeout = std::chrono::seconds(body_timeout_s);
    o.session_idle_timeout = std::chrono::seconds(session_idle_s);
    o.activations = activations == "int8x2" ? llmos::engine::act_precision::int8x2
                                            : llmos::engine::act_precision::int8;
    for (auto& m : models) {
        auto eq = m.find('=');
        if (eq == std::string::npos) {
            o.models.emplace_back(std::filesystem::path(m).stem().string(), m);
        } else {
            o.models.emplace_back(m.substr(0, eq), m.substr(eq + 1));
        }
    }
    if (!max_connections->count()) {
        o.max_connections = static_cast<uint32_t>(
            std::max<uint64_t>(o.max_connections, uint64_t(o.max_queue) + 32));
    }
    if (o.max_connections < uint64_t(o.max_queue) + 4) {
        // Each request in flight holds its connection's thread.
        std::fprintf(stderr,
                     "llmosd: --max-connections %u: at least --max-queue + 4 (%llu), so that "
                     "requests past --max-queue get 429 rather than wait for a thread\n",
                     o.max_connections, static_cast<unsigned long long>(o.max_queue) + 4);
        return 2;
    }
    raise_fd_limit(o.max_connections);
    std::string host = listen;
    int port = 8080;
    if (auto c = listen.rfind(':'); c != std::string::npos) {
        host = listen.substr(0, c);
        const std::string p = listen.substr(c + 1);
        const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
        if (p.empty() || ec != std::errc() || end != p.data() + p.size() || port < 0 ||
            port > 65535) {
            std::fprintf(stderr, "llmosd: --listen %s: expected HOST:PORT, PORT from 0 to 65535\n",
                         listen.c_str());
            return 2;
        }
    }
    // An IPv6 address in brackets ([::1]:8080): the address is inside.
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    if (unix_path.empty()) {
        // Said here, with the resolver's words: the bind below only fails.
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        addrinfo* found = nullptr;
        if (const int e = ::getaddrinfo(host.c_str(), nullptr, &hints, &found); e != 0) {
            std::fprintf(stderr, "llmosd: --listen %s: cannot use the address '%s': %s\n",
                         listen.c_str(), host.c_str(), ::gai_strerror(e));
            return 2;
        }
        ::freeaddrinfo(found);
    }
    if (unix_path.size() >= sizeof(sockaddr_un::sun_path)) {
        std::fprintf(stderr, "llmosd: --unix %s: a unix socket's path has at most %zu bytes\n",
                     unix_path.c_str(), sizeof(sockaddr_un::sun_path) - 1);
        return 2;
    }
    std::unique_ptr<llmosd::daemon> d;
    try {
        d = std::make_unique<llmosd::daemon>(o);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmosd: %s\n", e.what());
        return 1;
    }
    llmosd::http_server http(*d);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    // A model file cut short under it (overwritten in place) is named.
    llmos::engine::report_truncated_models();
    std::thread watcher([&] {
        while (!g_signal.load() && d->device_lost().empty()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        if (!d->device_lost().empty()) {
            // The requests in flight are being cancelled: their clients get
            // 503 as soon as they are.
            d->drain(std::chrono::seconds(0));
            http.stop();
            return;
        }
        if (g_signal.load() > 0) {
            std::fprintf(stderr,
                         "llmosd: signal %d: draining %u request(s) in flight (up to %u s)\n",
                         g_signal.load(), d->in_flight(), drain_s);
        }
        d->drain(std::chrono::seconds(drain_s));
        http.stop();
    });
    bool ok;
    if (!unix_path.empty()) {
        std::filesystem::remove(unix_path);
        std::fprintf(stderr, "llmosd: serving %zu model(s) on unix:%s (%s backend, %s)\n",
                     d->models().size(), unix_path.c_str(), llmos::to_string(d->dev().kind()),
                     d->engine_description().c_str());
        ok = http.listen_unix(unix_path);
        if (!ok && !g_signal.load()) {
            std::fprintf(stderr, "llmosd: cannot listen on unix:%s: %s\n", unix_path.c_str(),
                         std::strerror(errno));
        }
    } else {
        int bound = http.bind_port(host, port);
        if (bound < 0) {
            std::fprintf(stderr, "llmosd: cannot listen on %s: %s\n", listen.c_str(),
                         std::strerror(errno));
            g_signal = -1; // no signal: the watcher stops without a word
            watcher.join();
            return 1;
        }
        if (!port_file.empty()) {
            FILE* f = std::fopen(port_file.c_str(), "w");
            if (f) {
                std::fprintf(f, "%d\n", bound);
                std::fclose(f);
            }
        }
        std::fprintf(stderr, "llmosd: serving %zu model(s) on http://%s:%d (%s backend, %s)\n",
                     d->models().size(), host.c_str(), bound, llmos::to_string(d->dev().kind()),
                     d->engine_description().c_str());
        ok = http.serve();
    }
    if (!g_signal.load()) {
        g_signal = -1; // the server stopped by itself
    }
    watcher.join();
    if (const std::string lost = d->device_lost(); !lost.empty()) {
        std::fprintf(stderr, "llmosd: stopped: the GPU failed for good\n");
        return 1;
    }
    std::fprintf(stderr, "llmosd: stopped\n");
    return ok ? 0 : 1;
}
