//! The SSD scan on the CPU in its chunked matmul form (Dao & Gu 2024, §6 and Listing 1), in
//! three passes as the CUDA kernels do: every (sequence, chunk, group) block at once, then the
//! pass of states over chunks (elementwise, per head), then every block again. For a chunk of q
//! positions with cumulative log-decays s_t = Σ_{τ≤t} Δ_τ A (S = s_{q-1}), the chunk-start state
//! H (p, n) and xd_t = Δ_t x_t:
//!
//! ```text
//! M      = (C Bᵀ) ∘ exp(s_t - s_τ) on τ ≤ t, 0 above      (q, q)
//! Y      = M · XD + diag(e^s) · C · Hᵀ + D · X             (q, p)
//! H_next = e^S · H + XDᵀ · diag(e^{S - s}) · B             (p, n)
//! ```
//!
//! C Bᵀ is computed once for the heads of a group, and the products with the states take every
//! head of the group at once ((q, heads · p) against (heads · p, n)), so that the matrices are
//! as large as the shapes allow. The backward runs the same products transposed: the gradient
//! that each chunk's outputs send to its start state, the reverse pass of ∂L/∂H over chunks,
//! then each block's gradients; the gradient of each s_t is turned into that of each Δ_t by a
//! reverse cumulative sum. Every block owns its rows of y, dx, dt, dB and dC and its states, and
//! the sums over heads and chunks run in a fixed order, so results do not depend on scheduling.

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder, s};
use rayon::prelude::*;

use super::SsdDims;
use crate::backend::cpu::SharedMut;
use crate::float::Float;
use crate::ops::linear::cpu::{gemm_views, view, view_mut};
use ssm_kernels::ssd::{SsdGradsOf, SsdInputsOf};

/// Δ after bias, softplus and limits, and dΔ/d(raw dt): 0 where a limit binds (torch's `clamp`).
#[inline(always)]
fn dt_and_grad<T: Float>(raw: T, softplus: bool, [lo, hi]: [T; 2]) -> (T, T) {
    let (v, dv) = if softplus {
        (
            raw.fast_softplus(),
            T::one() / (T::one() + (-raw).fast_exp()),
        )
    } else {
        (raw, T::one())
    };
    if v < lo {
        (lo, T::zero())
    } else if v > hi {
        (hi, T::zero())
    } else {
        (v, dv)
    }
}

/// Rows `rows` × `cols` of `data` from `start`, `stride` apart.
fn strided<T>(
    data: &[T],
    start: usize,
    rows: usize,
    cols: usize,
    stride: usize,
) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols).strides((stride, 1)), &data[start..])
        .expect("ssd: caller checked the sizes")
}

/// The same rows of a shared output, for writing. SAFETY: no other live reference reaches any
/// of them while the view lives.
unsafe fn strided_mut<T>(
    buf: &SharedMut<T>,
    start: usize,
    rows: usize,
    cols: usize,
    stride: usize,
) -> ArrayViewMut2<'_, T> {
    assert!(
        rows == 0 || start + (rows - 1) * stride + cols <= buf.len,
        "ssd: rows out of bounds"
    );
    // SAFETY: in bounds (checked above); exclusive by the caller's promise.
    unsafe { ArrayViewMut2::from_shape_ptr((rows, cols).strides((stride, 1)), buf.ptr.add(start)) }
}

/// One (sequence, chunk, group) block: positions t0..t0+q of sequence `bi`, the heads of group
/// `gi` (j = 0..heads per group, head `gi · hpg + j`).
#[derive(Clone, Copy)]
struct Block {
    dims: SsdDims,
    bi: usize,
    c: usize,
    gi: usize,
    t0: usize,
    q: usize,
}

impl Block {
    fn count(dims: SsdDims) -> usize {
        dims.b * dims.chunks() * dims.g
    }

    fn of(dims: SsdDims, i: usize) -> Self {
        let chunks = dims.chunks();
        let (bi, c, gi) = (i / (chunks * dims.g), i / dims.g % chunks, i % dims.g);
        let t0 = c * dims.chunk;
        Block {
            dims,
            bi,
            c,
            gi,
            t0,
            q: dims.chunk.min(dims.l - t0),
        }
    }

    fn hpg(&self) -> usize {
        self.dims.heads_per_group()
    }

    fn head(&self, j: usize) -> usize {
        self.gi * self.hpg() + j
    }

