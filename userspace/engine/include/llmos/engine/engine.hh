// SPDX-License-Identifier: MIT
//
// The inference engine's public headers live next to this one, one per
// noun: gguf.hh (file format), quant.hh (weight types), vocab.hh
// (tokenizers), model.hh, kv_cache.hh, batch.hh, sampling.hh.
#pragma once
