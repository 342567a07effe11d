// The SSD scan of Mamba-2 (state space duality; Dao & Gu 2024, arXiv 2405.21060, §6), forward and
// backward, token-major, with the semantics of ssm::ops::ssd:
//
//   Δ_t = clamp(softplus(dt_t + dt_bias), lo, hi)        (softplus when asked; [lo, hi] = dt_limit)
//   h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t,   y_t = h_t C_t + D x_t       per head; h is (p, n)
//
// Layouts: x, y, dy, dx (b, l, h, p); dt (b, l, h); A, D, dt_bias (h); B, C (b, l, g, n), head hh
// reads group hh / (h / g); initial and last state (b, h, p, n); the chunk-start states (b, chunks,
// h, p, n) with chunks = ceil(l / chunk); the chunks' total log-decays S (b, chunks, h).
//
// The chunked form of ssm::ops::ssd's cpu.rs: for a chunk of q positions with the cumulative
// log-decays s_t = Σ_{τ≤t} Δ_τ A (S = s_{q-1}), XD_t = Δ_t x_t and H the state at its start,
//
//   Y      = (C Bᵀ ∘ L) · XD + diag(e^s) · C · Hᵀ + D X          L[t, τ] = e^{s_t - s_τ} (τ ≤ t), else 0
//   H_next = e^S H + XDᵀ · diag(e^{S-s}) · B
//
// and with dH the gradient of the chunk's end state, the backward
//
//   dH_start = e^S dH + (diag(e^s) dY)ᵀ · C
//   dXD      = (C Bᵀ ∘ L)ᵀ · dY + diag(e^{S-s}) · B · dHᵀ,        dx = Δ dXD + D dY
//   dC       = (dY XDᵀ ∘ L) · B + diag(e^s) · dY · H
//   dB       = (dY XDᵀ ∘ L)ᵀ · C + diag(e^{S-s}) · XD · dH
//   ds_t     = C_t · dC_t - B_t · dB_t,  and ds_{q-1} += e^S <H, dH> + Σ_t XD_t · (e^{S-s_t} dH B_t)
//   dΔ_t     = x_t · dXD_t + A Σ_{t'≥t} ds_t',   dA = Σ_t Δ_t Σ_{t'≥t} ds_t'
//
// (ds_t gathers what s_t receives through every decay: the terms of the masked products, summed
// over a row or a column of the mask, are exactly C_t · dC_t and B_t · dB_t of this head.)
//
// Kernels (cu/ssd.cu), each block on one (sequence, head, chunk) and a tile:
// - chunk_state: the chunk's own state XDᵀ diag(e^{S-s}) B (forward) or (diag(e^s) dY)ᵀ C
//   (backward), (p, n) in 64 x 64 tiles, and S.
// - state_pass: one thread per (sequence, head, state entry) walks the chunks in order (in reverse
//   for the backward) and turns those into the states at chunk starts (the gradients at chunk
//   ends), in place.
// - chunk_product: the four masked products above share one form,
//       out[r, j] = Σ_{c ~ r} (Q_r · K_c) e^{±(s_r - s_c)} V_c[j] + w_r Σ_k Q_r[k] St[j, k],
//   causal (c ≤ r, e^{s_r - s_c}, w_r = e^{s_r}: Y and dC) or anti-causal (c ≥ r, e^{s_c - s_r},
//   w_r = e^{S - s_r}: dXD and dB), in 64 x 64 tiles of (rows, j) with the contraction staged 16
//   at a time; the row dot products that ds and dΔ need go per tile into a workspace.
// - chunk_ddt: per chunk, ds from those dot products, its reverse cumulative sum, ddt, and the
//   chunk's partials of dA, dD and d(dt_bias).
// dB and dC are summed over the heads of a group by sum_heads, and the partials of dA, dD and
// d(dt_bias) over sequences and chunks by reduce.cu's sum_rows_into_f32: every sum has a fixed
// order, so results are bit-reproducible.
#pragma once

#include "common.cuh"

