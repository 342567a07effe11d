//! Cross-entropy on a GPU: the op's tensors and targets to the launches of cu/cross_entropy.cu,
//! for logits (m, v).

use std::sync::Arc;

use ssm_kernels::cross_entropy as k;

use super::IGNORE_INDEX;
use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The sum of the per-row losses and the number of scored rows; `lse` is already sized on the
/// device.
pub fn fwd<T: Float>(
    g: &Arc<Gpu>,
    logits: &Tensor<T>,
    targets: &[i64],
    lse: &mut Tensor<T>,
    (m, v): (usize, usize),
) -> Result<(f64, usize)> {
    // Per-row losses come back to the host and are summed in f64, as on the CPU.
    let (targets_dev, rows) = (g.upload(targets)?, g.alloc(m)?);
    let (lp, lsep) = (dptr(logits)?, dptr(lse)?);
    g.launch(&k::cross_entropy_fwd(
        lp,
        targets_dev.ptr(),
        lsep,
        rows.ptr(),
        m,
        v,
    )?)?;
    let sum = rows.to_host()?.iter().map(|&x| x as f64).sum();
    Ok((sum, targets.iter().filter(|&&t| t != IGNORE_INDEX).count()))
}

/// The backward of the mean over `count` scored rows, adding into `dlogits`.
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    (logits, targets, lse): (&Tensor<T>, &[i64], &Tensor<T>),
    (dloss, count): (f64, usize),
    dlogits: &mut Tensor<T>,
    (m, v): (usize, usize),
) -> Result<()> {
    let targets_dev = g.upload(targets)?;
    let (lp, lsep, dp) = (dptr(logits)?, dptr(lse)?, dptr(dlogits)?);
    g.launch(&k::cross_entropy_bwd(
        lp,
        targets_dev.ptr(),
        lsep,
        dp,
        m,
        v,
        dloss,
        count,
    )?)
}
