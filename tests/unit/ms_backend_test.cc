// SPDX-License-Identifier: MIT
//
// libllmos mindspaces, the same tests against every backend this machine
// has: the local backend always, the kernel backend where /dev/llmos is (the
// test VM runs this program there, as TAP).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/llmos.h>
#include <llmos/mindspace.hh>
#include <llmos/ms_file.hh>
#include <poll.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using llmos::backend_kind;
using llmos::mindspace;
using llmos::ms_key;

std::vector<backend_kind> available_backends() {
    std::vector<backend_kind> v{backend_kind::local};
    if (::access("/dev/llmos", F_OK) == 0) {
        v.push_back(backend_kind::kernel);
    }
    return v;
}

class ms_backend : public ::testing::TestWithParam<backend_kind> {
protected:
    std::filesystem::path _dir;
    std::optional<llmos::device> _dev;
    std::string _prefix; // names unique to this test: the kernel's are global

    void SetUp() override {
        const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
        _prefix = std::string{"t"} + std::to_string(::getpid()) + "-" +
                  std::to_string(std::hash<std::string>{}(t->name()) % 100000) + "-";
        if (GetParam() == backend_kind::local) {
            char tmpl[] = "/tmp/llmos-local-XXXXXX";
            ASSERT_NE(::mkdtemp(tmpl), nullptr);
            _dir = tmpl;
            ::chmod(tmpl, 0755);
            auto d = llmos::device::open_local(_dir.string());
            ASSERT_TRUE(d) << d.error().message();
            _dev.emplace(std::move(*d));
        } else {
            auto d = llmos::device::open();
            ASSERT_TRUE(d) << d.error().message();
            _dev.emplace(std::move(*d));
        }
    }
    void TearDown() override {
        _dev.reset();
        if (!_dir.empty()) {
            std::filesystem::remove_all(_dir);
        }
    }
    const llmos::device& dev() const { return *_dev; }
    std::string name(const char* n) const { return _prefix + n; }

    mindspace create(const std::string& n, uint64_t len, bool persistent = false,
                     uint32_t mode = 0) {
        llmos::ms_create_options o;
        o.name = n;
        o.length = len;
        o.persistent = persistent;
        o.mode = mode;
        return mindspace::create(dev(), o).value();
    }
};

std::string backend_name(const ::testing::TestParamInfo<backend_kind>& p) {
    return llmos::to_string(p.param);
}

INSTANTIATE_TEST_SUITE_P(backends, ms_backend, ::testing::ValuesIn(available_backends()),
                         backend_name);

TEST_P(ms_backend, device_reports_its_backend) {
    EXPECT_EQ(dev().kind(), GetParam());
    EXPECT_EQ(dev().version().major, 1u);
}

TEST_P(ms_backend, persistent_mindspace_is_reopened_by_name_and_id) {
    const auto n = name("keep");
    uint64_t id;
    {
        auto ms = create(n, 16 * 4096, true, 0640);
        id = ms.id();
        EXPECT_NE(id, 0u);
        auto m = ms.map().value();
        std::memcpy(m.data() + 3 * 4096, "remember", 9);
    }
    auto info = llmos::mindspace_info(dev(), ms_key{0, n}).value();
    EXPECT_EQ(info.id, id);
    EXPECT_EQ(info.length, 16u * 4096);
    EXPECT_EQ(info.resident, 4096u);
    EXPECT_EQ(info.mode, 0640u);
    EXPECT_EQ(info.uid, ::geteuid());
    EXPECT_TRUE(info.persistent());
    EXPECT_EQ(info.name, n);
    for (const auto& key : {ms_key{0, n}, ms_key{id, {}}}) {
        auto ms = mindspace::open(dev(), key, true).value();
        EXPECT_EQ(ms.length(), 16u * 4096);
        auto m = ms.map().value();
        EXPECT_STREQ(reinterpret_cast<const char*>(m.data() + 3 * 4096), "remember");
    }
    EXPECT_FALSE(llmos::destroy_mindspace(dev(), ms_key{0, n}));
    EXPECT_EQ(mindspace::open(dev(), ms_key{0, n}).error(), std::errc::no_such_file_or_directory);
    EXPECT_EQ(mindspace::open(dev(), ms_key{id, {}}).error(), std::errc::no_such_file_or_directory);
}

TEST_P(ms_backend, non_persistent_goes_with_its_last_holder) {
    const auto n = name("brief");
    auto a = create(n, 4096);
    {
        auto b = mindspace::open(dev(), ms_key{0, n}).value();
        a = mindspace::create(dev(), {.length = 4096}).value();  // drops the first handle
        EXPECT_TRUE(llmos::mindspace_info(dev(), ms_key{0, n})); // b holds it
    }
    EXPECT_EQ(mindspace::open(dev(), ms_key{0, n}).error(), std::errc::no_such_file_or_directory);
    // Its name is free again.
    auto c = create(n, 4096);
    EXPECT_EQ(llmos::destroy_mindspace(dev(), ms_key{0, n}), std::errc::invalid_argument);
}

TEST_P(ms_backend, another_process_sees_the_same_bytes) {
    const auto n = name("shared");
    auto ms = create(n, 8 * 4096);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        auto other = mindspace::open(dev(), ms_key{0, n});
        if (!other) {
            _exit(1);
        }
        auto m = other->map(2 * 4096, 4096);
        if (!m) {
            _exit(2);
        }
        std::memcpy(m->data() + 5, "from the child", 15);
        _exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_EQ(status, 0); // exited, with 0 (not killed)
    auto m = ms.map().value();
    EXPECT_STREQ(reinterpret_cast<const char*>(m.data() + 2 * 4096 + 5), "from the child");
}

TEST_P(ms_backend, untouched_pages_stay_unallocated) {
    auto ms = create(name("sparse"), 64 << 20);
    auto m = ms.map().value();
    m.data()[50000000] = std::byte{'Z'};
    auto ranges = ms.data_ranges().value();
    ASSERT_EQ(ranges.size(), 1u);
    EXPECT_EQ(ranges[0].offset, 50000000u / 4096 * 4096);
    EXPECT_EQ(ranges[0].length, 4096u);
    EXPECT_EQ(ms.info().value().resident, 4096u);
}

TEST_P(ms_backend, bad_input_is_refused) {
    auto err = [&](llmos::ms_create_options o) { return mindspace::create(dev(), o).error(); };
    EXPECT_EQ(err({.length = 0}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = 4095}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = uint64_t{1} << 45}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = 4096, .name = "a/b"}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = 4096, .name = "123"}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = 4096, .name = std::string(64, 'x')}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = 4096, .mode = 01000}), std::errc::invalid_argument);
    // A NUMA node this machine does not have (node 0 it always has).
    EXPECT_EQ(err({.length = 4096, .node = 1000}), std::errc::invalid_argument);
    EXPECT_EQ(err({.length = 4096, .node = -1}), std::errc::invalid_argument);
    EXPECT_TRUE(mindspace::create(dev(), {.length = 4096, .node = 0}));
    auto first = create(name("dup"), 4096);
    EXPECT_EQ(err({.length = 4096, .name = name("dup")}), std::errc::file_exists);
    EXPECT_EQ(mindspace::open(dev(), ms_key{0, name("nosuch")}).error(),
              std::errc::no_such_file_or_directory);
    EXPECT_EQ(llmos::destroy_mindspace(dev(), ms_key{0, name("nosuch")}),
              std::errc::no_such_file_or_directory);
    // Mappings stay inside.
    EXPECT_EQ(first.map(4096, 4096).error(), std::errc::invalid_argument);
    EXPECT_EQ(first.map(0, 8192).error(), std::errc::invalid_argument);
    EXPECT_EQ(first.map(8192).error(), std::errc::invalid_argument);
    EXPECT_TRUE(first.map(0, 4096));
}

