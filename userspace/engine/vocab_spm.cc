// SPDX-License-Identifier: MIT
//
// The SentencePiece-style ("llama") tokenizer: start from one symbol per
// character, then repeatedly merge the adjacent pair whose concatenation is
// a vocabulary token with the highest score (ties: the leftmost pair), as
// llama.cpp's llm_tokenizer_spm does, except that, as in SentencePiece,
// control, unknown and byte tokens are never a merge's result. Symbols that
// end up matching no token become byte tokens.
#include "vocab_impl.hh"

#include <algorithm>

namespace llmos::engine {

void vocab::impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) {
        return;
    }
    using merger = pair_merger<float>;
    merger m;
    const auto& syms = m.run(text, [&](const merger::symbol& l, const merger::symbol& r) {
        const int32_t id = lookup_plain(text.substr(l.off, l.n + r.n));
        return id < 0 ? std::nullopt : std::optional<float>(scores[static_cast<size_t>(id)]);
    });
    for (int32_t i = 0; i != -1; i = syms[static_cast<size_t>(i)].next) {
        const merger::symbol& s = syms[static_cast<size_t>(i)];
        const std::string_view piece = text.substr(s.off, s.n);
        const int32_t id = lookup_plain(piece);
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
