// SPDX-License-Identifier: MIT
//
// The engine's logits against the independent NumPy reference
// (tests/engine/reference/reference.py: its own GGUF reader and
// dequantizers, float64 math) on generated models of every supported
// weight type, llama (SentencePiece vocab) and qwen2 (byte-level BPE vocab),
// and on the shapes of popular models (with the fallback types their
// K-quant files hold):
// the prompt's positions and 32 decode steps, unbatched and batched with
// another sequence. The engine is fed the reference's greedy tokens, so a
// near-tie that the two break differently cannot make them drift apart.
// Under ThreadSanitizer, which finds only races and slows the engine the
// most, the first 12 decode steps are checked: the engine's threads split
// each step the same way, and 8 + 12 positions take the cache past its
// first 16-token block, where attention's work changes.
//
// Tolerances are next to the test.
#include "../support/generated_model.hh"
#include "../support/paths.hh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <llmos/engine/context.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace llmos::engine;

namespace {

struct combo {
    const char* type;
    const char* arch;
    const char* vocab;
    /// A popular model's shape: its mkmodel preset (arch and vocab above
    /// must be the preset's) and the arguments that cut it down; null: the
    /// small default shape.
    const char* preset = nullptr;
    const char* extra = "";
    /// Tensor types the file must hold (the fallbacks it is there for),
    /// separated by spaces.
    const char* holds = "";
};

std::string name_of(const ::testing::TestParamInfo<combo>& i) {
    std::string n = i.param.preset ? i.param.preset : i.param.arch;
    for (char& c : n) {
        c = c == '-' ? '_' : c;
    }
    return n + "_" + i.param.type;
}

/// The decode steps the reference computes, and those this build checks.
constexpr size_t reference_steps = 32;
#if defined(__SANITIZE_THREAD__)
constexpr size_t checked_steps = 12;
#else
constexpr size_t checked_steps = reference_steps;
#endif

/// The small default shape: 256 wide, every type's rows whole blocks.
constexpr const char* default_shape =
    "--preset tiny --n-embd 256 --n-ff 512 --n-head 4 --n-head-kv 2";

// A python3 with NumPy (Debian's, which `make deps` installs, before
// whatever else is first on PATH), or "".
const std::string& python() {
    static const std::string py = [] {
        std::vector<std::string> c;
        if (const char* e = std::getenv("LLMOS_PYTHON")) {
            c.push_back(e);
        }
        c.insert(c.end(), {"/usr/bin/python3", "python3"});
        for (auto& p : c) {
            if (std::system((p + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0) {
                return p;
            }
        }
        return std::string();
    }();
    return py;
}

class reference : public ::testing::TestWithParam<combo> {
protected:
    std::string _model;
    std::vector<int32_t> _prompt{1, 17, 42, 300, 7, 99, 511, 256};
    std::vector<int32_t> _greedy;
    std::vector<std::vector<float>> _ref; // prompt positions, then decode steps

    void SetUp() override {
        if (python().empty()) {
            GTEST_SKIP() << "no python3 with NumPy (make deps installs python3-numpy)";
        }
        const combo& c = GetParam();
        _model = llmos::testing::model_workdir() + "/" + name_of({c, 0}) + ".gguf";
        const std::string shape =
            c.preset ? std::string("--preset ") + c.preset + " " + c.extra : default_shape;
        std::string cmd = std::string(llmos::testing::mkmodel_bin) + " " + shape + " --arch " +
                          c.arch + " --vocab " + c.vocab + " --type " + c.type + " -o " + _model +
                          " >/dev/null 2>&1";
        ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
        std::string toks;
        for (int32_t t : _prompt) {
            toks += (toks.empty() ? "" : ",") + std::to_string(t);
        }
        std::string out = _model + ".logits", err = _model + ".greedy";
        cmd = python() + " " + std::string(llmos::testing::reference_dir) + "/reference.py " +
              _model + " --tokens " + toks + " --decode " + std::to_string(reference_steps) +
              " --out " + out + " >" + err + " 2>&1";
        ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
        std::ifstream lf(out);
        std::string line;
        while (std::getline(lf, line)) {
            std::istringstream s(line);
            std::vector<float> row;
            float f;
            while (s >> f) {
                row.push_back(f);
            }
            _ref.push_back(std::move(row));
        }
        std::ifstream gf(err);
        while (std::getline(gf, line)) {
            if (line.starts_with("greedy:")) {
                std::istringstream s(line.substr(7));
                int32_t t;
                while (s >> t) {
                    _greedy.push_back(t);
                }
            }
        }
        ASSERT_EQ(_greedy.size(), reference_steps);
        ASSERT_EQ(_ref.size(), _prompt.size() + reference_steps);
    }

    // Worst difference of `got` against reference row `i`, as the test's
    // tolerance measures it.
    double diff(const std::vector<float>& got, size_t i, bool quantized) {
        const auto& want = _ref[i];
        EXPECT_EQ(got.size(), want.size());
        double worst = 0, err2 = 0, ref2 = 0;
        for (size_t k = 0; k < std::min(got.size(), want.size()); ++k) {
            double d = double(got[k]) - double(want[k]);
            worst = std::max(worst, std::fabs(d));
            err2 += d * d;
            ref2 += double(want[k]) * double(want[k]);
        }
        return quantized ? std::sqrt(err2 / ref2) : worst;
    }
};

} // namespace

// Three runs: with exact activations (the model's math and the weight
// formats, against float64), then the production path (activations
// quantized to 8 bits for quantized weights) alone and batched.
TEST_P(reference, prefill_and_decode_steps_match_unbatched_and_batched) {
    auto file = gguf_file::open(_model);
    std::istringstream holds(GetParam().holds);
    for (std::string type; holds >> type;) {
        bool found = false;
        for (const auto& t : file.tensors()) {
            found = found || info(t.type)->name == type;
        }
        EXPECT_TRUE(found) << "no " << type << " tensor in " << _model;
    }
    auto m = model::load(file);
    const bool f32 = std::string(GetParam().type) == "f32";
    const bool quantized =
        !f32 && std::string(GetParam().type) != "f16" && std::string(GetParam().type) != "bf16";
    const uint32_t V = m.params().n_vocab;
    struct mode {
        const char* name;
        bool exact, batched;
        kv_type cache = kv_type::f32;
        act_precision act = act_precision::int8;
    };
    for (mode md : {mode{"exact activations", true, false}, mode{"unbatched", false, false},
                    mode{"batched", false, true},
                    mode{"two-level 8-bit activations, batched", false, true, kv_type::f32,
                         act_precision::int8x2},
                    mode{"F16 KV cache, exact activations", true, true, kv_type::f16}}) {
        SCOPED_TRACE(md.name);
        kv_options ko{.type = md.cache, .block_tokens = 16, .max_tokens = 128};
        context ctx(m, {.n_threads = 2, .exact_activations = md.exact, .activations = md.act});
        // F32 weights: max abs 1e-4. Others, relative to the logits' norm:
        // 1e-4 with exact activations; 8-bit activations round each
        // matmul's input by ~0.5%, which these random models compound to
        // 1-2.5% at the logits (llama.cpp's kernels do the same): 3e-2,
        // and the top token must agree at nearly every position.
        // An F16 cache rounds K and V to 11 bits (relative 5e-4 each;
        // measured up to 4e-4 at the logits): 2e-3 relative, for every type
        // (the attention kernel for F16 caches is its own code).
        const bool relative = !f32 || md.cache == kv_type::f16;
        // Two-level activations (int8x2) leave ~1e-4 of the rounding
        // (measured up to 8e-5): 1e-3, a tenth of the bound for quantized
        // models.
        double tol = f32 ? 1e-4 : (md.exact || !quantized ? 1e-4 : 3e-2);
        if (quantized && md.act == act_precision::int8x2) {
            tol = 1e-3;
        }
        if (md.cache == kv_type::f16) {
            tol = 2e-3;
        }
        kv_memory mem(kv_cache::bytes_for(m.params(), ko));
        kv_memory other_mem(kv_cache::bytes_for(m.params(), ko));
        auto kv = kv_cache::open(mem.span(), m, ko);
        auto other = kv_cache::open(other_mem.span(), m, ko);
        std::vector<float> all(_prompt.size() * V), last(V), other_logits(V);
        std::vector<int32_t> other_toks{1, 5, 9, 33, 2};
        auto run = [&](std::span<const int32_t> toks, float* all_out, float* last_out) {
            std::vector<batch_entry> b{
                {.kv = &kv, .tokens = toks, .logits = last_out, .all_logits = all_out}};
            if (md.batched) {
                // Another sequence in the same steps: prefill, then decode.
                b.push_back({.kv = &other, .tokens = other_toks, .logits = other_logits.data()});
            }
            ASSERT_EQ(ctx.step(b), step_status::ok);
            if (md.batched) {
                other_toks = {static_cast<int32_t>(
                    std::max_element(other_logits.begin(), other_logits.end()) -
                    other_logits.begin())};
            }
        };
        double worst = 0;
        size_t rows = 0, same_top = 0;
        auto check = [&](const std::vector<float>& got, size_t i) {
            worst = std::max(worst, diff(got, i, relative));
            const auto& want = _ref[i];
            same_top += std::max_element(got.begin(), got.end()) - got.begin() ==
                        std::max_element(want.begin(), want.end()) - want.begin();
            ++rows;
        };
        run(_prompt, all.data(), nullptr);
        for (size_t i = 0; i < _prompt.size(); ++i) {
            check(std::vector<float>(all.begin() + i * V, all.begin() + (i + 1) * V), i);
        }
        for (size_t s = 0; s < checked_steps; ++s) {
            int32_t t = _greedy[s];
            run({&t, 1}, nullptr, last.data());
            check(last, _prompt.size() + s);
        }
        EXPECT_LE(worst, tol);
        EXPECT_GE(same_top * 10, rows * 9) << same_top << " of " << rows << " top tokens agree";
        std::printf("    %s, %s: worst %s difference %.3g, top token agrees %zu/%zu\n",
                    name_of({GetParam(), 0}).c_str(), md.name, relative ? "relative" : "absolute",
                    worst, same_top, rows);
    }
}

INSTANTIATE_TEST_SUITE_P(
    types, reference,
    ::testing::Values(combo{"f32", "llama", "spm"}, combo{"f16", "llama", "spm"},
                      combo{"q8_0", "llama", "spm"}, combo{"q4_0", "llama", "spm"},
                      combo{"q4_k", "llama", "spm"}, combo{"q5_k", "llama", "spm"},
                      combo{"q6_k", "llama", "spm"}, combo{"q4_k_m", "llama", "spm"},
                      combo{"f32", "qwen2", "bpe"}, combo{"f16", "qwen2", "bpe"},
                      combo{"q8_0", "qwen2", "bpe"}, combo{"q4_0", "qwen2", "bpe"},
                      combo{"q4_k_m", "qwen2", "bpe"}, combo{"q6_k", "qwen2", "bpe"},
                      combo{"q4_1", "llama", "spm"}, combo{"q5_0", "llama", "spm"},
                      combo{"q5_1", "llama", "spm"}, combo{"q5_1", "qwen2", "bpe"},
                      combo{"bf16", "llama", "spm"}, combo{"bf16", "qwen2", "bpe"}),
    name_of);

// The shapes of popular models whose rows are not whole K-quant blocks
// (Qwen2.5-0.5B: 896, SmolLM-135M: 576), so their K-quant files hold the
// fallback types, and one 2048 wide (TinyLlama-1.1B). One or two layers
// and a 4096-token vocabulary keep them quick.
const combo shapes[] = {
    {"q4_k_m", "qwen2", "bpe", "qwen25-05b", "--n-layer 1 --n-vocab 4096", "Q5_0 Q8_0 Q6_K"},
    {"q8_0", "llama", "bpe", "smollm-135m", "--n-layer 2 --n-vocab 4096", "Q8_0"},
    {"q4_k_m", "llama", "bpe", "smollm-135m", "--n-layer 2 --n-vocab 4096", "Q5_0 Q8_0 Q4_K Q6_K"},
    {"q5_k", "llama", "bpe", "smollm-135m", "--n-layer 1 --n-vocab 4096", "Q5_1 Q8_0 Q5_K"},
    {"q4_0", "llama", "spm", "tinyllama", "--n-layer 1 --n-vocab 4096", "Q4_0"},
};

INSTANTIATE_TEST_SUITE_P(shapes, reference, ::testing::ValuesIn(shapes), name_of);
