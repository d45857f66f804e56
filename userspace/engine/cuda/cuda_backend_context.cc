// SPDX-License-Identifier: MIT
//
// cuda_context: one step of the forward pass on the device, the same
// sequence of operations as context::step. The host checks the batch,
// maps the caches' blocks, sizes the scratch, writes the step's embeddings
// and metadata (rows, sequences, block tables) into pinned memory and
// copies them over; then the layers run on one stream, launched one by one
// or as a graph captured from an earlier step of the same shape; the
// logits come back to pinned memory; after the stream is synchronized the
// caches are committed.
#include "../step_batch.hh"
#include "cuda_backend.hh"
#include "cuda_sync.hh"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <set>
#include <span>
#include <stdexcept>

namespace llmos::engine {

using namespace cuda_detail;

namespace {

/// Tokens in a step from which block-quantized layers are dequantized to
/// F16 for cuBLAS rather than read by the engine's kernel.
constexpr int64_t blas_quant_tokens = 32;

/// A cublasStatus_t by its name (cublas_api.h), and `last`, the CUDA error
/// a failed launch left behind (cuBLAS says only that execution failed).
std::string blas_status_text(int st, cudaError_t last) {
    static constexpr std::pair<int, const char*> names[] = {
        {1, "CUBLAS_STATUS_NOT_INITIALIZED"}, {3, "CUBLAS_STATUS_ALLOC_FAILED"},
        {7, "CUBLAS_STATUS_INVALID_VALUE"},   {8, "CUBLAS_STATUS_ARCH_MISMATCH"},
        {11, "CUBLAS_STATUS_MAPPING_ERROR"},  {13, "CUBLAS_STATUS_EXECUTION_FAILED"},
        {14, "CUBLAS_STATUS_INTERNAL_ERROR"}, {15, "CUBLAS_STATUS_NOT_SUPPORTED"},
        {16, "CUBLAS_STATUS_LICENSE_ERROR"}};
    std::string out = "cuBLAS status " + std::to_string(st);
    for (auto [v, name] : names) {
        if (v == st) {
            out = name;
        }
    }
    if (last != cudaSuccess) {
        out += " (CUDA: " + error_text(last) + ")";
    }
    return out;
}

/// Captures that fail in a row before a context stops trying.
constexpr uint32_t max_capture_failures = 3;

/// cuBLAS's workspace when graphs are used: its own, not one it allocates
/// while a graph is captured (32 MiB is what cuBLAS asks for on Hopper).
constexpr size_t blas_workspace_bytes = 32u << 20;

/// One captured step shape and its executable graph.
struct graph_entry {
    uint64_t key = 0;
    cudaGraphExec_t exec = nullptr;
    uint64_t used = 0; ///< step count at its last replay
};

size_t align_up(size_t v, size_t a) {
    return (v + a - 1) / a * a;
}

/// Where the parts of a step's metadata start: row_desc[rows] at 0, then
/// seq_desc[seqs], the gather list of the logit rows, the block tables.
struct meta_layout {
    size_t seqs, gather, tables;
    meta_layout(size_t rows, size_t n_seqs, size_t logit_rows)
        : seqs(align_up(rows * sizeof(row_desc), 16))
        , gather(align_up(seqs + n_seqs * sizeof(seq_desc), 16))
        , tables(align_up(gather + logit_rows * sizeof(int32_t), 16)) {}
};

} // namespace

static_assert(max_attention_parts == cuda_max_attention_parts);

struct cuda_context::impl {
    const cuda_model& cm;
    cuda_context_options o;
    int device = 0;
    cudaStream_t stream = nullptr;
    void* blas_handle = nullptr;

    // Activations, [tokens x width] floats.
    dev_buf x, xn, q, k, v, att, gate, up;
    dev_buf act_f16, w_f16; // activations (F16 or BF16) / weights (F16) for cuBLAS
    dev_buf act_scale;      // per row: what to_f16 scaled the F16 activations by
    dev_buf rows, logits;   // the logits' rows (normalized) and the logits
    dev_buf meta;           // row_desc[T], seq_desc[B], gather[R], tables
    dev_buf parts;          // attention's parts (attention_parts() > 1)
    dev_buf blas_ws;        // cuBLAS's workspace (with graphs)
    host_buf h_meta, h_emb, h_logits;

