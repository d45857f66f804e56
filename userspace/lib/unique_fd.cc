// SPDX-License-Identifier: MIT
#include <llmos/unique_fd.hh>
#include <unistd.h>

namespace llmos {

void unique_fd::reset(int fd) noexcept {
    if (_fd >= 0 && _fd != fd) {
        // close() is not retried on EINTR: on Linux the fd is gone either way.
        ::close(_fd);
    }
    _fd = fd;
}

} // namespace llmos
