// SPDX-License-Identifier: MIT
//
// The CUDA emulator's runtime and its fiber scheduler (cuda_emu.hh).
#include "cuda_emu.hh"

#include "emu_stream.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iterator>
#include <linux/udmabuf.h>
#include <llmos/engine/quant.hh>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define LLMOS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LLMOS_EMU_ASAN 1
#endif
#endif
#ifdef LLMOS_EMU_ASAN
// ASan is told of every stack switch (its fake stacks and stack bounds).
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator switches fibers with x86-64 code"
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

float __half2float(__half h) noexcept {
    return llmos::engine::fp16_to_fp32(h.bits);
}

__half __float2half_rn(float f) noexcept {
    return {llmos::engine::fp32_to_fp16(f)};
}

float __bfloat162float(__nv_bfloat16 b) noexcept {
    return llmos::engine::bf16_to_fp32(b.bits);
}

__nv_bfloat16 __float2bfloat16_rn(float f) noexcept {
    return {llmos::engine::fp32_to_bf16(f)};
}

// --- Fiber switching (x86-64 System V: the callee-saved registers) ---

extern "C" {
/// Saves the current stack pointer in *from and continues on `to`.
void llmos_emu_switch(void** from, void* to);
/// A new fiber's first return address: calls r13(r12).
void llmos_emu_start();
}

asm(R"(
    .text
    .globl llmos_emu_switch
    .type llmos_emu_switch, @function
llmos_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size llmos_emu_switch, .-llmos_emu_switch

    .globl llmos_emu_start
    .type llmos_emu_start, @function
llmos_emu_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size llmos_emu_start, .-llmos_emu_start
    .section .note.GNU-stack,"",@progbits
    .text
)");

