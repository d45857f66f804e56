// SPDX-License-Identifier: MIT
//
// Generated test models for the engine's tests: llmos-mkmodel ($LLMOS_MKMODEL,
// or the build's) writes them into a temporary directory of the test
// program's that goes when the program exits.
#pragma once

#include "paths.hh"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

namespace llmos::testing {

/// The program's directory for generated files, made on first use.
inline const std::string& model_workdir() {
    static const struct dir {
        std::string path;
        dir() {
            char tmpl[] = "/tmp/llmos-test-XXXXXX";
            if (const char* p = ::mkdtemp(tmpl)) {
                path = p;
            }
        }
        ~dir() {
            if (!path.empty()) {
                std::error_code ec;
                std::filesystem::remove_all(path, ec);
            }
        }
    } d;
    return d.path;
}

/// The model llmos-mkmodel writes with `args` (made once per name), or ""
/// with `why` set.
inline std::string generated_model(const std::string& name, const std::string& args,
                                   std::string& why) {
    const std::string mk = mkmodel_path();
    if (model_workdir().empty()) {
        why = "no temporary directory for generated models";
        return {};
    }
    const std::string out = model_workdir() + "/" + name + ".gguf";
    if (!std::filesystem::exists(out)) {
        const std::string cmd = mk + " " + args + " -o " + out + " >/dev/null 2>&1";
        if (std::system(cmd.c_str()) != 0) {
            why = "failed: " + cmd;
            return {};
        }
    }
    return out;
}

} // namespace llmos::testing
