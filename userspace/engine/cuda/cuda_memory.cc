// SPDX-License-Identifier: MIT
//
// gpu_memory on CUDA's virtual memory management (VMM) API.
//
// The driver API is not linked: its entry points come from the runtime
// (cudart_static) through cudaGetDriverEntryPointByVersion, so a binary
// loads on a machine without libcuda.so.1 and probe_gpu() says "no CUDA
// driver". The primary context is made current through the runtime
// (cudaSetDevice, cudaFree(0)) on whatever thread calls in.
//
// Every CUDA call is checked; a failure throws gpu_error naming the call
// and the CUresult (cuGetErrorName, cuGetErrorString). A partly built
// object unwinds in state's destructor: chunks are unmapped and released
// in reverse, then the address range is freed.
#include "cuda_backend.hh"
#include "cuda_sync.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>
#ifdef LLMOS_CUDA_EMU
#include <cuda_emu.hh> // tests: the host emulation of the device
#else
#include <cuda.h>
#include <cuda_runtime_api.h>
#endif
#include <fcntl.h>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/cuda_memory.hh>
#include <unistd.h>

#ifndef LLMOS_CUDA_EMU
// cuda_error_is_sticky takes the driver's numbers too.
static_assert(llmos::engine::cuda_error_is_sticky(CUDA_ERROR_ECC_UNCORRECTABLE) &&
              llmos::engine::cuda_error_is_sticky(CUDA_ERROR_NVLINK_UNCORRECTABLE) &&
              llmos::engine::cuda_error_is_sticky(CUDA_ERROR_CONTAINED) &&
              llmos::engine::cuda_error_is_sticky(CUDA_ERROR_ILLEGAL_ADDRESS) &&
              llmos::engine::cuda_error_is_sticky(CUDA_ERROR_LAUNCH_FAILED) &&
              !llmos::engine::cuda_error_is_sticky(CUDA_ERROR_OUT_OF_MEMORY));
#endif

namespace llmos::engine {

namespace {

// The driver calls we use, as the runtime hands them out.
struct driver_api {
    decltype(&::cuGetErrorName) get_error_name = nullptr;
    decltype(&::cuGetErrorString) get_error_string = nullptr;
    decltype(&::cuDeviceGet) device_get = nullptr;
    decltype(&::cuDeviceGetName) device_get_name = nullptr;
    decltype(&::cuDeviceGetAttribute) device_get_attribute = nullptr;
    decltype(&::cuMemGetAllocationGranularity) mem_get_allocation_granularity = nullptr;
    decltype(&::cuMemAddressReserve) mem_address_reserve = nullptr;
    decltype(&::cuMemAddressFree) mem_address_free = nullptr;
    decltype(&::cuMemCreate) mem_create = nullptr;
    decltype(&::cuMemRelease) mem_release = nullptr;
    decltype(&::cuMemMap) mem_map = nullptr;
    decltype(&::cuMemUnmap) mem_unmap = nullptr;
    decltype(&::cuMemSetAccess) mem_set_access = nullptr;
    decltype(&::cuMemExportToShareableHandle) mem_export_to_shareable_handle = nullptr;
    decltype(&::cuMemImportFromShareableHandle) mem_import_from_shareable_handle = nullptr;
    decltype(&::cuMemGetHandleForAddressRange) mem_get_handle_for_address_range = nullptr;
    std::string error; ///< why the API is not usable; empty when it is
};

/// `fd` closed on exec: the driver does not say how it makes the fds it
/// exports, and one a child inherited would keep the GPU memory alive.
owned_fd cloexec(owned_fd fd) {
    if (fd && ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC) != 0) {
        throw gpu_error(std::string("fcntl(FD_CLOEXEC) on an exported GPU memory fd: ") +
                        std::strerror(errno));
    }
    return fd;
}

/// The ABI version the entry points are asked for: this build's, or the
/// driver's where that is older (a toolkit newer than the driver in the
/// same major release: the driver refuses a version above its own with
/// cudaErrorInvalidValue). Every call here has kept its ABI since CUDA 12.
template <typename Fn>
bool load_entry(driver_api& api, Fn& fn, const char* symbol, int version) {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    cudaError_t e =
        cudaGetDriverEntryPointByVersion(symbol, &p, unsigned(version), cudaEnableDefault, &q);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); // said in api.error, not left for a launch's check
        api.error = std::string("cudaGetDriverEntryPointByVersion(") + symbol + ", CUDA " +
                    cuda_detail::version_text(version) + "): " + cuda_detail::error_text(e);
        return false;
    }
    if (q != cudaDriverEntryPointSuccess || p == nullptr) {
        api.error =
            std::string("the CUDA driver has no ") + symbol + " for CUDA " +
            cuda_detail::version_text(version) +
            (q == cudaDriverEntryPointVersionNotSufficent ? " (the call is newer than that version)"
                                                          : "");
        return false;
    }
    fn = reinterpret_cast<Fn>(p);
    return true;
}

