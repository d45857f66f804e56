// SPDX-License-Identifier: MIT
#include "http.hh"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <dirent.h>
#include <functional>
#include <llmos/engine/quant.hh>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <random>
#include <string_view>
#include <sys/socket.h>
#include <sys/un.h>

namespace llmosd {

using nlohmann::json;

namespace {

std::string new_id(const char* prefix) {
    static std::atomic<uint64_t> seq{0};
    static const uint64_t boot = std::random_device{}();
    char b[64];
    std::snprintf(b, sizeof(b), "%s-%08llx%06llx", prefix,
                  static_cast<unsigned long long>(boot & 0xffffffff),
                  static_cast<unsigned long long>(seq.fetch_add(1)));
    return b;
}

int64_t unix_now() {
    return static_cast<int64_t>(::time(nullptr));
}

// Answers `e`; with `close` (always for 429 and 503: a refused client
// would hold one of the threads that serve the requests in flight until
// keep-alive ends) the connection closes after the answer. Use it when
// the request's body is not read: its bytes would be taken for the next
// request.
void send_error(httplib::Response& res, const api_error& e, bool close = false) {
    res.status = e.status;
    if (e.status == 429) {
        res.set_header("Retry-After", "1");
    }
    if (!e.allow.empty()) {
        res.set_header("Allow", e.allow);
    }
    res.set_content(to_text(error_body(e)), "application/json");
    if (!close && e.status != 429 && e.status != 503) {
        return;
    }
    // httplib 0.11 keeps a connection open whatever the response's
    // Connection header says: the connection's loop ends it after this
    // answer, written whole (a content provider would be cut short by a
    // stop), then drains what the client still sends (closing with its
    // bytes unread would reset the connection, and could lose the answer).
    res.set_header("Connection", "close");
    connection_server::close_after_answer();
}

// Whether `text` starts with `lower` (lower case), in any case.
bool starts_with_nocase(std::string_view text, std::string_view lower) {
    return text.size() >= lower.size() &&
           std::equal(lower.begin(), lower.end(), text.begin(), [](char l, char t) {
               return l == std::tolower(static_cast<unsigned char>(t));
           });
}

// `text` in lower case (ASCII).
std::string to_lower(std::string_view text) {
    std::string out(text);
    for (char& c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

// Whether `a` and `b` are equal in any case (ASCII).
bool equal_nocase(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

// Who may call from a web page: with API keys anyone (a page cannot send
// one without the user's key), else the server's own origin and these.
struct origin_rules {
    bool keys = false;
    std::vector<std::string> allowed;
    std::vector<std::string> hosts;              ///< --allow-host
    std::shared_ptr<std::atomic<bool>> tcp;      ///< listening on TCP (not a unix socket)
    std::shared_ptr<std::atomic<bool>> loopback; ///< on a loopback address only

    /// Whether --allow-origin names `origin` (or is "*"): its pages get
    /// CORS headers, so that they may read the answers.
    bool lists(const std::string& origin) const {
        return std::any_of(allowed.begin(), allowed.end(), [&](const std::string& a) {
            return a == "*" || equal_nocase(a, origin);
        });
    }
};

// A request target in absolute form ("http://HOST/PATH", the scheme in
// any case): {HOST, PATH} ("/" for none), or nothing.
std::optional<std::pair<std::string, std::string>> absolute_form(const std::string& target) {
    size_t at = 0;
    if (starts_with_nocase(target, "http://")) {
        at = 7;
    } else if (starts_with_nocase(target, "https://")) {
        at = 8;
    } else {
        return std::nullopt;
    }
    const size_t slash = target.find('/', at);
    std::string host = target.substr(at, slash == std::string::npos ? slash : slash - at);
    if (host.empty()) {
        return std::nullopt;
    }
    return std::pair{std::move(host), slash == std::string::npos ? "/" : target.substr(slash)};
}

// Why a request's body framing cannot be trusted (RFC 9112 5.1, 6.1, 6.3),
// or nothing. httplib would take the first Content-Length, or chunked over
// it, skip a header whose name ends in a blank, read no body at all for
// GET (or DELETE without a Content-Length), and read a POST without either
// header to the connection's end: a proxy in front that read any of these
// another way would see a different next request.
std::optional<api_error> bad_framing(const httplib::Request& req) {
    auto bad = [](int status, const std::string& why, const char* code) {
        return api_error{status, why, "invalid_request_error", "", code};
    };
    for (auto& [name, value] : req.headers) {
        if (name.find_first_of(" \t") != std::string::npos) {
            return bad(400, "a header name may not hold blanks", "bad_framing");
        }
    }
    // RFC 9112 3.2: a proxy and llmosd could take it for different hosts.
    if (req.version == "HTTP/1.1" && req.get_header_value_count("Host") != 1) {
        return bad(400, "an HTTP/1.1 request has one Host header", "bad_framing");
    }
    auto [te, te_end] = req.headers.equal_range("Transfer-Encoding");
    auto [cl, cl_end] = req.headers.equal_range("Content-Length");
    if (te != te_end && req.version == "HTTP/1.0") {
        // RFC 9112 6.1: faulty framing there (1.0 has no chunked).
        return bad(400, "an HTTP/1.0 request may not have a Transfer-Encoding", "bad_framing");
    }
    if (te != te_end) {
        const bool chunked = std::next(te) == te_end && te->second.size() == 7 &&
                             starts_with_nocase(te->second, "chunked");
        if (!chunked) {
            std::string all;
            for (auto i = te; i != te_end; ++i) {
                all += (all.empty() ? "" : ", ") + i->second;
            }
            return bad(501, "Transfer-Encoding '" + all + "' is not supported: only chunked is",
                       "unsupported_transfer_encoding");
        }
        if (cl != cl_end) {
            return bad(400, "a request may not have both Transfer-Encoding and Content-Length",
                       "bad_framing");
        }
    }
    for (auto i = cl; i != cl_end; ++i) {
        const std::string& v = i->second;
        if (v.empty() || v.size() > 19 ||
            !std::all_of(v.begin(), v.end(), [](char d) { return d >= '0' && d <= '9'; }) ||
            v != cl->second) {
            return bad(400, "Content-Length must be one decimal number", "bad_framing");
        }
    }
    const std::string& m = req.method;
    const bool sized = cl != cl_end, chunked = te != te_end;
    const bool takes_body = m == "POST" || m == "PUT" || m == "PATCH";
    if (takes_body && !sized && !chunked) {
        return bad(411, "a " + m + " needs a Content-Length (or Transfer-Encoding: chunked)",
                   "length_required");
    }
    // What httplib reads no body for may not have one.
    const bool reads_body = takes_body || m == "PRI" || (m == "DELETE" && sized);
    if (!reads_body &&
        (chunked || (sized && cl->second.find_first_not_of('0') != std::string::npos))) {
        return bad(400, "a " + m + " request may not have a body", "bad_framing");
    }
    return std::nullopt;
}

// The methods an endpoint takes ("GET, HEAD"), or "" for a path that is
// none: a known path asked with another method gets 405, not 404.
std::string allowed_methods(std::string_view p) {
    // `prefix` NAME `suffix`, NAME one step of the path
    auto named = [p](std::string_view prefix, std::string_view suffix) {
        return p.size() > prefix.size() + suffix.size() && p.starts_with(prefix) &&
               p.ends_with(suffix) &&
               p.find('/', prefix.size()) == (suffix.empty() ? p.npos : p.size() - suffix.size());
    };
    if (p == "/health" || p == "/metrics" || p == "/v1/models" || p == "/llmos/v1/sessions" ||
        named("/v1/models/", "")) {
        return "GET, HEAD";
    }
    if (p == "/llmos/v1/models") {
        return "GET, HEAD, POST";
    }
    if (p == "/v1/completions" || p == "/v1/chat/completions" ||
        named("/llmos/v1/models/", "/swap")) {
        return "POST";
    }
    if (named("/llmos/v1/models/", "") || named("/llmos/v1/sessions/", "")) {
        return "DELETE";
    }
    return "";
}

// 405 for a known path asked with a method it does not take, else 404.
api_error no_such_endpoint(const httplib::Request& req) {
    if (std::string allow = allowed_methods(req.path); !allow.empty()) {
        return api_error{405,
                         req.method + " is not allowed on " + req.path + " (it takes " + allow +
                             ")",
                         "invalid_request_error",
                         "",
                         "method_not_allowed",
                         allow};
    }
    return api_error{404, "no such endpoint", "invalid_request_error", "", "not_found"};
}

// Why a body is refused before a byte of it is read, or nothing: httplib
// would read it whole (chunked, unbounded) for a route that takes none, or
// inflate it (a 1 MiB gzip body can hold 1 GiB) past --max-body; and one
// that declares more than --max-body need not be read to be refused.
std::optional<api_error> unwanted_body(const httplib::Request& req, size_t max_body) {
    const std::string& m = req.method;
    if (m != "POST" && m != "PUT" && m != "PATCH") {
        return std::nullopt; // bad_framing() refused a body that is not read
    }
    if (const std::string enc = req.get_header_value("Content-Encoding");
        !enc.empty() && enc != "identity") {
        return api_error{415,
                         "Content-Encoding '" + enc + "' is not supported: send the body as it is",
                         "invalid_request_error", "", "unsupported_content_encoding"};
    }
    const std::string& p = req.path;
    constexpr std::string_view models = "/llmos/v1/models/", swap = "/swap";
    const bool swaps = p.size() > models.size() + swap.size() && p.starts_with(models) &&
                       p.ends_with(swap) && p.find('/', models.size()) == p.size() - swap.size();
    const bool takes = m == "POST" && (p == "/v1/completions" || p == "/v1/chat/completions" ||
                                       p == "/llmos/v1/models" || swaps);
    const std::string cl = req.get_header_value("Content-Length");
    if (!takes &&
        (req.has_header("Transfer-Encoding") || cl.find_first_not_of('0') != std::string::npos)) {
        return no_such_endpoint(req);
    }
    // bad_framing() has checked it: at most 19 digits.
    if (!cl.empty() && std::stoull(cl) > max_body) {
        return api_error{413,
                         "the request body is larger than this server accepts (" +
                             std::to_string(max_body) + " bytes)",
                         "invalid_request_error", "", "payload_too_large"};
    }
    return std::nullopt;
}

// Without API keys, a web page of another site (its Origin is not this
// server's Host, nor one --allow-origin names) may not use the API: any
// page a user opens could otherwise load models and start sessions and
// generations on a llmosd on localhost (a plain POST needs no preflight).
// With keys it could not: its requests carry no key. Clients other than
// browsers send no Origin; extensions and apps (chrome-extension://,
// app://) send their own scheme, and are let in.
std::optional<api_error> cross_origin(const httplib::Request& req, const origin_rules& rules) {
    const std::string origin = req.get_header_value("Origin");
    if (origin.empty() || rules.keys) {
        return std::nullopt;
    }
    const std::string o = to_lower(origin);
    const bool http = o.starts_with("http://"), https = o.starts_with("https://");
    if (!http && !https && o != "null") {
        return std::nullopt;
    }
    if (rules.lists(origin)) {
        return std::nullopt;
    }
    // Same origin: host[:port] as the Host says, a default port or not (a
    // sandboxed page's "null" is no origin's).
    std::string host = o == "null" ? std::string() : o.substr(http ? 7 : 8);
    std::string want = to_lower(req.get_header_value("Host"));
    for (std::string* s : {&host, &want}) {
        const std::string_view port = http ? ":80" : ":443";
        if (s->ends_with(port)) {
            s->resize(s->size() - port.size());
        }
    }
    if (!host.empty() && host == want) {
        return std::nullopt;
    }
    return api_error{403,
                     "requests from web pages of another origin (" + origin +
                         ") are refused without API keys; --allow-origin lets a site's pages in",
                     "invalid_request_error", "", "cross_origin"};
}

// Without API keys, a llmosd listening on TCP answers a browser only for a
// Host that is localhost, an IP address, or one --allow-host names: a page
// whose own name its DNS makes lead to 127.0.0.1, or to the server's
// address in the user's network (DNS rebinding), passes the Origin check,
// its Host being its own name. That holds for any address, a wildcard one
// (which takes loopback connections too) or one in a private network a
// browser inside it reaches. On a loopback address every client is held
// to it (none has a reason to use another name); on others, requests a
// browser marks as its own (Origin, Sec-Fetch-*), so that programs may use
// the server's DNS name (a container's service name). A request without a
// Host (HTTP/1.0) comes from no browser.
std::optional<api_error> foreign_host(const httplib::Request& req, const origin_rules& rules) {
    if (rules.keys || !rules.tcp->load() || !req.has_header("Host") || req.path == "/health") {
        return std::nullopt;
    }
    const bool browser = req.has_header("Origin") || req.has_header("Sec-Fetch-Site") ||
                         req.has_header("Sec-Fetch-Mode");
    if (!rules.loopback->load() && !browser) {
        return std::nullopt;
    }
    const std::string host = to_lower(req.get_header_value("Host"));
    std::string name = host;
    if (name.starts_with('[')) { // [v6]:port
        name = name.substr(0, name.find(']') + 1);
    } else if (const auto colon = name.rfind(':'); colon != std::string::npos) {
        name.resize(colon);
    }
    const bool ipv4 = !name.empty() && name.find_first_not_of("0123456789.") == std::string::npos;
    const bool ipv6 = name.size() > 2 && name.front() == '[' && name.back() == ']';
    if (ipv4 || ipv6 || name == "localhost") {
        return std::nullopt;
    }
    if (std::any_of(rules.hosts.begin(), rules.hosts.end(),
                    [&](const std::string& h) { return equal_nocase(h, name); })) {
        return std::nullopt;
    }
    return api_error{403,
                     "Host '" + host +
                         "' is not this server's name: without API keys llmosd answers "
                         "browsers, and on a loopback address everyone, for localhost and IP "
                         "addresses only (--allow-host names more)",
                     "invalid_request_error", "", "foreign_host"};
}

// Why a request is refused before its body is read (its framing, a body it
// may not have, its origin or host), or nothing.
std::optional<api_error> refused_before_body(const httplib::Request& req, size_t max_body,
                                             const origin_rules& rules) {
    auto e = bad_framing(req);
    if (!e) {
        e = unwanted_body(req, max_body);
    }
    if (!e) {
        e = cross_origin(req, rules);
    }
    if (!e) {
        e = foreign_host(req, rules);
    }
    return e;
}

json usage_of(const outcome& o) {
    return {{"prompt_tokens", o.prompt_tokens},
            {"completion_tokens", o.completion_tokens},
            {"total_tokens", o.prompt_tokens + o.completion_tokens}};
}

json chunk(const std::string& id, int64_t created, const job& j, const std::string& piece,
           const char* finish) {
    json choice = {{"index", 0}, {"finish_reason", finish ? json(finish) : json(nullptr)}};
    if (j.chat) {
        choice["delta"] = piece.empty() && finish ? json::object() : json{{"content", piece}};
    } else {
        choice["text"] = piece;
        choice["logprobs"] = nullptr;
    }
    return {{"id", id},
            {"object", j.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", j.model},
            {"choices", json::array({choice})}};
}

// The port of an IPv4 or IPv6 address; -1 for another family.
int port_of(const sockaddr* a) {
    if (a->sa_family == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in*>(a)->sin_port);
    }
    if (a->sa_family == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6*>(a)->sin6_port);
    }
    return -1;
}

// httplib hands out none of its sockets: the first of this process's open
// descriptors (as /proc/self/fd lists them, however many) for which
// `match` holds; -1 if none does.
int find_fd(const std::function<bool(int)>& match) {
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) {
        return -1;
    }
    const int own = ::dirfd(d);
    int found = -1;
    while (const dirent* e = ::readdir(d)) {
        char* end = nullptr;
        const long fd = std::strtol(e->d_name, &end, 10);
        if (end == e->d_name || *end != '\0' || fd < 3 || fd == own) {
            continue;
        }
        if (match(static_cast<int>(fd))) {
            found = static_cast<int>(fd);
            break;
        }
    }
    ::closedir(d);
    return found;
}

// Is the other end still connected? (A closed peer makes the socket
// readable with nothing to read, or reports a hang-up.)
bool peer_still_there(int fd) {
    if (fd < 0) {
        return true;
    }
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) {
        return true;
    }
    if (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) {
        return false;
    }
    char c;
    return ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 0;
}

} // namespace

http_server::http_server(daemon& d)
    : _d(d)
    , _svr({.header_time = d.opts().header_timeout,
            .body_time = d.opts().body_timeout,
            // Room for chunk lines around the largest body; httplib reads
            // a chunk's size line whole, however long.
            .body_bytes = d.opts().max_body * 2 + 65536}) {
    _svr.set_payload_max_length(d.opts().max_body);
    // A thread per open connection, up to --max-connections: httplib's
    // fixed pool (max(8, CPUs - 1) by default) would make requests beyond
    // it wait for a thread instead of getting a 429, and /health wait
    // behind a flood or behind clients that hold their connections idle.
    const size_t most = d.opts().max_connections;
    // As many more wait for a thread; past them a connection is answered
    // 503 at once (each waiting one holds a descriptor).
    _svr.new_task_queue = [this, most] {
        auto* p = new connection_pool(most, 8, std::chrono::seconds(10), most);
        _pool.store(p);
        return p;
    };
    _svr.set_read_timeout(30, 0);
    _svr.set_write_timeout(30, 0);
    // httplib's own refusals (413, 404 of unknown paths, 400 of broken
    // requests) as OpenAI error objects.
    _svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty() || res.content_provider_) { // ours, from send_error()
            return;
        }
        // Headers refused as they came (too large, too slow): httplib
        // calls that a 400.
        if (auto r = connection_server::current_refusal(); r.status) {
            res.status = r.status;
            res.set_header("Connection", "close");
            res.set_content(
                to_text(error_body({r.status, r.message, "invalid_request_error", "", r.code})),
                "application/json");
            return;
        }
        api_error e{res.status, "", "invalid_request_error", "", ""};
        switch (res.status) {
        case 413:
            e.message = "the request body is larger than this server accepts";
            e.code = "payload_too_large";
            break;
        case 404:
            e = no_such_endpoint(req);
            res.status = e.status;
            if (!e.allow.empty()) {
                res.set_header("Allow", e.allow);
            }
            break;
        case 405:
            e.message = "method not allowed";
            break;
        default:
            // A request line of another HTTP than 1.x (httplib keeps the
            // version it read): 505, saying which.
            if (req.version.starts_with("HTTP/") && req.version.size() <= 16 &&
                !req.version.starts_with("HTTP/1.")) {
                e.status = res.status = 505;
                e.message =
                    "'" + req.version + "' is not served here: llmosd speaks HTTP/1.1 (and 1.0)";
                e.code = "http_version_not_supported";
                send_error(res, e, true);
                return;
            }
            // A request line or headers httplib could not parse: what
            // follows cannot be told apart either, so the connection goes.
            e.message = "bad request";
            send_error(res, e, true);
            return;
        }
        res.set_content(to_text(error_body(e)), "application/json");
    });
    // Requests whose body cannot be told from what follows it: refused
    // before a handler reads it, and their connections close.
    const origin_rules rules{!d.api_keys().empty(), d.opts().allowed_origins,
                             d.opts().allowed_hosts, _tcp, _loopback};
    _svr.set_pre_routing_handler(
        [max_body = d.opts().max_body, rules](const httplib::Request& req, httplib::Response& res) {
            // No endpoint serves parts of its answer: a Range is ignored (RFC
            // 9110 14.2), not applied to JSON or error bodies. httplib has
            // parsed it into the request, which it owns (not const there).
            const_cast<httplib::Request&>(req).ranges.clear();
            // The absolute-form (RFC 9112 3.2.2: "http://host/path", what a
            // client sends a proxy) is served as its path, and its
            // authority stands for the Host header, which is ignored.
            if (auto abs = absolute_form(req.path)) {
                auto& r = const_cast<httplib::Request&>(req);
                r.path = abs->second;
                r.headers.erase("Host");
                r.headers.emplace("Host", abs->first);
            }
            // A listed origin's pages ask first (a CORS preflight) for what
            // a plain form could not send: JSON, an API key.
            const std::string origin = req.get_header_value("Origin");
            // (One whose framing is bad is refused below: its body, which
            // httplib does not read for OPTIONS, would be the next request.)
            if (req.method == "OPTIONS" && !origin.empty() && rules.lists(origin) &&
                req.has_header("Access-Control-Request-Method") && !bad_framing(req)) {
                res.status = 204;
                res.set_header("Access-Control-Allow-Origin", origin);
                res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE");
                res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
                res.set_header("Access-Control-Max-Age", "600");
                res.set_header("Vary", "Origin");
                return httplib::Server::HandlerResponse::Handled;
            }
            auto e = refused_before_body(req, max_body, rules);
            if (!e) {
                return httplib::Server::HandlerResponse::Unhandled;
            }
            send_error(res, *e, true);
            return httplib::Server::HandlerResponse::Handled;
        });
    // A client that asks first (Expect: 100-continue) is refused before it
    // sends a body that would be (its framing, its origin, or with API keys
    // a key that is none): httplib would invite it (100) first. The
    // connection then closes, as the body may come all the same.
    _svr.set_expect_100_continue_handler([this, max_body = d.opts().max_body, rules](
                                             const httplib::Request& req, httplib::Response& res) {
        if (auto e = refused_before_body(req, max_body, rules)) {
            send_error(res, *e, true);
            return e->status;
        }
        if (_d.api_keys().empty() || key_of(req) || authorize(req, res)) {
            return 100;
        }
        return res.status;
    });
    // Answers to a listed origin's pages say they may read them.
    _svr.set_post_routing_handler([rules](const httplib::Request& req, httplib::Response& res) {
        const std::string origin = req.get_header_value("Origin");
        if (!origin.empty() && rules.lists(origin)) {
            res.set_header("Access-Control-Allow-Origin", origin);
            res.set_header("Vary", "Origin");
        }
    });
    _svr.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            api_error e{500, "internal error", "server_error", "", ""};
            try {
                std::rethrow_exception(ep);
            } catch (const api_error& a) {
                e = a;
            } catch (const std::exception& x) {
                e.message = x.what();
            } catch (...) {
            }
            send_error(res, e);
        });

    _svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
        if (_d.draining()) {
            res.status = 503;
            res.set_content(R"({"status":"draining"})", "application/json");
            return;
        }
        res.set_content(to_text(json{{"status", "ok"}, {"models", _d.models().size()}}),
                        "application/json");
    });
    _svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        std::string m = _d.prometheus();
        if (auto* p = _pool.load()) { // this thread is one of its
            const auto n = p->now();
            auto gauge = [&](const char* name, const char* help, size_t v) {
                m += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" +
                     name + " " + std::to_string(v) + "\n";
            };
            gauge("llmosd_http_connections", "connections being served (each holds a thread)",
                  n.busy);
            gauge("llmosd_http_connections_waiting",
                  "connections accepted and waiting for a thread (--max-connections are served)",
                  n.waiting);
            gauge("llmosd_http_max_connections", "--max-connections", _d.opts().max_connections);
            m += "# HELP llmosd_http_connections_turned_away_total connections answered 503 at "
                 "once, --max-connections serving and as many waiting\n# TYPE "
                 "llmosd_http_connections_turned_away_total counter\n"
                 "llmosd_http_connections_turned_away_total " +
                 std::to_string(n.turned_away) + "\n";
        }
        res.set_content(std::move(m), "text/plain; version=0.0.4");
    });
    _svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
        if (!authorize(req, res)) {
            return;
        }
        json data = json::array();
        for (auto& m : _d.models()) {
            data.push_back({{"id", m->name},
                            {"object", "model"},
                            {"created", m->created},
                            {"owned_by", "llmos"}});
        }
        res.set_content(to_text(json{{"object", "list"}, {"data", data}}), "application/json");
    });
    _svr.Get(R"(/v1/models/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
        if (!authorize(req, res)) {
            return;
        }
        auto m = _d.find_model(req.matches[1]);
        if (!m) {
            send_error(res, {404, "the model '" + std::string(req.matches[1]) + "' does not exist",
                             "invalid_request_error", "model", "model_not_found"});
            return;
        }
        res.set_content(to_text(json{{"id", m->name},
                                     {"object", "model"},
                                     {"created", m->created},
                                     {"owned_by", "llmos"}}),
                        "application/json");
    });
    // The POSTs read their bodies themselves: the API key is checked first,
    // and --max-body holds for chunked bodies too.
    _svr.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& body) { generate(req, res, body, false); });
    _svr.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& body) { generate(req, res, body, true); });

    // llmos administration (llmosctl model ...).
    _svr.Get("/llmos/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
        if (!authorize_admin(req, res)) {
            return;
        }
        json data = json::array();
        for (auto& m : _d.models()) {
            data.push_back(describe(*m));
        }
        res.set_content(to_text(json{{"models", data}}), "application/json");
    });
    _svr.Post("/llmos/v1/models", [this](const httplib::Request& req, httplib::Response& res,
                                         const httplib::ContentReader& reader) {
        std::string body;
        if (!authorize_admin(req, res) || !read_body(reader, res, body)) {
            return;
        }
        auto [name, path] = name_and_path(body, true);
        auto m = _d.load_model(name, path);
        res.status = 201;
        res.set_content(to_text(describe(*m)), "application/json");
    });
    _svr.Post(R"(/llmos/v1/models/([^/]+)/swap)",
              [this](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader) {
                  std::string body;
                  if (!authorize_admin(req, res) || !read_body(reader, res, body)) {
                      return;
                  }
                  auto [name, path] = name_and_path(body, false);
                  auto m = _d.swap_model(req.matches[1], path);
                  res.set_content(to_text(describe(*m)), "application/json");
              });
    // The sessions kept: with API keys a key's tenant's, or every one for
    // an admin key.
    _svr.Get("/llmos/v1/sessions", [this](const httplib::Request& req, httplib::Response& res) {
        if (!authorize(req, res)) {
            return;
        }
        std::optional<uint32_t> tenant;
        if (const daemon::api_key* k = key_of(req); k && !k->admin) {
            tenant = k->tenant;
        }
        json data = json::array();
        for (const auto& si : _d.list_sessions(tenant)) {
            auto opt = [](const auto& v) { return v ? json(*v) : json(nullptr); };
            data.push_back({{"id", si.name},
                            {"object", "llmos.session"},
                            {"tenant", opt(si.tenant)},
                            {"model", si.model.empty() ? json(nullptr) : json(si.model)},
                            {"kind", si.kind.empty() ? json(nullptr) : json(si.kind)},
                            {"conversation_bytes", si.conversation_bytes},
                            {"bytes", si.bytes},
                            {"resident_bytes", si.resident_bytes},
                            {"last_used", opt(si.last_used)},
                            {"full", si.full},
                            {"readable", si.readable}});
        }
        res.set_content(to_text(json{{"object", "list"}, {"data", data}}), "application/json");
    });
    // A session's end: its tenant's keys, or an admin key.
    _svr.Delete(R"(/llmos/v1/sessions/([^/]+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                    if (!authorize(req, res)) {
                        return;
                    }
                    std::optional<uint32_t> owner;
                    if (const daemon::api_key* k = key_of(req); k && !k->admin) {
                        owner = k->tenant;
                    }
                    _d.end_session(req.matches[1], owner);
                    res.set_content(to_text(json{{"deleted", std::string(req.matches[1])}}),
                                    "application/json");
                });
    _svr.Delete(R"(/llmos/v1/models/([^/]+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                    if (!authorize_admin(req, res)) {
                        return;
                    }
                    _d.unload_model(req.matches[1]);
                    res.set_content(to_text(json{{"unloaded", std::string(req.matches[1])}}),
                                    "application/json");
                });
}

