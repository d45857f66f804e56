// SPDX-License-Identifier: MIT
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <llmos/engine/sampling.hh>
#include <llmos/engine/unicode.hh>
#include <llmos/generation.hh>
#include <llmos/llm_engine.hh>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <tuple>
#include <utility>

namespace llmos {

std::optional<gen_request> parse_gen_request(std::span<const std::byte> bytes, std::string* why) {
    auto fail = [&](const char* w) -> std::optional<gen_request> {
        if (why) {
            *why = w;
        }
        return std::nullopt;
    };
    gen_request r;
    // The words every version starts with: magic and version.
    if (bytes.size() < 2 * sizeof(uint32_t)) {
        return fail("request shorter than its header");
    }
    std::memcpy(&r.h.magic, bytes.data(), sizeof(r.h.magic));
    std::memcpy(&r.h.version, bytes.data() + sizeof(r.h.magic), sizeof(r.h.version));
    if (r.h.magic != gen_magic) {
        return fail("not a generation request (bad magic)");
    }
    const uint64_t head = gen_header_size(r.h.version);
    if (!head) {
        return fail("unsupported generation request version");
    }
    if (bytes.size() < head) {
        return fail("request shorter than its header");
    }
    // A version 1 header keeps the defaults of what comes after it.
    std::memcpy(static_cast<void*>(&r.h), bytes.data(), head);
    if (r.h.flags & ~uint32_t(gen_known_flags)) {
        return fail("unknown generation request flags");
    }
    if (r.h.repeat_last_n < -1 || r.h.reserved) {
        return fail("bad repeat_last_n or reserved word");
    }
    uint64_t need = head + uint64_t(r.h.text_len) + r.h.stop_bytes;
    if (need > bytes.size()) {
        return fail("text and stop strings run past the request");
    }
    const char* p = reinterpret_cast<const char*>(bytes.data()) + head;
    r.text = {p, r.h.text_len};
    std::string_view stops(p + r.h.text_len, r.h.stop_bytes);
    while (!stops.empty()) {
        auto nul = stops.find('\0');
        if (nul == std::string_view::npos) {
            return fail("a stop string without its NUL");
        }
        r.stop.emplace_back(stops.substr(0, nul));
        stops.remove_prefix(nul + 1);
    }
    r.size = need;
    if (r.h.flags & gen_special_spans) {
        const uint64_t at = need;
        uint32_t n = 0;
        if (bytes.size() - at < sizeof(n)) {
            return fail("special-token spans run past the request");
        }
        std::memcpy(&n, bytes.data() + at, sizeof(n));
        if (uint64_t(n) * sizeof(gen_span) > bytes.size() - at - sizeof(n)) {
            return fail("special-token spans run past the request");
        }
        r.special_at.resize(n);
        if (n) { // (an empty vector's data() may be null)
            std::memcpy(r.special_at.data(), bytes.data() + at + sizeof(n), n * sizeof(gen_span));
        }
        uint64_t end = 0;
        for (const gen_span& sp : r.special_at) {
            if (sp.off < end || uint64_t(sp.off) + sp.len > r.h.text_len) {
                return fail("special-token spans out of order or past the text");
            }
            end = uint64_t(sp.off) + sp.len;
        }
        r.size = at + sizeof(n) + uint64_t(n) * sizeof(gen_span);
    }
    return r;
}

std::vector<std::byte> build_gen_request(const gen_request_header& h, std::string_view text,
                                         std::span<const std::string> stop,
                                         std::span<const gen_span> special_at) {
    gen_request_header hh = h;
    hh.magic = gen_magic;
    hh.version = gen_version;
    hh.text_len = static_cast<uint32_t>(text.size());
    hh.stop_bytes = 0;
    for (auto& s : stop) {
        hh.stop_bytes += static_cast<uint32_t>(s.size() + 1);
    }
    const bool spans = (hh.flags & gen_special_spans) != 0;
    const auto n = static_cast<uint32_t>(spans ? special_at.size() : 0);
    std::vector<std::byte> out(sizeof(hh) + hh.text_len + hh.stop_bytes +
                               (spans ? sizeof(n) + n * sizeof(gen_span) : 0));
    std::memcpy(out.data(), &hh, sizeof(hh));
    std::memcpy(out.data() + sizeof(hh), text.data(), text.size());
    size_t at = sizeof(hh) + text.size();
    for (auto& s : stop) {
        std::memcpy(out.data() + at, s.data(), s.size());
        at += s.size() + 1;
    }
    if (spans) {
        std::memcpy(out.data() + at, &n, sizeof(n));
        if (n) {
            std::memcpy(out.data() + at + sizeof(n), special_at.data(), n * sizeof(gen_span));
        }
    }
    return out;
}

namespace {

namespace eng = engine;

// The conversation caches in mindspaces that a sequence of this process
// has open, as byte ranges of their mindspace: two requests whose regions
// overlap (the same one, or two that share bytes) would write them at once.
class kv_leases {
public:
    struct key {
        uint64_t ms_id = 0;
        uint64_t off = 0; ///< [off, end) of the mindspace
        uint64_t end = 0;
        bool operator<(const key& o) const noexcept {
            return std::tie(ms_id, off, end) < std::tie(o.ms_id, o.off, o.end);
        }
    };
    /// Takes [k.off, k.end) of k.ms_id: false when a held range overlaps it.
    static bool take(key k) {
        std::lock_guard g(m());
        auto& h = held();
        // Held ranges do not overlap: only the last one that starts before
        // k ends can reach into it.
        auto it = h.lower_bound({k.ms_id, k.end, 0});
        if (it != h.begin() && std::prev(it)->ms_id == k.ms_id && std::prev(it)->end > k.off) {
            return false;
        }
        return h.insert(k).second;
    }
    static void give(key k) noexcept {
        std::lock_guard g(m());
        held().erase(k);
    }

private:
    static std::mutex& m() {
        static std::mutex mu;
        return mu;
    }
    static std::set<key>& held() {
        static std::set<key> s;
        return s;
    }
};

// A sequence's KV cache, on the CPU or a GPU.
struct seq_kv {
    /// Its region of a mindspace, held (let go after the cache is closed).
    std::optional<kv_leases::key> lease;
    seq_kv() = default;
    seq_kv(const seq_kv&) = delete;
    seq_kv& operator=(const seq_kv&) = delete;
    virtual ~seq_kv() {
        if (lease) {
            kv_leases::give(*lease);
        }
    }
    virtual uint32_t capacity() const noexcept = 0;
    virtual std::span<const int32_t> tokens() const noexcept = 0;
    virtual void truncate(uint32_t n) noexcept = 0;
    /// Takes `mem` (kv_off of the sequence's mindspace) for it; false when
    /// another sequence of this process holds bytes of it.
    bool take(const sequence& s, uint64_t kv_off, std::span<std::byte> mem) {
        const kv_leases::key k{s.req.ms_id, kv_off, kv_off + mem.size()};
        if (!kv_leases::take(k)) {
            return false;
        }
        lease = k;
        return true;
    }
};

struct cpu_kv final : seq_kv {
    std::optional<eng::kv_memory> own; ///< its cache, when the request keeps none
    std::optional<eng::kv_cache> kv;
    uint32_t capacity() const noexcept override { return kv->capacity(); }
    std::span<const int32_t> tokens() const noexcept override { return kv->tokens(); }
    void truncate(uint32_t n) noexcept override { kv->truncate(n); }
};

struct gpu_kv final : seq_kv {
    std::optional<eng::kv_memory> own; ///< its bookkeeping, when the request keeps none
    kv_pool::lease rows;               ///< its K/V rows on the device
    std::optional<eng::cuda_kv_cache> kv;
    uint32_t capacity() const noexcept override { return kv->capacity(); }
    std::span<const int32_t> tokens() const noexcept override { return kv->tokens(); }
    void truncate(uint32_t n) noexcept override { kv->truncate(n); }
};

struct step_part {
    seq_kv* kv = nullptr;
    std::span<const int32_t> tokens;
    float* logits = nullptr;
    bool prompt = false; ///< prompt tokens (else one generated token)
};

/// What opening a sequence's cache gave.
struct opened {
    std::unique_ptr<seq_kv> kv;
    engine_status status = engine_status::ok;
    int err = 0; ///< with bad_input
};

opened refuse(engine_status st, int err = 0) {
    return {nullptr, st, err};
}

} // namespace

struct llm_engine::impl {
    struct seq_state {
        std::vector<int32_t> prompt;
        size_t fed = 0; // prompt tokens in the cache
        uint32_t max_tokens = 0;
        uint32_t generated = 0;
        int32_t next = -1; // sampled, not yet in the cache
        std::unique_ptr<seq_kv> kv;
        std::optional<eng::sampler> sampler;
        std::optional<eng::stop_matcher> stop;
        std::optional<eng::stream_decoder> dec;
        std::vector<float> logits;
        std::string piece;
    };