// An offset inside a page maps from that page's start, as the local
// backend's data does on a kernel with pages larger than its header; the
// pages around it are unmapped with it.
TEST_P(ms_backend, a_mapping_may_start_inside_a_page) {
    auto ms = create(name("inside"), 4 * 4096);
    auto whole = ms.map().value();
    for (size_t i = 0; i < whole.size(); i++) {
        whole.data()[i] = std::byte(i * 7 % 251);
    }
    const uint64_t off = 4096 + 100;
    auto part = ms.map(off, 5000).value();
    ASSERT_EQ(part.size(), 5000u);
    EXPECT_EQ(std::memcmp(part.data(), whole.data() + off, 5000), 0);
    part.data()[4999] = std::byte{0xee};
    EXPECT_EQ(whole.data()[off + 4999], std::byte{0xee});
    std::byte* const first_page = part.data() - 100;
    part = ms.map(0, 4096).value();        // made while the old one was mapped: elsewhere
    for (int page = 0; page < 2; page++) { // 100 + 5000 bytes: two pages
        unsigned char in_core = 0;
        EXPECT_EQ(::mincore(first_page + page * 4096, 4096, &in_core), -1)
            << "page " << page << " is still mapped";
        EXPECT_EQ(errno, ENOMEM);
    }
    // Past the end is refused wherever it starts.
    EXPECT_EQ(ms.map(off, 3 * 4096 - 99).error(), std::errc::invalid_argument);
    EXPECT_TRUE(ms.map(off, 3 * 4096 - 100));
}

TEST_P(ms_backend, read_only_handles_cannot_write) {
    const auto n = name("ro");
    auto ms = create(n, 4096);
    auto ro = mindspace::open(dev(), ms_key{0, n}, true).value();
    EXPECT_FALSE(ro.writable());
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro.fd(), 0);
    EXPECT_EQ(p, MAP_FAILED);
    EXPECT_EQ(errno, EACCES);
    auto m = ro.map();
    ASSERT_TRUE(m);
    EXPECT_FALSE(m->writable()) << "a read-only handle's mapping says so";
    EXPECT_EQ(m->view().size(), 4096u);
    EXPECT_TRUE(ms.map().value().writable());
}

TEST_P(ms_backend, mode_keeps_other_users_out) {
    if (::geteuid() != 0) {
        GTEST_SKIP() << "needs root to switch users";
    }
    const auto n = name("private");
    auto ms = create(n, 4096, false, 0600);
    auto pub = create(name("public"), 4096, false, 0644);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
            _exit(10);
        }
        if (mindspace::open(dev(), ms_key{0, n}, true).error() != std::errc::permission_denied) {
            _exit(11);
        }
        if (mindspace::open(dev(), ms_key{0, name("public")}, false).error() !=
            std::errc::permission_denied) {
            _exit(12);
        }
        _exit(mindspace::open(dev(), ms_key{0, name("public")}, true) ? 0 : 13);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_EQ(status, 0); // exited, with 0 (not killed)
}

TEST_P(ms_backend, a_local_file_shorter_than_its_header_says_is_refused) {
    if (GetParam() != backend_kind::local) {
        GTEST_SKIP() << "the module's mindspaces have no file to cut short";
    }
    // Whoever may write a local mindspace may truncate its file: mapping it
    // would then give SIGBUS, so opening it says it is damaged.
    const auto n = name("short");
    uint64_t id = 0;
    {
        auto ms = create(n, 8192, true);
        id = ms.id();
    }
    const auto file = _dir / "ms" / std::to_string(id);
    std::filesystem::resize_file(file, 4096 + 4096);
    auto ms = mindspace::open(dev(), ms_key{0, n});
    ASSERT_FALSE(ms);
    EXPECT_EQ(ms.error(), llmos::errc::local_ms_damaged) << ms.error().message();
    EXPECT_FALSE(llmos::mindspace_info(dev(), ms_key{id, {}}));
    auto all = llmos::list_mindspaces(dev());
    ASSERT_TRUE(all) << "a damaged one does not break the list: " << all.error().message();
    EXPECT_FALSE(llmos::destroy_mindspace(dev(), ms_key{id, {}})) << "it can still be removed";
    EXPECT_EQ(mindspace::open(dev(), ms_key{0, n}).error(), std::errc::no_such_file_or_directory);
    EXPECT_TRUE(mindspace::create(dev(), {.length = 4096, .name = n})) << "its name is free";
    // A name whose file went without it is taken over too.
    const auto gone = name("gone");
    uint64_t gone_id = create(gone, 4096, true).id();
    std::filesystem::remove(_dir / "ms" / std::to_string(gone_id));
    EXPECT_TRUE(mindspace::create(dev(), {.length = 4096, .name = gone}));
}

TEST_P(ms_backend, list_shows_them_in_id_order) {
    auto a = create(name("l1"), 4096);
    auto b = create(name("l2"), 8192);
    auto all = llmos::list_mindspaces(dev()).value();
    int seen = 0;
    for (size_t i = 0; i < all.size(); ++i) {
        if (i) {
            EXPECT_LT(all[i - 1].id, all[i].id);
        }
        seen += all[i].id == a.id() || all[i].id == b.id();
    }
    EXPECT_EQ(seen, 2);
}

TEST_P(ms_backend, save_and_load_round_trip) {
    const auto n = name("saved");
    auto ms = create(n, 1 << 20, true, 0640);
    {
        auto m = ms.map().value();
        for (size_t i = 0; i < 4096; ++i) {
            m.data()[65536 + i] = static_cast<std::byte>(i * 7);
        }
    }
    char path[] = "/tmp/llmos-saved-XXXXXX";
    llmos::unique_fd f{::mkstemp(path)};
    ASSERT_TRUE(f);
    auto info = ms.info().value();
    auto ranges = ms.data_ranges().value();
    auto src = ms.map().value();
    llmos::ms_file_meta meta{.flags = info.flags, .mode = info.mode, .name = info.name};
    ASSERT_FALSE(llmos::save_ms_file(f.get(), meta, src.bytes(), &ranges));
    ASSERT_FALSE(llmos::destroy_mindspace(dev(), ms_key{0, n}));

    auto m = llmos::read_ms_file_meta(f.get()).value();
    auto back = mindspace::create(
                    dev(), {.length = m.length, .name = m.name, .persistent = true, .mode = m.mode})
                    .value();
    auto dst = back.map().value();
    ASSERT_FALSE(llmos::load_ms_file_data(f.get(), m, dst.bytes()));
    // Only the written page was loaded (checked before reading the rest,
    // which would fault in more pages).
    EXPECT_EQ(back.info().value().resident, 4096u);
    EXPECT_EQ(std::memcmp(src.data(), dst.data(), src.size()), 0);
    EXPECT_EQ(back.info().value().mode, 0640u);
    EXPECT_FALSE(llmos::destroy_mindspace(dev(), ms_key{0, n}));
    ::unlink(path);
}

} // namespace

