// SPDX-License-Identifier: MIT
#include "local.hh"
#include "local_sched.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <liburing.h>
#include <linux/llmos.h>
#include <llmos/event_loop.hh>
#include <llmos/sched.hh>
#include <new>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <thread>

namespace llmos {

namespace {

std::error_code ioctl_err(int fd, unsigned long cmd, void* arg) {
    return ::ioctl(fd, cmd, arg) != 0 ? last_error() : std::error_code{};
}

uint32_t flags_of(const wait_for& w) {
    return w.block ? 0 : LLMOS_NONBLOCK;
}

uint32_t timeout_of(const wait_for& w) {
    if (!w.block || !w.limit) {
        return 0;
    }
    auto ms = w.limit->count();
    return ms <= 0 ? 1 : static_cast<uint32_t>(std::min<int64_t>(ms, UINT32_MAX));
}

// A limit past any clock's reach (now + it would overflow) is no limit:
// waiting "300 years" must not time out at once.
wait_for bounded(wait_for w) {
    constexpr auto far = std::chrono::hours(24 * 365 * 100);
    if (w.limit && *w.limit > far) {
        w.limit.reset();
    }
    return w;
}

// Whether a blocking ioctl that ended with `ec` waits on: a signal or
// task work came, or the module's longest wait (49.7 days) ended before
// `w`'s deadline.
bool wait_on(std::error_code ec, const wait_for& w,
             std::chrono::steady_clock::time_point deadline) {
    return ec == std::errc::interrupted ||
           (ec == std::errc::timed_out && w.block &&
            (!w.limit || std::chrono::steady_clock::now() < deadline));
}

// What is left of `w` at `deadline` (at least 1 ms, so a limit stays one).
wait_for left_of(const wait_for& w, std::chrono::steady_clock::time_point deadline) {
    if (!w.block || !w.limit) {
        return w;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    return wait_for::at_most(std::max(left, std::chrono::milliseconds(1)));
}

} // namespace

sched_client::sched_client(sched_client&& o) noexcept
    : _kind(o._kind)
    , _fd(std::move(o._fd))
    , _local(std::exchange(o._local, 0)) {
}

sched_client& sched_client::operator=(sched_client&& o) noexcept {
    if (this != &o) {
        if (_local) {
            local_sched::close_client(_local);
        }
        _kind = o._kind;
        _fd = std::move(o._fd);
        _local = std::exchange(o._local, 0);
    }
    return *this;
}

sched_client::~sched_client() {
    if (_local) {
        local_sched::close_client(_local);
    }
}

result<sched_client> sched_client::open(const device& dev) {
    if (dev.kind() == backend_kind::local) {
        // The store, to check the mindspaces requests name.
        unique_fd store{::fcntl(dev.fd(), F_DUPFD_CLOEXEC, 0)};
        if (!store) {
            return last_error();
        }
        return sched_client{backend_kind::local, std::move(store), local_sched::open_client()};
    }
    // A client of its own: requests belong to the open file. The device
    // `dev` has open, not whatever its path names now (a relative path
    // after a chdir, a symbolic link changed since): through /proc when
    // it is there, and checked to be the same device either way.
    const std::string self = "/proc/self/fd/" + std::to_string(dev.fd());
    unique_fd fd{::open(self.c_str(), O_RDWR | O_CLOEXEC)};
    if (!fd && errno == ENOENT) {
        fd = unique_fd{::open(dev.path().c_str(), O_RDWR | O_CLOEXEC)};
    }
    if (!fd) {
        return last_error();
    }
    struct stat have {
    }, got{};
    if (::fstat(dev.fd(), &have) != 0 || ::fstat(fd.get(), &got) != 0) {
        return last_error();
    }
    if (!S_ISCHR(got.st_mode) || got.st_rdev != have.st_rdev) {
        return errc::not_llmos_device;
    }
    return sched_client{backend_kind::kernel, std::move(fd), 0};
}

result<uint64_t> sched_client::submit(const submit_options& o) {
    if (_kind == backend_kind::local) {
        // As the module does: the submitter may open the mindspace
        // read-write (a worker will), and the prompt lies inside it.
        uint64_t ms_len = 0;
        if (o.ms_id) {
            auto ms = local::open(_fd.get(), ms_key{o.ms_id, {}}, false);
            if (!ms) {
                return ms.error();
            }
            ms_len = ms->info.length;
            if (o.prompt_off > ms_len || o.prompt_len > ms_len - o.prompt_off) {
                return std::make_error_code(std::errc::invalid_argument);
            }
        }
        return local_sched::submit(_local, o, ms_len);
    }
    llmos_submit s{};
    s.size = sizeof(s);
    s.tenant = o.tenant;
    s.priority = o.priority;
    s.cost = o.cost;
    s.deadline_ns = o.deadline_ns;
    s.ms_id = o.ms_id;
    s.prompt_off = o.prompt_off;
    s.prompt_len = o.prompt_len;
    if (auto ec = ioctl_err(_fd.get(), LLMOS_IOC_SUBMIT, &s)) {
        return ec;
    }
    return static_cast<uint64_t>(s.out_id);
}

std::error_code sched_client::cancel(uint64_t id) {
    if (_kind == backend_kind::local) {
        return local_sched::cancel(_local, id);
    }
    llmos_cancel c{};
    c.size = sizeof(c);
    c.id = id;
    return ioctl_err(_fd.get(), LLMOS_IOC_CANCEL, &c);
}

result<finished_request> sched_client::wait(uint64_t id, wait_for w) {
    w = bounded(w);
    if (_kind == backend_kind::local) {
        return local_sched::wait(_local, id, w);
    }
    llmos_wait c{};
    const auto deadline = w.limit ? std::chrono::steady_clock::now() + *w.limit
                                  : std::chrono::steady_clock::time_point::max();
    for (;;) {
        c = {};
        c.size = sizeof(c);
        c.id = id;
        c.flags = flags_of(w);
        c.timeout_ms = timeout_of(left_of(w, deadline));
        auto ec = ioctl_err(_fd.get(), LLMOS_IOC_WAIT, &c);
        if (wait_on(ec, w, deadline)) {
            continue;
        }
        if (ec) {
            return ec;
        }
        break;
    }
    return finished_request{c.out_id,        c.out_state,       c.out_status,
                            c.out_tokens,    c.out_result_off,  c.out_result_len,
                            c.out_submit_ns, c.out_dispatch_ns, c.out_end_ns};
}

result<sched_worker> sched_worker::open(const device& dev, uint32_t capacity, int numa_node,
                                        uint64_t model) {
    auto c = sched_client::open(dev);
    if (!c) {
        return c.error();
    }
    if (c->_kind == backend_kind::local) {
        auto id = local_sched::register_worker(c->_local, capacity, numa_node, model);
        if (!id) {
            return id.error();
        }
        return sched_worker{std::move(*c), *id, capacity};
    }
    llmos_worker_register r{};
    r.size = sizeof(r);
    r.capacity = capacity;
    r.numa_node = numa_node;
    r.model = model;
    if (auto ec = ioctl_err(c->fd(), LLMOS_IOC_WORKER_REGISTER, &r)) {
        return ec;
    }
    return sched_worker{std::move(*c), r.out_worker_id, capacity};
}

result<std::vector<request_desc>> sched_worker::dispatch(uint32_t max, wait_for w) {
    w = bounded(w);
    if (_c._kind == backend_kind::local) {
        return local_sched::dispatch(_c._local, max, w);
    }
    if (!max || max > LLMOS_MAX_DISPATCH) {
        return std::make_error_code(std::errc::invalid_argument);
    }
    // All the memory first: once the ioctl has taken requests for this
    // worker, a throw would leave them held by a worker that never learns
    // of them (only closing it gives them back, counted).
    std::vector<llmos_req_desc> buf(max);
    std::vector<request_desc> out;
    out.reserve(max);
    llmos_dispatch d{};
    d.size = sizeof(d);
    d.flags = flags_of(w);
    d.descs_uptr = reinterpret_cast<uintptr_t>(buf.data());
    d.desc_size = sizeof(llmos_req_desc);
    d.max = max;
    const auto deadline = w.limit ? std::chrono::steady_clock::now() + *w.limit
                                  : std::chrono::steady_clock::time_point::max();
    for (;;) {
        d.timeout_ms = timeout_of(left_of(w, deadline));
        auto ec = ioctl_err(_c.fd(), LLMOS_IOC_DISPATCH, &d);
        if (wait_on(ec, w, deadline)) {
            continue;
        }
        if (ec) {
            return ec;
        }
        break;
    }
    for (uint32_t i = 0; i < std::min(d.out_count, max); ++i) {
        const auto& b = buf[i];
        out.push_back({b.id, b.tenant, b.priority, b.cost, b.requeues, b.deadline_ns, b.ms_id,
                       b.prompt_off, b.prompt_len, b.submit_ns}); // reserved
    }
    return out;
}

std::error_code sched_worker::start(uint64_t id) {
    if (_c._kind == backend_kind::local) {
        return local_sched::start(_c._local, id);
    }
    llmos_start s{};
    s.size = sizeof(s);
    s.id = id;
    return ioctl_err(_c.fd(), LLMOS_IOC_START, &s);
}

std::error_code sched_worker::complete(uint64_t id, int32_t status, uint32_t tokens,
                                       uint64_t result_off, uint64_t result_len) {
    if (_c._kind == backend_kind::local) {
        return local_sched::complete(_c._local, id, status, tokens, result_off, result_len);
    }
    llmos_complete c{};
    c.size = sizeof(c);
    c.id = id;
    c.status = status;
    c.tokens = tokens;
    c.result_off = result_off;
    c.result_len = result_len;
    return ioctl_err(_c.fd(), LLMOS_IOC_COMPLETE, &c);
}

std::error_code sched_worker::give_back(uint64_t id) {
    if (_c._kind == backend_kind::local) {
        return local_sched::give_back(_c._local, id);
    }
    llmos_complete c{};
    c.size = sizeof(c);
    c.flags = LLMOS_COMPLETE_RETURN;
    c.id = id;
    return ioctl_err(_c.fd(), LLMOS_IOC_COMPLETE, &c);
}

result<sched_stats> scheduler_stats(const device& dev) {
    if (dev.kind() == backend_kind::local) {
        return local_sched::stats();
    }
    std::vector<llmos_tenant_stats> ts(64);
    for (;;) {
        llmos_sched_stats s{};
        s.size = sizeof(s);
        s.tenants_uptr = reinterpret_cast<uintptr_t>(ts.data());
        s.tenant_size = sizeof(llmos_tenant_stats);
        s.tenant_count = static_cast<uint32_t>(ts.size());
        if (auto ec = ioctl_err(dev.fd(), LLMOS_IOC_STATS, &s)) {
            return ec;
        }
        if (s.tenant_count > ts.size()) {
            ts.resize(s.tenant_count + 16); // more appeared: again
            continue;
        }
        sched_stats out;
        std::memcpy(out.nr, s.out_nr, sizeof(out.nr));
        out.submitted = s.out_submitted;
        out.dispatched = s.out_dispatched;
        out.completed = s.out_completed;
        out.failed = s.out_failed;
        out.cancelled = s.out_cancelled;
        out.requeued = s.out_requeued;
        out.workers = s.out_workers;
        out.clients = s.out_clients;
        std::memcpy(out.lat_hist, s.out_lat_hist, sizeof(out.lat_hist));
        out.policy_state = s.out_policy_state;
        out.policy.assign(s.out_policy, strnlen(s.out_policy, sizeof(s.out_policy)));
        out.exit_kind = s.out_exit_kind;
        out.exit_code = s.out_exit_code;
        out.exit_req = s.out_exit_req;
        out.ejections = s.out_ejections;
        out.exit_msg.assign(s.out_exit_msg, strnlen(s.out_exit_msg, sizeof(s.out_exit_msg)));
        for (uint32_t i = 0; i < s.tenant_count; ++i) {
            const auto& t = ts[i];
            out.tenants.push_back({t.tenant, t.weight, t.queued, t.served_reqs, t.served_tokens});
        }
        return out;
    }
}

std::error_code set_tenant_weight(const device& dev, uint32_t tenant, uint32_t weight) {
    if (dev.kind() == backend_kind::local) {
        return local_sched::set_weight(tenant, weight);
    }
    llmos_set_weight w{};
    w.size = sizeof(w);
    w.tenant = tenant;
    w.weight = weight;
    return ioctl_err(dev.fd(), LLMOS_IOC_SET_WEIGHT, &w);
}

namespace {

result<tenant_grant> tenant_grant_cmd(const device& dev, uint32_t flags, uint32_t uid,
                                      uint32_t first, uint32_t last) {
    if (dev.kind() == backend_kind::local) {
        if (flags != 0) {
            return std::make_error_code(std::errc::not_supported);
        }
        return tenant_grant{0, UINT32_MAX, false, false, true};
    }
    // Before ABI 1.3 anyone registers workers, and the flag is unknown.
    const bool worker_grants = (dev.version().features & LLMOS_FEATURE_WORKER_GRANT) != 0;
    if (!worker_grants) {
        flags &= ~uint32_t{LLMOS_GRANT_WORKER};
    }
    llmos_tenant_grant g{};
    g.size = sizeof(g);
    g.flags = flags;
    g.uid = uid;
    g.first = first;
    g.last = last;
    if (auto ec = ioctl_err(dev.fd(), LLMOS_IOC_TENANT_GRANT, &g)) {
        return ec;
    }
    return tenant_grant{g.out_first, g.out_last, g.out_granted != 0, g.out_admin != 0,
                        !worker_grants || g.out_worker != 0};
}

} // namespace

result<tenant_grant> tenant_grant_of(const device& dev, uint32_t uid) {
    return tenant_grant_cmd(dev, 0, uid, 0, 0);
}

result<tenant_grant> grant_tenants(const device& dev, uint32_t uid, uint32_t first, uint32_t last,
                                   bool worker) {
    return tenant_grant_cmd(dev, LLMOS_GRANT_SET | (worker ? uint32_t{LLMOS_GRANT_WORKER} : 0u),
                            uid, first, last);
}

result<tenant_grant> reset_tenant_grant(const device& dev, uint32_t uid) {
    return tenant_grant_cmd(dev, LLMOS_GRANT_RESET, uid, 0, 0);
}

} // namespace llmos

// dispatch_async: a DISPATCH that waits in an event loop, not in a thread.
namespace llmos::detail {

struct async_dispatch final : loop_source, std::enable_shared_from_this<async_dispatch> {
    event_loop* loop = nullptr;
    sched_worker::dispatch_callback done;
    bool waiting = false;
    bool cancelled = false; // cancel_dispatch() came: do not wait again
    uint32_t max = 0;
    // kernel: the command's argument and descriptors, alive until its CQE
    int fd = -1;
    uint64_t user_data = 0; // the command's, while it is in flight
    llmos_dispatch cmd{};
    std::vector<llmos_req_desc> buf;
    std::vector<request_desc> out; // reserved for `max`: on_cqe allocates nothing
    // local: registered as a source of the loop while pending
    uint64_t client = 0;
    uint64_t seen_gen = 0;

