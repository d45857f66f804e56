// SPDX-License-Identifier: MIT
//
// A host emulation of the CUDA device that the engine's CUDA backend uses,
// for testing that backend (its kernels and its host side) on machines
// without a GPU. The backend's sources are compiled as C++ with
// LLMOS_CUDA_EMU defined; they then include this header where they would
// include CUDA's, and run on it unchanged.
//
// - The runtime: the cudart calls the backend makes. Device memory is host
//   memory, tracked: copies and kernel pointer arguments are checked
//   against the allocations (a host pointer handed to a kernel, a copy in
//   the wrong direction or past an allocation's end is an error, as it
//   would fault on a device). Streams run their work at once, in order,
//   unless they capture a graph (below, at cudaStreamBeginCapture).
// - Kernels: each block's threads are fibers on the launching thread,
//   switched at __syncthreads() and at warp shuffles; blocks run one after
//   another. A thread runs until it waits, so a missing __syncthreads()
//   shows as a wrong result; a barrier some threads never reach, or a
//   full-mask shuffle with lanes that have exited, aborts with a message.
//   Launch limits (threads per block, grid size) are a device's.
// - Numbers: float math is the host's (expf, sincos from libm), halves
//   round to nearest even as on the device; sums run in the kernels' own
//   order per thread.
//
// Not emulated: the virtual-memory driver API (cuda_memory.hh), timing,
// concurrency between streams, dynamic shared memory.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <math.h>
#include <tuple>
#include <type_traits>
#include <utility>

// --- Vocabulary of device code ---

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time on a host thread: a block's shared memory is a
// static of the kernel, per host thread.
#define __shared__ static thread_local
#define CUDART_INF_F std::numeric_limits<float>::infinity()

struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) noexcept
        : x(vx)
        , y(vy)
        , z(vz) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};

/// binary16, as stored.
struct __half {
    uint16_t bits;
};

float __half2float(__half h) noexcept;
__half __float2half_rn(float f) noexcept;

/// bfloat16, as stored.
struct __nv_bfloat16 {
    uint16_t bits;
};

float __bfloat162float(__nv_bfloat16 b) noexcept;
__nv_bfloat16 __float2bfloat16_rn(float f) noexcept;

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

/// CUDA's min/max for device code (the kernels call them unqualified).
template <typename T>
requires std::is_arithmetic_v<T>
constexpr T min(T a, T b) noexcept {
    return b < a ? b : a;
}
template <typename T>
requires std::is_arithmetic_v<T>
constexpr T max(T a, T b) noexcept {
    return a < b ? b : a;
}

namespace llmos::cuda_emu::detail {
void sync_block();
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width);
} // namespace llmos::cuda_emu::detail

inline void __syncthreads() {
    llmos::cuda_emu::detail::sync_block();
}

template <typename T>
requires(std::is_trivially_copyable_v<T> && sizeof(T) <= 8) T
    __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = llmos::cuda_emu::detail::shfl_xor(mask, bits, lane_mask, width);
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

// --- The runtime (cudart's names and values) ---

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalState = 401,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureWrongThread = 908,
};
using cudaError_t = cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaDeviceAttr {
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrGPUDirectRDMASupported = 116,
};

inline constexpr unsigned cudaStreamNonBlocking = 1;

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUgraph_st;
using cudaGraph_t = CUgraph_st*;
struct CUgraphExec_st;
using cudaGraphExec_t = CUgraphExec_st*;

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};

/// The fields of cudaDeviceProp that callers read.
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major;
    int minor;
    int multiProcessorCount;
};

const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind k);
cudaError_t cudaMemset(void* p, int value, size_t n);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);

// Graphs, from stream capture only. While a stream captures, the kernels,
// copies and cuBLAS calls queued on it are recorded (kernel arguments by
// value), not run; a launch of the instantiated graph runs them in order.
// As on a device, a capture that is not relaxed forbids its thread the
// potentially unsafe calls (cudaMalloc, cudaMallocHost), a global one
// every other thread too; the calls that synchronize the device or the
// legacy stream (cudaFree, cudaFreeHost, cudaMemcpy, cudaMemcpy2D,
// cudaMemset, cudaDeviceSynchronize, cudaStreamSynchronize of the legacy
// stream, cuMemUnmap) are refused while any thread captures, whatever the
// mode (a device checks captures per device); synchronizing the capturing
// stream is refused. Each fails with cudaErrorStreamCaptureUnsupported and
// invalidates the captures it meets.
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

