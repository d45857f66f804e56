// SPDX-License-Identifier: MIT
//
// Sampling: expected values come from hand computation or from a plain
// double-precision reference in this file, never from the sampler itself.
// Every random test runs from a fixed seed, so a statistical bound that
// holds once holds always (the bounds are the 0.999 quantiles, so a correct
// sampler passes them with a wide margin, and a wrong one does not).
//
// The test program counts operator new calls so that it can check that
// sample() allocates nothing once its buffers exist.
#include "../support/test_new.hh"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <gtest/gtest.h>
#include <limits>
#include <llmos/engine/sampling.hh>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

using namespace llmos::engine;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

int scale() {
    const char* s = std::getenv("LLMOS_TEST_SCALE");
    const int v = s != nullptr ? std::atoi(s) : 1;
    return v > 0 ? v : 1;
}

// Only the temperature step: every filter off.
sampling_params plain(float temperature, uint64_t seed = 1) {
    sampling_params p;
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0;
    p.seed = seed;
    return p;
}

std::vector<int> histogram(sampler& s, std::vector<float> logits, int draws) {
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < draws; ++i) {
        const int32_t t = s.sample(logits);
        EXPECT_GE(t, 0);
        EXPECT_LT(t, static_cast<int32_t>(logits.size()));
        if (t >= 0 && t < static_cast<int32_t>(logits.size())) {
            ++counts[static_cast<size_t>(t)];
        }
    }
    return counts;
}

// Pearson's statistic of `counts` against probabilities `p` (cells with
// p = 0 must be empty and are left out).
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int draws) {
    double chi = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        if (p[i] == 0) {
            EXPECT_EQ(0, counts[i]) << "token " << i << " should never be drawn";
            continue;
        }
        const double e = p[i] * draws;
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

// softmax(l / t) in double, over the tokens `keep` says are in.
std::vector<double> softmax(const std::vector<float>& l, double t, std::vector<bool> keep = {}) {
    if (keep.empty()) {
        keep.assign(l.size(), true);
    }
    double mx = -INFINITY;
    for (size_t i = 0; i < l.size(); ++i) {
        if (keep[i]) {
            mx = std::max(mx, static_cast<double>(l[i]));
        }
    }
    std::vector<double> p(l.size(), 0);
    double z = 0;
    for (size_t i = 0; i < l.size(); ++i) {
        if (keep[i]) {
            p[i] = std::exp((l[i] - mx) / t);
            z += p[i];
        }
    }
    for (auto& v : p) {
        v /= z;
    }
    return p;
}

// 0.999 quantiles of the chi-square distribution, by degrees of freedom.
double chi2_999(size_t df) {
    static const double q[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88};
    return q[df];
}

std::vector<float> log_probs(const std::vector<double>& p) {
    std::vector<float> l;
    for (double v : p) {
        l.push_back(static_cast<float>(std::log(v)));
    }
    return l;
}

// The set of tokens drawn in `draws` tries.
std::vector<bool> seen(sampler& s, const std::vector<float>& logits, int draws) {
    std::vector<bool> out(logits.size(), false);
    const auto counts = histogram(s, logits, draws);
    for (size_t i = 0; i < counts.size(); ++i) {
        out[i] = counts[i] > 0;
    }
    return out;
}

} // namespace

// --- parameters --------------------------------------------------------

TEST(sampling_params, defaults_are_llama_cpp_and_valid) {
    const sampling_params p;
    EXPECT_FLOAT_EQ(0.8f, p.temperature);
    EXPECT_EQ(40, p.top_k);
    EXPECT_FLOAT_EQ(0.95f, p.top_p);
    EXPECT_FLOAT_EQ(0.05f, p.min_p);
    EXPECT_FLOAT_EQ(1.f, p.repeat_penalty);
    EXPECT_EQ(64, p.repeat_last_n);
    EXPECT_FALSE(p.validate().has_value());
}

