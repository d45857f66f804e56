// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <llmos/device.hh>
#include <llmos/result.hh>
#include <llmos/unique_fd.hh>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace llmos {

class event_loop;
namespace detail {
struct async_dispatch;
}

/// What a request carries (LLMOS_IOC_SUBMIT).
struct submit_options {
    uint32_t tenant = 0;
    uint32_t priority = 0; ///< 0..255, higher first within the tenant
    uint32_t cost = 1;     ///< expected tokens
    uint64_t deadline_ns = 0;
    uint64_t ms_id = 0;
    uint64_t prompt_off = 0;
    uint64_t prompt_len = 0;
};

/// A request as a worker receives it (struct llmos_req_desc).
struct request_desc {
    uint64_t id = 0;
    uint32_t tenant = 0;
    uint32_t priority = 0;
    uint32_t cost = 0;
    uint32_t requeues = 0;
    uint64_t deadline_ns = 0;
    uint64_t ms_id = 0;
    uint64_t prompt_off = 0;
    uint64_t prompt_len = 0;
    uint64_t submit_ns = 0;
};

/// A finished request as its client collects it (struct llmos_wait).
struct finished_request {
    uint64_t id = 0;
    uint32_t state = 0; ///< LLMOS_REQ_COMPLETED, _FAILED or _CANCELLED
    int32_t status = 0;
    uint32_t tokens = 0;
    uint64_t result_off = 0;
    uint64_t result_len = 0;
    uint64_t submit_ns = 0;
    /// When the worker holding it as it ended took it; 0 when none held it
    /// (cancelled in its queue, even after a worker had it once).
    uint64_t dispatch_ns = 0;
    uint64_t end_ns = 0;
};

/// How long DISPATCH and WAIT may block: not at all, up to a limit, or
/// until something comes.
struct wait_for {
    bool block = true;
    std::optional<std::chrono::milliseconds> limit;

    static wait_for none() { return {false, std::nullopt}; }
    static wait_for forever() { return {true, std::nullopt}; }
    static wait_for at_most(std::chrono::milliseconds ms) { return {true, ms}; }
};

/// A client of the scheduler: submits requests and collects them. With the
/// kernel backend, an open /dev/llmos of its own; with the local backend, a
/// client of the process's in-process scheduler. Move-only; destroying it
/// cancels its unfinished requests.
class sched_client {
    backend_kind _kind;
    unique_fd _fd;   // kernel: /dev/llmos; local: the store's folder
    uint64_t _local; // local: client handle

    friend class sched_worker;
    sched_client(backend_kind k, unique_fd fd, uint64_t local)
        : _kind(k)
        , _fd(std::move(fd))
        , _local(local) {}

public:
    sched_client(sched_client&& o) noexcept;
    sched_client& operator=(sched_client&& o) noexcept;
    ~sched_client();

    /// A new client on `dev`'s backend.
    static result<sched_client> open(const device& dev);

    /// SUBMIT: the new request's id. Errors: EINVAL (also: the prompt is
    /// not inside the mindspace), ENOENT and EACCES (a mindspace the caller
    /// cannot open read-write: a worker would read and write it), EAGAIN
    /// (per-client limit), ENOMEM.
    result<uint64_t> submit(const submit_options& o);
    /// CANCEL. Errors: ENOENT, EALREADY, EPERM.
    std::error_code cancel(uint64_t id);
    /// WAIT: collect `id` (0: the oldest finished). Errors: ENOENT (not
    /// ours, or nothing outstanding), EAGAIN (none ready, without
    /// blocking), ETIMEDOUT. A wait that a signal interrupts goes on.
    result<finished_request> wait(uint64_t id = 0, wait_for w = wait_for::forever());

    backend_kind kind() const noexcept { return _kind; }
    /// The kernel backend's /dev/llmos fd (-1 for the local backend).
    int fd() const noexcept { return _kind == backend_kind::kernel ? _fd.get() : -1; }
};

/// A worker: a client that takes requests. Move-only; destroying it gives
/// back what it held (to the front of its tenant) and cancels what it
/// submitted itself.
class sched_worker {
    sched_client _c;
    uint64_t _id;
    uint32_t _capacity;
    std::shared_ptr<detail::async_dispatch> _async; // dispatch_async's state

    sched_worker(sched_client c, uint64_t id, uint32_t cap)
        : _c(std::move(c))
        , _id(id)
        , _capacity(cap) {}
    void end_dispatch() noexcept;

public:
    sched_worker(sched_worker&&) noexcept = default;
    /// Cancels this worker's pending dispatch_async first, as the
    /// destructor does.
    sched_worker& operator=(sched_worker&& o);
    /// Cancels a pending dispatch_async first (destroy it on the thread
    /// of that loop). On the kernel backend it sends the cancel again
    /// until the command's completion is in the loop's ring (2 s at most),
    /// which the loop then reaps, running `done`.
    ~sched_worker();

    /// WORKER_REGISTER on a new client. Errors: EINVAL (capacity).
    static result<sched_worker> open(const device& dev, uint32_t capacity, int numa_node = -1,
                                     uint64_t model = 0);

