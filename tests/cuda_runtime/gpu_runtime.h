// CUDA's execution model on the CPU, for the tests: compile a .cu file with
//     g++ -std=c++20 -x c++ -include gpu_runtime.h file.cu  (plus gpu_runtime.cpp)
// and launch its kernels with gprt::launch (tests/host_runtime.py generates one launcher per kernel).
//
// Execution model
// - The blocks of a grid run one after another on each of `workers` OS threads (in a seeded random order).
//   A block's threads are fibers on its OS thread, each on its own 64 KiB stack (a guard page below), so
//   `__shared__` (static thread_local) is the block's shared memory.
// - Fibers are cooperative: a thread runs until it reaches a sync point (__syncthreads*, a warp op, an atomic)
//   or exits; then a scheduler seeded by (seed, block) picks the next runnable thread at random (after a lane
//   reaches a warp op: a random runnable lane of its warp if any, so a warp gathers before others go on; else
//   a random lane of a random warp), so different seeds give different interleavings of the code between
//   sync points.
// - __syncthreads() and __syncthreads_count(pred) release the block once every live thread waits at the SAME
//   call site (file, line, column). Errors: threads at different barriers, a thread that exited while others
//   wait at a barrier, and (an internal safeguard) no runnable thread left.
// - Warp ops (__shfl*_sync, __ballot_sync, __any_sync, __all_sync): a warp is the 32 consecutive linear thread
//   ids of a block. An op completes once no lane of the warp is runnable: the lanes at the op must all be at
//   the same call site with the same mask and width, and the mask must name exactly the warp's live lanes,
//   all of them at the op (so lanes that exited, or wait at a barrier, while others shuffle are errors).
//   Values follow CUDA (shfl_down / shfl_up read lane +- delta within a width segment, their own value past
//   its end; reading a lane outside the mask is an error).
// - Atomics are std::atomic_ref operations; each is also a yield point (other threads may run before it).
// An error ends the launch: the runtime stops resuming the block's fibers (no unwinding: kernels must not
// rely on destructors) and the launcher returns the message, naming kernel, block, threads and call sites.
//
// Limits: interleavings differ only at sync points, so a data race on plain loads and stores shows up only if
// the result depends on the order of whole segments between sync points; shared memory is not cleared between
// blocks (uninitialised reads go unnoticed) and has no bounds checks (ASan gives thread_local arrays no
// redzones); a thread that loops forever without a sync point hangs the launch; x86-64 only (hand-written
// context switch).
#pragma once

#include <math.h>

#include <atomic>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__
#define __launch_bounds__(...)
#define __shared__ static thread_local

namespace gprt {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// What a kernel sees of its thread: threadIdx, blockIdx, blockDim, gridDim.
struct ThreadCtx {
    Dim3 thread_idx, block_idx, block_dim, grid_dim;
};

extern thread_local const ThreadCtx* current;  // the running fiber's, set by the scheduler

using Site = std::source_location;

// Block barrier at `site`: waits until every live thread of the block is there; returns how many threads
// passed a non-zero pred.
int barrier(int pred, const char* name, Site site);

enum class WarpOp { Idx, Up, Down, Xor, Ballot };

// Warp rendezvous at `site`: every lane contributes `value` (the predicate for Ballot) and gets the value of
// the lane that `op` and `arg` select (for Ballot: the mask of lanes with a non-zero predicate).
std::uint64_t warp(WarpOp op, const char* name, unsigned mask, std::uint64_t value, int arg, int width, Site site);

// A yield point: other runnable threads of the block may run before this one continues.
void yield();

struct Config {
    Dim3 grid, block;
    std::uint64_t seed;  // scheduler seed: block order and each block's interleaving
    int workers;         // OS threads running blocks
};

// Run `body` (the kernel call) as every thread of the grid. Returns 0, or 1 with the error in err.
int launch(const char* kernel, const Config& config, void (*body)(const void*), const void* arg, char* err,
           std::size_t err_size);

template <class F>
int launch(const char* kernel, const Config& config, const F& body, char* err, std::size_t err_size) {
    return launch(kernel, config, [](const void* f) { (*static_cast<const F*>(f))(); }, &body, err, err_size);
}

template <class T>
std::uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp ops move values of up to 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <class T>
T from_bits(std::uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

}  // namespace gprt

#define threadIdx (::gprt::current->thread_idx)
#define blockIdx (::gprt::current->block_idx)
#define blockDim (::gprt::current->block_dim)
#define gridDim (::gprt::current->grid_dim)
inline constexpr int warpSize = 32;

inline void __syncthreads(gprt::Site site = gprt::Site::current()) { gprt::barrier(0, "__syncthreads", site); }

inline int __syncthreads_count(int pred, gprt::Site site = gprt::Site::current()) {
    return gprt::barrier(pred != 0, "__syncthreads_count", site);
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, gprt::Site site = gprt::Site::current()) {
    using gprt::WarpOp;
    return gprt::from_bits<T>(gprt::warp(WarpOp::Idx, "__shfl_sync", mask, gprt::to_bits(var), src_lane, width, site));
}

template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, gprt::Site site = gprt::Site::current()) {
    using gprt::WarpOp;
    return gprt::from_bits<T>(gprt::warp(WarpOp::Up, "__shfl_up_sync", mask, gprt::to_bits(var), (int)delta, width, site));
}

