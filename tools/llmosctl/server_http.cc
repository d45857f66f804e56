// SPDX-License-Identifier: MIT
//
// llmosctl model|run|chat: the full llmosctl's side of llmosd's HTTP API.
// Model management uses /llmos/v1/models; run and chat stream
// /v1/chat/completions (run --raw: /v1/completions) and print the pieces
// as the server-sent events arrive.
#include "../names.hh"
#include "client.hh"
#include "json_text.hh"
#include "server.hh"
#include "util.hh"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <future>
#include <iostream>
#include <istream>
#include <optional>
#include <unistd.h>
#include <vector>

namespace llmosctl {

namespace {

using nlohmann::json;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// The client for --server and --api-key, or null after printing a usage
/// error.
std::unique_ptr<api_client> connect(const server_options& o) {
    auto where = parse_server(o.server);
    if (!where) {
        usage("bad --server '" + o.server +
              "' (http://HOST:PORT, https://HOST:PORT or unix:/PATH)");
        return nullptr;
    }
    // It goes into a header line: a line break would end it there.
    if (std::any_of(o.api_key.begin(), o.api_key.end(),
                    [](unsigned char c) { return c <= ' ' || c == 0x7f; })) {
        usage("the API key (--api-key or LLMOSD_API_KEY) holds a space or a control character: "
              "a key is one word, as in llmosd's key file");
        return nullptr;
    }
    return std::make_unique<api_client>(*where, o.api_key, o.reply_timeout);
}

/// Runs `call` on another thread; on a terminal, shows a spinner and the
/// time so far on standard error meanwhile.
reply with_progress(const std::string& label, const std::function<reply()>& call) {
    auto done = std::async(std::launch::async, call);
    if (!::isatty(STDERR_FILENO)) {
        return done.get();
    }
    static const char spin[] = {'|', '/', '-', '\\'};
    auto t0 = clock_type::now();
    for (unsigned i = 0; done.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready;
         ++i) {
        std::fprintf(stderr, "\r%c %s... %.1f s", spin[i % 4], label.c_str(), seconds_since(t0));
        std::fflush(stderr);
    }
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
    return done.get();
}

/// "F32 x3, Q4_0 x56" -> "Q4_0": the type most tensors have.
std::string main_type(const std::string& summary) {
    std::string best;
    long most = -1;
    size_t at = 0;
    while (at < summary.size()) {
        size_t end = summary.find(", ", at);
        std::string part = summary.substr(at, end == std::string::npos ? end : end - at);
        at = end == std::string::npos ? summary.size() : end + 2;
        auto x = part.rfind(" x");
        long n = x == std::string::npos ? 0 : std::strtol(part.c_str() + x + 2, nullptr, 10);
        if (n > most) {
            most = n;
            best = part.substr(0, x);
        }
    }
    return best.empty() ? "-" : best;
}

std::string str(const json& o, const char* key) {
    auto it = o.find(key);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string{"-"};
}

uint64_t num(const json& o, const char* key) {
    auto it = o.find(key);
    return it != o.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

// "name (llama, Q4_0, 1.2G)"
std::string model_words(const json& m) {
    return printable(str(m, "name") + " (" + str(m, "architecture") + ", " +
                     main_type(str(m, "weights")) + ", " + format_size(num(m, "weight_bytes")) +
                     ")");
}

/// The model to use: `want`, or the server's only one. On failure prints
/// the error and returns nullopt with `rc` set.
std::optional<std::string> pick_model(api_client& c, const std::string& want, int& rc) {
    if (!want.empty()) {
        return want;
    }
    auto r = c.get("/v1/models");
    if (!r.ok()) {
        rc = fail_reply("cannot list llmosd's models", r, c.where());
        return std::nullopt;
    }
    std::vector<std::string> ids;
    if (r.body.is_object() && r.body.contains("data") && r.body["data"].is_array()) {
        for (const auto& m : r.body["data"]) {
            ids.push_back(str(m, "id"));
        }
    }
    if (ids.size() == 1) {
        return ids[0]; // (sent back as it is; printed through printable())
    }
    if (ids.empty()) {
        std::fprintf(stderr,
                     "llmosctl: llmosd at %s serves no model (load one: llmosctl model load "
                     "NAME PATH)\n",
                     c.where().text.c_str());
        rc = exit_failure;
        return std::nullopt;
    }
    std::string list;
    for (const auto& id : ids) {
        list += (list.empty() ? "" : ", ") + printable(id);
    }
    rc = usage("llmosd serves several models (" + list + "): choose one with --model");
    return std::nullopt;
}

/// One streamed generation.
struct turn {
    std::string text;
    std::string finish_reason;
    json usage;
    double first_token_s = -1; ///< from sending to the first piece
    double total_s = 0;
};

/// Streams `body` to /v1/chat/completions (chat) or /v1/completions and
/// collects the reply; with `echo`, writes each piece to standard output as
/// it arrives. The reply of the call (its errors for fail_reply).
reply stream_turn(api_client& c, json body, bool chat, bool echo, turn& t) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    auto t0 = clock_type::now();
    auto r = c.stream(chat ? "/v1/chat/completions" : "/v1/completions", body, [&](const json& ev) {
        if (ev.contains("usage") && ev["usage"].is_object()) {
            t.usage = ev["usage"];
        }
        if (!ev.contains("choices") || !ev["choices"].is_array() || ev["choices"].empty()) {
            return true;
        }
        const json& ch = ev["choices"][0];
        std::string piece;
        if (chat && ch.contains("delta") && ch["delta"].is_object()) {
            const json& d = ch["delta"];
            if (d.contains("content") && d["content"].is_string()) {
                piece = d["content"].get<std::string>();
            }
        } else if (!chat && ch.contains("text") && ch["text"].is_string()) {
            piece = ch["text"].get<std::string>();
        }
        if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) {
            t.finish_reason = ch["finish_reason"].get<std::string>();
        }
        if (!piece.empty()) {
            if (t.first_token_s < 0) {
                t.first_token_s = seconds_since(t0);
            }
            t.text += piece;
            if (echo) {
                std::fwrite(piece.data(), 1, piece.size(), stdout);
                std::fflush(stdout);
            }
        }
        return true;
    });
    t.total_s = seconds_since(t0);
    return r;
}

json turn_json(const std::string& model, const turn& t) {
    uint64_t n = num(t.usage, "completion_tokens");
    return {{"model", model},
            {"text", t.text},
            {"finish_reason", t.finish_reason},
            {"usage", t.usage.is_object() ? t.usage : json(nullptr)},
            {"time_to_first_token_s", t.first_token_s < 0 ? json(nullptr) : json(t.first_token_s)},
            {"seconds", t.total_s},
            {"tokens_per_s", t.total_s > 0 ? json(double(n) / t.total_s) : json(nullptr)}};
}

void print_stats(const turn& t) {
    uint64_t n = num(t.usage, "completion_tokens");
    std::fprintf(stderr,
                 "llmosctl: %llu prompt + %llu completion tokens in %.2f s: first token after "
                 "%.0f ms, %.1f tokens/s (%s)\n",
                 static_cast<unsigned long long>(num(t.usage, "prompt_tokens")),
                 static_cast<unsigned long long>(n), t.total_s,
                 t.first_token_s < 0 ? 0.0 : t.first_token_s * 1e3,
                 t.total_s > 0 ? double(n) / t.total_s : 0.0,
                 t.finish_reason.empty() ? "?" : t.finish_reason.c_str());
}

json request_body(const gen_args& a, const std::string& model) {
    json b = {{"model", model}};
    if (a.max_tokens) {
        b["max_tokens"] = a.max_tokens;
    }
    if (a.temperature >= 0) {
        b["temperature"] = a.temperature;
    }
    if (a.has_seed) {
        b["seed"] = a.seed;
    }
    if (a.priority >= 0) {
        b["priority"] = a.priority;
    }
    if (!a.session.empty()) {
        b["session"] = a.session;
    }
    return b;
}

json message(const char* role, const std::string& content) {
    return {{"role", role}, {"content", content}};
}

std::string absolute(const std::string& path) {
    std::error_code ec;
    auto p = std::filesystem::absolute(path, ec);
    return ec ? path : p.lexically_normal().string();
}

} // namespace

