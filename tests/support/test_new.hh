// SPDX-License-Identifier: MIT
//
// A test program's own operator new: it counts allocations (to show that
// a path makes none) and fails them on request (to show that a path
// survives one failing). Include it in one source file of a program only:
// it defines the replaceable global allocation functions.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace llmos::testing {
/// Allocations made so far.
inline std::atomic<uint64_t> news{0};
/// While true, every allocation throws std::bad_alloc.
inline std::atomic<bool> fail_new{false};
} // namespace llmos::testing

// Out of line, so that the compiler does not pair a free() with an
// operator new at an inlined call site (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
    llmos::testing::news.fetch_add(1, std::memory_order_relaxed);
    if (!llmos::testing::fail_new.load(std::memory_order_relaxed)) {
        if (void* p = std::malloc(n == 0 ? 1 : n)) {
            return p;
        }
    }
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) {
    return operator new(n);
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
