// Softmax cross-entropy with integer targets, as ssm::ops::loss: rows whose target is -100 are
// skipped. A block handles whole rows (grid-stride over rows).
#include "common.cuh"

namespace xent {
constexpr int kThreads = 256;
constexpr long long kIgnoreIndex = -100;

// lse (m,) = log-sum-exp of each row of logits (m, v); loss (m,) = lse - logits[target], 0 where
// the target is ignored. The mean over scored rows is left to the caller.
template <typename T>
__device__ __forceinline__ void fwd(const T* __restrict__ logits, const long long* __restrict__ targets,
                                    float* __restrict__ lse, float* __restrict__ loss, int m, int v) {
    __shared__ float scratch[kThreads / 32];
    for (int row = blockIdx.x; row < m; row += gridDim.x) {
        const T* x = logits + (long long)row * v;
        float mx = neg_inf_f32();
        for (int j = threadIdx.x; j < v; j += kThreads) mx = fmaxf(mx, to_f32(x[j]));
        mx = block_max(mx, scratch);
        float s = 0.0f;
        for (int j = threadIdx.x; j < v; j += kThreads) s += __expf(to_f32(x[j]) - mx);
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) {
            const float l = mx + __logf(s);
            const long long t = targets[row];
            lse[row] = l;
            loss[row] = t == kIgnoreIndex ? 0.0f : l - to_f32(x[t]);
        }
    }
}

// dlogits (m, v) += scale (softmax(logits) - onehot(target)) on scored rows; `scale` is
// dloss / (number of scored rows).
template <typename T>
__device__ __forceinline__ void bwd(const T* __restrict__ logits, const long long* __restrict__ targets,
                                    const float* __restrict__ lse, T* __restrict__ dlogits, int m, int v, float scale) {
    for (int row = blockIdx.x; row < m; row += gridDim.x) {
        const long long t = targets[row];
        if (t == kIgnoreIndex) continue;
        const long long base = (long long)row * v;
        const float l = lse[row];
        for (int j = threadIdx.x; j < v; j += kThreads) {
            const float g = scale * __expf(to_f32(logits[base + j]) - l) - (j == t ? scale : 0.0f);
            dlogits[base + j] = from_f32<T>(to_f32(dlogits[base + j]) + g);
        }
    }
}
}  // namespace xent

extern "C" __global__ void __launch_bounds__(xent::kThreads)
    cross_entropy_fwd_f32(const float* logits, const long long* targets, float* lse, float* loss, int m, int v) {
    xent::fwd(logits, targets, lse, loss, m, v);
}

extern "C" __global__ void __launch_bounds__(xent::kThreads)
    cross_entropy_bwd_f32(const float* logits, const long long* targets, const float* lse, float* dlogits, int m, int v,
                          float scale) {
    xent::bwd(logits, targets, lse, dlogits, m, v, scale);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(cross_entropy_fwd_f32)
EMU_EXPORT(cross_entropy_bwd_f32)
#endif
