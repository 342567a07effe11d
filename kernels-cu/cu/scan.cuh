// Selective scan (Mamba S6) forward and backward, token-major, with the semantics of
// ssm::ops::scan (state-spaces' selective_scan_ref):
//
//   dt  = delta + delta_bias;  dt = softplus(dt) if softplus         (x itself above 20)
//   h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t      per channel c and state s; h_{-1} = h0 or 0
//   y_t = C_t . h_t + D u_t;   y_t *= silu(z_t) if z is given
//
// Layouts: u, delta, z, y, dy: (b, l, d); A: (d, n); B, C: (b, l, g, n), channel c uses group
// c / (d / g); D, delta_bias: (d,); last state: (b, d, n); h0: (b, segments, d, n).
//
// Work split: a block of kThreads threads handles one sequence bi (blockIdx.y) and dc consecutive
// channels (blockIdx.x), dc in {1, 2, 4} dividing d / g so that all of them share one group of B/C.
// Time goes in chunks of kChunk steps; inside a chunk thread j owns the run of kItems steps
// [j kItems, (j+1) kItems). Each thread composes its run into one affine map h -> P h + V (per
// state), a block-wide scan of these (P, V) pairs (warp shuffles, then warp totals through shared
// memory) gives every thread the state before its run, and the thread replays its run from there.
// The state after the chunk carries into the next one. Tiles (time x channel) of u, dt, y and
// (time x state) tiles of B, C go through shared memory so that global loads are coalesced along
// the contiguous channel (or state) dimension. States are processed kFwdStates (kBwdStates) at a
// time, which bounds registers and shared memory for any n <= kMaxState.
//
// Long sequences in small batches (too few blocks for the GPU) are split into segments of
// consecutive chunks, blockIdx.z of gridDim.z, in three launches (kernels-cu/src/scan.rs): a map
// pass in which each block runs its segment from zeros without producing y, which leaves V of the
// segment's map h -> exp(a sum dt) h + V; chain_segments, which runs the segments' maps in order to
// give each one its starting state; and the full pass from those states. The backward's map
// from the gradient at a segment's end to the one at its start has the same form (the same decay
// times the end gradient, plus what the segment's own dy contributes), so it splits the same way.
//
// Saved for the backward (`chunk_states`, (b, nchunks, d, n) with nchunks = ceil(l / kChunk)):
// the state before each chunk, h at step k kChunk - 1 for chunk k (h0 or zeros for chunk 0).
//
// The backward walks chunks from last to first: it recomputes the states inside the chunk from
// the saved one, runs the reverse recurrence  g_t = dh_t + C_t dy'_t,  dh_{t-1} = exp(dt_t A) g_t
// as a reverse block scan of the same kind, and reads off every gradient. Reductions: dD,
// d_delta_bias and dA are summed inside the block in a fixed order and written per sequence and
// segment into a workspace that sum_rows_into_f32 (reduce.cu) adds up, so they are deterministic;
// dB and dC, summed over the channels of a group, are reduced over the block's channels in
// registers and then added with one atomicAdd per block and element (their order across blocks
// is not fixed).
#pragma once

#include "common.cuh"