namespace llmos::cuda_emu {

namespace {

[[noreturn]] void die(const char* kernel, const std::string& what) {
    std::fprintf(stderr, "llmos CUDA emulator: kernel %s: %s\n", kernel, what.c_str());
    std::fflush(stderr);
    std::abort();
}

// --- Memory and errors (process-wide, as a device's) ---

enum class mem_kind { device, pinned };

struct allocation {
    size_t bytes;
    mem_kind kind;
};

/// A graph's work, in order: what a capture recorded.
using work_list = std::vector<std::function<void()>>;

/// A stream capturing a graph (cudaStreamBeginCapture to EndCapture).
struct capture_state {
    bool active = false;
    bool invalidated = false;
    int64_t invalidate_at = -1; ///< recorded works after which it is invalidated (injected)
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    std::thread::id thread;
    work_list work;
};

struct stream_obj : llmos_emu_stream {
    capture_state cap;
};

/// LLMOS_CUDA_EMU_FAIL_CAPTURES: the captures to invalidate from the start.
unsigned captures_to_fail() {
    const char* n = std::getenv("LLMOS_CUDA_EMU_FAIL_CAPTURES");
    return n ? static_cast<unsigned>(std::strtoul(n, nullptr, 10)) : 0;
}

/// LLMOS_CUDA_EMU_FAULT_AT: the kernel run (from 1) that faults; 0: none.
uint64_t kernel_to_fault() {
    const char* n = std::getenv("LLMOS_CUDA_EMU_FAULT_AT");
    return n ? std::strtoull(n, nullptr, 10) : 0;
}

struct device_state {
    std::mutex mu;
    uint64_t kernel_runs = 0;                    ///< kernels run (or faulted) so far
    uint64_t fault_at = kernel_to_fault();       ///< the run that faults (injected), 0: none
    unsigned fail_captures = captures_to_fail(); ///< captures still to invalidate
    unsigned fail_after = 3;
    unsigned fail_allocs = 0;               ///< device allocations still to refuse (injected)
    std::map<uintptr_t, allocation> allocs; // by start address
    std::set<cudaStream_t> streams;         // each a stream_obj
    std::set<const void*> graphs, execs;    // each a graph_obj
    uint64_t device_bytes = 0;
    cudaError_t sticky = cudaSuccess; // a fault: every later call fails
};

device_state& dev() {
    static device_state d;
    return d;
}

/// Device memory the emulated device has (cudaMalloc beyond it fails).
constexpr uint64_t device_memory = 4ull << 30;

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t ret(cudaError_t e) {
    if (e != cudaSuccess) {
        last_error = e;
    }
    return e;
}

/// The CUDA version the emulated driver supports:
/// LLMOS_CUDA_EMU_DRIVER_VERSION (e.g. 12080), or this toolkit's.
int driver_version() {
    static const int v = [] {
        const char* e = std::getenv("LLMOS_CUDA_EMU_DRIVER_VERSION");
        return e ? std::atoi(e) : CUDA_VERSION;
    }();
    return v;
}

/// A runtime of one major release needs a driver of that release or a
/// later one (within it, an older minor release serves).
cudaError_t runtime_usable() {
    return driver_version() / 1000 < CUDA_VERSION / 1000 ? ret(cudaErrorInsufficientDriver)
                                                         : cudaSuccess;
}

cudaError_t sticky() {
    std::lock_guard g(dev().mu);
    return dev().sticky;
}

void fault(cudaError_t e, const char* kernel, const std::string& what) {
    std::fprintf(stderr, "llmos CUDA emulator: kernel %s: %s\n", kernel, what.c_str());
    std::lock_guard g(dev().mu);
    if (dev().sticky == cudaSuccess) {
        dev().sticky = e;
    }
}

/// Whether allocations cover [p, p + n) without a gap (adjacent ones count
/// as one: a virtual range mapped in chunks), pinned ones only when
/// `pinned_ok`. One past an allocation's end is covered for n = 0. Caller
/// holds mu.
bool covered_locked(const void* p, size_t n, bool pinned_ok) {
    auto a = reinterpret_cast<uintptr_t>(p);
    const uintptr_t end = a + n;
    auto& m = dev().allocs;
    auto it = m.upper_bound(a);
    if (it == m.begin()) {
        return false;
    }
    --it;
    for (;;) {
        const uintptr_t alloc_end = it->first + it->second.bytes;
        if ((it->second.kind == mem_kind::pinned && !pinned_ok) || a > alloc_end) {
            return false;
        }
        if (end <= alloc_end) {
            return true;
        }
        a = alloc_end;
        if (++it == m.end() || it->first != a) {
            return false;
        }
    }
}

/// Whether [p, p + n) is device memory, or (with `pinned_ok`) device or
/// pinned host memory, which the device reaches too.
bool is_device(const void* p, size_t n, bool pinned_ok = false) {
    std::lock_guard g(dev().mu);
    return covered_locked(p, n, pinned_ok);
}

/// No device allocation overlaps [p, p + n): host memory, pageable or
/// pinned.
bool is_host(const void* p, size_t n) {
    const auto s = reinterpret_cast<uintptr_t>(p);
    std::lock_guard g(dev().mu);
    auto& m = dev().allocs;
    auto it = m.upper_bound(s);
    if (it != m.begin()) {
        auto prev = std::prev(it);
        if (prev->second.kind == mem_kind::device && prev->first + prev->second.bytes > s) {
            return false;
        }
    }
    for (; it != m.end() && it->first - s < n; ++it) {
        if (it->second.kind == mem_kind::device) {
            return false;
        }
    }
    return true;
}

cudaError_t alloc(void** p, size_t bytes, mem_kind k) {
    if (!p) {
        return ret(cudaErrorInvalidValue);
    }
    *p = nullptr;
    if (const cudaError_t e = sticky(); e != cudaSuccess) {
        return ret(e);
    }
    const size_t n = bytes ? bytes : 1;
    std::lock_guard g(dev().mu);
    if (k == mem_kind::device && dev().fail_allocs > 0) {
        --dev().fail_allocs;
        return ret(cudaErrorMemoryAllocation);
    }
    if (k == mem_kind::device && dev().device_bytes + n > device_memory) {
        return ret(cudaErrorMemoryAllocation);
    }
    void* q = std::aligned_alloc(256, (n + 255) / 256 * 256);
    if (!q) {
        return ret(cudaErrorMemoryAllocation);
    }
    // Device memory holds garbage until written.
    std::memset(q, 0xa5, n);
    dev().allocs[reinterpret_cast<uintptr_t>(q)] = {n, k};
    if (k == mem_kind::device) {
        dev().device_bytes += n;
    }
    *p = q;
    return cudaSuccess;
}

cudaError_t release(void* p, mem_kind k) {
    if (!p) {
        return cudaSuccess;
    }
    std::lock_guard g(dev().mu);
    auto it = dev().allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == dev().allocs.end() || it->second.kind != k) {
        return ret(k == mem_kind::device ? cudaErrorInvalidDevicePointer : cudaErrorInvalidValue);
    }
    if (k == mem_kind::device) {
        dev().device_bytes -= it->second.bytes;
    }
    dev().allocs.erase(it);
    std::free(p);
    return cudaSuccess;
}

bool stream_ok(cudaStream_t s) {
    if (!s) {
        return true;
    }
    std::lock_guard g(dev().mu);
    return dev().streams.count(s) != 0;
}

/// cudaStream_t handles point at the llmos_emu_stream of a stream_obj.
stream_obj* as_stream(cudaStream_t s) {
    return static_cast<stream_obj*>(reinterpret_cast<llmos_emu_stream*>(s));
}

/// Runs `work` now, or records it in the graph that `s` (a stream that
/// exists, or null) captures.
cudaError_t submit_work(cudaStream_t s, std::function<void()> work) {
    if (s) {
        std::lock_guard g(dev().mu);
        if (!dev().streams.count(s)) {
            return ret(cudaErrorInvalidResourceHandle);
        }
        capture_state& c = as_stream(s)->cap;
        if (c.active) {
            if (c.invalidate_at >= 0 && c.work.size() >= size_t(c.invalidate_at)) {
                c.invalidated = true; // injected: as if another thread's call had come now
            }
            if (c.invalidated) {
                return ret(cudaErrorStreamCaptureInvalidated);
            }
            c.work.push_back(std::move(work));
            return cudaSuccess;
        }
    }
    work();
    return cudaSuccess;
}

/// A potentially unsafe call (one that captures cannot record, or that
/// waits for the device): refused while this thread captures (not
/// relaxed) or another thread captures in global mode; those captures are
/// invalidated, as the device does.
cudaError_t unsafe_call() {
    std::lock_guard g(dev().mu);
    const std::thread::id me = std::this_thread::get_id();
    bool refused = false;
    for (cudaStream_t h : dev().streams) {
        const capture_state& c = as_stream(h)->cap;
        if (c.active && ((c.thread == me && c.mode != cudaStreamCaptureModeRelaxed) ||
                         (c.thread != me && c.mode == cudaStreamCaptureModeGlobal))) {
            refused = true;
        }
    }
    if (!refused) {
        return cudaSuccess;
    }
    for (cudaStream_t h : dev().streams) {
        capture_state& c = as_stream(h)->cap;
        if (c.active && c.mode != cudaStreamCaptureModeRelaxed &&
            (c.thread == me || c.mode == cudaStreamCaptureModeGlobal)) {
            c.invalidated = true;
        }
    }
    return ret(cudaErrorStreamCaptureUnsupported);
}

/// A call that synchronizes the device or the legacy stream (cudaFree,
/// cudaFreeHost, cudaDeviceSynchronize, a synchronous copy or memset,
/// cudaStreamSynchronize of the legacy stream, cuMemUnmap): a device
/// checks captures per device, so it is refused while any thread
/// captures, in any mode, and invalidates every capture.
cudaError_t sync_call() {
    std::lock_guard g(dev().mu);
    bool refused = false;
    for (cudaStream_t h : dev().streams) {
        capture_state& c = as_stream(h)->cap;
        if (c.active) {
            c.invalidated = true;
            refused = true;
        }
    }
    return refused ? ret(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

/// What a graph and its instantiation hold: the recorded work.
struct graph_obj {
    std::shared_ptr<const work_list> work;
};

int abi_submit(llmos_emu_stream* st, void (*run)(void*), void* arg, void (*release)(void*)) {
    std::shared_ptr<void> owned(arg, release);
    return submit_work(reinterpret_cast<cudaStream_t>(st), [owned, run] { run(owned.get()); });
}

/// Checks one contiguous copy's ends against its direction.
bool copy_ok(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToDevice:
        return is_device(dst, n) && is_host(src, n);
    case cudaMemcpyDeviceToHost:
        return is_host(dst, n) && is_device(src, n);
    case cudaMemcpyDeviceToDevice:
        return is_device(dst, n) && is_device(src, n);
    case cudaMemcpyHostToHost:
        return is_host(dst, n) && is_host(src, n);
    case cudaMemcpyDefault:
        return (is_host(dst, n) || is_device(dst, n)) && (is_host(src, n) || is_device(src, n));
    }
    return false;
}

// --- Fibers ---

constexpr size_t fiber_stack = 256 * 1024;
constexpr unsigned max_block_threads = 1024;
constexpr unsigned warp_size = 32;

enum class fstate { ready, at_sync, at_shfl, done };

struct fiber {
    void* sp = nullptr;
    std::byte* stack = nullptr; // lowest usable address (a guard page below)
    unsigned index = 0;         // linear thread index in the block
    fstate state = fstate::done;
};

struct warp_state {
    unsigned lanes = 0;   // threads in this warp
    unsigned arrived = 0; // at the current shuffle
    unsigned exited = 0;
    unsigned mask = 0;
    uint64_t in[warp_size] = {};
    uint64_t out[warp_size] = {};
};

struct scheduler {
    std::vector<fiber> fibers; // created on demand, reused
    std::vector<warp_state> warps;
    void* sched_sp = nullptr;
    fiber* current = nullptr;
    const char* kernel = "";
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    unsigned n_threads = 0;
    unsigned live = 0;
    unsigned at_sync = 0;
#ifdef LLMOS_EMU_ASAN
    const void* sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
#endif

    ~scheduler() {
        for (fiber& f : fibers) {
#ifdef LLMOS_EMU_ASAN
            // Its frames' redzones off first: whatever maps these
            // addresses next (a mindspace, emulated device memory) is
            // host memory like any other.
            __asan_unpoison_memory_region(f.stack, fiber_stack);
#endif
            ::munmap(f.stack - 4096, fiber_stack + 4096);
        }
    }

    void make_fiber() {
        fiber f;
        void* m = ::mmap(nullptr, fiber_stack + 4096, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            die(kernel, "cannot map a fiber stack");
        }
        ::mprotect(m, 4096, PROT_NONE); // overflow faults instead of corrupting
        f.stack = static_cast<std::byte*>(m) + 4096;
#ifdef LLMOS_EMU_ASAN
        // The range may have been a stack of an exited thread's fibers,
        // unmapped with its frames' redzones still marked.
        __asan_unpoison_memory_region(f.stack, fiber_stack);
#endif
        f.index = static_cast<unsigned>(fibers.size());
        fibers.push_back(f);
        reset(fibers.back());
    }

    /// Puts `f` at the start of fiber_main.
    void reset(fiber& f) {
        auto top = reinterpret_cast<uintptr_t>(f.stack + fiber_stack) & ~uintptr_t(15);
        const uintptr_t s = top - 16; // rsp after the first ret: 16-aligned
        auto* w = reinterpret_cast<uint64_t*>(s - 56);
        w[0] = 0;                                            // r15
        w[1] = 0;                                            // r14
        w[2] = reinterpret_cast<uint64_t>(&fiber_main);      // r13
        w[3] = reinterpret_cast<uint64_t>(&f);               // r12
        w[4] = 0;                                            // rbx
        w[5] = 0;                                            // rbp
        w[6] = reinterpret_cast<uint64_t>(&llmos_emu_start); // return address
        f.sp = w;
    }

    static void fiber_main(fiber* f);

    /// From the scheduler into `f`, until it waits or finishes.
    void resume(fiber& f) {
        current = &f;
        const unsigned i = f.index;
        threadIdx = {i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y)};
#ifdef LLMOS_EMU_ASAN
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, f.stack, fiber_stack);
        llmos_emu_switch(&sched_sp, f.sp);
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
        llmos_emu_switch(&sched_sp, f.sp);
#endif
        current = nullptr;
    }

