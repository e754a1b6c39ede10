// Shared definitions of the grendel_py CUDA kernels (compiled by NVRTC through cupy.RawModule, and by nvcc
// for the compile tests and the host emulation used by the CPU tests). No standard headers: NVRTC has none.
#pragma once

#if defined(__CUDACC__)
#define GP_HD __host__ __device__ __forceinline__
#define GP_UNROLL _Pragma("unroll")
#else
#define GP_HD inline
#define GP_UNROLL
#endif

namespace gp {

inline constexpr int TILE = 16;                  // tile side in pixels
inline constexpr int TILE_PIXELS = TILE * TILE;  // threads per rasterize block
inline constexpr float DILATION = 0.3f;          // px^2 added to the 2D covariance
inline constexpr float ALPHA_MIN = 1.0f / 255.0f;
inline constexpr float ALPHA_MAX = 0.99f;
inline constexpr float T_MIN = 1e-4f;
inline constexpr float NORM_EPS = 1e-12f;        // torch.nn.functional.normalize's eps

typedef long long i64;

struct Vec3 {
    float x, y, z;
};

GP_HD Vec3 vec3(float x, float y, float z) {
    Vec3 v;
    v.x = x;
    v.y = y;
    v.z = z;
    return v;
}

// Products and sums rounded one by one, never contracted into an FMA: for values that several kernels must
// compute to the same bits (a splat's alpha decides whether the backward pass un-composites it, and the
// compiler may contract the same expression differently where it is inlined into different kernels).
GP_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

GP_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

GP_HD float dot3(Vec3 a, Vec3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

// Row-major 3x3 matrix.
struct Mat3 {
    float m[9];
    GP_HD float operator()(int i, int j) const { return m[3 * i + j]; }
    GP_HD float& operator()(int i, int j) { return m[3 * i + j]; }
};

GP_HD Mat3 matmul(const Mat3& a, const Mat3& b) {
    Mat3 c;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) c(i, j) = a(i, 0) * b(0, j) + a(i, 1) * b(1, j) + a(i, 2) * b(2, j);
    return c;
}

GP_HD Mat3 transpose(const Mat3& a) {
    Mat3 t;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) t(i, j) = a(j, i);
    return t;
}

GP_HD Mat3 add(const Mat3& a, const Mat3& b) {
    Mat3 c;
    for (int k = 0; k < 9; ++k) c.m[k] = a.m[k] + b.m[k];
    return c;
}

}  // namespace gp
