// SPDX-License-Identifier: MIT
//
// The forward pass: one step runs the new tokens of any number of
// sequences together (continuous batching: one sequence's prefill and
// others' decode in the same step). The linear layers see all the step's
// tokens as one matrix, so the weights stream from memory once per step
// whatever the batch; attention runs per sequence and head over that
// sequence's own KV cache.
#pragma once

#include <cstdint>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/thread_pool.hh>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace llmos::engine {

namespace detail {
enum class attn_kernel : uint8_t; // attention.hh (private)
}

struct context_options {
    int n_threads = 0;               ///< 0: one per CPU this process may use
    uint32_t max_batch_tokens = 512; ///< tokens of one step, all sequences together
    /// Quantized weights meet float activations (each weight row widened
    /// to F32) instead of activations quantized to 8 bits: slow, but free
    /// of the activations' rounding; the tests check the model's math
    /// with it.
    bool exact_activations = false;
    /// How quantized weights meet the activations otherwise (matmul.hh):
    /// int8 (fastest; ~1-2% relative at the logits) or int8x2 (~1e-4,
    /// twice the integer arithmetic: prefill slows, decode little).
    act_precision activations = act_precision::int8;
    /// The kernels it runs (those of the CPU's best level below, when it
    /// lacks this one). A model loaded for another level runs the AVX2
    /// kernels where this level's want packed weights.
    simd_level kernels = default_simd();
};

/// What an entry's tokens are, for the attention kernel where a level has
/// two whose sums differ in the last bits (AVX-512 over an F16 cache: the
/// prefill kernel, 16 queries a vector, and the one-token kernel, 16 keys
/// a vector). Each kernel gives a token the same bits whatever else runs
/// with it, so a prompt's K/V rows and logits do not depend on how it is
/// cut into chunks, nor on the batch, as long as its chunks say `prompt`;
/// generated tokens take the one-token kernel.
enum class token_kind : uint8_t {
    automatic, ///< more than one token: prompt; one: generated
    prompt,    ///< prompt tokens (a chunk of any length, one included)
    generated, ///< tokens the model generated, fed back one a step
};

/// One sequence's part of a step.
struct batch_entry {
    kv_cache* kv = nullptr;
    std::span<const int32_t> tokens{}; ///< new tokens, after kv->n_tokens()
    /// n_vocab floats for the logits of its last token (nullptr: none).
    float* logits = nullptr;
    /// tokens.size() x n_vocab floats for every token's logits (tests).
    float* all_logits = nullptr;
    /// A caller that cuts a prompt into chunks (some of one token) says
    /// `prompt` for each, and `generated` for decode tokens.
    token_kind kind = token_kind::automatic;
};

enum class step_status : uint8_t {
    ok,
    too_many_tokens, ///< more than max_batch_tokens in the step: split it
    cache_full,      ///< a sequence's cache has no room (nothing was run)
    bad_token,       ///< a token id outside the vocabulary (nothing was run)
    bad_batch,       ///< no kv, one kv twice, or a kv of another model's geometry
    compute_error,   ///< a kernel refused the weights (a bug: report it)
    no_memory,       ///< no memory for a thread's scratch (nothing committed; retry)
};
std::string_view step_status_name(step_status s) noexcept;

class context {
public:
    /// A context for `m` (which must outlive it). Throws std::system_error
    /// when its threads cannot start.
    context(const model& m, context_options o = {});
    ~context();

    /// Runs `batch`: every entry's tokens go through the model, their K/V
    /// rows into its cache (committed with the tokens), logits where
    /// asked. On anything but ok, nothing changed. Allocates only when a
    /// step is larger than every step before it (and a pool thread's
    /// attention scratch when a sequence is longer than every one the
    /// thread met: no_memory when it cannot). One thread at a time.
    step_status step(std::span<batch_entry> batch);

    const model& get_model() const noexcept { return _m; }
    thread_pool& pool() noexcept { return *_pool; }
    const context_options& options() const noexcept { return _o; }

private:
    /// False when a thread had no memory for its scratch (no_memory).
    bool attention(std::span<batch_entry> batch, uint32_t layer);
    /// cos, then sin of position pos's RoPE angles (n_rot / 2 floats each).
    void rope_angles(uint32_t pos, float* cs) const;
    void rope(float* x, uint32_t n_heads, const float* cs) const;
    bool mm(const weight_view& w, const float* x, size_t n_tokens, float* y);
    using mm_job = matmul_job;
    bool mm_many(std::span<const mm_job> jobs, const float* x, size_t n_tokens);

    const model& _m;
    context_options _o;
    std::unique_ptr<thread_pool> _pool;
    std::vector<double> _inv_freq;
    // scratch, [tokens x width]
    std::vector<float> _x, _xn, _q, _k, _v, _att, _gate, _up, _rows;
    std::vector<float> _kvtmp; // attention jobs x 2 head_dim (F16 rows widened)
    std::vector<uint32_t> _first, _pos0;
    std::vector<uint32_t> _row_entry; ///< each row's batch entry
    std::vector<float> _rope_cs;      ///< each row's RoPE cos (n_rot / 2), then sin
    std::vector<float> _wide;         // exact_activations: a widened weight row per job
    struct mm_piece {
        const mm_job* job;
        int64_t r0, r1;
    };
    std::vector<mm_piece> _pieces; // mm_many's row chunks
    bool _mm_no_memory = false;    // mm_many's last failure: no memory for a scratch
    struct attn_job {
        uint32_t entry, kv_head, t0, t1;
        detail::attn_kernel kernel; ///< its entry's (detail::attention_kernel)
    };
    std::vector<attn_job> _jobs; // attention's work items
};

} // namespace llmos::engine
