//! The SSD scan on the CPU in its chunked matmul form (Dao & Gu 2024, §6 and Listing 1), one
//! rayon task per (sequence, head), chunks in order (the backward in reverse), every product
//! through `gemm_views`. For a chunk of q positions with cumulative log-decays s_t = Σ_{τ≤t} Δ_τ A
//! (S = s_{q-1}), the chunk-start state H (p, n) and xd_t = Δ_t x_t:
//!
//! ```text
//! M      = (C Bᵀ) ∘ exp(s_t - s_τ) on τ ≤ t, 0 above      (q, q)
//! Y      = M · XD + diag(e^s) · C · Hᵀ + D · X             (q, p)
//! H_next = e^S · H + XDᵀ · diag(e^{S - s}) · B             (p, n)
//! ```
//!
//! The backward runs the same products transposed, with ∂L/∂H passed from each chunk to the one
//! before; the gradient of each s_t is gathered and turned into that of each Δ_t by a reverse
//! cumulative sum. Each (sequence, head) task owns its rows of y, dx and dt, its states and its
//! own dB, dC rows (summed over the heads of a group afterwards, in head order), so results do
//! not depend on scheduling.

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
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

/// Where one (sequence, head) task reads and writes.
#[derive(Clone, Copy)]
struct Task {
    dims: SsdDims,
    bi: usize,
    hh: usize,
}

impl Task {
    fn of(dims: SsdDims, i: usize) -> Self {
        Task {
            dims,
            bi: i / dims.h,
            hh: i % dims.h,
        }
    }
    /// The chunks as (first position, length).
    fn chunks(&self) -> impl DoubleEndedIterator<Item = (usize, usize)> + ExactSizeIterator {
        let SsdDims { l, chunk, .. } = self.dims;
        (0..self.dims.chunks()).map(move |c| (c * chunk, chunk.min(l - c * chunk)))
    }
    /// Offset of x / y at position t (row stride h·p).
    fn x(&self, t: usize) -> usize {
        let SsdDims { l, h, p, .. } = self.dims;
        ((self.bi * l + t) * h + self.hh) * p
    }
    fn dt(&self, t: usize) -> usize {
        (self.bi * self.dims.l + t) * self.dims.h + self.hh
    }
    /// Offset of B / C at position t (row stride g·n).
    fn bc(&self, t: usize) -> usize {
        let SsdDims { l, g, n, .. } = self.dims;
        ((self.bi * l + t) * g + self.hh / self.dims.heads_per_group()) * n
    }
    /// Offset of this pair's (p, n) state in (b, h, p, n).
    fn state(&self) -> usize {
        (self.bi * self.dims.h + self.hh) * self.dims.p * self.dims.n
    }
    /// Offset of the state at the start of chunk `c` in (b, chunks, h, p, n).
    fn saved(&self, c: usize) -> usize {
        let SsdDims { h, p, n, .. } = self.dims;
        ((self.bi * self.dims.chunks() + c) * h + self.hh) * p * n
    }
}

/// The per-chunk values both passes start from: Δ (q), dΔ/d(raw dt) (q), the cumulative
/// log-decays s (q), XD = Δ·x (q, p) and M (q, q); `decay` keeps exp(s_t - s_τ) (q, q).
struct Chunk<T> {
    dt: Vec<T>,
    dt_grad: Vec<T>,
    s: Vec<T>,
    xd: Vec<T>,
    m: Vec<T>,
    decay: Vec<T>,
}

impl<T: Float> Chunk<T> {
    fn new(dims: SsdDims) -> Self {
        let q = dims.chunk.min(dims.l);
        Chunk {
            dt: vec![T::zero(); q],
            dt_grad: vec![T::zero(); q],
            s: vec![T::zero(); q],
            xd: vec![T::zero(); q * dims.p],
            m: vec![T::zero(); q * q],
            decay: vec![T::zero(); q * q],
        }
    }

