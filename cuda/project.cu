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
