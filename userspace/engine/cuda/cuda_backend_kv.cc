// SPDX-License-Identifier: MIT
//
// cuda_kv_cache's bookkeeping: host memory only, no CUDA call (built with
// and without CUDA).
//
// Host layout (offsets fixed by the geometry):
//   header     magic, version, geometry, model fingerprint, committed
//              tokens, blocks ever taken, given-back blocks
//   tokens     int32[max_tokens]
//   table      uint32[max_blocks]: logical block -> physical block
//   free       uint32[max_blocks]: a stack of given-back physical blocks
// Device layout: physical blocks of block_bytes each; a block holds, per
// layer, K then V as [block_tokens][kv_dim] halves.
#include <atomic>
#include <cstring>
#include <llmos/engine/cuda.hh>

namespace llmos::engine {

namespace {

constexpr uint64_t kvg_magic = 0x4756'4b53'4f4d'4c4cull; // "LLMOSKVG"
constexpr uint32_t kvg_version = 1;
constexpr uint32_t no_block = UINT32_MAX;

uint64_t align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) / a * a;
}

struct geometry {
    uint64_t tokens_off, table_off, free_off, host_total, block_bytes, device_total;
    uint32_t max_blocks;
};

geometry layout(const model_params& p, const cuda_kv_options& o) {
    geometry g{};
    g.max_blocks = o.block_tokens ? (o.max_tokens + o.block_tokens - 1) / o.block_tokens : 0;
    g.tokens_off = 128;
    g.table_off = align_up(g.tokens_off + 4ull * o.max_tokens, 64);
    g.free_off = align_up(g.table_off + 4ull * g.max_blocks, 64);
    g.host_total = align_up(g.free_off + 4ull * g.max_blocks, 64);
    g.block_bytes = align_up(uint64_t(p.n_layer) * 2 * o.block_tokens * p.kv_dim() * 2, 256);
    g.device_total = g.block_bytes * g.max_blocks;
    return g;
}

} // namespace

struct cuda_kv_cache::header {
    uint64_t magic;
    uint32_t version;
    uint32_t block_tokens;
    uint32_t max_tokens;
    uint32_t n_layer;
    uint32_t kv_dim;
    uint32_t n_tokens; // committed positions; written last
    uint64_t fingerprint;
    uint32_t next_block; // physical blocks ever taken
    uint32_t n_free;     // entries on the free stack
    uint32_t reserved[20];
};
uint64_t cuda_kv_cache::host_bytes_for(const model_params& p, const cuda_kv_options& o) {
    return layout(p, o).host_total;
}

uint64_t cuda_kv_cache::device_bytes_for(const model_params& p, const cuda_kv_options& o) {
    return layout(p, o).device_total;
}

cuda_kv_cache cuda_kv_cache::open(std::span<std::byte> host, void* device, uint64_t device_bytes,
                                  const model& m, const cuda_kv_options& o, bool fresh) {
    static_assert(sizeof(header) <= 128); // the tokens start at 128
    const model_params& p = m.params();
    if (!o.block_tokens || !o.max_tokens) {
        throw kv_error("cuda kv cache: bad options (block_tokens and max_tokens must be > 0)");
    }
    const geometry g = layout(p, o);
    if (host.size() < g.host_total) {
        throw kv_error("cuda kv cache: " + std::to_string(host.size()) + " bytes of host memory, " +
                       std::to_string(g.host_total) + " needed for " +
                       std::to_string(o.max_tokens) + " tokens");
    }
    if (reinterpret_cast<uintptr_t>(host.data()) % 64) {
        throw kv_error("cuda kv cache: host memory is not 64-byte aligned");
    }
    if (!device || device_bytes < g.device_total) {
        throw kv_error("cuda kv cache: " + std::to_string(device ? device_bytes : 0) +
                       " bytes of device memory, " + std::to_string(g.device_total) +
                       " needed for " + std::to_string(o.max_tokens) + " tokens");
    }
    if (reinterpret_cast<uintptr_t>(device) % 256) {
        throw kv_error("cuda kv cache: device memory is not 256-byte aligned");
    }
    cuda_kv_cache c;
    c._host = host;
    c._device = device;
    c._o = o;
    c._max_blocks = g.max_blocks;
    c._block_bytes = g.block_bytes;
    c._tokens = reinterpret_cast<int32_t*>(host.data() + g.tokens_off);
    c._table = reinterpret_cast<uint32_t*>(host.data() + g.table_off);
    c._free = reinterpret_cast<uint32_t*>(host.data() + g.free_off);
    header* h = c.hdr();
    const bool ours = h->magic == kvg_magic && h->version == kvg_version;
    const bool same = ours && h->block_tokens == o.block_tokens && h->max_tokens == o.max_tokens &&
                      h->n_layer == p.n_layer && h->kv_dim == p.kv_dim() &&
                      h->fingerprint == m.fingerprint();
    if (ours && !same && !fresh) {
        throw kv_error("cuda kv cache: the memory holds a cache of another model or geometry "
                       "(start it fresh to overwrite it)");
    }
    if (same && !fresh) {
        if (h->n_tokens > o.max_tokens || h->next_block > g.max_blocks ||
            h->n_free > h->next_block) {
            throw kv_error("cuda kv cache: corrupt header (" + std::to_string(h->n_tokens) +
                           " tokens, " + std::to_string(h->next_block) + " blocks, " +
                           std::to_string(h->n_free) + " free)");
        }
        for (uint32_t b = 0; b < g.max_blocks; ++b) {
            if (c._table[b] != no_block && c._table[b] >= h->next_block) {
                throw kv_error("cuda kv cache: corrupt block table (logical block " +
                               std::to_string(b) + ")");
            }
        }
        c._resumed = true;
        return c;
    }
    std::memset(h, 0, sizeof(header));
    h->version = kvg_version;
    h->block_tokens = o.block_tokens;
    h->max_tokens = o.max_tokens;
    h->n_layer = p.n_layer;
    h->kv_dim = p.kv_dim();
    h->fingerprint = m.fingerprint();
    for (uint32_t i = 0; i < g.max_blocks; ++i) {
        c._table[i] = no_block;
    }
    // The magic last: a half-made header is not taken for a cache.
    std::atomic_ref<uint64_t>(h->magic).store(kvg_magic, std::memory_order_release);
    return c;
}