json http_server::describe(const model_entry& m) const {
    const auto& p = m.model->params();
    json d = {
        {"name", m.name},
        {"path", m.path},
        {"architecture", p.arch_name},
        {"weights", m.model->type_summary()},
        {"weight_bytes", m.model->weight_bytes()},
        {"kernels", m.cuda ? std::string("cuda")
                           : std::string(llmos::engine::simd_name(llmos::engine::default_simd()))},
        {"packed_bytes", m.model->packed_bytes()},
        {"n_vocab", p.n_vocab},
        {"n_embd", p.n_embd},
        {"n_layer", p.n_layer},
        {"n_head", p.n_head},
        {"n_head_kv", p.n_head_kv},
        {"context", _d.opts().ctx},
        {"in_flight", m.in_flight.load()},
        {"created", m.created},
        {"engine", _d.engine_description()}};
    if (m.cuda) {
        d["gpu_weights"] = m.cuda->layout_summary();
        d["gpu_weight_bytes"] = m.cuda->device_bytes();
    }
    return d;
}

std::pair<std::string, std::string> http_server::name_and_path(const std::string& body,
                                                               bool need_name) {
    const json o = parse_body(body);
    if (!o.is_object()) {
        throw api_error{400, "the body must be a JSON object", "invalid_request_error", "", ""};
    }
    for (const char* key : {"name", "path"}) {
        if (o.contains(key) && !o[key].is_string()) {
            throw api_error{400, std::string("'") + key + "' must be a string",
                            "invalid_request_error", key, ""};
        }
    }
    std::string name = o.value("name", ""), path = o.value("path", "");
    if ((need_name && name.empty()) || path.empty()) {
        throw api_error{400, need_name ? "'name' and 'path' are required" : "'path' is required",
                        "invalid_request_error", path.empty() ? "path" : "name", ""};
    }
    return {name, path};
}

