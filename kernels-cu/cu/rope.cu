// Rotary position embeddings, as ssm::ops::rope in the "rotate half" convention: in each head,
// elements i and i + hd/2 form a pair turned by the angle pos * theta_i, theta_i = base^(-2i/hd).
// The angle and its sin and cos are computed in double, as the CPU's table: positions reach 65536
// and more, where an f32 angle alone is off by ~4e-3 rad. The CPU rounds cos and sin to f32 and
// rotates in f32; so does this kernel.
#include "common.cuh"

// y (b, l, h, hd) = (or += when `accumulate`) x rotated, token t of a sequence at position
// offset + t; `inverse` turns by -angle (the backward). One thread per (token, i) for all heads,
// so that the double-precision sin and cos are paid once per token and frequency. x may be y: each
// thread reads both elements of its pair before writing them, and no other thread touches them,
// hence no __restrict__.
template <typename T>
__device__ __forceinline__ void rope(const T* x, T* y, int b, int l, int h, int hd, int offset, double base,
                                     int inverse, int accumulate) {
    const int half = hd / 2;
    const long long pairs = (long long)b * l * half;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < pairs; p += (long long)gridDim.x * blockDim.x) {
        const long long tok = p / half;
        const int i = (int)(p - tok * half);
        const double angle = (double)(offset + tok % l) * pow(base, -2.0 * i / hd);
        const float c = (float)cos(angle), s = (float)(inverse ? -sin(angle) : sin(angle));
        for (int head = 0; head < h; ++head) {
            const long long at = (tok * h + head) * hd + i;
            const float x1 = to_f32(x[at]), x2 = to_f32(x[at + half]);
            const float y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s;
            y[at] = from_f32<T>(accumulate ? to_f32(y[at]) + y1 : y1);
            y[at + half] = from_f32<T>(accumulate ? to_f32(y[at + half]) + y2 : y2);
        }
    }
}

extern "C" __global__ void rope_f32(const float* x, float* y, int b, int l, int h, int hd, int offset, double base,
                                    int inverse, int accumulate) {
    rope(x, y, b, l, h, hd, offset, base, inverse, accumulate);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(rope_f32)
#endif
