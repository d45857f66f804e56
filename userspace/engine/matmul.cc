// SPDX-License-Identifier: MIT
//
// matmul: quantize the activations once (in parallel over tokens), then
// hand out weight rows to the pool. A thread walks its rows in blocks that
// stay in its L2 cache, and for each block runs through the tokens
// max_tile at a time: a kernel call takes one weight row and up to
// max_tile tokens, so a row is unpacked once per tile. The tokens go in
// passes whose activations fit in L2 beside the row block: the weights
// come from memory once per pass (once per call unless the batch is
// large, and then the work is compute-bound anyway). Splitting the columns
// into panels as well (so a tile's activations stay in L1) was measured:
// no faster.
//
// Packed weights (AVX-512, the 32-element types) go the same way in units
// of a panel of 16 rows: a kernel call takes one panel and up to
// panel_tile tokens and writes 16 rows' outputs per token.
#include "quant_kernels.hh"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <llmos/engine/matmul.hh>
#include <vector>

namespace llmos::engine {

namespace {

/// Weight bytes a thread keeps hot while it sweeps the token tiles.
constexpr size_t row_block_bytes = 128 * 1024;

constexpr size_t max_block_rows = 64;

/// Activation bytes of the tokens that share one pass over the weights.
constexpr size_t pass_act_bytes = 512 * 1024;

constexpr size_t scratch_align = alignof(detail::act_q8_256);

/// Bytes from one of w's rows to the next (w.cols whole blocks of w.type).
size_t stride_of(const weight_view& w) {
    return w.row_stride != 0 ? w.row_stride : *row_bytes(w.type, static_cast<uint64_t>(w.cols));
}

matmul_status check(const weight_view& w, int64_t n_tokens, size_t& stride) {
    const auto i = info(w.type);
    if (!i || !i->supported) {
        return matmul_status::unsupported_type;
    }
    if (w.rows < 0 || w.cols < 0 || n_tokens < 0) {
        return matmul_status::bad_shape;
    }
    const auto packed = row_bytes(w.type, static_cast<uint64_t>(w.cols));
    if (!packed) {
        return matmul_status::bad_shape;
    }
    stride = stride_of(w);
    if (stride < *packed) {
        return matmul_status::bad_shape;
    }
    const size_t align = w.type == ggml_type::f32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(w.data) % align != 0 || stride % align != 0) {
        return matmul_status::misaligned;
    }
    return matmul_status::ok;
}

/// The kernels that run for `level` on this CPU.
simd_level effective(simd_level level) {
    return std::min(level, detected_simd());
}

/// Whether a matmul of w at `level` runs the panel kernels.
bool uses_panels(const weight_view& w, simd_level level) {
    return w.packed != nullptr && detail::panel_kernel_at(w.type, effective(level)) != nullptr &&
           detail::panel_bytes(w.type, w.cols) != 0;
}

/// Activation rows from which the tile unit takes a matmul (fewer leave
/// too much of its 16-token tiles idle).
constexpr int64_t amx_min_rows = detail::amx_tile;

/// Whether the panels of a matmul of act_rows activation rows (that runs
/// the panel kernels) run on `tiles`.
bool uses_amx(const weight_view& w, const detail::amx_backend* tiles, int64_t act_rows) {
    return tiles != nullptr && act_rows >= amx_min_rows &&
           detail::amx_levels_bytes(w.type, w.cols) != 0;
}

/// Activation rows the scratch holds for act_rows rows: rounded up to
/// whole tiles when the tile unit may run (its last tile reads them all).
int64_t act_rows_room(int64_t act_rows) {
    return act_rows >= amx_min_rows
               ? (act_rows + detail::amx_tile - 1) / detail::amx_tile * detail::amx_tile
               : act_rows;
}

/// A panel's outputs for the nt activation rows from t0 (out: panel_rows
/// floats a row) into their nr rows of y (rows floats a token, y at the
/// panel's first row): a token's two rows added for int8x2.
void put_rows(const float* out, int nt, int64_t nr, int per_token, float* y, int64_t t0,
              int64_t rows) {
    if (per_token == 2) {
        for (int i = 0; i < nt; i += 2) {
            float* dst = y + (t0 + i) / 2 * rows;
            const float* o = out + i * detail::panel_rows;
            for (int64_t r = 0; r < nr; ++r) {
                dst[r] = o[r] + o[r + detail::panel_rows];
            }
        }
        return;
    }
    for (int i = 0; i < nt; ++i) {
        std::memcpy(y + (t0 + i) * rows, out + i * detail::panel_rows,
                    static_cast<size_t>(nr) * sizeof(float));
    }
}

int64_t panel_count(int64_t rows) {
    return (rows + detail::panel_rows - 1) / detail::panel_rows;
}

/// The panel kernels over all of w's panels: as the row loop in matmul,
/// in units of a panel of 16 rows and tiles of panel_tile rows of act.
void run_panels(const weight_view& w, detail::panel_kernel kernel, const std::byte* act,
                size_t act_stride, int64_t act_rows, int per_token, float* y, thread_pool& pool) {
    const size_t pb = detail::panel_bytes(w.type, w.cols);
    const auto* packed = static_cast<const std::byte*>(w.packed);
    const int64_t rows = w.rows;
    const int64_t cols = w.cols;
    constexpr int tile = detail::panel_tile;
    static_assert(tile % 2 == 0, "a tile must hold whole pairs of rows");
    const auto block_panels = static_cast<int64_t>(std::clamp<size_t>(row_block_bytes / pb, 1, 16));
    const int64_t pass_rows =
        std::max<int64_t>(tile, static_cast<int64_t>(pass_act_bytes / act_stride) / tile * tile);
    pool.parallel_for(panel_count(rows), [&](int64_t q0, int64_t q1) {
        alignas(64) float out[tile * detail::panel_rows];
        for (int64_t p0 = 0; p0 < act_rows; p0 += pass_rows) {
            const int64_t p1 = std::min(p0 + pass_rows, act_rows);
            for (int64_t qb = q0; qb < q1; qb += block_panels) {
                const int64_t qe = std::min(qb + block_panels, q1);
                for (int64_t t0 = p0; t0 < p1; t0 += tile) {
                    const int nt = static_cast<int>(std::min<int64_t>(tile, p1 - t0));
                    const std::byte* a = act + static_cast<size_t>(t0) * act_stride;
                    for (int64_t q = qb; q < qe; ++q) {
                        const auto* panel = packed + static_cast<size_t>(q) * pb;
                        const int64_t r0 = q * detail::panel_rows;
                        const int64_t nr = std::min<int64_t>(detail::panel_rows, rows - r0);
                        if (per_token == 1 && nr == detail::panel_rows) {
                            // Whole panels write their rows of y themselves.
                            kernel(panel, a, act_stride, nt, cols, y + t0 * rows + r0,
                                   static_cast<size_t>(rows));
                            continue;
                        }
                        kernel(panel, a, act_stride, nt, cols, out, detail::panel_rows);
                        put_rows(out, nt, nr, per_token, y + r0, t0, rows);
                    }
                }
            }
        }
    });
}

/// The same on the tile unit: per panel its levels are unpacked once (per
/// pass), then all the pass's tokens go through it amx_tile at a time.
void run_panels_amx(const detail::amx_backend& tiles, const weight_view& w, const std::byte* act,
                    size_t act_stride, int64_t act_rows, int per_token, float* y,
                    thread_pool& pool) {
    const detail::amx_unpacker unpack = tiles.unpacker_of(w.type);
    const detail::amx_kernel kernel = tiles.kernel_of(w.type);
    const size_t pb = detail::panel_bytes(w.type, w.cols);
    const size_t lb = detail::amx_levels_bytes(w.type, w.cols);
    const auto* packed = static_cast<const std::byte*>(w.packed);
    const int64_t rows = w.rows;
    const int64_t cols = w.cols;
    constexpr int tile = detail::amx_tile;
    static_assert(tile % 2 == 0, "a tile must hold whole pairs of rows");
    const int64_t pass_rows =
        std::max<int64_t>(tile, static_cast<int64_t>(pass_act_bytes / act_stride) / tile * tile);
    pool.parallel_for(panel_count(rows), [&](int64_t q0, int64_t q1) {
        // The unpacked levels, kept by the thread for its later calls.
        thread_local std::vector<std::byte> buffer;
        if (buffer.size() < lb + 64) {
            buffer.resize(lb + 64);
        }
        auto* levels = reinterpret_cast<std::byte*>(
            (reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~static_cast<uintptr_t>(63));
        alignas(64) float out[tile * detail::panel_rows];
        tiles.begin(w.type);
        for (int64_t p0 = 0; p0 < act_rows; p0 += pass_rows) {
            const int64_t p1 = std::min(p0 + pass_rows, act_rows);
            for (int64_t q = q0; q < q1; ++q) {
                const auto* panel = packed + static_cast<size_t>(q) * pb;
                unpack(panel, cols, levels);
                const int64_t r0 = q * detail::panel_rows;
                const int64_t nr = std::min<int64_t>(detail::panel_rows, rows - r0);
                for (int64_t t0 = p0; t0 < p1; t0 += tile) {
                    const int nt = static_cast<int>(std::min<int64_t>(tile, p1 - t0));
                    const std::byte* a = act + static_cast<size_t>(t0) * act_stride;
                    if (per_token == 1 && nr == detail::panel_rows) {
                        kernel(panel, levels, a, act_stride, nt, cols, y + t0 * rows + r0,
                               static_cast<size_t>(rows));
                        continue;
                    }
                    kernel(panel, levels, a, act_stride, nt, cols, out, detail::panel_rows);
                    put_rows(out, nt, nr, per_token, y + r0, t0, rows);
                }
            }
        }
        tiles.end();
    });
}

} // namespace

size_t packed_weight_bytes(const weight_view& w, simd_level level) noexcept {
    size_t stride = 0;
    // The panels are the same for every level that has kernels for them.
    if (detail::panel_kernel_at(w.type, level) == nullptr ||
        check(w, 0, stride) != matmul_status::ok) {
        return 0;
    }
    return detail::panel_bytes(w.type, w.cols) * static_cast<size_t>(panel_count(w.rows));
}

matmul_status pack_weights(const weight_view& w, simd_level level,
                           std::span<std::byte> dst) noexcept {
    size_t stride = 0;
    if (const matmul_status s = check(w, 0, stride); s != matmul_status::ok) {
        return s;
    }
    const size_t need = packed_weight_bytes(w, level);
    if (need == 0) {
        return matmul_status::unsupported_type;
    }
    if (dst.size() < need) {
        return matmul_status::scratch_too_small;
    }
    if (reinterpret_cast<uintptr_t>(dst.data()) % 64 != 0) {
        return matmul_status::misaligned;
    }
    const size_t pb = detail::panel_bytes(w.type, w.cols);
    for (int64_t p = 0; p < panel_count(w.rows); ++p) {
        detail::pack_panel(w.type, w.data, stride, w.rows, w.cols, p * detail::panel_rows,
                           dst.data() + static_cast<size_t>(p) * pb);
    }
    return matmul_status::ok;
}

weight_view sub_rows(const weight_view& w, int64_t r0, int64_t r1) noexcept {
    size_t stride = w.row_stride;
    if (stride == 0) {
        stride = row_bytes(w.type, static_cast<uint64_t>(std::max<int64_t>(w.cols, 0))).value_or(0);
    }
    weight_view v = w;
    v.data = static_cast<const std::byte*>(w.data) + stride * static_cast<size_t>(r0);
    v.rows = r1 - r0;
    v.row_stride = stride;
    v.packed = nullptr;
    const size_t pb = detail::panel_bytes(w.type, w.cols);
    if (w.packed && pb != 0 && r0 % packed_row_group == 0) {
        v.packed = static_cast<const std::byte*>(w.packed) +
                   pb * static_cast<size_t>(r0 / packed_row_group);
    }
    return v;
}

std::string_view matmul_status_name(matmul_status s) noexcept {
    switch (s) {
    case matmul_status::ok:
        return "ok";
    case matmul_status::unsupported_type:
        return "unsupported type";
    case matmul_status::bad_shape:
        return "bad shape";
    case matmul_status::misaligned:
        return "misaligned";
    case matmul_status::scratch_too_small:
        return "scratch too small";
    }
    return "?";
}

size_t matmul_scratch_bytes(const weight_view& w, int64_t n_tokens, act_precision p) noexcept {
    size_t stride = 0;
    if (check(w, n_tokens, stride) != matmul_status::ok) {
        return 0;
    }
    const detail::act_format f = detail::act_format_of(w.type);
    if (f == detail::act_format::f32 || n_tokens == 0) {
        return 0;
    }
    const auto n = static_cast<size_t>(n_tokens);
    // Room for the rows of either kernel set (the panel kernels' 32-element
    // rows are the larger: act32 and the blocks' z).
    const size_t row =
        std::max(detail::act_row_bytes(f, w.cols), detail::act_panel_row_bytes(w.type, w.cols));
    if (p == act_precision::int8x2) {
        // Two rows per token, and each token's rounding error as floats.
        return row * static_cast<size_t>(act_rows_room(2 * n_tokens)) +
               n * static_cast<size_t>(w.cols) * sizeof(float) + scratch_align;
    }
    return row * static_cast<size_t>(act_rows_room(n_tokens)) + scratch_align;
}

namespace {

/// How a matmul of w at `level` reads its activations: the kernels, and
/// the rows the quantizer makes of x (none: the kernels read x itself).
struct act_plan {
    bool panels = false;
    detail::panel_kernel panel = nullptr;
    detail::row_kernel kernel = nullptr;
    detail::act_quantizer quantize = nullptr;
    detail::act_format f = detail::act_format::f32;
    size_t act_stride = 0;
    /// Activation rows per token: 2 when each token's rounding error gets
    /// a row of its own (the kernels' outputs for the pair are added).
    int per_token = 1;
    int64_t cols = 0;

