// SPDX-License-Identifier: MIT
//
// The byte-level BPE ("gpt2") tokenizer: pre-tokenize, map each word's bytes
// to GPT-2's printable characters, then repeatedly merge the adjacent pair
// with the lowest merge rank (ties: the leftmost pair), as llama.cpp's
// llm_tokenizer_bpe does.
#include "vocab_impl.hh"

#include <array>
#include <llmos/engine/unicode.hh>

namespace llmos::engine {

namespace {

// bytes_to_unicode: printable Latin-1 bytes ('!'..'~', 0xA1..0xAC,
// 0xAE..0xFF) stand for themselves; the other 68 bytes, in order, take the
// code points from U+0100 up.
struct byte_map {
    std::array<uint32_t, 256> cp{};
    std::array<std::string, 256> utf8;
    std::array<int16_t, 0x144> byte{}; // code point -> byte, -1 if none

    byte_map() {
        byte.fill(-1);
        uint32_t next = 0x100;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            cp[b] = self ? b : next++;
            utf8[b] = unicode::to_utf8(cp[b]);
            byte[cp[b]] = static_cast<int16_t>(b);
        }
    }
};

const byte_map& bytes() {
    static const byte_map m;
    return m;
}

} // namespace

std::string_view bpe_byte_to_utf8(uint8_t b) {
    return bytes().utf8[b];
}

int bpe_cp_to_byte(uint32_t cp) {
    return cp < bytes().byte.size() ? bytes().byte[cp] : -1;
}

void vocab::impl::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
    std::vector<span_range> words;
    pretokenize_ranges(pre, text, words);

    std::string word;
    std::string key;
    using merger = pair_merger<int64_t>; // the lowest merge rank first
    merger m;

    for (const span_range& w : words) {
        word.clear();
        for (char c : text.substr(w.off, w.len)) {
            word += bpe_byte_to_utf8(static_cast<uint8_t>(c));
        }
        if (ignore_merges) {
            if (int32_t id = lookup_plain(word); id >= 0) {
                out.push_back(id);
                continue;
            }
        }

        // The mapped text is well-formed UTF-8 (1 or 2 bytes a byte).
        const auto& syms = m.run(word, [&](const merger::symbol& l, const merger::symbol& r) {
            key.assign(word, l.off, l.n);
            key += ' ';
            key.append(word, r.off, r.n);
            auto it = merge_rank.find(key);
            return it == merge_rank.end() ? std::nullopt
                                          : std::optional<int64_t>(-int64_t(it->second));
        });
        for (int32_t i = 0; i != -1; i = syms[static_cast<size_t>(i)].next) {
            const merger::symbol& s = syms[static_cast<size_t>(i)];
            const std::string_view piece = std::string_view(word).substr(s.off, s.n);
            if (int32_t id = lookup_plain(piece); id >= 0) {
                out.push_back(id);
                continue;
            }
            // A merge result that is no token (a vocab/merges mismatch) or
            // a byte the vocab lacks: one token per byte character, the
            // unknown token for a byte without one.
            for (size_t off = 0; off < piece.size();) {
                const size_t n = unicode::lead_length(static_cast<uint8_t>(piece[off]));
                const int32_t id = lookup_plain(piece.substr(off, n));
                if (id >= 0) {
                    out.push_back(id);
                } else if (unk >= 0) {
                    out.push_back(unk);
                }
                off += n;
            }
        }
    }
}

} // namespace llmos::engine
