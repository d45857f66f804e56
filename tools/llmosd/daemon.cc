// SPDX-License-Identifier: MIT
#include "daemon.hh"

#include "../names.hh"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <linux/llmos.h>
#include <llmos/engine/chat.hh>
#include <llmos/engine/cuda_memory.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/quant.hh>
#include <llmos/generation.hh>
#include <optional>
#include <sched.h>
#include <span>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unistd.h>

namespace llmosd {

using namespace std::chrono_literals;
namespace eng = llmos::engine;
using nlohmann::json;

namespace {

constexpr uint64_t page = 4096;
uint64_t round_up(uint64_t v) {
    return (v + page - 1) / page * page;
}

std::chrono::steady_clock::time_point steady_now() {
    return std::chrono::steady_clock::now();
}

// Returns once `n` reads 0, or after `wait`.
void wait_for_none(const std::atomic<uint32_t>& n, std::chrono::steady_clock::duration wait) {
    const auto deadline = steady_now() + wait;
    while (n.load() && steady_now() < deadline) {
        std::this_thread::sleep_for(10ms);
    }
}

// Seconds since the epoch, as a session's header keeps them.
uint32_t epoch_s() {
    const auto t = ::time(nullptr);
    return t <= 0 ? 0 : static_cast<uint32_t>(std::min<int64_t>(t, UINT32_MAX));
}

// How far the wall clock is ahead of the steady one. It changes when the
// wall clock is stepped (NTP, `date`), and, the steady clock being
// CLOCK_MONOTONIC, across a suspend; hardly otherwise (NTP slews it by at
// most half a millisecond a second).
std::chrono::nanoseconds wall_lead() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::system_clock::now().time_since_epoch() -
        std::chrono::steady_clock::now().time_since_epoch());
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// A chat session's conversation as it is kept (what the model wrote may
// not be UTF-8: to_text() copes).
std::string conversation_json(const std::vector<eng::chat_message>& conv) {
    json c = json::array();
    for (auto& msg : conv) {
        c.push_back({{"role", msg.role}, {"content", msg.content}});
    }
    return to_text(c);
}

// Whether `v` is a chat's conversation as kept: messages, each a role and
// a content.
bool is_conversation(const json& v) {
    return v.is_array() && std::all_of(v.begin(), v.end(), [](const json& m) {
               return m.is_object() && m.contains("role") && m["role"].is_string() &&
                      m.contains("content") && m["content"].is_string();
           });
}

/// A session NAME's mindspace, and the one over its K/V rows on the GPU
/// (--publish-gpu-kv): names of the same length, so both fit.
constexpr std::string_view session_ms_prefix = "llmosd.s.";
constexpr std::string_view rows_ms_prefix = "llmosd.k.";

// The engines of one worker: one llm_engine per model, made on first use,
// dropped when its model is gone and it serves nothing.
class multi_engine final : public llmos::inference_engine {
public:
    multi_engine(daemon& d, llmos::llm_engine_options eo)
        : _d(d)
        , _eo(eo) {}

    llmos::engine_status prefill(llmos::sequence& s) override {
        // Which model: a word every version of the header has (the
        // engine reads the rest).
        llmos::gen_request_header h{};
        constexpr size_t model_end = offsetof(llmos::gen_request_header, model) + sizeof(h.model);
        static_assert(model_end <= llmos::gen_header_size(1));
        if (s.prompt.size() < model_end) {
            s.status = -EINVAL;
            return llmos::engine_status::bad_input;
        }
        std::memcpy(&h.model, s.prompt.data() + offsetof(llmos::gen_request_header, model),
                    sizeof(h.model));
        idle();
        auto it = _engines.find(h.model);
        if (it == _engines.end()) {
            auto m = _d.model_by_id(h.model);
            if (!m) {
                s.status = -ENOENT; // unloaded meanwhile
                return llmos::engine_status::bad_input;
            }
            auto e = m->cuda ? std::make_unique<llmos::llm_engine>(*m->cuda, *m->vocab,
                                                                   *_d.kv_memory(), _eo)
                             : std::make_unique<llmos::llm_engine>(*m->model, *m->vocab, _eo);
            it = _engines.emplace(h.model, slot{m, std::move(e)}).first;
        }
        // Its entry before the engine takes it: an engine holding it (its
        // cache's lock, its GPU region) that release() would not find for
        // want of memory here would keep it for good.
        auto o = _owner.insert_or_assign(&s, h.model).first;
        llmos::engine_status st;
        try {
            st = it->second.e->prefill(s);
        } catch (...) {
            _owner.erase(o);
            throw;
        }
        if (st == llmos::engine_status::ok) {
            ++it->second.users;
        } else {
            _owner.erase(o);
        }
        account(it->second);
        return st;
    }

    void decode(std::span<llmos::sequence* const> batch) override {
        for (auto& [id, sl] : _engines) {
            _group.clear();
            for (auto* s : batch) {
                if (_owner[s] == id) {
                    _group.push_back(s);
                }
            }
            if (!_group.empty()) {
                sl.e->decode(_group);
                account(sl);
            }
        }
    }

    void release(llmos::sequence& s) noexcept override {
        auto o = _owner.find(&s);
        if (o == _owner.end()) {
            return;
        }
        auto it = _engines.find(o->second);
        _owner.erase(o);
        if (it == _engines.end()) {
            return;
        }
        _d.stats().worker_generated_tokens.fetch_add(s.tokens);
        it->second.e->release(s);
        if (--it->second.users == 0 && !_d.model_by_id(it->first)) {
            _engines.erase(it); // its model was swapped out or unloaded
        }
    }

    // The engines (weights, device memory) of models swapped out or
    // unloaded that serve nothing here go.
    void idle() noexcept override {
        std::erase_if(_engines,
                      [&](const auto& e) { return !e.second.users && !_d.model_by_id(e.first); });
    }

private:
    struct slot {
        std::shared_ptr<model_entry> model;
        std::unique_ptr<llmos::llm_engine> e;
        uint32_t users = 0;
        llmos::llm_engine_stats counted; ///< what account() has added to the metrics
    };

    // Adds what the engine's prompt and graph counters moved to the
    // daemon's metrics, and logs failed captures.
    void account(slot& sl) noexcept {
        const llmos::llm_engine_stats& st = sl.e->stats();
        metrics& mt = _d.stats();
        const uint64_t failed = st.graph_capture_failures - sl.counted.graph_capture_failures;
        mt.worker_prompt_tokens.fetch_add(st.prompt_tokens - sl.counted.prompt_tokens);
        mt.graph_replays.fetch_add(st.graph_replays - sl.counted.graph_replays);
        mt.graph_captures.fetch_add(st.graph_captures - sl.counted.graph_captures);
        mt.graph_capture_failures.fetch_add(failed);
        sl.counted = st;
        if (failed) {
            log_graph_failure(sl);
        }
    }

    // A failed capture costs only time (its step is launched kernel by
    // kernel), but the device refused something: say what, and say when
    // the worker gives graphs up (after a few failures in a row).
    static void log_graph_failure(const slot& sl) noexcept {
        try {
            const std::string path = sl.e->graph_path();
            if (path.starts_with("CUDA graphs")) {
                std::fprintf(stderr,
                             "llmosd: model '%s': a CUDA graph capture failed, its step was "
                             "launched kernel by kernel: %s\n",
                             sl.model->name.c_str(), sl.e->last_graph_failure().c_str());
            } else {
                std::fprintf(stderr, "llmosd: model '%s': a worker now launches every step: %s\n",
                             sl.model->name.c_str(), path.c_str());
            }
        } catch (const std::exception&) {
        }
    }
    daemon& _d;
    llmos::llm_engine_options _eo;
    std::map<uint32_t, slot> _engines;
    std::unordered_map<const llmos::sequence*, uint32_t> _owner;
    std::vector<llmos::sequence*> _group;
};

int cpus_allowed() {
    cpu_set_t set;
    CPU_ZERO(&set);
    return ::sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

api_error server_error(const std::string& msg) {
    return {500, msg, "server_error", "", ""};
}

/// Makes the session mindspace `name` again, of `length` bytes, with header
/// `head` and conversation `text` as they were (its KV cache is computed
/// again): after a larger one could not be made in its place.
bool put_back_session(const llmos::device& dev, const std::string& name, uint64_t length,
                      const session::header& head, std::span<const std::byte> text) {
    auto ms = llmos::mindspace::create(dev, {.length = length, .name = name, .persistent = true});
    if (!ms) {
        return false;
    }
    auto map = ms->map();
    if (!map || map->size() < session::text_off || text.size() > map->size() - session::text_off) {
        llmos::destroy_mindspace(dev, llmos::ms_key{0, name});
        return false;
    }
    if (!text.empty()) {
        std::memcpy(map->data() + session::text_off, text.data(), text.size());
    }
    std::memcpy(map->data(), &head, sizeof(head));
    return true;
}

} // namespace

void histogram::observe(double seconds) {
    size_t i = 0;
    while (i < std::size(bounds) && seconds > bounds[i]) {
        ++i;
    }
    counts[i].fetch_add(1);
    n.fetch_add(1);
    sum_us.fetch_add(static_cast<uint64_t>(seconds * 1e6));
}

void histogram::write(std::string& out, const std::string& name, const std::string& help) const {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
    uint64_t cum = 0;
    for (size_t i = 0; i < std::size(bounds); ++i) {
        cum += counts[i].load();
        char le[32];
        std::snprintf(le, sizeof(le), "%g", bounds[i]);
        out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cum) + "\n";
    }
    cum += counts[std::size(bounds)].load();
    out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
    char sum[64];
    std::snprintf(sum, sizeof(sum), "%.6f", double(sum_us.load()) / 1e6);
    out += name + "_sum " + sum + "\n" + name + "_count " + std::to_string(n.load()) + "\n";
}

