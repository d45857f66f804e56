// SPDX-License-Identifier: MIT
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <llmos/echo_engine.hh>
#include <thread>

namespace llmos {

engine_status echo_engine::prefill(sequence& s) {
    if (s.output.size() < s.prompt.size()) {
        s.status = -ENOSPC; // no room to echo it into
        return engine_status::bad_input;
    }
    if (_o.on_step) {
        _o.on_step(s);
    }
    if (_o.prefill_per_byte.count()) {
        std::this_thread::sleep_for(_o.prefill_per_byte * s.prompt.size());
    }
    ++_active;
    s.engine_state = this;
    return engine_status::ok;
}

void echo_engine::decode(std::span<sequence* const> batch) {
    if (_o.decode_step.count()) {
        std::this_thread::sleep_for(_o.decode_step);
    }
    ++_steps;
    for (sequence* s : batch) {
        if (_o.on_step) {
            _o.on_step(*s);
        }
        size_t n = std::min<size_t>(_o.bytes_per_token, s->prompt.size() - s->produced);
        std::memcpy(s->output.data() + s->produced, s->prompt.data() + s->produced, n);
        s->produced += n;
        ++s->tokens;
        if (s->produced == s->prompt.size() || (_o.max_tokens && s->tokens >= _o.max_tokens)) {
            s->done = true;
        }
    }
}

void echo_engine::release(sequence& s) noexcept {
    if (s.engine_state == this) {
        s.engine_state = nullptr;
        --_active;
    }
}

} // namespace llmos
