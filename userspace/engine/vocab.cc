// SPDX-License-Identifier: MIT
//
// The vocab: token tables built from vocab_data with llama.cpp's defaults,
// special-token partitioning, pieces and decoding, the streaming decoder.
// The tokenizer algorithms are in vocab_spm.cc, vocab_bpe.cc and
// vocab_pre.cc.
#include "vocab_impl.hh"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/unicode.hh>
#include <llmos/engine/vocab.hh>
#include <map>
#include <span>
#include <stdexcept>
#include <unordered_set>

namespace llmos::engine {

namespace {

constexpr std::string_view escaped_space = "\xE2\x96\x81"; // U+2581 "▁"

/// What a tokenizer.ggml.pre name selects, and the flags llama.cpp ties to
/// it.
struct pre_info {
    bpe_pre pre;
    bool ignore_merges;
    bool add_bos;
};

std::optional<pre_info> lookup_pre(std::string_view name) {
    static constexpr std::string_view llama3_names[] = {"llama3", "llama-v3", "llama-bpe",
                                                        "falcon3", "pixtral"};
    static constexpr std::string_view llama3_regex_names[] = {"dbrx", "smaug-bpe", "chatglm-bpe",
                                                              "glm4"};
    static constexpr std::string_view qwen2_names[] = {"qwen2", "deepseek-r1-qwen", "stablelm2",
                                                       "megrez"};
    static constexpr std::string_view gpt2_names[] = {
        "gpt-2",      "gpt2",         "phi-2",       "mpt",        "olmo",
        "jais",       "jina-es",      "jina-de",     "jina-v2-es", "jina-v2-de",
        "jina-v1-en", "jina-v2-code", "roberta-bpe", "gigachat",   "exaone4"};
    static constexpr std::string_view smollm_names[] = {
        "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"};
    auto in = [&](const auto& names) {
        return std::find(std::begin(names), std::end(names), name) != std::end(names);
    };
    if (name.empty() || name == "default") {
        return pre_info{bpe_pre::default_, false, false};
    }
    if (in(llama3_names)) {
        return pre_info{bpe_pre::llama3, true, true};
    }
    if (in(llama3_regex_names)) {
        return pre_info{bpe_pre::llama3, false, false};
    }
    if (in(qwen2_names)) {
        return pre_info{bpe_pre::qwen2, false, false};
    }
    if (in(gpt2_names)) {
        return pre_info{bpe_pre::gpt2, false, false};
    }
    if (in(smollm_names)) {
        return pre_info{bpe_pre::smollm, false, false};
    }
    return std::nullopt;
}

/// Texts llama.cpp treats as end of generation (and as control tokens)
/// whatever their stored type; the first ones found also serve as EOT when
/// the file names none.
constexpr std::string_view eog_texts[] = {
    "<|eot_id|>",      "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>",      "_<EOT>",  "<|eom_id|>",
};

token_type to_type(int32_t t) {
    if (t >= 0 && t <= static_cast<int32_t>(token_type::byte)) {
        return static_cast<token_type>(t);
    }
    return token_type::undefined;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/// The byte of a "<0xXX>" text, or -1.
int byte_of(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') {
        return -1;
    }
    const int hi = hex_digit(t[3]);
    const int lo = hex_digit(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    for (;;) {
        const size_t hit = s.find(from, pos);
        if (hit == std::string_view::npos) {
            out.append(s.substr(pos));
            return out;
        }
        out.append(s.substr(pos, hit - pos));
        out.append(to);
        pos = hit + from.size();
    }
}

/// GPT-2 byte-level text back to bytes; characters outside the mapping
/// pass through as they are.
std::string bpe_decode_text(std::string_view t) {
    std::string out;
    out.reserve(t.size());
    for (size_t pos = 0; pos < t.size();) {
        const unicode::utf8_step st = unicode::decode_utf8(t, pos);
        const int b = st.valid ? bpe_cp_to_byte(st.cp) : -1;
        if (b >= 0) {
            out += static_cast<char>(b);
        } else {
            out.append(t.substr(pos, st.len));
        }
        pos += st.len;
    }
    return out;
}

/// A fragment of the input: raw text [off, off + len), or a special token.
struct fragment {
    int32_t token; ///< -1 for text
    size_t off;
    size_t len;
};

} // namespace

std::optional<bpe_pre> parse_bpe_pre(std::string_view name) {
    auto info = lookup_pre(name);
    if (!info) {
        return std::nullopt;
    }
    return info->pre;
}

vocab::vocab(vocab_data d)
    : _impl(std::make_unique<impl>()) {
    impl& v = *_impl;
    if (d.model == "llama") {
        v.kind = vocab_kind::spm;
    } else if (d.model == "gpt2") {
        v.kind = vocab_kind::bpe;
    } else {
        throw std::invalid_argument("vocab: unsupported tokenizer model " + quoted(d.model) +
                                    " (tokenizer.ggml.model; supported: 'llama' "
                                    "(SentencePiece), 'gpt2' (byte-level BPE))");
    }
    bool pre_add_bos = false;
    if (v.kind == vocab_kind::bpe) {
        auto info = lookup_pre(d.pre);
        if (!info) {
            throw std::invalid_argument("vocab: unsupported pre-tokenizer " + quoted(d.pre) +
                                        " (tokenizer.ggml.pre)");
        }
        v.pre = info->pre;
        v.ignore_merges = info->ignore_merges;
        pre_add_bos = info->add_bos;
    }

    const size_t n = d.tokens.size();
    if (n == 0) {
        throw std::invalid_argument("vocab: no tokens (tokenizer.ggml.tokens is empty)");
    }
    if (n > static_cast<size_t>(INT32_MAX)) {
        throw std::invalid_argument("vocab: too many tokens");
    }
    if (!d.scores.empty() && d.scores.size() != n) {
        throw std::invalid_argument("vocab: tokenizer.ggml.scores has " +
                                    std::to_string(d.scores.size()) +
                                    " entries but tokenizer.ggml.tokens has " + std::to_string(n));
    }
    if (!d.types.empty() && d.types.size() != n) {
        throw std::invalid_argument("vocab: tokenizer.ggml.token_type has " +
                                    std::to_string(d.types.size()) +
                                    " entries but tokenizer.ggml.tokens has " + std::to_string(n));
    }

    v.text = std::move(d.tokens);
    v.scores = d.scores.empty() ? std::vector<float>(n, 0.0f) : std::move(d.scores);
    // A NaN score would leave the merge queue without an order: it merges
    // last, as -inf.
    std::replace_if(
        v.scores.begin(), v.scores.end(), [](float x) { return std::isnan(x); },
        -std::numeric_limits<float>::infinity());
    v.types.resize(n, token_type::normal);
    for (size_t i = 0; i < d.types.size(); ++i) {
        v.types[i] = to_type(d.types[i]);
    }
    v.token_to_id.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        if (v.text[i].empty()) {
            v.text[i] = "[EMPTY_" + std::to_string(i) + "]"; // as llama.cpp names them
        }
        auto [it, fresh] = v.token_to_id.emplace(v.text[i], static_cast<int32_t>(i));
        if (!fresh) {
            throw std::invalid_argument("vocab: duplicate token " + quoted(v.text[i]) + " (ids " +
                                        std::to_string(it->second) + " and " + std::to_string(i) +
                                        ")");
        }
    }