    /// Whether o's kernels read the very rows this plan's quantizer makes.
    bool same_rows(const act_plan& o) const {
        return quantize != nullptr && quantize == o.quantize && f == o.f &&
               act_stride == o.act_stride && per_token == o.per_token && cols == o.cols &&
               panels == o.panels;
    }
};

act_plan plan_of(const weight_view& w, simd_level level, act_precision prec) {
    act_plan p;
    const simd_level lv = effective(level);
    p.panels = uses_panels(w, lv);
    p.f = detail::act_format_of(w.type);
    p.cols = w.cols;
    if (p.panels) {
        p.panel = detail::panel_kernel_at(w.type, lv);
        p.quantize = detail::panel_quantizer_at(w.type, lv);
    } else {
        p.kernel = lv >= simd_level::avx512 ? detail::row_kernel_avx512(w.type) : nullptr;
        if (!p.kernel) {
            p.kernel = lv >= simd_level::avx2 ? detail::row_kernel_avx2(w.type)
                                              : detail::row_kernel_ref(w.type);
        }
        if (p.f != detail::act_format::f32) {
            p.quantize = lv >= simd_level::avx2 ? detail::act_quantizer_avx2(p.f)
                                                : detail::act_quantizer_ref(p.f);
        }
    }
    if (p.quantize) {
        p.act_stride = p.panels ? detail::act_panel_row_bytes(w.type, w.cols)
                                : detail::act_row_bytes(p.f, w.cols);
    } else {
        p.act_stride = static_cast<size_t>(w.cols) * sizeof(float);
    }
    p.per_token = p.f != detail::act_format::f32 && prec == act_precision::int8x2 ? 2 : 1;
    return p;
}

/// Where the quantized rows start in scratch.
std::byte* first_row(std::span<std::byte> scratch) {
    const auto base = reinterpret_cast<uintptr_t>(scratch.data());
    return reinterpret_cast<std::byte*>((base + scratch_align - 1) &
                                        ~static_cast<uintptr_t>(scratch_align - 1));
}

/// x's n_tokens rows quantized as p says, into scratch (at least
/// matmul_scratch_bytes() of the plan's weights): returns the first row.
std::byte* quantize_rows(const act_plan& p, const float* x, int64_t n_tokens,
                         std::span<std::byte> scratch, thread_pool& pool) {
    std::byte* dst = first_row(scratch);
    const int64_t cols = p.cols;
    const size_t act_stride = p.act_stride;
    const int per_token = p.per_token;
    // int8x2: each token's rounding error, after both rows of every token.
    float* err = per_token == 2
                     ? reinterpret_cast<float*>(
                           dst + static_cast<size_t>(act_rows_room(2 * n_tokens)) * act_stride)
                     : nullptr;
    pool.parallel_for(n_tokens, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            std::byte* row = dst + static_cast<size_t>(t * per_token) * act_stride;
            p.quantize(x + t * cols, row, cols);
            if (per_token == 2) {
                float* e = err + t * cols;
                detail::act_dequantize(p.f, row, cols, e);
                for (int64_t k = 0; k < cols; ++k) {
                    e[k] = x[t * cols + k] - e[k];
                }
                p.quantize(e, row + act_stride, cols);
            }
        }
    });
    return dst;
}

