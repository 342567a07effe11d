//! Whole models: one readable file per model, each with a typed config and derived sizes, and the
//! architecture switch: [`ModelConfig`] (`arch = "mamba" | "transformer" | "hybrid"`) builds an
//! [`AnyLM`], which a training loop drives without naming the architecture.
//!
//! Compute is counted in training FLOPs per token (forward + backward, docs/ARCHITECTURE.md §5), with
//! N = every trainable value (the tied embedding once: it is the lm_head's matrix) and L the
//! sequence length:
//!
//! | arch | FLOPs per token |
//! |---|---|
//! | transformer | 6·N + 6·n_layer·L·d_model (Kaplan et al., 2020: the attention scores and mix) |
//! | mamba | 6·N + 27·n_layer·d_inner·d_state (the scan; 9·d_inner·d_state forward) |
//! | hybrid | 6·N + Σ over A layers 6·L·d_model + Σ over M layers 27·d_inner·d_state |

pub mod generate;
pub mod hybrid;
pub mod limits;
pub mod mamba;
pub mod transformer;
mod trunk;

use serde::{Deserialize, Serialize};

pub use hybrid::{HybridConfig, HybridLM, HybridState};
pub use mamba::{MambaConfig, MambaLM, MambaState};
pub use transformer::{TransformerConfig, TransformerLM, TransformerState};

pub use self::generate::{Decoder, Sampling};
use crate::error::{Error, Result};
use crate::nn::{Module, Param};
use crate::tensor::{Float, Tensor};

/// Parameters of one Mamba block: its norm and every tensor of its mixer.
pub fn mamba_block_params(c: &MambaConfig) -> usize {
    let (d, di, n, k, r) = (c.d_model, c.d_inner(), c.d_state, c.d_conv, c.dt_rank());
    let in_proj = 2 * di * d + if c.bias { 2 * di } else { 0 };
    let conv = di * k + if c.conv_bias { di } else { 0 };
    // x_proj and dt_proj's weight when selective, else the fixed B and C; dt_proj's bias always.
    let selection = if c.selective {
        (r + 2 * n) * di + di * r
    } else {
        2 * n
    };
    let out_proj = d * di + if c.bias { d } else { 0 };
    d + in_proj + conv + selection + di + di * n + di + out_proj
}

/// A model configuration with its architecture: `arch = "mamba" | "transformer" | "hybrid"` next
/// to the fields of that architecture's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelConfig {
    Mamba(MambaConfig),
    Transformer(TransformerConfig),
    Hybrid(HybridConfig),
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

