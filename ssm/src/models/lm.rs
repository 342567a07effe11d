//! The language model: embedding (+ learned positions) → layers → rmsnorm → lm_head tied to the
//! embedding, with the training forward, the loss, the backward and token-by-token decoding. One
//! type for every architecture; the layers say which it is.

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::generate::Decoder;
use super::mixer::{LayerState, Mixer};
use super::trunk::Trunk;
use super::{INIT_STD, ModelConfig, ModelSpec};
use crate::error::{Error, Result};
use crate::nn::attention::LearnedPositions;
use crate::nn::init::normal;
use crate::nn::norm::RmsNorm;
use crate::nn::{Module, Param};
use crate::tensor::{Float, Tensor};

/// Decoding state: one per layer (recurrent state or KV cache), and the position of the next
/// token.
#[derive(Clone, Debug)]
pub struct LmState<T: Float = f32> {
    pub layers: Vec<LayerState<T>>,
    pub pos: usize,
}

impl<T: Float> LmState<T> {
    /// Every KV cache holds `pos` tokens: positions (learned) come from `pos` and rotations
    /// (RoPE) from the caches, so a state whose parts disagree, e.g. after a forward that failed
    /// midway, is refused rather than decoded at two positions.
    fn check_position(&self, op: &'static str) -> Result<()> {
        for (i, layer) in self.layers.iter().enumerate() {
            if let LayerState::Attention(kv) = layer
                && kv.len() != self.pos
            {
                return Err(Error::config(
                    "state",
                    format!(
                        "{op}: layer {i}'s KV cache holds {} tokens but the state is at position \
                         {}; a state left so by a failed forward cannot continue",
                        kv.len(),
                        self.pos
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct LanguageModel<T: Float = f32> {
    config: ModelConfig,
    /// (v, d), also the output projection.
    pub embedding: Param<T>,
    /// With `PosEncoding::Learned`: (max_seq_len, d) added to the embeddings.
    pub positions: Option<LearnedPositions<T>>,
    pub layers: Vec<Mixer<T>>,
    pub norm_f: RmsNorm<T>,
    trunk: Trunk<T>,
}

impl<T: Float> LanguageModel<T> {
    /// A freshly initialised model, deterministic in `seed`: the embedding (and learned
    /// positions) from N(0, 0.02²), then each layer as its kind initialises (Mamba:
    /// mamba_simple's init; attention: GPT-2's N(0, 0.02²)), the residual output projections
    /// (out_proj, o_proj, down_proj) scaled by 1/√(residual branches); norms one.
    pub fn new(config: impl Into<ModelConfig>, seed: u64) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let spec = config.spec()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let d = spec.d_model;
        let embedding = Param::new(normal(&mut rng, &[spec.vocab, d], INIT_STD), true);
        let positions = spec
            .learned_positions()
            .map(|n| LearnedPositions::new(n, d, INIT_STD, &mut rng));
        let (cx, branches) = (spec.context(), spec.residual_branches());
        let layers = spec
            .layers
            .iter()
            .map(|l| l.build(cx, branches, &mut rng))
            .collect();
        Ok(LanguageModel {
            norm_f: RmsNorm::new(d, spec.norm_eps),
            embedding,
            positions,
            layers,
            config,
            trunk: Trunk::default(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// "mamba", "transformer" or "hybrid".
    pub fn arch(&self) -> &'static str {
        self.config.arch()
    }

    /// What the config builds.
    pub fn spec(&self) -> ModelSpec {
        self.config
            .spec()
            .expect("validated when the model was built")
    }

    /// Rows of the embedding and columns of the logits.
    pub fn vocab(&self) -> usize {
        self.embedding.value.dims()[0]
    }

    /// Embeds `ids` (b · l) at the position of `state` (0 without one) into the trunk.
    fn embed(
        &mut self,
        op: &'static str,
        ids: &[u32],
        b: usize,
        state: Option<&LmState<T>>,
    ) -> Result<usize> {
        let state_layers = state.map(|s| s.layers.len());
        let l = self.trunk.embed(
            op,
            ids,
            b,
            self.layers.len(),
            state_layers,
            &self.embedding.value,
        )?;
        if let Some(s) = state {
            s.check_position(op)?;
        }
        self.trunk.offset = state.map_or(0, |s| s.pos);
        if let Some(p) = &self.positions {
            let offset = self.trunk.offset;
            p.forward(self.trunk.input_mut(), offset)?;
        }
        Ok(l)
    }

    /// Logits (b, l, v) for token ids (b · l, row-major). With `state`, the sequences continue
    /// from it and it is advanced (prefill, decoding); `train` keeps what `backward` needs (a
    /// forward without a state).
    pub fn forward(
        &mut self,
        ids: &[u32],
        b: usize,
        mut state: Option<&mut LmState<T>>,
        train: bool,
    ) -> Result<&Tensor<T>> {
        let l = self.embed("LanguageModel::forward", ids, b, state.as_deref())?;
        let layers = &mut self.layers;
        self.trunk.layers(|i, x, out| {
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            layers[i].forward(x, out, st, train)
        })?;
        if let Some(s) = state {
            s.pos += l;
        }
        self.trunk.head(&mut self.norm_f, &self.embedding.value)
    }

    /// Logits (b, v) for one new token per sequence (`tokens`, b of them), advancing `state`:
    /// each layer's recurrent step (mamba_simple's `step` for a Mamba block), the same numbers
    /// as [`forward`](Self::forward) of that token with the state.
    pub fn step(&mut self, tokens: &[u32], state: &mut LmState<T>) -> Result<Tensor<T>> {
        let b = tokens.len();
        self.embed("LanguageModel::step", tokens, b, Some(state))?;
        let layers = &mut self.layers;
        self.trunk
            .layers(|i, x, out| layers[i].step(x, out, &mut state.layers[i]))?;
        state.pos += 1;
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
            positions,
            ..
        } = self;
        let offset = trunk.offset;
        trunk.backward(
            "LanguageModel::backward",
            norm_f,
            embedding,
            |i, x, dout, dx| layers[i].backward(x, dout, dx),
            |dx| match positions {
                Some(p) => p.backward(dx, offset),
                None => Ok(()),
            },
        )
    }

    /// A fresh decoding state for `b` sequences: zero recurrent states, empty KV caches.
    pub fn zero_state(&self, b: usize) -> Result<LmState<T>> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.zero_state(b))
            .collect::<Result<_>>()?;
        Ok(LmState { layers, pos: 0 })
    }

    /// The same model in another float type (gradient checks run in f64).
    pub fn cast<U: Float>(&self) -> LanguageModel<U> {
        LanguageModel {
            config: self.config.clone(),
            embedding: self.embedding.cast(),
            positions: self.positions.as_ref().map(LearnedPositions::cast),
            layers: self.layers.iter().map(Mixer::cast).collect(),
            norm_f: self.norm_f.cast(),
            trunk: Trunk::default(),
        }
    }

    /// Trainable values outside the embeddings ([`ModelSpec::non_embedding_params`]).
    pub fn non_embedding_params(&self) -> usize {
        self.spec().non_embedding_params()
    }

    /// Training FLOPs per token at sequence length `seq_len` ([`ModelSpec::flops_per_token`]).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        self.spec().flops_per_token(seq_len)
    }

    /// The FLOPs formula of this model, to print on plots.
    pub fn flops_convention(&self) -> String {
        self.spec().flops_convention()
    }
}

impl<T: Float> Module<T> for LanguageModel<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f("embedding.weight", &mut self.embedding);
        if let Some(p) = &mut self.positions {
            p.visit_params(&mut |name, p| f(&format!("pos_embedding.{name}"), p));
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_params(&mut |name, p| f(&format!("layers.{i}.{name}"), p));
        }
        self.norm_f
            .visit_params(&mut |name, p| f(&format!("norm_f.{name}"), p));
    }
}

impl<T: Float> Decoder<T> for LanguageModel<T> {
    type State = LmState<T>;
    fn vocab(&self) -> usize {
        LanguageModel::vocab(self)
    }
    fn zero_state(&self, b: usize) -> Result<LmState<T>> {
        LanguageModel::zero_state(self, b)
    }
    fn forward_state(
        &mut self,
        ids: &[u32],
        b: usize,
        state: &mut LmState<T>,
    ) -> Result<&Tensor<T>> {
        self.forward(ids, b, Some(state), false)
    }
    fn step(&mut self, tokens: &[u32], state: &mut LmState<T>) -> Result<Tensor<T>> {
        LanguageModel::step(self, tokens, state)
    }
}
