// SPDX-License-Identifier: MIT
//
// cuda_kv_cache's bookkeeping: host memory only, no CUDA call (built with
// and without CUDA).
//
// Host layout (offsets fixed by the geometry):
//   header     magic, version, geometry, model fingerprint, committed
//              tokens, blocks ever taken, given-back blocks, the tag of
//              the device memory that holds the rows
//   tokens     int32[max_tokens]
//   table      uint32[max_blocks]: logical block -> physical block
//   free       uint32[max_blocks]: a stack of given-back physical blocks
// Device layout: physical blocks of block_bytes each; a block holds, per
// layer, K then V as [block_tokens][kv_dim] halves.
#include "../kv_table.hh"

#include <atomic>
#include <cstring>
#include <llmos/engine/cuda.hh>
#include <string>
#include <vector>

namespace llmos::engine {

namespace {

constexpr uint64_t kvg_magic = 0x4756'4b53'4f4d'4c4cull; // "LLMOSKVG"
constexpr uint32_t kvg_version = 1;
using detail::no_block;

uint64_t align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) / a * a;
}

struct geometry {
    uint64_t tokens_off, table_off, free_off, host_total, block_bytes, device_total;
    uint32_t max_blocks;
};

geometry layout(const model_params& p, const cuda_kv_options& o) {
    geometry g{};
    g.max_blocks =
        o.block_tokens
            ? static_cast<uint32_t>((uint64_t(o.max_tokens) + o.block_tokens - 1) / o.block_tokens)
            : 0;
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
    uint64_t rows_tag;   // whose device memory holds the rows (0: none named)
    uint32_t reserved[18];
};
uint64_t cuda_kv_cache::host_bytes_for(const model_params& p, const cuda_kv_options& o) {
    return layout(p, o).host_total;
}

uint64_t cuda_kv_cache::device_bytes_for(const model_params& p, const cuda_kv_options& o) {
    return layout(p, o).device_total;
}

cuda_kv_cache cuda_kv_cache::open(std::span<std::byte> host, void* device, uint64_t device_bytes,
                                  const model& m, const cuda_kv_options& o, bool fresh,
                                  uint64_t rows_tag) {
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
    c._n_layer = p.n_layer;
    c._kv_dim = p.kv_dim();
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
    c._tab.assign(g.max_blocks, no_block);
    // Every block can be free at once: truncate() (noexcept) never grows it.
    c._stack.reserve(g.max_blocks);
    // Rows another region wrote (another process's, or one dropped and
    // made again) are not in this one: the cache starts over.
    if (same && !fresh && h->rows_tag == rows_tag) {
        // The host memory is shared (a mindspace its owner can write at
        // any time): it is checked once, here, and kept; from then on it
        // is only written.
        const uint32_t n = detail::read_once(&h->n_tokens),
                       next = detail::read_once(&h->next_block),
                       n_free = detail::read_once(&h->n_free);
        auto corrupt = [&](const std::string& what) {
            return kv_error("cuda kv cache: corrupt " + what + " (" + std::to_string(n) +
                            " tokens, " + std::to_string(next) + " blocks, " +
                            std::to_string(n_free) + " free)");
        };
        if (n > o.max_tokens || next > g.max_blocks || n_free > next) {
            throw corrupt("header");
        }
        // The free stack holds blocks taken so far that the table does not
        // map.
        std::vector<bool> taken(next);
        if (!detail::take_table({c._table, g.max_blocks}, n, o.block_tokens, taken, c._tab)) {
            throw corrupt("block table");
        }
        for (uint32_t i = 0; i < n_free; ++i) {
            const uint32_t phys = detail::read_once(&c._free[i]); // what is checked is kept
            if (!detail::take_block(phys, taken)) {
                throw corrupt("free stack");
            }
            c._stack.push_back(phys);
        }
        // A worker killed inside reserve() or truncate() leaks a block:
        // taken so far, neither mapped nor free. It is free.
        for (uint32_t phys = 0; phys < next; ++phys) {
            if (!taken[phys]) {
                c.give_back(phys);
            }
        }
        c._n = n;
        c._next = next;
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
    h->rows_tag = rows_tag;
    for (uint32_t i = 0; i < g.max_blocks; ++i) {
        c._table[i] = no_block;
    }
    // The magic last: a half-made header is not taken for a cache.
    std::atomic_ref<uint64_t>(h->magic).store(kvg_magic, std::memory_order_release);
    return c;
}

uint32_t cuda_kv_cache::n_tokens() const noexcept {
    return _n;
}

std::span<const int32_t> cuda_kv_cache::tokens() const noexcept {
    return {_tokens, _n};
}

bool cuda_kv_cache::reserve(uint32_t n) noexcept {
    header* h = hdr();
    const uint64_t end = uint64_t(_n) + n;
    if (end > _o.max_tokens) {
        return false;
    }
    const auto need = static_cast<uint32_t>((end + _o.block_tokens - 1) / _o.block_tokens);
    for (uint32_t b = 0; b < need; ++b) {
        if (_tab[b] != no_block) {
            continue;
        }
        // Taken off the stack (or the fresh count) before it is mapped: a
        // worker killed in between leaks a block, never maps one twice.
        uint32_t phys;
        if (!_stack.empty()) {
            phys = _stack.back();
            _stack.pop_back();
            h->n_free = static_cast<uint32_t>(_stack.size());
        } else if (_next < _max_blocks) {
            phys = _next++;
            h->next_block = _next;
        } else {
            return false; // never past the device memory
        }
        _tab[b] = phys;
        _table[b] = phys;
    }
    return true;
}

void cuda_kv_cache::commit(std::span<const int32_t> toks) noexcept {
    if (toks.empty() || toks.size() > _o.max_tokens - _n) {
        return; // nothing, or not reserved (reserve() bounds what a step writes)
    }
    std::memcpy(_tokens + _n, toks.data(), toks.size() * 4);
    _n += static_cast<uint32_t>(toks.size());
    std::atomic_ref<uint32_t>(hdr()->n_tokens).store(_n, std::memory_order_release);
}

void cuda_kv_cache::truncate(uint32_t n) noexcept {
    header* h = hdr();
    if (n >= _n) {
        return;
    }
    _n = n;
    std::atomic_ref<uint32_t>(h->n_tokens).store(n, std::memory_order_release);
    const uint32_t keep = (n + _o.block_tokens - 1) / _o.block_tokens;
    // From the last: the table stays a prefix (what open() takes) should
    // the worker be killed in the middle.
    for (uint32_t b = detail::mapped_end(_tab, keep); b-- > keep;) {
        const uint32_t phys = _tab[b];
        // Unmapped before it is pushed: killed in between, the block leaks
        // (open() takes it back).
        _tab[b] = no_block;
        _table[b] = no_block;
        give_back(phys);
    }
}

void cuda_kv_cache::give_back(uint32_t phys) noexcept {
    _free[_stack.size()] = phys; // at most max_blocks are given back
    _stack.push_back(phys);
    hdr()->n_free = static_cast<uint32_t>(_stack.size());
}

kv_usage cuda_kv_cache::usage() const noexcept {
    kv_usage u;
    u.tokens = n_tokens();
    u.blocks = detail::mapped_end(_tab, 0);
    u.bytes_allocated = uint64_t(u.blocks) * _block_bytes;
    u.bytes_used = uint64_t(u.tokens) * _n_layer * 2 * _kv_dim * 2;
    return u;
}

uint64_t cuda_kv_cache::device_bytes_used() const noexcept {
    return uint64_t(_next) * _block_bytes;
}

} // namespace llmos::engine