namespace scan {

constexpr int kThreads = 64;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;
constexpr int kChunk = kThreads * kItems;
constexpr int kMaxChannels = 4;
constexpr int kMaxState = 64;
constexpr int kFwdStates = 8;
constexpr int kBwdStates = 4;

// Tiles are (time x channel) or (time x state) arrays whose element e sits at pad(e): one unused
// word after every 32. Thread tid reads step tid * kItems + i, so a warp reads at a stride of
// kItems * dc or kItems * S words (a power of two from 4 to 32); unpadded, that stride puts the 32
// lanes on 32 / stride banks, a stride-way conflict (32-way for the forward's B/C tiles). Padded,
// lane j = q (32 / stride) + r reads bank r stride + q (mod 32) plus an offset common to the warp:
// 32 distinct banks. The staging and output loops access 32 consecutive e from a multiple of 32,
// which stay 32 consecutive words.
__device__ __forceinline__ int pad(int e) { return e + (e >> 5); }
__host__ __device__ constexpr int padded(int len) { return len + len / 32; }
constexpr int kTileCh = padded(kChunk * kMaxChannels);

struct FwdShared {
    float u[kTileCh];   // (kChunk, dc), padded
    float dt[kTileCh];  // (kChunk, dc) after delta_bias and softplus
    float y[kTileCh];   // (kChunk, dc) sum over states of C h
    float b[padded(kChunk * kFwdStates)];  // (kChunk, kFwdStates) B for the current batch of states
    float c[padded(kChunk * kFwdStates)];
    float slot_p[kMaxChannels][kWarps][kFwdStates];  // warp totals of the block scan
    float slot_v[kMaxChannels][kWarps][kFwdStates];
    float carry[2][kMaxChannels * kMaxState];  // (dc, n) state before the chunk, double-buffered by parity
    float part[kThreads];
};

struct BwdShared {
    float u[kTileCh];
    float dt[kTileCh];
    float dy[kTileCh];   // dy, then dy * silu(z) when z is given
    float acc[kTileCh];  // C . h + D u for dz, then d(dt)
    float du[kTileCh];
    float b[padded(kChunk * kBwdStates)];
    float c[padded(kChunk * kBwdStates)];
    float slot_p[kMaxChannels][kWarps][kBwdStates];
    float slot_v[kMaxChannels][kWarps][kBwdStates];
    float rslot_p[kMaxChannels][kWarps][kBwdStates];
    float rslot_v[kMaxChannels][kWarps][kBwdStates];
    float red[kMaxChannels][kWarps][kBwdStates];
    float dh[2][kMaxChannels * kMaxState];  // (dc, n) gradient w.r.t. the state before the chunk
    float da[kMaxChannels * kMaxState];  // (dc, n)
    float part[2][kThreads];
};

// Stages u and dt of channels c0 .. c0+dc for steps t0 .. t0+kChunk, coalesced along channels.
// Steps past l get dt = 0 and u = 0: the identity step, so the carried state passes unchanged.
// `zero` (a third (kChunk, dc) tile) is cleared for the caller's accumulation. Returns the sum of
// the thread's dt values, all of channel tid % dc.
template <typename Tin>
__device__ __forceinline__ float stage_u_dt(float* su, float* sdt, float* zero, const Tin* u, const Tin* delta,
                                           const float* delta_bias, int softplus, int bi, int t0, int l, int d,
                                           int c0, int dc) {
    float dt_sum = 0.0f;
    for (int e = threadIdx.x; e < kChunk * dc; e += kThreads) {
        const int t = e / dc, c = e - t * dc, gt = t0 + t;
        float uu = 0.0f, dtv = 0.0f;
        if (gt < l) {
            const long long idx = ((long long)bi * l + gt) * d + c0 + c;
            uu = to_f32(u[idx]);
            const float x = to_f32(delta[idx]) + (delta_bias ? delta_bias[c0 + c] : 0.0f);
            dtv = softplus ? softplus_f32(x) : x;
        }
        su[pad(e)] = uu;
        sdt[pad(e)] = dtv;
        zero[pad(e)] = 0.0f;
        dt_sum += dtv;
    }
    return dt_sum;
}

// Sums `v` over the threads of each channel (thread tid stages and writes channel tid % dc), in a
// fixed order, into out[c] for c < dc when `out` is given. `part` (kThreads,) must be free.
__device__ __forceinline__ void write_channel_sums(float v, float* part, float* out, int dc) {
    const int tid = threadIdx.x;
    part[tid] = v;
    __syncthreads();
    if (out && tid < dc) {
        float sum = 0.0f;
        for (int j = tid; j < kThreads; j += dc) sum += part[j];
        out[tid] = sum;
    }
}

// Stages B and C of group gi for states sb .. sb+S of steps t0 .. t0+kChunk, coalesced along
// states; zeros past l and past n, and for C when it is null.
template <int S, typename Tin>
__device__ __forceinline__ void stage_bc(float* sb_tile, float* sc_tile, const Tin* B, const Tin* C, int bi, int t0,
                                         int l, int g, int gi, int n, int sb) {
    for (int e = threadIdx.x; e < kChunk * S; e += kThreads) {
        const int t = e / S, s = e - t * S, gt = t0 + t;
        float bv = 0.0f, cv = 0.0f;
        if (gt < l && sb + s < n) {
            const long long idx = (((long long)bi * l + gt) * g + gi) * n + sb + s;
            bv = to_f32(B[idx]);
            cv = C ? to_f32(C[idx]) : 0.0f;
        }
        sb_tile[pad(e)] = bv;
        sc_tile[pad(e)] = cv;
    }
}

// Block-wide forward scan over the chunk for channel c and the S staged states. Step t is the
// affine map h -> exp(dt_t a) h + dt_t u_t B_t; "first (p1, v1), then (p2, v2)" composes to
// (p2 p1, p2 v1 + v2). `h_chunk` is the state before the chunk (the same in every thread). On
// return `h` holds the state before this thread's run; the last thread writes the state after the
// chunk into `carry_out` (`valid` states) when it is given. One barrier: slot_p/slot_v must not be
// touched by anyone else until the caller's next barrier. kDropBarrier exists only for
// cu/tests/scan_broken.cu, which proves that the emulation catches the missing barrier.
template <int S, bool kDropBarrier>
__device__ __forceinline__ void chunk_prefix(const float* sdt, const float* su, const float* sb_tile, int dc, int c,
                                             const float (&a)[S], const float (&h_chunk)[S], float (*slot_p)[S],
                                             float (*slot_v)[S], float (&h)[S], float* carry_out, int valid) {
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    float P[S], V[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
        P[s] = 1.0f;
        V[s] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
        const int t = tid * kItems + i;
        const float dtv = sdt[pad(t * dc + c)], du = dtv * su[pad(t * dc + c)];
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const float e = __expf(dtv * a[s]);
            P[s] *= e;
            V[s] = e * V[s] + du * sb_tile[pad(t * S + s)];
        }
    }
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const float pp = __shfl_up_sync(FULL_MASK, P[s], off), vp = __shfl_up_sync(FULL_MASK, V[s], off);
            if (lane >= off) {
                V[s] = P[s] * vp + V[s];
                P[s] *= pp;
            }
        }
    }
    float pe[S], ve[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
        if (lane == 31) {
            slot_p[warp][s] = P[s];
            slot_v[warp][s] = V[s];
        }
        pe[s] = __shfl_up_sync(FULL_MASK, P[s], 1);
        ve[s] = __shfl_up_sync(FULL_MASK, V[s], 1);
    }
    if (!kDropBarrier) __syncthreads();
