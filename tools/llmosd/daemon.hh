// SPDX-License-Identifier: MIT
//
// llmosd's core, apart from HTTP: the loaded models, the worker pool that
// serves them all, sessions, and running one job from submission to its
// last streamed piece.
#pragma once

#include "openai.hh"
#include "session.hh"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <llmos/device.hh>
#include <llmos/engine/chat.hh>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/vocab.hh>
#include <llmos/kv_pool.hh>
#include <llmos/llm_engine.hh>
#include <llmos/mindspace.hh>
#include <llmos/sched.hh>
#include <llmos/worker_pool.hh>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <semaphore>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace llmosd {

struct options {
    std::vector<std::pair<std::string, std::string>> models; ///< name, path
    std::string backend = "auto";                            ///< auto, local, kernel
    unsigned workers = 1;
    int threads = 0; ///< per worker; 0: the CPUs divided among the workers
    /// How quantized weights meet the activations (engine/matmul.hh).
    llmos::engine::act_precision activations = llmos::engine::act_precision::int8;
    uint32_t slots = 8;
    uint32_t ctx = 4096; ///< tokens a sequence may hold
    uint32_t default_max_tokens = 256;
    uint32_t max_queue = 64; ///< requests in flight before 429
    /// Requests one tenant may have in flight before its next gets 429 (0:
    /// no limit of its own, only --max-queue).
    uint32_t max_queue_per_tenant = 0;
    uint32_t max_connections = 1024; ///< HTTP connections served at once (a thread each)
    /// Sessions kept at once (each a persistent mindspace with a whole
    /// context's cache): a new one past it gets 403 (0: no limit).
    uint32_t max_sessions = 1024;
    /// Sessions one tenant may keep: its new one past them gets 403 (0: no
    /// limit of its own).
    uint32_t max_sessions_per_tenant = 0;
    /// A session no request has used for longer is ended (0: never).
    std::chrono::seconds session_idle_timeout{0};
    size_t max_body = 1 << 20;
    std::chrono::seconds header_timeout{30}; ///< a request's line and headers
    std::chrono::seconds body_timeout{60};   ///< a request's body, whole
    std::chrono::seconds request_timeout{300};
    std::string api_key_file;
    /// Web origins ("https://chat.example.com", or "*") whose pages may
    /// use the API without API keys, besides the server's own.
    std::vector<std::string> allowed_origins;
    /// Host names llmosd on TCP without API keys answers to, besides
    /// localhost and IP addresses (DNS rebinding: a page's own name made
    /// to lead to this server's address names it otherwise).
    std::vector<std::string> allowed_hosts;
    /// Where models run: "cpu", "cuda" / "cuda:N" (refused with the
    /// reason when that GPU cannot be used), or "auto" (cuda:0 when it
    /// can be, else the CPU).
    std::string engine = "cpu";
    /// Bytes of GPU memory for KV caches, all conversations together (0:
    /// half the device's memory).
    uint64_t gpu_kv_bytes = 0;
    /// Each session's K/V rows on the GPU are also a module mindspace
    /// (llmosd.k.NAME) over their dma-buf, for peer devices: needs the GPU
    /// engine, the kernel backend and a driver that exports dma-bufs.
    bool publish_gpu_kv = false;
};

struct model_entry {
    uint32_t id = 0;
    std::string name, path;
    std::unique_ptr<llmos::engine::gguf_file> file;
    std::unique_ptr<llmos::engine::model> model;
    std::unique_ptr<llmos::engine::vocab> vocab;
    std::unique_ptr<llmos::engine::cuda_model> cuda; ///< its weights on the GPU, when on one
    int64_t created = 0;
    std::atomic<uint32_t> in_flight{0};
};

/// Time histogram in Prometheus' shape.
struct histogram {
    static constexpr double bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    std::atomic<uint64_t> counts[std::size(bounds) + 1] = {};
    std::atomic<uint64_t> n{0};
    std::atomic<uint64_t> sum_us{0};
    void observe(double seconds);
    void write(std::string& out, const std::string& name, const std::string& help) const;
};

