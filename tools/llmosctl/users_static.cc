// SPDX-License-Identifier: MIT
//
// User names to uids for llmosctl-static: a static program cannot load the
// system's name services, so it reads /etc/passwd alone (the test VM's
// initramfs has nothing else). The full llmosctl links users.cc.
#include "util.hh"

#include <cerrno>
#include <cstdio>
#include <pwd.h>

namespace llmosctl {

std::optional<uint32_t> uid_of_user(const std::string& name, int& err) {
    err = 0;
    FILE* f = std::fopen("/etc/passwd", "re");
    if (!f) {
        err = errno == ENOENT ? 0 : errno;
        return std::nullopt;
    }
    std::optional<uint32_t> uid;
    while (passwd* pw = ::fgetpwent(f)) {
        if (name == pw->pw_name) {
            uid = pw->pw_uid;
            break;
        }
    }
    std::fclose(f);
    return uid;
}

} // namespace llmosctl
