// SPDX-License-Identifier: MIT
#include "kv_table.hh"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/quant.hh>
#include <new>

namespace llmos::engine {

kv_memory::kv_memory(size_t bytes, bool zero_all) {
    constexpr size_t page = 4096;
    _n = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    _p.reset(static_cast<std::byte*>(std::aligned_alloc(page, _n)));
    if (!_p) {
        throw std::bad_alloc();
    }
    std::memset(_p.get(), 0, zero_all ? _n : page);
}

void kv_memory::free_mem::operator()(std::byte* p) const noexcept {
    std::free(p);
}

namespace {

constexpr uint64_t kv_magic = 0x3156'4b53'4f4d'4c4cull; // "LLMOSKV1"
/// 2: the blocks' rows by layer and KV head (below).
constexpr uint32_t kv_version = 2;
using detail::no_block;

uint64_t align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) / a * a;
}

} // namespace

struct kv_cache::header {
    uint64_t magic;
    uint32_t version;
    uint32_t type;
    uint32_t block_tokens;
    uint32_t max_tokens;
    uint32_t n_layer;
    uint32_t kv_dim;
    uint64_t fingerprint;
    uint32_t n_tokens;    // committed positions; written last
    uint32_t next_block;  // physical blocks ever taken
    uint32_t free_head;   // a freed physical block, or no_block
    uint32_t reserved[7]; // 80 bytes in all; tokens start at 128
};

namespace {

// The memory: the header, the committed tokens, the block table (logical
// block -> physical block), then the blocks' rows by layer and KV head:
//   [layer][K, V][KV head][physical block][slot][head_dim]
// A physical block is one slab (block_tokens rows of head_dim) in each of
// the 2 x n_layer x n_head_kv regions. Blocks are taken in order, so a
// conversation's rows of one KV head of one layer's K lie back to back
// across its blocks: one stream for a decode step's attention of that
// head. (Version 1 kept a block's layers and heads together: a head's K
// came in 128-byte pieces of 512-byte rows, in runs of one block 200 KB
// apart, and the one-token attention read its cache at 4-5 GB/s on one
// thread where a plain read does 25.)
struct geometry {
    uint64_t tokens_off, table_off, blocks_off, slab, total;
    uint32_t max_blocks;
};

geometry layout(const model_params& p, const kv_options& o) {
    geometry g{};
    uint64_t elt = o.type == kv_type::f32 ? 4 : 2;
    g.max_blocks = static_cast<uint32_t>((uint64_t(o.max_tokens) + o.block_tokens - 1) /
                                         std::max<uint32_t>(o.block_tokens, 1));
    g.tokens_off = 128;
    g.table_off = align_up(g.tokens_off + 4ull * o.max_tokens, 64);
    g.blocks_off = align_up(g.table_off + 4ull * g.max_blocks, 4096);
    g.slab = align_up(uint64_t(o.block_tokens) * p.head_dim * elt, 64);
    g.total = g.blocks_off + 2ull * p.n_layer * p.n_head_kv * g.max_blocks * g.slab;
    return g;
}

} // namespace

uint64_t kv_cache::bytes_for(const model_params& p, const kv_options& o) {
    return layout(p, o).total;
}