impl ModelConfig {
    /// "mamba", "transformer" or "hybrid".
    pub fn arch(&self) -> &'static str {
        match self {
            ModelConfig::Mamba(_) => "mamba",
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::Hybrid(_) => "hybrid",
        }
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Mamba(c) => c.validate(),
            ModelConfig::Transformer(c) => c.validate(),
            ModelConfig::Hybrid(c) => c.validate(),
        }?;
        let n = self.num_params();
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
        let mamba = |c: &MambaConfig| 4 * c.d_inner() + 2 * c.d_model;
        let attention = |c: &TransformerConfig| 4 * c.d_model + 2 * c.mlp_hidden();
        let (layers, vocab) = match self {
            ModelConfig::Mamba(c) => (c.n_layer * mamba(c), c.padded_vocab()),
            ModelConfig::Transformer(c) => (c.n_layer * attention(c), c.padded_vocab()),
            ModelConfig::Hybrid(c) => {
                let (m, t) = (c.mamba_config(), c.transformer_config());
                let kinds = c.kinds().unwrap_or_default();
                let per = |k: &hybrid::LayerKind| match k {
                    hybrid::LayerKind::Mamba => mamba(&m),
                    hybrid::LayerKind::Attention => attention(&t),
                };
                (kinds.iter().map(per).sum(), t.padded_vocab())
            }
        };
        layers + 2 * vocab
    }

    /// The longest sequence the model can read: `max_seq_len` of a learned position table, none
    /// for RoPE or no positions.
    pub fn max_positions(&self) -> Option<usize> {
        use crate::nn::attention::PosEncoding::Learned;
        match self {
            ModelConfig::Mamba(_) => None,
            ModelConfig::Transformer(c) => (c.pos_encoding == Learned).then_some(c.max_seq_len),
            ModelConfig::Hybrid(c) => (c.pos_encoding == Learned).then_some(c.max_seq_len),
        }
    }

    /// The width of the residual stream.
    pub fn d_model(&self) -> usize {
        match self {
            ModelConfig::Mamba(c) => c.d_model,
            ModelConfig::Transformer(c) => c.d_model,
            ModelConfig::Hybrid(c) => c.d_model,
        }
    }

    /// Trainable values of the model this config builds, in closed form (equal to
    /// `Module::num_params` of the built model).
    pub fn num_params(&self) -> usize {
        match self {
            ModelConfig::Mamba(c) => {
                c.padded_vocab() * c.d_model + c.n_layer * mamba_block_params(c) + c.d_model
            }
            ModelConfig::Transformer(c) => c.num_params(),
            ModelConfig::Hybrid(c) => c.num_params(),
        }
    }

    /// Training FLOPs (forward + backward) per token at sequence length `seq_len`, by the formula
    /// of [`flops_convention`](Self::flops_convention).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        match self {
            ModelConfig::Mamba(c) => {
                6.0 * self.num_params() as f64 + (27 * c.n_layer * c.d_inner() * c.d_state) as f64
            }
            ModelConfig::Transformer(c) => c.flops_per_token(seq_len),
            ModelConfig::Hybrid(c) => c.flops_per_token(seq_len),
        }
    }

    /// The FLOPs formula of this architecture, to print on plots.
    pub fn flops_convention(&self) -> &'static str {
        match self {
            ModelConfig::Mamba(_) => {
                "6N + 27·n_layer·d_inner·d_state (N all params, tied embedding once)"
            }
            ModelConfig::Transformer(_) => {
                "6N + 6·n_layer·L·d_model (Kaplan; N all params, tied embedding once)"
            }
            ModelConfig::Hybrid(_) => {
                "6N + Σ_attn 6·L·d_model + Σ_mamba 27·d_inner·d_state (N all params)"
            }
        }
    }
}

/// One of the three language models, behind the same methods.
#[derive(Clone, Debug)]
pub enum AnyLM<T: Float = f32> {
    Mamba(MambaLM<T>),
    Transformer(TransformerLM<T>),
    Hybrid(HybridLM<T>),
}

/// The decoding state of an [`AnyLM`]: recurrent states, KV caches or both.
#[derive(Clone, Debug)]
pub enum AnyState<T: Float = f32> {
    Mamba(MambaState<T>),
    Transformer(TransformerState<T>),
    Hybrid(HybridState<T>),
}

/// Calls `$body` with `$m` bound to the model inside any variant.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            AnyLM::Mamba($m) => $body,
            AnyLM::Transformer($m) => $body,
            AnyLM::Hybrid($m) => $body,
        }
    };
}

fn state_mismatch(model: &str, state: &AnyState<impl Float>) -> Error {
    let got = match state {
        AnyState::Mamba(_) => "mamba",
        AnyState::Transformer(_) => "transformer",
        AnyState::Hybrid(_) => "hybrid",
    };
    Error::config(
        "state",
        format!("a {got} decoding state given to a {model} model"),
    )
}

