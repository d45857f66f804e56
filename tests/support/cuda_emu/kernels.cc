// SPDX-License-Identifier: MIT
//
// The engine's CUDA kernels (userspace/engine/cuda/cuda_kernels.cu), the
// same source, compiled as C++ over the emulator (cuda_emu.hh).
#include "cuda_kernels.cu"
