// SPDX-License-Identifier: MIT
#include <cerrno>
#include <climits>
#include <linux/futex.h>
#include <llmos/channel.hh>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace llmos::detail {

// Works for threads of one process and, the word being in shared memory,
// across processes (not FUTEX_PRIVATE_FLAG).
bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected,
                std::optional<std::chrono::nanoseconds> timeout) {
    timespec ts{};
    if (timeout) {
        auto ns = timeout->count() > 0 ? timeout->count() : 0;
        ts.tv_sec = static_cast<time_t>(ns / 1000000000);
        ts.tv_nsec = static_cast<long>(ns % 1000000000);
    }
    long ret = ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT, expected,
                         timeout ? &ts : nullptr, nullptr, 0);
    return !(ret == -1 && errno == ETIMEDOUT);
}

void futex_wake(std::atomic<uint32_t>& word) {
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr, nullptr,
              0);
}

} // namespace llmos::detail
