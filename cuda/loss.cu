// The loss kernels over the regions of a batch (math and layout in loss.cuh): one block of 16 x 16 threads per
// tile of a region, all regions of the batch in one launch. Forward: a block stages its tile's inputs with the
// halo (26 x 26 pixels) in shared memory, filters them by rows then columns (11 taps each), and writes each
// owned pixel's maps, the block's loss and its squared error (fixed-order tree sums). Backward: a block per tile of a region's
// canvas (halo included) filters the maps the same way and writes the canvas gradient.
#include "loss.cuh"

namespace gp {

__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int t = threadIdx.y * TILE + threadIdx.x;
    scratch[t] = v;
    __syncthreads();
    for (int half = TILE_PIXELS / 2; half > 0; half >>= 1) {
        if (t < half) scratch[t] += scratch[t + half];
        __syncthreads();
    }
    return scratch[0];
}

}  // namespace gp

extern "C" __global__ void loss_forward(const long long* regions, int n_regions, const float* x, const float* y,
                                        const int* owned, const float* weights, float* block_loss,
                                        float* block_squared, float* maps) {
    using namespace gp;
    __shared__ float sx[PATCH * PATCH * 3], sy[PATCH * PATCH * 3];
    __shared__ float rows[PATCH * TILE * 3 * MOMENTS];
    __shared__ float scratch[TILE_PIXELS];
    long long local;
    const LossRegion g = find_region(regions, n_regions, weights, blockIdx.x, 4, &local);
    const int tiles_x = (g.w + TILE - 1) / TILE, cw = g.w + 2 * HALO, ch_rows = g.h + 2 * HALO;
    const int y0 = (int)(local / tiles_x) * TILE, x0 = (int)(local % tiles_x) * TILE;  // core = canvas rows of windows
    const int t = threadIdx.y * TILE + threadIdx.x;
    for (int k = t; k < PATCH * PATCH; k += TILE_PIXELS) {
        const int r = y0 + k / PATCH, c = x0 + k % PATCH;
        const bool inside = r < ch_rows && c < cw;
        const long long at = 3 * (g.canvas + (long long)r * cw + c);
        for (int ch = 0; ch < 3; ++ch) {
            sx[3 * k + ch] = inside ? x[at + ch] : 0.f;
            sy[3 * k + ch] = inside ? y[at + ch] : 0.f;
        }
    }
    __syncthreads();
    for (int k = t; k < PATCH * TILE; k += TILE_PIXELS) {
        const int r = k / TILE, c = k % TILE;
        for (int ch = 0; ch < 3; ++ch)
            row_moments(sx + 3 * (r * PATCH + c) + ch, sy + 3 * (r * PATCH + c) + ch, 3,
                        rows + MOMENTS * (3 * k + ch));
    }
    __syncthreads();
    const int py = y0 + threadIdx.y, px = x0 + threadIdx.x;
    float loss = 0.f, squared = 0.f;
    if (py < g.h && px < g.w) {
        float mo[3 * MOMENTS];
        for (int ch = 0; ch < 3; ++ch)
            for (int q = 0; q < MOMENTS; ++q) {
                float v = 0.f;
                GP_UNROLL
                for (int k = 0; k < WINDOW; ++k)
                    v += window_weight(k) * rows[MOMENTS * (3 * ((threadIdx.y + k) * TILE + threadIdx.x) + ch) + q];
                mo[MOMENTS * ch + q] = v;
            }
        const long long p = g.core + (long long)py * g.w + px;
        const int centre = 3 * ((threadIdx.y + HALO) * PATCH + threadIdx.x + HALO);
        loss = pixel_loss(mo, sx + centre, sy + centre, owned[p] != 0, g, maps + MAPS * p, &squared);
    }
    const float total = block_sum(loss, scratch);
    if (t == 0) block_loss[blockIdx.x] = total;
    __syncthreads();  // scratch is reused
    const float total_squared = block_sum(squared, scratch);
    if (t == 0) block_squared[blockIdx.x] = total_squared;
}

extern "C" __global__ void loss_backward(const long long* regions, int n_regions, const float* x, const float* y,
                                         const int* owned, const float* weights, const float* maps,
                                         const float* grad_out, float* grad_x) {
    using namespace gp;
    __shared__ float sm[PATCH * PATCH * MAPS];
    __shared__ float rows[PATCH * TILE * MAPS];
    long long local;
    const LossRegion g = find_region(regions, n_regions, weights, blockIdx.x, 5, &local);
    const int cw = g.w + 2 * HALO, ch_rows = g.h + 2 * HALO, tiles_x = (cw + TILE - 1) / TILE;
    const int y0 = (int)(local / tiles_x) * TILE, x0 = (int)(local % tiles_x) * TILE;  // canvas tile
    const int t = threadIdx.y * TILE + threadIdx.x;
    // Core pixels whose windows reach canvas pixel q are q - 2 HALO .. q (core coordinates).
    for (int k = t; k < PATCH * PATCH; k += TILE_PIXELS) {
        const int r = y0 - 2 * HALO + k / PATCH, c = x0 - 2 * HALO + k % PATCH;
        const bool inside = r >= 0 && r < g.h && c >= 0 && c < g.w;
        const long long at = MAPS * (g.core + (long long)r * g.w + c);
        for (int m = 0; m < MAPS; ++m) sm[MAPS * k + m] = inside ? maps[at + m] : 0.f;
    }
    __syncthreads();
    for (int k = t; k < PATCH * TILE; k += TILE_PIXELS) {
        const int r = k / TILE, c = k % TILE;
        for (int m = 0; m < MAPS; ++m) {
            float v = 0.f;
            GP_UNROLL
            for (int j = 0; j < WINDOW; ++j) v += window_weight(j) * sm[MAPS * (r * PATCH + c + j) + m];
            rows[MAPS * k + m] = v;
        }
    }
    __syncthreads();
    const int qy = y0 + threadIdx.y, qx = x0 + threadIdx.x;
    if (qy >= ch_rows || qx >= cw) return;
    const int cy = qy - HALO, cx = qx - HALO;  // core coordinates of q
    const bool owned_core = cy >= 0 && cy < g.h && cx >= 0 && cx < g.w && owned[g.core + (long long)cy * g.w + cx];
    const long long at = 3 * (g.canvas + (long long)qy * cw + qx);
    for (int ch = 0; ch < 3; ++ch) {
        float fm[3];
        for (int q = 0; q < 3; ++q) {
            float v = 0.f;
            GP_UNROLL
            for (int k = 0; k < WINDOW; ++k)
                v += window_weight(k) * rows[MAPS * ((threadIdx.y + k) * TILE + threadIdx.x) + 3 * q + ch];
            fm[q] = v;
        }
        grad_x[at + ch] = pixel_grad(fm, x[at + ch], y[at + ch], owned_core, g, grad_out[0]);
    }
}
