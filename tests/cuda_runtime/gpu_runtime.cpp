// The scheduler behind gpu_runtime.h: fibers with a hand-written x86-64 context switch, block barriers, warp
// rendezvous, and launches over worker OS threads. See gpu_runtime.h for the execution model and its limits.
#include "gpu_runtime.h"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// Frames left on the stacks by fibers that never return (exited, or abandoned after an error) stay poisoned
// in ASan's shadow memory: clear it before the stacks are reused or unmapped.
#define GPRT_UNPOISON(p, n) __asan_unpoison_memory_region(p, n)
#else
#define GPRT_UNPOISON(p, n)
#endif

#if !defined(__x86_64__)
#error "gpu_runtime.cpp switches fibers with x86-64 assembly"
#endif

#ifndef GPRT_STACK_BYTES
#define GPRT_STACK_BYTES (64 * 1024)
#endif

// gprt_switch(save, load): push the callee-saved registers, store the stack pointer in *save, continue on the
// stack `load` (popping what its own gprt_switch pushed). A new fiber's stack holds the fiber in the r12 slot
// and returns into gprt_start, which calls gprt_fiber_main(fiber) with a 16-byte aligned stack.
asm(R"(
    .text
    .p2align 4
    .globl gprt_switch
    .hidden gprt_switch
    .type gprt_switch, @function
gprt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gprt_switch, .-gprt_switch

    .p2align 4
    .globl gprt_start
    .hidden gprt_start
    .type gprt_start, @function
gprt_start:
    movq %r12, %rdi
    call gprt_fiber_main@PLT
    ud2
    .size gprt_start, .-gprt_start
)");

extern "C" {
void gprt_switch(void** save, void* load);
void gprt_start();
[[noreturn]] void gprt_fiber_main(void* fiber);
}

namespace gprt {

thread_local const ThreadCtx* current = nullptr;

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kStack = GPRT_STACK_BYTES;
constexpr int kWarp = 32;
constexpr unsigned kMaxThreads = 1024;

enum class State : std::uint8_t { Runnable, Barrier, Warp, Exited };

struct Block;

struct Fiber : ThreadCtx {
    Block* block;
    void* sp;
    int tid;  // linear thread id: x + y * blockDim.x + z * blockDim.x * blockDim.y
    State state;
    // The sync point it waits at, and its operands and result.
    const char* op;
    Site site;
    WarpOp warp_op;
    unsigned mask;
    int arg, width;
    std::uint64_t value, result;
};

inline bool same_op(const char* a, const char* b) { return a == b || std::strcmp(a, b) == 0; }

inline bool same_site(const Site& a, const Site& b) {
    return a.line() == b.line() && a.column() == b.column() &&
           same_op(a.file_name(), b.file_name());
}

std::string where(const char* op, const Site& s) {
    const char* file = std::strrchr(s.file_name(), '/');
    return std::string(op) + " (" + (file ? file + 1 : s.file_name()) + ":" + std::to_string(s.line()) + ":" +
           std::to_string(s.column()) + ")";
}

// "0-4,6,9-255"
std::string ranges(const std::vector<int>& ids) {
    std::string out;
    for (std::size_t i = 0; i < ids.size();) {
        std::size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        out += (out.empty() ? "" : ",") + std::to_string(ids[i]) + (j > i ? "-" + std::to_string(ids[j]) : "");
        i = j + 1;
    }
    return out;
}

std::string hex(unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

// Where the threads [lo, hi) of a block stand: "exited: 17; at __syncthreads (f.cu:9:5): 0-16,18-255".
std::string describe(const std::vector<Fiber>& fibers, int lo, int hi) {
    std::vector<std::pair<std::string, std::vector<int>>> groups;
    for (int t = lo; t < hi; ++t) {
        const Fiber& f = fibers[t];
        std::string key = f.state == State::Exited     ? "exited"
                          : f.state == State::Runnable ? "between sync points"
                                                       : "at " + where(f.op, f.site);
        auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& p) { return p.first == key; });
        if (g == groups.end()) groups.push_back({key, {}}), g = groups.end() - 1;
        g->second.push_back(t);
    }
    std::string out;
    for (const auto& [key, ids] : groups) out += (out.empty() ? "" : "; ") + key + ": " + ranges(ids);
    return out;
}

