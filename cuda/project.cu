// Projection kernels: one thread per Gaussian (grid-stride), math in project.cuh.
#include "project.cuh"

extern "C" __global__ void project_forward(int n, const float* means, const float* quats, const float* scales,
                                           const float* opacities, const float* sh, int n_coeffs, int degree,
                                           const float* cam, int width, int height, float* means2d, float* conics,
                                           float* depths, float* colors, int* extents) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        gp::project_forward_one(i, means, quats, scales, opacities, sh, n_coeffs, degree, cam, width, height, means2d,
                                conics, depths, colors, extents);
}

extern "C" __global__ void project_backward(int n, const float* means, const float* quats, const float* scales,
                                            const float* sh, int n_coeffs, int degree, const float* cam,
                                            const float* v_means2d, const float* v_conics, const float* v_depths,
                                            const float* v_colors, float* v_means, float* v_quats, float* v_scales,
                                            float* v_sh) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        gp::project_backward_one(i, means, quats, scales, sh, n_coeffs, degree, cam, v_means2d, v_conics, v_depths,
                                 v_colors, v_means, v_quats, v_scales, v_sh);
}
