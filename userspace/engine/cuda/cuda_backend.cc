// SPDX-License-Identifier: MIT
//
// The CUDA backend's host side: probing, cuBLAS loaded at run time, and
// the model upload. (The step is in cuda_backend_context.cc, the kernels
// in cuda_kernels.cu.)
#include "cuda_backend.hh"

#include "cuda_sync.hh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <dlfcn.h>
#include <llmos/engine/types.hh>
#include <map>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>
#include <utility>

#if !defined(LLMOS_CUDA_EMU) && __has_include(<cublas_api.h>)
#include <cublas_api.h>
static_assert(CUBLAS_OP_N == llmos::engine::cuda_detail::blas_op_n);
static_assert(CUBLAS_OP_T == llmos::engine::cuda_detail::blas_op_t);
static_assert(CUDA_R_16F == llmos::engine::cuda_detail::blas_r_16f);
static_assert(CUDA_R_16BF == llmos::engine::cuda_detail::blas_r_16bf);
static_assert(CUDA_R_32F == llmos::engine::cuda_detail::blas_r_32f);
static_assert(CUBLAS_COMPUTE_32F == llmos::engine::cuda_detail::blas_compute_32f);
static_assert(CUBLAS_GEMM_DEFAULT == llmos::engine::cuda_detail::blas_gemm_default);
static_assert(sizeof(cublasOperation_t) == sizeof(int) && sizeof(cudaDataType) == sizeof(int) &&
              sizeof(cublasComputeType_t) == sizeof(int) &&
              sizeof(cublasGemmAlgo_t) == sizeof(int));
#endif

#ifndef LLMOS_CUDA_EMU
// cuda_error_is_sticky's numbers are the runtime's (cuda_memory.cc checks
// the driver's).
static_assert(llmos::engine::cuda_error_is_sticky(cudaErrorECCUncorrectable) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorNvlinkUncorrectable) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorContained) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorIllegalAddress) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorLaunchTimeout) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorAssert) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorHardwareStackError) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorIllegalInstruction) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorMisalignedAddress) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorInvalidAddressSpace) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorInvalidPc) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorLaunchFailure) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorTensorMemoryLeak) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorMpsClientTerminated) &&
              llmos::engine::cuda_error_is_sticky(cudaErrorExternalDevice));
static_assert(!llmos::engine::cuda_error_is_sticky(cudaErrorMemoryAllocation) &&
              !llmos::engine::cuda_error_is_sticky(cudaErrorLaunchOutOfResources) &&
              !llmos::engine::cuda_error_is_sticky(cudaErrorStreamCaptureInvalidated));
#endif

#ifndef LLMOS_CUDA_ARCH
#define LLMOS_CUDA_ARCH 90
#endif

namespace llmos::engine {

namespace cuda_detail {

std::string error_text(cudaError_t e) {
    return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

std::string version_text(int v) {
    return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        fail(e, std::string(what) + ": " + error_text(e));
    }
}

void fail(cudaError_t e, std::string message) {
    // Reported here, so not left behind as this thread's last error for
    // the next launch's check to take as its own (a failed cudaMalloc's
    // cudaErrorMemoryAllocation would fail the next step's first kernel,
    // or its graph capture). A sticky error stays whatever is done.
    (void)cudaGetLastError();
    if (cuda_error_is_sticky(e)) {
        throw device_lost(message + ": the GPU cannot be used by this process any more");
    }
    throw cuda_error(message);
}

void dev_buf::ensure(size_t bytes, const char* what) {
    if (bytes <= _n && _p) {
        return;
    }
    reset();
    void* p = nullptr;
    device_sync_guard g;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
        fail(e, std::string("cudaMalloc of ") + std::to_string(bytes) + " bytes for " + what +
                    ": " + error_text(e));
    }
    _p = p;
    _n = bytes;
}

void dev_buf::reset() noexcept {
    if (_p) {
        device_sync_guard g;
        cudaFree(_p);
    }
    _p = nullptr;
    _n = 0;
}

void host_buf::ensure(size_t bytes, const char* what) {
    if (bytes <= _n && _p) {
        return;
    }
    reset();
    void* p = nullptr;
    device_sync_guard g;
    const cudaError_t e = cudaMallocHost(&p, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
        fail(e, std::string("cudaMallocHost of ") + std::to_string(bytes) + " bytes for " + what +
                    ": " + error_text(e));
    }
    _p = p;
    _n = bytes;
}

void host_buf::reset() noexcept {
    if (_p) {
        device_sync_guard g;
        cudaFreeHost(_p);
    }
    _p = nullptr;
    _n = 0;
}

namespace {

blas_api load_blas() {
    blas_api a;
    void* lib = nullptr;
    std::string errors;
    for (const char* name : {"libcublas.so.13", "libcublas.so"}) {
        lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (lib) {
            a.library = name;
            break;
        }
        const char* err = ::dlerror();
        errors += (errors.empty() ? "" : "; ") + std::string(err ? err : name);
    }
    if (!lib) {
        a.reason = errors;
        return a;
    }
    auto sym = [&](const char* name) -> void* {
        void* p = ::dlsym(lib, name);
        if (!p && a.reason.empty()) {
            const char* err = ::dlerror();
            a.reason = a.library + ": " + (err ? err : std::string("no symbol ") + name);
        }
        return p;
    };
    a.create = reinterpret_cast<blas_api::create_fn>(sym("cublasCreate_v2"));
    a.destroy = reinterpret_cast<blas_api::destroy_fn>(sym("cublasDestroy_v2"));
    a.set_stream = reinterpret_cast<blas_api::set_stream_fn>(sym("cublasSetStream_v2"));
    a.gemm_ex = reinterpret_cast<blas_api::gemm_ex_fn>(sym("cublasGemmEx"));
    a.loaded = a.create && a.destroy && a.set_stream && a.gemm_ex;
    if (a.loaded) {
        a.set_workspace =
            reinterpret_cast<blas_api::set_workspace_fn>(::dlsym(lib, "cublasSetWorkspace_v2"));
    }
    if (!a.loaded) {
        ::dlclose(lib); // the library stays unused: nothing points into it
        a.create = nullptr;
        a.destroy = nullptr;
        a.set_stream = nullptr;
        a.set_workspace = nullptr;
        a.gemm_ex = nullptr;
    }
    return a;
}

} // namespace

const blas_api& blas() {
    static const blas_api api = load_blas();
    return api;
}

} // namespace cuda_detail