    // Special ids: the file's, else the model's defaults; out of range: none.
    const bool spm = v.kind == vocab_kind::spm;
    auto resolve = [&](const std::optional<int32_t>& given, int32_t fallback) {
        const int32_t id = given.value_or(fallback);
        return id >= 0 && static_cast<size_t>(id) < n ? id : -1;
    };
    v.bos = resolve(d.bos_id, spm ? 1 : 11);
    v.eos = resolve(d.eos_id, spm ? 2 : 11);
    v.unk = resolve(d.unk_id, spm ? 0 : -1);
    v.pad = resolve(d.pad_id, -1);
    v.eot = resolve(d.eot_id, -1);

    v.eog.assign(n, 0);
    for (std::string_view t : eog_texts) {
        const int32_t id = v.lookup(t);
        if (id < 0) {
            continue;
        }
        v.eog[static_cast<size_t>(id)] = 1;
        // llama.cpp overrides the type of these: they are control tokens.
        v.types[static_cast<size_t>(id)] = token_type::control;
        if (v.eot < 0 && t != "<|eom_id|>") {
            v.eot = id;
        }
    }
    for (int32_t id : {v.eos, v.eot}) {
        if (id >= 0) {
            v.eog[static_cast<size_t>(id)] = 1;
        }
    }

