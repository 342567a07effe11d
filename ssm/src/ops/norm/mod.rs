//! RMSNorm (Zhang & Sennrich, 2019) over the last dimension, as in Mamba and Llama:
//! `y = x / sqrt(mean(x²) + eps) * w`. The grouped form normalises each of `groups` equal
//! slices of a row on its own before the weight (Mamba-2's gated norm with `n_groups`; mamba_ssm's
//! `RMSNormGated(group_size = d / groups)`).

mod cpu;
mod cuda;
pub mod reference;

use super::{gpu_of, rows_cols, same_dims};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// y (like x) and rstd (rows of x,) for the backward; both are resized.
pub fn rmsnorm_fwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    eps: f64,
    y: &mut Tensor<T>,
    rstd: &mut Tensor<T>,
) -> Result<()> {
    rmsnorm_grouped_fwd(x, w, eps, 1, y, rstd)
}

/// Accumulates dx (like x) and dw (d,).
pub fn rmsnorm_bwd<T: Float>(
    dy: &Tensor<T>,
    x: &Tensor<T>,
    w: &Tensor<T>,
    rstd: &Tensor<T>,
    dx: &mut Tensor<T>,
    dw: &mut Tensor<T>,
) -> Result<()> {
    rmsnorm_grouped_bwd(dy, x, w, rstd, 1, dx, dw)
}

/// The rows (m) and width (d) of x, with `groups` dividing d.
fn grouped_dims<T: Float>(
    op: &'static str,
    x: &Tensor<T>,
    groups: usize,
) -> Result<(usize, usize)> {
    let (m, d) = rows_cols(op, "x", x)?;
    if groups == 0 || !d.is_multiple_of(groups) {
        return Err(Error::shape(
            op,
            "x",
            format!("a last dimension divisible by the {groups} groups"),
            x.dims(),
        ));
    }
    Ok((m, d))
}

/// y (like x) with each of the `groups` slices of a row normalised on its own, and rstd
/// (rows · groups,) for the backward; both are resized.
pub fn rmsnorm_grouped_fwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    eps: f64,
    groups: usize,
    y: &mut Tensor<T>,
    rstd: &mut Tensor<T>,
) -> Result<()> {
    const OP: &str = "rmsnorm_fwd";
    let (m, d) = grouped_dims(OP, x, groups)?;
    w.expect_dims(OP, "weight", &[d])?;
    y.reset_output(x.shape().clone(), x.device())?;
    rstd.reset_output([m * groups], x.device())?;
    if let Some(g) = gpu_of(OP, x, &[w])? {
        return cuda::fwd(&g, (x, w), eps, y, rstd, (m, d, groups));
    }
    cpu::rmsnorm_fwd(
        x.host()?,
        w.host()?,
        T::from_f64(eps),
        y.host_mut()?,
        rstd.host_mut()?,
        d / groups,
    );
    Ok(())
}

/// Accumulates dx (like x) and dw (d,) of [`rmsnorm_grouped_fwd`].
pub fn rmsnorm_grouped_bwd<T: Float>(
    dy: &Tensor<T>,
    x: &Tensor<T>,
    w: &Tensor<T>,
    rstd: &Tensor<T>,
    groups: usize,
    dx: &mut Tensor<T>,
    dw: &mut Tensor<T>,
) -> Result<()> {
    const OP: &str = "rmsnorm_bwd";
    let (m, d) = grouped_dims(OP, x, groups)?;
    same_dims(OP, "dy", dy, x.dims())?;
    same_dims(OP, "dx", dx, x.dims())?;
    same_dims(OP, "dw", dw, &[d])?;
    same_dims(OP, "rstd", rstd, &[m * groups])?;
    if let Some(g) = gpu_of(OP, x, &[dy, w, rstd, dx, dw])? {
        return cuda::bwd(&g, (dy, x, w, rstd), dx, dw, (m, d, groups));
    }
    cpu::rmsnorm_bwd(
        dy.host()?,
        x.host()?,
        w.host()?,
        rstd.host()?,
        dx.host_mut()?,
        dw.host_mut()?,
        d / groups,
    );
    Ok(())
}
