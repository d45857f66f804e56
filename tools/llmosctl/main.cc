// SPDX-License-Identifier: MIT
//
// llmosctl: command-line control of llmos.
//
// Exit status: 0 success, 1 the operation failed, 2 bad usage.
#include "util.hh"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <linux/llmos.h>
#include <llmos/device.hh>
#include <llmos/mindspace.hh>
#include <llmos/ms_file.hh>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

namespace {

using llmosctl::exit_failure;
using llmosctl::fail;
using nlohmann::json;

struct options {
    bool json = false;
    std::string device;  ///< --device: the kernel backend at this path
    std::string backend; ///< --backend: auto, kernel or local
};

llmos::result<llmos::device> open_device(const options& o) {
    if (!o.device.empty() || o.backend == "kernel") {
        return llmos::device::open(o.device.empty() ? llmos::default_device_path() : o.device);
    }
    if (o.backend == "local") {
        return llmos::device::open_local();
    }
    return llmos::device::open_auto();
}

int fail_open(const options& o, std::error_code ec) {
    bool local = o.device.empty() &&
                 (o.backend == "local" || (o.backend.empty() && std::getenv("LLMOS_BACKEND") &&
                                           std::string{std::getenv("LLMOS_BACKEND")} == "local"));
    if (local) {
        return fail("cannot open the local store " + llmos::default_local_dir(), ec);
    }
    if (ec == std::errc::invalid_argument && o.device.empty()) {
        return llmosctl::usage("LLMOS_BACKEND must be auto, kernel or local");
    }
    return llmosctl::fail_device(o.device.empty() ? llmos::default_device_path() : o.device, ec);
}

int cmd_status(const options& o) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    const auto& v = dev->version();
    auto features = llmos::feature_names(v.features);
    const char* backend = llmos::to_string(dev->kind());
    if (o.json) {
        json j = {
            {"backend", backend},
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
    std::printf("backend:  %s\n"
                "%-9s %s\n"
                "abi:      %u.%u\n"
                "features: %s\n",
                backend, dev->kind() == llmos::backend_kind::kernel ? "device:" : "store:",
                dev->path().c_str(), v.major, v.minor, list.c_str());
    return 0;
}

json to_json(const llmos::ms_info& i) {
    return {
        {"id", i.id},
        {"name", i.name},
        {"length", i.length},
        {"resident", i.resident},
        {"backing", i.dmabuf() ? "dmabuf" : "host"},
        {"persistent", i.persistent()},
        {"mode", llmosctl::format_mode(i.mode)},
        {"uid", i.uid},
        {"gid", i.gid},
        {"numa_node", i.numa_node},
        {"maps", i.map_count},
        {"fds", i.open_count},
        {"created_ns", i.created_ns},
    };
}

struct ms_args {
    std::string key;
    std::string size;
    std::string mode;
    int node = -1;
    std::string file;
    std::string name;
    std::string data;
    uint64_t offset = 0;
    uint64_t length = 0;
};

int cmd_ms_create(const options& o, const ms_args& a) {
    auto len = llmosctl::parse_size(a.size);
    if (!len) {
        return llmosctl::usage("bad --size '" + a.size + "' (e.g. 4096, 64K, 16M, 1G)");
    }
    auto mode = llmosctl::parse_mode(a.mode);
    if (!mode) {
        return llmosctl::usage("bad --mode '" + a.mode + "' (octal, e.g. 0640)");
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    llmos::ms_create_options c;
    c.name = a.key;
    c.length = *len;
    c.mode = *mode;
    c.persistent = true; // nothing would keep it alive after llmosctl exits
    if (a.node >= 0) {
        c.node = a.node;
    }
    auto ms = llmos::mindspace::create(*dev, c);
    if (!ms) {
        return fail("cannot create mindspace '" + a.key + "'", ms.error());
    }
    if (o.json) {
        std::cout << json{{"id", ms->id()}, {"name", a.key}, {"length", ms->length()}}.dump(2)
                  << '\n';
    } else {
        std::printf("created mindspace %s (id %llu, %s)\n", a.key.c_str(),
                    static_cast<unsigned long long>(ms->id()),
                    llmosctl::format_size(ms->length()).c_str());
    }
    return 0;
}

int cmd_ms_list(const options& o) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto all = llmos::list_mindspaces(*dev);
    if (!all) {
        return fail("cannot list mindspaces", all.error());
    }
    if (o.json) {
        json j = json::array();
        for (const auto& i : *all) {
            j.push_back(to_json(i));
        }
        std::cout << j.dump(2) << '\n';
        return 0;
    }
    std::printf("%-6s %-24s %10s %10s %-6s %-5s %6s %5s %4s %4s\n", "ID", "NAME", "SIZE",
                "RESIDENT", "BACK", "MODE", "UID", "PERS", "MAPS", "FDS");
    for (const auto& i : *all) {
        std::printf("%-6llu %-24s %10s %10s %-6s %-5s %6u %5s %4u %4u\n",
                    static_cast<unsigned long long>(i.id), i.name.empty() ? "-" : i.name.c_str(),
                    llmosctl::format_size(i.length).c_str(),
                    llmosctl::format_size(i.resident).c_str(), i.dmabuf() ? "dmabuf" : "host",
                    llmosctl::format_mode(i.mode).c_str(), i.uid, i.persistent() ? "yes" : "no",
                    i.map_count, i.open_count);
    }
    return 0;
}

int cmd_ms_info(const options& o, const ms_args& a) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    bool local = dev->kind() == llmos::backend_kind::local; // no map/fd counts there
    auto i = llmos::mindspace_info(*dev, llmos::ms_key::parse(a.key));
    if (!i) {
        return fail("mindspace '" + a.key + "'", i.error());
    }
    if (o.json) {
        std::cout << to_json(*i).dump(2) << '\n';
        return 0;
    }
    std::printf(
        "id:         %llu\n"
        "name:       %s\n"
        "size:       %s (%llu bytes)\n"
        "resident:   %s (%llu bytes)\n"
        "backing:    %s\n"
        "persistent: %s\n"
        "owner:      uid %u gid %u, mode %s\n"
        "numa node:  %s\n"
        "mappings:   %s\n"
        "open fds:   %s\n",
        static_cast<unsigned long long>(i->id), i->name.empty() ? "-" : i->name.c_str(),
        llmosctl::format_size(i->length).c_str(), static_cast<unsigned long long>(i->length),
        llmosctl::format_size(i->resident).c_str(), static_cast<unsigned long long>(i->resident),
        i->dmabuf() ? "dma-buf" : "host", i->persistent() ? "yes" : "no", i->uid, i->gid,
        llmosctl::format_mode(i->mode).c_str(),
        i->numa_node < 0 ? "any" : std::to_string(i->numa_node).c_str(),
        local ? "-" : std::to_string(i->map_count).c_str(),
        local ? "-" : std::to_string(i->open_count).c_str());
    return 0;
}

int cmd_ms_rm(const options& o, const ms_args& a) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto key = llmos::ms_key::parse(a.key);
    if (auto ec = llmos::destroy_mindspace(*dev, key)) {
        if (ec == std::errc::invalid_argument) {
            // The one EINVAL a well-formed key gets: not persistent.
            auto i = llmos::mindspace_info(*dev, key);
            if (i && !i->persistent()) {
                std::fprintf(stderr,
                             "llmosctl: cannot remove mindspace '%s': it is not persistent "
                             "(it goes when its last user closes it)\n",
                             a.key.c_str());
                return exit_failure;
            }
        }
        return fail("cannot remove mindspace '" + a.key + "'", ec);
    }
    if (!o.json) {
        std::printf("removed mindspace %s\n", a.key.c_str());
    }
    return 0;
}