// xorshift64*: the scheduler's seeded choices.
struct Rng {
    std::uint64_t s;
    void seed(std::uint64_t v) { s = v * 0x9E3779B97F4A7C15ull | 1; }
    std::uint64_t next() {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        return s * 0x2545F4914F6CDD1Dull;
    }
    std::size_t below(std::size_t n) { return std::size_t((unsigned __int128)next() * n >> 64); }
};

// The threads of one block on one OS thread, and the scheduler that interleaves them.
struct Block {
    const Config& config;
    void (*body)(const void*);
    const void* body_arg;
    std::vector<Fiber> fibers;
    char* stacks = nullptr;  // one mapping: per fiber a guard page, then its stack
    std::size_t stacks_size = 0;
    // The runnable fibers other than the running one: per warp, its ready lanes [0, ready_count[w]) in
    // ready[w]; the warps with a ready lane in ready_warps (warp w at ready_pos[w]).
    std::vector<std::array<std::uint8_t, kWarp>> ready;
    std::vector<int> ready_count, ready_warps, ready_pos;
    std::vector<int> warp_running;        // per warp: lanes in State::Runnable (the running one included)
    std::vector<int> warp_waiting;        // per warp: lanes at a warp op
    int live = 0, exited = 0, at_barrier = 0, barrier_count = 0;
    const Fiber* barrier_first = nullptr;  // the first thread at the current barrier
    Rng rng;
    void* main_sp = nullptr;
    std::string error;

    Block(const Config& c, void (*b)(const void*), const void* a) : config(c), body(b), body_arg(a) {
        const int n = int(c.block.x * c.block.y * c.block.z);
        fibers.resize(n);
        warp_running.resize((n + kWarp - 1) / kWarp);
        warp_waiting.resize(warp_running.size());
        ready.resize(warp_running.size());
        ready_count.resize(warp_running.size());
        ready_pos.resize(warp_running.size());
        stacks_size = n * (kPage + kStack);
        void* m = mmap(nullptr, stacks_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) throw std::bad_alloc();
        stacks = static_cast<char*>(m);
        for (int t = 0; t < n; ++t) mprotect(stacks + t * (kPage + kStack), kPage, PROT_NONE);
    }
    Block(const Block&) = delete;
    ~Block() {
        GPRT_UNPOISON(stacks, stacks_size);
        munmap(stacks, stacks_size);
    }

    // Run block `index` (linear) to its end or its first error (then left in `error`).
    void run(std::uint64_t index) {
        const Dim3 g = config.grid, d = config.block;
        const Dim3 idx{unsigned(index % g.x), unsigned(index / g.x % g.y), unsigned(index / (std::uint64_t(g.x) * g.y))};
        rng.seed(config.seed ^ (index + 1) * 0xD1B54A32D192ED03ull);
        const int n = int(fibers.size());
        live = n, exited = at_barrier = 0;
        error.clear();
        ready_warps.clear();
        GPRT_UNPOISON(stacks, stacks_size);
        for (std::size_t w = 0; w < warp_running.size(); ++w)
            warp_running[w] = std::min(kWarp, n - int(w) * kWarp), warp_waiting[w] = 0, ready_count[w] = 0;
        for (int t = 0; t < n; ++t) {
            Fiber& f = fibers[t];
            f.thread_idx = Dim3{t % d.x, t / d.x % d.y, t / (d.x * d.y)};
            f.block_idx = idx, f.block_dim = d, f.grid_dim = g;
            f.block = this, f.tid = t, f.state = State::Runnable;
            // Initial frame, popped by gprt_switch: r15 r14 r13 r12=fiber rbx rbp, then "return" to gprt_start.
            void** sp = reinterpret_cast<void**>(stacks + (t + 1) * (kPage + kStack) - 72);
            std::fill(sp, sp + 9, nullptr);
            sp[3] = &f;
            sp[6] = reinterpret_cast<void*>(&gprt_start);
            f.sp = sp;
            make_ready(t);
        }
        Fiber* first = pick();
        current = first;
        gprt_switch(&main_sp, first->sp);
        current = nullptr;
    }

    void make_ready(int t) {
        const int w = t / kWarp;
        if (ready_count[w] == 0) ready_pos[w] = int(ready_warps.size()), ready_warps.push_back(w);
        ready[w][ready_count[w]++] = std::uint8_t(t % kWarp);
    }

