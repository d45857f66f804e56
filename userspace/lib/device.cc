// SPDX-License-Identifier: MIT
#include "local.hh"

#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <linux/llmos.h>
#include <llmos/device.hh>
#include <string>
#include <sys/ioctl.h>

namespace llmos {

std::vector<std::string> feature_names(uint64_t features) {
    static constexpr struct {
        uint64_t bit;
        const char* name;
    } known[] = {
        {LLMOS_FEATURE_VERSION, "version"},           {LLMOS_FEATURE_MINDSPACE, "mindspace"},
        {LLMOS_FEATURE_MS_DMABUF, "ms-dmabuf"},       {LLMOS_FEATURE_SCHED, "sched"},
        {LLMOS_FEATURE_BPF_POLICY, "bpf-policy"},     {LLMOS_FEATURE_SCHED_RETURN, "sched-return"},
        {LLMOS_FEATURE_TENANT_GRANT, "tenant-grant"}, {LLMOS_FEATURE_WORKER_GRANT, "worker-grant"},
    };
    std::vector<std::string> names;
    for (const auto& k : known) {
        if (features & k.bit) {
            names.emplace_back(k.name);
            features &= ~k.bit;
        }
    }
    for (unsigned i = 0; i < 64; ++i) {
        if (features & (uint64_t{1} << i)) {
            names.push_back("bit " + std::to_string(i));
        }
    }
    return names;
}

std::string default_device_path() {
    const char* env = std::getenv("LLMOS_DEVICE");
    return env && *env ? env : "/dev/llmos";
}

std::string default_local_dir() {
    const char* env = std::getenv("LLMOS_LOCAL_DIR");
    return env && *env ? env : "/dev/shm/llmos";
}

const char* to_string(backend_kind k) noexcept {
    return k == backend_kind::kernel ? "kernel" : "local";
}

static result<abi_version> ioc_version(int fd) noexcept {
    llmos_version v{};
    v.size = sizeof(v);
    if (::ioctl(fd, LLMOS_IOC_VERSION, &v) != 0) {
        // A file that is not our device rejects the command number.
        if (errno == ENOTTY || errno == EINVAL) {
            return errc::not_llmos_device;
        }
        return last_error();
    }
    return abi_version{v.out_abi_major, v.out_abi_minor, v.out_features};
}

result<device> device::open(const std::string& path) {
    unique_fd fd{::open(path.c_str(), O_RDWR | O_CLOEXEC)};
    if (!fd) {
        return last_error();
    }
    auto v = ioc_version(fd.get());
    if (!v) {
        return v.error();
    }
    if (v->major != LLMOS_ABI_MAJOR) {
        return errc::abi_mismatch;
    }
    return device{backend_kind::kernel, std::move(fd), path, v.value()};
}

result<device> device::open_local(const std::string& dir) {
    auto fd = local::open_store(dir);
    if (!fd) {
        return fd.error();
    }
    return device{backend_kind::local, std::move(*fd), dir, local::version()};
}

result<device> device::open_auto() {
    const char* env = std::getenv("LLMOS_BACKEND");
    std::string want = env ? env : "";
    if (want == "kernel") {
        return open();
    }
    if (want == "local") {
        return open_local();
    }
    if (!want.empty() && want != "auto") {
        return std::make_error_code(std::errc::invalid_argument);
    }
    // A device the user named is the one wanted: a wrong path is an
    // error, not another backend.
    if (const char* dev = std::getenv("LLMOS_DEVICE"); dev && *dev) {
        return open();
    }
    auto dev = open();
    if (dev || dev.error() != std::errc::no_such_file_or_directory) {
        return dev;
    }
    return open_local();
}

result<abi_version> device::query_version() const noexcept {
    if (_kind == backend_kind::local) {
        return local::version();
    }
    return ioc_version(_fd.get());
}

} // namespace llmos
