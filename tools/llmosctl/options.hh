// SPDX-License-Identifier: MIT
//
// Checks of llmosctl's option values, shared by main.cc and server.cc.
//
// CLI11 reads integers with strtoull/strtoll in base 0: "0100" would be
// octal 64, "0x10" hex 16, and a number too large for the variable
// silently capped. Every integer option and argument goes through
// decimal<T>() instead: decimal digits only, into exactly T.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace llmosctl {

/// `s` as a decimal T: [0-9]+, with a leading '-' only where `negative_ok`
/// (so "0100" is one hundred). nullopt with `why` set to the reason for
/// anything else, a value out of T's range included.
template <class T>
std::optional<T> parse_decimal(std::string_view s, bool negative_ok, std::string& why) {
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
    const bool negative = !s.empty() && s[0] == '-';
    if (negative && !negative_ok) {
        why = "must not be negative";
        return std::nullopt;
    }
    const std::string_view digits = s.substr(negative ? 1 : 0);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string_view::npos) {
        why = "'" + std::string{s} + "' is not a decimal integer";
        return std::nullopt;
    }
    T v{};
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 10);
    if (ec == std::errc::result_out_of_range) {
        why = "'" + std::string{s} + "' is out of range (" +
              std::to_string(negative_ok ? std::numeric_limits<T>::min() : T{0}) + ".." +
              std::to_string(std::numeric_limits<T>::max()) + ")";
        return std::nullopt;
    }
    if (ec != std::errc{} || end != s.data() + s.size()) {
        why = "'" + std::string{s} + "' is not a decimal integer";
        return std::nullopt;
    }
    return v;
}

/// The transform for an integer option or argument of type T (use with
/// ->transform(), so that it runs before any ->check()): refuses what
/// parse_decimal() refuses, and hands CLI11 the value written canonically
/// (no leading zeros), which its base-0 parse reads as the same number.
template <class T>
CLI::Validator decimal(bool negative_ok = std::is_signed_v<T>) {
    return CLI::Validator(
        [negative_ok](std::string& s) {
            std::string why;
            auto v = parse_decimal<T>(s, negative_ok, why);
            if (!v) {
                return why;
            }
            s = std::to_string(*v);
            return std::string{};
        },
        "", "decimal");
}

/// The check for an option whose value is a name (--name, --session,
/// --model, --server...): a value that begins with "--" is the next
/// option, taken because the name was left out.
inline CLI::Validator not_an_option() {
    return CLI::Validator(
        [](std::string& s) {
            return s.starts_with("--") ? "needs a value, not the option '" + s + "'"
                                       : std::string{};
        },
        "", "not an option");
}

/// The check for an option whose value is free text (--system): one word
/// that begins with "--" is the next option, taken because the text was
/// left out; text with a space in it ("-- be brief") is text.
inline CLI::Validator not_an_option_word() {
    return CLI::Validator(
        [](std::string& s) {
            return s.starts_with("--") && s.find_first_of(" \t\n") == std::string::npos
                       ? "needs a value, not the option '" + s + "'"
                       : std::string{};
        },
        "", "not an option");
}

} // namespace llmosctl
