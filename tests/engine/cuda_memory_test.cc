// SPDX-License-Identifier: MIT
//
// GPU memory as mindspaces (cuda_memory.hh).
//
// Everywhere: the fd store and the SCM_RIGHTS message, with memfds standing
// in for GPU chunk fds -- round trip, memory kept alive by the store after
// the sending process exits, malformed messages refused, no fd leaked.
// With a GPU (skipped with the probe's reason otherwise): growth in steps
// with data written and read back, dma-buf export (and a CPU mmap of it
// where the driver allows one), chunks imported by another process, and
// chunks parked by this process outliving the process that wrote them.
// Where the llmos module is loaded too: a module mindspace made from the
// dma-buf keeps the memory after its writer exits. GPU machines cannot
// load the module; the test VM runs this program on the emulated device,
// whose dma-bufs are udmabufs (tests/support/cuda_emu).
//
// GPU children are this program run again (posix_spawn of /proc/self/exe
// with --gmem-child=ROLE SEED BYTES, its socket on fd 3), so that each has
// a CUDA context of its own.
#include "tap.hh"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <iostream>
#include <llmos/device.hh>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/cuda_memory.hh>
#include <llmos/mindspace.hh>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace {

using namespace llmos::engine;

size_t open_fds() {
    size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) {
        return 0;
    }
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    ::closedir(d);
    return n - 1; // the directory's own fd
}

// Byte i of pattern `seed`, from a hash of i: bytes read from the wrong
// offset (a page or a chunk away) or of another seed differ.
uint8_t pattern(uint64_t i, uint32_t seed) {
    const uint64_t x = (i + (uint64_t{seed} << 40)) * 0x9e3779b97f4a7c15ull;
    return static_cast<uint8_t>(x >> 56);
}

std::vector<std::byte> pattern_bytes(uint64_t n, uint32_t seed) {
    std::vector<std::byte> v(n);
    for (uint64_t i = 0; i < n; i++) {
        v[i] = std::byte{pattern(i, seed)};
    }
    return v;
}

// Index of the first byte of `got` that is not the pattern, or -1.
int64_t first_mismatch(const std::byte* got, uint64_t n, uint32_t seed) {
    for (uint64_t i = 0; i < n; i++) {
        if (got[i] != std::byte{pattern(i, seed)}) {
            return static_cast<int64_t>(i);
        }
    }
    return -1;
}

owned_fd make_memfd(uint64_t size, uint32_t seed) {
    owned_fd fd(::memfd_create("gmem-test", MFD_CLOEXEC));
    if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        return {};
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) {
        return {};
    }
    auto bytes = pattern_bytes(size, seed);
    std::memcpy(p, bytes.data(), size);
    ::munmap(p, size);
    return fd;
}

// -1 when `fd` maps and holds the pattern; otherwise the first bad index
// (or -2 when it does not map).
int64_t memfd_mismatch(int fd, uint64_t size, uint32_t seed) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        return -2;
    }
    int64_t bad = first_mismatch(static_cast<const std::byte*>(p), size, seed);
    ::munmap(p, size);
    return bad;
}

struct sock_pair {
    owned_fd a;
    owned_fd b;
};

sock_pair make_pair(int type = SOCK_SEQPACKET) {
    int sv[2];
    if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) {
        return {};
    }
    return {owned_fd(sv[0]), owned_fd(sv[1])};
}

bool readable(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, timeout_ms) == 1;
}

// A gpu_mindspace of memfd chunks (seed + index each) and a memfd for its
// "dma-buf".
gpu_mindspace memfd_mindspace(const std::string& name, std::vector<uint64_t> sizes, uint32_t seed,
                              bool with_dmabuf) {
    gpu_mindspace ms;
    ms.name = name;
    for (size_t i = 0; i < sizes.size(); i++) {
        ms.chunks.push_back({make_memfd(sizes[i], seed + uint32_t(i)), sizes[i]});
        ms.max_bytes += sizes[i];
    }
    ms.max_bytes *= 2;
    if (with_dmabuf) {
        ms.dmabuf = make_memfd(sizes[0], seed + 100);
        ms.dmabuf_length = sizes[0];
    }
    return ms;
}

struct wire_header {
    uint32_t magic;
    uint16_t version;
    uint16_t n_fds;
    uint32_t n_chunks;
    uint32_t flags;
    uint64_t max_bytes;
    uint64_t dmabuf_length;
    uint32_t name_len;
    uint32_t reserved;
};

wire_header good_header(uint32_t n_chunks, uint32_t name_len) {
    return {0x534d474c, 1, uint16_t(n_chunks), n_chunks, 0, 1 << 20, 0, name_len, 0};
}

