// Small kernels that exercise tests/cuda_runtime/gpu_runtime.h (tests/test_host_runtime.py): shared memory,
// barriers, warp ops and atomics used correctly, one race, and the divergence the runtime must report.

// Per block: the sum of its x through a shared-memory tree (blockDim.x a power of 2, at most 256).
extern "C" __global__ void block_reduce(int n, const float* x, float* sums) {
    __shared__ float buf[256];
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    buf[t] = i < (unsigned)n ? x[i] : 0.f;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    if (t == 0) sums[blockIdx.x] = buf[0];
}

// Each thread reads its neighbour's value from shared memory without a barrier in between: a race.
extern "C" __global__ void racy_neighbour(const int* x, int* out) {
    __shared__ int buf[256];
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    buf[t] = x[i];
    out[i] = buf[(t + 1) % blockDim.x];
}

// The same with the barrier.
extern "C" __global__ void synced_neighbour(const int* x, int* out) {
    __shared__ int buf[256];
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    buf[t] = x[i];
    __syncthreads();
    out[i] = buf[(t + 1) % blockDim.x];
}

__device__ unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

__device__ unsigned global_tid() { return blockIdx.x * blockDim.x * blockDim.y * blockDim.z + linear_tid(); }

// Every thread gets its block's number of positive x.
extern "C" __global__ void count_positive(const int* x, int* counts) {
    const unsigned i = global_tid();
    counts[i] = __syncthreads_count(x[i] > 0);
}

// Eight warp results per thread: a shfl_down tree sum, a shfl_xor butterfly sum, a shfl_up inclusive scan,
// lane 3's value, lane 1 of each 8-lane segment's value, a ballot of odd values, any > 90, all >= 0.
extern "C" __global__ void warp_ops(const int* x, int* out) {
    const unsigned full = 0xffffffffu, i = global_tid(), lane = linear_tid() % warpSize;
    const int v = x[i];
    int down = v, butterfly = v, scan = v;
    for (int offset = 16; offset > 0; offset >>= 1) {
        down += __shfl_down_sync(full, down, offset);
        butterfly += __shfl_xor_sync(full, butterfly, offset);
    }
    for (int offset = 1; offset < 32; offset <<= 1) {
        const int up = __shfl_up_sync(full, scan, offset);
        if ((int)lane >= offset) scan += up;
    }
    int* o = out + 8 * i;
    o[0] = down;
    o[1] = butterfly;
    o[2] = scan;
    o[3] = __shfl_sync(full, v, 3);
    o[4] = __shfl_sync(full, v, 1, 8);
    o[5] = (int)__ballot_sync(full, v & 1);
    o[6] = __any_sync(full, v > 90);
    o[7] = __all_sync(full, v >= 0);
}

// The float shuffle of cuda/rasterize.cu's warp_sum: lane 0 gets its warp's sum.
extern "C" __global__ void warp_float_sum(const float* x, float* out) {
    const unsigned i = global_tid();
    float v = x[i];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    out[i] = v;
}

// Atomics from every thread of a grid-stride loop.
extern "C" __global__ void atomics(int n, const float* x, float* fsum, int* icount, long long* usum, int* imax) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        atomicAdd(fsum + i % 4, x[i]);
        atomicAdd(icount + i % 4, 1);
        atomicAdd((unsigned long long*)usum, (unsigned long long)i);
        atomicMax(imax, (int)(x[i] * 1000.f));
    }
}

// The order in which the threads of each block reach an atomic.
extern "C" __global__ void arrival_order(int* order, int* counters) {
    order[global_tid()] = atomicAdd(counters + blockIdx.x, 1);
}

// Errors the runtime must report.

extern "C" __global__ void exit_before_barrier(int* out) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" __global__ void divergent_barriers(int* out) {
    if (threadIdx.x < 32)
        __syncthreads();
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

// Lanes 16-31 exit, lanes 0-15 shuffle with `mask` over segments of `width` lanes.
extern "C" __global__ void shfl_after_exit(int mask, int width, int* out) {
    const int lane = threadIdx.x % warpSize;
    if (lane >= 16) return;
    out[threadIdx.x] = __shfl_down_sync((unsigned)mask, (int)threadIdx.x, 1, width);
}

// Lanes 0-15 vote while lanes 16-31 wait at a barrier.
extern "C" __global__ void vote_beside_barrier(int* out) {
    if (threadIdx.x % warpSize < 16)
        out[threadIdx.x] = __any_sync(0xffffffffu, 1);
    else
        __syncthreads();
}

// Lanes 0-15 and 16-31 at different votes.
extern "C" __global__ void divergent_votes(int* out) {
    if (threadIdx.x % warpSize < 16)
        out[threadIdx.x] = __any_sync(0xffffffffu, 1);
    else
        out[threadIdx.x] = __all_sync(0xffffffffu, 1);
}
