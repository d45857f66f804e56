// SPDX-License-Identifier: MIT
//
// The CUDA backend of the engine: the same forward pass as context.cc on
// one NVIDIA GPU. This header needs no CUDA headers and is installed
// whether or not the library was built with CUDA; without it (or without a
// GPU and driver at run time) cuda_probe() says why and the classes that
// need a device throw cuda_error with that reason.
//
// - cuda_model uploads a model's weights once, every matrix as the file
//   holds it: F32, F16 and BF16 as they are, the block types (Q8_0, Q4_0,
//   Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) in their GGUF blocks, which the
//   engine's own dequantizing matmul kernels read. Token embeddings stay on
//   the host (model::embed).
// - cuda_kv_cache is a sequence's KV cache split in two: its bookkeeping
//   (header with the model fingerprint, committed token count, tokens,
//   block table) in caller-given host memory (a mindspace mapping), its
//   blocks of F16 K/V rows in caller-given device memory. As with
//   kv_cache, the token count moves last, after the step's device writes
//   completed: a worker killed mid-step leaves the cache as before it,
//   and a new context over the same two memories resumes without prefill.
// - cuda_context runs steps like context::step: every sequence's new
//   tokens at once, linear layers over the step's whole token matrix,
//   attention per sequence over its paged cache, logits copied back to
//   host floats (sampling stays on the host).
//
// Linear layers with F32/F16/BF16 weights (and block ones in prefill, 32
// tokens or more, dequantized to F16 for it) go through cuBLAS when
// libcublas.so.13 (or libcublas.so) can be loaded at run time; nothing
// links against it. The activations meet F16 (and dequantized) weights as
// halves and BF16 weights as bfloat16 (F32 sums). A token's activations
// beyond F16's range (+-65504: gate * up of some models reaches 1e5 and
// more) are scaled into it by a power of two, which is undone on the F32
// result, not clamped. Without cuBLAS the engine's own kernels do the work,
// activations in F32 (cuda_blas() says which, and why).
//
// Small steps (decode: one token per sequence) are a few hundred short
// kernels, whose launches cost more than their work on a small model. A
// context captures such a step's kernels into a CUDA graph the second
// time it sees the step's shape (tokens, sequences, logit rows) and
// replays the graph after that: one launch a step. Everything a step
// changes (its tokens, positions, block tables) is data in device memory
// that the graph's kernels read, so one graph serves every step of its
// shape; graphs are dropped when the scratch they point into moves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <llmos/engine/context.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace llmos::engine {

/// A CUDA call failed, or CUDA is not there: the message names the call
/// and CUDA's error string (or says the library was built without CUDA).
class cuda_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// The GPU cannot be used by this process any more: a kernel faulted (an
/// illegal address, a device assert, ...) and CUDA now fails every call
/// with that error until the process ends. Thrown in place of cuda_error
/// and gpu_error for such errors. Nothing but a new process helps: a
/// worker that sees it stops using the device, and a server should exit
/// so that it is started again.
class device_lost : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Whether `code`, a cudaError_t or the CUresult of the same number, is one
/// that CUDA documents as leaving the process unable to use the device
/// ("the process must be terminated and relaunched"), or an uncorrectable
/// hardware error (ECC, NVLink) met during execution, after which the
/// context's memory cannot be trusted either. (The numbers are CUDA 13's,
/// checked against its headers where the backend is built.)
constexpr bool cuda_error_is_sticky(int code) noexcept {
    switch (code) {
    case 214: // cudaErrorECCUncorrectable, CUDA_ERROR_ECC_UNCORRECTABLE
    case 220: // cudaErrorNvlinkUncorrectable, CUDA_ERROR_NVLINK_UNCORRECTABLE
    case 226: // cudaErrorContained
    case 700: // cudaErrorIllegalAddress
    case 702: // cudaErrorLaunchTimeout
    case 710: // cudaErrorAssert
    case 714: // cudaErrorHardwareStackError
    case 715: // cudaErrorIllegalInstruction
    case 716: // cudaErrorMisalignedAddress
    case 717: // cudaErrorInvalidAddressSpace
    case 718: // cudaErrorInvalidPc
    case 719: // cudaErrorLaunchFailure
    case 721: // cudaErrorTensorMemoryLeak
    case 810: // cudaErrorMpsClientTerminated
    case 911: // cudaErrorExternalDevice
        return true;
    default:
        return false;
    }
}

