// SPDX-License-Identifier: MIT
#include "openai.hh"

#include "../names.hh"

#include <cmath>

namespace llmosd {

using nlohmann::json;

json error_body(const api_error& e) {
    json err = {{"message", e.message}, {"type", e.type}};
    err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
    err["code"] = e.code.empty() ? json(nullptr) : json(e.code);
    return {{"error", err}};
}

std::string to_text(const json& v) {
    return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) {
    throw api_error{400, msg, "invalid_request_error", param, ""};
}

const char* type_name(const json& v) {
    switch (v.type()) {
    case json::value_t::null:
        return "null";
    case json::value_t::boolean:
        return "a boolean";
    case json::value_t::string:
        return "a string";
    case json::value_t::array:
        return "an array";
    case json::value_t::object:
        return "an object";
    case json::value_t::number_float:
        return "a number";
    default:
        return "an integer";
    }
}

// Optional fields of a given type; null counts as absent (as OpenAI does).
const json* field(const json& o, const char* key) {
    auto it = o.find(key);
    return it == o.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& o, const char* key, double lo, double hi, double dflt) {
    const json* v = field(o, key);
    if (!v) {
        return dflt;
    }
    if (!v->is_number()) {
        bad(key, std::string("'") + key + "' must be a number, not " + type_name(*v));
    }
    double d = v->get<double>();
    if (!std::isfinite(d) || d < lo || d > hi) {
        bad(key, std::string("'") + key + "' must be between " + json(lo).dump() + " and " +
                     json(hi).dump() + ", got " + v->dump());
    }
    return d;
}

int64_t integer(const json& o, const char* key, int64_t lo, int64_t hi, int64_t dflt) {
    const json* v = field(o, key);
    if (!v) {
        return dflt;
    }
    if (!v->is_number_integer()) {
        bad(key, std::string("'") + key + "' must be an integer, not " + type_name(*v));
    }
    int64_t i = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)
                    ? INT64_MAX
                    : v->get<int64_t>();
    if (i < lo || i > hi) {
        bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " +
                     std::to_string(hi) + ", got " + v->dump());
    }
    return i;
}

bool boolean(const json& o, const char* key, bool dflt) {
    const json* v = field(o, key);
    if (!v) {
        return dflt;
    }
    if (!v->is_boolean()) {
        bad(key, std::string("'") + key + "' must be a boolean, not " + type_name(*v));
    }
    return v->get<bool>();
}

std::string string(const json& o, const char* key, bool required) {
    const json* v = field(o, key);
    if (!v) {
        if (required) {
            bad(key, std::string("'") + key + "' is required");
        }
        return {};
    }
    if (!v->is_string()) {
        bad(key, std::string("'") + key + "' must be a string, not " + type_name(*v));
    }
    return v->get<std::string>();
}

} // namespace

// Counts a body's values and nesting as it is read, without keeping
// anything (nlohmann's parse callback takes time quadratic in an array's
// length): stops at the first value past the bounds.
struct body_bounds final : nlohmann::json_sax<json> {
    static constexpr size_t max_depth = 64;
    static constexpr size_t max_values = 65536;
    size_t depth = 0, values = 0;
    bool too_deep = false;

    bool value() { return ++values <= max_values; }
    bool open() {
        too_deep = ++depth > max_depth;
        return !too_deep && value();
    }
    bool null() override { return value(); }
    bool boolean(bool) override { return value(); }
    bool number_integer(number_integer_t) override { return value(); }
    bool number_unsigned(number_unsigned_t) override { return value(); }
    bool number_float(number_float_t, const string_t&) override { return value(); }
    bool string(string_t&) override { return value(); }
    bool binary(binary_t&) override { return value(); }
    bool start_object(std::size_t) override { return open(); }
    bool key(string_t&) override { return true; }
    bool end_object() override { return --depth, true; }
    bool start_array(std::size_t) override { return open(); }
    bool end_array() override { return --depth, true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
        return false; // the parse that builds the value says what is wrong
    }
};

