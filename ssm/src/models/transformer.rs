//! The Transformer baseline, built like Llama but small: embedding (+ learned positions, GPT-2
//! style, when chosen) → n_layer × pre-norm blocks (x + attn(rmsnorm(x)); x + mlp(rmsnorm(x))) →
//! rmsnorm → lm_head tied to the embedding. Only the sequence mixer differs from `MambaLM`: the
//! same embedding, norms, tied head, loss and optimizer.

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::generate::Decoder;
use super::limits;
use super::trunk::Trunk;
use crate::error::{Error, Result};
use crate::nn::attention::{
    AttentionDims, CausalSelfAttention, KvCache, LearnedPositions, PosEncoding,
};
use crate::nn::init::normal;
use crate::nn::mlp::{Mlp, MlpKind};
use crate::nn::norm::RmsNorm;
use crate::nn::{Module, Param};
use crate::ops::activation::add_into;
use crate::ops::rope::DEFAULT_ROPE_BASE;
use crate::tensor::{Float, Tensor};

/// The standard deviation of every weight at initialisation (GPT-2), before the depth scaling of
/// the residual output projections.
pub const INIT_STD: f64 = 0.02;

/// Model hyper-parameters; the defaults are a small Llama-style model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    /// Width of the residual stream (256).
    pub d_model: usize,
    /// Number of blocks, each attention + MLP (4).
    pub n_layer: usize,
    /// Query heads h (4); head_dim = d_model / n_heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention), dividing n_heads; `None` means n_heads.
    pub n_kv_heads: Option<usize>,
    /// Biases on the attention projections (false, as Llama).
    pub attn_bias: bool,
    /// `swiglu` (default) or `gelu`.
    pub mlp: MlpKind,
    /// Hidden width of the MLP; `None` means `MlpKind::default_hidden`: 4·d for GELU, ⌊8·d/3⌋
    /// rounded up to `mlp_multiple_of` for SwiGLU.
    pub mlp_hidden: Option<usize>,
    /// Rounding of the derived SwiGLU width (64; Llama uses 256, too coarse for small models).
    pub mlp_multiple_of: usize,
    /// `rope` (default), `learned` or `none`.
    pub pos_encoding: PosEncoding,
    /// Positions of the learned table (1024, as GPT-2); used only with `learned`.
    pub max_seq_len: usize,
    /// Base of the RoPE frequencies (10000).
    pub rope_base: f64,
    /// RMSNorm epsilon (1e-5).
    pub norm_eps: f64,
    /// Tokens the model must represent (256); the embedding is padded to `pad_vocab_size_multiple`.
    pub vocab_size: usize,
    /// The embedding has a multiple of this many rows (8).
    pub pad_vocab_size_multiple: usize,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            d_model: 256,
            n_layer: 4,
            n_heads: 4,
            n_kv_heads: None,
            attn_bias: false,
            mlp: MlpKind::SwiGlu,
            mlp_hidden: None,
            mlp_multiple_of: 64,
            pos_encoding: PosEncoding::Rope,
            max_seq_len: 1024,
            rope_base: DEFAULT_ROPE_BASE,
            norm_eps: 1e-5,
            vocab_size: 256,
            pad_vocab_size_multiple: 8,
        }
    }
}

