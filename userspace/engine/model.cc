// SPDX-License-Identifier: MIT
#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>
#include <llmos/engine/model.hh>
#include <llmos/engine/quant.hh>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

namespace llmos::engine {

namespace {

std::string fmt_dims(const gguf_tensor& t) {
    std::string s = "[";
    for (uint32_t i = 0; i < t.n_dims; ++i) {
        s += (i ? ", " : "") + std::to_string(t.ne[i]);
    }
    return s + "]";
}

std::string supported_types() {
    std::string s;
    for (auto t : {ggml_type::f32, ggml_type::f16, ggml_type::bf16, ggml_type::q8_0,
                   ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1,
                   ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k}) {
        s += (s.empty() ? "" : ", ") + std::string(info(t)->name);
    }
    return s;
}

class loader {
public:
    const gguf_file& f;
    std::string arch;

    const gguf_tensor& tensor(const std::string& name,
                              std::initializer_list<uint64_t> shape) const {
        const gguf_tensor* t = f.find_tensor(name);
        if (!t) {
            throw model_error("model: tensor '" + name + "' is missing");
        }
        bool ok = t->n_dims == shape.size();
        size_t i = 0;
        for (uint64_t d : shape) {
            ok = ok && t->ne[i++] == d;
        }
        if (!ok) {
            std::string want = "[";
            i = 0;
            for (uint64_t d : shape) {
                want += (i++ ? ", " : "") + std::to_string(d);
            }
            throw model_error("model: tensor '" + name + "' has shape " + fmt_dims(*t) +
                              ", expected " + want + "]");
        }
        return *t;
    }
    std::span<const float> f32(const std::string& name, uint64_t n) const {
        const gguf_tensor& t = tensor(name, {n});
        if (t.type != ggml_type::f32) {
            throw model_error("model: tensor '" + name + "' is " + std::string(info(t.type)->name) +
                              ", expected F32");
        }
        aligned(t, name, alignof(float));
        return {reinterpret_cast<const float*>(t.data.data()), n};
    }
    std::span<const float> f32_opt(const std::string& name, uint64_t n) const {
        return f.find_tensor(name) ? f32(name, n) : std::span<const float>{};
    }
    weight_view matrix(const std::string& name, uint64_t cols, uint64_t rows) const {
        const gguf_tensor& t = tensor(name, {cols, rows});
        auto ti = info(t.type);
        if (!ti || !ti->supported) {
            throw model_error(
                "model: tensor '" + name + "' is " +
                std::string(ti ? ti->name : "of an unknown type") +
                ", which this engine does not compute with (supported: " + supported_types() + ")");
        }
        aligned(t, name, t.type == ggml_type::f32 ? 4 : 2); // what the kernels read by
        return {t.type, t.data.data(), static_cast<int64_t>(rows), static_cast<int64_t>(cols), 0};
    }
    // The file's alignment (general.alignment) may be smaller than what
    // the kernels read tensors by.
    static void aligned(const gguf_tensor& t, const std::string& name, size_t align) {
        if (reinterpret_cast<uintptr_t>(t.data.data()) % align) {
            throw model_error("model: tensor '" + name + "' is not " + std::to_string(align) +
                              "-byte aligned in the file (general.alignment too small)");
        }
    }
    uint32_t u32(const std::string& key) const {
        auto v = f.find_u32(arch + "." + key);
        if (!v) {
            throw model_error("model: metadata '" + arch + "." + key + "' is missing");
        }
        return *v;
    }
};

uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

} // namespace

model model::load(const gguf_file& f, simd_level kernels) {
    model m;
    auto arch = f.find_string("general.architecture");
    if (!arch) {
        throw model_error("model: general.architecture is missing: not a model file?");
    }
    loader l{f, std::string(*arch)};
    model_params& p = m._p;
    p.arch_name = l.arch;
    if (l.arch == "llama") {
        p.arch = model_arch::llama;
    } else if (l.arch == "qwen2") {
        p.arch = model_arch::qwen2;
        p.neox_rope = true;
    } else {
        throw model_error("model: architecture " + quoted(l.arch) +
                          " is not supported (supported: llama, qwen2)");
    }
    p.n_embd = l.u32("embedding_length");
    p.n_layer = l.u32("block_count");
    p.n_head = l.u32("attention.head_count");
    p.n_head_kv = f.find_u32(l.arch + ".attention.head_count_kv").value_or(p.n_head);
    p.n_ff = l.u32("feed_forward_length");
    p.n_ctx_train = l.u32("context_length");
    if (!p.n_embd || !p.n_layer || !p.n_head || !p.n_head_kv || !p.n_ff || p.n_embd % p.n_head ||
        p.n_head % p.n_head_kv) {
        throw model_error("model: inconsistent sizes: embedding " + std::to_string(p.n_embd) +
                          ", heads " + std::to_string(p.n_head) + ", kv heads " +
                          std::to_string(p.n_head_kv) + ", layers " + std::to_string(p.n_layer) +
                          ", ffn " + std::to_string(p.n_ff));
    }
    p.head_dim = p.n_embd / p.n_head;
    // A head of another size than embedding / heads (Mistral Nemo's 128
    // of 5120 / 32): its attention weights have other shapes.
    for (const char* key : {".attention.key_length", ".attention.value_length"}) {
        if (auto len = f.find_u32(l.arch + key); len && *len != p.head_dim) {
            throw model_error("model: " + l.arch + key + " is " + std::to_string(*len) +
                              ": heads of another size than embedding / heads (" +
                              std::to_string(p.n_embd) + " / " + std::to_string(p.n_head) + " = " +
                              std::to_string(p.head_dim) + ") are not supported");
        }
    }
    p.n_rot = f.find_u32(l.arch + ".rope.dimension_count").value_or(p.head_dim);
    if (p.n_rot > p.head_dim || p.n_rot % 2) {
        throw model_error("model: rope.dimension_count " + std::to_string(p.n_rot) +
                          " does not fit a head of " + std::to_string(p.head_dim));
    }
    p.rope_base = f.find_f32(l.arch + ".rope.freq_base").value_or(10000.0f);
    p.rms_eps = f.find_f32(l.arch + ".attention.layer_norm_rms_epsilon").value_or(1e-5f);
    if (!std::isfinite(p.rope_base) || p.rope_base <= 0 || !std::isfinite(p.rms_eps) ||
        p.rms_eps <= 0) {
        throw model_error("model: rope.freq_base " + std::to_string(p.rope_base) +
                          " and attention.layer_norm_rms_epsilon " + std::to_string(p.rms_eps) +
                          " must be finite and positive");
    }
    // Position scaling: rope.scaling.factor (or the older key
    // rope.scale_linear), linear unless rope.scaling.type says otherwise:
    // a factor without a type is linear, as other GGUF readers take it.
    {
        const auto factor_at = f.find_f32(l.arch + ".rope.scaling.factor");
        float factor =
            factor_at ? *factor_at : f.find_f32(l.arch + ".rope.scale_linear").value_or(1.0f);
        if (factor == 0) {
            factor = 1; // no scaling, as llama.cpp reads a factor of 0
        }
        const std::string type(f.find_string(l.arch + ".rope.scaling.type").value_or("linear"));
        if (!std::isfinite(factor) || factor <= 0) {
            throw model_error("model: rope scaling factor " + std::to_string(factor) +
                              " must be finite and positive");
        }
        if (type == "linear") {
            p.rope_scale = factor;
        } else if (type != "none" && factor != 1.0f) {
            throw model_error("model: rope scaling '" + type +
                              "' is not supported (supported: none, linear)");
        }
    }

    const gguf_tensor* embd = f.find_tensor("token_embd.weight");
    if (!embd || embd->n_dims != 2 || embd->ne[0] != p.n_embd || embd->ne[1] < 1 ||
        embd->ne[1] > uint64_t(INT32_MAX)) {
        throw model_error("model: tensor 'token_embd.weight' is missing or not [" +
                          std::to_string(p.n_embd) + ", n_vocab] with n_vocab 1 to 2^31 - 1");
    }
    // A layer past block_count would be left out without a word.
    for (const auto& t : f.tensors()) {
        if (!t.name.starts_with("blk.")) {
            continue;
        }
        const char* at = t.name.data() + 4;
        const char* end = t.name.data() + t.name.size();
        uint64_t n = 0;
        auto [rest, ec] = std::from_chars(at, end, n);
        if ((ec == std::errc{} && rest != end && *rest == '.' && n >= p.n_layer) ||
            ec == std::errc::result_out_of_range) {
            throw model_error("model: tensor " + quoted(t.name) + " is past block_count " +
                              std::to_string(p.n_layer));
        }
    }
    p.n_vocab = static_cast<uint32_t>(embd->ne[1]);
    m._tok_embd = l.matrix("token_embd.weight", p.n_embd, p.n_vocab);
    m._output_norm = l.f32("output_norm.weight", p.n_embd);
    if (f.find_tensor("output.weight")) {
        m._output = l.matrix("output.weight", p.n_embd, p.n_vocab);
    } else {
        m._output = m._tok_embd;
        p.tied_output = true;
    }
    m._rope_freqs = l.f32_opt("rope_freqs.weight", p.n_rot / 2);

    const uint64_t e = p.n_embd, kv = p.kv_dim(), ff = p.n_ff;
    for (uint32_t i = 0; i < p.n_layer; ++i) {
        std::string b = "blk." + std::to_string(i) + ".";
        layer_weights w;
        w.attn_norm = l.f32(b + "attn_norm.weight", e);
        w.wq = l.matrix(b + "attn_q.weight", e, e);
        w.wk = l.matrix(b + "attn_k.weight", e, kv);
        w.wv = l.matrix(b + "attn_v.weight", e, kv);
        w.wo = l.matrix(b + "attn_output.weight", e, e);
        if (p.arch == model_arch::qwen2) {
            w.bq = l.f32(b + "attn_q.bias", e);
            w.bk = l.f32(b + "attn_k.bias", kv);
            w.bv = l.f32(b + "attn_v.bias", kv);
        } else {
            w.bq = l.f32_opt(b + "attn_q.bias", e);
            w.bk = l.f32_opt(b + "attn_k.bias", kv);
            w.bv = l.f32_opt(b + "attn_v.bias", kv);
        }
        w.ffn_norm = l.f32(b + "ffn_norm.weight", e);
        w.w_gate = l.matrix(b + "ffn_gate.weight", e, ff);
        w.w_up = l.matrix(b + "ffn_up.weight", e, ff);
        w.w_down = l.matrix(b + "ffn_down.weight", ff, e);
        m._layers.push_back(w);
    }

    std::map<ggml_type, int> types;
    uint64_t bytes = 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t v : {p.n_vocab, p.n_embd, p.n_layer, p.n_head, p.n_head_kv, p.n_ff, p.n_rot,
                       static_cast<uint32_t>(p.arch)}) {
        h = mix(h, v);
    }
    for (float v : {p.rope_base, p.rope_scale, p.rms_eps}) {
        h = mix(h, std::bit_cast<uint32_t>(v));
    }
    h = mix(h, (p.neox_rope ? 1u : 0u) | (p.tied_output ? 2u : 0u));
    // Samples of the content, not only the shape: a model and its
    // fine-tune (one shape, other weights) must not share a cache. 16
    // words spread over each tensor: a few pages read, not the file.
    constexpr uint64_t samples = 16;
    auto sample = [&](const std::byte* data, uint64_t rows, uint64_t stride, uint64_t row_len) {
        for (uint64_t i = 0; i < samples && rows && row_len; ++i) {
            const uint64_t r = (rows - 1) * i / (samples - 1);
            const uint64_t n = std::min<uint64_t>(8, row_len);
            const uint64_t at = (row_len - n) * i / (samples - 1);
            uint64_t v = 0;
            std::memcpy(&v, data + r * stride + at, n);
            h = mix(h, v);
        }
    };
    auto sample_floats = [&](std::span<const float> v) {
        sample(reinterpret_cast<const std::byte*>(v.data()), 1, 0, v.size_bytes());
    };
    auto count = [&](const weight_view& w) {
        ++types[w.type];
        const uint64_t rb = *row_bytes(w.type, static_cast<uint64_t>(w.cols));
        bytes += rb * static_cast<uint64_t>(w.rows);
        h = mix(h, static_cast<uint64_t>(w.type));
        sample(static_cast<const std::byte*>(w.data), static_cast<uint64_t>(w.rows),
               w.row_stride ? w.row_stride : rb, rb); // 0: rows packed
    };
    for (auto& w : m._layers) {
        for (auto* v : w.matrices()) {
            count(*v);
        }
        for (auto v : {w.attn_norm, w.ffn_norm, w.bq, w.bk, w.bv}) {
            sample_floats(v);
        }
    }
    count(m._output);
    if (!p.tied_output) {
        const weight_view& t = m._tok_embd;
        ++types[t.type];
        h = mix(h, static_cast<uint64_t>(t.type));
        const uint64_t rb = *row_bytes(t.type, static_cast<uint64_t>(t.cols));
        sample(static_cast<const std::byte*>(t.data), static_cast<uint64_t>(t.rows),
               t.row_stride ? t.row_stride : rb, rb);
    }
    sample_floats(m._output_norm);
    sample_floats(m._rope_freqs);
    m._weight_bytes = bytes;
    m._fingerprint = h;
    m.pack(kernels);
    // The packed matrices' rows are not read again (the token embedding's
    // are, for embed(), also when the output head shares them).
    for (auto& w : m._layers) {
        for (const auto* v : w.matrices()) {
            m.drop_rows(f, *v);
        }
    }
    if (!p.tied_output) {
        m.drop_rows(f, m._output);
    }
    m._types.assign(types.begin(), types.end());
    return m;
}