// The local store is refused where another user could have put it, or
// links of theirs in it.
TEST(local_store, links_and_folders_of_other_users_are_refused) {
    char tmpl[] = "/tmp/llmos-store-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::filesystem::path top = tmpl;
    // The store itself a link: refused.
    std::filesystem::create_directory(top / "real");
    std::filesystem::create_directory_symlink(top / "real", top / "link");
    EXPECT_FALSE(llmos::device::open_local((top / "link").string()));
    // next-id a link to another file: no id is taken through it, and the
    // file keeps its mode and bytes.
    const auto store = top / "store";
    std::filesystem::create_directory(store);
    ASSERT_EQ(::chmod(store.c_str(), 0755), 0); // whatever the umask
    ASSERT_EQ(::chmod(top.c_str(), 0755), 0);
    {
        int v = ::open((top / "victim").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
        ASSERT_GE(v, 0);
        ASSERT_EQ(::write(v, "keep", 4), 4);
        ::close(v);
    }
    std::filesystem::create_symlink(top / "victim", store / "next-id");
    auto dev = llmos::device::open_local(store.string());
    ASSERT_TRUE(dev) << dev.error().message();
    EXPECT_FALSE(mindspace::create(*dev, {.length = 4096}));
    struct stat st {};
    ASSERT_EQ(::stat((top / "victim").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_EQ(st.st_size, 4);
    // Nor through a hard link.
    std::filesystem::remove(store / "next-id");
    ASSERT_EQ(::link((top / "victim").c_str(), (store / "next-id").c_str()), 0);
    EXPECT_FALSE(mindspace::create(*dev, {.length = 4096}));
    ASSERT_EQ(::stat((top / "victim").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_EQ(st.st_size, 4);
    std::filesystem::remove(store / "next-id");
    EXPECT_TRUE(mindspace::create(*dev, {.length = 4096})) << "a next-id of its own";
    // The caller's own folder that its group may write to (mkdir under
    // umask 002) is made sticky, not refused.
    const auto mine = top / "mine";
    std::filesystem::create_directory(mine);
    ASSERT_EQ(::chmod(mine.c_str(), 0775), 0);
    EXPECT_TRUE(llmos::device::open_local(mine.string()));
    ASSERT_EQ(::stat(mine.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 01775u);
    // A store folder of another user (not root): refused.
    if (::geteuid() == 0) {
        const auto theirs = top / "theirs";
        std::filesystem::create_directory(theirs);
        ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
        ASSERT_EQ(::chmod(theirs.c_str(), 01777), 0);
        auto d = llmos::device::open_local(theirs.string());
        ASSERT_FALSE(d);
        EXPECT_EQ(d.error().value(), EPERM);
        // Root's own, world-writable but sticky (as tmpfiles makes it): fine.
        const auto shared = top / "shared";
        std::filesystem::create_directory(shared);
        ASSERT_EQ(::chmod(shared.c_str(), 01777), 0);
        EXPECT_TRUE(llmos::device::open_local(shared.string()));
    }
    std::filesystem::remove_all(top);
}

// What other users (and the caller's own mistakes) can put in a local
// store must not make the library act on the wrong mindspace, hang, or fail
// whole. These tests are of the local backend only: the module keeps its
// mindspaces where no user reaches them.
namespace {

using llmos::device;

// Users the tests act as (through fork and setresuid, which takes root).
constexpr uid_t user_a = 1001;
constexpr uid_t user_b = 1002;

// Runs `body` in a child process, as `uid` when given, with an alarm so that
// a hang fails the test instead of stalling the run. Returns the child's
// exit status (`body`'s return value; 128 + N when killed by signal N).
int in_child(std::optional<uid_t> uid, const std::function<int()>& body, unsigned timeout_s = 60) {
    pid_t pid = ::fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        ::alarm(timeout_s);
        if (uid && (::setgroups(0, nullptr) != 0 || ::setresgid(*uid, *uid, *uid) != 0 ||
                    ::setresuid(*uid, *uid, *uid) != 0)) {
            _exit(100);
        }
        _exit(body());
    }
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) {
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A process that opens `file` with `flags` (as `uid` when given), locks it
// with `lock` and keeps it so until the object goes: how another process,
// or another user's, gets in the way. error(): 0 once it holds the lock,
// else the errno that `lock` (or open) failed with.
class lock_holder {
public:
    lock_holder(std::optional<uid_t> uid, const std::filesystem::path& file, int flags,
                const std::function<int(int)>& lock) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) {
            return;
        }
        _pid = ::fork();
        if (_pid == 0) {
            ::alarm(60);
            int err = 0;
            if (uid && (::setgroups(0, nullptr) != 0 || ::setresgid(*uid, *uid, *uid) != 0 ||
                        ::setresuid(*uid, *uid, *uid) != 0)) {
                err = EPERM;
            }
            int fd = err ? -1 : ::open(file.c_str(), flags | O_CLOEXEC);
            if (!err && (fd < 0 || lock(fd) != 0)) {
                err = errno;
            }
            _exit(::write(p[1], &err, sizeof(err)) == sizeof(err) && ::pause() ? 0 : 1);
        }
        ::close(p[1]);
        pollfd pfd{p[0], POLLIN, 0};
        if (_pid > 0 && ::poll(&pfd, 1, 10000) == 1 &&
            ::read(p[0], &_error, sizeof(_error)) != sizeof(_error)) {
            _error = -1;
        }
        ::close(p[0]);
    }
    lock_holder(const lock_holder&) = delete;
    lock_holder& operator=(const lock_holder&) = delete;
    ~lock_holder() {
        if (_pid > 0) {
            ::kill(_pid, SIGKILL);
            ::waitpid(_pid, nullptr, 0);
        }
    }
    int error() const { return _error; }

private:
    pid_t _pid = -1;
    int _error = -1;
};

// An OFD lock (F_RDLCK, F_WRLCK) of a whole file, without waiting: the
// locks the local backend holds its mindspaces with.
int ofd_lock(int fd, short type) {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    return ::fcntl(fd, F_OFD_SETLK, &fl);
}

// The mindspace's header as a writer of its file may rewrite it.
void rewrite_header(const std::filesystem::path& file,
                    const std::function<void(llmos::ms_file_meta&)>& change) {
    llmos::unique_fd f{::open(file.c_str(), O_RDWR | O_CLOEXEC)};
    ASSERT_TRUE(f) << file;
    llmos::ms_file_header h;
    ASSERT_EQ(::pread(f.get(), h.data(), h.size(), 0), static_cast<ssize_t>(h.size()));
    auto m = llmos::decode_ms_file_header(h).value();
    change(m);
    h = llmos::encode_ms_file_header(m);
    ASSERT_EQ(::pwrite(f.get(), h.data(), h.size(), 0), static_cast<ssize_t>(h.size()));
}

// Writes `name` into the header's name field (64 bytes at offset 48) as
// they are: a name the library would refuse to decode too.
void rewrite_header_name(const std::filesystem::path& file, const std::string& name) {
    llmos::unique_fd f{::open(file.c_str(), O_RDWR | O_CLOEXEC)};
    ASSERT_TRUE(f) << file;
    char field[LLMOS_NAME_MAX] = {};
    ASSERT_LT(name.size(), sizeof(field));
    std::memcpy(field, name.data(), name.size());
    ASSERT_EQ(::pwrite(f.get(), field, sizeof(field), 48), static_cast<ssize_t>(sizeof(field)));
}

mode_t mode_of(const std::filesystem::path& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0 ? st.st_mode & 07777 : 0;
}

// A persistent mindspace named `name` that anyone may write, holding
// "precious": its id.
uint64_t precious(const device& dev, const std::string& name) {
    auto ms =
        mindspace::create(dev, {.length = 4096, .name = name, .persistent = true, .mode = 0666})
            .value();
    std::memcpy(ms.map().value().data(), "precious", 9);
    return ms.id();
}

class local_store_dir : public ::testing::Test {
protected:
    std::filesystem::path _top; // 0755: other users may look in, not add

    void SetUp() override {
        char tmpl[] = "/tmp/llmos-store-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        _top = tmpl;
        ASSERT_EQ(::chmod(tmpl, 0755), 0);
    }
    void TearDown() override { std::filesystem::remove_all(_top); }

    static bool root() { return ::geteuid() == 0; }
    // A folder in _top of `uid`'s, for the store it makes.
    std::filesystem::path home_of(uid_t uid) const {
        auto p = _top / ("home" + std::to_string(uid));
        std::filesystem::create_directory(p);
        EXPECT_EQ(::chown(p.c_str(), uid, uid), 0);
        return p;
    }
};

TEST_F(local_store_dir, a_store_is_private_unless_root_makes_it) {
    // A user's store: nobody else may use it (they are refused a store of
    // another user), so nobody else may add to it.
    const auto mine = (root() ? home_of(user_a) : _top) / "store";
    ASSERT_EQ(in_child(root() ? std::optional<uid_t>{user_a} : std::nullopt,
                       [&] { return device::open_local(mine.string()) ? 0 : 1; }),
              0);
    EXPECT_EQ(mode_of(mine), 0700u);
    EXPECT_EQ(mode_of(mine / "ms"), 0700u);
    EXPECT_EQ(mode_of(mine / "by-name"), 0700u) << "others could hold its lock";
    EXPECT_EQ(mode_of(mine / "next-id"), 0600u) << "made with the store";
    // An earlier version's (0755 folders) is made private when opened.
    ASSERT_EQ(::chmod((mine / "by-name").c_str(), 0755), 0);
    ASSERT_EQ(in_child(root() ? std::optional<uid_t>{user_a} : std::nullopt,
                       [&] { return device::open_local(mine.string()) ? 0 : 1; }),
              0);
    EXPECT_EQ(mode_of(mine / "by-name"), 0700u);
    if (!root()) {
        GTEST_SKIP() << "a shared store is root's: needs root";
    }
    // Root's: how users share one (as the tmpfiles entry makes it).
    const auto shared = _top / "shared";
    ASSERT_TRUE(device::open_local(shared.string()));
    EXPECT_EQ(mode_of(shared), 01777u);
    EXPECT_EQ(mode_of(shared / "ms"), 01777u);
    EXPECT_EQ(mode_of(shared / "by-name"), 01777u);
    EXPECT_EQ(mode_of(shared / "next-id"), 0666u);
}

TEST_F(local_store_dir, a_name_is_followed_only_to_the_mindspace_that_bears_it) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    auto a = mindspace::create(dev, {.length = 4096, .name = "a", .persistent = true}).value();
    auto b = mindspace::create(dev, {.length = 4096, .name = "b", .persistent = true}).value();
    // by-name/b made to point to a's file: b's name does not reach a.
    std::filesystem::remove(store / "by-name" / "b");
    std::filesystem::create_symlink("../ms/" + std::to_string(a.id()), store / "by-name" / "b");
    EXPECT_EQ(mindspace::open(dev, ms_key{0, "b"}).error(), std::errc::no_such_file_or_directory);
    EXPECT_EQ(llmos::mindspace_info(dev, ms_key{0, "b"}).error(),
              std::errc::no_such_file_or_directory);
    EXPECT_EQ(llmos::destroy_mindspace(dev, ms_key{0, "b"}), std::errc::no_such_file_or_directory);
    EXPECT_TRUE(mindspace::open(dev, ms_key{a.id(), {}})) << "a is still there";
    // The name names nothing, so it may be taken.
    EXPECT_TRUE(mindspace::create(dev, {.length = 4096, .name = "b"}));
}

TEST_F(local_store_dir, links_other_users_put_in_a_shared_store_are_not_followed) {
    if (!root()) {
        GTEST_SKIP() << "needs root to act as other users";
    }
    const auto store = _top / "shared";
    auto dev = device::open_local(store.string()).value();
    uint64_t important = 0;
    {
        auto ms = mindspace::create(
                      dev, {.length = 4096, .name = "important", .persistent = true, .mode = 0644})
                      .value();
        important = ms.id();
    }
    const auto by_name = store / "by-name";
    // Another user names root's mindspace "scratch", and their own "alias".
    const int rc = in_child(user_a, [&] {
        auto d = device::open_local(store.string());
        if (!d) {
            return 1;
        }
        auto own = mindspace::create(*d, {.length = 4096, .name = "theirs", .persistent = true});
        if (!own) {
            return 2;
        }
        const auto to_root = "../ms/" + std::to_string(important);
        const auto to_own = "../ms/" + std::to_string(own->id());
        return ::symlink(to_root.c_str(), (by_name / "scratch").c_str()) ||
                       ::symlink(to_own.c_str(), (by_name / "alias").c_str())
                   ? 3
                   : 0;
    });
    ASSERT_EQ(rc, 0) << "the step of the child that failed";
    EXPECT_EQ(llmos::destroy_mindspace(dev, ms_key{0, "scratch"}),
              std::errc::no_such_file_or_directory);
    EXPECT_EQ(mindspace::open(dev, ms_key{0, "scratch"}).error(),
              std::errc::no_such_file_or_directory);
    EXPECT_EQ(mindspace::open(dev, ms_key{0, "alias"}).error(),
              std::errc::no_such_file_or_directory)
        << "their link to their own mindspace of another name";
    auto info = llmos::mindspace_info(dev, ms_key{0, "important"});
    ASSERT_TRUE(info) << "still there: " << info.error().message();
    EXPECT_EQ(info->id, important);
    // Neither name stands for anything: root may take them.
    EXPECT_TRUE(mindspace::create(dev, {.length = 4096, .name = "scratch"}));
    EXPECT_TRUE(mindspace::create(dev, {.length = 4096, .name = "alias"}));
}

TEST_F(local_store_dir, things_in_ms_that_are_not_mindspaces_break_nothing) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    auto ok = mindspace::create(dev, {.length = 4096, .name = "ok", .persistent = true}).value();
    const uint64_t id = ok.id();
    const auto ms = store / "ms";
    auto at = [&](uint64_t k) { return ms / std::to_string(id + k); };
    ASSERT_EQ(::mkfifo(at(1).c_str(), 0600), 0);
    std::filesystem::create_directory(at(2));
    std::filesystem::create_symlink(std::to_string(id), at(3));
    {
        // A header of an unknown format version.
        llmos::ms_file_meta m{.length = 4096, .mode = 0600};
        auto h = llmos::encode_ms_file_header(m);
        h[8] = std::byte{99};
        llmos::unique_fd f{::open(at(4).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600)};
        ASSERT_TRUE(f);
        ASSERT_EQ(::pwrite(f.get(), h.data(), h.size(), 0), static_cast<ssize_t>(h.size()));
        ASSERT_EQ(::ftruncate(f.get(), 8192), 0);
    }
    std::filesystem::create_symlink("../ms/" + std::to_string(id + 1), store / "by-name" / "fifo");
    // In a child with an alarm: a FIFO opened for reading blocks.
    const int rc = in_child(
        std::nullopt,
        [&] {
            auto all = llmos::list_mindspaces(dev);
            if (!all) {
                return 1;
            }
            if (all->size() != 1 || (*all)[0].id != id) {
                return 2;
            }
            for (uint64_t k = 1; k <= 4; ++k) {
                if (mindspace::open(dev, ms_key{id + k, {}}).error() !=
                    llmos::errc::local_ms_damaged) {
                    return 10 + static_cast<int>(k);
                }
                if (llmos::mindspace_info(dev, ms_key{id + k, {}}).error() !=
                    llmos::errc::local_ms_damaged) {
                    return 20 + static_cast<int>(k);
                }
            }
            if (mindspace::open(dev, ms_key{0, "fifo"}).error() != llmos::errc::local_ms_damaged) {
                return 30;
            }
            if (mindspace::create(dev, {.length = 4096, .name = "fifo"}).error() !=
                std::errc::file_exists) {
                return 31;
            }
            // The ids taken are passed over.
            auto fresh = mindspace::create(dev, {.length = 4096});
            if (!fresh || fresh->id() <= id + 4) {
                return 32;
            }
            // Their owner removes them.
            for (uint64_t k = 1; k <= 4; ++k) {
                if (llmos::destroy_mindspace(dev, ms_key{id + k, {}})) {
                    return 40 + static_cast<int>(k);
                }
            }
            return 0;
        },
        20);
    EXPECT_EQ(rc, 0) << "the step of the child that failed";
    for (uint64_t k = 1; k <= 4; ++k) {
        EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(at(k)))) << k;
    }
    EXPECT_FALSE(
        std::filesystem::exists(std::filesystem::symlink_status(store / "by-name" / "fifo")));
    EXPECT_TRUE(mindspace::create(dev, {.length = 4096, .name = "fifo"}));
}

TEST_F(local_store_dir, ids_are_taken_past_a_rewound_or_planted_counter) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    const uint64_t first =
        mindspace::create(dev, {.length = 4096, .persistent = true}).value().id();
    auto set_counter = [&](const std::string& v) {
        std::ofstream(store / "next-id", std::ios::trunc) << v;
    };
    // Rewound: the ids in use are passed over, not failed on.
    set_counter("0\n");
    auto second = mindspace::create(dev, {.length = 4096, .persistent = true});
    ASSERT_TRUE(second) << second.error().message();
    EXPECT_GT(second->id(), first);
    // A file already where the next id would go.
    llmos::unique_fd planted{::open((store / "ms" / std::to_string(second->id() + 1)).c_str(),
                                    O_RDWR | O_CREAT | O_EXCL, 0600)};
    ASSERT_TRUE(planted);
    auto third = mindspace::create(dev, {.length = 4096});
    ASSERT_TRUE(third) << third.error().message();
    EXPECT_GT(third->id(), second->id() + 1);
    // A counter far past the ids in use (one more would wrap to 0), or not
    // a number: set back to the top of the ids in use, never failed on.
    uint64_t top = third->id();
    std::vector<mindspace> made;
    for (const auto& junk : {std::to_string(UINT64_MAX) + "\n", std::string{"junk\n"},
                             std::to_string(top + (uint64_t{1} << 40)) + "\n"}) {
        set_counter(junk);
        auto fresh = mindspace::create(dev, {.length = 4096});
        ASSERT_TRUE(fresh) << junk << ": " << fresh.error().message();
        EXPECT_EQ(fresh->id(), top + 1) << junk;
        std::ifstream in(store / "next-id");
        std::string counter;
        in >> counter;
        EXPECT_EQ(counter, std::to_string(top + 1)) << "the counter is set right";
        top = fresh->id();
        made.push_back(std::move(*fresh));
    }
    EXPECT_FALSE(std::filesystem::exists(store / "ms" / "0"));
}

