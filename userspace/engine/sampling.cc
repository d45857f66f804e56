// SPDX-License-Identifier: MIT
//
// The sampler chain and the stop-string matcher (see sampling.hh for what
// each step does). The sampler works on a scratch array of (logit, id)
// candidates that holds the tokens still in the running; every step keeps a
// prefix of it, and every ordering of it breaks ties by id, so that no
// result depends on how a standard library arranges equal elements.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <llmos/engine/sampling.hh>
#include <llmos/engine/unicode.hh>
#include <stdexcept>
#include <utility>

namespace llmos::engine {

namespace {

std::string fmt(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

std::string out_of_range(std::string_view field, std::string_view range, double v) {
    std::string msg(field);
    msg += " must be ";
    msg += range;
    msg += ", got ";
    msg += fmt(v);
    return msg;
}

uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

// Bytes at the end of `s` that begin a UTF-8 character without finishing
// it (0 when it ends on a whole character, or on bytes that can never
// become one).
size_t incomplete_utf8_tail(std::string_view s) {
    const size_t n = s.size();
    for (size_t back = 1; back <= 4 && back <= n; ++back) {
        const auto c = static_cast<unsigned char>(s[n - back]);
        if ((c & 0xC0) == 0x80) {
            continue; // a continuation byte: look further back for the lead
        }
        size_t need = 1;
        if ((c & 0xE0) == 0xC0) {
            need = 2;
        } else if ((c & 0xF0) == 0xE0) {
            need = 3;
        } else if ((c & 0xF8) == 0xF0) {
            need = 4;
        }
        return need > back ? back : 0;
    }
    return 0;
}

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

} // namespace

std::optional<std::string> sampling_params::validate() const {
    if (!(temperature >= 0) || !std::isfinite(temperature)) {
        return out_of_range("temperature", "a finite number >= 0 (0: greedy)", temperature);
    }
    if (top_k < 0) {
        return out_of_range("top_k", ">= 0 (0: off)", top_k);
    }
    if (!(top_p > 0 && top_p <= 1)) {
        return out_of_range("top_p", "in (0, 1] (1: off)", top_p);
    }
    if (!(min_p >= 0 && min_p <= 1)) {
        return out_of_range("min_p", "in [0, 1] (0: off)", min_p);
    }
    if (!(repeat_penalty > 0) || !std::isfinite(repeat_penalty)) {
        return out_of_range("repeat_penalty", "a finite number > 0 (1: off)", repeat_penalty);
    }
    if (repeat_last_n < 0 || repeat_last_n > max_repeat_last_n) {
        return out_of_range("repeat_last_n", "in [0, " + std::to_string(max_repeat_last_n) + "]",
                            repeat_last_n);
    }
    if (!(presence_penalty >= -2 && presence_penalty <= 2)) {
        return out_of_range("presence_penalty", "in [-2, 2]", presence_penalty);
    }
    if (!(frequency_penalty >= -2 && frequency_penalty <= 2)) {
        return out_of_range("frequency_penalty", "in [-2, 2]", frequency_penalty);
    }
    if (stop.size() > max_stops) {
        return "stop may hold at most " + std::to_string(max_stops) + " strings, got " +
               std::to_string(stop.size());
    }
    for (size_t i = 0; i < stop.size(); ++i) {
        if (stop[i].empty()) {
            return "stop[" + std::to_string(i) + "] is empty";
        }
        if (stop[i].size() > max_stop_bytes) {
            return "stop[" + std::to_string(i) + "] is " + std::to_string(stop[i].size()) +
                   " bytes, more than " + std::to_string(max_stop_bytes);
        }
        // Matched against the text, it would cut it inside a character.
        if (!unicode::is_valid_utf8(stop[i])) {
            return "stop[" + std::to_string(i) + "] is not valid UTF-8";
        }
    }
    return std::nullopt;
}

void rng::reseed(uint64_t seed) {
    for (auto& word : _s) {
        word = splitmix64(seed);
    }
}

uint64_t rng::next() {
    const uint64_t result = rotl(_s[1] * 5, 7) * 9;
    const uint64_t t = _s[1] << 17;
    _s[2] ^= _s[0];
    _s[3] ^= _s[1];
    _s[1] ^= _s[2];
    _s[0] ^= _s[3];
    _s[2] ^= t;
    _s[3] = rotl(_s[3], 45);
    return result;
}

sampler::sampler(const sampling_params& params, size_t n_vocab)
    : _params(params)
    , _rng(params.seed) {
    if (auto err = params.validate()) {
        throw std::invalid_argument(*err);
    }
    _history.resize(static_cast<size_t>(params.repeat_last_n));
    _cand.resize(n_vocab);
    _count.resize(n_vocab, 0);
}

void sampler::accept(int32_t token) {
    if (token < 0 || _history.empty()) {
        return;
    }
    _history[_history_head] = token;
    _history_head = (_history_head + 1) % _history.size();
    _history_len = std::min(_history_len + 1, _history.size());
}

void sampler::reset() {
    _history_head = 0;
    _history_len = 0;
    _rng.reseed(_params.seed);
}

void sampler::apply_penalties(std::span<float> logits) {
    const float repeat = _params.repeat_penalty;
    const float presence = _params.presence_penalty;
    const float frequency = _params.frequency_penalty;
    if (_history_len == 0 || (repeat == 1 && presence == 0 && frequency == 0)) {
        return;
    }
    // Count each token of the window, then penalise it once (at its first
    // place in the ring) and put its count back to 0 for the next call.
    const size_t n = logits.size();
    for (size_t i = 0; i < _history_len; ++i) {
        const auto t = static_cast<size_t>(_history[i]);
        if (t < n) {
            ++_count[t];
        }
    }
    for (size_t i = 0; i < _history_len; ++i) {
        const auto t = static_cast<size_t>(_history[i]);
        if (t >= n || _count[t] == 0) {
            continue;
        }
        const auto c = static_cast<float>(_count[t]);
        _count[t] = 0;
        float& l = logits[t];
        l = l <= 0 ? l * repeat : l / repeat;
        l -= c * frequency + presence;
    }
}

namespace {

bool before(float la, int32_t ia, float lb, int32_t ib) {
    return la > lb || (la == lb && ia < ib);
}

// top-p's histogram: bins of 1/16 nat below the largest logit, the last
// one open-ended (64 nats down, a probability ratio of 1.6e-28).
constexpr size_t n_bins = 1024;
constexpr double bins_per_nat = 16;

size_t bin_of(float logit, float lmax) {
    const double d = static_cast<double>(lmax) - static_cast<double>(logit);
    return d < n_bins / bins_per_nat ? static_cast<size_t>(d * bins_per_nat) : n_bins - 1;
}

} // namespace

size_t sampler::select_top_k(std::span<const float> logits, size_t k) {
    // A heap of the k best so far with the worst of them on top: on real
    // logits almost every token loses to the top at once, so this costs
    // little more than one pass (nth_element over a 150k vocabulary costs
    // ~20 times as much).
    auto better = [](const candidate& a, const candidate& b) {
        return before(a.logit, a.id, b.logit, b.id);
    };
    constexpr float big = std::numeric_limits<float>::max();
    const auto first = _cand.begin();
    const auto heap_end = first + static_cast<ptrdiff_t>(k);
    size_t size = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        const float l = logits[i];
        if (!(l > neg_inf)) {
            continue; // -inf and NaN
        }
        const candidate c{std::min(l, big), static_cast<int32_t>(i)};
        if (size < k) {
            _cand[size++] = c;
            std::push_heap(first, first + static_cast<ptrdiff_t>(size), better);
        } else if (better(c, _cand[0])) {
            std::pop_heap(first, heap_end, better);
            _cand[k - 1] = c;
            std::push_heap(first, heap_end, better);
        }
    }
    std::sort(first, first + static_cast<ptrdiff_t>(size), better);
    return size;
}

size_t sampler::top_p(size_t n, bool sorted) {
    float lmax = neg_inf;
    for (size_t i = 0; i < n; ++i) {
        lmax = std::max(lmax, _cand[i].logit);
    }
    auto weight = [lmax](const candidate& c) {
        return std::exp(static_cast<double>(c.logit) - static_cast<double>(lmax));
    };
    if (sorted) {
        double z = 0;
        for (size_t i = 0; i < n; ++i) {
            z += weight(_cand[i]);
        }
        const double target = static_cast<double>(_params.top_p) * z;
        double cum = 0;
        for (size_t i = 0; i < n; ++i) {
            cum += weight(_cand[i]);
            if (cum >= target) {
                return i + 1;
            }
        }
        return n; // rounding kept the sum just short of the target: keep all
    }

    // Unsorted (the whole vocabulary): a histogram of the probability by
    // distance below the largest logit finds the bin where the cumulative
    // probability reaches top_p. Every token of the bins above it is kept;
    // only that bin's tokens are sorted, to find the cut inside it.
    std::array<double, n_bins> mass{};
    double z = 0;
    for (size_t i = 0; i < n; ++i) {
        const double w = weight(_cand[i]);
        mass[bin_of(_cand[i].logit, lmax)] += w;
        z += w;
    }
    const double target = static_cast<double>(_params.top_p) * z;
    double above = 0;
    size_t cut_bin = 0;
    while (cut_bin < n_bins && above + mass[cut_bin] < target) {
        above += mass[cut_bin++];
    }
    if (cut_bin == n_bins) {
        return n;
    }
    // Bins above the cut to the front, in the order they were, then the
    // cut bin's tokens after them, sorted.
    size_t front = 0;
    for (size_t i = 0; i < n; ++i) {
        if (bin_of(_cand[i].logit, lmax) < cut_bin) {
            std::swap(_cand[front++], _cand[i]);
        }
    }
    size_t end = front;
    for (size_t i = front; i < n; ++i) {
        if (bin_of(_cand[i].logit, lmax) == cut_bin) {
            std::swap(_cand[end++], _cand[i]);
        }
    }
    const auto first = _cand.begin();
    std::sort(first + static_cast<ptrdiff_t>(front), first + static_cast<ptrdiff_t>(end),
              [](const candidate& a, const candidate& b) {
                  return before(a.logit, a.id, b.logit, b.id);
              });
    for (size_t i = front; i < end; ++i) {
        above += weight(_cand[i]);
        if (above >= target) {
            return i + 1;
        }
    }
    return end;
}

size_t sampler::min_p(size_t n, bool sorted) {
    float lmax = neg_inf;
    for (size_t i = 0; i < n; ++i) {
        lmax = std::max(lmax, _cand[i].logit);
    }
    // p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p)
    const double threshold =
        static_cast<double>(lmax) + std::log(static_cast<double>(_params.min_p));
    if (sorted) {
        size_t keep = 1; // the first is the largest: always kept
        while (keep < n && static_cast<double>(_cand[keep].logit) >= threshold) {
            ++keep;
        }
        return keep;
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
        if (static_cast<double>(_cand[i].logit) >= threshold) {
            _cand[kept++] = _cand[i];
        }
    }
    return kept;
}

int32_t sampler::sample(std::span<float> logits) {
    const size_t n_vocab = logits.size();
    if (n_vocab == 0) {
        return -1;
    }
    if (_cand.size() < n_vocab) {
        _cand.resize(n_vocab);
        _count.resize(n_vocab, 0);
    }
    apply_penalties(logits);

    if (_params.temperature == 0) {
        int32_t best = -1;
        float best_logit = neg_inf;
        for (size_t i = 0; i < n_vocab; ++i) {
            if (logits[i] > best_logit) { // strict: ties keep the lowest id; NaN never wins
                best_logit = logits[i];
                best = static_cast<int32_t>(i);
            }
        }
        return best;
    }

    // One draw per call whatever happens below, so the random sequence
    // does not depend on how many candidates there were.
    const double u = _rng.uniform();
    size_t n = 0;
    bool sorted = false;
    const auto k = static_cast<size_t>(_params.top_k);
    if (k > 0 && k < n_vocab) {
        n = select_top_k(logits, k);
        sorted = true;
    } else {
        constexpr float big = std::numeric_limits<float>::max();
        for (size_t i = 0; i < n_vocab; ++i) {
            const float l = logits[i];
            if (l > neg_inf) { // drops -inf and NaN
                _cand[n++] = {std::min(l, big), static_cast<int32_t>(i)};
            }
        }
    }
    if (n == 0) {
        return -1;
    }
    if (_params.top_p < 1) {
        n = top_p(n, sorted);
    }
    if (_params.min_p > 0) {
        n = min_p(n, sorted);
    }

    // softmax(l / T) over what is left, the largest logit subtracted
    // first; the weights replace the logits in the scratch array.
    float lmax = neg_inf;
    for (size_t i = 0; i < n; ++i) {
        lmax = std::max(lmax, _cand[i].logit);
    }
    const double inv_t = 1.0 / static_cast<double>(_params.temperature);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
        const double d = (static_cast<double>(_cand[i].logit) - lmax) * inv_t;
        const auto w = static_cast<float>(std::exp(d));
        _cand[i].logit = w;
        sum += w;
    }
    const double target = u * sum;
    double acc = 0;
    int32_t last = _cand[0].id;
    for (size_t i = 0; i < n; ++i) {
        if (_cand[i].logit > 0) {
            acc += _cand[i].logit;
            last = _cand[i].id;
            if (target < acc) {
                return last;
            }
        }
    }
    return last; // u * sum rounded up to sum: the last token that could be drawn
}