void model::pack(simd_level kernels) {
    std::vector<weight_view*> todo;
    for (auto& l : _layers) {
        for (auto* v : l.matrices()) {
            todo.push_back(v);
        }
    }
    todo.push_back(&_output);
    std::vector<size_t> at;
    size_t total = 0;
    for (const weight_view* v : todo) {
        at.push_back(total);
        total += packed_weight_bytes(*v, kernels);
    }
    if (total == 0) {
        return;
    }
    auto* mem = static_cast<std::byte*>(::operator new[](total, std::align_val_t{64}));
    _packed = std::shared_ptr<std::byte>(
        mem, [](std::byte* p) { ::operator delete[](p, std::align_val_t{64}); });
    _packed_bytes = total;
    // The matrices on all CPUs, each taking the next one left. A matrix
    // that does not pack (none should) computes from its rows.
    std::atomic<size_t> next{0};
    std::vector<char> packed(todo.size(), 0);
    auto work = [&] {
        for (size_t i; (i = next.fetch_add(1)) < todo.size();) {
            const size_t n = packed_weight_bytes(*todo[i], kernels);
            packed[i] =
                n != 0 && pack_weights(*todo[i], kernels, {mem + at[i], n}) == matmul_status::ok;
        }
    };
    const unsigned helpers = std::min<unsigned>(std::thread::hardware_concurrency(), 64);
    std::vector<std::jthread> threads;
    for (unsigned i = 1; i < helpers; ++i) {
        try {
            threads.emplace_back(work);
        } catch (const std::system_error&) {
            break; // the threads that started (and this one) do it all
        }
    }
    work();
    threads.clear();
    for (size_t i = 0; i < todo.size(); ++i) {
        if (packed[i]) {
            todo[i]->packed = mem + at[i];
        }
    }
}

void model::drop_rows(const gguf_file& f, const weight_view& w) {
    if (w.packed) {
        const size_t rb = *row_bytes(w.type, static_cast<uint64_t>(w.cols));
        _dropped_bytes +=
            f.drop_pages({static_cast<const std::byte*>(w.data), rb * static_cast<size_t>(w.rows)});
    }
}

std::string model::type_summary() const {
    std::string s;
    for (auto& [t, n] : _types) {
        s += (s.empty() ? "" : ", ") + std::string(info(t)->name) + " x" + std::to_string(n);
    }
    return s;
}

void model::embed(int32_t id, float* out) const {
    if (id < 0 || static_cast<uint64_t>(id) >= static_cast<uint64_t>(_tok_embd.rows)) {
        throw std::out_of_range("token id " + std::to_string(id) + " has no embedding row (" +
                                std::to_string(_tok_embd.rows) + " rows)");
    }
    const auto rb = *row_bytes(_tok_embd.type, static_cast<uint64_t>(_tok_embd.cols));
    const auto* row = static_cast<const std::byte*>(_tok_embd.data) + rb * static_cast<size_t>(id);
    dequantize_row(_tok_embd.type, row, out, _tok_embd.cols);
}

} // namespace llmos::engine
