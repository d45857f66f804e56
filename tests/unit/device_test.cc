// SPDX-License-Identifier: MIT
#include <cerrno>
#include <fcntl.h>
#include <filesystem>
#include <gtest/gtest.h>
#include <linux/llmos.h>
#include <llmos/device.hh>
#include <unistd.h>

namespace {

bool fd_is_open(int fd) {
    return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

TEST(unique_fd, closes_on_destruction) {
    int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(raw, 0);
    {
        llmos::unique_fd fd{raw};
        EXPECT_TRUE(fd);
        EXPECT_EQ(fd.get(), raw);
    }
    EXPECT_FALSE(fd_is_open(raw));
}

TEST(unique_fd, move_transfers_ownership) {
    int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(raw, 0);
    llmos::unique_fd a{raw};
    llmos::unique_fd b{std::move(a)};
    EXPECT_FALSE(a);
    EXPECT_EQ(b.get(), raw);
    llmos::unique_fd c;
    c = std::move(b);
    EXPECT_EQ(c.get(), raw);
    EXPECT_TRUE(fd_is_open(raw));
    c = llmos::unique_fd{};
    EXPECT_FALSE(fd_is_open(raw));
}

TEST(unique_fd, release_gives_up_ownership) {
    int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(raw, 0);
    {
        llmos::unique_fd fd{raw};
        EXPECT_EQ(fd.release(), raw);
        EXPECT_FALSE(fd);
    }
    EXPECT_TRUE(fd_is_open(raw));
    ::close(raw);
}

TEST(device, missing_path_reports_the_open_error) {
    auto dev = llmos::device::open("/nonexistent/llmos");
    ASSERT_FALSE(dev);
    EXPECT_EQ(dev.error(), std::errc::no_such_file_or_directory);
    EXPECT_THROW(dev.value(), std::system_error);
}

TEST(device, a_file_that_is_not_llmos_is_recognised) {
    auto dev = llmos::device::open("/dev/null");
    ASSERT_FALSE(dev);
    EXPECT_EQ(dev.error(), llmos::errc::not_llmos_device);
    EXPECT_EQ(dev.error().message(), "not an llmos device");
    EXPECT_STREQ(dev.error().category().name(), "llmos");
}

TEST(device, default_path_follows_the_environment) {
    ASSERT_EQ(::unsetenv("LLMOS_DEVICE"), 0);
    EXPECT_EQ(llmos::default_device_path(), "/dev/llmos");
    ASSERT_EQ(::setenv("LLMOS_DEVICE", "/tmp/x", 1), 0);
    EXPECT_EQ(llmos::default_device_path(), "/tmp/x");
    ASSERT_EQ(::unsetenv("LLMOS_DEVICE"), 0);
}

// A node the user named is the one wanted: auto does not hand a typo
// over to the local backend (with its own, per-process scheduler).
TEST(device, auto_does_not_fall_back_from_a_named_device) {
    char tmpl[] = "/tmp/llmos-auto-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string dir = tmpl;
    ASSERT_EQ(::unsetenv("LLMOS_BACKEND"), 0);
    ASSERT_EQ(::setenv("LLMOS_LOCAL_DIR", dir.c_str(), 1), 0);
    ASSERT_EQ(::setenv("LLMOS_DEVICE", (dir + "/no-such-node").c_str(), 1), 0);
    auto named = llmos::device::open_auto();
    ASSERT_EQ(::unsetenv("LLMOS_DEVICE"), 0);
    EXPECT_FALSE(named);
    if (!named) {
        EXPECT_EQ(named.error(), std::errc::no_such_file_or_directory);
    }
    // Unnamed and missing, it falls back (where /dev/llmos is not there).
    if (::access("/dev/llmos", F_OK) != 0) {
        auto dev = llmos::device::open_auto();
        ASSERT_TRUE(dev) << dev.error().message();
        EXPECT_EQ(dev->kind(), llmos::backend_kind::local);
    }
    ASSERT_EQ(::unsetenv("LLMOS_LOCAL_DIR"), 0);
    std::filesystem::remove_all(dir);
}

TEST(device, feature_names_decode_known_and_unknown_bits) {
    EXPECT_TRUE(llmos::feature_names(0).empty());
    EXPECT_EQ(llmos::feature_names(LLMOS_FEATURE_SCHED | LLMOS_FEATURE_BPF_POLICY),
              (std::vector<std::string>{"sched", "bpf-policy"}));
    EXPECT_EQ(llmos::feature_names(LLMOS_FEATURE_VERSION), std::vector<std::string>{"version"});
    EXPECT_EQ(llmos::feature_names(LLMOS_FEATURE_SCHED_RETURN | LLMOS_FEATURE_TENANT_GRANT |
                                   LLMOS_FEATURE_WORKER_GRANT),
              (std::vector<std::string>{"sched-return", "tenant-grant", "worker-grant"}));
    EXPECT_EQ(llmos::feature_names(LLMOS_FEATURE_VERSION | (uint64_t{1} << 63)),
              (std::vector<std::string>{"version", "bit 63"}));
}

TEST(result, holds_a_value_or_an_error) {
    llmos::result<int> ok{42};
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok.value(), 42);
    EXPECT_FALSE(ok.error());
    llmos::result<int> bad{std::make_error_code(std::errc::invalid_argument)};
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error(), std::errc::invalid_argument);
    try {
        (void)bad.value();
        FAIL() << "value() of an error must throw";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code(), std::errc::invalid_argument);
    }
}

} // namespace
