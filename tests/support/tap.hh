// SPDX-License-Identifier: MIT
//
// GoogleTest programs that also run in the test VM print TAP there, which
// the VM runner counts.
#pragma once

namespace llmos::test {

/// ::testing::InitGoogleTest, and with --tap (taken out of argv) or
/// LLMOS_TAP=1 the results printed as TAP instead of GoogleTest's output.
void init_gtest(int& argc, char** argv);

} // namespace llmos::test