template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, gprt::Site site = gprt::Site::current()) {
    using gprt::WarpOp;
    return gprt::from_bits<T>(gprt::warp(WarpOp::Down, "__shfl_down_sync", mask, gprt::to_bits(var), (int)delta, width, site));
}

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, gprt::Site site = gprt::Site::current()) {
    using gprt::WarpOp;
    return gprt::from_bits<T>(gprt::warp(WarpOp::Xor, "__shfl_xor_sync", mask, gprt::to_bits(var), lane_mask, width, site));
}

inline unsigned __ballot_sync(unsigned mask, int pred, gprt::Site site = gprt::Site::current()) {
    return (unsigned)gprt::warp(gprt::WarpOp::Ballot, "__ballot_sync", mask, pred != 0, 0, warpSize, site);
}

inline int __any_sync(unsigned mask, int pred, gprt::Site site = gprt::Site::current()) {
    return gprt::warp(gprt::WarpOp::Ballot, "__any_sync", mask, pred != 0, 0, warpSize, site) != 0;
}

inline int __all_sync(unsigned mask, int pred, gprt::Site site = gprt::Site::current()) {
    return gprt::warp(gprt::WarpOp::Ballot, "__all_sync", mask, pred != 0, 0, warpSize, site) == mask;
}

// The atomics' CUDA overloads; the second argument converts as in CUDA (no deduction from it).
template <class T>
concept AtomicAddType = std::same_as<T, int> || std::same_as<T, unsigned> || std::same_as<T, unsigned long long> ||
                        std::same_as<T, float> || std::same_as<T, double>;
template <class T>
concept AtomicMaxType = std::same_as<T, int> || std::same_as<T, unsigned> || std::same_as<T, long long> ||
                        std::same_as<T, unsigned long long>;

template <AtomicAddType T>
T atomicAdd(T* address, std::type_identity_t<T> val) {
    gprt::yield();
    return std::atomic_ref<T>(*address).fetch_add(val);
}

template <AtomicMaxType T>
T atomicMax(T* address, std::type_identity_t<T> val) {
    gprt::yield();
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (old < val && !ref.compare_exchange_weak(old, val)) {
    }
    return old;
}

// CUDA's integer and floating min / max overloads (the kernels call them unqualified).
#define GPRT_MIN_MAX(T)                                    \
    inline T min(T a, T b) { return b < a ? b : a; }       \
    inline T max(T a, T b) { return a < b ? b : a; }
GPRT_MIN_MAX(int)
GPRT_MIN_MAX(unsigned)
GPRT_MIN_MAX(long long)
GPRT_MIN_MAX(unsigned long long)
#undef GPRT_MIN_MAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
