// SPDX-License-Identifier: MIT
//
// Byte-level BPE pre-tokenizers: the regexes of tokenizer.json, written as
// scanners over Unicode categories (std::regex has no \p{L}). Each model
// applies a list of patterns in turn; a pattern splits every piece the
// previous one left into its matches and the gaps between them (a gap is a
// piece too, so nothing is ever dropped). The llama-3 and GPT-2 scanners
// follow llama.cpp's hand-written ones (unicode.cpp), quirks included:
//
//   llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ |
//            \p{N}{1,3} | ' '?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ |
//            \s+(?!\S) | \s+
//   qwen2:   the same with \p{N} (one digit at a time)
//   gpt-2:   's|'t|'re|'ve|'m|'ll|'d | ' '?\p{L}+ | ' '?\p{N}+ |
//            ' '?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
//   smollm:  \p{N}, then gpt-2
//   default: [\p{P}$+<=>^~|]+, then gpt-2, then \p{N}+, then [0-9]{3}
//
// Ill-formed UTF-8 bytes count as one character each, of class symbol
// (what U+FFFD, which llama.cpp puts in their place, is).
#include "vocab_impl.hh"

#include <llmos/engine/unicode.hh>

namespace llmos::engine {

namespace {

using unicode::category;

struct cpt {
    uint32_t cp;
    size_t off; ///< byte offset in the text
    category cls;
    bool ws;
};

constexpr uint32_t out_of_range = 0xFFFFFFFF;

struct flags {
    bool letter = false;
    bool number = false;
    bool ws = false;
    bool any = false; ///< inside the piece (false: outside it)
};

using range = std::pair<size_t, size_t>; // code point indices [first, second)

/// One piece [ini, end) of the code points under a scanner: reads outside
/// the piece see nothing, as in llama.cpp.
struct view {
    const std::vector<cpt>& c;
    size_t ini;
    size_t end;

    uint32_t cp(size_t p) const { return p >= ini && p < end ? c[p].cp : out_of_range; }
    flags fl(size_t p) const {
        if (p < ini || p >= end) {
            return {};
        }
        const cpt& x = c[p];
        flags f;
        f.letter = x.cls == category::letter;
        f.number = x.cls == category::number;
        f.ws = x.ws;
        // Unassigned code points (Cn) too: [^\s\p{L}\p{N}] matches them,
        // in the regexes and in llama.cpp's scanners alike.
        f.any = true;
        return f;
    }
    // [^\s\p{L}\p{N}] at p.
    bool other(size_t p) const {
        const flags f = fl(p);
        return !(f.ws || f.letter || f.number) && f.any;
    }
};

uint32_t ascii_lower(uint32_t cp) {
    return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
}

/// Contractions 's 't 're 've 'm 'll 'd at pos: their length, or 0.
size_t contraction(const view& v, size_t pos, bool fold_case) {
    if (v.cp(pos) != '\'' || pos + 1 >= v.end) {
        return 0;
    }
    auto lower = [&](uint32_t cp) { return fold_case ? ascii_lower(cp) : cp; };
    const uint32_t a = lower(v.cp(pos + 1));
    if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        return 2;
    }
    if (pos + 2 < v.end) {
        const uint32_t b = lower(v.cp(pos + 2));
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
            return 3;
        }
    }
    return 0;
}

/// Whitespace tail rules shared by the scanners: \s+(?!\S) | \s+ at pos,
/// given the whitespace run length n. Returns the token end, or pos.
size_t whitespace_run(const view& v, size_t pos, size_t n) {
    if (n > 1 && v.cp(pos + n) != out_of_range) {
        return pos + n - 1; // leave the last space to the word after it
    }
    return pos + n;
}

