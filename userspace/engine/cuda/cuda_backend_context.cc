// SPDX-License-Identifier: MIT
//
// cuda_context: one step of the forward pass on the device, the same
// sequence of operations as context::step. The host checks the batch,
// maps the caches' blocks, writes the step's embeddings and metadata
// (rows, sequences, block tables) into pinned memory and copies them over;
// then the layers run on one stream; the logits come back to pinned
// memory; after the stream is synchronized the caches are committed.
#include "../step_batch.hh"
#include "cuda_backend.hh"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace llmos::engine {

using namespace cuda_detail;

namespace {

/// Tokens in a step from which block-quantized layers are dequantized to
/// F16 for cuBLAS rather than read by the engine's kernel.
constexpr int64_t blas_quant_tokens = 32;

size_t align_up(size_t v, size_t a) {
    return (v + a - 1) / a * a;
}

} // namespace

struct cuda_context::impl {
    const cuda_model& cm;
    cuda_context_options o;
    int device = 0;
    cudaStream_t stream = nullptr;
    void* blas_handle = nullptr;

    // Activations, [tokens x width] floats.
    dev_buf x, xn, q, k, v, att, gate, up;
    dev_buf act_f16, w_f16; // activations (F16 or BF16) / weights (F16) for cuBLAS
    dev_buf rows, logits;   // the logits' rows (normalized) and the logits
    dev_buf meta;           // row_desc[T], seq_desc[B], gather[R], tables
    host_buf h_meta, h_emb, h_logits;

    impl(const cuda_model& m, cuda_context_options opts)
        : cm(m)
        , o(opts) {}

    ~impl() {
        cudaSetDevice(device);
        if (blas_handle) {
            blas().destroy(blas_handle);
        }
        if (stream) {
            // A step that threw may have left work that reads the buffers
            // freed after this.
            cudaStreamSynchronize(stream);
            cudaStreamDestroy(stream);
        }
    }

    std::string blas_failure; ///< why cuBLAS is not used though it loaded

    /// `b` with at least `bytes`: work queued on the stream may still use
    /// it, so a buffer that must grow waits for the stream first.
    void grow(dev_buf& b, size_t bytes, const char* what) {
        if (b.get() && bytes <= b.size()) {
            return;
        }
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        b.ensure(bytes, what);
    }

    void gemm(const void* a, int a_type, const void* b, int b_type, float* c, int64_t rows,
              int64_t cols, int64_t n_tokens) {
        // Row-major y (T x rows) = x (T x cols) W^T is column-major
        // y^T (rows x T) = W^T (W column-major is cols x rows) x^T.
        const float alpha = 1.0f, beta = 0.0f;
        const int st =
            blas().gemm_ex(blas_handle, blas_op_t, blas_op_n, int(rows), int(n_tokens), int(cols),
                           &alpha, a, a_type, int(cols), b, b_type, int(cols), &beta, c, blas_r_32f,
                           int(rows), blas_compute_32f, blas_gemm_default);
        if (st != 0) {
            throw cuda_error("cublasGemmEx (" + std::to_string(rows) + " x " +
                             std::to_string(cols) + ", " + std::to_string(n_tokens) +
                             " tokens): cuBLAS status " + std::to_string(st));
        }
    }

    void mm(const dev_matrix& w, const float* in, int64_t n_tokens, float* out) {
        const bool quant = block_kind(w.kind);
        if (!blas_handle || (quant && n_tokens < blas_quant_tokens)) {
            check(matmul(w.kind, w.data, w.rows, w.cols, in, n_tokens, out, stream), "matmul");
            return;
        }
        if (w.kind == wkind::f32) {
            gemm(w.data, blas_r_32f, in, blas_r_32f, out, w.rows, w.cols, n_tokens);
            return;
        }
        if (w.kind == wkind::bf16) {
            // BF16 weights as they are, the activations rounded to BF16
            // (F32 accumulation): BF16's range, which F16 lacks.
            grow(act_f16, size_t(n_tokens * w.cols) * 2, "activations as BF16");
            check(to_bf16(in, act_f16.as<uint16_t>(), n_tokens * w.cols, stream), "to_bf16");
            gemm(w.data, blas_r_16bf, act_f16.get(), blas_r_16bf, out, w.rows, w.cols, n_tokens);
            return;
        }
        const void* a = w.data;
        if (quant) {
            grow(w_f16, size_t(w.rows * w.cols) * 2, "dequantized weights");
            check(dequant_f16(w.kind, w.data, w.rows, w.cols, w_f16.as<uint16_t>(), stream),
                  "dequant_f16");
            a = w_f16.get();
        }
        grow(act_f16, size_t(n_tokens * w.cols) * 2, "activations as F16");
        check(to_f16(in, act_f16.as<uint16_t>(), n_tokens * w.cols, stream), "to_f16");
        gemm(a, blas_r_16f, act_f16.get(), blas_r_16f, out, w.rows, w.cols, n_tokens);
    }
};