void daemon::choose_engine() {
    const std::string& d = _o.engine;
    _engine_desc = "cpu (" + std::string(eng::simd_name(eng::default_simd())) + ")";
    if (d == "cpu") {
        return;
    }
    int index = 0;
    if (d != "auto" && d != "cuda") {
        size_t used = 0;
        bool ok = d.starts_with("cuda:") && d.size() > 5;
        try {
            index = ok ? std::stoi(d.substr(5), &used) : -1;
        } catch (const std::exception&) {
            ok = false;
        }
        if (!ok || used != d.size() - 5 || index < 0) {
            throw std::runtime_error("--engine " + d + ": expected cpu, cuda, cuda:N or auto");
        }
    }
    // The engine's device, and the virtual-memory API its KV regions need.
    std::string why;
    const eng::cuda_device_info di = eng::cuda_probe(index);
    if (!di.available) {
        why = di.reason;
    } else if (const eng::gpu_probe_result gp = eng::probe_gpu(index); !gp.usable) {
        why = "its KV memory: " + gp.reason;
    }
    if (!why.empty()) {
        if (d != "auto") {
            throw std::runtime_error("--engine " + d + ": " + why);
        }
        std::fprintf(stderr, "llmosd: --engine auto: no GPU (%s): models run on the CPU\n",
                     why.c_str());
        return;
    }
    _gpu = index;
    // How the workers' contexts will compute: the linear layers, and
    // whether decode steps replay as graphs.
    const eng::cuda_blas_info bi = eng::cuda_blas();
    _engine_desc =
        "cuda:" + std::to_string(index) + " (" + di.name + ", compute " +
        std::to_string(di.cc_major) + "." + std::to_string(di.cc_minor) + "; linear layers: " +
        (bi.loaded ? "cuBLAS (" + bi.library + ")"
                   : "built-in kernels (no cuBLAS: " + bi.reason + ")") +
        "; decode: " +
        (eng::cuda_graphs_wanted() ? "CUDA graphs" : "kernel launches (LLMOS_CUDA_GRAPHS=0)") + ")";
    const uint64_t capacity = _o.gpu_kv_bytes ? _o.gpu_kv_bytes : di.total_mem / 2;
    llmos::kv_pool_options po{.capacity = capacity, .make = [index](uint64_t bytes) {
                                  return llmos::make_gpu_region(bytes, index);
                              }};
    if (_o.publish_gpu_kv) {
        po.on_give_back = [this](const llmos::kv_key& k, const llmos::growable_region& r) {
            return publish_rows(k, r);
        };
    }
    _kv_pool = std::make_unique<llmos::kv_pool>(std::move(po));
}

/// A session's K/V rows as a module mindspace, kept with their region.
struct daemon::published_rows {
    std::optional<llmos::mindspace> ms; ///< reset early when a newer one takes the name
};

llmos::kv_keepsake daemon::publish_rows(const llmos::kv_key& key,
                                        const llmos::growable_region& rows) {
    auto info = llmos::mindspace_info(*_dev, llmos::ms_key{key.ms_id, {}});
    if (!info || !info->name.starts_with(session_ms_prefix)) {
        return nullptr; // not a session's conversation (or gone meanwhile)
    }
    const std::string session = info->name.substr(session_ms_prefix.size());
    const std::string name = std::string(rows_ms_prefix) + session;
    auto fail = [&](const std::string& why) -> llmos::kv_keepsake {
        std::fprintf(stderr, "llmosd: session '%s': its K/V rows are not published as %s: %s\n",
                     session.c_str(), name.c_str(), why.c_str());
        return nullptr;
    };
    std::lock_guard lk(_published_m);
    // One made for an older mindspace of the session (replaced for a
    // larger cache) gives the name up first.
    if (auto it = _published.find(name); it != _published.end()) {
        if (auto old = it->second.lock()) {
            old->ms.reset();
        }
    }
    std::erase_if(_published, [](const auto& kv) { return kv.second.expired(); });
    llmos::unique_fd buf;
    try {
        buf = rows.export_dmabuf();
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    auto ms = llmos::mindspace::create(
        *_dev, {.name = name, .mode = info->mode & 0777, .dmabuf_fd = buf.get()});
    if (!ms) {
        return fail(ms.error() == std::errc::file_exists
                        ? std::string("the name is taken (a peer still holds the previous one?)")
                        : ms.error().message());
    }
    auto p = std::make_shared<published_rows>();
    p->ms.emplace(std::move(*ms));
    _published[name] = p;
    return p;
}

// The module lets a user submit as its own tenant alone unless root granted
// it a range (an administrator names any). At start: the tenant of requests
// that name none (0, or the first llmosd may name when 0 is not one), and a
// word on which tenants requests will be refused, or, without API keys,
// which tenants any client may take. Its workers need the right to
// register (ABI 1.3): without it llmosd cannot serve, and says so.
void daemon::check_tenant_grant() {
    if (_dev->kind() != llmos::backend_kind::kernel) {
        return;
    }
    auto g = llmos::tenant_grant_of(*_dev, LLMOS_UID_SELF);
    if (!g) {
        return; // a module before grants: anyone names any tenant
    }
    if (!g->admin && !g->worker) {
        throw std::runtime_error(
            "the llmos module lets this user register no workers, and llmosd's workers answer "
            "the requests (root grants the right: llmosctl sched grant USER --worker; llmosd's "
            "systemd unit does it as it starts)");
    }
    const std::string range =
        g->first == g->last ? "tenant " + std::to_string(g->first)
                            : "tenants " + std::to_string(g->first) + "-" + std::to_string(g->last);
    if (g->admin || (g->first == 0 && g->last == UINT32_MAX)) {
        if (_keys.empty()) {
            std::fprintf(stderr, "llmosd: no API keys: clients choose their tenant, any of %s\n",
                         g->admin ? "them (llmosd runs as an administrator)"
                                  : "them (this user was granted all)");
        }
        return;
    }
    if (g->first > 0) {
        _default_tenant = g->first;
    }
    std::string outside;
    for (const auto& [key, k] : _keys) {
        if ((k.tenant < g->first || k.tenant > g->last) &&
            outside.find(" " + std::to_string(k.tenant) + ",") == std::string::npos) {
            outside += " " + std::to_string(k.tenant) + ",";
        }
    }
    if (_keys.empty()) {
        std::fprintf(stderr,
                     "llmosd: the llmos module lets this user submit as %s only: requests naming "
                     "others get 403 tenant_not_granted, those naming none are %s's "
                     "(root grants more: llmosctl sched grant USER FIRST-LAST)\n",
                     range.c_str(), std::to_string(_default_tenant).c_str());
    } else if (!outside.empty()) {
        std::fprintf(stderr,
                     "llmosd: the llmos module lets this user submit as %s only: requests of the "
                     "keys of tenant(s)%s get 403 tenant_not_granted (root grants more: llmosctl "
                     "sched grant USER FIRST-LAST)\n",
                     range.c_str(), outside.substr(0, outside.size() - 1).c_str());
    }
}

namespace {

/// Why opening the backend `backend` (auto, kernel or local) failed with
/// `ec`: which one was tried, and where.
std::string open_failure(const std::string& backend, std::error_code ec) {
    std::string which = backend;
    if (which == "auto") {
        const char* env = std::getenv("LLMOS_BACKEND");
        which = env && *env ? env : "auto";
        if (which != "auto" && which != "kernel" && which != "local") {
            return "LLMOS_BACKEND must be auto, kernel or local, not '" + which + "'";
        }
        if (which == "auto") {
            // auto falls back to the local store only when the node is
            // missing and was not named.
            const char* named = std::getenv("LLMOS_DEVICE");
            which = (named && *named) || ::access(llmos::default_device_path().c_str(), F_OK) == 0
                        ? "kernel"
                        : "local";
        }
    }
    if (which == "local") {
        return "cannot open the local backend in " + llmos::default_local_dir() + ": " +
               ec.message();
    }
    return "cannot open the llmos module's device " + llmos::default_device_path() + ": " +
           ec.message();
}

} // namespace

daemon::daemon(options o)
    : _o(std::move(o)) {
    choose_engine();
    auto dev = _o.backend == "local"    ? llmos::device::open_local()
               : _o.backend == "kernel" ? llmos::device::open()
                                        : llmos::device::open_auto();
    if (!dev) {
        throw std::runtime_error(open_failure(_o.backend, dev.error()));
    }
    _dev = std::make_unique<llmos::device>(std::move(*dev));
    if (_o.publish_gpu_kv) {
        if (_gpu < 0) {
            throw std::runtime_error("--publish-gpu-kv: the models run on the CPU, their KV rows "
                                     "are in their mindspaces already (--engine cuda puts them on "
                                     "a GPU)");
        }
        if (_dev->kind() != llmos::backend_kind::kernel) {
            throw std::runtime_error("--publish-gpu-kv needs the kernel backend (the llmos "
                                     "module): the local backend has no dma-buf mindspaces");
        }
        if (const eng::gpu_probe_result gp = eng::probe_gpu(_gpu); !gp.dmabuf) {
            throw std::runtime_error("--publish-gpu-kv: the driver of GPU " + std::to_string(_gpu) +
                                     " cannot export its memory as dma-bufs "
                                     "(CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0)");
        }
    }
    if (!_o.api_key_file.empty()) {
        std::ifstream in(_o.api_key_file);
        if (!in) {
            throw std::runtime_error("cannot read the API key file " + _o.api_key_file + ": " +
                                     std::strerror(errno));
        }
        std::string line;
        for (unsigned n = 1; std::getline(in, line); ++n) {
            // KEY [TENANT] [admin], separated by blanks; blank lines and #
            // comments.
            std::istringstream fields(line);
            std::vector<std::string> f;
            for (std::string w; fields >> w;) {
                f.push_back(w);
            }
            if (f.empty() || f[0][0] == '#') {
                continue;
            }
            auto bad = [&](const std::string& why) {
                return std::runtime_error("the API key file " + _o.api_key_file + ", line " +
                                          std::to_string(n) + ": " + why);
            };
            if (f.size() > 3) {
                throw bad("expected KEY [TENANT] [admin], found " + std::to_string(f.size()) +
                          " words");
            }
            api_key k;
            if (f.size() > 1 && f.back() == "admin") {
                k.admin = true;
                f.pop_back();
            }
            if (f.size() > 2) {
                throw bad("expected KEY [TENANT] [admin], found '" + f[2] + "' after the tenant");
            }
            if (f.size() == 2) {
                const char* b = f[1].data();
                const char* e = b + f[1].size();
                if (auto [p, ec] = std::from_chars(b, e, k.tenant); ec != std::errc() || p != e) {
                    throw bad("the tenant must be a number from 0 to 4294967295, not '" + f[1] +
                              "'");
                }
            }
            // The HTTP library decodes %XX in header values: such a key
            // would never match what a client sends.
            if (f[0].find('%') != std::string::npos) {
                throw bad("a key may not hold '%'");
            }
            if (!_keys.emplace(f[0], k).second) {
                throw bad("this key is on an earlier line too");
            }
        }
        if (_keys.empty()) {
            throw std::runtime_error("the API key file " + _o.api_key_file + " holds no key");
        }
        if (std::none_of(_keys.begin(), _keys.end(), [](auto& k) { return k.second.admin; })) {
            std::fprintf(stderr,
                         "llmosd: no key in %s is marked admin: the administration API "
                         "(/llmos/v1/models) is refused to every key\n",
                         _o.api_key_file.c_str());
        }
    }
    check_tenant_grant();
    for (auto& [name, path] : _o.models) {
        try {
            load_model(name, path);
        } catch (const api_error& e) {
            throw std::runtime_error(e.message);
        }
    }
    int threads =
        _o.threads > 0 ? _o.threads : std::max(1, cpus_allowed() / int(std::max(1u, _o.workers)));
    llmos::llm_engine_options eo{
        .context = {.n_threads = threads, .max_batch_tokens = 512, .activations = _o.activations},
        .kv = {.type = eng::kv_type::f16, .block_tokens = 16, .max_tokens = _o.ctx},
        .default_max_tokens = _o.default_max_tokens,
    };
    llmos::worker_pool_options po;
    // Workers spread over the CPUs; each engine's threads share them.
    cpu_set_t set;
    CPU_ZERO(&set);
    ::sched_getaffinity(0, sizeof(set), &set);
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) {
            cpus.push_back(c);
        }
    }
    for (unsigned w = 0; w < std::max(1u, _o.workers); ++w) {
        po.cpus.push_back(cpus[w % cpus.size()]);
    }
    po.slots = _o.slots;
    po.engine = [this, eo](unsigned) { return std::make_unique<multi_engine>(*this, eo); };
    po.on_output = [this](unsigned, const llmos::descriptor& d) { deliver(d); };
    po.on_device_lost = [this](unsigned worker, const std::string& why) {
        {
            std::lock_guard lk(_lost_m);
            if (!_lost.empty()) {
                return; // said by the first worker that saw it
            }
            _lost = why;
        }
        std::fprintf(stderr,
                     "llmosd: worker %u: the GPU failed for good (%s): the requests in flight "
                     "get 503 and llmosd exits, to be started again\n",
                     worker, why.c_str());
        _draining = true;
        _abandon = true;
    };
    po.is_cancelled = [this](uint64_t id) {
        std::lock_guard lk(_streams_m);
        if (_cancelled.count(id)) {
            return true;
        }
        // Shutting down past --drain-timeout (or the GPU lost): this
        // daemon's requests end; other clients' (the kernel backend's
        // scheduler may give its workers those) go back to the queue as
        // the workers stop, for another worker, not failed.
        auto it = _streams.find(id);
        return _abandon.load() && it != _streams.end() && !it->second->unclaimed_since;
    };
    auto pool = llmos::worker_pool::start(*_dev, std::move(po));
    if (!pool) {
        throw std::runtime_error("cannot start the workers: " + pool.error().message());
    }
    _pool = std::move(*pool);
    // The engine's threads are not pinned to the worker's CPU: let them
    // run anywhere this process may.
    if (_o.session_idle_timeout.count() > 0 || _dev->kind() == llmos::backend_kind::local) {
        try {
            _upkeep = std::thread([this] { upkeep(); });
        } catch (...) {
            // No destructor runs: the workers, which use the members
            // declared after _pool, stop before those go.
            _pool->stop();
            throw;
        }
    }
}