bool http_server::authorize_admin(const httplib::Request& req, httplib::Response& res) {
    return authorize(req, res, nullptr, true);
}

const daemon::api_key* http_server::key_of(const httplib::Request& req) const {
    const std::string auth = req.get_header_value("Authorization");
    // The scheme's name is case-insensitive (RFC 9110).
    const std::string bearer = "bearer ";
    if (auth.size() == bearer.size() || !starts_with_nocase(auth, bearer)) {
        return nullptr;
    }
    auto it = _d.api_keys().find(auth.substr(bearer.size()));
    return it == _d.api_keys().end() ? nullptr : &it->second;
}

bool http_server::authorize(const httplib::Request& req, httplib::Response& res, uint32_t* tenant,
                            bool admin) {
    if (_d.api_keys().empty()) {
        return true;
    }
    const std::string auth = req.get_header_value("Authorization");
    if (const daemon::api_key* k = key_of(req)) {
        if (admin && !k->admin) {
            send_error(res,
                       {403,
                        "this API key may not use the administration API (/llmos/v1/models): "
                        "that needs a key marked admin in llmosd's API key file",
                        "permission_error", "", "admin_key_required"},
                       true); // its body, if any, is not read
            return false;
        }
        if (tenant) {
            *tenant = k->tenant;
        }
        return true;
    }
    send_error(res,
               {401,
                auth.empty() ? "an API key is required (Authorization: Bearer KEY)"
                             : "the API key is not valid",
                "invalid_request_error", "", "invalid_api_key"},
               true); // its body, if any, is not read
    return false;
}