using namespace cuda_detail;

bool cuda_built() noexcept {
    return true;
}

cuda_device_info cuda_probe(int device) noexcept {
    cuda_device_info info;
    info.device = device;
    // What a failed call below leaves as this thread's last error is said
    // in `reason`, not left for a later launch's check.
    struct clear_on_failure {
        const cuda_device_info& i;
        ~clear_on_failure() {
            if (!i.available) {
                (void)cudaGetLastError();
            }
        }
    } clear{info};
    try {
        cudaRuntimeGetVersion(&info.runtime_version);
        cudaDriverGetVersion(&info.driver_version);
        int count = 0;
        if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
            info.reason = "cudaGetDeviceCount: " + error_text(e);
            if (e == cudaErrorInsufficientDriver) {
                // CUDA says the same for no driver at all and for one too
                // old for this runtime: say which.
                info.reason =
                    (info.driver_version == 0
                         ? std::string("no NVIDIA driver (libcuda.so.1 is missing or "
                                       "cannot be loaded)")
                         : "the NVIDIA driver runs CUDA " + version_text(info.driver_version) +
                               " programs; this one is built with CUDA " +
                               version_text(info.runtime_version) + ": a newer driver is needed") +
                    "; " + info.reason;
            }
            return info;
        }
        if (device < 0 || device >= count) {
            info.reason = "no CUDA device " + std::to_string(device) + " (" +
                          std::to_string(count) + " found)";
            return info;
        }
        cudaDeviceProp prop{};
        if (cudaError_t e = cudaGetDeviceProperties(&prop, device); e != cudaSuccess) {
            info.reason = "cudaGetDeviceProperties: " + error_text(e);
            return info;
        }
        info.name = prop.name;
        info.cc_major = prop.major;
        info.cc_minor = prop.minor;
        info.total_mem = prop.totalGlobalMem;
        info.multiprocessors = prop.multiProcessorCount;
        int rdma = 0;
        if (cudaDeviceGetAttribute(&rdma, cudaDevAttrGPUDirectRDMASupported, device) ==
            cudaSuccess) {
            info.gpudirect_rdma = rdma != 0;
        } else {
            (void)cudaGetLastError(); // an unknown attribute: not a launch's error
        }
        // Built for one architecture, with its PTX: newer devices JIT it,
        // older ones cannot run it.
        if (prop.major * 10 + prop.minor < LLMOS_CUDA_ARCH) {
            info.reason = "device " + info.name + " has compute capability " +
                          std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                          "; this library was built for sm_" + std::to_string(LLMOS_CUDA_ARCH) +
                          " (configure with LLMOS_CUDA_ARCH)";
            return info;
        }
        info.available = true;
    } catch (...) {
        info.available = false;
        info.reason = "out of memory while probing";
    }
    return info;
}

cuda_blas_info cuda_blas() noexcept {
    cuda_blas_info i;
    try {
        const blas_api& a = blas();
        i.loaded = a.loaded;
        i.library = a.library;
        i.reason = a.reason;
    } catch (...) {
        i.reason = "out of memory";
    }
    return i;
}

