// SPDX-License-Identifier: MIT
//
// llmos-mkmodel: writes small llama-architecture GGUF models with
// deterministic random weights and a generated vocabulary, for testing the
// engine (see model_gen.hh for the weights and vocab_gen.hh for the
// tokenizer). The same arguments always give a byte-identical file;
// tests/engine/reference/reference.py computes what the model should
// output.
//
//   llmos-mkmodel --preset tiny --type q8_0 -o tiny-q8_0.gguf
//   llmos-mkmodel --preset 100m --arch qwen2 --vocab bpe --type q4_k_m -o m.gguf
//   llmos-mkmodel --preset qwen25-05b --n-vocab 4096 --type q4_k_m -o q.gguf
//
// A preset sets the sizes (the popular-model shapes also the architecture,
// vocabulary style and tying, with 2 layers); options given with it
// override them. Matrices whose rows are not whole blocks of their type
// fall back as llama.cpp's quantizer does, one line on stderr each.
// Exit status: 0 written, 1 failed, 2 bad usage.
#include "model_gen.hh"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace llmos::mkmodel;

int run(int argc, char** argv) {
    CLI::App app{"llmos-mkmodel: write a llama-architecture GGUF test model with "
                 "deterministic random weights"};
    model_params p;
    std::string preset = "tiny", arch_name, type_name = "f32", vocab_name;
    std::string out;
    unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    // Sizes given on the command line override the preset's.
    std::map<std::string, uint32_t*> sizes = {
        {"--n-embd", &p.n_embd},       {"--n-layer", &p.n_layer}, {"--n-head", &p.n_head},
        {"--n-head-kv", &p.n_head_kv}, {"--n-ff", &p.n_ff},       {"--n-ctx", &p.n_ctx},
        {"--n-vocab", &p.n_vocab},
    };
    std::map<std::string, uint32_t> given;
    std::vector<std::string> preset_list(preset_names().begin(), preset_names().end());
    app.add_option("--preset", preset,
                   "sizes: tiny (n_embd 64, like the testdata), 100m, or the shape of "
                   "TinyLlama-1.1B, Qwen2.5-0.5B, SmolLM-135M or SmolLM-360M with " +
                       std::to_string(preset_layers) + " layers (see model_gen.hh)")
        ->check(CLI::IsMember(preset_list))
        ->capture_default_str();
    app.add_option("--arch", arch_name, "architecture (default: the preset's, else llama)")
        ->check(CLI::IsMember({"llama", "qwen2"}));
    std::vector<std::string> types;
    for (auto t : {weight_type::f32, weight_type::f16, weight_type::bf16, weight_type::q8_0,
                   weight_type::q4_0, weight_type::q4_1, weight_type::q5_0, weight_type::q5_1,
                   weight_type::q4_k, weight_type::q5_k, weight_type::q6_k, weight_type::q4_k_m}) {
        types.emplace_back(name(t));
    }
    app.add_option("--type", type_name, "weight type")
        ->check(CLI::IsMember(types))
        ->capture_default_str();
    app.add_option("--vocab", vocab_name,
                   "tokenizer: spm (llama) or bpe (gpt2) (default: the preset's, else spm)")
        ->check(CLI::IsMember({"spm", "bpe"}));
    for (auto& [opt, ptr] : sizes) {
        app.add_option(opt, given[opt], "override the preset's value")->check(CLI::PositiveNumber);
    }
    app.add_option("--seed", p.seed, "weight seed")->capture_default_str();
    auto* rope = app.add_option("--rope-base", p.rope_base,
                                "RoPE frequency base (default 10000; qwen2 1000000)");
    auto* eps =
        app.add_option("--rms-eps", p.rms_eps, "RMSNorm epsilon (default 1e-5; qwen2 1e-6)");
    bool tied = false;
    auto* tie = app.add_flag("--tied,!--untied", tied,
                             "no output.weight: the output head is the token embedding "
                             "(default: the preset's, else untied)");
    app.add_option("--threads", threads, "threads that quantize")->capture_default_str();
    app.add_option("-o,--output", out, "the GGUF file to write")->required();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }

    apply_preset(p, preset);
    for (auto& [opt, ptr] : sizes) {
        if (app.count(opt) > 0) {
            *ptr = given[opt];
        }
    }
    if (!arch_name.empty()) {
        p.arch = arch_name == "qwen2" ? model_arch::qwen2 : model_arch::llama;
    }
    if (!vocab_name.empty()) {
        p.vocab = vocab_name == "bpe" ? vocab_style::bpe : vocab_style::spm;
    }
    if (tie->count() > 0) {
        p.tied = tied;
    }
    p.type = *parse_weight_type(type_name);
    if (p.arch == model_arch::qwen2) {
        if (rope->count() == 0) {
            p.rope_base = 1000000.0f;
        }
        if (eps->count() == 0) {
            p.rms_eps = 1e-6f;
        }
    }
    if (auto why = validate(p); !why.empty()) {
        std::fprintf(stderr, "llmos-mkmodel: %s\n", why.c_str());
        return 2;
    }

    llmos::engine::gguf_writer w;
    build_model(
        p, w,
        [](const std::string& line) { std::fprintf(stderr, "llmos-mkmodel: %s\n", line.c_str()); },
        threads);
    w.write(out);
    std::printf("%s: %s %s %s, %.1fM parameters, n_embd %u, %u layers, %u/%u heads, ff %u, "
                "vocab %u%s, %.1f MiB\n",
                out.c_str(), std::string(name(p.arch)).c_str(), type_name.c_str(),
                p.vocab == vocab_style::bpe ? "bpe" : "spm", static_cast<double>(n_params(p)) / 1e6,
                p.n_embd, p.n_layer, p.n_head, p.n_head_kv, p.n_ff, p.n_vocab,
                p.tied ? " (tied)" : "",
                static_cast<double>(std::filesystem::file_size(out)) / (1 << 20));
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmos-mkmodel: %s\n", e.what());
        return 1;
    }
}
