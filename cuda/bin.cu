// Binning kernels: count and emit (tile slot | depth rank) keys per splat, then tile ranges of the sorted keys.
#include "bin.cuh"

extern "C" __global__ void count_intersections(int n, const float* means2d, const float* conics,
                                               const float* opacities, const int* extents, int width, int height,
                                               int nx, const int* slot_of_tile, long long* counts) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        counts[i] = gp::count_one(i, means2d, conics, opacities, extents, width, height, nx, slot_of_tile);
}

extern "C" __global__ void emit_keys(int n, const float* means2d, const float* conics, const float* opacities,
                                     const int* extents, int width, int height, int nx, const int* slot_of_tile,
                                     const long long* starts, const long long* depth_rank, long long* keys) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::emit_one(i, means2d, conics, opacities, extents, width, height, nx, slot_of_tile, starts[i], depth_rank[i],
                     keys);
}

extern "C" __global__ void tile_ranges(long long m, const long long* keys, int n_slots, long long* offsets) {
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < m; j += (long long)gridDim.x * blockDim.x)
        gp::tile_range_one(j, m, keys, n_slots, offsets);
}