    /// Fills every field for the chunk of `q` positions from `t0`.
    fn load(&mut self, inp: &SsdInputsOf<&[T]>, task: &Task, (t0, q): (usize, usize)) {
        let SsdDims { p, g, n, .. } = task.dims;
        let a = inp.a[task.hh];
        let bias = inp.dt_bias.map_or(T::zero(), |b| b[task.hh]);
        let limit = inp.dt_limit.map(T::from_f64);
        let mut s = T::zero();
        for t in 0..q {
            let (dt, grad) = dt_and_grad(inp.dt[task.dt(t0 + t)] + bias, inp.dt_softplus, limit);
            (self.dt[t], self.dt_grad[t]) = (dt, grad);
            s += dt * a;
            self.s[t] = s;
            let x = &inp.x[task.x(t0 + t)..][..p];
            for (o, &xv) in self.xd[t * p..(t + 1) * p].iter_mut().zip(x) {
                *o = dt * xv;
            }
        }
        let cv = strided(inp.c, task.bc(t0), q, n, g * n);
        let bv = strided(inp.b, task.bc(t0), q, n, g * n);
        let m = &mut self.m[..q * q];
        gemm_views(T::one(), &cv, &bv.t(), T::zero(), &mut view_mut(m, q, q));
        for t in 0..q {
            for tau in 0..q {
                let k = t * q + tau;
                if tau <= t {
                    self.decay[k] = (self.s[t] - self.s[tau]).fast_exp();
                    m[k] *= self.decay[k];
                } else {
                    self.decay[k] = T::zero();
                    m[k] = T::zero();
                }
            }
        }
    }
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
    let SsdDims { h, p, g, n, .. } = dims;
    let (ys, lasts) = (SharedMut::new(y), SharedMut::new(last));
    let saved = saved.map(SharedMut::new);
    (0..dims.b * h).into_par_iter().for_each(|i| {
        let task = Task::of(dims, i);
        let mut ch = Chunk::new(dims);
        let mut state = match inp.h0 {
            Some(h0) => h0[task.state()..][..p * n].to_vec(),
            None => vec![T::zero(); p * n],
        };
        let mut ce = vec![T::zero(); ch.s.len() * n];
        for (c, (t0, q)) in task.chunks().enumerate() {
            ch.load(inp, &task, (t0, q));
            if let Some(sv) = &saved {
                // SAFETY: chunk c's state of this (sequence, head) belongs to this task alone.
                unsafe { sv.slice(task.saved(c), p * n) }.copy_from_slice(&state);
            }
            // SAFETY: rows t0..t0+q of head hh in y belong to this task alone.
            let mut yv = unsafe { strided_mut(&ys, task.x(t0), q, p, h * p) };
            gemm_views(
                T::one(),
                &view(&ch.m[..q * q], q, q),
                &view(&ch.xd[..q * p], q, p),
                T::zero(),
                &mut yv,
            );
            let cv = strided(inp.c, task.bc(t0), q, n, g * n);
            for t in 0..q {
                let e = ch.s[t].fast_exp();
                for (o, &cval) in ce[t * n..(t + 1) * n].iter_mut().zip(cv.row(t)) {
                    *o = e * cval;
                }
            }
            let hv = view(&state, p, n);
            gemm_views(
                T::one(),
                &view(&ce[..q * n], q, n),
                &hv.t(),
                T::one(),
                &mut yv,
            );
            if let Some(d) = inp.d_skip {
                let xv = strided(inp.x, task.x(t0), q, p, h * p);
                yv.zip_mut_with(&xv, |o, &x| *o += d[task.hh] * x);
            }
            // H ← e^S H + (diag(e^{S-s}) XD)ᵀ B
            let big_s = ch.s[q - 1];
            for t in 0..q {
                let w = (big_s - ch.s[t]).fast_exp();
                for v in &mut ch.xd[t * p..(t + 1) * p] {
                    *v *= w;
                }
            }
            let bv = strided(inp.b, task.bc(t0), q, n, g * n);
            gemm_views(
                T::one(),
                &view(&ch.xd[..q * p], q, p).t(),
                &bv,
                big_s.fast_exp(),
                &mut view_mut(&mut state, p, n),
            );
        }
        // SAFETY: this pair's last state belongs to this task alone.
        unsafe { lasts.slice(task.state(), p * n) }.copy_from_slice(&state);
    });
}

