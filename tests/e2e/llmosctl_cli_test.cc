// SPDX-License-Identifier: MIT
//
// llmosctl as a user runs it: exit codes and the one-line errors.
#include <array>
#include <cstdio>
#include <gtest/gtest.h>
#include <string>
#include <sys/wait.h>

namespace {

struct run_result {
    int status;
    std::string output; // stdout and stderr
};

run_result run(const std::string& args) {
    std::string cmd = std::string{LLMOSCTL_PATH} + " " + args + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) {
        return {-1, "popen failed"};
    }
    std::string out;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) {
        out.append(buf.data(), n);
    }
    int st = ::pclose(p);
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

TEST(llmosctl, no_subcommand_is_a_usage_error) {
    auto r = run("");
    EXPECT_EQ(r.status, 2) << r.output;
}

TEST(llmosctl, unknown_subcommand_is_a_usage_error) {
    auto r = run("frobnicate");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("frobnicate"), std::string::npos) << r.output;
}

TEST(llmosctl, help_succeeds_and_lists_status) {
    auto r = run("--help");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("status"), std::string::npos) << r.output;
}

TEST(llmosctl, missing_device_is_one_clear_line) {
    auto r = run("--device /nonexistent/llmos status");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: cannot open /nonexistent/llmos: No such file or directory "
                        "(is the llmos module loaded? insmod llmos.ko)\n");
}

TEST(llmosctl, wrong_device_is_named) {
    auto r = run("--device /dev/null status");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: cannot open /dev/null: not an llmos device\n");
}

} // namespace

namespace {

TEST(llmosctl, ms_usage_errors_come_before_the_device) {
    auto r = run("--device /nonexistent/llmos ms create x --size 12Q");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_EQ(r.output, "llmosctl: bad --size '12Q' (e.g. 4096, 64K, 16M, 1G)\n");
    r = run("--device /nonexistent/llmos ms create x --size 4K --mode 0999");
    EXPECT_EQ(r.status, 2) << r.output;
    r = run("ms create x");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("--size"), std::string::npos) << r.output;
    r = run("ms");
    EXPECT_EQ(r.status, 2) << r.output;
}

TEST(llmosctl, ms_commands_name_the_missing_device) {
    for (const char* cmd : {"ms list", "ms info x", "ms rm x", "ms quota", "ms read x"}) {
        auto r = run(std::string{"--device /nonexistent/llmos "} + cmd);
        EXPECT_EQ(r.status, 1) << cmd << ": " << r.output;
        EXPECT_NE(r.output.find("is the llmos module loaded?"), std::string::npos) << r.output;
    }
}

TEST(llmosctl, ms_load_checks_the_file_first) {
    auto r = run("--device /nonexistent/llmos ms load /nonexistent/file");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: cannot open /nonexistent/file: No such file or directory\n");
    r = run("--device /nonexistent/llmos ms load /dev/null");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: /dev/null: not a saved llmos mindspace\n");
}

} // namespace
