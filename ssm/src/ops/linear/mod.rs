//! Linear layer: `y = x · wᵀ + bias` over the last dimension, w of shape (n, k) as in PyTorch.

pub(crate) mod cpu;
mod cuda;
pub mod reference;

use super::{gpu_of, rows_cols, same_dims, with_last};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
use cpu::{linear_rows, matmul_nn, matmul_tn_acc};

fn check<T: Float>(
    op: &'static str,
    x: &Tensor<T>,
    w: &Tensor<T>,
) -> Result<(usize, usize, usize)> {
    let (m, k) = rows_cols(op, "x", x)?;
    match w.dims() {
        [n, kw] if *kw == k => Ok((m, k, *n)),
        _ => Err(Error::shape(op, "w", format!("[n, {k}]"), w.dims())),
    }
}

/// y (..., n) = x (..., k) · wᵀ + bias; `y` is resized.
pub fn linear_fwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    y: &mut Tensor<T>,
) -> Result<()> {
    let (m, k, n) = check("linear_fwd", x, w)?;
    if let Some(b) = bias {
        b.expect_dims("linear_fwd", "bias", &[n])?;
    }
    y.reset_output(with_last(x, n), x.device())?;
    let others: Vec<&Tensor<T>> = [Some(w), bias].into_iter().flatten().collect();
    if let Some(g) = gpu_of("linear_fwd", x, &others)? {
        return cuda::fwd(&g, (x, w, bias), y, (m, k, n));
    }
    let bias = bias.map(|b| b.host()).transpose()?;
    linear_rows(x.host()?, w.host()?, bias, y.host_mut()?, [m, k, n]);
    Ok(())
}

/// Accumulates dx (like x, if given), dw (n, k) and dbias (n, if given) from dy (..., n).
pub fn linear_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    dy: &Tensor<T>,
    dx: Option<&mut Tensor<T>>,
    dw: &mut Tensor<T>,
    dbias: Option<&mut Tensor<T>>,
) -> Result<()> {
    const OP: &str = "linear_bwd";
    let (m, k, n) = check(OP, x, w)?;
    same_dims(OP, "dy", dy, &with_last(x, n))?;
    same_dims(OP, "dw", dw, w.dims())?;
    if let Some(dx) = &dx {
        same_dims(OP, "dx", dx, x.dims())?;
    }
    if let Some(db) = &dbias {
        same_dims(OP, "dbias", db, &[n])?;
    }
    let mut others = vec![w, dy, &*dw];
    others.extend(dx.as_deref());
    others.extend(dbias.as_deref());
    if let Some(gpu) = gpu_of(OP, x, &others)? {
        return cuda::bwd(&gpu, (x, w, dy), dx, dw, dbias, (m, k, n));
    }
    let g = dy.host()?;
    if let Some(dx) = dx {
        matmul_nn(g, w.host()?, dx.host_mut()?, m, n, k, T::one());
    }
    matmul_tn_acc(g, x.host()?, dw.host_mut()?, m, n, k);
    if let Some(db) = dbias {
        let db = db.host_mut()?;
        for row in g.chunks_exact(n) {
            for (o, &v) in db.iter_mut().zip(row) {
                *o += v;
            }
        }
    }
    Ok(())
}
