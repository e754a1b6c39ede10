// Real spherical harmonics up to degree 3 (the INRIA 3DGS basis and signs): values and gradients.
#pragma once
#include "common.cuh"

namespace gp {

inline constexpr float SH_C0 = 0.28209479177387814f;
inline constexpr float SH_C1 = 0.4886025119029199f;
inline constexpr float SH_C2_0 = 1.0925484305920792f, SH_C2_1 = -1.0925484305920792f, SH_C2_2 = 0.31539156525252005f,
                SH_C2_3 = -1.0925484305920792f, SH_C2_4 = 0.5462742152960396f;
inline constexpr float SH_C3_0 = -0.5900435899266435f, SH_C3_1 = 2.890611442640554f, SH_C3_2 = -0.4570457994644658f,
                SH_C3_3 = 0.3731763325901154f, SH_C3_4 = -0.4570457994644658f, SH_C3_5 = 1.445305721320277f,
                SH_C3_6 = -0.5900435899266435f;

template <int D>
inline constexpr int SH_BASES = (D + 1) * (D + 1);  // basis functions up to degree D

// The first SH_BASES<D> basis values at unit direction d, and (when grad != nullptr) their gradients with
// respect to d, grad[k] = d basis_k / d (x, y, z). The degree is a template parameter, so that the callers'
// arrays of SH_BASES<D> entries are indexed by constants once their loops unroll (registers, not local
// memory).
template <int D>
GP_HD void sh_basis(Vec3 d, float* basis, Vec3* grad) {
    const float x = d.x, y = d.y, z = d.z;
    basis[0] = SH_C0;
    if (grad) grad[0] = vec3(0.f, 0.f, 0.f);
    if constexpr (D >= 1) {
        basis[1] = -SH_C1 * y;
        basis[2] = SH_C1 * z;
        basis[3] = -SH_C1 * x;
        if (grad) {
            grad[1] = vec3(0.f, -SH_C1, 0.f);
            grad[2] = vec3(0.f, 0.f, SH_C1);
            grad[3] = vec3(-SH_C1, 0.f, 0.f);
        }
    }
    if constexpr (D >= 2) {
        const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
        basis[4] = SH_C2_0 * xy;
        basis[5] = SH_C2_1 * yz;
        basis[6] = SH_C2_2 * (2.f * zz - xx - yy);
        basis[7] = SH_C2_3 * xz;
        basis[8] = SH_C2_4 * (xx - yy);
        if (grad) {
            grad[4] = vec3(SH_C2_0 * y, SH_C2_0 * x, 0.f);
            grad[5] = vec3(0.f, SH_C2_1 * z, SH_C2_1 * y);
            grad[6] = vec3(-2.f * SH_C2_2 * x, -2.f * SH_C2_2 * y, 4.f * SH_C2_2 * z);
            grad[7] = vec3(SH_C2_3 * z, 0.f, SH_C2_3 * x);
            grad[8] = vec3(2.f * SH_C2_4 * x, -2.f * SH_C2_4 * y, 0.f);
        }
    }
    if constexpr (D >= 3) {
        const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
        basis[9] = SH_C3_0 * y * (3.f * xx - yy);
        basis[10] = SH_C3_1 * xy * z;
        basis[11] = SH_C3_2 * y * (4.f * zz - xx - yy);
        basis[12] = SH_C3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
        basis[13] = SH_C3_4 * x * (4.f * zz - xx - yy);
        basis[14] = SH_C3_5 * z * (xx - yy);
        basis[15] = SH_C3_6 * x * (xx - 3.f * yy);
        if (grad) {
            grad[9] = vec3(SH_C3_0 * 6.f * xy, SH_C3_0 * (3.f * xx - 3.f * yy), 0.f);
            grad[10] = vec3(SH_C3_1 * yz, SH_C3_1 * xz, SH_C3_1 * xy);
            grad[11] = vec3(-2.f * SH_C3_2 * xy, SH_C3_2 * (4.f * zz - xx - 3.f * yy), 8.f * SH_C3_2 * yz);
            grad[12] = vec3(-6.f * SH_C3_3 * xz, -6.f * SH_C3_3 * yz, SH_C3_3 * (6.f * zz - 3.f * xx - 3.f * yy));
            grad[13] = vec3(SH_C3_4 * (4.f * zz - 3.f * xx - yy), -2.f * SH_C3_4 * xy, 8.f * SH_C3_4 * xz);
            grad[14] = vec3(2.f * SH_C3_5 * xz, -2.f * SH_C3_5 * yz, SH_C3_5 * (xx - yy));
            grad[15] = vec3(SH_C3_6 * (3.f * xx - 3.f * yy), -6.f * SH_C3_6 * xy, 0.f);
        }
    }
}

}  // namespace gp