    v.add_bos = d.add_bos.value_or(spm || pre_add_bos);
    v.add_eos = d.add_eos.value_or(false);
    v.add_space_prefix = spm && d.add_space_prefix.value_or(true);
    if (v.add_bos && v.bos < 0) {
        throw std::invalid_argument(
            "vocab: tokenizer.ggml.add_bos_token is true but there is no BOS token");
    }
    if (v.add_eos && v.eos < 0) {
        throw std::invalid_argument(
            "vocab: tokenizer.ggml.add_eos_token is true but there is no EOS token");
    }
    v.chat_template = std::move(d.chat_template);

    if (v.kind == vocab_kind::bpe) {
        v.merge_rank.reserve(d.merges.size());
        for (size_t i = 0; i < d.merges.size(); ++i) {
            const std::string& m = d.merges[i];
            const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
            if (sp == std::string::npos || sp + 1 >= m.size()) {
                throw std::invalid_argument("vocab: malformed merge #" + std::to_string(i) + " " +
                                            quoted(m) + " (want 'left right')");
            }
            // The first of duplicate merges keeps its (lower) rank.
            v.merge_rank.emplace(m, static_cast<int32_t>(i));
        }
    }

    // Token texts are bounded (see max_token_bytes): what encode() and a
    // chat cost must not be the file's to choose.
    size_t special_text = 0;
    for (size_t i = 0; i < n; ++i) {
        const size_t len = v.text[i].size();
        const bool special = v.is_special(static_cast<int32_t>(i));
        const size_t most = special ? max_special_token_bytes : max_token_bytes;
        if (len > most) {
            throw std::invalid_argument(
                "vocab: token " + std::to_string(i) + " is " + std::to_string(len) +
                " bytes long, more than a" + (special ? " control, unknown or user-defined" : "") +
                " token may have (" + std::to_string(most) + "): " + quoted(v.text[i]));
        }
        if (special) {
            v.specials.push_back(static_cast<int32_t>(i));
            special_text += len;
            v.any_user_defined |= v.types[i] == token_type::user_defined;
        }
    }
    if (special_text > max_special_text_bytes) {
        throw std::invalid_argument("vocab: the " + std::to_string(v.specials.size()) +
                                    " control, unknown and user-defined tokens' texts take " +
                                    std::to_string(special_text) + " bytes; they may take " +
                                    std::to_string(max_special_text_bytes) + " at most");
    }
    std::stable_sort(v.specials.begin(), v.specials.end(), [&](int32_t a, int32_t b) {
        return v.text[static_cast<size_t>(a)].size() > v.text[static_cast<size_t>(b)].size();
    });
    v.special_index.reserve(special_text);
    for (size_t r = 0; r < v.specials.size(); ++r) {
        v.special_index.add(v.text[static_cast<size_t>(v.specials[r])], static_cast<int32_t>(r));
    }
    v.special_index.link();

    // Pieces, as token_to_piece(id, special=true) returns them.
    v.pieces.resize(n);
    for (size_t i = 0; i < n; ++i) {
        const std::string& t = v.text[i];
        switch (v.types[i]) {
        case token_type::control:
        case token_type::unknown:
        case token_type::user_defined:
            v.pieces[i] = t;
            break;
        case token_type::unused:
            break;
        case token_type::byte:
            if (int b = byte_of(t); b >= 0) {
                v.pieces[i] = std::string(1, static_cast<char>(b));
                break;
            }
            [[fallthrough]];
        case token_type::normal:
        case token_type::undefined:
            v.pieces[i] = spm ? replace_all(t, escaped_space, " ") : bpe_decode_text(t);
            break;
        }
    }