    /// From the running fiber back to the scheduler, in state `s`.
    void yield(fstate s) {
        fiber& f = *current;
        f.state = s;
#ifdef LLMOS_EMU_ASAN
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, sched_stack_bottom, sched_stack_size);
        llmos_emu_switch(&f.sp, sched_sp);
        __sanitizer_finish_switch_fiber(fake, &sched_stack_bottom, &sched_stack_size);
#else
        llmos_emu_switch(&f.sp, sched_sp);
#endif
    }

    warp_state& warp_of(const fiber& f) {
        return warps[f.index / warp_size];
    }

    void run_block() {
        while (fibers.size() < n_threads) {
            make_fiber();
        }
        warps.assign((n_threads + warp_size - 1) / warp_size, warp_state{});
        for (size_t w = 0; w < warps.size(); ++w) {
            warps[w].lanes = std::min<unsigned>(warp_size, n_threads - unsigned(w) * warp_size);
            warps[w].mask = warps[w].lanes == 32 ? 0xffffffffu : (1u << warps[w].lanes) - 1;
        }
        for (unsigned i = 0; i < n_threads; ++i) {
            fibers[i].state = fstate::ready;
        }
        live = n_threads;
        at_sync = 0;
        while (live) {
            bool ran = false;
            for (unsigned i = 0; i < n_threads; ++i) {
                fiber& f = fibers[i];
                if (f.state != fstate::ready) {
                    continue;
                }
                ran = true;
                resume(f);
                after(f);
            }
            if (!ran && live) {
                unsigned shfl = 0;
                for (unsigned i = 0; i < n_threads; ++i) {
                    shfl += fibers[i].state == fstate::at_shfl;
                }
                die(kernel, "block (" + std::to_string(blockIdx.x) + "," +
                                std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) +
                                ") cannot go on: " + std::to_string(at_sync) +
                                " threads wait at __syncthreads(), " + std::to_string(shfl) +
                                " at a warp shuffle, " + std::to_string(n_threads - live) +
                                " have exited");
            }
        }
    }

    /// Bookkeeping after `f` came back to the scheduler.
    void after(fiber& f) {
        switch (f.state) {
        case fstate::ready:
            die(kernel, "a fiber came back without waiting");
        case fstate::done: {
            --live;
            warp_state& w = warp_of(f);
            ++w.exited;
            if (w.arrived) {
                shuffle_with_exited(f);
            }
            release_sync_if_all();
            break;
        }
        case fstate::at_sync:
            ++at_sync;
            release_sync_if_all();
            break;
        case fstate::at_shfl: {
            warp_state& w = warp_of(f);
            if (w.exited) {
                shuffle_with_exited(f);
            }
            if (++w.arrived == w.lanes) {
                std::memcpy(w.out, w.in, sizeof(w.in));
                w.arrived = 0;
                const unsigned base = f.index / warp_size * warp_size;
                for (unsigned l = 0; l < w.lanes; ++l) {
                    fibers[base + l].state = fstate::ready;
                }
            }
            break;
        }
        }
    }

    [[noreturn]] void shuffle_with_exited(const fiber& f) {
        die(kernel, "warp " + std::to_string(f.index / warp_size) +
                        ": a full-mask shuffle while some of its lanes have exited");
    }

    void release_sync_if_all() {
        if (at_sync && at_sync == live) {
            for (unsigned i = 0; i < n_threads; ++i) {
                if (fibers[i].state == fstate::at_sync) {
                    fibers[i].state = fstate::ready;
                }
            }
            at_sync = 0;
        }
    }
};

