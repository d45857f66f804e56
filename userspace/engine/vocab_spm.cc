// SPDX-License-Identifier: MIT
//
// The SentencePiece-style ("llama") tokenizer: start from one symbol per
// character, then repeatedly merge the adjacent pair whose concatenation is
// a vocabulary token with the highest score (ties: the leftmost pair), as
// llama.cpp's llm_tokenizer_spm does. Symbols that end up matching no token
// become byte tokens.
#include "vocab_impl.hh"

#include <algorithm>
#include <llmos/engine/unicode.hh>
#include <queue>

namespace llmos::engine {

namespace {

struct symbol {
    int32_t prev;
    int32_t next;
    size_t off; ///< into the text
    size_t n;   ///< bytes; 0 once merged into its left neighbour
};

struct bigram {
    int32_t left;
    int32_t right;
    float score;
    size_t size;
};

struct bigram_order {
    // priority_queue pops the largest: best score, then smallest left.
    bool operator()(const bigram& a, const bigram& b) const {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};

} // namespace

void vocab::impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) {
        return;
    }
    std::vector<symbol> syms;
    syms.reserve(text.size());
    for (size_t off = 0; off < text.size();) {
        const size_t n =
            std::min(unicode::lead_length(static_cast<uint8_t>(text[off])), text.size() - off);
        const auto i = static_cast<int32_t>(syms.size());
        syms.push_back({i - 1, off + n == text.size() ? -1 : i + 1, off, n});
        off += n;
    }

    std::priority_queue<bigram, std::vector<bigram>, bigram_order> queue;
    auto try_add = [&](int32_t left, int32_t right) {
        if (left < 0 || right < 0) {
            return;
        }
        const symbol& l = syms[static_cast<size_t>(left)];
        const symbol& r = syms[static_cast<size_t>(right)];
        const int32_t id = lookup(text.substr(l.off, l.n + r.n));
        if (id < 0) {
            return;
        }
        queue.push({left, right, scores[static_cast<size_t>(id)], l.n + r.n});
    };
    for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) {
        try_add(i - 1, i);
    }

    while (!queue.empty()) {
        const bigram b = queue.top();
        queue.pop();
        symbol& l = syms[static_cast<size_t>(b.left)];
        symbol& r = syms[static_cast<size_t>(b.right)];
        // Stale: one side was merged away, or the right one grew since.
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
        const std::string_view piece = text.substr(s.off, s.n);
        const int32_t id = lookup(piece);
        if (id >= 0) {
            out.push_back(id);
            continue;
        }
        // Byte fallback; a character some byte of which has no token at all
        // becomes one unknown token (or nothing, without one).
        const bool all_bytes = std::all_of(piece.begin(), piece.end(), [&](char c) {
            return byte_token[static_cast<uint8_t>(c)] >= 0;
        });
        if (all_bytes) {
            for (char c : piece) {
                out.push_back(byte_token[static_cast<uint8_t>(c)]);
            }
        } else if (unk >= 0) {
            out.push_back(unk);
        }
    }
}

} // namespace llmos::engine