    // Byte fallback: SPM "<0xXX>" (else the byte itself as a token), BPE
    // the byte's mapped character.
    for (int b = 0; b < 256; ++b) {
        int32_t id = -1;
        if (spm) {
            static constexpr char hex[] = "0123456789ABCDEF";
            const char name[] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            id = v.lookup(std::string_view(name, sizeof name));
            if (id < 0) {
                const char c = static_cast<char>(b);
                id = v.lookup(std::string_view(&c, 1));
            }
        } else {
            id = v.lookup(bpe_byte_to_utf8(static_cast<uint8_t>(b)));
        }
        v.byte_token[static_cast<size_t>(b)] = id;
    }
}

vocab::~vocab() = default;
vocab::vocab(vocab&&) noexcept = default;
vocab& vocab::operator=(vocab&&) noexcept = default;

std::vector<int32_t> vocab::encode(std::string_view text, bool add_special,
                                   bool parse_special) const {
    return encode_with(text, add_special, parse_special, {});
}

std::vector<int32_t> vocab::encode(std::string_view text, bool add_special,
                                   std::span<const text_span> special_at) const {
    return encode_with(text, add_special, true, special_at);
}

void vocab::impl::special_trie::reserve(size_t bytes) {
    next.reserve(bytes);
    rank.reserve(bytes + 1);
    depth.reserve(bytes + 1);
    up.reserve(bytes + 1);
}

void vocab::impl::special_trie::add(std::string_view s, int32_t r) {
    static_assert(max_special_token_bytes <= UINT16_MAX, "depth is 16 bits");
    if (s.empty() || s.size() > max_special_token_bytes) {
        return; // the constructor refused longer ones; vocab texts are never empty
    }
    uint32_t node = 0;
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        uint32_t& to = node ? next[uint64_t{node} << 8 | c] : first[c];
        if (!to) {
            to = static_cast<uint32_t>(rank.size());
            rank.push_back(-1);
            depth.push_back(static_cast<uint16_t>(depth[node] + 1));
            up.emplace_back(node, c);
        }
        node = to;
    }
    rank[node] = r;
}

void vocab::impl::special_trie::link() {
    // By depth, so that the fail chain of a node's parent is linked first.
    std::vector<uint32_t> order(rank.size());
    for (uint32_t i = 0; i < order.size(); ++i) {
        order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return depth[a] < depth[b]; });
    fail.assign(rank.size(), 0);
    out.assign(rank.size(), 0);
    for (uint32_t v : order) {
        const auto [parent, c] = up[v];
        if (v == 0 || parent == 0) {
            continue; // the root and its children fail to the root
        }
        uint32_t f = fail[parent];
        for (;;) {
            const uint32_t to = child(f, c);
            if (to || !f) {
                fail[v] = to;
                break;
            }
            f = fail[f];
        }
        out[v] = rank[fail[v]] >= 0 ? fail[v] : out[fail[v]];
    }
    up = {};
}

