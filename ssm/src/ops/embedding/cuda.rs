//! The token embedding on a GPU: the ids uploaded, the table's rows gathered or their gradients
//! scattered by cu/embedding.cu, `d` values a row.

use std::sync::Arc;

use ssm_kernels::embedding as k;

use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `out` is already sized on the device.
pub fn fwd<T: Float>(
    g: &Arc<Gpu>,
    ids: &[u32],
    table: &Tensor<T>,
    out: &mut Tensor<T>,
    d: usize,
) -> Result<()> {
    let ids_dev = g.upload(ids)?;
    g.launch(&k::embedding_fwd(
        ids_dev.ptr(),
        dptr(table)?,
        dptr(out)?,
        ids.len(),
        d,
    )?)
}

/// The backward, adding into `dtable`.
pub fn bwd<T: Float>(
    g: &Arc<Gpu>,
    ids: &[u32],
    dout: &Tensor<T>,
    dtable: &mut Tensor<T>,
    d: usize,
) -> Result<()> {
    let ids_dev = g.upload(ids)?;
    g.launch(&k::embedding_bwd(
        ids_dev.ptr(),
        dptr(dout)?,
        dptr(dtable)?,
        ids.len(),
        d,
    )?)
}