driver_api load_api() {
    driver_api api;
    int driver = 0;
    cudaError_t e = cudaDriverGetVersion(&driver);
    if (e != cudaSuccess || driver == 0) {
        (void)cudaGetLastError(); // said in api.error, not left for a launch's check
        api.error = "no CUDA driver (libcuda.so.1 is not installed or cannot be loaded)";
        return api;
    }
    int count = 0;
    e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        // cuda_probe tells a driver too old for this build from none.
        api.error = "no usable CUDA device: " + cuda_probe(0).reason;
        return api;
    }
    const int v = std::min(CUDA_VERSION, driver);
    auto load = [&](auto& fn, const char* symbol) { return load_entry(api, fn, symbol, v); };
    bool ok = load(api.get_error_name, "cuGetErrorName") &&
              load(api.get_error_string, "cuGetErrorString") &&
              load(api.device_get, "cuDeviceGet") && load(api.device_get_name, "cuDeviceGetName") &&
              load(api.device_get_attribute, "cuDeviceGetAttribute") &&
              load(api.mem_get_allocation_granularity, "cuMemGetAllocationGranularity") &&
              load(api.mem_address_reserve, "cuMemAddressReserve") &&
              load(api.mem_address_free, "cuMemAddressFree") &&
              load(api.mem_create, "cuMemCreate") && load(api.mem_release, "cuMemRelease") &&
              load(api.mem_map, "cuMemMap") && load(api.mem_unmap, "cuMemUnmap") &&
              load(api.mem_set_access, "cuMemSetAccess") &&
              load(api.mem_export_to_shareable_handle, "cuMemExportToShareableHandle") &&
              load(api.mem_import_from_shareable_handle, "cuMemImportFromShareableHandle") &&
              load(api.mem_get_handle_for_address_range, "cuMemGetHandleForAddressRange");
    if (ok) {
        api.error.clear();
    }
    return api;
}

// Loaded once, on first use, by whichever thread comes first.
const driver_api& api() {
    static const driver_api a = load_api();
    return a;
}

const driver_api& usable_api(const char* who) {
    const driver_api& a = api();
    if (!a.error.empty()) {
        throw gpu_error(std::string(who) + ": " + a.error);
    }
    return a;
}

std::string cu_text(const driver_api& a, CUresult r) {
    const char* name = nullptr;
    const char* text = nullptr;
    if (a.get_error_name == nullptr || a.get_error_name(r, &name) != CUDA_SUCCESS) {
        name = nullptr;
    }
    if (a.get_error_string == nullptr || a.get_error_string(r, &text) != CUDA_SUCCESS) {
        text = nullptr;
    }
    return std::string(name ? name : "CUresult " + std::to_string(int(r))) + " (" +
           (text ? text : "no description") + ")";
}

