// RMSNorm over the last dimension, as ssm::ops::norm: y = x / sqrt(mean(x^2) + eps) * w, with
// rstd = 1 / sqrt(mean(x^2) + eps) kept per row for the backward. A block handles whole rows
// (grid-stride over rows), its threads striding over columns. In the grouped form a row of the op
// is `groups` rows of d here, row r using the weights w[(r % groups) * d ...].
#include "common.cuh"

namespace rmsnorm {
constexpr int kThreads = 256;

// y (m, d), rstd (m,) from x (m, d), w (groups * d,).
template <typename T>
__device__ __forceinline__ void fwd(const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ y,
                                    float* __restrict__ rstd, int m, int d, int groups, float eps) {
    __shared__ float scratch[kThreads / 32];
    for (int row = blockIdx.x; row < m; row += gridDim.x) {
        const T* xr = x + (long long)row * d;
        const float* wr = w + (row % groups) * d;
        float ss = 0.0f;
        for (int j = threadIdx.x; j < d; j += kThreads) {
            const float v = to_f32(xr[j]);
            ss += v * v;
        }
        const float r = rsqrtf(block_sum(ss, scratch) / d + eps);
        if (threadIdx.x == 0) rstd[row] = r;
        for (int j = threadIdx.x; j < d; j += kThreads) y[(long long)row * d + j] = from_f32<T>(to_f32(xr[j]) * r * wr[j]);
    }
}

// dx (m, d) += r dy w - x r^3 mean(dy w x); dw_part (gridDim.x, groups * d) = this block's sum
// over its rows of dy x r (column j of every group owned by one thread, so no races).
template <typename T>
__device__ __forceinline__ void bwd(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ rstd, T* __restrict__ dx, float* __restrict__ dw_part,
                                    int m, int d, int groups) {
    __shared__ float scratch[kThreads / 32];
    float* dwb = dw_part + (long long)blockIdx.x * groups * d;
    for (int j = threadIdx.x; j < groups * d; j += kThreads) dwb[j] = 0.0f;
    __syncthreads();
    for (int row = blockIdx.x; row < m; row += gridDim.x) {
        const long long base = (long long)row * d;
        const float* wr = w + (row % groups) * d;
        float* dwp = dwb + (row % groups) * d;
        const float r = rstd[row];
        float dot = 0.0f;
        for (int j = threadIdx.x; j < d; j += kThreads) dot += to_f32(dy[base + j]) * wr[j] * to_f32(x[base + j]);
        const float c = block_sum(dot, scratch) * r * r * r / d;
        for (int j = threadIdx.x; j < d; j += kThreads) {
            const float g = to_f32(dy[base + j]), xv = to_f32(x[base + j]);
            dx[base + j] = from_f32<T>(to_f32(dx[base + j]) + r * g * wr[j] - xv * c);
            dwp[j] += g * xv * r;
        }
    }
}
}  // namespace rmsnorm

extern "C" __global__ void __launch_bounds__(rmsnorm::kThreads)
    rmsnorm_fwd_f32(const float* x, const float* w, float* y, float* rstd, int m, int d, int groups, float eps) {
    rmsnorm::fwd(x, w, y, rstd, m, d, groups, eps);
}

extern "C" __global__ void __launch_bounds__(rmsnorm::kThreads)
    rmsnorm_bwd_f32(const float* dy, const float* x, const float* w, const float* rstd, float* dx, float* dw_part, int m,
                    int d, int groups) {
    rmsnorm::bwd(dy, x, w, rstd, dx, dw_part, m, d, groups);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(rmsnorm_fwd_f32)
EMU_EXPORT(rmsnorm_bwd_f32)
#endif
