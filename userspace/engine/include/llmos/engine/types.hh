// SPDX-License-Identifier: MIT
//
// Tensor element types as GGUF numbers them (the ggml type ids), with the
// block geometry each one stores: a row of n elements of a block type takes
// n / block_elems blocks of block_bytes each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace llmos::engine {

enum class ggml_type : uint32_t {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q8_1 = 9,
    q2_k = 10,
    q3_k = 11,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    q8_k = 15,
    bf16 = 30,
};

/// Block geometry and name of a type.
struct type_info {
    std::string_view name;
    uint32_t block_elems; ///< elements per block (1 for plain floats)
    uint32_t block_bytes; ///< bytes per block
    bool supported;       ///< the engine computes with it
};

/// The geometry of `t`, or nothing for an id GGUF does not define (or one
/// this engine does not know at all).
constexpr std::optional<type_info> info(ggml_type t) {
    switch (t) {
    case ggml_type::f32:
        return type_info{"F32", 1, 4, true};
    case ggml_type::f16:
        return type_info{"F16", 1, 2, true};
    case ggml_type::bf16:
        return type_info{"BF16", 1, 2, true};
    case ggml_type::q4_0:
        return type_info{"Q4_0", 32, 18, true};
    case ggml_type::q4_1:
        return type_info{"Q4_1", 32, 20, true};
    case ggml_type::q5_0:
        return type_info{"Q5_0", 32, 22, true};
    case ggml_type::q5_1:
        return type_info{"Q5_1", 32, 24, true};
    case ggml_type::q8_0:
        return type_info{"Q8_0", 32, 34, true};
    case ggml_type::q8_1:
        return type_info{"Q8_1", 32, 36, false};
    case ggml_type::q2_k:
        return type_info{"Q2_K", 256, 84, false};
    case ggml_type::q3_k:
        return type_info{"Q3_K", 256, 110, false};
    case ggml_type::q4_k:
        return type_info{"Q4_K", 256, 144, true};
    case ggml_type::q5_k:
        return type_info{"Q5_K", 256, 176, true};
    case ggml_type::q6_k:
        return type_info{"Q6_K", 256, 210, true};
    case ggml_type::q8_k:
        return type_info{"Q8_K", 256, 292, false};
    }
    return std::nullopt;
}

/// Bytes of a row of `n` elements of `t`; nothing when `n` is not a whole
/// number of blocks or `t` is unknown.
constexpr std::optional<uint64_t> row_bytes(ggml_type t, uint64_t n) {
    auto i = info(t);
    if (!i || n % i->block_elems != 0) {
        return std::nullopt;
    }
    return n / i->block_elems * i->block_bytes;
}

} // namespace llmos::engine