    const eng::model& m;
    const eng::vocab& v;
    llm_engine_options o;
    llm_engine_stats stats;
    std::vector<step_part> parts;
    std::vector<sequence*> in_batch;

    /// The most input bytes one token stands for: no token's text is
    /// shorter than what it encodes (SentencePiece's '▁' and byte-level
    /// BPE's mapped bytes take more, byte-fallback tokens "<0xAB>" six).
    size_t max_token_bytes = 1;

    impl(const eng::model& mm, const eng::vocab& vv, llm_engine_options oo)
        : m(mm)
        , v(vv)
        , o(oo) {
        for (int32_t id = 0; id < v.n_tokens(); ++id) {
            max_token_bytes = std::max(max_token_bytes, v.token_text(id).size());
        }
    }
    virtual ~impl() = default;

    virtual bool gpu() const noexcept = 0;
    virtual uint32_t max_batch_tokens() const noexcept = 0;
    /// Opens `s`'s cache in `mem`, or (`mem` empty) one of its own for
    /// `own_tokens` positions.
    virtual opened open(std::span<std::byte> mem, uint64_t kv_off, uint32_t own_tokens,
                        const sequence& s) = 0;
    /// Makes `kv` ready for `n` more positions: 0, or -ENOSPC (its cache
    /// has no block left for them) or -ENOMEM (no memory for them).
    virtual int prepare(seq_kv& kv, uint32_t n) = 0;
    virtual eng::step_status step(std::span<const step_part> batch) = 0;
    virtual std::string graph_path() const { return {}; }
    virtual std::string last_graph_failure() const { return {}; }

