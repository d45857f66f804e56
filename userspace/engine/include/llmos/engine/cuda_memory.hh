// SPDX-License-Identifier: MIT
//
// GPU memory as mindspaces: a CUDA virtual-memory range that grows on demand
// (as vAttention does for KV caches), exported as file descriptors so that
// the memory outlives the process that made it.
//
// gpu_memory reserves a large virtual range once (cuMemAddressReserve) and
// maps physical chunks into it as grow() asks (cuMemCreate + cuMemMap +
// cuMemSetAccess): the device pointer never moves, so kernels and KV block
// tables keep their addresses while the cache grows. Each chunk can be
// exported as a POSIX fd (cuMemExportToShareableHandle); an fd keeps its
// chunk's physical memory alive until it is closed (the CUDA driver frees an
// allocation only when every mapping and every handle to it, shareable fds
// included, is gone), and another process maps the chunks again at a new
// virtual range with gpu_memory::import(). A range can also be exported as
// one dma-buf fd (cuMemGetHandleForAddressRange) for a peer device: an RDMA
// NIC (ibv_reg_dmabuf_mr), the llmos module (MS_CREATE with LLMOS_MS_DMABUF).
//
// The mindspace side needs no GPU: a gpu_mindspace is the set of fds that
// make up one GPU mindspace (its chunks, optionally its dma-buf); a
// gpu_mindspace_store, owned by a long-lived process (llmosd), parks them
// under the mindspace's name and lends dup()s to workers, and
// send_gpu_mindspace() / recv_gpu_mindspace() carry them over a unix socket
// (SCM_RIGHTS) to a worker in another process, which imports them.
//
// This header needs no CUDA headers. A build without CUDA has the same API:
// gpu_memory's factories throw gpu_error("... built without CUDA"), and
// probe_gpu() says so; the fd store and passing work everywhere.
// Documentation/gpudirect.rst has the whole story and the driver facts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace llmos::engine {

/// A failed CUDA call (the message names the call and its CUresult name and
/// text), a missing driver or device, an unsupported feature (said plainly),
/// or a malformed fd message.
class gpu_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// An owned file descriptor, closed when destroyed. Move-only.
class owned_fd {
    int _fd = -1;

public:
    owned_fd() noexcept = default;
    explicit owned_fd(int fd) noexcept
        : _fd(fd) {}
    owned_fd(const owned_fd&) = delete;
    owned_fd& operator=(const owned_fd&) = delete;
    owned_fd(owned_fd&& o) noexcept
        : _fd(o.release()) {}
    owned_fd& operator=(owned_fd&& o) noexcept;
    ~owned_fd();

    int get() const noexcept { return _fd; }
    explicit operator bool() const noexcept { return _fd >= 0; }
    /// Gives the fd up without closing it.
    int release() noexcept {
        int fd = _fd;
        _fd = -1;
        return fd;
    }
    /// Closes the fd held (if any) and holds `fd`.
    void reset(int fd = -1) noexcept;
    /// A new fd for the same open file (close-on-exec). Throws
    /// std::system_error (EBADF when empty, EMFILE). Any thread.
    owned_fd dup() const;
};

/// What probe_gpu() found. `usable` is true when a gpu_memory can be made on
/// the device; otherwise `reason` says why in one line.
struct gpu_probe_result {
    bool built_with_cuda = false;
    bool usable = false;
    std::string reason;
    std::string device_name;
    int device_count = 0;
    int driver_version = 0;  ///< cudaDriverGetVersion, e.g. 13000
    int runtime_version = 0; ///< cudaRuntimeGetVersion
    bool vmm = false;        ///< CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
    bool posix_fd = false;   ///< ..._HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
    bool dmabuf = false;     ///< CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED
    bool rdma_vmm = false;   ///< ..._GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED
};

/// Whether this build has the CUDA implementation of gpu_memory.
bool gpu_built_with_cuda() noexcept;

/// Looks for device `device` and what it supports. Never throws; loads
/// nothing but the CUDA runtime (which loads libcuda.so.1 if there is one).
/// Any thread.
gpu_probe_result probe_gpu(int device = 0);

/// One exported physical chunk: its fd and its size in bytes.
struct gpu_chunk {
    owned_fd fd;
    uint64_t size = 0;
};

/// The fds that make up one GPU mindspace: its physical chunks in order
/// (mapped back to back from offset 0), the size of its virtual range, and
/// optionally a dma-buf of [0, dmabuf_length). Move-only (owns its fds).
struct gpu_mindspace {
    std::string name;
    uint64_t max_bytes = 0;
    std::vector<gpu_chunk> chunks;
    owned_fd dmabuf;
    uint64_t dmabuf_length = 0;

    /// Bytes of all chunks together.
    uint64_t mapped_bytes() const noexcept;
    /// A copy with dup()ed fds (for a worker; the original stays parked).
    /// Throws std::system_error (EMFILE).
    gpu_mindspace dup() const;
};

/// A growable CUDA virtual-memory range on one device. Move-only; the
/// destructor unmaps every chunk, releases its handles and frees the
/// address range (memory whose fds are still open elsewhere stays alive
/// there). Calls on one object must not overlap; different objects may be
/// used from different threads (each call makes the device's primary
/// context current on the calling thread).
class gpu_memory {
public:
    /// Reserves `max_bytes` (rounded up to the allocation granularity) of
    /// virtual address space on `device`; maps nothing yet. Throws
    /// gpu_error: no CUDA driver or device, no VMM or POSIX fd export on
    /// the device, or the failed call.
    static gpu_memory reserve(uint64_t max_bytes, int device = 0);

