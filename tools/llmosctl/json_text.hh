// SPDX-License-Identifier: MIT
//
// llmosctl's one way to write JSON: every --json output and request body.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace llmosctl {

/// `j` as JSON text (`indent` as json::dump() takes it). Bytes that are not
/// UTF-8 (a path or a store directory may hold any) become U+FFFD instead
/// of throwing.
inline std::string json_text(const nlohmann::json& j, int indent = -1) {
    return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

} // namespace llmosctl
