// SPDX-License-Identifier: MIT
#include "model_gen.hh"

#include "rng.hh"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <llmos/engine/quant.hh>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

namespace llmos::mkmodel {

namespace {

using engine::ggml_type;

constexpr double weight_std = 0.02;

struct type_name {
    weight_type type;
    std::string_view name;
};

constexpr type_name type_names[] = {
    {weight_type::f32, "f32"},   {weight_type::f16, "f16"},   {weight_type::bf16, "bf16"},
    {weight_type::q8_0, "q8_0"}, {weight_type::q4_0, "q4_0"}, {weight_type::q4_1, "q4_1"},
    {weight_type::q5_0, "q5_0"}, {weight_type::q5_1, "q5_1"}, {weight_type::q4_k, "q4_k"},
    {weight_type::q5_k, "q5_k"}, {weight_type::q6_k, "q6_k"}, {weight_type::q4_k_m, "q4_k_m"},
};

constexpr std::string_view presets[] = {"tiny",       "100m",        "tinyllama",
                                        "qwen25-05b", "smollm-135m", "smollm-360m"};

ggml_type base_type(weight_type t) {
    switch (t) {
    case weight_type::f32:
        return ggml_type::f32;
    case weight_type::f16:
        return ggml_type::f16;
    case weight_type::bf16:
        return ggml_type::bf16;
    case weight_type::q8_0:
        return ggml_type::q8_0;
    case weight_type::q4_0:
        return ggml_type::q4_0;
    case weight_type::q4_1:
        return ggml_type::q4_1;
    case weight_type::q5_0:
        return ggml_type::q5_0;
    case weight_type::q5_1:
        return ggml_type::q5_1;
    case weight_type::q4_k:
    case weight_type::q4_k_m:
        return ggml_type::q4_k;
    case weight_type::q5_k:
        return ggml_type::q5_k;
    case weight_type::q6_k:
        return ggml_type::q6_k;
    }
    return ggml_type::f32;
}

// `n` values of the tensor `name`: N(mean, std) from its own stream.
std::vector<float> random_values(uint64_t seed, std::string_view name, uint64_t n, double mean,
                                 double std) {
    uint64_t s = seed ^ fnv1a64(name);
    rng r(splitmix64(s));
    std::vector<float> v(n);
    for (auto& x : v) {
        x = static_cast<float>(mean + std * r.normal());
    }
    return v;
}

// Encodes `values` (rows of `row` elements) as `t`, rows split over threads.
std::vector<std::byte> encode(ggml_type t, const std::vector<float>& values, uint64_t row,
                              unsigned threads) {
    const uint64_t rows = values.size() / row;
    const uint64_t rb = *engine::row_bytes(t, row);
    std::vector<std::byte> out(rows * rb);
    if (t == ggml_type::f32) {
        std::memcpy(out.data(), values.data(), out.size());
        return out;
    }
    // Rows are independent: the bytes do not depend on the thread count.
    std::atomic<bool> failed = false;
    auto work = [&](uint64_t begin, uint64_t end) {
        for (uint64_t i = begin; i < end; ++i) {
            auto st = engine::quantize_row(t, values.data() + i * row, out.data() + i * rb,
                                           static_cast<int64_t>(row));
            if (st != engine::quant_status::ok) {
                failed = true;
            }
        }
    };
    threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(rows / 64 + 1)));
    {
        std::vector<std::jthread> pool;
        for (unsigned k = 1; k < threads; ++k) {
            pool.emplace_back(work, rows * k / threads, rows * (k + 1) / threads);
        }
        work(0, rows / threads);
    }
    if (failed) {
        throw std::logic_error("mkmodel: quantize_row failed");
    }
    return out;
}

} // namespace

std::string_view name(model_arch a) {
    return a == model_arch::qwen2 ? "qwen2" : "llama";
}

std::string_view name(weight_type t) {
    for (const auto& tn : type_names) {
        if (tn.type == t) {
            return tn.name;
        }
    }
    return "?";
}

std::optional<weight_type> parse_weight_type(std::string_view s) {
    for (const auto& tn : type_names) {
        if (tn.name == s) {
            return tn.type;
        }
    }
    return std::nullopt;
}

std::span<const std::string_view> preset_names() {
    return presets;
}

