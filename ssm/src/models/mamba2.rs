//! The Mamba-2 language model (mamba_ssm's MambaLMHeadModel with `Mamba2` layers, transformers'
//! Mamba2ForCausalLM): embedding → n_layer × (x + mixer(rmsnorm(x))) → rmsnorm → lm_head tied to
//! the embedding. [`Mamba2Config`] is its configuration; the settings of one mixer are
//! [`Mamba2MixerConfig`] (field names and defaults of mamba_ssm's `Mamba2`), which hybrids reuse.
//!
//! Parameters of one block (d = d_model, di = expand·d, h = di / headdim, g = ngroups, n =
//! d_state, k = d_conv; biases with `bias` and `conv_bias`):
//! d (norm) + (2·di + 2·g·n + h)·d (in_proj) + (di + 2·g·n)·k (conv) + 3·h (dt_bias, A_log, D)
//! + di (gated norm) + d·di (out_proj).
//!
//! Training FLOPs per token beyond 6 per parameter, for the chunked SSD with chunks of Q =
//! min(chunk_size, L) positions (forward:
//! the chunk's C·Bᵀ per group, 2·Q·g·n, and its product with Δx, 2·Q·di; the chunk-start state
//! into the outputs and the chunk's inputs into the state, 4·di·n; backward twice that):
//! 6·Q·(g·n + di) + 12·di·n.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::limits;
use crate::error::{Error, Result};
use crate::nn::mamba2::{Mamba2Block, Mamba2Dims, Mamba2Init, Mamba2Mixer};
use crate::nn::norm::RmsNorm;
use crate::ops::ssd::NO_DT_LIMIT;
use crate::tensor::Float;
use ssm_kernels::ssd::MAX_CHUNK;

/// The settings of one Mamba-2 mixer (the arguments of mamba_ssm's `Mamba2`); defaults are its.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mamba2MixerConfig {
    /// SSM state size N per head (128).
    pub d_state: usize,
    /// Width of the causal convolution (4).
    pub d_conv: usize,
    /// d_inner = expand · d_model (2).
    pub expand: usize,
    /// Channels per head, P (64); d_inner / headdim heads.
    pub headdim: usize,
    /// Groups of B and C shared by the heads, and of the gated norm (1).
    pub ngroups: usize,
    /// Positions per chunk of the SSD scan (256, also the most the CUDA kernels take).
    pub chunk_size: usize,
    /// Range and floor of the initial Δ (1e-3, 0.1, 1e-4).
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_init_floor: f64,
    /// Limits on Δ in training and inference, `[lo, hi]`; none by default (mamba_ssm's
    /// `dt_limit = (0, inf)`). Decoding applies them too (each token is a chunk of one position),
    /// where transformers' and mamba_ssm's recurrent steps do not.
    pub dt_limit: Option<[f64; 2]>,
    /// A is drawn uniform in this range per head, A_log = ln A ([1, 16]).
    pub a_init_range: [f64; 2],
    /// Bias on the convolution (true).
    pub conv_bias: bool,
    /// Biases on in_proj and out_proj (false).
    pub bias: bool,
}

impl Default for Mamba2MixerConfig {
    fn default() -> Self {
        Mamba2MixerConfig {
            d_state: 128,
            d_conv: 4,
            expand: 2,
            headdim: 64,
            ngroups: 1,
            chunk_size: 256,
            dt_min: 1e-3,
            dt_max: 0.1,
            dt_init_floor: 1e-4,
            dt_limit: None,
            a_init_range: [1.0, 16.0],
            conv_bias: true,
            bias: false,
        }
    }
}

impl Mamba2MixerConfig {
    pub fn d_inner(&self, d_model: usize) -> usize {
        self.expand * d_model
    }

    pub fn n_heads(&self, d_model: usize) -> usize {
        self.d_inner(d_model) / self.headdim.max(1)
    }