uint32_t cuda_kv_cache::n_tokens() const noexcept {
    return std::atomic_ref<uint32_t>(hdr()->n_tokens).load(std::memory_order_acquire);
}

std::span<const int32_t> cuda_kv_cache::tokens() const noexcept {
    return {_tokens, n_tokens()};
}

bool cuda_kv_cache::reserve(uint32_t n) noexcept {
    header* h = hdr();
    const uint64_t end = uint64_t(h->n_tokens) + n;
    if (end > _o.max_tokens) {
        return false;
    }
    const auto need = static_cast<uint32_t>((end + _o.block_tokens - 1) / _o.block_tokens);
    for (uint32_t b = 0; b < need; ++b) {
        if (_table[b] != no_block) {
            continue;
        }
        // Taken off the stack (or the fresh count) before it is mapped: a
        // worker killed in between leaks a block, never maps one twice.
        uint32_t phys;
        if (h->n_free) {
            phys = _free[h->n_free - 1];
            --h->n_free;
        } else if (h->next_block < _max_blocks) {
            phys = h->next_block++;
        } else {
            return false; // blocks leaked by a killed worker: past the device memory
        }
        _table[b] = phys;
    }
    return true;
}

void cuda_kv_cache::commit(std::span<const int32_t> toks) noexcept {
    header* h = hdr();
    std::memcpy(_tokens + h->n_tokens, toks.data(), toks.size() * 4);
    std::atomic_ref<uint32_t>(h->n_tokens)
        .store(h->n_tokens + static_cast<uint32_t>(toks.size()), std::memory_order_release);
}

void cuda_kv_cache::truncate(uint32_t n) noexcept {
    header* h = hdr();
    if (n >= h->n_tokens) {
        return;
    }
    std::atomic_ref<uint32_t>(h->n_tokens).store(n, std::memory_order_release);
    const uint32_t keep = (n + _o.block_tokens - 1) / _o.block_tokens;
    for (uint32_t b = keep; b < _max_blocks && _table[b] != no_block; ++b) {
        const uint32_t phys = _table[b];
        // Unmapped before it is pushed: killed in between, the block leaks.
        _table[b] = no_block;
        _free[h->n_free] = phys;
        ++h->n_free;
    }
}

kv_usage cuda_kv_cache::usage() const noexcept {
    kv_usage u;
    u.tokens = n_tokens();
    for (uint32_t b = 0; b < _max_blocks && _table[b] != no_block; ++b) {
        ++u.blocks;
    }
    const header* h = hdr();
    u.bytes_allocated = uint64_t(u.blocks) * _block_bytes;
    u.bytes_used = uint64_t(u.tokens) * h->n_layer * 2 * h->kv_dim * 2;
    return u;
}

uint64_t cuda_kv_cache::device_bytes_used() const noexcept {
    return uint64_t(hdr()->next_block) * _block_bytes;
}

} // namespace llmos::engine