struct metrics {
    std::atomic<uint64_t> requests{0}, ok{0}, client_errors{0}, server_errors{0}, rejected{0},
        cancelled{0}, timed_out{0};
    std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0};
    std::atomic<uint64_t> worker_prompt_tokens{0};    ///< as the workers tokenized them
    std::atomic<uint64_t> worker_generated_tokens{0}; ///< as the workers made them
    // The GPU engines' CUDA graphs, all workers together.
    std::atomic<uint64_t> graph_replays{0}, graph_captures{0}, graph_capture_failures{0};
    std::atomic<uint64_t> session_overflows{0};
    std::atomic<uint64_t> sessions_expired{0}; ///< ended by --session-idle-timeout
    histogram latency, ttft;
};

/// One request of a session at a time: its turn is taken and left.
class session_gate {
public:
    bool try_enter() {
        std::lock_guard lk(_m);
        return !std::exchange(_busy, true);
    }
    /// Waits up to `d` for the turn: false if it did not come.
    bool enter_for(std::chrono::milliseconds d) {
        std::unique_lock lk(_m);
        if (!_cv.wait_for(lk, d, [&] { return !_busy; })) {
            return false;
        }
        _busy = true;
        return true;
    }
    void leave() {
        {
            std::lock_guard lk(_m);
            _busy = false;
        }
        _cv.notify_one();
    }

private:
    std::mutex _m;
    std::condition_variable _cv;
    bool _busy = false;
};

/// A session's turn, held until it goes.
class session_turn {
public:
    session_turn() = default;
    explicit session_turn(std::shared_ptr<session_gate> g) noexcept
        : _g(std::move(g)) {}
    session_turn(session_turn&& o) noexcept
        : _g(std::move(o._g)) {}
    session_turn& operator=(session_turn&& o) noexcept {
        if (this != &o) {
            release();
            _g = std::move(o._g);
        }
        return *this;
    }
    ~session_turn() { release(); }

private:
    void release() noexcept {
        if (_g) {
            _g->leave();
            _g.reset();
        }
    }
    std::shared_ptr<session_gate> _g;
};

/// Descriptors a worker streamed for one request, until its end.
struct stream_queue {
    std::mutex m;
    std::condition_variable cv;
    std::deque<llmos::descriptor> q;
    /// Made by a worker's descriptor before its client attached (under
    /// the daemon's _streams_m): when. A request llmosd did not submit
    /// (another client of the scheduler's) is never attached.
    std::optional<std::chrono::steady_clock::time_point> unclaimed_since;
};

/// What a finished job reports.
struct outcome {
    std::string text;
    uint32_t prompt_tokens = 0, completion_tokens = 0;
    std::string finish_reason; ///< "stop" or "length"
};

/// How long a cancelled request's client waits for its worker to stop it
/// (and drain() for the requests it cancelled).
inline constexpr std::chrono::seconds abandon_wait{10};

/// How long, past abandon_wait, a session's next turn waits for the worker
/// still running its cancelled request (in a long step) to end it: until
/// then the worker may write to the session's request area, which the
/// next turn rewrites.
inline constexpr std::chrono::minutes linger_limit{5};

class daemon {
public:
    /// Opens the backend, loads the models, starts the workers. Throws
    /// std::runtime_error with a one-line reason.
    explicit daemon(options o);
    ~daemon();

    /// Runs `j`: `on_piece` gets each piece of text as it comes (return
    /// false: the client went away, the job is cancelled). Throws
    /// api_error.
    /// A place among the requests in flight, held until destroyed.
    class admission {
        daemon* d = nullptr;
        std::shared_ptr<model_entry> m;
        uint32_t tenant = 0;
        friend class daemon;
        admission(daemon* dd, std::shared_ptr<model_entry> mm, uint32_t t)
            : d(dd)
            , m(std::move(mm))
            , tenant(t) {}