bool http_server::read_body(const httplib::ContentReader& reader, httplib::Response& res,
                            std::string& out) {
    const size_t max = _d.opts().max_body;
    bool too_large = false;
    const bool read = reader([&](const char* data, size_t len) {
        if (len > max - std::min(max, out.size())) {
            too_large = true;
            return false;
        }
        out.append(data, len);
        return true;
    });
    if (read && !too_large) {
        // From here its answer is on its way: a stop lets it be written.
        _svr.mark_answering();
        return true;
    }
    // The rest of the body is not read: the connection goes.
    if (too_large || res.status == 413 || connection_server::current_refusal().status == 413) {
        send_error(res,
                   {413,
                    "the request body is larger than this server accepts (" + std::to_string(max) +
                        " bytes)",
                    "invalid_request_error", "", "payload_too_large"},
                   true);
    } else if (auto r = connection_server::current_refusal(); r.status) {
        send_error(res, {r.status, r.message, "invalid_request_error", "", r.code}, true);
    } else {
        send_error(res,
                   {400, "the request body could not be read", "invalid_request_error", "", ""},
                   true);
    }
    return false;
}

void http_server::generate(const httplib::Request& req, httplib::Response& res,
                           const httplib::ContentReader& reader, bool chat) {
    uint32_t key_tenant = 0;
    std::string body;
    if (!authorize(req, res, &key_tenant) || !read_body(reader, res, body)) {
        if (res.status == 413 || res.status == 400 || res.status == 408) {
            _d.stats().client_errors.fetch_add(1);
        }
        return;
    }
    job j;
    try {
        j = parse_job(body, chat);
        // Events go chunked, which an HTTP/1.0 client does not read.
        if (j.stream && req.version != "HTTP/1.1") {
            throw api_error{400, "stream: true needs HTTP/1.1 (the events are sent chunked)",
                            "invalid_request_error", "stream", "http_version"};
        }
    } catch (const api_error& e) {
        _d.stats().client_errors.fetch_add(1);
        send_error(res, e);
        return;
    }
    // A key's tenant wins over the request's: keys are how tenants are told apart.
    uint32_t tenant = _d.api_keys().empty() ? j.tenant.value_or(_d.default_tenant()) : key_tenant;
    if (!_d.find_model(j.model)) {
        send_error(res, {404, "the model '" + j.model + "' does not exist", "invalid_request_error",
                         "model", "model_not_found"});
        return;
    }
    if (const std::string lost = _d.device_lost(); !lost.empty()) {
        send_error(res, daemon::device_lost_error(lost));
        return;
    }
    if (_d.draining()) {
        send_error(res, {503, "the server is shutting down", "server_error", "", "draining"});
        return;
    }
    // The place among the requests in flight is taken before the status
    // line goes out: a full server answers 429, never 200 and then an error.
    std::shared_ptr<daemon::admission> adm;
    try {
        adm = std::make_shared<daemon::admission>(_d.admit(j, tenant));
    } catch (const api_error& e) {
        send_error(res, e);
        return;
    }
    const std::string id = new_id(chat ? "chatcmpl" : "cmpl");
    const int64_t created = unix_now();
    if (!j.stream) {
        outcome o;
        try {
            // Nothing is sent until the end: watch the connection itself
            // to notice a client that goes away.
            const int fd = connection_server::current_fd();
            auto last = std::chrono::steady_clock::now();
            o = _d.run(
                j, tenant,
                [fd, &last](std::string_view piece) {
                    auto now = std::chrono::steady_clock::now();
                    if (!piece.empty() && now - last < std::chrono::milliseconds(100)) {
                        return true;
                    }
                    last = now;
                    return peer_still_there(fd);
                },
                std::move(*adm));
        } catch (const api_error& e) {
            send_error(res, e);
            return;
        }
        json choice = {{"index", 0}, {"finish_reason", o.finish_reason}};
        if (chat) {
            choice["message"] = {{"role", "assistant"}, {"content", o.text}};
        } else {
            choice["text"] = o.text;
            choice["logprobs"] = nullptr;
        }
        res.set_content(to_text(json{{"id", id},
                                     {"object", chat ? "chat.completion" : "text_completion"},
                                     {"created", created},
                                     {"model", j.model},
                                     {"choices", json::array({choice})},
                                     {"usage", usage_of(o)}}),
                        "application/json");
        return;
    }
    // Server-sent events: one chunk per piece, then the finish, the usage
    // if asked, and [DONE]. The job is submitted first, so that what is
    // wrong with it gets its status; errors after the stream began go as
    // an error event (the status line is gone by then).
    std::shared_ptr<daemon::submitted> sub;
    try {
        sub = _d.submit(j, tenant, std::move(*adm),
                        [fd = connection_server::current_fd()] { return peer_still_there(fd); });
    } catch (const api_error& e) {
        send_error(res, e);
        return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [this, j, id, created, sub](size_t, httplib::DataSink& sink) {
            auto event = [&](const json& v) {
                std::string s = "data: " + to_text(v) + "\n\n";
                return sink.write(s.data(), s.size());
            };
            bool alive = true;
            if (j.chat) {
                json first = chunk(id, created, j, "", nullptr);
                first["choices"][0]["delta"] = {{"role", "assistant"}, {"content", ""}};
                alive = event(first);
            }
            try {
                if (sub->finished) {
                    return false; // the provider ran once already
                }
                auto o = _d.finish(*sub, [&](std::string_view piece) {
                    if (!alive) {
                        return false;
                    }
                    if (piece.empty()) {
                        alive = sink.is_writable();
                        return alive;
                    }
                    alive = event(chunk(id, created, j, std::string(piece), nullptr));
                    return alive;
                });
                json fin = chunk(id, created, j, "", o.finish_reason.c_str());
                if (j.include_usage) {
                    fin["usage"] = nullptr;
                }
                event(fin);
                if (j.include_usage) {
                    json u = chunk(id, created, j, "", nullptr);
                    u["choices"] = json::array();
                    u["usage"] = usage_of(o);
                    event(u);
                }
            } catch (const api_error& e) {
                if (e.status != 499) {
                    event(error_body(e));
                }
            } catch (const std::exception& e) {
                // Nothing may leave a content provider (httplib's thread
                // would end the process).
                event(error_body({500, e.what(), "server_error", "", ""}));
            }
            static const char done[] = "data: [DONE]\n\n";
            sink.write(done, sizeof(done) - 1);
            sink.done();
            return true;
        });
}