namespace ssd {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// One thread per position of a chunk in the scan of the log-decays.
constexpr int kMaxChunk = kThreads;
// Output tiles are kTile x kTile, 4 x 4 per thread: rows ty + 16 i, columns tx + 16 jj.
constexpr int kTile = 64;
constexpr int kSide = 16;
constexpr int kPer = kTile / kSide;
// Contraction staged kSub at a time in chunk_product, positions kSteps at a time in chunk_state.
constexpr int kSub = 16;
constexpr int kSteps = 32;

__host__ __device__ constexpr int tiles(int len) { return (len + kTile - 1) / kTile; }

// Sizes of one scan.
struct Dims {
    int l, h, p, g, n, chunk;
};

__device__ __forceinline__ int chunks_of(const Dims& d) { return (d.l + d.chunk - 1) / d.chunk; }

// Row slots of the backward's per-position dot products (b, h, l, slots): per p-tile x · dXD,
// x · dXD_state and x · dY (written by the dXD blocks), per n-tile C · dC, then per n-tile B · dB.
__device__ __forceinline__ int row_slots(const Dims& d) { return 3 * tiles(d.p) + 2 * tiles(d.n); }

// Where a block works: sequence, head, its group, chunk, first position and length of the chunk.
struct Where {
    int bi, hh, gi, c, t0, q;
};

// Block `bhc` = (bi h + hh) chunks + c.
__device__ __forceinline__ Where locate(const Dims& d, long long bhc) {
    const int chunks = chunks_of(d);
    Where w;
    w.c = (int)(bhc % chunks);
    const long long bh = bhc / chunks;
    w.hh = (int)(bh % d.h);
    w.bi = (int)(bh / d.h);
    w.gi = w.hh / (d.h / d.g);
    w.t0 = w.c * d.chunk;
    w.q = min(d.chunk, d.l - w.t0);
    return w;
}

// Offset of (bi, t0, head hh, 0) in a (b, l, h, p) tensor; rows of the chunk are h p apart.
__device__ __forceinline__ long long x_row0(const Dims& d, const Where& w) {
    return (((long long)w.bi * d.l + w.t0) * d.h + w.hh) * d.p;
}
// Offset of (bi, t0, group gi, 0) in a (b, l, g, n) tensor; rows g n apart.
__device__ __forceinline__ long long bc_row0(const Dims& d, const Where& w) {
    return (((long long)w.bi * d.l + w.t0) * d.g + w.gi) * d.n;
}
// Offset of this block's (p, n) state in a (b, chunks, h, p, n) tensor.
__device__ __forceinline__ long long state0(const Dims& d, const Where& w) {
    return (((long long)w.bi * chunks_of(d) + w.c) * d.h + w.hh) * (long long)d.p * d.n;
}
// Index of this block's entry in a (b, chunks, h) tensor.
__device__ __forceinline__ long long chunk_index(const Dims& d, const Where& w) {
    return ((long long)w.bi * chunks_of(d) + w.c) * d.h + w.hh;
}

// How Δ comes from dt: bias, softplus, limits.
struct DtArgs {
    const float* dt;
    const float* A;
    const float* dt_bias;
    int softplus;
    float lo, hi;
};

// sdt[t] = Δ_t and ss[t] = s_t for t < kMaxChunk, and dΔ/d(raw dt) into sgrad when given (0 where
// a limit binds, as torch's clamp). Past the chunk's q positions Δ = 0, so s stays at S there and
// every kernel may read ss at any row or column of its tiles. Ends with a barrier.
__device__ __forceinline__ void chunk_decay(const DtArgs& a, const Dims& d, const Where& w, float* sdt, float* ss,
                                            float* sgrad, float* scratch) {
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    float delta = 0.0f, grad = 0.0f;
    if (t < w.q) {
        const float raw = a.dt[((long long)w.bi * d.l + w.t0 + t) * d.h + w.hh] + (a.dt_bias ? a.dt_bias[w.hh] : 0.0f);
        delta = a.softplus ? softplus_f32(raw) : raw;
        grad = a.softplus ? softplus_grad_f32(raw) : 1.0f;
        if (delta < a.lo) {
            delta = a.lo;
            grad = 0.0f;
        } else if (delta > a.hi) {
            delta = a.hi;
            grad = 0.0f;
        }
    }
    float v = delta * a.A[w.hh];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const float up = __shfl_up_sync(FULL_MASK, v, off);
        if (lane >= off) v += up;
    }
    if (lane == 31) scratch[warp] = v;
    __syncthreads();
    float before = 0.0f;
    for (int k = 0; k < warp; ++k) before += scratch[k];
    sdt[t] = delta;
    ss[t] = before + v;
    if (sgrad) sgrad[t] = grad;
    __syncthreads();
}