namespace {

/// `s` as one segment of a URL path: a name with '?', '#', '/' or '%' in it
/// names itself, not a query or another route.
std::string path_segment(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (const unsigned char ch : s) {
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            out += static_cast<char>(ch);
        } else {
            out += '%';
            out += hex[ch >> 4];
            out += hex[ch & 15];
        }
    }
    return out;
}

/// Whether `s` is UTF-8 (JSON, and so the API, carries nothing else).
bool is_utf8(const std::string& s) {
    try {
        (void)json(s).dump();
        return true;
    } catch (const json::type_error&) {
        return false;
    }
}

/// 0, or a usage error for the first of (what, text) whose text is not
/// UTF-8 (JSON, and so the API, carries nothing else).
int check_text(std::initializer_list<std::pair<const char*, const std::string&>> texts) {
    for (const auto& [what, text] : texts) {
        if (!is_utf8(text)) {
            return usage(std::string(what) + " is not UTF-8 text");
        }
    }
    return 0;
}

/// 0, or a usage error for a model name llmosd would refuse (its rules: 1
/// to 128 bytes, no '/', no control characters, not only dots); unload and
/// swap would send it in the URL's path.
int check_model_name(const std::string& name) {
    if (!llmos::names::valid_model(name)) {
        return usage("bad model name '" + printable(name) +
                     "' (1 to 128 bytes, without '/' or control characters, not only dots)");
    }
    return 0;
}