void scan_llama3(const view& v, size_t max_digits, std::vector<range>& out) {
    size_t prev = v.ini;
    auto emit = [&](size_t end) {
        if (end > prev) {
            out.emplace_back(prev, end);
        }
        prev = end;
    };
    for (size_t pos = v.ini; pos < v.end;) {
        const uint32_t cp = v.cp(pos);
        const flags f = v.fl(pos);

        if (size_t n = contraction(v, pos, true); n > 0) {
            pos += n;
            emit(pos);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (!(cp == '\r' || cp == '\n' || f.number)) {
            if (f.letter || v.fl(pos + 1).letter) {
                ++pos;
                while (v.fl(pos).letter) {
                    ++pos;
                }
                emit(pos);
                continue;
            }
        }
        // \p{N}{1,max}
        if (f.number) {
            size_t ini = pos;
            while (v.fl(pos).number) {
                if (++pos - ini >= max_digits) {
                    emit(pos);
                    ini = pos;
                }
            }
            emit(pos);
            continue;
        }
        // ' '?[^\s\p{L}\p{N}]+[\r\n]*
        if (v.other(cp == ' ' ? pos + 1 : pos)) {
            pos += cp == ' ' ? 1 : 0;
            while (v.other(pos)) {
                ++pos;
            }
            while (v.cp(pos) == '\r' || v.cp(pos) == '\n') {
                ++pos;
            }
            emit(pos);
            continue;
        }
        size_t n_ws = 0;
        size_t last_crlf_end = 0;
        while (v.fl(pos + n_ws).ws) {
            const uint32_t c = v.cp(pos + n_ws);
            if (c == '\r' || c == '\n') {
                last_crlf_end = pos + n_ws + 1;
            }
            ++n_ws;
        }
        // \s*[\r\n]+
        if (last_crlf_end > 0) {
            pos = last_crlf_end;
            emit(pos);
            continue;
        }
        if (n_ws > 0) {
            pos = whitespace_run(v, pos, n_ws);
            emit(pos);
            continue;
        }
        // No alternative matches: the character stands alone.
        emit(++pos);
    }
}

void scan_gpt2(const view& v, std::vector<range>& out) {
    size_t prev = v.ini;
    auto emit = [&](size_t end) {
        if (end > prev) {
            out.emplace_back(prev, end);
        }
        prev = end;
    };
    for (size_t pos = v.ini; pos < v.end;) {
        const uint32_t cp = v.cp(pos);

        if (size_t n = contraction(v, pos, false); n > 0) {
            pos += n;
            emit(pos);
            continue;
        }
        const size_t at = cp == ' ' ? pos + 1 : pos;
        const flags f = v.fl(at);
        // ' '?\p{L}+
        if (f.letter) {
            pos = at;
            while (v.fl(pos).letter) {
                ++pos;
            }
            emit(pos);
            continue;
        }
        // ' '?\p{N}+
        if (f.number) {
            pos = at;
            while (v.fl(pos).number) {
                ++pos;
            }
            emit(pos);
            continue;
        }
        // ' '?[^\s\p{L}\p{N}]+
        if (v.other(at)) {
            pos = at;
            while (v.other(pos)) {
                ++pos;
            }
            emit(pos);
            continue;
        }
        size_t n_ws = 0;
        while (v.fl(pos + n_ws).ws) {
            ++n_ws;
        }
        if (n_ws > 0) {
            pos = whitespace_run(v, pos, n_ws);
            emit(pos);
            continue;
        }
        emit(++pos);
    }
}

/// A pattern that is one character class run: splits [ini, end) into the
/// matches `match(pos)` finds (leftmost first, length > 0) and the gaps.
template <typename Match>
void scan_matches(size_t ini, size_t end, Match match, std::vector<range>& out) {
    size_t gap = ini;
    for (size_t pos = ini; pos < end;) {
        const size_t n = match(pos, end);
        if (n == 0) {
            ++pos;
            continue;
        }
        if (pos > gap) {
            out.emplace_back(gap, pos);
        }
        out.emplace_back(pos, pos + n);
        pos += n;
        gap = pos;
    }
    if (end > gap) {
        out.emplace_back(gap, end);
    }
}

enum class stage { llama3, qwen2, gpt2, digit, digit_runs, ascii_digit3, punct_runs };

void apply(stage s, const std::vector<cpt>& c, const std::vector<range>& in,
           std::vector<range>& out) {
    out.clear();
    auto is_number = [&](size_t p) { return c[p].cls == category::number; };
    for (const auto& [ini, end] : in) {
        switch (s) {
        case stage::llama3:
            scan_llama3(view{c, ini, end}, 3, out);
            break;
        case stage::qwen2:
            scan_llama3(view{c, ini, end}, 1, out);
            break;
        case stage::gpt2:
            scan_gpt2(view{c, ini, end}, out);
            break;
        case stage::digit:
            scan_matches(
                ini, end, [&](size_t p, size_t) -> size_t { return is_number(p) ? 1 : 0; }, out);
            break;
        case stage::digit_runs:
            scan_matches(
                ini, end,
                [&](size_t p, size_t e) {
                    size_t n = 0;
                    while (p + n < e && is_number(p + n)) {
                        ++n;
                    }
                    return n;
                },
                out);
            break;
        case stage::ascii_digit3:
            scan_matches(
                ini, end,
                [&](size_t p, size_t e) -> size_t {
                    for (size_t i = 0; i < 3; ++i) {
                        if (p + i >= e || c[p + i].cp < '0' || c[p + i].cp > '9') {
                            return 0;
                        }
                    }
                    return 3;
                },
                out);
            break;
        case stage::punct_runs:
            scan_matches(
                ini, end,
                [&](size_t p, size_t e) {
                    auto hit = [&](size_t q) {
                        const uint32_t cp = c[q].cp;
                        return c[q].cls == category::punctuation || cp == '$' || cp == '+' ||
                               cp == '<' || cp == '=' || cp == '>' || cp == '^' || cp == '~' ||
                               cp == '|';
                    };
                    size_t n = 0;
                    while (p + n < e && hit(p + n)) {
                        ++n;
                    }
                    return n;
                },
                out);
            break;
        }
    }
}

std::vector<stage> stages_of(bpe_pre pre) {
    switch (pre) {
    case bpe_pre::llama3:
        return {stage::llama3};
    case bpe_pre::qwen2:
        return {stage::qwen2};
    case bpe_pre::gpt2:
        return {stage::gpt2};
    case bpe_pre::smollm:
        return {stage::digit, stage::gpt2};
    case bpe_pre::default_:
        break;
    }
    return {stage::punct_runs, stage::gpt2, stage::digit_runs, stage::ascii_digit3};
}

} // namespace

