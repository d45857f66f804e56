// SPDX-License-Identifier: MIT
#include "client.hh"

#include "json_text.hh"
#include "util.hh"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <httplib.h>
#include <sys/socket.h>

namespace llmosctl {

using nlohmann::json;

std::optional<server_address> parse_server(std::string_view s) {
    server_address a;
    a.text = std::string{s};
    if (s.starts_with("unix:")) {
        s.remove_prefix(5);
        if (s.starts_with("//")) { // unix:///run/llmosd.sock
            s.remove_prefix(2);
        }
        if (s.empty() || s[0] != '/') {
            return std::nullopt;
        }
        a.unix_path = std::string{s};
        return a;
    }
    std::string scheme = "http";
    if (auto p = s.find("://"); p != std::string_view::npos) {
        scheme = std::string{s.substr(0, p)};
        s.remove_prefix(p + 3);
    }
    if (scheme != "http" && scheme != "https") {
        return std::nullopt;
    }
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
    if (scheme == "https") {
        return std::nullopt; // a cpp-httplib without TLS
    }
#endif
    auto slash = s.find('/');
    std::string_view hp = s.substr(0, slash);
    std::string path = slash == std::string_view::npos ? "" : std::string{s.substr(slash)};
    while (!path.empty() && path.back() == '/') {
        path.pop_back();
    }
    // An OpenAI-style base URL (http://host:port/v1) means the same server.
    if (path.ends_with("/v1")) {
        path.resize(path.size() - 3);
    }
    if (hp.empty() || hp.find_first_of(" \t?#@") != std::string_view::npos) {
        return std::nullopt;
    }
    a.https = scheme == "https";
    a.port = a.https ? 443 : 80;
    std::string_view host = hp;
    if (hp.front() == '[') { // [IPv6]:port
        auto close = hp.find(']');
        if (close == std::string_view::npos || close == 1) {
            return std::nullopt;
        }
        host = hp.substr(1, close - 1);
        // An address, and maybe a zone ("fe80::1%eth0").
        const std::string_view addr = host.substr(0, host.find('%'));
        const std::string_view zone =
            addr.size() < host.size() ? host.substr(addr.size() + 1) : std::string_view{};
        if (addr.empty() || addr.find_first_not_of("0123456789abcdefABCDEF:.") != addr.npos ||
            (addr.size() < host.size() &&
             (zone.empty() ||
              zone.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                     "0123456789._-") != zone.npos))) {
            return std::nullopt;
        }
        hp.remove_prefix(close + 1);
        if (!hp.empty() && hp.front() != ':') {
            return std::nullopt;
        }
    } else {
        host = hp.substr(0, hp.find(':'));
        if (host.empty() || host.find(']') != std::string_view::npos) {
            return std::nullopt;
        }
        hp.remove_prefix(host.size());
    }
    if (!hp.empty()) { // ":port"
        auto port = parse_size(hp.substr(1), false);
        if (!port || *port == 0 || *port > 65535) {
            return std::nullopt;
        }
        a.port = static_cast<int>(*port);
    }
    a.host = std::string{host};
    a.base_path = path;
    return a;
}

sse_parser::sse_parser(std::function<bool(const std::string&)> on_data)
    : _on_data(std::move(on_data)) {
}

bool sse_parser::feed(std::string_view bytes) {
    for (char c : bytes) {
        if (_stopped) {
            return false;
        }
        if (_skip_lf) {
            _skip_lf = false;
            if (c == '\n') {
                continue;
            }
        }
        if (c == '\n' || c == '\r') {
            _skip_lf = c == '\r';
            if (!line(_partial)) {
                _stopped = true;
            }
            _partial.clear();
            continue;
        }
        _partial += c;
        if (_partial.size() + _data.size() > max_event) {
            _overlong = _stopped = true;
        }
    }
    return !_stopped;
}

bool sse_parser::line(std::string_view l) {
    if (l.empty()) { // the end of an event
        if (!_has_data) {
            return true;
        }
        bool go_on = _on_data(_data);
        _data.clear();
        _has_data = false;
        return go_on;
    }
    if (l[0] == ':') { // a comment
        return true;
    }
    auto colon = l.find(':');
    std::string_view field = l.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? "" : l.substr(colon + 1);
    if (value.starts_with(' ')) {
        value.remove_prefix(1);
    }
    if (field == "data") {
        if (_has_data) {
            _data += '\n';
        }
        _data.append(value);
        _has_data = true;
    }
    return true;
}

