// SPDX-License-Identifier: MIT
//
// Private to the vocab's files (vocab.cc, vocab_spm.cc, vocab_bpe.cc,
// vocab_pre.cc): the token tables and the two tokenizer algorithms.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <llmos/engine/unicode.hh>
#include <llmos/engine/vocab.hh>
#include <optional>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmos::engine {

/// Hash for heterogeneous lookup (find(string_view) on string keys).
struct string_hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept {
        return std::hash<std::string_view>{}(s);
    }
};

using string_map = std::unordered_map<std::string, int32_t, string_hash, std::equal_to<>>;

/// The merge loop both tokenizers share: a text starts as one symbol per
/// UTF-8 character; the adjacent pair with the best priority (the largest;
/// ties: the leftmost pair) merges, its neighbours' pairs are ranked anew,
/// until no pair merges. SentencePiece ranks a pair by its token's score,
/// BPE by its merge rank (negated: the lowest rank goes first). Reused
/// across texts, it allocates only when a text is longer than any before.
template <typename Priority>
class pair_merger {
public:
    struct symbol {
        int32_t prev;
        int32_t next; ///< -1 after the last
        size_t off;   ///< into the text
        size_t n;     ///< bytes; 0 once merged into its left neighbour
    };

    /// Merges `text`; rank(l, r) is the priority of joining symbols l and
    /// r, or nullopt when they do not join. Returns the symbols, the
    /// surviving ones linked from index 0 (text must not be empty).
    template <typename Rank>
    const std::vector<symbol>& run(std::string_view text, Rank&& rank) {
        if (text.size() >= size_t(std::numeric_limits<int32_t>::max())) {
            throw std::length_error("tokenizer: a piece of text of " + std::to_string(text.size()) +
                                    " bytes is more than it takes (2 GiB)");
        }
        _syms.clear();
        for (size_t off = 0; off < text.size();) {
            // A character, or one byte of an ill-formed sequence (it must
            // not swallow what follows: a "▁" that stands for a space).
            const size_t n = unicode::decode_utf8(text, off).len;
            const auto i = static_cast<int32_t>(_syms.size());
            _syms.push_back({i - 1, off + n == text.size() ? -1 : i + 1, off, n});
            off += n;
        }
        auto try_add = [&](int32_t left, int32_t right) {
            if (left < 0 || right < 0) {
                return;
            }
            const symbol& l = _syms[static_cast<size_t>(left)];
            const symbol& r = _syms[static_cast<size_t>(right)];
            if (const std::optional<Priority> p = rank(l, r)) {
                _queue.push({left, right, *p, l.n + r.n});
            }
        };
        for (int32_t i = 1; i < static_cast<int32_t>(_syms.size()); ++i) {
            try_add(i - 1, i);
        }
        while (!_queue.empty()) {
            const pair b = _queue.top();
            _queue.pop();
            symbol& l = _syms[static_cast<size_t>(b.left)];
            symbol& r = _syms[static_cast<size_t>(b.right)];
            // Stale: a side was merged away, or the right one grew since.
            if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) {
                continue;
            }
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) {
                _syms[static_cast<size_t>(r.next)].prev = b.left;
            }
            try_add(l.prev, b.left);
            try_add(b.left, l.next);
        }
        return _syms;
    }

private:
    struct pair {
        int32_t left;
        int32_t right;
        Priority priority;
        size_t size;
    };
    struct order {
        // priority_queue pops the largest: best priority, then smallest left.
        bool operator()(const pair& a, const pair& b) const {
            return a.priority < b.priority || (a.priority == b.priority && a.left > b.left);
        }
    };
    std::vector<symbol> _syms;
    std::priority_queue<pair, std::vector<pair>, order> _queue;
};

struct vocab::impl {
    vocab_kind kind = vocab_kind::spm;
    bpe_pre pre = bpe_pre::default_;
    bool ignore_merges = false; ///< a whole pre-token that is a token is not merged (llama-3)