bool apply_preset(model_params& p, std::string_view preset) {
    struct shape {
        std::string_view name;
        model_arch arch;
        vocab_style vocab;
        bool tied;
        uint32_t n_embd, n_head, n_head_kv, n_ff, n_ctx, n_vocab;
    };
    // Sizes from each model's config.json (hidden_size, num_attention_heads,
    // num_key_value_heads, intermediate_size, max_position_embeddings,
    // vocab_size, tie_word_embeddings).
    static constexpr shape popular[] = {
        {"tinyllama", model_arch::llama, vocab_style::spm, false, 2048, 32, 4, 5632, 2048, 32000},
        {"qwen25-05b", model_arch::qwen2, vocab_style::bpe, true, 896, 14, 2, 4864, 32768, 151936},
        {"smollm-135m", model_arch::llama, vocab_style::bpe, true, 576, 9, 3, 1536, 2048, 49152},
        {"smollm-360m", model_arch::llama, vocab_style::bpe, true, 960, 15, 5, 2560, 2048, 49152},
    };
    for (const shape& s : popular) {
        if (s.name == preset) {
            p.arch = s.arch;
            p.vocab = s.vocab;
            p.tied = s.tied;
            p.n_embd = s.n_embd;
            p.n_layer = preset_layers;
            p.n_head = s.n_head;
            p.n_head_kv = s.n_head_kv;
            p.n_ff = s.n_ff;
            p.n_ctx = s.n_ctx;
            p.n_vocab = s.n_vocab;
            return true;
        }
    }
    if (preset == "tiny") {
        p.n_embd = 64;
        p.n_layer = 2;
        p.n_head = 4;
        p.n_head_kv = 2;
        p.n_ff = 176;
        p.n_ctx = 256;
        p.n_vocab = 1024;
        return true;
    }
    if (preset == "100m") {
        p.n_embd = 768;
        p.n_layer = 12;
        p.n_head = 12;
        p.n_head_kv = 4;
        p.n_ff = 2048;
        p.n_ctx = 2048;
        p.n_vocab = 32000;
        return true;
    }
    return false;
}

std::string validate(const model_params& p) {
    if (p.n_embd == 0 || p.n_layer == 0 || p.n_head == 0 || p.n_head_kv == 0 || p.n_ff == 0 ||
        p.n_ctx == 0) {
        return "sizes must be positive";
    }
    if (p.n_embd % p.n_head != 0 || (p.n_embd / p.n_head) % 2 != 0) {
        return "n_embd must be n_head times an even head size";
    }
    if (p.n_head % p.n_head_kv != 0) {
        return "n_head must be a multiple of n_head_kv";
    }
    if (p.n_vocab < min_vocab(p.vocab, name(p.arch))) {
        return "n_vocab must be at least " + std::to_string(min_vocab(p.vocab, name(p.arch))) +
               " for this vocab";
    }
    if (!std::isfinite(p.rope_base) || !(p.rope_base > 0.0f) || !std::isfinite(p.rms_eps) ||
        !(p.rms_eps > 0.0f)) {
        return "rope base and rms eps must be finite and positive";
    }
    return "";
}