    /// Columns of the group's heads in a row of x or y: hpg · p.
    fn width(&self) -> usize {
        self.hpg() * self.dims.p
    }

    /// Offset of the group's first head in x / y (b, l, h, p) at chunk position 0.
    fn x(&self) -> usize {
        let SsdDims { l, h, p, .. } = self.dims;
        ((self.bi * l + self.t0) * h + self.head(0)) * p
    }

    /// The chunk's rows of the group's heads in x, y, dy or dx: (q, hpg · p), rows h · p apart.
    fn rows<'a, T>(&self, data: &'a [T]) -> ArrayView2<'a, T> {
        let SsdDims { h, p, .. } = self.dims;
        strided(data, self.x(), self.q, self.width(), h * p)
    }

    /// SAFETY: as for [`strided_mut`]; these rows belong to this block alone.
    unsafe fn rows_mut<'a, T>(&self, buf: &'a SharedMut<T>) -> ArrayViewMut2<'a, T> {
        let SsdDims { h, p, .. } = self.dims;
        // SAFETY: forwarded from the caller.
        unsafe { strided_mut(buf, self.x(), self.q, self.width(), h * p) }
    }

    /// Offset of head j's dt (b, l, h) at chunk position t.
    fn dt(&self, t: usize, j: usize) -> usize {
        (self.bi * self.dims.l + self.t0 + t) * self.dims.h + self.head(j)
    }

    /// Offset of the group's B / C (b, l, g, n) at chunk position 0 (rows g · n apart).
    fn bc(&self) -> usize {
        let SsdDims { l, g, n, .. } = self.dims;
        ((self.bi * l + self.t0) * g + self.gi) * n
    }

    /// The chunk's rows of B, C, dB or dC: (q, n).
    fn bc_rows<'a, T>(&self, data: &'a [T]) -> ArrayView2<'a, T> {
        let SsdDims { g, n, .. } = self.dims;
        strided(data, self.bc(), self.q, n, g * n)
    }

    /// SAFETY: as for [`strided_mut`]; these rows belong to this block alone.
    unsafe fn bc_rows_mut<'a, T>(&self, buf: &'a SharedMut<T>) -> ArrayViewMut2<'a, T> {
        let SsdDims { g, n, .. } = self.dims;
        // SAFETY: forwarded from the caller.
        unsafe { strided_mut(buf, self.bc(), self.q, n, g * n) }
    }

    /// Offset of the group's states of chunk `c` in (b, chunks, h, p, n): (hpg · p, n) in a row.
    fn states_at(&self, c: usize) -> usize {
        let SsdDims { h, p, n, .. } = self.dims;
        ((self.bi * self.dims.chunks() + c) * h + self.head(0)) * p * n
    }

    /// Index of head j's entry in (b, chunks, h).
    fn scalar(&self, j: usize) -> usize {
        (self.bi * self.dims.chunks() + self.c) * self.dims.h + self.head(j)
    }
}

/// What a block's passes compute from the inputs, and their scratch: per head (hpg, q) Δ,
/// dΔ/d(raw dt) and s; XD = Δ·x (q, hpg · p); C Bᵀ, one head's M and its decays exp(s_t - s_τ)
/// (q, q); two (q, hpg · p) temporaries; and for the backward dXD, dM, d(C Bᵀ) and ds.
struct Scratch<T> {
    dt: Vec<T>,
    dt_grad: Vec<T>,
    s: Vec<T>,
    xd: Vec<T>,
    cb: Vec<T>,
    m: Vec<T>,
    decay: Vec<T>,
    tmp: Vec<T>,
    tmp2: Vec<T>,
    dxd: Vec<T>,
    dm: Vec<T>,
    dcb: Vec<T>,
    ds: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new(dims: SsdDims, backward: bool) -> Self {
        let q = dims.chunk.min(dims.l);
        let (hpg, w) = (dims.heads_per_group(), dims.heads_per_group() * dims.p);
        let z = |len: usize| vec![T::zero(); len];
        let zb = |len: usize| if backward { z(len) } else { Vec::new() };
        Scratch {
            dt: z(hpg * q),
            dt_grad: z(hpg * q),
            s: z(hpg * q),
            xd: z(q * w),
            cb: z(q * q),
            m: z(q * q),
            decay: z(q * q),
            tmp: z(q * w),
            tmp2: z(q * w),
            dxd: zb(q * w),
            dm: zb(q * q),
            dcb: zb(q * q),
            ds: zb(hpg * q),
        }
    }

