//! Whole models. Every language model of the engine is one [`LanguageModel`]: an embedding (and
//! learned positions when chosen), a stack of layers ([`Mixer`]s: Mamba blocks,
//! Mamba-2 blocks, attention + MLP blocks), a final RMSNorm and an lm_head tied to the embedding.
//! What differs between the Mamba and Mamba-2 models, the Transformer and a hybrid is only the
//! list of layers their configs give: [`ModelConfig`] (`arch = "mamba" | "mamba2" | "transformer" |
//! "hybrid"`) holds the user-facing config of the architecture and lowers it to a [`ModelSpec`].
//!
//! Compute is counted in training FLOPs per token (forward + backward, docs/ARCHITECTURE.md §5),
//! with N = every trainable value (the tied embedding once: it is the lm_head's matrix) and L the
//! sequence length: 6·N plus, per layer, what its parameters do not count
//! ([`MixerConfig::extra_flops`]):
//!
//! | layer | FLOPs per token beyond 6·N |
//! |---|---|
//! | attention | 6·L·d_model (Kaplan et al., 2020: the attention scores and mix) |
//! | mamba | 27·d_inner·d_state (the scan; 9·d_inner·d_state forward) |
//! | mamba2 | 6·Q·(ngroups·d_state + d_inner) + 12·d_inner·d_state with Q = min(chunk_size, L) (the chunked SSD, [`mamba2`]) |

pub mod generate;
pub mod hybrid;
pub mod limits;
mod lm;
pub mod mamba;
pub mod mamba2;
pub mod mixer;
pub mod transformer;
mod trunk;

use serde::{Deserialize, Serialize};

pub use hybrid::HybridConfig;
pub use lm::{LanguageModel, LmState};
pub use mamba::{MambaConfig, MambaMixerConfig};
pub use mamba2::{Mamba2Config, Mamba2MixerConfig};
pub use mixer::{LayerContext, LayerState, Mixer, MixerConfig, MixerSettings};
pub use transformer::{AttentionConfig, TransformerConfig};

pub use self::generate::{Decoder, Sampling};

/// The standard deviation of the embedding, learned positions and attention weights at
/// initialisation (GPT-2), before the depth scaling of the residual output projections.
pub const INIT_STD: f64 = 0.02;
use crate::error::{Error, Result};
use crate::nn::attention::PosEncoding;

/// A model configuration with its architecture: `arch = "mamba" | "mamba2" | "transformer" |
/// "hybrid"` next to the fields of that architecture's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelConfig {
    Mamba(MambaConfig),
    Mamba2(Mamba2Config),
    Transformer(TransformerConfig),
    Hybrid(HybridConfig),
}

impl From<Mamba2Config> for ModelConfig {
    fn from(c: Mamba2Config) -> Self {
        ModelConfig::Mamba2(c)
    }
}

impl From<MambaConfig> for ModelConfig {
    fn from(c: MambaConfig) -> Self {
        ModelConfig::Mamba(c)
    }
}

impl From<TransformerConfig> for ModelConfig {
    fn from(c: TransformerConfig) -> Self {
        ModelConfig::Transformer(c)
    }
}

impl From<HybridConfig> for ModelConfig {
    fn from(c: HybridConfig) -> Self {
        ModelConfig::Hybrid(c)
    }
}

/// What a config builds: the shared parts and the list of layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub d_model: usize,
    /// Rows of the embedding (the vocabulary padded).
    pub vocab: usize,
    pub norm_eps: f64,
    pub pos_encoding: PosEncoding,
    /// Rows of the learned position table, with `PosEncoding::Learned`.
    pub max_seq_len: usize,
    /// Layers bottom to top.
    pub layers: Vec<MixerConfig>,
}

impl ModelSpec {
    /// What every layer is given by the model.
    pub fn context(&self) -> LayerContext {
        LayerContext {
            d_model: self.d_model,
            norm_eps: self.norm_eps,
            rope: self.pos_encoding == PosEncoding::Rope,
        }
    }

    /// Rows of the learned position table, if the model has one.
    pub fn learned_positions(&self) -> Option<usize> {
        (self.pos_encoding == PosEncoding::Learned).then_some(self.max_seq_len)
    }

    /// Trainable values: the tied embedding once, the learned positions if any, the layers and
    /// the final norm.
    pub fn num_params(&self) -> usize {
        (self.vocab + self.learned_positions().unwrap_or(0)) * self.d_model
            + self.non_embedding_params()
    }

    /// Trainable values outside the token and position embeddings (Kaplan et al. 2020's N): the
    /// layers and the final norm. The tied head shares the embedding and is not counted.
    pub fn non_embedding_params(&self) -> usize {
        let d = self.d_model;
        self.layers.iter().map(|l| l.num_params(d)).sum::<usize>() + d
    }

