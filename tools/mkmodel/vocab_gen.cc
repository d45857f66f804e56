// SPDX-License-Identifier: MIT
#include "vocab_gen.hh"

#include "rng.hh"

#include <algorithm>
#include <array>
#include <cstdio>
#include <llmos/engine/gguf.hh>
#include <map>
#include <set>
#include <stdexcept>
#include <unordered_set>
#include <utility>

namespace llmos::mkmodel {

namespace {

using engine::gguf_value;

constexpr int32_t type_normal = 1;
constexpr int32_t type_unknown = 2;
constexpr int32_t type_control = 3;
constexpr int32_t type_byte = 6;

constexpr std::string_view spm_space = "\xe2\x96\x81"; // U+2581 "▁"
constexpr std::string_view bpe_space = "\xc4\xa0";     // U+0120 "Ġ", byte 0x20
constexpr size_t max_piece_bytes = 12;                 // padding pieces stay short
constexpr uint64_t vocab_seed = 0x6c6c6d6f73766f63ull; // "llmosvoc": fixed, not --seed

constexpr std::string_view text = R"(Hello, world! The quick brown fox jumps over the lazy dog.
Once upon a time there was a small model that lived in a file. Every morning it woke up,
read its weights and tried to guess the next word. Some days the guesses were good and
some days they were strange, but the model never stopped trying. It learned that the
word "the" comes often, that a question ends with a question mark, and that numbers
like 1, 22, 333 and 2024 are written with digits. It also met a few travellers from far
away: a naïve café owner, a señor with a piano, and a friend who said "über" and "déjà vu".
In the evening the model counted tokens, sorted them by how often they appeared, and
merged the pairs it saw most. This is how a tokenizer grows: letters become pieces,
pieces become words, and the words that matter most get a token of their own. When the
night came the model wrote everything down, closed the file and went to sleep, waiting
for someone to ask it a new question tomorrow. What would you like to know? Ask me
anything about the weather, the time, the news, or the best way to cook an egg.
)";

constexpr std::string_view llama2_template =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

constexpr std::string_view llama3_template =
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

constexpr std::string_view chatml_template =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const std::vector<std::string_view>& bpe_specials(std::string_view arch) {
    static const std::vector<std::string_view> llama = {"<|begin_of_text|>", "<|end_of_text|>",
                                                        "<|start_header_id|>", "<|end_header_id|>",
                                                        "<|eot_id|>"};
    static const std::vector<std::string_view> qwen2 = {"<|endoftext|>", "<|im_start|>",
                                                        "<|im_end|>"};
    return arch == "qwen2" ? qwen2 : llama;
}

// UTF-8 encoding of a code point below 0x800 (all GPT-2 byte characters are).
std::string utf8(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else {
        s += static_cast<char>(0xc0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3f));
    }
    return s;
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others
// take code points 256, 257, ... in byte order. Also returns the GPT-2 token
// order of the bytes (printable ones first).
std::array<std::string, 256> byte_chars(std::vector<uint8_t>* order) {
    std::array<std::string, 256> chars;
    auto printable = [](int b) {
        return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    };
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
        chars[b] = utf8(printable(b) ? static_cast<uint32_t>(b) : next++);
    }
    if (order) {
        for (int pass = 0; pass < 2; ++pass) {
            for (int b = 0; b < 256; ++b) {
                if (printable(b) == (pass == 0)) {
                    order->push_back(static_cast<uint8_t>(b));
                }
            }
        }
    }
    return chars;
}

// Splits UTF-8 text into characters.
std::vector<std::string> utf8_chars(std::string_view s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        size_t n = 1;
        while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xc0) == 0x80) {
            ++n;
        }
        out.emplace_back(s.substr(i, n));
        i += n;
    }
    return out;
}

