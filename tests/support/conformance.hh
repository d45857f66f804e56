// SPDX-License-Identifier: MIT
//
// The external conformance vectors in ../shared/testdata (see its README):
// llama-tiny-f32.NAME.txt holds the prompt, its token ids and the greedy
// continuation the other implementation produced, .logits its logits.
// For the engine's tests; testdata_dir (paths.hh) names the directory.
#pragma once

#include "paths.hh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace llmos::testing {

struct conformance_vector {
    std::string prompt;
    std::vector<int32_t> tokens;
    std::vector<int32_t> greedy;
    std::vector<float> logits; // empty when no .logits file
};

inline std::vector<int32_t> parse_ints(const std::string& s) {
    std::vector<int32_t> v;
    std::istringstream in(s);
    int32_t x;
    while (in >> x) {
        v.push_back(x);
    }
    return v;
}

/// The largest |got[i] - want[i]| (the vectors the same size).
inline float max_abs_difference(const std::vector<float>& got, const std::vector<float>& want) {
    float worst = 0;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
        worst = std::max(worst, std::fabs(got[i] - want[i]));
    }
    return worst;
}

/// The vector `name` ("hello", "fox", ...); empty fields when its files
/// are missing (the tests then fail on what they compare).
inline conformance_vector load_conformance(const std::string& name) {
    conformance_vector e;
    const std::string base = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32." + name;
    std::ifstream in(base + ".txt");
    std::string line;
    while (std::getline(in, line)) {
        auto colon = line.find(": ");
        if (colon == std::string::npos) {
            continue;
        }
        std::string key = line.substr(0, colon), val = line.substr(colon + 2);
        if (key == "prompt") {
            e.prompt = val.substr(1, val.size() - 2); // quoted
        } else if (key.starts_with("prompt_tokens")) {
            e.tokens = parse_ints(val);
        } else if (key.starts_with("greedy_") && key != "greedy_text") {
            e.greedy = parse_ints(val);
        }
    }
    std::ifstream lf(base + ".logits");
    float f;
    while (lf >> f) {
        e.logits.push_back(f);
    }
    return e;
}

} // namespace llmos::testing