#pragma unroll
    for (int s = 0; s < S; ++s) {
        float x = h_chunk[s];
        for (int w = 0; w < warp; ++w) x = slot_p[w][s] * x + slot_v[w][s];
        h[s] = lane == 0 ? x : pe[s] * x + ve[s];
        if (carry_out && tid == kThreads - 1 && s < valid) carry_out[s] = P[s] * x + V[s];
    }
}

// Block-wide reverse scan: each thread's run is the map x -> P x + V from the gradient arriving at
// its last step (from later steps) to the gradient leaving its first step. Given `x_end` (from
// the chunks after this one), returns in `x` the gradient arriving at this thread's last step;
// thread 0 writes the gradient w.r.t. the state before the chunk into `carry_out`. One barrier, as
// chunk_prefix.
template <int S>
__device__ __forceinline__ void chunk_suffix(float (&P)[S], float (&V)[S], const float (&x_end)[S], float (*slot_p)[S],
                                             float (*slot_v)[S], float (&x)[S], float* carry_out, int valid) {
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const float pn = __shfl_down_sync(FULL_MASK, P[s], off), vn = __shfl_down_sync(FULL_MASK, V[s], off);
            if (lane + off < 32) {
                V[s] = P[s] * vn + V[s];
                P[s] *= pn;
            }
        }
    }
    float pe[S], ve[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
        if (lane == 0) {
            slot_p[warp][s] = P[s];
            slot_v[warp][s] = V[s];
        }
        pe[s] = __shfl_down_sync(FULL_MASK, P[s], 1);
        ve[s] = __shfl_down_sync(FULL_MASK, V[s], 1);
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < S; ++s) {
        float xx = x_end[s];
        for (int w = kWarps - 1; w > warp; --w) xx = slot_p[w][s] * xx + slot_v[w][s];
        x[s] = lane == 31 ? xx : pe[s] * xx + ve[s];
        if (carry_out && tid == 0 && s < valid) carry_out[s] = P[s] * xx + V[s];
    }
}

