// SPDX-License-Identifier: MIT
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <llmos/engine/sampling.hh>
#include <llmos/generation.hh>
#include <llmos/llm_engine.hh>
#include <stdexcept>

namespace llmos {

std::optional<gen_request> parse_gen_request(std::span<const std::byte> bytes, std::string* why) {
    auto fail = [&](const char* w) -> std::optional<gen_request> {
        if (why) {
            *why = w;
        }
        return std::nullopt;
    };
    gen_request r;
    if (bytes.size() < sizeof(gen_request_header)) {
        return fail("request shorter than its header");
    }
    std::memcpy(&r.h, bytes.data(), sizeof(r.h));
    if (r.h.magic != gen_magic) {
        return fail("not a generation request (bad magic)");
    }
    if (r.h.version != gen_version) {
        return fail("unsupported generation request version");
    }
    uint64_t need = sizeof(r.h) + uint64_t(r.h.text_len) + r.h.stop_bytes;
    if (need > bytes.size()) {
        return fail("text and stop strings run past the request");
    }
    const char* p = reinterpret_cast<const char*>(bytes.data()) + sizeof(r.h);
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
    return r;
}

std::vector<std::byte> build_gen_request(const gen_request_header& h, std::string_view text,
                                         std::span<const std::string> stop) {
    gen_request_header hh = h;
    hh.text_len = static_cast<uint32_t>(text.size());
    hh.stop_bytes = 0;
    for (auto& s : stop) {
        hh.stop_bytes += static_cast<uint32_t>(s.size() + 1);
    }
    std::vector<std::byte> out(sizeof(hh) + hh.text_len + hh.stop_bytes);
    std::memcpy(out.data(), &hh, sizeof(hh));
    std::memcpy(out.data() + sizeof(hh), text.data(), text.size());
    size_t at = sizeof(hh) + text.size();
    for (auto& s : stop) {
        std::memcpy(out.data() + at, s.data(), s.size());
        at += s.size() + 1;
    }
    return out;
}

struct llm_engine::seq_state {
    std::vector<int32_t> prompt;
    size_t fed = 0; // prompt tokens in the cache
    uint32_t max_tokens = 0;
    uint32_t generated = 0;
    int32_t next = -1;                    // sampled, not yet in the cache
    std::optional<engine::kv_memory> own; ///< its cache, when the request keeps none
    std::optional<engine::kv_cache> kv;
    std::optional<engine::sampler> sampler;
    std::optional<engine::stop_matcher> stop;
    std::optional<engine::stream_decoder> dec;
    std::vector<float> logits;
    std::string piece;
};

llm_engine::llm_engine(const engine::model& m, const engine::vocab& v, llm_engine_options o)
    : _m(m)
    , _v(v)
    , _o(o)
    , _ctx(m, o.context) {
}

llm_engine::~llm_engine() = default;

engine_status llm_engine::prefill(sequence& s) {
    std::string why;
    auto req = parse_gen_request(s.prompt, &why);
    auto bad = [&](int err) {
        s.status = -err;
        return engine_status::bad_input;
    };
    if (!req) {
        return bad(EINVAL);
    }
    engine::sampling_params sp;
    sp.temperature = req->h.temperature;
    sp.top_k = req->h.top_k;
    sp.top_p = req->h.top_p;
    sp.min_p = req->h.min_p;
    sp.repeat_penalty = req->h.repeat_penalty;
    sp.presence_penalty = req->h.presence_penalty;
    sp.frequency_penalty = req->h.frequency_penalty;
    sp.seed = req->h.seed;
    sp.stop = req->stop;
    sp.max_tokens = req->h.max_tokens ? req->h.max_tokens : _o.default_max_tokens;
    if (sp.validate()) {
        return bad(EINVAL);
    }
    auto st = std::make_unique<seq_state>();
    st->prompt =
        _v.encode(req->text, !(req->h.flags & gen_no_bos), (req->h.flags & gen_parse_special) != 0);
    if (st->prompt.empty()) {
        return bad(EINVAL); // nothing to start from
    }
    const auto& p = _m.params();
    engine::kv_options ko = _o.kv;
    std::span<std::byte> kvmem;
    if (req->h.kv_len) {
        if (req->h.kv_off % 4096 || req->h.kv_off > s.memory.size() ||
            req->h.kv_len > s.memory.size() - req->h.kv_off) {
            return bad(EINVAL);
        }
        kvmem = s.memory.subspan(req->h.kv_off, req->h.kv_len);
        if (engine::kv_cache::bytes_for(p, ko) > kvmem.size()) {
            return bad(ENOSPC);
        }
    } else {
        // No cache kept for it: one of its own, as large as it can use.
        ko.max_tokens = std::min<uint32_t>(ko.max_tokens, static_cast<uint32_t>(st->prompt.size()) +
                                                              sp.max_tokens);
        try {
            st->own.emplace(engine::kv_cache::bytes_for(p, ko));
        } catch (const std::bad_alloc&) {
            return engine_status::no_room;
        }
        kvmem = st->own->span();
    }
    try {
        st->kv.emplace(engine::kv_cache::open(kvmem, _m, ko));
    } catch (const engine::kv_error&) {
        // Another model's cache (or another geometry): start over.
        st->kv.emplace(engine::kv_cache::open(kvmem, _m, ko, true));
    }
    if (st->prompt.size() >= st->kv->capacity()) {
        return bad(E2BIG);
    }
    sp.max_tokens = std::min<uint32_t>(sp.max_tokens, st->kv->capacity() -
                                                          static_cast<uint32_t>(st->prompt.size()));
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
    _stats.prompt_tokens += st->prompt.size();
    _stats.cached_tokens += common;
    st->max_tokens = sp.max_tokens;
    st->sampler.emplace(sp, p.n_vocab);
    st->stop.emplace(sp.stop);
    st->dec.emplace(_v);
    st->logits.resize(p.n_vocab);
    s.engine_state = st.release();
    return engine_status::ok;
}

void llm_engine::decode(std::span<sequence* const> batch) {
    _batch.clear();
    _in_batch.clear();
    uint32_t budget = _ctx.options().max_batch_tokens;
    // Decoding sequences first (one token each), then prompt chunks.
    for (int pass = 0; pass < 2; ++pass) {
        for (sequence* s : batch) {
            auto* st = static_cast<seq_state*>(s->engine_state);
            bool in_prompt = st->fed < st->prompt.size();
            if ((pass == 0) == in_prompt || budget == 0) {
                continue;
            }
            engine::batch_entry e{.kv = &*st->kv};
            if (in_prompt) {
                size_t n =
                    std::min<size_t>({_o.prefill_chunk, budget, st->prompt.size() - st->fed});
                e.tokens = std::span<const int32_t>(st->prompt).subspan(st->fed, n);
                if (st->fed + n == st->prompt.size()) {
                    e.logits = st->logits.data();
                }
            } else {
                e.tokens = std::span<const int32_t>(&st->next, 1);
                e.logits = st->logits.data();
            }
            budget -= static_cast<uint32_t>(e.tokens.size());
            _batch.push_back(e);
            _in_batch.push_back(st);
        }
    }
    if (_batch.empty()) {
        return;
    }
    auto status = _ctx.step(_batch);
    if (status != engine::step_status::ok) {
        throw std::runtime_error("engine step: " + std::string(engine::step_status_name(status)));
    }
    ++_stats.steps;
    for (size_t i = 0; i < _batch.size(); ++i) {
        seq_state* st = _in_batch[i];
        sequence* s = nullptr;
        for (sequence* c : batch) {
            if (c->engine_state == st) {
                s = c;
            }
        }
        if (st->fed < st->prompt.size()) {
            st->fed += _batch[i].tokens.size();
            _stats.prefilled += _batch[i].tokens.size();
            if (!_batch[i].logits) {
                continue; // more prompt to come
            }
        }
        int32_t tok = st->sampler->sample(st->logits);
        st->sampler->accept(tok);
        ++st->generated;
        ++s->tokens;
        ++_stats.generated;
        bool end = _v.is_eog(tok) || st->generated >= st->max_tokens;
        st->piece.clear();
        engine::stop_matcher::result r{"", false};
        if (!_v.is_eog(tok)) {
            st->dec->push(tok, st->piece);
        }
        if (end) {
            st->dec->flush(st->piece);
        }
        r = st->stop->feed(st->piece);
        std::string text(r.text);
        if (end && !r.stopped) {
            text += st->stop->flush().text;
        }
        size_t room = s->output.size() - s->produced;
        size_t n = std::min(room, text.size());
        std::memcpy(s->output.data() + s->produced, text.data(), n);
        s->produced += n;
        if (end || r.stopped || n < text.size()) {
            s->done = true;
        } else {
            st->next = tok;
        }
    }
}

void llm_engine::release(sequence& s) noexcept {
    delete static_cast<seq_state*>(s.engine_state);
    s.engine_state = nullptr;
}

} // namespace llmos