// Sends raw bytes with `n_fds` memfds attached.
void send_raw(int sock, const void* data, size_t len, int n_fds) {
    std::vector<owned_fd> fds;
    std::vector<int> raw;
    for (int i = 0; i < n_fds; i++) {
        fds.push_back(make_memfd(4096, 1));
        raw.push_back(fds.back().get());
    }
    iovec iov{const_cast<void*>(data), len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * raw.size()));
    if (!raw.empty()) {
        msg.msg_control = control.data();
        msg.msg_controllen = control.size();
        cmsghdr* cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * raw.size());
        std::memcpy(CMSG_DATA(cm), raw.data(), sizeof(int) * raw.size());
    }
    ASSERT_EQ(::sendmsg(sock, &msg, 0), static_cast<ssize_t>(len)) << std::strerror(errno);
}

std::string refusal(int sock) {
    if (!readable(sock, 5000)) {
        return "(nothing came)";
    }
    try {
        (void)recv_gpu_mindspace(sock);
    } catch (const gpu_error& e) {
        return e.what();
    }
    return "(accepted)";
}

TEST(gpu_fds, owned_fd_closes_dups_and_moves) {
    size_t before = open_fds();
    {
        owned_fd a = make_memfd(4096, 3);
        ASSERT_TRUE(a);
        owned_fd b = a.dup();
        EXPECT_NE(a.get(), b.get());
        EXPECT_EQ(memfd_mismatch(b.get(), 4096, 3), -1);
        owned_fd c = std::move(a);
        EXPECT_FALSE(a);
        EXPECT_TRUE(c);
        EXPECT_EQ(open_fds(), before + 2);
        c.reset();
        EXPECT_EQ(open_fds(), before + 1);
        EXPECT_THROW((void)c.dup(), std::system_error);
    }
    EXPECT_EQ(open_fds(), before);
}