bool is_letter(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}
bool is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}
bool is_space(unsigned char c) {
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

// An ASCII approximation of the Llama-3 / Qwen2 pre-tokenizer regex, enough
// for the training text: [^\r\n L N]?L+ | N{1,3} (Qwen2: N) | ' '?P+ | \s+.
std::vector<std::string_view> bpe_words(std::string_view s, bool single_digits) {
    std::vector<std::string_view> out;
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        auto next = i + 1 < s.size() ? static_cast<unsigned char>(s[i + 1]) : 0;
        size_t j = i + 1;
        if (is_letter(c) || (c != '\n' && c != '\r' && !is_digit(c) && is_letter(next))) {
            while (j < s.size() && is_letter(static_cast<unsigned char>(s[j]))) {
                ++j;
            }
        } else if (is_digit(c)) {
            while (j < s.size() && j - i < (single_digits ? 1u : 3u) &&
                   is_digit(static_cast<unsigned char>(s[j]))) {
                ++j;
            }
        } else if (!is_space(c) || (c == ' ' && next && !is_space(next) && !is_digit(next))) {
            while (j < s.size() && !is_space(static_cast<unsigned char>(s[j])) &&
                   !is_letter(static_cast<unsigned char>(s[j])) &&
                   !is_digit(static_cast<unsigned char>(s[j]))) {
                ++j;
            }
        } else {
            while (j < s.size() && is_space(static_cast<unsigned char>(s[j]))) {
                ++j;
            }
        }
        out.push_back(s.substr(i, j - i));
        i = j;
    }
    return out;
}

// The training words with their counts, each as a list of symbols.
struct word {
    std::vector<std::string> syms;
    uint32_t count;
};

std::vector<word> training_words(vocab_style style, std::string_view arch) {
    std::map<std::string, uint32_t> counts; // sorted: a deterministic order
    if (style == vocab_style::spm) {
        size_t i = 0;
        while (i < text.size()) {
            while (i < text.size() && is_space(static_cast<unsigned char>(text[i]))) {
                ++i;
            }
            size_t j = i;
            while (j < text.size() && !is_space(static_cast<unsigned char>(text[j]))) {
                ++j;
            }
            if (j > i) {
                ++counts[std::string(spm_space) + std::string(text.substr(i, j - i))];
            }
            i = j;
        }
    } else {
        auto chars = byte_chars(nullptr);
        for (auto w : bpe_words(text, arch == "qwen2")) {
            std::string mapped;
            for (char c : w) {
                mapped += chars[static_cast<unsigned char>(c)];
            }
            ++counts[mapped];
        }
    }
    std::vector<word> words;
    for (auto& [w, n] : counts) {
        words.push_back({utf8_chars(w), n});
    }
    return words;
}

// The token builder: texts, types, scores-by-merge-rank, and the text index.
struct builder {
    vocab_spec v;
    std::unordered_set<std::string> have;

    int32_t add(std::string text, int32_t type) {
        if (!have.insert(text).second) {
            throw std::logic_error("mkmodel: duplicate token " + text);
        }
        v.tokens.push_back(std::move(text));
        v.types.push_back(type);
        return static_cast<int32_t>(v.tokens.size() - 1);
    }
};

// Learns merges from `words` until every word is one piece or `room` runs out;
// returns the merges in order. New pieces are added to `b` as NORMAL.
std::vector<std::pair<std::string, std::string>> learn(builder& b, std::vector<word> words,
                                                       size_t room) {
    std::vector<std::pair<std::string, std::string>> merges;
    while (room > 0) {
        std::map<std::pair<std::string_view, std::string_view>, uint64_t> pairs;
        for (const auto& w : words) {
            for (size_t i = 0; i + 1 < w.syms.size(); ++i) {
                pairs[{w.syms[i], w.syms[i + 1]}] += w.count;
            }
        }
        // Most frequent pair; ties go to the smallest pair (map order).
        auto best = pairs.end();
        for (auto it = pairs.begin(); it != pairs.end(); ++it) {
            if (best == pairs.end() || it->second > best->second) {
                best = it;
            }
        }
        if (best == pairs.end()) {
            break;
        }
        std::pair<std::string, std::string> m{std::string(best->first.first),
                                              std::string(best->first.second)};
        std::string joined = m.first + m.second;
        for (auto& w : words) {
            std::vector<std::string> out;
            for (size_t i = 0; i < w.syms.size(); ++i) {
                if (i + 1 < w.syms.size() && w.syms[i] == m.first && w.syms[i + 1] == m.second) {
                    out.push_back(joined);
                    ++i;
                } else {
                    out.push_back(w.syms[i]);
                }
            }
            w.syms = std::move(out);
        }
        if (!b.have.contains(joined)) {
            b.add(joined, type_normal);
            --room;
        }
        merges.push_back(std::move(m));
    }
    return merges;
}

