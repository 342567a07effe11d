//! Depthwise causal 1-D convolution over time, token-major: each channel d of x (b, l, d) is
//! convolved with its own kernel w[d, :] of width k, looking only at the current and past steps.
//! `y[b, t, d] = bias[d] + Σ_j w[d, j] · x[b, t - (k-1) + j, d]`, where steps before 0 come from
//! an optional state (the last k-1 inputs of a previous call) or are zero.

use rayon::prelude::*;
use ssm_kernels::conv1d::ConvDims;

use crate::backend::cpu::{parts_for, reduce_parts_into, row_blocks_mut, split};
use crate::float::Float;

/// Kernel taps transposed to (k, d) so that the inner loops run over contiguous channels.
fn taps<T: Float>(w: &[T], d: usize, k: usize) -> Vec<T> {
    let mut wt = vec![T::zero(); k * d];
    for c in 0..d {
        for j in 0..k {
            wt[j * d + c] = w[c * k + j];
        }
    }
    wt
}

/// The input row at time `s` (may be negative) of sequence `bi`, or None where it is zero.
#[inline]
fn input_row<'a, T>(
    x: &'a [T],
    state: Option<&'a [T]>,
    dims: ConvDims,
    bi: usize,
    s: isize,
) -> Option<&'a [T]> {
    let ConvDims { l, d, k, .. } = dims;
    if s >= 0 {
        let s = s as usize;
        Some(&x[(bi * l + s) * d..(bi * l + s + 1) * d])
    } else {
        // state (b, k-1, d) holds times -(k-1)..-1 in order.
        state.map(|st| {
            let j = (k as isize - 1 + s) as usize;
            &st[(bi * (k - 1) + j) * d..(bi * (k - 1) + j + 1) * d]
        })
    }
}

/// y (b, l, d) = causal_conv(x (b, l, d), w (d, k)) + bias (d); `state` (b, k-1, d) optional.
pub fn conv1d_fwd<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    state: Option<&[T]>,
    y: &mut [T],
    dims: ConvDims,
) {
    let ConvDims { b, l, d, k } = dims;
    let wt = taps(w, d, k);
    let parts = split(b * l, parts_for(b * l, 2 * k * d));
    row_blocks_mut(y, &parts, d)
        .into_par_iter()
        .for_each(|(rows, yc)| {
            for (i, yr) in rows.zip(yc.chunks_exact_mut(d)) {
                let (bi, t) = (i / l, i % l);
                match bias {
                    Some(bv) => yr.copy_from_slice(bv),
                    None => yr.fill(T::zero()),
                }
                for j in 0..k {
                    let s = t as isize - (k as isize - 1) + j as isize;
                    if let Some(xr) = input_row(x, state, dims, bi, s) {
                        let wj = &wt[j * d..(j + 1) * d];
                        for c in 0..d {
                            yr[c] += wj[c] * xr[c];
                        }
                    }
                }
            }
        });
}

/// Accumulates dx (b, l, d), dw (d, k) and dbias (d) from dy; the state gets no gradient (it is
/// only used for recurrent inference).
#[allow(clippy::too_many_arguments)]
pub fn conv1d_bwd<T: Float>(
    x: &[T],
    w: &[T],
    state: Option<&[T]>,
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
    dbias: Option<&mut [T]>,
    dims: ConvDims,
) {
    let ConvDims { b, l, d, k } = dims;
    let wt = taps(w, d, k);
    let parts = split(b * l, parts_for(b * l, 4 * k * d));
    // Per part: k rows of tap gradients, then one row of bias gradient.
    let mut partial = vec![T::zero(); parts.len() * (k + 1) * d];
    row_blocks_mut(dx, &parts, d)
        .into_par_iter()
        .zip(partial.par_chunks_exact_mut((k + 1) * d))
        .for_each(|((rows, dxc), pw)| {
            for (i, dxr) in rows.zip(dxc.chunks_exact_mut(d)) {
                let (bi, t) = (i / l, i % l);
                let dyr = &dy[i * d..(i + 1) * d];
                for j in 0..k {
                    // Output t + (k-1) - j read input t through tap j.
                    let to = t + (k - 1) - j;
                    if to < l {
                        let g = &dy[(bi * l + to) * d..(bi * l + to + 1) * d];
                        let wj = &wt[j * d..(j + 1) * d];
                        for c in 0..d {
                            dxr[c] += wj[c] * g[c];
                        }
                    }
                    let s = t as isize - (k as isize - 1) + j as isize;
                    if let Some(xr) = input_row(x, state, dims, bi, s) {
                        let pj = &mut pw[j * d..(j + 1) * d];
                        for c in 0..d {
                            pj[c] += dyr[c] * xr[c];
                        }
                    }
                }
                let pb = &mut pw[k * d..];
                for c in 0..d {
                    pb[c] += dyr[c];
                }
            }
        });
    let mut sum = vec![T::zero(); (k + 1) * d];
    reduce_parts_into(&partial, (k + 1) * d, &mut sum);
    for c in 0..d {
        for j in 0..k {
            dw[c * k + j] += sum[j * d + c];
        }
    }
    if let Some(db) = dbias {
        for (o, &v) in db.iter_mut().zip(&sum[k * d..]) {
            *o += v;
        }
    }
}