// Files put far up in ms/ (by another user, in a shared store) do not make
// create jump to them and run out of ids: a collision moves on past the
// run of ids in use that the taken one is part of.
TEST_F(local_store_dir, files_far_up_in_ms_do_not_use_the_ids_up) {
    const bool shared = root();
    const auto store = _top / (shared ? "shared" : "store");
    auto dev = device::open_local(store.string()).value();
    const uint64_t first =
        mindspace::create(dev, {.length = 4096, .persistent = true}).value().id();
    const auto ms = store / "ms";
    // Where the counter's next goes, and the last id there is.
    const int rc = in_child(shared ? std::optional<uid_t>{user_a} : std::nullopt, [&] {
        for (uint64_t id : {first + 1, UINT64_MAX}) {
            llmos::unique_fd f{
                ::open((ms / std::to_string(id)).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600)};
            if (!f) {
                return 1;
            }
        }
        return 0;
    });
    ASSERT_EQ(rc, 0);
    auto next = mindspace::create(dev, {.length = 4096, .persistent = true});
    ASSERT_TRUE(next) << next.error().message();
    EXPECT_EQ(next->id(), first + 2);
    // The next one too, from the counter.
    auto after = mindspace::create(dev, {.length = 4096, .persistent = true});
    ASSERT_TRUE(after) << after.error().message();
    EXPECT_EQ(after->id(), first + 3);
    // So too with no counter to go by (not the caller's to trust).
    std::filesystem::remove(store / "next-id");
    if (shared) {
        ASSERT_EQ(in_child(user_b,
                           [&] {
                               auto d = device::open_local(store.string());
                               if (!d) {
                                   return 1;
                               }
                               auto m = mindspace::create(*d, {.length = 4096});
                               return m && m->id() == first + 4 ? 0 : 2;
                           }),
                  0)
            << "a user of the store while it has no counter";
    } else {
        auto m = mindspace::create(dev, {.length = 4096});
        ASSERT_TRUE(m) << m.error().message();
        EXPECT_EQ(m->id(), first + 4);
    }
}