// gpu_error, or device_lost for an error that leaves the device unusable.
[[noreturn]] void cu_fail(const driver_api& a, CUresult r, const std::string& call) {
    if (cuda_error_is_sticky(int(r))) {
        throw device_lost(call + ": " + cu_text(a, r) +
                          ": the GPU cannot be used by this process any more");
    }
    throw gpu_error(call + ": " + cu_text(a, r));
}

void cu_check(const driver_api& a, CUresult r, const char* call) {
    if (r != CUDA_SUCCESS) {
        cu_fail(a, r, call);
    }
}

void rt_check(cudaError_t e, const char* call) {
    if (e != cudaSuccess) {
        if (cuda_error_is_sticky(int(e))) {
            cuda_detail::fail(e, std::string(call) + ": " + cuda_detail::error_text(e));
        }
        // Thrown, so not left for this thread's next launch check.
        (void)cudaGetLastError();
        throw gpu_error(std::string(call) + ": " + cuda_detail::error_text(e));
    }
}

// The primary context of `device`, current on this thread.
void activate(int device) {
    rt_check(cudaSetDevice(device), "cudaSetDevice");
}

int attribute(const driver_api& a, CUdevice dev, CUdevice_attribute attr, const char* what) {
    int v = 0;
    CUresult r = a.device_get_attribute(&v, attr, dev);
    if (r != CUDA_SUCCESS) {
        cu_fail(a, r, std::string("cuDeviceGetAttribute(") + what + ")");
    }
    return v;
}

uint64_t round_up(uint64_t v, uint64_t to) {
    return (v + to - 1) / to * to;
}

uint64_t host_page() {
    return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

const char dmabuf_unsupported[] =
    "this driver cannot export GPU memory as dma-buf (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED "
    "is 0): as far as NVIDIA documents it, that takes a CUDA 11.7 (R515) or newer driver, "
    "its open GPU kernel modules, and a kernel built with dma-buf support "
    "(CONFIG_DMA_SHARED_BUFFER); see Documentation/gpudirect.rst";

} // namespace

struct gpu_memory::state {
    struct chunk {
        CUmemGenericAllocationHandle handle = 0;
        uint64_t size = 0;
    };

    const driver_api* a = nullptr;
    int device = 0;
    CUdevice dev = 0;
    CUdeviceptr base = 0;
    uint64_t reserved = 0;
    uint64_t mapped = 0;
    uint64_t granularity = 0;
    bool dmabuf = false;
    CUmemAllocationProp prop{};
    std::vector<chunk> chunks;

    state() = default;
    state(const state&) = delete;
    state& operator=(const state&) = delete;

