// SPDX-License-Identifier: MIT
//
// A llama-family model as its GGUF file holds it: hyperparameters from the
// metadata, and weights used in place (zero-copy views into the mapped
// file). Architectures: "llama" (TinyLlama, SmolLM, Llama 2/3 and the like:
// RoPE on adjacent pairs) and "qwen2" (Qwen2/2.5: Q/K/V biases, NeoX-style
// RoPE on the two halves). Weight types: F32, F16, Q8_0, Q4_0, Q4_1, Q5_0,
// Q5_1, Q4_K, Q5_K, Q6_K -- so "Q4_K_M" files load, with the Q5_0/Q8_0
// tensors they hold where rows are not whole 256-element blocks (Qwen2.5,
// SmolLM). Anything else is refused with a message naming it.
#pragma once

#include <array>
#include <cstdint>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/matmul.hh>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace llmos::engine {

/// A model that cannot be used: the message says what and why.
class model_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class model_arch : uint8_t { llama, qwen2 };

struct model_params {
    model_arch arch = model_arch::llama;
    std::string arch_name;
    uint32_t n_vocab = 0;
    uint32_t n_ctx_train = 0;
    uint32_t n_embd = 0;
    uint32_t n_layer = 0;
    uint32_t n_head = 0;
    uint32_t n_head_kv = 0;
    uint32_t n_ff = 0;
    uint32_t head_dim = 0; ///< n_embd / n_head
    uint32_t n_rot = 0;    ///< dimensions RoPE turns (head_dim unless the file says less)
    float rope_base = 10000.0f;
    float rope_scale = 1.0f; ///< linear scaling: positions are divided by it
    float rms_eps = 1e-5f;
    bool neox_rope = false; ///< rotate (i, i + n_rot/2) rather than (2i, 2i+1)
    bool tied_output = false;

    uint32_t kv_dim() const { return n_head_kv * head_dim; }
};

struct layer_weights {
    std::span<const float> attn_norm;
    weight_view wq, wk, wv, wo;
    std::span<const float> bq, bk, bv; ///< qwen2 only
    std::span<const float> ffn_norm;
    weight_view w_gate, w_up, w_down;

    /// The seven matrices, in the order a step runs them.
    std::array<weight_view*, 7> matrices() noexcept {
        return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
    }
    std::array<const weight_view*, 7> matrices() const noexcept {
        return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
    }
};

class model {
public:
    /// The model in `file`, which must outlive it (weights are views into
    /// it). Throws model_error: unsupported architecture or weight type,
    /// a missing or misshapen tensor, inconsistent hyperparameters.
    /// The matrices are also packed for the kernels of `kernels` where
    /// those want it (pack_weights(): every matrix at simd_level::avx512),
    /// made once here on all CPUs: a copy about as large as their rows
    /// (packed_bytes()), whose pages in the file's mapping are then let go
    /// (gguf_file::drop_pages(); the token embedding's stay).
    static model load(const gguf_file& file, simd_level kernels = default_simd());

    const model_params& params() const noexcept { return _p; }
    const std::vector<layer_weights>& layers() const noexcept { return _layers; }
    const weight_view& token_embd() const noexcept { return _tok_embd; }
    std::span<const float> output_norm() const noexcept { return _output_norm; }
    /// The output head (the token embedding when the file ties them).
    const weight_view& output() const noexcept { return _output; }
    /// Per-dimension RoPE frequency divisors (Llama 3 files), or empty.
    std::span<const float> rope_freqs() const noexcept { return _rope_freqs; }
    /// Bytes of weights read for one token (every matrix once): what a
    /// decode step streams from memory.
    uint64_t weight_bytes() const noexcept { return _weight_bytes; }
    /// Bytes of the matrices' packed copies (0 when none was made), and of
    /// the file's pages let go after packing.
    uint64_t packed_bytes() const noexcept { return _packed_bytes; }
    uint64_t dropped_bytes() const noexcept { return _dropped_bytes; }
    /// Which weight types occur, and how many tensors of each ("Q4_K x 98").
    std::string type_summary() const;
    /// A digest of the hyperparameters, the tensor layout and samples of
    /// every tensor's content: a KV cache made by another model (a
    /// fine-tune of the same shape too) is refused.
    uint64_t fingerprint() const noexcept { return _fingerprint; }
    /// Token `id`'s embedding row, dequantized into `out` (n_embd floats).
    /// Throws std::out_of_range for an id with no row.
    void embed(int32_t id, float* out) const;

private:
    void pack(simd_level kernels);
    void drop_rows(const gguf_file& f, const weight_view& w);

    model_params _p;
    std::vector<layer_weights> _layers;
    weight_view _tok_embd;
    weight_view _output;
    std::span<const float> _output_norm;
    std::span<const float> _rope_freqs;
    uint64_t _weight_bytes = 0;
    uint64_t _packed_bytes = 0;
    uint64_t _dropped_bytes = 0;
    std::shared_ptr<std::byte> _packed; ///< the packed copies, shared by copies of the model
    uint64_t _fingerprint = 0;
    std::vector<std::pair<ggml_type, int>> _types;
};

} // namespace llmos::engine
