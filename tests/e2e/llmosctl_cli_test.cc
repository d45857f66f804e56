// SPDX-License-Identifier: MIT
//
// llmosctl as a user runs it: exit codes and the one-line errors.
#include "../../tools/llmosctl/util.hh"
#include "../support/paths.hh"

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

struct run_result {
    int status;
    std::string output; // stdout and stderr
};

run_result run_with_env(const std::string& env, const std::string& args) {
    std::string cmd = env + llmos::testing::llmosctl_bin + " " + args + " 2>&1";
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

run_result run(const std::string& args) {
    return run_with_env("", args);
}

/// `cmd` as sh runs it, with its own redirections.
run_result run_shell(const std::string& cmd) {
    return run_with_env(cmd + " #", "");
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
    // No name, or a mode the module would read as its default.
    r = run("--device /nonexistent/llmos ms create '' --size 4K");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_EQ(r.output, "llmosctl: a mindspace's name has 1 to 63 characters\n");
    r = run("--device /nonexistent/llmos ms create x --size 4K --mode 0000");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("--mode 0"), std::string::npos) << r.output;
    r = run("ms");
    EXPECT_EQ(r.status, 2) << r.output;
}

// Nothing attached: one line, ours (not libbpf's before it).
TEST(llmosctl, sched_detach_with_nothing_attached_is_one_line) {
    if (::access("/sys/fs/bpf/llmos_sched_policy", F_OK) == 0) {
        GTEST_SKIP() << "a policy is attached here";
    }
    auto r = run("sched detach");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: no policy is attached (no /sys/fs/bpf/llmos_sched_policy)\n");
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

namespace {

// llmosctl ms on the local backend, as on a machine without the module.
class llmosctl_local : public ::testing::Test {
protected:
    std::string _dir;
    void SetUp() override {
        char tmpl[] = "/tmp/llmosctl-local-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        _dir = tmpl;
    }
    void TearDown() override { (void)std::system(("rm -rf " + _dir).c_str()); }
    run_result ctl(const std::string& args) { return run("--backend local " + args); }
    std::string env() const { return "LLMOS_LOCAL_DIR=" + _dir + "/store "; }
    run_result run(const std::string& args) { return ::run_with_env(env(), args); }
};

TEST_F(llmosctl_local, save_and_load_round_trip_bytes_exactly) {
    ASSERT_EQ(ctl("ms create conv --size 1M --mode 0640").status, 0);
    ASSERT_EQ(ctl("ms write conv 'hello, local mindspace'").status, 0);
    ASSERT_EQ(::system(("head -c 65536 /dev/urandom >" + _dir + "/rand").c_str()), 0);
    ASSERT_EQ(ctl("ms write conv --offset 131072 - <" + _dir + "/rand").status, 0);
    ASSERT_EQ(ctl("ms read conv >" + _dir + "/before").status, 0);
    auto r = ctl("ms save conv " + _dir + "/conv.llmosms");
    ASSERT_EQ(r.status, 0) << r.output;
    ASSERT_EQ(ctl("ms rm conv").status, 0);
    r = ctl("ms info conv");
    EXPECT_EQ(r.status, 1) << r.output;
    r = ctl("ms load " + _dir + "/conv.llmosms");
    ASSERT_EQ(r.status, 0) << r.output;
    ASSERT_EQ(ctl("ms read conv >" + _dir + "/after").status, 0);
    EXPECT_EQ(::system(("cmp -s " + _dir + "/before " + _dir + "/after").c_str()), 0);
    r = ctl("--json ms info conv");
    EXPECT_NE(r.output.find("\"mode\": \"0640\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"length\": 1048576"), std::string::npos) << r.output;
    // Mappings and fds the local backend cannot count: unknown, not 0.
    EXPECT_NE(r.output.find("\"maps\": null"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"fds\": null"), std::string::npos) << r.output;
    r = ctl("--json ms list");
    EXPECT_NE(r.output.find("\"maps\": null"), std::string::npos) << r.output;
    r = ctl("ms list");
    EXPECT_NE(r.output.find(" yes    -    -\n"), std::string::npos) << r.output;
    r = ctl("status");
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.output.find("backend:  local"), std::string::npos) << r.output;
    r = ctl("ms quota");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.output.find("quotas need the llmos module"), std::string::npos) << r.output;
}