cuda_device_buffer::cuda_device_buffer(uint64_t bytes, int device)
    : _device(device) {
    const cuda_device_info di = cuda_probe(device);
    if (!di.available) {
        throw cuda_error("cuda device buffer: " + di.reason);
    }
    check(cudaSetDevice(device), "cudaSetDevice");
    void* p = nullptr;
    device_sync_guard g;
    if (const cudaError_t e = cudaMalloc(&p, std::max<uint64_t>(bytes, 256)); e != cudaSuccess) {
        fail(e, "cudaMalloc of " + std::to_string(bytes) + " bytes: " + error_text(e));
    }
    // cudaMemset may return before it ran; a non-blocking stream's kernels
    // would not wait for it. The legacy stream, which ran it, is enough to
    // wait for (not other threads' streams).
    cudaError_t e = cudaMemset(p, 0, std::max<uint64_t>(bytes, 256));
    if (e == cudaSuccess) {
        e = cudaStreamSynchronize(nullptr);
    }
    if (e != cudaSuccess) {
        cudaFree(p);
        fail(e, "cudaMemset: " + error_text(e));
    }
    _p = p;
    _n = bytes;
}

cuda_device_buffer::~cuda_device_buffer() {
    if (_p) {
        cudaSetDevice(_device);
        device_sync_guard g;
        cudaFree(_p);
    }
}

cuda_device_buffer::cuda_device_buffer(cuda_device_buffer&& o) noexcept
    : _p(o._p)
    , _n(o._n)
    , _device(o._device) {
    o._p = nullptr;
    o._n = 0;
}

namespace {

// Uploads weights and remembers how.
class uploader {
public:
    uploader(cuda_model::impl& d)
        : _d(d) {}

    const void* raw(const void* src, size_t bytes, const char* what) {
        dev_buf b;
        b.ensure(bytes, what);
        device_sync_guard g;
        check(cudaMemcpy(b.get(), src, bytes, cudaMemcpyHostToDevice), what);
        const void* p = b.get();
        _d.bytes += bytes;
        _d.bufs.push_back(std::move(b));
        return p;
    }

    const float* floats(std::span<const float> v, const char* what) {
        if (v.empty()) {
            return nullptr;
        }
        return static_cast<const float*>(raw(v.data(), v.size_bytes(), what));
    }

    /// Makes the mapped file's pages of [p, p + n) resident, where the
    /// kernel can (best effort: the copy faults in whatever is left).
    static void prefault(const void* p, size_t n) {
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 // Linux 5.14
#endif
        const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
        const auto start = reinterpret_cast<uintptr_t>(p) / page * page;
        const auto end = reinterpret_cast<uintptr_t>(p) + n;
        if (::madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_READ) != 0) {
            (void)::madvise(reinterpret_cast<void*>(start), end - start, MADV_WILLNEED);
        }
    }

    dev_matrix matrix(const weight_view& w, const char* what) {
        dev_matrix m;
        m.rows = w.rows;
        m.cols = w.cols;
        const uint64_t packed = *row_bytes(w.type, static_cast<uint64_t>(w.cols));
        m.row_bytes = packed;
        const size_t stride = w.row_stride ? w.row_stride : packed;
        const auto* src = static_cast<const std::byte*>(w.data);
        switch (w.type) {
        case ggml_type::f32:
            m.kind = wkind::f32;
            break;
        case ggml_type::f16:
            m.kind = wkind::f16;
            break;
        case ggml_type::bf16:
            m.kind = wkind::bf16;
            break;
        case ggml_type::q8_0:
            m.kind = wkind::q8_0;
            break;
        case ggml_type::q4_0:
            m.kind = wkind::q4_0;
            break;
        case ggml_type::q4_1:
            m.kind = wkind::q4_1;
            break;
        case ggml_type::q5_0:
            m.kind = wkind::q5_0;
            break;
        case ggml_type::q5_1:
            m.kind = wkind::q5_1;
            break;
        case ggml_type::q4_k:
            m.kind = wkind::q4_k;
            break;
        case ggml_type::q5_k:
            m.kind = wkind::q5_k;
            break;
        case ggml_type::q6_k:
            m.kind = wkind::q6_k;
            break;
        default:
            // Every type the engine computes with has a kind: model::load
            // refuses the others before this.
            throw cuda_error(std::string("cuda model: ") + what + " is " +
                             std::string(info(w.type)->name) + ", which the kernels do not read");
        }
        _kinds[std::string(info(w.type)->name)]++;
        dev_buf b;
        b.ensure(packed * size_t(w.rows), what);
        // Read in from the file before the lock: a copy from a cold page
        // cache would hold up every other worker's guarded call meanwhile.
        if (w.rows) {
            prefault(src, stride * size_t(w.rows - 1) + packed);
        }
        device_sync_guard g;
        // Rows back to back (the usual case) go as one copy: a 2D copy
        // from pageable memory may be staged row by row.
        check(stride == packed
                  ? cudaMemcpy(b.get(), src, packed * size_t(w.rows), cudaMemcpyHostToDevice)
                  : cudaMemcpy2D(b.get(), packed, src, stride, packed, size_t(w.rows),
                                 cudaMemcpyHostToDevice),
              what);
        m.data = b.get();
        _d.bytes += packed * size_t(w.rows);
        _d.bufs.push_back(std::move(b));
        if (block_kind(m.kind)) {
            _d.max_quant_elems = std::max(_d.max_quant_elems, w.rows * w.cols);
            _d.max_quant_cols = std::max(_d.max_quant_cols, w.cols);
        }
        return m;
    }