/// The products of w with the activations p's kernels read: qrows (the
/// quantized rows) or, without a quantizer, x. w is checked and has rows
/// and columns.
void run_plan(const detail::amx_backend* tiles, const weight_view& w, const act_plan& p,
              const float* x, std::byte* qrows, int64_t n_tokens, float* y, thread_pool& pool,
              size_t stride) {
    const void* act = p.quantize ? static_cast<const void*>(qrows) : x;
    const size_t act_stride = p.act_stride;
    const int per_token = p.per_token;
    const int64_t act_rows = n_tokens * per_token;
    if (p.panels && qrows && uses_amx(w, tiles, act_rows)) {
        // The last tile reads whole tiles of rows: the ones past the
        // tokens are zeros.
        std::memset(qrows + static_cast<size_t>(act_rows) * act_stride, 0,
                    static_cast<size_t>(act_rows_room(act_rows) - act_rows) * act_stride);
        run_panels_amx(*tiles, w, qrows, act_stride, act_rows, per_token, y, pool);
        return;
    }
    if (p.panels) {
        run_panels(w, p.panel, static_cast<const std::byte*>(act), act_stride, act_rows, per_token,
                   y, pool);
        return;
    }
    const detail::row_kernel kernel = p.kernel;
    const auto* data = static_cast<const std::byte*>(w.data);
    const int64_t rows = w.rows;
    const int64_t cols = w.cols;
    const auto block_rows =
        static_cast<int64_t>(std::clamp<size_t>(row_block_bytes / stride, 1, max_block_rows));
    // Tokens per pass over the weights: as many as keep their activations
    // in L2 next to the row block (a multiple of the tile).
    const int64_t pass_tokens =
        std::max<int64_t>(detail::max_tile, static_cast<int64_t>(pass_act_bytes / act_stride) /
                                                detail::max_tile * detail::max_tile);
    static_assert(detail::max_tile % 2 == 0, "a tile must hold whole pairs of rows");
    pool.parallel_for(rows, [&](int64_t r0, int64_t r1) {
        float out[detail::max_tile];
        for (int64_t p0 = 0; p0 < act_rows; p0 += pass_tokens) {
            const int64_t p1 = std::min(p0 + pass_tokens, act_rows);
            for (int64_t rb = r0; rb < r1; rb += block_rows) {
                const int64_t re = std::min(rb + block_rows, r1);
                for (int64_t t0 = p0; t0 < p1; t0 += detail::max_tile) {
                    const int nt = static_cast<int>(std::min<int64_t>(detail::max_tile, p1 - t0));
                    const auto* a =
                        static_cast<const std::byte*>(act) + static_cast<size_t>(t0) * act_stride;
                    for (int64_t r = rb; r < re; ++r) {
                        kernel(data + static_cast<size_t>(r) * stride, a, act_stride, nt, cols,
                               out);
                        if (per_token == 2) {
                            for (int i = 0; i < nt; i += 2) {
                                y[(t0 + i) / 2 * rows + r] = out[i] + out[i + 1];
                            }
                        } else {
                            for (int i = 0; i < nt; ++i) {
                                y[(t0 + i) * rows + r] = out[i];
                            }
                        }
                    }
                }
            }
        }
    });
}

