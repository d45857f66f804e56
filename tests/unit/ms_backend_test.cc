// SPDX-License-Identifier: MIT
//
// libllmos mindspaces, the same tests against every backend this machine
// has: the local backend always, the kernel backend where /dev/llmos is (the
// test VM runs this program there, as TAP).
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <gtest/gtest.h>
#include <llmos/mindspace.hh>
#include <llmos/ms_file.hh>
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

TEST_P(ms_backend, read_only_handles_cannot_write) {
    const auto n = name("ro");
    auto ms = create(n, 4096);
    auto ro = mindspace::open(dev(), ms_key{0, n}, true).value();
    EXPECT_FALSE(ro.writable());
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro.fd(), 0);
    EXPECT_EQ(p, MAP_FAILED);
    EXPECT_EQ(errno, EACCES);
    EXPECT_TRUE(ro.map());
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
    EXPECT_EQ(ms.error(), llmos::errc::ms_file_corrupt) << ms.error().message();
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
