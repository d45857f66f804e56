// SPDX-License-Identifier: MIT
//
// The GPU-free half of cuda_memory.hh: owned fds, the store that parks a
// GPU mindspace's fds, and the SCM_RIGHTS message that carries them to a
// worker process. Built with and without CUDA.
//
// Message (one datagram on a SOCK_SEQPACKET or SOCK_DGRAM AF_UNIX socket):
//   wire_header, then uint64 chunk sizes[n_chunks], then the name (no NUL);
//   SCM_RIGHTS: the chunk fds in order, then the dma-buf fd when flagged.
// The receiver takes every fd that arrived into an owned_fd before it
// looks at anything, so a refused message leaks nothing.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <llmos/engine/cuda_memory.hh>
#include <sys/socket.h>
#include <sys/uio.h>
#include <system_error>
#include <unistd.h>

namespace llmos::engine {

namespace {

constexpr uint32_t wire_magic = 0x534d474c; // "LGMS"
constexpr uint16_t wire_version = 1;
constexpr uint32_t wire_flag_dmabuf = 1u << 0;
constexpr size_t max_name = 63;

struct wire_header {
    uint32_t magic;
    uint16_t version;
    uint16_t n_fds;
    uint32_t n_chunks;
    uint32_t flags;
    uint64_t max_bytes;
    uint64_t dmabuf_length;
    uint32_t name_len;
    uint32_t reserved; ///< must be 0
};
static_assert(sizeof(wire_header) == 40);

[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

[[noreturn]] void refuse(const std::string& why) {
    throw gpu_error("recv_gpu_mindspace: refused message: " + why);
}

// The rule of llmos::valid_ms_name (the engine does not link libllmos).
bool valid_name(std::string_view n) noexcept {
    if (n.empty() || n.size() > max_name) {
        return false;
    }
    auto alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    };
    if (!alnum(n[0]) && n[0] != '_') {
        return false;
    }
    bool all_digits = true;
    for (char c : n) {
        if (!alnum(c) && c != '.' && c != '_' && c != ':' && c != '-') {
            return false;
        }
        all_digits = all_digits && c >= '0' && c <= '9';
    }
    return !all_digits;
}

void check_socket_type(int sock, const char* who) {
    int type = 0;
    socklen_t len = sizeof(type);
    if (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
        throw_errno(who);
    }
    if (type != SOCK_SEQPACKET && type != SOCK_DGRAM) {
        throw gpu_error(std::string(who) +
                        ": the socket must be SOCK_SEQPACKET or SOCK_DGRAM (a stream "
                        "socket does not keep message boundaries)");
    }
}

} // namespace

owned_fd& owned_fd::operator=(owned_fd&& o) noexcept {
    if (this != &o) {
        reset(o.release());
    }
    return *this;
}

owned_fd::~owned_fd() {
    reset();
}

void owned_fd::reset(int fd) noexcept {
    if (_fd >= 0) {
        ::close(_fd);
    }
    _fd = fd;
}

owned_fd owned_fd::dup() const {
    int fd = ::fcntl(_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        throw_errno("owned_fd::dup");
    }
    return owned_fd(fd);
}

uint64_t gpu_mindspace::mapped_bytes() const noexcept {
    uint64_t n = 0;
    for (const auto& c : chunks) {
        n += c.size;
    }
    return n;
}

gpu_mindspace gpu_mindspace::dup() const {
    gpu_mindspace d;
    d.name = name;
    d.max_bytes = max_bytes;
    d.dmabuf_length = dmabuf_length;
    d.chunks.reserve(chunks.size());
    for (const auto& c : chunks) {
        d.chunks.push_back({c.fd.dup(), c.size});
    }
    if (dmabuf) {
        d.dmabuf = dmabuf.dup();
    }
    return d;
}

void gpu_mindspace_store::park(gpu_mindspace ms) {
    if (!valid_name(ms.name)) {
        throw gpu_error("gpu_mindspace_store::park: invalid name '" + ms.name + "'");
    }
    if (ms.chunks.empty()) {
        throw gpu_error("gpu_mindspace_store::park: '" + ms.name + "' has no chunks");
    }
    std::lock_guard lock(_mu);
    if (_parked.count(ms.name) != 0) {
        throw gpu_error("gpu_mindspace_store::park: '" + ms.name + "' is already parked");
    }
    std::string key = ms.name;
    _parked.emplace(std::move(key), std::move(ms));
}

std::optional<gpu_mindspace> gpu_mindspace_store::lend(std::string_view name) const {
    std::lock_guard lock(_mu);
    auto it = _parked.find(name);
    if (it == _parked.end()) {
        return std::nullopt;
    }
    return it->second.dup();
}

std::optional<gpu_mindspace> gpu_mindspace_store::take(std::string_view name) {
    std::lock_guard lock(_mu);
    auto it = _parked.find(name);
    if (it == _parked.end()) {
        return std::nullopt;
    }
    gpu_mindspace ms = std::move(it->second);
    _parked.erase(it);
    return ms;
}

bool gpu_mindspace_store::drop(std::string_view name) {
    return take(name).has_value();
}

std::vector<std::string> gpu_mindspace_store::names() const {
    std::lock_guard lock(_mu);
    std::vector<std::string> v;
    v.reserve(_parked.size());
    for (const auto& [name, ms] : _parked) {
        v.push_back(name);
    }
    return v;
}

size_t gpu_mindspace_store::size() const {
    std::lock_guard lock(_mu);
    return _parked.size();
}

void send_gpu_mindspace(int sock, const gpu_mindspace& ms) {
    check_socket_type(sock, "send_gpu_mindspace");
    const size_t n_fds = ms.chunks.size() + (ms.dmabuf ? 1 : 0);
    if (ms.chunks.empty() || n_fds > gpu_mindspace_max_fds) {
        throw gpu_error("send_gpu_mindspace: " + std::to_string(ms.chunks.size()) +
                        " chunks (1 to " + std::to_string(gpu_mindspace_max_fds - 1) +
                        " can be sent)");
    }
    if (ms.name.size() > max_name) {
        throw gpu_error("send_gpu_mindspace: name longer than 63 characters");
    }
    wire_header h{};
    h.magic = wire_magic;
    h.version = wire_version;
    h.n_fds = static_cast<uint16_t>(n_fds);
    h.n_chunks = static_cast<uint32_t>(ms.chunks.size());
    h.flags = ms.dmabuf ? wire_flag_dmabuf : 0;
    h.max_bytes = ms.max_bytes;
    h.dmabuf_length = ms.dmabuf ? ms.dmabuf_length : 0;
    h.name_len = static_cast<uint32_t>(ms.name.size());

    std::vector<uint64_t> sizes;
    std::vector<int> fds;
    for (const auto& c : ms.chunks) {
        if (!c.fd) {
            throw gpu_error("send_gpu_mindspace: a chunk has no fd");
        }
        sizes.push_back(c.size);
        fds.push_back(c.fd.get());
    }
    if (ms.dmabuf) {
        fds.push_back(ms.dmabuf.get());
    }
    iovec iov[3] = {
        {&h, sizeof(h)},
        {sizes.data(), sizes.size() * sizeof(uint64_t)},
        {const_cast<char*>(ms.name.data()), ms.name.size()},
    };
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = ms.name.empty() ? 2 : 3;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    ssize_t n;
    do {
        n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        throw_errno("send_gpu_mindspace: sendmsg");
    }
}

gpu_mindspace recv_gpu_mindspace(int sock) {
    check_socket_type(sock, "recv_gpu_mindspace");
    // One byte more than the largest valid message, to see an oversized one.
    std::vector<char> data(sizeof(wire_header) + gpu_mindspace_max_fds * sizeof(uint64_t) +
                           max_name + 1);
    // Room for more fds than allowed, so that too many arrive (and are
    // refused and closed) rather than being cut off silently.
    std::vector<char> control(CMSG_SPACE(sizeof(int) * (gpu_mindspace_max_fds + 8)));
    iovec iov{data.data(), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n;
    do {
        n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        throw_errno("recv_gpu_mindspace: recvmsg");
    }

    std::vector<owned_fd> fds;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            fds.emplace_back(fd);
        }
    }
    if (n == 0 && fds.empty()) {
        throw gpu_error("recv_gpu_mindspace: the peer closed the socket");
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        refuse("its fds were cut off (more than " + std::to_string(gpu_mindspace_max_fds) + ")");
    }
    if (msg.msg_flags & MSG_TRUNC) {
        refuse("longer than any valid message");
    }
    const size_t len = static_cast<size_t>(n);
    if (len < sizeof(wire_header)) {
        refuse("shorter than its header (" + std::to_string(len) + " bytes)");
    }
    wire_header h;
    std::memcpy(&h, data.data(), sizeof(h));
    if (h.magic != wire_magic) {
        refuse("bad magic (not a gpu_mindspace message)");
    }
    if (h.version != wire_version) {
        refuse("version " + std::to_string(h.version) + ", expected " +
               std::to_string(wire_version));
    }
    if ((h.flags & ~wire_flag_dmabuf) != 0 || h.reserved != 0) {
        refuse("unknown flags or non-zero reserved field");
    }
    const bool has_dmabuf = (h.flags & wire_flag_dmabuf) != 0;
    if (h.n_chunks == 0 || h.n_fds > gpu_mindspace_max_fds ||
        h.n_fds != h.n_chunks + (has_dmabuf ? 1 : 0)) {
        refuse("header counts do not agree (" + std::to_string(h.n_chunks) + " chunks, " +
               std::to_string(h.n_fds) + " fds)");
    }
    if (fds.size() != h.n_fds) {
        refuse("the header announces " + std::to_string(h.n_fds) + " fds, " +
               std::to_string(fds.size()) + " came");
    }
    if (h.name_len > max_name) {
        refuse("name longer than 63 characters");
    }
    const size_t want = sizeof(wire_header) + size_t{h.n_chunks} * sizeof(uint64_t) + h.name_len;
    if (len != want) {
        refuse(std::to_string(len) + " bytes where the header announces " + std::to_string(want));
    }
    gpu_mindspace ms;
    ms.max_bytes = h.max_bytes;
    ms.name.assign(data.data() + want - h.name_len, h.name_len);
    if (!ms.name.empty() && !valid_name(ms.name)) {
        refuse("invalid name");
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < h.n_chunks; i++) {
        uint64_t size;
        std::memcpy(&size, data.data() + sizeof(wire_header) + i * sizeof(uint64_t), sizeof(size));
        if (size == 0 || size > h.max_bytes - total) {
            refuse("chunk " + std::to_string(i) + " has size " + std::to_string(size) +
                   " (sizes must be non-zero and add up to at most max_bytes " +
                   std::to_string(h.max_bytes) + ")");
        }
        total += size;
        ms.chunks.push_back({std::move(fds[i]), size});
    }
    if (has_dmabuf) {
        if (h.dmabuf_length == 0 || h.dmabuf_length > total) {
            refuse("dma-buf length " + std::to_string(h.dmabuf_length) + " outside the " +
                   std::to_string(total) + " mapped bytes");
        }
        ms.dmabuf = std::move(fds[h.n_chunks]);
        ms.dmabuf_length = h.dmabuf_length;
    } else if (h.dmabuf_length != 0) {
        refuse("a dma-buf length without a dma-buf");
    }
    return ms;
}

} // namespace llmos::engine