thread_local scheduler sched;

void scheduler::fiber_main(fiber* f) {
#ifdef LLMOS_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched.sched_stack_bottom, &sched.sched_stack_size);
#endif
    (void)f;
    for (;;) {
        sched.body(sched.ctx);
        sched.yield(fstate::done);
    }
}

} // namespace

namespace detail {

void sync_block() {
    if (!sched.current) {
        die("(host)", "__syncthreads() outside a kernel");
    }
    sched.yield(fstate::at_sync);
}

uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width) {
    if (!sched.current) {
        die("(host)", "a warp shuffle outside a kernel");
    }
    fiber& f = *sched.current;
    warp_state& w = sched.warp_of(f);
    if (mask != w.mask) {
        die(sched.kernel, "shuffle mask " + std::to_string(mask) + " is not the warp's lanes (" +
                              std::to_string(w.mask) + ")");
    }
    if (width != 32) {
        die(sched.kernel, "shuffle width other than 32");
    }
    const unsigned lane = f.index % warp_size;
    w.in[lane] = bits;
    sched.yield(fstate::at_shfl);
    const unsigned src = lane ^ unsigned(lane_mask);
    return src < w.lanes ? w.out[src] : w.out[lane];
}

bool check_launch(const char* kernel, dim3 grid, dim3 block, cudaStream_t s) {
    if (const cudaError_t e = sticky(); e != cudaSuccess) {
        last_error = e;
        return false;
    }
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
        !threads || threads > max_block_threads || block.x > 1024 || block.y > 1024 ||
        block.z > 64) {
        std::fprintf(stderr,
                     "llmos CUDA emulator: kernel %s: launch of (%u,%u,%u) blocks of "
                     "(%u,%u,%u) threads refused\n",
                     kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        last_error = cudaErrorInvalidConfiguration;
        return false;
    }
    if (!stream_ok(s)) {
        last_error = cudaErrorInvalidResourceHandle;
        return false;
    }
    return true;
}

bool check_pointer(const char* kernel, size_t index, const void* p) {
    // One past an allocation's end is still its pointer (an empty slice).
    if (!p || is_device(p, 0, true)) {
        return true;
    }
    fault(cudaErrorIllegalAddress, kernel,
          "argument " + std::to_string(index) + " is not device memory");
    last_error = cudaErrorIllegalAddress;
    return false;
}

void submit(cudaStream_t s, std::function<void()> work) {
    submit_work(s, std::move(work));
}

bool faulted() {
    return sticky() != cudaSuccess;
}

/// LLMOS_CUDA_EMU_HOLD: a file; while it exists, each kernel run waits
/// (a step as long as a test wants, as a large model's would be).
void held_while_the_file_is_there() {
    static const char* const file = std::getenv("LLMOS_CUDA_EMU_HOLD");
    struct stat st;
    while (file && ::stat(file, &st) == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

bool injected_fault(const char* kernel) {
    held_while_the_file_is_there();
    {
        std::lock_guard g(dev().mu);
        if (++dev().kernel_runs != dev().fault_at) {
            return false;
        }
    }
    fault(cudaErrorIllegalAddress, kernel, "an injected fault (as an illegal address would)");
    return true;
}

void run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
    if (sched.current) {
        die(kernel, "launched from device code");
    }
    sched.kernel = kernel;
    sched.body = body;
    sched.ctx = ctx;
    sched.n_threads = block.x * block.y * block.z;
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                sched.run_block();
            }
        }
    }
}

} // namespace detail

void fault_kernel(uint64_t n) {
    std::lock_guard g(dev().mu);
    dev().fault_at = n ? dev().kernel_runs + n : 0;
}

void clear_fault() {
    std::lock_guard g(dev().mu);
    dev().sticky = cudaSuccess;
    dev().fault_at = 0;
}

void fail_captures(unsigned n, unsigned after) {
    std::lock_guard g(dev().mu);
    dev().fail_captures = n;
    dev().fail_after = after;
}

void fail_allocations(unsigned n) {
    std::lock_guard g(dev().mu);
    dev().fail_allocs = n;
}

} // namespace llmos::cuda_emu

// --- cudart ---

using namespace llmos::cuda_emu;

namespace {

/// An error code's name and description, as cudart or the driver gives them.
template <typename E>
struct error_text {
    E code;
    const char* name;
    const char* text;
};

/// The entry of `code` in `table`, or null.
template <typename E, size_t N>
const error_text<E>* find_error(const error_text<E> (&table)[N], E code) {
    for (const error_text<E>& t : table) {
        if (t.code == code) {
            return &t;
        }
    }
    return nullptr;
}

// cudart's names and descriptions of the errors the emulator gives.
constexpr error_text<cudaError_t> runtime_errors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress",
     "an illegal memory access was encountered"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorIllegalState, "cudaErrorIllegalState",
     "the operation cannot be performed in the present state"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureUnmatched, "cudaErrorStreamCaptureUnmatched",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {cudaErrorStreamCaptureWrongThread, "cudaErrorStreamCaptureWrongThread",
     "attempt to terminate a thread-local capture sequence from another thread"},
};

} // namespace

