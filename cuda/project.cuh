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

// Forward: pixel mean, conic, depth, opacity (times the antialiasing factor when ``antialiased``), colour and
// integer half sizes of Gaussian i.
GP_HD void project_forward_one(i64 i, const float* means, const float* quats, const float* scales,
                               const float* opacities, const float* sh, int n_coeffs, int degree, const float* cam_rec,
                               int width, int height, int antialiased, float* means2d, float* conics, float* depths,
                               float* opacities_out, float* colors, int* extents) {
    const Cam cam = load_cam(cam_rec);
    const Vec3 mean = vec3(means[3 * i], means[3 * i + 1], means[3 * i + 2]);
    const Vec3 scale = vec3(scales[3 * i], scales[3 * i + 1], scales[3 * i + 2]);
    const Projected P = project_geometry(cam, mean, quats + 4 * i, scale);

    const float det_s = P.ok_det ? P.det : 1.f;
    conics[3 * i] = P.c / det_s;
    conics[3 * i + 1] = -P.b / det_s;
    conics[3 * i + 2] = P.a / det_s;
    means2d[2 * i] = P.m2x;
    means2d[2 * i + 1] = P.m2y;
    depths[i] = P.zs;
    const float opacity = antialiased ? opacities[i] * sqrtf(fmaxf(aa_ratio(P, det_s), 0.f)) : opacities[i];
    opacities_out[i] = opacity;

    const float k = 2.f * logf(fmaxf(opacity / ALPHA_MIN, 1.f));
    const float rx = half_extent(k, P.a), ry = half_extent(k, P.c);
    i64 x_lo, x_hi, y_lo, y_hi;
    pixel_box(P.m2x, P.m2y, (int)rx, (int)ry, width, height, &x_lo, &x_hi, &y_lo, &y_hi);
    const bool keep = P.in_front && P.ok_det && x_lo <= x_hi && y_lo <= y_hi && rx > 0.f && ry > 0.f;
    extents[2 * i] = keep ? (int)rx : 0;
    extents[2 * i + 1] = keep ? (int)ry : 0;

    float norm;
    const Vec3 dir = normalized(vec3(mean.x - cam.center.x, mean.y - cam.center.y, mean.z - cam.center.z), &norm);
    const float* coeffs = sh + i * n_coeffs * 3;
    switch (degree) {
        case 0: sh_color<0>(dir, coeffs, colors + 3 * i); break;
        case 1: sh_color<1>(dir, coeffs, colors + 3 * i); break;
        case 2: sh_color<2>(dir, coeffs, colors + 3 * i); break;
        default: sh_color<3>(dir, coeffs, colors + 3 * i); break;
    }
}

// Backward: gradients of the means, quaternions, scales, opacities and SH of Gaussian i from those of its pixel
// mean, conic, depth, opacity and colour.
GP_HD void project_backward_one(i64 i, const float* means, const float* quats, const float* scales,
                                const float* opacities, const float* sh, int n_coeffs, int degree,
                                const float* cam_rec, int antialiased, const float* v_means2d, const float* v_conics,
                                const float* v_depths, const float* v_opacities_out, const float* v_colors,
                                float* v_means, float* v_quats, float* v_scales, float* v_opacities, float* v_sh) {
    const Cam cam = load_cam(cam_rec);
    const Mat3& R = cam.R;
    const Vec3 mean = vec3(means[3 * i], means[3 * i + 1], means[3 * i + 2]);
    const float s[3] = {scales[3 * i], scales[3 * i + 1], scales[3 * i + 2]};
    const Projected P = project_geometry(cam, mean, quats + 4 * i, vec3(s[0], s[1], s[2]));
    const float zs = P.zs;

    // Colour: SH coefficients and view direction.
    float norm;
    const Vec3 dir = normalized(vec3(mean.x - cam.center.x, mean.y - cam.center.y, mean.z - cam.center.z), &norm);
    const float* coeffs = sh + i * n_coeffs * 3;
    float* v_coeffs = v_sh + i * n_coeffs * 3;
    Vec3 v_dir;
    switch (degree) {
        case 0: v_dir = sh_color_backward<0>(dir, coeffs, n_coeffs, v_colors + 3 * i, v_coeffs); break;
        case 1: v_dir = sh_color_backward<1>(dir, coeffs, n_coeffs, v_colors + 3 * i, v_coeffs); break;
        case 2: v_dir = sh_color_backward<2>(dir, coeffs, n_coeffs, v_colors + 3 * i, v_coeffs); break;
        default: v_dir = sh_color_backward<3>(dir, coeffs, n_coeffs, v_colors + 3 * i, v_coeffs); break;
    }
    Vec3 v_mean = normalized_vjp(dir, norm, v_dir);

    // Conic = inverse of [[a, b], [b, c]] (or the raw entries where det <= 0, as the spec's det_s = 1).
    const float g0 = v_conics[3 * i], g1 = v_conics[3 * i + 1], g2 = v_conics[3 * i + 2];
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
        v_opacities[i] = v_opacities_out[i] * comp;
        if (r > 0.f) {
            const float v_r = v_opacities_out[i] * opacities[i] * 0.5f / comp;
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
        v_opacities[i] = v_opacities_out[i];
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
    v_scales[3 * i] = v_s[0];
    v_scales[3 * i + 1] = v_s[1];
    v_scales[3 * i + 2] = v_s[2];

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
        v_quats[4 * i] = v_qw / NORM_EPS;
        v_quats[4 * i + 1] = v_qx / NORM_EPS;
        v_quats[4 * i + 2] = v_qy / NORM_EPS;
        v_quats[4 * i + 3] = v_qz / NORM_EPS;
    } else {
        const float along = w * v_qw + x * v_qx + y * v_qy + z * v_qz;
        v_quats[4 * i] = (v_qw - w * along) / P.qnorm;
        v_quats[4 * i + 1] = (v_qx - x * along) / P.qnorm;
        v_quats[4 * i + 2] = (v_qy - y * along) / P.qnorm;
        v_quats[4 * i + 3] = (v_qz - z * along) / P.qnorm;
    }

    // Camera-space mean: through the pixel mean, the depth and the Jacobian.
    const float zz = zs * zs, zzz = zz * zs;
    const float gmx = v_means2d[2 * i], gmy = v_means2d[2 * i + 1];
    float v_px = cam.fx * gmx / zs;
    float v_py = cam.fy * gmy / zs;
    float v_zs = -cam.fx * P.p.x * gmx / zz - cam.fy * P.p.y * gmy / zz + v_depths[i];
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

    v_means[3 * i] = v_mean.x;
    v_means[3 * i + 1] = v_mean.y;
    v_means[3 * i + 2] = v_mean.z;
}

}  // namespace gp
