// SPDX-License-Identifier: MIT
//
// What the CUDA backend's files share: error checking, device buffers,
// the run-time loaded cuBLAS, and the device-side model.
#pragma once

#include "cuda_backend_kernels.hh"

#include <cstddef>
#include <cstdint>
#include <llmos/engine/cuda.hh>
#include <string>
#include <vector>

namespace llmos::engine::cuda_detail {

/// Throws cuda_error "WHAT: cudaErrorX (CUDA's message)" unless e is
/// cudaSuccess (device_lost for an error that leaves the device unusable).
void check(cudaError_t e, const char* what);

/// Throws `message` for error `e`: device_lost when e leaves the device
/// unusable (cuda_error_is_sticky), else cuda_error.
[[noreturn]] void fail(cudaError_t e, std::string message);

/// "cudaErrorX (CUDA's message)".
std::string error_text(cudaError_t e);

/// A CUDA version as cudaDriverGetVersion gives it (13010) as "13.1".
std::string version_text(int v);

/// Device memory, freed with its owner. Any thread (with the owner's
/// device current).
class dev_buf {
public:
    dev_buf() = default;
    dev_buf(const dev_buf&) = delete;
    dev_buf& operator=(const dev_buf&) = delete;
    dev_buf(dev_buf&& o) noexcept
        : _p(o._p)
        , _n(o._n) {
        o._p = nullptr;
        o._n = 0;
    }
    ~dev_buf() { reset(); }

    /// At least `bytes` (contents lost when it grows). Throws cuda_error.
    void ensure(size_t bytes, const char* what);
    void reset() noexcept;
    void* get() const noexcept { return _p; }
    template <typename T>
    T* as() const noexcept {
        return static_cast<T*>(_p);
    }
    size_t size() const noexcept { return _n; }

private:
    void* _p = nullptr;
    size_t _n = 0;
};

/// Page-locked host memory (for asynchronous copies), freed with its owner.
class host_buf {
public:
    host_buf() = default;
    host_buf(const host_buf&) = delete;
    host_buf& operator=(const host_buf&) = delete;
    ~host_buf() { reset(); }

    /// At least `bytes` (contents lost when it grows). Throws cuda_error.
    void ensure(size_t bytes, const char* what);
    void reset() noexcept;
    template <typename T>
    T* as() const noexcept {
        return static_cast<T*>(_p);
    }

private:
    void* _p = nullptr;
    size_t _n = 0;
};

/// cuBLAS entry points, loaded with dlopen once per process. The enum
/// arguments are passed as int (what the C ABI does with them).
struct blas_api {
    using create_fn = int (*)(void** handle);
    using destroy_fn = int (*)(void* handle);
    using set_stream_fn = int (*)(void* handle, cudaStream_t stream);
    using set_workspace_fn = int (*)(void* handle, void* workspace, size_t bytes);
    using gemm_ex_fn = int (*)(void* handle, int transa, int transb, int m, int n, int k,
                               const void* alpha, const void* a, int a_type, int lda, const void* b,
                               int b_type, int ldb, const void* beta, void* c, int c_type, int ldc,
                               int compute_type, int algo);
    bool loaded = false;
    std::string library;
    std::string reason;
    create_fn create = nullptr;
    destroy_fn destroy = nullptr;
    set_stream_fn set_stream = nullptr;
    set_workspace_fn set_workspace = nullptr; ///< optional (null: cuBLAS's own workspace)
    gemm_ex_fn gemm_ex = nullptr;
};

/// The process's cuBLAS (loaded on the first call). Any thread.
const blas_api& blas();

// Values from cublas_api.h and library_types.h (checked where the header
// is there, in cuda_backend.cc).
inline constexpr int blas_op_n = 0;
inline constexpr int blas_op_t = 1;
inline constexpr int blas_r_16f = 2;   // CUDA_R_16F
inline constexpr int blas_r_16bf = 14; // CUDA_R_16BF
inline constexpr int blas_r_32f = 0;   // CUDA_R_32F
inline constexpr int blas_compute_32f = 68;
inline constexpr int blas_gemm_default = -1;

/// A weight matrix on the device.
struct dev_matrix {
    wkind kind = wkind::f32;
    const void* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
    uint64_t row_bytes = 0; ///< one row's bytes, rows back to back
};

struct dev_layer {
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    const float *bq = nullptr, *bk = nullptr, *bv = nullptr; ///< null: none
    dev_matrix wq, wk, wv, wo, w_gate, w_up, w_down;
};

} // namespace llmos::engine::cuda_detail

namespace llmos::engine {

struct cuda_model::impl {
    const model* m = nullptr;
    int device = 0;
    uint64_t bytes = 0;
    std::vector<cuda_detail::dev_buf> bufs; ///< everything uploaded
    std::vector<cuda_detail::dev_layer> layers;
    const float* output_norm = nullptr;
    cuda_detail::dev_matrix output;
    const double* inv_freq = nullptr; ///< n_rot / 2 RoPE frequencies
    int64_t max_quant_elems = 0;      ///< largest block-quantized matrix (dequant scratch)
    int64_t max_quant_cols = 0;       ///< widest block-quantized matrix (one dequantized row)
    std::string summary;
};

} // namespace llmos::engine