impl TransformerConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }
    /// hd = d_model / n_heads.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }
    pub fn mlp_hidden(&self) -> usize {
        self.mlp_hidden
            .unwrap_or(self.mlp.default_hidden(self.d_model, self.mlp_multiple_of))
    }
    /// Rows of the embedding: vocab_size rounded up to the padding multiple.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size
            .div_ceil(self.pad_vocab_size_multiple.max(1))
            * self.pad_vocab_size_multiple.max(1)
    }

    pub fn attention_dims(&self) -> AttentionDims {
        AttentionDims {
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim(),
            bias: self.attn_bias,
            rope_base: (self.pos_encoding == PosEncoding::Rope).then_some(self.rope_base),
        }
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        // d_model and the rounding first: the derived MLP width is computed from them.
        limits::size("d_model", self.d_model, limits::MAX_WIDTH)?;
        limits::size("mlp_multiple_of", self.mlp_multiple_of, limits::MAX_WIDTH)?;
        let sizes = [
            ("n_layer", self.n_layer, limits::MAX_LAYERS),
            ("n_heads", self.n_heads, limits::MAX_WIDTH),
            ("n_kv_heads", self.n_kv_heads(), limits::MAX_WIDTH),
            ("mlp_hidden", self.mlp_hidden(), limits::MAX_HIDDEN),
            ("max_seq_len", self.max_seq_len, limits::MAX_POSITIONS),
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB),
            (
                "pad_vocab_size_multiple",
                self.pad_vocab_size_multiple,
                limits::MAX_VOCAB,
            ),
        ];
        for (field, v, max) in sizes {
            limits::size(field, v, max)?;
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "n_heads",
                format!(
                    "must divide d_model = {}, got {}",
                    self.d_model, self.n_heads
                ),
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads()) {
            return Err(Error::config(
                "n_kv_heads",
                format!(
                    "must divide n_heads = {}, got {}",
                    self.n_heads,
                    self.n_kv_heads()
                ),
            ));
        }
        if self.pos_encoding == PosEncoding::Rope && !self.head_dim().is_multiple_of(2) {
            return Err(Error::config(
                "n_heads",
                format!(
                    "RoPE needs an even head_dim = d_model / n_heads, got {}",
                    self.head_dim()
                ),
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return Err(Error::config(
                "rope_base",
                format!("must be finite and above 1, got {}", self.rope_base),
            ));
        }
        limits::float_in("norm_eps", self.norm_eps, 0.0, 1.0)
    }

    /// Parameters of one block: two norms, the four attention projections (and their biases),
    /// the MLP's matrices.
    pub fn block_params(&self) -> usize {
        let (d, q, kv) = (
            self.d_model,
            self.n_heads * self.head_dim(),
            self.n_kv_heads() * self.head_dim(),
        );
        let attn = 2 * d * q + 2 * d * kv + if self.attn_bias { q + 2 * kv + d } else { 0 };
        2 * d + attn + self.mlp.n_matrices() * d * self.mlp_hidden()
    }

    /// Trainable values of the model: the tied embedding once, the learned positions if any, the
    /// blocks and the final norm.
    pub fn num_params(&self) -> usize {
        let positions = if self.pos_encoding == PosEncoding::Learned {
            self.max_seq_len * self.d_model
        } else {
            0
        };
        self.padded_vocab() * self.d_model
            + positions
            + self.n_layer * self.block_params()
            + self.d_model
    }

    /// Training FLOPs per token at sequence length `seq_len` (Kaplan et al., 2020, eq. 2.1 × 3 for
    /// forward + backward): 6·N + 6·n_layer·L·d, with N = `num_params()` (the tied embedding once,
    /// as the lm_head matrix) and the second term the attention scores and their weighted sum.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        6.0 * self.num_params() as f64 + 6.0 * (self.n_layer * seq_len * self.d_model) as f64
    }
}

/// Decoding state: one KV cache per layer.
#[derive(Clone, Debug)]
pub struct TransformerState<T: Float = f32> {
    pub layers: Vec<KvCache<T>>,
}

impl<T: Float> TransformerState<T> {
    /// Tokens consumed so far: the position of the next one.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pre-norm block: h = x + attn(rmsnorm(x)); out = h + mlp(rmsnorm(h)).
#[derive(Clone, Debug)]
pub struct TransformerBlock<T: Float = f32> {
    pub attn_norm: RmsNorm<T>,
    pub attn: CausalSelfAttention<T>,
    pub mlp_norm: RmsNorm<T>,
    pub mlp: Mlp<T>,
    /// The inputs of attn and mlp, and h; all (b, l, d).
    normed: [Tensor<T>; 2],
    mid: Tensor<T>,
    dnormed: Tensor<T>,
    dmid: Tensor<T>,
}

impl<T: Float> TransformerBlock<T> {
    /// A block of `config`'s sizes; `out_std` is the init std of o_proj and down_proj.
    pub fn new(config: &TransformerConfig, out_std: f64, rng: &mut StdRng) -> Self {
        let d = config.d_model;
        let attn = CausalSelfAttention::new(config.attention_dims(), INIT_STD, out_std, rng);
        let mlp = Mlp::new(config.mlp, d, config.mlp_hidden(), INIT_STD, out_std, rng);
        let norm = || RmsNorm::new(d, config.norm_eps);
        Self::from_parts(norm(), attn, norm(), mlp)
    }

    fn from_parts(
        attn_norm: RmsNorm<T>,
        attn: CausalSelfAttention<T>,
        mlp_norm: RmsNorm<T>,
        mlp: Mlp<T>,
    ) -> Self {
        let z = Tensor::default;
        TransformerBlock {
            attn_norm,
            attn,
            mlp_norm,
            mlp,
            normed: [z(), z()],
            mid: z(),
            dnormed: z(),
            dmid: z(),
        }
    }

    /// An empty KV cache for `b` sequences.
    pub fn new_cache(&self, b: usize) -> Result<KvCache<T>> {
        self.attn.new_cache(b)
    }

    /// out (b, l, d) = block(x (b, l, d)); `out` is resized. With `kv`, the tokens continue the
    /// cached sequences and are appended to the cache.
    pub fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        kv: Option<&mut KvCache<T>>,
        train: bool,
    ) -> Result<()> {
        let [na, nm] = &mut self.normed;
        self.attn_norm.forward(x, na)?;
        self.attn.forward(na, &mut self.mid, kv, train)?;
        add_into(x, &mut self.mid)?;
        self.mlp_norm.forward(&self.mid, nm)?;
        self.mlp.forward(nm, out)?;
        add_into(&self.mid, out)
    }

