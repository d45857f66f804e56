// SPDX-License-Identifier: MIT
//
// The build's paths (tests/CMakeLists.txt defines them for this object only),
// constant-initialized: objects in other files may use them as they start.
#include "paths.hh"

namespace llmos::testing {

constinit const char* const testdata_dir = LLMOS_TESTDATA_DIR;
constinit const char* const reference_dir = LLMOS_REFERENCE_DIR;
constinit const char* const llmosd_bin = LLMOS_LLMOSD_BIN;
constinit const char* const llmosctl_bin = LLMOS_LLMOSCTL_BIN;
constinit const char* const llmosctl_static_bin = LLMOS_LLMOSCTL_STATIC_BIN;
constinit const char* const mkmodel_bin = LLMOS_MKMODEL_BIN;

} // namespace llmos::testing
