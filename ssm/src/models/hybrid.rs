//! Hybrids of Mamba and attention layers, as in the Mamba-2 hybrids (Dao & Gu, 2024) and Jamba
//! (Lieber et al., 2024): a pattern such as "MMAMMA" lists the layers bottom to top, `M` a Mamba
//! block (x + mixer(rmsnorm(x)), as in `MambaLM`) and `A` a Transformer block (attention then MLP,
//! each pre-norm residual, as in `TransformerLM`). Embedding, final norm and tied head are shared.

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::generate::Decoder;
use super::limits;
use super::mamba::MambaConfig;
use super::mamba_block_params;
use super::transformer::{INIT_STD, TransformerBlock, TransformerConfig};
use super::trunk::Trunk;
use crate::error::{Error, Result};
use crate::nn::attention::{KvCache, LearnedPositions, PosEncoding};
use crate::nn::init::normal;
use crate::nn::mamba::{DtInit, MambaBlock, MambaMixer, MixerState};
use crate::nn::mlp::MlpKind;
use crate::nn::norm::RmsNorm;
use crate::nn::{Module, Param};
use crate::tensor::{Float, Tensor};

/// One letter of the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `M`: a Mamba block.
    Mamba,
    /// `A`: attention + MLP.
    Attention,
}

/// Hyper-parameters: the shared sizes, then the Mamba blocks' settings (as `MambaConfig`), then
/// the attention blocks' (as `TransformerConfig`). Defaults are those of the two models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HybridConfig {
    /// Layers bottom to top, `M` (Mamba) or `A` (attention + MLP); "MMAMMA" by default.
    pub pattern: String,
    /// Width of the residual stream (256).
    pub d_model: usize,
    /// Tokens the model must represent (256), padded to `pad_vocab_size_multiple` (8).
    pub vocab_size: usize,
    pub pad_vocab_size_multiple: usize,
    /// RMSNorm epsilon of every norm (1e-5).
    pub norm_eps: f64,
    /// Mamba blocks: SSM state size N (16).
    pub d_state: usize,
    /// Mamba blocks: convolution width (4).
    pub d_conv: usize,
    /// Mamba blocks: d_inner = expand · d_model (2).
    pub expand: usize,
    /// Mamba blocks: rank of the dt projection; `None` means ceil(d_model / 16).
    pub dt_rank: Option<usize>,
    /// Mamba blocks: bias on the convolution (true).
    pub conv_bias: bool,
    /// Mamba blocks: biases on in_proj and out_proj (false).
    pub bias: bool,
    /// Mamba blocks: range and floor of the initial dt (1e-3, 0.1, 1e-4).
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_init_floor: f64,
    /// Mamba blocks: Δ, B and C depend on the input (true); false is the non-selective ablation.
    pub selective: bool,
    /// Attention blocks: query heads (4); head_dim = d_model / n_heads.
    pub n_heads: usize,
    /// Attention blocks: key/value heads dividing n_heads; `None` means n_heads.
    pub n_kv_heads: Option<usize>,
    /// Attention blocks: biases on the projections (false).
    pub attn_bias: bool,
    /// Attention blocks: `swiglu` (default) or `gelu` MLP.
    pub mlp: MlpKind,
    /// Attention blocks: MLP width; `None` derives it as in `TransformerConfig`.
    pub mlp_hidden: Option<usize>,
    /// Attention blocks: rounding of the derived SwiGLU width (64).
    pub mlp_multiple_of: usize,
    /// `rope` (default, like the Transformer baseline), `learned` or `none` (as Jamba, where the
    /// Mamba layers give the position information).
    pub pos_encoding: PosEncoding,
    /// Positions of the learned table (1024); used only with `learned`.
    pub max_seq_len: usize,
    /// Base of the RoPE frequencies (10000).
    pub rope_base: f64,
}