// --- The driver's virtual memory management (cuda.h's names) ---
//
// Physical allocations are memfds, mapped into address ranges reserved
// with PROT_NONE; exported handles are dup()s of them, so another process
// imports the same memory, which outlives its creator while an fd or a
// mapping holds it, as with CUDA's POSIX file descriptor handles. Mapped
// memory becomes accessible (and device memory to the checks above) with
// cuMemSetAccess. Where the kernel has /dev/udmabuf the device exports
// dma-bufs: a range's dma-buf is a udmabuf over the memfds behind it, which
// the llmos module imports and the CPU maps as the same memory; elsewhere
// CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0 and the export is refused.

enum CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
};
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUmemGenericAllocationHandle = unsigned long long;

enum CUdevice_attribute {
    CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102,
    CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED = 103,
    CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED = 110,
    CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 124,
};
enum CUmemAllocationType { CU_MEM_ALLOCATION_TYPE_PINNED = 1 };
enum CUmemAllocationHandleType { CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1 };
enum CUmemLocationType { CU_MEM_LOCATION_TYPE_DEVICE = 1 };
enum CUmemAccess_flags { CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3 };
enum CUmemAllocationGranularity_flags { CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0 };
enum CUmemRangeHandleType { CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1 };

struct CUmemLocation {
    CUmemLocationType type;
    int id;
};

struct CUmemAllocationProp {
    CUmemAllocationType type;
    CUmemAllocationHandleType requestedHandleTypes;
    CUmemLocation location;
    void* win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
};

struct CUmemAccessDesc {
    CUmemLocation location;
    CUmemAccess_flags flags;
};

/// The emulated toolkit and runtime: CUDA 13.1. Its driver says the same
/// unless LLMOS_CUDA_EMU_DRIVER_VERSION (read once) says otherwise: 13000
/// is a driver of an older minor release, which serves this runtime but
/// refuses entry points asked for at 13.1; 12080 one of an older major
/// release, with which every device call fails with
/// cudaErrorInsufficientDriver.
#define CUDA_VERSION 13010

CUresult cuGetErrorName(CUresult r, const char** s);
CUresult cuGetErrorString(CUresult r, const char** s);
CUresult cuDeviceGet(CUdevice* d, int ordinal);
CUresult cuDeviceGetName(char* name, int len, CUdevice d);
CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d);
CUresult cuMemGetAllocationGranularity(size_t* g, const CUmemAllocationProp* prop,
                                       CUmemAllocationGranularity_flags f);
CUresult cuMemAddressReserve(CUdeviceptr* p, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags);
CUresult cuMemAddressFree(CUdeviceptr p, size_t size);
CUresult cuMemCreate(CUmemGenericAllocationHandle* h, size_t size, const CUmemAllocationProp* prop,
                     unsigned long long flags);
CUresult cuMemRelease(CUmemGenericAllocationHandle h);
CUresult cuMemMap(CUdeviceptr p, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                  unsigned long long flags);
CUresult cuMemUnmap(CUdeviceptr p, size_t size);
CUresult cuMemSetAccess(CUdeviceptr p, size_t size, const CUmemAccessDesc* desc, size_t count);
CUresult cuMemExportToShareableHandle(void* handle, CUmemGenericAllocationHandle h,
                                      CUmemAllocationHandleType type, unsigned long long flags);
CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* h, void* os_handle,
                                        CUmemAllocationHandleType type);
CUresult cuMemGetHandleForAddressRange(void* handle, CUdeviceptr p, size_t size,
                                       CUmemRangeHandleType type, unsigned long long flags);

enum cudaDriverEntryPointQueryResult {
    cudaDriverEntryPointSuccess = 0,
    cudaDriverEntryPointSymbolNotFound = 1,
    cudaDriverEntryPointVersionNotSufficent = 2,
};
inline constexpr unsigned long long cudaEnableDefault = 0;

/// The driver functions above, by name.
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned version,
                                             unsigned long long flags,
                                             cudaDriverEntryPointQueryResult* status);

