// SPDX-License-Identifier: MIT
//
// GoogleTest results as TAP (tap.hh).
#include "tap.hh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <string>

namespace {

// The message of a skipped test's GTEST_SKIP ("" without one).
const char* skip_reason(const ::testing::TestResult& r) {
    const char* why = "";
    for (int i = 0; i < r.total_part_count(); ++i) {
        if (r.GetTestPartResult(i).skipped()) {
            why = r.GetTestPartResult(i).message();
        }
    }
    return why;
}

// Calls fn(test) for each test of the run, in order.
template <typename F>
void for_each_test(const ::testing::UnitTest& u, F&& fn) {
    for (int i = 0; i < u.total_test_suite_count(); ++i) {
        const auto* suite = u.GetTestSuite(i);
        for (int j = 0; j < suite->total_test_count(); ++j) {
            fn(*suite->GetTestInfo(j));
        }
    }
}

class tap_printer : public ::testing::EmptyTestEventListener {
    int _n = 0;

    void OnTestProgramStart(const ::testing::UnitTest& u) override {
        std::printf("TAP version 13\n1..%d\n", u.test_to_run_count());
        std::fflush(stdout);
    }
    void OnTestPartResult(const ::testing::TestPartResult& r) override {
        if (!r.failed()) {
            return;
        }
        std::string msg = std::string{r.file_name() ? r.file_name() : "?"} + ":" +
                          std::to_string(r.line_number()) + ": " + r.message();
        for (size_t pos = 0, nl; pos < msg.size(); pos = nl + 1) {
            nl = msg.find('\n', pos);
            if (nl == std::string::npos) {
                nl = msg.size();
            }
            std::printf("# %.*s\n", static_cast<int>(nl - pos), msg.c_str() + pos);
        }
    }
    void OnTestEnd(const ::testing::TestInfo& t) override {
        const auto* r = t.result();
        std::string name = std::string{t.test_suite_name()} + "." + t.name();
        if (r->Skipped()) {
            std::printf("ok %d %s # SKIP %s\n", ++_n, name.c_str(), skip_reason(*r));
        } else {
            std::printf("%s %d %s\n", r->Failed() ? "not ok" : "ok", ++_n, name.c_str());
        }
        std::fflush(stdout);
    }
};

// GoogleTest's own printer, but for skips: its "[  SKIPPED ]" lines are
// what gtest_discover_tests makes ctest count a skip by, whatever the exit
// status. A skip here is counted by the status (exit_status()), so the
// lines say "[ SKIP     ]" and the summary is this printer's.
class plain_printer : public ::testing::TestEventListener {
    std::unique_ptr<::testing::TestEventListener> _base;

public:
    explicit plain_printer(::testing::TestEventListener* base)
        : _base(base) {}

