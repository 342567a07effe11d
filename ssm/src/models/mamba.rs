//! The Mamba language model (MambaLMHeadModel of state-spaces/mamba, MambaForCausalLM of
//! transformers): embedding → n_layer × (x + mixer(rmsnorm(x))) → rmsnorm → lm_head tied to the
//! embedding.

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::limits;
use super::trunk::Trunk;
use crate::error::{Error, Result};
use crate::nn::init::normal;
use crate::nn::mamba::{DtInit, MambaBlock, MambaMixer, MixerDims, MixerState};
use crate::nn::norm::RmsNorm;
use crate::nn::{Module, Param};
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
    /// Δ, B and C depend on the input (S6, true); false is the non-selective ablation, where
    /// they are learned constants (the LTI S4D-real case, Mamba paper Table 1's S4 row).
    pub selective: bool,
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
            selective: true,
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
        let sizes = [
            ("d_model", self.d_model, limits::MAX_WIDTH),
            ("n_layer", self.n_layer, limits::MAX_LAYERS),
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB),
            ("d_state", self.d_state, limits::MAX_STATE),
            ("d_conv", self.d_conv, limits::MAX_CONV),
            ("expand", self.expand, limits::MAX_EXPAND),
            ("dt_rank", self.dt_rank(), limits::MAX_WIDTH),
            (
                "pad_vocab_size_multiple",
                self.pad_vocab_size_multiple,
                limits::MAX_VOCAB,
            ),
        ];
        for (field, v, max) in sizes {
            limits::size(field, v, max)?;
        }
        limits::float_in("norm_eps", self.norm_eps, 0.0, 1.0)?;
        limits::float_in("dt_max", self.dt_max, 0.0, 1e3)?;
        limits::float_in("dt_min", self.dt_min, 0.0, self.dt_max)?;
        if !(self.dt_init_floor.is_finite() && self.dt_init_floor >= 0.0) {
            return Err(Error::config(
                "dt_init_floor",
                format!("must be a finite number >= 0, got {}", self.dt_init_floor),
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
            selective: self.selective,
        }
    }
}

/// Decoding state: one mixer state per layer.
#[derive(Clone, Debug)]
pub struct MambaState<T: Float = f32> {
    pub layers: Vec<MixerState<T>>,
}

#[derive(Clone, Debug)]
pub struct MambaLM<T: Float = f32> {
    pub config: MambaConfig,
    /// (v, d), also the output projection.
    pub embedding: Param<T>,
    pub layers: Vec<MambaBlock<T>>,
    pub norm_f: RmsNorm<T>,
    trunk: Trunk<T>,
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
            trunk: Trunk::default(),
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
        let n_layer = self.layers.len();
        let state_layers = state.as_ref().map(|s| s.layers.len());
        self.trunk.embed(
            "MambaLM::forward",
            ids,
            b,
            n_layer,
            state_layers,
            &self.embedding.value,
        )?;
        let layers = &mut self.layers;
        self.trunk.layers(|i, x, out| {
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            layers[i].forward(x, out, st, train)
        })?;
        self.trunk.head(&mut self.norm_f, &self.embedding.value)
    }

    /// Logits (b, v) for one new token per sequence (`tokens`, b of them), advancing `state`:
    /// the recurrent step of every layer (mamba_simple's `step`), the same numbers as
    /// [`MambaLM::forward`] of that token with the state.
    pub fn step(&mut self, tokens: &[u32], state: &mut MambaState<T>) -> Result<Tensor<T>> {
        let (b, n_layer) = (tokens.len(), self.layers.len());
        self.trunk.embed(
            "MambaLM::step",
            tokens,
            b,
            n_layer,
            Some(state.layers.len()),
            &self.embedding.value,
        )?;
        let layers = &mut self.layers;
        self.trunk
            .layers(|i, x, out| layers[i].step(x, out, &mut state.layers[i]))?;
        let v = self.vocab();
        self.trunk
            .head(&mut self.norm_f, &self.embedding.value)?
            .try_clone()?
            .reshape([b, v])
    }

    /// Mean next-token cross-entropy of a training forward: `targets` (b · l) hold the token to
    /// predict at each position, or `IGNORE_INDEX`.
    pub fn forward_loss(&mut self, ids: &[u32], targets: &[i64], b: usize) -> Result<f64> {
        self.forward(ids, b, None, true)?;
        self.trunk.loss(targets)
    }

    /// Adds ∂loss/∂θ of the last `forward_loss` into every parameter's gradient.
    pub fn backward(&mut self) -> Result<()> {
        let Self {
            trunk,
            layers,
            norm_f,
            embedding,
            ..
        } = self;
        trunk.backward(
            "MambaLM::backward",
            norm_f,
            embedding,
            |i, x, dout, dx| layers[i].backward(x, dout, dx),
            |_| Ok(()),
        )
    }

    /// A zero decoding state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> Result<MambaState<T>> {
        Ok(MambaState {
            layers: self
                .layers
                .iter()
                .map(|l| l.mixer.zero_state(b))
                .collect::<Result<_>>()?,
        })
    }

    /// The same model in another float type (gradient checks run in f64).
    pub fn cast<U: Float>(&self) -> MambaLM<U> {
        MambaLM {
            config: self.config.clone(),
            embedding: self.embedding.cast(),
            layers: self.layers.iter().map(MambaBlock::cast).collect(),
            norm_f: self.norm_f.cast(),
            trunk: Trunk::default(),
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