json parse_body(const std::string& body) {
    // The parser takes a NUL for the end: what follows would go unread.
    if (body.find('\0') != std::string::npos) {
        throw api_error{400, "the body is not valid JSON: it holds a NUL byte",
                        "invalid_request_error", "", ""};
    }
    body_bounds b;
    if (!json::sax_parse(body, &b) && (b.too_deep || b.values > body_bounds::max_values)) {
        throw api_error{
            400,
            b.too_deep
                ? "the body nests deeper than " + std::to_string(body_bounds::max_depth) + " levels"
                : "the body holds more than " + std::to_string(body_bounds::max_values) + " values",
            "invalid_request_error", "", "body_too_complex"};
    }
    try {
        return json::parse(body);
    } catch (const json::exception& e) {
        // Syntax, bytes that are not UTF-8, numbers beyond a double's range.
        throw api_error{400, std::string("the body is not valid JSON: ") + e.what(),
                        "invalid_request_error", "", ""};
    }
}

// Fields that would change what is sampled or answered, which this server
// does not do: refused by name when they ask for something, rather than
// answered as if they were not there (a banned token, JSON mode or a tool
// call the client counts on). Their "off" values pass.
void refuse_unsupported(const json& o, bool chat) {
    auto asks = [](const json& v) {
        return !(v.is_null() || (v.is_boolean() && !v.get<bool>()) ||
                 (v.is_number() && v.get<double>() == 0) || (v.is_string() && v.empty()) ||
                 ((v.is_object() || v.is_array()) && v.empty()));
    };
    for (const char* key :
         {"logit_bias", "logprobs", "top_logprobs", "tools", "functions", "echo", "suffix"}) {
        if (const json* v = field(o, key); v && asks(*v)) {
            bad(key, std::string("'") + key + "' is not supported by this server");
        }
    }
    // A completion's logprobs of 0 still asks for the sampled tokens' own
    // (a chat's is a boolean).
    if (const json* v = field(o, "logprobs"); v && !chat && v->is_number()) {
        bad("logprobs", "'logprobs' is not supported by this server");
    }
    if (const json* v = field(o, "response_format")) {
        const json* t = v->is_object() ? field(*v, "type") : nullptr;
        if (!v->is_object() || (t && !(t->is_string() && *t == "text"))) {
            bad("response_format", "only {\"type\": \"text\"} is supported as 'response_format'");
        }
    }
    if (const json* v = field(o, "tool_choice"); v && !(v->is_string() && *v == "none")) {
        bad("tool_choice", "'tool_choice' is not supported by this server (only \"none\")");
    }
    if (const json* v = field(o, "best_of"); v && !(v->is_number_integer() && *v == 1)) {
        bad("best_of", "'best_of' must be 1");
    }
}

