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

/// An open /dev/llmos: one client context of the module.
class device {
    unique_fd _fd;
    std::string _path;
    abi_version _version;

    device(unique_fd fd, std::string path, abi_version v)
        : _fd(std::move(fd))
        , _path(std::move(path))
        , _version(v) {}

public:
    /// Opens `path` and checks that it speaks llmos ABI major
    /// LLMOS_ABI_MAJOR. Fails with the open(2) error, errc::not_llmos_device
    /// when the file does not answer VERSION, or errc::abi_mismatch.
    static result<device> open(const std::string& path = default_device_path());

    /// Asks the module again (the answer at open time is version()).
    result<abi_version> query_version() const noexcept;

    const abi_version& version() const noexcept { return _version; }
    const std::string& path() const noexcept { return _path; }
    int fd() const noexcept { return _fd.get(); }
};

} // namespace llmos