kv_cache kv_cache::open(std::span<std::byte> mem, const model& m, const kv_options& o, bool fresh) {
    const model_params& p = m.params();
    if (!o.block_tokens || !o.max_tokens || (o.type != kv_type::f32 && o.type != kv_type::f16)) {
        throw kv_error("kv cache: bad options (block_tokens and max_tokens must be > 0)");
    }
    geometry g = layout(p, o);
    if (mem.size() < g.total) {
        throw kv_error("kv cache: " + std::to_string(mem.size()) + " bytes given, " +
                       std::to_string(g.total) + " needed for " + std::to_string(o.max_tokens) +
                       " tokens");
    }
    if (reinterpret_cast<uintptr_t>(mem.data()) % 64) {
        throw kv_error("kv cache: memory is not 64-byte aligned");
    }
    kv_cache c;
    c._mem = mem;
    c._o = o;
    c._n_layer = p.n_layer;
    c._kv_dim = p.kv_dim();
    c._n_head_kv = p.n_head_kv;
    c._head_dim = p.head_dim;
    c._max_blocks = g.max_blocks;
    c._elt = o.type == kv_type::f32 ? 4 : 2;
    c._slab = g.slab;
    c._tokens = reinterpret_cast<int32_t*>(mem.data() + g.tokens_off);
    c._table = reinterpret_cast<uint32_t*>(mem.data() + g.table_off);
    c._blocks = mem.data() + g.blocks_off;
    header* h = c.hdr();
    bool ours = h->magic == kv_magic;
    bool same = ours && h->version == kv_version && h->type == uint32_t(o.type) &&
                h->block_tokens == o.block_tokens && h->max_tokens == o.max_tokens &&
                h->n_layer == p.n_layer && h->kv_dim == p.kv_dim() &&
                h->fingerprint == m.fingerprint();
    if (ours && h->version != kv_version && !fresh) {
        throw kv_error("kv cache: the memory holds a version " + std::to_string(h->version) +
                       " cache, this engine reads version " + std::to_string(kv_version) +
                       " (start it fresh to overwrite it)");
    }
    if (ours && !same && !fresh) {
        throw kv_error("kv cache: the memory holds a cache of another model or geometry "
                       "(start it fresh to overwrite it)");
    }
    c._tab.assign(g.max_blocks, no_block);
    // Every block can be free at once: truncate() (noexcept) never grows it.
    c._free.reserve(g.max_blocks);
    if (same && !fresh) {
        c.resume();
        return c;
    }
    std::memset(h, 0, sizeof(header));
    h->version = kv_version;
    h->type = uint32_t(o.type);
    h->block_tokens = o.block_tokens;
    h->max_tokens = o.max_tokens;
    h->n_layer = p.n_layer;
    h->kv_dim = p.kv_dim();
    h->fingerprint = m.fingerprint();
    h->free_head = no_block;
    for (uint32_t i = 0; i < g.max_blocks; ++i) {
        c._table[i] = no_block;
    }
    // The magic last: a half-made header is not taken for a cache.
    std::atomic_ref<uint64_t>(h->magic).store(kv_magic, std::memory_order_release);
    return c;
}

// The memory is shared (a mindspace that its owner can write at any
// time): what is read from it is checked once, here, and kept; from then
// on it is only written.
void kv_cache::resume() {
    const header* h = hdr();
    const uint32_t n = detail::read_once(&h->n_tokens), next = detail::read_once(&h->next_block);
    auto corrupt = [&](const std::string& what) {
        return kv_error("kv cache: corrupt " + what + " (" + std::to_string(n) + " tokens, " +
                        std::to_string(next) + " blocks)");
    };
    if (n > _o.max_tokens || next > _max_blocks) {
        throw corrupt("header");
    }
    // The free list holds blocks taken so far that the table does not map.
    std::vector<bool> taken(next);
    if (!detail::take_table({_table, _max_blocks}, n, _o.block_tokens, taken, _tab)) {
        throw corrupt("block table");
    }
    for (uint32_t phys = detail::read_once(&h->free_head); phys != no_block;) {
        if (!detail::take_block(phys, taken)) {
            throw corrupt("free list");
        }
        _free.push_back(phys);
        uint32_t next_link;
        std::memcpy(&next_link, link_of(phys), 4); // into a local, checked next turn
        phys = next_link;
    }
    std::reverse(_free.begin(), _free.end()); // its head last, taken first
    // A worker killed inside reserve() or truncate() leaks a block: taken
    // so far, neither mapped nor free. It is free.
    for (uint32_t phys = 0; phys < next; ++phys) {
        if (!taken[phys]) {
            give_back(phys);
        }
    }
    _n = n;
    _next = next;
    _resumed = true;
}

uint32_t kv_cache::n_tokens() const noexcept {
    return _n;
}

std::span<const int32_t> kv_cache::tokens() const noexcept {
    return {_tokens, _n};
}