    /// DISPATCH: up to `max` requests (at least one unless it fails).
    /// Errors: EAGAIN (none, without blocking), ETIMEDOUT, EINVAL.
    result<std::vector<request_desc>> dispatch(uint32_t max, wait_for w = wait_for::forever());
    using dispatch_callback = std::function<void(result<std::vector<request_desc>>)>;
    /// DISPATCH without blocking the thread: `done` runs on `loop`'s thread
    /// (inside its run_once) with at least one request, or an error
    /// (ECANCELED after cancel_dispatch()). The kernel backend sends a
    /// uring_cmd on the loop's ring; the local one has the in-process
    /// scheduler ring the loop's doorbell when work may be there. One at
    /// a time (EBUSY); the loop must outlive it. Call on the loop's thread.
    /// A worker destroyed or assigned over cancels it: on the kernel
    /// backend `done` then still runs, from the loop, after the worker has
    /// gone (with ECANCELED, or requests it took, which the closed worker
    /// gave back already): what it uses must outlive the worker.
    std::error_code dispatch_async(event_loop& loop, uint32_t max, dispatch_callback done);
    /// Ends a pending dispatch_async: its callback gets ECANCELED (at once
    /// on the local backend, from the loop on the kernel one). Requests it
    /// already took are not lost: the callback gets them instead.
    void cancel_dispatch();
    /// Is a dispatch_async pending?
    bool dispatch_pending() const noexcept;

    /// START. Errors: ENOENT, ESRCH (not held), EINVAL (not DISPATCHED).
    std::error_code start(uint64_t id);
    /// COMPLETE (status 0, or a negative errno for a failure).
    std::error_code complete(uint64_t id, int32_t status, uint32_t tokens, uint64_t result_off = 0,
                             uint64_t result_len = 0);
    /// Hands a request back unfinished (COMPLETE with
    /// LLMOS_COMPLETE_RETURN): queued again at the front of its tenant, for
    /// any worker, its requeues not counted (closing the worker counts
    /// them: it may have crashed). Errors: ENOENT, ESRCH (not held, or
    /// finished), EINVAL (a module without LLMOS_FEATURE_SCHED_RETURN).
    std::error_code give_back(uint64_t id);

    uint64_t id() const noexcept { return _id; }
    uint32_t capacity() const noexcept { return _capacity; }
    sched_client& client() noexcept { return _c; }
};

struct tenant_stats {
    uint32_t tenant = 0;
    uint32_t weight = 0;
    uint32_t queued = 0;
    uint64_t served_reqs = 0;
    uint64_t served_tokens = 0;
};

struct sched_stats {
    uint64_t nr[8] = {}; ///< requests in each state (index: enum llmos_req_state)
    uint64_t submitted = 0;
    uint64_t dispatched = 0;
    uint64_t completed = 0;
    uint64_t failed = 0;
    uint64_t cancelled = 0;
    uint64_t requeued = 0;
    uint32_t workers = 0;
    uint32_t clients = 0;
    uint64_t lat_hist[32] = {}; ///< dispatch latency, log2 units of 1024 ns
    std::vector<tenant_stats> tenants;
    uint32_t policy_state = 0; ///< enum llmos_policy_state
    std::string policy;        ///< the attached (or last) BPF policy
    uint32_t exit_kind = 0;    ///< enum llmos_exit_kind of its last stop
    int64_t exit_code = 0;
    uint64_t exit_req = 0;
    uint64_t ejections = 0;
    std::string exit_msg;
};

/// STATS.
result<sched_stats> scheduler_stats(const device& dev);
/// SET_WEIGHT (CAP_SYS_ADMIN with the kernel backend). Errors: EINVAL, EPERM.
std::error_code set_tenant_weight(const device& dev, uint32_t tenant, uint32_t weight);

/// The tenants a uid may name in its requests, and whether it may register
/// workers (TENANT_GRANT).
struct tenant_grant {
    uint32_t first = 0;
    uint32_t last = 0;
    bool granted = false; ///< a range an admin set; false: the uid's own tenant
    bool admin = false;   ///< the caller has CAP_SYS_ADMIN: it names any tenant
    /// The uid may register workers (granted LLMOS_GRANT_WORKER, or a module
    /// before ABI 1.3, or the local backend, where anyone may). A caller
    /// with `admin` registers them whatever this says.
    bool worker = false;
};

/// The tenants `uid` (LLMOS_UID_SELF: the caller's) may name; another uid
/// needs CAP_SYS_ADMIN. With the local backend, which keeps no users apart,
/// every process names any tenant: 0..UINT32_MAX. Errors: EINVAL, EPERM,
/// ENOTTY (a module before ABI 1.2, where anyone names any tenant).
result<tenant_grant> tenant_grant_of(const device& dev, uint32_t uid);
/// Let `uid` name the tenants `first`..`last` instead of its own, and
/// register workers when `worker` (CAP_SYS_ADMIN). Without `worker` the
/// uid loses that right. Errors: EINVAL, EPERM, ENOTTY; ENOTSUP with the
/// local backend.
result<tenant_grant> grant_tenants(const device& dev, uint32_t uid, uint32_t first, uint32_t last,
                                   bool worker = false);
/// Back to the uid's own tenant, with no worker right (CAP_SYS_ADMIN).
/// Errors: as grant_tenants().
result<tenant_grant> reset_tenant_grant(const device& dev, uint32_t uid);

} // namespace llmos
