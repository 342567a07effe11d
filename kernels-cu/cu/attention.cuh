// Causal multi-head attention with grouped-query heads, tiled with an online softmax
// (FlashAttention-2, Dao 2023) in plain FMA, as ssm::ops::attention:
//
//   o_i = sum_{j <= pos(i)} softmax_j(scale q_i . k_j) v_j,   pos(i) = i + lk - lq,
//   query head hq reads kv head hq / (h / hkv).
//
// Layouts: q, o, dq, do: (b, lq, h, hd); k, v, dk, dv: (b, lk, hkv, hd); lse and D: (b, h, lq).
// Never forms an lq x lk matrix: the forward keeps only lse; the backward recomputes the
// probabilities tile by tile. A row (one query, or one key in dkdv) is handled by kParts threads,
// each holding the head dimensions part, part + kParts, ... (hd <= kMaxHead); row dot products
// are reduced with width-kParts shuffles. Blocks hold kRows rows and stream tiles of kTile rows of
// the other side through shared memory, kMaxHead columns wide whatever hd is: the hot loops read
// every column at compile-time offsets (what keeps them at the registers of a fixed head size), so
// staging writes zeros past hd. The backward is deterministic: dk/dv per key block and dq
// per query block, no atomics.
#pragma once

#include "common.cuh"

namespace attn {
constexpr int kThreads = 128;
constexpr int kParts = 8;
constexpr int kRows = kThreads / kParts;
constexpr int kMaxHead = 128;
constexpr int kDims = kMaxHead / kParts;
constexpr int kTile = 32;

// This thread's dims of the hd-vector at src, zero past hd or when !ok.
template <typename T>
__device__ __forceinline__ void load_dims(float (&r)[kDims], const T* src, int hd, int part, bool ok) {
#pragma unroll
    for (int u = 0; u < kDims; ++u) {
        const int dd = part + u * kParts;
        r[u] = ok && dd < hd ? to_f32(src[dd]) : 0.0f;
    }
}

// Adds this thread's dims of r into the hd-vector at dst.
template <typename T>
__device__ __forceinline__ void add_dims(T* dst, const float (&r)[kDims], int hd, int part) {
#pragma unroll
    for (int u = 0; u < kDims; ++u) {
        const int dd = part + u * kParts;
        if (dd < hd) dst[dd] = from_f32<T>(to_f32(dst[dd]) + r[u]);
    }
}

// The dot product of a row held across the kParts threads with a shared-memory row.
__device__ __forceinline__ float row_dot(const float (&r)[kDims], const float* tile_row, int part) {
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < kDims; ++u) s += r[u] * tile_row[part + u * kParts];
#pragma unroll
    for (int off = 1; off < kParts; off <<= 1) s += __shfl_xor_sync(FULL_MASK, s, off, kParts);
    return s;
}

// tile (kTile, kMaxHead) = rows r0 .. r0+kTile of x (b, len, heads, hd) for sequence bi and head
// hh, zero past len and past hd. The columns past hd must be written: row_dot and the
// accumulations read them (times zeros), and on a GPU unwritten shared memory may hold NaN bits
// (0 * NaN = NaN). Coalesced along hd; a warp writes 32 consecutive words, free of bank conflicts
// for any hd. kLeavePadding skips the zeros past hd: the bug that cu/tests/attention_broken.cu
// keeps, so that the tests prove the emulation catches it.
template <bool kLeavePadding = false, typename T>
__device__ __forceinline__ void stage(float (*tile)[kMaxHead], const T* x, int bi, int r0, int len, int heads, int hh,
                                      int hd) {
    for (int e = threadIdx.x; e < kTile * kMaxHead; e += kThreads) {
        const int rr = e / kMaxHead, dd = e % kMaxHead, row = r0 + rr;
        if (dd < hd) {
            tile[rr][dd] = row < len ? to_f32(x[(((long long)bi * len + row) * heads + hh) * hd + dd]) : 0.0f;
        } else if (!kLeavePadding) {
            tile[rr][dd] = 0.0f;
        }
    }
}

// One past the last key that any query of the block starting at query q0 sees.
__device__ __forceinline__ int key_end(int q0, int lq, int lk) { return min(lk, min(q0 + kRows, lq) - 1 + lk - lq + 1); }

