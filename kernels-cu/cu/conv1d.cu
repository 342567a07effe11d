// Depthwise causal conv1d over time, token-major, as ssm::ops::conv1d, with an optional SiLU
// fused on the output (Mamba's x branch):
//
//   pre[b, t, c] = bias[c] + sum_j w[c, j] x[b, t - (k-1) + j, c],   y = silu(pre) or pre
//
// where steps before 0 come from `state` (b, k-1, d) or are zero. Blocks are 32 channels by 8
// thread rows; each block covers kRowsPerBlock consecutive (b, t) rows, so a warp reads 32
// consecutive channels of one row: coalesced. The backward writes its dw and dbias sums per block
// into a workspace that sum_rows_into_f32 adds up in a fixed order.
#include "common.cuh"

namespace conv {
constexpr int kChannels = 32;
constexpr int kRowThreads = 8;
constexpr int kRowsPerBlock = 64;
constexpr int kMaxWidth = 8;

// x at (bi, s) for channel c, s in [-(k-1), l): the state before the sequence, or zero.
template <typename T>
__device__ __forceinline__ float input_at(const T* x, const T* state, int bi, int s, int c, int l, int d, int k) {
    if (s >= 0) return to_f32(x[((long long)bi * l + s) * d + c]);
    return state ? to_f32(state[((long long)bi * (k - 1) + (k - 1 + s)) * d + c]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ float conv_at(const T* x, const float (&wr)[kMaxWidth], float bias, const T* state, int bi,
                                         int t, int c, int l, int d, int k) {
    float acc = bias;
#pragma unroll
    for (int j = 0; j < kMaxWidth; ++j)
        if (j < k) acc += wr[j] * input_at(x, state, bi, t - (k - 1) + j, c, l, d, k);
    return acc;
}

template <typename T>
__device__ __forceinline__ void load_taps(float (&wr)[kMaxWidth], const float* w, int c, int k) {
#pragma unroll
    for (int j = 0; j < kMaxWidth; ++j) wr[j] = j < k ? w[(long long)c * k + j] : 0.0f;
}

// y (b, l, d) from x (b, l, d), w (d, k), bias (d) or null, state (b, k-1, d) or null.
template <typename T>
__device__ __forceinline__ void fwd(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                                    const T* __restrict__ state, T* __restrict__ y, int b, int l, int d, int k, int silu) {
    const int c = blockIdx.x * kChannels + threadIdx.x;
    if (c >= d) return;
    float wr[kMaxWidth];
    load_taps<T>(wr, w, c, k);
    const float bv = bias ? bias[c] : 0.0f;
    const int r_end = min(((int)blockIdx.y + 1) * kRowsPerBlock, b * l);
    for (int r = (int)(blockIdx.y * kRowsPerBlock + threadIdx.y); r < r_end; r += kRowThreads) {
        const int bi = r / l, t = r - bi * l;
        const float pre = conv_at(x, wr, bv, state, bi, t, c, l, d, k);
        y[(long long)r * d + c] = from_f32<T>(silu ? silu_f32(pre) : pre);
    }
}

// dpre (b, l, d) = dy * silu'(pre): the gradient before the fused SiLU.
template <typename T>
__device__ __forceinline__ void silu_grad(const T* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, const T* __restrict__ state,
                                          const T* __restrict__ dy, float* __restrict__ dpre, int b, int l, int d,
                                          int k) {
    const int c = blockIdx.x * kChannels + threadIdx.x;
    if (c >= d) return;
    float wr[kMaxWidth];
    load_taps<T>(wr, w, c, k);
    const float bv = bias ? bias[c] : 0.0f;
    const int r_end = min(((int)blockIdx.y + 1) * kRowsPerBlock, b * l);
    for (int r = (int)(blockIdx.y * kRowsPerBlock + threadIdx.y); r < r_end; r += kRowThreads) {
        const int bi = r / l, t = r - bi * l;
        const long long i = (long long)r * d + c;
        dpre[i] = to_f32(dy[i]) * silu_grad_f32(conv_at(x, wr, bv, state, bi, t, c, l, d, k));
    }
}

// dx (b, l, d) += the transposed conv of g (b, l, d); dw_part (gridDim.y, d, k) and db_part
// (gridDim.y, d) get this block's sums of g x and g.
template <typename T>
__device__ __forceinline__ void bwd(const T* __restrict__ x, const float* __restrict__ w, const T* __restrict__ state,
                                    const float* __restrict__ g, T* __restrict__ dx, float* __restrict__ dw_part,
                                    float* __restrict__ db_part, int b, int l, int d, int k) {
    __shared__ float red[kRowThreads][kMaxWidth + 1][kChannels];
    const int c = blockIdx.x * kChannels + threadIdx.x;
    float wr[kMaxWidth], dw[kMaxWidth + 1];
#pragma unroll
    for (int j = 0; j <= kMaxWidth; ++j) dw[j] = 0.0f;
    if (c < d) {
        load_taps<T>(wr, w, c, k);
        const int r_end = min(((int)blockIdx.y + 1) * kRowsPerBlock, b * l);
        for (int r = (int)(blockIdx.y * kRowsPerBlock + threadIdx.y); r < r_end; r += kRowThreads) {
            const int bi = r / l, t = r - bi * l;
            const long long i = (long long)r * d + c;
            const float gr = g[i];
            float acc = 0.0f;
#pragma unroll
            for (int j = 0; j < kMaxWidth; ++j) {
                if (j >= k) continue;
                // Output t + (k-1) - j read input t through tap j; input t - (k-1) + j fed output t.
                const int to = t + (k - 1) - j;
                if (to < l) acc += wr[j] * g[i + (long long)(k - 1 - j) * d];
                dw[j] += gr * input_at(x, state, bi, t - (k - 1) + j, c, l, d, k);
            }
            dw[kMaxWidth] += gr;
            dx[i] = from_f32<T>(to_f32(dx[i]) + acc);
        }
    }
#pragma unroll
    for (int j = 0; j <= kMaxWidth; ++j) red[threadIdx.y][j][threadIdx.x] = dw[j];
    __syncthreads();
    if (threadIdx.y != 0 || c >= d) return;
    for (int j = 0; j <= k; ++j) {
        const int slot = j == k ? kMaxWidth : j;
        float sum = 0.0f;
        for (int ty = 0; ty < kRowThreads; ++ty) sum += red[ty][slot][threadIdx.x];
        if (j < k) {
            dw_part[((long long)blockIdx.y * d + c) * k + j] = sum;
        } else if (db_part) {
            db_part[(long long)blockIdx.y * d + c] = sum;
        }
    }
}
}  // namespace conv

extern "C" __global__ void __launch_bounds__(256)
    causal_conv1d_fwd_f32(const float* x, const float* w, const float* bias, const float* state, float* y, int b, int l,
                          int d, int k, int silu) {
    conv::fwd(x, w, bias, state, y, b, l, d, k, silu);
}

extern "C" __global__ void __launch_bounds__(256)
    causal_conv1d_silu_grad_f32(const float* x, const float* w, const float* bias, const float* state, const float* dy,
                                float* dpre, int b, int l, int d, int k) {
    conv::silu_grad(x, w, bias, state, dy, dpre, b, l, d, k);
}

extern "C" __global__ void __launch_bounds__(256)
    causal_conv1d_bwd_f32(const float* x, const float* w, const float* state, const float* g, float* dx, float* dw_part,
                          float* db_part, int b, int l, int d, int k) {
    conv::bwd(x, w, state, g, dx, dw_part, db_part, b, l, d, k);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(causal_conv1d_fwd_f32)
EMU_EXPORT(causal_conv1d_silu_grad_f32)
EMU_EXPORT(causal_conv1d_bwd_f32)
#endif