impl<T: Float> AnyLM<T> {
    /// A freshly initialised model of `config`'s architecture, deterministic in `seed`.
    pub fn new(config: ModelConfig, seed: u64) -> Result<Self> {
        Ok(match config {
            ModelConfig::Mamba(c) => AnyLM::Mamba(MambaLM::new(c, seed)?),
            ModelConfig::Transformer(c) => AnyLM::Transformer(TransformerLM::new(c, seed)?),
            ModelConfig::Hybrid(c) => AnyLM::Hybrid(HybridLM::new(c, seed)?),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> ModelConfig {
        match self {
            AnyLM::Mamba(m) => m.config.clone().into(),
            AnyLM::Transformer(m) => m.config.clone().into(),
            AnyLM::Hybrid(m) => m.config.clone().into(),
        }
    }

    /// "mamba", "transformer" or "hybrid".
    pub fn arch(&self) -> &'static str {
        match self {
            AnyLM::Mamba(_) => "mamba",
            AnyLM::Transformer(_) => "transformer",
            AnyLM::Hybrid(_) => "hybrid",
        }
    }

    /// Rows of the embedding and columns of the logits.
    pub fn vocab(&self) -> usize {
        each!(self, m => m.vocab())
    }

    /// Logits (b, l, v) for token ids (b · l, row-major), continuing and advancing `state` when
    /// given; `train` keeps what `backward` needs.
    pub fn forward(
        &mut self,
        ids: &[u32],
        b: usize,
        state: Option<&mut AnyState<T>>,
        train: bool,
    ) -> Result<&Tensor<T>> {
        let arch = self.arch();
        match (self, state) {
            (AnyLM::Mamba(m), None) => m.forward(ids, b, None, train),
            (AnyLM::Mamba(m), Some(AnyState::Mamba(s))) => m.forward(ids, b, Some(s), train),
            (AnyLM::Transformer(m), None) => m.forward(ids, b, None, train),
            (AnyLM::Transformer(m), Some(AnyState::Transformer(s))) => {
                m.forward(ids, b, Some(s), train)
            }
            (AnyLM::Hybrid(m), None) => m.forward(ids, b, None, train),
            (AnyLM::Hybrid(m), Some(AnyState::Hybrid(s))) => m.forward(ids, b, Some(s), train),
            (_, Some(s)) => Err(state_mismatch(arch, s)),
        }
    }

    /// Mean next-token cross-entropy of a training forward (`targets` -100 are ignored).
    pub fn forward_loss(&mut self, ids: &[u32], targets: &[i64], b: usize) -> Result<f64> {
        each!(self, m => m.forward_loss(ids, targets, b))
    }

    /// Adds ∂loss/∂θ of the last `forward_loss` into every parameter's gradient.
    pub fn backward(&mut self) -> Result<()> {
        each!(self, m => m.backward())
    }

    /// A fresh decoding state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> Result<AnyState<T>> {
        Ok(match self {
            AnyLM::Mamba(m) => AnyState::Mamba(m.zero_state(b)?),
            AnyLM::Transformer(m) => AnyState::Transformer(m.zero_state(b)?),
            AnyLM::Hybrid(m) => AnyState::Hybrid(m.zero_state(b)?),
        })
    }

    /// The same model in another float type (gradient checks run in f64).
    pub fn cast<U: Float>(&self) -> AnyLM<U> {
        match self {
            AnyLM::Mamba(m) => AnyLM::Mamba(m.cast()),
            AnyLM::Transformer(m) => AnyLM::Transformer(m.cast()),
            AnyLM::Hybrid(m) => AnyLM::Hybrid(m.cast()),
        }
    }

    /// Training FLOPs per token at sequence length `seq_len` (see the module docs).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        self.config().flops_per_token(seq_len)
    }

    /// The FLOPs formula of this model's architecture, to print on plots.
    pub fn flops_convention(&self) -> &'static str {
        self.config().flops_convention()
    }
}

impl<T: Float> Module<T> for AnyLM<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        each!(self, m => m.visit_params(f))
    }
}

impl<T: Float> Decoder<T> for AnyLM<T> {
    type State = AnyState<T>;
    fn vocab(&self) -> usize {
        AnyLM::vocab(self)
    }
    fn zero_state(&self, b: usize) -> Result<AnyState<T>> {
        AnyLM::zero_state(self, b)
    }
    fn forward_state(
        &mut self,
        ids: &[u32],
        b: usize,
        state: &mut AnyState<T>,
    ) -> Result<&Tensor<T>> {
        self.forward(ids, b, Some(state), false)
    }
    fn step(&mut self, tokens: &[u32], state: &mut AnyState<T>) -> Result<Tensor<T>> {
        let arch = self.arch();
        match (self, state) {
            (AnyLM::Mamba(m), AnyState::Mamba(s)) => m.step(tokens, s),
            (AnyLM::Transformer(m), AnyState::Transformer(s)) => m.step(tokens, s),
            (AnyLM::Hybrid(m), AnyState::Hybrid(s)) => m.step(tokens, s),
            (_, s) => Err(state_mismatch(arch, s)),
        }
    }
}