impl Default for HybridConfig {
    fn default() -> Self {
        let (m, t) = (MambaConfig::default(), TransformerConfig::default());
        HybridConfig {
            pattern: "MMAMMA".into(),
            d_model: m.d_model,
            vocab_size: m.vocab_size,
            pad_vocab_size_multiple: m.pad_vocab_size_multiple,
            norm_eps: m.norm_eps,
            d_state: m.d_state,
            d_conv: m.d_conv,
            expand: m.expand,
            dt_rank: m.dt_rank,
            conv_bias: m.conv_bias,
            bias: m.bias,
            dt_min: m.dt_min,
            dt_max: m.dt_max,
            dt_init_floor: m.dt_init_floor,
            selective: m.selective,
            n_heads: t.n_heads,
            n_kv_heads: t.n_kv_heads,
            attn_bias: t.attn_bias,
            mlp: t.mlp,
            mlp_hidden: t.mlp_hidden,
            mlp_multiple_of: t.mlp_multiple_of,
            pos_encoding: t.pos_encoding,
            max_seq_len: t.max_seq_len,
            rope_base: t.rope_base,
        }
    }
}

impl HybridConfig {
    /// The layers of the pattern; an error names `pattern` when it is empty or has other letters.
    pub fn kinds(&self) -> Result<Vec<LayerKind>> {
        if self.pattern.is_empty() {
            return Err(Error::config(
                "pattern",
                "needs at least one layer (letters M and A)",
            ));
        }
        self.pattern
            .chars()
            .map(|c| match c {
                'M' => Ok(LayerKind::Mamba),
                'A' => Ok(LayerKind::Attention),
                other => Err(Error::config(
                    "pattern",
                    format!(
                        "`{other}` in \"{}\": only M (Mamba) and A (attention) are layers",
                        self.pattern
                    ),
                )),
            })
            .collect()
    }

    /// The settings of the Mamba blocks as a `MambaConfig` whose n_layer is the whole pattern.
    pub fn mamba_config(&self) -> MambaConfig {
        MambaConfig {
            d_model: self.d_model,
            n_layer: self.pattern.len(),
            vocab_size: self.vocab_size,
            d_state: self.d_state,
            d_conv: self.d_conv,
            expand: self.expand,
            dt_rank: self.dt_rank,
            conv_bias: self.conv_bias,
            bias: self.bias,
            norm_eps: self.norm_eps,
            pad_vocab_size_multiple: self.pad_vocab_size_multiple,
            dt_min: self.dt_min,
            dt_max: self.dt_max,
            dt_init_floor: self.dt_init_floor,
            selective: self.selective,
        }
    }

    /// The settings of the attention blocks as a `TransformerConfig` whose n_layer is the whole
    /// pattern.
    pub fn transformer_config(&self) -> TransformerConfig {
        TransformerConfig {
            d_model: self.d_model,
            n_layer: self.pattern.len(),
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            attn_bias: self.attn_bias,
            mlp: self.mlp,
            mlp_hidden: self.mlp_hidden,
            mlp_multiple_of: self.mlp_multiple_of,
            pos_encoding: self.pos_encoding,
            max_seq_len: self.max_seq_len,
            rope_base: self.rope_base,
            norm_eps: self.norm_eps,
            vocab_size: self.vocab_size,
            pad_vocab_size_multiple: self.pad_vocab_size_multiple,
        }
    }

    /// Rejects impossible values, naming the field (the same names as in the two models).
    pub fn validate(&self) -> Result<()> {
        self.kinds()?;
        limits::size("pattern (layers)", self.pattern.len(), limits::MAX_LAYERS)?;
        self.mamba_config().validate()?;
        self.transformer_config().validate()
    }

    fn count(&self, kind: LayerKind) -> usize {
        self.kinds()
            .map_or(0, |k| k.iter().filter(|&&x| x == kind).count())
    }