// --- Launches ---

namespace llmos::cuda_emu {

/// Name the emulated device reports.
inline constexpr const char* device_name = "llmos CUDA emulator (host fibers)";

/// Fault injection, for testing what a program does when a capture fails
/// on a device: each of the next `n` captures begun on any thread is
/// invalidated once it has recorded `after` pieces of work (launches,
/// copies, GEMMs), as another thread's device-wide call would invalidate
/// it; the capture's next call then fails with
/// cudaErrorStreamCaptureInvalidated, and so does cudaStreamEndCapture.
/// LLMOS_CUDA_EMU_FAIL_CAPTURES=N in the environment sets n at start
/// (after = 3), for programs the test starts.
void fail_captures(unsigned n, unsigned after = 3);

/// Fault injection, for testing what a program does when device memory
/// runs out: each of the next `n` device allocations (cudaMalloc) on any
/// thread fails with cudaErrorMemoryAllocation, as on a device that is
/// full (not sticky: the thread's last error, as cudaMalloc leaves it).
void fail_allocations(unsigned n);

/// Fault injection, for testing what a program does when a kernel faults
/// on a device: the `n`th kernel to run from now (1: the next one) fails
/// as one that read an illegal address would, with a sticky
/// cudaErrorIllegalAddress: every later call of the process fails with it.
/// LLMOS_CUDA_EMU_FAULT_AT=N in the environment sets n at start, for
/// programs the test starts.
void fault_kernel(uint64_t n);
/// Forgets a fault (a device cannot; for tests that go on in-process).
void clear_fault();

namespace detail {

/// Checks a launch's configuration and stream; records the error (for
/// cudaGetLastError) and returns false when it cannot start.
bool check_launch(const char* kernel, dim3 grid, dim3 block, cudaStream_t s);
/// Pointer argument `index` of `kernel`: null, device or pinned memory;
/// otherwise a sticky illegal-address error (returns false).
bool check_pointer(const char* kernel, size_t index, const void* p);
/// Runs body(ctx) as every thread of every block of the grid.
void run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* ctx);
/// Runs `work` now, or records it when `s` captures a graph (an
/// invalidated capture drops it and records the error).
void submit(cudaStream_t s, std::function<void()> work);
/// Whether the device has faulted (nothing runs on it any more).
bool faulted();
/// Counts a kernel run; true when it is the one fault_kernel() named (the
/// device has faulted then).
bool injected_fault(const char* kernel);

template <typename A>
bool check_arg(const char* kernel, size_t index, const A& a) {
    if constexpr (std::is_pointer_v<A>) {
        return check_pointer(kernel, index, static_cast<const void*>(a));
    } else {
        return true;
    }
}

} // namespace detail

/// kernel<<<grid, block, 0, stream>>>(args...) is
/// launch("kernel", grid, block, stream, kernel)(args...).
template <typename... P>
struct launcher {
    const char* name;
    dim3 grid, block;
    cudaStream_t stream;
    void (*fn)(P...);

    void operator()(P... args) const {
        if (!detail::check_launch(name, grid, block, stream)) {
            return;
        }
        // The arguments by value, as a launch (and a captured one) holds them.
        detail::submit(stream,
                       [self = *this, a = std::tuple<P...>{args...}]() mutable { self.run(a); });
    }

    void run(std::tuple<P...>& a) const {
        if (detail::faulted() || detail::injected_fault(name)) {
            return;
        }
        size_t i = 0;
        bool ok = true;
        std::apply([&](const P&... v) { ((ok = ok && detail::check_arg(name, i++, v)), ...); }, a);
        if (!ok) {
            return;
        }
        struct call {
            void (*fn)(P...);
            std::tuple<P...>* a;
        } c{fn, &a};
        detail::run_grid(
            name, grid, block,
            [](void* p) {
                auto* cc = static_cast<call*>(p);
                std::apply(cc->fn, *cc->a);
            },
            &c);
    }
};

template <typename... P>
launcher<P...> launch(const char* name, dim3 grid, dim3 block, cudaStream_t s, void (*fn)(P...)) {
    return {name, grid, block, s, fn};
}

} // namespace llmos::cuda_emu