bool kv_cache::reserve(uint32_t n) noexcept {
    header* h = hdr();
    uint64_t end = uint64_t(_n) + n;
    if (end > _o.max_tokens) {
        return false;
    }
    uint32_t need = static_cast<uint32_t>((end + _o.block_tokens - 1) / _o.block_tokens);
    for (uint32_t b = 0; b < need; ++b) {
        if (_tab[b] != no_block) {
            continue;
        }
        // Off the free list before it is mapped: a worker killed in
        // between leaks the block (resume() takes it back), never maps it
        // twice. Blocks past the memory are never handed out.
        uint32_t phys;
        if (!_free.empty()) {
            phys = _free.back();
            _free.pop_back();
            // A free block keeps the next free one in its first word.
            h->free_head = _free.empty() ? no_block : _free.back();
        } else {
            if (_next >= _max_blocks) {
                return false;
            }
            phys = _next++;
            h->next_block = _next;
        }
        _tab[b] = phys;
        _table[b] = phys;
    }
    return true;
}

std::byte* kv_cache::row(uint32_t layer, uint32_t pos, uint32_t head, bool v) const noexcept {
    const uint32_t phys = _tab[pos / _o.block_tokens];
    const size_t region = (size_t(layer) * 2 + (v ? 1 : 0)) * _n_head_kv + head;
    return _blocks + (region * _max_blocks + phys) * _slab +
           size_t(pos % _o.block_tokens) * _head_dim * _elt;
}

std::byte* kv_cache::link_of(uint32_t phys) const noexcept {
    return _blocks + size_t(phys) * _slab; // layer 0's K slab of head 0
}

void kv_cache::write(uint32_t layer, uint32_t pos, const float* k, const float* v) noexcept {
    for (uint32_t h = 0; h < _n_head_kv; ++h) {
        std::byte* kd = row(layer, pos, h, false);
        std::byte* vd = row(layer, pos, h, true);
        const float* kh = k + size_t(h) * _head_dim;
        const float* vh = v + size_t(h) * _head_dim;
        if (_o.type == kv_type::f32) {
            std::memcpy(kd, kh, _head_dim * 4);
            std::memcpy(vd, vh, _head_dim * 4);
        } else {
            fp32_to_fp16_row(kh, reinterpret_cast<uint16_t*>(kd), _head_dim);
            fp32_to_fp16_row(vh, reinterpret_cast<uint16_t*>(vd), _head_dim);
        }
    }
}

const void* kv_cache::k_row(uint32_t layer, uint32_t pos, uint32_t head) const noexcept {
    return row(layer, pos, head, false);
}

const void* kv_cache::v_row(uint32_t layer, uint32_t pos, uint32_t head) const noexcept {
    return row(layer, pos, head, true);
}

void kv_cache::commit(std::span<const int32_t> toks) noexcept {
    if (toks.empty() || toks.size() > _o.max_tokens - _n) {
        return; // nothing, or not reserved (reserve() bounds what a step writes)
    }
    std::memcpy(_tokens + _n, toks.data(), toks.size() * 4);
    _n += static_cast<uint32_t>(toks.size());
    std::atomic_ref<uint32_t>(hdr()->n_tokens).store(_n, std::memory_order_release);
}

void kv_cache::truncate(uint32_t n) noexcept {
    header* h = hdr();
    if (n >= _n) {
        return;
    }
    _n = n;
    std::atomic_ref<uint32_t>(h->n_tokens).store(n, std::memory_order_release);
    uint32_t keep = (n + _o.block_tokens - 1) / _o.block_tokens;
    // From the last: the table stays a prefix (what resume() takes) should
    // the worker be killed in the middle.
    for (uint32_t b = detail::mapped_end(_tab, keep); b-- > keep;) {
        // Out of the table first: a worker killed between the two leaks the
        // block (resume() takes it back) rather than leaving it both mapped
        // and free.
        const uint32_t phys = _tab[b];
        _tab[b] = no_block;
        _table[b] = no_block;
        give_back(phys);
    }
}

void kv_cache::give_back(uint32_t phys) noexcept {
    const uint32_t link = _free.empty() ? no_block : _free.back();
    std::memcpy(link_of(phys), &link, 4);
    _free.push_back(phys);
    hdr()->free_head = phys;
}

kv_usage kv_cache::usage() const noexcept {
    kv_usage u;
    u.tokens = n_tokens();
    u.blocks = detail::mapped_end(_tab, 0);
    u.bytes_allocated = uint64_t(u.blocks) * 2 * _n_layer * _n_head_kv * _slab;
    u.bytes_used = uint64_t(u.tokens) * _n_layer * 2 * _kv_dim * _elt;
    return u;
}

} // namespace llmos::engine