job parse_job(const std::string& body, bool chat) {
    const json o = parse_body(body);
    if (!o.is_object()) {
        bad("", std::string("the body must be a JSON object, not ") + type_name(o));
    }
    job j;
    j.chat = chat;
    j.model = string(o, "model", true);
    if (chat) {
        const json* m = field(o, "messages");
        if (!m) {
            bad("messages", "'messages' is required");
        }
        if (!m->is_array() || m->empty()) {
            bad("messages", "'messages' must be a non-empty array");
        }
        for (size_t i = 0; i < m->size(); ++i) {
            const json& msg = (*m)[i];
            std::string at = "messages[" + std::to_string(i) + "]";
            if (!msg.is_object()) {
                bad(at, "'" + at + "' must be an object");
            }
            const json* role = field(msg, "role");
            if (!role || !role->is_string()) {
                bad(at + ".role", "'" + at + ".role' must be a string");
            }
            std::string r = role->get<std::string>();
            if (r != "system" && r != "user" && r != "assistant" && r != "developer") {
                bad(at + ".role", "'" + at + ".role' must be system, developer, user or " +
                                      "assistant, got '" + r + "'");
            }
            const json* content = field(msg, "content");
            std::string text;
            if (content && content->is_string()) {
                text = content->get<std::string>();
            } else if (content && content->is_array()) {
                // [{"type": "text", "text": ...}, ...]
                for (const json& part : *content) {
                    if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
                        !part.contains("text") || !part["text"].is_string()) {
                        bad(at + ".content", "only text content parts are supported");
                    }
                    // Parts are paragraphs: one line break between two
                    // (as llama.cpp and vLLM join them), none around.
                    const std::string& t = part["text"].get_ref<const std::string&>();
                    if (!text.empty() && !t.empty()) {
                        text += '\n';
                    }
                    text += t;
                }
            } else if (content || r != "assistant") {
                bad(at + ".content", "'" + at + ".content' must be a string");
            }
            j.messages.push_back({r == "developer" ? "system" : r, text});
        }
    } else {
        const json* p = field(o, "prompt");
        if (!p) {
            bad("prompt", "'prompt' is required");
        }
        if (p->is_string()) {
            j.prompt = p->get<std::string>();
        } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
            j.prompt = (*p)[0].get<std::string>();
        } else if (p->is_array()) {
            bad("prompt", "'prompt' must be a string (arrays of several prompts and of token "
                          "ids are not supported)");
        } else {
            bad("prompt", std::string("'prompt' must be a string, not ") + type_name(*p));
        }
    }
    int64_t max_tokens = integer(o, "max_tokens", 1, 1 << 20, 0);
    if (chat) {
        max_tokens = integer(o, "max_completion_tokens", 1, 1 << 20, max_tokens);
    }
    j.max_tokens = static_cast<uint32_t>(max_tokens);
    j.temperature = static_cast<float>(number(o, "temperature", 0, 2, 1.0));
    j.top_p = static_cast<float>(number(o, "top_p", 0, 1, 1.0));
    if (j.top_p == 0) {
        bad("top_p", "'top_p' must be greater than 0");
    }
    j.top_k = static_cast<int32_t>(integer(o, "top_k", 0, 1 << 20, 0));
    j.min_p = static_cast<float>(number(o, "min_p", 0, 1, 0.0));
    j.presence_penalty = static_cast<float>(number(o, "presence_penalty", -2, 2, 0));
    j.frequency_penalty = static_cast<float>(number(o, "frequency_penalty", -2, 2, 0));
    j.repeat_penalty = static_cast<float>(number(o, "repetition_penalty", 0.01, 10, 1.0));
    // OpenAI's presence and frequency penalties count the whole reply;
    // llama.cpp's repetition penalty, alone, the last 64 tokens.
    const bool openai_penalties = j.presence_penalty != 0 || j.frequency_penalty != 0;
    j.repeat_last_n =
        static_cast<int32_t>(integer(o, "repeat_last_n", -1, 1 << 20, openai_penalties ? -1 : 64));
    if (const json* v = field(o, "seed")) {
        // Any 64-bit integer, signed or not (as two's complement: -1 is
        // 2^64 - 1).
        if (v->is_number_unsigned()) {
            j.seed = v->get<uint64_t>();
        } else {
            j.seed = static_cast<uint64_t>(integer(o, "seed", INT64_MIN, INT64_MAX, 0));
        }
    }
    if (integer(o, "n", 1, 1, 1) != 1) {
        bad("n", "'n' must be 1");
    }
    refuse_unsupported(o, chat);
    if (const json* s = field(o, "stop")) {
        if (s->is_string()) {
            j.stop.push_back(s->get<std::string>());
        } else if (s->is_array() && s->size() <= 4) {
            for (const json& x : *s) {
                if (!x.is_string() || x.get<std::string>().empty()) {
                    bad("stop", "'stop' must hold non-empty strings");
                }
                j.stop.push_back(x.get<std::string>());
            }
        } else {
            bad("stop", "'stop' must be a string or an array of at most 4 strings");
        }
        for (auto& s2 : j.stop) {
            if (s2.empty() || s2.size() > 512) {
                bad("stop", "each stop string must have 1 to 512 bytes");
            }
            if (s2.find('\0') != std::string::npos) {
                bad("stop", "a stop string cannot hold a NUL character (\\u0000)");
            }
        }
    }
    j.stream = boolean(o, "stream", false);
    if (const json* so = field(o, "stream_options")) {
        if (!so->is_object()) {
            bad("stream_options", "'stream_options' must be an object");
        }
        if (!j.stream) {
            bad("stream_options", "'stream_options' is only allowed with \"stream\": true");
        }
        j.include_usage = boolean(*so, "include_usage", false);
    }
    j.priority = static_cast<uint32_t>(integer(o, "priority", 0, 255, 0));
    if (field(o, "tenant")) {
        j.tenant = static_cast<uint32_t>(integer(o, "tenant", 0, UINT32_MAX, 0));
    }
    j.deadline_ms = static_cast<uint64_t>(integer(o, "deadline_ms", 0, 86400000, 0));
    j.session = string(o, "session", false);
    if (field(o, "session") && !llmos::names::valid_session(j.session)) {
        bad("session", "'session' must be 1 to 48 characters of [A-Za-z0-9._-], not only dots");
    }
    j.user = string(o, "user", false);
    return j;
}

} // namespace llmosd
