//! The plain reference of the causal depthwise conv1d, forward and backward, one output element
//! at a time (see `crate::ops` for what every reference promises).

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// The sizes (b, l, d, k) of a conv1d call, checked.
fn conv_dims<T: Float>(
    op: &'static str,
    x: &Tensor<T>,
    w: &Tensor<T>,
    state: Option<&Tensor<T>>,
) -> Result<[usize; 4]> {
    let [b, l, d] = *x.dims() else {
        return Err(Error::shape(op, "x", "[b, l, d]", x.dims()));
    };
    let k = match *w.dims() {
        [wd, k] if wd == d && k > 0 => k,
        _ => return Err(Error::shape(op, "weight", format!("[{d}, k]"), w.dims())),
    };
    if let Some(s) = state {
        s.expect_dims(op, "state", &[b, k - 1, d])?;
    }
    Ok([b, l, d, k])
}

/// The input of channel c at time t of sequence bi, t counted from -(k-1): the state before 0
/// (zero without one), x after.
fn conv_input<T: Float>(
    x: &[T],
    state: Option<&[T]>,
    [_, l, d, k]: [usize; 4],
    bi: usize,
    t: isize,
    c: usize,
) -> T {
    if t >= 0 {
        x[(bi * l + t as usize) * d + c]
    } else {
        let row = (k as isize - 1 + t) as usize;
        state.map_or(T::zero(), |s| s[(bi * (k - 1) + row) * d + c])
    }
}

/// y[b, t, c] = bias[c] + Σ_j w[c, j] · x[b, t - (k-1) + j, c] for x (b, l, d), w (d, k),
/// bias (d), the inputs before t = 0 from `state` (b, k-1, d) or zero.
pub fn causal_conv1d_ref<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    state: Option<&Tensor<T>>,
) -> Result<Tensor<T>> {
    let dims @ [b, l, d, k] = conv_dims("causal_conv1d_ref", x, w, state)?;
    let (xs, ws) = (x.to_host_vec()?, w.to_host_vec()?);
    let bias = bias.map(|t| t.to_host_vec()).transpose()?;
    let state = state.map(|t| t.to_host_vec()).transpose()?;
    let mut y = vec![T::zero(); b * l * d];
    for bi in 0..b {
        for t in 0..l {
            for c in 0..d {
                let mut acc = bias.as_ref().map_or(T::zero(), |bs| bs[c]);
                for j in 0..k {
                    let s = t as isize - (k as isize - 1) + j as isize;
                    acc += ws[c * k + j] * conv_input(&xs, state.as_deref(), dims, bi, s, c);
                }
                y[(bi * l + t) * d + c] = acc;
            }
        }
    }
    Tensor::from_vec([b, l, d], y)
}

/// (dx, dw, dbias) of [`causal_conv1d_ref`] given dy (b, l, d): each product w[c, j] · input
/// sends dy to both factors; the state gets no gradient.
pub fn causal_conv1d_ref_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    state: Option<&Tensor<T>>,
    dy: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
    let dims @ [b, l, d, k] = conv_dims("causal_conv1d_ref_bwd", x, w, state)?;
    dy.expect_dims("causal_conv1d_ref_bwd", "dy", &[b, l, d])?;
    let (xs, ws, g) = (x.to_host_vec()?, w.to_host_vec()?, dy.to_host_vec()?);
    let state = state.map(|t| t.to_host_vec()).transpose()?;
    let (mut dx, mut dw, mut db) = (
        vec![T::zero(); b * l * d],
        vec![T::zero(); d * k],
        vec![T::zero(); d],
    );
    for bi in 0..b {
        for t in 0..l {
            for c in 0..d {
                let gy = g[(bi * l + t) * d + c];
                db[c] += gy;
                for j in 0..k {
                    let s = t as isize - (k as isize - 1) + j as isize;
                    dw[c * k + j] += gy * conv_input(&xs, state.as_deref(), dims, bi, s, c);
                    if s >= 0 {
                        dx[(bi * l + s as usize) * d + c] += gy * ws[c * k + j];
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec([b, l, d], dx)?,
        Tensor::from_vec([d, k], dw)?,
        Tensor::from_vec([d], db)?,
    ))
}