// Any user of a shared store may lock next-id: one who holds it for good
// delays creates 2 s, then they go on without it.
TEST_F(local_store_dir, a_counter_held_for_long_delays_creates_2_s_at_most) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    const uint64_t first =
        mindspace::create(dev, {.length = 4096, .persistent = true}).value().id();
    llmos::unique_fd counter{::open((store / "next-id").c_str(), O_RDONLY | O_CLOEXEC)};
    ASSERT_TRUE(counter);
    ASSERT_EQ(::flock(counter.get(), LOCK_EX), 0);
    // In a child with an alarm: a create that waits for good fails the test.
    const int rc = in_child(
        std::nullopt,
        [&] {
            const auto t0 = std::chrono::steady_clock::now();
            auto ms = mindspace::create(dev, {.length = 4096, .persistent = true});
            const auto took = std::chrono::steady_clock::now() - t0;
            if (!ms) {
                return 1;
            }
            if (ms->id() != first + 1) {
                return 2;
            }
            return took >= std::chrono::milliseconds(1900) ? 0 : 3;
        },
        20);
    EXPECT_EQ(rc, 0) << "the step of the child that failed";
}

TEST_F(local_store_dir, every_user_of_a_shared_store_takes_ids) {
    if (!root()) {
        GTEST_SKIP() << "needs root to act as other users";
    }
    const auto store = _top / "shared";
    ASSERT_TRUE(device::open_local(store.string()));
    for (uid_t u : {user_a, user_b}) {
        EXPECT_EQ(in_child(u,
                           [&] {
                               auto d = device::open_local(store.string());
                               if (!d) {
                                   return 1;
                               }
                               auto ms = mindspace::create(*d, {.length = 4096});
                               return ms ? 0 : 10 + ms.error().value() % 100;
                           }),
                  0)
            << "user " << u;
    }
}