TEST(sampling_params, validate_names_field_value_and_range) {
    auto msg = [](auto change) {
        sampling_params p;
        change(p);
        return p.validate().value_or("(valid)");
    };
    EXPECT_EQ("temperature must be a finite number >= 0 (0: greedy), got -0.5",
              msg([](auto& p) { p.temperature = -0.5f; }));
    EXPECT_EQ("temperature must be a finite number >= 0 (0: greedy), got nan",
              msg([](auto& p) { p.temperature = NAN; }));
    EXPECT_EQ("temperature must be a finite number >= 0 (0: greedy), got inf",
              msg([](auto& p) { p.temperature = inf; }));
    EXPECT_EQ("top_k must be >= 0 (0: off), got -1", msg([](auto& p) { p.top_k = -1; }));
    EXPECT_EQ("top_p must be in (0, 1] (1: off), got 0", msg([](auto& p) { p.top_p = 0; }));
    EXPECT_EQ("top_p must be in (0, 1] (1: off), got 1.5", msg([](auto& p) { p.top_p = 1.5f; }));
    EXPECT_EQ("min_p must be in [0, 1] (0: off), got -0.25",
              msg([](auto& p) { p.min_p = -0.25f; }));
    EXPECT_EQ("repeat_penalty must be a finite number > 0 (1: off), got 0",
              msg([](auto& p) { p.repeat_penalty = 0; }));
    EXPECT_EQ("repeat_last_n must be in [0, 1048576], got -1",
              msg([](auto& p) { p.repeat_last_n = -1; }));
    EXPECT_EQ("presence_penalty must be in [-2, 2], got 2.5",
              msg([](auto& p) { p.presence_penalty = 2.5f; }));
    EXPECT_EQ("frequency_penalty must be in [-2, 2], got -3",
              msg([](auto& p) { p.frequency_penalty = -3; }));
    EXPECT_EQ("stop[1] is empty", msg([](auto& p) { p.stop = {"a", ""}; }));
    // Matched against the text, it would cut it inside a character.
    EXPECT_EQ("stop[0] is not valid UTF-8", msg([](auto& p) { p.stop = {"\xA9"}; }));
    EXPECT_EQ("stop[0] is 513 bytes, more than 512",
              msg([](auto& p) { p.stop = {std::string(513, 'x')}; }));
    EXPECT_EQ("stop may hold at most 16 strings, got 17",
              msg([](auto& p) { p.stop.assign(17, "x"); }));

    // The edges of each range are in it.
    EXPECT_EQ("(valid)", msg([](auto& p) {
                  p.temperature = 0;
                  p.top_k = 0;
                  p.top_p = 1;
                  p.min_p = 1;
                  p.repeat_last_n = 0;
                  p.presence_penalty = -2;
                  p.frequency_penalty = 2;
                  p.stop.assign(16, std::string(512, 'x'));
              }));
}

TEST(sampler, constructor_rejects_invalid_params_with_the_message) {
    sampling_params p;
    p.top_p = 2;
    try {
        sampler s(p);
        FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ("top_p must be in (0, 1] (1: off), got 2", e.what());
    }
}

// --- random numbers ----------------------------------------------------

TEST(rng, matches_reference_xoshiro256starstar_with_splitmix64_seeding) {
    // Computed with an independent Python transcription of the published
    // algorithms; its splitmix64 gives Rosetta Code's reference values for
    // seed 1234567 (6457827717110365317, 3203168211198807973, ...).
    rng r0(0);
    EXPECT_EQ(0x99ec5f36cb75f2b4ull, r0.next());
    EXPECT_EQ(0xbf6e1f784956452aull, r0.next());
    EXPECT_EQ(0x1a5f849d4933e6e0ull, r0.next());
    EXPECT_EQ(0x6aa594f1262d2d2cull, r0.next());
    rng r42(42);
    EXPECT_EQ(0x15780b2e0c2ec716ull, r42.next());
    EXPECT_EQ(0x6104d9866d113a7eull, r42.next());
    r42.reseed(42);
    EXPECT_EQ(0x15780b2e0c2ec716ull, r42.next());
    for (int i = 0; i < 10000; ++i) {
        const double u = r42.uniform();
        ASSERT_GE(u, 0.0);
        ASSERT_LT(u, 1.0);
    }
}

// --- greedy ------------------------------------------------------------

