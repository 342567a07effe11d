// Token embedding, as ssm::ops::embedding: out (m, d) = table[ids]; the backward adds rows of dout
// into dtable (v, d) without atomics and in token order, so repeated ids sum deterministically.
#include "common.cuh"

namespace embedding {
constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ void fwd(const unsigned* __restrict__ ids, const T* __restrict__ table, T* __restrict__ out,
                                    int m, int d) {
    const long long total = (long long)m * d;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / d;
        out[i] = table[(long long)ids[row] * d + (i - row * d)];
    }
}

// Block (column tile blockIdx.x, bucket blockIdx.y): walks all tokens in order and adds those whose
// id falls in its bucket (id % gridDim.y). Every element of dtable is thus updated by one thread,
// token by token.
template <typename T>
__device__ __forceinline__ void bwd(const unsigned* __restrict__ ids, const T* __restrict__ dout, T* __restrict__ dtable,
                                    int m, int d) {
    const int col = blockIdx.x * kThreads + threadIdx.x;
    if (col >= d) return;
    for (int i = 0; i < m; ++i) {
        const unsigned id = ids[i];
        if (id % gridDim.y != blockIdx.y) continue;
        const long long dst = (long long)id * d + col;
        dtable[dst] = from_f32<T>(to_f32(dtable[dst]) + to_f32(dout[(long long)i * d + col]));
    }
}
}  // namespace embedding

extern "C" __global__ void embedding_fwd_f32(const unsigned* ids, const float* table, float* out, int m, int d) {
    embedding::fwd(ids, table, out, m, d);
}

extern "C" __global__ void __launch_bounds__(embedding::kThreads)
    embedding_bwd_f32(const unsigned* ids, const float* dout, float* dtable, int m, int d) {
    embedding::bwd(ids, dout, dtable, m, d);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(embedding_fwd_f32)
EMU_EXPORT(embedding_bwd_f32)
#endif