// Grid (ceil(lq / kRows), h, b).
template <typename T, bool kLeavePadding = false>
__device__ __forceinline__ void fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                    T* __restrict__ o, float* __restrict__ lse, int lq, int lk, int h, int hkv, int hd,
                                    float scale) {
    __shared__ float ks[kTile][kMaxHead];
    __shared__ float vs[kTile][kMaxHead];
    const int row = threadIdx.x / kParts, part = threadIdx.x % kParts;
    const int bi = blockIdx.z, hq = blockIdx.y, kvh = hq / (h / hkv), q0 = blockIdx.x * kRows;
    const int i = q0 + row, pos = i + lk - lq;
    const bool valid = i < lq;
    const long long qrow = (((long long)bi * lq + i) * h + hq) * hd;
    float qv[kDims], acc[kDims];
    load_dims(qv, q + qrow, hd, part, valid);
#pragma unroll
    for (int u = 0; u < kDims; ++u) {
        qv[u] *= scale;
        acc[u] = 0.0f;
    }
    float m = neg_inf_f32(), l = 0.0f;
    const int end = key_end(q0, lq, lk);
    for (int j0 = 0; j0 < end; j0 += kTile) {
        __syncthreads();
        stage<kLeavePadding>(ks, k, bi, j0, lk, hkv, kvh, hd);
        stage<kLeavePadding>(vs, v, bi, j0, lk, hkv, kvh, hd);
        __syncthreads();
        float sc[kTile];
        float tmax = neg_inf_f32();
#pragma unroll
        for (int jj = 0; jj < kTile; ++jj) {
            const float s = row_dot(qv, ks[jj], part);
            sc[jj] = j0 + jj <= pos && j0 + jj < lk ? s : neg_inf_f32();
            tmax = fmaxf(tmax, sc[jj]);
        }
        const float m_new = fmaxf(m, tmax);
        if (m_new == neg_inf_f32()) continue;
        const float corr = __expf(m - m_new);
        l *= corr;
#pragma unroll
        for (int u = 0; u < kDims; ++u) acc[u] *= corr;
#pragma unroll
        for (int jj = 0; jj < kTile; ++jj) {
            const float p = __expf(sc[jj] - m_new);
            l += p;
#pragma unroll
            for (int u = 0; u < kDims; ++u) acc[u] += p * vs[jj][part + u * kParts];
        }
        m = m_new;
    }
    if (!valid) return;
    const float inv = 1.0f / l;
#pragma unroll
    for (int u = 0; u < kDims; ++u) {
        const int dd = part + u * kParts;
        if (dd < hd) o[qrow + dd] = from_f32<T>(acc[u] * inv);
    }
    if (part == 0) lse[((long long)bi * h + hq) * lq + i] = m + __logf(l);
}

// D (b, h, lq) = rowsum(do * o), the softmax backward's correction term. A warp per row.
template <typename T>
__device__ __forceinline__ void bwd_prep(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ dsum,
                                         int b, int lq, int h, int hd) {
    const long long rows = (long long)b * lq * h;
    const int lane = threadIdx.x % 32;
    for (long long r = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32; r < rows;
         r += (long long)gridDim.x * blockDim.x / 32) {
        float s = 0.0f;
        for (int dd = lane; dd < hd; dd += 32) s += to_f32(o[r * hd + dd]) * to_f32(dout[r * hd + dd]);
        s = warp_sum(s);
        const long long bi = r / ((long long)lq * h), i = r / h % lq, hq = r % h;
        if (lane == 0) dsum[(bi * h + hq) * lq + i] = s;
    }
}