TEST(sampler, greedy_is_argmax_with_ties_to_lowest_id) {
    sampler s(plain(0));
    std::vector<float> l{0.1f, 2.5f, -3.f, 2.4f};
    EXPECT_EQ(1, s.sample(l));
    l = {1.f, 7.f, 3.f, 7.f, 7.f};
    EXPECT_EQ(1, s.sample(l));
    l = {-2.f, -2.f, -2.f};
    EXPECT_EQ(0, s.sample(l));
    l = {-inf, NAN, -5.f, NAN};
    EXPECT_EQ(2, s.sample(l));
    l = {1e30f, inf, 3.f};
    EXPECT_EQ(1, s.sample(l));
    l = {-inf, -inf};
    EXPECT_EQ(-1, s.sample(l));
    l = {NAN};
    EXPECT_EQ(-1, s.sample(l));
    l = {-100.f};
    EXPECT_EQ(0, s.sample(l));
    l.clear();
    EXPECT_EQ(-1, s.sample(l));
}

TEST(sampler, greedy_ignores_filters_and_seed) {
    sampling_params p; // top_k, top_p and min_p on
    p.temperature = 0;
    std::vector<float> l(1000);
    for (size_t i = 0; i < l.size(); ++i) {
        l[i] = static_cast<float>((i * 7919) % 1000) / 100.f;
    }
    // (i * 7919) % 1000 == 999 for i = 321 only (7919 * 321 = 2541999).
    for (uint64_t seed : {1, 2, 3}) {
        p.seed = seed;
        sampler s(p);
        EXPECT_EQ(321, s.sample(l));
    }
}

// --- temperature -------------------------------------------------------

TEST(sampler, same_seed_same_tokens_other_seed_other_tokens_reset_replays) {
    std::vector<float> l(1000);
    rng g(7);
    for (auto& v : l) {
        v = static_cast<float>(g.uniform() * 4);
    }
    auto run = [&](sampler& s) {
        std::vector<int32_t> out;
        for (int i = 0; i < 200; ++i) {
            std::vector<float> row = l; // the penalties change it
            out.push_back(s.sample(row));
            s.accept(out.back());
        }
        return out;
    };
    sampling_params p;
    p.repeat_penalty = 1.1f; // history matters too
    p.seed = 1234;
    sampler a(p, l.size());
    sampler b(p);
    p.seed = 1235;
    sampler c(p);
    const auto ra = run(a);
    EXPECT_EQ(ra, run(b));
    const auto rc = run(c);
    EXPECT_NE(ra, rc);
    size_t same = 0;
    for (size_t i = 0; i < ra.size(); ++i) {
        same += ra[i] == rc[i];
    }
    EXPECT_LT(same, ra.size() / 4) << "two seeds should give mostly different tokens";
    a.reset();
    EXPECT_EQ(ra, run(a));
}

TEST(sampler, temperature_draws_follow_softmax_of_logits_over_t) {
    const std::vector<float> l{1.f, 2.f, 0.5f, -1.f, 3.f, 0.f};
    const int draws = 200000 * scale();
    for (float t : {0.7f, 1.f, 1.8f}) {
        sampler s(plain(t, 99));
        const auto counts = histogram(s, l, draws);
        const double chi = chi_square(counts, softmax(l, t), draws);
        EXPECT_LT(chi, chi2_999(l.size() - 1)) << "T = " << t;
    }
}

TEST(sampler, equal_logits_draw_uniformly_with_default_params) {
    // Defaults: top-k 40 keeps all 8, top-p 0.95 needs all 8 (7/8 < 0.95),
    // min-p keeps all (each has the largest probability).
    const std::vector<float> l(8, 0.25f);
    sampler s(sampling_params{});
    const int draws = 80000 * scale();
    const auto counts = histogram(s, l, draws);
    EXPECT_LT(chi_square(counts, std::vector<double>(8, 1.0 / 8), draws), chi2_999(7));
}

TEST(sampler, one_token_vocab) {
    sampler s(sampling_params{});
    std::vector<float> l{-42.f};
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(0, s.sample(l));
    }
}

TEST(sampler, masked_and_nan_tokens_are_never_drawn) {
    sampler s(plain(1.5f, 3));
    std::vector<float> l{-inf, 0.f, NAN, 1.f, -inf, -20.f};
    const int draws = 50000 * scale();
    const auto counts = histogram(s, l, draws);
    const std::vector<bool> keep{false, true, false, true, false, true};
    std::vector<float> finite{0, 0.f, 0, 1.f, 0, -20.f};
    EXPECT_LT(chi_square(counts, softmax(finite, 1.5, keep), draws), chi2_999(2));

    std::vector<float> none{-inf, NAN, -inf};
    EXPECT_EQ(-1, s.sample(none));
    std::vector<float> empty;
    EXPECT_EQ(-1, s.sample(empty));
}