    pub fn dims(&self, d_model: usize, norm_eps: f64) -> Mamba2Dims {
        Mamba2Dims {
            d_model,
            d_inner: self.d_inner(d_model),
            d_state: self.d_state,
            d_conv: self.d_conv,
            n_heads: self.n_heads(d_model),
            head_dim: self.headdim,
            n_groups: self.ngroups,
            chunk: self.chunk_size,
            dt_limit: self.dt_limit.unwrap_or(NO_DT_LIMIT),
            bias: self.bias,
            conv_bias: self.conv_bias,
            norm_eps,
        }
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self, d_model: usize) -> Result<()> {
        let sizes = [
            ("d_state", self.d_state, limits::MAX_STATE),
            ("d_conv", self.d_conv, limits::MAX_CONV),
            ("expand", self.expand, limits::MAX_EXPAND),
            ("headdim", self.headdim, limits::MAX_WIDTH),
            ("ngroups", self.ngroups, limits::MAX_WIDTH),
            ("chunk_size", self.chunk_size, MAX_CHUNK),
        ];
        for (field, v, max) in sizes {
            limits::size(field, v, max)?;
        }
        let di = self.d_inner(d_model);
        if !di.is_multiple_of(self.headdim) {
            return Err(Error::config(
                "headdim",
                format!(
                    "{} does not divide d_inner = expand · d_model = {di}",
                    self.headdim
                ),
            ));
        }
        let h = self.n_heads(d_model);
        if !h.is_multiple_of(self.ngroups) {
            return Err(Error::config(
                "ngroups",
                format!(
                    "{} does not divide the {h} heads (d_inner / headdim)",
                    self.ngroups
                ),
            ));
        }
        limits::dt_init(self.dt_min, self.dt_max, self.dt_init_floor)?;
        if let Some([lo, hi]) = self.dt_limit
            && !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && hi > lo)
        {
            return Err(Error::config(
                "dt_limit",
                format!(
                    "needs finite 0 <= lo < hi, got [{lo}, {hi}] (no upper limit: a large number such as 1e300)"
                ),
            ));
        }
        let [a_lo, a_hi] = self.a_init_range;
        if !(a_lo.is_finite() && a_hi.is_finite() && a_lo > 0.0 && a_hi > a_lo) {
            return Err(Error::config(
                "a_init_range",
                format!("needs 0 < lo < hi, got [{a_lo}, {a_hi}]"),
            ));
        }
        Ok(())
    }

    /// Parameters of one block: its norm and every tensor of its mixer (module doc).
    pub fn block_params(&self, d_model: usize) -> usize {
        let (d, di, h) = (d_model, self.d_inner(d_model), self.n_heads(d_model));
        let cd = di + 2 * self.ngroups * self.d_state;
        let proj = 2 * di + 2 * self.ngroups * self.d_state + h;
        let in_proj = proj * d + if self.bias { proj } else { 0 };
        let conv = cd * self.d_conv + if self.conv_bias { cd } else { 0 };
        let out_proj = d * di + if self.bias { d } else { 0 };
        d + in_proj + conv + 3 * h + di + out_proj
    }

    /// Training FLOPs per token beyond 6 per parameter at sequence length `seq_len`: the chunked
    /// SSD (module doc), whose chunks hold min(chunk_size, seq_len) positions.
    pub fn ssd_flops(&self, d_model: usize, seq_len: usize) -> f64 {
        let q = self.chunk_size.min(seq_len.max(1));
        let (di, n) = (self.d_inner(d_model), self.d_state);
        (6 * q * (self.ngroups * n + di) + 12 * di * n) as f64
    }

    /// A block (norm + mixer) of width `d_model`, out_proj scaled by `out_scale`.
    pub fn block<T: Float>(
        &self,
        d_model: usize,
        norm_eps: f64,
        out_scale: f64,
        rng: &mut StdRng,
    ) -> Mamba2Block<T> {
        let init = Mamba2Init {
            dt_min: self.dt_min,
            dt_max: self.dt_max,
            dt_floor: self.dt_init_floor,
            a_range: self.a_init_range,
        };
        Mamba2Block::new(
            RmsNorm::new(d_model, norm_eps),
            Mamba2Mixer::new(self.dims(d_model, norm_eps), init, out_scale, rng),
        )
    }
}

/// Model hyper-parameters: the engine's reference size (d_model 256, 4 layers, vocab 256) with
/// mamba_ssm's `Mamba2` mixer; the mixer's settings sit at the same level, as in MambaConfig.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mamba2Config {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of Mamba-2 blocks.
    pub n_layer: usize,
    /// Tokens the model must represent; the embedding is padded to `pad_vocab_size_multiple`.
    pub vocab_size: usize,
    /// Epsilon of every RMSNorm, the gated ones included.
    pub norm_eps: f64,
    /// The embedding has a multiple of this many rows.
    pub pad_vocab_size_multiple: usize,
    /// Every block's mixer.
    #[serde(flatten)]
    pub mixer: Mamba2MixerConfig,
}

impl Default for Mamba2Config {
    fn default() -> Self {
        Mamba2Config {
            d_model: 256,
            n_layer: 4,
            vocab_size: 256,
            norm_eps: 1e-5,
            pad_vocab_size_multiple: 8,
            mixer: Mamba2MixerConfig::default(),
        }
    }
}

impl Mamba2Config {
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
        self.mixer.validate(self.d_model)
    }
}