    public:
        admission(admission&& o) noexcept
            : d(std::exchange(o.d, nullptr))
            , m(std::move(o.m))
            , tenant(o.tenant) {}
        admission& operator=(admission&&) = delete;
        ~admission();
        const std::shared_ptr<model_entry>& model() const noexcept { return m; }
    };
    /// Takes a place for `j` of `tenant` before anything is sent to its
    /// client: api_error 503 (draining), 404 (no such model), 429 (full, or
    /// the tenant's share full).
    admission admit(const job& j, uint32_t tenant);
    /// A job submitted to the scheduler and not yet streamed to its end
    /// (finish()); one that never is is cancelled when it goes.
    struct submitted {
        daemon* d;
        job j;
        admission a;
        double t0 = 0;
        session_turn turn;                  ///< its session's: one request at a time
        std::optional<llmos::mindspace> ms; ///< the request, its output, a session's cache
        std::optional<llmos::mapping> map;
        std::vector<llmos::engine::chat_message> conv; ///< a chat: the conversation run
        std::string text;                              ///< the text run
        uint32_t n_prompt = 0, max_tokens = 0;
        uint32_t tenant = 0; ///< whose it is
        uint32_t owner = 0;  ///< its session's tenant (its first request's, or nobody's)
        /// --timeout from submit() (its body read).
        std::chrono::steady_clock::time_point deadline;
        uint64_t kv_bytes = 0, req_off = 0, req_size = 0, id = 0;
        session::layout lay; ///< a session's
        std::shared_ptr<stream_queue> q;
        std::optional<llmos::sched_client> client;
        bool finished = false;
        submitted(daemon* dd, job jj, admission aa)
            : d(dd)
            , j(std::move(jj))
            , a(std::move(aa)) {}
        submitted(const submitted&) = delete;
        submitted& operator=(const submitted&) = delete;
        ~submitted();
    };
    /// Checks `j`, renders its text and submits it, on an admission taken
    /// before: api_error (a 400 for a prompt too long, ...) before anything
    /// is sent to its client. Waiting for its session's running request,
    /// it gives up when `still_wanted` says false (499) or after --timeout
    /// (504).
    std::shared_ptr<submitted> submit(const job& j, uint32_t tenant, admission a,
                                      const std::function<bool()>& still_wanted = {});
    /// Streams a submitted job to its end: `on_piece` as in run().
    outcome finish(submitted& s, const std::function<bool(std::string_view)>& on_piece);
    /// submit() and finish() on an admission taken before.
    outcome run(const job& j, uint32_t tenant,
                const std::function<bool(std::string_view)>& on_piece, admission a);
    outcome run(const job& j, uint32_t tenant,
                const std::function<bool(std::string_view)>& on_piece);

    // Models.
    std::vector<std::shared_ptr<model_entry>> models() const;
    std::shared_ptr<model_entry> find_model(const std::string& name) const;
    /// Loads `path` as `name` (api_error 409 if the name is taken, 400 if
    /// the file cannot be used).
    std::shared_ptr<model_entry> load_model(const std::string& name, const std::string& path);
    /// Replaces `name` with `path`: new requests go to the new file, the
    /// ones in flight finish on the old one, which is then let go.
    std::shared_ptr<model_entry> swap_model(const std::string& name, const std::string& path);
    /// Unloads `name` once its requests are finished.
    void unload_model(const std::string& name);
    /// Ends the session `session` (its mindspace goes): 404 when there is
    /// none, 409 while one of its requests runs, 403 when `tenant` is
    /// given and it is another tenant's (with API keys). `still_to_go`,
    /// when given, is asked once the session's turn is taken (no request
    /// of it runs): false keeps the session, and end_session() says false.
    bool end_session(const std::string& session, std::optional<uint32_t> tenant,
                     const std::function<bool(const llmos::mindspace&)>& still_to_go = {});
    std::shared_ptr<model_entry> model_by_id(uint32_t id) const;

    /// What a session is, as its header and mindspace say.
    struct session_info {
        std::string name;
        std::optional<uint32_t> tenant; ///< nobody's: kept before owners were
        std::string model;              ///< whose conversation it holds ("": none yet)
        std::string kind;               ///< "chat", "completion", or "" (not said)
        uint64_t conversation_bytes = 0;
        uint64_t bytes = 0, resident_bytes = 0; ///< its mindspace's
        std::optional<uint32_t> last_used;      ///< seconds since the epoch, when kept
        bool full = false;                      ///< outgrew its store: its next turn is refused
        bool readable = true;                   ///< a header this llmosd reads
    };
    /// The sessions kept, by name; only `tenant`'s when given.
    std::vector<session_info> list_sessions(std::optional<uint32_t> tenant) const;