// ---- chunk_state: out (p, n) = Σ_t w_t U_t ⊗ V_t over one chunk -----------------------------------

struct StateShared {
    float sw[kMaxChunk];  // w_t
    float ss[kMaxChunk];
    float scratch[kWarps];
    float us[kSteps][kTile];  // (t, j) of U times w_t
    float vs[kSteps][kTile];  // (t, k) of V
};

// Forward (backward = 0): U = x, V = B, w_t = e^{S - s_t} Δ_t: the chunk's own end state.
// Backward: U = dy, V = C, w_t = e^{s_t}: what the chunk's outputs send to its start state.
// Block (bhc, tile) with tile = p-tile · tiles(n) + n-tile; the block of tile 0 also writes S.
__device__ __forceinline__ void chunk_state(StateShared& sh, const float* __restrict__ u, const float* __restrict__ v,
                                            const DtArgs& dta, float* __restrict__ out, float* __restrict__ S_out,
                                            const Dims& d, int backward) {
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const int ntiles = tiles(d.n), tile = (int)(blockIdx.x % (tiles(d.p) * ntiles));
    const Where w = locate(d, blockIdx.x / (tiles(d.p) * ntiles));
    const int j0 = tile / ntiles * kTile, k0 = tile % ntiles * kTile;
    chunk_decay(dta, d, w, sh.sw, sh.ss, nullptr, sh.scratch);
    const float S = sh.ss[w.q - 1];
    if (tile == 0 && tid == 0) S_out[chunk_index(d, w)] = S;
    // Thread t turns its own Δ_t into w_t: no other thread reads sw[t] before the barrier.
    sh.sw[tid] = backward ? __expf(sh.ss[tid]) : __expf(S - sh.ss[tid]) * sh.sw[tid];
    const long long u0 = x_row0(d, w), v0 = bc_row0(d, w);
    const long long us_stride = (long long)d.h * d.p, vs_stride = (long long)d.g * d.n;
    float acc[kPer][kPer] = {};
    for (int tb = 0; tb < w.q; tb += kSteps) {
        __syncthreads();  // sw is complete, and the previous step is done with the tiles
        for (int e = tid; e < kSteps * kTile; e += kThreads) {
            const int tt = e / kTile, j = e % kTile, t = tb + tt;
            float uu = 0.0f, vv = 0.0f;
            if (t < w.q) {
                if (j0 + j < d.p) uu = u[u0 + t * us_stride + j0 + j] * sh.sw[t];
                if (k0 + j < d.n) vv = v[v0 + t * vs_stride + k0 + j];
            }
            sh.us[tt][j] = uu;
            sh.vs[tt][j] = vv;
        }
        __syncthreads();
#pragma unroll 4
        for (int tt = 0; tt < kSteps; ++tt) {
            float a[kPer], b[kPer];
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                a[i] = sh.us[tt][ty + kSide * i];
                b[i] = sh.vs[tt][tx + kSide * i];
            }
#pragma unroll
            for (int i = 0; i < kPer; ++i)
#pragma unroll
                for (int jj = 0; jj < kPer; ++jj) acc[i][jj] += a[i] * b[jj];
        }
    }
    float* o = out + state0(d, w);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int j = j0 + ty + kSide * i;
#pragma unroll
        for (int jj = 0; jj < kPer; ++jj) {
            const int k = k0 + tx + kSide * jj;
            if (j < d.p && k < d.n) o[(long long)j * d.n + k] = acc[i][jj];
        }
    }
}

// ---- chunk_product: the masked products of the chunk -------------------------------------------

// Vectors at the positions of a chunk: element (t, k) at base[t stride + k] for t < q and k < len,
// zero elsewhere; times Δ_t when kScaled (the operand XD = Δ x).
struct Rows {
    const float* base;
    int stride;
    int len;
};

template <bool kScaled = false>
__device__ __forceinline__ float load(const Rows& o, const float* sdt, int t, int q, int k) {
    if (t >= q || k >= o.len) return 0.0f;
    const float v = o.base[(long long)t * o.stride + k];
    return kScaled ? v * sdt[t] : v;
}

// The four products, by what they compute.
enum Mode { kY, kDx, kDc, kDb };