int cmd_ms_write(const options& o, const ms_args& a) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto ms = llmos::mindspace::open(*dev, llmos::ms_key::parse(a.key));
    if (!ms) {
        return fail("cannot open mindspace '" + a.key + "'", ms.error());
    }
    std::string data = a.data;
    if (data == "-") {
        data.assign(std::istreambuf_iterator<char>(std::cin), {});
    }
    if (a.offset > ms->length() || data.size() > ms->length() - a.offset) {
        return llmosctl::usage("data does not fit: " + std::to_string(data.size()) +
                               " bytes at offset " + std::to_string(a.offset) + " of a " +
                               std::to_string(ms->length()) + "-byte mindspace");
    }
    auto m = ms->map();
    if (!m) {
        return fail("cannot map mindspace '" + a.key + "'", m.error());
    }
    std::memcpy(m->data() + a.offset, data.data(), data.size());
    return 0;
}

int cmd_ms_read(const options& o, const ms_args& a) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto ms = llmos::mindspace::open(*dev, llmos::ms_key::parse(a.key), true);
    if (!ms) {
        return fail("cannot open mindspace '" + a.key + "'", ms.error());
    }
    if (a.offset > ms->length()) {
        return llmosctl::usage("offset " + std::to_string(a.offset) + " is past the end");
    }
    uint64_t end = a.offset + (a.length ? std::min(a.length, ms->length() - a.offset)
                                        : ms->length() - a.offset);
    auto m = ms->map();
    if (!m) {
        return fail("cannot map mindspace '" + a.key + "'", m.error());
    }
    auto ranges = ms->data_ranges();
    if (!ranges) {
        return fail("mindspace '" + a.key + "'", ranges.error());
    }
    // Untouched pages are written as zeros without touching (allocating) them.
    static const std::vector<char> zeros(1 << 16);
    uint64_t pos = a.offset;
    auto emit = [&](uint64_t to, bool data) {
        while (pos < to) {
            uint64_t n = data ? to - pos : std::min<uint64_t>(zeros.size(), to - pos);
            const void* src = data ? static_cast<const void*>(m->data() + pos) : zeros.data();
            if (std::fwrite(src, 1, n, stdout) != n) {
                return false;
            }
            pos += n;
        }
        return true;
    };
    for (const auto& r : *ranges) {
        if (r.offset + r.length <= pos || r.offset >= end) {
            continue;
        }
        if (!emit(std::max(r.offset, pos), false) ||
            !emit(std::min(r.offset + r.length, end), true)) {
            return fail("cannot write to standard output", llmos::last_error());
        }
    }
    if (!emit(end, false)) {
        return fail("cannot write to standard output", llmos::last_error());
    }
    return 0;
}