    /// Training FLOPs per token at sequence length `seq_len`: 6·N plus each layer's extra term.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let extra: f64 = self
            .layers
            .iter()
            .map(|l| l.extra_flops(self.d_model, seq_len))
            .sum();
        6.0 * self.num_params() as f64 + extra
    }

    /// The FLOPs formula, e.g. "6N + Σ_mamba 27·d_inner·d_state (N all params, tied embedding
    /// once)", with a term for each kind of layer present.
    pub fn flops_convention(&self) -> String {
        let mut terms = vec!["6N".to_string()];
        for layer in &self.layers {
            let term = format!("Σ_{} {}", layer.name(), layer.flops_term());
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        format!("{} (N all params, tied embedding once)", terms.join(" + "))
    }

    /// Residual branches of the whole model, one per Mamba block and two per attention block:
    /// the residual output projections are scaled by 1/√ of it.
    pub fn residual_branches(&self) -> usize {
        self.layers.iter().map(MixerConfig::residual_branches).sum()
    }
}

impl ModelConfig {
    /// "mamba", "mamba2", "transformer" or "hybrid".
    pub fn arch(&self) -> &'static str {
        match self {
            ModelConfig::Mamba(_) => "mamba",
            ModelConfig::Mamba2(_) => "mamba2",
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::Hybrid(_) => "hybrid",
        }
    }

    /// The model this config builds; an error names the field of an invalid config.
    pub fn spec(&self) -> Result<ModelSpec> {
        Ok(match self {
            ModelConfig::Mamba(c) => ModelSpec {
                d_model: c.d_model,
                vocab: c.padded_vocab(),
                norm_eps: c.norm_eps,
                pos_encoding: PosEncoding::None,
                max_seq_len: 0,
                layers: vec![MixerConfig::Mamba(c.mixer.clone()); c.n_layer],
            },
            ModelConfig::Mamba2(c) => ModelSpec {
                d_model: c.d_model,
                vocab: c.padded_vocab(),
                norm_eps: c.norm_eps,
                pos_encoding: PosEncoding::None,
                max_seq_len: 0,
                layers: vec![MixerConfig::Mamba2(c.mixer.clone()); c.n_layer],
            },
            ModelConfig::Transformer(c) => ModelSpec {
                d_model: c.d_model,
                vocab: c.padded_vocab(),
                norm_eps: c.norm_eps,
                pos_encoding: c.pos_encoding,
                max_seq_len: c.max_seq_len,
                layers: vec![MixerConfig::Attention(c.block.clone()); c.n_layer],
            },
            ModelConfig::Hybrid(c) => ModelSpec {
                d_model: c.d_model,
                vocab: c.padded_vocab(),
                norm_eps: c.norm_eps,
                pos_encoding: c.pos_encoding,
                max_seq_len: c.max_seq_len,
                layers: c.layers()?,
            },
        })
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Mamba(c) => c.validate(),
            ModelConfig::Mamba2(c) => c.validate(),
            ModelConfig::Transformer(c) => c.validate(),
            ModelConfig::Hybrid(c) => c.validate(),
        }?;
        let n = self.spec()?.num_params();
        if n > limits::MAX_PARAMS {
            return Err(Error::config(
                "num_params",
                format!(
                    "the sizes give {n} parameters, beyond reason (at most {})",
                    limits::MAX_PARAMS
                ),
            ));
        }
        Ok(())
    }

    /// A lower bound on the f32 values a training forward keeps per token for its backward: the
    /// inputs of each layer's projections and the logits with their gradient. Enough to refuse
    /// a configuration that cannot fit before allocating it, never more than the model needs.
    pub fn training_floats_per_token(&self) -> usize {
        let Ok(spec) = self.spec() else { return 0 };
        let layers: usize = spec
            .layers
            .iter()
            .map(|l| l.training_floats_per_token(spec.d_model))
            .sum();
        layers + 2 * spec.vocab
    }

    /// The longest sequence the model can read: `max_seq_len` of a learned position table, none
    /// for RoPE or no positions.
    pub fn max_positions(&self) -> Option<usize> {
        self.spec().ok()?.learned_positions()
    }

    /// The width of the residual stream.
    pub fn d_model(&self) -> usize {
        match self {
            ModelConfig::Mamba(c) => c.d_model,
            ModelConfig::Mamba2(c) => c.d_model,
            ModelConfig::Transformer(c) => c.d_model,
            ModelConfig::Hybrid(c) => c.d_model,
        }
    }

    /// Trainable values of the model this config builds, in closed form (equal to
    /// `Module::num_params` of the built model); 0 for a config whose layers cannot be read.
    pub fn num_params(&self) -> usize {
        self.spec().map_or(0, |s| s.num_params())
    }

    /// [`ModelSpec::non_embedding_params`] of the model this config builds; 0 for a config whose
    /// layers cannot be read.
    pub fn non_embedding_params(&self) -> usize {
        self.spec().map_or(0, |s| s.non_embedding_params())
    }

    /// Training FLOPs (forward + backward) per token at sequence length `seq_len`, by the formula
    /// of [`flops_convention`](Self::flops_convention).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        self.spec().map_or(0.0, |s| s.flops_per_token(seq_len))
    }

    /// The FLOPs formula of this model, to print on plots.
    pub fn flops_convention(&self) -> String {
        self.spec()
            .map_or_else(|_| String::new(), |s| s.flops_convention())
    }
}
