// Elementwise ops of the Mamba block, the Transformer MLP and the residual stream, as in
// ssm::ops::activation, and strided row copies. Grid-stride loops over n elements; every backward
// adds into its gradient outputs.
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

// GELU in the tanh approximation, with the CPU op's constants and its tanh(u) = 1 - 2 / (e^{2u} + 1),
// which saturates to +-1 where e^{2u} overflows instead of giving inf / inf.
namespace gelu {
constexpr float kC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kA = 0.044715f;
__device__ __forceinline__ float tanh_f32(float u) { return 1.0f - 2.0f / (expf(u + u) + 1.0f); }
__device__ __forceinline__ float fwd_f32(float x) { return 0.5f * x * (1.0f + tanh_f32(kC * (x + kA * x * x * x))); }
// d gelu(x) / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2).
__device__ __forceinline__ float grad_f32(float x) {
    const float t = tanh_f32(kC * (x + kA * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kC * (1.0f + 3.0f * kA * x * x);
}
}  // namespace gelu

template <typename T>
__device__ __forceinline__ void gelu_fwd(const T* __restrict__ x, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = from_f32<T>(gelu::fwd_f32(to_f32(x[i])));
}

template <typename T>
__device__ __forceinline__ void gelu_bwd(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        dx[i] = from_f32<T>(to_f32(dx[i]) + to_f32(dy[i]) * gelu::grad_f32(to_f32(x[i])));
}

// y = -exp(x): Mamba's A = -exp(A_log). expf rather than __expf, whose error grows with |x|.
template <typename T>
__device__ __forceinline__ void neg_exp(const T* __restrict__ x, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = from_f32<T>(-expf(to_f32(x[i])));
}

// out += a * b.
template <typename T>
__device__ __forceinline__ void mul_add_into(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                             int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = from_f32<T>(to_f32(out[i]) + to_f32(a[i]) * to_f32(b[i]));
}

// x *= s, in place.
template <typename T>
__device__ __forceinline__ void scale(T* __restrict__ x, float s, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) * s);
}

// dst (n / inner, inner) += src (inner,) on every row: a bias or a learned position table.
template <typename T>
__device__ __forceinline__ void add_broadcast(const T* __restrict__ src, int inner, T* __restrict__ dst, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        dst[i] = from_f32<T>(to_f32(dst[i]) + to_f32(src[i % inner]));
}

// dst (rows, dst_stride)[:, :cols] = (or +=) src (rows, src_stride)[:, :cols]. A flat grid-stride
// loop over rows * cols keeps consecutive threads on consecutive columns (coalesced) whatever the
// width; indices are 64-bit since rows * stride may pass 2^31.
template <typename T>
__device__ __forceinline__ void copy_strided(const T* src, long long src_stride, T* dst, long long dst_stride,
                                             long long rows, long long cols, int accumulate) {
    const long long total = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / cols, c = i - r * cols;
        const float v = to_f32(src[r * src_stride + c]);
        T* d = dst + r * dst_stride + c;
        *d = from_f32<T>(accumulate ? to_f32(*d) + v : v);
    }
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

extern "C" __global__ void gelu_fwd_f32(const float* x, float* y, int n) { gelu_fwd(x, y, n); }
extern "C" __global__ void gelu_bwd_f32(const float* x, const float* dy, float* dx, int n) { gelu_bwd(x, dy, dx, n); }
extern "C" __global__ void neg_exp_f32(const float* x, float* y, int n) { neg_exp(x, y, n); }
extern "C" __global__ void mul_add_into_f32(const float* a, const float* b, float* out, int n) {
    mul_add_into(a, b, out, n);
}
extern "C" __global__ void scale_f32(float* x, float s, int n) { scale(x, s, n); }
extern "C" __global__ void add_broadcast_f32(const float* src, int inner, float* dst, int n) {
    add_broadcast(src, inner, dst, n);
}
extern "C" __global__ void copy_strided_f32(const float* src, long long src_stride, float* dst, long long dst_stride,
                                            long long rows, long long cols, int accumulate) {
    copy_strided(src, src_stride, dst, dst_stride, rows, cols, accumulate);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(silu_fwd_f32)
EMU_EXPORT(silu_bwd_f32)
EMU_EXPORT(softplus_fwd_f32)
EMU_EXPORT(softplus_bwd_f32)
EMU_EXPORT(gate_fwd_f32)
EMU_EXPORT(gate_bwd_f32)
EMU_EXPORT(add_into_f32)
EMU_EXPORT(gelu_fwd_f32)
EMU_EXPORT(gelu_bwd_f32)
EMU_EXPORT(neg_exp_f32)
EMU_EXPORT(mul_add_into_f32)
EMU_EXPORT(scale_f32)
EMU_EXPORT(add_broadcast_f32)
EMU_EXPORT(copy_strided_f32)
#endif
