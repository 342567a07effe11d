//! Elementwise activations: SiLU, softplus, GELU (tanh approximation) and the gating product
//! `x * silu(z)`.

pub(crate) mod cpu;
mod cuda;

use super::{gpu_of, same_dims};
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// y = silu(x) = x · sigmoid(x); `y` is resized.
pub fn silu_fwd<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset_output(x.shape().clone(), x.device())?;
    match gpu_of("silu_fwd", x, &[])? {
        None => cpu::silu_fwd(x.host()?, y.host_mut()?),
        Some(g) => cuda::silu_fwd(&g, x, y)?,
    }
    Ok(())
}

/// dx += dy · silu'(x).
pub fn silu_bwd<T: Float>(x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
    same_dims("silu_bwd", "dy", dy, x.dims())?;
    same_dims("silu_bwd", "dx", dx, x.dims())?;
    match gpu_of("silu_bwd", x, &[dy, dx])? {
        None => cpu::silu_bwd(x.host()?, dy.host()?, dx.host_mut()?),
        Some(g) => cuda::silu_bwd(&g, x, dy, dx)?,
    }
    Ok(())
}

/// y = softplus(x) = ln(1 + eˣ) (x itself above 20); `y` is resized.
pub fn softplus_fwd<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset_output(x.shape().clone(), x.device())?;
    match gpu_of("softplus_fwd", x, &[])? {
        None => cpu::softplus_fwd(x.host()?, y.host_mut()?),
        Some(g) => cuda::softplus_fwd(&g, x, y)?,
    }
    Ok(())
}

/// dx += dy · sigmoid(x).
pub fn softplus_bwd<T: Float>(x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
    same_dims("softplus_bwd", "dy", dy, x.dims())?;
    same_dims("softplus_bwd", "dx", dx, x.dims())?;
    match gpu_of("softplus_bwd", x, &[dy, dx])? {
        None => cpu::softplus_bwd(x.host()?, dy.host()?, dx.host_mut()?),
        Some(g) => cuda::softplus_bwd(&g, x, dy, dx)?,
    }
    Ok(())
}

/// y = gelu(x) in the tanh approximation (GPT-2; PyTorch's `approximate="tanh"`):
/// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))); `y` is resized.
pub fn gelu_fwd<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset_output(x.shape().clone(), x.device())?;
    match gpu_of("gelu_fwd", x, &[])? {
        None => cpu::gelu_fwd(x.host()?, y.host_mut()?),
        Some(g) => cuda::gelu_fwd(&g, x, y)?,
    }
    Ok(())
}

/// dx += dy · gelu'(x), the derivative of the tanh approximation.
pub fn gelu_bwd<T: Float>(x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
    same_dims("gelu_bwd", "dy", dy, x.dims())?;
    same_dims("gelu_bwd", "dx", dx, x.dims())?;
    match gpu_of("gelu_bwd", x, &[dy, dx])? {
        None => cpu::gelu_bwd(x.host()?, dy.host()?, dx.host_mut()?),
        Some(g) => cuda::gelu_bwd(&g, x, dy, dx)?,
    }
    Ok(())
}

/// y = x · silu(z); `y` is resized.
pub fn gate_fwd<T: Float>(x: &Tensor<T>, z: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    same_dims("gate_fwd", "z", z, x.dims())?;
    y.reset_output(x.shape().clone(), x.device())?;
    match gpu_of("gate_fwd", x, &[z])? {
        None => cpu::gate_fwd(x.host()?, z.host()?, y.host_mut()?),
        Some(g) => cuda::gate_fwd(&g, x, z, y)?,
    }
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
    match gpu_of("gate_bwd", x, &[z, dy, dx, dz])? {
        None => cpu::gate_bwd(
            x.host()?,
            z.host()?,
            dy.host()?,
            dx.host_mut()?,
            dz.host_mut()?,
        ),
        Some(g) => cuda::gate_bwd(&g, (x, z, dy), dx, dz)?,
    }
    Ok(())
}

/// y = -exp(x): Mamba's A from A_log; `y` is resized.
pub fn neg_exp<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    y.reset_output(x.shape().clone(), x.device())?;
    match gpu_of("neg_exp", x, &[])? {
        None => {
            let out = y.host_mut()?;
            out.iter_mut()
                .zip(x.host()?)
                .for_each(|(o, &v)| *o = -v.exp());
        }
        Some(g) => cuda::neg_exp(&g, x, y)?,
    }
    Ok(())
}

/// out += a · b, elementwise.
pub fn mul_add_into<T: Float>(a: &Tensor<T>, b: &Tensor<T>, out: &mut Tensor<T>) -> Result<()> {
    same_dims("mul_add_into", "b", b, a.dims())?;
    same_dims("mul_add_into", "out", out, a.dims())?;
    match gpu_of("mul_add_into", a, &[b, out])? {
        None => {
            let (a, b) = (a.host()?, b.host()?);
            for ((o, &x), &y) in out.host_mut()?.iter_mut().zip(a).zip(b) {
                *o += x * y;
            }
        }
        Some(g) => cuda::mul_add_into(&g, a, b, out)?,
    }
    Ok(())
}

/// x *= s in place (gradient accumulation, clipping).
pub fn scale_<T: Float>(x: &mut Tensor<T>, s: f64) -> Result<()> {
    match gpu_of("scale_", x, &[])? {
        None => {
            let s = T::from_f64(s);
            x.host_mut()?.iter_mut().for_each(|v| *v *= s);
        }
        Some(g) => cuda::scale_(&g, x, s)?,
    }
    Ok(())
}

/// y += x (residual connections).
pub fn add_into<T: Float>(x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    same_dims("add_into", "y", y, x.dims())?;
    match gpu_of("add_into", x, &[y])? {
        None => cpu::add_into(x.host()?, y.host_mut()?),
        Some(g) => cuda::add_into(&g, x, y)?,
    }
    Ok(())
}
