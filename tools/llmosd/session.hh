// SPDX-License-Identifier: MIT
// The layout of a session's mindspace (llmosd.s.NAME): a header page, the
// conversation so far, room for one request and its output, then the
// conversation's KV cache. The regions are sized for the server's --ctx and
// recorded in the header, so a session outlives a restart with another --ctx.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <utility>

namespace llmosd::session {

inline constexpr uint64_t page = 4096;
inline constexpr char magic[8] = {'L', 'L', 'M', 'O', 'S', 'S', 'E', 'S'};
inline constexpr uint64_t text_off = page;

/// header::flags
enum : uint32_t {
    /// The conversation with its last reply outgrew the text region: what is
    /// stored is the conversation before that turn, and the next turn is
    /// refused (its answer would not follow what the client saw).
    overflowed = 1,
    /// What the conversation is: a chat's (its messages, as JSON) or a
    /// completion's (the text so far). Neither: stored by an llmosd that
    /// did not say (told apart by reading it).
    chat_text = 2,
    completion_text = 4,
};

/// The first bytes of a session's mindspace.
struct header {
    char magic[8];
    /// 3; versions 1 and 2 had the legacy() layout and no `text_cap`,
    /// `req_cap` or `flags` (zero there).
    uint32_t version;
    uint32_t tenant; ///< since version 2: whose it is (with API keys); version 1: nobody's
    char model[64];  ///< versions 1 and 2: the model the conversation is of
    uint64_t text_len;
    uint64_t kv_off;
    uint64_t kv_len;
    uint64_t text_cap; ///< version 3: the conversation's room
    uint64_t req_cap;  ///< version 3: the request's and its output's room
    uint32_t flags;    ///< version 3
    /// Version 3: when a request last used the session, in seconds since
    /// the epoch (0: not said, by an llmosd before it was kept).
    uint32_t used;
    char model_name[136]; ///< version 3: the model, whole (names are up to 128 bytes)
};
static_assert(sizeof(header) == 264 && sizeof(header) <= text_off);
inline constexpr uint32_t version = 3;

/// Where the regions lie.
struct layout {
    uint64_t text_cap = 0, req_cap = 0;

    uint64_t req_off() const noexcept { return text_off + text_cap; }
    uint64_t kv_off() const noexcept { return req_off() + req_cap; }
    /// Holds every conversation and request that `other` holds.
    bool covers(const layout& other) const noexcept {
        return text_cap >= other.text_cap && req_cap >= other.req_cap;
    }
    bool operator==(const layout&) const = default;
};

/// Text bytes a token may take, on average over a conversation, before
/// the conversation outgrows its region (a token is 3 to 5 bytes of text
/// in most vocabularies; JSON escapes take more).
inline constexpr uint64_t text_bytes_per_token = 32;
/// What llmosd's worker writes at most for one generated token.
inline constexpr uint64_t output_bytes_per_token = 48;

inline uint64_t round_to_page(uint64_t n) noexcept {
    return (n + page - 1) / page * page;
}

/// The layout of versions 1 and 2: 1 MiB of conversation, 2 MiB of request.
inline layout legacy() noexcept {
    return {uint64_t{1} << 20, uint64_t{2} << 20};
}

/// The layout for a context of `ctx` tokens: a conversation of `ctx` tokens,
/// and a request that holds it and `ctx` tokens of output. Never smaller
/// than legacy(), which it is for contexts up to 20480 tokens.
inline layout for_ctx(uint32_t ctx) noexcept {
    const layout old = legacy();
    const uint64_t text = std::max(old.text_cap, round_to_page(ctx * text_bytes_per_token));
    const uint64_t req = std::max(
        old.req_cap, round_to_page(text + ctx * output_bytes_per_token + (uint64_t{64} << 10)));
    return {text, req};
}

/// The header at the start of `ms`, when it is a session's (magic, a known
/// version, and for version 3 a layout whose regions lie in `ms`). Fields a
/// version lacks read 0.
inline std::optional<header> read(std::span<const std::byte> ms) noexcept {
    header h{};
    if (ms.size() < sizeof(h)) {
        return std::nullopt;
    }
    std::memcpy(&h, ms.data(), sizeof(h));
    if (std::memcmp(h.magic, magic, sizeof(magic)) != 0 || h.version < 1 || h.version > version) {
        return std::nullopt;
    }
    if (h.version < 3) {
        h.text_cap = h.req_cap = 0;
        h.flags = h.used = 0;
        std::memset(h.model_name, 0, sizeof(h.model_name));
        std::memcpy(h.model_name, h.model, sizeof(h.model));
        h.model_name[sizeof(h.model) - 1] = 0;
        return h;
    }
    h.model_name[sizeof(h.model_name) - 1] = 0;
    const uint64_t most = uint64_t{1} << 44; // a mindspace's largest length
    if (h.text_cap % page || h.req_cap % page || !h.text_cap || !h.req_cap || h.text_cap > most ||
        h.req_cap > most || h.kv_off != text_off + h.text_cap + h.req_cap) {
        return std::nullopt;
    }
    return h;
}

/// The version and tenant of a header that carries the magic, whether or
/// not read() takes it (a later version's, or a damaged one): whose it is
/// does not depend on the rest.
inline std::optional<std::pair<uint32_t, uint32_t>> stamp(std::span<const std::byte> ms) noexcept {
    header h{};
    if (ms.size() < offsetof(header, model) || std::memcmp(ms.data(), magic, sizeof(magic)) != 0) {
        return std::nullopt;
    }
    std::memcpy(&h, ms.data(), offsetof(header, model));
    return std::pair{h.version, h.tenant};
}

/// The model whose conversation `h` holds (read() ended it).
inline std::string_view model_of(const header& h) noexcept {
    return h.model_name;
}

/// The layout `h` records.
inline layout of(const header& h) noexcept {
    return h.version < 3 ? legacy() : layout{h.text_cap, h.req_cap};
}

/// `h`'s conversation, when it lies inside `ms` (of which `h` is the header).
inline std::optional<std::span<const std::byte>> text(const header& h,
                                                      std::span<const std::byte> ms) noexcept {
    if (h.text_len > of(h).text_cap || h.text_len > ms.size() ||
        text_off > ms.size() - h.text_len) {
        return std::nullopt;
    }
    return ms.subspan(text_off, h.text_len);
}

/// A version-3 header for `l` with a conversation of `text_len` bytes,
/// used at `used` (seconds since the epoch).
inline header make(uint32_t tenant, std::string_view model, uint64_t text_len, layout l,
                   uint64_t kv_len, uint32_t flags, uint32_t used) noexcept {
    header h{};
    std::memcpy(h.magic, magic, sizeof(magic));
    h.version = version;
    h.tenant = tenant;
    std::memcpy(h.model, model.data(), std::min(model.size(), sizeof(h.model) - 1));
    std::memcpy(h.model_name, model.data(), std::min(model.size(), sizeof(h.model_name) - 1));
    h.text_len = text_len;
    h.kv_off = l.kv_off();
    h.kv_len = kv_len;
    h.text_cap = l.text_cap;
    h.req_cap = l.req_cap;
    h.flags = flags;
    h.used = used;
    return h;
}

} // namespace llmosd::session