bool starts_with(std::string_view s, std::string_view p) {
    return s.substr(0, p.size()) == p;
}

bool ascii_letters(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    });
}

// Pads with merges of two existing pieces until `room` more tokens exist: a
// word start (marker + letters) or letters on the left, a short run of
// lowercase letters on the right, so every new piece is a plausible word part.
void pad(builder& b, std::vector<std::pair<std::string, std::string>>& merges,
         std::string_view marker, size_t room) {
    std::vector<std::string> left, right;
    for (const auto& t : b.v.tokens) {
        std::string_view rest = starts_with(t, marker) ? std::string_view(t).substr(marker.size())
                                                       : std::string_view(t);
        if (ascii_letters(rest) || (rest.empty() && t == marker)) {
            left.push_back(t);
        }
        if (rest.size() == t.size() && t.size() <= 3 &&
            std::all_of(t.begin(), t.end(), [](char c) { return c >= 'a' && c <= 'z'; })) {
            right.push_back(t);
        }
    }
    if (left.empty() || right.empty()) {
        throw std::logic_error("mkmodel: no pieces to pad the vocabulary with");
    }
    rng r(vocab_seed);
    uint64_t misses = 0;
    while (room > 0) {
        const auto& l = left[r.below(left.size())];
        const auto& rt = right[r.below(right.size())];
        std::string joined = l + rt;
        if (joined.size() > max_piece_bytes || b.have.contains(joined)) {
            if (++misses > 100'000'000) {
                throw std::logic_error("mkmodel: cannot find new pieces to pad the vocabulary");
            }
            continue;
        }
        b.add(joined, type_normal);
        merges.emplace_back(l, rt);
        left.push_back(joined);
        --room;
    }
}

size_t spm_base(const std::vector<word>& words, std::vector<std::string>* chars) {
    std::map<std::string, uint64_t> freq;
    for (const auto& w : words) {
        for (const auto& s : w.syms) {
            freq[s] += w.count;
        }
    }
    std::vector<std::pair<std::string, uint64_t>> sorted(freq.begin(), freq.end());
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    if (chars) {
        for (auto& [c, n] : sorted) {
            chars->push_back(c);
        }
    }
    return 3 + 256 + sorted.size();
}

} // namespace

std::string_view training_text() {
    return text;
}

uint32_t min_vocab(vocab_style style, std::string_view arch) {
    if (style == vocab_style::spm) {
        return static_cast<uint32_t>(spm_base(training_words(style, arch), nullptr));
    }
    return static_cast<uint32_t>(256 + bpe_specials(arch).size());
}

