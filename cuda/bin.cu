// Binning kernels over a batch of cameras: count and emit (tile slot | depth rank) keys per splat, then tile
// ranges of the sorted keys.
#include "bin.cuh"

extern "C" __global__ void count_intersections(int n, const float* means2d, const float* conics,
                                               const float* opacities, const int* extents, const long long* cams,
                                               int n_cams, const int* slot_of_tile, long long* counts) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        counts[i] = gp::count_one(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams), slot_of_tile);
}

extern "C" __global__ void emit_keys(int n, const float* means2d, const float* conics, const float* opacities,
                                     const int* extents, const long long* cams, int n_cams, const int* slot_of_tile,
                                     const long long* starts, const long long* depth_rank, long long* keys) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::emit_one(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams), slot_of_tile, starts[i],
                     depth_rank[i], keys);
}

extern "C" __global__ void tile_ranges(long long m, const long long* keys, int n_slots, long long* offsets) {
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < m; j += (long long)gridDim.x * blockDim.x)
        gp::tile_range_one(j, m, keys, n_slots, offsets);
}

// The batch's (splat, tile) pairs (bin.cuh, "The (splat, tile) pairs of a whole batch"), one thread per splat
// row: how many splats reach each batch tile (integer atomics: the counts do not depend on the order), and
// which ranks each splat must go to (reach[q * n + i] = 1 where splat i reaches a tile that rank q owns).
extern "C" __global__ void count_tile_pairs(int n, const float* means2d, const float* conics, const float* opacities,
                                            const int* extents, const long long* cams, int n_cams, int* counts) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::visit_reached_tiles(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams),
                                [&](long long tile) { atomicAdd(counts + tile, 1); });
}

extern "C" __global__ void route_splats(int n, const float* means2d, const float* conics, const float* opacities,
                                        const int* extents, const long long* cams, int n_cams,
                                        const long long* owners, unsigned char* reach) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::visit_reached_tiles(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams),
                                [&](long long tile) { reach[owners[tile] * n + i] = 1; });
}
