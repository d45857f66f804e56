// SPDX-License-Identifier: MIT
#pragma once

#include <utility>

namespace llmos {

/// Owns one file descriptor and closes it when destroyed. Move-only.
class unique_fd {
    int _fd = -1;

public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept
        : _fd(fd) {}
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    unique_fd(unique_fd&& o) noexcept
        : _fd(std::exchange(o._fd, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) {
            reset(std::exchange(o._fd, -1));
        }
        return *this;
    }
    ~unique_fd() { reset(); }

    /// The descriptor, still owned by this object (-1 when empty).
    int get() const noexcept { return _fd; }
    explicit operator bool() const noexcept { return _fd >= 0; }
    /// Gives up ownership and returns the descriptor.
    [[nodiscard]] int release() noexcept { return std::exchange(_fd, -1); }
    /// Closes the owned descriptor (if any) and takes `fd`.
    void reset(int fd = -1) noexcept;
};

} // namespace llmos