std::vector<int32_t> vocab::encode_with(std::string_view text, bool add_special, bool parse_special,
                                        std::optional<std::span<const text_span>> only) const {
    const impl& v = *_impl;
    // Whether a gated token's text at [at, at + n) may be that token.
    auto allowed = [&](size_t at, size_t n) {
        // The last span that starts at or before `at`.
        auto it = std::upper_bound(only->begin(), only->end(), at,
                                   [](size_t a, const text_span& s) { return a < s.off; });
        return it != only->begin() && at + n <= std::prev(it)->off + std::prev(it)->len;
    };
    auto length = [&](size_t rank) { return v.text[static_cast<size_t>(v.specials[rank])].size(); };
    // Which special tokens may be tokens here; with spans, control tokens
    // only inside them, and so is a user-defined token that is part of the
    // markers (a converter may have typed a chat's "<|im_start|>" so): any
    // other user-defined token is a token everywhere.
    auto wanted = [&](size_t rank) {
        return parse_special ||
               v.types[static_cast<size_t>(v.specials[rank])] == token_type::user_defined;
    };
    // (`in_markers` tells whether the token's text occurs inside a span;
    // asked of user-defined tokens only.)
    auto gated = [&](size_t rank, auto in_markers) {
        return only &&
               (v.types[static_cast<size_t>(v.specials[rank])] != token_type::user_defined ||
                in_markers());
    };

    // Cut out special token texts as llama.cpp's tokenizer_st_partition
    // does: longest tokens first, each taking its occurrences left to right
    // that overlap neither its own last one nor what a token before it
    // took. Every occurrence of every wanted one is found in one pass, and
    // only what is found is kept: the cost does not grow with their number,
    // unless texts that nest (runs of 2 to 31 spaces, say) occur more often
    // than a budget allows: then each token that occurs at all searches the
    // text by itself, and the cost grows with their number, not with the
    // nesting.
    struct hit {
        uint32_t rank;
        uint32_t at;
    };
    std::vector<fragment> frags;
    std::vector<hit> hits;             // by where they end, as found
    std::unordered_set<uint32_t> seen; // past the budget: which occur
    const size_t budget = 2 * text.size() + 1024;
    bool indexed = text.size() <= UINT32_MAX;
    if (parse_special || v.any_user_defined) {
        v.special_index.scan(text, [&](int32_t r, size_t at) {
            const auto rank = static_cast<uint32_t>(r);
            if (!wanted(rank)) {
                return;
            }
            if (indexed && hits.size() == budget) {
                indexed = false; // past the budget: which occur is enough
                for (const hit& h : hits) {
                    seen.insert(h.rank);
                }
                hits = {};
            }
            if (indexed) {
                hits.push_back({rank, static_cast<uint32_t>(at)});
            } else {
                seen.insert(rank);
            }
        });
    }
    if (indexed) {
        // By rank (longest text first), each one's by offset (its texts
        // all have one length: by where they end is by where they start).
        std::stable_sort(hits.begin(), hits.end(),
                         [](const hit& a, const hit& b) { return a.rank < b.rank; });
        std::map<size_t, std::pair<size_t, int32_t>> taken; // start -> (end, token)
        for (size_t first = 0, last = 0; first < hits.size(); first = last) {
            const size_t rank = hits[first].rank;
            while (last < hits.size() && hits[last].rank == rank) {
                ++last;
            }
            const std::span<const hit> occurs(hits.data() + first, last - first);
            const size_t n = length(rank);
            const bool g = gated(rank, [&] {
                return std::any_of(occurs.begin(), occurs.end(),
                                   [&](const hit& h) { return allowed(h.at, n); });
            });
            size_t own_end = 0;
            for (const hit& h : occurs) {
                const size_t at = h.at;
                if (at < own_end || (g && !allowed(at, n))) {
                    continue;
                }
                auto after = taken.upper_bound(at);
                if ((after != taken.end() && after->first < at + n) ||
                    (after != taken.begin() && std::prev(after)->second.first > at)) {
                    continue; // it overlaps a longer one's
                }
                taken.emplace_hint(after, at, std::pair{at + n, v.specials[rank]});
                own_end = at + n;
            }
        }
        size_t pos = 0;
        for (const auto& [at, tok] : taken) {
            if (at > pos) {
                frags.push_back({-1, pos, at - pos});
            }
            frags.push_back({tok.second, at, tok.first - at});
            pos = tok.first;
        }
        if (pos < text.size()) {
            frags.push_back({-1, pos, text.size() - pos});
        }
    } else {
        if (!text.empty()) {
            frags.push_back({-1, 0, text.size()});
        }
        std::vector<uint32_t> found(seen.begin(), seen.end());
        std::sort(found.begin(), found.end()); // longest text first
        std::vector<fragment> next;
        for (const size_t rank : found) { // only the ones that occur are searched for
            const int32_t id = v.specials[rank];
            const std::string_view st = v.text[static_cast<size_t>(id)];
            const bool g = gated(rank, [&] {
                return std::any_of(only->begin(), only->end(), [&](const text_span& sp) {
                    return sp.off < text.size() &&
                           text.substr(sp.off, sp.len).find(st) != std::string_view::npos;
                });
            });
            bool changed = false;
            next.clear();
            for (const fragment& f : frags) {
                if (f.token >= 0) {
                    next.push_back(f);
                    continue;
                }
                size_t pos = f.off;
                const size_t end = f.off + f.len;
                // Takes the occurrences in [from, hi) left to right.
                auto search = [&](size_t from, size_t hi) {
                    for (;;) {
                        const size_t hit = text.substr(0, hi).find(st, from);
                        if (hit == std::string_view::npos) {
                            return;
                        }
                        if (g && !allowed(hit, st.size())) {
                            from = hit + 1; // text here: look further on
                            continue;
                        }
                        from = hit + st.size();
                        changed = true;
                        if (hit > pos) {
                            next.push_back({-1, pos, hit - pos});
                        }
                        next.push_back({id, hit, st.size()});
                        pos = hit + st.size();
                    }
                };
                if (!g) {
                    search(pos, end);
                } else {
                    // Only inside a span may it be the token: the spans'
                    // parts of the fragment are searched, not the text
                    // between them, which a vocabulary of many nested
                    // control texts would have each one scan again.
                    auto sp =
                        std::partition_point(only->begin(), only->end(), [&](const text_span& x) {
                            return x.off + x.len <= f.off;
                        });
                    for (; sp != only->end() && sp->off < end; ++sp) {
                        const size_t from = std::max(sp->off, pos);
                        const size_t hi = std::min(sp->off + sp->len, end);
                        if (from < hi) {
                            search(from, hi);
                        }
                    }
                }
                if (pos < end) {
                    next.push_back({-1, pos, end - pos});
                }
            }
            if (changed) {
                frags.swap(next);
            }
        }
    }

    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_special && v.add_bos) {
        out.push_back(v.bos);
    }
    bool after_special = true; // the space prefix goes in front of the text
    std::string escaped;
    for (const fragment& f : frags) {
        if (f.token >= 0) {
            out.push_back(f.token);
            after_special = true;
            continue;
        }
        const std::string_view raw = text.substr(f.off, f.len);
        if (v.kind == vocab_kind::spm) {
            escaped.clear();
            if (v.add_space_prefix && after_special) {
                escaped += escaped_space;
            }
            for (char c : raw) {
                if (c == ' ') {
                    escaped += escaped_space;
                } else {
                    escaped += c;
                }
            }
            v.encode_spm(escaped, out);
        } else {
            v.encode_bpe(raw, out);
        }
        after_special = false;
    }
    if (add_special && v.add_eos) {
        out.push_back(v.eos);
    }
    return out;
}

