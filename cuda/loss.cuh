// The photometric loss over a rank's regions, (1 - l) L1 + l (1 - SSIM): the math of loss.cu, following
// grendel_py/loss/pixels.py (the spec). SSIM is INRIA's: an 11 x 11 Gaussian window (sigma 1.5) applied as two
// 11-tap passes (rows, then columns), C1 = 0.01^2, C2 = 0.03^2, per channel, averaged over channels.
//
// A region (grendel_py/loss/regions.py) is a canvas of (h + 10) x (w + 10) pixels, 3 channels: the rank's h x w
// "core" pixels and a 5-pixel halo, zeros outside the image. The loss sums over the core pixels the rank owns:
//   sum_p owned_p [ wl1 sum_ch |x - y| + wss (1 - mean_ch ssim_ch(p)) ]
// with wl1 = (1 - l) / (3 N) and wss = l / N (N: the camera's pixels), a region's two weights.
// With moments at p of the window (mu_x, mu_y, E[x^2], E[y^2], E[x y]), the gradient of the SSIM part at a
// canvas pixel q is sum_p G(p - q) [A_p + 2 x_q B_p + y_q C_p], where A, B, C are the derivatives of
// -wss / 3 owned_p ssim_ch(p) by mu_x, E[x^2] and E[x y]: the forward pass keeps them ("maps", 9 floats per
// core pixel: A, B, C per channel), the backward pass filters them with the same window.
#pragma once
#include "common.cuh"

namespace gp {

inline constexpr int WINDOW = 11;
inline constexpr int HALO = WINDOW / 2;
inline constexpr int PATCH = TILE + 2 * HALO;  // rows and columns of inputs a 16 x 16 tile's windows read
inline constexpr float SSIM_C1 = 0.01f * 0.01f;
inline constexpr float SSIM_C2 = 0.03f * 0.03f;
inline constexpr int MOMENTS = 5;  // mu_x, mu_y, E[x^2], E[y^2], E[x y]
inline constexpr int MAPS = 9;     // A, B, C per channel

// The normalised 1D Gaussian of sigma 1.5 in float32 (the spec's gaussian_window is its outer product; tests
// check these against it).
GP_HD float window_weight(int k) {
    const float w[WINDOW] = {0.00102838012f, 0.00759875821f, 0.0360007733f, 0.109360687f,
                             0.213005543f,   0.266011715f,   0.213005543f,  0.109360687f,
                             0.0360007733f,  0.00759875821f, 0.00102838012f};
    return w[k];
}

// A region of the batch, as grendel_py/loss/fused.py lays out its table (int64 [R][REGION_FIELDS]).
inline constexpr int REGION_FIELDS = 6;
struct LossRegion {
    i64 canvas;  // first canvas pixel in the batch's canvas arrays
    i64 core;    // first core pixel in the batch's owned and maps arrays
    int h, w;    // core size; the canvas is (h + 2 HALO) x (w + 2 HALO)
    i64 first;   // first block of the region in the launch
    float wl1, wss;
};

// The region of block ``block`` (regions in launch order, ``first`` at field ``first_field``) and the block's
// index within it.
GP_HD LossRegion find_region(const i64* regions, int n_regions, const float* weights, i64 block, int first_field,
                             i64* local) {
    int r = 0;
    while (r + 1 < n_regions && regions[(r + 1) * REGION_FIELDS + first_field] <= block) ++r;
    const i64* t = regions + r * REGION_FIELDS;
    LossRegion g;
    g.canvas = t[0];
    g.core = t[1];
    g.h = (int)t[2];
    g.w = (int)t[3];
    g.first = t[first_field];
    g.wl1 = weights[2 * r];
    g.wss = weights[2 * r + 1];
    *local = block - g.first;
    return g;
}

// Five moments of one channel at one position of a row pass: sum_k G_k v_k over 11 taps of x and y.
GP_HD void row_moments(const float* xs, const float* ys, int stride, float* out) {
    float m[MOMENTS] = {0.f, 0.f, 0.f, 0.f, 0.f};
    GP_UNROLL
    for (int k = 0; k < WINDOW; ++k) {
        const float g = window_weight(k), a = xs[k * stride], b = ys[k * stride];
        m[0] += g * a;
        m[1] += g * b;
        m[2] += g * (a * a);
        m[3] += g * (b * b);
        m[4] += g * (a * b);
    }
    for (int q = 0; q < MOMENTS; ++q) out[q] = m[q];
}

// SSIM of one channel from its window moments, and the derivatives of ``scale`` x SSIM by mu_x, E[x^2] and E[x y]
// (into d[0], d[1], d[2]).
GP_HD float ssim_channel(const float* m, float scale, float* d) {
    const float mu_x = m[0], mu_y = m[1];
    const float mu_xx = mu_x * mu_x, mu_yy = mu_y * mu_y, mu_xy = mu_x * mu_y;
    const float var_x = m[2] - mu_xx, var_y = m[3] - mu_yy, cov = m[4] - mu_xy;
    const float a1 = 2.f * mu_xy + SSIM_C1, a2 = 2.f * cov + SSIM_C2;
    const float b1 = mu_xx + mu_yy + SSIM_C1, b2 = var_x + var_y + SSIM_C2;
    const float ssim = (a1 * a2) / (b1 * b2);
    const float d_var = -ssim / b2;            // by var_x, which is E[x^2] - mu_x^2
    const float d_cov = 2.f * a1 / (b1 * b2);  // by cov, which is E[x y] - mu_x mu_y
    const float d_mu = 2.f * mu_y * a2 / (b1 * b2) - 2.f * mu_x * ssim / b1 - 2.f * mu_x * d_var - mu_y * d_cov;
    d[0] = scale * d_mu;
    d[1] = scale * d_var;
    d[2] = scale * d_cov;
    return ssim;
}

// The loss at core pixel p of a region from its window moments (mo[ch][MOMENTS]) and its x, y, and (into
// *squared) its squared error summed over channels, x clamped to [0, 1] (the logged PSNR's): both 0 where the
// pixel is not owned. Also writes its 9 maps (zeros where the pixel is not owned).
GP_HD float pixel_loss(const float* mo, const float* xp, const float* yp, bool owned, const LossRegion& g,
                       float* maps, float* squared) {
    float loss = 0.f, ssim_sum = 0.f, l1 = 0.f, sq = 0.f;
    for (int ch = 0; ch < 3; ++ch) {
        float d[3];
        ssim_sum += ssim_channel(mo + MOMENTS * ch, owned ? -g.wss / 3.f : 0.f, d);
        for (int q = 0; q < 3; ++q) maps[3 * q + ch] = d[q];
        l1 += fabsf(xp[ch] - yp[ch]);
        const float e = fminf(fmaxf(xp[ch], 0.f), 1.f) - yp[ch];
        sq += e * e;
    }
    if (owned) loss = g.wl1 * l1 + g.wss * (1.f - ssim_sum / 3.f);
    *squared = owned ? sq : 0.f;
    return loss;
}

GP_HD float signf(float v) { return v > 0.f ? 1.f : (v < 0.f ? -1.f : 0.f); }

// The gradient at canvas pixel q (channel ch) from its filtered maps (fm: G*A, G*B, G*C of that channel), its
// x, y, whether it is an owned core pixel, and the loss's incoming gradient.
GP_HD float pixel_grad(const float* fm, float x, float y, bool owned_core, const LossRegion& g, float grad_out) {
    float v = fm[0] + 2.f * x * fm[1] + y * fm[2];
    if (owned_core) v += g.wl1 * signf(x - y);
    return grad_out * v;
}

}  // namespace gp