std::ptrdiff_t daemon::tokenizing_at_once() noexcept {
    const unsigned cpus = std::thread::hardware_concurrency();
    return std::clamp<std::ptrdiff_t>(cpus ? cpus : 1, 1, 64);
}

daemon::~daemon() {
    if (_upkeep.joinable()) {
        {
            std::lock_guard lk(_upkeep_m);
            _upkeep_stop = true;
        }
        _upkeep_cv.notify_all();
        _upkeep.join();
    }
    if (_pool) {
        _pool->stop();
    }
}

std::shared_ptr<model_entry> daemon::open_model(const std::string& name, const std::string& path) {
    auto m = std::make_shared<model_entry>();
    m->name = name;
    m->path = path;
    m->created = static_cast<int64_t>(::time(nullptr));
    try {
        m->file = std::make_unique<eng::gguf_file>(eng::gguf_file::open(path));
        // On a GPU the host model serves the token embeddings and the
        // upload: no copy of its weights packed for the CPU's kernels.
        m->model = std::make_unique<eng::model>(
            eng::model::load(*m->file, _gpu >= 0 ? eng::simd_level::scalar : eng::default_simd()));
        m->vocab = std::make_unique<eng::vocab>(eng::from_gguf(*m->file));
        llmos::llm_engine::check_vocab(*m->model, *m->vocab);
    } catch (const std::exception& e) {
        throw api_error{400, "cannot load " + path + ": " + e.what(), "invalid_request_error",
                        "path", "model_load_failed"};
    }
    if (_gpu >= 0) {
        try {
            m->cuda = std::make_unique<eng::cuda_model>(*m->model, _gpu);
        } catch (const std::exception& e) {
            throw api_error{500, "cannot put " + path + " on " + _engine_desc + ": " + e.what(),
                            "server_error", "path", "model_load_failed"};
        }
    }
    m->id = _next_model.fetch_add(1);
    return m;
}

std::shared_ptr<model_entry> daemon::load_model(const std::string& name, const std::string& path) {
    if (!llmos::names::valid_model(name)) {
        throw api_error{400,
                        "a model name is 1 to 128 bytes, without '/' or control characters, "
                        "not only dots",
                        "invalid_request_error", "name", ""};
    }
    {
        std::shared_lock lk(_models_m);
        if (_models.count(name)) {
            throw api_error{409, "a model named '" + name + "' is loaded already",
                            "invalid_request_error", "name", "model_exists"};
        }
    }
    auto m = open_model(name, path);
    std::unique_lock lk(_models_m);
    if (_models.count(name)) {
        throw api_error{409, "a model named '" + name + "' is loaded already",
                        "invalid_request_error", "name", "model_exists"};
    }
    _models[name] = m;
    _by_id[m->id] = m;
    return m;
}

std::shared_ptr<model_entry> daemon::swap_model(const std::string& name, const std::string& path) {
    if (!find_model(name)) { // before the file is read (checked again after)
        throw api_error{404, "the model '" + name + "' does not exist", "invalid_request_error",
                        "model", "model_not_found"};
    }
    auto m = open_model(name, path);
    std::shared_ptr<model_entry> old;
    {
        std::unique_lock lk(_models_m);
        auto it = _models.find(name);
        if (it == _models.end()) {
            throw api_error{404, "the model '" + name + "' does not exist", "invalid_request_error",
                            "model", "model_not_found"};
        }
        old = it->second;
        it->second = m;
        _by_id[m->id] = m;
    }
    // Requests in flight on the old file finish there; then it goes.
    wait_for_none(old->in_flight, _o.request_timeout);
    {
        std::unique_lock lk(_models_m);
        _by_id.erase(old->id);
    }
    let_go_of_models();
    return m;
}

void daemon::unload_model(const std::string& name) {
    std::shared_ptr<model_entry> old;
    {
        std::unique_lock lk(_models_m);
        auto it = _models.find(name);
        if (it == _models.end()) {
            throw api_error{404, "the model '" + name + "' does not exist", "invalid_request_error",
                            "model", "model_not_found"};
        }
        old = it->second;
        _models.erase(it);
    }
    wait_for_none(old->in_flight, _o.request_timeout);
    {
        std::unique_lock lk(_models_m);
        _by_id.erase(old->id);
    }
    let_go_of_models();
}

void daemon::let_go_of_models() {
    // Each worker holds the engines of the models it served: those of
    // models gone go on its thread, when it idles.
    if (_pool) {
        _pool->poke();
    }
}

namespace {

// The sessions among `all`: mindspaces named as a session's and of this
// server's user (another user's is no session: check_session_store()),
// with a name a request can give (one made otherwise, llmosctl ms create
// llmosd.s.a/b say, is no session: neither counted nor expired).
void keep_sessions(std::vector<llmos::ms_info>& all) {
    std::erase_if(all, [uid = ::geteuid()](const llmos::ms_info& i) {
        return !i.name.starts_with(session_ms_prefix) || i.uid != uid ||
               !llmos::names::valid_session(i.name.substr(session_ms_prefix.size()));
    });
}

// The 409 for a session's name held by another user's mindspace.
api_error session_foreign(const std::string& session) {
    return {409,
            "the session '" + session +
                "' is held in a mindspace of another user than this server's; only its "
                "owner can remove it (llmosctl ms rm " +
                std::string(session_ms_prefix) + session + ")",
            "invalid_request_error", "session", "session_foreign"};
}

} // namespace

void daemon::check_session_store(const std::string& session, const llmos::mindspace& ms) const {
    auto i = ms.info();
    if (!i) {
        throw server_error("session '" + session + "': " + i.error().message());
    }
    if (i->uid != ::geteuid()) {
        // Another user's (made in a shared store under a session's name):
        // neither read nor written.
        throw session_foreign(session);
    }
}

void daemon::check_session_open(const std::string& session, std::error_code e) const {
    if (e == std::errc::permission_denied || e == std::errc::operation_not_permitted) {
        throw session_foreign(session); // another user's, not ours to open
    }
}

void daemon::check_session_owner(const std::string& session, const llmos::mindspace& ms,
                                 uint32_t tenant) const {
    if (_keys.empty()) {
        return; // tenants are who clients say they are
    }
    auto map = ms.map(0, page); // the header
    if (!map) {
        throw server_error("session '" + session + "': " + map.error().message());
    }
    if (auto st = session::stamp(map->bytes()); st && st->first >= 2 && st->second != tenant) {
        throw api_error{403, "the session '" + session + "' belongs to another tenant",
                        "permission_error", "session", "session_not_yours"};
    }
}

std::shared_ptr<session_gate> daemon::session_lock(const std::string& session) {
    std::lock_guard lk(_sessions_m);
    auto& w = _session_locks[session];
    if (auto l = w.lock()) {
        return l;
    }
    // Its last holder takes its name out, so the map holds the sessions
    // with a request running or waiting, not every name ever used. A lock
    // made meanwhile under the same name stays.
    auto l = std::shared_ptr<session_gate>(new session_gate, [this, session](session_gate* m) {
        delete m;
        std::lock_guard lk(_sessions_m);
        if (auto it = _session_locks.find(session);
            it != _session_locks.end() && it->second.expired()) {
            _session_locks.erase(it);
        }
    });
    w = l;
    return l;
}

