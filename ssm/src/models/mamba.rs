//! The Mamba language model (MambaLMHeadModel of state-spaces/mamba, MambaForCausalLM of
//! transformers): embedding → n_layer × (x + mixer(rmsnorm(x))) → rmsnorm → lm_head tied to the
//! embedding.

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::init::normal;
use crate::nn::mamba::{DtInit, MambaBlock, MambaMixer, MixerDims, MixerState};
use crate::nn::norm::RmsNorm;
use crate::nn::{Module, Param};
use crate::ops::embedding::{embedding_bwd, embedding_fwd};
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::ops::loss::{cross_entropy_bwd, cross_entropy_fwd};
use crate::tensor::{Float, Tensor};

/// Model hyper-parameters; defaults are mamba_simple's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MambaConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of Mamba blocks.
    pub n_layer: usize,
    /// Tokens the model must represent; the embedding is padded to `pad_vocab_size_multiple`.
    pub vocab_size: usize,
    /// SSM state size N.
    pub d_state: usize,
    /// Width of the causal convolution.
    pub d_conv: usize,
    /// d_inner = expand · d_model.
    pub expand: usize,
    /// Rank of the dt projection; `None` means ceil(d_model / 16).
    pub dt_rank: Option<usize>,
    /// Bias on the convolution.
    pub conv_bias: bool,
    /// Biases on in_proj and out_proj.
    pub bias: bool,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// The embedding has a multiple of this many rows.
    pub pad_vocab_size_multiple: usize,
    /// Range and floor of the initial dt.
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_init_floor: f64,
}

impl Default for MambaConfig {
    fn default() -> Self {
        MambaConfig {
            d_model: 256,
            n_layer: 4,
            vocab_size: 256,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            conv_bias: true,
            bias: false,
            norm_eps: 1e-5,
            pad_vocab_size_multiple: 8,
            dt_min: 1e-3,
            dt_max: 0.1,
            dt_init_floor: 1e-4,
        }
    }
}

impl MambaConfig {
    pub fn d_inner(&self) -> usize {
        self.expand * self.d_model
    }
    pub fn dt_rank(&self) -> usize {
        self.dt_rank.unwrap_or(self.d_model.div_ceil(16))
    }
    /// Rows of the embedding: vocab_size rounded up to the padding multiple.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size
            .div_ceil(self.pad_vocab_size_multiple.max(1))
            * self.pad_vocab_size_multiple.max(1)
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("d_model", self.d_model),
            ("n_layer", self.n_layer),
            ("vocab_size", self.vocab_size),
            ("d_state", self.d_state),
            ("d_conv", self.d_conv),
            ("expand", self.expand),
            ("dt_rank", self.dt_rank()),
            ("pad_vocab_size_multiple", self.pad_vocab_size_multiple),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(Error::config(
                "norm_eps",
                format!("must be positive, got {}", self.norm_eps),
            ));
        }
        if self.dt_min.is_nan() || self.dt_min <= 0.0 || self.dt_min > self.dt_max {
            return Err(Error::config(
                "dt_min",
                format!(
                    "need 0 < dt_min <= dt_max, got {} and {}",
                    self.dt_min, self.dt_max
                ),
            ));
        }
        Ok(())
    }

    pub fn mixer_dims(&self) -> MixerDims {
        MixerDims {
            d_model: self.d_model,
            d_inner: self.d_inner(),
            d_state: self.d_state,
            d_conv: self.d_conv,
            dt_rank: self.dt_rank(),
            bias: self.bias,
            conv_bias: self.conv_bias,
        }
    }
}

/// Decoding state: one mixer state per layer.
#[derive(Clone, Debug)]
pub struct MambaState<T: Float = f32> {
    pub layers: Vec<MixerState<T>>,
}

/// Activations of the last forward, reused from step to step.
#[derive(Clone, Debug, Default)]
struct Acts<T: Float> {
    ids: Vec<u32>,
    targets: Vec<i64>,
    /// The residual stream entering each layer and leaving the last: n_layer + 1 of (b, l, d).
    resid: Vec<Tensor<T>>,
    hidden: Tensor<T>,
    logits: Tensor<T>,
    lse: Tensor<T>,
    dlogits: Tensor<T>,
    dhidden: Tensor<T>,
    dresid: [Tensor<T>; 2],
    /// Set by `forward_loss`, cleared by any other forward, whose caches `backward` cannot use.
    loss_ready: bool,
}

#[derive(Clone, Debug)]
pub struct MambaLM<T: Float = f32> {
    pub config: MambaConfig,
    /// (v, d), also the output projection.
    pub embedding: Param<T>,
    pub layers: Vec<MambaBlock<T>>,
    pub norm_f: RmsNorm<T>,
    acts: Acts<T>,
}

impl<T: Float> MambaLM<T> {
    /// A freshly initialised model (MambaLMHeadModel's `_init_weights`: embedding N(0, 0.02²),
    /// out_proj scaled by 1/√n_layer), deterministic in `seed`.
    pub fn new(config: MambaConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let embedding = Param::new(
            normal(&mut rng, &[config.padded_vocab(), config.d_model], 0.02),
            true,
        );
        let dt = DtInit {
            min: config.dt_min,
            max: config.dt_max,
            floor: config.dt_init_floor,
        };
        let out_scale = 1.0 / (config.n_layer as f64).sqrt();
        let layers = (0..config.n_layer)
            .map(|_| {
                MambaBlock::new(
                    RmsNorm::new(config.d_model, config.norm_eps),
                    MambaMixer::new(config.mixer_dims(), dt, out_scale, &mut rng),
                )
            })
            .collect();
        Ok(MambaLM {
            norm_f: RmsNorm::new(config.d_model, config.norm_eps),
            embedding,
            layers,
            config,
            acts: Acts::default(),
        })
    }

