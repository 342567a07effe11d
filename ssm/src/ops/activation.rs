//! Elementwise activations: SiLU, softplus, GELU (tanh approximation) and the gating product
//! `x * silu(z)`.

use super::same_dims;
use crate::backend::cpu::elementwise;
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// y = silu(x) = x · sigmoid(x); `y` is resized.
pub fn silu_fwd<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset(x.shape().clone());
    elementwise::silu_fwd(x.host()?, y.host_mut()?);
    Ok(())
}

/// dx += dy · silu'(x).
pub fn silu_bwd<T: Float>(x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
    same_dims("silu_bwd", "dy", dy, x.dims())?;
    same_dims("silu_bwd", "dx", dx, x.dims())?;
    elementwise::silu_bwd(x.host()?, dy.host()?, dx.host_mut()?);
    Ok(())
}

/// y = softplus(x) = ln(1 + eˣ) (x itself above 20); `y` is resized.
pub fn softplus_fwd<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset(x.shape().clone());
    elementwise::softplus_fwd(x.host()?, y.host_mut()?);
    Ok(())
}

/// dx += dy · sigmoid(x).
pub fn softplus_bwd<T: Float>(x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
    same_dims("softplus_bwd", "dy", dy, x.dims())?;
    same_dims("softplus_bwd", "dx", dx, x.dims())?;
    elementwise::softplus_bwd(x.host()?, dy.host()?, dx.host_mut()?);
    Ok(())
}

/// y = gelu(x) in the tanh approximation (GPT-2; PyTorch's `approximate="tanh"`):
/// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))); `y` is resized.
pub fn gelu_fwd<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset(x.shape().clone());
    elementwise::gelu_fwd(x.host()?, y.host_mut()?);
    Ok(())
}

/// dx += dy · gelu'(x), the derivative of the tanh approximation.
pub fn gelu_bwd<T: Float>(x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
    same_dims("gelu_bwd", "dy", dy, x.dims())?;
    same_dims("gelu_bwd", "dx", dx, x.dims())?;
    elementwise::gelu_bwd(x.host()?, dy.host()?, dx.host_mut()?);
    Ok(())
}

/// y = x · silu(z); `y` is resized.
pub fn gate_fwd<T: Float>(x: &Tensor<T>, z: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    same_dims("gate_fwd", "z", z, x.dims())?;
    y.reset(x.shape().clone());
    elementwise::gate_fwd(x.host()?, z.host()?, y.host_mut()?);
    Ok(())
}

/// dx += dy · silu(z), dz += dy · x · silu'(z).
pub fn gate_bwd<T: Float>(
    x: &Tensor<T>,
    z: &Tensor<T>,
    dy: &Tensor<T>,
    dx: &mut Tensor<T>,
    dz: &mut Tensor<T>,
) -> Result<()> {
    for (what, t) in [("z", z), ("dy", dy), ("dx", &*dx), ("dz", &*dz)] {
        same_dims("gate_bwd", what, t, x.dims())?;
    }
    elementwise::gate_bwd(
        x.host()?,
        z.host()?,
        dy.host()?,
        dx.host_mut()?,
        dz.host_mut()?,
    );
    Ok(())
}

/// y += x (residual connections).
pub fn add_into<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    same_dims("add_into", "y", y, x.dims())?;
    elementwise::add_into(x.host()?, y.host_mut()?);
    Ok(())
}
