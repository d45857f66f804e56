// SPDX-License-Identifier: MIT
//
// Memory for KV caches that live outside the mindspace's host pages: one
// growable region per conversation (vAttention's scheme: a virtual range
// as large as the cache can become, backed only as far as the cache has
// grown), kept across requests under the conversation's key, so the next
// request of a session resumes from what the last one left.
//
// The GPU engine keeps a conversation's K/V rows in a CUDA virtual-memory
// region (engine::gpu_memory) from this pool and its bookkeeping in the
// request's mindspace. The pool bounds what all regions together have
// backed: a region that must grow past the bound takes the room from the
// least recently used idle regions (request regions first, then
// conversations' ones), which are dropped; the conversation whose region
// went starts over (its next request prefills again), nothing else is
// lost. A region in use (leased) is never dropped.
//
// Regions come from a factory, so the pool's bookkeeping is the same over
// device memory (make_gpu_region) and over host memory (make_host_region:
// an address range reserved with no access, opened as it grows).
#pragma once

#include <cstdint>
#include <functional>
#include <llmos/unique_fd.hh>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace llmos {

/// A fixed range of addresses of which a prefix is backed by memory.
class growable_region {
public:
    virtual ~growable_region() = default;
    /// The start of the range (a host or a device address); never moves.
    virtual void* data() const noexcept = 0;
    virtual uint64_t reserved_bytes() const noexcept = 0;
    virtual uint64_t mapped_bytes() const noexcept = 0;
    /// What grow() rounds to: the size of the pieces the range is backed in.
    virtual uint64_t granularity() const noexcept = 0;
    /// Backs [0, bytes) (rounded up to the region's granularity). Throws
    /// std::runtime_error (more than reserved, out of memory); the region
    /// is as before then.
    virtual void grow(uint64_t bytes) = 0;
    /// A new dma-buf fd of the backed bytes, for a peer device or the llmos
    /// module (a mindspace made with LLMOS_MS_DMABUF); it does not follow
    /// later growth. Throws std::runtime_error where the memory cannot be
    /// exported: nothing backed yet, a driver without dma-buf export, host
    /// memory (which has none).
    virtual unique_fd export_dmabuf() const;
};

/// Makes a region of at least `max_bytes` (nothing backed yet). Throws
/// std::runtime_error or std::bad_alloc when it cannot.
using region_factory = std::function<std::unique_ptr<growable_region>(uint64_t max_bytes)>;

/// Host memory: mmap(PROT_NONE) of `max_bytes`, opened a page at a time.
std::unique_ptr<growable_region> make_host_region(uint64_t max_bytes);

/// Device memory on `device`: an engine::gpu_memory (CUDA VMM) range.
/// Throws engine::gpu_error without CUDA or a VMM-capable device.
std::unique_ptr<growable_region> make_gpu_region(uint64_t max_bytes, int device);

/// Which conversation a region belongs to: its mindspace and the offset of
/// the cache's bookkeeping in it.
struct kv_key {
    uint64_t ms_id = 0;
    uint64_t offset = 0;
    auto operator<=>(const kv_key&) const = default;
};

/// What kv_pool_options::on_give_back returns: anything, kept with the
/// region.
using kv_keepsake = std::shared_ptr<void>;

struct kv_pool_options {
    uint64_t capacity = 0; ///< bytes all regions together may back
    region_factory make{};
    /// Called when a conversation's region is given back (not a request's
    /// region, not one given back to be dropped), on the thread that held
    /// it, before anyone else may take it. What it returns is kept with the
    /// region until the region is given back again (the old keepsake is
    /// released before the call) or dropped (released with it, evictions
    /// and the pool's end included). For what must live exactly as long
    /// as the region's contents: llmosd makes a session's K/V rows a
    /// module mindspace over the region's dma-buf. Must not block for
    /// long; an exception counts as nothing kept.
    std::function<kv_keepsake(const kv_key& key, const growable_region& region)> on_give_back;
};