/// matmul(), with `tiles` (or none) running the panels of 16 rows or more.
matmul_status matmul_with(const detail::amx_backend* tiles, const weight_view& w, const float* x,
                          int64_t n_tokens, float* y, thread_pool& pool,
                          std::span<std::byte> scratch, simd_level level,
                          act_precision prec) noexcept {
    size_t stride = 0;
    if (const matmul_status s = check(w, n_tokens, stride); s != matmul_status::ok) {
        return s;
    }
    if (scratch.size() < matmul_scratch_bytes(w, n_tokens, prec)) {
        return matmul_status::scratch_too_small;
    }
    if (n_tokens == 0 || w.rows == 0) {
        return matmul_status::ok;
    }
    if (w.cols == 0) {
        std::fill_n(y, n_tokens * w.rows, 0.0f);
        return matmul_status::ok;
    }
    const act_plan p = plan_of(w, level, prec);
    std::byte* qrows = p.quantize ? quantize_rows(p, x, n_tokens, scratch, pool) : nullptr;
    run_plan(tiles, w, p, x, qrows, n_tokens, y, pool, stride);
    return matmul_status::ok;
}

} // namespace

matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, std::span<std::byte> scratch, simd_level level,
                     act_precision prec) noexcept {
    const detail::amx_backend* tiles =
        effective(level) >= simd_level::amx ? &detail::amx_tile_unit() : nullptr;
    return matmul_with(tiles, w, x, n_tokens, y, pool, scratch, level, prec);
}