/// Scratch of one backward task: the gradients of the chunk's XD (q, p), s (q) and M (q, q),
/// two (q, p) temporaries and the state gradient from the chunk's outputs (p, n).
struct BwdScratch<T> {
    dxd: Vec<T>,
    ds: Vec<T>,
    dm: Vec<T>,
    tmp_qp: Vec<T>,
    tmp2_qp: Vec<T>,
    dh_prev: Vec<T>,
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
    let SsdDims {
        b, l, h, p, g, n, ..
    } = dims;
    let hpg = dims.heads_per_group();
    // Per (sequence, head): dB and dC rows (l, n), then dA, dD, d(dt_bias).
    let mut db_heads = vec![T::zero(); b * h * l * n];
    let mut dc_heads = vec![T::zero(); b * h * l * n];
    let mut scalars = vec![[T::zero(); 3]; b * h];
    let dxs = SharedMut::new(grads.dx);
    let ddts = SharedMut::new(grads.ddt);
    let dh0s = grads.dh0.map(SharedMut::new);
    db_heads
        .par_chunks_exact_mut(l * n)
        .zip(dc_heads.par_chunks_exact_mut(l * n))
        .zip(scalars.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((db_h, dc_h), sc))| {
            let task = Task::of(dims, i);
            let mut ch = Chunk::new(dims);
            let qmax = ch.s.len();
            let mut sc_buf = BwdScratch {
                dxd: vec![T::zero(); qmax * p],
                ds: vec![T::zero(); qmax],
                dm: vec![T::zero(); qmax * qmax],
                tmp_qp: vec![T::zero(); qmax * p],
                tmp2_qp: vec![T::zero(); qmax * p],
                dh_prev: vec![T::zero(); p * n],
            };
            let mut dh = match dlast {
                Some(dl) => dl[task.state()..][..p * n].to_vec(),
                None => vec![T::zero(); p * n],
            };
            for (c, (t0, q)) in task.chunks().enumerate().rev() {
                ch.load(inp, &task, (t0, q));
                let hst = &saved[task.saved(c)..][..p * n];
                chunk_bwd(
                    inp,
                    &task,
                    (t0, q),
                    &ch,
                    hst,
                    dy,
                    &mut dh,
                    &mut sc_buf,
                    sc,
                    (db_h, dc_h),
                );
                // dx_t += Δ_t dXD_t + D dy_t; d(raw dt_t) += (dA_t A + x_t · dXD_t) dΔ/draw
                let a = inp.a[task.hh];
                let dskip = inp.d_skip.map_or(T::zero(), |d| d[task.hh]);
                let mut acc = T::zero();
                for t in (0..q).rev() {
                    acc += sc_buf.ds[t];
                    let (xo, dto) = (task.x(t0 + t), task.dt(t0 + t));
                    let x = &inp.x[xo..][..p];
                    let dyr = &dy[xo..][..p];
                    let dxd = &sc_buf.dxd[t * p..(t + 1) * p];
                    // SAFETY: row t0+t of head hh in dx belongs to this task alone.
                    let dx = unsafe { dxs.slice(xo, p) };
                    let mut xdot = T::zero();
                    for j in 0..p {
                        xdot += x[j] * dxd[j];
                        dx[j] += ch.dt[t] * dxd[j] + dskip * dyr[j];
                    }
                    sc[0] += acc * ch.dt[t];
                    let draw = (acc * a + xdot) * ch.dt_grad[t];
                    // SAFETY: dt of (sequence, t0+t, head) belongs to this task alone.
                    let ddt = unsafe { ddts.slice(dto, 1) };
                    ddt[0] += draw;
                    sc[2] += draw;
                }
            }
            if let Some(dh0) = &dh0s {
                // SAFETY: this pair's initial-state gradient belongs to this task alone.
                let out = unsafe { dh0.slice(task.state(), p * n) };
                for (o, &v) in out.iter_mut().zip(&dh) {
                    *o += v;
                }
            }
        });
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
    // dB, dC (b, l, g, n) += the sum over each group's heads, in head order.
    let sum_heads = |heads: &[T], out: &mut [T]| {
        out.par_chunks_exact_mut(g * n)
            .enumerate()
            .for_each(|(row, o)| {
                let (bi, t) = (row / l, row % l);
                for hh in 0..h {
                    let src = &heads[((bi * h + hh) * l + t) * n..][..n];
                    let dst = &mut o[(hh / hpg) * n..][..n];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            });
    };
    sum_heads(&db_heads, grads.db);
    sum_heads(&dc_heads, grads.dc);
}

