//! RMSNorm over slices of `gs` values: `y = x / sqrt(mean(x²) + eps) * w`. A row of the op is
//! `w.len() / gs` such slices (one without groups), slice k of the data using the weights of
//! slice k mod that count.

use rayon::prelude::*;

use crate::backend::cpu::{parts_for, reduce_parts_into, row_blocks_mut, split};
use crate::float::Float;

/// x, y: (m, gs) slices; w: (groups · gs,); rstd: (m,) receives 1/sqrt(mean(x²) + eps) for the
/// backward.
pub fn rmsnorm_fwd<T: Float>(x: &[T], w: &[T], eps: T, y: &mut [T], rstd: &mut [T], gs: usize) {
    let (m, d, groups) = (rstd.len(), gs, w.len() / gs);
    let parts = split(m, parts_for(m, 4 * d));
    let ys = row_blocks_mut(y, &parts, d);
    let rs = row_blocks_mut(rstd, &parts, 1);
    ys.into_par_iter()
        .zip(rs)
        .for_each(|((rows, yc), (_, rc))| {
            let xc = &x[rows.start * d..rows.end * d];
            for (k, ((xr, yr), r)) in xc
                .chunks_exact(d)
                .zip(yc.chunks_exact_mut(d))
                .zip(rc.iter_mut())
                .enumerate()
            {
                let w = &w[(rows.start + k) % groups * d..][..d];
                let ss: T = xr.iter().map(|&v| v * v).sum();
                let inv = T::one() / (ss / T::from_usize(d) + eps).sqrt();
                *r = inv;
                for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    *o = xv * inv * wv;
                }
            }
        });
}

/// Accumulates `dx += ∂L/∂x` and `dw += ∂L/∂w` given `dy`, for the `x`, `w`, `rstd` of the forward.
pub fn rmsnorm_bwd<T: Float>(
    dy: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    dx: &mut [T],
    dw: &mut [T],
    gs: usize,
) {
    let (m, d, groups) = (rstd.len(), gs, w.len() / gs);
    let parts = split(m, parts_for(m, 8 * d));
    let mut partial_dw = vec![T::zero(); parts.len() * d * groups];
    let dxs = row_blocks_mut(dx, &parts, d);
    dxs.into_par_iter()
        .zip(partial_dw.par_chunks_exact_mut(d * groups))
        .for_each(|((rows, dxc), pdw)| {
            for (i, dxr) in rows.clone().zip(dxc.chunks_exact_mut(d)) {
                let (w, pdw) = (&w[i % groups * d..][..d], &mut pdw[i % groups * d..][..d]);
                let xr = &x[i * d..(i + 1) * d];
                let dyr = &dy[i * d..(i + 1) * d];
                let r = rstd[i];
                // ∂L/∂x = r * (dy∘w) - x * r³ * mean(dy∘w∘x)
                let dot: T = dyr
                    .iter()
                    .zip(w)
                    .zip(xr)
                    .map(|((&g, &wv), &xv)| g * wv * xv)
                    .sum();
                let c = dot * r * r * r / T::from_usize(d);
                for j in 0..d {
                    dxr[j] += r * dyr[j] * w[j] - xr[j] * c;
                    pdw[j] += dyr[j] * xr[j] * r;
                }
            }
        });
    reduce_parts_into(&partial_dw, d * groups, dw);
}
