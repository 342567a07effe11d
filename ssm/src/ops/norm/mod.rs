//! RMSNorm (Zhang & Sennrich, 2019) over the last dimension, as in Mamba and Llama:
//! `y = x / sqrt(mean(x²) + eps) * w`.

mod cpu;
mod cuda;
pub mod reference;

use super::{gpu_of, rows_cols, same_dims};
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// y (like x) and rstd (rows of x,) for the backward; both are resized.
pub fn rmsnorm_fwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    eps: f64,
    y: &mut Tensor<T>,
    rstd: &mut Tensor<T>,
) -> Result<()> {
    let (m, d) = rows_cols("rmsnorm_fwd", "x", x)?;
    w.expect_dims("rmsnorm_fwd", "weight", &[d])?;
    y.reset_output(x.shape().clone(), x.device())?;
    rstd.reset_output([m], x.device())?;
    if let Some(g) = gpu_of("rmsnorm_fwd", x, &[w])? {
        return cuda::fwd(&g, (x, w), eps, y, rstd, (m, d));
    }
    cpu::rmsnorm_fwd(
        x.host()?,
        w.host()?,
        T::from_f64(eps),
        y.host_mut()?,
        rstd.host_mut()?,
        d,
    );
    Ok(())
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
    const OP: &str = "rmsnorm_bwd";
    let (m, d) = rows_cols(OP, "x", x)?;
    same_dims(OP, "dy", dy, x.dims())?;
    same_dims(OP, "dx", dx, x.dims())?;
    same_dims(OP, "dw", dw, &[d])?;
    same_dims(OP, "rstd", rstd, &[m])?;
    if let Some(g) = gpu_of(OP, x, &[dy, w, rstd, dx, dw])? {
        return cuda::bwd(&g, (dy, x, w, rstd), dx, dw, (m, d));
    }
    cpu::rmsnorm_bwd(
        dy.host()?,
        x.host()?,
        w.host()?,
        rstd.host()?,
        dx.host_mut()?,
        dw.host_mut()?,
        d,
    );
    Ok(())
}