std::string_view vocab::token_to_piece(int32_t id, bool special) const {
    const impl& v = *_impl;
    if (id < 0 || id >= n_tokens()) {
        return {};
    }
    const token_type t = v.types[static_cast<size_t>(id)];
    if (!special && (t == token_type::control || t == token_type::unknown)) {
        return {};
    }
    return v.pieces[static_cast<size_t>(id)];
}

std::string vocab::decode(std::span<const int32_t> ids, bool special) const {
    const impl& v = *_impl;
    std::string out;
    bool strip = v.add_space_prefix;
    for (int32_t id : ids) {
        if (id < 0 || id >= n_tokens()) {
            continue;
        }
        std::string_view piece = token_to_piece(id, special);
        if (v.is_special(id)) {
            out += piece;
            strip = v.add_space_prefix;
            continue;
        }
        if (piece.empty()) {
            continue;
        }
        if (strip && piece.front() == ' ') {
            piece.remove_prefix(1);
        }
        strip = false;
        out += piece;
    }
    return out;
}

bool vocab::is_eog(int32_t id) const {
    return id >= 0 && id < n_tokens() && _impl->eog[static_cast<size_t>(id)] != 0;
}

bool vocab::is_control(int32_t id) const {
    return type(id) == token_type::control;
}

std::optional<int32_t> vocab::find(std::string_view text) const {
    const int32_t id = _impl->lookup(text);
    return id < 0 ? std::nullopt : std::optional<int32_t>(id);
}

