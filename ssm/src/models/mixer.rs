//! The layers a language model stacks on its residual stream, behind one enum: a [`MixerConfig`]
//! says what a layer is and what it costs (parameters, FLOPs, activations), a [`Mixer`] is the
//! built layer (forward, backward, recurrent step, decoding state, parameters), and a
//! [`LayerState`] is its decoding state.
//!
//! An enum rather than a trait object: the set of layers is the engine's own, every method is
//! generic over the float type (`cast::<f64>()` for gradient checks, which a `dyn` trait cannot
//! offer), and a new layer kind is one variant whose missing arms the compiler lists, all in this
//! file.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::INIT_STD;
use super::mamba::MambaMixerConfig;
use super::mamba2::Mamba2MixerConfig;
use super::transformer::{AttentionConfig, TransformerBlock};
use crate::error::{Error, Result};
use crate::nn::attention::KvCache;
use crate::nn::mamba::{MambaBlock, MixerState};
use crate::nn::mamba2::{Mamba2Block, Mamba2State};
use crate::nn::{Module, Param};
use crate::tensor::{Float, Tensor};

/// One layer of a language model: its kind and settings. The width, norm epsilon and position
/// scheme come from the model.
#[derive(Clone, Debug, PartialEq)]
pub enum MixerConfig {
    /// x + mixer(rmsnorm(x)), the Mamba block.
    Mamba(MambaMixerConfig),
    /// x + mixer(rmsnorm(x)), the Mamba-2 block (SSD).
    Mamba2(Mamba2MixerConfig),
    /// h = x + attn(rmsnorm(x)); h + mlp(rmsnorm(h)), the pre-norm Transformer block.
    Attention(AttentionConfig),
}

/// The settings of every kind of layer, one table each (`[model.hybrid.mamba]`,
/// `[model.hybrid.mamba2]`, `[model.hybrid.attention]`), and the letter that names each kind in a
/// hybrid's pattern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixerSettings {
    /// `M`: the Mamba blocks.
    pub mamba: MambaMixerConfig,
    /// `S`: the Mamba-2 (SSD) blocks.
    pub mamba2: Mamba2MixerConfig,
    /// `A`: the attention + MLP blocks.
    pub attention: AttentionConfig,
}

impl MixerSettings {
    /// The letters of a pattern, for error messages.
    pub const LETTERS: &'static str = "M (Mamba), S (Mamba-2, SSD) and A (attention)";

    /// The layer a pattern letter names, if any.
    pub fn layer(&self, letter: char) -> Option<MixerConfig> {
        match letter {
            'M' => Some(MixerConfig::Mamba(self.mamba.clone())),
            'S' => Some(MixerConfig::Mamba2(self.mamba2.clone())),
            'A' => Some(MixerConfig::Attention(self.attention.clone())),
            _ => None,
        }
    }

    /// Rejects impossible settings at width `d_model`, naming the field: Mamba's and attention's
    /// always (their defaults fit every width), Mamba-2's when `pattern` has an `S` (its heads
    /// must divide d_inner).
    pub fn validate(&self, pattern: &str, d_model: usize, rope: bool) -> Result<()> {
        self.mamba.validate(d_model)?;
        if pattern.contains('S') {
            self.mamba2.validate(d_model)?;
        }
        self.attention.validate(d_model, rope)
    }
}

/// What a layer needs from the model it sits in.
#[derive(Clone, Copy, Debug)]
pub struct LayerContext {
    pub d_model: usize,
    pub norm_eps: f64,
    /// Attention rotates queries and keys (RoPE).
    pub rope: bool,
}

impl MixerConfig {
    /// Trainable values of one such layer at width `d_model`.
    pub fn num_params(&self, d_model: usize) -> usize {
        match self {
            MixerConfig::Mamba(c) => c.block_params(d_model),
            MixerConfig::Mamba2(c) => c.block_params(d_model),
            MixerConfig::Attention(c) => c.block_params(d_model),
        }
    }

