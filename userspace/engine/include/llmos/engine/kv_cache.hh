// SPDX-License-Identifier: MIT
//
// A sequence's KV cache, in memory the caller gives it (a mindspace view):
// it outlives the worker that filled it, and a new worker resumes the
// conversation from it without prefilling again.
//
// Layout of the memory (all offsets fixed by the header):
//   header     magic, version, geometry, model fingerprint, committed tokens
//   tokens     int32[max_tokens]: the conversation so far
//   table      uint32[max_blocks]: logical block -> physical block
//   blocks     the rows, as [layer][K, V][KV head][physical block][slot]
//              [head_dim]: a physical block is block_tokens slots of every
//              layer and head (a head's blocks lie together, for attention)
// Blocks are taken on demand (the pages behind untouched blocks are never
// touched, so a mindspace only grows as the conversation does), and given
// back by truncate(). The header's token count moves last, after the rows
// and the token ids are written: a worker killed mid-step leaves the cache
// as it was before that step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <llmos/engine/model.hh>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

namespace llmos::engine {

class kv_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class kv_type : uint32_t { f32 = 0, f16 = 1 };

struct kv_options {
    kv_type type = kv_type::f16;
    uint32_t block_tokens = 16;
    uint32_t max_tokens = 4096;
};

struct kv_usage {
    uint32_t tokens = 0;
    uint32_t blocks = 0;          ///< physical blocks in use
    uint64_t bytes_allocated = 0; ///< blocks in use x block bytes
    uint64_t bytes_used = 0;      ///< tokens x bytes per position
    double waste() const {
        return bytes_allocated ? 1.0 - double(bytes_used) / double(bytes_allocated) : 0.0;
    }
};

/// Page-aligned host memory for a KV cache that lives outside a mindspace
/// (a request that keeps no cache, tests, benchmarks). Its first page is
/// zeroed, so a cache opened in it starts fresh; the rest is touched only
/// as the cache grows. Move-only.
class kv_memory {
public:
    /// At least `bytes`, in whole pages; `zero_all` zeroes every page (as
    /// a new mindspace reads). Throws std::bad_alloc.
    explicit kv_memory(size_t bytes, bool zero_all = false);
    std::span<std::byte> span() const noexcept { return {_p.get(), _n}; }

private:
    struct free_mem {
        void operator()(std::byte* p) const noexcept;
    };
    std::unique_ptr<std::byte, free_mem> _p;
    size_t _n = 0;
};

class kv_cache {
public:
    /// Bytes of memory a cache of these options needs for `p`'s model.
    static uint64_t bytes_for(const model_params& p, const kv_options& o);

    /// A cache in `mem` (at least bytes_for(), 64-byte aligned): resumes
    /// the one already there when it was made for this model with these
    /// options; otherwise (or with `fresh`) starts an empty one. Throws
    /// kv_error: memory too small or misaligned, or a cache of another
    /// model or geometry there (unless `fresh`).
    static kv_cache open(std::span<std::byte> mem, const model& m, const kv_options& o,
                         bool fresh = false);

    bool resumed() const noexcept { return _resumed; }
    uint32_t n_tokens() const noexcept;
    uint32_t capacity() const noexcept { return _o.max_tokens; }
    kv_type type() const noexcept { return _o.type; }
    /// Positions per block: one KV head's rows [b * block_tokens, (b + 1) *
    /// block_tokens) of a layer's K (or V) lie back to back, head_dim
    /// elements apart, from k_row(layer, b * block_tokens, head) on (and a
    /// block taken right after another follows it: a conversation's
    /// blocks usually make one run).
    uint32_t block_tokens() const noexcept { return _o.block_tokens; }
    uint32_t head_dim() const noexcept { return _head_dim; }
    /// The geometry of the model it was opened for.
    uint32_t n_layer() const noexcept { return _n_layer; }
    uint32_t kv_dim() const noexcept { return _kv_dim; }
    /// The committed conversation.
    std::span<const int32_t> tokens() const noexcept;

    /// Makes room for positions [n_tokens, n_tokens + n). False when the
    /// cache is full: no position changes then, though blocks taken for
    /// the first of them stay mapped for later.
    bool reserve(uint32_t n) noexcept;
    /// Stores layer `layer`'s K and V rows (kv_dim floats each, the KV
    /// heads' head_dim one after another) of position `pos` (reserved, not
    /// yet committed).
    void write(uint32_t layer, uint32_t pos, const float* k, const float* v) noexcept;
    /// KV head `head`'s K or V row (head_dim elements) of `pos` (committed
    /// or written) in the cache's type.
    const void* k_row(uint32_t layer, uint32_t pos, uint32_t head) const noexcept;
    const void* v_row(uint32_t layer, uint32_t pos, uint32_t head) const noexcept;
    /// Appends `toks` as positions [n_tokens, n_tokens + size): their rows
    /// must have been written. The header moves last.
    void commit(std::span<const int32_t> toks) noexcept;
    /// Forgets positions from `n` on; their blocks are given back.
    void truncate(uint32_t n) noexcept;

    kv_usage usage() const noexcept;

private:
    struct header;
    header* hdr() const noexcept { return reinterpret_cast<header*>(_mem.data()); }
    /// Where KV head `head`'s K (or V) row of position pos in layer
    /// `layer` lies.
    std::byte* row(uint32_t layer, uint32_t pos, uint32_t head, bool v) const noexcept;
    /// A physical block's first word (the free list's link).
    std::byte* link_of(uint32_t phys) const noexcept;
    /// Puts `phys` (mapped by no logical block) on the free list.
    void give_back(uint32_t phys) noexcept;
    /// Takes the cache in the memory as it is (checked); throws kv_error.
    void resume();

    std::span<std::byte> _mem;
    kv_options _o;
    uint32_t _n_layer = 0;
    uint32_t _kv_dim = 0;
    uint32_t _n_head_kv = 0;
    uint32_t _head_dim = 0;
    uint32_t _max_blocks = 0;
    size_t _elt = 4;
    size_t _slab = 0; ///< one block's rows of one KV head of one layer's K (or V)
    int32_t* _tokens = nullptr;
    uint32_t* _table = nullptr;
    std::byte* _blocks = nullptr;
    bool _resumed = false;
    // The bookkeeping, as this cache keeps it: the memory gets a copy of
    // each change, and is read only when the cache is opened (its owner may
    // write it at any time).
    uint32_t _n = 0;             ///< committed positions
    uint32_t _next = 0;          ///< physical blocks ever taken
    std::vector<uint32_t> _tab;  ///< logical block -> physical block
    std::vector<uint32_t> _free; ///< given-back blocks, the free list's head last
};

} // namespace llmos::engine
