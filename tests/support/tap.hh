// SPDX-License-Identifier: MIT
//
// GoogleTest programs that also run in the test VM print TAP there, which
// the VM runner counts.
#pragma once

namespace llmos::test {

/// ::testing::InitGoogleTest, and with --tap (taken out of argv) or
/// LLMOS_TAP=1 the results printed as TAP instead of GoogleTest's output.
/// Returns whether TAP is printed.
bool init_gtest(int& argc, char** argv);

/// The exit status for RUN_ALL_TESTS()'s `result`: without TAP, 77 (the
/// SKIP_RETURN_CODE ctest is given for these programs) when every test
/// that ran was skipped, with each one's reason on stderr ("skip: NAME:
/// REASON"). ctest then counts a skip by the status, not by the output,
/// so a program that skipped and then failed on its way out (a leak or a
/// data race found at exit, a failing suite teardown) fails. A run with no
/// test to run (a filter that matches none) fails. With TAP (the VM counts
/// the TAP lines), `result`.
int exit_status(int result, bool tap);

} // namespace llmos::test
