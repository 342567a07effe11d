//! The SSD scan on a GPU: the launches of `ssm_kernels::ssd` over the op's tensors.

use std::sync::Arc;

use super::{SsdDims, SsdGrads, SsdInputs, SsdOutput};
use crate::backend::cuda::Gpu;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

pub fn fwd<T: Float>(
    _g: &Arc<Gpu>,
    _inp: &SsdInputs<T>,
    _dims: SsdDims,
    _out: &mut SsdOutput<T>,
    _save_for_backward: bool,
) -> Result<()> {
    Err(Error::config("device", "the SSD kernels are being written"))
}

pub fn bwd<T: Float>(
    _g: &Arc<Gpu>,
    _inp: &SsdInputs<T>,
    _dims: SsdDims,
    _chunk_states: &Tensor<T>,
    _dy: &Tensor<T>,
    _dlast: Option<&Tensor<T>>,
    _grads: &mut SsdGrads<T>,
) -> Result<()> {
    Err(Error::config("device", "the SSD kernels are being written"))
}
