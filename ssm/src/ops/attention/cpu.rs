//! Causal multi-head attention on the CPU, tiled with an online softmax (FlashAttention-2; Dao,
//! 2023, Algorithms 1 and 2), with grouped-query attention.
//!
//! Layouts are token-major: q, o, dO: (b, lq, h, hd); k, v: (b, lk, hkv, hd); lse: (b, h, lq).
//! Query i sits at position i + lk - lq and sees keys 0..=i + lk - lq.
//!
//! Forward: one task per (sequence, head, query block). It walks the key blocks up to its
//! diagonal, keeping per query a running max m, a running sum s of exp(score - m) and an
//! accumulator of P·V, both rescaled by exp(m_old - m_new) when the max grows; it writes
//! o = acc / s and lse = m + ln s. Tile products go through the gemm crate (`gemm_views` of
//! `ops::linear`), which reads the strided head rows of q, k and v in place.
//!
//! Backward: D_i = rowsum(dO_i ∘ O_i), then one task per (sequence, kv head, range of key blocks).
//! For each key block it recomputes P = exp(scale·QKᵀ - lse) for every query block and query head
//! that sees the block, and accumulates dV += Pᵀ dO, dS = P ∘ (dO Vᵀ - D), dK += scale·dSᵀ Q into
//! tiles it owns, and dQ += scale·dS K. The key blocks of a kv head are cut into as few ranges as
//! keep the threads busy; the first range adds dQ in place, the others into private buffers that
//! are summed in range order afterwards, so results are race-free and bit-identical for a given
//! thread count. Memory beyond inputs and outputs: lse and D (O(lq) per head), the private dQ
//! buffers (only when there are fewer than two (sequence, kv head) pairs per thread), and
//! O(block²) scratch per task; never an lq x lk matrix.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;
use ssm_kernels::attention::{AttnDims, AttnGradsOf};

use crate::backend::cpu::{SharedMut, threads};
use crate::float::Float;
use crate::ops::linear::cpu::gemm_views;

/// Query rows per tile. A 64 x 64 tile of scores is 16 KiB in f32 and the 64-row tiles of q, k,
/// v and the accumulators are 16 KiB each at hd = 64, so a task's working set stays in L2 while
/// the GEMM streams it; 64 is a multiple of its register tiles, and the masked half of the
/// diagonal tile (wasted work) stays small next to the l / 64 tiles of a row. Measured at b = 1,
/// h = 4, hd = 64, l = 1024 on 2 cores: 32 to 128 rows per side run within 5% of each other on
/// one thread, but 128 x 128 leaves too few forward tasks to balance two threads (30% slower).
pub const BLOCK_Q: usize = 64;
/// Key rows per tile.
pub const BLOCK_K: usize = 64;

/// Inputs as host slices; layouts as in the module doc.
#[derive(Clone, Copy)]
pub struct AttnArgs<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub dims: AttnDims,
    pub scale: T,
}

/// Rows `rows` of head `head` of sequence `bi` in a (b, l, nh, hd) buffer, as a (rows, hd) view.
fn head_rows<T>(
    x: &[T],
    (l, nh, hd): (usize, usize, usize),
    bi: usize,
    head: usize,
    rows: Range<usize>,
) -> ArrayView2<'_, T> {
    let start = ((bi * l + rows.start) * nh + head) * hd;
    ArrayView2::from_shape((rows.len(), hd).strides((nh * hd, 1)), &x[start..])
        .expect("attention: caller checked the sizes")
}

fn mat<T>(x: &[T], rows: usize, cols: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols), x).expect("attention: scratch sized for a tile")
}

fn mat_mut<T>(x: &mut [T], rows: usize, cols: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols), x).expect("attention: scratch sized for a tile")
}

