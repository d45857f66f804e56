// SPDX-License-Identifier: MIT
//
// UTF-8 and Unicode general categories, as much as the tokenizers need:
// strict UTF-8 decoding (with the "maximal subpart" rule for ill-formed
// input), encoding, and the category class of a code point for the
// pre-tokenizers' \p{L}, \p{N}, \p{P}... The category table is generated
// (unicode_gen.py, from Python's unicodedata) and covers every plane.
// Everything here is a pure function: any thread may call it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace llmos::engine::unicode {

/// The general category's major class (the first letter of Lu, Nd, Po...).
/// `undefined` is an unassigned code point (Cn) or one past U+10FFFF;
/// `other` is C without Cn: controls, format characters, private use,
/// surrogates.
enum class category : uint8_t {
    undefined = 0,
    letter = 1,      ///< L*
    number = 2,      ///< N*
    punctuation = 3, ///< P*
    symbol = 4,      ///< S*
    mark = 5,        ///< M*
    separator = 6,   ///< Z*
    other = 7,       ///< Cc, Cf, Co, Cs
};

/// The class of `cp` (undefined above U+10FFFF).
category category_of(uint32_t cp);

/// Whether `cp` has the White_Space property (what \s matches in Unicode
/// regex engines): U+0009..U+000D, space, U+0085, U+00A0, U+1680,
/// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
bool is_whitespace(uint32_t cp);

/// The replacement character U+FFFD, UTF-8 encoded.
inline constexpr std::string_view replacement = "\xEF\xBF\xBD";

/// One step of decoding.
struct utf8_step {
    uint32_t cp;    ///< the code point; U+FFFD when not `valid`
    uint32_t len;   ///< bytes consumed (>= 1 unless at the end)
    bool valid;     ///< a well-formed sequence
    bool truncated; ///< ill-formed only because the input ends inside it
};

/// Decodes the sequence at `s[pos]` (pos < s.size()) strictly: no
/// overlong forms, no surrogates, nothing above U+10FFFF. An ill-formed
/// sequence consumes its maximal subpart (the longest prefix of a
/// well-formed sequence, at least one byte), as Unicode recommends for
/// substituting U+FFFD. `truncated` tells a well-formed prefix cut short by
/// the end of `s` (more bytes may still complete it).
utf8_step decode_utf8(std::string_view s, size_t pos);

/// Appends the UTF-8 encoding of `cp` (U+FFFD for a surrogate or a value
/// above U+10FFFF).
void append_utf8(std::string& out, uint32_t cp);

/// The UTF-8 encoding of `cp`.
std::string to_utf8(uint32_t cp);

/// Sequence length implied by a lead byte, the lenient way llama.cpp splits
/// text into characters: 1 for ASCII and stray continuation bytes, 2 for
/// 0xC0..0xDF, 3 for 0xE0..0xEF, 4 for 0xF0..0xFF.
constexpr size_t lead_length(uint8_t b) {
    return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

/// Whether all of `s` is well-formed UTF-8.
bool is_valid_utf8(std::string_view s);

/// How many of `s`'s bytes to keep when only `n` fit: `n`, or fewer so as
/// not to end inside a character. Only a character's own continuation
/// bytes (3 at most) are given back: a longer run of them is no character,
/// and is cut where `n` says.
constexpr size_t fitting_prefix(std::string_view s, size_t n) {
    if (n >= s.size()) {
        return s.size();
    }
    auto continuation = [&](size_t i) { return (uint8_t(s[i]) & 0xC0) == 0x80; };
    size_t at = n;
    while (at > 0 && n - at < 3 && continuation(at)) {
        --at;
    }
    // Cut before the character only when `n` falls inside it: its lead
    // byte says it goes past n.
    const uint8_t lead = uint8_t(s[at]);
    return at < n && lead >= 0xC0 && at + lead_length(lead) > n ? at : n;
}

} // namespace llmos::engine::unicode