    std::vector<std::string> text;
    std::vector<float> scores;
    std::vector<token_type> types;
    std::vector<uint8_t> eog; ///< 1 for end-of-generation tokens
    /// What token_to_piece(id, special=true) returns.
    std::vector<std::string> pieces;
    string_map token_to_id;
    /// Merge rank by "left right" (a byte-level token never holds a space).
    string_map merge_rank;
    /// Control, unknown and user-defined tokens, longest text first.
    std::vector<int32_t> specials;
    bool any_user_defined = false; ///< whether specials has a user-defined one
    /// Their texts as a byte trie with Aho-Corasick links, to find every
    /// occurrence of every one in one pass over a text. Node 0 is the
    /// root; a node ends the text of specials[rank[node]] (rank -1: none).
    struct special_trie {
        std::array<uint32_t, 256> first{};           ///< the root's children (0: none)
        std::unordered_map<uint64_t, uint32_t> next; ///< (node << 8 | byte) -> child
        std::vector<int32_t> rank{-1};
        std::vector<uint16_t> depth{0}; ///< bytes from the root
        /// The node of the longest proper suffix of the node's text that
        /// is in the trie (0: the root).
        std::vector<uint32_t> fail{0};
        /// The first node down the fail chain (the node itself excluded)
        /// that ends a text (0: none).
        std::vector<uint32_t> out{0};
        std::vector<std::pair<uint32_t, uint8_t>> up{{0, 0}}; ///< parent and byte, until link()

        /// Makes room for texts of `bytes` in all.
        void reserve(size_t bytes);
        /// Adds text `s` (not empty, at most max_special_token_bytes) as
        /// rank `r`.
        void add(std::string_view s, int32_t r);
        /// Sets fail and out, after the last add().
        void link();
        uint32_t child(uint32_t node, unsigned char c) const {
            if (!node) {
                return first[c];
            }
            auto it = next.find(uint64_t{node} << 8 | c);
            return it == next.end() ? 0 : it->second;
        }
        /// Calls found(rank, offset) for every occurrence in `text`, by
        /// where it ends, the longer first where several end together.
        /// O(text + occurrences).
        template <class F>
        void scan(std::string_view text, F&& found) const {
            uint32_t node = 0;
            for (size_t i = 0; i < text.size(); ++i) {
                const auto c = static_cast<unsigned char>(text[i]);
                for (;;) {
                    const uint32_t to = child(node, c);
                    if (to || !node) {
                        node = to;
                        break;
                    }
                    node = fail[node];
                }
                for (uint32_t o = rank[node] >= 0 ? node : out[node]; o; o = out[o]) {
                    found(rank[o], i + 1 - depth[o]);
                }
            }
        }
    } special_index;
    /// The token of each byte when nothing longer matches (SPM: <0xXX>;
    /// BPE: the byte's mapped character), -1 if the vocab lacks it.
    std::array<int32_t, 256> byte_token{};

    int32_t bos = -1, eos = -1, eot = -1, unk = -1, pad = -1;
    bool add_bos = false, add_eos = false, add_space_prefix = false;
    std::string chat_template;

    int32_t lookup(std::string_view s) const {
        auto it = token_to_id.find(s);
        return it == token_to_id.end() ? -1 : it->second;
    }
    /// lookup() of a token plain text may become: not a control, unknown,
    /// byte or unused token (as SentencePiece keeps those out of its
    /// merges), so that text spelling "</s>" or "<0x0A>" piece by piece is
    /// not that token, and text is never an unused token (untrained, with
    /// no text of its own: the text would be lost).
    int32_t lookup_plain(std::string_view s) const {
        const int32_t id = lookup(s);
        if (id < 0) {
            return -1;
        }
        const token_type t = types[static_cast<size_t>(id)];
        return t == token_type::control || t == token_type::unknown || t == token_type::byte ||
                       t == token_type::unused
                   ? -1
                   : id;
    }
    bool is_special(int32_t id) const {
        const token_type t = types[static_cast<size_t>(id)];
        return t == token_type::control || t == token_type::unknown ||
               t == token_type::user_defined;
    }

    /// SentencePiece merge of `text` (already escaped: spaces are "▁").
    void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
    /// Byte-level BPE of raw `text` (pre-tokenized here).
    void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
};

/// GPT-2's bytes_to_unicode: the UTF-8 of the printable character standing
/// for byte `b`.
std::string_view bpe_byte_to_utf8(uint8_t b);
/// The byte a bytes_to_unicode character stands for, or -1.
int bpe_cp_to_byte(uint32_t cp);

/// Byte ranges [off, off + len) of the pre-tokens of `text`.
struct span_range {
    size_t off;
    size_t len;
};
void pretokenize_ranges(bpe_pre pre, std::string_view text, std::vector<span_range>& out);

} // namespace llmos::engine