int cmd_ms_save(const options& o, const ms_args& a) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto ms = llmos::mindspace::open(*dev, llmos::ms_key::parse(a.key), true);
    if (!ms) {
        return fail("cannot open mindspace '" + a.key + "'", ms.error());
    }
    auto info = ms->info();
    if (!info) {
        return fail("mindspace '" + a.key + "'", info.error());
    }
    auto m = ms->map();
    if (!m) {
        return fail("cannot map mindspace '" + a.key + "'", m.error());
    }
    llmos::unique_fd out{::open(a.file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600)};
    if (!out) {
        return fail("cannot create " + a.file, llmos::last_error());
    }
    llmos::ms_file_meta meta;
    meta.flags = info->flags & (LLMOS_MS_PERSISTENT | LLMOS_MS_NODE);
    meta.mode = info->mode;
    meta.numa_node = info->numa_node;
    meta.created_ns = info->created_ns;
    meta.name = info->name;
    auto ranges = ms->data_ranges();
    if (!ranges) {
        return fail("mindspace '" + a.key + "'", ranges.error());
    }
    if (auto ec = llmos::save_ms_file(out.get(), meta, m->bytes(), &*ranges)) {
        return fail("cannot save to " + a.file, ec);
    }
    if (::fsync(out.get()) != 0) {
        return fail("cannot save to " + a.file, llmos::last_error());
    }
    if (!o.json) {
        std::printf("saved mindspace %s (%s) to %s\n", a.key.c_str(),
                    llmosctl::format_size(info->length).c_str(), a.file.c_str());
    }
    return 0;
}