void pretokenize_ranges(bpe_pre pre, std::string_view text, std::vector<span_range>& out) {
    out.clear();
    if (text.empty()) {
        return;
    }
    std::vector<cpt> c;
    c.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        const auto b = static_cast<uint8_t>(text[pos]);
        if (b < 0x80) {
            c.push_back({b, pos, unicode::category_of(b), unicode::is_whitespace(b)});
            ++pos;
            continue;
        }
        const unicode::utf8_step st = unicode::decode_utf8(text, pos);
        if (st.valid) {
            c.push_back({st.cp, pos, unicode::category_of(st.cp), unicode::is_whitespace(st.cp)});
            pos += st.len;
        } else {
            c.push_back({0xFFFD, pos, category::symbol, false});
            ++pos;
        }
    }
    std::vector<range> a{{0, c.size()}};
    std::vector<range> b;
    for (stage s : stages_of(pre)) {
        apply(s, c, a, b);
        a.swap(b);
    }
    out.reserve(a.size());
    for (const auto& [ini, end] : a) {
        const size_t off = c[ini].off;
        const size_t stop = end < c.size() ? c[end].off : text.size();
        out.push_back({off, stop - off});
    }
}

std::vector<std::string_view> pretokenize(bpe_pre pre, std::string_view text) {
    std::vector<span_range> r;
    pretokenize_ranges(pre, text, r);
    std::vector<std::string_view> words;
    words.reserve(r.size());
    for (const span_range& s : r) {
        words.push_back(text.substr(s.off, s.len));
    }
    return words;
}

} // namespace llmos::engine