bool daemon::end_session(const std::string& session, std::optional<uint32_t> tenant,
                         const std::function<bool(const llmos::mindspace&)>& still_to_go) {
    if (!llmos::names::valid_session(session)) {
        throw api_error{400, "a session name is 1 to 48 characters of [A-Za-z0-9._-]",
                        "invalid_request_error", "session", ""};
    }
    const llmos::ms_key key{0, std::string(session_ms_prefix) + session};
    auto not_found = [&] {
        return api_error{404, "there is no session '" + session + "'", "invalid_request_error",
                         "session", "session_not_found"};
    };
    // The session's mindspace, its owner checked.
    auto open_owned = [&] {
        auto ms = llmos::mindspace::open(*_dev, key);
        if (!ms) {
            if (ms.error() == std::errc::no_such_file_or_directory) {
                throw not_found();
            }
            check_session_open(session, ms.error());
            throw server_error("session '" + session + "': " + ms.error().message());
        }
        check_session_store(session, *ms);
        if (tenant) {
            check_session_owner(session, *ms, *tenant);
        }
        return ms;
    };
    auto ms = open_owned();
    // None of its requests may run while it goes.
    auto gate = session_lock(session);
    let_go_lingering();
    if (!gate->try_enter()) {
        throw api_error{409, "a request of the session '" + session + "' is running",
                        "invalid_request_error", "session", "session_busy"};
    }
    const session_turn turn(std::move(gate));
    // The one there now, which a request (moving it to a larger store) or
    // another DELETE may have replaced or ended before this turn: its
    // owner checked again.
    ms = open_owned();
    if (still_to_go && !still_to_go(*ms)) {
        return false;
    }
    if (_kv_pool) { // its K/V rows on the GPU (and what published them) go too
        std::optional<session::header> h;
        if (auto map = ms->map(0, session::page)) {
            h = session::read(map->bytes());
        }
        _kv_pool->forget({ms->id(), (h ? session::of(*h) : session::for_ctx(_o.ctx)).kv_off()});
    }
    ms = std::error_code(); // closed before it goes
    if (auto e = llmos::destroy_mindspace(*_dev, key)) {
        if (e == std::errc::no_such_file_or_directory) {
            throw not_found();
        }
        throw server_error("session '" + session + "': " + e.message());
    }
    return true;
}

std::vector<std::shared_ptr<model_entry>> daemon::models() const {
    std::shared_lock lk(_models_m);
    std::vector<std::shared_ptr<model_entry>> v;
    for (auto& [n, m] : _models) {
        v.push_back(m);
    }
    return v;
}

std::shared_ptr<model_entry> daemon::find_model(const std::string& name) const {
    std::shared_lock lk(_models_m);
    auto it = _models.find(name);
    return it == _models.end() ? nullptr : it->second;
}

std::shared_ptr<model_entry> daemon::model_by_id(uint32_t id) const {
    std::shared_lock lk(_models_m);
    auto it = _by_id.find(id);
    return it == _by_id.end() ? nullptr : it->second;
}

std::shared_ptr<stream_queue> daemon::attach(uint64_t id) {
    std::lock_guard lk(_streams_m);
    auto& q = _streams[id];
    if (!q) {
        q = std::make_shared<stream_queue>();
    }
    q->unclaimed_since.reset();
    return q;
}

void daemon::sweep_streams() {
    const auto now = steady_now();
    if (now - _swept < 1min) {
        return;
    }
    _swept = now;
    // Requests cancelled before any worker took them, whose client did not
    // see them end, never end in a worker: their marks go after an hour.
    std::erase_if(_cancelled, [&](const auto& c) { return now - c.second > 1h; });
    // Streams of requests no client of this daemon claims (the
    // scheduler's other clients' requests, which its workers may take).
    std::erase_if(_streams, [&](const auto& s) {
        return s.second->unclaimed_since && now - *s.second->unclaimed_since > 1min;
    });
}

void daemon::detach(uint64_t id) {
    std::lock_guard lk(_streams_m);
    _streams.erase(id);
    // A cancelled request stays in _cancelled until its worker ends it
    // (deliver()): its client may be gone long before the worker looks.
}

void daemon::cancel(llmos::sched_client& client, uint64_t id) noexcept {
    try {
        std::lock_guard lk(_streams_m);
        sweep_streams();
        _cancelled.emplace(id, steady_now());
    } catch (const std::bad_alloc&) {
        // Unmarked, a worker of this daemon runs it to its end (the
        // scheduler's cancel below still ends it for its client).
    }
    client.cancel(id);
}

void daemon::deliver(const llmos::descriptor& d) {
    std::shared_ptr<stream_queue> q;
    session_turn let_go; // left after _streams_m
    {
        std::lock_guard lk(_streams_m);
        const bool end = d.kind != uint32_t(llmos::output_kind::tokens);
        auto c = _cancelled.find(d.request);
        if (c != _cancelled.end()) {
            if (end) {
                _cancelled.erase(c); // its worker is done with it
                if (auto l = _lingering.find(d.request); l != _lingering.end()) {
                    let_go = std::move(l->second.turn); // its session's next turn may come
                    _lingering.erase(l);
                }
            }
            auto it = _streams.find(d.request);
            if (it == _streams.end()) {
                return; // its client has gone: nobody reads this
            }
            q = it->second;
        } else {
            sweep_streams();
            auto& slot = _streams[d.request];
            if (!slot) {
                slot = std::make_shared<stream_queue>(); // before its client attached
                slot->unclaimed_since = steady_now();
            }
            q = slot;
        }
    }
    std::lock_guard lk(q->m);
    q->q.push_back(d);
    q->cv.notify_one();
}

void daemon::linger(uint64_t id, session_turn& turn) noexcept {
    try {
        std::lock_guard lk(_streams_m);
        if (_cancelled.count(id)) { // (else its worker ended it meanwhile)
            _lingering.emplace(id, lingering{std::move(turn), steady_now()});
        }
    } catch (const std::bad_alloc&) { // the turn goes now
    }
}

void daemon::let_go_lingering() {
    std::vector<std::pair<uint64_t, session_turn>> go;
    {
        std::lock_guard lk(_streams_m);
        const auto now = steady_now();
        for (auto it = _lingering.begin(); it != _lingering.end();) {
            if (now - it->second.since <= linger_limit) {
                ++it;
                continue;
            }
            go.emplace_back(it->first, std::move(it->second.turn));
            it = _lingering.erase(it);
        }
    }
    for (const auto& [id, turn] : go) {
        std::fprintf(
            stderr,
            "llmosd: request %llu, cancelled, has not ended in its worker for %lld "
            "minutes: its session takes requests again\n",
            static_cast<unsigned long long>(id),
            static_cast<long long>((abandon_wait + linger_limit) / std::chrono::minutes(1)));
    }
}

void daemon::drain(std::chrono::seconds limit) {
    _draining = true;
    wait_for_none(_in_flight, limit);
    if (const uint32_t left = _in_flight.load()) {
        // Past the limit: the workers stop what they run, and the clients
        // of those still in flight get 503 (or an error event).
        std::fprintf(stderr,
                     "llmosd: %u request(s) still in flight after %lld s: cancelling them\n", left,
                     static_cast<long long>(limit.count()));
        _abandon = true;
        wait_for_none(_in_flight, abandon_wait);
    }
    if (_pool && _abandon.load()) {
        // What the workers still run (other clients' requests, which a
        // drain would run to their end) goes back to the queue.
        _pool->stop();
    } else if (_pool) {
        _pool->drain();
    }
}

daemon::admission::~admission() {
    if (d) {
        {
            std::lock_guard lk(d->_tenants_m);
            if (auto it = d->_tenant_in_flight.find(tenant);
                it != d->_tenant_in_flight.end() && --it->second == 0) {
                d->_tenant_in_flight.erase(it);
            }
        }
        m->in_flight.fetch_sub(1);
        d->_in_flight.fetch_sub(1);
    }
}

std::unique_lock<std::mutex> daemon::check_room_for_a_session(const std::string& session,
                                                              uint32_t tenant) const {
    if (!_o.max_sessions && !_o.max_sessions_per_tenant) {
        return {};
    }
    std::unique_lock lk(_new_session_m);
    auto all = llmos::list_mindspaces(*_dev);
    if (!all) {
        return lk; // not counted: the mindspace's own limits still hold
    }
    keep_sessions(*all);
    if (_o.max_sessions && all->size() >= _o.max_sessions) {
        // 403, not 429: waiting does not make room (and clients retry 429).
        throw api_error{403,
                        "this server keeps at most " + std::to_string(_o.max_sessions) +
                            " sessions (--max-sessions), and has them; end one (DELETE "
                            "/llmos/v1/sessions/NAME) before the session '" +
                            session + "' can start",
                        "invalid_request_error", "session", "too_many_sessions"};
    }
    if (!_o.max_sessions_per_tenant) {
        return lk;
    }
    // The tenant's: those whose header names it (version 1 kept none).
    size_t mine = 0;
    for (const auto& i : *all) {
        if (auto ms = llmos::mindspace::open(*_dev, llmos::ms_key{0, i.name})) {
            if (auto map = ms->map(0, page)) {
                auto st = session::stamp(map->bytes());
                mine += st && st->first >= 2 && st->second == tenant;
            }
        }
    }
    if (mine >= _o.max_sessions_per_tenant) {
        throw api_error{403,
                        "tenant " + std::to_string(tenant) + " keeps " + std::to_string(mine) +
                            " sessions, as many as one tenant may (--max-sessions-per-tenant); "
                            "end one (DELETE /llmos/v1/sessions/NAME) before the session '" +
                            session + "' can start",
                        "invalid_request_error", "session", "too_many_tenant_sessions"};
    }
    return lk;
}

void daemon::upkeep() {
    const std::chrono::seconds idle = _o.session_idle_timeout;
    const std::chrono::seconds period =
        idle.count() > 0 ? std::clamp<std::chrono::seconds>(idle / 4, 1s, 60s) : 60s;
    _looked = steady_now(); // no session was used before
    _wall_lead = wall_lead();
    std::unique_lock lk(_upkeep_m);
    while (!_upkeep_cv.wait_for(lk, period, [&] { return _upkeep_stop; })) {
        lk.unlock();
        let_go_lingering(); // (so that an idle session kept past it can end)
        try {
            if (idle.count() > 0) {
                expire_sessions(); // its listing removes what nobody holds too
            } else {
                (void)llmos::list_mindspaces(*_dev);
            }
        } catch (const std::exception& e) {
            std::fprintf(stderr, "llmosd: ending idle sessions: %s\n", e.what());
        }
        lk.lock();
    }
}