    // Graphs: the step shapes seen (launched, not yet captured), the
    // graphs, and the scratch addresses they were captured with.
    bool graphs_wanted = false;
    bool no_dequant = false;       ///< no memory to dequantize weights for cuBLAS
    uint32_t capture_failures = 0; ///< in a row: max_capture_failures stops graphs
    std::string graph_failure;     ///< why the last capture failed
    std::set<uint64_t> seen;
    std::vector<graph_entry> graphs;
    std::array<const void*, 15> scratch{};
    int multiprocessors = 0;
    uint64_t steps = 0;
    cuda_graph_stats stats;

    impl(const cuda_model& m, cuda_context_options opts)
        : cm(m)
        , o(opts) {}

    ~impl() {
        cudaSetDevice(device);
        if (stream) {
            // A step that threw may have left work that reads the buffers
            // freed after this.
            cudaStreamSynchronize(stream);
        }
        drop_graphs();
        device_sync_guard g;
        if (blas_handle) {
            blas().destroy(blas_handle);
        }
        if (stream) {
            cudaStreamDestroy(stream);
        }
    }

    void drop_graphs() noexcept {
        for (graph_entry& g : graphs) {
            cudaGraphExecDestroy(g.exec);
        }
        stats.dropped += graphs.size();
        graphs.clear();
    }

    std::string blas_failure; ///< why cuBLAS is not used though it loaded

    /// Checks that `b`, which step() sized before the layers, holds
    /// `bytes` (nothing may allocate between: a graph may be capturing).
    static void sized(const dev_buf& b, size_t bytes, const char* what) {
        if (!b.get() || bytes > b.size()) {
            throw cuda_error(std::string("cuda context: ") + what + " needs " +
                             std::to_string(bytes) + " bytes of scratch, which has " +
                             std::to_string(b.size()) + " (a bug: report it)");
        }
    }

    /// `ldc`: the output's row stride in floats (0: `rows`), for a tile of
    /// a matrix's rows written into the whole output.
    void gemm(const void* a, int a_type, const void* b, int b_type, float* c, int64_t rows,
              int64_t cols, int64_t n_tokens, int64_t ldc = 0) {
        // Row-major y (T x rows) = x (T x cols) W^T is column-major
        // y^T (rows x T) = W^T (W column-major is cols x rows) x^T.
        const float alpha = 1.0f, beta = 0.0f;
        const int st =
            blas().gemm_ex(blas_handle, blas_op_t, blas_op_n, int(rows), int(n_tokens), int(cols),
                           &alpha, a, a_type, int(cols), b, b_type, int(cols), &beta, c, blas_r_32f,
                           int(ldc ? ldc : rows), blas_compute_32f, blas_gemm_default);
        if (st != 0) {
            // A kernel that faulted before it fails cuBLAS too. cuBLAS
            // has a CUDA runtime of its own, so this one's last error may
            // not say so: outside a capture, the stream's state does (a
            // sticky error is the GPU lost); in one, the capture's end.
            cudaError_t e = cudaGetLastError();
            cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
            if (e == cudaSuccess) {
                // (The query itself may answer with an earlier launch's
                // error.)
                e = cudaStreamIsCapturing(stream, &cs);
                if (e == cudaSuccess && cs == cudaStreamCaptureStatusNone) {
                    e = cudaStreamSynchronize(stream);
                }
            }
            fail(e, "cublasGemmEx (" + std::to_string(rows) + " x " + std::to_string(cols) + ", " +
                        std::to_string(n_tokens) + " tokens): " + blas_status_text(st, e));
        }
    }

    /// One linear layer of a group: weights and where its output goes.
    struct mm_job {
        const dev_matrix& w;
        float* out;
    };