// What the mode fixes at compile time (which keeps the descriptors out of registers): the mask
// (causal: Y and dC), which operand is XD, and whether the state is read as (p, n) or (n, p).
__host__ __device__ constexpr bool causal(int m) { return m == kY || m == kDc; }
__host__ __device__ constexpr bool q_is_xd(int m) { return m == kDb; }
__host__ __device__ constexpr bool k_is_xd(int m) { return m == kDc; }
__host__ __device__ constexpr bool v_is_xd(int m) { return m == kY; }
__host__ __device__ constexpr bool state_on_p(int m) { return m == kY || m == kDx; }

// out[r, j] = Σ_{c ~ r} (Q_r · K_c) decay(r, c) V_c[j] + w_r Σ_k Q_r[k] St[j, k] for j < V.len
// and k < Q.len (the contraction length of Q and K); St is the (p, n) state itself for Y and dXD
// (j = p, k = n), transposed for dC and dB (j = n, k = p).
struct Product {
    Rows q, k, v;
    const float* state;
    int n;
};


struct ProductShared {
    float sdt[kMaxChunk];
    float ss[kMaxChunk];
    float scratch[kWarps];
    // (k, row) of Q and (k, column) of K, or (k, j) of the state in the off-chunk term; the
    // padding spreads the staging writes (two rows of 16 per warp) over the banks.
    float qs[kSub][kTile + 1];
    float ks[kSub][kTile + 1];
    // (row, column) masked scores; 16 words of padding put the two rows that a warp reads in
    // different banks.
    float ms[kTile][kTile + 16];
    float vs[kTile][kTile];  // (column, j) of V
};

// Rows r0 .. r0+kTile of o, contraction k0 .. k0+kSub, into dst as (k, row); coalesced along k.
template <bool kScaled>
__device__ __forceinline__ void stage_rows(float (*dst)[kTile + 1], const Rows& o, const float* sdt, int r0, int q,
                                           int k0) {
    for (int e = threadIdx.x; e < kSub * kTile; e += kThreads) {
        const int r = e / kSub, kk = e % kSub;
        dst[kk][r] = load<kScaled>(o, sdt, r0 + r, q, k0 + kk);
    }
}

// Rows r0 .. r0+kTile, columns j0 .. j0+kTile of o into dst (row stride `width`); coalesced
// along the columns. The caller synchronizes.
__device__ __forceinline__ void stage_tile(float* dst, int width, const Rows& o, const float* sdt, int r0, int q,
                                           int j0) {
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
        const int r = e / kTile, j = e % kTile;
        dst[r * width + j] = load(o, sdt, r0 + r, q, j0 + j);
    }
}

// acc[i][jj] += Σ_kk a[kk][ty + 16 i] b[kk][tx + 16 jj] over the staged sub-tiles.
__device__ __forceinline__ void mma_sub(const float (*a)[kTile + 1], const float (*b)[kTile + 1],
                                        float (&acc)[kPer][kPer]) {
    const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
#pragma unroll
    for (int kk = 0; kk < kSub; ++kk) {
        float x[kPer], y[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            x[i] = a[kk][ty + kSide * i];
            y[i] = b[kk][tx + kSide * i];
        }
#pragma unroll
        for (int i = 0; i < kPer; ++i)
#pragma unroll
            for (int jj = 0; jj < kPer; ++jj) acc[i][jj] += x[i] * y[jj];
    }
}

// acc = w_r Σ_k Q_r[k] St[j, k] on the tile of rows r0.. and columns j0.. .
template <int kMode>
__device__ __forceinline__ void off_chunk_term(ProductShared& sh, const Product& pr, int q, int r0, int j0,
                                               float (&acc)[kPer][kPer]) {
    const int ty = threadIdx.x / kSide;
    constexpr bool k_inner = state_on_p(kMode);
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int jj = 0; jj < kPer; ++jj) acc[i][jj] = 0.0f;
    for (int k0 = 0; k0 < pr.q.len; k0 += kSub) {
        __syncthreads();  // the previous sub-tile is consumed
        stage_rows<q_is_xd(kMode)>(sh.qs, pr.q, sh.sdt, r0, q, k0);
        // Coalesced along whichever of j and k is contiguous in the state.
        for (int e = threadIdx.x; e < kSub * kTile; e += kThreads) {
            const int j = k_inner ? e / kSub : e % kTile, kk = k_inner ? e % kSub : e / kTile;
            const int row = k_inner ? j0 + j : k0 + kk, col = k_inner ? k0 + kk : j0 + j;
            const bool in = j0 + j < pr.v.len && k0 + kk < pr.q.len;
            sh.ks[kk][j] = in ? pr.state[(long long)row * pr.n + col] : 0.0f;
        }
        __syncthreads();
        mma_sub(sh.qs, sh.ks, acc);
    }
    const float S = sh.ss[q - 1];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const float s = sh.ss[r0 + ty + kSide * i];
        const float wr = causal(kMode) ? __expf(s) : __expf(S - s);