    ~state() {
        if (a == nullptr) {
            return;
        }
        // Errors here cannot be reported; the calls only fail when the
        // context is already gone, and then the driver has freed it all.
        (void)cudaSetDevice(device);
        cuda_detail::device_sync_guard g; // unmapping synchronizes
        uint64_t end = mapped;
        for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
            end -= it->size;
            (void)a->mem_unmap(base + end, it->size);
            (void)a->mem_release(it->handle);
        }
        if (base != 0) {
            (void)a->mem_address_free(base, reserved);
        }
    }

    // Device checks, the allocation properties and the granularity.
    void open(const char* who, int dev_ordinal) {
        a = &usable_api(who);
        device = dev_ordinal;
        activate(device);
        {
            cuda_detail::device_sync_guard g;
            rt_check(cudaFree(nullptr), "cudaFree(0)");
        }
        cu_check(*a, a->device_get(&dev, device), "cuDeviceGet");
        if (!attribute(*a, dev, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                       "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED")) {
            throw gpu_error(std::string(who) + ": device " + std::to_string(device) +
                            " has no virtual memory management (cuMemCreate/cuMemMap)");
        }
        if (!attribute(*a, dev, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                       "HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED")) {
            throw gpu_error(std::string(who) + ": device " + std::to_string(device) +
                            " cannot export memory as POSIX file descriptors");
        }
        dmabuf =
            attribute(*a, dev, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, "DMA_BUF_SUPPORTED") != 0;
        prop = {};
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = device; // an ordinal (cuda.h), not a CUdevice handle
        // Peer devices (a NIC through the dma-buf) may reach it.
        prop.allocFlags.gpuDirectRDMACapable =
            attribute(*a, dev, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED,
                      "GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED")
                ? 1
                : 0;
        size_t g = 0;
        cu_check(*a, a->mem_get_allocation_granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
                 "cuMemGetAllocationGranularity");
        granularity = std::max<uint64_t>(g, host_page());
    }

    void reserve(uint64_t bytes) {
        if (bytes > UINT64_MAX - granularity) {
            throw gpu_error("gpu_memory: " + std::to_string(bytes) +
                            " bytes is more address space than there is");
        }
        reserved = round_up(std::max<uint64_t>(bytes, 1), granularity);
        cu_check(*a, a->mem_address_reserve(&base, reserved, granularity, 0, 0),
                 "cuMemAddressReserve");
    }

    // Maps `h` (of `size` bytes) at the end of the mapped bytes and gives
    // this device access; takes `h` (released on failure). `zero`: new
    // memory, which may hold what another region (another tenant's
    // conversation) left in it, while a cache's bookkeeping, in memory its
    // owner writes, could name blocks never written: zeroed, and finished
    // before any stream reads it (the engine's streams do not wait for the
    // legacy one).
    void map_chunk(CUmemGenericAllocationHandle h, uint64_t size, bool zero = false) {
        try {
            chunks.reserve(chunks.size() + 1); // no throw once it is mapped
        } catch (...) {
            (void)a->mem_release(h);
            throw;
        }
        cuda_detail::device_sync_guard g;
        CUdeviceptr at = base + mapped;
        CUresult r = a->mem_map(at, size, 0, h, 0);
        if (r != CUDA_SUCCESS) {
            (void)a->mem_release(h);
            cu_fail(*a, r, "cuMemMap");
        }
        CUmemAccessDesc access{};
        access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        access.location.id = device;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = a->mem_set_access(at, size, &access, 1);
        if (r != CUDA_SUCCESS) {
            (void)a->mem_unmap(at, size);
            (void)a->mem_release(h);
            cu_fail(*a, r, "cuMemSetAccess");
        }
        if (zero) {
            // On a stream of its own, waited for alone: the legacy stream
            // and cudaDeviceSynchronize would wait for every other
            // worker's steps, with the lock held.
            cudaStream_t zs = nullptr;
            cudaError_t e = cudaStreamCreateWithFlags(&zs, cudaStreamNonBlocking);
            if (e == cudaSuccess) {
                e = cudaMemsetAsync(reinterpret_cast<void*>(at), 0, size, zs);
                if (e == cudaSuccess) {
                    e = cudaStreamSynchronize(zs);
                }
                if (const cudaError_t d = cudaStreamDestroy(zs); e == cudaSuccess) {
                    e = d;
                }
            }
            if (e != cudaSuccess) {
                // (Not left for this thread's next launch check to find.)
                (void)cudaGetLastError();
                (void)a->mem_unmap(at, size);
                (void)a->mem_release(h);
                rt_check(e, "zeroing new GPU memory");
            }
        }
        chunks.push_back({h, size});
        mapped += size;
    }

    void check_range(const char* who, uint64_t offset, uint64_t length) const {
        if (offset > mapped || length > mapped - offset) {
            throw gpu_error(std::string(who) + ": [" + std::to_string(offset) + ", +" +
                            std::to_string(length) + ") is outside the " + std::to_string(mapped) +
                            " mapped bytes");
        }
    }
};

bool gpu_built_with_cuda() noexcept {
    return true;
}

