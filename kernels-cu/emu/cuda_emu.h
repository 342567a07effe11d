// CUDA C++ on the CPU, for testing kernels without a GPU (docs/ARCHITECTURE.md §4, level 1).
//
// A `.cu` file compiles with
//     g++ -std=c++20 -x c++ -include emu/cuda_emu.h -DCUDA_CPU_EMULATION
// after build.rs has rewritten its `__shared__` declarations (see `shared_var`), and ends with
// `EMU_EXPORT(kernel)` lines (under `#ifdef CUDA_CPU_EMULATION`) that export `emu_launch_<kernel>`
// and `emu_signature_<kernel>` with C linkage.
//
// Execution model: blocks run one at a time; the threads of a block run as fibers on one OS thread
// (or, for ThreadSanitizer, as OS threads). A fiber runs until its next synchronization point
// (`__syncthreads`, a warp intrinsic, or its exit); which runnable fiber goes next is drawn from a
// seeded random generator, so a missing barrier shows up as a wrong result under some seed.
// `__shared__` declarations take their storage from a per-block arena (`shared_var`), dynamic
// shared memory from a buffer of the launch's size; both are filled with 0xFF before every block,
// so a read of shared memory that no thread of the block wrote gives NaN.
//
// Bank conflicts: with a non-null LaunchConfig::banks, every shared-memory request of every warp
// is counted as a GPU's 32 banks serve it (emu/banks.cpp, through -fsanitize=thread's hooks).
//
// Not emulated: warp operations whose mask leaves out a live lane of the warp (reported as an
// error), waiting on other blocks, tensor-core instructions, cp.async/TMA, bf16 types.
//
// ThreadSanitizer run: build with `SSM_EMU_TSAN=1 cargo test -p ssm-kernels --no-run` (build.rs
// adds -fsanitize=thread), then run the test binary target/debug/deps/kernels-<hash> with
// LD_PRELOAD=$(g++ -print-file-name=libtsan.so.2) (GCC 12's TSan runtime crashes in its TLS setup
// unless preloaded), TSAN_OPTIONS=suppressions=kernels-cu/emu/tsan.supp and
// SSM_EMU_SCHEDULE=threads, and `--skip nvrtc --skip bank` (ThreadSanitizer's runtime owns the hooks
// that count bank conflicts). Slow: every kernel test in the OS-thread schedule.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

// How the threads of a block are interleaved.
enum Schedule : int {
    kScheduleRandom = 0,   // fibers, random order between synchronization points (seeded)
    kScheduleInOrder = 1,  // fibers, always the lowest runnable thread index first
    kScheduleThreads = 2,  // one OS thread per CUDA thread (for ThreadSanitizer)
};

// The shared-memory requests of one instruction (call site of an access in a kernel), counted over
// a launch; mirrored by `RawBankSite` in src/emu.rs.
struct BankSite {
    unsigned long long pc;  // the access's address, as an offset into the executable that holds it
    unsigned long long requests;
    unsigned long long degree_sum;
    unsigned worst;
};

// Bank conflicts of one launch (emu/banks.cpp); mirrored by `RawBankStats` in src/emu.rs. The
// totals cover every request, `sites` the first `cap` sites by pc (`count` says how many exist).
struct BankStats {
    BankSite* sites;
    unsigned cap;
    unsigned count;
    unsigned long long requests;
    unsigned long long degree_sum;
    unsigned worst;
};

// One launch; mirrored by `RawConfig` in src/emu.rs (repr(C)).
struct LaunchConfig {
    unsigned grid[3];
    unsigned block[3];
    unsigned shared_bytes;  // dynamic shared memory, as in cuLaunchKernel
    int schedule;
    unsigned long long seed;
    BankStats* banks;  // counts bank conflicts into *banks when not null
};