    /// Δ, dΔ/d(raw dt) and s of every head of the block.
    fn load_decays(&mut self, inp: &SsdInputsOf<&[T]>, blk: &Block) {
        let q = blk.q;
        let limit = inp.dt_limit.map(T::from_f64);
        for j in 0..blk.hpg() {
            let hh = blk.head(j);
            let (a, bias) = (inp.a[hh], inp.dt_bias.map_or(T::zero(), |b| b[hh]));
            let mut s = T::zero();
            for t in 0..q {
                let raw = inp.dt[blk.dt(t, j)] + bias;
                let (dt, grad) = dt_and_grad(raw, inp.dt_softplus, limit);
                (self.dt[j * q + t], self.dt_grad[j * q + t]) = (dt, grad);
                s += dt * a;
                self.s[j * q + t] = s;
            }
        }
    }

    /// Everything `load_decays` does, XD and C Bᵀ.
    fn load(&mut self, inp: &SsdInputsOf<&[T]>, blk: &Block) {
        self.load_decays(inp, blk);
        let (q, p, w) = (blk.q, blk.dims.p, blk.width());
        let xv = blk.rows(inp.x);
        for t in 0..q {
            for j in 0..blk.hpg() {
                let dt = self.dt[j * q + t];
                let x = xv.slice(s![t, j * p..(j + 1) * p]);
                for (o, &xv) in self.xd[t * w + j * p..][..p].iter_mut().zip(x) {
                    *o = dt * xv;
                }
            }
        }
        let (cv, bv) = (blk.bc_rows(inp.c), blk.bc_rows(inp.b));
        let cb = &mut view_mut(&mut self.cb[..q * q], q, q);
        gemm_views(T::one(), &cv, &bv.t(), T::zero(), cb);
    }

    /// Head j's M and its decays, zero above the diagonal.
    fn mask(&mut self, j: usize, q: usize) {
        let s = &self.s[j * q..(j + 1) * q];
        for t in 0..q {
            let (decay, m) = (&mut self.decay[t * q..][..q], &mut self.m[t * q..][..q]);
            let cb = &self.cb[t * q..][..=t];
            for ((d, o), (&c, &st)) in decay.iter_mut().zip(m.iter_mut()).zip(cb.iter().zip(s)) {
                *d = (s[t] - st).fast_exp();
                *o = c * *d;
            }
            decay[t + 1..].fill(T::zero());
            m[t + 1..].fill(T::zero());
        }
    }

    /// Columns of head j in a (q, hpg · p) matrix.
    fn head_cols<'a>(m: &'a [T], blk: &Block, j: usize) -> ArrayView2<'a, T> {
        let p = blk.dims.p;
        view(&m[..blk.q * blk.width()], blk.q, blk.width()).slice_move(s![.., j * p..(j + 1) * p])
    }
}

/// The group's states of one chunk as a (hpg · p, n) matrix.
fn group_states<'a, T>(states: &'a [T], blk: &Block, c: usize) -> ArrayView2<'a, T> {
    let n = blk.dims.n;
    view(
        &states[blk.states_at(c)..][..blk.width() * n],
        blk.width(),
        n,
    )
}

/// The pass of states over chunks, per (sequence, head) and elementwise. On entry `slots` (b,
/// chunks, h, p, n) holds what each chunk adds to the state it passes on; the pass carries
/// `init` (b, h, p, n; zero when absent) through the chunks in order (in reverse with
/// `reverse`), each passing on e^S times what it received (S from `decays`, (b, chunks, h)) plus
/// its own, and leaves in each slot what that chunk received and in `end` what the last one
/// passed on. Forward: the chunk-start states and the last state, from each chunk's own end
/// state and h0. Backward: each chunk's end-state gradient and dh0, from the gradients that each
/// chunk's outputs send to its start state and dlast.
fn pass_states<T: Float>(
    dims: SsdDims,
    slots: &mut [T],
    decays: &[T],
    init: Option<&[T]>,
    reverse: bool,
    end: &mut [T],
) {
    let SsdDims { h, p, n, .. } = dims;
    let (chunks, pn) = (dims.chunks(), p * n);
    let shared = SharedMut::new(slots);
    end.par_chunks_exact_mut(pn)
        .enumerate()
        .for_each(|(i, carried)| {
            let (bi, hh) = (i / h, i % h);
            match init {
                Some(v) => carried.copy_from_slice(&v[i * pn..][..pn]),
                None => carried.fill(T::zero()),
            }
            for k in 0..chunks {
                let c = if reverse { chunks - 1 - k } else { k };
                let at = (bi * chunks + c) * h + hh;
                let e = decays[at];
                // SAFETY: chunk c's slot of this (sequence, head) belongs to this task alone.
                let own = unsafe { shared.slice(at * pn, pn) };
                for (o, cv) in own.iter_mut().zip(carried.iter_mut()) {
                    let received = *cv;
                    *cv = e * received + *o;
                    *o = received;
                }
            }
        });
}

