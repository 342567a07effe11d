//! The pre-norm residual block around a sequence mixer, x + mixer(rmsnorm(x)), as Mamba's and
//! Mamba-2's language models stack them (MambaLMHeadModel's `Block` with `fused_add_norm` off).

use super::norm::RmsNorm;
use super::{Module, Param};
use crate::error::Result;
use crate::ops::activation::add_into;
use crate::tensor::{Float, Tensor};

/// What the block needs of its mixer: a forward that may continue a decoding state, a backward
/// for the input of the last training forward, and the same mixer in another float type.
pub trait SeqMixer<T: Float>: Module<T> {
    /// The decoding state of the mixer.
    type State;
    /// The mixer in float type U.
    type Cast<U: Float>: SeqMixer<U>;

    /// out (b, l, d) = mixer(x (b, l, d)), continuing and advancing `state` when given.
    fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: Option<&mut Self::State>,
        train: bool,
    ) -> Result<()>;

    /// dx += ∂L/∂x given dout, for the `x` of the last training forward.
    fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()>;

    fn cast<U: Float>(&self) -> Self::Cast<U>;
}

/// x + mixer(rmsnorm(x)).
#[derive(Clone, Debug)]
pub struct PreNorm<T: Float, M> {
    pub norm: RmsNorm<T>,
    pub mixer: M,
    /// rmsnorm(x) of the last forward, the mixer's input.
    pub(crate) normed: Tensor<T>,
    dnormed: Tensor<T>,
}

impl<T: Float, M: SeqMixer<T>> PreNorm<T, M> {
    pub fn new(norm: RmsNorm<T>, mixer: M) -> Self {
        PreNorm {
            norm,
            mixer,
            normed: Tensor::default(),
            dnormed: Tensor::default(),
        }
    }

    /// out = x + mixer(norm(x)); `out` is resized.
    pub fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: Option<&mut M::State>,
        train: bool,
    ) -> Result<()> {
        self.norm.forward(x, &mut self.normed)?;
        self.mixer.forward(&self.normed, out, state, train)?;
        add_into(x, out)
    }

    /// dx += ∂L/∂x given dout.
    pub fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        add_into(dout, dx)?;
        self.dnormed.reset_like(x)?;
        self.mixer.backward(&self.normed, dout, &mut self.dnormed)?;
        self.norm.backward(x, &self.dnormed, dx)
    }

    pub fn cast<U: Float>(&self) -> PreNorm<U, M::Cast<U>> {
        PreNorm::new(self.norm.cast(), self.mixer.cast())
    }
}

impl<T: Float, M: SeqMixer<T>> Module<T> for PreNorm<T, M> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.norm
            .visit_params(&mut |name, p| f(&format!("norm.{name}"), p));
        self.mixer
            .visit_params(&mut |name, p| f(&format!("mixer.{name}"), p));
    }
}
