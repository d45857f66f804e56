// SPDX-License-Identifier: MIT
//
// Small llama-architecture models with deterministic random weights, for
// testing the engine: the hyperparameters, the tensor type of each weight,
// and the GGUF file (keys, tensor names and shapes as llama.cpp's converter
// writes them).
//
// Weights: N(0, 0.02) from a splitmix64 stream per tensor (seeded by the
// model seed and the tensor's name, so a tensor's values do not depend on
// the other tensors or on its type); norm weights 1 + N(0, 0.02); qwen2's
// Q/K/V biases N(0, 0.02). Norms and biases are F32, every matrix has the
// chosen type, the token embedding included. Q4_K_M follows llama.cpp's
// mix: Q6_K for output.weight (for token_embd.weight when the embeddings
// are tied), for attn_v and ffn_down of the layers use_more_bits() picks,
// Q4_K elsewhere. A matrix whose rows are not a whole number of its type's
// blocks falls back as llama.cpp's quantizer does (llama_tensor_get_type):
// the output head (token_embd when tied) to Q8_0; the other matrices
// Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; F16 when the rows are not
// whole blocks of 32 either (llama.cpp refuses those for the 32-element
// types; F16 keeps small test shapes usable). Each fallback is reported.
#pragma once

#include "vocab_gen.hh"

#include <cstdint>
#include <functional>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/types.hh>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace llmos::mkmodel {

enum class model_arch { llama, qwen2 };

/// Weight types of --type: one type for every matrix, or a mix.
enum class weight_type { f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m };

/// "llama" or "qwen2".
std::string_view name(model_arch a);
/// "f32", "f16", ..., "q4_k_m".
std::string_view name(weight_type t);
/// The weight type named `s` (as name() spells it), or nothing.
std::optional<weight_type> parse_weight_type(std::string_view s);

struct model_params {
    model_arch arch = model_arch::llama;
    weight_type type = weight_type::f32;
    vocab_style vocab = vocab_style::spm;
    uint32_t n_embd = 64;
    uint32_t n_layer = 2;
    uint32_t n_head = 4;
    uint32_t n_head_kv = 2;
    uint32_t n_ff = 176;
    uint32_t n_ctx = 256;
    uint32_t n_vocab = 1024;
    uint64_t seed = 1;
    float rope_base = 10000.0f;
    float rms_eps = 1e-5f;
    bool tied = false; ///< no output.weight: the head is token_embd
};

/// Applies a preset: "tiny" (the shape of the testdata model: n_embd 64, 2
/// layers, 4/2 heads, FFN 176, context 256, vocab 1024) or "100m" (n_embd
/// 768, 12 layers, 12/4 heads, FFN 2048, context 2048, vocab 32000; 125M
/// parameters, 100M tied), or the shape of a popular model with only
/// `preset_layers` layers (the real depth in parentheses):
///   "tinyllama"   TinyLlama-1.1B: llama, SPM, n_embd 2048, 32/4 heads,
///                 FFN 5632, context 2048, vocab 32000, untied (22)
///   "qwen25-05b"  Qwen2.5-0.5B: qwen2, BPE, n_embd 896, 14/2 heads, FFN
///                 4864, context 32768, vocab 151936, tied (24)
///   "smollm-135m" SmolLM-135M: llama, BPE, n_embd 576, 9/3 heads, FFN
///                 1536, context 2048, vocab 49152, tied (30)
///   "smollm-360m" SmolLM-360M: llama, BPE, n_embd 960, 15/5 heads, FFN
///                 2560, context 2048, vocab 49152, tied (32)
/// These set the architecture, vocabulary style and tying too. Returns
/// false for an unknown name.
bool apply_preset(model_params& p, std::string_view preset);

/// The names apply_preset() knows, in the order --help lists them.
std::span<const std::string_view> preset_names();

/// Layers of the popular-model presets (override with --n-layer).
inline constexpr uint32_t preset_layers = 2;

/// Why `p` cannot make a model ("" when it can).
std::string validate(const model_params& p);

/// llama.cpp's use_more_bits: the layers whose attn_v and ffn_down get
/// more bits in its _M mixes.
bool use_more_bits(uint32_t layer, uint32_t n_layer);

/// The type of the matrix `name` with rows of `row` elements (layer: its
/// blk number, else ignored), before any fallback.
engine::ggml_type wanted_type(const model_params& p, std::string_view name, uint32_t layer);

/// `t`, or llama.cpp's fallback for it when `row` is not a whole number of
/// t's blocks (see the top of this file); `head` for the output head (or
/// the tied token embedding).
engine::ggml_type fallback_type(engine::ggml_type t, uint64_t row, bool head);

/// llama.cpp's general.file_type (llama_ftype) for `t`.
uint32_t file_type(weight_type t);

/// Number of weights of the model.
uint64_t n_params(const model_params& p);

/// Builds the whole model into `w`. `note` (if set) is called with one line
/// per fallback. Throws std::invalid_argument when validate() complains.
/// Deterministic: the same params give the same file bytes. Uses up to
/// `threads` threads to quantize.
void build_model(const model_params& p, engine::gguf_writer& w,
                 const std::function<void(const std::string&)>& note, unsigned threads);

} // namespace llmos::mkmodel
