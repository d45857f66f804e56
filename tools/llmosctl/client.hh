// SPDX-License-Identifier: MIT
//
// llmosctl's side of llmosd's HTTP API (cpp-httplib): JSON calls, and
// streamed chat or completion requests whose server-sent events are parsed
// as they arrive. Only the full llmosctl has it (not llmosctl-static).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace httplib {
class ClientImpl;
}

namespace llmosctl {

/// Where llmosd listens: "http://HOST[:PORT]", "https://HOST[:PORT]",
/// "HOST:PORT" (http) or "unix:/PATH".
struct server_address {
    std::string text; ///< as given, for messages
    bool https = false;
    std::string host;      ///< the host, an IPv6 address without its brackets
    int port = 0;          ///< the port (default 80, or 443 for https)
    std::string unix_path; ///< the socket, or empty
    std::string base_path; ///< a path prefix from the URL ("" or "/prefix")
};

/// Parses --server. nullopt when it is none of the forms above.
std::optional<server_address> parse_server(std::string_view s);

/// Splits a server-sent event stream into the data of its events, fed in
/// pieces of any size. Lines end in \n, \r\n or \r; "data:" lines of one
/// event are joined with \n; comments and other fields are ignored.
class sse_parser {
public:
    /// `on_data` gets each event's data; returning false stops the parse.
    explicit sse_parser(std::function<bool(const std::string&)> on_data);
    /// Feeds bytes; false once `on_data` returned false, or an event grew
    /// past max_event bytes (then overlong()).
    bool feed(std::string_view bytes);
    bool overlong() const { return _overlong; }

    /// The most bytes one event (its lines together) may hold: llmosd's
    /// are a piece of text each.
    static constexpr size_t max_event = 16u << 20;

private:
    bool line(std::string_view l);

    std::function<bool(const std::string&)> _on_data;
    std::string _partial; ///< an unfinished line
    std::string _data;    ///< the event's data so far
    bool _has_data = false;
    bool _skip_lf = false; ///< the last byte was a \r
    bool _stopped = false;
    bool _overlong = false;
};

/// What a call got: a transport error (the server could not be reached or
/// the connection broke), or an HTTP status and its JSON body.
struct reply {
    std::string transport_error; ///< non-empty: no usable answer
    bool unreachable = false;    ///< no connection could be made
    /// Non-empty: a 2xx reply that is not llmosd's, and why ("not an event
    /// stream").
    std::string not_llmosd;
    int status = 0;
    nlohmann::json body; ///< the body as JSON (discarded if it was not)
    std::string retry_after;

    bool ok() const {
        return transport_error.empty() && not_llmosd.empty() && status >= 200 && status < 300;
    }
};

/// One connection's worth of llmosd: keep-alive across calls. Not
/// thread-safe: one thread at a time.
class api_client {
public:
    /// `api_key` empty: no Authorization header. `reply_timeout` > 0:
    /// every call's read timeout (--reply-timeout), in place of
    /// read_timeout and long_read_timeout.
    api_client(const server_address& where, const std::string& api_key, int reply_timeout = 0);
    ~api_client();
    api_client(const api_client&) = delete;
    api_client& operator=(const api_client&) = delete;

    /// How long a reply may keep llmosd silent: plain JSON calls (model
    /// list, session rm) get an answer at once, or never; loading or
    /// swapping a model, unloading one (in-flight requests finish first)
    /// and generation streams (the first token) may take minutes.
    static constexpr int read_timeout = 30;       ///< seconds, the default
    static constexpr int long_read_timeout = 900; ///< seconds
    /// The calls after this one may take long_read_timeout (or
    /// --reply-timeout's); stream() always may.
    void expect_long_replies();

    /// GET, POST (JSON body) and DELETE. Never throws for network errors:
    /// they come back in reply::transport_error, as does a reply of more
    /// than 64 MiB (not read further).
    reply get(const std::string& path);
    reply post(const std::string& path, const nlohmann::json& body);
    reply del(const std::string& path);
    /// POSTs a streaming request (`"stream": true` in `body`) and hands each
    /// event's parsed JSON to `on_event` as it arrives, until [DONE] (not
    /// passed on). A non-2xx status comes back with its error body and no
    /// events; an event that is not JSON ends the stream with a
    /// transport_error, a 2xx reply that is no event stream with
    /// reply::not_llmosd. `on_event` returning false hangs up.
    reply stream(const std::string& path, const nlohmann::json& body,
                 const std::function<bool(const nlohmann::json&)>& on_event);

    const server_address& where() const { return _where; }

private:
    /// A plain call: `body` null for none.
    reply call(const char* method, const std::string& path, const nlohmann::json* body);

    server_address _where;
    std::unique_ptr<httplib::ClientImpl> _cli;
    std::string _host_header; ///< Host for an IPv6 address, or empty
    int _read_timeout = read_timeout;
    int _long_read_timeout = long_read_timeout;
};

/// The one-line error for a failed reply, printed as
/// "llmosctl: WHAT: MESSAGE" (or "llmosctl: cannot reach llmosd at URL:
/// ..." when no connection was made), with a hint for missing API keys and
/// overload. Returns exit_failure.
int fail_reply(const std::string& what, const reply& r, const server_address& where);

} // namespace llmosctl