/// The backward of one chunk: fills `s.dxd` and `s.ds` (this chunk's), adds dD into `sc[1]` and
/// this head's dB, dC rows, and moves `dh` from the chunk's end to its start.
#[allow(clippy::too_many_arguments)]
fn chunk_bwd<T: Float>(
    inp: &SsdInputsOf<&[T]>,
    task: &Task,
    (t0, q): (usize, usize),
    ch: &Chunk<T>,
    hst: &[T],
    dy: &[T],
    dh: &mut [T],
    s: &mut BwdScratch<T>,
    sc: &mut [T; 3],
    (db_h, dc_h): (&mut [T], &mut [T]),
) {
    let SsdDims { h, p, g, n, .. } = task.dims;
    let dyv = strided(dy, task.x(t0), q, p, h * p);
    let bv = strided(inp.b, task.bc(t0), q, n, g * n);
    let cv = strided(inp.c, task.bc(t0), q, n, g * n);
    let xd = view(&ch.xd[..q * p], q, p);
    let m = view(&ch.m[..q * q], q, q);
    let mut db_c = view_mut(&mut db_h[t0 * n..(t0 + q) * n], q, n);
    let mut dc_c = view_mut(&mut dc_h[t0 * n..(t0 + q) * n], q, n);
    if inp.d_skip.is_some() {
        let xv = strided(inp.x, task.x(t0), q, p, h * p);
        sc[1] += dyv.iter().zip(xv.iter()).map(|(&a, &b)| a * b).sum();
    }
    // Intra-chunk: dXD = Mᵀ dY, dM = dY XDᵀ; through the mask into d(CBᵀ) and the decays.
    gemm_views(
        T::one(),
        &m.t(),
        &dyv,
        T::zero(),
        &mut view_mut(&mut s.dxd[..q * p], q, p),
    );
    let dm = &mut s.dm[..q * q];
    gemm_views(T::one(), &dyv, &xd.t(), T::zero(), &mut view_mut(dm, q, q));
    let ds = &mut s.ds[..q];
    ds.fill(T::zero());
    for t in 0..q {
        for tau in 0..q {
            let k = t * q + tau;
            if tau <= t {
                let pm = dm[k] * ch.m[k];
                ds[t] += pm;
                ds[tau] -= pm;
                dm[k] *= ch.decay[k];
            } else {
                dm[k] = T::zero();
            }
        }
    }
    let dcb = view(dm, q, q);
    gemm_views(T::one(), &dcb, &bv, T::one(), &mut dc_c);
    gemm_views(T::one(), &dcb.t(), &cv, T::one(), &mut db_c);
    // From the chunk-start state: Y_off = diag(e^s) C Hᵀ.
    let hv = view(hst, p, n);
    let yoff = &mut s.tmp_qp[..q * p];
    gemm_views(T::one(), &cv, &hv.t(), T::zero(), &mut view_mut(yoff, q, p));
    let dye_qp = &mut s.tmp2_qp[..q * p];
    for t in 0..q {
        let e = ch.s[t].fast_exp();
        let mut dot = T::zero();
        for j in 0..p {
            let gv = dyv[[t, j]];
            dot += gv * yoff[t * p + j];
            dye_qp[t * p + j] = e * gv;
        }
        ds[t] += e * dot;
    }
    let dye_v = view(dye_qp, q, p);
    gemm_views(T::one(), &dye_v, &hv, T::one(), &mut dc_c);
    gemm_views(
        T::one(),
        &dye_v.t(),
        &cv,
        T::zero(),
        &mut view_mut(&mut s.dh_prev, p, n),
    );
    // Into the chunk-end state: H_next = e^S H + XDᵀ diag(w) B with w_t = e^{S - s_t}.
    let big_s = ch.s[q - 1];
    let dhv = view(dh, p, n);
    let u = &mut s.tmp_qp[..q * p];
    gemm_views(T::one(), &bv, &dhv.t(), T::zero(), &mut view_mut(u, q, p));
    let mut d_big_s = T::zero();
    for t in 0..q {
        let w = (big_s - ch.s[t]).fast_exp();
        let mut r = T::zero();
        for j in 0..p {
            r += ch.xd[t * p + j] * u[t * p + j];
            s.dxd[t * p + j] += w * u[t * p + j];
            dye_qp[t * p + j] = w * ch.xd[t * p + j];
        }
        ds[t] -= w * r;
        d_big_s += w * r;
    }
    gemm_views(T::one(), &view(dye_qp, q, p), &dhv, T::one(), &mut db_c);
    let e_big = big_s.fast_exp();
    d_big_s += e_big * hst.iter().zip(dh.iter()).map(|(&a, &b)| a * b).sum::<T>();
    ds[q - 1] += d_big_s;
    for (d, &prev) in dh.iter_mut().zip(&s.dh_prev) {
        *d = e_big * *d + prev;
    }
}