    /// Training FLOPs per token of this layer beyond the 6 per parameter the model counts at
    /// sequence length `seq_len`.
    pub fn extra_flops(&self, d_model: usize, seq_len: usize) -> f64 {
        match self {
            MixerConfig::Mamba(c) => c.scan_flops(d_model),
            MixerConfig::Mamba2(c) => c.ssd_flops(d_model, seq_len),
            MixerConfig::Attention(c) => c.attention_flops(d_model, seq_len),
        }
    }

    /// The short name of the kind, in formulas: "mamba", "mamba2", "attn".
    pub fn name(&self) -> &'static str {
        match self {
            MixerConfig::Mamba(_) => "mamba",
            MixerConfig::Mamba2(_) => "mamba2",
            MixerConfig::Attention(_) => "attn",
        }
    }

    /// The term of [`extra_flops`](Self::extra_flops) as a formula, to print on plots.
    pub fn flops_term(&self) -> &'static str {
        match self {
            MixerConfig::Mamba(_) => "27·d_inner·d_state",
            MixerConfig::Mamba2(_) => {
                "6·Q·(ngroups·d_state + d_inner) + 12·d_inner·d_state, Q = min(chunk, L)"
            }
            MixerConfig::Attention(_) => "6·L·d_model",
        }
    }

    /// A lower bound on the values one token keeps for this layer's backward: the inputs of its
    /// projections.
    pub fn training_floats_per_token(&self, d_model: usize) -> usize {
        match self {
            MixerConfig::Mamba(c) => 4 * c.d_inner(d_model) + 2 * d_model,
            MixerConfig::Mamba2(c) => 4 * c.d_inner(d_model) + 2 * d_model,
            MixerConfig::Attention(c) => 4 * d_model + 2 * c.mlp_hidden(d_model),
        }
    }

    /// Residual branches of the layer, for the depth scaling of the output projections.
    pub fn residual_branches(&self) -> usize {
        match self {
            MixerConfig::Mamba(_) | MixerConfig::Mamba2(_) => 1,
            MixerConfig::Attention(_) => 2,
        }
    }

    /// The layer, initialised from `rng`; its residual output projections are scaled by
    /// 1/√`branches`, the residual branches of the whole model (GPT-2; MambaLMHeadModel's
    /// `_init_weights`).
    pub fn build<T: Float>(&self, cx: LayerContext, branches: usize, rng: &mut StdRng) -> Mixer<T> {
        let out_scale = 1.0 / (branches as f64).sqrt();
        match self {
            MixerConfig::Mamba(c) => Mixer::Mamba(c.block(cx.d_model, cx.norm_eps, out_scale, rng)),
            MixerConfig::Mamba2(c) => {
                Mixer::Mamba2(c.block(cx.d_model, cx.norm_eps, out_scale, rng))
            }
            MixerConfig::Attention(c) => Mixer::Attention(TransformerBlock::new(
                c,
                cx.d_model,
                cx.norm_eps,
                cx.rope,
                INIT_STD * out_scale,
                rng,
            )),
        }
    }
}

/// A built layer.
// A handful per model, built once: the padding of the smaller variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Mixer<T: Float = f32> {
    Mamba(MambaBlock<T>),
    Mamba2(Mamba2Block<T>),
    Attention(TransformerBlock<T>),
}

/// The decoding state of one layer: the recurrent state of a Mamba or Mamba-2 block or the KV
/// cache of an attention block.
#[derive(Clone, Debug)]
pub enum LayerState<T: Float = f32> {
    Mamba(MixerState<T>),
    Mamba2(Mamba2State<T>),
    Attention(KvCache<T>),
}

impl<T: Float> LayerState<T> {
    fn kind(&self) -> &'static str {
        match self {
            LayerState::Mamba(_) => "a Mamba",
            LayerState::Mamba2(_) => "a Mamba-2",
            LayerState::Attention(_) => "an attention",
        }
    }
}

impl<T: Float> Mixer<T> {
    fn kind(&self) -> &'static str {
        match self {
            Mixer::Mamba(_) => "a Mamba",
            Mixer::Mamba2(_) => "a Mamba-2",
            Mixer::Attention(_) => "an attention",
        }
    }

    fn state_mismatch(&self, state: &LayerState<T>) -> Error {
        Error::config(
            "state",
            format!(
                "{} decoding state given to {} layer: the state is of another model",
                state.kind(),
                self.kind()
            ),
        )
    }
}