TEST(gpu_fds, scm_rights_round_trip) {
    size_t before = open_fds();
    {
        auto [tx, rx] = make_pair();
        ASSERT_TRUE(tx && rx);
        gpu_mindspace ms = memfd_mindspace("kv:session-1", {8192, 4096, 16384}, 10, true);
        send_gpu_mindspace(tx.get(), ms);
        gpu_mindspace got = recv_gpu_mindspace(rx.get());
        EXPECT_EQ(got.name, "kv:session-1");
        EXPECT_EQ(got.max_bytes, ms.max_bytes);
        ASSERT_EQ(got.chunks.size(), 3u);
        EXPECT_EQ(got.mapped_bytes(), 8192u + 4096u + 16384u);
        for (size_t i = 0; i < 3; i++) {
            EXPECT_EQ(got.chunks[i].size, ms.chunks[i].size);
            EXPECT_NE(got.chunks[i].fd.get(), ms.chunks[i].fd.get());
            EXPECT_EQ(memfd_mismatch(got.chunks[i].fd.get(), got.chunks[i].size, 10 + uint32_t(i)),
                      -1);
            EXPECT_EQ(::fcntl(got.chunks[i].fd.get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        }
        ASSERT_TRUE(got.dmabuf);
        EXPECT_EQ(got.dmabuf_length, 8192u);
        EXPECT_EQ(memfd_mismatch(got.dmabuf.get(), 8192, 110), -1);

        // Anonymous, no dma-buf.
        gpu_mindspace anon = memfd_mindspace("", {4096}, 20, false);
        send_gpu_mindspace(tx.get(), anon);
        gpu_mindspace got2 = recv_gpu_mindspace(rx.get());
        EXPECT_EQ(got2.name, "");
        EXPECT_FALSE(got2.dmabuf);
        ASSERT_EQ(got2.chunks.size(), 1u);
        EXPECT_EQ(memfd_mismatch(got2.chunks[0].fd.get(), 4096, 20), -1);
    }
    EXPECT_EQ(open_fds(), before);
}

TEST(gpu_fds, store_keeps_memory_after_the_sender_exits) {
    size_t before = open_fds();
    {
        auto [tx, rx] = make_pair();
        ASSERT_TRUE(tx && rx);
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            // The "worker": makes the memory, hands it over, dies.
            rx.reset();
            try {
                send_gpu_mindspace(tx.get(), memfd_mindspace("worker-kv", {65536, 4096}, 40, true));
            } catch (...) {
                ::_exit(1);
            }
            ::_exit(0);
        }
        tx.reset();
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;

        // Only the message in flight holds the memory now.
        ASSERT_TRUE(readable(rx.get(), 10000));
        gpu_mindspace_store store;
        store.park(recv_gpu_mindspace(rx.get()));
        EXPECT_EQ(store.size(), 1u);
        EXPECT_EQ(store.names(), std::vector<std::string>{"worker-kv"});

        // A worker in this process borrows dups; the store keeps its own.
        for (int round = 0; round < 2; round++) {
            std::optional<gpu_mindspace> lent = store.lend("worker-kv");
            ASSERT_TRUE(lent);
            ASSERT_EQ(lent->chunks.size(), 2u);
            EXPECT_EQ(memfd_mismatch(lent->chunks[0].fd.get(), 65536, 40), -1);
            EXPECT_EQ(memfd_mismatch(lent->chunks[1].fd.get(), 4096, 41), -1);
            EXPECT_EQ(memfd_mismatch(lent->dmabuf.get(), 65536, 140), -1);
        }
        EXPECT_FALSE(store.lend("other"));

        // And a worker in another process gets them over a socket.
        auto [tx2, rx2] = make_pair();
        send_gpu_mindspace(tx2.get(), *store.lend("worker-kv"));
        gpu_mindspace again = recv_gpu_mindspace(rx2.get());
        EXPECT_EQ(memfd_mismatch(again.chunks[0].fd.get(), 65536, 40), -1);

        std::optional<gpu_mindspace> taken = store.take("worker-kv");
        ASSERT_TRUE(taken);
        EXPECT_EQ(store.size(), 0u);
        EXPECT_FALSE(store.take("worker-kv"));
        store.park(std::move(*taken));
        EXPECT_TRUE(store.drop("worker-kv"));
        EXPECT_FALSE(store.drop("worker-kv"));
    }
    EXPECT_EQ(open_fds(), before);
}

TEST(gpu_fds, store_refuses_bad_parking) {
    gpu_mindspace_store store;
    EXPECT_THROW(store.park(memfd_mindspace("", {4096}, 1, false)), gpu_error);
    EXPECT_THROW(store.park(memfd_mindspace("12345", {4096}, 1, false)), gpu_error);
    EXPECT_THROW(store.park(memfd_mindspace("bad/name", {4096}, 1, false)), gpu_error);
    EXPECT_THROW(store.park(memfd_mindspace(std::string(64, 'a'), {4096}, 1, false)), gpu_error);
    gpu_mindspace empty;
    empty.name = "empty";
    EXPECT_THROW(store.park(std::move(empty)), gpu_error);
    store.park(memfd_mindspace("kv.1", {4096}, 1, false));
    try {
        store.park(memfd_mindspace("kv.1", {4096}, 1, false));
        ADD_FAILURE() << "a second kv.1 was parked";
    } catch (const gpu_error& e) {
        EXPECT_NE(std::string(e.what()).find("already parked"), std::string::npos) << e.what();
    }
    EXPECT_EQ(store.size(), 1u);
}

TEST(gpu_fds, malformed_messages_are_refused_and_leak_nothing) {
    auto [tx, rx] = make_pair();
    ASSERT_TRUE(tx && rx);
    size_t before = open_fds();
    auto expect_refused = [&](const std::string& what, const void* data, size_t len, int n_fds,
                              const std::string& says) {
        send_raw(tx.get(), data, len, n_fds);
        std::string msg = refusal(rx.get());
        EXPECT_NE(msg.find("refused message"), std::string::npos) << what << ": " << msg;
        EXPECT_NE(msg.find(says), std::string::npos) << what << ": " << msg;
        EXPECT_EQ(open_fds(), before) << what << " leaked an fd";
    };
    struct one_chunk {
        wire_header h;
        uint64_t size;
    };

    const char junk[] = "hello";
    expect_refused("short", junk, sizeof(junk), 1, "shorter than its header");

    one_chunk m{good_header(1, 0), 4096};
    m.h.magic = 0x12345678;
    expect_refused("magic", &m, sizeof(m), 1, "bad magic");

    m = {good_header(1, 0), 4096};
    m.h.version = 2;
    expect_refused("version", &m, sizeof(m), 1, "version 2");

    m = {good_header(1, 0), 4096};
    expect_refused("missing fd", &m, sizeof(m), 0, "1 fds, 0 came");
    expect_refused("extra fd", &m, sizeof(m), 2, "1 fds, 2 came");

    m = {good_header(1, 0), 4096};
    m.h.n_fds = 2;
    expect_refused("counts", &m, sizeof(m), 2, "do not agree");

    m = {good_header(1, 0), 4096};
    m.h.flags = 1u << 7;
    expect_refused("flags", &m, sizeof(m), 1, "unknown flags");

    m = {good_header(1, 0), 4096};
    m.h.reserved = 1;
    expect_refused("reserved", &m, sizeof(m), 1, "reserved");

    m = {good_header(1, 0), 0};
    expect_refused("empty chunk", &m, sizeof(m), 1, "size 0");

    m = {good_header(1, 0), 2u << 20};
    expect_refused("chunk over max_bytes", &m, sizeof(m), 1, "add up to at most");

    m = {good_header(1, 0), 4096};
    m.h.dmabuf_length = 4096;
    expect_refused("dma-buf length alone", &m, sizeof(m), 1, "without a dma-buf");

    m = {good_header(1, 0), 4096};
    m.h.flags = 1;
    m.h.n_fds = 2;
    m.h.dmabuf_length = 8192;
    expect_refused("dma-buf too long", &m, sizeof(m), 2, "outside the");

    // Header, size, then 3 bytes of name where 4 are announced.
    struct named {
        wire_header h;
        uint64_t size;
        char name[8];
    } n{good_header(1, 4), 4096, "abc"};
    expect_refused("short name", &n, sizeof(wire_header) + 8 + 3, 1, "announces");
    n = {good_header(1, 3), 4096, "a/c"};
    expect_refused("bad name", &n, sizeof(wire_header) + 8 + 3, 1, "invalid name");
    n = {good_header(1, 200), 4096, "abc"};
    expect_refused("long name", &n, sizeof(wire_header) + 8 + 3, 1, "longer than 63");

    // More fds than any message may carry (the kernel's limit is 253).
    std::vector<char> big(sizeof(wire_header) + 8);
    wire_header h = good_header(1, 0);
    std::memcpy(big.data(), &h, sizeof(h));
    expect_refused("too many fds", big.data(), big.size(), int(gpu_mindspace_max_fds) + 2, "fds");

    // The socket still works after all that.
    send_gpu_mindspace(tx.get(), memfd_mindspace("ok", {4096}, 9, false));
    gpu_mindspace ok = recv_gpu_mindspace(rx.get());
    EXPECT_EQ(memfd_mismatch(ok.chunks[0].fd.get(), 4096, 9), -1);
}

TEST(gpu_fds, stream_sockets_and_closed_peers_are_refused) {
    size_t before = open_fds();
    {
        auto [a, b] = make_pair(SOCK_STREAM);
        gpu_mindspace ms = memfd_mindspace("s", {4096}, 1, false);
        try {
            send_gpu_mindspace(a.get(), ms);
            ADD_FAILURE() << "sent on a stream socket";
        } catch (const gpu_error& e) {
            EXPECT_NE(std::string(e.what()).find("SOCK_SEQPACKET"), std::string::npos);
        }
        EXPECT_THROW((void)recv_gpu_mindspace(b.get()), gpu_error);

        auto [tx, rx] = make_pair();
        tx.reset();
        try {
            (void)recv_gpu_mindspace(rx.get());
            ADD_FAILURE() << "received from a closed peer";
        } catch (const gpu_error& e) {
            EXPECT_NE(std::string(e.what()).find("peer closed"), std::string::npos) << e.what();
        }

        gpu_mindspace none;
        auto [tx2, rx2] = make_pair();
        EXPECT_THROW(send_gpu_mindspace(tx2.get(), none), gpu_error);
    }
    EXPECT_EQ(open_fds(), before);
}

// --- with a GPU ---------------------------------------------------------

const gpu_probe_result& probe() {
    static const gpu_probe_result r = probe_gpu(0);
    return r;
}

TEST(gpu_probe, reports_why_without_a_gpu) {
    const gpu_probe_result& r = probe();
    EXPECT_EQ(r.built_with_cuda, gpu_built_with_cuda());
    std::cout << "[ probe    ] built_with_cuda=" << r.built_with_cuda << " usable=" << r.usable
              << " device='" << r.device_name << "' devices=" << r.device_count
              << " driver=" << r.driver_version << " runtime=" << r.runtime_version
              << " vmm=" << r.vmm << " posix_fd=" << r.posix_fd << " dmabuf=" << r.dmabuf
              << " rdma_vmm=" << r.rdma_vmm << " reason='" << r.reason << "'\n";
    if (r.usable) {
        EXPECT_TRUE(r.reason.empty());
        return;
    }
    EXPECT_FALSE(r.reason.empty());
    if (!r.built_with_cuda) {
        EXPECT_NE(r.reason.find("without CUDA"), std::string::npos) << r.reason;
    }
    try {
        (void)gpu_memory::reserve(1 << 20);
        ADD_FAILURE() << "reserve() worked where the probe said: " << r.reason;
    } catch (const gpu_error& e) {
        EXPECT_NE(std::string(e.what()).find("gpu_memory::reserve"), std::string::npos) << e.what();
    }
}

class gpu_device : public ::testing::Test {
protected:
    void SetUp() override {
        if (!probe().usable) {
            GTEST_SKIP() << "no usable GPU: " << probe().reason;
        }
    }
};

// A child of this program in a role, with `sock` (its end of a socket
// pair) on fd 3 when given, and `env` ("NAME=VALUE") added to its
// environment.
pid_t spawn_child(const char* role, uint32_t seed, uint64_t bytes, int sock = -1,
                  const char* env = nullptr) {
    // Never fd 3 itself: dup2(3, 3) would leave close-on-exec set.
    owned_fd high;
    if (sock >= 0) {
        high.reset(::fcntl(sock, F_DUPFD_CLOEXEC, 64));
        if (!high) {
            return -1;
        }
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (high) {
        posix_spawn_file_actions_adddup2(&fa, high.get(), 3);
    }
    std::string a1 = std::string("--gmem-child=") + role;
    std::string a2 = std::to_string(seed);
    std::string a3 = std::to_string(bytes);
    char* argv[] = {const_cast<char*>("/proc/self/exe"), a1.data(), a2.data(), a3.data(), nullptr};
    std::vector<char*> envp;
    for (char** e = environ; *e; ++e) {
        envp.push_back(*e);
    }
    if (env) {
        envp.push_back(const_cast<char*>(env));
    }
    envp.push_back(nullptr);
    pid_t pid = -1;
    int err = ::posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&fa);
    return err == 0 ? pid : -1;
}

// The child's exit status, or -1 after killing it when it takes too long.
int wait_child(pid_t pid, int seconds = 120) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (r < 0 || std::chrono::steady_clock::now() > until) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

#ifdef LLMOS_CUDA_EMU
// The emulator's toolkit is CUDA 13.1 (cuda_emu.hh); its driver can be
// made older. A 13.0 driver runs 13.1 programs: the driver calls are
// asked for at the driver's version, not refused at the toolkit's.
TEST(gpu_probe, a_driver_of_an_older_minor_release_serves) {
    pid_t pid = spawn_child("roundtrip", 31, 3 << 20, -1, "LLMOS_CUDA_EMU_DRIVER_VERSION=13000");
    ASSERT_GT(pid, 0) << std::strerror(errno);
    EXPECT_EQ(wait_child(pid), 0) << "GPU memory did not work under a CUDA 13.0 driver (stderr)";
}

// A 12.8 driver cannot run a CUDA 13 program: both probes say so, with
// both versions, and reserve() refuses with the same words.
TEST(gpu_probe, a_driver_of_an_older_major_release_is_named) {
    pid_t pid = spawn_child("old-driver", 0, 0, -1, "LLMOS_CUDA_EMU_DRIVER_VERSION=12080");
    ASSERT_GT(pid, 0) << std::strerror(errno);
    EXPECT_EQ(wait_child(pid), 0) << "see the child's complaint above";
}
#endif

TEST_F(gpu_device, grows_in_steps_and_keeps_its_address) {
    gpu_memory m = gpu_memory::reserve(64ull << 20);
    const uint64_t g = m.granularity();
    ASSERT_GT(g, 0u);
    ASSERT_EQ(g % 4096, 0u);
    EXPECT_EQ(m.reserved_bytes(), 64ull << 20);
    EXPECT_EQ(m.mapped_bytes(), 0u);
    EXPECT_EQ(m.chunk_count(), 0u);
    const uint64_t base = m.device_ptr();
    ASSERT_NE(base, 0u);

    m.grow(1);
    EXPECT_EQ(m.mapped_bytes(), g);
    EXPECT_EQ(m.chunk_count(), 1u);
    auto first = pattern_bytes(g, 5);
    m.write(0, first);

    m.grow(3 * g + 1);
    EXPECT_EQ(m.mapped_bytes(), 4 * g);
    EXPECT_EQ(m.chunk_count(), 2u);
    EXPECT_EQ(m.device_ptr(), base);
    // New memory is zeroed (it may hold what another tenant left).
    {
        std::vector<std::byte> fresh(3 * g, std::byte{1});
        m.read(g, fresh);
        EXPECT_EQ(std::count(fresh.begin(), fresh.end(), std::byte{0}), ptrdiff_t(3 * g));
    }
    m.grow(2 * g); // already mapped: nothing
    EXPECT_EQ(m.chunk_count(), 2u);

    // The first chunk kept its bytes; the whole range takes a pattern
    // across the chunk boundary.
    std::vector<std::byte> back(g);
    m.read(0, back);
    EXPECT_EQ(first_mismatch(back.data(), g, 5), -1);
    auto all = pattern_bytes(4 * g, 6);
    m.write(0, all);
    std::vector<std::byte> all_back(4 * g);
    m.read(0, all_back);
    EXPECT_EQ(first_mismatch(all_back.data(), 4 * g, 6), -1);

    EXPECT_THROW(m.grow((64ull << 20) + 1), gpu_error);
    EXPECT_EQ(m.mapped_bytes(), 4 * g);
    EXPECT_THROW(m.write(4 * g - 1, std::span<const std::byte>(all.data(), 2)), gpu_error);
    EXPECT_THROW(m.read(4 * g, std::span<std::byte>(back.data(), 1)), gpu_error);

    // Moving keeps the mapping.
    gpu_memory moved = std::move(m);
    EXPECT_EQ(moved.device_ptr(), base);
    moved.read(0, back);
    EXPECT_EQ(first_mismatch(back.data(), g, 6), -1);
}

TEST_F(gpu_device, a_reservation_past_the_address_space_is_refused) {
    try {
        (void)gpu_memory::reserve(UINT64_MAX);
        ADD_FAILURE() << "reserved 2^64 - 1 bytes";
    } catch (const gpu_error& e) {
        EXPECT_NE(std::string(e.what()).find("more address space than there is"), std::string::npos)
            << e.what();
    }
}

bool closed_on_exec(int fd) {
    const int f = ::fcntl(fd, F_GETFD);
    return f >= 0 && (f & FD_CLOEXEC) != 0;
}

// Memory of two chunks of g bytes each, [0, 2g) written with `seed`'s
// pattern.
gpu_memory two_chunks(uint32_t seed) {
    gpu_memory m = gpu_memory::reserve(16ull << 20);
    const uint64_t g = m.granularity();
    m.grow(g);
    m.grow(2 * g);
    EXPECT_EQ(m.chunk_count(), 2u);
    m.write(0, pattern_bytes(2 * g, seed));
    return m;
}

TEST_F(gpu_device, exports_a_dmabuf) {
    gpu_memory m = two_chunks(8);
    const uint64_t g = m.granularity();
    for (const gpu_chunk& c : m.export_chunks()) {
        EXPECT_TRUE(closed_on_exec(c.fd.get())) << "an exported chunk fd is inherited on exec";
    }
    if (!probe().dmabuf) {
        try {
            (void)m.export_dmabuf();
            ADD_FAILURE() << "export_dmabuf worked where DMA_BUF_SUPPORTED is 0";
        } catch (const gpu_error& e) {
            EXPECT_NE(std::string(e.what()).find("cannot export GPU memory as dma-buf"),
                      std::string::npos)
                << e.what();
        }
        gpu_mindspace ms = m.export_mindspace("no-dmabuf");
        EXPECT_FALSE(ms.dmabuf);
        GTEST_SKIP() << "this driver cannot export dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED "
                        "is 0); the refusal was checked";
    }
    owned_fd whole = m.export_dmabuf();
    ASSERT_TRUE(whole);
    EXPECT_EQ(::lseek(whole.get(), 0, SEEK_END), static_cast<off_t>(2 * g));
    EXPECT_TRUE(closed_on_exec(whole.get()));
    // The second chunk alone.
    owned_fd second = m.export_dmabuf(g, g);
    ASSERT_TRUE(second);
    EXPECT_EQ(::lseek(second.get(), 0, SEEK_END), static_cast<off_t>(g));
    EXPECT_THROW((void)m.export_dmabuf(1, 4096), gpu_error);
    EXPECT_THROW((void)m.export_dmabuf(0, 3 * g), gpu_error);

    gpu_mindspace ms = m.export_mindspace("with-dmabuf");
    ASSERT_TRUE(ms.dmabuf);
    EXPECT_EQ(ms.dmabuf_length, 2 * g);
}

// Apart from exports_a_dmabuf: the CUDA documentation asks only for
// page-aligned ranges, but whether a driver takes one that starts and ends
// inside an allocation shows only on a device.
TEST_F(gpu_device, exports_a_dmabuf_of_a_range_inside_a_chunk) {
    if (!probe().dmabuf) {
        GTEST_SKIP() << "this driver cannot export dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED "
                        "is 0)";
    }
    gpu_memory m = gpu_memory::reserve(16ull << 20);
    const uint64_t g = m.granularity(), page = 4096;
    m.grow(2 * g);
    ASSERT_EQ(m.chunk_count(), 1u);
    m.write(0, pattern_bytes(2 * g, 9));
    const uint64_t off = g / 2 / page * page, len = g;
    owned_fd inside = m.export_dmabuf(off, len);
    ASSERT_TRUE(inside);
    EXPECT_EQ(::lseek(inside.get(), 0, SEEK_END), static_cast<off_t>(len));
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, inside.get(), 0);
    if (p != MAP_FAILED) { // where the driver maps its dma-bufs (maps_its_dmabuf_for_the_cpu)
        const std::vector<std::byte> want = pattern_bytes(2 * g, 9);
        EXPECT_EQ(std::memcmp(p, want.data() + off, len), 0)
            << "the dma-buf of [" << off << ", " << off + len << ") has other bytes";
        ::munmap(p, len);
    }
}