TEST(sampler, infinite_logits_win_and_share) {
    sampler s(plain(1, 4));
    std::vector<float> l{5.f, inf, 80.f, inf, -inf};
    const auto counts = histogram(s, l, 20000);
    EXPECT_EQ(0, counts[0] + counts[2] + counts[4]);
    EXPECT_LT(chi_square(counts, {0, 0.5, 0, 0.5, 0}, 20000), chi2_999(1));
}

// --- top-k -------------------------------------------------------------

TEST(sampler, top_k_keeps_the_k_largest_and_renormalises) {
    std::vector<float> l{0.5f, 3.f, -1.f, 2.f, 2.5f, 0.f, 1.f, -2.f};
    auto p = plain(1.3f, 5);
    p.top_k = 3; // ids 1, 4, 3
    sampler s(p);
    const int draws = 100000 * scale();
    const auto counts = histogram(s, l, draws);
    std::vector<bool> keep(l.size(), false);
    keep[1] = keep[4] = keep[3] = true;
    EXPECT_LT(chi_square(counts, softmax(l, 1.3, keep), draws), chi2_999(2));
}

TEST(sampler, top_k_ties_at_the_cut_go_to_lower_ids) {
    std::vector<float> l{1.f, 5.f, 5.f, 5.f, 0.f};
    auto p = plain(1, 6);
    p.top_k = 2;
    sampler s(p);
    const auto counts = histogram(s, l, 10000);
    EXPECT_GT(counts[1], 0);
    EXPECT_GT(counts[2], 0);
    EXPECT_EQ(0, counts[0] + counts[3] + counts[4]);
}

TEST(sampler, top_k_larger_than_vocab_keeps_all) {
    std::vector<float> l{0.f, 1.f, 2.f};
    auto p = plain(1, 8);
    p.top_k = 100;
    sampler s(p);
    const auto counts = histogram(s, l, 60000);
    EXPECT_LT(chi_square(counts, softmax(l, 1), 60000), chi2_999(2));
}

// --- top-p -------------------------------------------------------------

TEST(sampler, top_p_keeps_the_smallest_prefix_reaching_p) {
    // Probabilities 0.5 (id 2), 0.25 (id 0), 0.15 (id 3), 0.1 (id 1).
    // Cumulative, largest first: 0.5, 0.75, 0.9, 1.
    const auto l = log_probs({0.25, 0.1, 0.5, 0.15});
    struct {
        float top_p;
        std::vector<bool> keep;
    } cases[] = {
        {0.4f, {false, false, true, false}}, // 0.5 >= 0.4
        {0.7f, {true, false, true, false}},  // 0.75 >= 0.7
        {0.8f, {true, false, true, true}},   // 0.9 >= 0.8
        {0.95f, {true, true, true, true}},
    };
    const int draws = 100000 * scale();
    for (const auto& c : cases) {
        auto p = plain(1, 10);
        p.top_p = c.top_p;
        sampler s(p);
        const auto counts = histogram(s, l, draws);
        size_t df = 0;
        for (bool k : c.keep) {
            df += k;
        }
        if (df == 1) {
            EXPECT_EQ(draws, counts[2]) << "top_p " << c.top_p;
        } else {
            EXPECT_LT(chi_square(counts, softmax(l, 1, c.keep), draws), chi2_999(df - 1))
                << "top_p " << c.top_p;
        }
    }
}

TEST(sampler, top_p_after_top_k_renormalises_over_the_k) {
    // top-k 3 leaves 0.5, 0.25, 0.15, renormalised 0.556, 0.278, 0.167:
    // cumulative 0.556, 0.833, so top_p 0.8 keeps two (over the whole
    // vocabulary 0.75 would fall short and keep three).
    const auto l = log_probs({0.5, 0.25, 0.15, 0.1});
    auto p = plain(1, 15);
    p.top_k = 3;
    p.top_p = 0.8f;
    sampler s(p);
    const int draws = 50000 * scale();
    const auto counts = histogram(s, l, draws);
    EXPECT_LT(chi_square(counts, softmax(l, 1, {true, true, false, false}), draws), chi2_999(1));
}