TEST_F(llmosctl_local, a_save_replaces_a_file_whole_or_not_at_all) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    ASSERT_EQ(ctl("ms write c first").status, 0);
    const std::string file = _dir + "/c.llmosms";
    ASSERT_EQ(ctl("ms save c " + file).status, 0);
    ASSERT_EQ(ctl("ms write c second").status, 0);
    ASSERT_EQ(ctl("ms save c " + file).status, 0); // over the first
    ASSERT_EQ(ctl("ms rm c").status, 0);
    ASSERT_EQ(ctl("ms load " + file).status, 0);
    EXPECT_EQ(ctl("ms read c --length 6").output, "second");
    // Files it must not replace: a device, the mindspace's own store file.
    auto r = ctl("ms save c /dev/null");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("not a regular file"), std::string::npos) << r.output;
    const auto id = ctl("--json ms info c").output;
    const auto at = id.find("\"id\": ");
    ASSERT_NE(at, std::string::npos) << id;
    const std::string own = _dir + "/store/ms/" + std::to_string(std::stoul(id.substr(at + 6)));
    r = ctl("ms save c " + own);
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("own file"), std::string::npos) << r.output;
    EXPECT_EQ(ctl("ms read c --length 6").output, "second") << "the mindspace is intact";
    // Nothing is left beside the file.
    EXPECT_EQ(::system(("test $(ls " + _dir + " | wc -l) -eq 2").c_str()), 0);
}

// ms write - reads into the mindspace itself, not into memory first: with
// less data memory (RLIMIT_DATA; the mindspace's shared mapping does not
// count) than the input, it still goes in.
TEST_F(llmosctl_local, standard_input_is_written_without_holding_it_in_memory) {
    ASSERT_EQ(ctl("ms create big --size 256M").status, 0);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // A sanitizer's shadow memory does not fit the limit: the bytes are
    // checked here, the memory it takes in the default lane.
    const std::string limit;
#else
    const std::string limit = "ulimit -d 65536 && ";
#endif
    auto r = run_shell("head -c 100663296 /dev/zero | tr '\\0' x | (" + limit + env() +
                       llmos::testing::llmosctl_bin +
                       " --backend local --json ms write big --offset 4096 -) 2>&1");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output, nullptr, false);
    EXPECT_EQ(j.value("bytes", 0u), 100663296u) << r.output;
    EXPECT_EQ(ctl("ms read big --offset 4095 --length 3").output, std::string("\0xx", 3));
    EXPECT_EQ(ctl("ms read big --offset 100667391 --length 2").output, std::string("x\0", 2));
}

TEST_F(llmosctl_local, standard_input_is_read_no_further_than_fits) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    // /dev/zero never ends: refused once a byte more than fits came.
    auto r = ctl("ms write c --offset 4096 - </dev/zero");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("more than the 4096 bytes that fit"), std::string::npos) << r.output;
    r = ::run_with_env("printf abc | " + env(), "--backend local ms write c --offset 8190 -");
    EXPECT_EQ(r.status, 2) << r.output; // one byte too many
    r = ::run_with_env("printf ab | " + env(), "--backend local ms write c --offset 8190 -");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(ctl("ms read c --offset 8190").output, "ab");
}

TEST_F(llmosctl_local, negative_offsets_and_lengths_are_refused) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    ASSERT_EQ(ctl("ms write c abc").status, 0);
    // -1 would wrap to the largest offset, or a length of "everything".
    for (const char* args :
         {"ms read c --length -1", "ms read c --offset -1", "ms write c x --offset -1"}) {
        auto r = ctl(args);
        EXPECT_EQ(r.status, 2) << args << ": " << r.output;
        EXPECT_NE(r.output.find("must not be negative"), std::string::npos)
            << args << ": " << r.output;
    }
    EXPECT_EQ(ctl("ms read c --length 3").output, "abc");
    // A length of 0 reads nothing (not everything); a negative node is no node.
    auto r = ctl("ms read c --length 0");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output, "");
    r = ctl("ms create d --size 8K --node -5");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("must not be negative"), std::string::npos) << r.output;
    EXPECT_EQ(ctl("ms info d").status, 1) << "not made";
}

