// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <llmos/result.hh>
#include <llmos/unique_fd.hh>
#include <string>
#include <string_view>
#include <vector>

namespace llmos {

/// What VERSION reports.
struct abi_version {
    uint32_t major = 0;
    uint32_t minor = 0;
    uint64_t features = 0; ///< bit mask of enum llmos_feature
};

/// Names of the feature bits set in `features` ("version", ...); a bit this
/// library does not know is named "bit N".
std::vector<std::string> feature_names(uint64_t features);

/// The device path used when none is given: $LLMOS_DEVICE, else /dev/llmos.
std::string default_device_path();
/// The local backend's folder: $LLMOS_LOCAL_DIR, else /dev/shm/llmos.
std::string default_local_dir();

/// Where mindspaces and the scheduler live.
enum class backend_kind {
    kernel, ///< the llmos module, through /dev/llmos
    local,  ///< no module: mindspaces are files in a shared-memory folder
};

const char* to_string(backend_kind k) noexcept;

/// An open llmos backend: for the kernel, an open /dev/llmos (one client
/// context of the module); for the local backend, its folder.
class device {
    backend_kind _kind;
    unique_fd _fd;
    std::string _path;
    abi_version _version;

    device(backend_kind k, unique_fd fd, std::string path, abi_version v)
        : _kind(k)
        , _fd(std::move(fd))
        , _path(std::move(path))
        , _version(v) {}

public:
    /// Opens the kernel backend at `path` and checks that it speaks llmos
    /// ABI major LLMOS_ABI_MAJOR. Fails with the open(2) error,
    /// errc::not_llmos_device when the file does not answer VERSION, or
    /// errc::abi_mismatch.
    static result<device> open(const std::string& path = default_device_path());
    /// Opens (creating it if needed) the local backend in `dir`.
    static result<device> open_local(const std::string& dir = default_local_dir());
    /// $LLMOS_BACKEND = kernel or local picks one; unset (or auto), the
    /// kernel backend when /dev/llmos exists, else the local one. A
    /// device named by $LLMOS_DEVICE is opened with no fall back.
    static result<device> open_auto();

    /// Asks the module again (the answer at open time is version()).
    result<abi_version> query_version() const noexcept;

    backend_kind kind() const noexcept { return _kind; }
    const abi_version& version() const noexcept { return _version; }
    /// The device path (kernel) or the folder (local).
    const std::string& path() const noexcept { return _path; }
    /// /dev/llmos (kernel) or the folder, opened O_PATH (local).
    int fd() const noexcept { return _fd.get(); }
};

} // namespace llmos