    /// New requests get 503; returns when none is in flight, then stops
    /// the workers. Requests still in flight after `limit` are cancelled
    /// (their clients get 503), and waited for abandon_wait longer.
    void drain(std::chrono::seconds limit);
    bool draining() const noexcept { return _draining.load(); }
    /// Why the GPU cannot be used any more ("" while it can): a worker's
    /// engine saw it fail for good. New requests and those in flight then
    /// get 503; the daemon should exit, so as to be started again.
    std::string device_lost() const;
    /// The 503 for a request a lost GPU (`why`) ends or turns away.
    static api_error device_lost_error(const std::string& why);

    /// An API key: the tenant its requests are scheduled as, and whether
    /// it may use the administration API (/llmos/v1/models).
    struct api_key {
        uint32_t tenant = 0;
        bool admin = false;
    };
    /// API keys: empty map when none are required.
    const std::map<std::string, api_key>& api_keys() const noexcept { return _keys; }
    /// The tenant of a request that names none (without API keys): 0, or
    /// the first one the module lets llmosd's user name when 0 is not.
    uint32_t default_tenant() const noexcept { return _default_tenant; }
    const options& opts() const noexcept { return _o; }
    metrics& stats() noexcept { return _metrics; }
    std::string prometheus() const;
    const llmos::device& dev() const noexcept { return *_dev; }
    /// "cpu (avx512)" or "cuda:0 (NVIDIA H100 80GB HBM3, compute 9.0)".
    const std::string& engine_description() const noexcept { return _engine_desc; }
    /// The GPU's KV memory, when on one.
    llmos::kv_pool* kv_memory() const noexcept { return _kv_pool.get(); }
    uint32_t in_flight() const noexcept { return _in_flight.load(); }

private:
    /// Has the workers drop the engines of models no longer served.
    void let_go_of_models();
    std::shared_ptr<model_entry> open_model(const std::string& name, const std::string& path);
    /// 409 when `ms` (named as a session's) is another user's than this
    /// server's: in a shared store anyone may make one under that name.
    void check_session_store(const std::string& session, const llmos::mindspace& ms) const;
    /// The same 409 when opening the session's mindspace failed with `e`
    /// for want of permission (another user's, of a mode that keeps us out).
    void check_session_open(const std::string& session, std::error_code e) const;
    /// 403 when API keys are in use and `ms` holds another tenant's session.
    void check_session_owner(const std::string& session, const llmos::mindspace& ms,
                             uint32_t tenant) const;
    /// The lock that lets one request of `session` run at a time.
    std::shared_ptr<session_gate> session_lock(const std::string& session);
    std::shared_ptr<stream_queue> attach(uint64_t id);
    void detach(uint64_t id);
    /// Cancels `id` in the scheduler, and marks it for its worker.
    void cancel(llmos::sched_client& client, uint64_t id) noexcept;
    void deliver(const llmos::descriptor& d);

    void choose_engine();
    /// kv_pool's on_give_back with --publish-gpu-kv: the session's rows as
    /// the module mindspace llmosd.k.NAME over their dma-buf (null for a
    /// region that is no session's, or when that fails, which is logged).
    llmos::kv_keepsake publish_rows(const llmos::kv_key& key, const llmos::growable_region& rows);
    struct published_rows;

