// Device helpers shared by every kernel file. Plain CUDA C++ that NVRTC compiles without any
// system header, and that the CPU emulation (emu/cuda_emu.h) compiles with g++.
#pragma once

#define FULL_MASK 0xffffffffu

// `extern __shared__` storage sized by the launch's shared-memory bytes, typed as T.
#ifdef CUDA_CPU_EMULATION
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_shared())
#else
#define DYNAMIC_SHARED(T, name)                                   \
    extern __shared__ __align__(16) unsigned char name##_raw_[];  \
    T* name = reinterpret_cast<T*>(name##_raw_)
#endif

// Inputs are loaded through these so that bf16 can join f32 later without touching the kernels:
// state and accumulation stay in f32.
__device__ __forceinline__ float to_f32(float x) { return x; }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
    return x;
}

__device__ __forceinline__ float neg_inf_f32() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ float silu_f32(float x) { return x * sigmoid_f32(x); }
// d silu(x) / dx = s (1 + x (1 - s)) with s = sigmoid(x).
__device__ __forceinline__ float silu_grad_f32(float x) {
    const float s = sigmoid_f32(x);
    return s * (1.0f + x * (1.0f - s));
}
// softplus(x) = log(1 + e^x), and x itself above 20 as in the reference implementation.
__device__ __forceinline__ float softplus_f32(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }
__device__ __forceinline__ float softplus_grad_f32(float x) { return x > 20.0f ? 1.0f : sigmoid_f32(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, off));
    return v;
}

// Sum over the block of `v`, returned to every thread; `scratch` holds one float per warp. It
// begins with a barrier, so consecutive calls may share `scratch`. blockDim.x must be a multiple of
// 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < nwarps; ++w) total += scratch[w];
    return total;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = scratch[0];
    for (int w = 1; w < nwarps; ++w) m = fmaxf(m, scratch[w]);
    return m;
}
