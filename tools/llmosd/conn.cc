// SPDX-License-Identifier: MIT
#include "conn.hh"

#include "conn_pool.hh"
#include "openai.hh"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <string_view>
#include <sys/socket.h>
#include <unistd.h>

namespace llmosd {

namespace {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

int poll_ms(milliseconds d) {
    return static_cast<int>(std::clamp<milliseconds::rep>(d.count(), 0, INT_MAX));
}

// poll() one event on `fd` for up to `d`: its revents, 0 on a timeout or
// an error.
short wait_for(int fd, short events, milliseconds d) {
    pollfd p{fd, events, 0};
    int r;
    do {
        r = ::poll(&p, 1, poll_ms(d));
    } while (r < 0 && errno == EINTR);
    return r > 0 ? p.revents : 0;
}

milliseconds to_ms(time_t sec, time_t usec) {
    return milliseconds(sec * 1000 + usec / 1000);
}

// What httplib 0.11 reads leniently, checked on the bytes as they come,
// so that what it reads is what a strict reader in front of llmosd reads:
// every line of a request's head ends in CRLF (httplib drops a line that
// ends in LF alone, a framing header with it); Content-Length and
// Transfer-Encoding values hold no '%' (httplib percent-decodes header
// values: "%63hunked" is chunked to it); a chunked body is framed
// strictly: each size line hex digits (an extension after ';') and CRLF,
// each chunk's data followed by CRLF, a last chunk of size 0, an empty
// line (httplib takes "0x1d", "+1d", " 1d", "1d junk", and ends the body
// at data not followed by CRLF). Trailer fields, which httplib cannot read
// (it answers a bare 400), are refused here with a word on why.
class framing {
public:
    void reset() { *this = framing{}; }

    /// The longest line of a request head httplib reads, CRLF included
    /// (CPPHTTPLIB_HEADER_MAX_LENGTH and _REQUEST_URI_MAX_LENGTH of the
    /// library Debian builds): a longer one gets a bare 400 from it.
    static constexpr size_t max_line = 8192;

    /// Whether the line so far is the request line.
    bool first_line() const { return _first; }
    /// The length of the line so far (without its CRLF).
    size_t line_size() const { return _line.size(); }

    /// One byte of the request line and headers: nullptr, or why it
    /// breaks the rules.
    const char* head(char c) {
        if (c != '\n') {
            _line += c;
            return nullptr;
        }
        if (_line.empty() || _line.back() != '\r') {
            return "a line of the request head must end in CRLF";
        }
        _line.pop_back();
        const bool first = _first;
        _first = false;
        // A line folded onto the one before (RFC 9112 5.2): httplib drops
        // it, a reader in front may unfold it.
        if (!first && !_line.empty() && (_line[0] == ' ' || _line[0] == '\t')) {
            return "a header line may not be folded onto the one before";
        }
        const auto colon = _line.find(':');
        if (!first && colon != std::string::npos) {
            const std::string_view name(_line.data(), colon);
            const bool te = name.size() == 17 && nocase(name, "transfer-encoding");
            if (te || (name.size() == 14 && nocase(name, "content-length"))) {
                if (_line.find('%', colon) != std::string::npos) {
                    return "a Content-Length or Transfer-Encoding value may not hold '%'";
                }
                // httplib drops a header whose value is empty.
                if (_line.find_first_not_of(" \t", colon + 1) == std::string::npos) {
                    return "a Content-Length or Transfer-Encoding value may not be empty";
                }
            }
            _chunked = _chunked || te;
        }
        _line.clear();
        return nullptr;
    }

    /// The size of the chunk whose size line is being read, so far.
    uint64_t chunk_size() const {
        return _st == st::size || _st == st::ext || _st == st::size_lf ? _left : 0;
    }

