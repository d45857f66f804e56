// SPDX-License-Identifier: MIT
//
// The command line of llmosctl's llmosd commands. Both llmosctl builds
// parse them the same way; only the full one (server_http.cc) runs them.
#include "server.hh"

#include "../names.hh"
#include "options.hh"
#include "util.hh"

#include <CLI/CLI.hpp>
#include <memory>

namespace llmosctl {

namespace {

// The options `run` and `chat` share.
void add_gen_options(CLI::App* cmd, gen_args& a) {
    cmd->add_option("-m,--model", a.model, "the model (default: the server's only one)")
        ->check(not_an_option());
    cmd->add_option("--system", a.system, "a system message before the conversation")
        ->check(not_an_option_word());
    cmd->add_option("--session", a.session,
                    "a server-side session ([A-Za-z0-9._-], up to 48): llmosd keeps the "
                    "conversation and its KV cache in a persistent mindspace")
        ->check(not_an_option());
    cmd->add_option("-n,--max-tokens", a.max_tokens, "most tokens to generate per reply")
        ->transform(decimal<uint32_t>())
        ->check(CLI::Range(1, 1 << 20));
    cmd->add_option("-t,--temperature", a.temperature, "0 (greedy) .. 2 (default: llmosd's, 1)")
        ->check(CLI::Range(0.0, 2.0));
    cmd->add_option("--seed", a.seed, "sampling seed, for repeatable output")
        ->transform(decimal<int64_t>());
    cmd->add_option("--priority", a.priority, "scheduling priority, 0..255 (llmos extension)")
        ->transform(decimal<int>(false))
        ->check(CLI::Range(0, 255));
    cmd->add_flag("-v,--verbose", a.verbose,
                  "token counts, time to first token and tokens/s on standard error");
}

} // namespace

void add_server_commands(CLI::App& app, const bool& json, int& rc) {
    auto so = std::make_shared<server_options>();
    app.add_option("--server", so->server,
                   "llmosd's address: http://HOST:PORT, https://HOST:PORT or unix:/PATH")
        ->envname("LLMOSD_URL")
        ->capture_default_str()
        ->check(not_an_option());
    app.add_option("--api-key", so->api_key, "API key for llmosd (sent as a bearer token)")
        ->envname("LLMOSD_API_KEY")
        ->check(not_an_option());
    app.add_option("--reply-timeout", so->reply_timeout,
                   "seconds to wait for llmosd's reply, or the next part of a streamed one, "
                   "before giving up (default: 30, and 900 for loading, swapping or unloading "
                   "a model and for generation)")
        ->transform(decimal<int>(false))
        ->check(CLI::Range(1, max_reply_timeout));
    auto opts = [so, &json] {
        server_options o = *so;
        o.json = json;
        return o;
    };

    auto names = std::make_shared<std::pair<std::string, std::string>>();
    auto* model = app.add_subcommand("model", "llmosd's models: list, load, unload, swap");
    model->require_subcommand(1);
    model->footer("llmosd's address: --server or LLMOSD_URL (default http://127.0.0.1:8080).\n"
                  "Examples:\n"
                  "  llmosctl model list\n"
                  "  llmosctl model load qwen /srv/models/qwen2.5-0.5b-q4_0.gguf\n"
                  "  llmosctl model swap qwen /srv/models/qwen2.5-0.5b-q8_0.gguf\n"
                  "  llmosctl --server unix:/run/llmosd/llmosd.sock model unload qwen");
    model->add_subcommand("list", "list the models llmosd serves")->callback([&rc, opts] {
        rc = cmd_model_list(opts());
    });
    auto* load = model->add_subcommand(
        "load", "load a GGUF model into llmosd under a name (llmosd opens PATH; a relative "
                "PATH is made absolute here)");
    load->add_option("name", names->first, "the name requests use")->required();
    load->add_option("path", names->second, "the .gguf file")->required();
    load->callback(
        [&rc, opts, names] { rc = cmd_model_load(opts(), names->first, names->second); });
    auto* unload =
        model->add_subcommand("unload", "stop serving a model (requests on it finish first)");
    unload->add_option("name", names->first, "the model")->required();
    unload->callback([&rc, opts, names] { rc = cmd_model_unload(opts(), names->first); });
    auto* swap = model->add_subcommand(
        "swap", "replace a model's file under the same name (requests in flight finish on "
                "the old one)");
    swap->add_option("name", names->first, "the model")->required();
    swap->add_option("path", names->second, "the new .gguf file")->required();
    swap->callback(
        [&rc, opts, names] { rc = cmd_model_swap(opts(), names->first, names->second); });

    auto* session = app.add_subcommand("session", "llmosd's server-side sessions: ls, rm");
    session->require_subcommand(1);
    session
        ->add_subcommand("ls", "list the sessions llmosd keeps (with API keys: the key's "
                               "tenant's, or all for an admin key)")
        ->callback([&rc, opts] { rc = cmd_session_list(opts()); });
    auto* session_rm = session->add_subcommand(
        "rm", "end a session: llmosd forgets its conversation, and the next request naming "
              "it starts afresh");
    session_rm->add_option("name", names->first, "the session")->required();
    session_rm->callback([&rc, opts, names] {
        rc = llmos::names::valid_session(names->first)
                 ? cmd_session_rm(opts(), names->first)
                 : usage("bad session name '" + names->first +
                         "' (1 to 48 characters of A-Z a-z 0-9 . _ -, not only dots)");
    });

    auto ga = std::make_shared<gen_args>();
    auto check_gen = [ga](CLI::App* cmd) {
        ga->has_seed = cmd->count("--seed") > 0;
        // (CLI::Range lets NaN through: it compares false with both ends.)
        if (cmd->count("--temperature") && !(ga->temperature >= 0 && ga->temperature <= 2)) {
            return usage("--temperature must be a number from 0 to 2");
        }
        if (!ga->session.empty() && !llmos::names::valid_session(ga->session)) {
            return usage("bad --session '" + ga->session +
                         "' (1 to 48 characters of A-Z a-z 0-9 . _ -, not only dots)");
        }
        return 0;
    };
    auto* run = app.add_subcommand(
        "run", "generate a reply to one prompt, streamed to the terminal as it comes");
    run->add_option("prompt", ga->prompt, "the prompt (- reads it from standard input)")
        ->required();
    add_gen_options(run, *ga);
    run->add_flag("--raw", ga->raw,
                  "complete the prompt as plain text (/v1/completions), without the chat "
                  "template");
    run->footer("Examples:\n"
                "  llmosctl run \"Why is the sky blue?\" --max-tokens 200\n"
                "  llmosctl run --raw \"Once upon a time\" -t 0 -v\n"
                "  llmosctl --json run - <prompt.txt");
    run->callback([&rc, opts, ga, check_gen, run] {
        rc = check_gen(run);
        if (rc == 0) {
            rc = cmd_run(opts(), *ga);
        }
    });
    auto* chat = app.add_subcommand(
        "chat", "interactive chat: one message per line from standard input, replies "
                "streamed; /quit or end of input leaves");
    add_gen_options(chat, *ga);
    chat->footer("Without --session the conversation is kept here and sent with each "
                 "message;\nwith --session llmosd keeps it (also across llmosctl and llmosd "
                 "restarts).\nExample: llmosctl chat --session alice --system \"Be brief.\"");
    chat->callback([&rc, opts, ga, check_gen, chat] {
        rc = check_gen(chat);
        if (rc == 0) {
            rc = cmd_chat(opts(), *ga);
        }
    });
}

} // namespace llmosctl
