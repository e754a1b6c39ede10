// Per-pixel compositing of one splat, forward and backward: the math of rasterize.cu, following
// grendel_py/render/composite.py (the spec). The kernels and the host emulation both call these.
#pragma once
#include "common.cuh"

namespace gp {

// A splat as the rasterizer sees it: pixel mean, conic (a, b, c), opacity and colour.
struct Splat2D {
    float mx, my, a, b, c, opacity;
    float rgb[3];
};

// The exponent -0.5 d^T conic d at offset (dx, dy), rounded operation by operation (no FMA), so that every
// kernel computes it to the same bits: ((-0.5 a dx) dx - (b dx) dy) - (0.5 c dy) dy, as C evaluates it.
GP_HD float splat_power(const Splat2D& s, float dx, float dy) {
    const float xx = mul_rn(mul_rn(mul_rn(-0.5f, s.a), dx), dx);
    const float xy = mul_rn(mul_rn(s.b, dx), dy);
    const float yy = mul_rn(mul_rn(mul_rn(0.5f, s.c), dy), dy);
    return sub_rn(sub_rn(xx, xy), yy);
}

// opacity * exp(power) at the pixel centre (px, py), before the 0.99 clamp; gauss, dx, dy are kept for
// the backward pass (dx = mx - px, dy = my - py). The forward and the backward pass decide from this value
// whether a splat counts (alpha >= 1/255), so it is computed without contractions (splat_power, mul_rn):
// both passes get the same bits wherever the compiler inlines it.
GP_HD float splat_raw(const Splat2D& s, float px, float py, float* gauss, float* dx, float* dy) {
    *dx = sub_rn(s.mx, px);
    *dy = sub_rn(s.my, py);
    *gauss = expf(splat_power(s, *dx, *dy));
    return mul_rn(*gauss, s.opacity);
}

// Forward state of one pixel: transmittance, colour so far, splats walked (including skipped ones).
struct PixelForward {
    float T;
    float rgb[3];
    int walked;  // splats of the tile's list looked at before termination: the backward pass starts there
    bool done;

    GP_HD void init() {
        T = 1.f;
        rgb[0] = rgb[1] = rgb[2] = 0.f;
        walked = 0;
        done = false;
    }

    // Composite the next splat of the tile's list (no-op once done).
    GP_HD void step(const Splat2D& s, float px, float py) {
        if (done) return;
        float gauss, dx, dy;
        const float raw = splat_raw(s, px, py, &gauss, &dx, &dy);
        if (raw < ALPHA_MIN) {
            ++walked;
            return;
        }
        const float alpha = fminf(raw, ALPHA_MAX);
        const float next_T = T * (1.f - alpha);
        if (next_T < T_MIN) {
            done = true;
            return;
        }
        const float w = alpha * T;
        for (int ch = 0; ch < 3; ++ch) rgb[ch] += w * s.rgb[ch];
        T = next_T;
        ++walked;
    }
};

// Gradient contributions of one (pixel, splat) pair.
struct SplatGrad {
    float mean[2], conic[3], opacity, rgb[3];

    GP_HD void zero() {
        mean[0] = mean[1] = 0.f;
        conic[0] = conic[1] = conic[2] = 0.f;
        opacity = 0.f;
        rgb[0] = rgb[1] = rgb[2] = 0.f;
    }
};

// Backward state of one pixel, walking its splats back to front from the last one composited.
// behind = d loss / d (light arriving from behind the current splat), already dotted with the colour
// gradient: seeded with T_final * (g . background - g_alpha).
struct PixelBackward {
    float T;  // transmittance after the current splat
    float behind;
    float g[3];

    GP_HD void init(float t_final, const float* g_rgb, float g_alpha, const float* background) {
        T = t_final;
        for (int ch = 0; ch < 3; ++ch) g[ch] = g_rgb[ch];
        behind = t_final * (g[0] * background[0] + g[1] * background[1] + g[2] * background[2] - g_alpha);
    }

    // Un-composite splat s (one the forward pass walked); returns false (and leaves out untouched) when it
    // was skipped there (alpha < 1/255).
    GP_HD bool step(const Splat2D& s, float px, float py, SplatGrad* out) {
        float gauss, dx, dy;
        const float raw = splat_raw(s, px, py, &gauss, &dx, &dy);
        if (raw < ALPHA_MIN) return false;
        const float alpha = fminf(raw, ALPHA_MAX);
        const float one_minus = 1.f - alpha;
        const float T_before = T / one_minus;
        const float w = alpha * T_before;
        const float gc = g[0] * s.rgb[0] + g[1] * s.rgb[1] + g[2] * s.rgb[2];
        for (int ch = 0; ch < 3; ++ch) out->rgb[ch] = w * g[ch];
        const float d_raw = raw < ALPHA_MAX ? T_before * gc - behind / one_minus : 0.f;
        behind += w * gc;
        T = T_before;
        out->opacity = d_raw * gauss;
        const float dq = d_raw * raw;  // d loss / d power
        out->conic[0] = -0.5f * dx * dx * dq;
        out->conic[1] = -dx * dy * dq;
        out->conic[2] = -0.5f * dy * dy * dq;
        out->mean[0] = -(s.a * dx + s.b * dy) * dq;
        out->mean[1] = -(s.b * dx + s.c * dy) * dq;
        return true;
    }
};

GP_HD Splat2D load_splat(i64 k, const float* means2d, const float* conics, const float* opacities, const float* colors) {
    Splat2D s;
    s.mx = means2d[2 * k];
    s.my = means2d[2 * k + 1];
    s.a = conics[3 * k];
    s.b = conics[3 * k + 1];
    s.c = conics[3 * k + 2];
    s.opacity = opacities[k];
    s.rgb[0] = colors[3 * k];
    s.rgb[1] = colors[3 * k + 1];
    s.rgb[2] = colors[3 * k + 2];
    return s;
}

}  // namespace gp