/// y (b, l, h, p) and the last state (b, h, p, n); with `saved`, the state at every chunk start
/// (b, chunks, h, p, n).
pub fn ssd_fwd<T: Float>(
    inp: &SsdInputsOf<&[T]>,
    dims: SsdDims,
    y: &mut [T],
    last: &mut [T],
    saved: Option<&mut [T]>,
) {
    let mut own_states;
    let states = match saved {
        Some(s) => s,
        None => {
            own_states = vec![T::zero(); dims.chunk_states_len()];
            &mut own_states[..]
        }
    };
    let mut decays = vec![T::zero(); dims.b * dims.chunks() * dims.h];
    let ys = SharedMut::new(y);
    {
        let (st, dec) = (SharedMut::new(states), SharedMut::new(&mut decays));
        (0..Block::count(dims)).into_par_iter().for_each_init(
            || Scratch::new(dims, false),
            |sc, i| {
                let blk = Block::of(dims, i);
                // SAFETY: the block's rows of y, its chunk's states of its heads and their
                // decays belong to it alone.
                unsafe { fwd_within(inp, &blk, sc, &ys, &st, &dec) }
            },
        );
    }
    pass_states(dims, states, &decays, inp.h0, false, last);
    let states = &*states;
    (0..Block::count(dims)).into_par_iter().for_each_init(
        || Scratch::new(dims, false),
        |sc, i| {
            let blk = Block::of(dims, i);
            if blk.c == 0 && inp.h0.is_none() {
                return;
            }
            sc.load_decays(inp, &blk);
            // y += diag(e^s) C Hᵀ, every head of the group in one product.
            let (q, p, w) = (blk.q, dims.p, blk.width());
            let hs = group_states(states, &blk, blk.c);
            let tmp = &mut sc.tmp[..q * w];
            gemm_views(
                T::one(),
                &blk.bc_rows(inp.c),
                &hs.t(),
                T::zero(),
                &mut view_mut(tmp, q, w),
            );
            // SAFETY: the block's rows of y belong to it alone.
            let mut yv = unsafe { blk.rows_mut(&ys) };
            for t in 0..q {
                let mut row = yv.row_mut(t);
                let row = row.as_slice_mut().expect("ssd: rows are contiguous");
                for j in 0..blk.hpg() {
                    let e = sc.s[j * q + t].fast_exp();
                    let src = &tmp[t * w + j * p..][..p];
                    for (o, &v) in row[j * p..(j + 1) * p].iter_mut().zip(src) {
                        *o += e * v;
                    }
                }
            }
        },
    );
}

