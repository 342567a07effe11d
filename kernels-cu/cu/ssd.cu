// Entry points of the SSD scan (ssd.cuh): f32 inputs, f32 accumulation. Blocks of ssd::kThreads
// on a 1-D grid; kernels-cu/src/ssd.rs plans the launches. Every chunk kernel ends its arguments
// with the sizes (l, h, p, g, n, chunk) and how Δ comes from dt (softplus, lo, hi); optional
// pointers are null when the option is off.
#include "ssd.cuh"

// out (b, chunks, h, p, n) = each chunk's own end state from u = x, v = B (backward = 0), or what
// its outputs send to its start state from u = dy, v = C (backward = 1); S (b, chunks, h) the
// chunks' total log-decays. Grid: b h chunks · tiles(p) tiles(n).
extern "C" __global__ void __launch_bounds__(ssd::kThreads)
    ssd_chunk_state_f32(const float* u, const float* v, const float* dt, const float* A, const float* dt_bias,
                        float* out, float* S, int backward, int l, int h, int p, int g, int n, int chunk, int softplus,
                        float lo, float hi) {
    __shared__ ssd::StateShared sh;
    ssd::chunk_state(sh, u, v, {dt, A, dt_bias, softplus, lo, hi}, out, S, {l, h, p, g, n, chunk}, backward);
}

// One thread per (sequence, head, state entry) of the (b, h, pn) range walks the chunks, in order
// or in reverse: states (b, chunks, h, pn) holds each chunk's own part and becomes in place what
// enters each chunk, from init (b, h, pn) or zeros through x -> exp(S) x + part; the value after
// the last chunk goes to last (b, h, pn), added to it when `accumulate`. Forward: the states at
// chunk starts and the last state. Backward: the gradients at chunk ends and dh0.
extern "C" __global__ void ssd_state_pass_f32(float* states, const float* S, const float* init, float* last,
                                              int accumulate, int reverse, int b, int chunks, int h, int pn) {
    const long long total = (long long)b * h * pn;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long bh = i / pn, e = i - bh * pn, bi = bh / h, hh = bh - bi * h;
        float x = init ? init[i] : 0.0f;
        for (int k = 0; k < chunks; ++k) {
            const long long ci = (bi * chunks + (reverse ? chunks - 1 - k : k)) * h + hh;
            const float part = states[ci * pn + e];
            states[ci * pn + e] = x;
            // Once per chunk and entry: the accurate exp, as the decay compounds over the sequence.
            x = expf(S[ci]) * x + part;
        }
        if (last) last[i] = accumulate ? last[i] + x : x;
    }
}

// y (b, l, h, p) from the chunk-start states (b, chunks, h, p, n). Grid: b h chunks ·
// tiles(min(chunk, l)) tiles(p).
extern "C" __global__ void __launch_bounds__(ssd::kThreads)
    ssd_chunk_y_f32(const float* x, const float* dt, const float* A, const float* B, const float* C, const float* D,
                    const float* dt_bias, const float* states, float* y, int l, int h, int p, int g, int n, int chunk,
                    int softplus, float lo, float hi) {
    __shared__ ssd::ProductShared sh;
    const ssd::ProductArgs a = {x, nullptr, B, C, D, states, nullptr, y, nullptr};
    ssd::chunk_product<ssd::kY>(sh, a, {dt, A, dt_bias, softplus, lo, hi}, {l, h, p, g, n, chunk});
}

// dx (b, l, h, p) += Δ dXD + D dy, from dy and the gradients at chunk ends dstates (b, chunks, h,
// p, n); writes the x-row dot products into rowpart (b, h, l, slots). Grid as ssd_chunk_y_f32.
extern "C" __global__ void __launch_bounds__(ssd::kThreads)
    ssd_chunk_dx_f32(const float* x, const float* dt, const float* A, const float* B, const float* C, const float* D,
                     const float* dt_bias, const float* dstates, const float* dy, float* dx, float* rowpart, int l,
                     int h, int p, int g, int n, int chunk, int softplus, float lo, float hi) {
    __shared__ ssd::ProductShared sh;
    const ssd::ProductArgs a = {x, dy, B, C, D, nullptr, dstates, dx, rowpart};
    ssd::chunk_product<ssd::kDx>(sh, a, {dt, A, dt_bias, softplus, lo, hi}, {l, h, p, g, n, chunk});
}

// Each head's dC (blockIdx.y = 0) and dB (blockIdx.y = 1), (b, l, h, n), written; their row dot
// products go into rowpart. Grid (b h chunks · tiles(min(chunk, l)) tiles(n), 2).
extern "C" __global__ void __launch_bounds__(ssd::kThreads)
    ssd_chunk_dbc_f32(const float* x, const float* dt, const float* A, const float* B, const float* C,
                      const float* dt_bias, const float* states, const float* dstates, const float* dy,
                      float* dc_heads, float* db_heads, float* rowpart, int l, int h, int p, int g, int n, int chunk,
                      int softplus, float lo, float hi) {
    __shared__ ssd::ProductShared sh;
    const ssd::DtArgs dta = {dt, A, dt_bias, softplus, lo, hi};
    const ssd::Dims d = {l, h, p, g, n, chunk};
    if (blockIdx.y == 0) {
        const ssd::ProductArgs a = {x, dy, B, C, nullptr, states, nullptr, dc_heads, rowpart};
        ssd::chunk_product<ssd::kDc>(sh, a, dta, d);
    } else {
        const ssd::ProductArgs a = {x, dy, B, C, nullptr, nullptr, dstates, db_heads, rowpart};
        ssd::chunk_product<ssd::kDb>(sh, a, dta, d);
    }
}

// ddt (b, l, h) += d(raw dt); the partials (b, chunks, h) of dA, dD and d(dt_bias), written. Grid:
// b h chunks.
extern "C" __global__ void __launch_bounds__(ssd::kThreads)
    ssd_chunk_ddt_f32(const float* dt, const float* A, const float* dt_bias, const float* states,
                      const float* dstates, const float* rowpart, float* ddt, float* da_part, float* dd_part,
                      float* ddb_part, int l, int h, int p, int g, int n, int chunk, int softplus, float lo, float hi) {
    __shared__ ssd::DdtShared sh;
    ssd::chunk_ddt(sh, {dt, A, dt_bias, softplus, lo, hi}, states, dstates, rowpart, ddt, da_part, dd_part, ddb_part,
                   {l, h, p, g, n, chunk});
}

// out (rows, g, n) += Σ over the heads of each group, in head order, of parts (rows, h, n).
extern "C" __global__ void ssd_sum_heads_f32(const float* parts, long long rows, int h, int g, int n, float* out) {
    const int per = h / g;
    const long long total = rows * g * n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / ((long long)g * n), gk = i - row * g * n, gi = gk / n, k = gk - gi * n;
        const float* src = parts + (row * h + gi * per) * n + k;
        float acc = 0.0f;
        for (int j = 0; j < per; ++j) acc += src[(long long)j * n];
        out[i] += acc;
    }
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(ssd_chunk_state_f32)
EMU_EXPORT(ssd_state_pass_f32)
EMU_EXPORT(ssd_chunk_y_f32)
EMU_EXPORT(ssd_chunk_dx_f32)
EMU_EXPORT(ssd_chunk_dbc_f32)
EMU_EXPORT(ssd_chunk_ddt_f32)
EMU_EXPORT(ssd_sum_heads_f32)
#endif