namespace {

// Debian's httplib listens with a backlog of 5, which a burst of clients
// overflows (connections reset, retries a second later). Linux lets
// listen() be called again on a listening socket to change its backlog:
// find ours by the address it is bound to.
void widen_backlog(const std::function<bool(const sockaddr*)>& ours) {
    find_fd([&](int fd) {
        int acc = 0;
        socklen_t len = sizeof(acc);
        sockaddr_storage ss{};
        socklen_t sl = sizeof(ss);
        if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0 &&
            ours(reinterpret_cast<const sockaddr*>(&ss))) {
            ::listen(fd, SOMAXCONN);
        }
        return false; // every socket bound there
    });
}

} // namespace

bool http_server::listen_unix(const std::string& path) {
    _svr.set_address_family(AF_UNIX);
    if (!_svr.bind_to_port(path, 80)) {
        return false;
    }
    widen_backlog([&](const sockaddr* a) {
        return a->sa_family == AF_UNIX && path == reinterpret_cast<const sockaddr_un*>(a)->sun_path;
    });
    const bool ok = _svr.listen_after_bind();
    _pool.store(nullptr); // httplib has deleted it
    return ok;
}

int http_server::bind_port(const std::string& host, int port) {
    // What a browser can be tricked into reaching by DNS rebinding.
    _tcp->store(true);
    _loopback->store(host == "localhost" || host.starts_with("127.") || host == "::1" ||
                     host == "[::1]");
    int bound = port ? (_svr.bind_to_port(host, port) ? port : -1) : _svr.bind_to_any_port(host);
    if (bound > 0) {
        widen_backlog([&](const sockaddr* a) { return port_of(a) == bound; });
    }
    return bound;
}

bool http_server::serve() {
    const bool ok = _svr.listen_after_bind();
    _pool.store(nullptr); // httplib has deleted it
    return ok;
}

void http_server::stop() {
    _svr.stop();
    // Connections idle, or whose request trickles in, end now (the
    // requests in flight were drained); those still writing an answer
    // (a drained request's, whose worker finished just before) end after
    // it: the server's threads are joined.
    _svr.shut_connections();
}

} // namespace llmosd
