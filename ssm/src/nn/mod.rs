//! Layers with explicit forward and backward (no tape). A layer keeps what its backward needs in
//! its own cache buffers, which are reused from step to step, and receives its input again in
//! `backward`, so the caller owns the activations that several layers share (the residual
//! stream). `backward` adds into parameter gradients and into the input gradient.

pub mod attention;
pub mod init;
pub mod mamba;
pub mod mamba2;
pub mod mlp;
pub mod norm;
pub mod residual;

use crate::error::Result;
use crate::tensor::{Device, Float, Tensor};

/// A trainable tensor with its gradient and whether AdamW decays it.
#[derive(Clone, Debug)]
pub struct Param<T: Float = f32> {
    pub value: Tensor<T>,
    pub grad: Tensor<T>,
    /// Weight decay applies (matrices and embeddings); off for A_log, D, norms and biases.
    pub decay: bool,
}

impl<T: Float> Param<T> {
    pub fn new(value: Tensor<T>, decay: bool) -> Self {
        let grad = Tensor::zeros_cpu(value.shape().clone());
        Param { value, grad, decay }
    }

    /// The same parameter in another float type (gradient checks run in f64), on the CPU.
    pub fn cast<U: Float>(&self) -> Param<U> {
        Param {
            value: self.value.cast(),
            grad: self.grad.cast(),
            decay: self.decay,
        }
    }

    /// Moves value and gradient to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        if self.value.device() != device {
            self.value = self.value.to_device(device)?;
            self.grad = self.grad.to_device(device)?;
        }
        Ok(())
    }
}

/// Anything that owns parameters.
pub trait Module<T: Float> {
    /// Calls `f` on every parameter with a name unique within the module, in a fixed order.
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>));

    /// Zeroes every gradient.
    fn zero_grad(&mut self) -> Result<()> {
        self.try_visit_params(&mut |_, p| p.grad.zero_())
    }

    /// [`Module::visit_params`] with a fallible `f`; stops at the first error.
    fn try_visit_params(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Param<T>) -> Result<()>,
    ) -> Result<()> {
        let mut result = Ok(());
        self.visit_params(&mut |name, p| {
            if result.is_ok() {
                result = f(name, p);
            }
        });
        result
    }

    /// Moves every parameter (value and gradient) to `device`; caches follow on the next forward.
    fn to_device(&mut self, device: Device) -> Result<()> {
        self.try_visit_params(&mut |_, p| p.to_device(device))
    }

    /// Number of trainable values.
    fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |_, p| n += p.value.numel());
        n
    }
}