    /// Rows of the embedding and columns of the logits.
    pub fn vocab(&self) -> usize {
        self.embedding.value.dims()[0]
    }

    /// Logits (b, l, v) for token ids (b · l, row-major). With `state`, the sequences continue
    /// from it and it is advanced (prefill, decoding); `train` keeps what `backward` needs.
    pub fn forward(
        &mut self,
        ids: &[u32],
        b: usize,
        mut state: Option<&mut MambaState<T>>,
        train: bool,
    ) -> Result<&Tensor<T>> {
        if b == 0 || ids.is_empty() || !ids.len().is_multiple_of(b) {
            return Err(Error::shape(
                "MambaLM::forward",
                "ids",
                format!("b · l ids with b = {b} and l >= 1"),
                &[ids.len()],
            ));
        }
        let l = ids.len() / b;
        if let Some(s) = &state
            && s.layers.len() != self.layers.len()
        {
            return Err(Error::shape(
                "MambaLM::forward",
                "state",
                format!("{} layers", self.layers.len()),
                &[s.layers.len()],
            ));
        }
        let a = &mut self.acts;
        a.loss_ready = false;
        a.ids.clear();
        a.ids.extend_from_slice(ids);
        a.resid.resize_with(self.layers.len() + 1, Tensor::default);
        embedding_fwd(ids, &[b, l], &self.embedding.value, &mut a.resid[0])?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (done, rest) = a.resid.split_at_mut(i + 1);
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            layer.forward(&done[i], &mut rest[0], st, train)?;
        }
        self.norm_f
            .forward(&a.resid[self.layers.len()], &mut a.hidden)?;
        linear_fwd(&a.hidden, &self.embedding.value, None, &mut a.logits)?;
        Ok(&a.logits)
    }

    /// Mean next-token cross-entropy of a training forward: `targets` (b · l) hold the token to
    /// predict at each position, or `IGNORE_INDEX`.
    pub fn forward_loss(&mut self, ids: &[u32], targets: &[i64], b: usize) -> Result<f64> {
        self.forward(ids, b, None, true)?;
        let a = &mut self.acts;
        let (loss, _) = cross_entropy_fwd(&a.logits, targets, &mut a.lse)?;
        a.targets.clear();
        a.targets.extend_from_slice(targets);
        a.loss_ready = true;
        Ok(loss)
    }

    /// Adds ∂loss/∂θ of the last `forward_loss` into every parameter's gradient.
    pub fn backward(&mut self) -> Result<()> {
        let a = &mut self.acts;
        if !a.loss_ready {
            return Err(Error::config(
                "MambaLM::backward",
                "needs a forward_loss first (and no other forward since)",
            ));
        }
        a.dlogits.reset(a.logits.shape().clone());
        cross_entropy_bwd(&a.logits, &a.targets, &a.lse, 1.0, &mut a.dlogits)?;
        a.dhidden.reset(a.hidden.shape().clone());
        linear_bwd(
            &a.hidden,
            &self.embedding.value,
            &a.dlogits,
            Some(&mut a.dhidden),
            &mut self.embedding.grad,
            None,
        )?;
        let n = self.layers.len();
        let [d_out, d_in] = &mut a.dresid;
        d_out.reset(a.resid[n].shape().clone());
        self.norm_f.backward(&a.resid[n], &a.dhidden, d_out)?;
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            d_in.reset(a.resid[i].shape().clone());
            layer.backward(&a.resid[i], d_out, d_in)?;
            std::mem::swap(d_out, d_in);
        }
        embedding_bwd(&a.ids, d_out, &mut self.embedding.grad)
    }

    /// A zero decoding state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> MambaState<T> {
        MambaState {
            layers: self.layers.iter().map(|l| l.mixer.zero_state(b)).collect(),
        }
    }

    /// Logits (b, v) for one new token per sequence, advancing `state`.
    pub fn step(&mut self, tokens: &[u32], state: &mut MambaState<T>) -> Result<Tensor<T>> {
        let b = tokens.len();
        let v = self.vocab();
        self.forward(tokens, b, Some(state), false)?
            .clone()
            .reshape([b, v])
    }

    /// The same model in another float type (gradient checks run in f64).
    pub fn cast<U: Float>(&self) -> MambaLM<U> {
        MambaLM {
            config: self.config.clone(),
            embedding: self.embedding.cast(),
            layers: self.layers.iter().map(MambaBlock::cast).collect(),
            norm_f: self.norm_f.cast(),
            acts: Acts::default(),
        }
    }
}

impl<T: Float> Module<T> for MambaLM<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f("embedding.weight", &mut self.embedding);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_params(&mut |name, p| f(&format!("layers.{i}.{name}"), p));
        }
        self.norm_f
            .visit_params(&mut |name, p| f(&format!("norm_f.{name}"), p));
    }
}