    engine_status prefill(sequence& s);
    void decode(std::span<sequence* const> batch);
};

namespace {

class cpu_impl final : public llm_engine::impl {
    eng::context _ctx;
    std::vector<eng::batch_entry> _entries;

public:
    cpu_impl(const eng::model& m, const eng::vocab& v, llm_engine_options o)
        : impl(m, v, o)
        , _ctx(m, o.context) {}

    bool gpu() const noexcept override { return false; }
    uint32_t max_batch_tokens() const noexcept override { return _ctx.options().max_batch_tokens; }

    opened open(std::span<std::byte> mem, uint64_t kv_off, uint32_t own_tokens,
                const sequence& s) override {
        auto kv = std::make_unique<cpu_kv>();
        eng::kv_options ko = o.kv;
        // One sequence at a time in a conversation's cache (and in any
        // bytes of it).
        if (!mem.empty() && !kv->take(s, kv_off, mem)) {
            return refuse(engine_status::no_room);
        }
        if (mem.empty()) {
            ko.max_tokens = std::min(ko.max_tokens, own_tokens);
            try {
                kv->own.emplace(eng::kv_cache::bytes_for(m.params(), ko));
            } catch (const std::bad_alloc&) {
                return refuse(engine_status::no_room);
            }
            mem = kv->own->span();
        } else if (eng::kv_cache::bytes_for(m.params(), ko) > mem.size()) {
            return refuse(engine_status::bad_input, ENOSPC);
        }
        try {
            kv->kv.emplace(eng::kv_cache::open(mem, m, ko));
        } catch (const eng::kv_error&) {
            // Another model's cache (or another geometry): start over.
            kv->kv.emplace(eng::kv_cache::open(mem, m, ko, true));
        }
        return {std::move(kv)};
    }