matmul_status matmul_many(std::span<const matmul_job> jobs, const float* x, int64_t n_tokens,
                          thread_pool& pool, std::span<std::byte> scratch, simd_level level,
                          act_precision prec) noexcept {
    size_t need = 0;
    for (const matmul_job& j : jobs) {
        size_t stride = 0;
        if (!j.w || (!j.y && j.w->rows > 0 && n_tokens > 0)) {
            return matmul_status::bad_shape;
        }
        if (const matmul_status s = check(*j.w, n_tokens, stride); s != matmul_status::ok) {
            return s;
        }
        if (j.w->cols != jobs[0].w->cols) {
            return matmul_status::bad_shape;
        }
        need += matmul_scratch_bytes(*j.w, n_tokens, prec);
    }
    if (scratch.size() < need) {
        return matmul_status::scratch_too_small;
    }
    if (n_tokens == 0 || jobs.empty()) {
        return matmul_status::ok;
    }
    if (jobs[0].w->cols == 0) {
        for (const matmul_job& j : jobs) {
            std::fill_n(j.y, n_tokens * j.w->rows, 0.0f);
        }
        return matmul_status::ok;
    }
    const detail::amx_backend* tiles =
        effective(level) >= simd_level::amx ? &detail::amx_tile_unit() : nullptr;
    // Job i's rows go at the sum of the scratch of the jobs before it,
    // unless an earlier job (with rows: it made them) read the same rows.
    size_t at = 0;
    for (size_t i = 0; i < jobs.size();
         at += matmul_scratch_bytes(*jobs[i].w, n_tokens, prec), ++i) {
        const weight_view& w = *jobs[i].w;
        if (w.rows == 0) {
            continue;
        }
        const act_plan p = plan_of(w, level, prec);
        std::byte* qrows = nullptr;
        if (p.quantize) {
            size_t earlier = 0;
            for (size_t k = 0; k < i && !qrows; ++k) {
                if (jobs[k].w->rows != 0 && p.same_rows(plan_of(*jobs[k].w, level, prec))) {
                    qrows = first_row(scratch.subspan(earlier));
                }
                earlier += matmul_scratch_bytes(*jobs[k].w, n_tokens, prec);
            }
            if (!qrows) {
                qrows = quantize_rows(p, x, n_tokens, scratch.subspan(at), pool);
            }
        }
        run_plan(tiles, w, p, x, qrows, n_tokens, jobs[i].y, pool, stride_of(w));
    }
    return matmul_status::ok;
}