    void finish(result<std::vector<request_desc>> r) {
        waiting = false;
        auto cb = std::move(done);
        done = nullptr;
        if (cb) {
            cb(std::move(r));
        }
    }

    // Kernel.
    std::error_code submit_cmd() {
        io_uring_sqe* sqe =
            loop->sqe([self = shared_from_this()](int32_t res, uint32_t) { self->on_cqe(res); });
        if (!sqe) {
            return std::make_error_code(std::errc::resource_unavailable_try_again);
        }
        uint64_t ud = sqe->user_data;
        user_data = ud;
        std::memset(sqe, 0, sizeof(*sqe));
        sqe->opcode = IORING_OP_URING_CMD;
        sqe->fd = fd;
        sqe->cmd_op = LLMOS_IOC_DISPATCH;
        auto* c = reinterpret_cast<llmos_uring_sqe*>(sqe->cmd);
        c->arg_uptr = reinterpret_cast<uintptr_t>(&cmd);
        sqe->user_data = ud;
        io_uring_submit(loop->ring());
        return {};
    }
    // Runs inside the loop's reap(): nothing here throws out of it (what
    // `done` throws aside). A command that took requests hands them over
    // with no allocation: their buffer was reserved when it was sent.
    void on_cqe(int32_t res) {
        if (!waiting) {
            return;
        }
        if (res == 0) {
            // Another taker was first: wait again, unless cancelled (the
            // kick may have beaten the cancel; the fd may be closing).
            if (cancelled) {
                finish(std::make_error_code(std::errc::operation_canceled));
                return;
            }
            std::error_code ec;
            try {
                ec = submit_cmd();
            } catch (...) { // no memory for its completion slot
                ec = std::make_error_code(std::errc::not_enough_memory);
            }
            if (ec) {
                finish(ec);
            }
            return;
        }
        if (res < 0) {
            finish(std::error_code(-res, std::system_category()));
            return;
        }
        std::vector<request_desc> got = std::move(out);
        try {
            got.resize(std::min(static_cast<size_t>(res), buf.size())); // within capacity
        } catch (...) {
            finish(std::make_error_code(std::errc::not_enough_memory));
            return;
        }
        for (size_t i = 0; i < got.size(); ++i) {
            const auto& b = buf[i];
            got[i] = {b.id,          b.tenant, b.priority,   b.cost,       b.requeues,
                      b.deadline_ns, b.ms_id,  b.prompt_off, b.prompt_len, b.submit_ns};
        }
        finish(std::move(got));
    }

