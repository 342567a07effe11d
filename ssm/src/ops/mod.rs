//! Ops on tensors, one folder per family: `mod.rs` is the public API (shapes, validation, the
//! structs of inputs and gradients, dispatch on the tensors' device), `cpu.rs` the CPU kernels on
//! host slices, `cuda.rs` the mapping of tensors to the launches of `ssm-kernels`, `reference.rs`
//! the plain reference; a family has only the files it needs. Each op validates shapes (errors
//! name the op and the argument), then dispatches to its tensors' device. Forward and backward sit
//! next to each other; every backward *adds* into its gradient outputs, so residual branches and
//! tied weights need no special cases, and callers zero gradient buffers once per step.
//!
//! The references (`<family>::reference`, `*_ref` and `*_ref_bwd`) are the textbook formula of
//! each forward and its backward, written apart from the fast paths and importing nothing from
//! them (library `exp` and `ln_1p` throughout). Parity tests hold the CPU kernels and the CUDA
//! launches (emulated or real) to them. Each returns new tensors on the CPU (attention's reads CPU
//! tensors only, the others any device); gradients are returned fresh, not accumulated.
//!
//! Layout: activations are token-major, `(b, l, ...)`, so that a linear layer is one matrix
//! product over all `b * l` tokens.

pub mod activation;
pub mod attention;
pub mod conv1d;
pub mod copy;
pub mod embedding;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod rope;
pub mod scan;
pub mod ssd;

use std::sync::Arc;

use ssm_kernels::{DevicePtr, GradBuffer};

use crate::backend::cuda::Gpu;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Tensors are the handles of the op-level gradient structs (`ScanGrads`, `AttentionGrads`, the
/// kernels' generic ones over tensors): this gives them `zeros_like`, zeros shaped like the inputs
/// and on their device, and `zero_`.
impl<T: Float> GradBuffer for Tensor<T> {
    type Error = Error;

    fn zeros_like(&self) -> Result<Self> {
        Tensor::zeros(self.shape().clone(), self.device())
    }

    fn zero_(&mut self) -> Result<()> {
        Tensor::zero_(self)
    }
}

/// The GPU that runs `op` when `x` lives on a CUDA device (`None` on the CPU), after checking that
/// every tensor in `others` lives on the same device as `x`.
pub(crate) fn gpu_of<T: Float>(
    op: &'static str,
    x: &Tensor<T>,
    others: &[&Tensor<T>],
) -> Result<Option<Arc<Gpu>>> {
    if let Some(o) = others.iter().find(|o| o.device() != x.device()) {
        return Err(Error::DeviceMismatch {
            op,
            a: x.device().to_string(),
            b: o.device().to_string(),
        });
    }
    Ok(x.gpu().ok().cloned())
}

/// The device address of a CUDA tensor.
pub(crate) fn dptr<T: Float>(t: &Tensor<T>) -> Result<DevicePtr> {
    t.cuda_ptr()
}

/// The last dimension and the product of the others (rows) of a tensor of rank >= 1.
pub(crate) fn rows_cols<T: Float>(
    op: &'static str,
    what: &str,
    x: &Tensor<T>,
) -> Result<(usize, usize)> {
    match x.dims().split_last() {
        Some((&c, lead)) => Ok((lead.iter().product(), c)),
        None => Err(Error::shape(op, what, "rank >= 1", x.dims())),
    }
}

/// The rows and width of x (..., d) with d >= 1, as the references check it.
pub(crate) fn rows_of<T: Float>(op: &'static str, x: &Tensor<T>) -> Result<(usize, usize)> {
    match x.dims() {
        [.., d] if *d > 0 => Ok((x.numel() / d, *d)),
        _ => Err(Error::shape(op, "x", "[..., d] with d >= 1", x.dims())),
    }
}

/// The dims of `x` with the last one replaced by `last`.
pub(crate) fn with_last<T: Float>(x: &Tensor<T>, last: usize) -> Vec<usize> {
    let mut d = x.dims().to_vec();
    if let Some(l) = d.last_mut() {
        *l = last;
    }
    d
}

/// Checks that `x` has the dims of `like` (gradient buffers must match their inputs).
pub(crate) fn same_dims<T: Float>(
    op: &'static str,
    what: &str,
    x: &Tensor<T>,
    like: &[usize],
) -> Result<()> {
    x.expect_dims(op, what, like)
}

/// A gradient buffer with the input it belongs to, each possibly absent, named for errors.
pub(crate) type GradPair<'a, T> = (&'static str, Option<&'a Tensor<T>>, Option<&'a Tensor<T>>);

/// Checks the gradient buffers of a backward: each has its input's dims, and none is given for
/// an absent input.
pub(crate) fn check_grad_buffers<T: Float>(op: &'static str, pairs: &[GradPair<T>]) -> Result<()> {
    for &(what, grad, input) in pairs {
        match (grad, input) {
            (Some(gt), Some(it)) => gt.expect_dims(op, what, it.dims())?,
            (Some(_), None) => {
                return Err(Error::shape(
                    op,
                    what,
                    "no gradient buffer for an absent input",
                    &[],
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
