// Tile binning of projected splats, one splat or one sorted key at a time: the math of bin.cu, following
// grendel_py/render/intersect.py (the spec). A key is (slot of the tile among the selected ones) << 32 |
// (rank of the splat in (depth, global id) order), so one radix sort on the 64-bit keys gives the spec's
// (tile, depth, id) order, with no ties.
#pragma once
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

// Number of selected tiles (slot_of_tile >= 0) that splat i touches.
GP_HD i64 count_one(i64 i, const float* means2d, const int* extents, int width, int height, int nx,
                    const int* slot_of_tile) {
    i64 tx0, tx1, ty0, ty1;
    if (!tile_span(i, means2d, extents, width, height, &tx0, &tx1, &ty0, &ty1)) return 0;
    i64 n = 0;
    for (i64 ty = ty0; ty <= ty1; ++ty)
        for (i64 tx = tx0; tx <= tx1; ++tx) n += slot_of_tile[ty * nx + tx] >= 0;
    return n;
}

// Write splat i's keys from position start, row-major over its tile box.
GP_HD void emit_one(i64 i, const float* means2d, const int* extents, int width, int height, int nx,
                    const int* slot_of_tile, i64 start, i64 depth_rank, i64* keys) {
    i64 tx0, tx1, ty0, ty1;
    if (!tile_span(i, means2d, extents, width, height, &tx0, &tx1, &ty0, &ty1)) return;
    i64 pos = start;
    for (i64 ty = ty0; ty <= ty1; ++ty)
        for (i64 tx = tx0; tx <= tx1; ++tx) {
            const int slot = slot_of_tile[ty * nx + tx];
            if (slot >= 0) keys[pos++] = ((i64)slot << SLOT_SHIFT) | depth_rank;
        }
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