    /// Trainable values: the tied embedding once, learned positions if any, every block, the
    /// final norm.
    pub fn num_params(&self) -> usize {
        let t = self.transformer_config();
        let positions = if self.pos_encoding == PosEncoding::Learned {
            self.max_seq_len * self.d_model
        } else {
            0
        };
        let blocks = self.count(LayerKind::Mamba) * mamba_block_params(&self.mamba_config())
            + self.count(LayerKind::Attention) * t.block_params();
        t.padded_vocab() * self.d_model + positions + blocks + self.d_model
    }

    /// Training FLOPs per token at sequence length `seq_len`, the sum of the two conventions over
    /// the layers: 6·N + Σ_A 6·L·d + Σ_M 27·d_inner·d_state, with N = `num_params()`.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let m = self.mamba_config();
        let attention = self.count(LayerKind::Attention) * 6 * seq_len * self.d_model;
        let scan = self.count(LayerKind::Mamba) * 27 * m.d_inner() * m.d_state;
        6.0 * self.num_params() as f64 + attention as f64 + scan as f64
    }
}

/// One layer of a hybrid.
// A handful per model, built once: the padding of the smaller variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum HybridBlock<T: Float = f32> {
    Mamba(MambaBlock<T>),
    Attention(TransformerBlock<T>),
}

/// The decoding state of one layer: the recurrent state of a Mamba block or the KV cache of an
/// attention block.
#[derive(Clone, Debug)]
pub enum LayerState<T: Float = f32> {
    Mamba(MixerState<T>),
    Attention(KvCache<T>),
}

/// Decoding state: one per layer, and the position of the next token.
#[derive(Clone, Debug)]
pub struct HybridState<T: Float = f32> {
    pub layers: Vec<LayerState<T>>,
    pub pos: usize,
}

impl<T: Float> HybridBlock<T> {
    fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: Option<&mut LayerState<T>>,
        train: bool,
    ) -> Result<()> {
        match (self, state) {
            (HybridBlock::Mamba(m), None) => m.forward(x, out, None, train),
            (HybridBlock::Mamba(m), Some(LayerState::Mamba(s))) => {
                m.forward(x, out, Some(s), train)
            }
            (HybridBlock::Attention(a), None) => a.forward(x, out, None, train),
            (HybridBlock::Attention(a), Some(LayerState::Attention(kv))) => {
                a.forward(x, out, Some(kv), train)
            }
            _ => Err(Error::config(
                "state",
                "the decoding state's layers do not match the model's pattern",
            )),
        }
    }

    fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        match self {
            HybridBlock::Mamba(m) => m.backward(x, dout, dx),
            HybridBlock::Attention(a) => a.backward(x, dout, dx),
        }
    }

    fn cast<U: Float>(&self) -> HybridBlock<U> {
        match self {
            HybridBlock::Mamba(m) => HybridBlock::Mamba(m.cast()),
            HybridBlock::Attention(a) => HybridBlock::Attention(a.cast()),
        }
    }
}

impl<T: Float> Module<T> for HybridBlock<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        match self {
            HybridBlock::Mamba(m) => m.visit_params(f),
            HybridBlock::Attention(a) => a.visit_params(f),
        }
    }
}

#[derive(Clone, Debug)]
pub struct HybridLM<T: Float = f32> {
    pub config: HybridConfig,
    /// (v, d), also the output projection.
    pub embedding: Param<T>,
    pub positions: Option<LearnedPositions<T>>,
    pub layers: Vec<HybridBlock<T>>,
    pub norm_f: RmsNorm<T>,
    trunk: Trunk<T>,
}

