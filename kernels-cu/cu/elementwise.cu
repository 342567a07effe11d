// Elementwise ops of the Mamba block and the residual stream, as in ssm::ops::activation.
// Grid-stride loops over n elements; every backward adds into its gradient outputs.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void silu_fwd(const T* __restrict__ x, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = from_f32<T>(silu_f32(to_f32(x[i])));
}

template <typename T>
__device__ __forceinline__ void silu_bwd(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        dx[i] = from_f32<T>(to_f32(dx[i]) + to_f32(dy[i]) * silu_grad_f32(to_f32(x[i])));
}

template <typename T>
__device__ __forceinline__ void softplus_fwd(const T* __restrict__ x, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = from_f32<T>(softplus_f32(to_f32(x[i])));
}

template <typename T>
__device__ __forceinline__ void softplus_bwd(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        dx[i] = from_f32<T>(to_f32(dx[i]) + to_f32(dy[i]) * softplus_grad_f32(to_f32(x[i])));
}

// y = x * silu(z), the output gate of the Mamba block.
template <typename T>
__device__ __forceinline__ void gate_fwd(const T* __restrict__ x, const T* __restrict__ z, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = from_f32<T>(to_f32(x[i]) * silu_f32(to_f32(z[i])));
}

// dx += dy * silu(z), dz += dy * x * silu'(z).
template <typename T>
__device__ __forceinline__ void gate_bwd(const T* __restrict__ x, const T* __restrict__ z, const T* __restrict__ dy,
                                         T* __restrict__ dx, T* __restrict__ dz, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float zi = to_f32(z[i]), g = to_f32(dy[i]);
        dx[i] = from_f32<T>(to_f32(dx[i]) + g * silu_f32(zi));
        dz[i] = from_f32<T>(to_f32(dz[i]) + g * to_f32(x[i]) * silu_grad_f32(zi));
    }
}

// y += x.
template <typename T>
__device__ __forceinline__ void add_into(const T* __restrict__ x, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i]));
}

extern "C" __global__ void silu_fwd_f32(const float* x, float* y, int n) { silu_fwd(x, y, n); }
extern "C" __global__ void silu_bwd_f32(const float* x, const float* dy, float* dx, int n) { silu_bwd(x, dy, dx, n); }
extern "C" __global__ void softplus_fwd_f32(const float* x, float* y, int n) { softplus_fwd(x, y, n); }
extern "C" __global__ void softplus_bwd_f32(const float* x, const float* dy, float* dx, int n) {
    softplus_bwd(x, dy, dx, n);
}
extern "C" __global__ void gate_fwd_f32(const float* x, const float* z, float* y, int n) { gate_fwd(x, z, y, n); }
extern "C" __global__ void gate_bwd_f32(const float* x, const float* z, const float* dy, float* dx, float* dz, int n) {
    gate_bwd(x, z, dy, dx, dz, n);
}
extern "C" __global__ void add_into_f32(const float* x, float* y, int n) { add_into(x, y, n); }

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(silu_fwd_f32)
EMU_EXPORT(silu_bwd_f32)
EMU_EXPORT(softplus_fwd_f32)
EMU_EXPORT(softplus_bwd_f32)
EMU_EXPORT(gate_fwd_f32)
EMU_EXPORT(gate_bwd_f32)
EMU_EXPORT(add_into_f32)
#endif
