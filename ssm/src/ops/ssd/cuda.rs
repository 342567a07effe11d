//! The SSD scan on a GPU: the launches of `ssm_kernels::ssd` over the op's tensors. The saved
//! chunk-start states have the layout of every device, (b, chunks, h, p, n); the kernels take
//! chunks of at most `ssm_kernels::ssd::MAX_CHUNK` positions and refuse longer ones.

use std::sync::Arc;

use ssm_kernels::ssd as k;

use super::{SsdDims, SsdGrads, SsdInputs, SsdOutput};
use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `out.y`, `out.last_state` and (when saving) `out.chunk_states` are already sized
/// on the device.
pub fn fwd<T: Float>(
    g: &Arc<Gpu>,
    inp: &SsdInputs<T>,
    dims: SsdDims,
    out: &SsdOutput<T>,
    save_for_backward: bool,
) -> Result<()> {
    let outputs = k::SsdOutputs {
        y: dptr(&out.y)?,
        last_state: dptr(&out.last_state)?,
        chunk_states: save_for_backward
            .then(|| dptr(&out.chunk_states))
            .transpose()?,
    };
    dims.check("ssd_fwd")?;
    let ws = g.alloc(dims.fwd_workspace_len(save_for_backward))?;
    let launches = k::ssd_fwd(&inp.try_map(dptr)?, &outputs, dims, ws.ptr())?;
    // SAFETY (of the addresses in the launches): `ssd_dims` checked every input's shape against
    // `dims` and the op sized the outputs for it; the workspace holds `fwd_workspace_len` floats
    // and lives until the launches are queued, after which the stream orders any reuse of it.
    g.launch_all(&launches)
}

/// The backward, adding into `grads`.
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    inp: &SsdInputs<T>,
    dims: SsdDims,
    chunk_states: &Tensor<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
    grads: &mut SsdGrads<T>,
) -> Result<()> {
    chunk_states.expect_dims(
        "ssd_bwd",
        "saved chunk states",
        &[dims.b, dims.chunks(), dims.h, dims.p, dims.n],
    )?;
    dims.check("ssd_bwd")?;
    let kgrads = grads.each_mut().try_map(|t| dptr(t))?;
    let ws = g.alloc(dims.bwd_workspace_len())?;
    let launches = k::ssd_bwd(
        &inp.try_map(dptr)?,
        dptr(chunk_states)?,
        dptr(dy)?,
        dlast.map(dptr).transpose()?,
        &kgrads,
        dims,
        ws.ptr(),
    )?;
    // SAFETY (of the addresses in the launches): the op checked the shapes of the inputs, dy,
    // dlast and every gradient against `dims`, and the saved states above; the workspace holds
    // `bwd_workspace_len` floats and lives until the launches are queued.
    g.launch_all(&launches)
}
