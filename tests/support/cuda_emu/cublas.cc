// SPDX-License-Identifier: MIT
//
// The CUDA emulator's cuBLAS: a libcublas.so.13 with the four entry points
// the engine loads (cublasCreate_v2, cublasDestroy_v2, cublasSetStream_v2,
// cublasGemmEx), computing on the host what cuBLAS documents: column-major
// C = alpha op(A) op(B) + beta C, its argument checks and its type
// combinations (A and B both F16, both BF16 or both F32; C F32 or, with
// 16-bit inputs, their type; F32 compute). Only the emulator's tests find it (their run path).
#include <cstdint>
#include <llmos/engine/quant.hh>

namespace {

// cublasStatus_t, cublasOperation_t, cudaDataType, cublasComputeType_t.
constexpr int status_success = 0;
constexpr int status_not_initialized = 1;
constexpr int status_invalid_value = 7;
constexpr int status_not_supported = 15;
constexpr int op_n = 0, op_t = 1;
constexpr int r_32f = 0, r_16f = 2, r_16bf = 14;
constexpr int compute_32f = 68;

constexpr uint32_t handle_magic = 0x626c6173; // "blas"

struct handle {
    uint32_t magic = handle_magic;
    void* stream = nullptr;
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
    static_cast<handle*>(h)->stream = stream;
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
    const float al = *static_cast<const float*>(alpha);
    const float be = *static_cast<const float*>(beta);
    for (int64_t j = 0; j < n; ++j) {
        for (int64_t i = 0; i < m; ++i) {
            float s = 0.0f;
            for (int64_t l = 0; l < k; ++l) {
                const float av = load(a, a_type, transa == op_n ? i + l * lda : l + i * lda);
                const float bv = load(b, b_type, transb == op_n ? l + j * ldb : j + l * ldb);
                s += av * bv;
            }
            const int64_t ci = i + j * ldc;
            if (c_type == r_32f) {
                float* cf = static_cast<float*>(c);
                cf[ci] = al * s + (be != 0.0f ? be * cf[ci] : 0.0f);
            } else {
                auto* ch = static_cast<uint16_t*>(c);
                const float old = be != 0.0f ? be * load(c, c_type, ci) : 0.0f;
                ch[ci] = store16(c_type, al * s + old);
            }
        }
    }
    return status_success;
}

} // extern "C"
