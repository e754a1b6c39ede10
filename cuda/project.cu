// Projection kernels: one thread per Gaussian (grid-stride), math in project.cuh. Indices are 64-bit (4 * i
// overflows an int from 2^29 Gaussians); the count n is an int, so kernel_backend.py refuses 2^31 or more.
#include "project.cuh"

extern "C" __global__ void project_forward(int n, const float* means, const float* quats, const float* scales,
                                           const float* opacities, const float* sh, int n_coeffs, int degree,
                                           const float* cam, int width, int height, int antialiased, float* means2d,
                                           float* conics, float* depths, float* opacities_out, float* colors,
                                           int* extents) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::project_forward_one(i, means, quats, scales, opacities, sh, n_coeffs, degree, cam, width, height,
                                antialiased, means2d, conics, depths, opacities_out, colors, extents);
}

extern "C" __global__ void project_backward(int n, const float* means, const float* quats, const float* scales,
                                            const float* opacities, const float* sh, int n_coeffs, int degree,
                                            const float* cam, int antialiased, const float* v_means2d,
                                            const float* v_conics, const float* v_depths, const float* v_opacities_out,
                                            const float* v_colors, float* v_means, float* v_quats, float* v_scales,
                                            float* v_opacities, float* v_sh) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::project_backward_one(i, means, quats, scales, opacities, sh, n_coeffs, degree, cam, antialiased,
                                 v_means2d, v_conics, v_depths, v_opacities_out, v_colors, v_means, v_quats, v_scales,
                                 v_opacities, v_sh);
}

// The batch's projection over the model's own parameters (project.cuh, "A batch of cameras"): which
// (camera, Gaussian) items are drawn, their splats packed through the prefix sum of that, and the backward
// pass per Gaussian over its cameras. Item counts are 64-bit (B * n may pass 2^31).
extern "C" __global__ void project_visible(long long m, int n, const float* means, const float* quats,
                                           const float* log_scales, const float* opacity_logits, const float* cams,
                                           const int* sizes, int antialiased, long long* visible) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < m; k += (long long)gridDim.x * blockDim.x)
        visible[k] = gp::visible_one(k, n, means, quats, log_scales, opacity_logits, cams, sizes, antialiased);
}

extern "C" __global__ void project_packed_forward(long long m, int n, const float* means, const float* quats,
                                                  const float* log_scales, const float* opacity_logits,
                                                  const float* sh0, const float* shN, int n_coeffs, int degree,
                                                  const float* cams, const int* sizes, int antialiased,
                                                  const long long* slots, float* means2d, float* conics,
                                                  float* depths, float* opacities_out, float* colors, int* extents,
                                                  int* rows) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < m; k += (long long)gridDim.x * blockDim.x)
        gp::packed_forward_one(k, n, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, degree, cams, sizes,
                               antialiased, slots, means2d, conics, depths, opacities_out, colors, extents, rows);
}

extern "C" __global__ void project_packed_backward(int n, int n_cams, const float* means, const float* quats,
                                                   const float* log_scales, const float* opacity_logits,
                                                   const float* sh0, const float* shN, int n_coeffs, int degree,
                                                   const float* cams, int antialiased, const long long* slots,
                                                   const float* v_means2d, const float* v_conics,
                                                   const float* v_depths, const float* v_opacities_out,
                                                   const float* v_colors, float* g_means, float* g_quats,
                                                   float* g_log_scales, float* g_opacity_logits, float* g_sh0,
                                                   float* g_shN) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        gp::packed_backward_one(i, n, n_cams, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, degree, cams,
                                antialiased, slots, v_means2d, v_conics, v_depths, v_opacities_out, v_colors, g_means,
                                g_quats, g_log_scales, g_opacity_logits, g_sh0, g_shN);
}