/// The most a prompt from standard input (run -, each line of chat) may
/// hold: far more than llmosd takes (its --max-body, 1 MiB by default),
/// and a bound on what is read from an input that never ends.
constexpr size_t max_input = 16u << 20;
constexpr const char* max_input_words = "16 MiB";

enum class line_read { line, end, too_long };

/// One line of `in` (without its \n) into `line`: `end` at the end of
/// the input with nothing read; `too_long` past max_input bytes, the rest
/// of the line read and dropped.
line_read read_line(std::istream& in, std::string& line) {
    line.clear();
    bool any = false;
    bool too_long = false;
    size_t n = 0;
    for (int c; (c = in.get()) != std::char_traits<char>::eof(); ++n) {
        any = true;
        if (c == '\n') {
            break;
        }
        if (line.size() < max_input) {
            line += static_cast<char>(c);
        } else {
            too_long = true;
        }
        if (n >= 4 * max_input) {
            // No line ends in sight (a device, not a terminal): that is
            // the end of the input.
            line.clear();
            in.setstate(std::ios::eofbit);
            return line_read::too_long;
        }
    }
    if (!any) {
        return line_read::end;
    }
    if (too_long) {
        line.clear();
        return line_read::too_long;
    }
    return line_read::line;
}

/// A successful reply whose body is not what llmosd sends (`why`):
/// something else answers at that address.
int not_llmosd(const std::string& what, const server_address& where,
               const char* why = "not a JSON object") {
    std::fprintf(stderr, "llmosctl: %s: the reply from %s is not llmosd's (%s)\n", what.c_str(),
                 where.text.c_str(), why);
    return exit_failure;
}

// GETs `path`, whose answer holds the array `key`, into `out`: the exit
// status when that is all (it failed, or --json printed the array), or
// nullopt for the caller to print `out` as a table. For the table, every
// entry must pass `entry_ok` (an object whose fields the table reads have
// their types), or nothing is printed.
std::optional<int> fetch_list(const server_options& o, const std::string& path, const char* key,
                              const std::string& what, json& out,
                              const std::function<bool(const json&)>& entry_ok) {
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    auto r = c->get(path);
    if (!r.ok()) {
        return fail_reply(what, r, c->where());
    }
    if (!r.body.is_object() || !r.body.value(key, json()).is_array()) {
        return not_llmosd(what, c->where());
    }
    out = std::move(r.body[key]);
    if (o.json) {
        std::cout << json_text(out, 2) << '\n';
        return 0;
    }
    if (!std::all_of(out.begin(), out.end(), entry_ok)) {
        return not_llmosd(what, c->where(), "an entry of its list is not what llmosd sends");
    }
    return std::nullopt;
}

/// Text from the server for a table's cell: one line, no terminal controls.
std::string cell(const json& o, const char* key) {
    return printable(str(o, key));
}

/// Whether `o` has no `key` or true or false there.
bool bool_or_absent(const json& o, const char* key) {
    auto it = o.find(key);
    return it == o.end() || it->is_boolean();
}

} // namespace

