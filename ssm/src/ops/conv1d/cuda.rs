//! The causal conv1d on a GPU: the op's tensors to the launches of cu/conv1d.cu, and the shift of
//! a convolution state through strided copies of cu/elementwise.cu.

use std::sync::Arc;

use ssm_kernels::conv1d::{self as k, ConvDims};
use ssm_kernels::elementwise::copy_strided;

use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `y` is already sized on the device.
pub fn fwd<T: Float>(
    g: &Gpu,
    (x, w): (&Tensor<T>, &Tensor<T>),
    bias: Option<&Tensor<T>>,
    state: Option<&Tensor<T>>,
    y: &mut Tensor<T>,
    dims: ConvDims,
) -> Result<()> {
    let (bias, state) = (bias.map(dptr).transpose()?, state.map(dptr).transpose()?);
    g.launch(&k::causal_conv1d_fwd(
        dptr(x)?,
        dptr(w)?,
        bias,
        state,
        dptr(y)?,
        dims,
        false,
    )?)
}

/// The backward, adding into `dx`, `dw` and `dbias` (if given).
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    (x, w): (&Tensor<T>, &Tensor<T>),
    state: Option<&Tensor<T>>,
    dy: &Tensor<T>,
    (dx, dw): (&mut Tensor<T>, &mut Tensor<T>),
    dbias: Option<&mut Tensor<T>>,
    dims: ConvDims,
) -> Result<()> {
    let ws = g.alloc(dims.bwd_workspace_len(false))?;
    let state = state.map(dptr).transpose()?;
    let dbias = dbias.map(|t| dptr(t)).transpose()?;
    g.launch_all(&k::causal_conv1d_bwd(
        dptr(x)?,
        dptr(w)?,
        None,
        state,
        dptr(dy)?,
        dptr(dx)?,
        dptr(dw)?,
        dbias,
        ws.ptr(),
        dims,
        false,
    )?)
}

/// Moves `state` (b, k-1, d) past x (b, l, d); `km1` is k - 1.
pub fn next_state<T: Float>(
    g: &Gpu,
    x: &Tensor<T>,
    state: &mut Tensor<T>,
    [b, l, d, km1]: [usize; 4],
) -> Result<()> {
    // Rows of the new state: the last `shift` rows of the old state moved to the front, then
    // the last `take` rows of x.
    let shift = km1.saturating_sub(l);
    let take = km1 - shift;
    let sp = dptr(state)?;
    if shift > 0 {
        let old = state.try_clone()?;
        let from = dptr(&old)? + 4 * (l * d) as u64;
        g.launch(&copy_strided(
            from,
            km1 * d,
            sp,
            km1 * d,
            b,
            shift * d,
            false,
        )?)?;
    }
    if take > 0 {
        let from = dptr(x)? + 4 * ((l - take) * d) as u64;
        let to = sp + 4 * (shift * d) as u64;
        g.launch(&copy_strided(from, l * d, to, km1 * d, b, take * d, false)?)?;
    }
    Ok(())
}
