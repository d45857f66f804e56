// SPDX-License-Identifier: MIT
//
// An engine for tests and benchmarks: it "generates" its prompt back,
// `bytes_per_token` bytes per decode step, and takes the service times it
// is given (a prefill cost per prompt byte, a decode cost per step for the
// whole batch, as a batched engine would).
#pragma once

#include <chrono>
#include <functional>
#include <llmos/inference.hh>

namespace llmos {

class echo_engine final : public inference_engine {
public:
    struct options {
        std::chrono::nanoseconds prefill_per_byte{0};
        std::chrono::nanoseconds decode_step{0};
        uint32_t bytes_per_token = 4;
        uint32_t max_tokens = 0; ///< 0: until the prompt is echoed
        /// Called at every step of every sequence; throwing from it
        /// simulates a crashing engine.
        std::function<void(const sequence&)> on_step;
    };

    explicit echo_engine(options o)
        : _o(std::move(o)) {}

    engine_status prefill(sequence& s) override;
    void decode(std::span<sequence* const> batch) override;
    void release(sequence& s) noexcept override;

    uint64_t steps() const noexcept { return _steps; }
    uint32_t active() const noexcept { return _active; }

private:
    options _o;
    uint64_t _steps = 0;
    uint32_t _active = 0;
};

} // namespace llmos