// A session is ended once it went unused for more than
// --session-idle-timeout by the steady clock (CLOCK_MONOTONIC), which nobody
// sets: a step of the wall clock neither ends every session at once (forward)
// nor keeps them on (back). The header's `used` stamp, by the wall clock,
// says a turn came: a stamp upkeep has not seen on the session was written
// since it last looked. From then the session counts by the steady clock,
// and the stamp's age by the wall clock is counted too where it can be
// trusted: the wall clock kept pace with the steady one since that look, and
// the age fits in the time since it (a stamp written since). Otherwise the
// session counts from when upkeep first saw its stamp: one an earlier llmosd
// kept (its time there is not known, whatever the stamp says), one whose
// stamp is older or newer than the wall clock allows, one with no stamp.
// The steady clock stops while the machine sleeps: as when llmosd is not
// running, nobody could use a session then, so that does not count.
void daemon::expire_sessions() {
    using steady = std::chrono::steady_clock;
    auto all = llmos::list_mindspaces(*_dev);
    if (!all) {
        return;
    }
    const std::chrono::seconds idle = _o.session_idle_timeout;
    const auto started = steady_now();
    const auto started_lead = wall_lead();
    // The stamps seen in this look (those of sessions gone are not).
    std::unordered_map<uint64_t, stamp_seen> seen;
    // How long ago `used` was written, by the wall clock read as `wall`
    // (with `lead`), where that can be trusted; else 0.
    auto trusted_age = [&](uint32_t used, uint32_t wall, std::chrono::nanoseconds lead,
                           steady::time_point now) -> steady::duration {
        if (!used || std::chrono::abs(lead - _wall_lead) > 1s) {
            return {};
        }
        // Both whole seconds: the stamp is older than this.
        const std::chrono::seconds age(int64_t{wall} - int64_t{used} - 1);
        return age > 0s && age <= now - _looked ? steady::duration(age) : steady::duration{};
    };
    // How long `ms` went unused (nullopt: a header this llmosd does not
    // read, which it leaves alone).
    auto unused_for = [&](const llmos::mindspace& ms) -> std::optional<steady::duration> {
        auto map = ms.map(0, page);
        if (!map) {
            return std::nullopt;
        }
        auto h = session::read(map->bytes());
        if (!h) {
            return std::nullopt;
        }
        // The wall clock first: `now` less the stamp's age then is no
        // earlier than when the stamp was written.
        const uint32_t wall = epoch_s();
        const auto lead = wall_lead();
        const auto now = steady_now();
        const stamp_seen* was = nullptr; // in this look, else in the last
        if (auto i = seen.find(ms.id()); i != seen.end()) {
            was = &i->second;
        } else if (auto j = _stamps.find(ms.id()); j != _stamps.end()) {
            was = &j->second;
        }
        const stamp_seen s = was && was->used == h->used
                                 ? *was
                                 : stamp_seen{h->used, now - trusted_age(h->used, wall, lead, now)};
        seen.insert_or_assign(ms.id(), s);
        return now - s.since;
    };
    auto idle_now = [&](const llmos::mindspace& ms) {
        auto t = unused_for(ms);
        return t && *t > idle;
    };
    keep_sessions(*all);
    for (const llmos::ms_info& i : *all) {
        auto ms = llmos::mindspace::open(*_dev, llmos::ms_key{0, i.name});
        if (!ms || !idle_now(*ms)) {
            continue;
        }
        ms = std::error_code(); // end_session() opens it again, its turn taken
        const std::string name = i.name.substr(session_ms_prefix.size());
        try {
            // Used again since, or running now: it stays.
            if (end_session(name, std::nullopt, idle_now)) {
                _metrics.sessions_expired.fetch_add(1);
                std::fprintf(stderr, "llmosd: session '%s' unused for over %llu s: ended\n",
                             name.c_str(), static_cast<unsigned long long>(idle.count()));
            }
        } catch (const api_error& e) {
            if (e.status != 404 && e.status != 409) {
                std::fprintf(stderr, "llmosd: session '%s' unused for long: %s\n", name.c_str(),
                             e.message.c_str());
            }
        }
    }
    _stamps = std::move(seen); // of the sessions there now
    _looked = started;
    _wall_lead = started_lead;
}

std::vector<daemon::session_info> daemon::list_sessions(std::optional<uint32_t> tenant) const {
    auto all = llmos::list_mindspaces(*_dev);
    if (!all) {
        throw server_error("cannot list the sessions: " + all.error().message());
    }
    std::vector<session_info> out;
    keep_sessions(*all);
    for (const llmos::ms_info& i : *all) {
        session_info si;
        si.name = i.name.substr(session_ms_prefix.size());
        si.bytes = i.length;
        si.resident_bytes = i.resident;
        auto ms = llmos::mindspace::open(*_dev, llmos::ms_key{0, i.name});
        auto map = ms ? ms->map(0, page) : llmos::result<llmos::mapping>(ms.error());
        if (!map) {
            continue; // gone meanwhile
        }
        auto st = session::stamp(map->bytes());
        if (st && st->first >= 2) {
            si.tenant = st->second;
        }
        if (tenant && si.tenant != tenant) {
            continue;
        }
        if (auto h = session::read(map->bytes())) {
            si.model = session::model_of(*h);
            si.kind = h->flags & session::chat_text         ? "chat"
                      : h->flags & session::completion_text ? "completion"
                                                            : "";
            si.conversation_bytes = h->text_len;
            if (h->used) {
                si.last_used = h->used;
            }
            si.full = h->flags & session::overflowed;
        } else {
            si.readable = false;
        }
        out.push_back(std::move(si));
    }
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.name < b.name; });
    return out;
}

std::string daemon::device_lost() const {
    std::lock_guard lk(_lost_m);
    return _lost;
}

api_error daemon::device_lost_error(const std::string& why) {
    return {503, "the server's GPU failed (" + why + "); it restarts: retry shortly",
            "server_error", "", "device_lost"};
}

void daemon::throw_device_lost() const {
    throw device_lost_error(device_lost());
}

// The answer to a request the server will not run as it stops: 503
// device_lost when its GPU failed, else 503 draining.
void daemon::throw_shutting_down() const {
    if (!device_lost().empty()) {
        throw_device_lost();
    }
    throw api_error{503, "the server is shutting down", "server_error", "", "draining"};
}

// Once a drain ran out of time, or the GPU was lost, a request that waited
// (for its session's turn, for the tokenizer) is not started: it is
// answered at once, before anything of it is sent.
void daemon::throw_if_abandoned() const {
    if (_abandon.load()) {
        throw_shutting_down();
    }
}

daemon::admission daemon::admit(const job& j, uint32_t tenant) {
    if (_draining) {
        throw_shutting_down();
    }
    // The model, held (its in_flight counted) before it is looked up again:
    // an unload or swap that took the name meanwhile either sees it held
    // (and waits for it) or is seen here (and the one now named is taken).
    std::shared_ptr<model_entry> m;
    for (int tries = 0; !m; ++tries) {
        auto found = find_model(j.model);
        if (!found || tries == 8) {
            throw api_error{404, "the model '" + j.model + "' does not exist",
                            "invalid_request_error", "model", "model_not_found"};
        }
        found->in_flight.fetch_add(1);
        if (find_model(j.model) == found) {
            m = std::move(found);
        } else {
            found->in_flight.fetch_sub(1);
        }
    }
    struct held_model {
        std::shared_ptr<model_entry>& m;
        ~held_model() {
            if (m) {
                m->in_flight.fetch_sub(1); // refused: no longer held
            }
        }
    } held{m};
    if (_in_flight.fetch_add(1) >= _o.max_queue) {
        _in_flight.fetch_sub(1);
        _metrics.rejected.fetch_add(1);
        throw api_error{429, "too many requests in flight; retry shortly", "rate_limit_error", "",
                        "overloaded"};
    }
    // Counted first, then checked again: a drain that began in between
    // either sees this one in flight (and waits for it) or is seen here.
    if (_draining) {
        _in_flight.fetch_sub(1);
        throw_shutting_down();
    }
    {
        std::lock_guard lk(_tenants_m);
        uint32_t& mine = _tenant_in_flight[tenant];
        if (_o.max_queue_per_tenant && mine >= _o.max_queue_per_tenant) {
            if (!mine) {
                _tenant_in_flight.erase(tenant);
            }
            _in_flight.fetch_sub(1);
            _metrics.rejected.fetch_add(1);
            throw api_error{429,
                            "tenant " + std::to_string(tenant) + " has " +
                                std::to_string(_o.max_queue_per_tenant) +
                                " requests in flight, as many as one tenant may "
                                "(--max-queue-per-tenant); retry shortly",
                            "rate_limit_error", "", "tenant_overloaded"};
        }
        ++mine;
    }
    return admission(this, std::move(m), tenant); // holds it from now
}

outcome daemon::run(const job& j, uint32_t tenant,
                    const std::function<bool(std::string_view)>& on_piece) {
    auto a = admit(j, tenant);
    return run(j, tenant, on_piece, std::move(a));
}

outcome daemon::run(const job& j, uint32_t tenant,
                    const std::function<bool(std::string_view)>& on_piece, admission a) {
    auto s = submit(j, tenant, std::move(a), [&] { return on_piece({}); });
    return finish(*s, on_piece);
}

daemon::submitted::~submitted() {
    if (!finished && client && q && !j.session.empty()) {
        // Never streamed (its client went before, or the server stops). A
        // session's turn is let go only once its worker stopped writing
        // the session's request area (or abandon_wait passed), as finish()
        // does: finish() it for a client that is gone.
        try {
            (void)d->finish(*this, [](std::string_view) { return false; });
        } catch (...) { // its answer goes to nobody
        }
    }
    if (!finished && client) {
        // Never streamed (its client went before): nobody waits for it.
        d->cancel(*client, id);
        d->detach(id);
        if (!q && !j.session.empty()) {
            // Not finish()ed (no queue to wait on): a worker may have it,
            // and write to the session's request area until its end.
            d->linger(id, turn);
        }
    }
    if (j.session.empty() && ms && d->_dev->kind() == llmos::backend_kind::local) {
        // The request's mindspace goes with its last holder. The local
        // backend's file goes when something looks at it then: each
        // request's name is used once, so nothing would until a listing.
        // (A worker still holding it leaves it to upkeep()'s.)
        const uint64_t ms_id = ms->id();
        map.reset();
        ms.reset();
        (void)llmos::mindspace_info(*d->_dev, llmos::ms_key{ms_id, {}});
    }
}

