// SPDX-License-Identifier: MIT
//
// llmosctl-static's half of the llmosd commands: linked statically for the
// test VM's initramfs, without cpp-httplib, it knows the commands (so that
// --help and scripts see them) but answers that it cannot run them. The
// full llmosctl links server_http.cc instead.
#include "server.hh"
#include "util.hh"

#include <cstdio>

namespace llmosctl {

namespace {

int no_http() {
    std::fprintf(stderr, "llmosctl: this llmosctl was built without HTTP support; use the full "
                         "llmosctl\n");
    return exit_failure;
}

} // namespace

const char* version_line() {
    return "llmosctl 0.1.0 (static, without HTTP)";
}

int cmd_model_list(const server_options&) {
    return no_http();
}

int cmd_model_load(const server_options&, const std::string&, const std::string&) {
    return no_http();
}

int cmd_model_unload(const server_options&, const std::string&) {
    return no_http();
}

int cmd_model_swap(const server_options&, const std::string&, const std::string&) {
    return no_http();
}

int cmd_session_list(const server_options&) {
    return no_http();
}

int cmd_session_rm(const server_options&, const std::string&) {
    return no_http();
}

int cmd_run(const server_options&, const gen_args&) {
    return no_http();
}

int cmd_chat(const server_options&, const gen_args&) {
    return no_http();
}

} // namespace llmosctl
