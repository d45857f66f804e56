// SPDX-License-Identifier: MIT
#include "local_sched.hh"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <linux/llmos.h>
#include <list>
#include <llmos/event_loop.hh>
#include <memory>
#include <mutex>
#include <time.h>
#include <unordered_map>

extern "C" {
#include "llmos_core.h"
}

namespace llmos::local_sched {

namespace {

constexpr uint32_t max_client_requests = 65536;

std::error_code err(std::errc e) {
    return std::make_error_code(e);
}

std::error_code from_core(int ret) {
    return {-ret, std::system_category()};
}

uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

struct req;

struct client {
    uint64_t id = 0;
    llmos_core_worker worker{};
    bool is_worker = false;
    std::unordered_map<uint64_t, std::unique_ptr<req>> reqs; // not collected
    std::list<uint64_t> done;                                // finished, oldest first
    std::condition_variable cv;
};

struct req {
    llmos_core_req core{}; // first: the core hands back &core
    client* owner = nullptr;
    uint64_t ms_len = 0; // its mindspace's, which results lie inside
    std::list<uint64_t>::iterator done_it;
};

bool finished(const llmos_core_req& r) {
    return r.state == LLMOS_REQ_COMPLETED || r.state == LLMOS_REQ_FAILED ||
           r.state == LLMOS_REQ_CANCELLED;
}

class scheduler {
public:
    std::mutex m; // everything below
    llmos_core_sched core{};
    std::condition_variable work_cv; // workers waiting in dispatch
    std::unordered_map<uint64_t, std::unique_ptr<client>> clients;
    std::deque<std::unique_ptr<llmos_core_tenant>> tenants;
    uint64_t last_client = 0;
    uint32_t workers = 0;
    uint64_t work_gen = 0;        // bumped whenever a worker may find work
    std::vector<doorbell*> bells; // event loops of workers waiting without a thread

    scheduler() {
        llmos_core_init(&core);
        core.max_tenants = max_tenants; // the kernel module's default
    }
    ~scheduler() {
        while (llmos_core_tenant_pop(&core)) {
        }
    }

