// SPDX-License-Identifier: MIT
//
// Where this build put what the tests read and run. They are defined in
// build_paths.cc, the one test object compiled with the build's absolute
// paths, so that the compiler cache serves every other test object to a
// clone in another folder.
#pragma once

#include <cstdlib>
#include <string>

namespace llmos::testing {

extern const char* const testdata_dir;  ///< ../shared/testdata beside the sources
extern const char* const reference_dir; ///< tests/engine/reference (NumPy)
extern const char* const llmosd_bin;
extern const char* const llmosctl_bin;
extern const char* const llmosctl_static_bin; ///< "" where it is not built
extern const char* const mkmodel_bin;         ///< llmos-mkmodel

/// The llmos-mkmodel to run: $LLMOS_MKMODEL when set, else the build's.
inline std::string mkmodel_path() {
    const char* e = std::getenv("LLMOS_MKMODEL");
    return e && *e ? e : mkmodel_bin;
}

} // namespace llmos::testing
