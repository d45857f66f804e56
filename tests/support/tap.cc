// SPDX-License-Identifier: MIT
//
// GoogleTest results as TAP (tap.hh).
#include "tap.hh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <string>

namespace {

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
            const char* why = "";
            for (int i = 0; i < r->total_part_count(); ++i) {
                if (r->GetTestPartResult(i).skipped()) {
                    why = r->GetTestPartResult(i).message();
                }
            }
            std::printf("ok %d %s # SKIP %s\n", ++_n, name.c_str(), why);
        } else {
            std::printf("%s %d %s\n", r->Failed() ? "not ok" : "ok", ++_n, name.c_str());
        }
        std::fflush(stdout);
    }
};

} // namespace

void llmos::test::init_gtest(int& argc, char** argv) {
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
    if (tap) {
        auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new tap_printer);
    }
}
