//! The plain reference of RMSNorm, forward and backward, one row at a time (see `crate::ops` for
//! what every reference promises).

use crate::error::{Error, Result};
use crate::ops::rows_of;
use crate::tensor::{Float, Tensor};

/// 1 / sqrt(mean(row²) + eps).
fn rstd<T: Float>(row: &[T], eps: f64) -> T {
    let ms = row.iter().fold(T::zero(), |s, &v| s + v * v) / T::from_usize(row.len());
    T::one() / (ms + T::from_f64(eps)).sqrt()
}

/// y = x / sqrt(mean(x²) + eps) · w over the last dimension (d); w (d).
pub fn rmsnorm_ref<T: Float>(x: &Tensor<T>, w: &Tensor<T>, eps: f64) -> Result<Tensor<T>> {
    rmsnorm_grouped_ref(x, w, eps, 1)
}

/// The same with each of the `groups` equal slices of a row normalised on its own.
pub fn rmsnorm_grouped_ref<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    eps: f64,
    groups: usize,
) -> Result<Tensor<T>> {
    let (_, d) = rows_of("rmsnorm_ref", x)?;
    w.expect_dims("rmsnorm_ref", "weight", &[d])?;
    if groups == 0 || !d.is_multiple_of(groups) {
        return Err(Error::shape(
            "rmsnorm_ref",
            "x",
            format!("a last dimension divisible by the {groups} groups"),
            x.dims(),
        ));
    }
    let (xs, ws) = (x.to_host_vec()?, w.to_host_vec()?);
    let gs = d / groups;
    let mut y = Vec::with_capacity(xs.len());
    for (k, slice) in xs.chunks_exact(gs).enumerate() {
        let r = rstd(slice, eps);
        let wk = &ws[k % groups * gs..][..gs];
        y.extend(slice.iter().zip(wk).map(|(&v, &wj)| v * r * wj));
    }
    Tensor::from_vec(x.dims(), y)
}

/// (dx, dw) of [`rmsnorm_ref`] given dy: with r = rstd of the row and y_j = x_j r,
/// dw_j = Σ_rows dy_j y_j and dx_i = r (w_i dy_i - y_i · mean_j(w_j dy_j y_j)).
pub fn rmsnorm_ref_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    eps: f64,
    dy: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>)> {
    let (_, d) = rows_of("rmsnorm_ref_bwd", x)?;
    w.expect_dims("rmsnorm_ref_bwd", "weight", &[d])?;
    dy.expect_dims("rmsnorm_ref_bwd", "dy", x.dims())?;
    let (xs, ws, dys) = (x.to_host_vec()?, w.to_host_vec()?, dy.to_host_vec()?);
    let mut dx = Vec::with_capacity(xs.len());
    let mut dw = vec![T::zero(); d];
    for (row, g) in xs.chunks_exact(d).zip(dys.chunks_exact(d)) {
        let r = rstd(row, eps);
        let mut mean = T::zero();
        for j in 0..d {
            dw[j] += g[j] * row[j] * r;
            mean += ws[j] * g[j] * row[j] * r;
        }
        mean = mean / T::from_usize(d);
        dx.extend((0..d).map(|i| r * (ws[i] * g[i] - row[i] * r * mean)));
    }
    Ok((Tensor::from_vec(x.dims(), dx)?, Tensor::from_vec([d], dw)?))
}