    int prepare(seq_kv& kv, uint32_t n) override {
        return static_cast<cpu_kv&>(kv).kv->reserve(n) ? 0 : -ENOSPC;
    }

    eng::step_status step(std::span<const step_part> batch) override {
        _entries.clear();
        for (auto& p : batch) {
            // Said, not guessed from the length: a prompt's chunks of one
            // token get the prompt's attention kernel (context.hh).
            _entries.push_back(
                {.kv = &*static_cast<cpu_kv*>(p.kv)->kv,
                 .tokens = p.tokens,
                 .logits = p.logits,
                 .kind = p.prompt ? eng::token_kind::prompt : eng::token_kind::generated});
        }
        return _ctx.step(_entries);
    }
};

class gpu_impl final : public llm_engine::impl {
    kv_pool& _pool;
    eng::cuda_context _ctx;
    std::vector<eng::cuda_batch_entry> _entries;

    eng::cuda_kv_options geometry(uint32_t max_tokens) const {
        return {.block_tokens = o.kv.block_tokens, .max_tokens = max_tokens};
    }

public:
    gpu_impl(const eng::cuda_model& cm, const eng::vocab& v, kv_pool& pool, llm_engine_options o)
        : impl(cm.get_model(), v, o)
        , _pool(pool)
        , _ctx(cm, {.max_batch_tokens = o.context.max_batch_tokens}) {}

    bool gpu() const noexcept override { return true; }
    // As the CPU context corrects it: 0 would schedule nothing, ever.
    uint32_t max_batch_tokens() const noexcept override {
        return std::max(1u, o.context.max_batch_tokens);
    }

    opened open(std::span<std::byte> mem, uint64_t kv_off, uint32_t own_tokens,
                const sequence& s) override {
        auto kv = std::make_unique<gpu_kv>();
        const auto& p = m.params();
        eng::cuda_kv_options ko = geometry(o.kv.max_tokens);
        // Every request's own region is made for the whole context, so
        // that any later request can take it over (the unbacked part is
        // only addresses).
        const uint64_t full_rows = eng::cuda_kv_cache::device_bytes_for(p, ko);
        try {
            if (mem.empty()) {
                ko = geometry(std::min(o.kv.max_tokens, own_tokens));
                kv->own.emplace(eng::cuda_kv_cache::host_bytes_for(p, ko));
                mem = kv->own->span();
                kv->rows = _pool.acquire_anonymous(full_rows);
            } else {
                if (eng::cuda_kv_cache::host_bytes_for(p, ko) > mem.size()) {
                    return refuse(engine_status::bad_input, ENOSPC);
                }
                // Its bookkeeping's bytes too, not only its rows' key.
                if (!kv->take(s, kv_off, mem)) {
                    return refuse(engine_status::no_room);
                }
                kv->rows = _pool.acquire({s.req.ms_id, kv_off}, full_rows);
            }
        } catch (const eng::device_lost&) {
            throw;
        } catch (const std::exception&) {
            // Its conversation's region in use, or no device memory for
            // a new one: it may be retried.
            return refuse(engine_status::no_room);
        }
        // New device memory holds none of the rows the bookkeeping may
        // speak of: the cache starts over then.
        const bool fresh = kv->rows.fresh();
        try {
            kv->kv.emplace(eng::cuda_kv_cache::open(mem, kv->rows.data(), kv->rows.reserved_bytes(),
                                                    m, ko, fresh, kv->rows.tag()));
        } catch (const eng::kv_error&) {
            kv->kv.emplace(eng::cuda_kv_cache::open(mem, kv->rows.data(), kv->rows.reserved_bytes(),
                                                    m, ko, true, kv->rows.tag()));
        }
        return {std::move(kv)};
    }

    int prepare(seq_kv& base, uint32_t n) override {
        auto& kv = static_cast<gpu_kv&>(base);
        if (!kv.kv->reserve(n)) {
            return -ENOSPC;
        }
        std::string why;
        return kv.rows.grow(kv.kv->device_bytes_used(), &why) ? 0 : -ENOMEM;
    }

