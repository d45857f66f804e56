// SPDX-License-Identifier: MIT
//
// Choosing the next token from a row of logits, and finding stop strings in
// the text that comes out.
//
// The sampler runs llama.cpp's default chain, in its order:
//
//   penalties -> top-k -> top-p -> min-p -> temperature -> draw
//
// - penalties (over the last repeat_last_n accepted tokens; a token seen c
//   times): logit l becomes l / repeat_penalty when l > 0 and
//   l * repeat_penalty when l <= 0, then
//   l - c * frequency_penalty - presence_penalty (OpenAI's formula; like
//   llama.cpp, counted over the same window, and repeat_last_n = 0 turns
//   all three off);
// - top-k keeps the k largest logits (a bounded heap over one pass, then a
//   sort of those k: never a sort of the whole vocabulary);
// - top-p keeps the smallest most-probable prefix whose probability, under
//   softmax of the logits, reaches top_p (after top-k it walks the sorted
//   k; without it a histogram of the probabilities finds the cut, and only
//   the tokens near the cut are sorted);
// - min-p keeps the tokens whose probability is at least min_p times the
//   largest one;
// - temperature: the draw is from softmax(logits / temperature) over what
//   is left. As in llama.cpp, temperature comes last: top-p and min-p see
//   the probabilities at temperature 1.
//
// temperature = 0 is greedy: the largest logit after the penalties (ties:
// the lowest id), with no draw. Masked tokens (logit -inf) and NaN logits
// are never chosen; +inf logits win over every finite one.
//
// Reproducibility: the random numbers come from xoshiro256** seeded through
// splitmix64 (below), not from <random>'s distributions, whose results
// differ between standard libraries; ties in every ordering break by token
// id. The same seed, history and logits give the same token wherever exp()
// and log() give the same results (IEEE does not require them to be
// correctly rounded, so two libms may, rarely, disagree at a boundary).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmos::engine {

/// What the caller of a generation asks for. The defaults are llama.cpp's.
struct sampling_params {
    float temperature = 0.8f;      ///< >= 0; 0: greedy
    int32_t top_k = 40;            ///< >= 0; 0: off
    float top_p = 0.95f;           ///< in (0, 1]; 1: off
    float min_p = 0.05f;           ///< in [0, 1]; 0: off
    float repeat_penalty = 1.f;    ///< > 0; 1: off
    int32_t repeat_last_n = 64;    ///< in [0, max_repeat_last_n]; 0: no penalties at all
    float presence_penalty = 0.f;  ///< in [-2, 2] (OpenAI's range); 0: off
    float frequency_penalty = 0.f; ///< in [-2, 2]; 0: off
    uint64_t seed = 0;             ///< the server picks one when a request gives none
    std::vector<std::string>
        stop{};              ///< at most max_stops strings, none empty or over max_stop_bytes
    uint32_t max_tokens = 0; ///< 0: no limit of its own (a stop, EOS or the context ends it)

    static constexpr int32_t max_repeat_last_n = 1 << 20;
    static constexpr size_t max_stops = 16;
    static constexpr size_t max_stop_bytes = 512;

    /// Nothing when every field is in range; otherwise one line naming the
    /// first field that is not, its value and the range it must be in
    /// (e.g. "top_p must be in (0, 1] (1: off), got 0"), fit for an HTTP 400
    /// body. Any thread.
    std::optional<std::string> validate() const;
};

/// xoshiro256** (Blackman and Vigna), its state filled by splitmix64 from a
/// 64-bit seed. Same seed, same numbers, everywhere.
class rng {
public:
    explicit rng(uint64_t seed) { reseed(seed); }

    /// Restarts the sequence from `seed`.
    void reseed(uint64_t seed);
    /// The next 64 random bits.
    uint64_t next();
    /// The next number in [0, 1), with 53 random bits.
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

private:
    std::array<uint64_t, 4> _s{};
};

/// Picks tokens for one sequence. Not thread-safe: one thread at a time
/// (a generation's own).
class sampler {
public:
    /// A sampler for `params`. With `n_vocab` > 0 its buffers are made now,
    /// so sample() never allocates; with 0 they are made by the first
    /// sample(). Throws std::invalid_argument with validate()'s message when
    /// `params` is out of range.
    explicit sampler(const sampling_params& params, size_t n_vocab = 0);

    /// The token to emit for `logits` (one per vocabulary entry), or -1 when
    /// there is none to pick (empty span; every logit -inf or NaN). Applies
    /// the penalties to `logits` in place and leaves the rest of it as it
    /// was. Allocates only when `logits` is longer than every row seen
    /// before. Does not record the token: call accept() with it.
    int32_t sample(std::span<float> logits);

    /// Records `token` as the newest of the history the penalties look at
    /// (the generated tokens, and the prompt's too if the caller wants them
    /// penalised). Negative ids are ignored. Never allocates.
    void accept(int32_t token);

    /// Forgets the history and restarts the random numbers from the seed:
    /// the sampler then picks what a new one would.
    void reset();

    const sampling_params& params() const { return _params; }

private:
    struct candidate {
        float logit;
        int32_t id;
    };

    void apply_penalties(std::span<float> logits);
    size_t select_top_k(std::span<const float> logits, size_t k);
    size_t top_p(size_t n, bool sorted);
    size_t min_p(size_t n, bool sorted);

    sampling_params _params;
    rng _rng;
    std::vector<candidate> _cand;  // scratch: the tokens still in the running
    std::vector<int32_t> _count;   // scratch: occurrences per token, all 0 between calls
    std::vector<int32_t> _history; // ring of the last repeat_last_n accepted tokens
    size_t _history_head = 0;      // where the next accepted token goes
    size_t _history_len = 0;
};

/// Finds stop strings in generated text that arrives piece by piece, and
/// says what may be shown so far: text that could still turn out to be the
/// start of a stop string is held back until it is decided, and so is an
/// incomplete UTF-8 character at the end (a token may end in the middle of
/// one). On a hit, the text before the stop string is released and the stop
/// string and everything after it is not. Not thread-safe.
class stop_matcher {
public:
    /// What feed() and flush() release.
    struct result {
        std::string_view text; ///< valid until the next call on this matcher
        bool stopped;          ///< a stop string was found; nothing follows
    };

    /// A matcher for `stops` (empty strings are ignored).
    explicit stop_matcher(std::vector<std::string> stops);

    /// Adds `piece` to the text and returns the part that is now safe to
    /// show, which may include text held back by earlier calls. When a stop
    /// string is complete, returns the text before the earliest one and
    /// stopped = true; after that every call returns {"", true}.
    result feed(std::string_view piece);

    /// The end of the generation (EOS, max_tokens): releases what is still
    /// held back, as it is ("" after a stop).
    result flush();

    /// Forgets the text, for a new generation with the same stop strings.
    void reset();

private:
    void drop_released();

    std::vector<std::string> _stops;
    size_t _longest = 0;  // longest stop string
    std::string _pending; // text not released yet (plus, at its front, the last release)
    size_t _released = 0; // bytes at the front of _pending released by the last call
    bool _stopped = false;
};

} // namespace llmos::engine