/// `head_rows` of a shared output for writing. SAFETY: no other live reference reaches any
/// element of the rows while the view lives.
unsafe fn head_rows_mut<T>(
    buf: &SharedMut<T>,
    (l, nh, hd): (usize, usize, usize),
    bi: usize,
    head: usize,
    rows: Range<usize>,
) -> ArrayViewMut2<'_, T> {
    let start = ((bi * l + rows.start) * nh + head) * hd;
    assert!(
        start + (rows.len() - 1) * nh * hd + hd <= buf.len,
        "attention: rows out of bounds"
    );
    // SAFETY: every element of the view is in bounds (checked above) and exclusive.
    unsafe {
        ArrayViewMut2::from_shape_ptr((rows.len(), hd).strides((nh * hd, 1)), buf.ptr.add(start))
    }
}

/// Per-task scratch of the forward: scores/probabilities (BLOCK_Q, BLOCK_K), the accumulator
/// (BLOCK_Q, hd), running max and sum (BLOCK_Q,).
struct FwdScratch<T> {
    s: Vec<T>,
    acc: Vec<T>,
    m: Vec<T>,
    sum: Vec<T>,
}

impl<T: Float> FwdScratch<T> {
    fn new(hd: usize) -> Self {
        FwdScratch {
            s: vec![T::zero(); BLOCK_Q * BLOCK_K],
            acc: vec![T::zero(); BLOCK_Q * hd],
            m: vec![T::zero(); BLOCK_Q],
            sum: vec![T::zero(); BLOCK_Q],
        }
    }
}

/// Forward: fills o (b, lq, h, hd) and lse (b, h, lq).
pub fn attention_fwd<T: Float>(a: &AttnArgs<T>, o: &mut [T], lse: &mut [T]) {
    let AttnDims { b, lq, h, hd, .. } = a.dims;
    let nq = lq.div_ceil(BLOCK_Q);
    // The last query blocks see the most keys: queue them first so that no long task starts last.
    let tasks: Vec<(usize, usize, usize)> = (0..nq)
        .rev()
        .flat_map(|qb| (0..b * h).map(move |bh| (bh / h, bh % h, qb)))
        .collect();
    let (o, lse) = (SharedMut::new(o), SharedMut::new(lse));
    tasks.into_par_iter().for_each_init(
        || FwdScratch::new(hd),
        // SAFETY: each task is a distinct (sequence, head, query block), whose rows of o and lse
        // no other task writes.
        |sc, (bi, hq, qb)| unsafe {
            fwd_block(
                a,
                bi,
                hq,
                qb * BLOCK_Q..((qb + 1) * BLOCK_Q).min(lq),
                sc,
                o,
                lse,
            )
        },
    );
}

/// One query block of one head. SAFETY: the caller owns rows `rows` of head `hq` of sequence `bi`
/// in o and in lse.
unsafe fn fwd_block<T: Float>(
    a: &AttnArgs<T>,
    bi: usize,
    hq: usize,
    rows: Range<usize>,
    sc: &mut FwdScratch<T>,
    o: SharedMut<T>,
    lse: SharedMut<T>,
) {
    let dims = a.dims;
    let AttnDims {
        lq, lk, h, hkv, hd, ..
    } = dims;
    let bq = rows.len();
    let kvh = hq / dims.group();
    let qv = head_rows(a.q, (lq, h, hd), bi, hq, rows.clone());
    let (m, sum, acc) = (&mut sc.m[..bq], &mut sc.sum[..bq], &mut sc.acc[..bq * hd]);
    m.fill(T::from_f64(f64::NEG_INFINITY));
    sum.fill(T::zero());
    acc.fill(T::zero());
    // Keys seen by the block's last query; every query sees key 0, so the first key block gives
    // each row a finite max.
    let kend = rows.end + lk - lq;
    for j0 in (0..kend).step_by(BLOCK_K) {
        let keys = j0..(j0 + BLOCK_K).min(kend);
        let bk = keys.len();
        let s = &mut sc.s[..bq * bk];
        let kv = head_rows(a.k, (lk, hkv, hd), bi, kvh, keys.clone());
        gemm_views(a.scale, &qv, &kv.t(), T::zero(), &mut mat_mut(s, bq, bk));
        for (ii, (srow, arow)) in s
            .chunks_exact_mut(bk)
            .zip(acc.chunks_exact_mut(hd))
            .enumerate()
        {
            let (seen, masked) = srow.split_at_mut(dims.visible(rows.start + ii, &keys));
            masked.fill(T::zero());
            if seen.is_empty() {
                continue;
            }
            let m_new = seen.iter().fold(m[ii], |x, &y| x.max(y));
            for x in seen.iter_mut() {
                *x = (*x - m_new).fast_exp();
            }
            let alpha = (m[ii] - m_new).fast_exp();
            sum[ii] = sum[ii] * alpha + seen.iter().copied().sum::<T>();
            m[ii] = m_new;
            if alpha != T::one() {
                for x in arow.iter_mut() {
                    *x *= alpha;
                }
            }
        }
        let vv = head_rows(a.v, (lk, hkv, hd), bi, kvh, keys);
        gemm_views(
            T::one(),
            &mat(s, bq, bk),
            &vv,
            T::one(),
            &mut mat_mut(acc, bq, hd),
        );
    }
    for (ii, arow) in acc.chunks_exact(hd).enumerate() {
        let i = rows.start + ii;
        let inv = T::one() / sum[ii];
        // SAFETY: row i of head hq of sequence bi belongs to this task (the caller's promise).
        let (orow, l_i) = unsafe {
            (
                o.slice(((bi * lq + i) * h + hq) * hd, hd),
                lse.slice((bi * h + hq) * lq + i, 1),
            )
        };
        for (y, &x) in orow.iter_mut().zip(arow) {
            *y = x * inv;
        }
        l_i[0] = m[ii] + sum[ii].ln();
    }
}

