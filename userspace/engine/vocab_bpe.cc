// SPDX-License-Identifier: MIT
//
// The byte-level BPE ("gpt2") tokenizer: pre-tokenize, map each word's bytes
// to GPT-2's printable characters, then repeatedly merge the adjacent pair
// with the lowest merge rank (ties: the leftmost pair), as llama.cpp's
// llm_tokenizer_bpe does.
#include "vocab_impl.hh"

#include <array>
#include <llmos/engine/unicode.hh>
#include <queue>

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

struct symbol {
    int32_t prev;
    int32_t next;
    size_t off;
    size_t n;
};

struct bigram {
    int32_t left;
    int32_t right;
    int32_t rank;
    size_t size;
};

struct bigram_order {
    // priority_queue pops the largest: lowest rank, then smallest left.
    bool operator()(const bigram& a, const bigram& b) const {
        return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
};

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
    std::vector<symbol> syms;
    std::priority_queue<bigram, std::vector<bigram>, bigram_order> queue;

    for (const span_range& w : words) {
        word.clear();
        for (char c : text.substr(w.off, w.len)) {
            word += bpe_byte_to_utf8(static_cast<uint8_t>(c));
        }
        if (ignore_merges) {
            if (int32_t id = lookup(word); id >= 0) {
                out.push_back(id);
                continue;
            }
        }

        syms.clear();
        for (size_t off = 0; off < word.size();) {
            // The mapped text is well-formed UTF-8 (1 or 2 bytes a byte).
            const size_t n = unicode::lead_length(static_cast<uint8_t>(word[off]));
            const auto i = static_cast<int32_t>(syms.size());
            syms.push_back({i - 1, off + n == word.size() ? -1 : i + 1, off, n});
            off += n;
        }

        auto try_add = [&](int32_t left, int32_t right) {
            if (left < 0 || right < 0) {
                return;
            }
            const symbol& l = syms[static_cast<size_t>(left)];
            const symbol& r = syms[static_cast<size_t>(right)];
            key.assign(word, l.off, l.n);
            key += ' ';
            key.append(word, r.off, r.n);
            auto it = merge_rank.find(key);
            if (it == merge_rank.end()) {
                return;
            }
            queue.push({left, right, it->second, l.n + r.n});
        };
        for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) {
            try_add(i - 1, i);
        }
        while (!queue.empty()) {
            const bigram b = queue.top();
            queue.pop();
            symbol& l = syms[static_cast<size_t>(b.left)];
            symbol& r = syms[static_cast<size_t>(b.right)];
            // Stale: a side was merged away, or the right one grew since.
            if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) {
                continue;
            }
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) {
                syms[static_cast<size_t>(r.next)].prev = b.left;
            }
            try_add(l.prev, b.left);
            try_add(b.left, l.next);
        }

        for (int32_t i = 0; i != -1; i = syms[static_cast<size_t>(i)].next) {
            const symbol& s = syms[static_cast<size_t>(i)];
            const std::string_view piece = std::string_view(word).substr(s.off, s.n);
            if (int32_t id = lookup(piece); id >= 0) {
                out.push_back(id);
                continue;
            }
            // A merge result that is no token (a vocab/merges mismatch) or
            // a byte the vocab lacks: one token per byte character, the
            // unknown token for a byte without one.
            for (size_t off = 0; off < piece.size();) {
                const size_t n = unicode::lead_length(static_cast<uint8_t>(piece[off]));
                const int32_t id = lookup(piece.substr(off, n));
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
