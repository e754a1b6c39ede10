// Projection of one Gaussian into a pinhole camera, forward and backward: the math of project.cu, written
// to follow grendel_py/render/projection.py (the spec) operation for operation.
#pragma once
#include "common.cuh"
#include "sh.cuh"

namespace gp {

// Layout of the float camera record built by grendel_py/render/kernel_backend.py (camera_record).
inline constexpr int CAM_R = 0;        // world-to-camera rotation, row-major, 9 floats
inline constexpr int CAM_T = 9;        // translation, 3 floats
inline constexpr int CAM_CENTER = 12;  // camera centre in world space, 3 floats
inline constexpr int CAM_FX = 15, CAM_FY = 16, CAM_CX = 17, CAM_CY = 18;
inline constexpr int CAM_LIM_X_POS = 19, CAM_LIM_X_NEG = 20, CAM_LIM_Y_POS = 21, CAM_LIM_Y_NEG = 22;
inline constexpr int CAM_NEAR = 23;
inline constexpr int CAM_FLOATS = 24;

inline constexpr float EXTENT_MAX = 16777216.0f;  // 2^24: the spec's clamp of a pixel half size
inline constexpr double BOX_MAX = 1099511627776.0;  // 2^40: the spec's clamp of a box's low corner

struct Cam {
    Mat3 R;
    Vec3 t, center;
    float fx, fy, cx, cy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg, near_plane;
};

GP_HD Cam load_cam(const float* c) {
    Cam cam;
    for (int k = 0; k < 9; ++k) cam.R.m[k] = c[CAM_R + k];
    cam.t = vec3(c[CAM_T], c[CAM_T + 1], c[CAM_T + 2]);
    cam.center = vec3(c[CAM_CENTER], c[CAM_CENTER + 1], c[CAM_CENTER + 2]);
    cam.fx = c[CAM_FX];
    cam.fy = c[CAM_FY];
    cam.cx = c[CAM_CX];
    cam.cy = c[CAM_CY];
    cam.lim_x_pos = c[CAM_LIM_X_POS];
    cam.lim_x_neg = c[CAM_LIM_X_NEG];
    cam.lim_y_pos = c[CAM_LIM_Y_POS];
    cam.lim_y_neg = c[CAM_LIM_Y_NEG];
    cam.near_plane = c[CAM_NEAR];
    return cam;
}

// Inclusive pixel ranges of the pixels whose centres lie within (ex, ey) of (mx, my), clipped to the image,
// computed in double as projection.pixel_box; empty where lo > hi (NaN means give an empty box).
GP_HD void pixel_box(float mx, float my, int ex, int ey, int width, int height, i64* x_lo, i64* x_hi, i64* y_lo,
                     i64* y_hi) {
    const double dmx = (double)mx, dmy = (double)my;
    double xl = ceil(dmx - (double)ex - 0.5), xh = floor(dmx + (double)ex - 0.5);
    double yl = ceil(dmy - (double)ey - 0.5), yh = floor(dmy + (double)ey - 0.5);
    xl = xl != xl ? BOX_MAX : fmin(fmax(xl, 0.0), BOX_MAX);
    yl = yl != yl ? BOX_MAX : fmin(fmax(yl, 0.0), BOX_MAX);
    xh = xh != xh ? -1.0 : fmin(fmax(xh, -1.0), (double)(width - 1));
    yh = yh != yh ? -1.0 : fmin(fmax(yh, -1.0), (double)(height - 1));
    *x_lo = (i64)xl;
    *x_hi = (i64)xh;
    *y_lo = (i64)yl;
    *y_hi = (i64)yh;
}

// Half size of the box holding opacity * G >= 1/255 along one axis of variance var (spec: _extents).
GP_HD float half_extent(float k, float var) {
    float r = ceilf(sqrtf(k * fmaxf(var, 0.f)));
    if (r != r) return 0.f;
    return fminf(r, EXTENT_MAX);
}

GP_HD Vec3 normalized(Vec3 v, float* norm) {
    const float n = sqrtf(dot3(v, v));
    *norm = n;
    const float d = fmaxf(n, NORM_EPS);
    return vec3(v.x / d, v.y / d, v.z / d);
}

// d/dv of v / max(|v|, eps) applied to the gradient g of the normalised vector u.
GP_HD Vec3 normalized_vjp(Vec3 u, float norm, Vec3 g) {
    if (norm <= NORM_EPS) {
        const float d = NORM_EPS;
        return vec3(g.x / d, g.y / d, g.z / d);
    }
    const float ug = dot3(u, g);
    return vec3((g.x - u.x * ug) / norm, (g.y - u.y * ug) / norm, (g.z - u.z * ug) / norm);
}

GP_HD Mat3 quat_to_rotmat(float w, float x, float y, float z) {
    Mat3 r;
    r(0, 0) = 1.f - 2.f * (y * y + z * z);
    r(0, 1) = 2.f * (x * y - w * z);
    r(0, 2) = 2.f * (x * z + w * y);
    r(1, 0) = 2.f * (x * y + w * z);
    r(1, 1) = 1.f - 2.f * (x * x + z * z);
    r(1, 2) = 2.f * (y * z - w * x);
    r(2, 0) = 2.f * (x * z - w * y);
    r(2, 1) = 2.f * (y * z + w * x);
    r(2, 2) = 1.f - 2.f * (x * x + y * y);
    return r;
}

// Everything the forward pass computes for one Gaussian that the backward pass needs again.
struct Projected {
    Vec3 p;          // camera-space mean
    bool in_front;   // p.z > near
    float zs;        // depth used (p.z, or 1 for culled splats, as the spec)
    float ux, uy;    // p.x / zs, p.y / zs before the field-of-view clamp
    float tx, ty;    // clamped tangent times zs
    float J[6];      // 2x3 Jacobian, row-major
    Vec3 qn;         // normalised quaternion x, y, z
    float qw;        // normalised quaternion w
    float qnorm;     // |q|
    Mat3 Rq;         // rotation of the Gaussian
    Mat3 cov_cam;    // camera-space covariance
    float a0, c0;    // 2D covariance diagonal before the dilation
    float a, b, c;   // dilated 2D covariance [[a, b], [b, c]]
    float det;       // a c - b^2
    bool ok_det;     // det > 0
    float m2x, m2y;  // pixel mean
};

GP_HD Projected project_geometry(const Cam& cam, Vec3 mean, const float* quat, Vec3 scale) {
    Projected P;
    const Mat3& R = cam.R;
    P.p = vec3(R(0, 0) * mean.x + R(0, 1) * mean.y + R(0, 2) * mean.z + cam.t.x,
               R(1, 0) * mean.x + R(1, 1) * mean.y + R(1, 2) * mean.z + cam.t.y,
               R(2, 0) * mean.x + R(2, 1) * mean.y + R(2, 2) * mean.z + cam.t.z);
    P.in_front = P.p.z > cam.near_plane;
    P.zs = P.in_front ? P.p.z : 1.f;
    const float zs = P.zs;
    P.ux = P.p.x / zs;
    P.uy = P.p.y / zs;
    P.tx = zs * fminf(fmaxf(P.ux, -cam.lim_x_neg), cam.lim_x_pos);
    P.ty = zs * fminf(fmaxf(P.uy, -cam.lim_y_neg), cam.lim_y_pos);
    const float zz = zs * zs;
    P.J[0] = cam.fx / zs;
    P.J[1] = 0.f;
    P.J[2] = -cam.fx * P.tx / zz;
    P.J[3] = 0.f;
    P.J[4] = cam.fy / zs;
    P.J[5] = -cam.fy * P.ty / zz;

    const float qw = quat[0], qx = quat[1], qy = quat[2], qz = quat[3];
    P.qnorm = sqrtf(qw * qw + qx * qx + qy * qy + qz * qz);
    const float qd = fmaxf(P.qnorm, NORM_EPS);
    P.qw = qw / qd;
    P.qn = vec3(qx / qd, qy / qd, qz / qd);
    P.Rq = quat_to_rotmat(P.qw, P.qn.x, P.qn.y, P.qn.z);
    Mat3 M;
    const float s[3] = {scale.x, scale.y, scale.z};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M(i, j) = P.Rq(i, j) * s[j];
    const Mat3 sigma = matmul(M, transpose(M));
    P.cov_cam = matmul(matmul(R, sigma), transpose(R));

    // cov2d = J cov_cam J^T; only (0,0), (0,1) and (1,1) are used.
    float JC[6];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            JC[3 * i + j] = P.J[3 * i] * P.cov_cam(0, j) + P.J[3 * i + 1] * P.cov_cam(1, j) + P.J[3 * i + 2] * P.cov_cam(2, j);
    const float c00 = JC[0] * P.J[0] + JC[1] * P.J[1] + JC[2] * P.J[2];
    const float c01 = JC[0] * P.J[3] + JC[1] * P.J[4] + JC[2] * P.J[5];
    const float c11 = JC[3] * P.J[3] + JC[4] * P.J[4] + JC[5] * P.J[5];
    P.a0 = c00;
    P.c0 = c11;
    P.a = c00 + DILATION;
    P.b = c01;
    P.c = c11 + DILATION;
    P.det = P.a * P.c - P.b * P.b;
    P.ok_det = P.det > 0.f;
    P.m2x = cam.fx * P.p.x / zs + cam.cx;
    P.m2y = cam.fy * P.p.y / zs + cam.cy;
    return P;
}

// Colour from the SH coefficients ``coeffs`` [>= SH_BASES<D>][3] of degree D at view direction dir:
// max(sum_k basis_k coeffs_k + 0.5, 0) per channel.
template <int D>
GP_HD void sh_color(Vec3 dir, const float* coeffs, float* rgb) {
    constexpr int NB = SH_BASES<D>;
    float basis[NB];
    sh_basis<D>(dir, basis, nullptr);
    for (int ch = 0; ch < 3; ++ch) {
        float v = 0.f;
        for (int kk = 0; kk < NB; ++kk) v += basis[kk] * coeffs[3 * kk + ch];
        rgb[ch] = fmaxf(v + 0.5f, 0.f);
    }
}

// Backward of sh_color: the gradients of all n_coeffs coefficients into v_coeffs (zero past degree D) and
// the returned gradient of the view direction, from the colour gradient v_rgb.
template <int D>
GP_HD Vec3 sh_color_backward(Vec3 dir, const float* coeffs, int n_coeffs, const float* v_rgb, float* v_coeffs) {
    constexpr int NB = SH_BASES<D>;
    float basis[NB];
    Vec3 dbasis[NB];
    sh_basis<D>(dir, basis, dbasis);
    float v_raw[3];
    for (int ch = 0; ch < 3; ++ch) {
        float v = 0.f;
        for (int kk = 0; kk < NB; ++kk) v += basis[kk] * coeffs[3 * kk + ch];
        v_raw[ch] = v + 0.5f >= 0.f ? v_rgb[ch] : 0.f;
    }
    Vec3 v_dir = vec3(0.f, 0.f, 0.f);
    for (int kk = 0; kk < NB; ++kk) {
        float along = 0.f;
        for (int ch = 0; ch < 3; ++ch) {
            v_coeffs[3 * kk + ch] = basis[kk] * v_raw[ch];
            along += v_raw[ch] * coeffs[3 * kk + ch];
        }
        v_dir.x += along * dbasis[kk].x;
        v_dir.y += along * dbasis[kk].y;
        v_dir.z += along * dbasis[kk].z;
    }
    for (int kk = NB; kk < n_coeffs; ++kk)
        for (int ch = 0; ch < 3; ++ch) v_coeffs[3 * kk + ch] = 0.f;
    return v_dir;
}

// Antialiasing's opacity factor sqrt(max(r, 0)), r = det(cov2d) / det(cov2d + dilation) (spec: projection.py);
// det_s is the dilated determinant, or 1 where it is not positive, as for the conic.
GP_HD float aa_ratio(const Projected& P, float det_s) { return (P.a0 * P.c0 - P.b * P.b) / det_s; }

// What decides where and whether a Gaussian is drawn: its geometry, the opacity it is drawn with (times the
// antialiasing factor when ``antialiased``) and its integer half sizes in pixels, both 0 where it is culled.
struct Footprint {
    Projected P;
    float det_s;  // det, or 1 where it is not positive (the spec's)
    float opacity;
    int ex, ey;
};

GP_HD Footprint footprint(const Cam& cam, Vec3 mean, const float* quat, Vec3 scale, float opacity, int width,
                          int height, int antialiased) {
    Footprint f;
    f.P = project_geometry(cam, mean, quat, scale);
    const Projected& P = f.P;
    f.det_s = P.ok_det ? P.det : 1.f;
    f.opacity = antialiased ? opacity * sqrtf(fmaxf(aa_ratio(P, f.det_s), 0.f)) : opacity;
    const float k = 2.f * logf(fmaxf(f.opacity / ALPHA_MIN, 1.f));
    const float rx = half_extent(k, P.a), ry = half_extent(k, P.c);
    i64 x_lo, x_hi, y_lo, y_hi;
    pixel_box(P.m2x, P.m2y, (int)rx, (int)ry, width, height, &x_lo, &x_hi, &y_lo, &y_hi);
    const bool keep = P.in_front && P.ok_det && x_lo <= x_hi && y_lo <= y_hi && rx > 0.f && ry > 0.f;
    f.ex = keep ? (int)rx : 0;
    f.ey = keep ? (int)ry : 0;
    return f;
}

// Splat j of the outputs: pixel mean, conic, depth, opacity, integer half sizes and the colour of the SH
// coefficients ``coeffs`` [>= (degree + 1)^2][3] seen from the camera.
GP_HD void write_splat(const Cam& cam, const Footprint& f, Vec3 mean, const float* coeffs, int degree, i64 j,
                       float* means2d, float* conics, float* depths, float* opacities_out, float* colors,
                       int* extents) {
    const Projected& P = f.P;
    conics[3 * j] = P.c / f.det_s;
    conics[3 * j + 1] = -P.b / f.det_s;
    conics[3 * j + 2] = P.a / f.det_s;
    means2d[2 * j] = P.m2x;
    means2d[2 * j + 1] = P.m2y;
    depths[j] = P.zs;
    opacities_out[j] = f.opacity;
    extents[2 * j] = f.ex;
    extents[2 * j + 1] = f.ey;

    float norm;
    const Vec3 dir = normalized(vec3(mean.x - cam.center.x, mean.y - cam.center.y, mean.z - cam.center.z), &norm);
    switch (degree) {
        case 0: sh_color<0>(dir, coeffs, colors + 3 * j); break;
        case 1: sh_color<1>(dir, coeffs, colors + 3 * j); break;
        case 2: sh_color<2>(dir, coeffs, colors + 3 * j); break;
        default: sh_color<3>(dir, coeffs, colors + 3 * j); break;
    }
}

// Forward: pixel mean, conic, depth, opacity, colour and integer half sizes of Gaussian i (activated scales and
// opacities, SH coefficients side by side).
GP_HD void project_forward_one(i64 i, const float* means, const float* quats, const float* scales,
                               const float* opacities, const float* sh, int n_coeffs, int degree, const float* cam_rec,
                               int width, int height, int antialiased, float* means2d, float* conics, float* depths,
                               float* opacities_out, float* colors, int* extents) {
    const Cam cam = load_cam(cam_rec);
    const Vec3 mean = vec3(means[3 * i], means[3 * i + 1], means[3 * i + 2]);
    const Vec3 scale = vec3(scales[3 * i], scales[3 * i + 1], scales[3 * i + 2]);
    const Footprint f = footprint(cam, mean, quats + 4 * i, scale, opacities[i], width, height, antialiased);
    write_splat(cam, f, mean, sh + i * n_coeffs * 3, degree, i, means2d, conics, depths, opacities_out, colors,
                extents);
}

// Backward of one Gaussian (mean, quaternion ``quat`` [4], activated scale ``s``, opacity, SH coefficients
// ``coeffs`` [n_coeffs][3]): the gradients of its mean [3], quaternion [4], scale [3], opacity [1] and
// coefficients [n_coeffs][3] (zero past the degree) from those of its splat's pixel mean ``v_m2d`` [2], conic
// ``v_conic`` [3], depth, opacity and colour ``v_rgb`` [3].
GP_HD void project_backward_core(const Cam& cam, Vec3 mean, const float* quat, const float s[3], float opacity,
                                 const float* coeffs, int n_coeffs, int degree, int antialiased, const float* v_m2d,
                                 const float* v_conic, float v_depth, float v_opacity_out, const float* v_rgb,
                                 float* v_mean_out, float* v_quat, float* v_scale, float* v_opacity, float* v_coeffs) {
    const Mat3& R = cam.R;
    const Projected P = project_geometry(cam, mean, quat, vec3(s[0], s[1], s[2]));
    const float zs = P.zs;

    // Colour: SH coefficients and view direction.
    float norm;
    const Vec3 dir = normalized(vec3(mean.x - cam.center.x, mean.y - cam.center.y, mean.z - cam.center.z), &norm);
    Vec3 v_dir;
    switch (degree) {
        case 0: v_dir = sh_color_backward<0>(dir, coeffs, n_coeffs, v_rgb, v_coeffs); break;
        case 1: v_dir = sh_color_backward<1>(dir, coeffs, n_coeffs, v_rgb, v_coeffs); break;
        case 2: v_dir = sh_color_backward<2>(dir, coeffs, n_coeffs, v_rgb, v_coeffs); break;
        default: v_dir = sh_color_backward<3>(dir, coeffs, n_coeffs, v_rgb, v_coeffs); break;
    }
    Vec3 v_mean = normalized_vjp(dir, norm, v_dir);

    // Conic = inverse of [[a, b], [b, c]] (or the raw entries where det <= 0, as the spec's det_s = 1).
    const float g0 = v_conic[0], g1 = v_conic[1], g2 = v_conic[2];
    float v_a, v_b, v_c;
    if (P.ok_det) {
        const float inv = 1.f / P.det, inv2 = inv * inv;
        const float a = P.a, b = P.b, c = P.c;
        v_a = g0 * (-c * c * inv2) + g1 * (b * c * inv2) + g2 * (inv - a * c * inv2);
        v_b = g0 * (2.f * b * c * inv2) + g1 * (-inv - 2.f * b * b * inv2) + g2 * (2.f * a * b * inv2);
        v_c = g0 * (inv - c * a * inv2) + g1 * (b * a * inv2) + g2 * (-a * a * inv2);
    } else {
        v_a = g2;
        v_b = -g1;
        v_c = g0;
    }

    // Opacity: o * sqrt(max(r, 0)), r = (a0 c0 - b^2) / det_s; r reaches a0 = a - dilation, c0 likewise, b,
    // and det where it is positive.
    if (antialiased) {
        const float det_s = P.ok_det ? P.det : 1.f;
        const float r = aa_ratio(P, det_s);
        const float comp = sqrtf(fmaxf(r, 0.f));
        *v_opacity = v_opacity_out * comp;
        if (r > 0.f) {
            const float v_r = v_opacity_out * opacity * 0.5f / comp;
            const float v_num = v_r / det_s;  // d r / d (a0 c0 - b^2)
            v_a += v_num * P.c0;
            v_c += v_num * P.a0;
            v_b -= 2.f * v_num * P.b;
            if (P.ok_det) {
                const float v_det = -v_r * r / det_s;
                v_a += v_det * P.c;
                v_c += v_det * P.a;
                v_b -= 2.f * v_det * P.b;
            }
        }
    } else {
        *v_opacity = v_opacity_out;
    }

    // cov2d = J K J^T with G = dL/dcov2d = [[v_a, v_b], [0, v_c]]: dL/dJ = (G + G^T) J K, dL/dK = J^T G J.
    const float* J = P.J;
    const Mat3& K = P.cov_cam;
    const float Gs[4] = {2.f * v_a, v_b, v_b, 2.f * v_c};  // G + G^T, row-major 2x2
    float JK[6];
    for (int r = 0; r < 2; ++r)
        for (int j = 0; j < 3; ++j) JK[3 * r + j] = J[3 * r] * K(0, j) + J[3 * r + 1] * K(1, j) + J[3 * r + 2] * K(2, j);
    float v_J[6];
    for (int r = 0; r < 2; ++r)
        for (int j = 0; j < 3; ++j) v_J[3 * r + j] = Gs[2 * r] * JK[j] + Gs[2 * r + 1] * JK[3 + j];
    const float G[4] = {v_a, v_b, 0.f, v_c};
    Mat3 v_K;
    for (int p = 0; p < 3; ++p)
        for (int q = 0; q < 3; ++q)
            v_K(p, q) = J[p] * (G[0] * J[q] + G[1] * J[3 + q]) + J[3 + p] * (G[2] * J[q] + G[3] * J[3 + q]);

    // K = R Sigma R^T, Sigma = M M^T, M = Rq diag(s).
    const Mat3 v_sigma = matmul(matmul(transpose(R), v_K), R);
    Mat3 M;
    for (int r = 0; r < 3; ++r)
        for (int j = 0; j < 3; ++j) M(r, j) = P.Rq(r, j) * s[j];
    const Mat3 v_M = matmul(add(v_sigma, transpose(v_sigma)), M);
    Mat3 v_Rq;
    float v_s[3] = {0.f, 0.f, 0.f};
    for (int r = 0; r < 3; ++r)
        for (int j = 0; j < 3; ++j) {
            v_Rq(r, j) = v_M(r, j) * s[j];
            v_s[j] += v_M(r, j) * P.Rq(r, j);
        }
    v_scale[0] = v_s[0];
    v_scale[1] = v_s[1];
    v_scale[2] = v_s[2];

    const float w = P.qw, x = P.qn.x, y = P.qn.y, z = P.qn.z;
    const Mat3& V = v_Rq;
    const float v_qw = 2.f * (-z * V(0, 1) + y * V(0, 2) + z * V(1, 0) - x * V(1, 2) - y * V(2, 0) + x * V(2, 1));
    const float v_qx = 2.f * (y * V(0, 1) + z * V(0, 2) + y * V(1, 0) - 2.f * x * V(1, 1) - w * V(1, 2) + z * V(2, 0) +
                              w * V(2, 1) - 2.f * x * V(2, 2));
    const float v_qy = 2.f * (-2.f * y * V(0, 0) + x * V(0, 1) + w * V(0, 2) + x * V(1, 0) + z * V(1, 2) - w * V(2, 0) +
                              z * V(2, 1) - 2.f * y * V(2, 2));
    const float v_qz = 2.f * (-2.f * z * V(0, 0) - w * V(0, 1) + x * V(0, 2) + w * V(1, 0) - 2.f * z * V(1, 1) +
                              y * V(1, 2) + x * V(2, 0) + y * V(2, 1));
    if (P.qnorm <= NORM_EPS) {
        v_quat[0] = v_qw / NORM_EPS;
        v_quat[1] = v_qx / NORM_EPS;
        v_quat[2] = v_qy / NORM_EPS;
        v_quat[3] = v_qz / NORM_EPS;
    } else {
        const float along = w * v_qw + x * v_qx + y * v_qy + z * v_qz;
        v_quat[0] = (v_qw - w * along) / P.qnorm;
        v_quat[1] = (v_qx - x * along) / P.qnorm;
        v_quat[2] = (v_qy - y * along) / P.qnorm;
        v_quat[3] = (v_qz - z * along) / P.qnorm;
    }

    // Camera-space mean: through the pixel mean, the depth and the Jacobian.
    const float zz = zs * zs, zzz = zz * zs;
    const float gmx = v_m2d[0], gmy = v_m2d[1];
    float v_px = cam.fx * gmx / zs;
    float v_py = cam.fy * gmy / zs;
    float v_zs = -cam.fx * P.p.x * gmx / zz - cam.fy * P.p.y * gmy / zz + v_depth;
    v_zs += -cam.fx * v_J[0] / zz + 2.f * cam.fx * P.tx * v_J[2] / zzz - cam.fy * v_J[4] / zz +
            2.f * cam.fy * P.ty * v_J[5] / zzz;
    const float v_tx = -cam.fx * v_J[2] / zz, v_ty = -cam.fy * v_J[5] / zz;
    v_zs += v_tx * (P.tx / zs) + v_ty * (P.ty / zs);
    if (P.ux >= -cam.lim_x_neg && P.ux <= cam.lim_x_pos) {
        const float v_ux = v_tx * zs;
        v_px += v_ux / zs;
        v_zs += -v_ux * P.p.x / zz;
    }
    if (P.uy >= -cam.lim_y_neg && P.uy <= cam.lim_y_pos) {
        const float v_uy = v_ty * zs;
        v_py += v_uy / zs;
        v_zs += -v_uy * P.p.y / zz;
    }
    const float v_pz = P.in_front ? v_zs : 0.f;
    // p = R mean + t
    v_mean.x += R(0, 0) * v_px + R(1, 0) * v_py + R(2, 0) * v_pz;
    v_mean.y += R(0, 1) * v_px + R(1, 1) * v_py + R(2, 1) * v_pz;
    v_mean.z += R(0, 2) * v_px + R(1, 2) * v_py + R(2, 2) * v_pz;

    v_mean_out[0] = v_mean.x;
    v_mean_out[1] = v_mean.y;
    v_mean_out[2] = v_mean.z;
}

// Backward: gradients of the means, quaternions, scales, opacities and SH of Gaussian i from those of its pixel
// mean, conic, depth, opacity and colour.
GP_HD void project_backward_one(i64 i, const float* means, const float* quats, const float* scales,
                                const float* opacities, const float* sh, int n_coeffs, int degree,
                                const float* cam_rec, int antialiased, const float* v_means2d, const float* v_conics,
                                const float* v_depths, const float* v_opacities_out, const float* v_colors,
                                float* v_means, float* v_quats, float* v_scales, float* v_opacities, float* v_sh) {
    const Cam cam = load_cam(cam_rec);
    const Vec3 mean = vec3(means[3 * i], means[3 * i + 1], means[3 * i + 2]);
    project_backward_core(cam, mean, quats + 4 * i, scales + 3 * i, opacities[i], sh + i * n_coeffs * 3, n_coeffs,
                          degree, antialiased, v_means2d + 2 * i, v_conics + 3 * i, v_depths[i], v_opacities_out[i],
                          v_colors + 3 * i, v_means + 3 * i, v_quats + 4 * i, v_scales + 3 * i, v_opacities + i,
                          v_sh + i * n_coeffs * 3);
}

// ---- A batch of cameras over the model's own parameters (packed splats) ----
// The batch's cameras: ``cams`` [B][CAM_FLOATS] and ``sizes`` [B][2] (width, height). Item k = b * n + i is
// Gaussian i of the model seen from camera b. The model's parameters as trained: means [n][3], quats [n][4],
// log_scales [n][3], opacity_logits [n], sh0 [n][1][3], shN [n][n_coeffs - 1][3].

GP_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

GP_HD Footprint model_footprint(i64 k, int n, const float* means, const float* quats, const float* log_scales,
                                const float* opacity_logits, const float* cams, const int* sizes, int antialiased,
                                Cam* cam, Vec3* mean) {
    const i64 b = k / n, i = k % n;
    *cam = load_cam(cams + b * CAM_FLOATS);
    *mean = vec3(means[3 * i], means[3 * i + 1], means[3 * i + 2]);
    const Vec3 scale = vec3(expf(log_scales[3 * i]), expf(log_scales[3 * i + 1]), expf(log_scales[3 * i + 2]));
    return footprint(*cam, *mean, quats + 4 * i, scale, sigmoid(opacity_logits[i]), sizes[2 * b], sizes[2 * b + 1],
                     antialiased);
}

// 1 where camera b draws Gaussian i (non-zero half sizes), else 0.
GP_HD i64 visible_one(i64 k, int n, const float* means, const float* quats, const float* log_scales,
                      const float* opacity_logits, const float* cams, const int* sizes, int antialiased) {
    Cam cam;
    Vec3 mean;
    const Footprint f =
        model_footprint(k, n, means, quats, log_scales, opacity_logits, cams, sizes, antialiased, &cam, &mean);
    return f.ex > 0 ? 1 : 0;
}

// Whether item k is drawn, and its splat's slot j: ``slots`` is the inclusive prefix sum of visible_one over
// all items, so the splats are packed camera after camera, each camera's in model order.
GP_HD bool packed_slot(i64 k, const i64* slots, i64* j) {
    *j = slots[k] - 1;
    return slots[k] != (k > 0 ? slots[k - 1] : 0);
}

// The SH coefficients of Gaussian i up to degree D, side by side (the spec's cat of sh0 and shN). The degree is
// a template parameter, so that the callers' arrays stay in registers.
template <int D>
GP_HD void gather_coeffs(i64 i, const float* sh0, const float* shN, int n_coeffs, float* coeffs) {
    for (int ch = 0; ch < 3; ++ch) coeffs[ch] = sh0[3 * i + ch];
    for (int kk = 1; kk < SH_BASES<D>; ++kk)
        for (int ch = 0; ch < 3; ++ch) coeffs[3 * kk + ch] = shN[(i * (n_coeffs - 1) + kk - 1) * 3 + ch];
}

template <int D>
GP_HD void packed_forward_at(i64 k, int n, const float* means, const float* quats, const float* log_scales,
                             const float* opacity_logits, const float* sh0, const float* shN, int n_coeffs,
                             const float* cams, const int* sizes, int antialiased, const i64* slots, float* means2d,
                             float* conics, float* depths, float* opacities_out, float* colors, int* extents,
                             int* rows) {
    i64 j;
    if (!packed_slot(k, slots, &j)) return;
    Cam cam;
    Vec3 mean;
    const Footprint f =
        model_footprint(k, n, means, quats, log_scales, opacity_logits, cams, sizes, antialiased, &cam, &mean);
    const i64 i = k % n;
    float coeffs[3 * SH_BASES<D>];
    gather_coeffs<D>(i, sh0, shN, n_coeffs, coeffs);
    write_splat(cam, f, mean, coeffs, D, j, means2d, conics, depths, opacities_out, colors, extents);
    rows[j] = (int)i;
}

// Forward: the splat of item k, if drawn, into slot j of the outputs, and its model row.
GP_HD void packed_forward_one(i64 k, int n, const float* means, const float* quats, const float* log_scales,
                              const float* opacity_logits, const float* sh0, const float* shN, int n_coeffs, int degree,
                              const float* cams, const int* sizes, int antialiased, const i64* slots, float* means2d,
                              float* conics, float* depths, float* opacities_out, float* colors, int* extents,
                              int* rows) {
#define GP_PACKED_FORWARD(D)                                                                                    \
    packed_forward_at<D>(k, n, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, cams, sizes, antialiased, \
                         slots, means2d, conics, depths, opacities_out, colors, extents, rows)
    switch (degree) {
        case 0: GP_PACKED_FORWARD(0); break;
        case 1: GP_PACKED_FORWARD(1); break;
        case 2: GP_PACKED_FORWARD(2); break;
        default: GP_PACKED_FORWARD(3); break;
    }
#undef GP_PACKED_FORWARD
}

template <int D>
GP_HD void packed_backward_at(i64 i, int n, int n_cams, const float* means, const float* quats,
                              const float* log_scales, const float* opacity_logits, const float* sh0, const float* shN,
                              int n_coeffs, const float* cams, int antialiased, const i64* slots,
                              const float* v_means2d, const float* v_conics, const float* v_depths,
                              const float* v_opacities_out, const float* v_colors, float* g_means, float* g_quats,
                              float* g_log_scales, float* g_opacity_logits, float* g_sh0, float* g_shN) {
    constexpr int NB = SH_BASES<D>;
    const Vec3 mean = vec3(means[3 * i], means[3 * i + 1], means[3 * i + 2]);
    const float s[3] = {expf(log_scales[3 * i]), expf(log_scales[3 * i + 1]), expf(log_scales[3 * i + 2])};
    const float opacity = sigmoid(opacity_logits[i]);
    float coeffs[3 * NB];
    gather_coeffs<D>(i, sh0, shN, n_coeffs, coeffs);
    for (int b = 0; b < n_cams; ++b) {
        i64 j;
        if (!packed_slot(b * (i64)n + i, slots, &j)) continue;
        const Cam cam = load_cam(cams + b * CAM_FLOATS);
        float v_mean[3], v_quat[4], v_scale[3], v_opacity, v_coeffs[3 * NB];
        project_backward_core(cam, mean, quats + 4 * i, s, opacity, coeffs, NB, D, antialiased, v_means2d + 2 * j,
                              v_conics + 3 * j, v_depths[j], v_opacities_out[j], v_colors + 3 * j, v_mean, v_quat,
                              v_scale, &v_opacity, v_coeffs);
        for (int d = 0; d < 3; ++d) g_means[3 * i + d] += v_mean[d];
        for (int d = 0; d < 4; ++d) g_quats[4 * i + d] += v_quat[d];
        for (int d = 0; d < 3; ++d) g_log_scales[3 * i + d] += v_scale[d] * s[d];
        g_opacity_logits[i] += v_opacity * (1.f - opacity) * opacity;
        for (int ch = 0; ch < 3; ++ch) g_sh0[3 * i + ch] += v_coeffs[ch];
        for (int kk = 1; kk < NB; ++kk)
            for (int ch = 0; ch < 3; ++ch) g_shN[(i * (n_coeffs - 1) + kk - 1) * 3 + ch] += v_coeffs[3 * kk + ch];
    }
}

// Backward of Gaussian i over the batch: for each camera that draws it, in camera order, the gradients of its
// parameters from its splat's are ADDED into g_* (the parameters' .grad), so the sum over cameras is made in
// one fixed order by one thread, without atomics. Through the activations: d/d log_scale = d/d scale * scale,
// d/d logit = d/d opacity * (1 - o) * o (as torch computes both).
GP_HD void packed_backward_one(i64 i, int n, int n_cams, const float* means, const float* quats,
                               const float* log_scales, const float* opacity_logits, const float* sh0,
                               const float* shN, int n_coeffs, int degree, const float* cams, int antialiased,
                               const i64* slots, const float* v_means2d, const float* v_conics, const float* v_depths,
                               const float* v_opacities_out, const float* v_colors, float* g_means, float* g_quats,
                               float* g_log_scales, float* g_opacity_logits, float* g_sh0, float* g_shN) {
#define GP_PACKED_BACKWARD(D)                                                                                      \
    packed_backward_at<D>(i, n, n_cams, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, cams, antialiased, \
                          slots, v_means2d, v_conics, v_depths, v_opacities_out, v_colors, g_means, g_quats,          \
                          g_log_scales, g_opacity_logits, g_sh0, g_shN)
    switch (degree) {
        case 0: GP_PACKED_BACKWARD(0); break;
        case 1: GP_PACKED_BACKWARD(1); break;
        case 2: GP_PACKED_BACKWARD(2); break;
        default: GP_PACKED_BACKWARD(3); break;
    }
#undef GP_PACKED_BACKWARD
}

}  // namespace gp