int32_t vocab::n_tokens() const {
    return static_cast<int32_t>(_impl->text.size());
}

std::string_view vocab::token_text(int32_t id) const {
    return id < 0 || id >= n_tokens() ? std::string_view() : _impl->text[static_cast<size_t>(id)];
}

token_type vocab::type(int32_t id) const {
    return id < 0 || id >= n_tokens() ? token_type::undefined
                                      : _impl->types[static_cast<size_t>(id)];
}

float vocab::score(int32_t id) const {
    return id < 0 || id >= n_tokens() ? 0.0f : _impl->scores[static_cast<size_t>(id)];
}

int32_t vocab::bos() const {
    return _impl->bos;
}
int32_t vocab::eos() const {
    return _impl->eos;
}
int32_t vocab::eot() const {
    return _impl->eot;
}
int32_t vocab::unk() const {
    return _impl->unk;
}
int32_t vocab::pad() const {
    return _impl->pad;
}
bool vocab::add_bos() const {
    return _impl->add_bos;
}
bool vocab::add_eos() const {
    return _impl->add_eos;
}
bool vocab::add_space_prefix() const {
    return _impl->add_space_prefix;
}
vocab_kind vocab::kind() const {
    return _impl->kind;
}
bpe_pre vocab::pre() const {
    return _impl->pre;
}
const std::string& vocab::chat_template() const {
    return _impl->chat_template;
}

// stream_decoder

void stream_decoder::push(int32_t id, std::string& out) {
    feed(_vocab->token_to_piece(id, _special), out);
}

std::string stream_decoder::push(int32_t id) {
    std::string out;
    push(id, out);
    return out;
}

void stream_decoder::flush(std::string& out) {
    if (_n_pending > 0) {
        out += unicode::replacement; // an unfinished character is one error
        _n_pending = 0;
    }
}

void stream_decoder::feed(std::string_view bytes, std::string& out) {
    if (bytes.empty()) {
        return;
    }
    const size_t base = out.size();
    out.append(_pending, _n_pending);
    out.append(bytes);
    _n_pending = 0;

    // Common case: all well-formed, maybe a character cut at the end.
    bool clean = true;
    size_t pos = base;
    while (pos < out.size()) {
        if (static_cast<uint8_t>(out[pos]) < 0x80) {
            ++pos;
            continue;
        }
        const unicode::utf8_step st = unicode::decode_utf8(out, pos);
        if (st.valid) {
            pos += st.len;
        } else if (st.truncated) {
            break;
        } else {
            clean = false;
            break;
        }
    }
    if (clean) {
        _n_pending = out.size() - pos;
        std::copy(out.begin() + static_cast<std::ptrdiff_t>(pos), out.end(), _pending);
        out.resize(pos);
        return;
    }

    // Ill-formed bytes: rebuild the new part with U+FFFD in their place.
    const std::string raw = out.substr(base);
    out.resize(base);
    for (pos = 0; pos < raw.size();) {
        const unicode::utf8_step st = unicode::decode_utf8(raw, pos);
        if (st.valid) {
            out.append(raw, pos, st.len);
        } else if (st.truncated) {
            _n_pending = raw.size() - pos;
            std::copy(raw.begin() + static_cast<std::ptrdiff_t>(pos), raw.end(), _pending);
            return;
        } else {
            out += unicode::replacement;
        }
        pos += st.len;
    }
}

} // namespace llmos::engine
