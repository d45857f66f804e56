// SPDX-License-Identifier: MIT
//
// The OpenAI-compatible surface: request bodies parsed and checked into a
// job, and the JSON of responses, stream chunks and errors.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace llmosd {

/// An error the client gets as {"error": {...}} with an HTTP status.
struct api_error {
    int status = 400;
    std::string message;
    std::string type = "invalid_request_error";
    std::string param;
    std::string code;
    std::string allow{}; ///< 405: the methods the path takes (its Allow header)
};

nlohmann::json error_body(const api_error& e);

/// `v` as JSON text. Bytes that are not UTF-8 (a client's, quoted in an
/// error message; a model's, in its output) become U+FFFD instead of
/// making the serializer throw.
std::string to_text(const nlohmann::json& v);

struct chat_message {
    std::string role, content;
};

/// A completion or chat request, checked.
struct job {
    bool chat = false;
    std::string model;
    std::string prompt;                 ///< completions
    std::vector<chat_message> messages; ///< chat
    uint32_t max_tokens = 0;            ///< 0: not given
    float temperature = 1.0f;
    float top_p = 1.0f;
    int32_t top_k = 0;
    float min_p = 0.0f;
    float presence_penalty = 0, frequency_penalty = 0, repeat_penalty = 1.0f;
    int32_t repeat_last_n = 64; ///< tokens the penalties count; -1: all generated
    std::optional<uint64_t> seed;
    std::vector<std::string> stop;
    bool stream = false;
    bool include_usage = false;
    // llmos extensions
    uint32_t priority = 0;
    std::optional<uint32_t> tenant;
    uint64_t deadline_ms = 0;
    std::string session;
    std::string user;
};

/// A request body's JSON, in bounds: nested at most 64 deep and at most
/// 65536 values (a parsed value takes up to 50 times its text; no request
/// needs that many). Throws api_error (400) when it is not JSON or not
/// in bounds.
nlohmann::json parse_body(const std::string& body);

/// Parses a /v1/completions (chat = false) or /v1/chat/completions body.
/// Throws api_error naming the field that is wrong.
job parse_job(const std::string& body, bool chat);

} // namespace llmosd