#pragma unroll
        for (int jj = 0; jj < kPer; ++jj) acc[i][jj] *= wr;
    }
}

// acc += Σ_{c ~ r} (Q_r · K_c) decay(r, c) V_c[j] over the column tiles that the mask leaves.
template <int kMode>
__device__ __forceinline__ void in_chunk_term(ProductShared& sh, const Product& pr, int q, int r0, int j0,
                                              float (&acc)[kPer][kPer]) {
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    constexpr bool kCausal = causal(kMode);
    const int rt = r0 / kTile, first = kCausal ? 0 : rt, last = kCausal ? rt : tiles(q) - 1;
    for (int ct = first; ct <= last; ++ct) {
        const int c0 = ct * kTile;
        float m[kPer][kPer] = {};
        for (int k0 = 0; k0 < pr.q.len; k0 += kSub) {
            __syncthreads();  // the previous sub-tile, and the previous column tile's ms and vs, are consumed
            stage_rows<q_is_xd(kMode)>(sh.qs, pr.q, sh.sdt, r0, q, k0);
            stage_rows<k_is_xd(kMode)>(sh.ks, pr.k, sh.sdt, c0, q, k0);
            __syncthreads();
            mma_sub(sh.qs, sh.ks, m);
        }
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int r = r0 + ty + kSide * i;
#pragma unroll
            for (int jj = 0; jj < kPer; ++jj) {
                const int c = c0 + tx + kSide * jj;
                // The decay of a masked entry may overflow: it is never computed.
                const bool keep = kCausal ? c <= r : c >= r;
                const float lg = kCausal ? sh.ss[r] - sh.ss[c] : sh.ss[c] - sh.ss[r];
                sh.ms[ty + kSide * i][tx + kSide * jj] = keep ? m[i][jj] * __expf(lg) : 0.0f;
            }
        }
        // Coalesced along j.
        for (int e = tid; e < kTile * kTile; e += kThreads) {
            const int c = e / kTile, j = e % kTile;
            sh.vs[c][j] = load<v_is_xd(kMode)>(pr.v, sh.sdt, c0 + c, q, j0 + j);
        }
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < kTile; ++c) {
            float x[kPer], y[kPer];
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                x[i] = sh.ms[ty + kSide * i][c];
                y[i] = sh.vs[c][tx + kSide * i];
            }
#pragma unroll
            for (int i = 0; i < kPer; ++i)
#pragma unroll
                for (int jj = 0; jj < kPer; ++jj) acc[i][jj] += x[i] * y[jj];
        }
    }
}

// Σ over the 16 threads of a tile row (a half-warp) in a fixed order, in every one of them.
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
    for (int off = kSide / 2; off > 0; off >>= 1) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

// Everything a product block may read or write; null where its mode has no use for it.
struct ProductArgs {
    const float* x;        // (b, l, h, p)
    const float* dy;       // (b, l, h, p)
    const float* B;        // (b, l, g, n)
    const float* C;        // (b, l, g, n)
    const float* D;        // (h)
    const float* states;   // (b, chunks, h, p, n) at chunk starts
    const float* dstates;  // (b, chunks, h, p, n) gradients at chunk ends
    float* out;            // y or dx (b, l, h, p); dC or dB of each head (b, l, h, n)
    float* rowpart;        // (b, h, l, row_slots) the backward's row dot products
};