// A (d, n) for channel ch and states sb .. sb+S, zero past n.
template <int S>
__device__ __forceinline__ void load_a(float (&a)[S], const float* A, int ch, int n, int sb) {
#pragma unroll
    for (int s = 0; s < S; ++s) a[s] = sb + s < n ? A[(long long)ch * n + sb + s] : 0.0f;
}

// Segment `blockIdx.z` of `gridDim.z` (chunks [z seg_chunks, (z+1) seg_chunks) of the sequence)
// from the state h0 (b, segments, d, n) or zeros. With `seg_map` given, the block only composes the
// segment's map h -> exp(a sum dt) h + V from zeros: it writes V into seg_map (b, segments, d, n) and
// sum dt into dt_sum (b, segments, d), and nothing else. Otherwise it writes y, the chunk states of
// its chunks and, in the last segment, last_state (b, d, n).
template <typename Tin, bool kDropBarrier>
__device__ __forceinline__ void selective_scan_fwd(const Tin* __restrict__ u, const Tin* __restrict__ delta,
                                                   const float* __restrict__ A, const Tin* __restrict__ B,
                                                   const Tin* __restrict__ C, const float* __restrict__ Dskip,
                                                   const Tin* __restrict__ z, const float* __restrict__ delta_bias,
                                                   const float* __restrict__ h0, Tin* __restrict__ y,
                                                   float* __restrict__ last_state, float* __restrict__ chunk_states,
                                                   float* __restrict__ seg_map, float* __restrict__ dt_sum, int l,
                                                   int d, int n, int g, int dc, int seg_chunks, int softplus) {
    constexpr int S = kFwdStates;
    __shared__ FwdShared sh;
    const int tid = threadIdx.x, bi = blockIdx.y, c0 = blockIdx.x * dc, gi = c0 / (d / g);
    const int nchunks = (l + kChunk - 1) / kChunk, seg = blockIdx.z, nseg = gridDim.z;
    const int k0 = seg * seg_chunks, k1 = min(nchunks, k0 + seg_chunks);
    const bool map_only = seg_map != nullptr;
    const long long seg0 = (((long long)bi * nseg + seg) * d + c0) * n;  // (b, nseg, d, n) offset of (bi, seg, c0, 0)
    for (int i = tid; i < dc * n; i += kThreads) sh.carry[k0 & 1][i] = h0 ? h0[seg0 + i] : 0.0f;
    float dt_acc = 0.0f;
    for (int k = k0; k < k1; ++k) {
        const int p = k & 1, t0 = k * kChunk;
        __syncthreads();  // the previous chunk is done with the tiles, and carry[p] is complete
        if (chunk_states) {
            const long long base = (((long long)bi * nchunks + k) * d + c0) * n;
            for (int i = tid; i < dc * n; i += kThreads) chunk_states[base + i] = sh.carry[p][i];
        }
        dt_acc += stage_u_dt(sh.u, sh.dt, sh.y, u, delta, delta_bias, softplus, bi, t0, l, d, c0, dc);
        for (int sb = 0; sb < n; sb += S) {
            const int valid = min(S, n - sb);
            __syncthreads();  // the previous batch is done with the B/C tiles
            stage_bc<S>(sh.b, sh.c, B, map_only ? nullptr : C, bi, t0, l, g, gi, n, sb);
            __syncthreads();
            for (int c = 0; c < dc; ++c) {
                float a[S], hc[S], h[S];
                load_a(a, A, c0 + c, n, sb);
#pragma unroll
                for (int s = 0; s < S; ++s) hc[s] = s < valid ? sh.carry[p][c * n + sb + s] : 0.0f;
                chunk_prefix<S, kDropBarrier>(sh.dt, sh.u, sh.b, dc, c, a, hc, sh.slot_p[c], sh.slot_v[c], h,
                                              sh.carry[1 - p] + c * n + sb, valid);
                if (map_only) continue;
#pragma unroll
                for (int i = 0; i < kItems; ++i) {
                    const int t = tid * kItems + i;
                    const float dtv = sh.dt[pad(t * dc + c)], du = dtv * sh.u[pad(t * dc + c)];
                    float acc = 0.0f;
#pragma unroll
                    for (int s = 0; s < S; ++s) {
                        h[s] = __expf(dtv * a[s]) * h[s] + du * sh.b[pad(t * S + s)];
                        acc += sh.c[pad(t * S + s)] * h[s];
                    }
                    sh.y[pad(t * dc + c)] += acc;
                }
            }
        }
        __syncthreads();
        if (map_only) continue;
        for (int e = tid; e < kChunk * dc; e += kThreads) {
            const int t = e / dc, c = e - t * dc, gt = t0 + t;
            if (gt >= l) continue;
            const long long idx = ((long long)bi * l + gt) * d + c0 + c;
            float out = sh.y[pad(e)] + (Dskip ? Dskip[c0 + c] * sh.u[pad(e)] : 0.0f);
            if (z) out *= silu_f32(to_f32(z[idx]));
            y[idx] = from_f32<Tin>(out);
        }
    }
    __syncthreads();
    const float* end = sh.carry[k1 & 1];
    if (map_only) {
        for (int i = tid; i < dc * n; i += kThreads) seg_map[seg0 + i] = end[i];
        write_channel_sums(dt_acc, sh.part, dt_sum + ((long long)bi * nseg + seg) * d + c0, dc);
    } else if (last_state && seg == nseg - 1) {
        const long long state0 = ((long long)bi * d + c0) * n;  // (b, d, n) offset of (bi, c0, 0)
        for (int i = tid; i < dc * n; i += kThreads) last_state[state0 + i] = end[i];
    }
}