// The CPU view of an exported dma-buf, where the driver maps them: NVIDIA's
// refuses (ENOTSUPP, errno 524) unless the export asked for it, which
// cuMemGetHandleForAddressRange has no flag for.
TEST_F(gpu_device, maps_its_dmabuf_for_the_cpu) {
    if (!probe().dmabuf) {
        GTEST_SKIP() << "this driver cannot export dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED "
                        "is 0)";
    }
    gpu_memory m = two_chunks(10);
    const uint64_t g = m.granularity();
    owned_fd whole = m.export_dmabuf();
    void* p = ::mmap(nullptr, 2 * g, PROT_READ, MAP_SHARED, whole.get(), 0);
    if (p == MAP_FAILED) {
        int err = errno;
        GTEST_SKIP() << "the dma-buf exported fine, but mmap() of it fails with errno " << err
                     << " (" << std::strerror(err)
                     << "): this driver does not map its dma-bufs for the CPU";
    }
    int64_t bad = first_mismatch(static_cast<const std::byte*>(p), 2 * g, 10);
    ::munmap(p, 2 * g);
    EXPECT_EQ(bad, -1) << "the CPU mapping of the dma-buf differs at byte " << bad;
    // The second chunk's own dma-buf.
    owned_fd second = m.export_dmabuf(g, g);
    p = ::mmap(nullptr, g, PROT_READ, MAP_SHARED, second.get(), 0);
    ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
    const std::vector<std::byte> want = pattern_bytes(2 * g, 10);
    EXPECT_EQ(std::memcmp(p, want.data() + g, g), 0) << "the dma-buf of [g, 2g) has other bytes";
    ::munmap(p, g);
}

