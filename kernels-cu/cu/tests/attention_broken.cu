// The attention forward as it was before the fix: stage writes only the hd columns of each tile
// row, while row_dot and the accumulation read all kMaxHead of them, 0 * whatever shared memory
// holds there: NaN when it holds NaN bits. Unpoisoned shared memory read as zeros and hid this;
// the kernel tests assert that the emulation now catches it at hd 64 and 8.
#include "attention.cuh"

extern "C" __global__ void __launch_bounds__(attn::kThreads)
    attention_fwd_broken_f32(const float* q, const float* k, const float* v, float* o, float* lse, int lq, int lk,
                             int h, int hkv, int hd, float scale) {
    attn::fwd<float, true>(q, k, v, o, lse, lq, lk, h, hkv, hd, scale);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(attention_fwd_broken_f32)
#endif
