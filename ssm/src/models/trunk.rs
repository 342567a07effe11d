//! What every language model of the engine does around its layers: check and embed the token
//! ids, carry the residual stream through the layers, the final RMSNorm and the lm_head tied to
//! the embedding, the loss, and the backward of all of it. The model owns its layers and calls
//! this with closures that run them.

use crate::error::{Error, Result};
use crate::nn::Param;
use crate::nn::norm::RmsNorm;
use crate::ops::embedding::{embedding_bwd, embedding_fwd};
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::ops::loss::{cross_entropy_bwd, cross_entropy_fwd};
use crate::tensor::{Float, Tensor};

/// Activations of the last forward, reused from step to step.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trunk<T: Float> {
    ids: Vec<u32>,
    targets: Vec<i64>,
    /// Position of the first token (learned positions, decoding).
    pub offset: usize,
    /// The residual stream entering each layer and leaving the last: n_layer + 1 of (b, l, d).
    resid: Vec<Tensor<T>>,
    hidden: Tensor<T>,
    logits: Tensor<T>,
    lse: Tensor<T>,
    dlogits: Tensor<T>,
    dhidden: Tensor<T>,
    dresid: [Tensor<T>; 2],
    /// Set by `loss`, cleared by `embed`: `backward` needs the caches of a training forward
    /// with a loss, and no other forward since.
    loss_ready: bool,
}

impl<T: Float> Trunk<T> {
    /// Checks `ids` (b · l, row-major) and a decoding state's layer count, records the ids and
    /// writes their embeddings into the residual stream. Returns l.
    pub fn embed(
        &mut self,
        op: &'static str,
        ids: &[u32],
        b: usize,
        n_layer: usize,
        state_layers: Option<usize>,
        embedding: &Tensor<T>,
    ) -> Result<usize> {
        if b == 0 || ids.is_empty() || !ids.len().is_multiple_of(b) {
            return Err(Error::shape(
                op,
                "ids",
                format!("b · l ids with b = {b} and l >= 1"),
                &[ids.len()],
            ));
        }
        if let Some(n) = state_layers.filter(|&n| n != n_layer) {
            return Err(Error::shape(op, "state", format!("{n_layer} layers"), &[n]));
        }
        let l = ids.len() / b;
        self.loss_ready = false;
        self.ids.clear();
        self.ids.extend_from_slice(ids);
        self.resid.resize_with(n_layer + 1, Tensor::default);
        embedding_fwd(ids, &[b, l], embedding, &mut self.resid[0])?;
        Ok(l)
    }

    /// The embedded input, for position encodings added to it.
    pub fn input_mut(&mut self) -> &mut Tensor<T> {
        &mut self.resid[0]
    }

    /// Runs `layer(i, x, out)` for every layer along the residual stream.
    pub fn layers(
        &mut self,
        mut layer: impl FnMut(usize, &Tensor<T>, &mut Tensor<T>) -> Result<()>,
    ) -> Result<()> {
        for i in 0..self.resid.len() - 1 {
            let (done, rest) = self.resid.split_at_mut(i + 1);
            layer(i, &done[i], &mut rest[0])?;
        }
        Ok(())
    }

    /// Logits (b, l, v) = lm_head(norm_f(residual stream)), lm_head tied to the embedding.
    pub fn head(&mut self, norm_f: &mut RmsNorm<T>, embedding: &Tensor<T>) -> Result<&Tensor<T>> {
        let last = self.resid.last().expect("embed ran first");
        norm_f.forward(last, &mut self.hidden)?;
        linear_fwd(&self.hidden, embedding, None, &mut self.logits)?;
        Ok(&self.logits)
    }

    /// Mean cross-entropy of the logits against `targets` (`IGNORE_INDEX` skipped); arms
    /// `backward`.
    pub fn loss(&mut self, targets: &[i64]) -> Result<f64> {
        let (loss, _) = cross_entropy_fwd(&self.logits, targets, &mut self.lse)?;
        self.targets.clear();
        self.targets.extend_from_slice(targets);
        self.loss_ready = true;
        Ok(loss)
    }

    /// Adds ∂loss/∂θ into every gradient: through the loss, the tied head and `norm_f`, then
    /// `layer(i, x, dout, dx)` for the layers in reverse, `input(dx)` for what was added to the
    /// embeddings, and the embedding lookup.
    pub fn backward(
        &mut self,
        op: &'static str,
        norm_f: &mut RmsNorm<T>,
        embedding: &mut Param<T>,
        mut layer: impl FnMut(usize, &Tensor<T>, &Tensor<T>, &mut Tensor<T>) -> Result<()>,
        input: impl FnOnce(&Tensor<T>) -> Result<()>,
    ) -> Result<()> {
        if !self.loss_ready {
            return Err(Error::config(
                op,
                "needs a forward_loss first (and no other forward since)",
            ));
        }
        self.dlogits.reset_like(&self.logits)?;
        cross_entropy_bwd(
            &self.logits,
            &self.targets,
            &self.lse,
            1.0,
            &mut self.dlogits,
        )?;
        self.dhidden.reset_like(&self.hidden)?;
        linear_bwd(
            &self.hidden,
            &embedding.value,
            &self.dlogits,
            Some(&mut self.dhidden),
            &mut embedding.grad,
            None,
        )?;
        let n = self.resid.len() - 1;
        let [d_out, d_in] = &mut self.dresid;
        d_out.reset_like(&self.resid[n])?;
        norm_f.backward(&self.resid[n], &self.dhidden, d_out)?;
        for i in (0..n).rev() {
            d_in.reset_like(&self.resid[i])?;
            layer(i, &self.resid[i], d_out, d_in)?;
            std::mem::swap(d_out, d_in);
        }
        input(d_out)?;
        embedding_bwd(&self.ids, d_out, &mut embedding.grad)
    }
}