/// One backward task: sequence `bi`, kv head `kvh`, key blocks `blocks`, the `part`-th range of
/// that head. Its dQ rows start at query `q0` (the first query block that sees its first key).
struct BwdTask {
    bi: usize,
    kvh: usize,
    part: usize,
    blocks: Range<usize>,
    q0: usize,
}

impl BwdTask {
    /// Elements of the private dQ buffer, (lq - q0, group, hd); the first range writes in place.
    fn private_len(&self, d: &AttnDims) -> usize {
        if self.part == 0 {
            0
        } else {
            (d.lq - self.q0) * d.group() * d.hd
        }
    }
}

/// Backward tasks in a fixed order: sequences, kv heads, then the key-block ranges of a head. The
/// ranges have near-equal work (a block's work is the number of queries that see it) and there
/// are as many as give every thread two tasks over all (sequence, kv head) pairs, at most one per
/// block; the cut depends only on the sizes and the thread count.
fn bwd_tasks(d: &AttnDims) -> Vec<BwdTask> {
    let nk = d.lk.div_ceil(BLOCK_K);
    let work = |kb: usize| d.lq - d.first_query(kb * BLOCK_K);
    let total: usize = (0..nk).map(work).sum();
    let want = (2 * threads())
        .div_ceil((d.b * d.hkv).max(1))
        .clamp(1, nk.max(1));
    let mut ranges = Vec::with_capacity(want);
    let (mut start, mut acc) = (0, 0);
    for kb in 0..nk {
        acc += work(kb);
        if ranges.len() + 1 < want && acc * want >= total * (ranges.len() + 1) {
            ranges.push(start..kb + 1);
            start = kb + 1;
        }
    }
    if start < nk {
        ranges.push(start..nk);
    }
    let mut tasks = Vec::with_capacity(d.b * d.hkv * ranges.len());
    for bi in 0..d.b {
        for kvh in 0..d.hkv {
            for (part, blocks) in ranges.iter().enumerate() {
                let q0 = d.first_query(blocks.start * BLOCK_K) / BLOCK_Q * BLOCK_Q;
                tasks.push(BwdTask {
                    bi,
                    kvh,
                    part,
                    blocks: blocks.clone(),
                    q0,
                });
            }
        }
    }
    tasks
}

/// Elements the backward allocates besides per-task scratch: D (b, h, lq) and the private dQ
/// buffers. Depends on the thread count of the current rayon pool.
pub fn bwd_workspace_len(d: &AttnDims) -> usize {
    d.b * d.h * d.lq + bwd_tasks(d).iter().map(|t| t.private_len(d)).sum::<usize>()
}