TEST_F(llmosctl_local, a_save_cut_short_by_a_signal_leaves_nothing_beside_the_file) {
    ASSERT_EQ(ctl("ms create big --size 64M").status, 0);
    ASSERT_EQ(::system(("head -c 67108864 /dev/urandom >" + _dir + "/rand").c_str()), 0);
    ASSERT_EQ(ctl("ms write big - <" + _dir + "/rand").status, 0);
    const std::string file = _dir + "/out/big.llmosms";
    ASSERT_EQ(::system(("mkdir " + _dir + "/out").c_str()), 0);
    // Interrupted early, midway or late: no temporary file stays, and the
    // file is either not there or whole.
    // (timeout, not a shell's "&": that would start it with SIGINT ignored.)
    for (const char* sig_delay : {"INT 0.01", "INT 0.05", "TERM 0.08", "INT 0.12", "HUP 0.2"}) {
        const std::string delay = sig_delay;
        const std::string cmd = "cd " + _dir + " && " + env() + "timeout -s " + delay + " " +
                                llmos::testing::llmosctl_bin + " --backend local ms save big " +
                                file + " >/dev/null 2>&1; true";
        ASSERT_EQ(::system(cmd.c_str()), 0) << cmd;
        EXPECT_EQ(
            ::system(
                ("test $(ls -A " + _dir + "/out | grep -vx big.llmosms | wc -l) -eq 0").c_str()),
            0)
            << "a file beside the save after a signal at " << delay << " s";
        if (::access(file.c_str(), F_OK) == 0) {
            ASSERT_EQ(ctl("ms load " + file + " --name copy").status, 0) << delay;
            ASSERT_EQ(ctl("ms read copy >" + _dir + "/copy").status, 0);
            EXPECT_EQ(::system(("cmp -s " + _dir + "/rand " + _dir + "/copy").c_str()), 0);
            ASSERT_EQ(ctl("ms rm copy").status, 0);
            ::unlink(file.c_str());
        }
    }
    // A save sent `sig` while it runs (its temporary file is there:
    // llmosctl has set up how it takes signals), not before nor after;
    // `ignored`: as nohup does, before the program starts (no race with
    // it). Its wait status.
    auto signalled_while_saving = [&](int sig, bool ignored) {
        const std::string cmd = "cd " + _dir + " && " + env() + "exec " +
                                llmos::testing::llmosctl_bin + " --backend local ms save big " +
                                file + " >/dev/null 2>&1";
        const pid_t child = ::fork();
        if (child == 0) {
            if (ignored) {
                ::signal(sig, SIG_IGN);
            }
            ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
            ::_exit(127);
        }
        bool saving = false;
        for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
             child > 0 && !saving && std::chrono::steady_clock::now() < until;) {
            std::error_code ec;
            for (const auto& e : std::filesystem::directory_iterator(_dir + "/out", ec)) {
                saving |= e.path().filename() != "big.llmosms";
            }
        }
        int st = -1;
        if (child > 0) {
            ::kill(child, sig);
            ::waitpid(child, &st, 0);
        }
        EXPECT_TRUE(saving) << "no temporary file was seen: the signal came outside the save";
        return st;
    };
    // Interrupted while saving: not saved, nothing left, and the process
    // ends by the signal (its status says so to the shell).
    int st = signalled_while_saving(SIGINT, false);
    EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT) << "status " << st;
    EXPECT_EQ(::system(("test -z \"$(ls -A " + _dir + "/out)\"").c_str()), 0)
        << "an interrupted save left a file";
    // An ignored signal (nohup's SIGHUP) is no interrupt: the save ends.
    st = signalled_while_saving(SIGHUP, true);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st;
    ASSERT_EQ(ctl("ms load " + file + " --name copy").status, 0);
    ASSERT_EQ(ctl("ms read copy >" + _dir + "/copy").status, 0);
    EXPECT_EQ(::system(("cmp -s " + _dir + "/rand " + _dir + "/copy").c_str()), 0);
}

TEST_F(llmosctl_local, output_that_cannot_be_written_is_a_failure) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    auto r = run("--backend local ms list >/dev/full 2>" + _dir + "/err; cat " + _dir + "/err");
    EXPECT_NE(r.output.find("cannot write the output"), std::string::npos) << r.output;
    EXPECT_NE(::system(("LLMOS_LOCAL_DIR=" + _dir + "/store " +
                        std::string(llmos::testing::llmosctl_bin) +
                        " --backend local ms read c --length 16 >/dev/full 2>/dev/null")
                           .c_str()),
              0);
    // top too: it would go on for ever.
    r = run("--backend local top --interval 0.01 >/dev/full 2>" + _dir + "/err; echo rc=$?; cat " +
            _dir + "/err");
    EXPECT_NE(r.output.find("rc=1"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("cannot write the output"), std::string::npos) << r.output;
}

} // namespace

namespace {

TEST_F(llmosctl_local, sched_status_and_bench_run_on_the_local_backend) {
    auto r = ctl("sched status");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("policy:    built-in"), std::string::npos) << r.output;
    r = ctl("--json bench --workers 2 --service exp:1 --arrival poisson:2000 --requests 200");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("\"requests\": 200"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"sojourn_ms\""), std::string::npos) << r.output;
    r = ctl("--json top --interval 0.05 --iterations 2");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("\"tokens_per_s\""), std::string::npos) << r.output;
}

// With several tenants, bench gives each one's times (every request
// counted once), as rows in text and an array in JSON.
TEST_F(llmosctl_local, bench_reports_each_tenant_s_times) {
    auto r = ctl("--json bench --workers 2 --tenants 3 --service exp:1 --arrival poisson:2000 "
                 "--requests 150");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    ASSERT_TRUE(j.contains("tenants")) << r.output;
    ASSERT_EQ(j["tenants"].size(), 3u) << r.output;
    size_t total = 0;
    double weighted_wait = 0;
    for (size_t i = 0; i < 3; ++i) {
        const auto& t = j["tenants"][i];
        EXPECT_EQ(t.value("tenant", 99u), i) << t.dump();
        const size_t n = t.value("requests", size_t(0));
        EXPECT_GT(n, 0u) << t.dump();
        total += n;
        EXPECT_LE(t["wait_ms"]["mean"].get<double>(), t["sojourn_ms"]["mean"].get<double>());
        EXPECT_LE(t["wait_ms"]["p50"].get<double>(), t["wait_ms"]["p99"].get<double>());
        weighted_wait += double(n) * t["wait_ms"]["mean"].get<double>();
    }
    EXPECT_EQ(total, 150u);
    // The tenants' means make the whole run's.
    EXPECT_NEAR(weighted_wait / 150, j["wait_ms"]["mean"].get<double>(), 1e-6);

    r = ctl("bench --workers 2 --tenants 2 --service exp:1 --arrival poisson:2000 --requests 60");
    ASSERT_EQ(r.status, 0) << r.output;
    const size_t head = r.output.find("\nTENANT ");
    ASSERT_NE(head, std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\n0 ", head), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\n1 ", head), std::string::npos) << r.output;

    r = ctl("--json bench --workers 1 --service exp:1 --arrival poisson:2000 --requests 20");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("\"tenants\""), std::string::npos) << "one tenant: " << r.output;
}