TEST(sampler, top_p_uses_probabilities_before_temperature) {
    // At T = 5 the probabilities flatten to 0.296, 0.258, 0.232, 0.214, so a
    // chain with temperature first would keep three tokens for top_p 0.7;
    // llama.cpp's (and this) keeps the two that reach 0.75 at T = 1.
    const auto l = log_probs({0.5, 0.25, 0.15, 0.1});
    auto p = plain(5, 11);
    p.top_p = 0.7f;
    sampler s(p);
    const int draws = 50000 * scale();
    const auto counts = histogram(s, l, draws);
    EXPECT_LT(chi_square(counts, softmax(l, 5, {true, true, false, false}), draws), chi2_999(1));
}

TEST(sampler, top_p_over_a_large_vocab_without_top_k) {
    // 1000 tokens, logit -0.01 * rank, ids scattered: the kept prefix is a
    // few hundred tokens long, more than one round of the growing sort.
    const size_t n = 1000;
    std::vector<float> l(n);
    std::vector<size_t> id_of_rank(n);
    for (size_t r = 0; r < n; ++r) {
        id_of_rank[r] = (r * 389) % n; // 389 is prime to 1000: a permutation
        l[id_of_rank[r]] = -0.01f * static_cast<float>(r);
    }
    const float top_p = 0.9f;
    // Reference cut, in double: ranks are already in descending order.
    double z = 0;
    for (size_t r = 0; r < n; ++r) {
        z += std::exp(static_cast<double>(l[id_of_rank[r]]) - l[id_of_rank[0]]);
    }
    size_t kept = 0;
    for (double cum = 0; kept < n && cum < top_p * z; ++kept) {
        cum += std::exp(static_cast<double>(l[id_of_rank[kept]]) - l[id_of_rank[0]]);
    }
    ASSERT_GT(kept, 128u);
    ASSERT_LT(kept, n);

    auto p = plain(1, 12);
    p.top_p = top_p;
    sampler s(p);
    const auto in = seen(s, l, 40000 * scale());
    for (size_t r = 0; r < n; ++r) {
        if (r >= kept) {
            EXPECT_FALSE(in[id_of_rank[r]]) << "rank " << r << " beyond the cut " << kept;
        } else if (r + 10 >= kept) {
            // The least likely tokens inside the cut: about 50 draws each.
            EXPECT_TRUE(in[id_of_rank[r]]) << "rank " << r << " inside the cut " << kept;
        }
    }
}

TEST(sampler, top_p_with_equal_logits_keeps_lowest_ids) {
    // 1000 equal tokens, top_p 0.5: exactly 500 reach 0.5, ties by id.
    std::vector<float> l(1000, 1.f);
    auto p = plain(1, 13);
    p.top_p = 0.5f;
    sampler s(p);
    const auto in = seen(s, l, 20000);
    for (size_t i = 0; i < l.size(); ++i) {
        if (i >= 500) {
            ASSERT_FALSE(in[i]) << i;
        }
    }
    EXPECT_TRUE(in[499]);
    EXPECT_TRUE(in[0]);
}

// --- min-p -------------------------------------------------------------

TEST(sampler, min_p_drops_tokens_below_min_p_times_the_largest) {
    // 0.4, 0.3, 0.2, 0.06, 0.04 (scattered ids); min_p 0.125 drops below
    // 0.05 (only 0.04), min_p 0.2 drops below 0.08 (0.06 and 0.04).
    const std::vector<double> probs{0.06, 0.4, 0.04, 0.2, 0.3};
    const auto l = log_probs(probs);
    const int draws = 100000 * scale();
    for (int32_t top_k : {0, 4}) { // unsorted and sorted paths (top-4 drops only 0.04)
        for (auto [min_p, keep] :
             {std::pair{0.125f, std::vector<bool>{true, true, false, true, true}},
              std::pair{0.2f, std::vector<bool>{false, true, false, true, true}},
              std::pair{1.f, std::vector<bool>{false, true, false, false, false}}}) {
            auto p = plain(1, 14);
            p.top_k = top_k;
            p.min_p = min_p;
            sampler s(p);
            const auto counts = histogram(s, l, draws);
            size_t df = 0;
            for (bool k : keep) {
                df += k;
            }
            if (df == 1) {
                EXPECT_EQ(draws, counts[1]);
            } else {
                EXPECT_LT(chi_square(counts, softmax(l, 1, keep), draws), chi2_999(df - 1))
                    << "min_p " << min_p << " top_k " << top_k;
            }
        }
    }
}

