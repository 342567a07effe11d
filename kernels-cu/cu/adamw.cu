// AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay, as ssm::optim::AdamW::update:
//
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= step_size m / (sqrt(v) inv_bc2_sqrt + eps) + decay p
//
// with step_size = lr / (1 - b1^t), inv_bc2_sqrt = 1 / sqrt(1 - b2^t) and decay = lr wd (0 for
// parameters without weight decay), all computed by the caller in f64.
#include "common.cuh"

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, int n, float beta1, float beta2,
                                     float eps, float step_size, float inv_bc2_sqrt, float decay) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float gi = g[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps) + decay * p[i];
    }
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(adamw_f32)
#endif