TEST_F(llmosctl_local, bench_and_sched_usage_errors) {
    auto r = ctl("bench --service uniform:3");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("bad --service"), std::string::npos) << r.output;
    r = ctl("bench --arrival poisson:-1");
    EXPECT_EQ(r.status, 2) << r.output;
    r = ctl("bench --workers 0");
    EXPECT_EQ(r.status, 2) << r.output;
    // More than a worker may hold: refused at once, not after 30 s.
    r = ctl("bench --capacity 65536 --requests 5");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("--capacity 1..4096"), std::string::npos) << r.output;
    // Infinite, vanishing or absurd distributions measure nothing.
    for (const char* bad : {"--service exp:inf", "--service exp:nan", "--service exp:0",
                            "--arrival poisson:1e-300", "--arrival poisson:1e300"}) {
        r = ctl(std::string("bench --requests 5 ") + bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
    }
    // A weight would go with this process's own scheduler.
    r = ctl("sched weight 1 300");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("tenant weights need the llmos module"), std::string::npos) << r.output;
    for (const char* bad : {"0", "nan", "inf", "1e300", "-1"}) {
        r = ctl(std::string("top --interval ") + bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
    }
    r = ctl("top --iterations -1");
    EXPECT_EQ(r.status, 2) << r.output;
}

} // namespace

namespace {

// Integers are decimal, whatever their leading zeros: CLI11 alone would
// read "0100" as octal 64, "0x10" as hex, and cap what overflows.
TEST_F(llmosctl_local, integer_options_are_decimal_only) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    auto r = ctl("ms write c hello --offset 0100");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(ctl("ms read c --offset 100 --length 5").output, "hello");
    EXPECT_EQ(ctl("ms read c --offset 64 --length 5").output, std::string(5, '\0'));
    EXPECT_EQ(ctl("ms read c --offset 0100 --length 05").output, "hello");
    for (const char* bad :
         {"ms write c x --offset 0x10", "ms read c --length 1e3", "ms read c --offset +1",
          "sched weight 0x10 300", "sched weight 7 0x20", "top --iterations 0x2",
          "bench --workers 0x2 --requests 5", "bench --capacity 0b1 --requests 5"}) {
        r = ctl(bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
        EXPECT_NE(r.output.find("is not a decimal integer"), std::string::npos)
            << bad << ": " << r.output;
    }
    // Too large for the variable: refused, not capped.
    for (const char* big : {"ms read c --offset 18446744073709551616",
                            "bench --seed 99999999999999999999 --requests 5",
                            "sched weight 4294967296 300", "bench --requests 2147483648"}) {
        r = ctl(big);
        EXPECT_EQ(r.status, 2) << big << ": " << r.output;
        EXPECT_NE(r.output.find("is out of range"), std::string::npos) << big << ": " << r.output;
    }
    // The llmosd commands' integers, refused before any connection.
    for (const char* bad : {"run --seed 99999999999999999999 hi", "run --priority 0x10 hi",
                            "run -n 0x10 hi", "chat --max-tokens 4294967296"}) {
        r = ctl(std::string("--server http://127.0.0.1:1 ") + bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
        EXPECT_EQ(r.output.find("cannot reach"), std::string::npos) << bad << ": " << r.output;
    }
}

// --capacity lets one worker hold that many requests at once.
TEST_F(llmosctl_local, bench_workers_hold_up_to_their_capacity) {
    // 40 requests arrive within ~20 ms; each takes 50 ms on average: the
    // queue stays long, and a worker refills what it holds at once.
    for (unsigned capacity : {1u, 4u}) {
        auto r = ctl("--json bench --workers 1 --capacity " + std::to_string(capacity) +
                     " --service exp:50 --arrival poisson:2000 --requests 40");
        ASSERT_EQ(r.status, 0) << r.output;
        const auto j = nlohmann::json::parse(r.output, nullptr, false);
        ASSERT_TRUE(j.is_object()) << r.output;
        EXPECT_EQ(j.value("capacity", 0u), capacity) << r.output;
        EXPECT_EQ(j.value("max_held", 0u), capacity) << r.output;
    }
    // More than one DISPATCH takes (256): asked for at most that at a time
    // (a worker asking for more got EINVAL, for ever).
    auto r = ctl("--json bench --workers 1 --capacity 300 --service exp:50 --arrival "
                 "poisson:2000 --requests 100 --timeout 20");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j.value("capacity", 0u), 300u) << r.output;
    EXPECT_GE(j.value("max_held", 0u), 2u) << r.output;
}

TEST_F(llmosctl_local, a_set_llmos_device_is_used_without_fallback) {
    const std::string env = "env -u LLMOS_BACKEND LLMOS_DEVICE=/nonexistent/llmos ";
    auto r = ::run_with_env(env + this->env(), "status");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: cannot open /nonexistent/llmos ($LLMOS_DEVICE): No such file "
                        "or directory (is the llmos module loaded? insmod llmos.ko)\n");
    // --backend local still means the local store.
    r = ::run_with_env(env + this->env(), "--backend local status");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("backend:  local"), std::string::npos) << r.output;
    // --device names the kernel backend's device: not with --backend local.
    r = ctl("--device /dev/llmos status");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("cannot go with --backend local"), std::string::npos) << r.output;
}

