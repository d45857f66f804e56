// SPDX-License-Identifier: MIT
//
// The generator's random numbers: splitmix64 (Steele, Lea and Flood), with
// normal deviates by the Box-Muller transform. Same seed, same sequence, on
// any machine with the same libm (log, sqrt, cos and sin of doubles).
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string_view>

namespace llmos::mkmodel {

/// One splitmix64 step: advances `state` and returns the next output.
constexpr uint64_t splitmix64(uint64_t& state) noexcept {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/// FNV-1a of `s`, to derive a stream per tensor from its name.
constexpr uint64_t fnv1a64(std::string_view s) noexcept {
    uint64_t h = 0xcbf29ce484222325ull;
    for (char c : s) {
        h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    }
    return h;
}

/// A deterministic random stream. Not thread-safe (one per thread or tensor).
class rng {
public:
    explicit rng(uint64_t seed) noexcept
        : _state(seed) {}

    /// The next 64 random bits.
    uint64_t next() noexcept { return splitmix64(_state); }

    /// Uniform in [0, 1), 53 bits.
    double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1p-53; }

    /// Uniform integer in [0, n) (n > 0; the modulo bias is negligible
    /// for the small n used here).
    uint64_t below(uint64_t n) noexcept { return next() % n; }

    /// A standard normal deviate (Box-Muller, both outputs used in turn).
    double normal() noexcept {
        if (_have_spare) {
            _have_spare = false;
            return _spare;
        }
        const double u1 = 1.0 - uniform(); // (0, 1]: log is finite
        const double u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double theta = 2.0 * std::numbers::pi * u2;
        _spare = r * std::sin(theta);
        _have_spare = true;
        return r * std::cos(theta);
    }

private:
    uint64_t _state;
    double _spare = 0.0;
    bool _have_spare = false;
};

} // namespace llmos::mkmodel