    std::string summary() const {
        std::string s;
        for (auto& [k, n] : _kinds) {
            s += (s.empty() ? "" : ", ") + k + " x" + std::to_string(n);
        }
        return s;
    }

private:
    cuda_model::impl& _d;
    std::map<std::string, int> _kinds;
};

} // namespace

cuda_model::cuda_model(const model& m, int device)
    : _impl(std::make_unique<impl>()) {
    const model_params& p = m.params();
    // What the kernels take: a block's shared query (max_head_dim floats),
    // and heads on a grid's y (at most 65535). A model past them would load
    // and then fail every step: refused here, saying why.
    if (p.head_dim > max_head_dim) {
        throw cuda_error("cuda model: heads of " + std::to_string(p.head_dim) +
                         " dimensions; the GPU's attention takes up to " +
                         std::to_string(max_head_dim) + " (run this model on the CPU)");
    }
    if (p.n_head > 65535) {
        throw cuda_error("cuda model: " + std::to_string(p.n_head) +
                         " attention heads; the GPU's attention takes up to 65535 (run this "
                         "model on the CPU)");
    }
    const cuda_device_info di = cuda_probe(device);
    if (!di.available) {
        throw cuda_error("cuda model: " + di.reason);
    }
    check(cudaSetDevice(device), "cudaSetDevice");
    impl& d = *_impl;
    d.m = &m;
    d.device = device;
    uploader up(d);
    for (uint32_t l = 0; l < p.n_layer; ++l) {
        const layer_weights& w = m.layers()[l];
        dev_layer dl;
        dl.attn_norm = up.floats(w.attn_norm, "attn_norm");
        dl.ffn_norm = up.floats(w.ffn_norm, "ffn_norm");
        dl.bq = up.floats(w.bq, "attn_q.bias");
        dl.bk = up.floats(w.bk, "attn_k.bias");
        dl.bv = up.floats(w.bv, "attn_v.bias");
        dl.wq = up.matrix(w.wq, "attn_q");
        dl.wk = up.matrix(w.wk, "attn_k");
        dl.wv = up.matrix(w.wv, "attn_v");
        dl.wo = up.matrix(w.wo, "attn_output");
        dl.w_gate = up.matrix(w.w_gate, "ffn_gate");
        dl.w_up = up.matrix(w.w_up, "ffn_up");
        dl.w_down = up.matrix(w.w_down, "ffn_down");
        d.layers.push_back(dl);
    }
    d.output_norm = up.floats(m.output_norm(), "output_norm");
    d.output = up.matrix(m.output(), "output");
    // RoPE frequencies exactly as context.cc computes them.
    std::vector<double> inv_freq;
    auto freqs = m.rope_freqs();
    for (uint32_t i = 0; i < p.n_rot / 2; ++i) {
        double f = std::pow(double(p.rope_base), -2.0 * i / p.n_rot);
        if (!freqs.empty() && freqs[i] > 0) {
            f /= freqs[i];
        }
        inv_freq.push_back(f);
    }
    inv_freq.push_back(0); // never empty
    d.inv_freq = static_cast<const double*>(
        up.raw(inv_freq.data(), inv_freq.size() * sizeof(double), "rope frequencies"));
    // cudaMemcpy from pageable memory may return before its DMA lands, and
    // the contexts' non-blocking streams do not wait for the legacy stream:
    // wait for it (not for other contexts' streams).
    {
        device_sync_guard g;
        check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize (weights upload)");
        // Every kernel loaded now, while nothing captures: not at a first
        // launch during another context's capture.
        check(load_kernels(), "loading the kernels");
    }
    d.summary = up.summary();
}

cuda_model::~cuda_model() {
    if (_impl) {
        cudaSetDevice(_impl->device);
    }
}

cuda_model::cuda_model(cuda_model&&) noexcept = default;

const model& cuda_model::get_model() const noexcept {
    return *_impl->m;
}

int cuda_model::device() const noexcept {
    return _impl->device;
}

uint64_t cuda_model::device_bytes() const noexcept {
    return _impl->bytes;
}

std::string cuda_model::layout_summary() const {
    return _impl->summary;
}

} // namespace llmos::engine