// What the CUDA built-in variables read for the running thread.
struct ThreadState {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

extern thread_local const ThreadState* current;

// Where one `__shared__` declaration lives in the arena, for the block with serial `block`.
struct SharedSite {
    unsigned long long block;
    unsigned long offset;
};

enum WarpOpKind : int { kShfl, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };

// Runtime entry points (emu/runtime.cpp).
unsigned long long warp_op(int kind, unsigned mask, unsigned long long value, int arg, int width);
void syncthreads();
unsigned char* dynamic_shared();  // the launch's dynamic shared memory (extern __shared__)
void* static_shared(SharedSite& site, unsigned long size, unsigned long align);
int run_grid(const LaunchConfig& cfg, void (*body)(void*), void* closure, char* err, unsigned long errlen);

// The storage of the declaration `__shared__ T name;` in the running block: build.rs rewrites it
// into `auto& name = emu::shared_var<T>([] {});`. The lambda's type makes each declaration, in
// each template instantiation, its own site; the first thread of a block to get there allocates.
template <class T, class Site>
T& shared_var(Site) {
    static SharedSite site;
    return *static_cast<T*>(static_shared(site, sizeof(T), alignof(T)));
}

template <class T>
unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp exchange of a type wider than 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <class T>
T from_bits(unsigned long long bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

// Unpacks `args` (one pointer per argument value, as cuLaunchKernel's kernelParams) and runs `k`
// over the grid.
template <class... A>
int launch_kernel(const LaunchConfig* cfg, void (*k)(A...), void* const* args, char* err, unsigned long errlen) {
    static_assert((std::is_trivially_copyable_v<A> && ...), "kernel arguments must be plain values");
    struct Closure {
        void (*k)(A...);
        std::tuple<A...> args;
    };
    Closure c{k, {}};
    unsigned long i = 0;
    std::apply([&](auto&... a) { ((std::memcpy(&a, args[i], sizeof(a)), ++i), ...); }, c.args);
    auto body = [](void* p) {
        auto* cl = static_cast<Closure*>(p);
        std::apply(cl->k, cl->args);
    };
    return run_grid(*cfg, body, &c, err, errlen);
}

// Writes the byte size of each parameter of `k` (up to `cap`) and returns their number.
template <class... A>
int signature(void (*)(A...), unsigned long* sizes, int cap) {
    const unsigned long s[] = {sizeof(A)..., 0};
    for (int i = 0; i < (int)sizeof...(A) && i < cap; ++i) sizes[i] = s[i];
    return (int)sizeof...(A);
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// Every `__shared__` was rewritten by build.rs; one that is left is an error, not a static that
// nobody poisons.
#pragma GCC poison __shared__

#define EMU_EXPORT(kernel)                                                                                   \
    extern "C" int emu_launch_##kernel(const emu::LaunchConfig* cfg, void* const* args, char* err,          \
                                       unsigned long errlen) {                                               \
        return emu::launch_kernel(cfg, kernel, args, err, errlen);                                           \
    }                                                                                                         \
    extern "C" int emu_signature_##kernel(unsigned long* sizes, int cap) { return emu::signature(kernel, sizes, cap); }

#define threadIdx (emu::current->thread_idx)
#define blockIdx (emu::current->block_idx)
#define blockDim (emu::current->block_dim)
#define gridDim (emu::current->grid_dim)
static constexpr int warpSize = 32;

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_op(emu::kSyncWarp, mask, 0, 0, 32); }

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
    return emu::from_bits<T>(emu::warp_op(emu::kShfl, mask, emu::to_bits(v), src_lane, width));
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return emu::from_bits<T>(emu::warp_op(emu::kShflUp, mask, emu::to_bits(v), (int)delta, width));
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return emu::from_bits<T>(emu::warp_op(emu::kShflDown, mask, emu::to_bits(v), (int)delta, width));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    return emu::from_bits<T>(emu::warp_op(emu::kShflXor, mask, emu::to_bits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)emu::warp_op(emu::kBallot, mask, pred != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int pred) { return (int)emu::warp_op(emu::kAny, mask, pred != 0, 0, 32); }
inline int __all_sync(unsigned mask, int pred) { return (int)emu::warp_op(emu::kAll, mask, pred != 0, 0, 32); }

// Atomics: std::atomic_ref makes them real atomics in the OS-thread mode and visible to TSan.
template <class T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <class T>
T atomicSub(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_sub(v, std::memory_order_relaxed);
}
template <class T>
T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed);
}
template <class T>
T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
    return expected;
}
template <class T>
T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load(std::memory_order_relaxed);
    while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
    }
    return old;
}
template <class T>
T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load(std::memory_order_relaxed);
    while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
    }
    return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Device math that the CUDA headers provide and the C library does not.
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __int_as_float(int x) { return emu::from_bits<float>((unsigned)x); }
inline int __float_as_int(float x) { return (int)(unsigned)emu::to_bits(x); }
inline float __uint_as_float(unsigned x) { return emu::from_bits<float>(x); }
inline unsigned __float_as_uint(float x) { return (unsigned)emu::to_bits(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
