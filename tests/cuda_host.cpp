// Host emulation of the kernels in cuda/: the same per-Gaussian, per-key and per-pixel functions (the .cuh
// headers), driven by plain loops instead of CUDA threads, so the CPU tests check the kernels' math against the
// torch spec. Element kernels take the kernel's own arguments; tile kernels take the number of tiles first.
// What this cannot check is the CUDA plumbing itself (shared-memory batches, warp sums, atomics): the gpu tests do.
#include <algorithm>
#include <cmath>

using std::ceil;
using std::floor;
using std::fmax;
using std::fmin;

#include "../cuda/bin.cuh"
#include "../cuda/loss.cuh"
#include "../cuda/project.cuh"
#include "../cuda/raster.cuh"

using gp::i64;

extern "C" {

void project_forward(int n, const float* means, const float* quats, const float* scales, const float* opacities,
                     const float* sh, int n_coeffs, int degree, const float* cam, int width, int height, int antialiased,
                     float* means2d, float* conics, float* depths, float* opacities_out, float* colors, int* extents) {
    for (int i = 0; i < n; ++i)
        gp::project_forward_one(i, means, quats, scales, opacities, sh, n_coeffs, degree, cam, width, height,
                                antialiased, means2d, conics, depths, opacities_out, colors, extents);
}

void project_backward(int n, const float* means, const float* quats, const float* scales, const float* opacities,
                      const float* sh, int n_coeffs, int degree, const float* cam, int antialiased,
                      const float* v_means2d, const float* v_conics, const float* v_depths,
                      const float* v_opacities_out, const float* v_colors, float* v_means, float* v_quats,
                      float* v_scales, float* v_opacities, float* v_sh) {
    for (int i = 0; i < n; ++i)
        gp::project_backward_one(i, means, quats, scales, opacities, sh, n_coeffs, degree, cam, antialiased,
                                 v_means2d, v_conics, v_depths, v_opacities_out, v_colors, v_means, v_quats, v_scales,
                                 v_opacities, v_sh);
}

void project_visible(i64 m, int n, const float* means, const float* quats, const float* log_scales,
                     const float* opacity_logits, const float* cams, const int* sizes, int antialiased, i64* visible) {
    for (i64 k = 0; k < m; ++k)
        visible[k] = gp::visible_one(k, n, means, quats, log_scales, opacity_logits, cams, sizes, antialiased);
}

void project_packed_forward(i64 m, int n, const float* means, const float* quats, const float* log_scales,
                            const float* opacity_logits, const float* sh0, const float* shN, int n_coeffs, int degree,
                            const float* cams, const int* sizes, int antialiased, const i64* slots, float* means2d,
                            float* conics, float* depths, float* opacities_out, float* colors, int* extents,
                            int* rows) {
    for (i64 k = 0; k < m; ++k)
        gp::packed_forward_one(k, n, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, degree, cams, sizes,
                               antialiased, slots, means2d, conics, depths, opacities_out, colors, extents, rows);
}

void project_packed_backward(int n, int n_cams, const float* means, const float* quats, const float* log_scales,
                             const float* opacity_logits, const float* sh0, const float* shN, int n_coeffs, int degree,
                             const float* cams, int antialiased, const i64* slots, const float* v_means2d,
                             const float* v_conics, const float* v_depths, const float* v_opacities_out,
                             const float* v_colors, float* g_means, float* g_quats, float* g_log_scales,
                             float* g_opacity_logits, float* g_sh0, float* g_shN) {
    for (int i = 0; i < n; ++i)
        gp::packed_backward_one(i, n, n_cams, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, degree, cams,
                                antialiased, slots, v_means2d, v_conics, v_depths, v_opacities_out, v_colors, g_means,
                                g_quats, g_log_scales, g_opacity_logits, g_sh0, g_shN);
}

void count_intersections(int n, const float* means2d, const float* conics, const float* opacities, const int* extents,
                         const i64* cams, int n_cams, const int* slot_of_tile, i64* counts) {
    for (int i = 0; i < n; ++i)
        counts[i] = gp::count_one(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams), slot_of_tile);
}

void emit_keys(int n, const float* means2d, const float* conics, const float* opacities, const int* extents,
               const i64* cams, int n_cams, const int* slot_of_tile, const i64* starts, const i64* depth_rank,
               i64* keys) {
    for (int i = 0; i < n; ++i)
        gp::emit_one(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams), slot_of_tile, starts[i],
                     depth_rank[i], keys);
}