// One block: tile (r-tile, j-tile) of chunk bhc; blockIdx.x = bhc · tiles(min(chunk, l)) ·
// tiles(J) + r-tile · tiles(J) + j-tile with J = p (y, dXD) or n (dC, dB).
template <int kMode>
__device__ __forceinline__ void chunk_product(ProductShared& sh, const ProductArgs& a, const DtArgs& dta,
                                              const Dims& d) {
    constexpr bool kOnP = kMode == kY || kMode == kDx;
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const int jtiles = tiles(kOnP ? d.p : d.n), per_chunk = tiles(min(d.chunk, d.l)) * jtiles;
    const int tile = (int)(blockIdx.x % per_chunk), jt = tile % jtiles;
    const Where w = locate(d, blockIdx.x / per_chunk);
    const int r0 = tile / jtiles * kTile, j0 = jt * kTile;
    if (r0 >= w.q) return;  // a row tile past the end of the last chunk: the whole block leaves
    chunk_decay(dta, d, w, sh.sdt, sh.ss, nullptr, sh.scratch);
    const int hp = d.h * d.p, gn = d.g * d.n;
    const long long x0 = x_row0(d, w);
    const Rows X = {a.x + x0, hp, d.p};
    const Rows Bm = {a.B + bc_row0(d, w), gn, d.n}, Cm = {a.C + bc_row0(d, w), gn, d.n};
    const Rows DY = {a.dy ? a.dy + x0 : nullptr, hp, d.p};
    const float* H = a.states ? a.states + state0(d, w) : nullptr;
    const float* dH = a.dstates ? a.dstates + state0(d, w) : nullptr;
    // (Q, K, V, state) of the table in the header comment; X stands for XD where *_is_xd.
    const Product pr = kMode == kY    ? Product{Cm, Bm, X, H, d.n}
                       : kMode == kDx ? Product{Bm, Cm, DY, dH, d.n}
                       : kMode == kDc ? Product{DY, X, Bm, H, d.n}
                                      : Product{X, DY, Cm, dH, d.n};
    const int slots = row_slots(d), pt = tiles(d.p), nt = tiles(d.n);
    float* part0 = a.rowpart ? a.rowpart + (((long long)w.bi * d.h + w.hh) * d.l + w.t0) * slots : nullptr;
    // Sums v over the tile's columns of row r and writes it into the row's slot.
    auto row_dot = [&](int r, int slot, float v) {
        v = row_sum(v);
        if (tx == 0 && r < w.q) part0[(long long)r * slots + slot] = v;
    };
    float acc[kPer][kPer];
    off_chunk_term<kMode>(sh, pr, w.q, r0, j0, acc);
    if (kMode == kDx) {
        // dXD's off-chunk part dotted with x: Σ_t Δ_t x_t · (e^{S-s_t} dH B_t) is part of dS. The
        // x tile goes through shared memory (vs is free until in_chunk_term's first barrier):
        // loaded straight into registers, 16 values per thread in flight spill the kernel.
        stage_tile(&sh.vs[0][0], kTile, X, sh.sdt, r0, w.q, j0);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            float v = 0.0f;
#pragma unroll
            for (int jj = 0; jj < kPer; ++jj) v += sh.vs[ty + kSide * i][tx + kSide * jj] * acc[i][jj];
            row_dot(r0 + ty + kSide * i, 3 * jt + 1, v);
        }
    }
    in_chunk_term<kMode>(sh, pr, w.q, r0, j0, acc);
    if (kMode == kDx) {
        // The x and dy tiles of the epilogue, as above.
        __syncthreads();  // the last column tile's ms and vs are consumed
        stage_tile(&sh.vs[0][0], kTile, X, sh.sdt, r0, w.q, j0);
        stage_tile(&sh.ms[0][0], kTile + 16, DY, sh.sdt, r0, w.q, j0);
        __syncthreads();
    }
    const long long out0 = kOnP ? x0 : (((long long)w.bi * d.l + w.t0) * d.h + w.hh) * d.n;
    const int out_stride = kOnP ? hp : d.h * d.n;
    const float dskip = a.D ? a.D[w.hh] : 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int r = r0 + ty + kSide * i;
        const bool row_in = r < w.q;
        float dot = 0.0f, x_dy = 0.0f;