api_client::api_client(const server_address& where, const std::string& api_key, int reply_timeout)
    : _where(where) {
    if (reply_timeout > 0) {
        _read_timeout = _long_read_timeout = reply_timeout;
    }
    // Host and port apart: httplib's URL form reads no IPv6 address with
    // letters in it ("[fd00::2]").
    if (!where.unix_path.empty()) {
        _cli = std::make_unique<httplib::ClientImpl>(where.unix_path, 80);
        _cli->set_address_family(AF_UNIX);
    } else if (where.https) {
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
        _cli = std::make_unique<httplib::SSLClient>(where.host, where.port);
#else
        _cli = std::make_unique<httplib::ClientImpl>(where.host, where.port); // (not parsed)
#endif
    } else {
        _cli = std::make_unique<httplib::ClientImpl>(where.host, where.port);
    }
    if (where.host.find(':') != std::string::npos) {
        // An IPv6 address goes in brackets in Host (httplib leaves them
        // out at the scheme's own port).
        const bool own_port = where.port == (where.https ? 443 : 80);
        _host_header = "[" + where.host + "]" + (own_port ? "" : ":" + std::to_string(where.port));
    }
    _cli->set_connection_timeout(5, 0);
    // A plain call's; those that take a while (loading a large model, its
    // first token) set long_read_timeout. A broken server still ends the
    // call through the socket.
    _cli->set_read_timeout(_read_timeout, 0);
    _cli->set_write_timeout(30, 0);
    _cli->set_keep_alive(true);
    if (!api_key.empty()) {
        _cli->set_bearer_token_auth(api_key);
    }
}

api_client::~api_client() = default;

void api_client::expect_long_replies() {
    _read_timeout = _long_read_timeout;
    _cli->set_read_timeout(_read_timeout, 0);
}

namespace {

using clock_type = std::chrono::steady_clock;

// The most a plain call's reply may hold: llmosd's lists of models and
// sessions are far smaller.
constexpr size_t max_reply = 64u << 20;

// `e` in words; `silent_s`: how long the server had sent nothing when the
// call ended, `timeout_s` the read timeout.
std::string transport_words(httplib::Error e, double silent_s, int timeout_s) {
    switch (e) {
    case httplib::Error::Connection:
        return "could not connect";
    case httplib::Error::ConnectionTimeout:
        return "timed out connecting";
    case httplib::Error::Read:
        // httplib says Read for a read that timed out too.
        if (silent_s + 0.5 >= timeout_s) {
            return "timed out waiting for the reply (nothing came for " +
                   std::to_string(timeout_s) + " s)";
        }
        return "the connection broke while reading the reply";
    case httplib::Error::Write:
        return "the connection broke while sending the request";
    default:
        return httplib::to_string(e);
    }
}

// The reply of a finished call; `body` replaces the response's own when
// it was received separately. `last`: when the server last sent something.
reply finish(const httplib::Result& res, const std::string& body, clock_type::time_point last,
             int timeout_s) {
    reply r;
    if (!res) {
        auto e = res.error();
        r.transport_error = transport_words(
            e, std::chrono::duration<double>(clock_type::now() - last).count(), timeout_s);
        r.unreachable = e == httplib::Error::Connection || e == httplib::Error::ConnectionTimeout ||
                        e == httplib::Error::SSLConnection ||
                        e == httplib::Error::SSLServerVerification;
        return r;
    }
    r.status = res->status;
    r.retry_after = res->get_header_value("Retry-After");
    r.body = json::parse(body.empty() ? res->body : body, nullptr, false);
    if (r.body.is_discarded()) {
        r.body = nullptr;
    }
    return r;
}

} // namespace

reply api_client::call(const char* method, const std::string& path, const json* body) {
    httplib::Request req;
    req.method = method;
    req.path = _where.base_path + path;
    if (!_host_header.empty()) {
        req.set_header("Host", _host_header);
    }
    if (body) {
        req.body = json_text(*body);
        req.set_header("Content-Type", "application/json");
    }
    // Received here, up to max_reply: a broken server's endless reply
    // would take all memory.
    std::string got;
    bool too_large = false;
    auto last = clock_type::now();
    req.response_handler = [&](const httplib::Response&) {
        last = clock_type::now();
        return true;
    };
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        last = clock_type::now();
        if (n > max_reply - got.size()) {
            too_large = true;
            return false;
        }
        got.append(d, n);
        return true;
    };
    auto res = _cli->send(req);
    if (too_large) {
        reply r;
        r.transport_error = "the reply is larger than 64 MiB";
        return r;
    }
    return finish(res, got, last, _read_timeout);
}

reply api_client::get(const std::string& path) {
    return call("GET", path, nullptr);
}

reply api_client::post(const std::string& path, const json& body) {
    return call("POST", path, &body);
}

reply api_client::del(const std::string& path) {
    return call("DELETE", path, nullptr);
}