/// The forward within one block: its rows of y from the chunk alone (M · XD + D · x), the state
/// it ends in from a zero start into its slot of `states`, and its heads' e^S into `decays`.
///
/// SAFETY: nothing else reaches those rows, slots and decays while it runs.
unsafe fn fwd_within<T: Float>(
    inp: &SsdInputsOf<&[T]>,
    blk: &Block,
    sc: &mut Scratch<T>,
    ys: &SharedMut<T>,
    states: &SharedMut<T>,
    decays: &SharedMut<T>,
) {
    let p = blk.dims.p;
    let (q, w) = (blk.q, blk.width());
    sc.load(inp, blk);
    // SAFETY: the caller's promise.
    let mut yv = unsafe { blk.rows_mut(ys) };
    let xv = blk.rows(inp.x);
    for j in 0..blk.hpg() {
        sc.mask(j, q);
        let mut yj = yv.slice_mut(s![.., j * p..(j + 1) * p]);
        let xd = Scratch::head_cols(&sc.xd, blk, j);
        gemm_views(
            T::one(),
            &view(&sc.m[..q * q], q, q),
            &xd,
            T::zero(),
            &mut yj,
        );
        if let Some(d) = inp.d_skip {
            let dh = d[blk.head(j)];
            yj.zip_mut_with(&xv.slice(s![.., j * p..(j + 1) * p]), |o, &x| *o += dh * x);
        }
    }
    // The chunk's own end state: XDᵀ diag(e^{S - s}) B, every head at once.
    let xw = &mut sc.tmp[..q * w];
    for t in 0..q {
        for j in 0..blk.hpg() {
            let wt = (sc.s[j * q + q - 1] - sc.s[j * q + t]).fast_exp();
            for (o, &v) in xw[t * w + j * p..][..p]
                .iter_mut()
                .zip(&sc.xd[t * w + j * p..][..p])
            {
                *o = wt * v;
            }
        }
    }
    // SAFETY: the caller's promise.
    unsafe { own_state(blk, &sc.s, xw, blk.bc_rows(inp.b), states, decays) };
}

/// Sets the block's slot of `slots` (b, chunks, h, p, n) to `rowsᵀ · v`, from its (q, hpg · p)
/// `rows` and the chunk's (q, n) rows `v` of B or C, and its heads' e^S (from their log-decays
/// `s`) in `decays` (b, chunks, h).
///
/// SAFETY: nothing else reaches that slot and those decays while it runs.
unsafe fn own_state<T: Float>(
    blk: &Block,
    s: &[T],
    rows: &[T],
    v: ArrayView2<'_, T>,
    slots: &SharedMut<T>,
    decays: &SharedMut<T>,
) {
    let (q, w, n) = (blk.q, blk.width(), blk.dims.n);
    // SAFETY: the caller's promise.
    let own = unsafe { slots.slice(blk.states_at(blk.c), w * n) };
    gemm_views(
        T::one(),
        &view(&rows[..q * w], q, w).t(),
        &v,
        T::zero(),
        &mut view_mut(own, w, n),
    );
    for j in 0..blk.hpg() {
        // SAFETY: the caller's promise.
        let slot = unsafe { decays.slice(blk.scalar(j), 1) };
        slot[0] = s[j * q + q - 1].fast_exp();
    }
}

/// Adds every gradient of the inputs given dy (b, l, h, p), optionally dlast (b, h, p, n), and
/// the chunk-start states of the forward.
pub fn ssd_bwd<T: Float>(
    inp: &SsdInputsOf<&[T]>,
    dims: SsdDims,
    saved: &[T],
    dy: &[T],
    dlast: Option<&[T]>,
    mut grads: SsdGradsOf<&mut [T]>,
) {
    let SsdDims { b, h, p, n, .. } = dims;
    let scalars_len = b * dims.chunks() * h;
    // What each chunk's outputs send to its start state, then (after the pass) the gradient of
    // the state each chunk ends in.
    let mut dstates = vec![T::zero(); dims.chunk_states_len()];
    let mut decays = vec![T::zero(); scalars_len];
    {
        let (ds, dec) = (SharedMut::new(&mut dstates), SharedMut::new(&mut decays));
        (0..Block::count(dims)).into_par_iter().for_each_init(
            || Scratch::new(dims, false),
            |sc, i| {
                let blk = Block::of(dims, i);
                sc.load_decays(inp, &blk);
                let (q, w) = (blk.q, blk.width());
                let dye = &mut sc.tmp[..q * w];
                let dyv = blk.rows(dy);
                for t in 0..q {
                    let row = dyv.row(t);
                    let row = row.as_slice().expect("ssd: rows are contiguous");
                    for j in 0..blk.hpg() {
                        let e = sc.s[j * q + t].fast_exp();
                        for (o, &g) in dye[t * w + j * p..][..p].iter_mut().zip(&row[j * p..]) {
                            *o = e * g;
                        }
                    }
                }
                // SAFETY: the block's slot and its heads' decays belong to it alone.
                unsafe { own_state(&blk, &sc.s, dye, blk.bc_rows(inp.c), &ds, &dec) };
            },
        );
    }
    let mut dh0 = vec![T::zero(); b * h * p * n];
    pass_states(dims, &mut dstates, &decays, dlast, true, &mut dh0);
    if let Some(g) = grads.dh0.as_deref_mut() {
        for (o, &v) in g.iter_mut().zip(&dh0) {
            *o += v;
        }
    }
    // Per (sequence, chunk, head): dA, dD, d(dt_bias).
    let mut scalars = vec![[T::zero(); 3]; scalars_len];
    {
        let out = BwdOut {
            dx: SharedMut::new(grads.dx),
            ddt: SharedMut::new(grads.ddt),
            db: SharedMut::new(grads.db),
            dc: SharedMut::new(grads.dc),
            scalars: SharedMut::new(&mut scalars),
        };
        (0..Block::count(dims)).into_par_iter().for_each_init(
            || Scratch::new(dims, true),
            |sc, i| {
                let blk = Block::of(dims, i);
                let (hs, dhs) = (
                    group_states(saved, &blk, blk.c),
                    group_states(&dstates, &blk, blk.c),
                );
                // SAFETY: the block's rows of dx, dt, dB and dC and its scalars belong to
                // it alone.
                unsafe { bwd_block(inp, &blk, sc, dy, (hs, dhs), &out) }
            },
        );
    }
    for (i, sc) in scalars.iter().enumerate() {
        let hh = i % h;
        grads.da[hh] += sc[0];
        if let Some(dd) = grads.dd_skip.as_deref_mut() {
            dd[hh] += sc[1];
        }
        if let Some(db) = grads.ddt_bias.as_deref_mut() {
            db[hh] += sc[2];
        }
    }
}