vocab_spec make_vocab(vocab_style style, std::string_view arch, uint32_t n_vocab) {
    if (n_vocab < min_vocab(style, arch)) {
        throw std::invalid_argument("n_vocab must be at least " +
                                    std::to_string(min_vocab(style, arch)) + " for this vocab");
    }
    builder b;
    auto words = training_words(style, arch);
    if (style == vocab_style::spm) {
        b.v.model = "llama";
        b.v.unk = b.add("<unk>", type_unknown);
        b.v.bos = b.add("<s>", type_control);
        b.v.eos = b.add("</s>", type_control);
        for (int i = 0; i < 256; ++i) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", i);
            b.add(name, type_byte);
        }
        std::vector<std::string> chars;
        spm_base(words, &chars);
        for (auto& c : chars) {
            b.add(c, type_normal);
        }
        const size_t first_piece = b.v.tokens.size();
        auto merges = learn(b, words, n_vocab - b.v.tokens.size());
        b.v.n_learned = static_cast<uint32_t>(merges.size());
        pad(b, merges, spm_space, n_vocab - b.v.tokens.size());
        // Scores: pieces by the order they were made, characters below.
        b.v.scores.assign(b.v.tokens.size(), 0.0f);
        const size_t n_pieces = b.v.tokens.size() - first_piece;
        for (size_t i = first_piece; i < b.v.tokens.size(); ++i) {
            b.v.scores[i] = -static_cast<float>(i - first_piece);
        }
        for (size_t i = 0; i < chars.size(); ++i) {
            b.v.scores[first_piece - chars.size() + i] = -static_cast<float>(n_pieces + i);
        }
        b.v.add_bos = true;
        b.v.add_space_prefix = true;
        b.v.chat_template = llama2_template;
        return std::move(b.v);
    }
    b.v.model = "gpt2";
    b.v.pre = arch == "qwen2" ? "qwen2" : "llama-bpe";
    std::vector<uint8_t> order;
    auto chars = byte_chars(&order);
    for (uint8_t byte : order) {
        b.add(chars[byte], type_normal);
    }
    const auto& specials = bpe_specials(arch);
    const size_t room = n_vocab - specials.size();
    auto merges = learn(b, words, room - b.v.tokens.size());
    b.v.n_learned = static_cast<uint32_t>(merges.size());
    pad(b, merges, bpe_space, room - b.v.tokens.size());
    for (auto& [l, r] : merges) {
        b.v.merges.push_back(l + " " + r);
    }
    std::vector<int32_t> ids;
    for (auto s : specials) {
        ids.push_back(b.add(std::string(s), type_control));
    }
    if (arch == "qwen2") {
        b.v.bos = ids[0]; // <|endoftext|>, not added
        b.v.pad = ids[0];
        b.v.eos = ids[2]; // <|im_end|>
        b.v.eot = ids[2];
        b.v.chat_template = chatml_template;
    } else {
        b.v.bos = ids[0];
        b.v.eos = ids[1];
        b.v.eot = ids[4];
        b.v.add_bos = true;
        b.v.chat_template = llama3_template;
    }
    return std::move(b.v);
}

void add_vocab(engine::gguf_writer& w, const vocab_spec& v) {
    w.set("tokenizer.ggml.model", v.model);
    if (!v.pre.empty()) {
        w.set("tokenizer.ggml.pre", v.pre);
    }
    w.set("tokenizer.ggml.tokens", gguf_value::array_of(v.tokens));
    if (!v.scores.empty()) {
        w.set("tokenizer.ggml.scores", gguf_value::array_of(v.scores));
    }
    w.set("tokenizer.ggml.token_type", gguf_value::array_of(v.types));
    if (!v.merges.empty()) {
        w.set("tokenizer.ggml.merges", gguf_value::array_of(v.merges));
    }
    auto id = [&](const char* key, int32_t value) {
        if (value >= 0) {
            w.set(key, static_cast<uint32_t>(value));
        }
    };
    id("tokenizer.ggml.bos_token_id", v.bos);
    id("tokenizer.ggml.eos_token_id", v.eos);
    id("tokenizer.ggml.unknown_token_id", v.unk);
    id("tokenizer.ggml.padding_token_id", v.pad);
    id("tokenizer.ggml.eot_token_id", v.eot);
    w.set("tokenizer.ggml.add_bos_token", v.add_bos);
    w.set("tokenizer.ggml.add_eos_token", false);
    if (v.model == "llama") {
        w.set("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
    }
    w.set("tokenizer.chat_template", v.chat_template);
}

} // namespace llmos::mkmodel