int cmd_model_list(const server_options& o) {
    json models;
    if (auto rc = fetch_list(o, "/llmos/v1/models", "models", "cannot list models", models,
                             [](const json& m) { return m.is_object(); })) {
        return *rc;
    }
    std::printf("%-16s %-8s %-8s %8s %-7s %6s %7s %7s %4s  %s\n", "NAME", "ARCH", "WEIGHTS", "SIZE",
                "ENGINE", "LAYERS", "VOCAB", "CONTEXT", "BUSY", "PATH");
    for (const auto& m : models) {
        // "cpu (avx512)" or "cuda:0 (NVIDIA ...)": the engine, without its details.
        const std::string engine = cell(m, "engine");
        std::printf("%-16s %-8s %-8s %8s %-7s %6llu %7llu %7llu %4llu  %s\n",
                    cell(m, "name").c_str(), cell(m, "architecture").c_str(),
                    main_type(cell(m, "weights")).c_str(),
                    format_size(num(m, "weight_bytes")).c_str(),
                    engine.empty() ? "-" : engine.substr(0, engine.find(' ')).c_str(),
                    static_cast<unsigned long long>(num(m, "n_layer")),
                    static_cast<unsigned long long>(num(m, "n_vocab")),
                    static_cast<unsigned long long>(num(m, "context")),
                    static_cast<unsigned long long>(num(m, "in_flight")), cell(m, "path").c_str());
    }
    return 0;
}

int cmd_model_load(const server_options& o, const std::string& name, const std::string& path) {
    const std::string file = absolute(path);
    if (int rc = check_text({{"the model name", name}, {"the path", file}})) {
        return rc;
    }
    if (int rc = check_model_name(name)) {
        return rc;
    }
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    c->expect_long_replies();
    auto t0 = clock_type::now();
    auto r = with_progress("loading " + name, [&] {
        return c->post("/llmos/v1/models", {{"name", name}, {"path", file}});
    });
    if (!r.ok()) {
        return fail_reply("cannot load model '" + name + "'", r, c->where());
    }
    if (!r.body.is_object()) {
        return not_llmosd("cannot load model '" + name + "'", c->where());
    }
    if (o.json) {
        std::cout << json_text(r.body, 2) << '\n';
    } else {
        std::printf("loaded model %s from %s in %.2f s\n", model_words(r.body).c_str(),
                    file.c_str(), seconds_since(t0));
    }
    return 0;
}

int cmd_model_unload(const server_options& o, const std::string& name) {
    if (int rc = check_text({{"the model name", name}})) {
        return rc;
    }
    if (int rc = check_model_name(name)) {
        return rc;
    }
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    c->expect_long_replies(); // in-flight requests finish first
    auto r = with_progress("unloading " + name,
                           [&] { return c->del("/llmos/v1/models/" + path_segment(name)); });
    if (!r.ok()) {
        return fail_reply("cannot unload model '" + name + "'", r, c->where());
    }
    if (!r.body.is_object()) {
        return not_llmosd("cannot unload model '" + name + "'", c->where());
    }
    if (o.json) {
        std::cout << json_text(r.body, 2) << '\n';
    } else {
        std::printf("unloaded model %s\n", name.c_str());
    }
    return 0;
}

int cmd_session_list(const server_options& o) {
    json sessions;
    if (auto rc = fetch_list(
            o, "/llmos/v1/sessions", "data", "cannot list sessions", sessions, [](const json& s) {
                return s.is_object() && bool_or_absent(s, "readable") && bool_or_absent(s, "full");
            })) {
        return *rc;
    }
    // Last use as an age ("12s", "5m", "3h", "2d"); "-" when not kept.
    const auto now = static_cast<uint64_t>(::time(nullptr));
    auto age = [now](const json& s) -> std::string {
        if (!s.contains("last_used") || !s["last_used"].is_number_unsigned()) {
            return "-";
        }
        const uint64_t t = s["last_used"].get<uint64_t>(), d = now > t ? now - t : 0;
        return d < 120      ? std::to_string(d) + "s"
               : d < 7200   ? std::to_string(d / 60) + "m"
               : d < 172800 ? std::to_string(d / 3600) + "h"
                            : std::to_string(d / 86400) + "d";
    };
    int width = 4; // the longest name's (up to 48)
    for (const auto& s : sessions) {
        width = std::max(width, static_cast<int>(cell(s, "id").size()));
    }
    std::printf("%-*s %10s %-16s %-10s %8s %8s %6s  %s\n", width, "NAME", "TENANT", "MODEL", "KIND",
                "TEXT", "SIZE", "USED", "STATE");
    for (const auto& s : sessions) {
        const std::string tenant = s.contains("tenant") && s["tenant"].is_number_unsigned()
                                       ? std::to_string(s["tenant"].get<uint64_t>())
                                       : "-";
        const char* state = !s.value("readable", true) ? "unreadable"
                            : s.value("full", false)   ? "full"
                                                       : "ok";
        std::printf("%-*s %10s %-16s %-10s %8s %8s %6s  %s\n", width, cell(s, "id").c_str(),
                    tenant.c_str(), cell(s, "model").c_str(), cell(s, "kind").c_str(),
                    format_size(num(s, "conversation_bytes")).c_str(),
                    format_size(num(s, "bytes")).c_str(), age(s).c_str(), state);
    }
    return 0;
}