TEST_F(llmosctl_local, an_opt_takes_one_value_and_leaves_the_file) {
    // The file is the argument, not a second --opt: so the command runs
    // (and says the local backend has no BPF policies).
    auto r = ctl("sched attach --opt a=1 --opt b=2 /nonexistent/policy.bpf.o");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("BPF policies need the llmos module"), std::string::npos) << r.output;
    // One that is no NAME=VALUE is a usage error, before any backend.
    for (const char* bad : {"--opt bogus", "--opt =1", "--opt a=1 --opt b"}) {
        r = ctl(std::string("sched attach ") + bad + " /nonexistent/policy.bpf.o");
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
        EXPECT_NE(r.output.find("(NAME=VALUE)"), std::string::npos) << bad << ": " << r.output;
    }
}

TEST_F(llmosctl_local, weights_out_of_range_are_usage_errors) {
    for (const char* bad : {"sched weight 7 0", "sched weight 7 10001", "sched weight 7 20000"}) {
        auto r = ctl(bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
        EXPECT_NE(r.output.find("10000"), std::string::npos) << bad << ": " << r.output;
    }
    // In range: on to the backend (which has no weights here).
    EXPECT_EQ(ctl("sched weight 7 10000").status, 1);
    EXPECT_EQ(ctl("sched weight 7 1").status, 1);
}

// The local backend keeps no users apart: any process names any tenant,
// and there is nothing to grant.
TEST_F(llmosctl_local, tenant_grants_are_shown_and_need_the_module_to_change) {
    auto r = ctl("sched grant");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output, "this user: any tenant (the local backend keeps no users apart)\n");
    r = ctl("--json sched grant 1000");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output, nullptr, false);
    EXPECT_EQ(j.value("first", 1u), 0u) << r.output;
    EXPECT_EQ(j.value("last", 0u), UINT32_MAX) << r.output;
    EXPECT_EQ(j.value("uid", 0u), 1000u) << r.output;
    for (const char* change :
         {"sched grant 1000 100-199", "sched grant 1000 all", "sched grant 1000 --reset",
          "sched grant 1000 --worker", "sched grant 1000 5 --no-worker"}) {
        r = ctl(change);
        EXPECT_EQ(r.status, 1) << change << ": " << r.output;
        EXPECT_NE(r.output.find("tenant grants need the llmos module"), std::string::npos)
            << change << ": " << r.output;
    }
    for (const char* bad :
         {"sched grant 1000 9-3", "sched grant 1000 1-", "sched grant 1000 -5",
          "sched grant 1000 0x10", "sched grant 1000 1-4294967296", "sched grant 1000 5 --reset",
          "sched grant --reset", "sched grant no-such-user-here 1", "sched grant 4294967295",
          "sched grant --worker", "sched grant 1000 --worker --no-worker",
          "sched grant 1000 --reset --worker", "sched grant 1000 --reset --no-worker"}) {
        r = ctl(bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
    }
}

TEST_F(llmosctl_local, a_name_option_does_not_take_the_next_option) {
    for (const char* bad :
         {"ms load /dev/null --name --json", "run --session --json hi", "run -m --json hi",
          "chat --model --verbose", "--server --json run hi", "--device --json status",
          "ms create x --size --json", "ms create x --size 8K --mode --json",
          "ms quota --uid --json", "ms quota --set --json", "bench --service --json",
          "bench --arrival --json", "--server http://127.0.0.1:1 run --system --json hi",
          "--server http://127.0.0.1:1 chat --system --verbose"}) {
        auto r = ctl(bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
        EXPECT_NE(r.output.find("needs a value, not the option '--"), std::string::npos)
            << bad << ": " << r.output;
    }
}

// A system message may still begin with "--" when it is more than a word.
TEST_F(llmosctl_local, a_system_message_may_begin_with_dashes) {
    auto r = ctl("--server http://127.0.0.1:1 run --system '-- be brief' hi");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("cannot reach llmosd"), std::string::npos) << r.output;
}

