// Deterministic reductions of per-block partial results: kernels that would otherwise need atomics
// write one row of partials each, and this adds the rows up in a fixed order.
#include "common.cuh"

// out (cols) += sum over r of parts (rows, cols)[r]. One thread per column, coalesced along rows.
extern "C" __global__ void sum_rows_into_f32(const float* parts, int rows, int cols, float* out) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int r = 0; r < rows; ++r) acc += parts[(long long)r * cols + c];
        out[c] += acc;
    }
}

namespace sum_squares {
constexpr int kThreads = 256;
}

// parts (gridDim.x,) = this block's share of sum x (n)^2; every block writes its slot, also when it
// has no elements. Each thread adds its grid-stride elements in order (n / 65536 of them over the
// fixed grid: about 150 for 1e7), then the block adds the threads' sums as a tree (shuffles, then
// 8 warps), so that no float sum runs long enough to lose the small terms.
extern "C" __global__ void __launch_bounds__(sum_squares::kThreads)
    sum_squares_parts_f32(const float* __restrict__ x, long long n, float* __restrict__ parts) {
    __shared__ float scratch[sum_squares::kThreads / 32];
    float acc = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float v = to_f32(x[i]);
        acc += v * v;
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) parts[blockIdx.x] = total;
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(sum_rows_into_f32)
EMU_EXPORT(sum_squares_parts_f32)
#endif