    // Kernel: LLMOS_CANCEL_PENDING for this worker's file. It completes a
    // parked command, not one still being issued (on io-wq): that one
    // parks after it, and is cancelled by the next.
    void send_cancel() const noexcept {
        llmos_cancel c{};
        c.size = sizeof(c);
        c.flags = LLMOS_CANCEL_PENDING;
        ::ioctl(fd, LLMOS_IOC_CANCEL, &c);
    }
    // Kernel: is the command's completion in the loop's ring, not reaped
    // yet? (Its task work, which posts it, runs as this thread enters the
    // kernel: io_uring_get_events() does.) Call on the loop's thread.
    bool completion_posted() noexcept {
        io_uring* r = loop->ring();
        io_uring_get_events(r);
        unsigned head = 0;
        io_uring_cqe* cqe = nullptr;
        io_uring_for_each_cqe(r, head, cqe) {
            if (cqe->user_data == user_data) {
                return true;
            }
        }
        return false;
    }

    // Local: the scheduler rings the loop when its work generation moves.
    size_t poll() override {
        uint64_t gen = local_sched::work_generation();
        if (!waiting || gen == seen_gen) {
            return 0;
        }
        seen_gen = gen;
        auto r = local_sched::dispatch(client, max, wait_for::none());
        if (!r && r.error() == std::errc::resource_unavailable_try_again) {
            return 0;
        }
        unwatch();
        finish(std::move(r));
        return 1;
    }
    bool pending() const override { return local_sched::work_generation() != seen_gen; }
    void unwatch() {
        local_sched::watch_work(loop->bell(), false);
        loop->remove_source(*this);
    }
};

} // namespace llmos::detail

namespace llmos {

sched_worker::~sched_worker() {
    end_dispatch();
}

void sched_worker::end_dispatch() noexcept {
    if (!dispatch_pending()) {
        return;
    }
    cancel_dispatch();
    if (_c._kind != backend_kind::kernel) {
        return; // ended at once
    }
    // The cancel again until the command's completion is in the ring: one
    // sent while the command was being issued found nothing parked, and
    // the command would stay parked, holding this worker's file open (and
    // its requests, should it take some) and writing, if it ever took
    // some, into memory its loop may have freed. Not reaped: the loop runs
    // `done` later, as it does after cancel_dispatch(). (A few ms at most;
    // given up after 2 s.)
    auto& a = *_async;
    for (int i = 0; i < 2000 && !a.completion_posted(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        a.send_cancel();
    }
}

sched_worker& sched_worker::operator=(sched_worker&& o) {
    if (this != &o) {
        end_dispatch();
        _c = std::move(o._c);
        _id = o._id;
        _capacity = o._capacity;
        _async = std::move(o._async);
    }
    return *this;
}

bool sched_worker::dispatch_pending() const noexcept {
    return _async && _async->waiting;
}

std::error_code sched_worker::dispatch_async(event_loop& loop, uint32_t max,
                                             dispatch_callback done) {
    if (!max || max > LLMOS_MAX_DISPATCH || !done) {
        return std::make_error_code(std::errc::invalid_argument);
    }
    if (dispatch_pending()) {
        return std::make_error_code(std::errc::device_or_resource_busy);
    }
    if (!_async || _async->loop != &loop) {
        _async = std::make_shared<detail::async_dispatch>();
    }
    auto& a = *_async;
    a.loop = &loop;
    a.max = max;
    a.done = std::move(done);
    a.waiting = true;
    a.cancelled = false;
    // Out of memory here: no dispatch is pending, nothing was taken.
    auto no_memory = [&a] {
        a.waiting = false;
        a.done = nullptr;
        return std::make_error_code(std::errc::not_enough_memory);
    };
    if (_c._kind == backend_kind::local) {
        a.client = _c._local;
        a.seen_gen = local_sched::work_generation() - 1; // look once at least
        try {
            local_sched::watch_work(loop.bell(), true);
        } catch (const std::bad_alloc&) {
            return no_memory();
        }
        try {
            loop.add_source(a);
        } catch (const std::bad_alloc&) {
            local_sched::watch_work(loop.bell(), false);
            return no_memory();
        }
        return {};
    }
    a.fd = _c.fd();
    try {
        a.buf.resize(max);
        a.out.clear();
        a.out.reserve(max);
    } catch (const std::bad_alloc&) {
        return no_memory();
    }
    a.cmd = {};
    a.cmd.size = sizeof(a.cmd);
    a.cmd.descs_uptr = reinterpret_cast<uintptr_t>(a.buf.data());
    a.cmd.desc_size = sizeof(llmos_req_desc);
    a.cmd.max = max;
    std::error_code sent;
    try {
        sent = a.submit_cmd();
    } catch (const std::bad_alloc&) {
        return no_memory();
    }
    if (auto ec = sent) {
        a.waiting = false;
        a.done = nullptr;
        return ec;
    }
    return {};
}

void sched_worker::cancel_dispatch() {
    if (!dispatch_pending()) {
        return;
    }
    if (_c._kind == backend_kind::local) {
        _async->unwatch();
        _async->finish(std::make_error_code(std::errc::operation_canceled));
        return;
    }
    // The pending command completes with ECANCELED, or with what it took
    // if it was just completing; either way its CQE reaches the callback.
    _async->cancelled = true;
    _async->send_cancel();
}

} // namespace llmos