// dk, dv += for the kRows keys of the block and every query head of their group. Grid
// (ceil(lk / kRows), hkv, b).
template <typename T>
__device__ __forceinline__ void bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const T* __restrict__ dout, const float* __restrict__ lse,
                                         const float* __restrict__ dsum, T* __restrict__ dk, T* __restrict__ dv, int lq,
                                         int lk, int h, int hkv, int hd, float scale) {
    __shared__ float qs[kTile][kMaxHead];
    __shared__ float dos[kTile][kMaxHead];
    __shared__ float lse_s[kTile];
    __shared__ float dsum_s[kTile];
    const int row = threadIdx.x / kParts, part = threadIdx.x % kParts;
    const int bi = blockIdx.z, kvh = blockIdx.y, k0 = blockIdx.x * kRows, j = k0 + row;
    const int group = h / hkv, shift = lk - lq;
    const bool valid = j < lk;
    const long long krow = (((long long)bi * lk + j) * hkv + kvh) * hd;
    float kr[kDims], vr[kDims], dka[kDims], dva[kDims];
    load_dims(kr, k + krow, hd, part, valid);
    load_dims(vr, v + krow, hd, part, valid);
#pragma unroll
    for (int u = 0; u < kDims; ++u) dka[u] = dva[u] = 0.0f;
    // Query i sees key k0 when i >= k0 - shift.
    const int first = max(0, k0 - shift) / kTile * kTile;
    for (int hq = kvh * group; hq < (kvh + 1) * group; ++hq) {
        for (int i0 = first; i0 < lq; i0 += kTile) {
            __syncthreads();
            stage(qs, q, bi, i0, lq, h, hq, hd);
            stage(dos, dout, bi, i0, lq, h, hq, hd);
            if (threadIdx.x < kTile) {
                const int i = i0 + threadIdx.x;
                lse_s[threadIdx.x] = i < lq ? lse[((long long)bi * h + hq) * lq + i] : 0.0f;
                dsum_s[threadIdx.x] = i < lq ? dsum[((long long)bi * h + hq) * lq + i] : 0.0f;
            }
            __syncthreads();
            for (int ii = 0; ii < kTile; ++ii) {
                const int i = i0 + ii;
                const float s = scale * row_dot(kr, qs[ii], part);
                const float p = valid && i < lq && j <= i + shift ? __expf(s - lse_s[ii]) : 0.0f;
                const float ds = p * (row_dot(vr, dos[ii], part) - dsum_s[ii]);
#pragma unroll
                for (int u = 0; u < kDims; ++u) {
                    dva[u] += p * dos[ii][part + u * kParts];
                    dka[u] += scale * ds * qs[ii][part + u * kParts];
                }
            }
        }
    }
    if (!valid) return;
    add_dims(dk + krow, dka, hd, part);
    add_dims(dv + krow, dva, hd, part);
}

// dq += for the kRows queries of the block. Grid (ceil(lq / kRows), h, b).
template <typename T>
__device__ __forceinline__ void bwd_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                       const T* __restrict__ dout, const float* __restrict__ lse,
                                       const float* __restrict__ dsum, T* __restrict__ dq, int lq, int lk, int h, int hkv,
                                       int hd, float scale) {
    __shared__ float ks[kTile][kMaxHead];
    __shared__ float vs[kTile][kMaxHead];
    const int row = threadIdx.x / kParts, part = threadIdx.x % kParts;
    const int bi = blockIdx.z, hq = blockIdx.y, kvh = hq / (h / hkv), q0 = blockIdx.x * kRows;
    const int i = q0 + row, pos = i + lk - lq;
    const bool valid = i < lq;
    const long long qrow = (((long long)bi * lq + i) * h + hq) * hd;
    float qv[kDims], dov[kDims], dqa[kDims];
    load_dims(qv, q + qrow, hd, part, valid);
    load_dims(dov, dout + qrow, hd, part, valid);
#pragma unroll
    for (int u = 0; u < kDims; ++u) dqa[u] = 0.0f;
    const long long stat = ((long long)bi * h + hq) * lq + i;
    const float lse_i = valid ? lse[stat] : 0.0f, dsum_i = valid ? dsum[stat] : 0.0f;
    const int end = key_end(q0, lq, lk);
    for (int j0 = 0; j0 < end; j0 += kTile) {
        __syncthreads();
        stage(ks, k, bi, j0, lk, hkv, kvh, hd);
        stage(vs, v, bi, j0, lk, hkv, kvh, hd);
        __syncthreads();
        for (int jj = 0; jj < kTile; ++jj) {
            const int j = j0 + jj;
            const float s = scale * row_dot(qv, ks[jj], part);
            const float p = valid && j <= pos && j < lk ? __expf(s - lse_i) : 0.0f;
            const float ds = p * (row_dot(dov, vs[jj], part) - dsum_i);
#pragma unroll
            for (int u = 0; u < kDims; ++u) dqa[u] += scale * ds * ks[jj][part + u * kParts];
        }
    }
    if (valid) add_dims(dq + qrow, dqa, hd, part);
}
}  // namespace attn
