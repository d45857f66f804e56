// SPDX-License-Identifier: MIT
//
// main() for every GoogleTest program of the project. With --tap (or
// LLMOS_TAP=1) the results are printed as TAP, which the VM runner counts;
// otherwise GoogleTest prints as usual, and a run whose tests all skipped
// exits 77, which ctest counts as a skip (tap.hh).
#include "tap.hh"

#include <gtest/gtest.h>

int main(int argc, char** argv) {
    const bool tap = llmos::test::init_gtest(argc, argv);
    return llmos::test::exit_status(RUN_ALL_TESTS(), tap);
}
