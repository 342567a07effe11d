//! Elementwise activations on a GPU: each op's tensors to its launch of cu/elementwise.cu, over
//! all `x.numel()` values.

use ssm_kernels::elementwise as k;

use crate::backend::cuda::Gpu;
use crate::error::Result;
use crate::ops::dptr;
use crate::tensor::{Float, Tensor};

pub fn silu_fwd<T: Float>(g: &Gpu, x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    g.launch(&k::silu_fwd(dptr(x)?, dptr(y)?, x.numel())?)
}

pub fn silu_bwd<T: Float>(
    g: &Gpu,
    x: &Tensor<T>,
    dy: &Tensor<T>,
    dx: &mut Tensor<T>,
) -> Result<()> {
    g.launch(&k::silu_bwd(dptr(x)?, dptr(dy)?, dptr(dx)?, x.numel())?)
}

pub fn softplus_fwd<T: Float>(g: &Gpu, x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    g.launch(&k::softplus_fwd(dptr(x)?, dptr(y)?, x.numel())?)
}

pub fn softplus_bwd<T: Float>(
    g: &Gpu,
    x: &Tensor<T>,
    dy: &Tensor<T>,
    dx: &mut Tensor<T>,
) -> Result<()> {
    g.launch(&k::softplus_bwd(dptr(x)?, dptr(dy)?, dptr(dx)?, x.numel())?)
}

pub fn gelu_fwd<T: Float>(g: &Gpu, x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    g.launch(&k::gelu_fwd(dptr(x)?, dptr(y)?, x.numel())?)
}

pub fn gelu_bwd<T: Float>(
    g: &Gpu,
    x: &Tensor<T>,
    dy: &Tensor<T>,
    dx: &mut Tensor<T>,
) -> Result<()> {
    g.launch(&k::gelu_bwd(dptr(x)?, dptr(dy)?, dptr(dx)?, x.numel())?)
}

pub fn gate_fwd<T: Float>(g: &Gpu, x: &Tensor<T>, z: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    g.launch(&k::gate_fwd(dptr(x)?, dptr(z)?, dptr(y)?, x.numel())?)
}

pub fn gate_bwd<T: Float>(
    g: &Gpu,
    (x, z, dy): (&Tensor<T>, &Tensor<T>, &Tensor<T>),
    dx: &mut Tensor<T>,
    dz: &mut Tensor<T>,
) -> Result<()> {
    g.launch(&k::gate_bwd(
        dptr(x)?,
        dptr(z)?,
        dptr(dy)?,
        dptr(dx)?,
        dptr(dz)?,
        x.numel(),
    )?)
}

pub fn neg_exp<T: Float>(g: &Gpu, x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    g.launch(&k::neg_exp(dptr(x)?, dptr(y)?, x.numel())?)
}

pub fn mul_add_into<T: Float>(
    g: &Gpu,
    a: &Tensor<T>,
    b: &Tensor<T>,
    out: &mut Tensor<T>,
) -> Result<()> {
    g.launch(&k::mul_add_into(dptr(a)?, dptr(b)?, dptr(out)?, a.numel())?)
}

pub fn scale_<T: Float>(g: &Gpu, x: &mut Tensor<T>, s: f64) -> Result<()> {
    g.launch(&k::scale(dptr(x)?, s as f32, x.numel())?)
}

pub fn add_into<T: Float>(g: &Gpu, x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
    g.launch(&k::add_into(dptr(x)?, dptr(y)?, x.numel())?)
}
