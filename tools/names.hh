// SPDX-License-Identifier: MIT
//
// The names llmosd takes for sessions and models, which llmosctl checks
// before it sends them: one rule for both programs.
#pragma once

#include <algorithm>
#include <string_view>

namespace llmos::names {

/// A session: 1 to 48 characters of [A-Za-z0-9._-], not only dots ("." and
/// ".." are path steps to clients, which fold them out of URLs).
inline bool valid_session(std::string_view s) {
    return !s.empty() && s.size() <= 48 && s.find_first_not_of('.') != s.npos &&
           std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-';
           });
}

/// A model: 1 to 128 bytes, no '/', no control characters, not only dots.
inline bool valid_model(std::string_view s) {
    return !s.empty() && s.size() <= 128 && s.find('/') == s.npos &&
           s.find_first_not_of('.') != s.npos && std::none_of(s.begin(), s.end(), [](char c) {
               return static_cast<unsigned char>(c) < 0x20;
           });
}

} // namespace llmos::names
