// SPDX-License-Identifier: MIT
//
// The CUDA entry points of a library built without CUDA: the probe says
// so, and whatever needs a device throws cuda_error saying so.
// (cuda_kv_cache, host memory only, is in cuda_backend_kv.cc in both
// builds.)
#include <llmos/engine/cuda.hh>

namespace llmos::engine {

namespace {

constexpr const char* without =
    "built without CUDA (configure with LLMOS_CUDA=ON and nvcc installed)";

} // namespace

struct cuda_model::impl {};
struct cuda_context::impl {};

bool cuda_built() noexcept {
    return false;
}

cuda_device_info cuda_probe(int device) noexcept {
    cuda_device_info i;
    i.device = device;
    try {
        i.reason = without;
    } catch (...) {
    }
    return i;
}

cuda_blas_info cuda_blas() noexcept {
    cuda_blas_info i;
    try {
        i.reason = without;
    } catch (...) {
    }
    return i;
}

cuda_device_buffer::cuda_device_buffer(uint64_t, int) {
    throw cuda_error(std::string("cuda device buffer: ") + without);
}

cuda_device_buffer::~cuda_device_buffer() = default;

cuda_device_buffer::cuda_device_buffer(cuda_device_buffer&& o) noexcept
    : _p(o._p)
    , _n(o._n)
    , _device(o._device) {
    o._p = nullptr;
    o._n = 0;
}

cuda_model::cuda_model(const model&, int) {
    throw cuda_error(std::string("cuda model: ") + without);
}

cuda_model::~cuda_model() = default;
cuda_model::cuda_model(cuda_model&&) noexcept = default;

const model& cuda_model::get_model() const noexcept {
    __builtin_unreachable(); // no object exists
}

int cuda_model::device() const noexcept {
    return -1;
}

uint64_t cuda_model::device_bytes() const noexcept {
    return 0;
}

std::string cuda_model::layout_summary() const {
    return without;
}

cuda_context::cuda_context(const cuda_model&, cuda_context_options) {
    throw cuda_error(std::string("cuda context: ") + without);
}

cuda_context::~cuda_context() = default;

step_status cuda_context::step(std::span<cuda_batch_entry>) {
    throw cuda_error(std::string("cuda context: ") + without);
}

const cuda_model& cuda_context::get_model() const noexcept {
    __builtin_unreachable(); // no object exists
}

bool cuda_context::uses_cublas() const noexcept {
    return false;
}

std::string cuda_context::gemm_path() const {
    return without;
}

bool cuda_graphs_wanted() noexcept {
    return false;
}

bool cuda_context::uses_graphs() const noexcept {
    return false;
}

std::string cuda_context::graph_path() const {
    return without;
}

std::string cuda_context::last_graph_failure() const {
    return {};
}

cuda_graph_stats cuda_context::graph_stats() const noexcept {
    return {};
}

} // namespace llmos::engine
