// SPDX-License-Identifier: MIT
//
// A text-generation request as a client lays it out in the request's
// mindspace, at the request's prompt offset: this header, then the prompt
// text (UTF-8), then the stop strings, each ended by a NUL. The worker
// writes the generated text after it (llmos::output_offset()), and, when
// the header names one, keeps the conversation's KV cache in the
// mindspace's [kv_off, kv_off + kv_len): a later request with the same
// conversation as its prefix (the next turn of a chat, or this request
// again after its worker died) skips the prefill of that prefix.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmos {

constexpr uint32_t gen_magic = 0x4e45474c; // "LGEN"
/// Written by build_gen_request(). parse_gen_request() also reads version
/// 1, whose header ends before repeat_last_n (80 bytes; its penalties
/// count the last 64 tokens).
constexpr uint32_t gen_version = 2;

/// gen_request_header::flags
enum : uint32_t {
    gen_parse_special = 1u << 0, ///< special-token texts in the prompt are tokens
    gen_no_bos = 1u << 1,        ///< do not add BOS (the text has it already)
    /// Special-token texts are tokens only inside the spans listed after
    /// the stop strings (a rendered chat's markers); elsewhere they are
    /// text. Overrides gen_parse_special.
    gen_special_spans = 1u << 2,
    gen_known_flags = gen_parse_special | gen_no_bos | gen_special_spans,
};

/// A byte range of the request's text (gen_special_spans). After the stop
/// strings come a uint32_t count and that many spans, in order and not
/// overlapping (they may touch), each inside the text; no alignment.
struct gen_span {
    uint32_t off = 0;
    uint32_t len = 0;
};
static_assert(sizeof(gen_span) == 8);

struct gen_request_header {
    uint32_t magic = gen_magic;
    uint32_t version = gen_version;
    uint32_t flags = 0;
    uint32_t text_len = 0;   ///< prompt bytes after the header
    uint32_t stop_bytes = 0; ///< bytes of NUL-ended stop strings after the text
    /// 0: the worker's default (llm_engine_options::default_max_tokens;
    /// when that is 0 too, up to the capacity of the request's cache)
    uint32_t max_tokens = 0;
    float temperature = 0.8f;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    int32_t top_k = 40;
    uint32_t model = 0; ///< which of the server's models (0: the worker's only one)
    uint64_t seed = 0;
    /// The conversation's KV cache: [kv_off, kv_off + kv_len) of the
    /// request's mindspace (kv_off page-aligned, 0 included), not over the
    /// request; kv_len 0: none kept, and kv_off must be 0 (else -EINVAL).
    /// While a request runs, no other request of the worker's process may
    /// hold bytes of that range (it fails with -EAGAIN: retry).
    uint64_t kv_off = 0;
    uint64_t kv_len = 0;
    /// The penalties count this many of the last tokens generated (the
    /// prompt's are not counted); 0: no penalties; -1: every token
    /// generated. (Version 2 on.)
    int32_t repeat_last_n = 64;
    uint32_t reserved = 0; ///< must be 0
};
static_assert(sizeof(gen_request_header) == 88);

/// The header's bytes in a request of `version` (0 for a version this
/// library does not read).
constexpr uint64_t gen_header_size(uint32_t version) {
    return version == 1 ? 80 : version == 2 ? sizeof(gen_request_header) : 0;
}

/// A parsed request: views into the bytes it was parsed from.
struct gen_request {
    gen_request_header h;
    std::string_view text;
    std::vector<std::string> stop;
    std::vector<gen_span> special_at; ///< with gen_special_spans
    uint64_t size = 0;                ///< bytes the request takes, spans and all
};

/// Parses `bytes` (the request's prompt span). Nothing, with `why` set,
/// when it is not a well-formed request (bad magic or version, unknown
/// flags, lengths past the end, a stop string without its NUL, spans out
/// of order or past the text).
std::optional<gen_request> parse_gen_request(std::span<const std::byte> bytes, std::string* why);

/// Lays a request out: header, text, stop strings and, when h.flags has
/// gen_special_spans, `special_at` (without the flag, `special_at` is not
/// written). Returns the bytes.
std::vector<std::byte> build_gen_request(const gen_request_header& h, std::string_view text,
                                         std::span<const std::string> stop,
                                         std::span<const gen_span> special_at = {});

/// Why a generation ended (its request's tokens count, the status says
/// success or failure; this is for the client's finish_reason).
enum class finish_reason : uint32_t { stop = 1, length = 2 };

} // namespace llmos
