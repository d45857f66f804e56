// SPDX-License-Identifier: MIT
//
// The tile unit's model (quant_kernels.hh amx_tile_model()): the AMX
// kernels compiled again with each tile instruction emulated.
#define LLMOS_AMX_MODEL 1
#include "quant_amx.cc"