    // A random runnable fiber, taken off the ready set: of warp `prefer` if it has one, else of a random warp;
    // nullptr when none is left.
    Fiber* pick(int prefer = -1) {
        if (ready_warps.empty()) return nullptr;
        const int w = prefer >= 0 && ready_count[prefer] ? prefer : ready_warps[rng.below(ready_warps.size())];
        auto& lanes = ready[w];
        const std::size_t k = rng.below(ready_count[w]);
        const int lane = lanes[k];
        lanes[k] = lanes[--ready_count[w]];
        if (ready_count[w] == 0) {
            const int moved = ready_warps.back();
            ready_warps[ready_pos[w]] = moved, ready_pos[moved] = ready_pos[w];
            ready_warps.pop_back();
        }
        return &fibers[w * kWarp + lane];
    }

    void fail(const std::string& problem, int lo, int hi) {
        if (error.empty()) error = problem + " [threads " + describe(fibers, lo, hi) + "]";
    }

    // Called on the stack of `self`, which has just changed state (or yields): complete what can complete,
    // then run the next fiber; returns when `self` runs again. On an error, or once every thread has exited,
    // control goes back to run(), and the fibers still waiting are never resumed.
    void reschedule(Fiber& self) {
        settle(self);
        Fiber* next = error.empty() ? pick(self.state == State::Warp ? self.tid / kWarp : -1) : nullptr;
        if (!next && error.empty() && live > 0)
            fail("deadlock: no runnable thread", 0, int(fibers.size()));  // safeguard: settle() reports first
        if (next == &self) return;
        current = next;
        gprt_switch(&self.sp, next ? next->sp : main_sp);
    }

    void settle(Fiber& self) {
        const int w = self.tid / kWarp;
        if (self.state == State::Runnable) {  // a yield
            make_ready(self.tid);
            return;
        }
        --warp_running[w];
        if (self.state == State::Warp) ++warp_waiting[w];
        if (self.state == State::Exited) --live, ++exited;
        if (warp_running[w] == 0 && warp_waiting[w] > 0) complete_warp(w);
        if (!error.empty() || at_barrier == 0) return;
        if (exited > 0) return fail("a thread exited while others wait at a barrier", 0, int(fibers.size()));
        if (at_barrier == live) {
            for (Fiber& f : fibers)
                if (f.state == State::Barrier) {
                    f.state = State::Runnable, f.result = std::uint64_t(barrier_count);
                    ++warp_running[f.tid / kWarp];
                    make_ready(f.tid);
                }
            at_barrier = 0;
        }
    }

    // Every lane of warp w has stopped and some wait at a warp op: check the rendezvous and hand out values.
    void complete_warp(int w) {
        const int lo = w * kWarp, hi = std::min(lo + kWarp, int(fibers.size()));
        unsigned present = 0, alive = 0, ballot = 0;
        const Fiber* ref = nullptr;
        for (int t = lo; t < hi; ++t) {
            const Fiber& f = fibers[t];
            const unsigned bit = 1u << (t - lo);
            if (f.state != State::Exited) alive |= bit;
            if (f.state != State::Warp) continue;
            present |= bit;
            if (f.value) ballot |= bit;
            if (!ref) ref = &f;
            if (!same_site(f.site, ref->site) || !same_op(f.op, ref->op))
                return fail("lanes of warp " + std::to_string(w) + " wait at different warp ops", lo, hi);
            if (f.mask != ref->mask || f.width != ref->width)
                return fail(where(f.op, f.site) + ": lanes of warp " + std::to_string(w) +
                                " pass different masks or widths", lo, hi);
        }
        const unsigned mask = ref->mask;
        const int width = ref->width;
        if (mask != present || present != alive)
            return fail(where(ref->op, ref->site) + " in warp " + std::to_string(w) + " with mask " + hex(mask) +
                            ": the lanes at the op are " + hex(present) + ", the live lanes " + hex(alive), lo, hi);
        if (width < 1 || width > kWarp || (width & (width - 1)))
            return fail(where(ref->op, ref->site) + ": width " + std::to_string(width) + " is not a power of 2 <= 32",
                        lo, hi);
        for (int t = lo; t < hi; ++t) {
            Fiber& f = fibers[t];
            if (f.state != State::Warp) continue;
            const int lane = t - lo, seg = lane & ~(width - 1);
            int src = lane;
            switch (f.warp_op) {
                case WarpOp::Idx: src = seg + (f.arg & (width - 1)); break;
                case WarpOp::Up: src = lane - seg >= f.arg ? lane - f.arg : lane; break;
                case WarpOp::Down: src = lane - seg + f.arg < width ? lane + f.arg : lane; break;
                case WarpOp::Xor: src = (lane ^ f.arg) < seg + width ? lane ^ f.arg : lane; break;
                case WarpOp::Ballot: break;
            }
            if (src < 0 || src >= kWarp || !(mask >> src & 1))
                return fail(where(f.op, f.site) + ": lane " + std::to_string(lane) + " of warp " + std::to_string(w) +
                                " reads lane " + std::to_string(src) + ", outside the mask " + hex(mask), lo, hi);
            f.result = f.warp_op == WarpOp::Ballot ? ballot : fibers[lo + src].value;
        }
        for (int t = lo; t < hi; ++t)
            if (fibers[t].state == State::Warp) {
                fibers[t].state = State::Runnable;
                make_ready(t);
            }
        warp_running[w] = warp_waiting[w];
        warp_waiting[w] = 0;
    }
};