#pragma unroll
        for (int jj = 0; jj < kPer; ++jj) {
            const int j = j0 + tx + kSide * jj;
            const bool in = row_in && j < (kOnP ? d.p : d.n);
            const long long o = out0 + (long long)r * out_stride + j;
            if (kMode == kY) {
                if (in) a.out[o] = acc[i][jj] + dskip * load(X, sh.sdt, r, w.q, j);
            } else if (kMode == kDx) {
                const float xv = sh.vs[ty + kSide * i][tx + kSide * jj], g = sh.ms[ty + kSide * i][tx + kSide * jj];
                if (in) a.out[o] += sh.sdt[r] * acc[i][jj] + dskip * g;
                dot += xv * acc[i][jj];
                x_dy += xv * g;
            } else {
                if (in) a.out[o] = acc[i][jj];
                dot += load(kMode == kDc ? Cm : Bm, sh.sdt, r, w.q, j) * acc[i][jj];
            }
        }
        if (kMode == kDx) {
            row_dot(r, 3 * jt, dot);
            row_dot(r, 3 * jt + 2, x_dy);
        }
        if (kMode == kDc || kMode == kDb) row_dot(r, 3 * pt + (kMode == kDb ? nt : 0) + jt, dot);
    }
}

// ---- chunk_ddt: from ds to ddt and the partials of dA, dD, d(dt_bias) ------------------------------

struct DdtShared {
    float sdt[kMaxChunk];
    float ss[kMaxChunk];
    float sgrad[kMaxChunk];
    float scratch[kWarps];
};

// Σ_{t' ≥ t} v_t' over the block (thread t holds v_t), in a fixed order. Begins with a barrier, so
// that it may follow block_sum on the same scratch.
__device__ __forceinline__ float block_suffix_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const float down = __shfl_down_sync(FULL_MASK, v, off);
        if (lane + off < 32) v += down;
    }
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float after = 0.0f;
    for (int k = warp + 1; k < kWarps; ++k) after += scratch[k];
    return v + after;
}

// One block per chunk bhc = blockIdx.x, thread t on position t: reads the row dot products of the
// product blocks and the chunk's start state and end-state gradient, adds d(raw dt) into ddt
// (b, l, h) and writes the chunk's partials (b, chunks, h) of dA, dD and d(dt_bias).
__device__ __forceinline__ void chunk_ddt(DdtShared& sh, const DtArgs& dta, const float* __restrict__ states,
                                          const float* __restrict__ dstates, const float* __restrict__ rowpart,
                                          float* __restrict__ ddt, float* __restrict__ da_part,
                                          float* __restrict__ dd_part, float* __restrict__ ddb_part, const Dims& d) {
    const int t = threadIdx.x;
    const Where w = locate(d, blockIdx.x);
    chunk_decay(dta, d, w, sh.sdt, sh.ss, sh.sgrad, sh.scratch);
    const int slots = row_slots(d), pt = tiles(d.p), nt = tiles(d.n);
    float x_dxd = 0.0f, x_dstate = 0.0f, x_dy = 0.0f, ds = 0.0f;
    if (t < w.q) {
        const float* row = rowpart + ((((long long)w.bi * d.h + w.hh) * d.l + w.t0 + t) * slots);
        for (int k = 0; k < pt; ++k) {
            x_dxd += row[3 * k];
            x_dstate += row[3 * k + 1];
            x_dy += row[3 * k + 2];
        }
        for (int k = 0; k < nt; ++k) ds += row[3 * pt + k] - row[3 * pt + nt + k];
    }
    const long long s0 = state0(d, w), pn = (long long)d.p * d.n;
    float h_dh = 0.0f;
    for (long long e = t; e < pn; e += kThreads) h_dh += states[s0 + e] * dstates[s0 + e];
    // S enters every decay to the chunk's end: e^S H and e^{S - s_t} XD_t ⊗ B_t.
    const float state_part = __expf(sh.ss[w.q - 1]) * block_sum(h_dh, sh.scratch);
    const float dS = state_part + block_sum(sh.sdt[t] * x_dstate, sh.scratch);
    if (t == w.q - 1) ds += dS;
    const float ds_after = block_suffix_sum(ds, sh.scratch);
    const float draw = (x_dxd + dta.A[w.hh] * ds_after) * sh.sgrad[t];
    if (t < w.q) ddt[((long long)w.bi * d.l + w.t0 + t) * d.h + w.hh] += draw;
    const float da = block_sum(sh.sdt[t] * ds_after, sh.scratch);
    const float dd = block_sum(x_dy, sh.scratch);
    const float ddb = block_sum(draw, sh.scratch);
    if (t == 0) {
        const long long ci = chunk_index(d, w);
        da_part[ci] = da;
        dd_part[ci] = dd;
        ddb_part[ci] = ddb;
    }
}

}  // namespace ssd
