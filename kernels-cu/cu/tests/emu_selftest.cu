// Kernels that exercise the CPU emulation itself (shuffles with width, votes, atomics, barriers,
// early exits, poisoned and dynamic shared memory, deadlock and misuse detection). Compiled by
// NVRTC too, so that they stay valid CUDA.
#include "common.cuh"

// out (threads, 8): for thread t with value v = in[t], the results of each warp intrinsic.
extern "C" __global__ void emu_test_warp_ops(const int* in, int* out, int width, int arg) {
    const int t = threadIdx.x;
    const int v = in[t];
    int* o = out + 8 * t;
    o[0] = __shfl_sync(FULL_MASK, v, arg, width);
    o[1] = __shfl_up_sync(FULL_MASK, v, arg, width);
    o[2] = __shfl_down_sync(FULL_MASK, v, arg, width);
    o[3] = __shfl_xor_sync(FULL_MASK, v, arg, width);
    o[4] = (int)__ballot_sync(FULL_MASK, v & 1);
    o[5] = __any_sync(FULL_MASK, v == 7);
    o[6] = __all_sync(FULL_MASK, v >= 0);
    __syncwarp();
    o[7] = (int)(__shfl_xor_sync(FULL_MASK, (double)v * 0.5, 1, width) * 2.0);
}

// Threads at or past `live` return at once; the others exchange values through shared memory and
// count the live lanes of their warp with a ballot. out (blockDim.x,).
extern "C" __global__ void emu_test_early_exit(const float* in, float* out, int live) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    if (t >= live) return;
    s[t] = in[t];
    __syncthreads();
    const unsigned lanes = __ballot_sync(FULL_MASK, 1);
    out[t] = s[(t + 1) % live] + 1000.0f * __popc(lanes);
    __syncthreads();
    if (t == 0) {
        float sum = 0.0f;
        for (int i = 0; i < live; ++i) sum += s[i];
        out[live] = sum;
    }
}

// Every thread of every block adds 1 to fsum and to count and raises imax to its global index.
extern "C" __global__ void emu_test_atomics(float* fsum, unsigned* count, int* imax) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(fsum, 1.0f);
    unsigned old = 0, seen;  // the first compare-and-swap fails unless *count is 0, and reads it
    do {
        seen = old;
        old = atomicCAS(count, seen, seen + 1u);
    } while (old != seen);
    atomicMax(imax, g);
}

// out[b, t] = in[b, n-1-t] through shared memory; `barrier` = 0 drops the __syncthreads.
extern "C" __global__ void emu_test_reverse(const float* in, float* out, int barrier) {
    __shared__ float s[1024];
    const int n = blockDim.x, t = threadIdx.x;
    s[t] = in[blockIdx.x * n + t] * 2.0f;
    if (barrier) __syncthreads();
    out[blockIdx.x * n + t] = s[n - 1 - t];
}

// Reads shared memory that no thread wrote: the emulation's 0xFF fill makes it NaN.
extern "C" __global__ void emu_test_poison(float* out) {
    __shared__ float s[32];
    out[threadIdx.x] = s[threadIdx.x];
}

// The same through a template, whose statics g++ places outside any named section: block 0 writes
// the even elements, then every block reads all of them. Block 0 must see NaN at the odd ones and
// every later block NaN everywhere: nothing carries over from one block to the next.
template <int N>
__device__ void poison_per_block(float* out) {
    __shared__ float s[N];
    const int t = threadIdx.x;
    if (blockIdx.x == 0 && t % 2 == 0) s[t] = (float)t;
    out[blockIdx.x * N + t] = s[t];
}

extern "C" __global__ void emu_test_poison_template(float* out) { poison_per_block<64>(out); }

// Thread t stores word t of a shared array, then reads element (t * stride) % 1024 of it, as a
// float or (wide) as a double: the reads' bank conflicts follow from the stride.
extern "C" __global__ void emu_test_banks(float* out, int stride, int wide) {
    __shared__ double s[1024];
    const int t = threadIdx.x, i = (t * stride) % 1024;
    float* words = reinterpret_cast<float*>(s);
    words[t] = (float)t;
    __syncthreads();
    out[t] = wide ? (float)s[i] : words[i];
}

// Reverses through dynamic shared memory of n floats and reads one float past what was written.
extern "C" __global__ void emu_test_dynamic_shared(float* out, int n) {
    DYNAMIC_SHARED(float, s);
    const int t = threadIdx.x;
    s[t] = (float)t;
    __syncthreads();
    out[t] = s[n - 1 - t];
    if (t == 0) out[n] = s[n];
}

// out[global thread] = the thread's built-in indices and dimensions, packed.
extern "C" __global__ void emu_test_indices(unsigned* out) {
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 4 * (block * threads + thread);
    o[0] = threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20;
    o[1] = blockIdx.x | blockIdx.y << 10 | blockIdx.z << 20;
    o[2] = blockDim.x | blockDim.y << 10 | blockDim.z << 20;
    o[3] = gridDim.x | gridDim.y << 10 | gridDim.z << 20;
}

// Misuse that the emulation must report instead of hanging or computing garbage:
// 0: half a warp waits at __syncthreads while the other half waits in a shuffle (deadlock);
// 1: the two halves of a warp call different warp intrinsics (divergent warp operation);
// 2: a shuffle whose mask leaves out live lanes (partial masks are not emulated).
extern "C" __global__ void emu_test_misuse(int* out, int which) {
    const int t = threadIdx.x;
    int v = t;
    if (which == 0) {
        if (t < 16) {
            __syncthreads();
        } else {
            v = __shfl_sync(FULL_MASK, v, 0);
        }
    } else if (which == 1) {
        if (t < 16) {
            v = __shfl_sync(FULL_MASK, v, 0);
        } else {
            v = (int)__ballot_sync(FULL_MASK, 1);
        }
    } else {
        v = __shfl_sync(0x0000ffffu, v, 0);
    }
    out[t] = v;
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(emu_test_warp_ops)
EMU_EXPORT(emu_test_early_exit)
EMU_EXPORT(emu_test_atomics)
EMU_EXPORT(emu_test_reverse)
EMU_EXPORT(emu_test_poison)
EMU_EXPORT(emu_test_poison_template)
EMU_EXPORT(emu_test_banks)
EMU_EXPORT(emu_test_dynamic_shared)
EMU_EXPORT(emu_test_indices)
EMU_EXPORT(emu_test_misuse)
#endif