gpu_probe_result probe_gpu(int device) {
    gpu_probe_result r;
    r.built_with_cuda = true;
    try {
        (void)cudaRuntimeGetVersion(&r.runtime_version);
        (void)cudaDriverGetVersion(&r.driver_version);
        const driver_api& a = api();
        if (!a.error.empty()) {
            r.reason = a.error;
            return r;
        }
        rt_check(cudaGetDeviceCount(&r.device_count), "cudaGetDeviceCount");
        if (device < 0 || device >= r.device_count) {
            r.reason = "no CUDA device " + std::to_string(device) + " (" +
                       std::to_string(r.device_count) + " present)";
            return r;
        }
        CUdevice dev = 0;
        cu_check(a, a.device_get(&dev, device), "cuDeviceGet");
        char name[256] = {};
        cu_check(a, a.device_get_name(name, sizeof(name) - 1, dev), "cuDeviceGetName");
        r.device_name = name;
        r.vmm = attribute(a, dev, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                          "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED") != 0;
        r.posix_fd =
            attribute(a, dev, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                      "HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED") != 0;
        r.dmabuf =
            attribute(a, dev, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, "DMA_BUF_SUPPORTED") != 0;
        r.rdma_vmm = attribute(a, dev, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED,
                               "GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED") != 0;
        if (!r.vmm) {
            r.reason = r.device_name + " has no virtual memory management";
        } else if (!r.posix_fd) {
            r.reason = r.device_name + " cannot export memory as POSIX file descriptors";
        } else {
            r.usable = true;
        }
    } catch (const std::exception& e) {
        r.usable = false;
        r.reason = e.what();
    }
    return r;
}

gpu_memory::gpu_memory(std::unique_ptr<state> s) noexcept
    : _s(std::move(s)) {
}
gpu_memory::gpu_memory(gpu_memory&&) noexcept = default;
gpu_memory& gpu_memory::operator=(gpu_memory&&) noexcept = default;
gpu_memory::~gpu_memory() = default;

gpu_memory gpu_memory::reserve(uint64_t max_bytes, int device) {
    auto s = std::make_unique<state>();
    s->open("gpu_memory::reserve", device);
    s->reserve(max_bytes);
    return gpu_memory(std::move(s));
}