    client* find_client(uint64_t id) {
        auto it = clients.find(id);
        return it == clients.end() ? nullptr : it->second.get();
    }
    req* find_req(uint64_t id) {
        auto* r = llmos_core_find(&core, id);
        return r ? reinterpret_cast<req*>(r) : nullptr;
    }
    // A spare for `tenant` when the core would make it one: kept by us
    // whether used or not. At the limit the core takes an idle tenant's
    // place instead.
    llmos_core_tenant* spare_for(uint32_t tenant) {
        if (llmos_core_tenant_find(&core, tenant) ||
            (core.max_tenants && core.tenants.nr >= core.max_tenants)) {
            return nullptr;
        }
        tenants.push_back(std::make_unique<llmos_core_tenant>());
        return tenants.back().get();
    }
    static constexpr uint32_t max_tenants = 65536;
    // Work may be there for a worker: wake the blocked ones and ring the
    // loops of the ones that wait in an event loop.
    void work_changed() {
        ++work_gen;
        work_cv.notify_all();
        for (auto* b : bells) {
            ring_doorbell(*b);
        }
    }
    // A node for notify(), made before the core records that `r` ended:
    // once it has, nothing may throw (the caller would take the request
    // for not ended, and its done_it would stay invalid).
    static std::list<uint64_t> done_node(const req* r) { return {r->core.id}; }
    void notify(req* r, std::list<uint64_t>& node) noexcept {
        auto* c = r->owner;
        c->done.splice(c->done.end(), node);
        r->done_it = std::prev(c->done.end());
        c->cv.notify_all();
    }
    void free_req(client* c, req* r) {
        llmos_core_release(&core, &r->core);
        c->reqs.erase(r->core.id);
    }
};

scheduler& sched() {
    static scheduler s;
    return s;
}

// A worker's command on request `id` (under s.m): the worker and the
// request, or EBADF (a moved-from handle), EINVAL (not a worker, or
// `args_ok` false), ENOENT, in that order, as the module answers.
struct held {
    client* c;
    req* r;
};
result<held> worker_request(scheduler& s, uint64_t cid, uint64_t id, bool args_ok = true) {
    auto* c = s.find_client(cid);
    if (!c) {
        return err(std::errc::bad_file_descriptor);
    }
    if (!c->is_worker || !args_ok) {
        return err(std::errc::invalid_argument);
    }
    auto* r = s.find_req(id);
    if (!r) {
        return err(std::errc::no_such_file_or_directory);
    }
    return held{c, r};
}

// Waits on `cv` until `ready` or the limit; false on timeout.
template <typename Ready>
bool wait_until(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, const wait_for& w,
                Ready ready) {
    if (w.limit) {
        return cv.wait_for(lk, *w.limit, ready);
    }
    cv.wait(lk, ready);
    return true;
}

} // namespace

uint64_t open_client() {
    auto& s = sched();
    std::lock_guard g(s.m);
    auto c = std::make_unique<client>();
    c->id = ++s.last_client;
    auto id = c->id;
    s.clients.emplace(id, std::move(c));
    return id;
}

void close_client(uint64_t cid) {
    auto& s = sched();
    std::lock_guard g(s.m);
    auto* c = s.find_client(cid);
    if (!c) {
        return;
    }
    if (c->is_worker) {
        if (llmos_core_worker_remove(&s.core, &c->worker)) {
            s.work_changed();
        }
        s.workers--;
    }
    bool held = false; // a worker has room again
    for (auto& [id, r] : c->reqs) {
        if (!finished(r->core)) {
            held = held || r->core.worker;
            llmos_core_cancel(&s.core, &r->core, now_ns());
        }
        llmos_core_release(&s.core, &r->core);
    }
    s.clients.erase(cid);
    if (held) {
        s.work_changed();
    }
}

result<uint64_t> submit(uint64_t cid, const submit_options& o, uint64_t ms_len) {
    if (o.priority > LLMOS_MAX_PRIORITY) {
        return err(std::errc::invalid_argument);
    }
    auto& s = sched();
    std::lock_guard g(s.m);
    auto* c = s.find_client(cid);
    if (!c) {
        return err(std::errc::bad_file_descriptor); // a moved-from handle
    }
    if (c->reqs.size() >= max_client_requests) {
        return err(std::errc::resource_unavailable_try_again);
    }
    auto r = std::make_unique<req>();
    r->owner = c;
    r->core.tenant = o.tenant;
    r->core.prio = static_cast<uint8_t>(o.priority);
    r->core.cost = o.cost;
    r->core.deadline_ns = o.deadline_ns;
    r->core.ms_id = o.ms_id;
    r->core.prompt_off = o.prompt_off;
    r->core.prompt_len = o.prompt_len;
    r->ms_len = ms_len;
    llmos_core_tenant* spare = s.spare_for(o.tenant);
    if (int ret = llmos_core_submit(&s.core, &r->core, &spare, now_ns())) {
        return from_core(ret);
    }
    auto id = r->core.id;
    c->reqs.emplace(id, std::move(r));
    s.work_changed();
    return id;
}

std::error_code cancel(uint64_t cid, uint64_t id) {
    auto& s = sched();
    std::lock_guard g(s.m);
    if (!s.find_client(cid)) {
        return err(std::errc::bad_file_descriptor); // a moved-from handle
    }
    auto* r = s.find_req(id);
    if (!r) {
        return err(std::errc::no_such_file_or_directory);
    }
    if (r->owner->id != cid) {
        return err(std::errc::no_such_file_or_directory); // as the module says
    }
    const bool held = r->core.worker; // its worker has room again
    auto node = scheduler::done_node(r);
    if (int ret = llmos_core_cancel(&s.core, &r->core, now_ns())) {
        return from_core(ret);
    }
    s.notify(r, node);
    if (held) {
        s.work_changed();
    }
    return {};
}

result<finished_request> wait(uint64_t cid, uint64_t id, wait_for w) {
    auto& s = sched();
    std::unique_lock lk(s.m);
    auto* c = s.find_client(cid);
    if (!c) {
        return err(std::errc::bad_file_descriptor); // a moved-from handle
    }
    req* picked = nullptr;
    std::error_code ec;
    auto pick = [&] {
        ec = {};
        if (!id) {
            if (c->reqs.empty()) {
                ec = err(std::errc::no_such_file_or_directory);
                return true;
            }
            if (c->done.empty()) {
                return false;
            }
            picked = c->reqs.at(c->done.front()).get();
            return true;
        }
        auto* r = s.find_req(id);
        if (!r || r->owner != c) {
            ec = err(std::errc::no_such_file_or_directory);
            return true;
        }
        picked = finished(r->core) ? r : nullptr;
        return picked != nullptr;
    };
    if (!pick()) {
        if (!w.block) {
            return err(std::errc::resource_unavailable_try_again);
        }
        if (!wait_until(lk, c->cv, w, pick)) {
            return err(std::errc::timed_out);
        }
    }
    if (ec) {
        return ec;
    }
    const auto& r = picked->core;
    finished_request f{r.id,         r.state,    r.status,     r.tokens, r.result_off,
                       r.result_len, r.t_submit, r.t_dispatch, r.t_end};
    c->done.erase(picked->done_it);
    s.free_req(c, picked);
    return f;
}

result<uint64_t> register_worker(uint64_t cid, uint32_t capacity, int numa_node, uint64_t model) {
    if (!capacity || capacity > LLMOS_MAX_CAPACITY || numa_node < -1) {
        return err(std::errc::invalid_argument);
    }
    auto& s = sched();
    std::lock_guard g(s.m);
    auto* c = s.find_client(cid);
    if (!c) {
        return err(std::errc::bad_file_descriptor); // a moved-from handle
    }
    if (c->is_worker) {
        return err(std::errc::device_or_resource_busy);
    }
    c->worker.capacity = capacity;
    c->worker.numa_node = numa_node;
    c->worker.model = model;
    c->worker.owner = c;
    llmos_core_worker_add(&s.core, &c->worker);
    c->is_worker = true;
    s.workers++;
    return c->worker.id;
}

result<std::vector<request_desc>> dispatch(uint64_t cid, uint32_t max, wait_for w) {
    if (!max || max > LLMOS_MAX_DISPATCH) {
        return err(std::errc::invalid_argument);
    }
    auto& s = sched();
    std::unique_lock lk(s.m);
    auto* c = s.find_client(cid);
    if (!c) {
        return err(std::errc::bad_file_descriptor); // a moved-from handle
    }
    if (!c->is_worker) {
        return err(std::errc::invalid_argument);
    }
    // All the memory first: once the core has marked requests taken by
    // this worker, a throw would leave them held by a worker that never
    // learns of them (only closing it gives them back, counted).
    std::vector<llmos_core_req*> got(max);
    std::vector<request_desc> out;
    out.reserve(max);
    uint32_t n = 0;
    auto take = [&] {
        n = llmos_core_dispatch(&s.core, &c->worker, got.data(), max, now_ns());
        return n > 0;
    };
    if (!take()) {
        if (!w.block) {
            return err(std::errc::resource_unavailable_try_again);
        }
        if (!wait_until(lk, s.work_cv, w, take)) {
            return err(std::errc::timed_out);
        }
    }
    for (uint32_t i = 0; i < n; ++i) {
        const auto& r = *got[i];
        out.push_back({r.id, r.tenant, r.prio, r.cost, r.requeues, r.deadline_ns, r.ms_id,
                       r.prompt_off, r.prompt_len, r.t_submit}); // reserved
    }
    return out;
}

std::error_code start(uint64_t cid, uint64_t id) {
    auto& s = sched();
    std::lock_guard g(s.m);
    auto h = worker_request(s, cid, id);
    if (!h) {
        return h.error();
    }
    if (int ret = llmos_core_start(&s.core, &h->c->worker, &h->r->core, now_ns())) {
        return from_core(ret);
    }
    return {};
}

std::error_code complete(uint64_t cid, uint64_t id, int32_t status, uint32_t tokens,
                         uint64_t result_off, uint64_t result_len) {
    auto& s = sched();
    std::lock_guard g(s.m);
    auto h = worker_request(s, cid, id, status <= 0 && status >= -4095); // as the module
    if (!h) {
        return h.error();
    }
    auto* c = h->c;
    auto* r = h->r;
    // The result lies inside the request's mindspace, if it has one (asked
    // of a request this worker holds; the core says why another cannot be
    // completed).
    if (r->core.worker == &c->worker &&
        (r->core.state == LLMOS_REQ_DISPATCHED || r->core.state == LLMOS_REQ_RUNNING) &&
        r->core.ms_id && result_len &&
        (result_off > r->ms_len || result_len > r->ms_len - result_off)) {
        return err(std::errc::invalid_argument);
    }
    auto node = scheduler::done_node(r);
    if (int ret = llmos_core_complete(&s.core, &c->worker, &r->core, status, tokens, result_off,
                                      result_len, now_ns())) {
        return from_core(ret);
    }
    s.notify(r, node);
    s.work_changed(); // this worker has room again
    return {};
}

std::error_code give_back(uint64_t cid, uint64_t id) {
    auto& s = sched();
    std::lock_guard g(s.m);
    auto h = worker_request(s, cid, id);
    if (!h) {
        return h.error();
    }
    if (int ret = llmos_core_give_back(&s.core, &h->c->worker, &h->r->core)) {
        return from_core(ret);
    }
    s.work_changed(); // work again, and room
    return {};
}

sched_stats stats() {
    auto& s = sched();
    std::lock_guard g(s.m);
    sched_stats st;
    const auto& c = s.core.stats;
    std::memcpy(st.nr, c.nr, sizeof(c.nr));
    st.submitted = c.submitted;
    st.dispatched = c.dispatched;
    st.completed = c.completed;
    st.failed = c.failed;
    st.cancelled = c.cancelled;
    st.requeued = c.requeued;
    st.workers = s.workers;
    st.clients = static_cast<uint32_t>(s.clients.size());
    std::memcpy(st.lat_hist, c.lat_hist, sizeof(c.lat_hist));
    for (auto* t = llmos_core_tenant_next(&s.core, nullptr); t;
         t = llmos_core_tenant_next(&s.core, t)) {
        st.tenants.push_back({t->id, t->weight, t->queued, t->served_reqs, t->served_tokens});
    }
    return st;
}

std::error_code set_weight(uint32_t tenant, uint32_t weight) {
    if (!weight || weight > LLMOS_MAX_WEIGHT) {
        return err(std::errc::invalid_argument);
    }
    auto& s = sched();
    std::lock_guard g(s.m);
    llmos_core_tenant* spare = s.spare_for(tenant);
    return from_core(llmos_core_set_weight(&s.core, tenant, weight, &spare));
}

} // namespace llmos::local_sched

namespace llmos::local_sched {

uint64_t work_generation() {
    auto& s = sched();
    std::lock_guard g(s.m);
    return s.work_gen;
}

void watch_work(doorbell& b, bool on) {
    auto& s = sched();
    std::lock_guard g(s.m);
    // Counted: two dispatches waiting on one loop watch its bell twice,
    // and the first to finish must not stop the other's wake-ups.
    if (on) {
        s.bells.push_back(&b);
    } else if (auto it = std::find(s.bells.begin(), s.bells.end(), &b); it != s.bells.end()) {
        s.bells.erase(it);
    }
}

} // namespace llmos::local_sched