TEST_F(gpu_device, another_process_imports_the_chunks) {
    const uint64_t bytes = 3 * (2ull << 20) + 4096;
    gpu_memory m = gpu_memory::reserve(64ull << 20);
    m.grow(bytes);
    m.write(0, pattern_bytes(bytes, 21));

    auto [mine, theirs] = make_pair();
    pid_t pid = spawn_child("reader", 21, bytes, theirs.get());
    ASSERT_GT(pid, 0) << std::strerror(errno);
    theirs.reset();
    send_gpu_mindspace(mine.get(), m.export_mindspace("child-read", false));
    EXPECT_EQ(wait_child(pid), 0) << "the reader child failed (its stderr says why)";
}

TEST_F(gpu_device, parked_chunks_outlive_the_process_that_wrote_them) {
    const uint64_t bytes = 5 * (2ull << 20);
    size_t before = open_fds();
    gpu_mindspace_store store;
    {
        auto [mine, theirs] = make_pair();
        pid_t writer = spawn_child("writer", 33, bytes, theirs.get());
        ASSERT_GT(writer, 0) << std::strerror(errno);
        theirs.reset();
        ASSERT_EQ(wait_child(writer), 0) << "the writer child failed (its stderr says why)";
        // The writer is gone: its chunks live in the message in flight.
        ASSERT_TRUE(readable(mine.get(), 10000));
        store.park(recv_gpu_mindspace(mine.get()));
    }
    ASSERT_EQ(store.names(), std::vector<std::string>{"writer-kv"});
    for (int reader_no = 0; reader_no < 2; reader_no++) {
        auto [mine, theirs] = make_pair();
        pid_t reader = spawn_child("reader", 33, bytes, theirs.get());
        ASSERT_GT(reader, 0) << std::strerror(errno);
        theirs.reset();
        send_gpu_mindspace(mine.get(), *store.lend("writer-kv"));
        EXPECT_EQ(wait_child(reader), 0) << "reader " << reader_no << " failed";
    }
    EXPECT_TRUE(store.drop("writer-kv"));
    EXPECT_EQ(open_fds(), before);
}