gpu_memory gpu_memory::import(std::span<const gpu_chunk> chunks, uint64_t max_bytes, int device) {
    auto s = std::make_unique<state>();
    s->open("gpu_memory::import", device);
    if (chunks.empty()) {
        throw gpu_error("gpu_memory::import: no chunks");
    }
    uint64_t total = 0;
    for (const auto& c : chunks) {
        if (!c.fd || c.size == 0 || c.size % s->granularity != 0) {
            throw gpu_error("gpu_memory::import: a chunk of " + std::to_string(c.size) +
                            " bytes (fd " + std::to_string(c.fd.get()) +
                            ") is not a non-zero multiple of the granularity " +
                            std::to_string(s->granularity));
        }
        total += c.size;
    }
    s->reserve(std::max(total, max_bytes));
    for (const auto& c : chunks) {
        CUmemGenericAllocationHandle h = 0;
        void* os_handle = reinterpret_cast<void*>(static_cast<uintptr_t>(c.fd.get()));
        cu_check(*s->a,
                 s->a->mem_import_from_shareable_handle(&h, os_handle,
                                                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
                 "cuMemImportFromShareableHandle");
        s->map_chunk(h, c.size);
    }
    return gpu_memory(std::move(s));
}

gpu_memory gpu_memory::import(const gpu_mindspace& ms, int device) {
    return import(ms.chunks, ms.max_bytes, device);
}

void gpu_memory::grow(uint64_t bytes) {
    if (bytes <= _s->mapped) {
        return;
    }
    if (bytes > _s->reserved) {
        throw gpu_error("gpu_memory::grow: " + std::to_string(bytes) + " bytes exceed the " +
                        std::to_string(_s->reserved) + " reserved");
    }
    activate(_s->device);
    const uint64_t size = round_up(bytes - _s->mapped, _s->granularity);
    CUmemGenericAllocationHandle h = 0;
    cuda_detail::device_sync_guard g;
    cu_check(*_s->a, _s->a->mem_create(&h, size, &_s->prop, 0), "cuMemCreate");
    _s->map_chunk(h, size, true);
}

uint64_t gpu_memory::device_ptr() const noexcept {
    return _s ? _s->base : 0;
}
uint64_t gpu_memory::mapped_bytes() const noexcept {
    return _s ? _s->mapped : 0;
}
uint64_t gpu_memory::reserved_bytes() const noexcept {
    return _s ? _s->reserved : 0;
}
uint64_t gpu_memory::granularity() const noexcept {
    return _s ? _s->granularity : 0;
}
size_t gpu_memory::chunk_count() const noexcept {
    return _s ? _s->chunks.size() : 0;
}
int gpu_memory::device() const noexcept {
    return _s ? _s->device : -1;
}

void gpu_memory::write(uint64_t offset, std::span<const std::byte> src) {
    _s->check_range("gpu_memory::write", offset, src.size());
    activate(_s->device);
    cuda_detail::device_sync_guard g;
    rt_check(cudaMemcpy(reinterpret_cast<void*>(_s->base + offset), src.data(), src.size(),
                        cudaMemcpyHostToDevice),
             "cudaMemcpy(host to device)");
    // From pageable memory the copy may return before its DMA lands; work
    // on a non-blocking stream (or another process) must see the bytes.
    rt_check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
}

void gpu_memory::read(uint64_t offset, std::span<std::byte> dst) const {
    _s->check_range("gpu_memory::read", offset, dst.size());
    activate(_s->device);
    cuda_detail::device_sync_guard g;
    rt_check(cudaMemcpy(dst.data(), reinterpret_cast<const void*>(_s->base + offset), dst.size(),
                        cudaMemcpyDeviceToHost),
             "cudaMemcpy(device to host)");
}

owned_fd gpu_memory::export_dmabuf(uint64_t offset, uint64_t length) const {
    if (!_s->dmabuf) {
        throw gpu_error(std::string("gpu_memory::export_dmabuf: ") + dmabuf_unsupported);
    }
    if (length == 0 && offset < _s->mapped) {
        length = _s->mapped - offset;
    }
    const uint64_t page = host_page();
    if (length == 0 || offset % page != 0 || length % page != 0) {
        throw gpu_error("gpu_memory::export_dmabuf: offset " + std::to_string(offset) +
                        " and length " + std::to_string(length) +
                        " must be non-zero multiples of the page size");
    }
    _s->check_range("gpu_memory::export_dmabuf", offset, length);
    activate(_s->device);
    int fd = -1;
    cu_check(*_s->a,
             _s->a->mem_get_handle_for_address_range(&fd, _s->base + offset, length,
                                                     CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0),
             "cuMemGetHandleForAddressRange(DMA_BUF_FD)");
    return cloexec(owned_fd(fd));
}

std::vector<gpu_chunk> gpu_memory::export_chunks() const {
    activate(_s->device);
    std::vector<gpu_chunk> out;
    out.reserve(_s->chunks.size());
    for (const auto& c : _s->chunks) {
        int fd = -1;
        cu_check(*_s->a,
                 _s->a->mem_export_to_shareable_handle(&fd, c.handle,
                                                       CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                 "cuMemExportToShareableHandle(POSIX_FILE_DESCRIPTOR)");
        out.push_back({cloexec(owned_fd(fd)), c.size});
    }
    return out;
}

gpu_mindspace gpu_memory::export_mindspace(std::string name, bool with_dmabuf) const {
    gpu_mindspace ms;
    ms.name = std::move(name);
    ms.max_bytes = _s->reserved;
    ms.chunks = export_chunks();
    if (with_dmabuf && _s->dmabuf && _s->mapped != 0) {
        ms.dmabuf = export_dmabuf(0, _s->mapped);
        ms.dmabuf_length = _s->mapped;
    }
    return ms;
}

} // namespace llmos::engine
