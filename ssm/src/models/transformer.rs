//! The Transformer baseline, built like Llama but small: embedding (+ learned positions, GPT-2
//! style, when chosen) → n_layer × pre-norm blocks (x + attn(rmsnorm(x)); x + mlp(rmsnorm(x))) →
//! rmsnorm → lm_head tied to the embedding. Only the sequence mixer differs from the Mamba model:
//! the same embedding, norms, tied head, loss and optimizer. [`TransformerConfig`] is the model's
//! configuration; one block's settings are [`AttentionConfig`], which hybrids reuse.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{INIT_STD, limits};
use crate::error::{Error, Result};
use crate::nn::attention::{AttentionDims, CausalSelfAttention, KvCache, PosEncoding};
use crate::nn::mlp::{Mlp, MlpKind};
use crate::nn::norm::RmsNorm;
use crate::nn::{Module, Param};
use crate::ops::activation::add_into;
use crate::ops::rope::DEFAULT_ROPE_BASE;
use crate::tensor::{Float, Tensor};

/// The settings of one attention + MLP block; the defaults are a small Llama's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttentionConfig {
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
    /// Base of the RoPE frequencies (10000); used only with `pos_encoding = "rope"`.
    pub rope_base: f64,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        AttentionConfig {
            n_heads: 4,
            n_kv_heads: None,
            attn_bias: false,
            mlp: MlpKind::SwiGlu,
            mlp_hidden: None,
            mlp_multiple_of: 64,
            rope_base: DEFAULT_ROPE_BASE,
        }
    }
}

impl AttentionConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }
    /// hd = d / n_heads.
    pub fn head_dim(&self, d: usize) -> usize {
        d / self.n_heads.max(1)
    }
    pub fn mlp_hidden(&self, d: usize) -> usize {
        self.mlp_hidden
            .unwrap_or(self.mlp.default_hidden(d, self.mlp_multiple_of))
    }

    pub fn dims(&self, d: usize, rope: bool) -> AttentionDims {
        AttentionDims {
            d_model: d,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim(d),
            bias: self.attn_bias,
            rope_base: rope.then_some(self.rope_base),
        }
    }

    /// Rejects impossible values at width `d` (valid already), naming the field.
    pub fn validate(&self, d: usize, rope: bool) -> Result<()> {
        // The rounding first: the derived MLP width is computed from it.
        limits::size("mlp_multiple_of", self.mlp_multiple_of, limits::MAX_WIDTH)?;
        let sizes = [
            ("n_heads", self.n_heads, limits::MAX_WIDTH),
            ("n_kv_heads", self.n_kv_heads(), limits::MAX_WIDTH),
            ("mlp_hidden", self.mlp_hidden(d), limits::MAX_HIDDEN),
        ];
        for (field, v, max) in sizes {
            limits::size(field, v, max)?;
        }
        if !d.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "n_heads",
                format!("must divide d_model = {d}, got {}", self.n_heads),
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
        if rope && !self.head_dim(d).is_multiple_of(2) {
            return Err(Error::config(
                "n_heads",
                format!(
                    "RoPE needs an even head_dim = d_model / n_heads, got {}",
                    self.head_dim(d)
                ),
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return Err(Error::config(
                "rope_base",
                format!("must be finite and above 1, got {}", self.rope_base),
            ));
        }
        Ok(())
    }

    /// Parameters of one block at width `d`: two norms, the four attention projections (and
    /// their biases), the MLP's matrices.
    pub fn block_params(&self, d: usize) -> usize {
        let (q, kv) = (
            self.n_heads * self.head_dim(d),
            self.n_kv_heads() * self.head_dim(d),
        );
        let attn = 2 * d * q + 2 * d * kv + if self.attn_bias { q + 2 * kv + d } else { 0 };
        2 * d + attn + self.mlp.n_matrices() * d * self.mlp_hidden(d)
    }

    /// Training FLOPs per token beyond 6 per parameter at sequence length `seq_len` (Kaplan et
    /// al., 2020, eq. 2.1 × 3 for forward + backward): the attention scores and their weighted
    /// sum, 6·L·d.
    pub fn attention_flops(&self, d: usize, seq_len: usize) -> f64 {
        6.0 * (seq_len * d) as f64
    }
}

/// Model hyper-parameters; the defaults are a small Llama-style model. The block's settings sit
/// at the same level (`n_heads = 4`, not under a table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    /// Width of the residual stream (256).
    pub d_model: usize,
    /// Number of blocks, each attention + MLP (4).
    pub n_layer: usize,
    /// `rope` (default), `learned` or `none`.
    pub pos_encoding: PosEncoding,
    /// Positions of the learned table (1024, as GPT-2); used only with `learned`.
    pub max_seq_len: usize,
    /// RMSNorm epsilon (1e-5).
    pub norm_eps: f64,
    /// Tokens the model must represent (256); the embedding is padded to `pad_vocab_size_multiple`.
    pub vocab_size: usize,
    /// The embedding has a multiple of this many rows (8).
    pub pad_vocab_size_multiple: usize,
    /// Every block's attention and MLP.
    #[serde(flatten)]
    pub block: AttentionConfig,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            d_model: 256,
            n_layer: 4,
            pos_encoding: PosEncoding::Rope,
            max_seq_len: 1024,
            norm_eps: 1e-5,
            vocab_size: 256,
            pad_vocab_size_multiple: 8,
            block: AttentionConfig::default(),
        }
    }
}

impl TransformerConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.block.n_kv_heads()
    }
    /// hd = d_model / n_heads.
    pub fn head_dim(&self) -> usize {
        self.block.head_dim(self.d_model)
    }
    pub fn mlp_hidden(&self) -> usize {
        self.block.mlp_hidden(self.d_model)
    }
    /// Rows of the embedding: vocab_size rounded up to the padding multiple.
    pub fn padded_vocab(&self) -> usize {
        limits::padded(self.vocab_size, self.pad_vocab_size_multiple)
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        limits::trunk(
            self.d_model,
            self.vocab_size,
            self.pad_vocab_size_multiple,
            self.norm_eps,
        )?;
        limits::size("n_layer", self.n_layer, limits::MAX_LAYERS)?;
        limits::size("max_seq_len", self.max_seq_len, limits::MAX_POSITIONS)?;
        self.block
            .validate(self.d_model, self.pos_encoding == PosEncoding::Rope)
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
    /// A block of width `d` with `config`'s attention and MLP; `out_std` is the init std of
    /// o_proj and down_proj, every other matrix N(0, INIT_STD²).
    pub fn new(
        config: &AttentionConfig,
        d: usize,
        norm_eps: f64,
        rope: bool,
        out_std: f64,
        rng: &mut StdRng,
    ) -> Self {
        let attn = CausalSelfAttention::new(config.dims(d, rope), INIT_STD, out_std, rng);
        let mlp = Mlp::new(config.mlp, d, config.mlp_hidden(d), INIT_STD, out_std, rng);
        let norm = || RmsNorm::new(d, norm_eps);
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
