// SPDX-License-Identifier: MIT
//
// Vocabularies for generated test models, built deterministically (they do
// not depend on the weight seed) by learning BPE merges from a small
// built-in English text (most frequent pair first, until every word of it
// is one piece or the room runs out), then padding to the requested size
// with merges of existing pieces.
//
// spm (tokenizer.ggml.model "llama", SentencePiece-style, as Llama-2):
//   0 <unk> (UNKNOWN), 1 <s>, 2 </s> (CONTROL), 3..258 <0x00>..<0xFF>
//   (BYTE), then the text's characters ("▁" for a space included), then
//   the merged pieces, all NORMAL. Scores: the merged pieces in merge order
//   0, -1, -2, ... (higher merges earlier), the single characters below
//   them all. Llama-2 [INST] chat template.
// bpe (tokenizer.ggml.model "gpt2", byte-level, as Llama-3 and Qwen2):
//   the 256 byte characters of GPT-2's bytes_to_unicode (printable ones
//   first, as GPT-2 orders them), the merged pieces (NORMAL) with
//   tokenizer.ggml.merges, and the special tokens (CONTROL) at the end:
//   llama: <|begin_of_text|> <|end_of_text|> <|start_header_id|>
//   <|end_header_id|> <|eot_id|>, pre "llama-bpe", Llama-3 chat template;
//   qwen2: <|endoftext|> <|im_start|> <|im_end|>, pre "qwen2", ChatML.
//   Merges never cross the pre-tokenizer's word boundaries.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmos::engine {
class gguf_writer;
}

namespace llmos::mkmodel {

enum class vocab_style { spm, bpe };

/// A generated tokenizer: the values of the GGUF tokenizer.* keys.
struct vocab_spec {
    std::string model;               ///< "llama" or "gpt2"
    std::string pre;                 ///< pre-tokenizer ("" for spm)
    std::vector<std::string> tokens; ///< token texts by id (all distinct)
    std::vector<float> scores;       ///< spm only
    std::vector<int32_t> types;      ///< GGUF token types
    std::vector<std::string> merges; ///< bpe only: "left right" by rank
    int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1;
    bool add_bos = false;
    bool add_space_prefix = false; ///< spm only
    std::string chat_template;
    uint32_t n_learned = 0; ///< merges learned from the text (the rest pad)
};

/// The smallest n_vocab make_vocab accepts for `style` and `arch`.
uint32_t min_vocab(vocab_style style, std::string_view arch);

/// Builds a vocabulary of exactly `n_vocab` tokens for architecture `arch`
/// ("llama" or "qwen2": picks the BPE specials, pre-tokenizer and chat
/// template). Throws std::invalid_argument when n_vocab < min_vocab(). Pure:
/// the same arguments give the same vocabulary. Any thread.
vocab_spec make_vocab(vocab_style style, std::string_view arch, uint32_t n_vocab);

/// Sets the tokenizer.ggml.* keys and tokenizer.chat_template of `v`, in
/// the order llama.cpp's converter writes them.
void add_vocab(engine::gguf_writer& w, const vocab_spec& v);

/// The built-in English text the merges are learned from.
std::string_view training_text();

} // namespace llmos::mkmodel