int cmd_session_rm(const server_options& o, const std::string& name) {
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    auto r = c->del("/llmos/v1/sessions/" + name);
    if (!r.ok()) {
        return fail_reply("cannot end session '" + name + "'", r, c->where());
    }
    if (!r.body.is_object()) {
        return not_llmosd("cannot end session '" + name + "'", c->where());
    }
    if (o.json) {
        std::cout << json_text(r.body, 2) << '\n';
    } else {
        std::printf("ended session %s\n", name.c_str());
    }
    return 0;
}

int cmd_model_swap(const server_options& o, const std::string& name, const std::string& path) {
    const std::string file = absolute(path);
    if (int rc = check_text({{"the model name", name}, {"the path", file}})) {
        return rc;
    }
    if (int rc = check_model_name(name)) {
        return rc;
    }
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    c->expect_long_replies();
    auto t0 = clock_type::now();
    auto r = with_progress("swapping " + name, [&] {
        return c->post("/llmos/v1/models/" + path_segment(name) + "/swap", {{"path", file}});
    });
    if (!r.ok()) {
        return fail_reply("cannot swap model '" + name + "'", r, c->where());
    }
    if (!r.body.is_object()) {
        return not_llmosd("cannot swap model '" + name + "'", c->where());
    }
    if (o.json) {
        std::cout << json_text(r.body, 2) << '\n';
    } else {
        std::printf("swapped model %s to %s in %.2f s\n", model_words(r.body).c_str(), file.c_str(),
                    seconds_since(t0));
    }
    return 0;
}

int cmd_run(const server_options& o, const gen_args& a) {
    std::string prompt = a.prompt;
    if (prompt == "-") {
        // No more than the cap (and a byte to tell that more came).
        prompt = read_at_most(std::cin, max_input);
        if (prompt.size() > max_input) {
            return usage(std::string{"the prompt on standard input is longer than "} +
                         max_input_words);
        }
    }
    if (prompt.empty()) {
        return usage("the prompt is empty");
    }
    if (!is_utf8(prompt)) {
        return usage("the prompt is not UTF-8 text");
    }
    if (int rc = check_text({{"the system prompt", a.system}, {"the model name", a.model}})) {
        return rc;
    }
    if (a.raw && !a.system.empty()) {
        return usage("--system needs the chat template: leave out --raw");
    }
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    int rc = 0;
    auto model = pick_model(*c, a.model, rc);
    if (!model) {
        return rc;
    }
    json body = request_body(a, *model);
    if (a.raw) {
        body["prompt"] = prompt;
    } else {
        body["messages"] = json::array();
        if (!a.system.empty()) {
            body["messages"].push_back(message("system", a.system));
        }
        body["messages"].push_back(message("user", prompt));
    }
    turn t;
    auto r = stream_turn(*c, body, !a.raw, !o.json, t);
    if (!o.json && !t.text.empty()) {
        std::fputc('\n', stdout);
        std::fflush(stdout);
    }
    if (!r.ok()) {
        return fail_reply("model '" + printable(*model) + "'", r, c->where());
    }
    if (o.json) {
        std::cout << json_text(turn_json(*model, t), 2) << '\n';
    }
    if (a.verbose) {
        print_stats(t);
    }
    return 0;
}

namespace {

/// Whether `r` is llmosd's refusal of a prompt longer than the model's
/// context.
bool context_overflow(const reply& r) {
    const json& b = r.body;
    return !r.ok() && r.transport_error.empty() && b.is_object() && b.contains("error") &&
           b["error"].is_object() && b["error"].value("code", json()) == "context_length_exceeded";
}

/// Where the turns (user and assistant, in pairs) of a chat's `history`
/// begin: after its system message, if any.
size_t first_turn(const json& history) {
    return !history.empty() && history[0].value("role", "") == "system" ? 1 : 0;
}

} // namespace