Fiber& running() { return *const_cast<Fiber*>(static_cast<const Fiber*>(current)); }

}  // namespace

int barrier(int pred, const char* name, Site site) {
    Fiber& f = running();
    Block& b = *f.block;
    f.state = State::Barrier, f.op = name, f.site = site;
    if (b.at_barrier == 0) {
        b.barrier_first = &f, b.barrier_count = 0;
    } else if (!same_site(site, b.barrier_first->site) || !same_op(name, b.barrier_first->op)) {
        b.fail("threads wait at different barriers", 0, int(b.fibers.size()));
    }
    ++b.at_barrier;
    b.barrier_count += pred;
    b.reschedule(f);
    return int(f.result);
}

std::uint64_t warp(WarpOp op, const char* name, unsigned mask, std::uint64_t value, int arg, int width, Site site) {
    Fiber& f = running();
    f.state = State::Warp, f.op = name, f.site = site;
    f.warp_op = op, f.mask = mask, f.value = value, f.arg = arg, f.width = width;
    f.block->reschedule(f);
    return f.result;
}

void yield() {
    Fiber& f = running();
    f.block->reschedule(f);
}

int launch(const char* kernel, const Config& config, void (*body)(const void*), const void* arg, char* err,
           std::size_t err_size) {
    const Dim3 g = config.grid, d = config.block;
    const std::uint64_t n_threads = std::uint64_t(d.x) * d.y * d.z, n_blocks = std::uint64_t(g.x) * g.y * g.z;
    std::string error;
    if (n_threads == 0 || n_threads > kMaxThreads || n_blocks == 0 || n_blocks > 0xffffffffu)
        error = std::string("kernel ") + kernel + ": bad launch configuration (grid " + std::to_string(n_blocks) +
                " blocks of " + std::to_string(n_threads) + " threads)";
    std::vector<std::uint32_t> order(error.empty() ? n_blocks : 0);
    std::iota(order.begin(), order.end(), 0u);
    Rng rng;
    rng.seed(config.seed);
    for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex lock;
    auto work = [&] {
        Block block(config, body, arg);
        for (std::size_t i; !failed && (i = next++) < order.size();) {
            block.run(order[i]);
            if (block.error.empty()) continue;
            const Dim3 b = block.fibers[0].block_idx;
            std::lock_guard<std::mutex> guard(lock);
            if (!failed.exchange(true))
                error = std::string("kernel ") + kernel + ", block (" + std::to_string(b.x) + "," + std::to_string(b.y) +
                        "," + std::to_string(b.z) + "): " + block.error;
        }
    };
    std::vector<std::thread> workers;
    const std::size_t n_workers = std::min<std::size_t>(std::max(config.workers, 1), order.size());
    for (std::size_t w = 1; w < n_workers; ++w) workers.emplace_back(work);
    if (!order.empty()) work();
    for (std::thread& t : workers) t.join();
    if (error.empty()) return 0;
    std::snprintf(err, err_size, "%s", error.c_str());
    return 1;
}

}  // namespace gprt

extern "C" [[noreturn]] void gprt_fiber_main(void* fiber) {
    auto& f = *static_cast<gprt::Fiber*>(fiber);
    f.block->body(f.block->body_arg);
    f.state = gprt::State::Exited;
    f.block->reschedule(f);
    __builtin_unreachable();
}