TEST_F(local_store_dir, the_owner_lists_and_removes_theirs_whatever_the_mode) {
    const auto parent = root() ? home_of(user_a) : _top;
    const auto store = parent / "store";
    // As a user (root reads whatever the mode).
    const int rc = in_child(root() ? std::optional<uid_t>{user_a} : std::nullopt, [&] {
        auto d = device::open_local(store.string());
        if (!d) {
            return 1;
        }
        uint64_t kept = 0;
        uint64_t brief = 0;
        {
            auto k = mindspace::create(
                *d, {.length = 4096, .name = "wo", .persistent = true, .mode = 0200});
            auto b = mindspace::create(*d, {.length = 4096, .mode = 0200});
            if (!k || !b) {
                return 2;
            }
            kept = k->id();
            brief = b->id();
        }
        auto all = llmos::list_mindspaces(*d);
        if (!all) {
            return 3;
        }
        if (all->size() != 1 || (*all)[0].id != kept || (*all)[0].mode != 0200 ||
            (*all)[0].name != "wo" || !(*all)[0].persistent()) {
            return 4; // listed, and the one nobody holds reaped
        }
        if (std::filesystem::exists(store / "ms" / std::to_string(brief))) {
            return 5;
        }
        if (mode_of(store / "ms" / std::to_string(kept)) != (S_ISVTX | 0200)) {
            return 6; // left as it was (the sticky bit: persistent)
        }
        if (mindspace::open(*d, ms_key{0, "wo"}, true).error() != std::errc::permission_denied) {
            return 7; // opening still checks the mode
        }
        if (llmos::destroy_mindspace(*d, ms_key{0, "wo"})) {
            return 8;
        }
        return std::filesystem::exists(store / "ms" / std::to_string(kept)) ||
                       std::filesystem::exists(
                           std::filesystem::symlink_status(store / "by-name" / "wo"))
                   ? 9
                   : 0;
    });
    EXPECT_EQ(rc, 0) << "the step of the child that failed";
}

TEST_F(local_store_dir, a_mindspace_being_made_is_not_removed) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    const uint64_t id = mindspace::create(dev, {.length = 4096, .persistent = true}).value().id();
    // As create leaves it before its header is written: held, empty.
    const auto file = store / "ms" / std::to_string(id + 1);
    llmos::unique_fd f{::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600)};
    ASSERT_TRUE(f);
    ASSERT_EQ(::flock(f.get(), LOCK_SH), 0);
    EXPECT_EQ(llmos::destroy_mindspace(dev, ms_key{id + 1, {}}),
              std::errc::device_or_resource_busy);
    EXPECT_TRUE(std::filesystem::exists(file));
    f.reset();
    EXPECT_FALSE(llmos::destroy_mindspace(dev, ms_key{id + 1, {}})) << "nobody holds it now";
    EXPECT_FALSE(std::filesystem::exists(file));
}

