//! The plain reference of the linear layer, forward and backward, one output element at a time
//! (see `crate::ops` for what every reference promises).

use crate::error::{Error, Result};
use crate::ops::rows_of;
use crate::tensor::{Float, Tensor};

/// The sizes (m, k, n) of a linear call: x (..., k) as m rows, w (n, k).
fn linear_dims<T: Float>(op: &'static str, x: &Tensor<T>, w: &Tensor<T>) -> Result<[usize; 3]> {
    let (m, k) = rows_of(op, x)?;
    match *w.dims() {
        [n, wk] if wk == k => Ok([m, k, n]),
        _ => Err(Error::shape(op, "w", format!("[n, {k}]"), w.dims())),
    }
}

/// y (..., n) = x (..., k) · wᵀ + bias, w (n, k) as in PyTorch, bias (n).
pub fn linear_ref<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
) -> Result<Tensor<T>> {
    let [m, k, n] = linear_dims("linear_ref", x, w)?;
    let (xs, ws) = (x.to_host_vec()?, w.to_host_vec()?);
    let bias = bias.map(|t| t.to_host_vec()).transpose()?;
    let mut y = vec![T::zero(); m * n];
    for i in 0..m {
        for o in 0..n {
            let mut acc = bias.as_ref().map_or(T::zero(), |bs| bs[o]);
            for j in 0..k {
                acc += xs[i * k + j] * ws[o * k + j];
            }
            y[i * n + o] = acc;
        }
    }
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Tensor::from_vec(dims, y)
}

/// (dx, dw, dbias) of [`linear_ref`] given dy (..., n): dx = dy · w, dw = dyᵀ · x, dbias = Σ dy.
pub fn linear_ref_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    dy: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
    let [m, k, n] = linear_dims("linear_ref_bwd", x, w)?;
    if dy.numel() != m * n || dy.dims().last() != Some(&n) {
        return Err(Error::shape(
            "linear_ref_bwd",
            "dy",
            format!("[..., {n}]"),
            dy.dims(),
        ));
    }
    let (xs, ws, g) = (x.to_host_vec()?, w.to_host_vec()?, dy.to_host_vec()?);
    let (mut dx, mut dw, mut db) = (
        vec![T::zero(); m * k],
        vec![T::zero(); n * k],
        vec![T::zero(); n],
    );
    for i in 0..m {
        for o in 0..n {
            let gy = g[i * n + o];
            db[o] += gy;
            for j in 0..k {
                dx[i * k + j] += gy * ws[o * k + j];
                dw[o * k + j] += gy * xs[i * k + j];
            }
        }
    }
    Ok((
        Tensor::from_vec(x.dims(), dx)?,
        Tensor::from_vec([n, k], dw)?,
        Tensor::from_vec([n], db)?,
    ))
}