    /// Maps exported chunks (in order, back to back from offset 0) at a new
    /// virtual range of `max_bytes` (at least their total) on `device`.
    /// The fds are not consumed (close them when done: the mapping keeps
    /// the memory). Throws gpu_error: a chunk size that is not a multiple
    /// of the granularity, an fd CUDA does not accept, a failed call;
    /// nothing stays mapped then.
    static gpu_memory import(std::span<const gpu_chunk> chunks, uint64_t max_bytes, int device = 0);
    /// import() of a gpu_mindspace's chunks and max_bytes.
    static gpu_memory import(const gpu_mindspace& ms, int device = 0);

    gpu_memory(gpu_memory&&) noexcept;
    gpu_memory& operator=(gpu_memory&&) noexcept;
    ~gpu_memory();

    /// Makes [0, bytes) mapped: creates and maps one new chunk of the
    /// missing size rounded up to the granularity (nothing when already
    /// mapped), zeroed (it may hold what freed memory held). Throws
    /// gpu_error: more than reserved_bytes(), out of device memory, a
    /// failed call; the memory is as before then.
    void grow(uint64_t bytes);

    /// The start of the range (a CUdeviceptr); stable for the object's life.
    uint64_t device_ptr() const noexcept;
    uint64_t mapped_bytes() const noexcept;
    uint64_t reserved_bytes() const noexcept;
    /// The allocation granularity: chunk sizes are multiples of it.
    uint64_t granularity() const noexcept;
    size_t chunk_count() const noexcept;
    int device() const noexcept;

    /// Copies host bytes to [offset, offset + src.size()) (synchronous,
    /// cudaMemcpy). Throws gpu_error: outside the mapped bytes, failed copy.
    /// Synchronous with the caller, not with other streams: a context's
    /// step that uses these bytes must have ended (cuda_context::step
    /// returns after its stream synced), or the copy races it.
    void write(uint64_t offset, std::span<const std::byte> src);
    /// Copies [offset, offset + dst.size()) to host memory (synchronous,
    /// ordered as write() is). Throws gpu_error as write().
    void read(uint64_t offset, std::span<std::byte> dst) const;

    /// A dma-buf fd for [offset, offset + length) (length 0: to the end of
    /// the mapped bytes); both multiples of the host page size. Each call
    /// makes a new dma-buf; it stays valid while the fd is open, but grow()
    /// does not extend it (export again). Throws gpu_error: the driver
    /// cannot export dma-bufs (the message says what it needs), bad range,
    /// failed call.
    owned_fd export_dmabuf(uint64_t offset = 0, uint64_t length = 0) const;

    /// One POSIX fd per physical chunk, in order, with its size. Throws
    /// gpu_error (a failed export; no fd is left open then).
    std::vector<gpu_chunk> export_chunks() const;

    /// The chunks as a gpu_mindspace named `name`, with a dma-buf of the
    /// mapped bytes when `with_dmabuf` and the driver can export one
    /// (silently without it otherwise). Throws gpu_error as export_chunks().
    gpu_mindspace export_mindspace(std::string name, bool with_dmabuf = true) const;

    struct state;

private:
    explicit gpu_memory(std::unique_ptr<state> s) noexcept;
    std::unique_ptr<state> _s;
};

/// Parks the fds of GPU mindspaces under their names, so that their memory
/// lives as long as this object (in llmosd: as long as the daemon) while
/// workers come and go. All members may be called from any thread.
class gpu_mindspace_store {
public:
    /// Parks `ms` under ms.name. Throws gpu_error: empty or invalid name
    /// (1 to 63 of [A-Za-z0-9._:-]), a name already parked, no chunks.
    void park(gpu_mindspace ms);
    /// dup()s of the fds parked under `name`, for a worker; nullopt when
    /// none. Throws std::system_error (EMFILE).
    std::optional<gpu_mindspace> lend(std::string_view name) const;
    /// Removes and returns what is parked under `name` (nullopt: none).
    std::optional<gpu_mindspace> take(std::string_view name);
    /// Closes the fds parked under `name` (the memory goes when no one else
    /// holds it). False when none.
    bool drop(std::string_view name);
    /// The parked names, sorted.
    std::vector<std::string> names() const;
    size_t size() const;

private:
    mutable std::mutex _mu; ///< protects _parked
    std::map<std::string, gpu_mindspace, std::less<>> _parked;
};

/// Most fds one gpu_mindspace message carries (chunks plus the dma-buf),
/// below the kernel's SCM_MAX_FD.
constexpr size_t gpu_mindspace_max_fds = 250;

/// Sends `ms` (its name, sizes, and its fds as SCM_RIGHTS) as one message
/// on a connected AF_UNIX SOCK_SEQPACKET or SOCK_DGRAM socket; the fds stay
/// open here. Throws gpu_error (a stream socket, too many fds, a name too
/// long) or std::system_error (sendmsg).
void send_gpu_mindspace(int sock, const gpu_mindspace& ms);

/// Receives one gpu_mindspace message from `sock` (blocking unless the
/// socket is non-blocking: EAGAIN is a std::system_error). Throws gpu_error
/// for a malformed message (bad magic or version, fd count or sizes that
/// do not match the header, truncation, unknown flags); every fd that came
/// with a refused message is closed. std::system_error for recvmsg errors,
/// gpu_error("... peer closed") on end of file.
gpu_mindspace recv_gpu_mindspace(int sock);

} // namespace llmos::engine