/// True when this library was built with the CUDA backend. Any thread.
bool cuda_built() noexcept;

struct cuda_device_info {
    bool available = false; ///< a usable device at this index
    std::string reason;     ///< why not (the failing call and CUDA's error), when not
    int device = 0;
    std::string name; ///< "NVIDIA H100 80GB HBM3"
    int cc_major = 0; ///< compute capability
    int cc_minor = 0;
    uint64_t total_mem = 0; ///< bytes of device memory
    int multiprocessors = 0;
    int driver_version = 0;  ///< CUDA version the driver supports (13000 = 13.0), 0 if none
    int runtime_version = 0; ///< CUDA runtime linked in (13000 = 13.0)
    bool gpudirect_rdma = false;
};

/// What device `device` is, or why it cannot be used (no driver, no
/// device, a device this build has no code for: the library is built for
/// one architecture, LLMOS_CUDA_ARCH). Never throws; cheap after the first
/// call (which loads the driver). Any thread.
cuda_device_info cuda_probe(int device = 0) noexcept;

/// Whether cuBLAS could be loaded (tried once per process, on the first
/// call or the first cuda_context that wants it).
struct cuda_blas_info {
    bool loaded = false;
    std::string library; ///< the file dlopen() took, when loaded
    std::string reason;  ///< dlopen's or dlsym's error, when not
};

/// cuBLAS's state in this process (loads it on the first call; never
/// throws). Any thread.
cuda_blas_info cuda_blas() noexcept;

/// Plain device memory (cudaMalloc), zeroed: KV blocks where no VMM
/// allocation (cuda_memory.hh) is at hand -- tests, tools.
class cuda_device_buffer {
public:
    /// `bytes` of memory on `device`. Throws cuda_error (no CUDA, no
    /// device, out of memory). Any thread.
    explicit cuda_device_buffer(uint64_t bytes, int device = 0);
    ~cuda_device_buffer();
    cuda_device_buffer(cuda_device_buffer&& o) noexcept;
    cuda_device_buffer& operator=(cuda_device_buffer&&) = delete;

    void* get() const noexcept { return _p; }
    uint64_t size() const noexcept { return _n; }

private:
    void* _p = nullptr;
    uint64_t _n = 0;
    int _device = 0;
};

struct cuda_kv_options {
    uint32_t block_tokens = 16; ///< positions per block
    uint32_t max_tokens = 4096;
};

/// A sequence's KV cache: bookkeeping in host memory, F16 K/V rows in
/// device memory (both given by the caller and outliving the cache
/// object). The device rows are [block][layer][K, V][slot][kv_dim] halves
/// (not kv_cache's layout: a block is one piece of device memory, which is
/// what --publish-gpu-kv shows a peer). The host part is plain memory
/// access only: this class makes no CUDA call (it is there without CUDA
/// too); cuda_context writes the rows.
class cuda_kv_cache {
public:
    /// Bytes of host memory for the bookkeeping of a cache of these
    /// options for `p`'s model.
    static uint64_t host_bytes_for(const model_params& p, const cuda_kv_options& o);
    /// Bytes of device memory for its blocks.
    static uint64_t device_bytes_for(const model_params& p, const cuda_kv_options& o);

    /// A cache over `host` (at least host_bytes_for(), 64-byte aligned)
    /// and `device`/`device_bytes` (at least device_bytes_for(), 256-byte
    /// aligned): resumes the one already there when it was made for this
    /// model with these options and its rows were written to device
    /// memory of this `rows_tag` (kv_pool::lease::tag(): the host part is
    /// a mindspace other processes may have continued with rows in their
    /// own device memory), otherwise (or with `fresh`) starts an empty one
    /// that records `rows_tag`. Throws kv_error: memory too small or
    /// misaligned, a cache of another model or geometry there (unless
    /// `fresh`), a corrupt header. Any thread; one thread at a time per
    /// cache.
    static cuda_kv_cache open(std::span<std::byte> host, void* device, uint64_t device_bytes,
                              const model& m, const cuda_kv_options& o, bool fresh = false,
                              uint64_t rows_tag = 0);