impl<T: Float> HybridLM<T> {
    /// A freshly initialised model, deterministic in `seed`: each block as in its own model, with
    /// the residual output projections (out_proj, o_proj, down_proj) scaled by 1/√(residual
    /// branches), the branches counting one per M and two per A.
    pub fn new(config: HybridConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let (mc, tc) = (config.mamba_config(), config.transformer_config());
        let mut rng = StdRng::seed_from_u64(seed);
        let d = config.d_model;
        let embedding = Param::new(normal(&mut rng, &[tc.padded_vocab(), d], INIT_STD), true);
        let positions = (config.pos_encoding == PosEncoding::Learned)
            .then(|| LearnedPositions::new(config.max_seq_len, d, INIT_STD, &mut rng));
        let branches = config.count(LayerKind::Mamba) + 2 * config.count(LayerKind::Attention);
        let out_scale = 1.0 / (branches as f64).sqrt();
        let dt = DtInit {
            min: mc.dt_min,
            max: mc.dt_max,
            floor: mc.dt_init_floor,
        };
        let layers = config
            .kinds()?
            .into_iter()
            .map(|kind| match kind {
                LayerKind::Mamba => HybridBlock::Mamba(MambaBlock::new(
                    RmsNorm::new(d, mc.norm_eps),
                    MambaMixer::new(mc.mixer_dims(), dt, out_scale, &mut rng),
                )),
                LayerKind::Attention => HybridBlock::Attention(TransformerBlock::new(
                    &tc,
                    INIT_STD * out_scale,
                    &mut rng,
                )),
            })
            .collect();
        Ok(HybridLM {
            norm_f: RmsNorm::new(d, config.norm_eps),
            embedding,
            positions,
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
    /// from it and it is advanced (prefill, decoding); `train` keeps what `backward` needs (a
    /// forward without a state).
    pub fn forward(
        &mut self,
        ids: &[u32],
        b: usize,
        mut state: Option<&mut HybridState<T>>,
        train: bool,
    ) -> Result<&Tensor<T>> {
        let n_layer = self.layers.len();
        let state_layers = state.as_ref().map(|s| s.layers.len());
        let l = self.trunk.embed(
            "HybridLM::forward",
            ids,
            b,
            n_layer,
            state_layers,
            &self.embedding.value,
        )?;
        self.trunk.offset = state.as_ref().map_or(0, |s| s.pos);
        if let Some(p) = &self.positions {
            let offset = self.trunk.offset;
            p.forward(self.trunk.input_mut(), offset)?;
        }
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
            "HybridLM::backward",
            norm_f,
            embedding,
            |i, x, dout, dx| layers[i].backward(x, dout, dx),
            |dx| match positions {
                Some(p) => p.backward(dx, offset),
                None => Ok(()),
            },
        )
    }

    /// A fresh decoding state for `b` sequences: zero Mamba states, empty KV caches.
    pub fn zero_state(&self, b: usize) -> Result<HybridState<T>> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                Ok(match layer {
                    HybridBlock::Mamba(m) => LayerState::Mamba(m.mixer.zero_state(b)?),
                    HybridBlock::Attention(a) => LayerState::Attention(a.new_cache(b)?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(HybridState { layers, pos: 0 })
    }

    /// The same model in another float type (gradient checks run in f64).
    pub fn cast<U: Float>(&self) -> HybridLM<U> {
        HybridLM {
            config: self.config.clone(),
            embedding: self.embedding.cast(),
            positions: self.positions.as_ref().map(LearnedPositions::cast),
            layers: self.layers.iter().map(HybridBlock::cast).collect(),
            norm_f: self.norm_f.cast(),
            trunk: Trunk::default(),
        }
    }
}

impl<T: Float> Decoder<T> for HybridLM<T> {
    type State = HybridState<T>;
    fn vocab(&self) -> usize {
        HybridLM::vocab(self)
    }
    fn zero_state(&self, b: usize) -> Result<HybridState<T>> {
        HybridLM::zero_state(self, b)
    }
    fn forward_state(
        &mut self,
        ids: &[u32],
        b: usize,
        state: &mut HybridState<T>,
    ) -> Result<&Tensor<T>> {
        self.forward(ids, b, Some(state), false)
    }
}

impl<T: Float> Module<T> for HybridLM<T> {
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
