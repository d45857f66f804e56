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
//
// A preset sets the sizes; options given with it override them.
// Exit status: 0 written, 1 failed, 2 bad usage.
#include "model_gen.hh"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <string>
#include <thread>

namespace {

using namespace llmos::mkmodel;

int run(int argc, char** argv) {
    CLI::App app{"llmos-mkmodel: write a llama-architecture GGUF test model with "
                 "deterministic random weights"};
    model_params p;
    std::string preset = "tiny", arch_name = "llama", type_name = "f32", vocab_name = "spm";
    std::string out;
    unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    // Sizes given on the command line override the preset's.
    std::map<std::string, uint32_t*> sizes = {
        {"--n-embd", &p.n_embd},       {"--n-layer", &p.n_layer}, {"--n-head", &p.n_head},
        {"--n-head-kv", &p.n_head_kv}, {"--n-ff", &p.n_ff},       {"--n-ctx", &p.n_ctx},
        {"--n-vocab", &p.n_vocab},
    };
    std::map<std::string, uint32_t> given;
    app.add_option("--preset", preset, "sizes: tiny (n_embd 64, like the testdata) or 100m")
        ->check(CLI::IsMember({"tiny", "100m"}))
        ->capture_default_str();
    app.add_option("--arch", arch_name, "architecture")
        ->check(CLI::IsMember({"llama", "qwen2"}))
        ->capture_default_str();
    app.add_option("--type", type_name, "weight type")
        ->check(CLI::IsMember({"f32", "f16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q4_k_m"}))
        ->capture_default_str();
    app.add_option("--vocab", vocab_name, "tokenizer: spm (llama) or bpe (gpt2)")
        ->check(CLI::IsMember({"spm", "bpe"}))
        ->capture_default_str();
    for (auto& [opt, ptr] : sizes) {
        app.add_option(opt, given[opt], "override the preset's value")->check(CLI::PositiveNumber);
    }
    app.add_option("--seed", p.seed, "weight seed")->capture_default_str();
    auto* rope = app.add_option("--rope-base", p.rope_base,
                                "RoPE frequency base (default 10000; qwen2 1000000)");
    auto* eps =
        app.add_option("--rms-eps", p.rms_eps, "RMSNorm epsilon (default 1e-5; qwen2 1e-6)");
    app.add_flag("--tied", p.tied, "no output.weight: the output head is the token embedding");
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
    p.arch = arch_name == "qwen2" ? model_arch::qwen2 : model_arch::llama;
    p.type = *parse_weight_type(type_name);
    p.vocab = vocab_name == "bpe" ? vocab_style::bpe : vocab_style::spm;
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
                out.c_str(), arch_name.c_str(), type_name.c_str(), vocab_name.c_str(),
                static_cast<double>(n_params(p)) / 1e6, p.n_embd, p.n_layer, p.n_head, p.n_head_kv,
                p.n_ff, p.n_vocab, p.tied ? " (tied)" : "",
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
