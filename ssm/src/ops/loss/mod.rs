//! Softmax cross-entropy with integer targets, mean over the scored positions.

mod cpu;
mod cuda;

use super::{gpu_of, rows_cols, same_dims};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

pub use cpu::IGNORE_INDEX;

fn check<T: Float>(
    op: &'static str,
    logits: &Tensor<T>,
    targets: &[i64],
) -> Result<(usize, usize)> {
    let (m, v) = rows_cols(op, "logits", logits)?;
    if targets.len() != m {
        return Err(Error::shape(
            op,
            "targets",
            format!("{m} targets (one per row of logits)"),
            &[targets.len()],
        ));
    }
    if let Some(&bad) = targets
        .iter()
        .find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= v))
    {
        return Err(Error::shape(
            op,
            format!("target {bad}"),
            format!("targets in 0..{v} or {IGNORE_INDEX}"),
            &[bad.unsigned_abs() as usize],
        ));
    }
    Ok((m, v))
}

/// Mean cross-entropy over rows whose target is not `IGNORE_INDEX` (0 when none is scored), and
/// the number of scored rows; `lse` (rows,) keeps the log-sum-exp for the backward.
pub fn cross_entropy_fwd<T: Float>(
    logits: &Tensor<T>,
    targets: &[i64],
    lse: &mut Tensor<T>,
) -> Result<(f64, usize)> {
    let (m, v) = check("cross_entropy_fwd", logits, targets)?;
    lse.reset_output([m], logits.device())?;
    let (sum, count) = match gpu_of("cross_entropy_fwd", logits, &[])? {
        None => cpu::cross_entropy_fwd(logits.host()?, targets, lse.host_mut()?, v),
        Some(g) => cuda::fwd(&g, logits, targets, lse, (m, v))?,
    };
    Ok((if count > 0 { sum / count as f64 } else { 0.0 }, count))
}

/// dlogits += dloss · ∂(mean loss)/∂logits.
pub fn cross_entropy_bwd<T: Float>(
    logits: &Tensor<T>,
    targets: &[i64],
    lse: &Tensor<T>,
    dloss: f64,
    dlogits: &mut Tensor<T>,
) -> Result<()> {
    const OP: &str = "cross_entropy_bwd";
    let (m, v) = check(OP, logits, targets)?;
    same_dims(OP, "lse", lse, &[m])?;
    same_dims(OP, "dlogits", dlogits, logits.dims())?;
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    if count == 0 {
        return Ok(());
    }
    if let Some(g) = gpu_of(OP, logits, &[lse, dlogits])? {
        return cuda::bwd(&g, (logits, targets, lse), (dloss, count), dlogits, (m, v));
    }
    let scale = T::from_f64(dloss / count as f64);
    cpu::cross_entropy_bwd(
        logits.host()?,
        targets,
        lse.host()?,
        scale,
        dlogits.host_mut()?,
        v,
    );
    Ok(())
}
