// SPDX-License-Identifier: MIT
//
// llmosctl's commands that talk to llmosd over HTTP: model list|load|
// unload|swap, run and chat. The full llmosctl (server_http.cc, linked with
// cpp-httplib) runs them; llmosctl-static (no_http.cc: the test VM's, linked
// statically, without httplib) knows them but answers that it cannot.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace llmosctl {

/// Adds the commands `model`, `run` and `chat` and the options --server
/// (env LLMOSD_URL) and --api-key (env LLMOSD_API_KEY) to `app`. A command
/// that runs stores its exit status in `rc`; `json` (--json) is read then.
/// Call from main() before parsing.
void add_server_commands(CLI::App& app, const bool& json, int& rc);

/// Where and how to reach llmosd.
/// --reply-timeout's largest value, in seconds (a day).
constexpr int max_reply_timeout = 86400;

struct server_options {
    std::string server = "http://127.0.0.1:8080";
    std::string api_key;
    int reply_timeout = 0; ///< --reply-timeout; 0: the defaults (api_client)
    bool json = false;
};

/// A generation: `run`, or each turn of `chat`.
struct gen_args {
    std::string prompt; ///< run: the text ("-": standard input)
    std::string model;  ///< empty: the server's only model
    std::string system; ///< a system message first, if any
    std::string session;
    uint32_t max_tokens = 0; ///< 0: the server's default
    double temperature = -1; ///< < 0: the server's default
    int64_t seed = 0;
    bool has_seed = false;
    int priority = -1; ///< < 0: not sent
    bool raw = false;  ///< run: /v1/completions with the prompt as is
    bool verbose = false;
};

/// The --version line, which says which llmosctl this is.
const char* version_line();

/// The commands. Each returns the exit status (0, exit_failure, exit_usage)
/// after printing its result or one error line; the calling thread only.
int cmd_model_list(const server_options& o);
int cmd_model_load(const server_options& o, const std::string& name, const std::string& path);
int cmd_model_unload(const server_options& o, const std::string& name);
int cmd_model_swap(const server_options& o, const std::string& name, const std::string& path);
int cmd_session_list(const server_options& o);
int cmd_session_rm(const server_options& o, const std::string& name);
int cmd_run(const server_options& o, const gen_args& a);
int cmd_chat(const server_options& o, const gen_args& a);

} // namespace llmosctl
