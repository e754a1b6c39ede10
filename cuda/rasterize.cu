// Rasterization kernels over the selected tiles of a batch's cameras: one block of 16x16 threads per selected tile, one
// thread per pixel, the tile's splats staged through shared memory in batches of 256. Math in raster.cuh.
#include "batch.cuh"
#include "raster.cuh"

namespace gp {

struct TilePixel {
    int slot;      // selected tile handled by this block
    int pix;       // pixel inside the tile, row-major
    float px, py;  // pixel centre
};

__device__ __forceinline__ TilePixel tile_pixel(const long long* tile_ids, const long long* cams, int n_cams) {
    TilePixel t;
    t.slot = blockIdx.x;
    t.pix = threadIdx.y * TILE + threadIdx.x;
    const long long tile = tile_ids[t.slot];
    const BatchGrid g = tile_grid(tile, cams, n_cams);
    const long long local = tile - g.first_tile;
    t.px = (float)((local % g.nx) * TILE + threadIdx.x) + 0.5f;
    t.py = (float)((local / g.nx) * TILE + threadIdx.y) + 0.5f;
    return t;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

}  // namespace gp

// Front to back; stops a pixel before the splat that would take T below 1e-4 and the whole block once every
// pixel has stopped. Writes colour + T * background, the final T, and how many splats each pixel walked.
extern "C" __global__ void __launch_bounds__(gp::TILE_PIXELS)
    rasterize_forward(const long long* tile_ids, const long long* offsets, const int* splat_index,
                      const float* means2d, const float* conics, const float* opacities, const float* colors,
                      const float* background, const long long* cams, int n_cams, float* out_rgb, float* out_T,
                      int* out_walked) {
    __shared__ gp::Splat2D batch[gp::TILE_PIXELS];
    const gp::TilePixel tp = gp::tile_pixel(tile_ids, cams, n_cams);
    const long long start = offsets[tp.slot], end = offsets[tp.slot + 1];
    gp::PixelForward st;
    st.init();
    for (long long b0 = start; b0 < end; b0 += gp::TILE_PIXELS) {
        // Also the barrier that keeps the previous batch alive until every thread is done with it.
        if (__syncthreads_count(st.done) == gp::TILE_PIXELS) break;
        const long long k = b0 + tp.pix;
        if (k < end) batch[tp.pix] = gp::load_splat(splat_index[k], means2d, conics, opacities, colors);
        __syncthreads();
        const int n = (int)min((long long)gp::TILE_PIXELS, end - b0);
        for (int j = 0; j < n && !st.done; ++j) st.step(batch[j], tp.px, tp.py);
    }
    const long long out = (long long)tp.slot * gp::TILE_PIXELS + tp.pix;
    for (int ch = 0; ch < 3; ++ch) out_rgb[3 * out + ch] = st.rgb[ch] + st.T * background[ch];
    out_T[out] = st.T;
    out_walked[out] = st.walked;
}

// Back to front from each pixel's last walked splat; per splat, the pixels' gradients are summed within each
// warp with shuffles and added to the splat's gradient with one atomic per warp and value.
extern "C" __global__ void __launch_bounds__(gp::TILE_PIXELS)
    rasterize_backward(const long long* tile_ids, const long long* offsets, const int* splat_index,
                       const float* means2d, const float* conics, const float* opacities, const float* colors,
                       const float* background, const long long* cams, int n_cams, const float* T_final,
                       const int* walked,
                       const float* g_rgb, const float* g_alpha, float* v_means2d, float* v_conics,
                       float* v_opacities, float* v_colors) {
    __shared__ gp::Splat2D batch[gp::TILE_PIXELS];
    __shared__ long long batch_id[gp::TILE_PIXELS];
    __shared__ int block_walked;
    const gp::TilePixel tp = gp::tile_pixel(tile_ids, cams, n_cams);
    const long long me = (long long)tp.slot * gp::TILE_PIXELS + tp.pix;
    const int my_walked = walked[me];
    gp::PixelBackward st;
    st.init(T_final[me], g_rgb + 3 * me, g_alpha[me], background);
    if (tp.pix == 0) block_walked = 0;
    __syncthreads();
    atomicMax(&block_walked, my_walked);
    __syncthreads();
    const long long start = offsets[tp.slot];
    const int lane = tp.pix & 31;
    for (long long b1 = start + block_walked; b1 > start; b1 -= gp::TILE_PIXELS) {
        const long long b0 = max(start, b1 - gp::TILE_PIXELS);
        __syncthreads();  // the previous batch is no longer read
        const long long k = b1 - 1 - tp.pix;
        if (k >= b0) {
            batch_id[tp.pix] = splat_index[k];
            batch[tp.pix] = gp::load_splat(batch_id[tp.pix], means2d, conics, opacities, colors);
        }
        __syncthreads();
        const int n = (int)(b1 - b0);
        for (int j = 0; j < n; ++j) {
            const long long pos = b1 - 1 - j - start;  // place of this splat in the tile's list
            gp::SplatGrad g;
            g.zero();
            const bool hit = pos < my_walked && st.step(batch[j], tp.px, tp.py, &g);
            if (!__any_sync(0xffffffffu, hit)) continue;
            const float v[9] = {g.mean[0], g.mean[1], g.conic[0], g.conic[1], g.conic[2],
                                g.opacity, g.rgb[0], g.rgb[1], g.rgb[2]};
            float s[9];
            for (int q = 0; q < 9; ++q) s[q] = gp::warp_sum(v[q]);
            if (lane == 0) {
                const long long id = batch_id[j];
                atomicAdd(v_means2d + 2 * id, s[0]);
                atomicAdd(v_means2d + 2 * id + 1, s[1]);
                atomicAdd(v_conics + 3 * id, s[2]);
                atomicAdd(v_conics + 3 * id + 1, s[3]);
                atomicAdd(v_conics + 3 * id + 2, s[4]);
                atomicAdd(v_opacities + id, s[5]);
                atomicAdd(v_colors + 3 * id, s[6]);
                atomicAdd(v_colors + 3 * id + 1, s[7]);
                atomicAdd(v_colors + 3 * id + 2, s[8]);
            }
        }
    }
}