TEST_F(llmosctl_local, a_prompt_on_standard_input_is_capped) {
    auto r = ::run_with_env("head -c 16777217 /dev/zero | ", "--server http://127.0.0.1:1 run -");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_EQ(r.output, "llmosctl: the prompt on standard input is longer than 16 MiB\n");
    // Never-ending input ends too.
    r = ::run_with_env("timeout 60 ", "--server http://127.0.0.1:1 run - </dev/zero");
    EXPECT_EQ(r.status, 2) << r.output;
}

TEST_F(llmosctl_local, an_output_failure_is_reported_once) {
    ASSERT_EQ(ctl("ms create c --size 1M").status, 0);
    auto r = run("--backend local ms read c >/dev/full 2>" + _dir + "/err; echo rc=$?; cat " +
                 _dir + "/err");
    EXPECT_NE(r.output.find("rc=1\n"), std::string::npos) << r.output;
    const auto err = r.output.substr(r.output.find('\n') + 1);
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_NE(err.find("llmosctl: "), std::string::npos) << err;
}

TEST_F(llmosctl_local, a_save_keeps_the_file_s_permissions) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    const std::string file = _dir + "/c.llmosms";
    auto mode_of = [](const std::string& path) {
        struct stat st {};
        return ::stat(path.c_str(), &st) == 0 ? st.st_mode & 07777 : 0u;
    };
    // A new file: 0666 less the umask, as a plain create.
    auto r = run_shell("umask 022; " + env() + llmos::testing::llmosctl_bin +
                       " --backend local ms save c " + file + " 2>&1");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(mode_of(file), 0644u);
    // Over an old one: its bits.
    ASSERT_EQ(::chmod(file.c_str(), 0640), 0);
    ASSERT_EQ(ctl("ms save c " + file).status, 0);
    EXPECT_EQ(mode_of(file), 0640u);
    ASSERT_EQ(::chmod(file.c_str(), 0604), 0);
    ASSERT_EQ(ctl("--json ms save c " + file).status, 0);
    EXPECT_EQ(mode_of(file), 0604u);
}

TEST_F(llmosctl_local, ms_create_checks_names_and_sizes_itself) {
    for (const char* bad :
         {"ms create a/b --size 8K", "ms create 123 --size 8K", "ms create .x --size 8K",
          "ms create "
          "a234567890123456789012345678901234567890123456789012345678901234 "
          "--size 8K"}) {
        auto r = ctl(bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
        EXPECT_NE(r.output.find("bad mindspace name"), std::string::npos)
            << bad << ": " << r.output;
    }
    auto r = ctl("ms create c --size 5000");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("not a multiple of the page size"), std::string::npos) << r.output;
    EXPECT_EQ(ctl("ms create c --size 0").status, 2);
    EXPECT_EQ(ctl("ms info c").status, 1) << "not made";
}

// A path or store directory need not be UTF-8: --json writes U+FFFD for
// such bytes instead of failing after the work was done.
TEST_F(llmosctl_local, json_output_of_bytes_that_are_not_utf8) {
    ASSERT_EQ(ctl("ms create a1 --size 8K").status, 0);
    auto r = ctl("--json ms save a1 \"$(printf '" + _dir + "/sv\\377.ms')\"");
    ASSERT_EQ(r.status, 0) << r.output;
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j.value("file", ""), _dir + "/sv\xef\xbf\xbd.ms");
    r = ::run_with_env("LLMOS_LOCAL_DIR=\"$(printf '" + _dir + "/st\\377')\" ",
                       "--backend local --json status");
    ASSERT_EQ(r.status, 0) << r.output;
    j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j.value("device", ""), _dir + "/st\xef\xbf\xbd");
}

// A well-formed name or id that names nothing.
TEST_F(llmosctl_local, a_missing_mindspace_is_said_so) {
    auto r = ctl("ms info 99");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: mindspace '99': no such mindspace\n");
    r = ctl("ms read nothere");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "llmosctl: cannot open mindspace 'nothere': no such mindspace\n");
}

TEST_F(llmosctl_local, json_output_of_commands_that_print_no_table) {
    ASSERT_EQ(ctl("ms create c --size 8K").status, 0);
    auto r = ctl("--json ms write c hello --offset 10");
    ASSERT_EQ(r.status, 0) << r.output;
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j.value("ok", false), true);
    EXPECT_EQ(j.value("bytes", 0), 5);
    EXPECT_EQ(j.value("offset", 0), 10);
    r = ctl("--json ms save c " + _dir + "/c.llmosms");
    ASSERT_EQ(r.status, 0) << r.output;
    j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j.value("file", ""), _dir + "/c.llmosms");
    r = ctl("--json ms rm c");
    ASSERT_EQ(r.status, 0) << r.output;
    j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j.value("removed", ""), "c");
}

} // namespace

