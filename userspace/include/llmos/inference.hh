// SPDX-License-Identifier: MIT
//
// What a worker asks of an inference engine. A worker owns one engine
// instance (engines keep per-worker state: weights in use, KV caches) and
// calls it from its own thread only.
//
// The prompt and the output live in the request's mindspace; the engine
// reads one span and appends to the other, and the worker streams
// descriptors of what was appended. Nothing is copied on the way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <llmos/sched.hh>
#include <span>

namespace llmos {

/// A request while a worker serves it.
struct sequence {
    request_desc req;
    std::span<const std::byte> prompt; ///< in the request's mindspace
    std::span<std::byte> output;       ///< free room after the prompt, in the mindspace
    std::span<std::byte> memory;       ///< the whole mindspace, as the worker maps it
    uint64_t output_off = 0;           ///< output's offset in the mindspace
    size_t produced = 0;               ///< bytes the engine has written to output
    uint32_t tokens = 0;               ///< tokens generated
    bool done = false;                 ///< set by the engine when it has finished
    /// Set by the engine with done when a limit ended it (its max_tokens,
    /// its cache, its output room), not the model (an end token, a stop
    /// string): OpenAI's finish_reason "length" against "stop".
    bool cut = false;
    int32_t status = 0;           ///< 0, or a negative errno when done with a failure
    void* engine_state = nullptr; ///< the engine's own, per sequence
};

enum class engine_status {
    ok,
    no_room,  ///< no cache or slot for it now: it fails with -EAGAIN (retry)
    bad_input ///< the request itself is wrong: it fails (sequence::status)
};

/// Where the output of a request goes: the bytes after its prompt, rounded
/// up to 64, to the end of the mindspace.
constexpr uint64_t output_offset(uint64_t prompt_off, uint64_t prompt_len) {
    return (prompt_off + prompt_len + 63) & ~uint64_t{63};
}

class inference_engine {
public:
    virtual ~inference_engine() = default;

    /// Takes in `s`'s prompt (fills its cache). bad_input fails the
    /// request (with s.status, else -EINVAL); no_room fails it with
    /// -EAGAIN. May throw: the worker takes it as its engine's crash and
    /// recovers (worker_pool.hh: a fresh engine, its requests started
    /// again, the batch's as suspects).
    virtual engine_status prefill(sequence& s) = 0;

    /// One decode step over every sequence in `batch` (all prefilled, none
    /// done): each may append bytes to its output (one token's worth),
    /// count tokens, and set done. May throw, as prefill.
    virtual void decode(std::span<sequence* const> batch) = 0;

    /// Frees what the engine holds for `s` (done, failed or given back).
    /// Never throws.
    virtual void release(sequence& s) noexcept = 0;

    /// The worker has nothing to run: called on its thread before it
    /// waits for work, and while it waits when worker_pool::poke() wakes
    /// it. An engine lets go of what it no longer needs. Never throws.
    virtual void idle() noexcept {}
};

} // namespace llmos
