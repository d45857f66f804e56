// SPDX-License-Identifier: MIT
//
// User names to uids through the system's name services (NSS): the full
// llmosctl's half. llmosctl-static links users_static.cc instead.
#include "util.hh"

#include <pwd.h>
#include <vector>

namespace llmosctl {

std::optional<uint32_t> uid_of_user(const std::string& name, int& err) {
    std::vector<char> buf(16384);
    passwd pw{};
    passwd* found = nullptr;
    err = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found);
    if (err != 0 || !found) {
        return std::nullopt;
    }
    return found->pw_uid;
}

} // namespace llmosctl