    bool resumed() const noexcept { return _resumed; }
    /// Committed positions.
    uint32_t n_tokens() const noexcept;
    uint32_t capacity() const noexcept { return _o.max_tokens; }
    /// The committed conversation.
    std::span<const int32_t> tokens() const noexcept;

    /// Maps blocks for positions [n_tokens, n_tokens + n). False when the
    /// cache is full (nothing changes then).
    bool reserve(uint32_t n) noexcept;
    /// Appends `toks` as positions [n_tokens, n_tokens + size): their rows
    /// must be on the device already (the stream synchronized). The
    /// header's count moves last.
    void commit(std::span<const int32_t> toks) noexcept;
    /// Forgets positions from `n` on; their blocks are given back.
    void truncate(uint32_t n) noexcept;
    kv_usage usage() const noexcept;
    /// Bytes from the start of the device memory that the blocks taken so
    /// far reach: what must be backed before a step writes them (blocks
    /// are taken in order, given-back ones first). A region that grows on
    /// demand grows to this after reserve().
    uint64_t device_bytes_used() const noexcept;

    // For cuda_context: where the rows are.
    void* device_blocks() const noexcept { return _device; }
    uint64_t block_bytes() const noexcept { return _block_bytes; }
    uint32_t block_tokens() const noexcept { return _o.block_tokens; }
    /// The geometry of the model it was opened for.
    uint32_t n_layer() const noexcept { return _n_layer; }
    uint32_t kv_dim() const noexcept { return _kv_dim; }
    /// Logical block -> physical block (UINT32_MAX: not mapped), for the
    /// blocks that cover the reserved positions.
    std::span<const uint32_t> block_table() const noexcept { return _tab; }

private:
    struct header;
    header* hdr() const noexcept { return reinterpret_cast<header*>(_host.data()); }
    /// Pushes `phys` (mapped by no logical block) on the free stack.
    void give_back(uint32_t phys) noexcept;

    std::span<std::byte> _host;
    void* _device = nullptr;
    cuda_kv_options _o;
    uint32_t _max_blocks = 0;
    uint64_t _block_bytes = 0;
    int32_t* _tokens = nullptr;
    uint32_t* _table = nullptr;
    uint32_t* _free = nullptr; ///< stack of given-back physical blocks
    bool _resumed = false;
    // The bookkeeping, as this cache keeps it: the host memory gets a copy
    // of each change, and is read only when the cache is opened (its owner
    // may write it at any time).
    uint32_t _n = 0;    ///< committed positions
    uint32_t _next = 0; ///< physical blocks ever taken
    uint32_t _n_layer = 0, _kv_dim = 0;
    std::vector<uint32_t> _tab;   ///< logical block -> physical block
    std::vector<uint32_t> _stack; ///< given-back blocks
};

/// A model's weights on a device.
class cuda_model {
public:
    /// Uploads `m`'s weights (which must outlive this object) to device
    /// `device`. Throws cuda_error: no CUDA or no such device, out of
    /// device memory, any failing CUDA call (named in the message).
    explicit cuda_model(const model& m, int device = 0);
    ~cuda_model();
    cuda_model(cuda_model&&) noexcept;
    cuda_model& operator=(cuda_model&&) = delete;

    const model& get_model() const noexcept;
    int device() const noexcept;
    /// Bytes of weights held on the device.
    uint64_t device_bytes() const noexcept;
    /// How the weights are held, per type (each in the file's own):
    /// "Q4_K x12, Q6_K x3".
    std::string layout_summary() const;

    struct impl;
    const impl& get() const noexcept { return *_impl; }

private:
    std::unique_ptr<impl> _impl;
};

/// The most tokens one step of a cuda_context may hold: the matmul
/// kernels' grid has one block row per 8 tokens, and CUDA at most 65535.
inline constexpr uint32_t cuda_max_batch_tokens = 65535 * 8;

