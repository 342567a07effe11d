// Entry points of the attention kernels (cu/attention.cuh).
#include "attention.cuh"

extern "C" __global__ void __launch_bounds__(attn::kThreads)
    attention_fwd_f32(const float* q, const float* k, const float* v, float* o, float* lse, int lq, int lk, int h,
                      int hkv, int hd, float scale) {
    attn::fwd(q, k, v, o, lse, lq, lk, h, hkv, hd, scale);
}

extern "C" __global__ void attention_bwd_prep_f32(const float* o, const float* dout, float* dsum, int b, int lq, int h,
                                                  int hd) {
    attn::bwd_prep(o, dout, dsum, b, lq, h, hd);
}

extern "C" __global__ void __launch_bounds__(attn::kThreads)
    attention_bwd_dkdv_f32(const float* q, const float* k, const float* v, const float* dout, const float* lse,
                           const float* dsum, float* dk, float* dv, int lq, int lk, int h, int hkv, int hd,
                           float scale) {
    attn::bwd_dkdv(q, k, v, dout, lse, dsum, dk, dv, lq, lk, h, hkv, hd, scale);
}

extern "C" __global__ void __launch_bounds__(attn::kThreads)
    attention_bwd_dq_f32(const float* q, const float* k, const float* v, const float* dout, const float* lse,
                         const float* dsum, float* dq, int lq, int lk, int h, int hkv, int hd, float scale) {
    attn::bwd_dq(q, k, v, dout, lse, dsum, dq, lq, lk, h, hkv, hd, scale);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(attention_fwd_f32)
EMU_EXPORT(attention_bwd_prep_f32)
EMU_EXPORT(attention_bwd_dkdv_f32)
EMU_EXPORT(attention_bwd_dq_f32)
#endif