std::shared_ptr<daemon::submitted> daemon::submit(const job& j, uint32_t tenant, admission a,
                                                  const std::function<bool()>& still_wanted) {
    const double t0 = now_s();
    // --timeout counts from here: the wait for the session's turn, the
    // tokenizing and the generation together.
    const auto give_up = steady_now() + _o.request_timeout;
    timespec arrived{};
    ::clock_gettime(CLOCK_MONOTONIC, &arrived);
    std::shared_ptr<model_entry> m = a.model();

    // The session, if any: one request at a time. Another tenant's is
    // refused before it waits for the one running (checked again after).
    session_turn turn;
    if (!j.session.empty()) {
        if (!_keys.empty()) {
            const std::string name = std::string(session_ms_prefix) + j.session;
            if (auto o = llmos::mindspace::open(*_dev, llmos::ms_key{0, name})) {
                check_session_store(j.session, *o);
                check_session_owner(j.session, *o, tenant);
            } else {
                check_session_open(j.session, o.error());
            }
        }
        auto gate = this->session_lock(j.session);
        while (!gate->enter_for(100ms)) {
            let_go_lingering();
            throw_if_abandoned();
            if (still_wanted && !still_wanted()) {
                _metrics.cancelled.fetch_add(1);
                throw api_error{499, "the client went away", "invalid_request_error", "",
                                "cancelled"};
            }
            if (steady_now() >= give_up) {
                _metrics.timed_out.fetch_add(1);
                throw api_error{504,
                                "the session '" + j.session +
                                    "' was busy with another request for longer than --timeout",
                                "server_error", "session", "timeout"};
            }
        }
        turn = session_turn(std::move(gate));
        throw_if_abandoned(); // (the turn came as the drain ran out)
    }

    const eng::model_params& p = m->model->params();
    eng::kv_options ko{.type = eng::kv_type::f16, .block_tokens = 16, .max_tokens = _o.ctx};
    const uint64_t kv_bytes =
        round_up(llmos::llm_engine::kv_region_bytes(p, ko, m->cuda != nullptr));
    std::optional<llmos::mindspace> ms;
    std::optional<llmos::mapping> map;
    session::layout lay;
    uint32_t owner = tenant; // a session's, as its header says
    json stored;             // the session's conversation so far
    std::string stored_text;
    if (!j.session.empty()) {
        const std::string name = std::string(session_ms_prefix) + j.session;
        const session::layout want = session::for_ctx(_o.ctx);
        auto o = llmos::mindspace::open(*_dev, llmos::ms_key{0, name});
        if (!o) {
            check_session_open(j.session, o.error());
        }
        auto map_whole = [&](const llmos::mindspace& m) {
            auto r = m.map();
            if (!r) {
                throw server_error("session '" + j.session + "': " + r.error().message());
            }
            return std::move(*r);
        };
        std::optional<llmos::mapping> mp;
        std::optional<session::header> h;
        // The replaced mindspace, to put back when a larger one cannot be
        // made: its length, header and conversation (as stored, whoever's;
        // the new one gets the conversation when `h` says it is ours).
        struct {
            uint64_t length = 0;
            session::header head{};
            std::vector<std::byte> text;
        } old;
        // Sessions are counted and made under one lock (creators of other
        // names would each find room for one more); one replaced holds it
        // from its end to its remaking.
        std::unique_lock<std::mutex> room;
        if (o) {
            check_session_store(j.session, *o);
            check_session_owner(j.session, *o, tenant);
            mp.emplace(map_whole(*o));
            h = session::read(mp->bytes());
            if (!h && session::stamp(mp->bytes())) {
                // A later llmosd's, or damaged: neither read nor written over.
                throw api_error{409,
                                "the session '" + j.session +
                                    "' has a header this llmosd cannot read (a later "
                                    "version's, or damaged); DELETE /llmos/v1/sessions/" +
                                    j.session + " ends it",
                                "invalid_request_error", "session", "session_unreadable"};
            }
            bool taken_over = false;
            if (h && h->version < 2 && !_keys.empty()) {
                // Made before owners were kept (version 1): nobody's, so
                // with API keys its conversation is not read (it could be
                // any tenant's), and it becomes this tenant's: in a store
                // of its own, so that no tenant's cache is reused either
                // (how long a prompt takes would tell what it shares).
                h.reset();
                taken_over = true;
            }
            lay = h ? session::of(*h) : want;
            if (taken_over || !lay.covers(want) || lay.kv_off() + kv_bytes > o->length()) {
                // Made for a smaller context or cache (another model, --ctx
                // or --engine): a larger one replaces it, with the
                // conversation so far (the cache is of no use to this model
                // or device anyway), and regions no smaller than it had.
                if (_kv_pool) { // its K/V rows on the GPU go with it (where its header put them)
                    const auto r = session::read(mp->bytes());
                    _kv_pool->forget({o->id(), (r ? session::of(*r) : lay).kv_off()});
                }
                if (auto r = session::read(mp->bytes())) {
                    old.length = o->length();
                    std::memcpy(&old.head, mp->data(), sizeof(old.head)); // as it was
                    if (auto t = session::text(*r, mp->bytes())) {
                        old.text.assign(t->begin(), t->end());
                    }
                }
                if (h) { // h is read()'s, unless a version-1 one is nobody's
                    lay = {std::max(lay.text_cap, want.text_cap),
                           std::max(lay.req_cap, want.req_cap)};
                }
                mp.reset();
                o = std::error_code(ENOSPC, std::system_category());
                room = std::unique_lock(_new_session_m);
                if (auto e = llmos::destroy_mindspace(*_dev, llmos::ms_key{0, name})) {
                    throw api_error{500,
                                    "the session '" + j.session +
                                        "' needs a larger store for this server's --ctx and "
                                        "model, and the one it has could not be removed (" +
                                        e.message() + "); it keeps its conversation",
                                    "server_error", "session", "session_not_moved"};
                }
            }
        }
        if (!o) {
            if (!h) {
                lay = want;
            }
            if (!room.owns_lock()) { // a new one
                room = check_room_for_a_session(j.session, tenant);
            }
            o = llmos::mindspace::create(
                *_dev, {.length = lay.kv_off() + kv_bytes, .name = name, .persistent = true});
            std::optional<std::error_code> failed;
            if (!o) {
                failed = o.error();
            } else if (auto r = o->map()) {
                mp.emplace(std::move(*r));
            } else {
                failed = r.error(); // made, but of no use: the old one comes back
                o = r.error();
                llmos::destroy_mindspace(*_dev, llmos::ms_key{0, name});
            }
            if (failed) {
                const std::string why = failed->message();
                if (old.length && put_back_session(*_dev, name, old.length, old.head, old.text)) {
                    std::fprintf(stderr,
                                 "llmosd: session '%s': a larger store could not be made (%s); "
                                 "it keeps its conversation in the one it had\n",
                                 j.session.c_str(), why.c_str());
                    throw api_error{500,
                                    "the session '" + j.session + "' needs a larger store for " +
                                        "this server's --ctx and model, which could not be "
                                        "made (" +
                                        why + "); it keeps its conversation",
                                    "server_error", "session", "session_not_moved"};
                }
                throw server_error("session '" + j.session + "': " + why);
            }
            if (h) { // the conversation, and a header of the new layout
                // old.text fits: lay covers the old layout
                if (!old.text.empty()) {
                    std::memcpy(mp->data() + session::text_off, old.text.data(), old.text.size());
                }
                const uint32_t owner = h->version >= 2 ? h->tenant : tenant;
                *h = session::make(owner, session::model_of(*h), old.text.size(), lay, kv_bytes,
                                   h->flags, h->used);
            }
        }
        ms.emplace(std::move(*o));
        map.emplace(std::move(*mp));
        // A session is its tenant's from the start (its first request may
        // fail). The header is written now, for the layout the session has
        // from here on.
        const bool ours = h && session::model_of(*h) == j.model;
        auto t = h ? session::text(*h, map->bytes()) : std::nullopt;
        if (ours && t) {
            stored_text.assign(reinterpret_cast<const char*>(t->data()), t->size());
        }
        // Another model's conversation stays until this one's replaces it.
        owner = h && h->version >= 2 ? h->tenant : tenant;
        const auto nh = session::make(owner, h ? session::model_of(*h) : "", t ? t->size() : 0, lay,
                                      kv_bytes, h ? h->flags : 0, epoch_s());
        std::memcpy(map->data(), &nh, sizeof(nh));
        if (room.owns_lock()) {
            // Its header says whose it is: the next creator counts it.
            room.unlock();
        }
        if (ours && (h->flags & session::overflowed)) {
            throw api_error{400,
                            "the session '" + j.session +
                                "' outgrew its store with its last reply, which it does not "
                                "hold; DELETE /llmos/v1/sessions/" +
                                j.session + " starts it over",
                            "invalid_request_error", "session", "session_full"};
        }
        // A chat's conversation goes on only as a chat, a completion's
        // only as a completion. One kept by an llmosd that did not record
        // which is told by reading it.
        uint32_t kind = h ? h->flags & (session::chat_text | session::completion_text) : 0;
        if (!kind && !stored_text.empty()) {
            kind = is_conversation(json::parse(stored_text, nullptr, false))
                       ? session::chat_text
                       : session::completion_text;
        }
        if (!stored_text.empty() && kind && (kind == session::chat_text) != j.chat) {
            throw api_error{409,
                            "the session '" + j.session + "' holds a " +
                                (j.chat ? "completion's text" : "chat's conversation") +
                                ": continue it with " +
                                (j.chat ? "/v1/completions" : "/v1/chat/completions") +
                                ", or DELETE /llmos/v1/sessions/" + j.session + " to start it over",
                            "invalid_request_error", "session", "session_kind"};
        }
        if (j.chat && !stored_text.empty()) {
            stored = json::parse(stored_text, nullptr, false);
            if (!is_conversation(stored)) {
                // Damaged (a crash while it was written?): neither read
                // as nothing nor written over; ending it starts afresh.
                throw api_error{409,
                                "the session '" + j.session +
                                    "' holds a conversation this llmosd cannot read (damaged); "
                                    "DELETE /llmos/v1/sessions/" +
                                    j.session + " ends it",
                                "invalid_request_error", "session", "session_unreadable"};
            }
        }
    }

    // The text to run: the conversation so far (a session's, when the
    // request does not repeat it), then the request's part.
    std::string text;
    std::vector<eng::text_span> markers; // a chat's: where its special tokens may be
    std::vector<eng::chat_message> conv;
    if (j.chat) {
        std::vector<eng::chat_message> mine;
        for (auto& msg : j.messages) {
            mine.push_back({msg.role, msg.content});
        }
        bool repeats = stored.is_array() && stored.size() <= mine.size();
        for (size_t i = 0; repeats && i < stored.size(); ++i) {
            repeats = stored[i].value("role", "") == mine[i].role &&
                      stored[i].value("content", "") == mine[i].content;
        }
        // A request with an assistant message in it is a whole
        // conversation (a new turn's messages are the user's, and a system
        // message): one that differs from the stored one (its oldest turns
        // dropped, a reply regenerated or edited, another system message)
        // replaces it, instead of coming after it. The cache keeps what the
        // two share.
        const bool whole = std::any_of(mine.begin(), mine.end(), [](const eng::chat_message& msg) {
            return msg.role == "assistant";
        });
        if (!repeats && !whole && stored.is_array()) {
            for (auto& s : stored) {
                conv.push_back({s.value("role", ""), s.value("content", "")});
            }
            // A client that sends its system message with every turn's new
            // messages (llmosctl run --session S --system X) does not get
            // it again in the middle of the conversation.
            // (A request of that system message alone stays as it is.)
            if (!conv.empty() && mine.size() > 1 && conv.front().role == "system" &&
                mine.front().role == "system" && mine.front().content == conv.front().content) {
                mine.erase(mine.begin());
            }
        }
        conv.insert(conv.end(), mine.begin(), mine.end());
        try {
            eng::rendered_chat r = eng::render_chat(*m->vocab, conv, true);
            text = std::move(r.text);
            markers = std::move(r.markers);
        } catch (const std::exception& e) {
            throw api_error{400, std::string("cannot render the chat: ") + e.what(),
                            "invalid_request_error", "messages", ""};
        }
    } else {
        text = j.prompt.starts_with(stored_text) ? j.prompt : stored_text + j.prompt;
    }
    // A chat's special tokens are its template's: a message's "<|im_end|>"
    // is text (gen_special_spans). A completion's prompt is all text.
    const uint32_t flags = j.chat ? llmos::gen_special_spans | llmos::gen_no_bos : 0;
    std::vector<int32_t> prompt_tokens;
    {
        // Others' prompts are tokenized meanwhile (a second or two for a
        // 1 MiB body): past a while, busy.
        const bool got = _tokenizing.try_acquire_until(std::min(give_up, steady_now() + 30s));
        if (got && _abandon.load()) {
            _tokenizing.release();
            throw_if_abandoned();
        }
        if (!got) {
            if (steady_now() >= give_up) {
                _metrics.timed_out.fetch_add(1);
                throw api_error{504,
                                "the request waited for the tokenizer past the server's timeout "
                                "(" +
                                    std::to_string(_o.request_timeout.count()) + " s)",
                                "server_error", "", "timeout"};
            }
            throw api_error{503, "the server is busy tokenizing other prompts; retry shortly",
                            "server_error", "", "overloaded"};
        }
        const struct release {
            std::counting_semaphore<>& s;
            ~release() { s.release(); }
        } held{_tokenizing};
        prompt_tokens =
            j.chat ? m->vocab->encode(text, false, markers) : m->vocab->encode(text, true, false);
    }
    // A session's conversation counts: say how to start it over.
    const std::string restart =
        j.session.empty() ? ""
                          : " (with the session's conversation; DELETE /llmos/v1/sessions/" +
                                j.session + " starts it over)";
    if (prompt_tokens.empty()) {
        // Nothing to continue from (an empty prompt, a model without BOS).
        throw api_error{400,
                        std::string("the ") + (j.chat ? "chat renders" : "prompt is") +
                            " to no tokens: there is nothing to continue from",
                        "invalid_request_error", j.chat ? "messages" : "prompt", "empty_prompt"};
    }
    if (prompt_tokens.size() >= _o.ctx) {
        throw api_error{400,
                        "the prompt is " + std::to_string(prompt_tokens.size()) + " tokens" +
                            restart + "; this server's context holds " + std::to_string(_o.ctx),
                        "invalid_request_error", j.chat ? "messages" : "prompt",
                        "context_length_exceeded"};
    }
    uint32_t max_tokens = j.max_tokens ? j.max_tokens : _o.default_max_tokens;
    max_tokens = std::min<uint32_t>(max_tokens, _o.ctx - uint32_t(prompt_tokens.size()));

    llmos::gen_request_header h;
    h.flags = flags;
    h.max_tokens = max_tokens;
    h.temperature = j.temperature;
    h.top_p = j.top_p;
    h.top_k = j.top_k;
    h.min_p = j.min_p;
    h.repeat_penalty = j.repeat_penalty;
    h.presence_penalty = j.presence_penalty;
    h.frequency_penalty = j.frequency_penalty;
    h.repeat_last_n = j.repeat_last_n;
    h.seed = j.seed ? *j.seed : (uint64_t(::getpid()) << 32) ^ _req_seq.fetch_add(1) ^ uint64_t(t0);
    h.model = m->id;
    // The markers go with the request: the worker tokenizes as above.
    std::vector<llmos::gen_span> spans;
    for (const eng::text_span& sp : markers) {
        spans.push_back({uint32_t(sp.off), uint32_t(sp.len)});
    }
    auto req = llmos::build_gen_request(h, text, j.stop, spans);
    const uint64_t out_room = uint64_t(max_tokens) * 48 + 4096;
    uint64_t req_off = 0;
    if (ms) {
        if (req.size() + out_room + 64 > lay.req_cap) {
            throw api_error{400, "the request is too large for a session" + restart,
                            "invalid_request_error", "", ""};
        }
        // What the session keeps after this turn is at least this.
        const uint64_t kept = j.chat ? conversation_json(conv).size() : text.size();
        if (kept > lay.text_cap) {
            throw api_error{400,
                            "the session's conversation would be " + std::to_string(kept) +
                                " bytes; its store holds " + std::to_string(lay.text_cap) + restart,
                            "invalid_request_error", "session", "session_full"};
        }
        req_off = lay.req_off();
        auto* hdr = reinterpret_cast<llmos::gen_request_header*>(req.data());
        hdr->kv_off = lay.kv_off();
        hdr->kv_len = kv_bytes;
    } else {
        const std::string name =
            "llmosd.r." + std::to_string(::getpid()) + "." + std::to_string(_req_seq.fetch_add(1));
        auto o = llmos::mindspace::create(
            *_dev, {.length = round_up(req.size() + out_room + 64), .name = name});
        if (!o) {
            throw server_error("cannot make the request's mindspace: " + o.error().message());
        }
        ms.emplace(std::move(*o));
        auto mp = ms->map();
        if (!mp) {
            throw server_error("cannot map the request's mindspace: " + mp.error().message());
        }
        map.emplace(std::move(*mp));
    }
    std::memcpy(map->data() + req_off, req.data(), req.size());

    auto client = llmos::sched_client::open(*_dev);
    if (!client) {
        throw server_error("scheduler: " + client.error().message());
    }
    llmos::submit_options so{.tenant = tenant,
                             .priority = j.priority,
                             .cost = max_tokens,
                             .deadline_ns = 0,
                             .ms_id = ms->id(),
                             .prompt_off = req_off,
                             .prompt_len = req.size()};
    if (j.deadline_ms) { // from submit(), when the body was read
        so.deadline_ns = uint64_t(arrived.tv_sec) * 1000000000ull + uint64_t(arrived.tv_nsec) +
                         j.deadline_ms * 1000000ull;
    }
    // Made before the request is: nothing that can fail comes between
    // the scheduler taking it and its holder, which cancels it if it goes.
    auto s = std::make_shared<submitted>(this, j, std::move(a));
    auto id = client->submit(so);
    if (!id && id.error() == std::errc::no_space_on_device) {
        // The scheduler keeps as many tenants as it may, none idle.
        throw api_error{503,
                        "the scheduler has no room for another tenant now (every one it keeps "
                        "has requests in flight); retry shortly",
                        "server_error", "", "too_many_tenants"};
    }
    if (!id && id.error() == std::errc::operation_not_permitted) {
        throw api_error{403,
                        "llmosd may not schedule requests as tenant " + std::to_string(tenant) +
                            ": the llmos module lets llmosd's user submit as its own tenant or "
                            "those root granted it only (llmosctl sched grant)",
                        "permission_error", "", "tenant_not_granted"};
    }
    if (!id) {
        throw server_error("scheduler: submit: " + id.error().message());
    }
    s->id = *id;
    s->client.emplace(std::move(*client));
    s->turn = std::move(turn);
    s->ms = std::move(ms);
    s->map = std::move(map);
    s->q = attach(*id);
    _metrics.requests.fetch_add(1);
    _metrics.prompt_tokens.fetch_add(prompt_tokens.size());
    s->t0 = t0;
    s->tenant = tenant;
    s->owner = owner;
    s->deadline = give_up;
    s->conv = std::move(conv);
    s->text = std::move(text);
    s->n_prompt = static_cast<uint32_t>(prompt_tokens.size());
    s->max_tokens = max_tokens;
    s->kv_bytes = kv_bytes;
    s->lay = lay;
    s->req_off = req_off;
    s->req_size = req.size();
    return s;
}

