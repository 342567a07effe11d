//! PyTorch through tch (the `torch` feature): the implementations users would otherwise pick,
//! written in PyTorch's own ops, to check ours against with autograd and to time beside ours in
//! one process. Nothing here is used by the engine itself.
//!
//! - [`scan`]: the selective scan as `selective_scan_ref` writes it (a loop over time) and as a
//!   log-depth parallel scan;
//! - [`attention`]: `scaled_dot_product_attention` (FlashAttention on a GPU), causal;
//! - [`lm`]: a [`lm::TorchLm`] mirroring any [`crate::models::LanguageModel`] (Mamba as
//!   transformers' slow path, the Transformer as Llama) with its weights, trained with torch's
//!   AdamW.
//!
//! libtorch must be 2.11.0 (tch 0.24); `scripts/setup-venv --torch` installs it and the README
//! says how to point the build at it.

// tch's `x += y` is torch's in-place add_: it would change the caller's tensors (shallow copies
// share storage) and autograd refuses it on leaves, so the code writes `x = x + y`.
#![allow(clippy::assign_op_pattern)]

pub mod attention;
pub mod lm;
pub mod scan;

pub use tch;
use tch::Kind;

use crate::error::{Error, Result};
use crate::tensor::{Device, Float, Tensor};

/// The torch device of one of ours; the CUDA emulation has no torch counterpart.
pub fn torch_device(device: Device) -> Result<tch::Device> {
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda(i) => Ok(tch::Device::Cuda(i)),
        other => Err(Error::config(
            "device",
            format!("PyTorch has no counterpart of {other}: use cpu or cuda:N"),
        )),
    }
}

/// The torch dtype of `T`: float for f32, double for f64.
pub fn kind_of<T: Float>() -> Kind {
    if std::mem::size_of::<T>() == 8 {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// A torch copy of `t` (same shape, dtype of `T`) on `device`.
pub fn to_torch<T: Float>(t: &Tensor<T>, device: tch::Device) -> Result<tch::Tensor> {
    let host: Vec<f64> = t.to_host_vec()?.into_iter().map(T::to_f64).collect();
    let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
    Ok(tch::Tensor::from_slice(&host)
        .to_kind(kind_of::<T>())
        .reshape(dims.as_slice())
        .to_device(device))
}

/// The values of a torch tensor, in row-major order, as `T`.
pub fn values<T: Float>(t: &tch::Tensor) -> Result<Vec<T>> {
    let flat = t
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous()
        .view(-1);
    let v: Vec<f64> = Vec::try_from(&flat)
        .map_err(|e| Error::config("torch tensor", format!("cannot read values: {e}")))?;
    Ok(v.into_iter().map(T::from_f64).collect())
}

/// Our tensor holding the values of a torch tensor (on the CPU).
pub fn from_torch<T: Float>(t: &tch::Tensor) -> Result<Tensor<T>> {
    let dims: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    Tensor::from_vec(dims, values(t)?)
}

/// max |a - b| over every element of our tensor and a torch tensor of the same shape.
pub fn max_abs_diff<T: Float>(ours: &Tensor<T>, theirs: &tch::Tensor) -> Result<f64> {
    let dims: Vec<i64> = ours.dims().iter().map(|&d| d as i64).collect();
    if theirs.size() != dims {
        return Err(Error::shape(
            "max_abs_diff",
            "torch tensor",
            format!("{dims:?}"),
            &theirs
                .size()
                .iter()
                .map(|&d| d as usize)
                .collect::<Vec<_>>(),
        ));
    }
    let theirs = values::<f64>(theirs)?;
    Ok(ours
        .to_host_vec()?
        .into_iter()
        .zip(theirs)
        .map(|(a, b)| (a.to_f64() - b).abs())
        .fold(0.0, f64::max))
}

/// RMSNorm over the last dimension by torch's `rms_norm`.
pub fn rmsnorm(x: &tch::Tensor, w: &tch::Tensor, eps: f64) -> tch::Tensor {
    let d = *x.size().last().expect("rank >= 1");
    x.rms_norm([d], Some(w), eps)
}

/// The causal depthwise convolution of `ops::conv1d` by torch's `conv1d`: x (b, l, d), w (d, k),
/// bias (d); zeros before the first position.
pub fn causal_conv1d(x: &tch::Tensor, w: &tch::Tensor, bias: Option<&tch::Tensor>) -> tch::Tensor {
    let (l, d, k) = (x.size()[1], w.size()[0], w.size()[1]);
    x.transpose(1, 2)
        .conv1d(&w.view([d, 1, k]), bias, [1], [k - 1], [1], d)
        .narrow(2, 0, l)
        .transpose(1, 2)
}
