// The cameras of a batch as the binning and rasterization kernels see them: splats camera after camera, and
// tiles numbered across the batch (a batch tile is its camera's first batch tile plus its tile id, ty * nx + tx;
// grendel_py/render/intersect.py BatchTiles). ``cams`` is int64 [B][GRID_FIELDS]: first splat row, width,
// height, tiles across, first batch tile (grendel_py/render/kernel_backend.py batch_grids).
#pragma once
#include "common.cuh"

namespace gp {

inline constexpr int GRID_FIELDS = 5;

struct BatchGrid {
    int width, height, nx;
    i64 first_tile;
};

GP_HD BatchGrid load_grid(const i64* c) {
    BatchGrid g;
    g.width = (int)c[1];
    g.height = (int)c[2];
    g.nx = (int)c[3];
    g.first_tile = c[4];
    return g;
}

// The camera of splat row i.
GP_HD BatchGrid batch_grid(i64 i, const i64* cams, int n_cams) {
    int b = 0;
    while (b + 1 < n_cams && cams[(b + 1) * GRID_FIELDS] <= i) ++b;
    return load_grid(cams + b * GRID_FIELDS);
}

// The camera of batch tile ``tile``.
GP_HD BatchGrid tile_grid(i64 tile, const i64* cams, int n_cams) {
    int b = 0;
    while (b + 1 < n_cams && cams[(b + 1) * GRID_FIELDS + 4] <= tile) ++b;
    return load_grid(cams + b * GRID_FIELDS);
}

}  // namespace gp
