//! Causal attention on a GPU: `ssm::ops::attention` through the tiled kernels of
//! cu/attention.cu (the same layouts and the same saved lse).

use std::sync::Arc;

use ssm_kernels::attention::{self as k, AttnDims};

use super::{AttentionGrads, AttentionOutput};
use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `out.o` and `out.lse` are already sized on the device and `out.scale` resolved.
pub fn fwd<T: Float>(
    g: &Arc<Gpu>,
    q: &Tensor<T>,
    kt: &Tensor<T>,
    v: &Tensor<T>,
    dims: AttnDims,
    out: &mut AttentionOutput<T>,
) -> Result<()> {
    g.launch(&k::attention_fwd(
        dptr(q)?,
        dptr(kt)?,
        dptr(v)?,
        dptr(&out.o)?,
        dptr(&out.lse)?,
        dims,
        out.scale as f32,
    )?)
}

/// The backward, adding into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    q: &Tensor<T>,
    kt: &Tensor<T>,
    v: &Tensor<T>,
    dims: AttnDims,
    out: &AttentionOutput<T>,
    d_o: &Tensor<T>,
    grads: &mut AttentionGrads<T>,
) -> Result<()> {
    let ws = g.alloc(dims.bwd_workspace_len())?;
    let launches = k::attention_bwd(
        dptr(q)?,
        dptr(kt)?,
        dptr(v)?,
        dptr(&out.o)?,
        dptr(&out.lse)?,
        dptr(d_o)?,
        &grads.each_ref().try_map(dptr)?,
        ws.ptr(),
        dims,
        out.scale as f32,
    )?;
    g.launch_all(&launches)
}