outcome daemon::finish(submitted& s, const std::function<bool(std::string_view)>& on_piece) {
    s.finished = true; // whatever happens below, it ends here
    const job& j = s.j;
    const double t0 = s.t0;
    auto& map = s.map;
    auto& client = s.client;
    const uint64_t id = s.id;
    const uint64_t req_off = s.req_off;
    auto& q = s.q;
    const uint64_t out_off = llmos::output_offset(req_off, s.req_size);
    uint64_t seen_end = out_off; // what the client has; a restarted worker repeats it
    outcome out;
    out.prompt_tokens = s.n_prompt;
    // Why the request was cancelled, if it was.
    enum class stop { none, client_gone, timeout, shutdown } stopped = stop::none;
    bool ended = false, first = true;
    int32_t fail_status = 0;
    bool cut = false; // a limit ended it (the done descriptor says)
    const auto deadline = s.deadline;
    auto cancelled_at = std::chrono::steady_clock::time_point{};
    std::optional<llmos::finished_request> fin;
    auto stop_it = [&](stop why) {
        stopped = why;
        cancelled_at = steady_now();
        cancel(*client, id);
    };
    while (!ended) {
        // Checked at every turn: a stream that never pauses has no idle turns.
        if (stopped == stop::none && _abandon.load()) {
            stop_it(stop::shutdown); // drain() ran out of time
        } else if (stopped == stop::none && steady_now() >= deadline) {
            stop_it(stop::timeout);
        }
        llmos::descriptor d{};
        {
            std::unique_lock lk(q->m);
            const auto until = stopped == stop::none ? std::min(deadline, steady_now() + 200ms)
                                                     : steady_now() + 50ms;
            if (!q->cv.wait_until(lk, until, [&] { return !q->q.empty(); })) {
                lk.unlock();
                if (stopped == stop::none && !on_piece({})) { // is the client still there?
                    stop_it(stop::client_gone);
                }
                if (stopped != stop::none) {
                    // Cancelled before a worker took it, it is finished at
                    // once and no worker ends it. One a worker took is
                    // finished at once too, but its worker writes its
                    // output until it looks (after its step). In a
                    // session that is the session's request area, which
                    // its next turn rewrites once this one lets it go: so
                    // a session's request waits for the worker's end
                    // descriptor, or abandon_wait at most. One requeued
                    // (its worker gave it back or died), then cancelled
                    // while queued again, has no dispatch time either: no
                    // worker holds it. A request of its own mindspace is
                    // let go at once.
                    if (!fin) {
                        if (auto f = client->wait(id, llmos::wait_for::none())) {
                            fin = *f;
                            if (!f->dispatch_ns) { // no worker holds it: none ends it
                                std::lock_guard slk(_streams_m);
                                _cancelled.erase(id);
                                break;
                            }
                            if (j.session.empty()) {
                                break;
                            }
                        }
                    }
                    if (steady_now() - cancelled_at > abandon_wait) {
                        // A session's: its worker is in a long step, and
                        // writes its output there after it. The session's
                        // turn waits for its end (deliver()), or linger_limit.
                        if (!j.session.empty()) {
                            linger(id, s.turn);
                        }
                        break;
                    }
                }
                continue;
            }
            d = q->q.front();
            q->q.pop_front();
        }
        if (d.kind == uint32_t(llmos::output_kind::tokens)) {
            uint64_t end = d.offset + d.length;
            if (end <= seen_end || end > map->size()) {
                continue;
            }
            uint64_t from = std::max<uint64_t>(d.offset, seen_end);
            std::string_view piece(reinterpret_cast<const char*>(map->data()) + from, end - from);
            seen_end = end;
            out.text.append(piece);
            if (first) {
                first = false;
                _metrics.ttft.observe(now_s() - t0);
            }
            if (stopped == stop::none && !on_piece(piece)) {
                stop_it(stop::client_gone);
            }
        } else {
            ended = true;
            fail_status = d.kind == uint32_t(llmos::output_kind::failed) ? -1 : 0;
            cut = d.kind == uint32_t(llmos::output_kind::done_cut);
        }
    }
    detach(id);
    auto f = fin ? llmos::result<llmos::finished_request>(*fin)
                 : client->wait(id, llmos::wait_for::at_most(10s));
    if (f && f->state == LLMOS_REQ_COMPLETED) { // (a failed one may say some)
        _metrics.generated_tokens.fetch_add(f->tokens);
    }
    if (stopped == stop::none && _abandon.load() && (!f || f->state != LLMOS_REQ_COMPLETED)) {
        stopped = stop::shutdown; // its worker stopped it first
    }
    switch (stopped) {
    case stop::none:
        break;
    case stop::client_gone:
        _metrics.cancelled.fetch_add(1);
        throw api_error{499, "the client went away", "invalid_request_error", "", "cancelled"};
    case stop::timeout:
        _metrics.timed_out.fetch_add(1);
        throw api_error{504,
                        "the request took longer than the server's timeout (" +
                            std::to_string(_o.request_timeout.count()) + " s)",
                        "server_error", "", "timeout"};
    case stop::shutdown:
        _metrics.cancelled.fetch_add(1);
        throw_shutting_down();
    }
    if (!f || fail_status || f->state != LLMOS_REQ_COMPLETED) {
        int32_t st = f ? f->status : 0;
        _metrics.server_errors.fetch_add(1);
        if (st == -E2BIG) {
            throw api_error{400, "the prompt does not fit this server's context",
                            "invalid_request_error", "", "context_length_exceeded"};
        }
        if (st == -ENOMEM && _kv_pool) {
            throw api_error{503,
                            "the GPU's KV memory (--gpu-kv-memory) is taken by requests in "
                            "flight; retry shortly",
                            "server_error", "", "overloaded"};
        }
        if (st == -EAGAIN) {
            // Its conversation's cache is still held by the request before
            // it (cancelled, not yet let go by its worker).
            throw api_error{503,
                            "the conversation's cache is still in use by the request before "
                            "this one; retry shortly",
                            "server_error", "", "overloaded"};
        }
        throw server_error("the request failed in its worker (" +
                           std::string(st ? std::strerror(-st) : "no status") + ")");
    }
    // What the worker wrote is the truth (streamed pieces may lag).
    // (A worker reports the range: it may be any two numbers, and their
    // sum may wrap.)
    if (f->result_len && f->result_off <= map->size() &&
        f->result_len <= map->size() - f->result_off) {
        out.text.assign(reinterpret_cast<const char*>(map->data()) + f->result_off, f->result_len);
    }
    out.completion_tokens = f->tokens;
    // The worker says whether a limit (max_tokens, the context, the output
    // area) ended it, or the model (an end token, a stop string).
    out.finish_reason = cut ? "length" : "stop";
    _metrics.ok.fetch_add(1);
    _metrics.latency.observe(now_s() - t0);

    if (!j.session.empty()) {
        auto conv = s.conv;
        conv.push_back({"assistant", out.text});
        const std::string keep = j.chat ? conversation_json(conv) : s.text + out.text;
        const auto h = session::read(map->bytes());
        uint32_t flags = j.chat ? session::chat_text : session::completion_text;
        if (keep.size() <= s.lay.text_cap) {
            std::memcpy(map->data() + session::text_off, keep.data(), keep.size());
        } else {
            // Not kept: the next turn would not follow what the client saw,
            // so it is refused, saying why (session_full).
            flags |= session::overflowed;
            _metrics.session_overflows.fetch_add(1);
            std::fprintf(stderr,
                         "llmosd: session '%s': the conversation (%zu bytes) outgrew its store "
                         "(%llu bytes); its next turn is refused until it is ended\n",
                         j.session.c_str(), keep.size(),
                         static_cast<unsigned long long>(s.lay.text_cap));
        }
        const bool before = h && session::model_of(*h) == j.model; // this model's turns
        const uint64_t len = !(flags & session::overflowed) ? keep.size()
                             : before                       ? h->text_len
                                                            : 0;
        const auto nh = session::make(s.owner, j.model, len, s.lay, s.kv_bytes, flags, epoch_s());
        std::memcpy(map->data(), &nh, sizeof(nh));
    }
    return out;
}