/// Per-task scratch of the backward: P and dP/dS (BLOCK_Q, BLOCK_K), dK and dV of one key block
/// (BLOCK_K, hd).
struct BwdScratch<T> {
    p: Vec<T>,
    ds: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
}

impl<T: Float> BwdScratch<T> {
    fn new(hd: usize) -> Self {
        BwdScratch {
            p: vec![T::zero(); BLOCK_Q * BLOCK_K],
            ds: vec![T::zero(); BLOCK_Q * BLOCK_K],
            dk: vec![T::zero(); BLOCK_K * hd],
            dv: vec![T::zero(); BLOCK_K * hd],
        }
    }
}

/// Gradient outputs, accumulated into: dq (b, lq, h, hd), dk and dv (b, lk, hkv, hd).
pub type AttnGradsMut<'a, T> = AttnGradsOf<&'a mut [T]>;

/// Backward: accumulates dq, dk, dv from dO (b, lq, h, hd), given the forward's o and lse.
pub fn attention_bwd<T: Float>(a: &AttnArgs<T>, o: &[T], lse: &[T], d_o: &[T], g: AttnGradsMut<T>) {
    let dims = a.dims;
    let AttnDims { lq, h, hd, .. } = dims;
    let group = dims.group();
    let mut delta = vec![T::zero(); dims.b * h * lq]; // (b, h, lq)
    delta.par_chunks_mut(lq).enumerate().for_each(|(bh, drow)| {
        let (bi, hq) = (bh / h, bh % h);
        for (i, dv) in drow.iter_mut().enumerate() {
            let r = ((bi * lq + i) * h + hq) * hd;
            *dv = o[r..r + hd]
                .iter()
                .zip(&d_o[r..r + hd])
                .map(|(&x, &y)| x * y)
                .sum();
        }
    });
    let tasks = bwd_tasks(&dims);
    let mut private: Vec<Vec<T>> = tasks
        .iter()
        .map(|t| vec![T::zero(); t.private_len(&dims)])
        .collect();
    let (dq, dk, dv) = (
        SharedMut::new(g.dq),
        SharedMut::new(g.dk),
        SharedMut::new(g.dv),
    );
    tasks.par_iter().zip(private.par_iter_mut()).for_each_init(
        || BwdScratch::new(hd),
        // SAFETY: a task owns the rows of dk and dv of its key blocks and kv head; the first
        // range of a (sequence, kv head) owns that pair's rows of dq, the others write their
        // private buffers.
        |sc, (t, pdq)| unsafe { bwd_task(a, lse, &delta, d_o, t, pdq, sc, [dq, dk, dv]) },
    );
    // Each sequence's dq is one contiguous chunk; its private buffers are added in range order.
    g.dq.par_chunks_mut(lq * h * hd)
        .enumerate()
        .for_each(|(bi, dqb)| {
            for (t, pdq) in tasks
                .iter()
                .zip(&private)
                .filter(|(t, _)| t.bi == bi && t.part > 0)
            {
                for i in t.q0..lq {
                    let dst = &mut dqb[(i * h + t.kvh * group) * hd..][..group * hd];
                    let src = &pdq[(i - t.q0) * group * hd..][..group * hd];
                    for (x, &y) in dst.iter_mut().zip(src) {
                        *x += y;
                    }
                }
            }
        });
}