int cmd_chat(const server_options& o, const gen_args& a) {
    if (int rc = check_text({{"the system prompt", a.system}, {"the model name", a.model}})) {
        return rc;
    }
    auto c = connect(o);
    if (!c) {
        return exit_usage;
    }
    int rc = 0;
    auto model = pick_model(*c, a.model, rc);
    if (!model) {
        return rc;
    }
    const bool tty = ::isatty(STDIN_FILENO) && !o.json;
    if (tty) {
        std::fprintf(stderr, "llmosctl: chatting with %s at %s%s; /quit or Ctrl-D leaves\n",
                     printable(*model).c_str(), c->where().text.c_str(),
                     a.session.empty() ? "" : (", session " + a.session).c_str());
    }
    // Without a session the conversation lives here and goes with each
    // request; with one llmosd keeps it, and each request carries only what
    // is new.
    json history = json::array();
    json pending = json::array(); // what the server has not seen yet
    if (!a.system.empty()) {
        pending.push_back(message("system", a.system));
    }
    int status = 0;
    std::string line;
    while (true) {
        if (tty) {
            std::fputs("> ", stdout);
            std::fflush(stdout);
        }
        const auto got = read_line(std::cin, line);
        if (got == line_read::end) {
            if (tty) {
                std::fputc('\n', stdout);
            }
            break;
        }
        if (got == line_read::too_long) {
            std::fprintf(stderr, "llmosctl: that line is longer than %s: not sent\n",
                         max_input_words);
            status = exit_failure;
            continue; // the conversation goes on
        }
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        if (line == "/quit" || line == "/exit") {
            break;
        }
        if (line.find_first_not_of(" \t") == std::string::npos) {
            continue;
        }
        if (!is_utf8(line)) {
            std::fprintf(stderr, "llmosctl: that line is not UTF-8 text: not sent\n");
            status = exit_failure;
            continue; // the conversation goes on
        }
        turn t;
        reply r;
        bool dropped_all = false; // the line did not fit even alone
        while (true) {
            json body = request_body(a, *model);
            json msgs = a.session.empty() ? history : json::array();
            for (const auto& m : pending) {
                msgs.push_back(m);
            }
            msgs.push_back(message("user", line));
            body["messages"] = msgs;
            t = turn{};
            r = stream_turn(*c, body, true, !o.json, t);
            // Without a session, a conversation that outgrew the context
            // loses its older half of turns (the system message stays),
            // and goes again.
            if (!a.session.empty() || !t.text.empty() || !context_overflow(r)) {
                break;
            }
            const size_t turns = (history.size() - first_turn(history)) / 2;
            if (turns == 0) {
                break;
            }
            const size_t drop = (turns + 1) / 2;
            const auto from = history.begin() + static_cast<std::ptrdiff_t>(first_turn(history));
            history.erase(from, from + static_cast<std::ptrdiff_t>(2 * drop));
            dropped_all = drop == turns;
            std::fprintf(stderr,
                         "llmosctl: the conversation outgrew the model's context: dropped its "
                         "oldest %zu of %zu turns\n",
                         drop, turns);
        }
        if (!o.json && !t.text.empty()) {
            std::fputc('\n', stdout);
            std::fflush(stdout);
        }
        if (!r.ok()) {
            status = fail_reply("model '" + printable(*model) + "'" +
                                    (dropped_all && context_overflow(r)
                                         ? " (the line alone, without earlier turns)"
                                         : ""),
                                r, c->where());
            if (!r.transport_error.empty() || !r.not_llmosd.empty()) {
                return status; // the server is gone, or not llmosd
            }
            continue; // that message is dropped; the conversation goes on
        }
        for (const auto& m : pending) {
            history.push_back(m);
        }
        pending = json::array();
        history.push_back(message("user", line));
        history.push_back(message("assistant", t.text));
        if (o.json) {
            std::cout << json_text(turn_json(*model, t)) << '\n' << std::flush;
        }
        if (a.verbose) {
            print_stats(t);
        }
    }
    return status;
}

const char* version_line() {
    return "llmosctl 0.1.0";
}

} // namespace llmosctl