TEST_F(local_store_dir, names_change_under_the_names_lock) {
    // Checking a name's link, removing it and making another is one step
    // under a flock of by-name/: what keeps two creators from both taking
    // a name (the race below shows it only now and then).
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    std::filesystem::create_symlink("../ms/999999999", store / "by-name" / "n");
    llmos::unique_fd names{::open((store / "by-name").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    ASSERT_TRUE(names);
    ASSERT_EQ(::flock(names.get(), LOCK_EX), 0);
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::alarm(30);
        auto ms = mindspace::create(dev, {.length = 4096, .name = "n", .persistent = true});
        char c = ms ? 'y' : 'n';
        _exit(::write(p[1], &c, 1) == 1 ? 0 : 1);
    }
    ::close(p[1]);
    pollfd pfd{p[0], POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, 300), 0) << "the name was taken while the lock was held";
    ASSERT_EQ(::flock(names.get(), LOCK_UN), 0);
    char c = 0;
    EXPECT_EQ(::read(p[0], &c, 1), 1);
    EXPECT_EQ(c, 'y');
    ::close(p[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_EQ(status, 0);
}

// A names lock held for good (in a shared store anyone may take it)
// stalls a name change 2 s, then EBUSY: never for good.
TEST_F(local_store_dir, a_names_lock_held_for_long_is_ebusy) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    llmos::unique_fd names{::open((store / "by-name").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    ASSERT_TRUE(names);
    ASSERT_EQ(::flock(names.get(), LOCK_EX), 0);
    const auto t0 = std::chrono::steady_clock::now();
    auto ms = mindspace::create(dev, {.length = 4096, .name = "held", .persistent = true});
    const auto took = std::chrono::steady_clock::now() - t0;
    ASSERT_FALSE(ms) << "a name was taken under another's lock";
    EXPECT_EQ(ms.error(), std::errc::device_or_resource_busy) << ms.error().message();
    EXPECT_GE(took, std::chrono::milliseconds(1900));
    EXPECT_LT(took, std::chrono::seconds(10));
    ASSERT_EQ(::flock(names.get(), LOCK_UN), 0);
    EXPECT_TRUE(mindspace::create(dev, {.length = 4096, .name = "held", .persistent = true}));
}

TEST_F(local_store_dir, a_forgotten_mindspace_of_another_user_is_gone_for_all) {
    if (!root()) {
        GTEST_SKIP() << "needs root to act as other users";
    }
    const auto store = _top / "shared";
    ASSERT_TRUE(device::open_local(store.string()));
    ASSERT_EQ(in_child(user_a,
                       [&] {
                           // Made, and forgotten when the child exits.
                           auto d = device::open_local(store.string());
                           return d && mindspace::create(
                                           *d, {.length = 4096, .name = "brief", .mode = 0644})
                                      ? 0
                                      : 1;
                       }),
              0);
    const auto file = store / "ms" / "1"; // the store's first
    ASSERT_TRUE(std::filesystem::exists(file));
    // Another user may read it but not remove it: it is gone for them all
    // the same, and its file stays until its owner or root comes across it.
    const int rc = in_child(user_b, [&] {
        auto d = device::open_local(store.string());
        if (!d) {
            return 1;
        }
        auto all = llmos::list_mindspaces(*d);
        if (!all || !all->empty()) {
            return 2;
        }
        return mindspace::open(*d, ms_key{0, "brief"}, true).error() ==
                       std::errc::no_such_file_or_directory
                   ? 0
                   : 3;
    });
    EXPECT_EQ(rc, 0);
    EXPECT_TRUE(std::filesystem::exists(file));
    ASSERT_EQ(in_child(user_a,
                       [&] {
                           auto d = device::open_local(store.string());
                           return d && llmos::list_mindspaces(*d) ? 0 : 1;
                       }),
              0);
    EXPECT_FALSE(std::filesystem::exists(file));
    EXPECT_FALSE(
        std::filesystem::exists(std::filesystem::symlink_status(store / "by-name" / "brief")));
}

TEST_F(local_store_dir, of_racing_creators_of_one_name_one_wins) {
    // Each name first links to a file that is gone, which every creator
    // may take over: only one of them may.
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    constexpr int max_trials = 500;
    constexpr int procs = 4;
    // Fewer in the test VM (where /dev/llmos is), whose CPUs are emulated.
    const int trials = ::access("/dev/llmos", F_OK) == 0 ? 100 : max_trials;
    for (int t = 0; t < trials; ++t) {
        std::filesystem::create_symlink("../ms/999999999",
                                        store / "by-name" / ("r" + std::to_string(t)));
    }
    struct shared_counts {
        std::atomic<int> ready[max_trials];
        std::atomic<int> won[max_trials];
    };
    void* p = ::mmap(nullptr, sizeof(shared_counts), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    auto* counts = new (p) shared_counts{};
    std::vector<pid_t> kids;
    for (int k = 0; k < procs; ++k) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::alarm(120);
            for (int t = 0; t < trials; ++t) {
                // All start each trial together.
                counts->ready[t].fetch_add(1);
                while (counts->ready[t].load() < procs) {
                    ::sched_yield();
                }
                auto ms = mindspace::create(
                    dev, {.length = 4096, .name = "r" + std::to_string(t), .persistent = true});
                if (ms) {
                    counts->won[t].fetch_add(1);
                } else if (ms.error() != std::errc::file_exists) {
                    _exit(1);
                }
            }
            _exit(0);
        }
        kids.push_back(pid);
    }
    for (pid_t pid : kids) {
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        EXPECT_EQ(status, 0);
    }
    int twice = 0;
    for (int t = 0; t < trials; ++t) {
        EXPECT_GE(counts->won[t].load(), 1) << "r" << t;
        twice += counts->won[t].load() > 1;
    }
    EXPECT_EQ(twice, 0) << "names created by two creators at once";
    // Every persistent mindspace made is still named (none was orphaned).
    auto all = llmos::list_mindspaces(dev).value();
    EXPECT_EQ(all.size(), static_cast<size_t>(trials));
    for (const auto& i : all) {
        EXPECT_TRUE(mindspace::open(dev, ms_key{0, i.name})) << i.name;
    }
    ::munmap(p, sizeof(shared_counts));
}

// A user who may only read a mindspace can take no lock that keeps others
// from opening it (flock would let them take an exclusive one, and opens
// waited for it for good); one who may write it can delay opens 2 s.
TEST_F(local_store_dir, a_reader_cannot_keep_others_from_opening) {
    const bool shared = root();
    const auto store = _top / (shared ? "shared" : "store");
    auto dev = device::open_local(store.string()).value();
    // Nobody holds it (as after `llmosctl ms create`).
    const uint64_t id =
        mindspace::create(dev, {.length = 4096, .name = "s", .persistent = true, .mode = 0644})
            .value()
            .id();
    const auto file = store / "ms" / std::to_string(id);
    const auto reader = shared ? std::optional<uid_t>{user_a} : std::nullopt;
    {
        // Every lock a reader can take, held meanwhile.
        lock_holder ex(reader, file, O_RDONLY, [](int fd) { return ::flock(fd, LOCK_EX); });
        ASSERT_EQ(ex.error(), 0);
        lock_holder rd(reader, file, O_RDONLY, [](int fd) { return ofd_lock(fd, F_RDLCK); });
        ASSERT_EQ(rd.error(), 0);
        lock_holder wr(reader, file, O_RDONLY, [](int fd) { return ofd_lock(fd, F_WRLCK); });
        EXPECT_EQ(wr.error(), EBADF) << "a reader took the write lock";
        // In a child with an alarm: an open that waits for good fails the test.
        const int rc = in_child(
            std::nullopt,
            [&] {
                const auto t0 = std::chrono::steady_clock::now();
                for (bool ro : {false, true}) {
                    for (const auto& key : {ms_key{0, "s"}, ms_key{id, {}}}) {
                        if (!mindspace::open(dev, key, ro)) {
                            return ro ? 2 : 1;
                        }
                    }
                }
                if (!mindspace::create(dev, {.length = 4096, .name = "t", .persistent = true})) {
                    return 3;
                }
                return std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1) ? 0 : 4;
            },
            20);
        EXPECT_EQ(rc, 0) << "the step of the child that failed";
    }
    // A writer's write lock (a writer may cut the file short anyway): opens
    // wait 2 s for it, then EBUSY.
    lock_holder writer(std::nullopt, file, O_RDWR, [](int fd) { return ofd_lock(fd, F_WRLCK); });
    ASSERT_EQ(writer.error(), 0);
    const auto t0 = std::chrono::steady_clock::now();
    auto busy = mindspace::open(dev, ms_key{0, "s"}, true);
    const auto took = std::chrono::steady_clock::now() - t0;
    ASSERT_FALSE(busy);
    EXPECT_EQ(busy.error(), std::errc::device_or_resource_busy) << busy.error().message();
    EXPECT_GE(took, std::chrono::milliseconds(1900));
    EXPECT_LT(took, std::chrono::seconds(10));
}

// What holds a mindspace that is not persistent, and so keeps it: a handle,
// a mapping with no handle left, a reader's read lock, and the shared flock
// that processes of an earlier version hold.
TEST_F(local_store_dir, what_holds_a_mindspace_keeps_it) {
    const auto store = _top / "store";
    auto dev = device::open_local(store.string()).value();
    auto listed = [&](uint64_t id) {
        auto all = llmos::list_mindspaces(dev).value();
        return std::any_of(all.begin(), all.end(), [&](const auto& i) { return i.id == id; });
    };
    std::optional<llmos::mapping> view;
    uint64_t mapped = 0;
    {
        auto ms = mindspace::create(dev, {.length = 4096, .mode = 0644}).value();
        mapped = ms.id();
        view.emplace(ms.map().value());
    }
    EXPECT_TRUE(listed(mapped)) << "its mapping holds it";
    view.reset();
    EXPECT_FALSE(listed(mapped));
    EXPECT_FALSE(std::filesystem::exists(store / "ms" / std::to_string(mapped)));
    for (int how : {0, 1}) {
        const uint64_t id = mindspace::create(dev, {.length = 4096, .mode = 0644}).value().id();
        const auto file = store / "ms" / std::to_string(id);
        {
            lock_holder h(std::nullopt, file, O_RDONLY, [how](int fd) {
                return how ? ::flock(fd, LOCK_SH) : ofd_lock(fd, F_RDLCK);
            });
            ASSERT_EQ(h.error(), 0);
            EXPECT_TRUE(listed(id)) << how;
            EXPECT_TRUE(mindspace::open(dev, ms_key{id, {}}, true)) << how;
        }
        EXPECT_FALSE(listed(id)) << how;
        EXPECT_FALSE(std::filesystem::exists(file)) << how;
    }
}

// Persistence is in the file's mode (the sticky bit), which only its owner
// may change: a writer who clears the header's flag does not make it
// removable. One of an earlier version (the header's flag only) is kept,
// and marked so by its owner's next list.
TEST_F(local_store_dir, a_writer_cannot_make_a_persistent_mindspace_removable) {
    const bool shared = root();
    const auto store = _top / (shared ? "shared" : "store");
    auto dev = device::open_local(store.string()).value();
    const uint64_t id = precious(dev, "p");
    const auto file = store / "ms" / std::to_string(id);
    EXPECT_EQ(mode_of(file), S_ISVTX | 0666);
    const int rc = in_child(shared ? std::optional<uid_t>{user_a} : std::nullopt, [&] {
        rewrite_header(file, [](auto& m) { m.flags = 0; });
        return ::testing::Test::HasFailure() ? 1 : 0;
    });
    ASSERT_EQ(rc, 0);
    auto all = llmos::list_mindspaces(dev).value();
    ASSERT_EQ(all.size(), 1u) << "removed as if it were not persistent";
    EXPECT_TRUE(all[0].persistent());
    EXPECT_EQ(all[0].mode, 0666u);
    {
        auto ms = mindspace::open(dev, ms_key{0, "p"}, true);
        ASSERT_TRUE(ms) << ms.error().message();
        EXPECT_STREQ(reinterpret_cast<const char*>(ms->map().value().data()), "precious");
    }
    EXPECT_TRUE(llmos::mindspace_info(dev, ms_key{0, "p"})) << "kept once nobody holds it";
    // As an earlier version made it: persistent by its header's flag alone.
    ASSERT_EQ(::chmod(file.c_str(), 0666), 0);
    rewrite_header(file, [](auto& m) { m.flags = LLMOS_MS_PERSISTENT; });
    ASSERT_EQ(llmos::list_mindspaces(dev).value().size(), 1u);
    EXPECT_EQ(mode_of(file), S_ISVTX | 0666) << "marked persistent by its mode";
    rewrite_header(file, [](auto& m) { m.flags = 0; });
    EXPECT_EQ(llmos::list_mindspaces(dev).value().size(), 1u);
    // Its owner still ends it.
    EXPECT_FALSE(llmos::destroy_mindspace(dev, ms_key{0, "p"}));
    EXPECT_FALSE(std::filesystem::exists(file));
}

// A writer who rewrites the name in the header does not make the name
// lead elsewhere or free it, nor get the mindspace removed: opening it by
// that name says it is damaged, its bytes stay, its owner removes it by id.
TEST_F(local_store_dir, a_name_rewritten_in_the_header_is_refused_and_the_bytes_kept) {
    const bool shared = root();
    const auto store = _top / (shared ? "shared" : "store");
    auto dev = device::open_local(store.string()).value();
    const uint64_t id = precious(dev, "n");
    auto other = mindspace::create(dev, {.length = 4096, .name = "o", .persistent = true}).value();
    const auto file = store / "ms" / std::to_string(id);
    for (const char* rewritten : {"o", "x", ""}) {
        const int rc = in_child(shared ? std::optional<uid_t>{user_a} : std::nullopt, [&] {
            rewrite_header_name(file, rewritten);
            return ::testing::Test::HasFailure() ? 1 : 0;
        });
        ASSERT_EQ(rc, 0);
        EXPECT_EQ(mindspace::open(dev, ms_key{0, "n"}).error(), llmos::errc::local_ms_damaged)
            << rewritten;
        EXPECT_EQ(llmos::mindspace_info(dev, ms_key{0, "n"}).error(), llmos::errc::local_ms_damaged)
            << rewritten;
        EXPECT_EQ(mindspace::create(dev, {.length = 4096, .name = "n"}).error(),
                  std::errc::file_exists)
            << rewritten << ": the name was taken from it";
        EXPECT_EQ(llmos::destroy_mindspace(dev, ms_key{0, "n"}), llmos::errc::local_ms_damaged)
            << rewritten;
        // The other name still leads to its own mindspace only.
        EXPECT_EQ(mindspace::open(dev, ms_key{0, "o"}).value().id(), other.id()) << rewritten;
        auto ms = mindspace::open(dev, ms_key{id, {}}, true);
        ASSERT_TRUE(ms) << rewritten << ": " << ms.error().message();
        EXPECT_STREQ(reinterpret_cast<const char*>(ms->map().value().data()), "precious");
    }
    // A header name that is no name at all is damaged whichever way.
    rewrite_header_name(file, "../ms/1");
    EXPECT_EQ(mindspace::open(dev, ms_key{id, {}}).error(), llmos::errc::local_ms_damaged);
    EXPECT_EQ(llmos::list_mindspaces(dev).value().size(), 1u);
    EXPECT_TRUE(std::filesystem::exists(file));
    // Its owner removes it, and its name with it.
    rewrite_header_name(file, "x");
    EXPECT_FALSE(llmos::destroy_mindspace(dev, ms_key{id, {}}));
    EXPECT_FALSE(std::filesystem::exists(file));
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(store / "by-name" / "n")));
    EXPECT_TRUE(mindspace::create(dev, {.length = 4096, .name = "n"}));
}

