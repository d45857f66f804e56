// SPDX-License-Identifier: MIT
//
// llmosctl: command-line control of llmos.
//
// Exit status: 0 success, 1 the operation failed, 2 bad usage.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <llmos/device.hh>
#include <nlohmann/json.hpp>
#include <string>

namespace {

constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

struct options {
    bool json = false;
    std::string device = llmos::default_device_path();
};

/// One clear line for the user, with a hint where one helps.
int fail(const std::string& what, std::error_code ec) {
    std::string hint;
    if (ec == std::errc::no_such_file_or_directory) {
        hint = " (is the llmos module loaded? insmod llmos.ko)";
    } else if (ec == std::errc::permission_denied) {
        hint = " (needs membership of the device's group, or root)";
    }
    std::fprintf(stderr, "llmosctl: %s: %s%s\n", what.c_str(), ec.message().c_str(), hint.c_str());
    return exit_failure;
}

int cmd_status(const options& o) {
    auto dev = llmos::device::open(o.device);
    if (!dev) {
        return fail("cannot open " + o.device, dev.error());
    }
    const auto& v = dev->version();
    auto features = llmos::feature_names(v.features);
    if (o.json) {
        nlohmann::json j = {
            {"backend", "kernel"},
            {"device", dev->path()},
            {"abi", {{"major", v.major}, {"minor", v.minor}}},
            {"features", features},
        };
        std::cout << j.dump(2) << '\n';
        return 0;
    }
    std::string list;
    for (const auto& f : features) {
        list += (list.empty() ? "" : " ") + f;
    }
    std::printf("backend:  kernel\n"
                "device:   %s\n"
                "abi:      %u.%u\n"
                "features: %s\n",
                dev->path().c_str(), v.major, v.minor, list.c_str());
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmosctl: control llmos mindspaces, scheduler and models"};
    app.set_version_flag("--version", std::string{"llmosctl 0.1.0"});
    app.require_subcommand(0, 1);
    options o;
    app.add_flag("--json", o.json, "machine-readable output");
    app.add_option("--device", o.device, "llmos device (default $LLMOS_DEVICE or /dev/llmos)");

    int rc = 0;
    app.add_subcommand("status", "show the module's ABI version and features")->callback([&] {
        rc = cmd_status(o);
    });

    try {
        app.parse(argc, argv);
        if (app.get_subcommands().empty()) {
            std::fprintf(stderr, "llmosctl: a command is required (see llmosctl --help)\n");
            return exit_usage;
        }
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return exit_usage;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmosctl: %s\n", e.what());
        return exit_failure;
    }
    return rc;
}