/// The outputs the backward's blocks share, each writing only its own rows.
struct BwdOut<T> {
    dx: SharedMut<T>,
    ddt: SharedMut<T>,
    db: SharedMut<T>,
    dc: SharedMut<T>,
    scalars: SharedMut<[T; 3]>,
}

/// The backward of one block given its chunk-start states `hs` and the gradient `dhs` of the
/// states it ends in (both (hpg · p, n)): adds its rows of dx, dt, dB and dC, and sets its
/// heads' dA, dD and d(dt_bias) partials.
///
/// SAFETY: nothing else reaches those rows and partials while it runs.
unsafe fn bwd_block<T: Float>(
    inp: &SsdInputsOf<&[T]>,
    blk: &Block,
    sc: &mut Scratch<T>,
    dy: &[T],
    (hs, dhs): (ArrayView2<'_, T>, ArrayView2<'_, T>),
    out: &BwdOut<T>,
) {
    let SsdDims { p, .. } = blk.dims;
    let (q, w, hpg) = (blk.q, blk.width(), blk.hpg());
    sc.load(inp, blk);
    let dyv = blk.rows(dy);
    let (bv, cv) = (blk.bc_rows(inp.b), blk.bc_rows(inp.c));
    // SAFETY: the caller's promise.
    let (mut db, mut dc) = unsafe { (blk.bc_rows_mut(&out.db), blk.bc_rows_mut(&out.dc)) };
    sc.ds.fill(T::zero());
    sc.dcb.fill(T::zero());
    // Within the chunk: dXD = Mᵀ dY and dM = dY XDᵀ per head, through the mask into ds and
    // d(C Bᵀ), summed over the heads in order.
    for j in 0..hpg {
        sc.mask(j, q);
        let dyj = dyv.slice(s![.., j * p..(j + 1) * p]);
        let mut dxd = view_mut(&mut sc.dxd[..q * w], q, w);
        let mut dxd_j = dxd.slice_mut(s![.., j * p..(j + 1) * p]);
        let m = view(&sc.m[..q * q], q, q);
        gemm_views(T::one(), &m.t(), &dyj, T::zero(), &mut dxd_j);
        let xd = Scratch::head_cols(&sc.xd, blk, j);
        let dm = &mut sc.dm[..q * q];
        gemm_views(T::one(), &dyj, &xd.t(), T::zero(), &mut view_mut(dm, q, q));
        let ds = &mut sc.ds[j * q..(j + 1) * q];
        for t in 0..q {
            let row = t * q..t * q + t + 1;
            let (dm, m) = (&dm[row.clone()], &sc.m[row.clone()]);
            let (dcb, decay) = (&mut sc.dcb[row.clone()], &sc.decay[row]);
            let mut to_t = T::zero();
            for (tau, (&g, &mv)) in dm.iter().zip(m).enumerate() {
                let pm = g * mv;
                to_t += pm;
                ds[tau] -= pm;
                dcb[tau] += g * decay[tau];
            }
            ds[t] += to_t;
        }
    }
    let dcb = view(&sc.dcb[..q * q], q, q);
    gemm_views(T::one(), &dcb, &bv, T::one(), &mut dc);
    gemm_views(T::one(), &dcb.t(), &cv, T::one(), &mut db);
    // From the chunk-start states: Y_off = diag(e^s) C Hᵀ.
    let yoff = &mut sc.tmp[..q * w];
    gemm_views(T::one(), &cv, &hs.t(), T::zero(), &mut view_mut(yoff, q, w));
    let dye = &mut sc.tmp2[..q * w];
    for t in 0..q {
        let row = dyv.row(t);
        let row = row.as_slice().expect("ssd: rows are contiguous");
        for j in 0..hpg {
            let e = sc.s[j * q + t].fast_exp();
            let mut dot = T::zero();
            for k in 0..p {
                let (at, g) = (t * w + j * p + k, row[j * p + k]);
                dot += g * yoff[at];
                dye[at] = e * g;
            }
            sc.ds[j * q + t] += e * dot;
        }
    }
    gemm_views(T::one(), &view(dye, q, w), &hs, T::one(), &mut dc);
    // Into the chunk's end states: H_next = e^S H + XDᵀ diag(e^{S - s}) B.
    let u = &mut sc.tmp[..q * w];
    gemm_views(T::one(), &bv, &dhs.t(), T::zero(), &mut view_mut(u, q, w));
    let xw = &mut sc.tmp2[..q * w];
    let mut d_big_s = vec![T::zero(); hpg];
    for t in 0..q {
        for (j, dbs) in d_big_s.iter_mut().enumerate() {
            let wt = (sc.s[j * q + q - 1] - sc.s[j * q + t]).fast_exp();
            let mut r = T::zero();
            for k in 0..p {
                let at = t * w + j * p + k;
                r += sc.xd[at] * u[at];
                sc.dxd[at] += wt * u[at];
                xw[at] = wt * sc.xd[at];
            }
            sc.ds[j * q + t] -= wt * r;
            *dbs += wt * r;
        }
    }
    gemm_views(T::one(), &view(xw, q, w), &dhs, T::one(), &mut db);
    for (j, dbs) in d_big_s.into_iter().enumerate() {
        let hh = blk.head(j);
        let rows = j * p..(j + 1) * p;
        let (h_j, dh_j) = (hs.slice(s![rows.clone(), ..]), dhs.slice(s![rows, ..]));
        let e_big = sc.s[j * q + q - 1].fast_exp();
        let carried = h_j.iter().zip(dh_j.iter()).map(|(&a, &b)| a * b).sum::<T>();
        sc.ds[j * q + q - 1] += dbs + e_big * carried;
        // dx_t += Δ_t dXD_t + D dy_t; d(raw dt_t) += (ds_{≥t} A + x_t · dXD_t) dΔ/draw.
        let a = inp.a[hh];
        let dskip = inp.d_skip.map_or(T::zero(), |d| d[hh]);
        let mut part = [T::zero(); 3];
        let mut acc = T::zero();
        for t in (0..q).rev() {
            acc += sc.ds[j * q + t];
            let (dt, dt_grad) = (sc.dt[j * q + t], sc.dt_grad[j * q + t]);
            let start = blk.x() + t * blk.dims.h * p + j * p;
            // SAFETY: the caller's promise: row t of head hh in dx and its dt are this block's.
            let (dx, ddt) = unsafe { (out.dx.slice(start, p), out.ddt.slice(blk.dt(t, j), 1)) };
            let (x, dyr) = (&inp.x[start..][..p], &dy[start..][..p]);
            let dxd = &sc.dxd[t * w + j * p..][..p];
            let mut xdot = T::zero();
            for k in 0..p {
                xdot += x[k] * dxd[k];
                dx[k] += dt * dxd[k] + dskip * dyr[k];
                part[1] += dyr[k] * x[k];
            }
            part[0] += acc * dt;
            let draw = (acc * a + xdot) * dt_grad;
            ddt[0] += draw;
            part[2] += draw;
        }
        // SAFETY: the caller's promise.
        let slot = unsafe { out.scalars.slice(blk.scalar(j), 1) };
        slot[0] = part;
    }
}