const char* cudaGetErrorName(cudaError_t e) {
    const auto* t = find_error(runtime_errors, e);
    return t ? t->name : "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
    const auto* t = find_error(runtime_errors, e);
    return t ? t->text : "unknown error";
}

cudaError_t cudaGetLastError() {
    const cudaError_t s = sticky();
    const cudaError_t e = s != cudaSuccess ? s : last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaRuntimeGetVersion(int* v) {
    if (!v) {
        return ret(cudaErrorInvalidValue);
    }
    *v = CUDA_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* v) {
    if (!v) {
        return ret(cudaErrorInvalidValue);
    }
    *v = driver_version();
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
    if (!n) {
        return ret(cudaErrorInvalidValue);
    }
    if (const cudaError_t e = runtime_usable(); e != cudaSuccess) {
        return e;
    }
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
    if (!p) {
        return ret(cudaErrorInvalidValue);
    }
    if (const cudaError_t e = runtime_usable(); e != cudaSuccess) {
        return e;
    }
    if (device != 0) {
        return ret(cudaErrorInvalidDevice);
    }
    *p = {};
    std::snprintf(p->name, sizeof(p->name), "%s", device_name);
    p->totalGlobalMem = device_memory;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int device) {
    if (!v) {
        return ret(cudaErrorInvalidValue);
    }
    if (device != 0) {
        return ret(cudaErrorInvalidDevice);
    }
    *v = a == cudaDevAttrMultiProcessorCount ? 1 : 0; // as cudaGetDeviceProperties says
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    if (const cudaError_t e = runtime_usable(); e != cudaSuccess) {
        return e;
    }
    return device == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceSynchronize() {
    if (const cudaError_t e = sync_call(); e != cudaSuccess) {
        return e;
    }
    return ret(sticky());
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
    if (const cudaError_t e = unsafe_call(); e != cudaSuccess) {
        return e;
    }
    return alloc(p, bytes, mem_kind::device);
}

cudaError_t cudaFree(void* p) {
    if (const cudaError_t e = sync_call(); e != cudaSuccess) {
        return e;
    }
    return release(p, mem_kind::device);
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
    if (const cudaError_t e = unsafe_call(); e != cudaSuccess) {
        return e;
    }
    return alloc(p, bytes, mem_kind::pinned);
}

cudaError_t cudaFreeHost(void* p) {
    if (const cudaError_t e = sync_call(); e != cudaSuccess) {
        return e;
    }
    return release(p, mem_kind::pinned);
}

namespace {

/// Whether a copy's host end is page-locked, as a captured copy needs.
bool host_end_pinned(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToDevice:
        return is_device(src, n, true);
    case cudaMemcpyDeviceToHost:
        return is_device(dst, n, true);
    default:
        return is_device(dst, n, true) && is_device(src, n, true);
    }
}

} // namespace

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k,
                            cudaStream_t s) {
    if (const cudaError_t e = sticky(); e != cudaSuccess) {
        return ret(e);
    }
    if (!stream_ok(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    if (!n) {
        return cudaSuccess;
    }
    if (!dst || !src || !copy_ok(dst, src, n, k)) {
        std::fprintf(stderr,
                     "llmos CUDA emulator: a copy of %zu bytes (kind %d) whose ends are not "
                     "what its kind says\n",
                     n, int(k));
        return ret(cudaErrorInvalidValue);
    }
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (s && cudaStreamIsCapturing(s, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone &&
        !host_end_pinned(dst, src, n, k)) {
        // A graph's copy node runs long after the call: pageable memory
        // may be gone or changed by then.
        std::fprintf(stderr,
                     "llmos CUDA emulator: a captured copy of %zu bytes from or to "
                     "pageable host memory\n",
                     n);
        std::lock_guard g(dev().mu);
        as_stream(s)->cap.invalidated = true;
        return ret(cudaErrorStreamCaptureUnsupported);
    }
    return submit_work(s, [dst, src, n, k] {
        if (detail::faulted()) {
            return;
        }
        if (!copy_ok(dst, src, n, k)) {
            fault(cudaErrorIllegalAddress, "(copy)", "a copy's memory is gone");
            return;
        }
        std::memmove(dst, src, n);
    });
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
    if (const cudaError_t e = sync_call(); e != cudaSuccess) {
        return e;
    }
    return cudaMemcpyAsync(dst, src, n, k, nullptr);
}

cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind k) {
    if (width > dpitch || width > spitch) {
        return ret(cudaErrorInvalidValue);
    }
    for (size_t r = 0; r < height; ++r) {
        if (const cudaError_t e =
                cudaMemcpy(static_cast<std::byte*>(dst) + r * dpitch,
                           static_cast<const std::byte*>(src) + r * spitch, width, k);
            e != cudaSuccess) {
            return e;
        }
    }
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s) {
    if (const cudaError_t e = sticky(); e != cudaSuccess) {
        return ret(e);
    }
    if (!stream_ok(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    if (!n) {
        return cudaSuccess;
    }
    if (!p || !is_device(p, n)) {
        return ret(cudaErrorInvalidValue);
    }
    return submit_work(s, [p, value, n] {
        if (detail::faulted()) {
            return;
        }
        if (!is_device(p, n)) {
            fault(cudaErrorIllegalAddress, "(memset)", "a memset's memory is gone");
            return;
        }
        std::memset(p, value, n);
    });
}

cudaError_t cudaMemset(void* p, int value, size_t n) {
    if (const cudaError_t e = sync_call(); e != cudaSuccess) {
        return e;
    }
    return cudaMemsetAsync(p, value, n, nullptr);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
    if (!s) {
        return ret(cudaErrorInvalidValue);
    }
    // A stream runs its work when it is queued (or records it).
    auto* obj = new stream_obj;
    obj->magic = LLMOS_EMU_STREAM_MAGIC;
    obj->submit = abi_submit;
    auto* h = reinterpret_cast<cudaStream_t>(static_cast<llmos_emu_stream*>(obj));
    std::lock_guard g(dev().mu);
    dev().streams.insert(h);
    *s = h;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    std::lock_guard g(dev().mu);
    if (!s || !dev().streams.erase(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    stream_obj* obj = as_stream(s);
    obj->magic = 0;
    delete obj;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (!stream_ok(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    if (!s) {
        if (const cudaError_t e = sync_call(); e != cudaSuccess) {
            return e;
        }
    } else {
        std::lock_guard g(dev().mu);
        capture_state& c = as_stream(s)->cap;
        if (c.active) {
            c.invalidated = true;
            return ret(cudaErrorStreamCaptureUnsupported);
        }
    }
    return ret(sticky());
}

// --- Graphs ---

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed) {
        return ret(cudaErrorInvalidValue);
    }
    if (!s) {
        return ret(cudaErrorStreamCaptureUnsupported); // the legacy stream
    }
    std::lock_guard g(dev().mu);
    if (!dev().streams.count(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    capture_state& c = as_stream(s)->cap;
    if (c.active) {
        return ret(cudaErrorIllegalState);
    }
    int64_t invalidate_at = -1;
    if (dev().fail_captures) {
        --dev().fail_captures;
        invalidate_at = dev().fail_after;
    }
    c = capture_state{.active = true,
                      .invalidated = false,
                      .invalidate_at = invalidate_at,
                      .mode = mode,
                      .thread = std::this_thread::get_id(),
                      .work = {}};
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
    if (!graph) {
        return ret(cudaErrorInvalidValue);
    }
    *graph = nullptr;
    std::lock_guard g(dev().mu);
    if (!s || !dev().streams.count(s)) {
        return ret(s ? cudaErrorInvalidResourceHandle : cudaErrorIllegalState);
    }
    capture_state& c = as_stream(s)->cap;
    if (!c.active) {
        return ret(cudaErrorIllegalState);
    }
    if (c.mode != cudaStreamCaptureModeRelaxed && c.thread != std::this_thread::get_id()) {
        return ret(cudaErrorStreamCaptureWrongThread);
    }
    capture_state done = std::move(c);
    c = capture_state{};
    if (done.invalidated) {
        return ret(cudaErrorStreamCaptureInvalidated);
    }
    auto* obj = new graph_obj{std::make_shared<const work_list>(std::move(done.work))};
    dev().graphs.insert(obj);
    *graph = reinterpret_cast<cudaGraph_t>(obj);
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
    if (!status) {
        return ret(cudaErrorInvalidValue);
    }
    *status = cudaStreamCaptureStatusNone;
    if (!s) {
        return cudaSuccess;
    }
    std::lock_guard g(dev().mu);
    if (!dev().streams.count(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    const capture_state& c = as_stream(s)->cap;
    if (c.active) {
        *status =
            c.invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
    }
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags) {
    if (!exec || flags) {
        return ret(cudaErrorInvalidValue);
    }
    *exec = nullptr;
    std::lock_guard g(dev().mu);
    auto* src = reinterpret_cast<graph_obj*>(graph);
    if (!dev().graphs.count(src)) {
        return ret(cudaErrorInvalidValue);
    }
    // The executable graph holds the work itself: the graph may go first.
    auto* obj = new graph_obj{src->work};
    dev().execs.insert(obj);
    *exec = reinterpret_cast<cudaGraphExec_t>(obj);
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (const cudaError_t e = sticky(); e != cudaSuccess) {
        return ret(e);
    }
    if (!stream_ok(s)) {
        return ret(cudaErrorInvalidResourceHandle);
    }
    std::shared_ptr<const work_list> work;
    {
        std::lock_guard g(dev().mu);
        auto* obj = reinterpret_cast<graph_obj*>(exec);
        if (!dev().execs.count(obj)) {
            return ret(cudaErrorInvalidValue);
        }
        work = obj->work;
    }
    return submit_work(s, [work] {
        for (const auto& w : *work) {
            if (detail::faulted()) {
                return;
            }
            w();
        }
    });
}

namespace {

/// Deletes `h`, a graph_obj in `live` (dev().graphs or dev().execs).
cudaError_t destroy_graph(std::set<const void*>& live, void* h) {
    std::lock_guard g(dev().mu);
    auto* obj = static_cast<graph_obj*>(h);
    if (!live.erase(obj)) {
        return ret(cudaErrorInvalidValue);
    }
    delete obj;
    return cudaSuccess;
}

} // namespace

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    return destroy_graph(dev().execs, exec);
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    return destroy_graph(dev().graphs, graph);
}

// --- The driver's virtual memory management ---

namespace llmos::cuda_emu {

namespace {

/// The granularity of physical allocations and reservations (a GPU's).
constexpr size_t vmm_granularity = 2u << 20;

/// A chunk mapped into a reservation: `bytes` from `offset` of the
/// memfd `fd` (the mapping's own, for dma-buf export).
struct mapped_chunk {
    size_t bytes;
    int fd;
    size_t offset;
};

struct vmm_state {
    std::mutex mu;
    std::map<CUmemGenericAllocationHandle, std::pair<int, size_t>> handles; // fd, bytes
    CUmemGenericAllocationHandle next = 1;
    std::map<uintptr_t, size_t> reserved;     // ranges from cuMemAddressReserve
    std::map<uintptr_t, mapped_chunk> mapped; // chunks mapped into them
};

vmm_state& vmm() {
    static vmm_state v;
    return v;
}

/// Whether [p, p + n) lies inside one reservation. Caller holds vmm().mu.
bool in_reservation(uintptr_t p, size_t n) {
    auto& r = vmm().reserved;
    auto it = r.upper_bound(p);
    if (it == r.begin()) {
        return false;
    }
    --it;
    return p >= it->first && p - it->first <= it->second && n <= it->second - (p - it->first);
}

/// Whether any mapped chunk overlaps [p, p + n). Caller holds vmm().mu.
bool overlaps_mapping(uintptr_t p, size_t n) {
    for (const auto& [at, c] : vmm().mapped) {
        if (at < p + n && p < at + c.bytes) {
            return true;
        }
    }
    return false;
}

/// Whether the kernel has /dev/udmabuf to make dma-bufs with (the device's
/// CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED).
bool udmabuf_available() {
    static const bool yes = [] {
        const int fd = ::open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            return false;
        }
        ::close(fd);
        return true;
    }();
    return yes;
}

/// A handle for `fd` (taken) of `bytes`.
CUmemGenericAllocationHandle add_handle(int fd, size_t bytes) {
    std::lock_guard g(vmm().mu);
    const CUmemGenericAllocationHandle h = vmm().next++;
    vmm().handles[h] = {fd, bytes};
    return h;
}

} // namespace

} // namespace llmos::cuda_emu

namespace {

// The driver's names and descriptions of the results the emulator gives.
constexpr error_text<CUresult> driver_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};

/// *s = the name (or description) of r; CUDA_ERROR_INVALID_VALUE (and
/// null) for a result the emulator never gives.
CUresult driver_error(CUresult r, const char** s, bool name) {
    if (!s) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const auto* t = find_error(driver_errors, r);
    *s = t ? (name ? t->name : t->text) : nullptr;
    return t ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

} // namespace

CUresult cuGetErrorName(CUresult r, const char** s) {
    return driver_error(r, s, true);
}

CUresult cuGetErrorString(CUresult r, const char** s) {
    return driver_error(r, s, false);
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!d) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (ordinal != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!name || len <= 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    std::snprintf(name, size_t(len), "%s", device_name);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
    if (!v) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
        *v = 1;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED:
        *v = 0;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED:
        *v = udmabuf_available() ? 1 : 0;
        return CUDA_SUCCESS;
    }
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetAllocationGranularity(size_t* g, const CUmemAllocationProp* prop,
                                       CUmemAllocationGranularity_flags) {
    if (!g || !prop) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *g = vmm_granularity;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressReserve(CUdeviceptr* p, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags) {
    if (!p || !size || size % vmm_granularity || addr || flags ||
        (alignment && alignment % vmm_granularity)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const size_t align = alignment ? alignment : vmm_granularity;
    void* m = ::mmap(nullptr, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (m == MAP_FAILED) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    const auto raw = reinterpret_cast<uintptr_t>(m);
    const uintptr_t at = (raw + align - 1) / align * align;
    if (at > raw) {
        ::munmap(m, at - raw);
    }
    if (raw + size + align > at + size) {
        ::munmap(reinterpret_cast<void*>(at + size), raw + size + align - (at + size));
    }
    std::lock_guard g(vmm().mu);
    vmm().reserved[at] = size;
    *p = at;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressFree(CUdeviceptr p, size_t size) {
    std::lock_guard g(vmm().mu);
    auto it = vmm().reserved.find(uintptr_t(p));
    if (it == vmm().reserved.end() || it->second != size || overlaps_mapping(uintptr_t(p), size)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    vmm().reserved.erase(it);
    ::munmap(reinterpret_cast<void*>(p), size);
    return CUDA_SUCCESS;
}

CUresult cuMemCreate(CUmemGenericAllocationHandle* h, size_t size, const CUmemAllocationProp* prop,
                     unsigned long long flags) {
    if (!h || !prop || !size || size % vmm_granularity || flags ||
        prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id != 0 ||
        prop->allocFlags.gpuDirectRDMACapable) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // Sealed against shrinking, as a udmabuf over it needs.
    const int fd = ::memfd_create("llmos-emulated-gpu-memory", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (::ftruncate(fd, off_t(size)) != 0 || ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
        ::close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // A GPU's new memory holds what its last user left there, not zeros.
    void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        ::close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    std::memset(m, 0xa5, size);
    ::munmap(m, size);
    *h = add_handle(fd, size);
    return CUDA_SUCCESS;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
    std::lock_guard g(vmm().mu);
    auto it = vmm().handles.find(h);
    if (it == vmm().handles.end()) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    // Mappings keep the memory (as the driver's do).
    ::close(it->second.first);
    vmm().handles.erase(it);
    return CUDA_SUCCESS;
}

CUresult cuMemMap(CUdeviceptr p, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                  unsigned long long flags) {
    std::lock_guard g(vmm().mu);
    auto it = vmm().handles.find(h);
    if (it == vmm().handles.end()) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    const uintptr_t at = uintptr_t(p);
    if (flags || !size || at % vmm_granularity || size % vmm_granularity ||
        offset > it->second.second || size > it->second.second - offset ||
        !in_reservation(at, size) || overlaps_mapping(at, size)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const int fd = ::fcntl(it->second.first, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // Not accessible until cuMemSetAccess.
    if (::mmap(reinterpret_cast<void*>(at), size, PROT_NONE, MAP_SHARED | MAP_FIXED, fd,
               off_t(offset)) == MAP_FAILED) {
        ::close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vmm().mapped[at] = {size, fd, offset};
    return CUDA_SUCCESS;
}

CUresult cuMemUnmap(CUdeviceptr p, size_t size) {
    if (sync_call() != cudaSuccess) {
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    std::lock_guard g(vmm().mu);
    auto it = vmm().mapped.find(uintptr_t(p));
    if (it == vmm().mapped.end() || it->second.bytes != size) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    ::close(it->second.fd);
    vmm().mapped.erase(it);
    {
        std::lock_guard gd(dev().mu);
        dev().allocs.erase(uintptr_t(p));
    }
    // Back to a hole in the reservation.
    ::mmap(reinterpret_cast<void*>(p), size, PROT_NONE,
           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    return CUDA_SUCCESS;
}

CUresult cuMemSetAccess(CUdeviceptr p, size_t size, const CUmemAccessDesc* desc, size_t count) {
    if (!desc || count != 1 || desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        desc->location.id != 0 || desc->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::lock_guard g(vmm().mu);
    auto it = vmm().mapped.find(uintptr_t(p));
    if (it == vmm().mapped.end() || it->second.bytes != size) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (::mprotect(reinterpret_cast<void*>(p), size, PROT_READ | PROT_WRITE) != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
#ifdef LLMOS_EMU_ASAN
    // These addresses may have held a fiber's stack, unmapped with ASan's
    // marks still on it: host code (memset, memcpy) would be refused there.
    __asan_unpoison_memory_region(reinterpret_cast<void*>(p), size);
#endif
    std::lock_guard gd(dev().mu);
    dev().allocs[uintptr_t(p)] = {size, mem_kind::device};
    return CUDA_SUCCESS;
}

CUresult cuMemExportToShareableHandle(void* handle, CUmemGenericAllocationHandle h,
                                      CUmemAllocationHandleType type, unsigned long long flags) {
    if (!handle || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || flags) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::lock_guard g(vmm().mu);
    auto it = vmm().handles.find(h);
    if (it == vmm().handles.end()) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    // Not closed on exec: the driver does not promise that it is.
    const int fd = ::fcntl(it->second.first, F_DUPFD, 0);
    if (fd < 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *static_cast<int*>(handle) = fd;
    return CUDA_SUCCESS;
}

CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* h, void* os_handle,
                                        CUmemAllocationHandleType type) {
    if (!h || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const int fd = int(reinterpret_cast<intptr_t>(os_handle));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        size_t(st.st_size) % vmm_granularity) {
        return CUDA_ERROR_INVALID_VALUE; // not one of this device's exports
    }
    const int mine = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (mine < 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *h = add_handle(mine, size_t(st.st_size));
    return CUDA_SUCCESS;
}

CUresult cuMemGetHandleForAddressRange(void* handle, CUdeviceptr p, size_t size,
                                       CUmemRangeHandleType type, unsigned long long flags) {
    if (!udmabuf_available()) {
        return CUDA_ERROR_NOT_SUPPORTED; // CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0
    }
    const auto page = size_t(::sysconf(_SC_PAGESIZE));
    if (!handle || type != CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD || flags || !size || p % page ||
        size % page) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // The chunks behind [p, p + size), which must be mapped without a gap
    // (and have been given access, as the driver wants).
    std::vector<udmabuf_create_item> items;
    {
        std::lock_guard g(vmm().mu);
        uintptr_t at = uintptr_t(p);
        const uintptr_t end = at + size;
        auto it = vmm().mapped.upper_bound(at);
        if (it == vmm().mapped.begin()) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        --it;
        std::lock_guard gd(dev().mu);
        for (; at < end; ++it) {
            if (it == vmm().mapped.end() || it->first > at || at >= it->first + it->second.bytes ||
                !dev().allocs.contains(it->first)) {
                return CUDA_ERROR_INVALID_VALUE;
            }
            const size_t skip = at - it->first;
            const size_t n = std::min(it->second.bytes - skip, size_t(end - at));
            items.push_back({uint32_t(it->second.fd), 0, it->second.offset + skip, n});
            at += n;
        }
    }
    std::vector<char> arg(sizeof(udmabuf_create_list) + items.size() * sizeof(udmabuf_create_item));
    auto* list = reinterpret_cast<udmabuf_create_list*>(arg.data());
    list->flags = UDMABUF_FLAGS_CLOEXEC;
    list->count = uint32_t(items.size());
    std::memcpy(arg.data() + sizeof(udmabuf_create_list), items.data(),
                items.size() * sizeof(udmabuf_create_item));
    const int dev_fd = ::open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
    if (dev_fd < 0) {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    const int buf = ::ioctl(dev_fd, UDMABUF_CREATE_LIST, list);
    ::close(dev_fd);
    if (buf < 0) {
        return errno == ENOMEM ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_ERROR_INVALID_VALUE;
    }
    *static_cast<int*>(handle) = buf;
    return CUDA_SUCCESS;
}

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned version,
                                             unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
    if (!symbol || !fn) {
        return ret(cudaErrorInvalidValue);
    }
    static const std::map<std::string, void*> table = {
        {"cuGetErrorName", reinterpret_cast<void*>(&cuGetErrorName)},
        {"cuGetErrorString", reinterpret_cast<void*>(&cuGetErrorString)},
        {"cuDeviceGet", reinterpret_cast<void*>(&cuDeviceGet)},
        {"cuDeviceGetName", reinterpret_cast<void*>(&cuDeviceGetName)},
        {"cuDeviceGetAttribute", reinterpret_cast<void*>(&cuDeviceGetAttribute)},
        {"cuMemGetAllocationGranularity", reinterpret_cast<void*>(&cuMemGetAllocationGranularity)},
        {"cuMemAddressReserve", reinterpret_cast<void*>(&cuMemAddressReserve)},
        {"cuMemAddressFree", reinterpret_cast<void*>(&cuMemAddressFree)},
        {"cuMemCreate", reinterpret_cast<void*>(&cuMemCreate)},
        {"cuMemRelease", reinterpret_cast<void*>(&cuMemRelease)},
        {"cuMemMap", reinterpret_cast<void*>(&cuMemMap)},
        {"cuMemUnmap", reinterpret_cast<void*>(&cuMemUnmap)},
        {"cuMemSetAccess", reinterpret_cast<void*>(&cuMemSetAccess)},
        {"cuMemExportToShareableHandle", reinterpret_cast<void*>(&cuMemExportToShareableHandle)},
        {"cuMemImportFromShareableHandle",
         reinterpret_cast<void*>(&cuMemImportFromShareableHandle)},
        {"cuMemGetHandleForAddressRange", reinterpret_cast<void*>(&cuMemGetHandleForAddressRange)},
    };
    // As the driver does: a version above its own is refused, and one
    // older than the call is not sufficient (cuMemGetHandleForAddressRange
    // came with 11.7, the VMM calls with 10.2).
    if (const cudaError_t e = runtime_usable(); e != cudaSuccess) {
        return e;
    }
    if (int(version) > driver_version()) {
        return ret(cudaErrorInvalidValue);
    }
    const unsigned since = std::strcmp(symbol, "cuMemGetHandleForAddressRange") == 0 ? 11070
                           : std::strncmp(symbol, "cuMem", 5) == 0                   ? 10020
                                                                                     : 0;
    auto it = table.find(symbol);
    *fn = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (it != table.end()) {
        if (version < since) {
            q = cudaDriverEntryPointVersionNotSufficent;
        } else {
            *fn = it->second;
            q = cudaDriverEntryPointSuccess;
        }
    }
    if (status) {
        *status = q;
    }
    return cudaSuccess;
}
