// SPDX-License-Identifier: MIT
//
// main() for GoogleTest programs that also run in the test VM: with --tap
// (or LLMOS_TAP=1) the results are printed as TAP, which the VM runner
// counts; otherwise GoogleTest prints as usual.
#include "tap.hh"

#include <gtest/gtest.h>

int main(int argc, char** argv) {
    llmos::test::init_gtest(argc, argv);
    return RUN_ALL_TESTS();
}