// --- penalties ---------------------------------------------------------

TEST(sampler, repeat_presence_and_frequency_penalties_on_a_known_history) {
    auto p = plain(0);
    p.repeat_penalty = 2;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    sampler s(p);
    for (int32_t t : {0, 1, 1, 4, -3, 99}) { // -3 ignored; 99 is outside the vocab
        s.accept(t);
    }
    std::vector<float> l{2.f, -1.f, 0.5f, 3.f, 0.f};
    EXPECT_EQ(3, s.sample(l));
    // id 0 (once):  2 / 2 = 1;      1 - 1 * 0.25 - 0.5 = 0.25
    // id 1 (twice): -1 * 2 = -2;   -2 - 2 * 0.25 - 0.5 = -3
    // id 4 (once):   0 * 2 = 0;     0 - 1 * 0.25 - 0.5 = -0.75
    EXPECT_EQ((std::vector<float>{0.25f, -3.f, 0.5f, 3.f, -0.75f}), l);

    // The counts start from zero again on the next call.
    l = {2.f, -1.f, 0.5f, 3.f, 0.f};
    s.sample(l);
    EXPECT_EQ((std::vector<float>{0.25f, -3.f, 0.5f, 3.f, -0.75f}), l);
}

TEST(sampler, repeat_penalty_alone_turns_greedy) {
    auto p = plain(0);
    p.repeat_penalty = 1.5f;
    sampler s(p);
    std::vector<float> l{3.f, 2.9f, -1.f};
    EXPECT_EQ(0, s.sample(l));
    s.accept(0);
    l = {3.f, 2.9f, -1.f};
    EXPECT_EQ(1, s.sample(l)); // 3 / 1.5 = 2 < 2.9
    EXPECT_FLOAT_EQ(2.f, l[0]);
}

TEST(sampler, penalties_look_at_the_last_n_tokens_only) {
    auto p = plain(0);
    p.repeat_last_n = 2;
    p.presence_penalty = 1;
    sampler s(p);
    for (int32_t t : {0, 1, 2, 3, 2}) { // window: 3, 2
        s.accept(t);
    }
    std::vector<float> l{0.f, 0.f, 0.f, 0.f, 0.f};
    s.sample(l);
    EXPECT_EQ((std::vector<float>{0.f, 0.f, -1.f, -1.f, 0.f}), l);

    s.reset();
    l.assign(5, 0.f);
    s.sample(l);
    EXPECT_EQ(std::vector<float>(5, 0.f), l) << "reset() forgets the history";

    p.repeat_last_n = 0;
    sampler off(p);
    off.accept(1);
    l.assign(5, 0.f);
    off.sample(l);
    EXPECT_EQ(std::vector<float>(5, 0.f), l) << "repeat_last_n 0 turns penalties off";
}

TEST(sampler, negative_frequency_penalty_rewards_and_masked_stays_masked) {
    auto p = plain(0);
    p.frequency_penalty = -1;
    sampler s(p);
    s.accept(1);
    s.accept(2);
    std::vector<float> l{1.f, 0.5f, -inf};
    EXPECT_EQ(1, s.sample(l));
    EXPECT_FLOAT_EQ(1.5f, l[1]);
    EXPECT_EQ(-inf, l[2]);
}

// --- cost --------------------------------------------------------------

TEST(sampler, large_vocab_samples_without_allocating) {
    const size_t n = 150000;
    std::vector<float> base(n);
    rng g(21);
    for (auto& v : base) {
        v = static_cast<float>(g.uniform() * 20 - 10);
    }
    struct {
        const char* name;
        int32_t top_k;
        float top_p;
    } runs[] = {{"top_k 40", 40, 0.95f}, {"top_k off, top_p 0.95", 0, 0.95f}, {"no filters", 0, 1}};
    for (const auto& run : runs) {
        sampling_params p;
        p.top_k = run.top_k;
        p.top_p = run.top_p;
        p.repeat_penalty = 1.1f;
        p.seed = 5;
        sampler s(p, n);
        std::vector<float> l = base;
        const int iters = 20 * scale();
        const uint64_t news = llmos::testing::news.load();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) {
            const int32_t t = s.sample(l);
            ASSERT_GE(t, 0);
            ASSERT_LT(t, static_cast<int32_t>(n));
            s.accept(t);
        }
        const auto dt = std::chrono::steady_clock::now() - t0;
        EXPECT_EQ(news, llmos::testing::news.load()) << run.name << ": sample() allocated";
        std::printf("[ info     ] %s: %.3f ms per token over a %zu-token vocab\n", run.name,
                    std::chrono::duration<double, std::milli>(dt).count() / iters, n);
    }
}