cuda_context::cuda_context(const cuda_model& m, cuda_context_options o)
    : _impl(std::make_unique<impl>(m, o)) {
    impl& c = *_impl;
    if (!c.o.max_batch_tokens) {
        c.o.max_batch_tokens = 1;
    }
    c.device = m.device();
    check(cudaSetDevice(c.device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    if (c.o.use_cublas && blas().loaded) {
        // A cuBLAS that loads but does not start (libcublasLt missing, a
        // toolkit the driver is too old for) leaves the built-in kernels.
        void* h = nullptr;
        if (const int st = blas().create(&h); st != 0) {
            c.blas_failure = "cublasCreate_v2: cuBLAS status " + std::to_string(st);
        } else if (const int st2 = blas().set_stream(h, c.stream); st2 != 0) {
            c.blas_failure = "cublasSetStream_v2: cuBLAS status " + std::to_string(st2);
            blas().destroy(h);
        } else {
            c.blas_handle = h;
        }
    }
}

cuda_context::~cuda_context() = default;

const cuda_model& cuda_context::get_model() const noexcept {
    return _impl->cm;
}

bool cuda_context::uses_cublas() const noexcept {
    return _impl->blas_handle != nullptr;
}

std::string cuda_context::gemm_path() const {
    if (_impl->blas_handle) {
        return "cuBLAS (" + blas().library + ")";
    }
    if (!_impl->o.use_cublas) {
        return "built-in kernels (cuBLAS not wanted)";
    }
    if (!_impl->blas_failure.empty()) {
        return "built-in kernels (" + _impl->blas_failure + ")";
    }
    return "built-in kernels (cuBLAS not loaded: " + blas().reason + ")";
}

step_status cuda_context::step(std::span<cuda_batch_entry> batch) {
    impl& c = *_impl;
    const model& m = c.cm.get_model();
    const cuda_model::impl& d = c.cm.get();
    const model_params& p = m.params();
    const uint32_t E = p.n_embd, KV = p.kv_dim(), F = p.n_ff, V = p.n_vocab;

    // The same checks, in the same order, as context::step.
    size_t T = 0;
    if (step_status st = detail::check_batch(batch, V, c.o.max_batch_tokens, T);
        st != step_status::ok) {
        return st;
    }
    if (T == 0) {
        return step_status::ok;
    }
    if (step_status st = detail::reserve_batch(batch); st != step_status::ok) {
        return st;
    }

    // Rows whose logits are wanted, in batch order.
    size_t R = 0, n_tables = 0;
    for (auto& e : batch) {
        R += detail::logit_rows(e);
        const uint64_t end = uint64_t(e.kv->n_tokens()) + e.tokens.size();
        n_tables += (end + e.kv->block_tokens() - 1) / e.kv->block_tokens();
    }

    // Metadata in one pinned buffer: rows, sequences, gather, tables.
    const size_t off_rows = 0;
    const size_t off_seqs = align_up(off_rows + T * sizeof(row_desc), 16);
    const size_t off_gather = align_up(off_seqs + batch.size() * sizeof(seq_desc), 16);
    const size_t off_tables = align_up(off_gather + R * sizeof(int32_t), 16);
    const size_t meta_bytes = off_tables + n_tables * sizeof(uint32_t);
    check(cudaSetDevice(c.device), "cudaSetDevice");
    // Idle unless an earlier step threw with work in flight: the pinned
    // buffers are rewritten below.
    check(cudaStreamSynchronize(c.stream), "cudaStreamSynchronize");
    c.h_meta.ensure(meta_bytes, "step metadata");
    c.meta.ensure(meta_bytes, "step metadata");
    c.h_emb.ensure(T * E * sizeof(float), "embeddings");
    auto* h_rows = reinterpret_cast<row_desc*>(c.h_meta.as<std::byte>() + off_rows);
    auto* h_seqs = reinterpret_cast<seq_desc*>(c.h_meta.as<std::byte>() + off_seqs);
    auto* h_gather = reinterpret_cast<int32_t*>(c.h_meta.as<std::byte>() + off_gather);
    auto* h_tables = reinterpret_cast<uint32_t*>(c.h_meta.as<std::byte>() + off_tables);
    size_t r = 0, g = 0, tb = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
        const cuda_batch_entry& e = batch[i];
        const uint32_t pos0 = e.kv->n_tokens();
        const uint32_t bt = e.kv->block_tokens();
        const size_t nb = (size_t(pos0) + e.tokens.size() + bt - 1) / bt;
        auto table = e.kv->block_table();
        h_seqs[i] = {reinterpret_cast<uint64_t>(e.kv->device_blocks()), e.kv->block_bytes(), bt,
                     static_cast<uint32_t>(tb)};
        std::copy_n(table.begin(), nb, h_tables + tb);
        tb += nb;
        const size_t n_logits = detail::logit_rows(e);
        for (size_t t = 0; t < e.tokens.size(); ++t, ++r) {
            h_rows[r] = {static_cast<int32_t>(i), static_cast<int32_t>(pos0 + t)};
            m.embed(e.tokens[t], c.h_emb.as<float>() + r * E);
            if (t >= e.tokens.size() - n_logits) {
                h_gather[g++] = static_cast<int32_t>(r);
            }
        }
    }
    cudaStream_t s = c.stream;
    check(cudaMemcpyAsync(c.meta.get(), c.h_meta.as<std::byte>(), meta_bytes,
                          cudaMemcpyHostToDevice, s),
          "cudaMemcpyAsync (step metadata)");
    const auto* rows_d = reinterpret_cast<const row_desc*>(c.meta.as<std::byte>() + off_rows);
    const auto* seqs_d = reinterpret_cast<const seq_desc*>(c.meta.as<std::byte>() + off_seqs);
    const auto* gather_d = reinterpret_cast<const int32_t*>(c.meta.as<std::byte>() + off_gather);
    const auto* tables_d = reinterpret_cast<const uint32_t*>(c.meta.as<std::byte>() + off_tables);

    c.x.ensure(T * E * 4, "activations");
    c.xn.ensure(T * E * 4, "activations");
    c.q.ensure(T * E * 4, "queries");
    c.att.ensure(T * E * 4, "attention");
    c.k.ensure(T * KV * 4, "keys");
    c.v.ensure(T * KV * 4, "values");
    c.gate.ensure(T * F * 4, "ffn gate");
    c.up.ensure(T * F * 4, "ffn up");
    float *x = c.x.as<float>(), *xn = c.xn.as<float>(), *q = c.q.as<float>();
    float *k = c.k.as<float>(), *v = c.v.as<float>(), *att = c.att.as<float>();
    float *gate = c.gate.as<float>(), *up = c.up.as<float>();
    check(cudaMemcpyAsync(x, c.h_emb.as<float>(), T * E * 4, cudaMemcpyHostToDevice, s),
          "cudaMemcpyAsync (embeddings)");

    const auto Ti = static_cast<int64_t>(T);
    const float scale = 1.0f / std::sqrt(float(p.head_dim));
    for (uint32_t l = 0; l < p.n_layer; ++l) {
        const dev_layer& w = d.layers[l];
        check(rms_norm(x, w.attn_norm, xn, Ti, E, p.rms_eps, nullptr, s), "rms_norm");
        c.mm(w.wq, xn, Ti, q);
        c.mm(w.wk, xn, Ti, k);
        c.mm(w.wv, xn, Ti, v);
        if (w.bq) {
            check(add_bias(q, w.bq, Ti, E, s), "add_bias");
        }
        if (w.bk) {
            check(add_bias(k, w.bk, Ti, KV, s), "add_bias");
        }
        if (w.bv) {
            check(add_bias(v, w.bv, Ti, KV, s), "add_bias");
        }
        check(rope(q, Ti, E, p.n_head, p.head_dim, p.n_rot, p.neox_rope, rows_d, d.inv_freq,
                   p.rope_scale, s),
              "rope");
        check(rope(k, Ti, KV, p.n_head_kv, p.head_dim, p.n_rot, p.neox_rope, rows_d, d.inv_freq,
                   p.rope_scale, s),
              "rope");
        check(kv_write(k, v, Ti, KV, l, rows_d, seqs_d, tables_d, s), "kv_write");
        check(attention(q, att, Ti, p.n_head, p.n_head_kv, p.head_dim, l, scale, rows_d, seqs_d,
                        tables_d, s),
              "attention");
        c.mm(w.wo, att, Ti, xn);
        check(add(x, xn, Ti * E, s), "add");
        check(rms_norm(x, w.ffn_norm, xn, Ti, E, p.rms_eps, nullptr, s), "rms_norm");
        c.mm(w.w_gate, xn, Ti, gate);
        c.mm(w.w_up, xn, Ti, up);
        check(swiglu(gate, up, Ti * F, s), "swiglu");
        c.mm(w.w_down, gate, Ti, xn);
        check(add(x, xn, Ti * E, s), "add");
    }

    if (R) {
        c.grow(c.rows, R * E * 4, "logit rows");
        c.grow(c.logits, R * size_t(V) * 4, "logits");
        c.h_logits.ensure(R * size_t(V) * 4, "logits");
        check(rms_norm(x, d.output_norm, c.rows.as<float>(), int64_t(R), E, p.rms_eps, gather_d, s),
              "rms_norm (output)");
        c.mm(d.output, c.rows.as<float>(), int64_t(R), c.logits.as<float>());
        check(cudaMemcpyAsync(c.h_logits.as<float>(), c.logits.get(), R * size_t(V) * 4,
                              cudaMemcpyDeviceToHost, s),
              "cudaMemcpyAsync (logits)");
    }
    // Every row of the step is in the caches (and the logits on the host)
    // before any header moves.
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize (step)");
    if (R) {
        detail::scatter_logits(batch, c.h_logits.as<const float>(), V);
    }
    for (auto& e : batch) {
        e.kv->commit(e.tokens);
    }
    return step_status::ok;
}

} // namespace llmos::engine