struct kv_pool_stats {
    uint64_t mapped_bytes = 0; ///< backed by all regions together
    uint64_t capacity = 0;
    uint32_t regions = 0; ///< held, idle or leased
    uint32_t leased = 0;
    uint64_t evictions = 0; ///< regions dropped to make room
    uint64_t resumed = 0;   ///< acquire() that found its conversation's region
};

class kv_pool {
    struct entry;

public:
    explicit kv_pool(kv_pool_options o);
    ~kv_pool();
    kv_pool(const kv_pool&) = delete;
    kv_pool& operator=(const kv_pool&) = delete;

    /// A region in use; given back to the pool (kept) when destroyed.
    /// Move-only. One thread at a time per lease.
    class lease {
    public:
        lease() noexcept = default;
        lease(lease&& o) noexcept;
        lease& operator=(lease&& o) noexcept;
        ~lease();

        explicit operator bool() const noexcept { return _e != nullptr; }
        void* data() const noexcept;
        uint64_t reserved_bytes() const noexcept;
        uint64_t mapped_bytes() const noexcept;
        /// True when the region is new (or was dropped and made again):
        /// nothing written before is in it.
        bool fresh() const noexcept { return _fresh; }
        /// Names the region's contents: a number given to each region
        /// made, random, so that no other region (of this process or of
        /// another sharing the mindspace) is likely to have it. A cache's
        /// bookkeeping records the tag of the rows it speaks of, so a
        /// region that did not write them does not resume from them.
        uint64_t tag() const noexcept;
        /// Backs [0, bytes), dropping idle regions for room as needed.
        /// False (the region as before, `why` set) when even that is not
        /// enough or the memory cannot be had. Throws engine::device_lost
        /// (the region as before) when the device is gone for good.
        bool grow(uint64_t bytes, std::string* why = nullptr);
        /// Gives the region back and drops it (its memory is freed).
        void discard() noexcept;

    private:
        friend class kv_pool;
        lease(kv_pool* p, entry* e, bool fresh) noexcept
            : _p(p)
            , _e(e)
            , _fresh(fresh) {}
        void give_back(bool drop) noexcept;
        kv_pool* _p = nullptr;
        entry* _e = nullptr;
        bool _fresh = false;
    };

    /// The region kept for `key` when there is one of at least `max_bytes`
    /// (fresh() false), else a new one (a smaller one is dropped). Throws
    /// std::runtime_error when the region is leased already, or when a new
    /// one cannot be made (the factory's reason). Any thread.
    lease acquire(kv_key key, uint64_t max_bytes);
    /// A region for one request (no key): an idle one of at least
    /// `max_bytes` that a finished request gave back, else a new one.
    /// Always fresh(). Throws as acquire(). Any thread.
    lease acquire_anonymous(uint64_t max_bytes);
    /// Drops the region of `key` unless it is leased. False when there is
    /// none or it is in use. Any thread.
    bool forget(kv_key key);

    kv_pool_stats stats() const;

private:
    entry* make_entry(uint64_t max_bytes, const kv_key* key);
    /// Takes `e` out of the pool (its key, its share of the backed bytes)
    /// and hands it over, to be freed once _mu is released. With _mu held.
    std::unique_ptr<entry> unlink(entry* e);
    /// Drops idle regions (anonymous first, then by age) until `need` more
    /// bytes fit; false when they do not. With _mu held.
    bool make_room(uint64_t need, const entry* keep, std::vector<std::unique_ptr<entry>>& dropped);

    kv_pool_options _o;
    mutable std::mutex _mu; ///< protects everything below and entries' fields
    std::map<kv_key, entry*> _by_key;
    std::map<entry*, std::unique_ptr<entry>> _all;
    uint64_t _mapped = 0; ///< backed bytes, counting grows under way
    uint64_t _clock = 0;
    uint64_t _evictions = 0;
    uint64_t _resumed = 0;
};

} // namespace llmos