// --- stop strings ------------------------------------------------------

namespace {

struct fed {
    std::string text;
    bool stopped = false;
};

// Feeds every piece, then flushes unless stopped; returns all released text.
fed feed_all(stop_matcher& m, const std::vector<std::string>& pieces,
             std::vector<std::string>* each = nullptr) {
    fed out;
    for (const auto& piece : pieces) {
        const auto r = m.feed(piece);
        out.text += r.text;
        if (each != nullptr) {
            each->emplace_back(r.text);
        }
        if (r.stopped) {
            out.stopped = true;
            return out;
        }
    }
    out.text += m.flush().text;
    return out;
}

} // namespace

TEST(stop_matcher, no_stops_releases_everything_at_once) {
    stop_matcher m({});
    std::vector<std::string> each;
    const auto out = feed_all(m, {"Hello", ", ", "world"}, &each);
    EXPECT_EQ((std::vector<std::string>{"Hello", ", ", "world"}), each);
    EXPECT_EQ("Hello, world", out.text);
    EXPECT_FALSE(out.stopped);
}

TEST(stop_matcher, stop_across_pieces_is_cut_with_what_follows) {
    stop_matcher m({"</s>"});
    std::vector<std::string> each;
    const auto out = feed_all(m, {"Hi <", "/", "s", ">more", "never"}, &each);
    EXPECT_EQ((std::vector<std::string>{"Hi ", "", "", ""}), each);
    EXPECT_EQ("Hi ", out.text);
    EXPECT_TRUE(out.stopped);
    // Stopped for good.
    EXPECT_TRUE(m.feed("x").stopped);
    EXPECT_EQ("", m.feed("x").text);
    EXPECT_TRUE(m.flush().stopped);
}

TEST(stop_matcher, a_prefix_that_does_not_complete_is_released) {
    stop_matcher m({"</s>"});
    std::vector<std::string> each;
    const auto out = feed_all(m, {"a<", "/x", " <", "/"}, &each);
    EXPECT_EQ((std::vector<std::string>{"a", "</x", " ", ""}), each);
    EXPECT_EQ("a</x </", out.text) << "flush releases what was held";
    EXPECT_FALSE(out.stopped);
}

TEST(stop_matcher, overlapping_stop_strings) {
    {
        stop_matcher m({"abc", "ab"}); // "ab" completes first
        std::vector<std::string> each;
        const auto out = feed_all(m, {"xa", "b", "c"}, &each);
        EXPECT_EQ((std::vector<std::string>{"x", ""}), each);
        EXPECT_TRUE(out.stopped);
    }
    {
        stop_matcher m({"abc"});
        std::vector<std::string> each;
        const auto out = feed_all(m, {"xa", "b", "d"}, &each);
        EXPECT_EQ((std::vector<std::string>{"x", "", "abd"}), each);
        EXPECT_FALSE(out.stopped);
    }
    {
        // Both complete in the same piece: the earlier one decides.
        stop_matcher m({"world", "lo"});
        EXPECT_EQ("hel", feed_all(m, {"hello world"}).text);
    }
    {
        // "bc" is complete before "abcd" could be: it stops there.
        stop_matcher m({"abcd", "bc"});
        const auto r = m.feed("abc");
        EXPECT_EQ("a", r.text);
        EXPECT_TRUE(r.stopped);
    }
    {
        // A held tail that is a prefix of one stop and contains another's start.
        stop_matcher m({"aab"});
        std::vector<std::string> each;
        EXPECT_EQ("xa", feed_all(m, {"xa", "a", "a", "b"}, &each).text);
        EXPECT_EQ((std::vector<std::string>{"x", "", "a", ""}), each);
    }
}

TEST(stop_matcher, stop_at_the_very_start) {
    stop_matcher m({"User:"});
    auto r = m.feed("User: hi");
    EXPECT_EQ("", r.text);
    EXPECT_TRUE(r.stopped);

    stop_matcher m2({"User:"});
    r = m2.feed("Us");
    EXPECT_EQ("", r.text);
    EXPECT_FALSE(r.stopped);
    r = m2.feed("er:");
    EXPECT_EQ("", r.text);
    EXPECT_TRUE(r.stopped);
}

