// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>
#include <cstdint>
#include <istream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

namespace llmosctl {

constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

/// "4096", "64K", "16M", "1G", "2T" (binary units; an optional "iB" or
/// "B" after the letter). nullopt for anything else or on overflow.
/// With suffixes = false, only plain numbers.
std::optional<uint64_t> parse_size(std::string_view s, bool suffixes = true);
/// 1536 -> "1.5K", 1048576 -> "1M", 100 -> "100".
std::string format_size(uint64_t bytes);
/// Octal permission bits ("0640", "640"); empty = 0 (the default).
std::optional<uint32_t> parse_mode(std::string_view s);
/// 0640 -> "0640".
std::string format_mode(uint32_t mode);

/// How much a counter grew from `before` to `now`; 0 when it went down
/// (reset: a tenant reclaimed, the module reloaded), never a wrapped value.
constexpr uint64_t counter_delta(uint64_t now, uint64_t before) {
    return now < before ? 0 : now - before;
}

/// The p-th quantile (0 < p <= 1) of `sorted` (ascending) by nearest
/// rank: the smallest value with at least a fraction p of the values at or
/// below it, v[ceil(p * n) - 1] (p99 of 100 values is the 99th, not the
/// largest; p50 of two is the smaller). 0 when `sorted` is empty.
inline double nearest_rank(std::span<const double> sorted, double p) {
    const size_t n = sorted.size();
    if (n == 0) {
        return 0;
    }
    // Less a hair, so that 0.99 * 100 (98.99999999999999 or 99.00000000000001
    // in binary) is rank 99 either way.
    const double rank = std::ceil(p * static_cast<double>(n) - 1e-9);
    if (!(rank >= 1)) {
        return sorted.front();
    }
    return rank >= static_cast<double>(n) ? sorted.back() : sorted[static_cast<size_t>(rank) - 1];
}

/// What `in` holds, in blocks, up to `limit` bytes and one more to tell
/// that more came (standard input may never end: /dev/zero).
std::string read_at_most(std::istream& in, uint64_t limit);

/// What fill_from() read.
struct fill_result {
    uint64_t bytes = 0;    ///< how much of the buffer it filled
    bool more = false;     ///< the input held more than fits
    std::error_code error; ///< a read failed (after `bytes` bytes)
};

/// Reads `fd` into `to` in pieces until it is full or the input ends; then
/// tries one byte more (read into a byte of its own) to tell whether the
/// input held more than fits.
fill_result fill_from(int fd, std::span<char> to);

/// `s` with its control characters (C0 and DEL as \xNN, C1 in its UTF-8
/// form as \u00NN) written out: text from a server, safe to print on one
/// line of a terminal.
std::string printable(std::string_view s);

/// The uid of the user `name`; nullopt when there is none or the lookup
/// failed (`err`: 0, or the errno of the failure).
std::optional<uint32_t> uid_of_user(const std::string& name, int& err);

/// Prints "llmosctl: WHAT: MESSAGE" and returns exit_failure.
int fail(const std::string& what, std::error_code ec);
/// The same for a device that cannot be opened, with a hint for the usual
/// causes.
int fail_device(const std::string& path, std::error_code ec);
/// Prints "llmosctl: MESSAGE" and returns exit_usage.
int usage(const std::string& message);

} // namespace llmosctl