struct cuda_context_options {
    /// Tokens of one step, all sequences together (1 to
    /// cuda_max_batch_tokens; 0 is 1).
    uint32_t max_batch_tokens = 512;
    /// Use cuBLAS when it loads; false: always the engine's own kernels.
    bool use_cublas = true;
    /// Replay steps of up to cuda_graph_max_tokens tokens as CUDA graphs;
    /// false, or LLMOS_CUDA_GRAPHS=0 in the environment: launch every
    /// kernel of every step.
    bool use_graphs = true;
    /// Graphs kept, one per step shape (a busy server's decode batch
    /// sizes, some prompt chunks); beyond it the least recently replayed
    /// is dropped. At least 1.
    uint32_t max_graphs = 64;
    /// Parts each row's attention is split into (each part a block per
    /// head, merged after) in steps of at most 16 rows: 0 picks them per
    /// step from the longest row and the device's multiprocessors (1 until
    /// rows and heads leave the device idle over rows of 1024 positions or
    /// more); 1 to cuda_max_attention_parts always that many (tests,
    /// tuning); more is refused (std::invalid_argument).
    uint32_t attention_parts = 0;
    /// Device memory each context keeps for block-quantized weights
    /// dequantized to F16 for cuBLAS (steps of 32 tokens or more): a larger
    /// matrix is dequantized and multiplied a tile of rows at a time (an
    /// 8B model's output head is a GB in F16, and every worker has a
    /// context). At least one row is kept, whatever this says.
    uint64_t dequant_tile_bytes = 64ull << 20;
};

/// Most parts cuda_context_options::attention_parts may name.
inline constexpr uint32_t cuda_max_attention_parts = 32;

/// Steps larger than this always launch their kernels (prefill: few steps
/// of each shape, and long kernels).
inline constexpr uint32_t cuda_graph_max_tokens = 128;

/// Whether contexts replay steps as graphs by default: false when
/// LLMOS_CUDA_GRAPHS=0 is in the environment (or without CUDA).
bool cuda_graphs_wanted() noexcept;

/// What a context did with graphs, since it was made.
struct cuda_graph_stats {
    uint64_t captured = 0; ///< graphs captured and instantiated
    uint64_t replayed = 0; ///< steps run as one graph launch
    uint64_t launched = 0; ///< steps whose kernels were launched one by one
    uint64_t dropped = 0;  ///< graphs dropped (scratch moved, or too many shapes)
    uint64_t failed = 0;   ///< captures that failed (their steps launched)
    size_t cached = 0;     ///< graphs held now
};

/// One sequence's part of a step (as batch_entry, with a cuda_kv_cache).
struct cuda_batch_entry {
    cuda_kv_cache* kv = nullptr;
    std::span<const int32_t> tokens{}; ///< new tokens, after kv->n_tokens()
    float* logits = nullptr;           ///< n_vocab floats for the last token's logits
    float* all_logits = nullptr;       ///< tokens.size() x n_vocab floats (tests)
};

class cuda_context {
public:
    /// A context (a stream, cuBLAS handle, scratch) on the model's device.
    /// Throws cuda_error.
    explicit cuda_context(const cuda_model& m, cuda_context_options o = {});
    ~cuda_context();
    cuda_context(const cuda_context&) = delete;
    cuda_context& operator=(const cuda_context&) = delete;

    /// Runs `batch` as context::step does, with the same statuses: on
    /// anything but ok, nothing was committed. Returns once the logits are
    /// in host memory and the caches committed. Throws cuda_error when a
    /// CUDA call fails (nothing committed then either). Allocates device
    /// memory only when a step is larger than every step before it (with
    /// graphs: at the first step, for the largest step it takes). One
    /// thread at a time.
    step_status step(std::span<cuda_batch_entry> batch);

    const cuda_model& get_model() const noexcept;
    /// True when this context's F16/F32 linear layers run on cuBLAS.
    bool uses_cublas() const noexcept;
    /// "cuBLAS (libcublas.so.13)" or "built-in kernels (why)".
    std::string gemm_path() const;
    /// True while small steps are replayed as CUDA graphs: wanted, and
    /// captures have not failed three times in a row on this context.
    bool uses_graphs() const noexcept;
    /// "CUDA graphs" or "kernel launches (why: not wanted, or the CUDA
    /// error the last capture met)".
    std::string graph_path() const;
    /// Why the last graph capture failed (the CUDA or cuBLAS error it
    /// met); "" when none has.
    std::string last_graph_failure() const;
    cuda_graph_stats graph_stats() const noexcept;

    struct impl;

private:
    std::unique_ptr<impl> _impl;
};

} // namespace llmos::engine
