//! RMSNorm layer.

use super::{Module, Param};
use crate::error::Result;
use crate::ops::norm::{rmsnorm_bwd, rmsnorm_fwd};
use crate::tensor::{Float, Tensor};

#[derive(Clone, Debug)]
pub struct RmsNorm<T: Float = f32> {
    pub weight: Param<T>,
    pub eps: f64,
    rstd: Tensor<T>,
}

impl<T: Float> RmsNorm<T> {
    /// Weight of ones, as at initialisation.
    pub fn new(d: usize, eps: f64) -> Self {
        RmsNorm {
            weight: Param::new(super::init::full(&[d], 1.0), false),
            eps,
            rstd: Tensor::default(),
        }
    }

    /// y = rmsnorm(x) over the last dim; keeps 1/rms per row for the backward.
    pub fn forward(&mut self, x: &Tensor<T>, y: &mut Tensor<T>) -> Result<()> {
        rmsnorm_fwd(x, &self.weight.value, self.eps, y, &mut self.rstd)
    }

    /// dx += ∂L/∂x for the `x` of the last forward.
    pub fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        rmsnorm_bwd(
            dy,
            x,
            &self.weight.value,
            &self.rstd,
            dx,
            &mut self.weight.grad,
        )
    }

    pub fn cast<U: Float>(&self) -> RmsNorm<U> {
        RmsNorm {
            weight: self.weight.cast(),
            eps: self.eps,
            rstd: Tensor::default(),
        }
    }
}

impl<T: Float> Module<T> for RmsNorm<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f("weight", &mut self.weight);
    }
}