// The name of the module mindspace a "module-writer" child of process
// `parent` makes.
std::string module_ms_name(pid_t parent) {
    return "gpu-dmabuf-test-" + std::to_string(parent);
}

// The kernel backend: the dma-buf of GPU memory given to MS_CREATE
// (LLMOS_MS_DMABUF) makes a persistent mindspace that keeps the memory after
// the process that made it has exited; another process opens it by name,
// maps it for the CPU, writes through it, and hands it on with
// EXPORT_DMABUF, as a peer device gets it. The chunks span three VMM
// allocations, so the dma-buf does too.
TEST_F(gpu_device, a_module_mindspace_keeps_gpu_memory_after_its_writer) {
    if (!probe().dmabuf) {
        GTEST_SKIP() << "this device cannot export dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED "
                        "is 0), so no module mindspace can hold its memory";
    }
    auto dev = llmos::device::open();
    if (!dev) {
        GTEST_SKIP() << "the llmos module is not loaded here (" << llmos::default_device_path()
                     << ": " << dev.error().message() << "); the test VM runs this case";
    }
    const uint64_t bytes = 2 * (2ull << 20) + 65536;
    const llmos::ms_key key{0, module_ms_name(::getpid())};
    // The mindspace goes at the end, whatever happens.
    struct destroy_at_end {
        const llmos::device& dev;
        const llmos::ms_key& key;
        ~destroy_at_end() { (void)llmos::destroy_mindspace(dev, key); }
    } cleanup{*dev, key};
    pid_t writer = spawn_child("module-writer", 41, bytes);
    ASSERT_GT(writer, 0) << std::strerror(errno);
    ASSERT_EQ(wait_child(writer), 0) << "the writer child failed (its stderr says why)";

    {
        // The writer and its CUDA context are gone; the module holds the
        // memory.
        auto ms = llmos::mindspace::open(*dev, key);
        ASSERT_TRUE(ms) << key.name << ": " << ms.error().message();
        auto info = ms->info();
        ASSERT_TRUE(info) << info.error().message();
        EXPECT_TRUE(info->dmabuf());
        EXPECT_TRUE(info->persistent());
        EXPECT_EQ(info->length % (2ull << 20), 0u) << "the writer exported whole chunks";
        ASSERT_GE(info->length, bytes);
        auto map = ms->map(0, info->length);
        if (!map) {
            GTEST_SKIP() << "the module holds the dma-buf, but mapping it fails ("
                         << map.error().message()
                         << "): this driver does not map its dma-bufs for the CPU";
        }
        EXPECT_EQ(first_mismatch(map->data(), bytes, 41), -1);

        // Written through the mindspace, read through a dma-buf handed on.
        auto again = pattern_bytes(bytes, 42);
        std::memcpy(map->data(), again.data(), bytes);
        auto peer = ms->export_dmabuf();
        ASSERT_TRUE(peer) << peer.error().message();
        void* p = ::mmap(nullptr, info->length, PROT_READ, MAP_SHARED, peer->get(), 0);
        ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
        EXPECT_EQ(first_mismatch(static_cast<const std::byte*>(p), bytes, 42), -1);
        ::munmap(p, info->length);
    }
    EXPECT_EQ(llmos::destroy_mindspace(*dev, key), std::error_code{});
    auto gone = llmos::mindspace::open(*dev, key);
    EXPECT_EQ(gone.error(), std::errc::no_such_file_or_directory);
}