bool use_more_bits(uint32_t layer, uint32_t n_layer) {
    return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

ggml_type wanted_type(const model_params& p, std::string_view tensor, uint32_t layer) {
    if (p.type != weight_type::q4_k_m) {
        return base_type(p.type);
    }
    auto ends = [&](std::string_view s) {
        return tensor.size() >= s.size() && tensor.substr(tensor.size() - s.size()) == s;
    };
    if (tensor == "output.weight" || (p.tied && tensor == "token_embd.weight")) {
        return ggml_type::q6_k;
    }
    if ((ends("attn_v.weight") || ends("ffn_down.weight")) && use_more_bits(layer, p.n_layer)) {
        return ggml_type::q6_k;
    }
    return ggml_type::q4_k;
}

ggml_type fallback_type(ggml_type t, uint64_t row, bool head) {
    if (engine::row_bytes(t, row)) {
        return t;
    }
    ggml_type f = ggml_type::f16;
    if (head) {
        f = ggml_type::q8_0;
    } else if (t == ggml_type::q4_k) {
        f = ggml_type::q5_0;
    } else if (t == ggml_type::q5_k) {
        f = ggml_type::q5_1;
    } else if (t == ggml_type::q6_k) {
        f = ggml_type::q8_0;
    }
    return engine::row_bytes(f, row) ? f : ggml_type::f16;
}

uint32_t file_type(weight_type t) {
    switch (t) {
    case weight_type::f32:
        return 0; // ALL_F32
    case weight_type::f16:
        return 1; // MOSTLY_F16
    case weight_type::bf16:
        return 32; // MOSTLY_BF16
    case weight_type::q4_0:
        return 2; // MOSTLY_Q4_0
    case weight_type::q4_1:
        return 3; // MOSTLY_Q4_1
    case weight_type::q8_0:
        return 7; // MOSTLY_Q8_0
    case weight_type::q5_0:
        return 8; // MOSTLY_Q5_0
    case weight_type::q5_1:
        return 9; // MOSTLY_Q5_1
    case weight_type::q4_k:
        return 14; // MOSTLY_Q4_K_S (llama.cpp's id for Q4_K throughout)
    case weight_type::q4_k_m:
        return 15; // MOSTLY_Q4_K_M
    case weight_type::q5_k:
        return 16; // MOSTLY_Q5_K_S
    case weight_type::q6_k:
        return 18; // MOSTLY_Q6_K
    }
    return 0;
}

uint64_t n_params(const model_params& p) {
    const uint64_t e = p.n_embd, kv = e / p.n_head * p.n_head_kv, ff = p.n_ff;
    uint64_t per_layer = 2 * e + 2 * e * e + 2 * e * kv + 3 * e * ff;
    if (p.arch == model_arch::qwen2) {
        per_layer += e + 2 * kv;
    }
    return p.n_layer * per_layer + e + (p.tied ? 1 : 2) * e * p.n_vocab;
}

void build_model(const model_params& p, engine::gguf_writer& w,
                 const std::function<void(const std::string&)>& note, unsigned threads) {
    if (auto why = validate(p); !why.empty()) {
        throw std::invalid_argument(why);
    }
    const std::string a(name(p.arch));
    const uint32_t head_dim = p.n_embd / p.n_head;
    const uint32_t n_embd_kv = head_dim * p.n_head_kv;
    const bool quantized = engine::info(base_type(p.type))->block_elems > 1;

    w.set("general.architecture", a);
    w.set("general.name", "llmos-mkmodel " + a + " " + std::string(name(p.type)) + " seed " +
                              std::to_string(p.seed));
    w.set(a + ".context_length", p.n_ctx);
    w.set(a + ".embedding_length", p.n_embd);
    w.set(a + ".block_count", p.n_layer);
    w.set(a + ".feed_forward_length", p.n_ff);
    w.set(a + ".rope.dimension_count", head_dim);
    w.set(a + ".attention.head_count", p.n_head);
    w.set(a + ".attention.head_count_kv", p.n_head_kv);
    w.set(a + ".attention.layer_norm_rms_epsilon", p.rms_eps);
    w.set(a + ".rope.freq_base", p.rope_base);
    w.set(a + ".vocab_size", p.n_vocab);
    w.set("general.file_type", file_type(p.type));
    if (quantized) {
        w.set("general.quantization_version", 2u);
    }
    add_vocab(w, make_vocab(p.vocab, a, p.n_vocab));

    auto matrix = [&](const std::string& t, uint64_t row, uint64_t rows, uint32_t layer) {
        const ggml_type want = wanted_type(p, t, layer);
        const bool head = t == "output.weight" || (p.tied && t == "token_embd.weight");
        const ggml_type type = fallback_type(want, row, head);
        if (type != want && note) {
            note(t + ": rows of " + std::to_string(row) + " are not whole " +
                 std::string(engine::info(want)->name) + " blocks, using " +
                 std::string(engine::info(type)->name));
        }
        auto values = random_values(p.seed, t, row * rows, 0.0, weight_std);
        w.add_tensor(t, type, {row, rows}, encode(type, values, row, threads));
    };
    auto vector = [&](const std::string& t, uint64_t n, double mean) {
        auto values = random_values(p.seed, t, n, mean, weight_std);
        w.add_tensor(t, ggml_type::f32, {n}, std::as_bytes(std::span(values)));
    };

    matrix("token_embd.weight", p.n_embd, p.n_vocab, 0);
    for (uint32_t il = 0; il < p.n_layer; ++il) {
        const std::string b = "blk." + std::to_string(il) + ".";
        vector(b + "attn_norm.weight", p.n_embd, 1.0);
        matrix(b + "attn_q.weight", p.n_embd, p.n_embd, il);
        if (p.arch == model_arch::qwen2) {
            vector(b + "attn_q.bias", p.n_embd, 0.0);
        }
        matrix(b + "attn_k.weight", p.n_embd, n_embd_kv, il);
        if (p.arch == model_arch::qwen2) {
            vector(b + "attn_k.bias", n_embd_kv, 0.0);
        }
        matrix(b + "attn_v.weight", p.n_embd, n_embd_kv, il);
        if (p.arch == model_arch::qwen2) {
            vector(b + "attn_v.bias", n_embd_kv, 0.0);
        }
        matrix(b + "attn_output.weight", p.n_embd, p.n_embd, il);
        vector(b + "ffn_norm.weight", p.n_embd, 1.0);
        matrix(b + "ffn_gate.weight", p.n_embd, p.n_ff, il);
        matrix(b + "ffn_up.weight", p.n_embd, p.n_ff, il);
        matrix(b + "ffn_down.weight", p.n_ff, p.n_embd, il);
    }
    vector("output_norm.weight", p.n_embd, 1.0);
    if (!p.tied) {
        matrix("output.weight", p.n_embd, p.n_vocab, 0);
    }
}

} // namespace llmos::mkmodel