/// One backward task. SAFETY: the caller owns the rows of dk and dv of the task's key blocks and
/// kv head, and for `part == 0` the rows of dq of its sequence and query heads.
#[allow(clippy::too_many_arguments)]
unsafe fn bwd_task<T: Float>(
    a: &AttnArgs<T>,
    lse: &[T],
    delta: &[T],
    d_o: &[T],
    t: &BwdTask,
    pdq: &mut [T],
    sc: &mut BwdScratch<T>,
    [dq, dk, dv]: [SharedMut<T>; 3],
) {
    let dims = a.dims;
    let AttnDims {
        lq, lk, h, hkv, hd, ..
    } = dims;
    let group = dims.group();
    let bi = t.bi;
    for kb in t.blocks.clone() {
        let keys = kb * BLOCK_K..((kb + 1) * BLOCK_K).min(lk);
        let bk = keys.len();
        let kv = head_rows(a.k, (lk, hkv, hd), bi, t.kvh, keys.clone());
        let vv = head_rows(a.v, (lk, hkv, hd), bi, t.kvh, keys.clone());
        let (dk_acc, dv_acc) = (&mut sc.dk[..bk * hd], &mut sc.dv[..bk * hd]);
        dk_acc.fill(T::zero());
        dv_acc.fill(T::zero());
        for hq in t.kvh * group..(t.kvh + 1) * group {
            let lse_h = &lse[(bi * h + hq) * lq..][..lq];
            let delta_h = &delta[(bi * h + hq) * lq..][..lq];
            let mut q_start = dims.first_query(keys.start) / BLOCK_Q * BLOCK_Q;
            while q_start < lq {
                let rows = q_start..(q_start + BLOCK_Q).min(lq);
                q_start = rows.end;
                let bq = rows.len();
                let qv = head_rows(a.q, (lq, h, hd), bi, hq, rows.clone());
                let dov = head_rows(d_o, (lq, h, hd), bi, hq, rows.clone());
                let (p, ds) = (&mut sc.p[..bq * bk], &mut sc.ds[..bq * bk]);
                gemm_views(a.scale, &qv, &kv.t(), T::zero(), &mut mat_mut(p, bq, bk));
                for (ii, prow) in p.chunks_exact_mut(bk).enumerate() {
                    let i = rows.start + ii;
                    let (seen, masked) = prow.split_at_mut(dims.visible(i, &keys));
                    masked.fill(T::zero());
                    for x in seen.iter_mut() {
                        *x = (*x - lse_h[i]).fast_exp();
                    }
                }
                gemm_views(
                    T::one(),
                    &mat(p, bq, bk).t(),
                    &dov,
                    T::one(),
                    &mut mat_mut(dv_acc, bk, hd),
                );
                gemm_views(T::one(), &dov, &vv.t(), T::zero(), &mut mat_mut(ds, bq, bk));
                for ((dsrow, prow), &d_i) in ds
                    .chunks_exact_mut(bk)
                    .zip(p.chunks_exact(bk))
                    .zip(&delta_h[rows.clone()])
                {
                    for (x, &pv) in dsrow.iter_mut().zip(prow) {
                        *x = pv * (*x - d_i);
                    }
                }
                gemm_views(
                    a.scale,
                    &mat(ds, bq, bk).t(),
                    &qv,
                    T::one(),
                    &mut mat_mut(dk_acc, bk, hd),
                );
                let mut dq_tile = if t.part == 0 {
                    // SAFETY: the first range owns these rows of dq (the caller's promise).
                    unsafe { head_rows_mut(&dq, (lq, h, hd), bi, hq, rows) }
                } else {
                    let start = ((rows.start - t.q0) * group + hq - t.kvh * group) * hd;
                    ArrayViewMut2::from_shape((bq, hd).strides((group * hd, 1)), &mut pdq[start..])
                        .expect("attention: private dq sized for its rows")
                };
                gemm_views(a.scale, &mat(ds, bq, bk), &kv, T::one(), &mut dq_tile);
            }
        }
        for (jj, j) in keys.enumerate() {
            let at = ((bi * lk + j) * hkv + t.kvh) * hd;
            // SAFETY: key j of kv head kvh of sequence bi belongs to this task.
            let (dkr, dvr) = unsafe { (dk.slice(at, hd), dv.slice(at, hd)) };
            for (x, &y) in dkr.iter_mut().zip(&dk_acc[jj * hd..(jj + 1) * hd]) {
                *x += y;
            }
            for (x, &y) in dvr.iter_mut().zip(&dv_acc[jj * hd..(jj + 1) * hd]) {
                *x += y;
            }
        }
    }
}