// A create that died before it wrote the header leaves a file that its
// mode says is unfinished: its owner's list removes it once it is a
// minute old and nobody holds it. Nothing else without a header is.
TEST_F(local_store_dir, a_create_that_died_leaves_nothing_behind) {
    const bool shared = root();
    const auto store = _top / (shared ? "shared" : "store");
    auto dev = device::open_local(store.string()).value();
    const uint64_t id = mindspace::create(dev, {.length = 4096, .persistent = true}).value().id();
    EXPECT_EQ(mode_of(store / "ms" / std::to_string(id)) & S_ISGID, 0u) << "finished";
    auto at = [&](uint64_t k) { return store / "ms" / std::to_string(id + k); };
    const timespec long_ago[2] = {{::time(nullptr) - 120, 0}, {::time(nullptr) - 120, 0}};
    // 1, 2: as a create leaves it (empty; its length set), a while ago.
    // 3: the same, just now (its creator may be about to hold it).
    for (uint64_t k : {1, 2, 3}) {
        llmos::unique_fd f{::open(at(k).c_str(), O_RDWR | O_CREAT | O_EXCL, S_ISGID | 0600)};
        ASSERT_TRUE(f);
        if (k == 2) {
            ASSERT_EQ(::ftruncate(f.get(), 8192), 0);
        }
        if (k != 3) {
            ASSERT_EQ(::futimens(f.get(), long_ago), 0);
        }
    }
    // 4: one a while ago that its creator holds (still writing).
    llmos::unique_fd held{::open(at(4).c_str(), O_RDWR | O_CREAT | O_EXCL, S_ISGID | 0600)};
    ASSERT_TRUE(held);
    ASSERT_EQ(ofd_lock(held.get(), F_RDLCK), 0);
    ASSERT_EQ(::futimens(held.get(), long_ago), 0);
    // 5: a finished mindspace whose header a writer wiped: damaged, kept.
    {
        auto ms = mindspace::create(dev, {.length = 4096, .mode = 0666}).value();
        ASSERT_EQ(ms.id(), id + 5);
        ASSERT_EQ(mode_of(at(5)), 0666u);
        llmos::unique_fd f{::open(at(5).c_str(), O_RDWR)};
        const std::vector<char> zeros(4096);
        ASSERT_EQ(::pwrite(f.get(), zeros.data(), zeros.size(), 0), 4096);
        ASSERT_EQ(::futimens(f.get(), long_ago), 0);
    }
    // Another user leaves them (not theirs to remove).
    if (shared) {
        EXPECT_EQ(in_child(user_b,
                           [&] {
                               auto d = device::open_local(store.string());
                               return d && llmos::list_mindspaces(*d) ? 0 : 1;
                           }),
                  0);
        EXPECT_TRUE(std::filesystem::exists(at(1)));
    }
    auto all = llmos::list_mindspaces(dev).value();
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0].id, id);
    EXPECT_FALSE(std::filesystem::exists(at(1)));
    EXPECT_FALSE(std::filesystem::exists(at(2)));
    EXPECT_TRUE(std::filesystem::exists(at(3))) << "just made";
    EXPECT_TRUE(std::filesystem::exists(at(4))) << "held";
    EXPECT_TRUE(std::filesystem::exists(at(5))) << "its header is a writer's to damage";
    EXPECT_EQ(llmos::destroy_mindspace(dev, ms_key{id + 4, {}}),
              std::errc::device_or_resource_busy);
    held.reset();
    (void)llmos::list_mindspaces(dev).value();
    EXPECT_FALSE(std::filesystem::exists(at(4))) << "once nobody holds it";
}

} // namespace