    /// out = in W^T for each of `jobs` (up to max_scaled_outputs), all
    /// over the same input (n_tokens rows): on the built-in kernel (F32
    /// activations) without cuBLAS and for block weights in small steps,
    /// otherwise on cuBLAS. There F32 weights meet F32 activations, BF16
    /// ones BF16 activations, F16 and dequantized block ones F16
    /// activations, converted once for the group with each row scaled into
    /// F16's range (to_f16) and the outputs unscaled after (one launch).
    void mm(std::initializer_list<mm_job> jobs, const float* in, int64_t n_tokens) {
        enum class act { none, f16, bf16 } have = act::none; // what act_f16 holds now
        std::array<scaled_rows, max_scaled_outputs> scaled{};
        size_t n_scaled = 0;
        for (const mm_job& j : jobs) {
            const dev_matrix& w = j.w;
            const bool quant = block_kind(w.kind);
            if (!blas_handle || (quant && (n_tokens < blas_quant_tokens || no_dequant))) {
                check(matmul(w.kind, w.data, w.rows, w.cols, in, n_tokens, j.out, stream),
                      "matmul");
                continue;
            }
            if (w.kind == wkind::f32) {
                gemm(w.data, blas_r_32f, in, blas_r_32f, j.out, w.rows, w.cols, n_tokens);
                continue;
            }
            if (w.kind == wkind::bf16) {
                // BF16 weights as they are, the activations rounded to BF16
                // (F32 accumulation): BF16's range, which F16 lacks.
                if (have != act::bf16) {
                    sized(act_f16, size_t(n_tokens * w.cols) * 2, "activations as BF16");
                    check(to_bf16(in, act_f16.as<uint16_t>(), n_tokens * w.cols, stream),
                          "to_bf16");
                    have = act::bf16;
                }
                gemm(w.data, blas_r_16bf, act_f16.get(), blas_r_16bf, j.out, w.rows, w.cols,
                     n_tokens);
                continue;
            }
            if (have != act::f16) {
                sized(act_f16, size_t(n_tokens * w.cols) * 2, "activations as F16");
                sized(act_scale, size_t(n_tokens) * 4, "activation scales");
                check(to_f16(in, act_f16.as<uint16_t>(), act_scale.as<float>(), n_tokens, w.cols,
                             stream),
                      "to_f16");
                have = act::f16;
            }
            if (!quant) {
                gemm(w.data, blas_r_16f, act_f16.get(), blas_r_16f, j.out, w.rows, w.cols,
                     n_tokens);
            } else {
                // Dequantized a tile of rows at a time into the scratch,
                // each tile's GEMM after it on the stream.
                const int64_t tile = std::min<int64_t>(
                    w.rows, std::max<int64_t>(1, int64_t(w_f16.size() / 2) / w.cols));
                sized(w_f16, size_t(tile * w.cols) * 2, "dequantized weights");
                for (int64_t r0 = 0; r0 < w.rows; r0 += tile) {
                    const int64_t n = std::min(tile, w.rows - r0);
                    check(dequant_f16(w.kind,
                                      static_cast<const std::byte*>(w.data) + r0 * w.row_bytes, n,
                                      w.cols, w_f16.as<uint16_t>(), stream),
                          "dequant_f16");
                    gemm(w_f16.get(), blas_r_16f, act_f16.get(), blas_r_16f, j.out + r0, n, w.cols,
                         n_tokens, w.rows);
                }
            }
            scaled.at(n_scaled++) = {j.out, w.rows};
        }
        if (n_scaled) {
            check(unscale(act_scale.as<float>(), n_tokens,
                          std::span<const scaled_rows>(scaled.data(), n_scaled), stream),
                  "unscale");
        }
    }

    bool graphs_on() const noexcept {
        return graphs_wanted && capture_failures < max_capture_failures;
    }