matmul_status matmul_many(std::span<const matmul_job> jobs, const float* x, int64_t n_tokens,
                          thread_pool& pool, simd_level level, act_precision p) {
    thread_local std::vector<std::byte> scratch;
    size_t need = 0;
    for (const matmul_job& j : jobs) {
        need += j.w ? matmul_scratch_bytes(*j.w, n_tokens, p) : 0;
    }
    if (scratch.size() < need) {
        scratch.resize(need);
    }
    return matmul_many(jobs, x, n_tokens, pool, scratch, level, p);
}

matmul_status detail::matmul_on_tiles(const amx_backend& tiles, const weight_view& w,
                                      const float* x, int64_t n_tokens, float* y, thread_pool& pool,
                                      std::span<std::byte> scratch, act_precision prec) noexcept {
    return matmul_with(&tiles, w, x, n_tokens, y, pool, scratch, simd_level::avx512, prec);
}

matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, act_precision p) {
    return matmul(w, x, n_tokens, y, pool, default_simd(), p);
}

matmul_status matmul(const weight_view& w, const float* x, int64_t n_tokens, float* y,
                     thread_pool& pool, simd_level level, act_precision p) {
    thread_local std::vector<std::byte> scratch;
    const size_t need = matmul_scratch_bytes(w, n_tokens, p);
    if (scratch.size() < need) {
        scratch.resize(need);
    }
    return matmul(w, x, n_tokens, y, pool, scratch, level, p);
}

} // namespace llmos::engine