TEST_F(gpu_device, import_refuses_bad_chunks) {
    gpu_chunk none{owned_fd(), 2u << 20};
    EXPECT_THROW((void)gpu_memory::import(std::span<const gpu_chunk>(&none, 1), 0), gpu_error);
    gpu_chunk odd{make_memfd(4096, 1), 4096 + 512};
    EXPECT_THROW((void)gpu_memory::import(std::span<const gpu_chunk>(&odd, 1), 0), gpu_error);
    EXPECT_THROW((void)gpu_memory::import(std::span<const gpu_chunk>(), 0), gpu_error);
}

// --- child roles ----------------------------------------------------------

int child_main(const std::string& role, uint32_t seed, uint64_t bytes) {
    try {
        if (role == "writer") {
            gpu_memory m = gpu_memory::reserve(bytes * 2);
            m.grow(bytes);
            m.write(0, pattern_bytes(bytes, seed));
            send_gpu_mindspace(3, m.export_mindspace("writer-kv", false));
            return 0; // m goes: only the fds in flight keep the memory
        }
        if (role == "module-writer") {
            // Fills GPU memory and leaves it to a persistent module
            // mindspace made from its dma-buf.
            gpu_memory m = gpu_memory::reserve(bytes * 2);
            m.grow(bytes);
            m.write(0, pattern_bytes(bytes, seed));
            owned_fd buf = m.export_dmabuf();
            auto dev = llmos::device::open().value();
            llmos::ms_create_options o;
            o.name = module_ms_name(::getppid());
            o.persistent = true;
            o.dmabuf_fd = buf.get();
            (void)llmos::mindspace::create(dev, o).value();
            return 0; // m and buf go: the mindspace holds the memory
        }
        if (role == "roundtrip") {
            if (!probe().usable) {
                std::cerr << "roundtrip: " << probe().reason << "\n";
                return 2;
            }
            gpu_memory m = gpu_memory::reserve(bytes * 2);
            m.grow(bytes);
            m.write(0, pattern_bytes(bytes, seed));
            std::vector<std::byte> got(bytes);
            m.read(0, got);
            return first_mismatch(got.data(), bytes, seed) == -1 ? 0 : 3;
        }
        if (role == "old-driver") {
            const std::string want = "the NVIDIA driver runs CUDA 12.8 programs; this one is "
                                     "built with CUDA 13.1: a newer driver is needed";
            int bad = 0;
            auto expect = [&](const std::string& what, const std::string& said) {
                if (said.find(want) == std::string::npos ||
                    said.find("cudaErrorInsufficientDriver") == std::string::npos) {
                    std::cerr << "old-driver: " << what << " says: " << said << "\n";
                    ++bad;
                }
            };
            if (probe().usable) {
                std::cerr << "old-driver: the probe finds a usable GPU\n";
                ++bad;
            }
            expect("probe()", probe().reason);
            expect("cuda_probe()", llmos::engine::cuda_probe(0).reason);
            try {
                (void)gpu_memory::reserve(1 << 20);
                std::cerr << "old-driver: reserve() worked\n";
                ++bad;
            } catch (const gpu_error& e) {
                expect("reserve()", e.what());
            }
            return bad ? 4 : 0;
        }
        if (role == "reader") {
            if (!readable(3, 60000)) {
                std::cerr << "reader: nothing came on fd 3\n";
                return 2;
            }
            gpu_mindspace ms = recv_gpu_mindspace(3);
            gpu_memory m = gpu_memory::import(ms);
            ms.chunks.clear(); // the mapping holds the memory now
            if (m.mapped_bytes() < bytes) {
                std::cerr << "reader: " << m.mapped_bytes() << " bytes mapped, want " << bytes
                          << "\n";
                return 3;
            }
            std::vector<std::byte> got(bytes);
            m.read(0, got);
            int64_t bad = first_mismatch(got.data(), bytes, seed);
            if (bad >= 0) {
                std::cerr << "reader: byte " << bad << " differs\n";
                return 4;
            }
            return 0;
        }
        std::cerr << "unknown child role " << role << "\n";
        return 5;
    } catch (const std::exception& e) {
        std::cerr << role << ": " << e.what() << "\n";
        return 6;
    }
}

} // namespace

int main(int argc, char** argv) {
    const std::string flag = "--gmem-child=";
    if (argc == 4 && std::string(argv[1]).rfind(flag, 0) == 0) {
        return child_main(argv[1] + flag.size(), uint32_t(std::stoul(argv[2])),
                          std::stoull(argv[3]));
    }
    const bool tap = llmos::test::init_gtest(argc, argv);
    return llmos::test::exit_status(RUN_ALL_TESTS(), tap);
}