// Gradients: du, ddelta, dz (b, l, d) += ; dB, dC (b, l, g, n) += (atomically); dh0 (b, d, n) +=
// (by segment 0); dA_part (b, segments, d, n), dD_part and ddb_part (b, segments, d) are written
// (=), one row per sequence and segment. Segments as in the forward, walked from the gradient
// dlast (b, segments, d, n) at the segment's end, or zeros. With `seg_map` given, the block only
// composes the segment's map from the gradient at its end to the one at its start,
// x -> exp(a sum dt) x + W, from zeros: it writes W into seg_map (b, segments, d, n) and sum dt into
// dt_sum (b, segments, d), and nothing else (no states needed).
template <typename Tin>
__device__ __forceinline__ void selective_scan_bwd(
    const Tin* __restrict__ u, const Tin* __restrict__ delta, const float* __restrict__ A, const Tin* __restrict__ B,
    const Tin* __restrict__ C, const float* __restrict__ Dskip, const Tin* __restrict__ z,
    const float* __restrict__ delta_bias, const float* __restrict__ chunk_states, const Tin* __restrict__ dy,
    const float* __restrict__ dlast, Tin* __restrict__ du, Tin* __restrict__ ddelta, float* __restrict__ dB,
    float* __restrict__ dC, Tin* __restrict__ dz, float* __restrict__ dh0, float* __restrict__ dA_part,
    float* __restrict__ dD_part, float* __restrict__ ddb_part, float* __restrict__ seg_map, float* __restrict__ dt_sum,
    int l, int d, int n, int g, int dc, int seg_chunks, int softplus) {
    constexpr int S = kBwdStates;
    __shared__ BwdShared sh;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int bi = blockIdx.y, c0 = blockIdx.x * dc, gi = c0 / (d / g);
    const int nchunks = (l + kChunk - 1) / kChunk, seg = blockIdx.z, nseg = gridDim.z;
    const int k0 = seg * seg_chunks, k1 = min(nchunks, k0 + seg_chunks);
    const bool map_only = seg_map != nullptr;
    const long long seg_row = (long long)bi * nseg + seg, seg0 = (seg_row * d + c0) * n;  // (b, nseg, d, n)
    for (int i = tid; i < dc * n; i += kThreads) {
        sh.dh[(k1 - 1) & 1][i] = dlast ? dlast[seg0 + i] : 0.0f;
        sh.da[i] = 0.0f;
    }
    // For channel tid % dc: the staging and output loops' e % dc is fixed.
    float dD_acc = 0.0f, ddb_acc = 0.0f, dt_acc = 0.0f;
    for (int k = k1 - 1; k >= k0; --k) {
        const int p = k & 1, t0 = k * kChunk;
        const float* hk = chunk_states + (((long long)bi * nchunks + k) * d + c0) * n;  // (dc, n)
        __syncthreads();
        dt_acc += stage_u_dt(sh.u, sh.dt, sh.acc, u, delta, delta_bias, softplus, bi, t0, l, d, c0, dc);
        for (int e = tid; e < kChunk * dc; e += kThreads) {
            const int t = e / dc, gt = t0 + t;
            sh.dy[pad(e)] = gt < l ? to_f32(dy[((long long)bi * l + gt) * d + c0 + e - t * dc]) : 0.0f;
            sh.du[pad(e)] = 0.0f;
        }
        if (z) {
            // Recompute y before the gate (C . h + D u) for dz, then gate dy.
            for (int sb = 0; sb < n && !map_only; sb += S) {
                const int valid = min(S, n - sb);
                __syncthreads();
                stage_bc<S>(sh.b, sh.c, B, C, bi, t0, l, g, gi, n, sb);
                __syncthreads();
                for (int c = 0; c < dc; ++c) {
                    float a[S], hc[S], h[S];
                    load_a(a, A, c0 + c, n, sb);
#pragma unroll
                    for (int s = 0; s < S; ++s) hc[s] = s < valid ? hk[c * n + sb + s] : 0.0f;
                    chunk_prefix<S, false>(sh.dt, sh.u, sh.b, dc, c, a, hc, sh.slot_p[c], sh.slot_v[c], h, nullptr, 0);
#pragma unroll
                    for (int i = 0; i < kItems; ++i) {
                        const int t = tid * kItems + i;
                        const float dtv = sh.dt[pad(t * dc + c)], dtu = dtv * sh.u[pad(t * dc + c)];
                        float acc = 0.0f;
#pragma unroll
                        for (int s = 0; s < S; ++s) {
                            h[s] = __expf(dtv * a[s]) * h[s] + dtu * sh.b[pad(t * S + s)];
                            acc += sh.c[pad(t * S + s)] * h[s];
                        }
                        sh.acc[pad(t * dc + c)] += acc;
                    }
                }
            }
            __syncthreads();
            for (int e = tid; e < kChunk * dc; e += kThreads) {
                const int t = e / dc, c = e - t * dc, gt = t0 + t;
                if (gt < l) {
                    const long long idx = ((long long)bi * l + gt) * d + c0 + c;
                    const float zz = to_f32(z[idx]), gy = sh.dy[pad(e)];
                    const float ypre = sh.acc[pad(e)] + (Dskip ? Dskip[c0 + c] * sh.u[pad(e)] : 0.0f);
                    if (!map_only) dz[idx] = from_f32<Tin>(to_f32(dz[idx]) + gy * ypre * silu_grad_f32(zz));
                    sh.dy[pad(e)] = gy * silu_f32(zz);
                }
                sh.acc[pad(e)] = 0.0f;
            }
        }
        for (int sb = 0; sb < n; sb += S) {
            const int valid = min(S, n - sb);
            __syncthreads();
            stage_bc<S>(sh.b, sh.c, B, C, bi, t0, l, g, gi, n, sb);
            __syncthreads();
            float db_acc[kItems][S], dc_acc[kItems][S];  // summed over the block's channels
#pragma unroll
            for (int i = 0; i < kItems; ++i)
#pragma unroll
                for (int s = 0; s < S; ++s) db_acc[i][s] = dc_acc[i][s] = 0.0f;
            for (int c = 0; c < dc; ++c) {
                float a[S], h[S];
                load_a(a, A, c0 + c, n, sb);
                if (!map_only) {
                    float hc[S];
#pragma unroll
                    for (int s = 0; s < S; ++s) hc[s] = s < valid ? hk[c * n + sb + s] : 0.0f;
                    chunk_prefix<S, false>(sh.dt, sh.u, sh.b, dc, c, a, hc, sh.slot_p[c], sh.slot_v[c], h, nullptr,
                                           0);
                }
                float hp[kItems][S], dec[kItems][S];  // h_{t-1} and exp(dt_t a) of the run
#pragma unroll
                for (int i = 0; i < kItems; ++i) {
                    const int t = tid * kItems + i;
                    const float dtv = sh.dt[pad(t * dc + c)], dtu = dtv * sh.u[pad(t * dc + c)];
#pragma unroll
                    for (int s = 0; s < S; ++s) {
                        dec[i][s] = __expf(dtv * a[s]);
                        if (map_only) continue;
                        hp[i][s] = h[s];
                        h[s] = dec[i][s] * h[s] + dtu * sh.b[pad(t * S + s)];
                    }
                }
                // The run's reverse map: x -> dec (x + C dy'), from the last step to the first.
                float P[S], V[S], xe[S], x[S];
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    P[s] = 1.0f;
                    V[s] = 0.0f;
                    xe[s] = s < valid ? sh.dh[p][c * n + sb + s] : 0.0f;
                }
#pragma unroll
                for (int i = kItems - 1; i >= 0; --i) {
                    const int t = tid * kItems + i;
                    const float dyp = sh.dy[pad(t * dc + c)];
#pragma unroll
                    for (int s = 0; s < S; ++s) {
                        V[s] = dec[i][s] * (V[s] + sh.c[pad(t * S + s)] * dyp);
                        P[s] *= dec[i][s];
                    }
                }
                chunk_suffix<S>(P, V, xe, sh.rslot_p[c], sh.rslot_v[c], x, sh.dh[1 - p] + c * n + sb, valid);
                if (map_only) continue;
                float da[S];
#pragma unroll
                for (int s = 0; s < S; ++s) da[s] = 0.0f;
#pragma unroll
                for (int i = kItems - 1; i >= 0; --i) {
                    const int t = tid * kItems + i;
                    const float dtv = sh.dt[pad(t * dc + c)], uu = sh.u[pad(t * dc + c)], dyp = sh.dy[pad(t * dc + c)];
                    float ddt = 0.0f, dui = 0.0f;
#pragma unroll
                    for (int s = 0; s < S; ++s) {
                        const float bv = sh.b[pad(t * S + s)], gv = x[s] + sh.c[pad(t * S + s)] * dyp;
                        const float decayed = dec[i][s] * hp[i][s];  // d h_t / d(dt a) = exp(dt a) h_{t-1}
                        dc_acc[i][s] += dyp * (decayed + dtv * bv * uu);
                        db_acc[i][s] += gv * dtv * uu;
                        ddt += gv * (a[s] * decayed + bv * uu);
                        dui += gv * dtv * bv;
                        da[s] += gv * dtv * decayed;
                        x[s] = dec[i][s] * gv;
                    }
                    sh.acc[pad(t * dc + c)] += ddt;
                    sh.du[pad(t * dc + c)] += dui;
                }
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    const float v = warp_sum(da[s]);
                    if (lane == 0) sh.red[c][warp][s] = v;
                }
                __syncthreads();
                if (tid < valid) {
                    float total = 0.0f;
                    for (int w = 0; w < kWarps; ++w) total += sh.red[c][w][tid];
                    sh.da[c * n + sb + tid] += total;
                }
            }
            if (map_only) continue;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                const int gt = t0 + tid * kItems + i;
                if (gt >= l) continue;
                const long long row = (((long long)bi * l + gt) * g + gi) * n + sb;
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    if (s < valid) {
                        atomicAdd(dB + row + s, db_acc[i][s]);
                        atomicAdd(dC + row + s, dc_acc[i][s]);
                    }
                }
            }
        }
        __syncthreads();
        if (map_only) continue;
        for (int e = tid; e < kChunk * dc; e += kThreads) {
            const int t = e / dc, c = e - t * dc, gt = t0 + t;
            if (gt >= l) continue;
            const long long idx = ((long long)bi * l + gt) * d + c0 + c;
            const float dyp = sh.dy[pad(e)];
            du[idx] = from_f32<Tin>(to_f32(du[idx]) + sh.du[pad(e)] + (Dskip ? dyp * Dskip[c0 + c] : 0.0f));
            const float raw = to_f32(delta[idx]) + (delta_bias ? delta_bias[c0 + c] : 0.0f);
            const float dx = softplus ? sh.acc[pad(e)] * softplus_grad_f32(raw) : sh.acc[pad(e)];
            ddelta[idx] = from_f32<Tin>(to_f32(ddelta[idx]) + dx);
            dD_acc += dyp * sh.u[pad(e)];
            ddb_acc += dx;
        }
    }
    __syncthreads();
    const float* start = sh.dh[1 - (k0 & 1)];  // chunk k0 left its carry in dh[1 - (k0 & 1)]
    if (map_only) {
        for (int i = tid; i < dc * n; i += kThreads) seg_map[seg0 + i] = start[i];
        write_channel_sums(dt_acc, sh.part[0], dt_sum + seg_row * d + c0, dc);
        return;
    }
    const long long state0 = ((long long)bi * d + c0) * n;  // (b, d, n) offset of (bi, c0, 0)
    for (int i = tid; i < dc * n; i += kThreads) {
        if (dh0 && seg == 0) dh0[state0 + i] += start[i];
        dA_part[seg0 + i] = sh.da[i];
    }
    write_channel_sums(dD_acc, sh.part[0], dD_part ? dD_part + seg_row * d + c0 : nullptr, dc);
    write_channel_sums(ddb_acc, sh.part[1], ddb_part ? ddb_part + seg_row * d + c0 : nullptr, dc);
}

// Chains the segments of a split scan, one thread per (sequence, channel, state) of the
// (b, d, n) range: seg (b, segments, d, n) holds each segment's map offset (V or W of the map
// passes) and becomes in place what each segment starts from. Forward: the state entering segment j,
// from init = h0 (or zeros) through h -> exp(a sum dt_j) h + V_j. Reverse: the gradient at the end of
// segment j, from init = dlast (or zeros) at the end of the last, through the same form of map.
__device__ __forceinline__ void chain_segments(const float* __restrict__ A, const float* __restrict__ dt_sum,
                                               const float* __restrict__ init, float* __restrict__ seg, int b, int d,
                                               int n, int nseg, int reverse) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)b * d * n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long bi = i / ((long long)d * n), cs = i - bi * d * n, c = cs / n;
        const float a = A[cs];
        float h = init ? init[i] : 0.0f;
        for (int k = 0; k < nseg; ++k) {
            const int j = reverse ? nseg - 1 - k : k;
            const long long at = (bi * nseg + j) * d * n + cs;
            const float v = seg[at];
            seg[at] = h;
            h = expf(a * dt_sum[(bi * nseg + j) * d + c]) * h + v;
        }
    }
}

}  // namespace scan