reply api_client::stream(const std::string& path, const json& body,
                         const std::function<bool(const json&)>& on_event) {
    int status = 0;
    std::string error_body; // a refusal's body
    std::string broken;     // why the stream could not be read
    json error_event;
    bool done = false;
    sse_parser sse([&](const std::string& data) {
        if (data == "[DONE]") {
            done = true;
            return true;
        }
        json ev = json::parse(data, nullptr, false);
        if (ev.is_discarded() || !ev.is_object()) {
            broken = "llmosd sent an event that is not JSON";
            return false;
        }
        if (ev.contains("error")) {
            // {"error": {"message": ...}}, or a bare string from others.
            const json& e = ev["error"];
            if (e.is_string()) {
                error_event = {{"error", {{"message", e}}}};
            } else if (e.is_object() && e.value("message", json()).is_string()) {
                error_event = std::move(ev);
            } else {
                broken = "the stream ended with an error event that says nothing more";
                return false;
            }
            return true;
        }
        return on_event(ev);
    });
    httplib::Request req;
    req.method = "POST";
    req.path = _where.base_path + path;
    req.body = json_text(body);
    if (!_host_header.empty()) {
        req.set_header("Host", _host_header);
    }
    req.set_header("Content-Type", "application/json");
    req.set_header("Accept", "text/event-stream");
    auto last = clock_type::now();
    std::string not_ours; // why a 2xx reply is not llmosd's stream
    req.response_handler = [&](const httplib::Response& res) {
        last = clock_type::now();
        status = res.status;
        if (status >= 200 && status < 300 &&
            !res.get_header_value("Content-Type").starts_with("text/event-stream")) {
            not_ours = "not an event stream";
            return false;
        }
        return true;
    };
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        last = clock_type::now();
        if (status < 200 || status >= 300) {
            // An error's body is a line of JSON: what is past 1 MiB is not.
            constexpr size_t most = 1u << 20;
            error_body.append(d, std::min(n, most - std::min(most, error_body.size())));
            return true;
        }
        if (!sse.feed({d, n})) {
            if (sse.overlong()) {
                broken = "llmosd sent an event of more than 16 MiB";
            }
            return false;
        }
        return true;
    };
    _cli->set_read_timeout(_long_read_timeout, 0);
    auto res = _cli->send(req);
    _cli->set_read_timeout(_read_timeout, 0);
    if (!not_ours.empty()) {
        reply r;
        r.status = status;
        r.not_llmosd = not_ours;
        return r;
    }
    if (!broken.empty()) {
        reply r;
        r.transport_error = broken;
        return r;
    }
    if (!res && res.error() == httplib::Error::Canceled) {
        reply r; // the caller hung up
        r.status = status;
        return r;
    }
    reply r = finish(res, error_body, last, _long_read_timeout);
    if (!r.transport_error.empty() || !r.ok()) {
        return r;
    }
    if (!error_event.is_null()) {
        r.status = 500; // an error after the 200 went out
        r.body = std::move(error_event);
    } else if (!done) {
        r.transport_error = "the stream ended before [DONE]";
    }
    return r;
}

int fail_reply(const std::string& what, const reply& r, const server_address& where) {
    if (r.unreachable) {
        std::fprintf(stderr,
                     "llmosctl: cannot reach llmosd at %s: %s (is llmosd running? set --server "
                     "or LLMOSD_URL)\n",
                     where.text.c_str(), r.transport_error.c_str());
        return exit_failure;
    }
    if (!r.not_llmosd.empty()) {
        std::fprintf(stderr, "llmosctl: %s: the reply from %s is not llmosd's (%s)\n", what.c_str(),
                     where.text.c_str(), r.not_llmosd.c_str());
        return exit_failure;
    }
    if (!r.transport_error.empty()) {
        std::fprintf(stderr, "llmosctl: %s: %s (llmosd at %s)\n", what.c_str(),
                     r.transport_error.c_str(), where.text.c_str());
        return exit_failure;
    }
    std::string message, code;
    if (r.body.is_object() && r.body.contains("error") && r.body["error"].is_object() &&
        r.body["error"].value("message", json()).is_string()) {
        message = r.body["error"]["message"].get<std::string>();
        if (const json c = r.body["error"].value("code", json()); c.is_string()) {
            code = c.get<std::string>();
        }
    } else {
        message = "HTTP status " + std::to_string(r.status);
    }
    if (r.status == 401) {
        message += " (give the key with --api-key or LLMOSD_API_KEY)";
    } else if (r.status == 429 && code == "overloaded") {
        // A tenant's own limit says so in its message.
        message += " (llmosd is at its --max-queue)";
    }
    // The server's words, on one line and without terminal controls.
    std::fprintf(stderr, "llmosctl: %s: %s\n", what.c_str(), printable(message).c_str());
    return exit_failure;
}

} // namespace llmosctl