    /// One byte of the body: nullptr, or why it breaks the rules.
    const char* body(char c) {
        if (!_chunked) {
            return nullptr;
        }
        switch (_st) {
        case st::size:
            if (const int d = hex(c); d >= 0 && _digits < 16) {
                _left = _left * 16 + unsigned(d);
                ++_digits;
                return nullptr;
            }
            if (_digits && (c == ';' || c == '\r')) {
                _st = c == ';' ? st::ext : st::size_lf;
                return nullptr;
            }
            return "a chunk's size must be 1 to 16 hex digits, then CRLF";
        case st::ext:
            if (c == '\r') {
                _st = st::size_lf;
            } else if (c == '\n' || ++_ext > 1024) {
                return "a chunk extension must end in CRLF within 1 KiB";
            }
            return nullptr;
        case st::size_lf:
            if (c != '\n') {
                return "a chunk's size line must end in CRLF";
            }
            _st = _left ? st::data : st::trailer_start;
            return nullptr;
        case st::data:
            if (--_left == 0) {
                _st = st::data_cr;
            }
            return nullptr;
        case st::data_cr:
        case st::data_lf:
            if (c != (_st == st::data_cr ? '\r' : '\n')) {
                return "a chunk's data must be followed by CRLF";
            }
            if (_st == st::data_lf) {
                _digits = 0;
                _ext = 0;
            }
            _st = _st == st::data_cr ? st::data_lf : st::size;
            return nullptr;
        case st::trailer_start:
            if (c != '\r') {
                return "trailer fields after a chunked body are not supported: end it with an "
                       "empty line after the last chunk";
            }
            _st = st::end_lf;
            return nullptr;
        case st::end_lf:
            if (c != '\n') {
                return "a chunked body must end in CRLF";
            }
            _st = st::done;
            return nullptr;
        case st::done:
            return nullptr;
        }
        return nullptr;
    }

private:
    static int hex(char c) {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            return (c | 0x20) - 'a' + 10;
        }
        return -1;
    }
    static bool nocase(std::string_view a, std::string_view lower) {
        return std::equal(a.begin(), a.end(), lower.begin(), lower.end(), [](char x, char y) {
            return static_cast<char>(std::tolower(static_cast<unsigned char>(x))) == y;
        });
    }
    enum class st { size, ext, size_lf, data, data_cr, data_lf, trailer_start, end_lf, done };
    std::string _line; ///< the head's line so far
    bool _first = true;
    bool _chunked = false;
    st _st = st::size;
    uint64_t _left = 0; ///< the chunk's size, then its data bytes still to come
    unsigned _digits = 0;
    size_t _ext = 0;
};

// One connection's bytes, buffered: what is read past a request (the next
// one, pipelined) stays for it. While a request's line and headers come,
// their bytes are counted and timed; a request past either limit is
// refused (and the connection closes after the answer).
class conn_stream final : public httplib::Stream {
public:
    conn_stream(int fd, milliseconds read_t, milliseconds write_t,
                const connection_server::limits& l)
        : _fd(fd)
        , _read_t(read_t)
        , _write_t(write_t)
        , _l(l) {}

    int fd() const noexcept { return _fd; }
    /// Bytes of an answer written since the request began.
    size_t written() const noexcept { return _written; }
    const connection_server::refusal& refused() const noexcept { return _refusal; }
    /// Its answer is the last: what the client still sends is dropped.
    void close_after_answer() noexcept { _last = true; }
    bool last() const noexcept { return _last || _refusal.status; }

    /// Waits up to `idle` for a request to start (bytes buffered or
    /// arriving, or the peer's end); false when none came or `stopping`.
    template <typename Stop>
    bool wait_request(milliseconds idle, Stop stopping) {
        // The CRLF some clients send after a body is no request: while it
        // is all that came, the connection stays idle.
        size_t skipped = 0;
        auto empty_lines_only = [&] {
            while (_len - _pos >= 2 && skipped < 16 && _buf[_pos] == '\r' &&
                   _buf[_pos + 1] == '\n') {
                _pos += 2;
                skipped += 2;
            }
            return _pos == _len;
        };
        if (!empty_lines_only()) {
            return true;
        }
        for (auto until = steady::now() + idle; !stopping();) {
            const auto left = std::chrono::duration_cast<milliseconds>(until - steady::now());
            if (left <= milliseconds(0)) {
                return false;
            }
            if (wait_for(_fd, POLLIN, std::min(left, milliseconds(100)))) {
                if (fill() <= 0 || !empty_lines_only()) {
                    return true; // a request, or the end (httplib reads it)
                }
            }
        }
        return false;
    }

    /// A request starts: its line and headers are counted from here.
    void begin_request() {
        _written = 0;
        _in_headers = true;
        _in_body = false;
        _header_bytes = 0;
        _skipped = 0;
        _body_bytes = 0;
        _framing.reset();
        _deadline = steady::now() + _l.header_time;
        _t1 = _t2 = 0;
    }

