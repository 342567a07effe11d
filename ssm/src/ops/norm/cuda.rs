//! RMSNorm on a GPU: the op's tensors to the launches of cu/rmsnorm.cu, over `m` rows of `d` in
//! `groups` slices each.

use std::sync::Arc;

use ssm_kernels::rmsnorm as k;

use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `y` and `rstd` are already sized on the device.
pub fn fwd<T: Float>(
    g: &Gpu,
    (x, w): (&Tensor<T>, &Tensor<T>),
    eps: f64,
    y: &mut Tensor<T>,
    rstd: &mut Tensor<T>,
    (m, d, groups): (usize, usize, usize),
) -> Result<()> {
    let (xp, wp, yp, rp) = (dptr(x)?, dptr(w)?, dptr(y)?, dptr(rstd)?);
    g.launch(&k::rmsnorm_fwd(xp, wp, yp, rp, m, d, groups, eps as f32)?)
}

/// The backward, adding into `dx` and `dw`.
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    (dy, x, w, rstd): (&Tensor<T>, &Tensor<T>, &Tensor<T>, &Tensor<T>),
    dx: &mut Tensor<T>,
    dw: &mut Tensor<T>,
    (m, d, groups): (usize, usize, usize),
) -> Result<()> {
    let ws = g.alloc(k::bwd_workspace_len(m, d, groups))?;
    let (dyp, xp, wp, rp) = (dptr(dy)?, dptr(x)?, dptr(w)?, dptr(rstd)?);
    let launches = k::rmsnorm_bwd(
        dyp,
        xp,
        wp,
        rp,
        dptr(dx)?,
        dptr(dw)?,
        ws.ptr(),
        m,
        d,
        groups,
    )?;
    g.launch_all(&launches)
}
