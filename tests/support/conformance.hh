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
#include <gtest/gtest.h>
#include <sstream>
#include <string>
#include <vector>

namespace llmos::testing {

struct conformance_vector {
    std::string prompt;
    std::vector<int32_t> tokens;
    std::vector<int32_t> greedy;
    std::vector<float> logits; // empty when no .logits file
    std::vector<float> head;   // the prompt's last position's first 16 logits (6 decimals)
    int32_t argmax = -1;       // its top token
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
        } else if (key == "last_pos_logits[0:16]") {
            std::istringstream vals(val);
            for (float f; vals >> f;) {
                e.head.push_back(f);
            }
        } else if (key == "argmax") {
            e.argmax = std::stoi(val);
        }
    }
    std::ifstream lf(base + ".logits");
    float f;
    while (lf >> f) {
        e.logits.push_back(f);
    }
    return e;
}

/// Checks `first` (the prompt's last position's logits) against what
/// `ex` says of them: all of them within `tol` where its .logits file
/// has them (hello, fox: they must), else the first 16 within `tol` and
/// the top token (the .txt, every vector).
inline void expect_logits(const conformance_vector& ex, const std::string& name,
                          const std::vector<float>& first, float tol) {
    if (name != "bytes") {
        EXPECT_FALSE(ex.logits.empty()) << name << ": no .logits file";
    }
    if (!ex.logits.empty()) {
        ASSERT_EQ(ex.logits.size(), first.size());
        EXPECT_LE(max_abs_difference(first, ex.logits), tol) << "max abs logit difference";
    }
    ASSERT_EQ(ex.head.size(), 16u) << name << ": no last_pos_logits[0:16] line";
    ASSERT_GE(first.size(), 16u);
    EXPECT_LE(max_abs_difference({first.begin(), first.begin() + 16}, ex.head),
              std::max(tol, 1e-6f))
        << "the first 16 logits";
    EXPECT_EQ(std::max_element(first.begin(), first.end()) - first.begin(), ex.argmax)
        << "the top token";
}

} // namespace llmos::testing
