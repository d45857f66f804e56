// SPDX-License-Identifier: MIT
//
// Graph captures against the calls that synchronize the device.
//
// A graph capture forbids calls that synchronize the device or the legacy
// stream, or free memory (cudaFree, cudaFreeHost, cudaDeviceSynchronize, a
// copy or memset on the legacy stream, unmapping virtual memory): made on
// the capturing thread they fail and invalidate the capture, and CUDA
// checks some of them per device, so that one made on another thread may
// invalidate the capture (and fail) whatever the capture's mode. The
// engine's threads (llmosd's workers, its model loads, the KV pool) make
// both kinds of calls. So a capture holds this lock shared, and each such
// call holds it exclusively for the call. A capture waits for the lock a
// while (one such call: a model's largest matrix copied over), then gives
// up and its step is launched instead: a capture never waits on a thread
// that might wait for it. On a thread that is capturing, the call is not
// guarded (it would wait for itself): it fails, and so does the capture,
// which the step then runs without.
#pragma once

#include <chrono>
#include <shared_mutex>

namespace llmos::engine::cuda_detail {

inline std::shared_timed_mutex& capture_mutex() {
    static std::shared_timed_mutex m;
    return m;
}

/// How long a capture waits for the calls that synchronize the device.
inline constexpr std::chrono::milliseconds capture_wait{50};

/// This thread captures a graph (holds capture_mutex() shared).
inline thread_local bool capturing = false;
/// device_sync_guards this thread holds (the outermost locks).
inline thread_local int sync_guards = 0;

/// Held around a call that synchronizes the device: no capture runs then.
/// Nests.
class device_sync_guard {
public:
    device_sync_guard()
        : _locked(!capturing && sync_guards == 0) {
        if (_locked) {
            capture_mutex().lock();
        }
        ++sync_guards;
    }
    ~device_sync_guard() {
        --sync_guards;
        if (_locked) {
            capture_mutex().unlock();
        }
    }
    device_sync_guard(const device_sync_guard&) = delete;
    device_sync_guard& operator=(const device_sync_guard&) = delete;

private:
    bool _locked;
};

/// Held while a graph is captured, when it could be taken in capture_wait.
class capture_section {
public:
    capture_section()
        : _held(capture_mutex().try_lock_shared_for(capture_wait)) {
        capturing = _held;
    }
    ~capture_section() {
        if (_held) {
            capturing = false;
            capture_mutex().unlock_shared();
        }
    }
    capture_section(const capture_section&) = delete;
    capture_section& operator=(const capture_section&) = delete;
    explicit operator bool() const noexcept { return _held; }

private:
    bool _held;
};

} // namespace llmos::engine::cuda_detail
