//! Softmax cross-entropy over the last dimension, with targets equal to `IGNORE_INDEX` skipped.

use rayon::prelude::*;

use crate::backend::cpu::{parts_for, row_blocks_mut, split};
use crate::float::Float;

/// Targets with this value contribute neither loss nor gradient (PyTorch's default).
pub const IGNORE_INDEX: i64 = -100;

/// Writes the log-sum-exp of every row into `lse` (m,) and returns (sum of losses, scored rows).
pub fn cross_entropy_fwd<T: Float>(
    logits: &[T],
    targets: &[i64],
    lse: &mut [T],
    v: usize,
) -> (f64, usize) {
    let m = targets.len();
    let parts = split(m, parts_for(m, 4 * v));
    let sums: Vec<(f64, usize)> = row_blocks_mut(lse, &parts, 1)
        .into_par_iter()
        .map(|(rows, lc)| {
            let mut acc = (0.0f64, 0usize);
            for (i, out) in rows.zip(lc.iter_mut()) {
                let row = &logits[i * v..(i + 1) * v];
                let mx = row.iter().copied().fold(row[0], T::max);
                let s: T = row.iter().map(|&x| (x - mx).exp()).sum();
                *out = mx + s.ln();
                let tgt = targets[i];
                if tgt != IGNORE_INDEX {
                    acc.0 += (*out - row[tgt as usize]).to_f64();
                    acc.1 += 1;
                }
            }
            acc
        })
        .collect();
    sums.iter().fold((0.0, 0), |a, s| (a.0 + s.0, a.1 + s.1))
}

/// dlogits += scale * (softmax(logits) - onehot(target)) on scored rows; `scale` is
/// ∂L/∂(mean loss) divided by the number of scored rows.
pub fn cross_entropy_bwd<T: Float>(
    logits: &[T],
    targets: &[i64],
    lse: &[T],
    scale: T,
    dlogits: &mut [T],
    v: usize,
) {
    dlogits
        .par_chunks_exact_mut(v)
        .enumerate()
        .for_each(|(i, dr)| {
            let tgt = targets[i];
            if tgt == IGNORE_INDEX {
                return;
            }
            let row = &logits[i * v..(i + 1) * v];
            for (g, &x) in dr.iter_mut().zip(row) {
                *g += scale * (x - lse[i]).exp();
            }
            dr[tgt as usize] -= scale;
        });
}
