//! The Mamba language model (MambaLMHeadModel of state-spaces/mamba, MambaForCausalLM of
//! transformers): embedding → n_layer × (x + mixer(rmsnorm(x))) → rmsnorm → lm_head tied to the
//! embedding. [`MambaConfig`] is its configuration, with the field names of mamba_ssm's; the
//! settings of one mixer are [`MambaMixerConfig`], which hybrids reuse.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::limits;
use crate::error::Result;
use crate::nn::mamba::{DtInit, MambaBlock, MambaMixer, MixerDims};
use crate::nn::norm::RmsNorm;
use crate::tensor::Float;

/// The settings of one Mamba mixer (the arguments of mamba_simple's `Mamba`); defaults are its.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MambaMixerConfig {
    /// SSM state size N (16).
    pub d_state: usize,
    /// Width of the causal convolution (4).
    pub d_conv: usize,
    /// d_inner = expand · d_model (2).
    pub expand: usize,
    /// Rank of the dt projection; `None` means ceil(d_model / 16).
    pub dt_rank: Option<usize>,
    /// Bias on the convolution (true).
    pub conv_bias: bool,
    /// Biases on in_proj and out_proj (false).
    pub bias: bool,
    /// Range and floor of the initial dt (1e-3, 0.1, 1e-4).
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_init_floor: f64,
    /// Δ, B and C depend on the input (S6, true); false is the non-selective ablation, where
    /// they are learned constants (the LTI S4D-real case, Mamba paper Table 1's S4 row).
    pub selective: bool,
}

impl Default for MambaMixerConfig {
    fn default() -> Self {
        MambaMixerConfig {
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            conv_bias: true,
            bias: false,
            dt_min: 1e-3,
            dt_max: 0.1,
            dt_init_floor: 1e-4,
            selective: true,
        }
    }
}

impl MambaMixerConfig {
    pub fn d_inner(&self, d_model: usize) -> usize {
        self.expand * d_model
    }
    pub fn dt_rank(&self, d_model: usize) -> usize {
        self.dt_rank.unwrap_or(d_model.div_ceil(16))
    }

    pub fn dims(&self, d_model: usize) -> MixerDims {
        MixerDims {
            d_model,
            d_inner: self.d_inner(d_model),
            d_state: self.d_state,
            d_conv: self.d_conv,
            dt_rank: self.dt_rank(d_model),
            bias: self.bias,
            conv_bias: self.conv_bias,
            selective: self.selective,
        }
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self, d_model: usize) -> Result<()> {
        let sizes = [
            ("d_state", self.d_state, limits::MAX_STATE),
            ("d_conv", self.d_conv, limits::MAX_CONV),
            ("expand", self.expand, limits::MAX_EXPAND),
            ("dt_rank", self.dt_rank(d_model), limits::MAX_WIDTH),
        ];
        for (field, v, max) in sizes {
            limits::size(field, v, max)?;
        }
        limits::dt_init(self.dt_min, self.dt_max, self.dt_init_floor)?;
        Ok(())
    }

    /// Parameters of one block: its norm and every tensor of its mixer.
    pub fn block_params(&self, d_model: usize) -> usize {
        let (d, di, n, k, r) = (
            d_model,
            self.d_inner(d_model),
            self.d_state,
            self.d_conv,
            self.dt_rank(d_model),
        );
        let in_proj = 2 * di * d + if self.bias { 2 * di } else { 0 };
        let conv = di * k + if self.conv_bias { di } else { 0 };
        // x_proj and dt_proj's weight when selective, else the fixed B and C; dt_proj's bias
        // always.
        let selection = if self.selective {
            (r + 2 * n) * di + di * r
        } else {
            2 * n
        };
        let out_proj = d * di + if self.bias { d } else { 0 };
        d + in_proj + conv + selection + di + di * n + di + out_proj
    }

    /// Training FLOPs per token beyond 6 per parameter: the scan, 9·d_inner·d_state forward and
    /// twice that backward.
    pub fn scan_flops(&self, d_model: usize) -> f64 {
        (27 * self.d_inner(d_model) * self.d_state) as f64
    }

    /// A block (norm + mixer) of width `d_model`, out_proj scaled by `out_scale`
    /// (MambaLMHeadModel's `_init_weights`).
    pub fn block<T: Float>(
        &self,
        d_model: usize,
        norm_eps: f64,
        out_scale: f64,
        rng: &mut StdRng,
    ) -> MambaBlock<T> {
        let dt = DtInit {
            min: self.dt_min,
            max: self.dt_max,
            floor: self.dt_init_floor,
        };
        MambaBlock::new(
            RmsNorm::new(d_model, norm_eps),
            MambaMixer::new(self.dims(d_model), dt, out_scale, rng),
        )
    }
}

/// Model hyper-parameters; defaults are mamba_simple's, with the reference size of the engine's
/// benchmarks (d_model 256, 4 layers, vocab 256). The mixer's settings sit at the same level
/// (`d_state = 16`, not under a table), as in mamba_ssm's and Hugging Face's configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MambaConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of Mamba blocks.
    pub n_layer: usize,
    /// Tokens the model must represent; the embedding is padded to `pad_vocab_size_multiple`.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// The embedding has a multiple of this many rows.
    pub pad_vocab_size_multiple: usize,
    /// Every block's mixer.
    #[serde(flatten)]
    pub mixer: MambaMixerConfig,
}

impl Default for MambaConfig {
    fn default() -> Self {
        MambaConfig {
            d_model: 256,
            n_layer: 4,
            vocab_size: 256,
            norm_eps: 1e-5,
            pad_vocab_size_multiple: 8,
            mixer: MambaMixerConfig::default(),
        }
    }
}

impl MambaConfig {
    pub fn d_inner(&self) -> usize {
        self.mixer.d_inner(self.d_model)
    }
    pub fn dt_rank(&self) -> usize {
        self.mixer.dt_rank(self.d_model)
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
        self.mixer.validate(self.d_model)
    }
}