namespace {

// bench's percentiles, by nearest rank: the p99 of 100 values is the 99th,
// not the largest; the p50 of two is the smaller.
TEST(llmosctl, percentiles_are_by_nearest_rank) {
    std::vector<double> v;
    for (int i = 1; i <= 100; ++i) {
        v.push_back(i);
    }
    EXPECT_EQ(llmosctl::nearest_rank(v, 0.99), 99);
    EXPECT_EQ(llmosctl::nearest_rank(v, 0.5), 50);
    EXPECT_EQ(llmosctl::nearest_rank(v, 1.0), 100);
    EXPECT_EQ(llmosctl::nearest_rank(v, 0.001), 1);
    const std::vector<double> two{1, 2};
    EXPECT_EQ(llmosctl::nearest_rank(two, 0.5), 1);
    EXPECT_EQ(llmosctl::nearest_rank(two, 0.99), 2);
    const std::vector<double> one{7};
    EXPECT_EQ(llmosctl::nearest_rank(one, 0.5), 7);
    EXPECT_EQ(llmosctl::nearest_rank(one, 0.99), 7);
    EXPECT_EQ(llmosctl::nearest_rank(std::vector<double>{}, 0.5), 0);
    // 1000 values: p99 is the 990th.
    v.clear();
    for (int i = 1; i <= 1000; ++i) {
        v.push_back(i);
    }
    EXPECT_EQ(llmosctl::nearest_rank(v, 0.99), 990);
}

TEST_F(llmosctl_local, bench_p50_of_two_requests_is_the_smaller) {
    auto r = ctl("--json bench --workers 1 --service exp:5 --arrival poisson:2000 --requests 2");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    for (const char* k : {"wait_ms", "sojourn_ms"}) {
        const auto& t = j[k];
        // Of two values, the smaller is at most their mean, the larger at least.
        EXPECT_LE(t["p50"].get<double>(), t["mean"].get<double>()) << k << ": " << r.output;
        EXPECT_GE(t["p99"].get<double>(), t["mean"].get<double>()) << k << ": " << r.output;
    }
    EXPECT_LT(j["sojourn_ms"]["p50"].get<double>(), j["sojourn_ms"]["p99"].get<double>())
        << r.output;
}

// A bench that gives up stops its workers at once, whatever they hold (the
// one request here is served for minutes), and says it timed out.
TEST_F(llmosctl_local, a_bench_that_times_out_ends_at_once) {
    auto r = ::run_with_env(env() + "timeout 100 ",
                            "--backend local bench --requests 1 --workers 1 --service exp:60000 "
                            "--seed 3 --timeout 1");
    EXPECT_EQ(r.status, 1) << r.output; // 124: still serving after 100 s
    EXPECT_NE(r.output.find("llmosctl: bench: timed out (no request finished in 1 s; --timeout): "
                            "0 of 1 requests finished"),
              std::string::npos)
        << r.output;
    for (const char* bad : {"--timeout 0", "--timeout -1", "--timeout nan", "--timeout 1e300"}) {
        r = ctl(std::string("bench --requests 1 ") + bad);
        EXPECT_EQ(r.status, 2) << bad << ": " << r.output;
    }
}

// A load with no room for the mindspace's pages (a 1 MiB tmpfs under the
// store, 4 MiB of data) fails with a clear line and keeps nothing, instead
// of dying of SIGBUS with the mindspace half-loaded.
TEST_F(llmosctl_local, a_load_that_runs_out_of_space_keeps_nothing) {
    ASSERT_EQ(ctl("ms create big --size 4M").status, 0);
    ASSERT_EQ(::system(("head -c 4194304 /dev/urandom >" + _dir + "/rand").c_str()), 0);
    ASSERT_EQ(ctl("ms write big - <" + _dir + "/rand").status, 0);
    const std::string file = _dir + "/big.llmosms";
    ASSERT_EQ(ctl("ms save big " + file).status, 0);
    ASSERT_EQ(::system(("mkdir " + _dir + "/small").c_str()), 0);
    // A mount namespace of its own (as root, or in a user namespace).
    const std::string small = "LLMOS_LOCAL_DIR=" + _dir + "/small/store ";
    const std::string ctl_bin = std::string(llmos::testing::llmosctl_bin) + " --backend local ";
    const std::string script = "mount -t tmpfs -o size=1M none " + _dir + "/small || exit 99; " +
                               small + ctl_bin + "ms load " + file + "; echo rc=$?; " + small +
                               ctl_bin + "--json ms list; ls -A " + _dir + "/small/store/ms";
    auto r = run_shell("unshare -rm sh -c '" + script + "' 2>&1");
    if (r.status == 99 || r.output.find("rc=") == std::string::npos) {
        GTEST_SKIP() << "cannot mount a small tmpfs here: " << r.output;
    }
    EXPECT_NE(r.output.find("llmosctl: no space left while loading " + file +
                            " into mindspace 'big' (4M): the local store " + _dir +
                            "/small/store is full; nothing was kept\nrc=1\n"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("rc=1\n[]\n"), std::string::npos) << "no mindspace left: " << r.output;
    EXPECT_EQ(r.output.substr(r.output.find("[]\n") + 3), "") << "no file left: " << r.output;
}

// A write of command-line data with no room for its pages (a 64 KiB
// tmpfs under the store) fails with a clear line, as one from standard
// input does, instead of dying of SIGBUS.
TEST_F(llmosctl_local, a_write_that_runs_out_of_space_says_so) {
    ASSERT_EQ(::system(("mkdir " + _dir + "/small").c_str()), 0);
    const std::string small = "LLMOS_LOCAL_DIR=" + _dir + "/small/store ";
    const std::string ctl_bin = std::string(llmos::testing::llmosctl_bin) + " --backend local ";
    const std::string script = "mount -t tmpfs -o size=64k none " + _dir + "/small || exit 99; " +
                               small + ctl_bin + "ms create big --size 1M; " + small + ctl_bin +
                               "ms write big \"$(head -c 100000 /dev/zero | tr \\\\0 a)\"; " +
                               "echo rc=$?; " + small + ctl_bin + "ms write big - </dev/zero; " +
                               "echo rc=$?";
    auto r = run_shell("unshare -rm sh -c '" + script + "' 2>&1");
    if (r.status == 99 || r.output.find("rc=") == std::string::npos) {
        GTEST_SKIP() << "cannot mount a small tmpfs here: " << r.output;
    }
    EXPECT_NE(r.output.find("llmosctl: cannot write into mindspace 'big': no memory or space left "
                            "for its pages (nothing written)\nrc=1\n"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("llmosctl: cannot write standard input into mindspace 'big': no "
                            "memory or space left for its pages after "),
              std::string::npos)
        << r.output;
}

TEST_F(llmosctl_local, bad_mindspace_ids_names_and_files_are_usage_errors) {
    ASSERT_EQ(ctl("ms create a1 --size 8K").status, 0);
    const std::string big_id = "18446744073709551616";
    for (const std::string& cmd :
         std::vector<std::string>{"ms info 0", "ms info 00", "ms info " + big_id, "ms rm 0",
                                  "ms read 0", "ms write 0 x", "ms save 0 " + _dir + "/f"}) {
        auto r = ctl(cmd);
        EXPECT_EQ(r.status, 2) << cmd << ": " << r.output;
        EXPECT_NE(r.output.find("no mindspace has the id"), std::string::npos)
            << cmd << ": " << r.output;
    }
    for (const char* cmd : {"ms info a/b", "ms rm .x", "ms read ..", "ms info +1"}) {
        auto r = ctl(cmd);
        EXPECT_EQ(r.status, 2) << cmd << ": " << r.output;
        EXPECT_NE(r.output.find("bad mindspace name"), std::string::npos)
            << cmd << ": " << r.output;
    }
    auto r = ctl("ms info ''");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_EQ(r.output, "llmosctl: a mindspace's name has 1 to 63 characters\n");
    // Well-formed, but not there: a failure, not a usage error.
    r = ctl("ms info 424242");
    EXPECT_EQ(r.status, 1) << r.output;
    r = ctl("ms info " + big_id.substr(1));
    EXPECT_EQ(r.status, 1) << r.output;
    // ms load checks --name before anything else (the file is not there).
    r = ctl("ms load " + _dir + "/nonexistent --name bad/name");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("bad mindspace name 'bad/name'"), std::string::npos) << r.output;
    r = ctl("ms load " + _dir + "/nonexistent --name ''");
    EXPECT_EQ(r.status, 2) << r.output;
    ASSERT_EQ(ctl("ms save a1 " + _dir + "/a1.llmosms").status, 0);
    r = ctl("ms load " + _dir + "/a1.llmosms --name 123");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("bad mindspace name '123'"), std::string::npos) << r.output;
    r = ctl("ms save a1 ''");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find("the file name is empty"), std::string::npos) << r.output;
    // Larger than either backend holds: the limit, not "Invalid argument".
    for (const char* size : {"32T", "17T", "17592186048512"}) {
        r = ctl(std::string("ms create x --size ") + size);
        EXPECT_EQ(r.status, 2) << size << ": " << r.output;
        EXPECT_NE(r.output.find("is more than a mindspace holds (16T)"), std::string::npos)
            << size << ": " << r.output;
    }
    EXPECT_EQ(ctl("ms info x").status, 1) << "not made";
}

// top prints its interval as given, and says whose scheduler the local
// backend shows.
TEST_F(llmosctl_local, top_prints_its_interval_and_whose_scheduler) {
    auto r = ctl("top --interval 0.01 --iterations 1");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("llmos top - local backend (this process's own, empty scheduler), "
                            "every 0.01 s\n"),
              0u)
        << r.output;
}

} // namespace
