// SPDX-License-Identifier: MIT
#pragma once

#include <cerrno>
#include <system_error>
#include <utility>
#include <variant>

namespace llmos {

/// Errors of llmos itself (system call failures use std::system_category).
enum class errc {
    not_llmos_device = 1, ///< the file answers, but not as /dev/llmos does
    abi_mismatch,         ///< the module speaks an incompatible ABI major
    not_ms_file,          ///< not a saved mindspace (bad magic)
    ms_file_version,      ///< a saved mindspace of an unknown format version
    ms_file_corrupt,      ///< a saved mindspace that is truncated or damaged
    local_ms_damaged,     ///< the local store's file of a mindspace is damaged
};

const std::error_category& llmos_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), llmos_category()};
}

/// The error code of the calling thread's errno.
inline std::error_code last_error() noexcept {
    return {errno, std::system_category()};
}

/// A value or the error that prevented it. value() on an error throws
/// std::system_error, so callers that do not check still fail loudly.
template <typename T>
class [[nodiscard]] result {
    std::variant<T, std::error_code> _v;

public:
    result(T v)
        : _v(std::in_place_index<0>, std::move(v)) {}
    result(std::error_code ec)
        : _v(std::in_place_index<1>, ec) {}
    result(errc e)
        : _v(std::in_place_index<1>, make_error_code(e)) {}

    bool has_value() const noexcept { return _v.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }
    /// The error, or a default (no-error) code when there is a value.
    std::error_code error() const noexcept {
        return has_value() ? std::error_code{} : std::get<1>(_v);
    }
    T& value() & {
        check();
        return std::get<0>(_v);
    }
    const T& value() const& {
        check();
        return std::get<0>(_v);
    }
    T&& value() && {
        check();
        return std::get<0>(std::move(_v));
    }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

private:
    void check() const {
        if (!has_value()) {
            throw std::system_error(std::get<1>(_v));
        }
    }
};

} // namespace llmos

template <>
struct std::is_error_code_enum<llmos::errc> : std::true_type {};