stop_matcher::stop_matcher(std::vector<std::string> stops) {
    for (auto& s : stops) {
        if (!s.empty()) {
            _longest = std::max(_longest, s.size());
            _stops.push_back(std::move(s));
        }
    }
    _pending.reserve(2 * _longest + 64);
}

void stop_matcher::drop_released() {
    _pending.erase(0, _released);
    _released = 0;
}

stop_matcher::result stop_matcher::feed(std::string_view piece) {
    if (_stopped) {
        return {{}, true};
    }
    drop_released();
    const size_t old = _pending.size();
    _pending.append(piece);
    const std::string_view text = _pending;

    // A stop string not found before ends in the new piece.
    size_t hit = std::string_view::npos;
    for (const auto& s : _stops) {
        const size_t from = old >= s.size() ? old - s.size() + 1 : 0;
        hit = std::min(hit, text.find(s, from));
    }
    if (hit != std::string_view::npos) {
        _stopped = true;
        _released = hit;
        return {text.substr(0, hit), true};
    }

    // Hold back the longest tail that a stop string begins with.
    size_t hold = 0;
    const size_t most = std::min(text.size(), _longest > 0 ? _longest - 1 : 0);
    for (size_t len = most; len > 0 && hold == 0; --len) {
        const std::string_view tail = text.substr(text.size() - len);
        for (const auto& s : _stops) {
            if (s.size() > len && std::string_view(s).substr(0, len) == tail) {
                hold = len;
                break;
            }
        }
    }
    size_t release = text.size() - hold;
    release -= incomplete_utf8_tail(text.substr(0, release));
    _released = release;
    return {text.substr(0, release), false};
}

stop_matcher::result stop_matcher::flush() {
    if (_stopped) {
        return {{}, true};
    }
    drop_released();
    _released = _pending.size();
    return {_pending, false};
}

void stop_matcher::reset() {
    _pending.clear();
    _released = 0;
    _stopped = false;
}

} // namespace llmos::engine
