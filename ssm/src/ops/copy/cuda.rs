//! Column blocks and broadcasts on a GPU: strided copies, broadcast adds and row sums of
//! cu/elementwise.cu and cu/reduce.cu at element offsets into the tensors' buffers.

use ssm_kernels::elementwise::{add_broadcast as add_broadcast_launch, copy_strided};
use ssm_kernels::reduce::sum_rows_into;

use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// dst[:, dst_col..][..cols] = (or +=) src[:, src_col..][..cols], for `rows` rows of widths
/// `sw` (src) and `dw` (dst).
pub fn copy_cols<T: Float>(
    g: &Gpu,
    (src, sw): (&Tensor<T>, usize),
    (dst, dw): (&mut Tensor<T>, usize),
    rows: usize,
    [src_col, dst_col]: [usize; 2],
    cols: usize,
    accumulate: bool,
) -> Result<()> {
    let from = dptr(src)? + 4 * src_col as u64;
    let to = dptr(dst)? + 4 * dst_col as u64;
    g.launch(&copy_strided(from, sw, to, dw, rows, cols, accumulate)?)
}

/// x += src[start..start + per] in each slice of `per` values.
pub fn add_broadcast<T: Float>(
    g: &Gpu,
    src: &Tensor<T>,
    (start, per): (usize, usize),
    x: &mut Tensor<T>,
) -> Result<()> {
    let from = dptr(src)? + 4 * start as u64;
    g.launch(&add_broadcast_launch(from, per, dptr(x)?, x.numel())?)
}

/// dsrc[start..start + per] += the sum of the slices of `per` values of dx.
pub fn sum_leading_into<T: Float>(
    g: &Gpu,
    dx: &Tensor<T>,
    dsrc: &mut Tensor<T>,
    (start, per): (usize, usize),
) -> Result<()> {
    let to = dptr(dsrc)? + 4 * start as u64;
    g.launch(&sum_rows_into(dptr(dx)?, dx.numel() / per, per, to)?)
}
