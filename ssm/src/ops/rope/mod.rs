//! Rotary position embeddings (RoFormer; Su et al., 2021) in the "rotate half" convention of
//! GPT-NeoX and Llama: in each head, elements i and i + hd/2 (i < hd/2) form a pair rotated by
//! the angle pos · θ_i with θ_i = base^(-2i/hd):
//!
//! ```text
//! y_i        = x_i cos(pos θ_i) - x_{i+hd/2} sin(pos θ_i)
//! y_{i+hd/2} = x_{i+hd/2} cos(pos θ_i) + x_i sin(pos θ_i)
//! ```
//!
//! Layout: q or k (b, l, h, hd) with hd even; token t sits at position `offset + t` (when decoding
//! with a KV cache, offset is the number of cached tokens). The rotation is orthogonal, so the
//! backward applies the inverse rotation (angles negated) to the gradient.

mod cpu;
mod cuda;

use super::{gpu_of, same_dims};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// The base of the frequencies in RoFormer and Llama.
pub const DEFAULT_ROPE_BASE: f64 = 10_000.0;

/// Checks x (b, l, h, hd) with hd even and the base; returns (l, h, hd).
fn check<T: Float>(op: &'static str, x: &Tensor<T>, base: f64) -> Result<(usize, usize, usize)> {
    let [_, l, h, hd] = *x.dims() else {
        return Err(Error::shape(op, "x", "[b, l, h, hd]", x.dims()));
    };
    if hd == 0 || hd % 2 != 0 {
        return Err(Error::shape(
            op,
            "x",
            "[b, l, h, hd] with hd even and >= 2",
            x.dims(),
        ));
    }
    if !(base.is_finite() && base > 0.0) {
        return Err(Error::config(
            "rope base",
            format!("{op}: expected a finite base > 0, got {base}"),
        ));
    }
    Ok((l, h, hd))
}

/// y (b, l, h, hd) = RoPE(x) at positions offset..offset + l; `y` is resized.
pub fn rope_fwd<T: Float>(
    x: &Tensor<T>,
    offset: usize,
    base: f64,
    y: &mut Tensor<T>,
) -> Result<()> {
    let (l, h, hd) = check("rope_fwd", x, base)?;
    if let Some(g) = gpu_of("rope_fwd", x, &[])? {
        y.reset_output(x.shape().clone(), x.device())?;
        return cuda::fwd(&g, x, y, (l, h, hd), (offset, base));
    }
    // The CPU kernel adds into y.
    y.reset(x.shape().clone(), x.device())?;
    let (cos, sin) = cpu::rope_table(l, hd, offset, base, false);
    cpu::rope_rotate_add(x.host()?, y.host_mut()?, &cos, &sin, l, h, hd);
    Ok(())
}

/// x (b, l, h, hd) = RoPE(x) at positions offset..offset + l, in place.
pub fn rope_fwd_inplace<T: Float>(x: &mut Tensor<T>, offset: usize, base: f64) -> Result<()> {
    let (l, h, hd) = check("rope_fwd_inplace", x, base)?;
    if let Some(g) = gpu_of("rope_fwd_inplace", x, &[])? {
        return cuda::fwd_inplace(&g, x, (l, h, hd), (offset, base));
    }
    let (cos, sin) = cpu::rope_table(l, hd, offset, base, false);
    cpu::rope_rotate(x.host_mut()?, &cos, &sin, l, h, hd);
    Ok(())
}

/// Accumulates dx (b, l, h, hd) += RoPE⁻¹(dy): the gradient of the input of `rope_fwd` (or
/// `rope_fwd_inplace`) with the same offset and base.
pub fn rope_bwd<T: Float>(
    dy: &Tensor<T>,
    offset: usize,
    base: f64,
    dx: &mut Tensor<T>,
) -> Result<()> {
    let (l, h, hd) = check("rope_bwd", dy, base)?;
    same_dims("rope_bwd", "dx", dx, dy.dims())?;
    if let Some(g) = gpu_of("rope_bwd", dy, &[dx])? {
        return cuda::bwd(&g, dy, dx, (l, h, hd), (offset, base));
    }
    let (cos, sin) = cpu::rope_table(l, hd, offset, base, true);
    cpu::rope_rotate_add(dy.host()?, dx.host_mut()?, &cos, &sin, l, h, hd);
    Ok(())
}
