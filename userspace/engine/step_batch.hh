// SPDX-License-Identifier: MIT
//
// Private to the engine: what a forward pass does with its batch before and
// after the compute, the same for the CPU context and the CUDA one (their
// entries differ only in the cache type): the checks that refuse a batch
// without changing anything, the rows whose logits are wanted, and handing
// those logits out.
#pragma once

#include <cstdint>
#include <cstring>
#include <llmos/engine/context.hh>
#include <llmos/engine/model.hh>
#include <span>

namespace llmos::engine::detail {

/// Refuses a batch that cannot run, in this order: no cache, one cache
/// twice or a cache of another geometry than `p`'s model (bad_batch), a token outside the
/// vocabulary (bad_token), a cache without room for its tokens (cache_full), more than `max_tokens`
/// tokens in all (too_many_tokens). On ok, `total` holds the step's token count. Changes nothing.
template <typename Entry>
step_status check_batch(std::span<Entry> batch, const model_params& p, uint32_t max_tokens,
                        size_t& total) {
    size_t T = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
        const Entry& e = batch[i];
        if (!e.kv) {
            return step_status::bad_batch;
        }
        for (size_t j = 0; j < i; ++j) {
            if (batch[j].kv == e.kv) {
                return step_status::bad_batch;
            }
        }
        // A cache opened for another model would be written by this one's
        // layers and rows, past its memory.
        if (e.kv->n_layer() != p.n_layer || e.kv->kv_dim() != p.kv_dim()) {
            return step_status::bad_batch;
        }
        if constexpr (requires { e.kv->head_dim(); }) { // the CPU's splits rows by head
            if (e.kv->head_dim() != p.head_dim) {
                return step_status::bad_batch;
            }
        }
        for (int32_t t : e.tokens) {
            if (t < 0 || uint32_t(t) >= p.n_vocab) {
                return step_status::bad_token;
            }
        }
        if (uint64_t(e.kv->n_tokens()) + e.tokens.size() > e.kv->capacity()) {
            return step_status::cache_full;
        }
        T += e.tokens.size();
    }
    if (T > max_tokens) {
        return step_status::too_many_tokens;
    }
    total = T;
    return step_status::ok;
}

/// Makes room in every entry's cache; cache_full when one has run out of
/// blocks (a killed worker can leak some, see kv_cache::reserve).
template <typename Entry>
step_status reserve_batch(std::span<Entry> batch) {
    for (auto& e : batch) {
        if (!e.kv->reserve(static_cast<uint32_t>(e.tokens.size()))) {
            return step_status::cache_full;
        }
    }
    return step_status::ok;
}

/// How many of the entry's last tokens want their logits: all of them,
/// the last one, or none.
template <typename Entry>
size_t logit_rows(const Entry& e) {
    return e.all_logits ? e.tokens.size() : (e.logits && !e.tokens.empty() ? 1 : 0);
}

/// Hands out `out` (the wanted rows of n_vocab floats, in batch order) to
/// the entries' all_logits and logits.
template <typename Entry>
void scatter_logits(std::span<Entry> batch, const float* out, uint32_t n_vocab) {
    const size_t V = n_vocab;
    size_t row = 0;
    for (auto& e : batch) {
        if (e.all_logits) {
            std::memcpy(e.all_logits, out + row * V, e.tokens.size() * V * sizeof(float));
            if (e.logits && !e.tokens.empty()) {
                std::memcpy(e.logits, out + (row + e.tokens.size() - 1) * V, V * sizeof(float));
            }
        } else if (e.logits && !e.tokens.empty()) {
            std::memcpy(e.logits, out + row * V, V * sizeof(float));
        }
        row += logit_rows(e);
    }
}

} // namespace llmos::engine::detail
