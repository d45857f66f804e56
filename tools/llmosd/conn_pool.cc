// SPDX-License-Identifier: MIT
#include "conn_pool.hh"

#include <algorithm>
#include <cstdio>

namespace llmosd {

namespace {
thread_local bool t_overflowing = false;
}

connection_pool::connection_pool(size_t most, size_t keep, std::chrono::milliseconds idle,
                                 size_t most_waiting)
    : _most(std::max<size_t>(most, 1))
    , _keep(std::min(keep, _most))
    , _most_waiting(most_waiting)
    , _idle_for(idle) {
}

bool connection_pool::overflowing() noexcept {
    return t_overflowing;
}

void connection_pool::turn_away(std::function<void()> fn) {
    t_overflowing = true;
    try {
        fn();
    } catch (...) {
        // httplib's job lets nothing out; a turned-away one is dropped.
    }
    t_overflowing = false;
}

connection_pool::~connection_pool() {
    shutdown();
}

void connection_pool::enqueue(std::function<void()> fn) {
    std::unique_lock lk(_m);
    join_exited(lk);
    // Jobs a thread there will take (it is idle, or starting) do not wait.
    const size_t free = _threads.size() - _running;
    // (Whatever the threads: when none can be made, jobs wait all the same.)
    if (_stop || _jobs.size() - std::min(free, _jobs.size()) >= _most_waiting) {
        // (httplib stops accepting before it shuts its queue down.)
        ++_turned_away;
        lk.unlock();
        turn_away(std::move(fn));
        return;
    }
    _jobs.push_back(std::move(fn));
    if (_idle >= _jobs.size() || _threads.size() >= _most) {
        _cv.notify_one();
        return;
    }
    try {
        std::thread t([this] { serve(); });
        const auto id = t.get_id();
        _threads.emplace(id, std::move(t));
    } catch (const std::system_error& e) {
        // No thread to be had: the connection waits for one that is.
        std::fprintf(stderr, "llmosd: no thread for a connection (%s): it waits\n", e.what());
        _cv.notify_one();
    }
}

void connection_pool::serve() {
    std::unique_lock lk(_m);
    for (;;) {
        ++_idle;
        const bool woken = _cv.wait_for(lk, _idle_for, [&] { return _stop || !_jobs.empty(); });
        --_idle;
        if (_jobs.empty()) {
            if (_stop || (!woken && _threads.size() > _keep)) {
                break;
            }
            continue;
        }
        auto fn = std::move(_jobs.front());
        _jobs.pop_front();
        ++_running;
        lk.unlock();
        fn();
        fn = nullptr; // what it holds goes outside the lock too
        lk.lock();
        --_running;
    }
    if (!_stop) {
        // Idle: it leaves, and whoever comes next joins it.
        auto it = _threads.find(std::this_thread::get_id());
        _exited.push_back(std::move(it->second));
        _threads.erase(it);
    }
}

void connection_pool::join_exited(std::unique_lock<std::mutex>& lk) {
    if (_exited.empty()) {
        return;
    }
    auto gone = std::move(_exited);
    _exited.clear();
    lk.unlock();
    for (auto& t : gone) {
        t.join();
    }
    lk.lock();
}

void connection_pool::shutdown() {
    std::unique_lock lk(_m);
    _stop = true;
    _cv.notify_all();
    auto all = std::move(_threads);
    _threads.clear();
    auto gone = std::move(_exited);
    _exited.clear();
    lk.unlock();
    for (auto& [id, t] : all) {
        t.join();
    }
    for (auto& t : gone) {
        t.join();
    }
    // Those no thread could be made for: served here, so that their
    // connections are answered (or at least closed).
    lk.lock();
    while (!_jobs.empty()) {
        auto fn = std::move(_jobs.front());
        _jobs.pop_front();
        lk.unlock();
        fn();
        fn = nullptr;
        lk.lock();
    }
}

connection_pool::counts connection_pool::now() const {
    std::lock_guard lk(_m);
    return {_threads.size(), _running, _jobs.size(), _turned_away};
}

} // namespace llmosd
