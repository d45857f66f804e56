// SPDX-License-Identifier: MIT
//
// The CUDA emulator's cuBLAS: a libcublas.so.13 with the entry points the
// engine loads (cublasCreate_v2, cublasDestroy_v2, cublasSetStream_v2,
// cublasSetWorkspace_v2, cublasGemmEx), computing on the host what cuBLAS
// documents: column-major C = alpha op(A) op(B) + beta C, its argument
// checks and its type combinations (A and B both F16, both BF16 or both
// F32; C F32 or, with 16-bit inputs, their type; F32 compute). A GEMM goes
// to the handle's stream: run at once, or recorded while the stream
// captures a graph (alpha and beta read at the call, as cuBLAS reads host
// scalars). Only the emulator's tests find it (their run path).
#include "emu_stream.h"

#include <cstddef>
#include <cstdint>
#include <llmos/engine/quant.hh>

namespace {

// cublasStatus_t, cublasOperation_t, cudaDataType, cublasComputeType_t.
constexpr int status_success = 0;
constexpr int status_not_initialized = 1;
constexpr int status_invalid_value = 7;
constexpr int status_execution_failed = 13;
constexpr int status_not_supported = 15;
constexpr int op_n = 0, op_t = 1;
constexpr int r_32f = 0, r_16f = 2, r_16bf = 14;
constexpr int compute_32f = 68;

constexpr uint32_t handle_magic = 0x626c6173; // "blas"

struct handle {
    uint32_t magic = handle_magic;
    void* stream = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
};

/// One GEMM's arguments, by value.
struct gemm_call {
    int transa, transb, m, n, k;
    float alpha, beta;
    const void* a;
    int a_type, lda;
    const void* b;
    int b_type, ldb;
    void* c;
    int c_type, ldc;
};

bool valid(void* h) {
    return h && static_cast<handle*>(h)->magic == handle_magic;
}

float load(const void* p, int type, int64_t i) {
    if (type == r_16f) {
        return llmos::engine::fp16_to_fp32(static_cast<const uint16_t*>(p)[i]);
    }
    if (type == r_16bf) {
        return llmos::engine::bf16_to_fp32(static_cast<const uint16_t*>(p)[i]);
    }
    return static_cast<const float*>(p)[i];
}

uint16_t store16(int type, float v) {
    return type == r_16f ? llmos::engine::fp32_to_fp16(v) : llmos::engine::fp32_to_bf16(v);
}

void run_gemm(void* p) {
    const gemm_call& g = *static_cast<const gemm_call*>(p);
    for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t i = 0; i < g.m; ++i) {
            float s = 0.0f;
            for (int64_t l = 0; l < g.k; ++l) {
                const float av =
                    load(g.a, g.a_type, g.transa == op_n ? i + l * g.lda : l + i * g.lda);
                const float bv =
                    load(g.b, g.b_type, g.transb == op_n ? l + j * g.ldb : j + l * g.ldb);
                s += av * bv;
            }
            const int64_t ci = i + j * g.ldc;
            if (g.c_type == r_32f) {
                float* cf = static_cast<float*>(g.c);
                cf[ci] = g.alpha * s + (g.beta != 0.0f ? g.beta * cf[ci] : 0.0f);
            } else {
                auto* ch = static_cast<uint16_t*>(g.c);
                const float old = g.beta != 0.0f ? g.beta * load(g.c, g.c_type, ci) : 0.0f;
                ch[ci] = store16(g.c_type, g.alpha * s + old);
            }
        }
    }
}

} // namespace

extern "C" {

int cublasCreate_v2(void** h) {
    if (!h) {
        return status_invalid_value;
    }
    *h = new handle;
    return status_success;
}

int cublasDestroy_v2(void* h) {
    if (!valid(h)) {
        return status_not_initialized;
    }
    static_cast<handle*>(h)->magic = 0;
    delete static_cast<handle*>(h);
    return status_success;
}

int cublasSetStream_v2(void* h, void* stream) {
    if (!valid(h)) {
        return status_not_initialized;
    }
    // As cuBLAS: a new stream goes back to the default workspace.
    static_cast<handle*>(h)->stream = stream;
    static_cast<handle*>(h)->workspace = nullptr;
    static_cast<handle*>(h)->workspace_bytes = 0;
    return status_success;
}

int cublasSetWorkspace_v2(void* h, void* workspace, size_t bytes) {
    if (!valid(h)) {
        return status_not_initialized;
    }
    if (bytes && !workspace) {
        return status_invalid_value;
    }
    static_cast<handle*>(h)->workspace = workspace;
    static_cast<handle*>(h)->workspace_bytes = bytes;
    return status_success;
}

int cublasGemmEx(void* h, int transa, int transb, int m, int n, int k, const void* alpha,
                 const void* a, int a_type, int lda, const void* b, int b_type, int ldb,
                 const void* beta, void* c, int c_type, int ldc, int compute_type, int algo) {
    (void)algo;
    if (!valid(h)) {
        return status_not_initialized;
    }
    if ((transa != op_n && transa != op_t) || (transb != op_n && transb != op_t) || m < 0 ||
        n < 0 || k < 0 || lda < (transa == op_n ? m : k) || lda < 1 ||
        ldb < (transb == op_n ? k : n) || ldb < 1 || ldc < m || ldc < 1 || !alpha || !beta) {
        return status_invalid_value;
    }
    if (compute_type != compute_32f || a_type != b_type ||
        (a_type != r_16f && a_type != r_16bf && a_type != r_32f) ||
        (c_type != r_32f && !(c_type == a_type && a_type != r_32f))) {
        return status_not_supported;
    }
    auto* call = new gemm_call{transa,
                               transb,
                               m,
                               n,
                               k,
                               *static_cast<const float*>(alpha),
                               *static_cast<const float*>(beta),
                               a,
                               a_type,
                               lda,
                               b,
                               b_type,
                               ldb,
                               c,
                               c_type,
                               ldc};
    auto* s = static_cast<llmos_emu_stream*>(static_cast<handle*>(h)->stream);
    if (!s) {
        run_gemm(call);
        delete call;
        return status_success;
    }
    if (s->magic != LLMOS_EMU_STREAM_MAGIC) {
        delete call;
        return status_invalid_value;
    }
    // cuBLAS reports a launch it could not queue as an execution failure.
    return s->submit(s, run_gemm, call, [](void* p) { delete static_cast<gemm_call*>(p); }) == 0
               ? status_success
               : status_execution_failed;
}

} // extern "C"
