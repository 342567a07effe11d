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

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(sum_rows_into_f32)
#endif
