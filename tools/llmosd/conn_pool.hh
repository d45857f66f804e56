// SPDX-License-Identifier: MIT
// The threads that serve llmosd's HTTP connections.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <httplib.h>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace llmosd {

/// httplib's task queue for llmosd: a thread per open connection, made
/// when one is needed, up to `most`; a thread idle for a while leaves
/// (down to `keep`). httplib holds a connection's thread for as long as
/// the connection is open: idle between keep-alive requests (up to 5 s),
/// or while its request trickles in (its headers up to --header-timeout,
/// its body up to 30 s a read). With a fixed
/// pool, that many idle or slow clients would keep every other client
/// waiting; here it takes `most` of them.
class connection_pool final : public httplib::TaskQueue {
public:
    struct counts {
        size_t threads = 0;     ///< threads serving or idle
        size_t busy = 0;        ///< connections being served
        size_t waiting = 0;     ///< accepted connections waiting for a thread
        size_t turned_away = 0; ///< jobs run at once as overflowing(), in all
    };

    /// Up to `most` threads; past `most_waiting` jobs waiting for one (or
    /// once shut down), a job runs at once on the caller's thread with
    /// overflowing() true, to turn its connection away without blocking.
    explicit connection_pool(size_t most, size_t keep = 8,
                             std::chrono::milliseconds idle = std::chrono::seconds(10),
                             size_t most_waiting = SIZE_MAX);
    ~connection_pool() override;
    connection_pool(const connection_pool&) = delete;
    connection_pool& operator=(const connection_pool&) = delete;

    void enqueue(std::function<void()> fn) override;
    /// Serves what was accepted, then joins every thread.
    void shutdown() override;
    counts now() const;
    /// Whether the job this thread runs is one turned away (no thread and
    /// no room to wait for one): it should end its connection at once.
    static bool overflowing() noexcept;

private:
    void serve();
    void join_exited(std::unique_lock<std::mutex>& lk);

    /// Runs `fn` here and now as overflowing().
    void turn_away(std::function<void()> fn);

    const size_t _most, _keep, _most_waiting;
    const std::chrono::milliseconds _idle_for;
    mutable std::mutex _m;
    std::condition_variable _cv;
    std::deque<std::function<void()>> _jobs;
    std::map<std::thread::id, std::thread> _threads;
    std::vector<std::thread> _exited; ///< left for idleness; joined by the next caller
    size_t _idle = 0, _running = 0, _turned_away = 0;
    bool _stop = false;
};

} // namespace llmosd
