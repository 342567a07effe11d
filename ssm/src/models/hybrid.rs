//! Hybrids of Mamba and attention layers, as in the Mamba-2 hybrids (Dao & Gu, 2024) and Jamba
//! (Lieber et al., 2024): a pattern such as "MMAMMA" lists the layers bottom to top, `M` a Mamba
//! block (x + mixer(rmsnorm(x)), as in the Mamba model), `S` a Mamba-2 block (the same around the
//! SSD mixer) and `A` a Transformer block (attention then MLP, each pre-norm residual).
//! Embedding, final norm and tied head are shared.

use serde::{Deserialize, Serialize};

use super::limits;
use super::mixer::{MixerConfig, MixerSettings};
use crate::error::{Error, Result};
use crate::nn::attention::PosEncoding;

/// Hyper-parameters: the pattern and the sizes every layer shares, then the settings of each kind
/// of layer in its own table (`[model.hybrid.mamba]`, a `MambaMixerConfig`;
/// `[model.hybrid.mamba2]`, a `Mamba2MixerConfig`; `[model.hybrid.attention]`, an
/// `AttentionConfig`). Defaults are those of the models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HybridConfig {
    /// Layers bottom to top, `M` (Mamba), `S` (Mamba-2) or `A` (attention + MLP); "MMAMMA" by
    /// default.
    pub pattern: String,
    /// Width of the residual stream (256).
    pub d_model: usize,
    /// Tokens the model must represent (256), padded to `pad_vocab_size_multiple` (8).
    pub vocab_size: usize,
    pub pad_vocab_size_multiple: usize,
    /// RMSNorm epsilon of every norm (1e-5).
    pub norm_eps: f64,
    /// `rope` (default, like the Transformer baseline), `learned` or `none` (as Jamba, where the
    /// Mamba layers give the position information).
    pub pos_encoding: PosEncoding,
    /// Positions of the learned table (1024); used only with `learned`.
    pub max_seq_len: usize,
    /// The settings of each kind of layer.
    #[serde(flatten)]
    pub mixers: MixerSettings,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            pattern: "MMAMMA".into(),
            d_model: 256,
            vocab_size: 256,
            pad_vocab_size_multiple: 8,
            norm_eps: 1e-5,
            pos_encoding: PosEncoding::Rope,
            max_seq_len: 1024,
            mixers: MixerSettings::default(),
        }
    }
}

impl HybridConfig {
    /// The layers of the pattern; an error names `pattern` when it is empty or has other letters.
    pub fn layers(&self) -> Result<Vec<MixerConfig>> {
        if self.pattern.is_empty() {
            return Err(Error::config(
                "pattern",
                format!(
                    "needs at least one layer (letters {})",
                    MixerSettings::LETTERS
                ),
            ));
        }
        self.pattern
            .chars()
            .map(|c| {
                self.mixers.layer(c).ok_or_else(|| {
                    Error::config(
                        "pattern",
                        format!(
                            "`{c}` in \"{}\": only {} are layers",
                            self.pattern,
                            MixerSettings::LETTERS
                        ),
                    )
                })
            })
            .collect()
    }

    /// Rows of the embedding: vocab_size rounded up to the padding multiple.
    pub fn padded_vocab(&self) -> usize {
        limits::padded(self.vocab_size, self.pad_vocab_size_multiple)
    }

    /// Rejects impossible values, naming the field (the same names as in the two models).
    pub fn validate(&self) -> Result<()> {
        self.layers()?;
        limits::size("pattern (layers)", self.pattern.len(), limits::MAX_LAYERS)?;
        limits::trunk(
            self.d_model,
            self.vocab_size,
            self.pad_vocab_size_multiple,
            self.norm_eps,
        )?;
        limits::size("max_seq_len", self.max_seq_len, limits::MAX_POSITIONS)?;
        self.mixers.validate(
            &self.pattern,
            self.d_model,
            self.pos_encoding == PosEncoding::Rope,
        )
    }
}
