// SPDX-License-Identifier: MIT
//
// gpu_memory in a build without CUDA (LLMOS_CUDA=OFF, no nvcc, or a
// sanitizer build): the same API, every factory refuses with one clear
// line. The fd store and passing (cuda_memory_fds.cc) work as usual.
#include <llmos/engine/cuda_memory.hh>

namespace llmos::engine {

namespace {

constexpr const char* no_cuda = "llmos was built without CUDA (LLMOS_CUDA=OFF, no nvcc found, "
                                "or a sanitizer build): no GPU memory";

[[noreturn]] void refuse(const char* what) {
    throw gpu_error(std::string(what) + ": " + no_cuda);
}

} // namespace

struct gpu_memory::state {};

bool gpu_built_with_cuda() noexcept {
    return false;
}

gpu_probe_result probe_gpu(int) {
    gpu_probe_result r;
    r.reason = no_cuda;
    return r;
}

gpu_memory::gpu_memory(std::unique_ptr<state> s) noexcept
    : _s(std::move(s)) {
}
gpu_memory::gpu_memory(gpu_memory&&) noexcept = default;
gpu_memory& gpu_memory::operator=(gpu_memory&&) noexcept = default;
gpu_memory::~gpu_memory() = default;

gpu_memory gpu_memory::reserve(uint64_t, int) {
    refuse("gpu_memory::reserve");
}

gpu_memory gpu_memory::import(std::span<const gpu_chunk>, uint64_t, int) {
    refuse("gpu_memory::import");
}

gpu_memory gpu_memory::import(const gpu_mindspace&, int) {
    refuse("gpu_memory::import");
}

void gpu_memory::grow(uint64_t) {
    refuse("gpu_memory::grow");
}
uint64_t gpu_memory::device_ptr() const noexcept {
    return 0;
}
uint64_t gpu_memory::mapped_bytes() const noexcept {
    return 0;
}
uint64_t gpu_memory::reserved_bytes() const noexcept {
    return 0;
}
uint64_t gpu_memory::granularity() const noexcept {
    return 0;
}
size_t gpu_memory::chunk_count() const noexcept {
    return 0;
}
int gpu_memory::device() const noexcept {
    return -1;
}
void gpu_memory::write(uint64_t, std::span<const std::byte>) {
    refuse("gpu_memory::write");
}
void gpu_memory::read(uint64_t, std::span<std::byte>) const {
    refuse("gpu_memory::read");
}

owned_fd gpu_memory::export_dmabuf(uint64_t, uint64_t) const {
    refuse("gpu_memory::export_dmabuf");
}

std::vector<gpu_chunk> gpu_memory::export_chunks() const {
    refuse("gpu_memory::export_chunks");
}

gpu_mindspace gpu_memory::export_mindspace(std::string, bool) const {
    refuse("gpu_memory::export_mindspace");
}

} // namespace llmos::engine
