//! Launches of cu/rope.cu: rotary position embeddings of q or k (b, l, h, hd), as
//! `ssm::ops::rope` ("rotate half" pairing, angles in f64).

use crate::launch::{DevicePtr, KernelArgs, Launch, grid_1d, to_i32};
use crate::{Error, Result};

/// Shape of x and y: batch, length, heads, head dimension (even).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub b: usize,
    pub l: usize,
    pub h: usize,
    pub hd: usize,
}

/// y (b, l, h, hd) = RoPE(x (b, l, h, hd)) at positions offset..offset + l, or `+=` when
/// `accumulate`; `inverse` negates the angles (the backward, `ssm::ops::rope::rope_bwd`, is
/// `inverse` and `accumulate`). x may be y (in place, without `accumulate`), as
/// `rope_fwd_inplace`.
pub fn rope(
    x: DevicePtr,
    y: DevicePtr,
    dims: RopeDims,
    offset: usize,
    base: f64,
    inverse: bool,
    accumulate: bool,
) -> Result<Launch> {
    const K: &str = "rope_f32";
    let RopeDims { b, l, h, hd } = dims;
    if hd == 0 || hd % 2 != 0 {
        return Err(Error::Unsupported {
            kernel: K,
            reason: format!("needs an even head dimension >= 2, got {dims:?}"),
        });
    }
    if !(base.is_finite() && base > 0.0) {
        return Err(Error::Unsupported {
            kernel: K,
            reason: format!("needs a finite base > 0, got {base}"),
        });
    }
    to_i32(K, "b * l * h * hd", b * l * h * hd)?;
    to_i32(K, "offset + l", offset.saturating_add(l))?;
    let args = KernelArgs::new()
        .ptr(x)
        .ptr(y)
        .i32(b as i32)
        .i32(l as i32)
        .i32(h as i32)
        .i32(hd as i32)
        .i32(offset as i32)
        .f64(base)
        .i32(inverse as i32)
        .i32(accumulate as i32);
    Ok(Launch {
        kernel: K,
        config: grid_1d(b * l * hd / 2, 256, 132 * 16),
        args,
    })
}
