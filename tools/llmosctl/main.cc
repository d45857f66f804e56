// SPDX-License-Identifier: MIT
//
// llmosctl: command-line control of llmos.
//
// Exit status: 0 success, 1 the operation failed, 2 bad usage.
//
// Linked twice from the same objects: llmosctl (every command; with
// server_http.cc, those that talk to llmosd) and llmosctl-static (linked
// statically for the test VM's initramfs; no_http.cc says it cannot).
#include "json_text.hh"
#include "options.hh"
#include "server.hh"
#include "util.hh"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <linux/llmos.h>
#include <llmos/device.hh>
#include <llmos/mindspace.hh>
#include <llmos/ms_file.hh>
#include <llmos/sched.hh>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace {

using llmosctl::exit_failure;
using llmosctl::fail;
using llmosctl::json_text;
using nlohmann::json;

struct options {
    bool json = false;
    std::string device;  ///< --device: the kernel backend at this path
    std::string backend; ///< --backend: auto, kernel or local
};

// Which backend open_device() tried last, for fail_open()'s message.
enum class tried { kernel, local, bad_env, conflict };
tried last_tried = tried::kernel;

/// The device a set $LLMOS_DEVICE names, or "".
std::string env_device() {
    const char* env = std::getenv("LLMOS_DEVICE");
    return env && *env ? env : "";
}

/// --device (or a set $LLMOS_DEVICE) or --backend kernel: the module;
/// --backend local: the local store (--device with it is a usage error);
/// --backend auto: the module if its node exists, else the local store;
/// no --backend: as $LLMOS_BACKEND says, auto without it. A device named
/// by --device or $LLMOS_DEVICE never falls back to the local store: a
/// wrong path is an error, not another backend.
llmos::result<llmos::device> open_device(const options& o) {
    if (!o.device.empty() && o.backend == "local") {
        last_tried = tried::conflict;
        return std::make_error_code(std::errc::invalid_argument);
    }
    std::string want = o.backend;
    if (want.empty()) {
        const char* env = std::getenv("LLMOS_BACKEND");
        want = env && *env ? env : "auto";
    }
    if (!o.device.empty() || want == "kernel" || (want == "auto" && !env_device().empty())) {
        last_tried = tried::kernel;
        return llmos::device::open(o.device.empty() ? llmos::default_device_path() : o.device);
    }
    if (want == "local") {
        last_tried = tried::local;
        return llmos::device::open_local();
    }
    if (want != "auto") {
        last_tried = tried::bad_env;
        return std::make_error_code(std::errc::invalid_argument);
    }
    last_tried = tried::kernel;
    auto dev = llmos::device::open();
    if (dev || dev.error() != std::errc::no_such_file_or_directory) {
        return dev;
    }
    last_tried = tried::local;
    return llmos::device::open_local();
}