    void OnTestProgramStart(const ::testing::UnitTest& u) override { _base->OnTestProgramStart(u); }
    void OnTestIterationStart(const ::testing::UnitTest& u, int i) override {
        _base->OnTestIterationStart(u, i);
    }
    void OnEnvironmentsSetUpStart(const ::testing::UnitTest& u) override {
        _base->OnEnvironmentsSetUpStart(u);
    }
    void OnEnvironmentsSetUpEnd(const ::testing::UnitTest& u) override {
        _base->OnEnvironmentsSetUpEnd(u);
    }
    void OnTestSuiteStart(const ::testing::TestSuite& t) override { _base->OnTestSuiteStart(t); }
#ifndef GTEST_REMOVE_LEGACY_TEST_CASEAPI_
    // (Where the legacy names remain, GoogleTest's printer prints a
    // suite's header and footer from these.)
    void OnTestCaseStart(const ::testing::TestCase& t) override {
        _base->OnTestCaseStart(t);
    }
    void OnTestCaseEnd(const ::testing::TestCase& t) override {
        _base->OnTestCaseEnd(t);
    }
#endif
    void OnTestDisabled(const ::testing::TestInfo& t) override {
        _base->OnTestDisabled(t);
    }
    void OnTestStart(const ::testing::TestInfo& t) override {
        _base->OnTestStart(t);
    }
    void OnTestPartResult(const ::testing::TestPartResult& r) override {
        _base->OnTestPartResult(r);
    }
    void OnTestEnd(const ::testing::TestInfo& t) override {
        if (!t.result()->Skipped()) {
            _base->OnTestEnd(t);
            return;
        }
        std::printf("[ SKIP     ] %s.%s (%lld ms)\n", t.test_suite_name(), t.name(),
                    static_cast<long long>(t.result()->elapsed_time()));
        std::fflush(stdout);
    }
    void OnTestSuiteEnd(const ::testing::TestSuite& t) override {
        _base->OnTestSuiteEnd(t);
    }
    void OnEnvironmentsTearDownStart(const ::testing::UnitTest& u) override {
        _base->OnEnvironmentsTearDownStart(u);
    }
    void OnEnvironmentsTearDownEnd(const ::testing::UnitTest& u) override {
        _base->OnEnvironmentsTearDownEnd(u);
    }
    void OnTestIterationEnd(const ::testing::UnitTest& u, int) override {
        std::printf("[==========] %d tests from %d test suites ran. (%lld ms total)\n",
                    u.test_to_run_count(), u.test_suite_to_run_count(),
                    static_cast<long long>(u.elapsed_time()));
        std::printf("[  PASSED  ] %d tests.\n", u.successful_test_count());
        if (u.skipped_test_count()) {
            std::printf("[ SKIP     ] %d tests.\n", u.skipped_test_count());
        }
        if (u.failed_test_count()) {
            std::printf("[  FAILED  ] %d tests, listed below:\n", u.failed_test_count());
        }
        for_each_test(u, [](const ::testing::TestInfo& t) {
            if (t.should_run() && t.result()->Failed()) {
                std::printf("[  FAILED  ] %s.%s", t.test_suite_name(), t.name());
                if (t.value_param()) {
                    std::printf(", where GetParam() = %s", t.value_param());
                }
                std::printf("\n");
            }
        });
        for (int i = 0; i < u.total_test_suite_count(); ++i) {
            // (Its tests then count as skipped, reasonless.)
            if (u.GetTestSuite(i)->ad_hoc_test_result().Failed()) {
                std::printf("[  FAILED  ] %s: its SetUpTestSuite or TearDownTestSuite\n",
                            u.GetTestSuite(i)->name());
            }
        }
        if (u.ad_hoc_test_result().Failed()) {
            std::printf("[  FAILED  ] a global test environment's set-up or tear-down\n");
        }
        if (u.reportable_disabled_test_count()) {
            std::printf("\n  YOU HAVE %d DISABLED TESTS\n\n", u.reportable_disabled_test_count());
        }
        std::fflush(stdout);
    }
    void OnTestProgramEnd(const ::testing::UnitTest& u) override {
        _base->OnTestProgramEnd(u);
    }
};

} // namespace

int llmos::test::exit_status(int result, bool tap) {
    const auto* u = ::testing::UnitTest::GetInstance();
    if (!tap && result == 0 && u->test_to_run_count() == 0 && !GTEST_FLAG_GET(list_tests)) {
        std::fprintf(stderr, "no test to run: the filter matched none\n");
        return 1;
    }
    if (tap || result != 0 || u->skipped_test_count() == 0 || u->successful_test_count() != 0) {
        return result;
    }
    for_each_test(*u, [](const ::testing::TestInfo& t) {
        if (!t.should_run() || !t.result()->Skipped()) {
            return;
        }
        std::string why = skip_reason(*t.result());
        for (char& c : why) {
            c = c == '\n' ? ' ' : c;
        }
        std::fprintf(stderr, "skip: %s.%s: %s\n", t.test_suite_name(), t.name(),
                     why.empty() ? "(no reason given)" : why.c_str());
    });
    return 77;
}

bool llmos::test::init_gtest(int& argc, char** argv) {
    bool tap = std::getenv("LLMOS_TAP") && std::strcmp(std::getenv("LLMOS_TAP"), "1") == 0;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--tap") == 0) {
            tap = true;
            argv[i] = argv[argc - 1];
            --argc;
            break;
        }
    }
    ::testing::InitGoogleTest(&argc, argv);
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    auto* base = listeners.Release(listeners.default_result_printer());
    if (tap) {
        delete base;
        listeners.Append(new tap_printer);
    } else if (base) {
        listeners.Append(new plain_printer(base));
    }
    return tap;
}