void count_tile_pairs(int n, const float* means2d, const float* conics, const float* opacities, const int* extents,
                      const i64* cams, int n_cams, int* counts) {
    for (int i = 0; i < n; ++i)
        gp::visit_reached_tiles(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams),
                                [&](i64 tile) { counts[tile] += 1; });
}

void route_splats(int n, const float* means2d, const float* conics, const float* opacities, const int* extents,
                  const i64* cams, int n_cams, const i64* owners, unsigned char* reach) {
    for (int i = 0; i < n; ++i)
        gp::visit_reached_tiles(i, means2d, conics, opacities, extents, gp::batch_grid(i, cams, n_cams),
                                [&](i64 tile) { reach[owners[tile] * n + i] = 1; });
}

void tile_ranges(i64 m, const i64* keys, int n_slots, i64* offsets) {
    for (i64 j = 0; j < m; ++j) gp::tile_range_one(j, m, keys, n_slots, offsets);
}

static void pixel_centre(i64 tile, const i64* cams, int n_cams, int pix, float* px, float* py) {
    const gp::BatchGrid g = gp::tile_grid(tile, cams, n_cams);
    const i64 local = tile - g.first_tile;
    *px = (float)((local % g.nx) * gp::TILE + pix % gp::TILE) + 0.5f;
    *py = (float)((local / g.nx) * gp::TILE + pix / gp::TILE) + 0.5f;
}

void rasterize_forward(int n_tiles, const i64* tile_ids, const i64* offsets, const int* splat_index,
                       const float* means2d, const float* conics, const float* opacities, const float* colors,
                       const float* background, const i64* cams, int n_cams, float* out_rgb, float* out_T,
                       int* out_walked) {
    for (int slot = 0; slot < n_tiles; ++slot)
        for (int pix = 0; pix < gp::TILE_PIXELS; ++pix) {
            float px, py;
            pixel_centre(tile_ids[slot], cams, n_cams, pix, &px, &py);
            gp::PixelForward st;
            st.init();
            for (i64 k = offsets[slot]; k < offsets[slot + 1] && !st.done; ++k)
                st.step(gp::load_splat(splat_index[k], means2d, conics, opacities, colors), px, py);
            const i64 out = (i64)slot * gp::TILE_PIXELS + pix;
            for (int ch = 0; ch < 3; ++ch) out_rgb[3 * out + ch] = st.rgb[ch] + st.T * background[ch];
            out_T[out] = st.T;
            out_walked[out] = st.walked;
        }
}

void rasterize_backward(int n_tiles, const i64* tile_ids, const i64* offsets, const int* splat_index,
                        const float* means2d, const float* conics, const float* opacities, const float* colors,
                        const float* background, const i64* cams, int n_cams, const float* T_final, const int* walked,
                        const float* g_rgb,
                        const float* g_alpha, float* v_means2d, float* v_conics, float* v_opacities, float* v_colors) {
    for (int slot = 0; slot < n_tiles; ++slot)
        for (int pix = 0; pix < gp::TILE_PIXELS; ++pix) {
            float px, py;
            pixel_centre(tile_ids[slot], cams, n_cams, pix, &px, &py);
            const i64 me = (i64)slot * gp::TILE_PIXELS + pix;
            gp::PixelBackward st;
            st.init(T_final[me], g_rgb + 3 * me, g_alpha[me], background);
            for (i64 k = offsets[slot] + walked[me] - 1; k >= offsets[slot]; --k) {
                const i64 id = splat_index[k];
                gp::SplatGrad g;
                if (!st.step(gp::load_splat(id, means2d, conics, opacities, colors), px, py, &g)) continue;
                v_means2d[2 * id] += g.mean[0];
                v_means2d[2 * id + 1] += g.mean[1];
                for (int q = 0; q < 3; ++q) v_conics[3 * id + q] += g.conic[q];
                v_opacities[id] += g.opacity;
                for (int q = 0; q < 3; ++q) v_colors[3 * id + q] += g.rgb[q];
            }
        }
}

// The loss kernels' sums in the kernels' order: rows of 11 taps, then 11 rows; the block's loss as the same
// tree over its 256 pixels.
static float tree_sum(float* v) {
    for (int half = gp::TILE_PIXELS / 2; half > 0; half >>= 1)
        for (int t = 0; t < half; ++t) v[t] += v[t + half];
    return v[0];
}

