//! The selective scan on a GPU: `ssm::ops::scan` in the kernels' own saved-state layout,
//! (b, l/256, d, n) instead of the CPU's (b, l/64, n, d); the op checks it before the backward.

use std::sync::Arc;

use ssm_kernels::scan::{self as k, ScanDims};

use super::{ScanGrads, ScanInputs, ScanOutput};
use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `out.y` and `out.last_state` are already sized on the device.
pub fn fwd<T: Float>(
    g: &Arc<Gpu>,
    inp: &ScanInputs<T>,
    dims: ScanDims,
    out: &mut ScanOutput<T>,
    save_for_backward: bool,
) -> Result<()> {
    let chunk_states = if save_for_backward {
        out.chunk_states
            .reset_output([dims.b, dims.chunks(), dims.d, dims.n], g.device())?;
        Some(dptr(&out.chunk_states)?)
    } else {
        None
    };
    let outputs = k::ScanOutputs {
        y: dptr(&out.y)?,
        last_state: Some(dptr(&out.last_state)?),
        chunk_states,
    };
    let segments = dims.segments(g.sm_count());
    let ws = match dims.fwd_workspace_len(segments) {
        0 => None,
        len => Some(g.alloc(len)?),
    };
    let split = k::ScanSplit {
        segments,
        workspace: ws.as_ref().map_or(0, |w| w.ptr()),
    };
    g.launch_all(&k::selective_scan_fwd(
        &inp.try_map(dptr)?,
        &outputs,
        dims,
        split,
    )?)
}

/// The backward, adding into `grads`.
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    inp: &ScanInputs<T>,
    dims: ScanDims,
    chunk_states: &Tensor<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
    grads: &mut ScanGrads<T>,
) -> Result<()> {
    chunk_states.expect_dims(
        "selective_scan_bwd",
        "saved chunk states (of a forward on this device)",
        &[dims.b, dims.chunks(), dims.d, dims.n],
    )?;
    let kgrads = grads.each_ref().try_map(dptr)?;
    let segments = dims.segments(g.sm_count());
    let ws = g.alloc(dims.bwd_workspace_len(segments))?;
    let split = k::ScanSplit {
        segments,
        workspace: ws.ptr(),
    };
    let launches = k::selective_scan_bwd(
        &inp.try_map(dptr)?,
        dptr(chunk_states)?,
        dptr(dy)?,
        dlast.map(dptr).transpose()?,
        &kgrads,
        dims,
        split,
    )?;
    g.launch_all(&launches)
}
