// SPDX-License-Identifier: MIT
//
// The inference engine (userspace/engine) behind the worker interface: a
// worker's llm_engine tokenizes a request's prompt, finds how much of it
// the request's KV cache already holds, and runs the rest through the
// model with the other sequences of its batch, a chunk of prompt per step
// (so a long prompt does not stall the others' decoding), then samples one
// token per step and appends its text to the request's output.
//
// It runs on the CPU (engine::context, the cache whole in the request's
// mindspace) or on a GPU (engine::cuda_context: the cache's bookkeeping in
// the mindspace, its K/V rows in a device region of a kv_pool, kept there
// under the mindspace for the conversation's next request).
#pragma once

#include <cstdint>
#include <llmos/engine/context.hh>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/vocab.hh>
#include <llmos/inference.hh>
#include <llmos/kv_pool.hh>
#include <memory>
#include <string>

namespace llmos {

struct llm_engine_options {
    engine::context_options context{};
    engine::kv_options kv{}; ///< geometry of every sequence's cache
    /// A request's max_tokens when it gives 0. 0: no limit of its own, up
    /// to its cache's capacity (an end token, a stop string, a full output
    /// area or a full cache ends it).
    uint32_t default_max_tokens = 256;
    /// Prompt tokens of one sequence per step (at least 1). With the other
    /// sequences' share of a step it decides how a prompt is cut; what a
    /// request generates does not depend on that (engine::token_kind).
    uint32_t prefill_chunk = 256;
};

struct llm_engine_stats {
    uint64_t prompt_tokens = 0; ///< tokens of prompts
    uint64_t cached_tokens = 0; ///< of which the KV cache already held
    uint64_t prefilled = 0;     ///< prompt tokens run through the model
    uint64_t generated = 0;
    uint64_t steps = 0;
    // On a GPU (engine::cuda_graph_stats of the engine's context):
    uint64_t graph_replays = 0;          ///< steps run as one CUDA graph launch
    uint64_t graph_captures = 0;         ///< graphs captured
    uint64_t graph_capture_failures = 0; ///< captures that failed (their steps launched)
};

class llm_engine final : public inference_engine {
public:
    /// An engine for `m` and `v` on the CPU (they must outlive it). Throws
    /// what the context throws.
    llm_engine(const engine::model& m, const engine::vocab& v, llm_engine_options o);
    /// An engine for `cm`'s model on its GPU: K/V rows in regions of
    /// `pool` (device memory), kept under (mindspace, kv_off) for requests
    /// that keep their cache in a mindspace. `cm`, `v` and `pool` must
    /// outlive it. o.kv's block_tokens and max_tokens apply (the rows are
    /// F16 whatever o.kv.type says), o.context's max_batch_tokens.
    /// Throws engine::cuda_error.
    llm_engine(const engine::cuda_model& cm, const engine::vocab& v, kv_pool& pool,
               llm_engine_options o);
    ~llm_engine() override;

    /// Throws std::invalid_argument when `v` has tokens `m` has no row for
    /// (a vocabulary larger than the embedding: such ids would fail every
    /// step they are in). The constructors check it.
    static void check_vocab(const engine::model& m, const engine::vocab& v);

    /// Bytes of a request's KV region (gen_request_header::kv_len) for a
    /// cache of `o`'s geometry: the whole cache on the CPU, the cache's
    /// bookkeeping on a GPU. Any thread.
    static uint64_t kv_region_bytes(const engine::model_params& p, const engine::kv_options& o,
                                    bool gpu);

    /// Parses the request (gen_request_header; bad_input with -EINVAL when
    /// malformed or when it names a KV offset without a length, -ENOSPC
    /// when its KV region is too small, -E2BIG when its prompt fills the
    /// context), opens its KV cache, tokenizes and matches the prompt
    /// against the cache. no_room when another sequence of this process
    /// holds a KV region that shares bytes with its own (the same
    /// conversation, or a region that overlaps it), or its GPU KV region
    /// is in use.
    engine_status prefill(sequence& s) override;
    /// One model step over the batch: prompt chunks and decode tokens
    /// together; every sequence whose prompt is in gets one token. A
    /// sequence whose GPU region cannot grow (the pool is full of
    /// regions in use) ends with -ENOMEM; the others run.
    void decode(std::span<sequence* const> batch) override;
    void release(sequence& s) noexcept override;

    const llm_engine_stats& stats() const noexcept;
    bool on_gpu() const noexcept;
    /// On a GPU: how its steps run ("CUDA graphs ...", or "kernel launches
    /// (why)") and why its last graph capture failed ("" when none has),
    /// from its engine::cuda_context; "" on the CPU.
    std::string graph_path() const;
    std::string last_graph_failure() const;

    struct impl;

private:
    std::unique_ptr<impl> _impl;
};

} // namespace llmos