void loss_forward(int n_blocks, const i64* regions, int n_regions, const float* x, const float* y, const int* owned,
                  const float* weights, float* block_loss, float* block_squared, float* maps) {
    using namespace gp;
    for (int b = 0; b < n_blocks; ++b) {
        i64 local;
        const LossRegion g = find_region(regions, n_regions, weights, b, 4, &local);
        const int tiles_x = (g.w + TILE - 1) / TILE, cw = g.w + 2 * HALO;
        const int y0 = (int)(local / tiles_x) * TILE, x0 = (int)(local % tiles_x) * TILE;
        float losses[TILE_PIXELS], squared[TILE_PIXELS];
        for (int t = 0; t < TILE_PIXELS; ++t) {
            const int py = y0 + t / TILE, px = x0 + t % TILE;
            losses[t] = squared[t] = 0.f;
            if (py >= g.h || px >= g.w) continue;
            float mo[3 * MOMENTS];
            for (int ch = 0; ch < 3; ++ch) {
                float rows[WINDOW][MOMENTS];
                for (int k = 0; k < WINDOW; ++k) {
                    const i64 at = 3 * (g.canvas + (i64)(py + k) * cw + px) + ch;
                    row_moments(x + at, y + at, 3, rows[k]);
                }
                for (int q = 0; q < MOMENTS; ++q) {
                    float v = 0.f;
                    for (int k = 0; k < WINDOW; ++k) v += window_weight(k) * rows[k][q];
                    mo[MOMENTS * ch + q] = v;
                }
            }
            const i64 p = g.core + (i64)py * g.w + px;
            const i64 centre = 3 * (g.canvas + (i64)(py + HALO) * cw + px + HALO);
            losses[t] = pixel_loss(mo, x + centre, y + centre, owned[p] != 0, g, maps + MAPS * p, squared + t);
        }
        block_loss[b] = tree_sum(losses);
        block_squared[b] = tree_sum(squared);
    }
}

void loss_backward(int n_blocks, const i64* regions, int n_regions, const float* x, const float* y, const int* owned,
                   const float* weights, const float* maps, const float* grad_out, float* grad_x) {
    using namespace gp;
    for (int b = 0; b < n_blocks; ++b) {
        i64 local;
        const LossRegion g = find_region(regions, n_regions, weights, b, 5, &local);
        const int cw = g.w + 2 * HALO, ch_rows = g.h + 2 * HALO, tiles_x = (cw + TILE - 1) / TILE;
        const int y0 = (int)(local / tiles_x) * TILE, x0 = (int)(local % tiles_x) * TILE;
        for (int t = 0; t < TILE_PIXELS; ++t) {
            const int qy = y0 + t / TILE, qx = x0 + t % TILE;
            if (qy >= ch_rows || qx >= cw) continue;
            float rows[WINDOW][MAPS];
            for (int k = 0; k < WINDOW; ++k)
                for (int m = 0; m < MAPS; ++m) {
                    float v = 0.f;
                    for (int j = 0; j < WINDOW; ++j) {
                        const int r = qy - 2 * HALO + k, c = qx - 2 * HALO + j;
                        const bool inside = r >= 0 && r < g.h && c >= 0 && c < g.w;
                        v += window_weight(j) * (inside ? maps[MAPS * (g.core + (i64)r * g.w + c) + m] : 0.f);
                    }
                    rows[k][m] = v;
                }
            const int cy = qy - HALO, cx = qx - HALO;
            const bool owned_core = cy >= 0 && cy < g.h && cx >= 0 && cx < g.w && owned[g.core + (i64)cy * g.w + cx];
            const i64 at = 3 * (g.canvas + (i64)qy * cw + qx);
            for (int ch = 0; ch < 3; ++ch) {
                float fm[3];
                for (int q = 0; q < 3; ++q) {
                    float v = 0.f;
                    for (int k = 0; k < WINDOW; ++k) v += window_weight(k) * rows[k][3 * q + ch];
                    fm[q] = v;
                }
                grad_x[at + ch] = pixel_grad(fm, x[at + ch], y[at + ch], owned_core, g, grad_out[0]);
            }
        }
    }
}

}  // extern "C"
