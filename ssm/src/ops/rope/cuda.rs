//! RoPE on a GPU: the op's tensors to the launch of cu/rope.cu, which rotates x (b, l, h, hd) or,
//! for the backward, rotates the gradient back (angles negated) and adds it.

use ssm_kernels::DevicePtr;
use ssm_kernels::rope::{self as k, RopeDims};

use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

/// The kernel's sizes of x (b, l, h, hd), from the (l, h, hd) the op checked.
fn dims<T: Float>(x: &Tensor<T>, (l, h, hd): (usize, usize, usize)) -> RopeDims {
    let b = x.numel() / (l * h * hd).max(1);
    RopeDims { b, l, h, hd }
}

/// `to` = RoPE(`from`) at positions offset.., or `to` += RoPE⁻¹(`from`) for the backward.
fn rotate(
    g: &Gpu,
    (from, to): (DevicePtr, DevicePtr),
    dims: RopeDims,
    (offset, base): (usize, f64),
    backward: bool,
) -> Result<()> {
    g.launch(&k::rope(from, to, dims, offset, base, backward, backward)?)
}

/// y = RoPE(x); `y` is already sized on the device.
pub fn fwd<T: Float>(
    g: &Gpu,
    x: &Tensor<T>,
    y: &mut Tensor<T>,
    lhd: (usize, usize, usize),
    at: (usize, f64),
) -> Result<()> {
    rotate(g, (dptr(x)?, dptr(y)?), dims(x, lhd), at, false)
}

/// x = RoPE(x) in place.
pub fn fwd_inplace<T: Float>(
    g: &Gpu,
    x: &mut Tensor<T>,
    lhd: (usize, usize, usize),
    at: (usize, f64),
) -> Result<()> {
    let p = dptr(x)?;
    rotate(g, (p, p), dims(x, lhd), at, false)
}

/// dx += RoPE⁻¹(dy).
pub fn bwd<T: Float>(
    g: &Gpu,
    dy: &Tensor<T>,
    dx: &mut Tensor<T>,
    lhd: (usize, usize, usize),
    at: (usize, f64),
) -> Result<()> {
    rotate(g, (dptr(dy)?, dptr(dx)?), dims(dy, lhd), at, true)
}