    /// dx += ∂L/∂x given dout.
    pub fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        let [na, nm] = &self.normed;
        self.dmid.reset_like(x)?;
        add_into(dout, &mut self.dmid)?;
        self.dnormed.reset_like(x)?;
        self.mlp.backward(nm, dout, &mut self.dnormed)?;
        self.mlp_norm
            .backward(&self.mid, &self.dnormed, &mut self.dmid)?;
        add_into(&self.dmid, dx)?;
        self.dnormed.reset_like(x)?;
        self.attn.backward(na, &self.dmid, &mut self.dnormed)?;
        self.attn_norm.backward(x, &self.dnormed, dx)
    }

    pub fn cast<U: Float>(&self) -> TransformerBlock<U> {
        TransformerBlock::from_parts(
            self.attn_norm.cast(),
            self.attn.cast(),
            self.mlp_norm.cast(),
            self.mlp.cast(),
        )
    }
}

impl<T: Float> Module<T> for TransformerBlock<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.attn_norm
            .visit_params(&mut |name, p| f(&format!("attn_norm.{name}"), p));
        self.attn
            .visit_params(&mut |name, p| f(&format!("attn.{name}"), p));
        self.mlp_norm
            .visit_params(&mut |name, p| f(&format!("mlp_norm.{name}"), p));
        self.mlp
            .visit_params(&mut |name, p| f(&format!("mlp.{name}"), p));
    }
}

#[derive(Clone, Debug)]
pub struct TransformerLM<T: Float = f32> {
    pub config: TransformerConfig,
    /// (v, d), also the output projection.
    pub embedding: Param<T>,
    /// With `PosEncoding::Learned`.
    pub positions: Option<LearnedPositions<T>>,
    pub layers: Vec<TransformerBlock<T>>,
    pub norm_f: RmsNorm<T>,
    trunk: Trunk<T>,
}

impl<T: Float> TransformerLM<T> {
    /// A freshly initialised model, deterministic in `seed`: every matrix and the embedding from
    /// N(0, 0.02²), o_proj and down_proj from N(0, (0.02/√(2·n_layer))²) (GPT-2's scaling of the
    /// residual projections by the number of residual branches), norms one, biases zero.
    pub fn new(config: TransformerConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let d = config.d_model;
        let embedding = Param::new(
            normal(&mut rng, &[config.padded_vocab(), d], INIT_STD),
            true,
        );
        let positions = (config.pos_encoding == PosEncoding::Learned)
            .then(|| LearnedPositions::new(config.max_seq_len, d, INIT_STD, &mut rng));
        let out_std = INIT_STD / ((2 * config.n_layer) as f64).sqrt();
        let layers = (0..config.n_layer)
            .map(|_| TransformerBlock::new(&config, out_std, &mut rng))
            .collect();
        Ok(TransformerLM {
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
        mut state: Option<&mut TransformerState<T>>,
        train: bool,
    ) -> Result<&Tensor<T>> {
        let n_layer = self.layers.len();
        let state_layers = state.as_ref().map(|s| s.layers.len());
        self.trunk.embed(
            "TransformerLM::forward",
            ids,
            b,
            n_layer,
            state_layers,
            &self.embedding.value,
        )?;
        self.trunk.offset = state.as_ref().map_or(0, |s| s.len());
        if let Some(p) = &self.positions {
            let offset = self.trunk.offset;
            p.forward(self.trunk.input_mut(), offset)?;
        }
        let layers = &mut self.layers;
        self.trunk.layers(|i, x, out| {
            let kv = state.as_deref_mut().map(|s| &mut s.layers[i]);
            layers[i].forward(x, out, kv, train)
        })?;
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
            "TransformerLM::backward",
            norm_f,
            embedding,
            |i, x, dout, dx| layers[i].backward(x, dout, dx),
            |dx| match positions {
                Some(p) => p.backward(dx, offset),
                None => Ok(()),
            },
        )
    }

    /// Empty KV caches for `b` sequences.
    pub fn zero_state(&self, b: usize) -> Result<TransformerState<T>> {
        Ok(TransformerState {
            layers: self
                .layers
                .iter()
                .map(|l| l.new_cache(b))
                .collect::<Result<_>>()?,
        })
    }

    /// The same model in another float type (gradient checks run in f64).
    pub fn cast<U: Float>(&self) -> TransformerLM<U> {
        TransformerLM {
            config: self.config.clone(),
            embedding: self.embedding.cast(),
            positions: self.positions.as_ref().map(LearnedPositions::cast),
            layers: self.layers.iter().map(TransformerBlock::cast).collect(),
            norm_f: self.norm_f.cast(),
            trunk: Trunk::default(),
        }
    }
}

impl<T: Float> Decoder<T> for TransformerLM<T> {
    type State = TransformerState<T>;
    fn vocab(&self) -> usize {
        TransformerLM::vocab(self)
    }
    fn zero_state(&self, b: usize) -> Result<TransformerState<T>> {
        TransformerLM::zero_state(self, b)
    }
    fn forward_state(
        &mut self,
        ids: &[u32],
        b: usize,
        state: &mut TransformerState<T>,
    ) -> Result<&Tensor<T>> {
        self.forward(ids, b, Some(state), false)
    }
}

impl<T: Float> Module<T> for TransformerLM<T> {
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