int cmd_ms_load(const options& o, const ms_args& a) {
    llmos::unique_fd in{::open(a.file.c_str(), O_RDONLY | O_CLOEXEC)};
    if (!in) {
        return fail("cannot open " + a.file, llmos::last_error());
    }
    auto meta = llmos::read_ms_file_meta(in.get());
    if (!meta) {
        return fail(a.file, meta.error());
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    llmos::ms_create_options c;
    c.name = a.name.empty() ? meta->name : a.name;
    if (c.name.empty()) {
        return llmosctl::usage(a.file + " holds an anonymous mindspace: give it a --name");
    }
    c.length = meta->length;
    c.mode = meta->mode;
    c.persistent = true;
    auto ms = llmos::mindspace::create(*dev, c);
    if (!ms) {
        return fail("cannot create mindspace '" + c.name + "'", ms.error());
    }
    auto m = ms->map();
    std::error_code ec = m ? llmos::load_ms_file_data(in.get(), *meta, m->bytes()) : m.error();
    if (ec) {
        // Leave nothing half-loaded behind.
        (void)llmos::destroy_mindspace(*dev, llmos::ms_key{ms->id(), {}});
        return fail("cannot load " + a.file, ec);
    }
    if (o.json) {
        std::cout << json{{"id", ms->id()}, {"name", c.name}, {"length", ms->length()}}.dump(2)
                  << '\n';
    } else {
        std::printf("loaded %s into mindspace %s (id %llu, %s)\n", a.file.c_str(), c.name.c_str(),
                    static_cast<unsigned long long>(ms->id()),
                    llmosctl::format_size(ms->length()).c_str());
    }
    return 0;
}

int cmd_ms_quota(const options& o, const std::string& uid_arg, const std::string& set_arg) {
    uint32_t uid = llmos::uid_self;
    if (!uid_arg.empty()) {
        auto u = llmosctl::parse_size(uid_arg, false);
        if (!u || *u >= UINT32_MAX) {
            return llmosctl::usage("bad --uid '" + uid_arg + "'");
        }
        uid = static_cast<uint32_t>(*u);
    }
    std::optional<uint64_t> set;
    if (set_arg == "unlimited") {
        set = LLMOS_QUOTA_UNLIMITED;
    } else if (set_arg == "default") {
        set = 0;
    } else if (!set_arg.empty()) {
        set = llmosctl::parse_size(set_arg);
        if (!set || *set == 0) {
            return llmosctl::usage("bad --set '" + set_arg +
                                   "' (a size, 'unlimited' or 'default')");
        }
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    if (dev->kind() == llmos::backend_kind::local) {
        std::fprintf(stderr, "llmosctl: quotas need the llmos module (the local backend has "
                             "none: bound it with the size of its tmpfs)\n");
        return exit_failure;
    }
    auto q = llmos::quota(*dev, uid, set);
    if (!q) {
        return fail("quota", q.error());
    }
    bool unlimited = q->limit == LLMOS_QUOTA_UNLIMITED;
    if (o.json) {
        std::cout << json{{"used", q->used}, {"limit", unlimited ? json(nullptr) : json(q->limit)}}
                         .dump(2)
                  << '\n';
    } else {
        std::printf("used:  %s\nlimit: %s\n", llmosctl::format_size(q->used).c_str(),
                    unlimited ? "unlimited" : llmosctl::format_size(q->limit).c_str());
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmosctl: control llmos mindspaces, scheduler and models"};
    app.set_version_flag("--version", std::string{"llmosctl 0.1.0"});
    app.require_subcommand(0, 1);
    options o;
    app.add_flag("--json", o.json, "machine-readable output");
    app.add_option("--device", o.device,
                   "use the module through this device (default $LLMOS_DEVICE or /dev/llmos)");
    app.add_option("--backend", o.backend,
                   "kernel, local, or auto: the module if /dev/llmos exists, else local "
                   "(default $LLMOS_BACKEND or auto)")
        ->check(CLI::IsMember({"auto", "kernel", "local"}));

    int rc = 0;
    app.add_subcommand("status", "show the module's ABI version and features")->callback([&] {
        rc = cmd_status(o);
    });

    ms_args a;
    std::string quota_uid, quota_set;
    auto* ms = app.add_subcommand("ms", "mindspaces: create, list, info, rm, read, write, "
                                        "save, load, quota");
    ms->require_subcommand(1);
    auto* create = ms->add_subcommand("create", "create a persistent mindspace");
    create->add_option("name", a.key, "its name")->required();
    create->add_option("--size", a.size, "size (bytes; K, M, G, T suffixes)")->required();
    create->add_option("--mode", a.mode, "permission bits, octal (default 0600)");
    create->add_option("--node", a.node, "NUMA node for its pages");
    create->callback([&] { rc = cmd_ms_create(o, a); });
    ms->add_subcommand("list", "list the mindspaces you may read")->callback([&] {
        rc = cmd_ms_list(o);
    });
    auto* info = ms->add_subcommand("info", "show one mindspace");
    info->add_option("mindspace", a.key, "name or id")->required();
    info->callback([&] { rc = cmd_ms_info(o, a); });
    auto* rm = ms->add_subcommand("rm", "remove a persistent mindspace");
    rm->add_option("mindspace", a.key, "name or id")->required();
    rm->callback([&] { rc = cmd_ms_rm(o, a); });
    auto* write = ms->add_subcommand("write", "write bytes into a mindspace");
    write->add_option("mindspace", a.key, "name or id")->required();
    write->add_option("data", a.data, "the bytes, or - for standard input")->required();
    write->add_option("--offset", a.offset, "byte offset (default 0)");
    write->callback([&] { rc = cmd_ms_write(o, a); });
    auto* read = ms->add_subcommand("read", "copy a mindspace's bytes to standard output");
    read->add_option("mindspace", a.key, "name or id")->required();
    read->add_option("--offset", a.offset, "byte offset (default 0)");
    read->add_option("--length", a.length, "bytes (default: to the end)");
    read->callback([&] { rc = cmd_ms_read(o, a); });
    auto* save = ms->add_subcommand("save", "save a mindspace (bytes and metadata) to a file");
    save->add_option("mindspace", a.key, "name or id")->required();
    save->add_option("file", a.file, "file to write")->required();
    save->callback([&] { rc = cmd_ms_save(o, a); });
    auto* load = ms->add_subcommand("load", "create a persistent mindspace from a saved file");
    load->add_option("file", a.file, "file written by ms save")->required();
    load->add_option("--name", a.name, "name to give it (default: the saved name)");
    load->callback([&] { rc = cmd_ms_load(o, a); });
    auto* quota = ms->add_subcommand("quota", "show (or, as root, set) a uid's mindspace quota");
    quota->add_option("--uid", quota_uid, "uid (default: yours)");
    quota->add_option("--set", quota_set, "new limit: a size, 'unlimited' or 'default'");
    quota->callback([&] { rc = cmd_ms_quota(o, quota_uid, quota_set); });

    try {
        app.parse(argc, argv);
        if (app.get_subcommands().empty()) {
            return llmosctl::usage("a command is required (see llmosctl --help)");
        }
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return llmosctl::exit_usage;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmosctl: %s\n", e.what());
        return exit_failure;
    }
    return rc;
}