std::string daemon::prometheus() const {
    std::string o;
    auto counter = [&](const char* name, const char* help, uint64_t v) {
        o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name +
             " " + std::to_string(v) + "\n";
    };
    auto gauge = [&](const char* name, const char* help, double v) {
        char b[64];
        std::snprintf(b, sizeof(b), "%.6g", v);
        o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name +
             " " + b + "\n";
    };
    counter("llmosd_requests_total",
            "generation requests submitted (those that ended waiting for their session or the "
            "tokenizer count only as cancelled or timed out)",
            _metrics.requests.load());
    counter("llmosd_requests_ok_total", "generation requests completed", _metrics.ok.load());
    counter("llmosd_requests_rejected_total", "requests refused with 429",
            _metrics.rejected.load());
    counter("llmosd_requests_cancelled_total",
            "requests whose client went away, or that a shutdown's drain ran out on",
            _metrics.cancelled.load());
    counter("llmosd_requests_failed_total", "requests that failed in a worker",
            _metrics.server_errors.load());
    counter("llmosd_requests_timed_out_total", "requests cancelled at --timeout (504)",
            _metrics.timed_out.load());
    counter("llmosd_prompt_tokens_total", "prompt tokens", _metrics.prompt_tokens.load());
    counter("llmosd_worker_prompt_tokens_total",
            "prompt tokens as the workers tokenized them (again for a request taken again)",
            _metrics.worker_prompt_tokens.load());
    counter("llmosd_generated_tokens_total", "generated tokens of the requests completed",
            _metrics.generated_tokens.load());
    counter("llmosd_worker_generated_tokens_total",
            "tokens the workers generated (cancelled requests' too, and again for a request "
            "taken again)",
            _metrics.worker_generated_tokens.load());
    counter("llmosd_sessions_expired_total",
            "sessions ended for being unused past --session-idle-timeout",
            _metrics.sessions_expired.load());
    counter("llmosd_session_overflows_total",
            "session turns whose conversation outgrew the session's store (not kept)",
            _metrics.session_overflows.load());
    gauge("llmosd_in_flight", "requests in flight", _in_flight.load());
    {
        std::lock_guard lk(_sessions_m);
        gauge("llmosd_sessions_active", "sessions with a request running or waiting",
              double(_session_locks.size()));
    }
    if (auto st = llmos::scheduler_stats(*_dev)) {
        gauge("llmosd_queue_depth", "requests queued in the scheduler",
              double(st->nr[LLMOS_REQ_QUEUED]));
        gauge("llmosd_running", "requests running in workers", double(st->nr[LLMOS_REQ_RUNNING]));
        gauge("llmosd_workers", "workers registered with the scheduler", st->workers);
    }
    uint64_t ms_bytes = 0, resident = 0;
    if (auto l = llmos::list_mindspaces(*_dev)) {
        for (auto& i : *l) {
            ms_bytes += i.length;
            resident += i.resident;
        }
    }
    gauge("llmosd_mindspace_bytes", "bytes of the mindspaces this user may read", double(ms_bytes));
    gauge("llmosd_mindspace_resident_bytes", "their resident bytes", double(resident));
    if (_kv_pool) {
        const llmos::kv_pool_stats ks = _kv_pool->stats();
        gauge("llmosd_gpu_kv_bytes", "GPU memory backing KV caches", double(ks.mapped_bytes));
        gauge("llmosd_gpu_kv_capacity_bytes", "GPU memory KV caches may take", double(ks.capacity));
        gauge("llmosd_gpu_kv_regions", "KV regions held on the GPU", ks.regions);
        counter("llmosd_gpu_kv_evictions_total", "idle KV regions dropped to make room",
                ks.evictions);
        counter("llmosd_gpu_kv_resumed_total", "requests that found their conversation on the GPU",
                ks.resumed);
        counter("llmosd_gpu_steps_replayed_total",
                "GPU steps run as one CUDA graph launch (the others launch each kernel)",
                _metrics.graph_replays.load());
        counter("llmosd_gpu_graph_captures_total", "CUDA graphs captured",
                _metrics.graph_captures.load());
        counter("llmosd_gpu_graph_failures_total",
                "CUDA graph captures that failed (their steps launched instead)",
                _metrics.graph_capture_failures.load());
    }
    if (_o.publish_gpu_kv) {
        size_t n = 0;
        {
            std::lock_guard lk(_published_m);
            for (const auto& [name, w] : _published) {
                auto p = w.lock();
                n += p && p->ms;
            }
        }
        gauge("llmosd_gpu_kv_published", "sessions' K/V rows published as module mindspaces",
              double(n));
    }
    _metrics.latency.write(o, "llmosd_request_duration_seconds",
                           "time from submission to the last token");
    _metrics.ttft.write(o, "llmosd_time_to_first_token_seconds",
                        "time from submission to the first token");
    return o;
}

} // namespace llmosd