impl<T: Float> Mixer<T> {
    /// out (b, l, d) = layer(x (b, l, d)); `out` is resized. With `state`, the tokens continue
    /// the sequences it holds and it is advanced; `train` keeps what `backward` needs.
    pub fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: Option<&mut LayerState<T>>,
        train: bool,
    ) -> Result<()> {
        match (self, state) {
            (Mixer::Mamba(m), None) => m.forward(x, out, None, train),
            (Mixer::Mamba(m), Some(LayerState::Mamba(s))) => m.forward(x, out, Some(s), train),
            (Mixer::Mamba2(m), None) => m.forward(x, out, None, train),
            (Mixer::Mamba2(m), Some(LayerState::Mamba2(s))) => m.forward(x, out, Some(s), train),
            (Mixer::Attention(a), None) => a.forward(x, out, None, train),
            (Mixer::Attention(a), Some(LayerState::Attention(kv))) => {
                a.forward(x, out, Some(kv), train)
            }
            (layer, Some(s)) => Err(layer.state_mismatch(s)),
        }
    }

    /// out (b, 1, d) for one new token per sequence, advancing `state`: the recurrent step of a
    /// Mamba block, a one-position chunk of a Mamba-2 block, one cached attention query for an
    /// attention block.
    pub fn step(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut LayerState<T>,
    ) -> Result<()> {
        match (self, state) {
            (Mixer::Mamba(m), LayerState::Mamba(s)) => m.step(x, out, s),
            (Mixer::Mamba2(m), LayerState::Mamba2(s)) => m.forward(x, out, Some(s), false),
            (Mixer::Attention(a), LayerState::Attention(kv)) => a.forward(x, out, Some(kv), false),
            (layer, s) => Err(layer.state_mismatch(s)),
        }
    }

    /// dx += ∂L/∂x given dout, after a training forward.
    pub fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        match self {
            Mixer::Mamba(m) => m.backward(x, dout, dx),
            Mixer::Mamba2(m) => m.backward(x, dout, dx),
            Mixer::Attention(a) => a.backward(x, dout, dx),
        }
    }

    /// A fresh decoding state for `b` sequences: a zero recurrent state, an empty KV cache.
    pub fn zero_state(&self, b: usize) -> Result<LayerState<T>> {
        Ok(match self {
            Mixer::Mamba(m) => LayerState::Mamba(m.mixer.zero_state(b)?),
            Mixer::Mamba2(m) => LayerState::Mamba2(m.mixer.zero_state(b)?),
            Mixer::Attention(a) => LayerState::Attention(a.new_cache(b)?),
        })
    }

    /// The same layer in another float type.
    pub fn cast<U: Float>(&self) -> Mixer<U> {
        match self {
            Mixer::Mamba(m) => Mixer::Mamba(m.cast()),
            Mixer::Mamba2(m) => Mixer::Mamba2(m.cast()),
            Mixer::Attention(a) => Mixer::Attention(a.cast()),
        }
    }

    /// The Mamba block of this layer, if it is one (checkpoint naming, ablations).
    pub fn as_mamba(&self) -> Option<&MambaBlock<T>> {
        match self {
            Mixer::Mamba(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_mamba_mut(&mut self) -> Option<&mut MambaBlock<T>> {
        match self {
            Mixer::Mamba(m) => Some(m),
            _ => None,
        }
    }

    /// The Mamba-2 block of this layer, if it is one (checkpoint naming).
    pub fn as_mamba2(&self) -> Option<&Mamba2Block<T>> {
        match self {
            Mixer::Mamba2(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_mamba2_mut(&mut self) -> Option<&mut Mamba2Block<T>> {
        match self {
            Mixer::Mamba2(m) => Some(m),
            _ => None,
        }
    }
}

impl<T: Float> Module<T> for Mixer<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        match self {
            Mixer::Mamba(m) => m.visit_params(f),
            Mixer::Mamba2(m) => m.visit_params(f),
            Mixer::Attention(a) => a.visit_params(f),
        }
    }
}