int fail_open(const options& o, std::error_code ec) {
    switch (last_tried) {
    case tried::bad_env:
        return llmosctl::usage("LLMOS_BACKEND must be auto, kernel or local");
    case tried::conflict:
        return llmosctl::usage("--device names the kernel backend's device: it cannot go with "
                               "--backend local");
    case tried::local:
        return fail("cannot open the local store " + llmos::default_local_dir(), ec);
    case tried::kernel:
        break;
    }
    if (o.device.empty() && !env_device().empty()) {
        return llmosctl::fail_device(env_device() + " ($LLMOS_DEVICE)", ec);
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
        std::cout << json_text(j, 2) << '\n';
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

/// `local`: the local backend, which cannot count mappings and fds (null).
json to_json(const llmos::ms_info& i, bool local) {
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
        {"maps", local ? json(nullptr) : json(i.map_count)},
        {"fds", local ? json(nullptr) : json(i.open_count)},
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
    std::optional<uint64_t> length; ///< ms read: nothing means to the end
};

// What a bad mindspace name is, after "bad mindspace name 'NAME'".
constexpr const char* ms_name_rule = " (1 to 63 characters of A-Z a-z 0-9 . _ : -, starting with a "
                                     "letter, a digit or _, not all digits)";

// The most a mindspace holds: 16 TiB, with either backend (the module's
// LLMOS_MS_MAX_LENGTH in kmod/mindspace.c, the local backend's max_length
// in userspace/lib/local.cc; neither is in a public header).
constexpr uint64_t max_ms_length = uint64_t{1} << 44;

/// The mindspace argument `s` names: an id (decimal, 1 to 2^64 - 1) or a
/// name (as ms create takes it). nullopt, having printed why (a usage
/// error), for anything else: the backends would say only "Invalid
/// argument".
std::optional<llmos::ms_key> ms_key_arg(const std::string& s) {
    if (s.empty()) {
        llmosctl::usage("a mindspace's name has 1 to 63 characters");
        return std::nullopt;
    }
    if (s.find_first_not_of("0123456789") == std::string::npos) {
        std::string why;
        auto id = llmosctl::parse_decimal<uint64_t>(s, false, why);
        if (!id) {
            llmosctl::usage("no mindspace has the id " + s + " (ids are 1 to " +
                            std::to_string(UINT64_MAX) + ")");
            return std::nullopt;
        }
        if (*id == 0) {
            llmosctl::usage("no mindspace has the id " + s + " (ids start at 1)");
            return std::nullopt;
        }
        return llmos::ms_key{*id, {}};
    }
    if (!llmos::valid_ms_name(s)) {
        llmosctl::usage("bad mindspace name '" + s + "'" + ms_name_rule);
        return std::nullopt;
    }
    return llmos::ms_key{0, s};
}

/// fail() for a mindspace named by the user: ENOENT says there is none.
int fail_ms(const std::string& what, std::error_code ec) {
    if (ec == std::errc::no_such_file_or_directory) {
        std::fprintf(stderr, "llmosctl: %s: no such mindspace\n", what.c_str());
        return exit_failure;
    }
    return fail(what, ec);
}

int cmd_ms_create(const options& o, const ms_args& a) {
    auto len = llmosctl::parse_size(a.size);
    if (!len) {
        return llmosctl::usage("bad --size '" + a.size + "' (e.g. 4096, 64K, 16M, 1G)");
    }
    auto mode = llmosctl::parse_mode(a.mode);
    if (!mode) {
        return llmosctl::usage("bad --mode '" + a.mode + "' (octal, e.g. 0640)");
    }
    if (!a.mode.empty() && !*mode) {
        // The module reads mode 0 as the default, 0600.
        return llmosctl::usage("--mode 0 would let no one in: give the bits (e.g. 0600)");
    }
    if (a.key.empty()) {
        return llmosctl::usage("a mindspace's name has 1 to 63 characters");
    }
    if (!llmos::valid_ms_name(a.key)) {
        return llmosctl::usage("bad mindspace name '" + a.key + "'" + ms_name_rule);
    }
    if (*len == 0) {
        return llmosctl::usage("--size must not be 0");
    }
    if (*len > max_ms_length) {
        return llmosctl::usage("--size " + a.size + " is more than a mindspace holds (" +
                               llmosctl::format_size(max_ms_length) + ")");
    }
    if (const uint64_t page = llmos::page_size(); *len % page) {
        return llmosctl::usage("--size " + a.size + " is not a multiple of the page size (" +
                               std::to_string(page) + " bytes)");
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
        std::cout << json_text(json{{"id", ms->id()}, {"name", a.key}, {"length", ms->length()}}, 2)
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
    const bool local = dev->kind() == llmos::backend_kind::local; // no map/fd counts there
    if (o.json) {
        json j = json::array();
        for (const auto& i : *all) {
            j.push_back(to_json(i, local));
        }
        std::cout << json_text(j, 2) << '\n';
        return 0;
    }
    std::printf("%-6s %-24s %10s %10s %-6s %-5s %6s %5s %4s %4s\n", "ID", "NAME", "SIZE",
                "RESIDENT", "BACK", "MODE", "UID", "PERS", "MAPS", "FDS");
    for (const auto& i : *all) {
        std::printf("%-6llu %-24s %10s %10s %-6s %-5s %6u %5s %4s %4s\n",
                    static_cast<unsigned long long>(i.id), i.name.empty() ? "-" : i.name.c_str(),
                    llmosctl::format_size(i.length).c_str(),
                    llmosctl::format_size(i.resident).c_str(), i.dmabuf() ? "dmabuf" : "host",
                    llmosctl::format_mode(i.mode).c_str(), i.uid, i.persistent() ? "yes" : "no",
                    local ? "-" : std::to_string(i.map_count).c_str(),
                    local ? "-" : std::to_string(i.open_count).c_str());
    }
    return 0;
}

int cmd_ms_info(const options& o, const ms_args& a) {
    auto key = ms_key_arg(a.key);
    if (!key) {
        return llmosctl::exit_usage;
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    bool local = dev->kind() == llmos::backend_kind::local; // no map/fd counts there
    auto i = llmos::mindspace_info(*dev, *key);
    if (!i) {
        return fail_ms("mindspace '" + a.key + "'", i.error());
    }
    if (o.json) {
        std::cout << json_text(to_json(*i, local), 2) << '\n';
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
    auto key = ms_key_arg(a.key);
    if (!key) {
        return llmosctl::exit_usage;
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    if (auto ec = llmos::destroy_mindspace(*dev, *key)) {
        if (ec == std::errc::invalid_argument) {
            // The one EINVAL a well-formed key gets: not persistent.
            auto i = llmos::mindspace_info(*dev, *key);
            if (i && !i->persistent()) {
                std::fprintf(stderr,
                             "llmosctl: cannot remove mindspace '%s': it is not persistent "
                             "(it goes when its last user closes it)\n",
                             a.key.c_str());
                return exit_failure;
            }
        }
        return fail_ms("cannot remove mindspace '" + a.key + "'", ec);
    }
    if (o.json) {
        std::cout << json_text(json{{"ok", true}, {"removed", a.key}}, 2) << '\n';
    } else {
        std::printf("removed mindspace %s\n", a.key.c_str());
    }
    return 0;
}

/// ms write NAME -: standard input read straight into the mapped range,
/// a piece at a time (a mindspace may be larger than the memory here).
int write_stdin(const options& o, const ms_args& a, const llmos::mindspace& ms) {
    const uint64_t length = ms.length();
    if (a.offset > length) {
        return llmosctl::usage("offset " + std::to_string(a.offset) + " is past the end of a " +
                               std::to_string(length) + "-byte mindspace");
    }
    const uint64_t room = length - a.offset;
    llmos::result<llmos::mapping> m = std::make_error_code(std::errc::invalid_argument);
    std::span<char> to;
    if (room > 0) {
        m = ms.map(a.offset, room);
        if (!m) {
            return fail("cannot map mindspace '" + a.key + "'", m.error());
        }
        to = {reinterpret_cast<char*>(m->data()), room};
    }
    const auto r = llmosctl::fill_from(STDIN_FILENO, to);
    const std::string after = std::to_string(r.bytes) + " bytes";
    if (r.error == std::errc::bad_address) {
        // A page of the mapping could not be had.
        std::fprintf(stderr,
                     "llmosctl: cannot write standard input into mindspace '%s': no memory or "
                     "space left for its pages after %s\n",
                     a.key.c_str(), after.c_str());
        return exit_failure;
    }
    if (r.error) {
        return fail("cannot read standard input (after " + after + ")", r.error);
    }
    if (r.more) {
        return llmosctl::usage("standard input holds more than the " + std::to_string(room) +
                               " bytes that fit at offset " + std::to_string(a.offset) + " of a " +
                               std::to_string(length) + "-byte mindspace (those " +
                               std::to_string(room) + " were written)");
    }
    if (o.json) {
        std::cout << json_text(json{{"ok", true},
                                    {"mindspace", a.key},
                                    {"offset", a.offset},
                                    {"bytes", r.bytes}},
                               2)
                  << '\n';
    }
    return 0;
}

int cmd_ms_write(const options& o, const ms_args& a) {
    auto key = ms_key_arg(a.key);
    if (!key) {
        return llmosctl::exit_usage;
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto ms = llmos::mindspace::open(*dev, *key);
    if (!ms) {
        return fail_ms("cannot open mindspace '" + a.key + "'", ms.error());
    }
    const uint64_t length = ms->length();
    if (a.data == "-") {
        return write_stdin(o, a, *ms);
    }
    const std::string& data = a.data;
    if (a.offset > length || data.size() > length - a.offset) {
        return llmosctl::usage("data does not fit: " + std::to_string(data.size()) +
                               " bytes at offset " + std::to_string(a.offset) + " of a " +
                               std::to_string(length) + "-byte mindspace");
    }
    auto m = ms->map();
    if (!m) {
        return fail("cannot map mindspace '" + a.key + "'", m.error());
    }
    // (ENOMEM and the rest: the copy finds out, as it always did.)
    if (llmos::detail::make_pages_writable(m->bytes().subspan(a.offset, data.size())) ==
        std::errc::no_space_on_device) {
        std::fprintf(stderr,
                     "llmosctl: cannot write into mindspace '%s': no memory or space left for "
                     "its pages (nothing written)\n",
                     a.key.c_str());
        return exit_failure;
    }
    std::memcpy(m->data() + a.offset, data.data(), data.size());
    if (o.json) {
        std::cout << json_text(json{{"ok", true},
                                    {"mindspace", a.key},
                                    {"offset", a.offset},
                                    {"bytes", data.size()}},
                               2)
                  << '\n';
    }
    return 0;
}

int cmd_ms_read(const options& o, const ms_args& a) {
    auto key = ms_key_arg(a.key);
    if (!key) {
        return llmosctl::exit_usage;
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto ms = llmos::mindspace::open(*dev, *key, true);
    if (!ms) {
        return fail_ms("cannot open mindspace '" + a.key + "'", ms.error());
    }
    if (a.offset > ms->length()) {
        return llmosctl::usage("offset " + std::to_string(a.offset) + " is past the end");
    }
    uint64_t end = a.offset + (a.length ? std::min(*a.length, ms->length() - a.offset)
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

// Holds Ctrl-C, SIGTERM, SIGHUP and SIGQUIT while it lives: a command
// that must not stop half-way (a save, a load) asks interrupted() at its
// end, undoes what it did, and the signal is delivered when this goes.
// Signals that are ignored (nohup's SIGHUP, SIGINT in a shell's
// background job) or blocked already are left as they are: blocked, an
// ignored signal would stay pending and look like an interrupt.
class stop_signals_held {
public:
    stop_signals_held() {
        ::sigemptyset(&_held);
        ::sigprocmask(SIG_BLOCK, nullptr, &_was);
        for (int sig : signals) {
            struct sigaction now {};
            if (::sigaction(sig, nullptr, &now) == 0 && now.sa_handler != SIG_IGN &&
                ::sigismember(&_was, sig) == 0) {
                ::sigaddset(&_held, sig);
            }
        }
        ::sigprocmask(SIG_BLOCK, &_held, nullptr);
    }
    ~stop_signals_held() { ::sigprocmask(SIG_SETMASK, &_was, nullptr); }
    stop_signals_held(const stop_signals_held&) = delete;
    stop_signals_held& operator=(const stop_signals_held&) = delete;

    bool interrupted() const {
        sigset_t pending;
        ::sigpending(&pending);
        for (int sig : signals) {
            if (::sigismember(&_held, sig) == 1 && ::sigismember(&pending, sig) == 1) {
                return true;
            }
        }
        return false;
    }

private:
    static constexpr int signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    sigset_t _was;
    sigset_t _held; ///< those this holds
};

int cmd_ms_save(const options& o, const ms_args& a) {
    auto key = ms_key_arg(a.key);
    if (!key) {
        return llmosctl::exit_usage;
    }
    if (a.file.empty()) {
        return llmosctl::usage("ms save: the file name is empty");
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto ms = llmos::mindspace::open(*dev, *key, true);
    if (!ms) {
        return fail_ms("cannot open mindspace '" + a.key + "'", ms.error());
    }
    auto info = ms->info();
    if (!info) {
        return fail("mindspace '" + a.key + "'", info.error());
    }
    auto m = ms->map();
    if (!m) {
        return fail("cannot map mindspace '" + a.key + "'", m.error());
    }
    // Written to a new file beside it, then renamed over it: a save that
    // fails (a full disk, a signal) leaves the old file whole.
    // The new file gets the old one's permission bits, or those a plain
    // create would give (0666 less the umask): mkostemp's 0600 would
    // change them. (A symbolic link is replaced by the file, as mv does.)
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode_t file_mode = 0666 & ~mask;
    struct stat st;
    if (::stat(a.file.c_str(), &st) == 0) {
        file_mode = st.st_mode & 0777; // not set-id bits onto a data file
        struct stat own;
        if (!S_ISREG(st.st_mode)) {
            return llmosctl::usage(a.file + " is not a regular file");
        }
        if (::fstat(ms->fd(), &own) == 0 && own.st_dev == st.st_dev && own.st_ino == st.st_ino) {
            return llmosctl::usage(a.file + " is the mindspace's own file");
        }
    }
    // A signal is held until the save has ended; then the new file goes
    // (nothing is left beside the old one) and the signal is delivered.
    stop_signals_held held;
    std::string tmp = a.file + ".XXXXXX";
    llmos::unique_fd out{::mkostemp(tmp.data(), O_CLOEXEC)};
    if (!out) {
        return fail("cannot create a file beside " + a.file, llmos::last_error());
    }
    struct remove_unless_kept {
        const std::string& path;
        bool kept = false;
        ~remove_unless_kept() {
            if (!kept) {
                ::unlink(path.c_str());
            }
        }
    } guard{tmp};
    if (::fchmod(out.get(), file_mode) != 0) {
        return fail("cannot save to " + a.file, llmos::last_error());
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
    if (held.interrupted()) {
        std::fprintf(stderr, "llmosctl: interrupted: %s not saved\n", a.file.c_str());
        return exit_failure;
    }
    if (::rename(tmp.c_str(), a.file.c_str()) != 0) {
        return fail("cannot save to " + a.file, llmos::last_error());
    }
    guard.kept = true;
    if (o.json) {
        std::cout << json_text(json{{"ok", true},
                                    {"mindspace", a.key},
                                    {"length", info->length},
                                    {"file", a.file}},
                               2)
                  << '\n';
    } else {
        std::printf("saved mindspace %s (%s) to %s\n", a.key.c_str(),
                    llmosctl::format_size(info->length).c_str(), a.file.c_str());
    }
    // Out before a signal held since the last look ends the process (as
    // `held` goes): the file is saved, and the line says so.
    std::fflush(stdout);
    return 0;
}

int cmd_ms_load(const options& o, const ms_args& a, bool name_given) {
    if (name_given && a.name.empty()) {
        return llmosctl::usage("a mindspace's name has 1 to 63 characters");
    }
    if (!llmos::valid_ms_name(a.name)) {
        return llmosctl::usage("bad mindspace name '" + a.name + "'" + ms_name_rule);
    }
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
    if (!llmos::valid_ms_name(c.name)) {
        return llmosctl::usage(a.file + " holds the mindspace name '" + c.name +
                               "', which is not valid: give it a --name");
    }
    c.length = meta->length;
    c.mode = meta->mode;
    c.persistent = true;
    if (meta->flags & LLMOS_MS_NODE) {
        // Its NUMA node, where this machine has it.
        if (llmos::detail::numa_node_online(meta->numa_node)) {
            c.node = static_cast<int>(meta->numa_node);
        } else {
            std::fprintf(stderr,
                         "llmosctl: %s was saved from NUMA node %d, which this machine does not "
                         "have: its pages go where the kernel puts them\n",
                         a.file.c_str(), meta->numa_node);
        }
    }
    // A signal (Ctrl-C, a kill) during the load is held until it has
    // ended; then the mindspace goes and the signal is delivered: nothing
    // half-loaded is left behind.
    stop_signals_held held;
    auto ms = llmos::mindspace::create(*dev, c);
    if (!ms) {
        return fail("cannot create mindspace '" + c.name + "'", ms.error());
    }
    // (Made persistent and named at once: the API can neither name a
    // mindspace nor make it persistent later, so a SIGKILL during the
    // copy leaves it, half-loaded, under its name.)
    auto m = ms->map();
    std::error_code ec = m ? llmos::load_ms_file_data(in.get(), *meta, m->bytes()) : m.error();
    if (ec || held.interrupted()) {
        // Leave nothing half-loaded behind.
        (void)llmos::destroy_mindspace(*dev, llmos::ms_key{ms->id(), {}});
        if (!ec) {
            std::fprintf(stderr, "llmosctl: interrupted: mindspace '%s' not loaded\n",
                         c.name.c_str());
            return exit_failure;
        }
        if (m && ec == std::errc::no_space_on_device) {
            const bool local = dev->kind() == llmos::backend_kind::local;
            std::fprintf(stderr,
                         "llmosctl: no %s left while loading %s into mindspace '%s' (%s): %s; "
                         "nothing was kept\n",
                         local ? "space" : "memory", a.file.c_str(), c.name.c_str(),
                         llmosctl::format_size(meta->length).c_str(),
                         local ? ("the local store " + dev->path() + " is full").c_str()
                               : "the quota (llmosctl ms quota) or the machine's memory is spent");
            return exit_failure;
        }
        return fail("cannot load " + a.file, ec);
    }
    if (o.json) {
        std::cout << json_text(json{{"id", ms->id()}, {"name", c.name}, {"length", ms->length()}},
                               2)
                  << '\n';
    } else {
        std::printf("loaded %s into mindspace %s (id %llu, %s)\n", a.file.c_str(), c.name.c_str(),
                    static_cast<unsigned long long>(ms->id()),
                    llmosctl::format_size(ms->length()).c_str());
    }
    std::fflush(stdout); // out before a held signal ends the process (as in ms save)
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
        std::cout << json_text(json{{"used", q->used},
                                    {"limit", unlimited ? json(nullptr) : json(q->limit)}},
                               2)
                  << '\n';
    } else {
        std::printf("used:  %s\nlimit: %s\n", llmosctl::format_size(q->used).c_str(),
                    unlimited ? "unlimited" : llmosctl::format_size(q->limit).c_str());
    }
    return 0;
}

/// The latency below which a fraction `q` of the histogram lies, in
/// microseconds (the upper bound of its bucket, rounded up), or 0 when
/// empty. The module's buckets are of 1024 ns units, not microseconds.
uint64_t hist_quantile(const uint64_t (&h)[32], double q) {
    auto us = [](int b) { return ((uint64_t{2} << b) * 1024 + 999) / 1000; };
    uint64_t total = 0;
    for (auto c : h) {
        total += c;
    }
    if (!total) {
        return 0;
    }
    uint64_t seen = 0;
    for (int b = 0; b < 32; ++b) {
        seen += h[b];
        if (static_cast<double>(seen) >= q * static_cast<double>(total)) {
            return us(b);
        }
    }
    return us(31);
}

const char* state_name(int s) {
    static const char* names[] = {"-",         "queued",    "dispatched", "running",
                                  "completed", "cancelled", "failed"};
    return s >= 0 && s < 7 ? names[s] : "?";
}

std::string policy_words(const llmos::sched_stats& st) {
    switch (st.policy_state) {
    case LLMOS_POLICY_BPF:
        return "bpf:" + st.policy;
    case LLMOS_POLICY_EJECTED:
        return "built-in (weighted fair queuing); bpf:" + st.policy +
               " ejected - detach it (llmosctl sched detach)";
    default:
        return "built-in (weighted fair queuing)";
    }
}

json stats_json(const llmos::sched_stats& st, const char* backend) {
    json states = json::object();
    for (int s = LLMOS_REQ_QUEUED; s < LLMOS_REQ_STATE_MAX; ++s) {
        states[state_name(s)] = st.nr[s];
    }
    json tenants = json::array();
    for (const auto& t : st.tenants) {
        tenants.push_back({{"tenant", t.tenant},
                           {"weight", t.weight},
                           {"queued", t.queued},
                           {"served_requests", t.served_reqs},
                           {"served_tokens", t.served_tokens}});
    }
    return {
        {"backend", backend},
        {"policy", policy_words(st)},
        {"policy_state", st.policy_state == LLMOS_POLICY_BPF       ? "bpf"
                         : st.policy_state == LLMOS_POLICY_EJECTED ? "ejected"
                                                                   : "built-in"},
        {"last_exit",
         {{"policy", st.policy},
          {"kind", st.exit_kind},
          {"code", st.exit_code},
          {"request", st.exit_req},
          {"message", st.exit_msg},
          {"ejections", st.ejections}}},
        {"workers", st.workers},
        {"clients", st.clients},
        {"requests", states},
        {"submitted", st.submitted},
        {"dispatched", st.dispatched},
        {"completed", st.completed},
        {"failed", st.failed},
        {"cancelled", st.cancelled},
        {"requeued", st.requeued},
        {"dispatch_latency_us",
         {{"p50_below", hist_quantile(st.lat_hist, 0.5)},
          {"p99_below", hist_quantile(st.lat_hist, 0.99)}}},
        {"tenants", tenants},
    };
}

int cmd_sched_status(const options& o) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto st = llmos::scheduler_stats(*dev);
    if (!st) {
        return fail("scheduler status", st.error());
    }
    const char* backend = llmos::to_string(dev->kind());
    if (o.json) {
        std::cout << json_text(stats_json(*st, backend), 2) << '\n';
        return 0;
    }
    std::printf(
        "backend:   %s%s\n"
        "policy:    %s\n"
        "workers:   %u\n"
        "clients:   %u\n"
        "requests:  %llu queued, %llu dispatched, %llu running\n"
        "since load: %llu submitted, %llu completed, %llu failed, %llu cancelled, "
        "%llu requeued\n"
        "dispatch latency: p50 < %llu us, p99 < %llu us\n",
        backend, dev->kind() == llmos::backend_kind::local ? " (this process's scheduler)" : "",
        policy_words(*st).c_str(), st->workers, st->clients,
        static_cast<unsigned long long>(st->nr[1]), static_cast<unsigned long long>(st->nr[2]),
        static_cast<unsigned long long>(st->nr[3]), static_cast<unsigned long long>(st->submitted),
        static_cast<unsigned long long>(st->completed), static_cast<unsigned long long>(st->failed),
        static_cast<unsigned long long>(st->cancelled),
        static_cast<unsigned long long>(st->requeued),
        static_cast<unsigned long long>(hist_quantile(st->lat_hist, 0.5)),
        static_cast<unsigned long long>(hist_quantile(st->lat_hist, 0.99)));
    if (st->exit_kind) {
        std::printf("last exit: %s: %s (code %lld), %llu stops since load\n", st->policy.c_str(),
                    st->exit_msg.c_str(), static_cast<long long>(st->exit_code),
                    static_cast<unsigned long long>(st->ejections));
    }
    if (!st->tenants.empty()) {
        std::printf("\n%-10s %7s %8s %12s %14s\n", "TENANT", "WEIGHT", "QUEUED", "SERVED",
                    "TOKENS");
        for (const auto& t : st->tenants) {
            std::printf("%-10u %7u %8u %12llu %14llu\n", t.tenant, t.weight, t.queued,
                        static_cast<unsigned long long>(t.served_reqs),
                        static_cast<unsigned long long>(t.served_tokens));
        }
    }
    return 0;
}

constexpr const char* policy_pin = "/sys/fs/bpf/llmos_sched_policy";

// Where libbpf's messages go while a step runs whose failure llmosctl
// says in its own line (nullptr: standard error, as they come).
std::string* libbpf_held = nullptr;

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list ap) {
    if (level == LIBBPF_DEBUG) {
        return 0;
    }
    if (!libbpf_held) {
        return std::vfprintf(stderr, fmt, ap);
    }
    // Whole, however long (the verifier's log comes in one message); no
    // exception may cross libbpf's C frames.
    va_list again;
    va_copy(again, ap);
    const int n = std::vsnprintf(nullptr, 0, fmt, again);
    va_end(again);
    if (n > 0) {
        try {
            std::string text(size_t(n) + 1, '\0');
            std::vsnprintf(text.data(), text.size(), fmt, ap);
            libbpf_held->append(text.data(), size_t(n));
        } catch (...) { // out of memory: this message is lost
        }
    }
    return n;
}

// Holds libbpf's messages while it lives; say() prints them after all
// (the verifier's log, warnings of a step that went well).
class libbpf_holding {
public:
    libbpf_holding() { libbpf_held = &_text; }
    ~libbpf_holding() { libbpf_held = nullptr; }
    libbpf_holding(const libbpf_holding&) = delete;
    libbpf_holding& operator=(const libbpf_holding&) = delete;
    void say() {
        libbpf_held = nullptr;
        std::fputs(_text.c_str(), stderr);
        _text.clear();
    }

private:
    std::string _text;
};

// An error of libbpf's in words: its own codes (4000 on) are not errnos.
std::string libbpf_words(std::error_code ec) {
    if (ec.category() == std::system_category() && ec.value() >= 4000) {
        char buf[128];
        libbpf_strerror(ec.value(), buf, sizeof buf);
        return buf;
    }
    return ec.message();
}

/// Sets the policy's `const volatile` integer NAME (in .rodata) to VALUE,
/// before the object is loaded. "" or an error message.
std::string set_rodata(bpf_object* obj, const std::string& opt) {
    auto eq = opt.find('=');
    if (eq == std::string::npos || eq == 0) {
        return "bad --opt '" + opt + "' (NAME=VALUE)";
    }
    std::string name = opt.substr(0, eq);
    const std::string text = opt.substr(eq + 1);
    const bool negative = text.starts_with('-');
    auto magnitude = llmosctl::parse_size(negative ? text.substr(1) : text, false);
    if (!magnitude) {
        return "bad --opt '" + opt + "': the value must be an integer";
    }
    bpf_map* rodata = nullptr;
    bpf_map* map;
    bpf_object__for_each_map(map, obj) {
        std::string_view n = bpf_map__name(map);
        if (n.size() >= 7 && n.substr(n.size() - 7) == ".rodata") {
            rodata = map;
        }
    }
    const btf* b = bpf_object__btf(obj);
    int sec = b ? btf__find_by_name_kind(b, ".rodata", BTF_KIND_DATASEC) : -1;
    if (!rodata || sec < 0) {
        return "the policy has no tunables (no const volatile globals)";
    }
    const btf_type* t = btf__type_by_id(b, static_cast<uint32_t>(sec));
    const btf_var_secinfo* found = nullptr;
    const btf_var_secinfo* v = btf_var_secinfos(t);
    for (uint16_t i = 0; i < btf_vlen(t); ++i, ++v) {
        const btf_type* var = btf__type_by_id(b, v->type);
        if (name != btf__name_by_offset(b, var->name_off)) {
            continue;
        }
        if (found) {
            return "cannot set '" + name + "': the policy has several variables of that name";
        }
        found = v;
    }
    if (!found) {
        return "the policy has no tunable '" + name + "'";
    }
    // An integer (or enum) under its const and volatile, of at most 8
    // bytes; signed or not, as its type says.
    const int type_id = btf__resolve_type(b, btf__type_by_id(b, found->type)->type);
    const btf_type* ty = type_id < 0 ? nullptr : btf__type_by_id(b, static_cast<uint32_t>(type_id));
    const bool is_int = ty && btf_is_int(ty);
    if (!ty || !(is_int || btf_is_enum(ty) || btf_is_enum64(ty))) {
        return "cannot set '" + name + "' (not an integer tunable)";
    }
    const bool is_signed = is_int ? (btf_int_encoding(ty) & BTF_INT_SIGNED) != 0 : btf_kflag(ty);
    size_t size = 0;
    auto* data = static_cast<unsigned char*>(bpf_map__initial_value(rodata, &size));
    if (!data || found->offset + found->size > size || found->size > 8 || !found->size) {
        return "cannot set '" + name + "' (not an integer tunable)";
    }
    const unsigned bits = 8 * found->size;
    const std::string range =
        is_signed ? "-2^" + std::to_string(bits - 1) + " to 2^" + std::to_string(bits - 1) + "-1"
                  : "0 to 2^" + std::to_string(bits) + "-1";
    // The two's-complement bits of the value, once it is known to fit.
    uint64_t value = *magnitude;
    if (negative) {
        if (!is_signed || *magnitude > (uint64_t{1} << (bits - 1))) {
            return "--opt " + name + ": " + text + " is out of its range (" + range + ")";
        }
        value = ~*magnitude + 1;
    } else if ((is_signed && *magnitude >= (uint64_t{1} << (bits - 1))) ||
               (bits < 64 && *magnitude >> bits)) {
        return "--opt " + name + ": " + text + " is out of its range (" + range + ")";
    }
    for (uint32_t k = 0; k < found->size; ++k) {
        data[found->offset + k] = static_cast<unsigned char>(value >> (8 * k));
    }
    return "";
}

/// EPERM from the bpf() syscall: not the policy's fault.
int needs_root(const std::string& what) {
    std::fprintf(stderr,
                 "llmosctl: cannot %s: operation not permitted (BPF policies need root: "
                 "CAP_BPF and CAP_SYS_ADMIN)\n",
                 what.c_str());
    return exit_failure;
}

int cmd_sched_attach(const options& o, const std::string& file,
                     const std::vector<std::string>& opts) {
    // A malformed --opt is a usage error before anything is opened.
    for (const auto& opt : opts) {
        if (const auto eq = opt.find('='); eq == std::string::npos || eq == 0) {
            return llmosctl::usage("bad --opt '" + opt + "' (NAME=VALUE)");
        }
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    if (dev->kind() != llmos::backend_kind::kernel) {
        std::fprintf(stderr, "llmosctl: BPF policies need the llmos module (this is the local "
                             "backend)\n");
        return exit_failure;
    }
    libbpf_set_print(libbpf_print);
    std::unique_ptr<bpf_object, void (*)(bpf_object*)> obj{nullptr, bpf_object__close};
    {
        // Failing, one line of ours says why (libbpf's would come first).
        libbpf_holding held;
        obj.reset(bpf_object__open_file(file.c_str(), nullptr));
        if (!obj) {
            const auto ec = llmos::last_error();
            std::fprintf(stderr, "llmosctl: cannot open %s: %s\n", file.c_str(),
                         ec.value() >= 4000
                             ? ("not a BPF object file (" + libbpf_words(ec) + ")").c_str()
                             : libbpf_words(ec).c_str());
            return exit_failure;
        }
        held.say();
    }
    bpf_map* ops = nullptr;
    bpf_map* map;
    bpf_object__for_each_map(map, obj.get()) {
        if (bpf_map__type(map) != BPF_MAP_TYPE_STRUCT_OPS) {
            continue;
        }
        // Another kind of struct_ops (a TCP congestion control, sched_ext)
        // would be loaded and pinned as if it were a policy.
        const btf* b = bpf_object__btf(obj.get());
        const btf_type* t = b ? btf__type_by_id(b, bpf_map__btf_value_type_id(map)) : nullptr;
        const char* type = t ? btf__name_by_offset(b, t->name_off) : nullptr;
        if (type && std::string_view(type) == "llmos_sched_ops") {
            ops = map;
        }
    }
    if (!ops) {
        return llmosctl::usage(file + " holds no struct llmos_sched_ops (see bpf/fifo.bpf.c)");
    }
    if (!(bpf_map__map_flags(ops) & BPF_F_LINK)) {
        // Detach undoes the link that attach pins; a policy in a plain
        // ".struct_ops" section gets none.
        return llmosctl::usage(file + ": put the llmos_sched_ops in a \".struct_ops.link\" "
                                      "section (see bpf/fifo.bpf.c)");
    }
    for (const auto& opt : opts) {
        if (auto err = set_rodata(obj.get(), opt); !err.empty()) {
            return llmosctl::usage(err);
        }
    }
    {
        // Without the right, libbpf's lines (a memlock limit to raise) are
        // beside the point; otherwise they are the verifier's reasons.
        libbpf_holding held;
        if (bpf_object__load(obj.get())) {
            auto ec = llmos::last_error();
            if (ec == std::errc::operation_not_permitted) {
                return needs_root("load " + file);
            }
            held.say();
            std::fprintf(stderr, "llmosctl: cannot load %s (the verifier says why above): %s\n",
                         file.c_str(), libbpf_words(ec).c_str());
            return exit_failure;
        }
        held.say();
    }
    bpf_link* link = bpf_map__attach_struct_ops(ops);
    if (!link) {
        auto ec = llmos::last_error();
        if (ec == std::errc::operation_not_permitted) {
            return needs_root("attach " + file);
        }
        if (ec == std::errc::device_or_resource_busy) {
            std::fprintf(stderr,
                         "llmosctl: a policy is attached already (llmosctl sched detach)\n");
            return exit_failure;
        }
        return fail("cannot attach " + file, ec);
    }
    // The pin keeps the policy attached after llmosctl exits.
    std::optional<libbpf_holding> pin_held(std::in_place); // our line says why it fails
    if (bpf_link__pin(link, policy_pin)) {
        auto ec = llmos::last_error();
        pin_held.reset();
        bpf_link__destroy(link);
        if (ec == std::errc::operation_not_permitted || ec == std::errc::permission_denied) {
            return needs_root(std::string{"pin the policy at "} + policy_pin);
        }
        if (ec == std::errc::file_exists) {
            std::fprintf(stderr,
                         "llmosctl: cannot pin the policy at %s: a pin is there already (a "
                         "policy that was never detached: llmosctl sched detach)\n",
                         policy_pin);
            return exit_failure;
        }
        return fail(std::string{"cannot pin the policy at "} + policy_pin, ec);
    }
    pin_held.reset();
    bpf_link__disconnect(link);
    bpf_link__destroy(link);
    if (o.json) {
        std::cout << json_text(json{{"ok", true},
                                    {"attached", bpf_map__name(ops)},
                                    {"file", file},
                                    {"pin", policy_pin}},
                               2)
                  << '\n';
    } else {
        std::printf("attached policy %s from %s\n", bpf_map__name(ops), file.c_str());
    }
    return 0;
}

int cmd_sched_detach(const options& o) {
    // Silent while it opens the pin: its own line for a missing one would
    // come before ours.
    libbpf_set_print(nullptr);
    bpf_link* link = bpf_link__open(policy_pin);
    const auto open_error = llmos::last_error();
    libbpf_set_print(libbpf_print); // its messages as ours
    if (!link) {
        const auto ec = open_error;
        if (ec == std::errc::no_such_file_or_directory) {
            std::fprintf(stderr, "llmosctl: no policy is attached (no %s)\n", policy_pin);
            return exit_failure;
        }
        if (ec == std::errc::operation_not_permitted || ec == std::errc::permission_denied) {
            return needs_root(std::string{"open "} + policy_pin);
        }
        return fail(std::string{"cannot open "} + policy_pin, ec);
    }
    int ret = bpf_link__detach(link);
    auto ec = llmos::last_error();
    bpf_link__unpin(link);
    bpf_link__destroy(link); // the last reference: detaches if detach did not
    if (ret && ec != std::errc::operation_not_supported && ec != std::errc::invalid_argument) {
        return fail("cannot detach the policy", ec);
    }
    if (o.json) {
        std::cout << json_text(json{{"ok", true}, {"detached", true}}, 2) << '\n';
    } else {
        std::printf("detached the policy; the built-in one schedules\n");
    }
    return 0;
}

int cmd_sched_weight(const options& o, uint32_t tenant, uint32_t weight) {
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    if (dev->kind() == llmos::backend_kind::local) {
        // It would set the weight in this process's own scheduler, which
        // goes with it.
        std::fprintf(stderr, "llmosctl: tenant weights need the llmos module (the local "
                             "backend's scheduler lives in each process that uses it)\n");
        return exit_failure;
    }
    if (auto ec = llmos::set_tenant_weight(*dev, tenant, weight)) {
        return fail("cannot set the weight of tenant " + std::to_string(tenant), ec);
    }
    if (o.json) {
        std::cout << json_text(json{{"ok", true}, {"tenant", tenant}, {"weight", weight}}, 2)
                  << '\n';
    }
    return 0;
}

// A user name or a decimal uid; nullopt (having said why) for neither.
std::optional<uint32_t> parse_user(const std::string& s) {
    std::string why;
    if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos) {
        auto uid = llmosctl::parse_decimal<uint32_t>(s, false, why);
        if (!uid || *uid == LLMOS_UID_SELF) {
            llmosctl::usage("no such uid: " + s);
            return std::nullopt;
        }
        return uid;
    }
    int err = 0;
    auto uid = llmosctl::uid_of_user(s, err);
    if (!uid) {
        llmosctl::usage("no such user: '" + s + "'" +
                        (err != 0 ? " (" + std::string(std::strerror(err)) + ")" : ""));
    }
    return uid;
}

// "N", "N-M" or "all" (0-4294967295): the first and last tenant.
std::optional<std::pair<uint32_t, uint32_t>> parse_tenant_range(const std::string& s) {
    if (s == "all") {
        return std::pair<uint32_t, uint32_t>{0, UINT32_MAX};
    }
    std::string why;
    auto dash = s.find('-');
    auto first = llmosctl::parse_decimal<uint32_t>(s.substr(0, dash), false, why);
    auto last = dash == std::string::npos
                    ? first
                    : llmosctl::parse_decimal<uint32_t>(s.substr(dash + 1), false, why);
    if (!first || !last || *first > *last) {
        llmosctl::usage("tenants: '" + s +
                        "' is not FIRST-LAST (FIRST <= LAST, 0..4294967295), one tenant or 'all'");
        return std::nullopt;
    }
    return std::pair{*first, *last};
}

std::string describe_grant(const llmos::tenant_grant& g) {
    std::string range = g.first == g.last
                            ? "tenant " + std::to_string(g.first)
                            : "tenants " + std::to_string(g.first) + "-" + std::to_string(g.last);
    return range + (g.granted ? " (granted)" : " (its own)");
}

// Whether the module has worker grants (ABI 1.3); before, anyone registers.
bool has_worker_grants(const llmos::device& dev) {
    return dev.kind() == llmos::backend_kind::kernel &&
           (dev.version().features & LLMOS_FEATURE_WORKER_GRANT) != 0;
}

// worker: 1 --worker, 0 --no-worker, -1 neither (the right stays as it is).
int cmd_sched_grant(const options& o, const std::string& user, const std::string& tenants,
                    bool reset, int worker) {
    if (reset && (!tenants.empty() || worker >= 0)) {
        return llmosctl::usage("sched grant: give tenants, --worker or --no-worker, or --reset, "
                               "not both");
    }
    if ((reset || !tenants.empty() || worker >= 0) && user.empty()) {
        return llmosctl::usage("sched grant: name the user whose grant changes");
    }
    uint32_t uid = LLMOS_UID_SELF;
    if (!user.empty()) {
        auto u = parse_user(user);
        if (!u) {
            return llmosctl::exit_usage;
        }
        uid = *u;
    }
    std::optional<std::pair<uint32_t, uint32_t>> range;
    if (!tenants.empty() && !(range = parse_tenant_range(tenants))) {
        return llmosctl::exit_usage;
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    bool change = reset || range || worker >= 0;
    if (change && dev->kind() == llmos::backend_kind::local) {
        std::fprintf(stderr, "llmosctl: tenant grants need the llmos module (the local backend "
                             "keeps no users apart: every process names any tenant)\n");
        return exit_failure;
    }
    if (worker >= 0 && !has_worker_grants(*dev)) {
        std::fprintf(stderr, "llmosctl: the loaded llmos module has no worker grants (it predates "
                             "ABI 1.3): every user registers workers\n");
        return exit_failure;
    }
    const std::string who = user.empty() ? "this user" : "user " + user;
    llmos::result<llmos::tenant_grant> g = std::make_error_code(std::errc::invalid_argument);
    if (!reset && change) {
        // What is not given stays: the range, or the worker right (the
        // module sets both at once).
        g = llmos::tenant_grant_of(*dev, uid);
        if (g && !range && !g->granted && worker == 0) {
            change = false; // its own tenant, no right: nothing to take away
        } else if (g) {
            const auto [first, last] = range.value_or(std::pair{g->first, g->last});
            g = llmos::grant_tenants(*dev, uid, first, last, worker < 0 ? g->worker : worker == 1);
        }
    } else {
        g = reset ? llmos::reset_tenant_grant(*dev, uid) : llmos::tenant_grant_of(*dev, uid);
    }
    if (!g && g.error() == std::errc::inappropriate_io_control_operation) {
        std::fprintf(stderr, "llmosctl: the loaded llmos module has no tenant grants (it predates "
                             "ABI 1.2): every user names any tenant\n");
        return exit_failure;
    }
    if (!g) {
        return fail(
            std::string(change ? "cannot change the tenants of " : "cannot read the tenants of ") +
                who + (g.error() == std::errc::operation_not_permitted ? " (needs root)" : ""),
            g.error());
    }
    const bool show_worker = has_worker_grants(*dev);
    if (o.json) {
        json j{{"first", g->first}, {"last", g->last}, {"granted", g->granted}};
        if (show_worker) {
            j["worker"] = g->worker; // the uid registers workers
        }
        if (uid != LLMOS_UID_SELF) {
            j["uid"] = uid;
        } else if (dev->kind() == llmos::backend_kind::kernel) {
            j["admin"] = g->admin; // the caller names any tenant
        }
        std::cout << json_text(j, 2) << '\n';
    } else if (dev->kind() == llmos::backend_kind::local) {
        std::printf("%s: any tenant (the local backend keeps no users apart)\n", who.c_str());
    } else {
        // An administrator names any tenant, whatever its uid's range.
        const bool any = uid == LLMOS_UID_SELF && g->admin;
        std::printf("%s: %s%s%s\n", who.c_str(), describe_grant(*g).c_str(),
                    show_worker && g->worker ? ", registers workers" : "",
                    any ? "; as an administrator, any tenant and workers" : "");
    }
    return 0;
}

/// Of `n` tenants, how many rows top has room for on its terminal
/// (standard output): n when they fit or the size is unknown; else one row
/// fewer than fits, for the "... N more" line.
size_t tenant_rows_that_fit(size_t n) {
    // The lines above the rows (title, blank, three of totals, blank,
    // column heads), and the one the cursor is left on.
    constexpr size_t above = 7, below = 1;
    winsize ws{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0) {
        return n;
    }
    const size_t room = ws.ws_row > above + below ? ws.ws_row - above - below : 0;
    if (n <= room) {
        return n;
    }
    return room > 0 ? room - 1 : 0;
}

int cmd_top(const options& o, double interval, int iterations) {
    if (!std::isfinite(interval) || interval < 0.01 || interval > 3600) {
        return llmosctl::usage("--interval must be from 0.01 to 3600 seconds");
    }
    if (iterations < 0) {
        return llmosctl::usage("--iterations must not be negative");
    }
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    using clock = std::chrono::steady_clock;
    auto prev = llmos::scheduler_stats(*dev);
    auto prev_at = clock::now();
    if (!prev) {
        return fail("scheduler status", prev.error());
    }
    const bool local = dev->kind() == llmos::backend_kind::local;
    bool tty = ::isatty(STDOUT_FILENO) && !o.json;
    for (int i = 0; iterations <= 0 || i < iterations; ++i) {
        std::this_thread::sleep_for(std::chrono::duration<double>(interval));
        auto st = llmos::scheduler_stats(*dev);
        const auto at = clock::now();
        if (!st) {
            return fail("scheduler status", st.error());
        }
        // Per second of the time that did pass between the two samples
        // (a sleep runs over, printing takes time).
        const double elapsed = std::chrono::duration<double>(at - prev_at).count();
        // A counter that went down (its tenant reclaimed, the module
        // reloaded) counts as nothing served, not as a wrapped delta.
        auto rate = [&](uint64_t now, uint64_t before) {
            return elapsed > 0 ? static_cast<double>(llmosctl::counter_delta(now, before)) / elapsed
                               : 0.0;
        };
        std::unordered_map<uint32_t, uint64_t> tokens_before; // by tenant id
        for (const auto& t : prev->tenants) {
            tokens_before[t.tenant] = t.served_tokens;
        }
        // Each tenant's tokens since the last refresh; their sum the total.
        std::unordered_map<uint32_t, uint64_t> served;
        uint64_t tokens = 0;
        for (const auto& t : st->tenants) {
            auto b = tokens_before.find(t.tenant);
            const uint64_t before = b == tokens_before.end() ? 0 : b->second;
            const uint64_t d = llmosctl::counter_delta(t.served_tokens, before);
            served[t.tenant] = d;
            tokens += d;
        }
        if (o.json) {
            json j = stats_json(*st, llmos::to_string(dev->kind()));
            j["rates"] = {{"submitted_per_s", rate(st->submitted, prev->submitted)},
                          {"completed_per_s", rate(st->completed, prev->completed)},
                          {"tokens_per_s", rate(tokens, 0)}};
            std::cout << json_text(j) << '\n' << std::flush;
        } else {
            if (tty) {
                std::printf("\x1b[H\x1b[2J");
            }
            std::printf("llmos top - %s backend%s, every %g s\n\n"
                        "workers %u  clients %u  queued %llu  dispatched %llu  running %llu\n"
                        "submitted %.0f/s  completed %.0f/s  tokens %.0f/s  requeued %llu\n"
                        "dispatch latency p50 < %llu us  p99 < %llu us\n\n",
                        llmos::to_string(dev->kind()),
                        // Each process that uses the local backend has a
                        // scheduler of its own: this one's runs nothing.
                        local ? " (this process's own, empty scheduler)" : "", interval,
                        st->workers, st->clients, static_cast<unsigned long long>(st->nr[1]),
                        static_cast<unsigned long long>(st->nr[2]),
                        static_cast<unsigned long long>(st->nr[3]),
                        rate(st->submitted, prev->submitted), rate(st->completed, prev->completed),
                        rate(tokens, 0), static_cast<unsigned long long>(st->requeued),
                        static_cast<unsigned long long>(hist_quantile(st->lat_hist, 0.5)),
                        static_cast<unsigned long long>(hist_quantile(st->lat_hist, 0.99)));
            std::printf("%-10s %7s %8s %12s\n", "TENANT", "WEIGHT", "QUEUED", "TOKENS/S");
            // On a terminal, no more rows than it has (read again each
            // time: it may have been resized).
            const size_t shown = tty ? tenant_rows_that_fit(st->tenants.size()) : SIZE_MAX;
            for (size_t k = 0; k < st->tenants.size(); ++k) {
                if (k == shown) {
                    std::printf("... %zu more\n", st->tenants.size() - k);
                    break;
                }
                const auto& t = st->tenants[k];
                std::printf("%-10u %7u %8u %12.0f\n", t.tenant, t.weight, t.queued,
                            rate(served[t.tenant], 0));
            }
            std::fflush(stdout);
        }
        // Output no one can read (a full disk, a closed pipe) ends it: it
        // would go on for ever (main() says why).
        if (std::ferror(stdout) || !std::cout) {
            return 0;
        }
        prev = std::move(st);
        prev_at = at;
    }
    return 0;
}

struct bench_args {
    int workers = 2;
    uint32_t capacity = 1;
    std::string service = "exp:5";
    std::string arrival = "poisson:200";
    int requests = 1000;
    int tenants = 1;
    uint64_t seed = 1;
    std::optional<double> timeout; ///< seconds without a request finishing
};

/// "exp:MEAN" (milliseconds) or "poisson:RATE" (per second): the number,
/// from 0.001 to 10^7 (beyond, a mean of nothing or an age, a rate of
/// nothing or of more than the clock tells apart).
std::optional<double> parse_dist(const std::string& s, const std::string& kind) {
    if (s.rfind(kind + ":", 0) != 0) {
        return std::nullopt;
    }
    try {
        size_t used = 0;
        double v = std::stod(s.substr(kind.size() + 1), &used);
        if (used != s.size() - kind.size() - 1 || !(v >= 1e-3 && v <= 1e7)) {
            return std::nullopt;
        }
        return v;
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

int cmd_bench(const options& o, const bench_args& b) {
    auto service = parse_dist(b.service, "exp");
    if (!service) {
        return llmosctl::usage("bad --service '" + b.service +
                               "' (exp:MEAN_MS, from 0.001 to 1e7, e.g. exp:5)");
    }
    auto rate = parse_dist(b.arrival, "poisson");
    if (!rate) {
        return llmosctl::usage("bad --arrival '" + b.arrival +
                               "' (poisson:RATE per second, from 0.001 to 1e7, e.g. poisson:200)");
    }
    if (b.workers < 1 || b.workers > 256 || b.requests < 1 || b.tenants < 1 || !b.capacity ||
        b.capacity > LLMOS_MAX_CAPACITY) {
        return llmosctl::usage("--workers 1..256, --requests and --tenants >= 1, --capacity 1.." +
                               std::to_string(LLMOS_MAX_CAPACITY));
    }
    if (b.timeout && !(*b.timeout >= 0.001 && *b.timeout <= 1e7)) {
        return llmosctl::usage("--timeout must be from 0.001 to 10000000 seconds");
    }
    // How long the collection waits for the next request to finish before
    // it gives up: 30 s, or 20 mean service times where that is longer (a
    // service that long or longer comes once in e^20, half a billion).
    const auto patience = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::duration<double>(b.timeout.value_or(std::max(30.0, 20 * *service / 1e3))));
    auto dev = open_device(o);
    if (!dev) {
        return fail_open(o, dev.error());
    }
    auto client = llmos::sched_client::open(*dev);
    if (!client) {
        return fail("cannot open a scheduler client", client.error());
    }
    // The tenants: from 0, or with the module, from the first this user may
    // name (its own, or those granted to it; an administrator names any).
    uint32_t first_tenant = 0;
    if (auto g = dev->kind() == llmos::backend_kind::kernel
                     ? llmos::tenant_grant_of(*dev, LLMOS_UID_SELF)
                     : llmos::result<llmos::tenant_grant>(
                           std::make_error_code(std::errc::not_supported));
        g && !g->admin) {
        if (uint64_t{g->last} - g->first + 1 < uint64_t(b.tenants)) {
            std::fprintf(stderr,
                         "llmosctl: bench: --tenants %d: the module lets this user submit as %s "
                         "only (root grants more: llmosctl sched grant)\n",
                         b.tenants, describe_grant(*g).c_str());
            return exit_failure;
        }
        first_tenant = g->first;
        if (!g->worker) {
            std::fprintf(stderr,
                         "llmosctl: bench registers workers, which the module lets this user do "
                         "only when granted (root: llmosctl sched grant USER --worker)\n");
            return exit_failure;
        }
    }
    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<bool> said_dispatch{false}; // a DISPATCH error, said once
    std::atomic<uint32_t> max_held{0};      // the most requests one worker held at once
    std::vector<std::thread> workers;
    for (int i = 0; i < b.workers; ++i) {
        workers.emplace_back([&, i] {
            auto w = llmos::sched_worker::open(*dev, b.capacity);
            if (!w) {
                errors++;
                return;
            }
            std::mt19937_64 rng(b.seed * 7919 + static_cast<uint64_t>(i));
            std::exponential_distribution<double> svc(1.0 / *service);
            using clock = std::chrono::steady_clock;
            // The requests held, each with the time its service ends: up to
            // --capacity at once, served side by side.
            std::vector<std::pair<clock::time_point, uint64_t>> held;
            while (!stop) {
                const auto now = clock::now();
                for (auto r = held.begin(); r != held.end();) {
                    if (r->first <= now) {
                        errors += static_cast<bool>(w->complete(r->second, 0, 1));
                        r = held.erase(r);
                    } else {
                        ++r;
                    }
                }
                // Wait for more no longer than the first held one's end.
                auto wait = std::chrono::milliseconds(50);
                for (const auto& r : held) {
                    wait =
                        std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(r.first - now));
                }
                if (held.size() >= b.capacity) {
                    // Full: to the first end exactly (a whole millisecond
                    // more would lengthen every service), but no more than
                    // 50 ms at a time, to see a stop.
                    auto first = now + std::chrono::milliseconds(50);
                    for (const auto& r : held) {
                        first = std::min(first, r.first);
                    }
                    std::this_thread::sleep_until(first);
                    continue;
                }
                // One DISPATCH takes at most LLMOS_MAX_DISPATCH.
                auto got = w->dispatch(
                    std::min<uint32_t>(b.capacity - held.size(), LLMOS_MAX_DISPATCH),
                    wait.count() > 0 ? llmos::wait_for::at_most(wait) : llmos::wait_for::none());
                if (!got) {
                    if (got.error() != std::errc::timed_out &&
                        got.error() != std::errc::resource_unavailable_try_again) {
                        // Counted, said once, and not asked again at once.
                        errors++;
                        if (!said_dispatch.exchange(true)) {
                            std::fprintf(stderr, "llmosctl: bench: dispatch: %s\n",
                                         got.error().message().c_str());
                        }
                        std::this_thread::sleep_for(std::chrono::milliseconds(10));
                    }
                    continue;
                }
                const auto start = clock::now();
                for (const auto& r : *got) {
                    held.emplace_back(start +
                                          std::chrono::duration_cast<clock::duration>(
                                              std::chrono::duration<double, std::milli>(svc(rng))),
                                      r.id);
                }
                for (auto m = max_held.load();
                     held.size() > m &&
                     !max_held.compare_exchange_weak(m, static_cast<uint32_t>(held.size()));) {
                }
            }
            // What is still held goes back to the scheduler with the worker.
        });
    }
    std::vector<double> wait_ms, sojourn_ms;
    // Per tenant, by the id submit() gave each request.
    std::unordered_map<uint64_t, uint32_t> tenant_of;
    std::map<uint32_t, std::pair<std::vector<double>, std::vector<double>>> by_tenant;
    std::mt19937_64 rng(b.seed);
    std::exponential_distribution<double> gap(*rate);
    std::uniform_int_distribution<int> tenant(0, b.tenants - 1);
    auto next = std::chrono::steady_clock::now();
    std::error_code wait_error; // why collect() last came back empty
    auto collect = [&](llmos::wait_for w) {
        auto f = client->wait(0, w);
        if (!f) {
            wait_error = f.error();
            return false;
        }
        const double wait = static_cast<double>(f->dispatch_ns - f->submit_ns) / 1e6;
        const double sojourn = static_cast<double>(f->end_ns - f->submit_ns) / 1e6;
        wait_ms.push_back(wait);
        sojourn_ms.push_back(sojourn);
        if (auto t = tenant_of.find(f->id); t != tenant_of.end()) {
            auto& [w, so] = by_tenant[t->second];
            w.push_back(wait);
            so.push_back(sojourn);
            tenant_of.erase(t);
        }
        return true;
    };
    for (int i = 0; i < b.requests; ++i) {
        next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(gap(rng)));
        while (collect(llmos::wait_for::none())) {
        }
        std::this_thread::sleep_until(next);
        const auto t = first_tenant + static_cast<uint32_t>(tenant(rng));
        if (auto id = client->submit({.tenant = t})) {
            tenant_of[*id] = t;
        } else {
            errors++;
        }
    }
    while (static_cast<int>(wait_ms.size()) < b.requests &&
           collect(llmos::wait_for::at_most(patience))) {
    }
    const bool timed_out =
        static_cast<int>(wait_ms.size()) < b.requests && wait_error == std::errc::timed_out;
    // The workers see it within 50 ms, whatever they hold.
    stop = true;
    for (auto& t : workers) {
        t.join();
    }
    if (static_cast<int>(wait_ms.size()) != b.requests || errors) {
        std::string why;
        if (timed_out) {
            char buf[96];
            std::snprintf(buf, sizeof(buf), "timed out (no request finished in %g s; --timeout): ",
                          std::chrono::duration<double>(patience).count());
            why = buf;
        } else if (static_cast<int>(wait_ms.size()) < b.requests && wait_error) {
            why = "waiting for the requests: " + wait_error.message() + ": ";
        }
        std::fprintf(stderr, "llmosctl: bench: %s%zu of %d requests finished, %d errors\n",
                     why.c_str(), wait_ms.size(), b.requests, errors.load());
        return exit_failure;
    }
    auto summary = [](std::vector<double>& v) {
        std::sort(v.begin(), v.end());
        double sum = 0;
        for (double x : v) {
            sum += x;
        }
        return json{{"mean", sum / double(v.size())},
                    {"p50", llmosctl::nearest_rank(v, 0.5)},
                    {"p99", llmosctl::nearest_rank(v, 0.99)}};
    };
    auto st = llmos::scheduler_stats(*dev);
    std::string policy = st ? policy_words(*st) : "unknown";
    json j = {{"backend", llmos::to_string(dev->kind())},
              {"policy", policy},
              {"workers", b.workers},
              {"capacity", b.capacity},
              {"max_held", max_held.load()},
              {"requests", b.requests},
              {"service", b.service},
              {"arrival", b.arrival},
              {"wait_ms", summary(wait_ms)},
              {"sojourn_ms", summary(sojourn_ms)}};
    // With several tenants, each one's times and its weight (what a
    // weighted policy makes of it).
    auto weight_of = [&](uint32_t t) -> uint32_t {
        if (st) {
            for (const auto& x : st->tenants) {
                if (x.tenant == t) {
                    return x.weight;
                }
            }
        }
        return 0;
    };
    if (b.tenants > 1) {
        j["tenants"] = json::array();
        for (auto& [t, times] : by_tenant) {
            json row = {{"tenant", t},
                        {"requests", times.first.size()},
                        {"wait_ms", summary(times.first)},
                        {"sojourn_ms", summary(times.second)}};
            if (const uint32_t w = weight_of(t)) {
                row["weight"] = w;
            }
            j["tenants"].push_back(std::move(row));
        }
    }
    if (o.json) {
        std::cout << json_text(j, 2) << '\n';
        return 0;
    }
    std::printf("%s backend, %s policy: %d requests, %d workers of capacity %u (at most %u "
                "held), service %s, arrival %s\n"
                "%-8s %10s %10s %10s\n",
                llmos::to_string(dev->kind()), policy.c_str(), b.requests, b.workers, b.capacity,
                max_held.load(), b.service.c_str(), b.arrival.c_str(), "(ms)", "mean", "p50",
                "p99");
    for (const char* k : {"wait_ms", "sojourn_ms"}) {
        std::printf("%-8.*s %10.2f %10.2f %10.2f\n", static_cast<int>(std::strlen(k) - 3), k,
                    j[k]["mean"].get<double>(), j[k]["p50"].get<double>(),
                    j[k]["p99"].get<double>());
    }
    if (j.contains("tenants") && j["tenants"].size() <= 16) {
        std::printf("\n%-8s %7s %9s %10s %10s %10s\n", "TENANT", "WEIGHT", "REQUESTS", "wait mean",
                    "p50", "p99");
        for (const json& r : j["tenants"]) {
            const json& w = r["wait_ms"];
            std::printf("%-8u %7s %9zu %10.2f %10.2f %10.2f\n", r["tenant"].get<uint32_t>(),
                        r.contains("weight") ? std::to_string(r["weight"].get<uint32_t>()).c_str()
                                             : "-",
                        r["requests"].get<size_t>(), w["mean"].get<double>(),
                        w["p50"].get<double>(), w["p99"].get<double>());
        }
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmosctl: control llmos mindspaces, scheduler and models"};
    app.set_version_flag("--version", std::string{llmosctl::version_line()});
    app.require_subcommand(0, 1);
    // Options of the whole program (--json, --server...) also after the command.
    app.fallthrough();
    options o;
    app.add_flag("--json", o.json, "machine-readable output");
    app.add_option("--device", o.device,
                   "use the module through this device (default $LLMOS_DEVICE or /dev/llmos)")
        ->check(llmosctl::not_an_option());
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
    create->add_option("--size", a.size, "size (bytes; K, M, G, T suffixes)")
        ->required()
        ->check(llmosctl::not_an_option());
    create->add_option("--mode", a.mode, "permission bits, octal (default 0600)")
        ->check(llmosctl::not_an_option());
    create->add_option("--node", a.node, "NUMA node for its pages")
        ->transform(llmosctl::decimal<int>(false));
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
    write->add_option("--offset", a.offset, "byte offset (default 0)")
        ->transform(llmosctl::decimal<uint64_t>());
    write->callback([&] { rc = cmd_ms_write(o, a); });
    auto* read = ms->add_subcommand("read", "copy a mindspace's bytes to standard output");
    read->add_option("mindspace", a.key, "name or id")->required();
    read->add_option("--offset", a.offset, "byte offset (default 0)")
        ->transform(llmosctl::decimal<uint64_t>());
    read->add_option("--length", a.length, "bytes (default: to the end)")
        ->transform(llmosctl::decimal<uint64_t>());
    read->callback([&] { rc = cmd_ms_read(o, a); });
    auto* save = ms->add_subcommand("save", "save a mindspace (bytes and metadata) to a file");
    save->add_option("mindspace", a.key, "name or id")->required();
    save->add_option("file", a.file, "file to write")->required();
    save->callback([&] { rc = cmd_ms_save(o, a); });
    auto* load = ms->add_subcommand("load", "create a persistent mindspace from a saved file");
    load->add_option("file", a.file, "file written by ms save")->required();
    auto* load_name =
        load->add_option("--name", a.name, "name to give it (default: the saved name)")
            ->check(llmosctl::not_an_option());
    load->callback([&] { rc = cmd_ms_load(o, a, load_name->count() > 0); });
    auto* quota = ms->add_subcommand("quota", "show (or, as root, set) a uid's mindspace quota");
    quota->add_option("--uid", quota_uid, "uid (default: yours)")->check(llmosctl::not_an_option());
    quota->add_option("--set", quota_set, "new limit: a size, 'unlimited' or 'default'")
        ->check(llmosctl::not_an_option());
    quota->callback([&] { rc = cmd_ms_quota(o, quota_uid, quota_set); });

    auto* sched =
        app.add_subcommand("sched", "the request scheduler: status, attach, detach, weight, grant");
    sched->require_subcommand(1);
    sched->add_subcommand("status", "show the scheduler's policy, workers, queues and tenants")
        ->callback([&] { rc = cmd_sched_status(o); });
    std::string attach_file;
    std::vector<std::string> attach_opts;
    auto* attach = sched->add_subcommand("attach", "attach a BPF policy (root)");
    attach->add_option("file", attach_file, "NAME.bpf.o")->required();
    // One NAME=VALUE per --opt: without allow_extra_args(false) it would
    // take the file too ("--opt a=1 fifo.bpf.o").
    attach
        ->add_option("--opt", attach_opts,
                     "set a tunable (a const volatile integer) before loading: NAME=VALUE; "
                     "repeat it for each")
        ->allow_extra_args(false);
    attach->callback([&] { rc = cmd_sched_attach(o, attach_file, attach_opts); });
    sched->add_subcommand("detach", "detach the BPF policy (root)")->callback([&] {
        rc = cmd_sched_detach(o);
    });
    uint32_t w_tenant = 0, w_weight = 0;
    auto* weight = sched->add_subcommand("weight", "set a tenant's share (root)");
    weight->add_option("tenant", w_tenant, "tenant id")
        ->required()
        ->transform(llmosctl::decimal<uint32_t>());
    weight->add_option("weight", w_weight, "share, 1..10000 (default 100)")
        ->required()
        ->transform(llmosctl::decimal<uint32_t>())
        ->check(CLI::Range(1, LLMOS_MAX_WEIGHT));
    weight->callback([&] { rc = cmd_sched_weight(o, w_tenant, w_weight); });
    std::string g_user, g_tenants;
    bool g_reset = false, g_worker = false, g_no_worker = false;
    auto* grant = sched->add_subcommand(
        "grant", "show or set (root) the tenants a user may submit requests as");
    grant->add_option("user", g_user, "user name or uid (default: this user)");
    grant->add_option("tenants", g_tenants,
                      "FIRST-LAST, one tenant, or 'all': the user's tenants from now on");
    grant->add_flag("--reset", g_reset,
                    "back to the user's own tenant (the one numbered as its uid), no workers");
    auto* g_w = grant->add_flag("--worker", g_worker,
                                "the user may also register workers (which answer requests)");
    grant->add_flag("--no-worker", g_no_worker, "the user may no longer register workers")
        ->excludes(g_w);
    grant->callback([&] {
        rc = cmd_sched_grant(o, g_user, g_tenants, g_reset, g_worker ? 1 : g_no_worker ? 0 : -1);
    });

    double top_interval = 1.0;
    int top_iterations = 0;
    auto* top = app.add_subcommand("top", "live view of the scheduler (Ctrl-C to stop)");
    top->add_option("--interval", top_interval, "seconds between refreshes (default 1)");
    top->add_option("--iterations", top_iterations, "stop after this many (default: never)")
        ->transform(llmosctl::decimal<int>(false));
    top->callback([&] { rc = cmd_top(o, top_interval, top_iterations); });

    bench_args ba;
    auto* bench = app.add_subcommand(
        "bench", "synthetic workers: wait and sojourn times of the scheduler's policy");
    bench->add_option("--workers", ba.workers, "worker threads (default 2)")
        ->transform(llmosctl::decimal<int>(false));
    bench
        ->add_option("--capacity", ba.capacity,
                     "requests each worker holds at once, 1.." +
                         std::to_string(LLMOS_MAX_CAPACITY) + " (default 1)")
        ->transform(llmosctl::decimal<uint32_t>());
    bench->add_option("--service", ba.service, "service time: exp:MEAN_MS (default exp:5)")
        ->check(llmosctl::not_an_option());
    bench->add_option("--arrival", ba.arrival, "arrivals: poisson:RATE/s (default poisson:200)")
        ->check(llmosctl::not_an_option());
    bench->add_option("--requests", ba.requests, "requests (default 1000)")
        ->transform(llmosctl::decimal<int>(false));
    bench->add_option("--tenants", ba.tenants, "tenants, chosen uniformly (default 1)")
        ->transform(llmosctl::decimal<int>(false));
    bench->add_option("--seed", ba.seed, "random seed (default 1)")
        ->transform(llmosctl::decimal<uint64_t>());
    bench->add_option("--timeout", ba.timeout,
                      "give up when no request has finished for this many seconds (default 30, "
                      "or 20 mean service times where longer)");
    bench->callback([&] { rc = cmd_bench(o, ba); });

    llmosctl::add_server_commands(app, o.json, rc);

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
    // What was printed must have been written (a full disk, a closed pipe).
    // A command that failed has said why already (ms read: that it could
    // not write): one error line, not two.
    std::cout.flush();
    if (std::fflush(stdout) != 0 || std::ferror(stdout) || !std::cout) {
        if (rc) {
            return rc;
        }
        std::fprintf(stderr, "llmosctl: cannot write the output: %s\n", std::strerror(errno));
        return exit_failure;
    }
    return rc;
}