    /// Runs `forward` (the step's layers, T tokens of B sequences, R logit
    /// rows, its scratch sized) as a graph: replayed, or captured now when
    /// the shape comes the second time. False: not as a graph (graphs off,
    /// a large step, a shape seen first, or a capture that failed: the
    /// shape is tried again, and max_capture_failures in a row turn graphs
    /// off for the context); the caller launches it then.
    template <typename F>
    bool run_graph(size_t T, size_t B, size_t R, uint32_t parts, F& forward) {
        // (A batch may hold sequences that feed no token: B is bounded
        // here, so that the key's fields stay 16 bits each.)
        if (!graphs_on() || T > cuda_graph_max_tokens || B > cuda_graph_max_tokens ||
            R > cuda_graph_max_tokens) {
            return false;
        }
        static_assert(cuda_graph_max_tokens <= 0xffff);
        const uint64_t key =
            uint64_t(T) | uint64_t(B) << 16 | uint64_t(R) << 32 | uint64_t(parts) << 48;
        for (graph_entry& g : graphs) {
            if (g.key == key) {
                check(cudaGraphLaunch(g.exec, stream), "cudaGraphLaunch");
                g.used = steps;
                ++stats.replayed;
                return true;
            }
        }
        // A shape seen once (a prompt's length) costs no capture.
        if (!seen.count(key)) {
            if (seen.size() >= 4096) {
                seen.clear();
            }
            seen.insert(key);
            return false;
        }
        capture_section section;
        if (!section) {
            return false; // the device stayed busy: the next step of the shape captures
        }
        seen.erase(key);
        cudaGraphExec_t exec = nullptr;
        if (std::string why = capture(forward, exec); !why.empty()) {
            graph_failure = std::move(why);
            ++capture_failures;
            ++stats.failed;
            return false;
        }
        capture_failures = 0;
        if (graphs.size() >= o.max_graphs) {
            auto lru = std::min_element(graphs.begin(), graphs.end(),
                                        [](auto& a, auto& b) { return a.used < b.used; });
            cudaGraphExecDestroy(lru->exec);
            graphs.erase(lru);
            ++stats.dropped;
        }
        graphs.push_back({key, exec, steps});
        ++stats.captured;
        check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        ++stats.replayed;
        return true;
    }

    /// Captures `forward` on the stream into `exec`; "" or why it failed
    /// (nothing ran then, and no error is left behind).
    template <typename F>
    std::string capture(F& forward, cudaGraphExec_t& exec) {
        // Thread-local: other threads' contexts go on allocating.
        if (const cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
            e != cudaSuccess) {
            cudaGetLastError();
            return "cudaStreamBeginCapture: " + error_text(e);
        }
        cudaGraph_t graph = nullptr;
        std::string why;
        try {
            forward();
        } catch (const cuda_error& e) {
            why = e.what();
        } catch (...) {
            cudaStreamEndCapture(stream, &graph);
            if (graph) {
                cudaGraphDestroy(graph);
            }
            cudaGetLastError();
            throw;
        }
        // The capture ends whatever happened in it.
        if (const cudaError_t e = cudaStreamEndCapture(stream, &graph);
            e != cudaSuccess && why.empty()) {
            why = "cudaStreamEndCapture: " + error_text(e);
        }
        if (why.empty()) {
            if (const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0); e != cudaSuccess) {
                why = "cudaGraphInstantiate: " + error_text(e);
                exec = nullptr;
            }
        }
        if (graph) {
            cudaGraphDestroy(graph);
        }
        if (!why.empty()) {
            cudaGetLastError(); // not sticky: the kernels are launched instead
        }
        return why;
    }
};