    bool is_readable() const override { return _pos < _len || wait_for(_fd, POLLIN, _read_t) != 0; }

    bool is_writable() const override {
        const short r = wait_for(_fd, POLLOUT, _write_t);
        return (r & POLLOUT) && !(r & (POLLERR | POLLHUP)) && peer_there();
    }

    ssize_t read(char* ptr, size_t size) override {
        if (_refusal.status) { // nothing more is read from this connection
            return -1;
        }
        if (_pos == _len) {
            const ssize_t got = fill();
            if (got <= 0) {
                return got;
            }
        }
        // Empty lines before a request line are skipped (RFC 9112 2.2:
        // some clients send a CRLF after a body), a few of them.
        while (_in_headers && _header_bytes == 0 && _skipped < 16 &&
               _buf[_pos] == "\r\n"[_skipped % 2]) {
            ++_skipped;
            if (++_pos == _len) {
                const ssize_t got = fill();
                if (got <= 0) {
                    return got;
                }
            }
        }
        if (_in_headers && _header_bytes == 0 && _skipped % 2) {
            return refuse_framing("a line of the request head must end in CRLF");
        }
        size_t n = std::min(size, _len - _pos);
        if (_in_headers) {
            // The headers end with an empty line: "\n\r\n" (httplib skips
            // lines that do not end in CRLF).
            for (size_t i = 0; i < n; ++i) {
                if (++_header_bytes > _l.header_bytes) {
                    _refusal = {431,
                                "the request line and headers are larger than this server "
                                "accepts (" +
                                    std::to_string(_l.header_bytes) + " bytes)",
                                "headers_too_large"};
                    return -1;
                }
                const char c = _buf[_pos + i];
                if (const char* why = _framing.head(c)) {
                    return refuse_framing(why);
                }
                if (_framing.line_size() + 2 > framing::max_line) {
                    const std::string limit = std::to_string(framing::max_line) + " bytes";
                    _refusal =
                        _framing.first_line()
                            ? connection_server::refusal{414,
                                                         "the request line is longer than " + limit,
                                                         "uri_too_long"}
                            : connection_server::refusal{431,
                                                         "a header line is longer than " + limit,
                                                         "headers_too_large"};
                    return -1;
                }
                if (_t1 == '\n' && _t2 == '\r' && c == '\n') {
                    _in_headers = false;
                    _in_body = true; // whatever body there is, from now
                    _deadline = steady::now() + _l.body_time;
                    n = i + 1;
                    break;
                }
                _t1 = _t2;
                _t2 = c;
            }
        } else if (_l.body_bytes && (_body_bytes += n) > _l.body_bytes) {
            _refusal = {413,
                        "the request body is larger than this server accepts (" +
                            std::to_string(_l.body_bytes) + " bytes with its framing)",
                        "payload_too_large"};
            return -1;
        } else {
            for (size_t i = 0; i < n; ++i) {
                if (const char* why = _framing.body(_buf[_pos + i])) {
                    return refuse_framing(why);
                }
                // A chunk larger than a whole body may be is refused as
                // such, before its data.
                if (_l.body_bytes && _framing.chunk_size() > _l.body_bytes) {
                    _refusal = {413,
                                "a chunk of the request body is larger than this server "
                                "accepts (" +
                                    std::to_string(_l.body_bytes) + " bytes)",
                                "payload_too_large"};
                    return -1;
                }
            }
        }
        std::memcpy(ptr, _buf + _pos, n);
        _pos += n;
        return static_cast<ssize_t>(n);
    }

