//! The linear layer on a GPU: products through cuBLAS (`Gemm`), the bias through
//! cu/elementwise.cu and cu/reduce.cu, for x (m, k), w (n, k) and y (m, n).

use ssm_kernels::{elementwise as k, reduce};

use crate::backend::cuda::{Gemm, Gpu};
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The forward; `y` is already sized on the device.
pub fn fwd<T: Float>(
    g: &Gpu,
    (x, w, bias): (&Tensor<T>, &Tensor<T>, Option<&Tensor<T>>),
    y: &mut Tensor<T>,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    let (xp, wp, yp) = (dptr(x)?, dptr(w)?, dptr(y)?);
    g.gemm(&Gemm::single(xp, false, wp, true, yp, (m, n, k), 0.0))?;
    if let Some(b) = bias {
        g.launch(&k::add_broadcast(dptr(b)?, n, yp, m * n)?)?;
    }
    Ok(())
}

/// The backward, adding into `dx` (if given), `dw` and `dbias` (if given).
pub fn bwd<T: Float>(
    gpu: &Gpu,
    (x, w, dy): (&Tensor<T>, &Tensor<T>, &Tensor<T>),
    dx: Option<&mut Tensor<T>>,
    dw: &mut Tensor<T>,
    dbias: Option<&mut Tensor<T>>,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    let dyp = dptr(dy)?;
    if let Some(dx) = dx {
        let (wp, dxp) = (dptr(w)?, dptr(dx)?);
        gpu.gemm(&Gemm::single(dyp, false, wp, false, dxp, (m, k, n), 1.0))?;
    }
    let (xp, dwp) = (dptr(x)?, dptr(dw)?);
    gpu.gemm(&Gemm::single(dyp, true, xp, false, dwp, (n, k, m), 1.0))?;
    if let Some(db) = dbias {
        gpu.launch(&reduce::sum_rows_into(dyp, m, n, dptr(db)?)?)?;
    }
    Ok(())
}
