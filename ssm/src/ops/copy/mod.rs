//! Blocks of row-major tensors viewed as matrices: the split of a fused projection into its parts
//! and the join of their gradients, appending to a KV cache, and adding a table slice to every
//! sequence (learned positions), on either device.

mod cuda;

use super::gpu_of;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// The width of `t` viewed as a matrix of `rows` rows.
fn width<T: Float>(op: &'static str, what: &str, t: &Tensor<T>, rows: usize) -> Result<usize> {
    if rows == 0 || t.numel() == 0 || !t.numel().is_multiple_of(rows) {
        return Err(Error::shape(
            op,
            what,
            format!("a non-zero multiple of {rows} elements"),
            t.dims(),
        ));
    }
    Ok(t.numel() / rows)
}

/// With src and dst viewed as matrices of `rows` rows: dst[:, dst_col..dst_col + cols] =
/// src[:, src_col..src_col + cols], or `+=` with `accumulate`.
pub fn copy_cols<T: Float>(
    src: &Tensor<T>,
    dst: &mut Tensor<T>,
    rows: usize,
    [src_col, dst_col]: [usize; 2],
    cols: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "copy_cols";
    let sw = width(OP, "src", src, rows)?;
    let dw = width(OP, "dst", dst, rows)?;
    if src_col + cols > sw || dst_col + cols > dw {
        return Err(Error::shape(
            OP,
            "dst",
            format!(
                "{rows} rows with columns {dst_col}..{} (source {:?}, columns {src_col}..{})",
                dst_col + cols,
                src.dims(),
                src_col + cols
            ),
            dst.dims(),
        ));
    }
    if let Some(g) = gpu_of(OP, src, &[dst])? {
        let at = [src_col, dst_col];
        return cuda::copy_cols(&g, (src, sw), (dst, dw), rows, at, cols, accumulate);
    }
    let s = src.host()?;
    for (r, row) in dst.host_mut()?.chunks_exact_mut(dw).enumerate() {
        let from = &s[r * sw + src_col..][..cols];
        let to = &mut row[dst_col..dst_col + cols];
        if accumulate {
            to.iter_mut().zip(from).for_each(|(o, &v)| *o += v);
        } else {
            to.copy_from_slice(from);
        }
    }
    Ok(())
}

/// x (b, ...) += src[start..start + per] in each of the b leading slices of `per` values.
pub fn add_broadcast<T: Float>(src: &Tensor<T>, start: usize, x: &mut Tensor<T>) -> Result<()> {
    const OP: &str = "add_broadcast";
    let per = slice_len(OP, src, start, x)?;
    if let Some(g) = gpu_of(OP, src, &[x])? {
        return cuda::add_broadcast(&g, src, (start, per), x);
    }
    let rows = &src.host()?[start..start + per];
    for seq in x.host_mut()?.chunks_exact_mut(per) {
        seq.iter_mut().zip(rows).for_each(|(y, &p)| *y += p);
    }
    Ok(())
}

/// dsrc[start..start + per] += Σ over the b leading slices of dx (b, ...): the backward of
/// [`add_broadcast`].
pub fn sum_leading_into<T: Float>(
    dx: &Tensor<T>,
    dsrc: &mut Tensor<T>,
    start: usize,
) -> Result<()> {
    const OP: &str = "sum_leading_into";
    let per = slice_len(OP, dsrc, start, dx)?;
    if let Some(g) = gpu_of(OP, dx, &[dsrc])? {
        return cuda::sum_leading_into(&g, dx, dsrc, (start, per));
    }
    let rows = &mut dsrc.host_mut()?[start..start + per];
    for seq in dx.host()?.chunks_exact(per) {
        rows.iter_mut().zip(seq).for_each(|(g, &v)| *g += v);
    }
    Ok(())
}

/// Values per leading slice of x (b, ...), checked to fit src from `start`.
fn slice_len<T: Float>(
    op: &'static str,
    src: &Tensor<T>,
    start: usize,
    x: &Tensor<T>,
) -> Result<usize> {
    let b = x.dims().first().copied().unwrap_or(0);
    let per = width(op, "x", x, b)?;
    if start + per > src.numel() {
        return Err(Error::shape(
            op,
            "table",
            format!("at least {} values", start + per),
            src.dims(),
        ));
    }
    Ok(per)
}