TEST(stop_matcher, utf8_characters_are_never_split) {
    stop_matcher m({});
    std::vector<std::string> each;
    // "café" with é split, then U+1F600 in three pieces, then a lone
    // continuation byte (ill-formed: released as it is).
    const auto out =
        feed_all(m, {"caf\xC3", "\xA9!", "\xF0\x9F", "\x98", "\x80.", "\x80", "\xC3"}, &each);
    EXPECT_EQ(
        (std::vector<std::string>{"caf", "\xC3\xA9!", "", "", "\xF0\x9F\x98\x80.", "\x80", ""}),
        each);
    EXPECT_EQ("caf\xC3\xA9!\xF0\x9F\x98\x80.\x80\xC3", out.text) << "flush gives the dangling byte";
}

TEST(stop_matcher, utf8_stop_strings) {
    stop_matcher m({"\xE3\x80\x82"}); // "。"
    std::vector<std::string> each;
    const auto out = feed_all(m, {"ok\xE3", "\x80", "\x81", "\xE3\x80", "\x82rest"}, &each);
    // "、" (E3 80 81) shares two bytes with the stop and is released whole.
    EXPECT_EQ((std::vector<std::string>{"ok", "", "\xE3\x80\x81", "", ""}), each);
    EXPECT_EQ("ok\xE3\x80\x81", out.text);
    EXPECT_TRUE(out.stopped);
}

TEST(stop_matcher, reset_starts_over) {
    stop_matcher m({"END"});
    EXPECT_TRUE(m.feed("xEND").stopped);
    m.reset();
    const auto r = m.feed("abc");
    EXPECT_EQ("abc", r.text);
    EXPECT_FALSE(r.stopped);
}

TEST(stop_matcher, random_texts_match_a_naive_reference) {
    // Text over a small alphabet (with a two-byte character) cut at random
    // places; the reference looks, after each piece, for every stop in the
    // whole text so far and stops at the earliest start among those found.
    rng g(77);
    const std::vector<std::string> alphabet{"a", "b", "c", "\xC3\xA9"};
    const int rounds = 3000 * scale();
    for (int round = 0; round < rounds; ++round) {
        std::vector<std::string> stops;
        const size_t n_stops = g.next() % 3;
        size_t longest = 0;
        for (size_t i = 0; i < n_stops; ++i) {
            std::string s;
            const size_t len = 1 + g.next() % 3;
            for (size_t j = 0; j < len; ++j) {
                s += alphabet[g.next() % alphabet.size()];
            }
            longest = std::max(longest, s.size());
            stops.push_back(s);
        }
        std::string text;
        for (size_t j = 0, len = g.next() % 12; j < len; ++j) {
            text += alphabet[g.next() % alphabet.size()];
        }
        std::vector<std::string> pieces;
        for (size_t at = 0; at < text.size();) {
            const size_t len = std::min(text.size() - at, 1 + g.next() % 4); // may split é
            pieces.push_back(text.substr(at, len));
            at += len;
        }

        fed want;
        std::string so_far;
        for (const auto& piece : pieces) {
            so_far += piece;
            size_t hit = std::string::npos;
            for (const auto& s : stops) {
                hit = std::min(hit, so_far.find(s));
            }
            if (hit != std::string::npos) {
                want = {so_far.substr(0, hit), true};
                break;
            }
        }
        if (!want.stopped) {
            want.text = text;
        }

        stop_matcher m(stops);
        fed got;
        size_t given = 0;
        for (const auto& piece : pieces) {
            const auto r = m.feed(piece);
            got.text += r.text;
            given += piece.size();
            if (r.stopped) {
                got.stopped = true;
                break;
            }
            // Holds back no more than a stop prefix and a partial character.
            ASSERT_LE(given - got.text.size(), (longest > 0 ? longest - 1 : 0) + 3);
        }
        if (!got.stopped) {
            got.text += m.flush().text;
        }
        ASSERT_EQ(want.stopped, got.stopped) << "round " << round << " text " << text;
        ASSERT_EQ(want.text, got.text) << "round " << round << " text " << text;
    }
}
