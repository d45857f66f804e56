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

/// A model: 1 to 128 bytes, no '/', no control characters (C0, DEL, and
/// C1 in its UTF-8 form), not only dots.
inline bool valid_model(std::string_view s) {
    if (s.empty() || s.size() > 128 || s.find('/') != s.npos ||
        s.find_first_not_of('.') == s.npos) {
        return false;
    }
    for (size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        const bool c1 = c == 0xc2 && i + 1 < s.size() &&
                        static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                        static_cast<unsigned char>(s[i + 1]) <= 0x9f;
        if (c < 0x20 || c == 0x7f || c1) {
            return false;
        }
    }
    return true;
}

} // namespace llmos::names