    ssize_t write(const char* ptr, size_t size) override {
        // Not is_writable(): a client that shut its sending side after its
        // request (EOF to read) still takes the answer.
        const short w = wait_for(_fd, POLLOUT, _write_t);
        if (!(w & POLLOUT) || (w & (POLLERR | POLLHUP))) {
            return -1;
        }
        ssize_t r;
        do {
            r = ::send(_fd, ptr, size, MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        _written += r > 0 ? static_cast<size_t>(r) : 0;
        return r;
    }

    void get_remote_ip_and_port(std::string& ip, int& port) const override {
        address(true, ip, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
        address(false, ip, port);
    }
    socket_t socket() const override { return _fd; }

private:
    ssize_t refuse_framing(const char* why) {
        _refusal = {400, why, "bad_framing"};
        return -1;
    }

    // Reads what has come into the buffer: bytes read, 0 at the peer's
    // end, -1 on a timeout (a request's headers or body past their time:
    // refused) or an error.
    ssize_t fill() {
        milliseconds wait = _read_t;
        bool by_deadline = false;
        if (_in_headers || _in_body) {
            const auto left = std::chrono::ceil<milliseconds>(_deadline - steady::now());
            by_deadline = left <= wait;
            wait = std::max(milliseconds(0), std::min(wait, left));
        }
        if (!wait_for(_fd, POLLIN, wait)) {
            if (by_deadline) {
                _refusal = {408,
                            _in_headers ? "the request line and headers did not arrive within " +
                                              std::to_string(_l.header_time.count()) + " s"
                                        : "the request body did not arrive within " +
                                              std::to_string(_l.body_time.count()) + " s",
                            "request_timeout"};
            }
            return -1;
        }
        ssize_t got;
        do {
            got = ::recv(_fd, _buf, sizeof(_buf), 0);
        } while (got < 0 && errno == EINTR);
        if (got > 0) {
            _pos = 0;
            _len = static_cast<size_t>(got);
        }
        return got < 0 ? -1 : got;
    }

    // Whether the peer has not gone (it may have sent more: still there).
    bool peer_there() const {
        const short r = wait_for(_fd, POLLIN, milliseconds(0));
        if (r & POLLERR) {
            return false;
        }
        if (!(r & (POLLIN | POLLHUP))) {
            return true;
        }
        char c;
        return ::recv(_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 0;
    }

    // Like httplib: numeric host and port; on a unix socket, the peer's
    // pid as its port.
    void address(bool peer, std::string& ip, int& port) const {
        sockaddr_storage ss{};
        socklen_t len = sizeof(ss);
        auto* sa = reinterpret_cast<sockaddr*>(&ss);
        if ((peer ? ::getpeername(_fd, sa, &len) : ::getsockname(_fd, sa, &len)) != 0) {
            return;
        }
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            char host[NI_MAXHOST];
            if (::getnameinfo(sa, len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) == 0) {
                ip = host;
            }
            port = ntohs(ss.ss_family == AF_INET
                             ? reinterpret_cast<const sockaddr_in*>(sa)->sin_port
                             : reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
        } else if (ss.ss_family == AF_UNIX && peer) {
            ucred cred{};
            socklen_t cl = sizeof(cred);
            if (::getsockopt(_fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
                port = cred.pid;
            }
        }
    }

    const int _fd;
    const milliseconds _read_t, _write_t;
    const connection_server::limits& _l;
    char _buf[16384];
    size_t _pos = 0, _len = 0;
    bool _in_headers = false;
    bool _in_body = false; ///< the headers read, until the next request begins
    size_t _header_bytes = 0;
    unsigned _skipped = 0;  ///< empty-line bytes before the request line
    size_t _body_bytes = 0; ///< read since the headers ended
    steady::time_point _deadline;
    char _t1 = 0, _t2 = 0; ///< the last two header bytes
    connection_server::refusal _refusal;
    framing _framing;
    bool _last = false;
    size_t _written = 0;
};

// The answer to a request refused in its request line, which httplib
// drops without one.
void answer_refusal(conn_stream& strm) {
    const connection_server::refusal& r = strm.refused();
    const std::string body =
        to_text(error_body({r.status, r.message, "invalid_request_error", "", r.code}));
    const std::string head = "HTTP/1.1 " + std::to_string(r.status) +
                             (r.status == 400   ? " Bad Request"
                              : r.status == 408 ? " Request Timeout"
                              : r.status == 413 ? " Payload Too Large"
                              : r.status == 414 ? " URI Too Long"
                                                : " Request Header Fields Too Large") +
                             "\r\nConnection: close\r\nContent-Type: application/json\r\n"
                             "Content-Length: " +
                             std::to_string(body.size()) + "\r\n\r\n";
    const std::string all = head + body;
    (void)strm.write(all.data(), all.size());
}

thread_local conn_stream* t_stream = nullptr;

} // namespace

int connection_server::current_fd() noexcept {
    return t_stream ? t_stream->fd() : -1;
}

connection_server::refusal connection_server::current_refusal() {
    return t_stream ? t_stream->refused() : refusal{};
}

void connection_server::close_after_answer() noexcept {
    if (t_stream) {
        t_stream->close_after_answer();
    }
}

void connection_server::mark_answering() {
    if (t_stream) {
        std::lock_guard lk(_m);
        _answering.insert(t_stream->fd());
    }
}

void connection_server::shut_connections() {
    std::lock_guard lk(_m);
    for (int fd : _open) {
        // (One answering ends after its answer: the server is stopped.)
        if (!_answering.count(fd)) {
            ::shutdown(fd, SHUT_RDWR);
        }
    }
}

size_t connection_server::open_connections() const {
    std::lock_guard lk(_m);
    return _open.size();
}

// What is left to do for a connection when it ends, however it ends (an
// exception out of httplib too): out of the set, then closed.
struct connection_server::closer {
    connection_server& srv;
    int fd;
    ~closer() {
        t_stream = nullptr;
        {
            // Out of the set before it is closed: shut_connections() never
            // reaches a descriptor number used again.
            std::lock_guard lk(srv._m);
            srv._open.erase(fd);
            srv._answering.erase(fd);
        }
        ::shutdown(fd, SHUT_RDWR);
        ::close(fd);
    }
};

const std::string& connection_server::turned_away_answer() {
    static const std::string answer = [] {
        const std::string body =
            to_text(error_body({503,
                                "this server has as many connections open and waiting as it takes "
                                "(--max-connections); retry shortly",
                                "server_error", "", "too_many_connections"}));
        return "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: "
               "close\r\nContent-Type: application/json\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body;
    }();
    return answer;
}

bool connection_server::process_and_close_socket(socket_t sock) {
    if (connection_pool::overflowing()) {
        // No thread, and no room to wait for one: told so at once, on the
        // accepting thread, which must not block.
        const std::string& a = turned_away_answer();
        (void)::send(sock, a.data(), a.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        ::shutdown(sock, SHUT_WR);
        // What the client sent already is read first (64 KiB at most,
        // without waiting): closed with it unread, the connection would be
        // reset, and the answer lost with it.
        char sink[16384];
        for (int i = 0; i < 4 && ::recv(sock, sink, sizeof(sink), MSG_DONTWAIT) > 0; ++i) {
        }
        ::close(sock);
        return false;
    }
    {
        std::lock_guard lk(_m);
        _open.insert(sock);
    }
    const closer done{*this, sock};
    conn_stream strm(sock, to_ms(read_timeout_sec_, read_timeout_usec_),
                     to_ms(write_timeout_sec_, write_timeout_usec_), _l);
    t_stream = &strm;
    bool ret = false, answered = false;
    auto stopping = [this] { return svr_sock_ == INVALID_SOCKET; };
    for (size_t left = keep_alive_max_count_;
         left > 0 && strm.wait_request(std::chrono::seconds(keep_alive_timeout_sec_), stopping);
         --left) {
        bool closed = false;
        strm.begin_request();
        ret = process_request(strm, left == 1, closed, nullptr);
        answered = true;
        {
            std::lock_guard lk(_m);
            _answering.erase(sock); // answered
        }
        if (strm.refused().status && !strm.written()) {
            answer_refusal(strm);
        }
        if (strm.last()) {
            break;
        }
        if (!ret || closed) {
            break;
        }
    }
    char peek = 0;
    if (strm.last() || (answered && ::recv(sock, &peek, 1, MSG_PEEK | MSG_DONTWAIT) > 0)) {
        // Its answer out first: closed with the client's bytes unread (a
        // refused body, or requests pipelined past the keep-alive count),
        // the connection would be reset and the answer could be lost.
        // What still comes is read and dropped: a second and a MiB at most.
        // (An idle connection that timed out has nothing unread: it closes
        // at once.)
        ::shutdown(sock, SHUT_WR);
        const auto until = steady::now() + std::chrono::seconds(1);
        char sink[16384];
        ssize_t got = 0;
        for (size_t dropped = 0; dropped < (1u << 20); dropped += static_cast<size_t>(got)) {
            const auto left = std::chrono::ceil<milliseconds>(until - steady::now());
            if (left <= milliseconds(0) || !wait_for(sock, POLLIN, left) ||
                (got = ::recv(sock, sink, sizeof(sink), MSG_DONTWAIT)) <= 0) {
                break;
            }
        }
    }
    return ret;
}

} // namespace llmosd