cuda_context::cuda_context(const cuda_model& m, cuda_context_options o)
    : _impl(std::make_unique<impl>(m, o)) {
    impl& c = *_impl;
    if (c.o.attention_parts > max_attention_parts) {
        throw std::invalid_argument("cuda context: attention_parts " +
                                    std::to_string(c.o.attention_parts) + " is more than " +
                                    std::to_string(max_attention_parts));
    }
    if (!c.o.max_batch_tokens) {
        c.o.max_batch_tokens = 1;
    }
    if (c.o.max_batch_tokens > cuda_max_batch_tokens) {
        throw std::invalid_argument("cuda context: max_batch_tokens " +
                                    std::to_string(c.o.max_batch_tokens) + " is more than " +
                                    std::to_string(cuda_max_batch_tokens) +
                                    " (a step's rows are one launch's grid)");
    }
    c.device = m.device();
    check(cudaSetDevice(c.device), "cudaSetDevice");
    device_sync_guard g; // cuBLAS allocates and frees
    check(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    if (c.o.use_cublas && blas().loaded) {
        // A cuBLAS that loads but does not start (libcublasLt missing, a
        // toolkit the driver is too old for) leaves the built-in kernels.
        void* h = nullptr;
        if (const int st = blas().create(&h); st != 0) {
            c.blas_failure = "cublasCreate_v2: " + blas_status_text(st, cudaGetLastError());
        } else if (const int st2 = blas().set_stream(h, c.stream); st2 != 0) {
            c.blas_failure = "cublasSetStream_v2: " + blas_status_text(st2, cudaGetLastError());
            blas().destroy(h);
        } else {
            c.blas_handle = h;
        }
    }
    if (cudaDeviceGetAttribute(&c.multiprocessors, cudaDevAttrMultiProcessorCount, c.device) !=
        cudaSuccess) {
        cudaGetLastError();
        c.multiprocessors = 0; // attention is not split
    }
    c.graphs_wanted = c.o.use_graphs && cuda_graphs_wanted();
    c.o.max_graphs = std::max(c.o.max_graphs, 1u);
    c.graphs.reserve(c.o.max_graphs); // adding one cannot throw
    if (c.blas_handle && c.graphs_wanted && blas().set_workspace) {
        // After cublasSetStream, which goes back to cuBLAS's own workspace;
        // without the memory, cuBLAS keeps its own.
        try {
            c.blas_ws.ensure(blas_workspace_bytes, "cuBLAS workspace");
            if (blas().set_workspace(c.blas_handle, c.blas_ws.get(), c.blas_ws.size()) != 0) {
                c.blas_ws.reset();
            }
        } catch (const cuda_error&) {
            cudaGetLastError();
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

bool cuda_graphs_wanted() noexcept {
    const char* env = std::getenv("LLMOS_CUDA_GRAPHS");
    return !(env && std::strcmp(env, "0") == 0);
}

bool cuda_context::uses_graphs() const noexcept {
    return _impl->graphs_on();
}

std::string cuda_context::graph_path() const {
    const impl& c = *_impl;
    if (uses_graphs()) {
        return "CUDA graphs (steps of up to " + std::to_string(cuda_graph_max_tokens) + " tokens)";
    }
    if (!c.o.use_graphs) {
        return "kernel launches (graphs not wanted)";
    }
    if (!c.graphs_wanted) {
        return "kernel launches (LLMOS_CUDA_GRAPHS=0)";
    }
    return "kernel launches (" + std::to_string(max_capture_failures) +
           " graph captures failed in a row; the last: " + c.graph_failure + ")";
}

std::string cuda_context::last_graph_failure() const {
    return _impl->graph_failure;
}

cuda_graph_stats cuda_context::graph_stats() const noexcept {
    cuda_graph_stats st = _impl->stats;
    st.cached = _impl->graphs.size();
    return st;
}

step_status cuda_context::step(std::span<cuda_batch_entry> batch) {
    impl& c = *_impl;
    const model& m = c.cm.get_model();
    const cuda_model::impl& d = c.cm.get();
    const model_params& p = m.params();
    const uint32_t E = p.n_embd, KV = p.kv_dim(), F = p.n_ff, V = p.n_vocab;

    // The same checks, in the same order, as context::step.
    size_t T = 0;
    if (step_status st = detail::check_batch(batch, p, c.o.max_batch_tokens, T);
        st != step_status::ok) {
        return st;
    }
    if (T == 0) {
        return step_status::ok;
    }
    if (step_status st = detail::reserve_batch(batch); st != step_status::ok) {
        return st;
    }

    // Rows whose logits are wanted, in batch order; block table entries
    // now, and at most for these caches (the metadata buffer is sized for
    // that, so that it stays where graphs point while the caches grow).
    size_t R = 0, n_tables = 0, max_tables = 0, max_tables_one = 0;
    uint64_t max_end = 0;
    for (auto& e : batch) {
        R += detail::logit_rows(e);
        const uint64_t end = uint64_t(e.kv->n_tokens()) + e.tokens.size();
        max_end = std::max(max_end, end);
        n_tables += (end + e.kv->block_tokens() - 1) / e.kv->block_tokens();
        max_tables += e.kv->block_table().size();
        max_tables_one = std::max(max_tables_one, e.kv->block_table().size());
    }

    // With graphs, the scratch is sized at once for the largest step the
    // context takes (and the logit rows of the largest graph step): later
    // steps do not move it, and so keep the graphs that point into it.
    const bool graphs = c.graphs_on();
    const size_t Tcap = graphs ? std::max<size_t>(T, c.o.max_batch_tokens) : T;
    const size_t Tgraph = std::min<size_t>(c.o.max_batch_tokens, cuda_graph_max_tokens);
    const size_t Rcap = graphs ? std::max(R, Tgraph) : R;

    // Metadata in one pinned buffer: rows, sequences, gather, tables.
    const meta_layout at(T, batch.size(), R);
    const size_t meta_bytes = at.tables + n_tables * sizeof(uint32_t);
    // On the device, room for the tables of these caches however long they
    // grow, and (with graphs) for any graph step over caches like these.
    size_t meta_room = at.tables + std::max(n_tables, max_tables) * sizeof(uint32_t);
    if (graphs) {
        meta_room = std::max(meta_room, meta_layout(Tcap, Tcap, Rcap).tables +
                                            Tgraph * max_tables_one * sizeof(uint32_t));
    }
    check(cudaSetDevice(c.device), "cudaSetDevice");
    // Idle unless an earlier step threw with work in flight: the pinned
    // buffers are rewritten and the scratch may grow below.
    check(cudaStreamSynchronize(c.stream), "cudaStreamSynchronize");
    c.h_meta.ensure(meta_bytes, "step metadata");
    if (meta_room > c.meta.size()) {
        c.meta.ensure(std::max(meta_room, 2 * c.meta.size()), "step metadata");
    }
    c.h_emb.ensure(T * E * sizeof(float), "embeddings");
    auto* h_rows = reinterpret_cast<row_desc*>(c.h_meta.as<std::byte>());
    auto* h_seqs = reinterpret_cast<seq_desc*>(c.h_meta.as<std::byte>() + at.seqs);
    auto* h_gather = reinterpret_cast<int32_t*>(c.h_meta.as<std::byte>() + at.gather);
    auto* h_tables = reinterpret_cast<uint32_t*>(c.h_meta.as<std::byte>() + at.tables);
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

    // All the scratch the layers touch, sized before any of them runs (a
    // graph cannot be captured across an allocation).
    const size_t rows_max = std::max(Tcap, Rcap);
    c.x.ensure(Tcap * E * 4, "activations");
    c.xn.ensure(Tcap * E * 4, "activations");
    c.q.ensure(Tcap * E * 4, "queries");
    c.att.ensure(Tcap * E * 4, "attention");
    // Attention's parts: a few long rows that would leave the device idle.
    uint32_t parts = 1;
    if (int64_t(T) <= max_attention_part_rows) {
        parts = c.o.attention_parts
                    ? c.o.attention_parts
                    : attention_parts(int64_t(T), p.n_head,
                                      uint32_t(std::min<uint64_t>(max_end, UINT32_MAX)),
                                      c.multiprocessors);
    }
    if (parts > 1) {
        // For the most parts any step may split into, at once: the scratch
        // moves (and the graphs go) once, not at each longer row.
        c.parts.ensure(size_t(max_attention_part_rows) * p.n_head *
                           std::max(parts, cuda_max_attention_parts) * (size_t(p.head_dim) + 2) * 4,
                       "attention parts");
    }
    c.k.ensure(Tcap * KV * 4, "keys");
    c.v.ensure(Tcap * KV * 4, "values");
    c.gate.ensure(Tcap * F * 4, "ffn gate");
    c.up.ensure(Tcap * F * 4, "ffn up");
    if (Rcap) {
        c.rows.ensure(Rcap * E * 4, "logit rows");
        c.logits.ensure(Rcap * size_t(V) * 4, "logits");
    }
    if (R) {
        c.h_logits.ensure(R * size_t(V) * 4, "logits");
    }
    if (c.blas_handle) {
        c.act_f16.ensure(rows_max * std::max(E, F) * 2, "activations as F16");
        c.act_scale.ensure(rows_max * 4, "activation scales");
        if (int64_t(rows_max) >= blas_quant_tokens && d.max_quant_elems && !c.no_dequant) {
            try {
                const int64_t tile_elems =
                    std::max<int64_t>(d.max_quant_cols, int64_t(c.o.dequant_tile_bytes / 2) /
                                                            d.max_quant_cols * d.max_quant_cols);
                c.w_f16.ensure(size_t(std::min(d.max_quant_elems, tile_elems)) * 2,
                               "dequantized weights");
            } catch (const cuda_error&) {
                // No room for a tile of dequantized rows: quantized
                // weights are read by the built-in kernel at every batch
                // size instead.
                cudaGetLastError();
                c.no_dequant = true;
            }
        }
    }
    const std::array<const void*, 15> scratch{
        c.x.get(),       c.xn.get(),    c.q.get(),    c.att.get(),   c.k.get(),
        c.v.get(),       c.gate.get(),  c.up.get(),   c.rows.get(),  c.logits.get(),
        c.act_f16.get(), c.w_f16.get(), c.meta.get(), c.parts.get(), c.act_scale.get()};
    if (scratch != c.scratch) {
        c.drop_graphs(); // they point into the old scratch
        c.scratch = scratch;
    }

    cudaStream_t s = c.stream;
    check(cudaMemcpyAsync(c.meta.get(), c.h_meta.as<std::byte>(), meta_bytes,
                          cudaMemcpyHostToDevice, s),
          "cudaMemcpyAsync (step metadata)");
    const auto* rows_d = reinterpret_cast<const row_desc*>(c.meta.as<std::byte>());
    const auto* seqs_d = reinterpret_cast<const seq_desc*>(c.meta.as<std::byte>() + at.seqs);
    const auto* gather_d = reinterpret_cast<const int32_t*>(c.meta.as<std::byte>() + at.gather);
    const auto* tables_d = reinterpret_cast<const uint32_t*>(c.meta.as<std::byte>() + at.tables);
    float *x = c.x.as<float>(), *xn = c.xn.as<float>(), *q = c.q.as<float>();
    float *k = c.k.as<float>(), *v = c.v.as<float>(), *att = c.att.as<float>();
    float *gate = c.gate.as<float>(), *up = c.up.as<float>();
    check(cudaMemcpyAsync(x, c.h_emb.as<float>(), T * E * 4, cudaMemcpyHostToDevice, s),
          "cudaMemcpyAsync (embeddings)");

    // The layers and the logits: everything a graph of this shape holds.
    const auto Ti = static_cast<int64_t>(T);
    const float scale = 1.0f / std::sqrt(float(p.head_dim));
    auto forward = [&] {
        for (uint32_t l = 0; l < p.n_layer; ++l) {
            const dev_layer& w = d.layers[l];
            check(rms_norm(x, w.attn_norm, xn, Ti, E, p.rms_eps, nullptr, s), "rms_norm");
            c.mm({{w.wq, q}, {w.wk, k}, {w.wv, v}}, xn, Ti);
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
                            tables_d, c.parts.as<float>(), parts, s),
                  "attention");
            c.mm({{w.wo, xn}}, att, Ti);
            check(add(x, xn, Ti * E, s), "add");
            check(rms_norm(x, w.ffn_norm, xn, Ti, E, p.rms_eps, nullptr, s), "rms_norm");
            c.mm({{w.w_gate, gate}, {w.w_up, up}}, xn, Ti);
            check(swiglu(gate, up, Ti * F, s), "swiglu");
            c.mm({{w.w_down, xn}}, gate, Ti);
            check(add(x, xn, Ti * E, s), "add");
        }
        if (R) {
            check(rms_norm(x, d.output_norm, c.rows.as<float>(), int64_t(R), E, p.rms_eps, gather_d,
                           s),
                  "rms_norm (output)");
            c.mm({{d.output, c.logits.as<float>()}}, c.rows.as<float>(), int64_t(R));
        }
    };
    ++c.steps;
    try {
        if (!c.run_graph(T, batch.size(), R, parts, forward)) {
            forward();
            ++c.stats.launched;
        }
        if (R) {
            check(cudaMemcpyAsync(c.h_logits.as<float>(), c.logits.get(), R * size_t(V) * 4,
                                  cudaMemcpyDeviceToHost, s),
                  "cudaMemcpyAsync (logits)");
        }
    } catch (...) {
        // What was queued before the failure still writes the caches: it
        // ends before they can be given back (a capture has ended by now).
        // A kernel that faulted meanwhile has made the device unusable,
        // whatever failed first.
        const cudaError_t e = cudaStreamSynchronize(s);
        cudaGetLastError();
        if (cuda_error_is_sticky(e)) {
            fail(e, "cudaStreamSynchronize (after a failed step): " + error_text(e));
        }
        throw;
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
