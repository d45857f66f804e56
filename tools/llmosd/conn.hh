// SPDX-License-Identifier: MIT
//
// llmosd's connections: httplib's server with its own reading of each
// connection. httplib 0.11 reads a request's header lines without a limit
// on their number or on the time they take (one client could grow the
// daemon's memory by gigabytes, or hold a thread as long as it trickles a
// byte a read), drops the bytes of a pipelined request, and tells a
// handler nothing of the socket its request came on. Here each connection
// is served by one buffered stream that keeps pipelined bytes, bounds a
// request's headers (bytes and time), knows its socket, and can be shut
// down from another thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <httplib.h>
#include <mutex>
#include <set>
#include <string>

namespace llmosd {

class connection_server final : public httplib::Server {
public:
    /// A request's header limits. The other times are httplib's settings
    /// (set_read_timeout(): each read of a body; set_write_timeout();
    /// set_keep_alive_timeout(): idle between requests).
    struct limits {
        size_t header_bytes = 64 * 1024;      ///< request line and headers
        std::chrono::seconds header_time{30}; ///< from the request's first byte to its last
        std::chrono::seconds body_time{60};   ///< from the headers' end to the body's
        /// Bytes of a body with its framing (chunk lines): past them the
        /// request is refused with 413 whatever reads it, httplib's chunk
        /// lines included (0: no limit).
        size_t body_bytes = 0;
    };
    /// Why the request this thread serves was refused while its headers
    /// were read (its status and words), if it was.
    struct refusal {
        int status = 0;
        std::string message, code;
    };

    explicit connection_server(limits l)
        : _l(l) {}

    /// The socket of the connection whose request this thread serves; -1
    /// outside one.
    static int current_fd() noexcept;
    static refusal current_refusal();
    /// The answer to the request this thread serves is its connection's
    /// last: sent whole, then what the client still sends (a body not
    /// read) is read and dropped for a moment, and the connection closes.
    static void close_after_answer() noexcept;
    /// The request this thread serves is being answered (a handler runs,
    /// its body read): shut_connections() leaves its connection to write
    /// the answer, until the request is done.
    void mark_answering();
    /// Shuts every open connection down (reads and writes fail at once)
    /// but those answering a request, which end after their answer: their
    /// threads end. After stop().
    void shut_connections();
    /// Connections open now.
    size_t open_connections() const;
    /// The answer a connection turned away without a thread gets (503).
    static const std::string& turned_away_answer();

private:
    struct closer;
    bool process_and_close_socket(socket_t sock) override;

    const limits _l;
    mutable std::mutex _m;
    std::set<int> _open;      ///< sockets being served (closed only once out of here)
    std::set<int> _answering; ///< of those, the ones answering a request
};

} // namespace llmosd
