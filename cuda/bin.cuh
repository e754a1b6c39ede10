// Tile binning of projected splats, one splat or one sorted key at a time: the math of bin.cu, following
// grendel_py/render/intersect.py (the spec). A splat is listed in the selected tiles of its pixel box that its
// ellipse reaches (tile_reached: exact tile culling). A key is (slot of the tile among the selected ones) << 32 |
// (rank of the splat in (depth, global id) order), so one radix sort on the 64-bit keys gives the spec's
// (tile, depth, id) order, with no ties.
#pragma once
#include "batch.cuh"
#include "common.cuh"
#include "project.cuh"

namespace gp {

inline constexpr int SLOT_SHIFT = 32;

// Inclusive tile ranges of splat i's pixel box; false when it is culled or off the image.
GP_HD bool tile_span(i64 i, const float* means2d, const int* extents, int width, int height, i64* tx0, i64* tx1,
                     i64* ty0, i64* ty1) {
    const int ex = extents[2 * i], ey = extents[2 * i + 1];
    if (ex <= 0 || ey <= 0) return false;
    i64 x_lo, x_hi, y_lo, y_hi;
    pixel_box(means2d[2 * i], means2d[2 * i + 1], ex, ey, width, height, &x_lo, &x_hi, &y_lo, &y_hi);
    if (x_lo > x_hi || y_lo > y_hi) return false;
    *tx0 = x_lo / TILE;
    *tx1 = x_hi / TILE;
    *ty0 = y_lo / TILE;
    *ty1 = y_hi / TILE;
    return true;
}

// The absolute and relative slack of the spec's tile_reached (grendel_py/render/intersect.py CULL_SLACK,
// CULL_SLACK_REL): rounding never drops a tile that a renderer would composite.
inline constexpr float CULL_SLACK = 1e-3f;
inline constexpr float CULL_SLACK_REL = 1e-5f;

// The part of a splat that the culling test reads: mean, conic and ln(opacity * 255).
struct SplatShape {
    float mx, my, a, b, c, log_reach;
};

GP_HD SplatShape load_shape(i64 i, const float* means2d, const float* conics, const float* opacities) {
    SplatShape s;
    s.mx = means2d[2 * i];
    s.my = means2d[2 * i + 1];
    s.a = conics[3 * i];
    s.b = conics[3 * i + 1];
    s.c = conics[3 * i + 2];
    s.log_reach = logf(opacities[i] / ALPHA_MIN);
    return s;
}

GP_HD float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

GP_HD float exponent(const SplatShape& s, float dx, float dy) {
    return 0.5f * s.a * dx * dx + s.b * dx * dy + 0.5f * s.c * dy * dy;
}

// Whether the splat can reach alpha 1/255 at a pixel centre of tile (tx, ty): the minimum of the convex
// exponent over the tile's rectangle of pixel centres is 0 at the mean, or lies on the edge facing the mean
// (column dx = x_near at dy = -b x_near / c, or row dy = y_near at dx = -b y_near / a, clamped), compared
// with ln(opacity * 255) plus slack. The spec's tile_reached, in the same order of operations.
GP_HD bool tile_reached(const SplatShape& s, i64 tx, i64 ty) {
    const float x0 = (float)(tx * TILE), y0 = (float)(ty * TILE);
    const float dx_lo = s.mx - (x0 + (TILE - 0.5f)), dx_hi = s.mx - (x0 + 0.5f);
    const float dy_lo = s.my - (y0 + (TILE - 0.5f)), dy_hi = s.my - (y0 + 0.5f);
    const float x_near = clampf(0.f, dx_lo, dx_hi), y_near = clampf(0.f, dy_lo, dy_hi);
    const float dy_best = clampf(-s.b * x_near / s.c, dy_lo, dy_hi);
    const float dx_best = clampf(-s.b * y_near / s.a, dx_lo, dx_hi);
    const float q_min = fminf(exponent(s, x_near, dy_best), exponent(s, dx_best, y_near));
    const float dx_far = fmaxf(fabsf(dx_lo), fabsf(dx_hi)), dy_far = fmaxf(fabsf(dy_lo), fabsf(dy_hi));
    const float terms = 0.5f * s.a * dx_far * dx_far + 0.5f * s.c * dy_far * dy_far + fabsf(s.b) * dx_far * dy_far;
    return q_min <= s.log_reach + CULL_SLACK + CULL_SLACK_REL * terms;
}

// visit(batch tile) for every tile of splat i's box that its ellipse reaches, row-major.
template <class Visit>
GP_HD void visit_reached_tiles(i64 i, const float* means2d, const float* conics, const float* opacities,
                               const int* extents, const BatchGrid& g, Visit visit) {
    i64 tx0, tx1, ty0, ty1;
    if (!tile_span(i, means2d, extents, g.width, g.height, &tx0, &tx1, &ty0, &ty1)) return;
    const SplatShape s = load_shape(i, means2d, conics, opacities);
    for (i64 ty = ty0; ty <= ty1; ++ty)
        for (i64 tx = tx0; tx <= tx1; ++tx)
            if (tile_reached(s, tx, ty)) visit(g.first_tile + ty * g.nx + tx);
}

// Number of selected tiles (slot_of_tile >= 0, over the batch's tiles) that splat i's ellipse reaches.
GP_HD i64 count_one(i64 i, const float* means2d, const float* conics, const float* opacities, const int* extents,
                    const BatchGrid& g, const int* slot_of_tile) {
    i64 n = 0;
    visit_reached_tiles(i, means2d, conics, opacities, extents, g, [&](i64 tile) { n += slot_of_tile[tile] >= 0; });
    return n;
}

// Write splat i's keys from position start, row-major over the tiles count_one counts.
GP_HD void emit_one(i64 i, const float* means2d, const float* conics, const float* opacities, const int* extents,
                    const BatchGrid& g, const int* slot_of_tile, i64 start, i64 depth_rank, i64* keys) {
    i64 pos = start;
    visit_reached_tiles(i, means2d, conics, opacities, extents, g, [&](i64 tile) {
        const int slot = slot_of_tile[tile];
        if (slot >= 0) keys[pos++] = ((i64)slot << SLOT_SHIFT) | depth_rank;
    });
}

// From sorted key j of m: the first position of every slot that starts at j (offsets has n_slots + 1 entries;
// the last one, and those of empty trailing slots, are set by the last key).
GP_HD void tile_range_one(i64 j, i64 m, const i64* keys, int n_slots, i64* offsets) {
    const i64 slot = keys[j] >> SLOT_SHIFT;
    const i64 prev = j == 0 ? -1 : keys[j - 1] >> SLOT_SHIFT;
    for (i64 s = prev + 1; s <= slot; ++s) offsets[s] = j;
    if (j == m - 1)
        for (i64 s = slot + 1; s <= n_slots; ++s) offsets[s] = m;
}

}  // namespace gp
