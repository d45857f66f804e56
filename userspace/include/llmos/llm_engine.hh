// SPDX-License-Identifier: MIT
//
// The inference engine (userspace/engine) behind the worker interface: a
// worker's llm_engine tokenizes a request's prompt, finds how much of it
// the request's KV cache already holds, and runs the rest through the
// model with the other sequences of its batch, a chunk of prompt per step
// (so a long prompt does not stall the others' decoding), then samples one
// token per step and appends its text to the request's output.
#pragma once

#include <cstdint>
#include <llmos/engine/context.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/vocab.hh>
#include <llmos/inference.hh>
#include <memory>

namespace llmos {

struct llm_engine_options {
    engine::context_options context;
    engine::kv_options kv; ///< geometry of every sequence's cache
    uint32_t default_max_tokens = 256;
    uint32_t prefill_chunk = 256; ///< prompt tokens of one sequence per step
};

struct llm_engine_stats {
    uint64_t prompt_tokens = 0; ///< tokens of prompts
    uint64_t cached_tokens = 0; ///< of which the KV cache already held
    uint64_t prefilled = 0;     ///< prompt tokens run through the model
    uint64_t generated = 0;
    uint64_t steps = 0;
};

class llm_engine final : public inference_engine {
public:
    /// An engine for `m` and `v` (they must outlive it). Throws what the
    /// context throws.
    llm_engine(const engine::model& m, const engine::vocab& v, llm_engine_options o);
    ~llm_engine() override;

    /// Parses the request (gen_request_header; bad_input with -EINVAL when
    /// malformed, -ENOSPC when its KV region is too small), opens its KV
    /// cache, tokenizes and matches the prompt against the cache.
    engine_status prefill(sequence& s) override;
    /// One model step over the batch: prompt chunks and decode tokens
    /// together; every sequence whose prompt is in gets one token.
    void decode(std::span<sequence* const> batch) override;
    void release(sequence& s) noexcept override;

    const llm_engine_stats& stats() const noexcept { return _stats; }

private:
    struct seq_state;
    const engine::model& _m;
    const engine::vocab& _v;
    llm_engine_options _o;
    engine::context _ctx;
    llm_engine_stats _stats;
    std::vector<engine::batch_entry> _batch;
    std::vector<seq_state*> _in_batch;
};

} // namespace llmos