    eng::step_status step(std::span<const step_part> batch) override {
        _entries.clear();
        for (auto& p : batch) {
            _entries.push_back(
                {.kv = &*static_cast<gpu_kv*>(p.kv)->kv, .tokens = p.tokens, .logits = p.logits});
        }
        const eng::step_status st = _ctx.step(_entries);
        const eng::cuda_graph_stats gs = _ctx.graph_stats();
        stats.graph_replays = gs.replayed;
        stats.graph_captures = gs.captured;
        stats.graph_capture_failures = gs.failed;
        return st;
    }

    std::string graph_path() const override { return _ctx.graph_path(); }
    std::string last_graph_failure() const override { return _ctx.last_graph_failure(); }
};

} // namespace

engine_status llm_engine::impl::prefill(sequence& s) {
    std::string why;
    auto req = parse_gen_request(s.prompt, &why);
    auto bad = [&](int err) {
        s.status = -err;
        return engine_status::bad_input;
    };
    if (!req) {
        return bad(EINVAL);
    }
    eng::sampling_params sp;
    sp.temperature = req->h.temperature;
    sp.top_k = req->h.top_k;
    sp.top_p = req->h.top_p;
    sp.min_p = req->h.min_p;
    sp.repeat_penalty = req->h.repeat_penalty;
    sp.presence_penalty = req->h.presence_penalty;
    sp.frequency_penalty = req->h.frequency_penalty;
    sp.seed = req->h.seed;
    sp.stop = req->stop;
    // 0 (the request's and the worker's default): no limit of its own, up
    // to its cache's capacity (set below, once the cache is open).
    sp.max_tokens = req->h.max_tokens ? req->h.max_tokens : o.default_max_tokens;
    // -1: every token this request may generate. A window is never longer
    // than that (its ring is allocated whole): no more tokens come.
    uint64_t all = std::min<uint64_t>(o.kv.max_tokens, eng::sampling_params::max_repeat_last_n);
    if (sp.max_tokens) {
        all = std::min<uint64_t>(all, sp.max_tokens);
    }
    sp.repeat_last_n = req->h.repeat_last_n < 0
                           ? static_cast<int32_t>(all)
                           : static_cast<int32_t>(std::min<uint64_t>(all, req->h.repeat_last_n));
    if (sp.validate()) {
        return bad(EINVAL);
    }
    // A text that cannot fit the context is refused before it is encoded
    // (encoding takes tens of bytes of memory per byte of text).
    if (req->text.size() / max_token_bytes > o.kv.max_tokens) {
        return bad(E2BIG);
    }
    auto st = std::make_unique<seq_state>();
    if (req->h.flags & gen_special_spans) {
        std::vector<eng::text_span> at;
        at.reserve(req->special_at.size());
        for (const gen_span& sp : req->special_at) {
            at.push_back({sp.off, sp.len});
        }
        st->prompt = v.encode(req->text, !(req->h.flags & gen_no_bos), at);
    } else {
        st->prompt = v.encode(req->text, !(req->h.flags & gen_no_bos),
                              (req->h.flags & gen_parse_special) != 0);
    }
    if (st->prompt.empty()) {
        return bad(EINVAL); // nothing to start from
    }
    std::span<std::byte> kvmem;
    // kv_len says whether it keeps a cache (kv_off may be 0); an offset
    // without a length is a mistake, not "none".
    if (!req->h.kv_len && req->h.kv_off) {
        return bad(EINVAL);
    }
    if (req->h.kv_len) {
        if (req->h.kv_off % 4096 || req->h.kv_off > s.memory.size() ||
            req->h.kv_len > s.memory.size() - req->h.kv_off) {
            return bad(EINVAL);
        }
        kvmem = s.memory.subspan(req->h.kv_off, req->h.kv_len);
        const auto base = reinterpret_cast<uintptr_t>(s.memory.data());
        // The cache must not lie over the request (its text is read again
        // when the request is prefilled again: after a crash, a requeue).
        const auto req_at = reinterpret_cast<uintptr_t>(s.prompt.data());
        const uint64_t req_len = req->size;
        if (req_at >= base && req_at - base < req->h.kv_off + req->h.kv_len &&
            req->h.kv_off < req_at - base + req_len) {
            return bad(EINVAL);
        }
        // The output ends where the cache starts (it must not write over
        // it), and does not start inside it.
        const auto at = reinterpret_cast<uintptr_t>(s.output.data());
        const uint64_t out = at - base; // where the output starts in the mindspace
        if (at >= base && out < s.memory.size() && out < req->h.kv_off + req->h.kv_len &&
            req->h.kv_off < out + s.output.size()) {
            if (out >= req->h.kv_off) {
                return bad(EINVAL);
            }
            s.output = s.output.first(req->h.kv_off - out);
        }
    }
    // Too long for any cache: refused before one is opened (a conversation's
    // region opened for nothing stays reserved under its key).
    if (st->prompt.size() >= o.kv.max_tokens) {
        return bad(E2BIG);
    }
    // No cache kept for it: one of its own, as large as it can use.
    const uint64_t own =
        sp.max_tokens
            ? std::min<uint64_t>(uint64_t(st->prompt.size()) + sp.max_tokens, o.kv.max_tokens)
            : o.kv.max_tokens;
    opened kv = open(kvmem, req->h.kv_off, static_cast<uint32_t>(own), s);
    if (kv.status != engine_status::ok) {
        return kv.status == engine_status::bad_input ? bad(kv.err) : kv.status;
    }
    st->kv = std::move(kv.kv);
    if (st->prompt.size() >= st->kv->capacity()) {
        return bad(E2BIG);
    }
    const uint32_t room = st->kv->capacity() - static_cast<uint32_t>(st->prompt.size());
    sp.max_tokens = sp.max_tokens ? std::min(sp.max_tokens, room) : room;
    // What the cache already holds of this prompt is not computed again;
    // the last prompt token always is (its logits start the generation).
    auto cached = st->kv->tokens();
    size_t common = 0;
    while (common < cached.size() && common < st->prompt.size() &&
           cached[common] == st->prompt[common]) {
        ++common;
    }
    common = std::min(common, st->prompt.size() - 1);
    st->kv->truncate(static_cast<uint32_t>(common));
    st->fed = common;
    stats.prompt_tokens += st->prompt.size();
    stats.cached_tokens += common;
    st->max_tokens = sp.max_tokens;
    st->sampler.emplace(sp, m.params().n_vocab);
    st->stop.emplace(sp.stop);
    st->dec.emplace(v);
    st->logits.resize(m.params().n_vocab);
    s.engine_state = st.release();
    return engine_status::ok;
}

void llm_engine::impl::decode(std::span<sequence* const> batch) {
    parts.clear();
    in_batch.clear();
    uint32_t budget = max_batch_tokens();
    // Decoding sequences first (one token each), then prompt chunks.
    for (int pass = 0; pass < 2; ++pass) {
        for (sequence* s : batch) {
            auto* st = static_cast<seq_state*>(s->engine_state);
            bool in_prompt = st->fed < st->prompt.size();
            if ((pass == 0) == in_prompt || budget == 0 || s->done) {
                continue;
            }
            step_part e{.kv = st->kv.get(), .prompt = in_prompt};
            if (in_prompt) {
                size_t n = std::min<size_t>({o.prefill_chunk, budget, st->prompt.size() - st->fed});
                e.tokens = std::span<const int32_t>(st->prompt).subspan(st->fed, n);
                if (st->fed + n == st->prompt.size()) {
                    e.logits = st->logits.data();
                }
            } else {
                e.tokens = std::span<const int32_t>(&st->next, 1);
                e.logits = st->logits.data();
            }
            // Its cache or memory cannot grow: it ends, the others go on.
            if (int err = prepare(*e.kv, static_cast<uint32_t>(e.tokens.size()))) {
                s->status = err;
                s->done = true;
                continue;
            }
            budget -= static_cast<uint32_t>(e.tokens.size());
            parts.push_back(e);
            in_batch.push_back(s);
        }
    }
    if (parts.empty()) {
        return;
    }
    auto status = step(parts);
    if (status != eng::step_status::ok) {
        throw std::runtime_error("engine step: " + std::string(eng::step_status_name(status)));
    }
    ++stats.steps;
    for (size_t i = 0; i < parts.size(); ++i) {
        sequence* s = in_batch[i];
        auto* st = static_cast<seq_state*>(s->engine_state);
        if (st->fed < st->prompt.size()) {
            st->fed += parts[i].tokens.size();
            stats.prefilled += parts[i].tokens.size();
            if (!parts[i].logits) {
                continue; // more prompt to come
            }
        }
        // Only the vocabulary's tokens: rows of the embedding past it
        // (padding) would give no text and use up the reply.
        int32_t tok = st->sampler->sample(
            std::span(st->logits).first(std::min(st->logits.size(), size_t(v.n_tokens()))));
        if (tok < 0) {
            // No token to sample (every logit NaN or -inf): this request
            // ends, failed; the others of the step go on.
            s->status = -EIO;
            s->done = true;
            continue;
        }
        st->sampler->accept(tok);
        ++st->generated;
        ++s->tokens;
        ++stats.generated;
        bool end = v.is_eog(tok) || st->generated >= st->max_tokens;
        st->piece.clear();
        if (!v.is_eog(tok)) {
            st->dec->push(tok, st->piece);
        }
        if (end) {
            st->dec->flush(st->piece);
        }
        auto r = st->stop->feed(st->piece);
        std::string text(r.text);
        if (end && !r.stopped) {
            text += st->stop->flush().text;
        }
        // What fits of the text, whole characters (the rest is cut).
        size_t n = eng::unicode::fitting_prefix(text, s->output.size() - s->produced);
        std::memcpy(s->output.data() + s->produced, text.data(), n);
        s->produced += n;
        if (end || r.stopped || n < text.size()) {
            s->done = true;
            // A limit, not the model, ended it: max_tokens (or the cache)
            // on a token that is not an end and completed no stop string,
            // or an output area that is full.
            s->cut = n < text.size() || (!r.stopped && !v.is_eog(tok));
        } else {
            st->next = tok;
        }
    }
}

namespace {

// The options a step loop needs (a chunk of 0 prompt tokens never ends).
const llm_engine_options& checked(const llm_engine_options& o) {
    if (o.prefill_chunk == 0) {
        throw std::invalid_argument("prefill_chunk must be at least 1 token");
    }
    return o;
}

} // namespace

void llm_engine::check_vocab(const eng::model& m, const eng::vocab& v) {
    const uint32_t rows = m.params().n_vocab;
    if (v.n_tokens() < 0 || static_cast<uint64_t>(v.n_tokens()) > rows) {
        throw std::invalid_argument("the vocabulary has " + std::to_string(v.n_tokens()) +
                                    " tokens, the model's embedding " + std::to_string(rows) +
                                    " rows");
    }
}

llm_engine::llm_engine(const eng::model& m, const eng::vocab& v, llm_engine_options o)
    : _impl((check_vocab(m, v), std::make_unique<cpu_impl>(m, v, checked(o)))) {
}

llm_engine::llm_engine(const eng::cuda_model& cm, const eng::vocab& v, kv_pool& pool,
                       llm_engine_options o)
    : _impl((check_vocab(cm.get_model(), v), std::make_unique<gpu_impl>(cm, v, pool, checked(o)))) {
}

llm_engine::~llm_engine() = default;

uint64_t llm_engine::kv_region_bytes(const eng::model_params& p, const eng::kv_options& o,
                                     bool gpu) {
    if (gpu) {
        return eng::cuda_kv_cache::host_bytes_for(
            p, {.block_tokens = o.block_tokens, .max_tokens = o.max_tokens});
    }
    return eng::kv_cache::bytes_for(p, o);
}

engine_status llm_engine::prefill(sequence& s) {
    return _impl->prefill(s);
}

void llm_engine::decode(std::span<sequence* const> batch) {
    _impl->decode(batch);
}

void llm_engine::release(sequence& s) noexcept {
    delete static_cast<impl::seq_state*>(s.engine_state);
    s.engine_state = nullptr;
}

const llm_engine_stats& llm_engine::stats() const noexcept {
    return _impl->stats;
}

bool llm_engine::on_gpu() const noexcept {
    return _impl->gpu();
}

std::string llm_engine::graph_path() const {
    return _impl->graph_path();
}

std::string llm_engine::last_graph_failure() const {
    return _impl->last_graph_failure();
}

} // namespace llmos
