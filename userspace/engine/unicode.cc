// SPDX-License-Identifier: MIT
//
// UTF-8 and the category table (see unicode.hh).
#include <algorithm>
#include <array>
#include <iterator>
#include <llmos/engine/unicode.hh>

namespace llmos::engine::unicode {

namespace {

#include "unicode_table.inc"

// ASCII is by far the most common input: look it up without a search.
constexpr std::array<category, 128> make_ascii() {
    std::array<category, 128> t{};
    size_t r = 0;
    for (uint32_t cp = 0; cp < 128; ++cp) {
        while (r + 1 < std::size(category_ranges) && (category_ranges[r + 1] >> 3) <= cp) {
            ++r;
        }
        t[cp] = static_cast<category>(category_ranges[r] & 7);
    }
    return t;
}

constexpr std::array<category, 128> ascii = make_ascii();

static_assert(ascii['A'] == category::letter && ascii['0'] == category::number &&
              ascii['!'] == category::punctuation && ascii['$'] == category::symbol &&
              ascii[' '] == category::separator && ascii['\n'] == category::other);

} // namespace

category category_of(uint32_t cp) {
    if (cp < 128) {
        return ascii[cp];
    }
    if (cp > 0x10FFFF) {
        return category::undefined;
    }
    // The last range starting at or before cp.
    const uint32_t key = (cp << 3) | 7;
    auto it = std::upper_bound(std::begin(category_ranges), std::end(category_ranges), key);
    return static_cast<category>(*(it - 1) & 7);
}

bool is_whitespace(uint32_t cp) {
    if (cp < 128) {
        return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    }
    switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

utf8_step decode_utf8(std::string_view s, size_t pos) {
    const auto b0 = static_cast<uint8_t>(s[pos]);
    if (b0 < 0x80) {
        return {b0, 1, true, false};
    }
    uint32_t need = 0;
    uint32_t cp = 0;
    // The range the second byte must fall in (it is narrower than 80..BF
    // after E0, ED, F0 and F4: that excludes overlongs, surrogates and
    // values past U+10FFFF).
    uint8_t lo = 0x80;
    uint8_t hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp = b0 & 0x0F;
        lo = b0 == 0xE0 ? 0xA0 : 0x80;
        hi = b0 == 0xED ? 0x9F : 0xBF;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp = b0 & 0x07;
        lo = b0 == 0xF0 ? 0x90 : 0x80;
        hi = b0 == 0xF4 ? 0x8F : 0xBF;
    } else {
        // 80..C1 (stray continuation, overlong lead) and F5..FF.
        return {0xFFFD, 1, false, false};
    }
    uint32_t i = 1;
    for (; i <= need; ++i) {
        if (pos + i >= s.size()) {
            return {0xFFFD, i, false, true};
        }
        const auto b = static_cast<uint8_t>(s[pos + i]);
        if (b < lo || b > hi) {
            return {0xFFFD, i, false, false};
        }
        lo = 0x80;
        hi = 0xBF;
        cp = (cp << 6) | (b & 0x3F);
    }
    return {cp, need + 1, true, false};
}

void append_utf8(std::string& out, uint32_t cp) {
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
        out += replacement;
    } else if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string to_utf8(uint32_t cp) {
    std::string s;
    append_utf8(s, cp);
    return s;
}

bool is_valid_utf8(std::string_view s) {
    size_t pos = 0;
    while (pos < s.size()) {
        if (static_cast<uint8_t>(s[pos]) < 0x80) {
            ++pos;
            continue;
        }
        const utf8_step st = decode_utf8(s, pos);
        if (!st.valid) {
            return false;
        }
        pos += st.len;
    }
    return true;
}

} // namespace llmos::engine::unicode