    options _o;
    std::unique_ptr<llmos::device> _dev;
    int _gpu = -1;
    std::string _engine_desc;
    /// Before _kv_pool and _pool: regions given back as they go publish.
    mutable std::mutex _published_m; // _published and its mindspaces
    /// What publish_rows() made, by name (each owned by its region).
    std::map<std::string, std::weak_ptr<published_rows>> _published;
    std::unique_ptr<llmos::kv_pool> _kv_pool; ///< before _pool: its workers' regions come from it
    mutable std::shared_mutex _models_m;      // _models, _by_id
    std::map<std::string, std::shared_ptr<model_entry>> _models;
    std::map<uint32_t, std::shared_ptr<model_entry>> _by_id;
    std::atomic<uint32_t> _next_model{1};
    std::unique_ptr<llmos::worker_pool> _pool;
    std::mutex _streams_m; // _streams, _cancelled
    std::unordered_map<uint64_t, std::shared_ptr<stream_queue>> _streams;
    /// Requests cancelled that a worker may still run, and when.
    std::unordered_map<uint64_t, std::chrono::steady_clock::time_point> _cancelled;
    std::chrono::steady_clock::time_point _swept{}; ///< _streams and _cancelled, last
    /// Drops cancel marks of an hour and streams nobody claimed for a
    /// minute, at most once a minute. Under _streams_m.
    void sweep_streams();
    mutable std::mutex _sessions_m;
    std::map<std::string, std::weak_ptr<session_gate>> _session_locks;
    /// Sessions' turns kept, past abandon_wait, for a worker still running
    /// their cancelled request, by its id: let go at its end (deliver())
    /// or past linger_limit (let_go_lingering()). Under _streams_m; after
    /// _session_locks, whose entry a turn's last holder takes out.
    struct lingering {
        session_turn turn;
        std::chrono::steady_clock::time_point since;
    };
    std::unordered_map<uint64_t, lingering> _lingering;
    /// Lets go of the turns kept past linger_limit, saying so.
    void let_go_lingering();
    /// Keeps `turn` (of cancelled request `id`, which a worker may still
    /// write the session's request area for) until the worker ends it.
    void linger(uint64_t id, session_turn& turn) noexcept;
    std::map<std::string, api_key> _keys;
    uint32_t _default_tenant = 0;
    std::atomic<uint32_t> _in_flight{0};
    std::mutex _tenants_m;
    /// Requests in flight by tenant (those with any).
    std::unordered_map<uint32_t, uint32_t> _tenant_in_flight;
    /// Prompts tokenized at once by the connections' threads: tokenizing
    /// takes some 75 bytes a byte of text for a moment (75 MB for a 1 MiB
    /// body), and there may be a thousand connections.
    std::counting_semaphore<> _tokenizing{tokenizing_at_once()};
    static std::ptrdiff_t tokenizing_at_once() noexcept;
    std::atomic<uint64_t> _req_seq{0};
    std::atomic<bool> _draining{false};
    std::atomic<bool> _abandon{false}; ///< drain() past its limit: every request is cancelled
    mutable std::mutex _lost_m;
    std::string _lost; ///< device_lost(); under _lost_m
    /// 403 when a new session of `tenant` would be past --max-sessions or
    /// --max-sessions-per-tenant; else the lock to hold until it is made.
    std::unique_lock<std::mutex> check_room_for_a_session(const std::string& session,
                                                          uint32_t tenant) const;
    mutable std::mutex _new_session_m; ///< counting sessions and making one
    /// The 503 for a request that a lost GPU ends.
    [[noreturn]] void throw_device_lost() const;
    metrics _metrics;

    /// On _upkeep's thread, until the daemon goes: expire_sessions() with
    /// --session-idle-timeout, and on the local backend a listing of the
    /// mindspaces, which removes those nobody holds (requests' ones whose
    /// holders went without looking again).
    void upkeep();
    /// At start: the default tenant, and which tenants the module will
    /// refuse llmosd's user (or, without keys, which any client may take).
    void check_tenant_grant();
    [[noreturn]] void throw_shutting_down() const;
    void throw_if_abandoned() const;
    /// Ends the sessions no request used for --session-idle-timeout, by
    /// the steady clock: steps of the wall clock neither end nor keep one.
    void expire_sessions();
    std::mutex _upkeep_m;
    std::condition_variable _upkeep_cv;
    bool _upkeep_stop = false; ///< under _upkeep_m
    /// A session's `used` stamp as upkeep saw it, and when by the steady
    /// clock it is taken to have been written (see expire_sessions()).
    struct stamp_seen {
        uint32_t used = 0;
        std::chrono::steady_clock::time_point since;
    };
    /// The sessions' stamps at upkeep's last look, by mindspace id (those
    /// of sessions gone are dropped at each look). Only on _upkeep's thread.
    std::unordered_map<uint64_t, stamp_seen> _stamps;
    /// When upkeep last looked (or started), by the steady clock, and the
    /// wall clock's lead on it then. Only on _upkeep's thread.
    std::chrono::steady_clock::time_point _looked{};
    std::chrono::nanoseconds _wall_lead{};
    std::thread _upkeep; ///< last: started when the rest is there
};

} // namespace llmosd
