// SPDX-License-Identifier: MIT
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/cuda_memory.hh>
#include <llmos/kv_pool.hh>
#include <optional>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>
#include <utility>

namespace llmos {

namespace {

uint64_t round_up(uint64_t v, uint64_t a) {
    return a ? (v + a - 1) / a * a : v;
}

class host_region final : public growable_region {
    std::byte* _p = nullptr;
    uint64_t _reserved = 0, _mapped = 0, _page = 4096;

public:
    explicit host_region(uint64_t max_bytes) {
        _page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
        _reserved = round_up(std::max<uint64_t>(max_bytes, 1), _page);
        void* p = ::mmap(nullptr, _reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (p == MAP_FAILED) {
            throw std::runtime_error("host region of " + std::to_string(_reserved) +
                                     " bytes: mmap: " + std::strerror(errno));
        }
        _p = static_cast<std::byte*>(p);
    }
    ~host_region() override { ::munmap(_p, _reserved); }
    void* data() const noexcept override { return _p; }
    uint64_t reserved_bytes() const noexcept override { return _reserved; }
    uint64_t mapped_bytes() const noexcept override { return _mapped; }
    uint64_t granularity() const noexcept override { return _page; }
    void grow(uint64_t bytes) override {
        if (bytes <= _mapped) {
            return;
        }
        if (bytes > _reserved) {
            throw std::runtime_error("host region: " + std::to_string(bytes) + " bytes asked, " +
                                     std::to_string(_reserved) + " reserved");
        }
        const uint64_t end = round_up(bytes, _page);
        if (::mprotect(_p + _mapped, end - _mapped, PROT_READ | PROT_WRITE) != 0) {
            throw std::runtime_error(std::string("host region: mprotect: ") + std::strerror(errno));
        }
        _mapped = end;
    }
};

class gpu_region final : public growable_region {
    engine::gpu_memory _m;

public:
    explicit gpu_region(engine::gpu_memory m)
        : _m(std::move(m)) {}
    void* data() const noexcept override { return reinterpret_cast<void*>(_m.device_ptr()); }
    uint64_t reserved_bytes() const noexcept override { return _m.reserved_bytes(); }
    uint64_t mapped_bytes() const noexcept override { return _m.mapped_bytes(); }
    uint64_t granularity() const noexcept override { return _m.granularity(); }
    void grow(uint64_t bytes) override { _m.grow(bytes); }
    unique_fd export_dmabuf() const override {
        if (_m.mapped_bytes() == 0) {
            throw std::runtime_error("a KV region with nothing backed has no dma-buf");
        }
        return unique_fd(_m.export_dmabuf(0, _m.mapped_bytes()).release());
    }
};

} // namespace

unique_fd growable_region::export_dmabuf() const {
    throw std::runtime_error("this KV region's memory cannot be exported as a dma-buf");
}

std::unique_ptr<growable_region> make_host_region(uint64_t max_bytes) {
    return std::make_unique<host_region>(max_bytes);
}

std::unique_ptr<growable_region> make_gpu_region(uint64_t max_bytes, int device) {
    return std::make_unique<gpu_region>(engine::gpu_memory::reserve(max_bytes, device));
}

namespace {

/// A number no region made before, in this process or another, is likely
/// to have had: random (0 never, it is what memory never written holds).
uint64_t new_tag() noexcept {
    static std::atomic<uint64_t> counter{0};
    uint64_t t = 0;
    if (::getrandom(&t, sizeof t, GRND_NONBLOCK) != sizeof t) {
        // No entropy yet (early boot): the process, the time and a count.
        timespec ts{};
        ::clock_gettime(CLOCK_REALTIME, &ts);
        t = (uint64_t(::getpid()) << 40) ^ uint64_t(ts.tv_nsec) ^ (uint64_t(ts.tv_sec) << 20) ^
            (counter.fetch_add(1, std::memory_order_relaxed) * 0x9e3779b97f4a7c15ull);
    }
    return t ? t : 1;
}

} // namespace

struct kv_pool::entry {
    std::unique_ptr<growable_region> region;
    std::optional<kv_key> key; ///< none: a request's region
    bool leased = false;
    uint64_t last_used = 0;
    uint64_t counted = 0; ///< bytes of _mapped that are this region's
    uint64_t tag = 0;     ///< names its contents (see lease::tag())
    /// on_give_back's, released with the entry. Only the lease holder
    /// touches it while leased; not protected by _mu.
    kv_keepsake keepsake;
};

kv_pool::kv_pool(kv_pool_options o)
    : _o(std::move(o)) {
    if (!_o.make) {
        throw std::invalid_argument("kv_pool: no region factory");
    }
}

kv_pool::~kv_pool() = default;

std::unique_ptr<kv_pool::entry> kv_pool::unlink(entry* e) {
    _mapped -= e->counted;
    if (e->key) {
        _by_key.erase(*e->key);
    }
    auto it = _all.find(e);
    std::unique_ptr<entry> owned = std::move(it->second);
    _all.erase(it);
    return owned;
}

kv_pool::entry* kv_pool::make_entry(uint64_t max_bytes, const kv_key* key) {
    auto region = _o.make(max_bytes); // may be slow (and throw): not under _mu
    auto e = std::make_unique<entry>();
    e->region = std::move(region);
    e->tag = new_tag();
    e->leased = true;
    entry* raw = e.get();
    std::vector<std::unique_ptr<entry>> dropped;
    std::lock_guard lk(_mu);
    if (key) {
        if (auto it = _by_key.find(*key); it != _by_key.end()) {
            // Made meanwhile by another thread for the same conversation.
            if (it->second->leased) {
                throw std::runtime_error("the conversation's KV region is in use");
            }
            dropped.push_back(unlink(it->second));
        }
        e->key = *key;
    }
    e->last_used = ++_clock;
    // Into _all first: should the index's insert throw, the entry is
    // freed with nothing pointing at it.
    const auto at = _all.emplace(raw, std::move(e)).first;
    if (key) {
        try {
            _by_key[*key] = raw;
        } catch (...) {
            _all.erase(at);
            throw;
        }
    }
    return raw;
}

kv_pool::lease kv_pool::acquire(kv_key key, uint64_t max_bytes) {
    std::unique_ptr<entry> old;
    {
        std::lock_guard lk(_mu);
        auto it = _by_key.find(key);
        if (it != _by_key.end()) {
            entry* e = it->second;
            if (e->leased) {
                throw std::runtime_error("the conversation's KV region is in use");
            }
            if (e->region->reserved_bytes() >= max_bytes) {
                e->leased = true;
                e->last_used = ++_clock;
                ++_resumed;
                return lease(this, e, false);
            }
            old = unlink(e); // made for a smaller cache: a new one replaces it
        }
    }
    old.reset();
    return lease(this, make_entry(max_bytes, &key), true);
}

kv_pool::lease kv_pool::acquire_anonymous(uint64_t max_bytes) {
    {
        std::lock_guard lk(_mu);
        entry* best = nullptr;
        for (auto& [p, e] : _all) {
            if (!e->key && !e->leased && e->region->reserved_bytes() >= max_bytes &&
                (!best || e->last_used > best->last_used)) {
                best = p;
            }
        }
        if (best) {
            best->leased = true;
            best->last_used = ++_clock;
            return lease(this, best, true);
        }
    }
    return lease(this, make_entry(max_bytes, nullptr), true);
}

bool kv_pool::forget(kv_key key) {
    std::unique_ptr<entry> old;
    std::lock_guard lk(_mu);
    auto it = _by_key.find(key);
    if (it == _by_key.end() || it->second->leased) {
        return false;
    }
    old = unlink(it->second);
    return true;
}

bool kv_pool::make_room(uint64_t need, const entry* keep,
                        std::vector<std::unique_ptr<entry>>& dropped) {
    // Drops nothing unless dropping makes room.
    uint64_t idle = 0;
    for (auto& [p, e] : _all) {
        if (p != keep && !e->leased) {
            idle += e->counted;
        }
    }
    // Without sums that wrap (a capacity may be "all", UINT64_MAX).
    auto room = [&] { return _o.capacity > _mapped ? _o.capacity - _mapped : 0; };
    if (need > room() && need - room() > idle) {
        return false;
    }
    while (need > room()) {
        entry* victim = nullptr;
        for (auto& [p, e] : _all) {
            if (p == keep || e->leased || !e->counted) {
                continue;
            }
            // Requests' regions hold nothing anyone will ask for again:
            // they go before any conversation's.
            const bool better = !victim || (!e->key && victim->key) ||
                                (!e->key == !victim->key && e->last_used < victim->last_used);
            if (better) {
                victim = p;
            }
        }
        if (!victim) {
            return false;
        }
        dropped.push_back(unlink(victim));
        ++_evictions;
    }
    return true;
}

kv_pool_stats kv_pool::stats() const {
    std::lock_guard lk(_mu);
    kv_pool_stats s;
    s.mapped_bytes = _mapped;
    s.capacity = _o.capacity;
    s.regions = static_cast<uint32_t>(_all.size());
    for (auto& [p, e] : _all) {
        s.leased += e->leased;
    }
    s.evictions = _evictions;
    s.resumed = _resumed;
    return s;
}

kv_pool::lease::lease(lease&& o) noexcept
    : _p(std::exchange(o._p, nullptr))
    , _e(std::exchange(o._e, nullptr))
    , _fresh(o._fresh) {
}

kv_pool::lease& kv_pool::lease::operator=(lease&& o) noexcept {
    if (this != &o) {
        give_back(false);
        _p = std::exchange(o._p, nullptr);
        _e = std::exchange(o._e, nullptr);
        _fresh = o._fresh;
    }
    return *this;
}

kv_pool::lease::~lease() {
    give_back(false);
}

void* kv_pool::lease::data() const noexcept {
    return _e ? _e->region->data() : nullptr;
}

uint64_t kv_pool::lease::reserved_bytes() const noexcept {
    return _e ? _e->region->reserved_bytes() : 0;
}

uint64_t kv_pool::lease::tag() const noexcept {
    return _e ? _e->tag : 0;
}

uint64_t kv_pool::lease::mapped_bytes() const noexcept {
    return _e ? _e->region->mapped_bytes() : 0;
}

bool kv_pool::lease::grow(uint64_t bytes, std::string* why) {
    auto fail = [&](std::string w) {
        if (why) {
            *why = std::move(w);
        }
        return false;
    };
    if (!_e) {
        return fail("no region");
    }
    growable_region& r = *_e->region;
    const uint64_t have = r.mapped_bytes();
    if (bytes <= have) {
        return true;
    }
    if (bytes > r.reserved_bytes()) {
        return fail("the KV cache needs " + std::to_string(bytes) + " bytes, its region holds " +
                    std::to_string(r.reserved_bytes()));
    }
    // A region grows by an eighth at least, so a long conversation is
    // backed in a few dozen pieces, not one per block.
    uint64_t target = std::max(bytes, have + have / 8);
    target = std::min(round_up(target, r.granularity()), r.reserved_bytes());
    if (target < bytes) {
        target = bytes;
    }
    std::vector<std::unique_ptr<entry>> dropped;
    {
        std::lock_guard lk(_p->_mu);
        uint64_t need = target - have;
        if (!_p->make_room(need, _e, dropped)) {
            // Not the eighth more: only what is needed.
            target = std::min(round_up(bytes, r.granularity()), r.reserved_bytes());
            need = target - have;
            if (!_p->make_room(need, _e, dropped)) {
                return fail("KV memory is full: " + std::to_string(_p->_mapped) + " of " +
                            std::to_string(_p->_o.capacity) + " bytes backed, " +
                            std::to_string(need) + " more needed, and the rest is in use");
            }
        }
        _p->_mapped += need;
        _e->counted += need;
    }
    dropped.clear(); // freed outside the lock
    try {
        r.grow(target);
    } catch (const std::exception& e) {
        std::lock_guard lk(_p->_mu);
        _p->_mapped -= target - have;
        _e->counted -= target - have;
        if (dynamic_cast<const engine::device_lost*>(&e)) {
            throw; // not a full memory: nothing on the device works any more
        }
        return fail(e.what());
    }
    // The region may have rounded further than its granularity said.
    const uint64_t got = r.mapped_bytes();
    std::lock_guard lk(_p->_mu);
    _p->_mapped += got - target;
    _e->counted += got - target;
    return true;
}

void kv_pool::lease::give_back(bool drop) noexcept {
    if (!_e) {
        return;
    }
    if (!drop && _e->key && _p->_o.on_give_back) {
        _e->keepsake.reset();
        try {
            _e->keepsake = _p->_o.on_give_back(*_e->key, *_e->region);
        } catch (...) {
            // Nothing kept; the region itself is unharmed.
        }
    }
    std::unique_ptr<entry> old;
    {
        std::lock_guard lk(_p->_mu);
        _e->leased = false;
        _e->last_used = ++_p->_clock;
        if (drop) {
            old = _p->unlink(_e);
        }
    }
    _e = nullptr;
    _p = nullptr;
}

void kv_pool::lease::discard() noexcept {
    give_back(true);
}

} // namespace llmos
