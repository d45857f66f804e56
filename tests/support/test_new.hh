// SPDX-License-Identifier: MIT
//
// A test program's own operator new: it counts allocations and their bytes
// (to show that a path makes none, or how much it asks for) and fails them
// on request, on every thread at once or on the calling thread alone (to
// show that a path survives one failing while the test and gtest go on).
// Include it in one source file of a program only: it defines the
// replaceable global allocation functions. It replaces the sanitizers'
// too; they still see the malloc() and free() below.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace llmos::testing {
/// Allocations made so far, on every thread.
inline std::atomic<uint64_t> news{0};
/// The bytes they asked for.
inline std::atomic<uint64_t> new_bytes{0};
/// While true, every allocation fails (throws std::bad_alloc, or nullptr
/// for the nothrow forms).
inline std::atomic<bool> fail_new{false};

/// On the calling thread: allocations made so far, and the largest.
inline thread_local uint64_t news_here = 0;
inline thread_local std::size_t largest_new_here = 0;
/// On the calling thread: let this many more allocations through, then
/// fail the next news_to_fail_here.
inline thread_local uint32_t news_to_skip_here = 0;
inline thread_local uint32_t news_to_fail_here = 0;

/// Counts an allocation of `n` bytes: false when it is to fail.
inline bool count_new(std::size_t n) noexcept {
    news.fetch_add(1, std::memory_order_relaxed);
    new_bytes.fetch_add(n, std::memory_order_relaxed);
    ++news_here;
    largest_new_here = std::max(largest_new_here, n);
    if (news_to_skip_here) {
        --news_to_skip_here;
    } else if (news_to_fail_here) {
        --news_to_fail_here;
        return false;
    }
    return !fail_new.load(std::memory_order_relaxed);
}
} // namespace llmos::testing

// Out of line, so that the compiler does not pair a free() with an
// operator new at an inlined call site (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
    if (llmos::testing::count_new(n)) {
        if (void* p = std::malloc(n == 0 ? 1 : n)) {
            return p;
        }
    }
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) {
    return operator new(n);
}
[[gnu::noinline]] void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    return llmos::testing::count_new(n) ? std::malloc(n == 0 ? 1 : n) : nullptr;
}
[[gnu::noinline]] void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    return operator new(n, std::nothrow);
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept {
    std::free(p);
}
