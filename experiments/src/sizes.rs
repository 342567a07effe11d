//! Model sizes for `compare` on equal terms. The first architecture is the reference, sized as
//! its config says. Every other architecture whose `model.<arch>.d_model` the user did not set
//! (in the config file or with `--set`) gets the width, a multiple of 8 and of 2·n_heads (whole,
//! even attention heads for RoPE), whose total parameter count (tied embedding included, as in
//! run.json and summary.csv) is closest to the reference's; depth, heads and every other field
//! stay as configured. Widths the user set are kept, with a loud warning when their count differs
//! from the reference's by more than [`MAX_MISMATCH`].

use anyhow::Result;
use ssm::models::ModelConfig as AnyConfig;
use ssm::models::hybrid::HybridConfig;
use ssm::models::transformer::TransformerConfig;
use ssm::models::{Mamba2Config, Mamba2MixerConfig, MambaConfig};

use crate::config::{Arch, RunConfig};

/// Relative difference of parameter counts above which explicit sizes are reported as unequal.
pub const MAX_MISMATCH: f64 = 0.2;
/// Widest model the matching considers.
const MAX_D_MODEL: usize = 8192;

/// The size of one architecture of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Size {
    pub arch: Arch,
    pub d_model: usize,
    pub num_params: usize,
    /// How the width was decided.
    pub origin: SizeOrigin,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeOrigin {
    /// The first architecture: as configured.
    Reference,
    /// Set by the user, kept as is.
    Explicit,
    /// Chosen to match the reference's parameter count.
    Matched,
}

impl Size {
    /// Relative difference of the parameter count from `reference`'s.
    pub fn mismatch(&self, reference: &Size) -> f64 {
        self.num_params as f64 / reference.num_params as f64 - 1.0
    }
}

/// Sizes `configs` (one per model of a comparison, the first the reference) by the rule above and
/// sets the chosen widths in them. `config_text` and each config's `overrides` tell which widths
/// the user set.
pub fn match_sizes(
    configs: &mut [RunConfig],
    config_text: &str,
    overrides: &[Vec<String>],
) -> Result<Vec<Size>> {
    let base: toml::Table = toml::from_str(config_text)?;
    let explicit = |i: usize, arch: Arch| -> Result<bool> {
        let mut given = base.clone();
        for o in &overrides[i] {
            crate::toml_keys::apply_override(&mut given, o)?;
        }
        Ok(given
            .get("model")
            .and_then(|m| m.get(arch.name()))
            .and_then(|a| a.get("d_model"))
            .is_some())
    };
    let mut sizes: Vec<Size> = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter_mut().enumerate() {
        let arch = c.model.arch;
        let origin = match i {
            0 => SizeOrigin::Reference,
            _ if explicit(i, arch)? => SizeOrigin::Explicit,
            _ => SizeOrigin::Matched,
        };
        if origin == SizeOrigin::Matched {
            let target = sizes[0].num_params;
            let step = width_step(c);
            let best = (1..=MAX_D_MODEL / step)
                .map(|k| k * step)
                .min_by_key(|&d| params_at(c, d).abs_diff(target))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "compare: no width of {} is a multiple of {step} within {MAX_D_MODEL}; set model.{}.d_model",
                        arch.name(),
                        arch.name()
                    )
                })?;
            set_d_model(c, best);
        }
        let model = c.model_config();
        sizes.push(Size {
            arch,
            d_model: model.d_model(),
            num_params: model.num_params(),
            origin,
        });
    }
    Ok(sizes)
}

/// Widths the architecture allows: multiples of 8; of 2·n_heads where there is attention; and
/// where there are Mamba-2 layers, of what makes expand·d_model a whole number of heads in whole
/// groups (headdim · ngroups / gcd(expand, headdim · ngroups)).
fn width_step(c: &RunConfig) -> usize {
    let mamba2 = |m: &Mamba2MixerConfig| {
        let heads = (m.headdim * m.ngroups).max(1);
        heads / gcd(m.expand.max(1), heads)
    };
    let (heads, ssd) = match c.model_config() {
        AnyConfig::Mamba(_) => (1, 1),
        AnyConfig::Mamba2(m) => (1, mamba2(&m.mixer)),
        AnyConfig::Transformer(t) => (t.block.n_heads, 1),
        AnyConfig::Hybrid(h) => (
            h.mixers.attention.n_heads,
            match h.pattern.contains('S') {
                true => mamba2(&h.mixers.mamba2),
                false => 1,
            },
        ),
    };
    [2 * heads.max(1), ssd].into_iter().fold(8, lcm)
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn set_d_model(c: &mut RunConfig, d: usize) {
    let m = &mut c.model;
    match m.arch {
        Arch::Mamba => m.mamba.get_or_insert_with(MambaConfig::default).d_model = d,
        Arch::Mamba2 => m.mamba2.get_or_insert_with(Mamba2Config::default).d_model = d,
        Arch::Transformer => {
            m.transformer
                .get_or_insert_with(TransformerConfig::default)
                .d_model = d
        }
        Arch::Hybrid => m.hybrid.get_or_insert_with(HybridConfig::default).d_model = d,
    }
}

fn params_at(c: &RunConfig, d: usize) -> usize {
    let mut c = c.clone();
    set_d_model(&mut c, d);
    c.model_config().num_params()
}

/// "1,234,567".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm::models::AttentionConfig;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(81856), "81,856");
        assert_eq!(thousands(3279104), "3,279,104");
        assert_eq!(thousands(512), "512");
    }

    #[test]
    fn widths_respect_heads() {
        let mut c = RunConfig::default();
        c.model.arch = Arch::Transformer;
        c.model.transformer = Some(TransformerConfig {
            block: AttentionConfig {
                n_heads: 6,
                ..AttentionConfig::default()
            },
            ..TransformerConfig::default()
        });
        assert_eq!(width_step(&c), 24);
        c.model.arch = Arch::Mamba;
        assert_eq!(width_step(&c), 8);
        // Mamba-2: expand · d a multiple of headdim · ngroups (2 · d of 64 · 1, then of 16 · 3).
        c.model.arch = Arch::Mamba2;
        assert_eq!(width_step(&c), 32);
        c.model.mamba2 = Some(Mamba2Config {
            mixer: Mamba2MixerConfig {
                headdim: 16,
                ngroups: 3,
                ..Mamba2MixerConfig::default()
            },
            ..Mamba2Config::default()
        });
        assert_eq!(width_step(&c), 24);
        // A hybrid with an S layer needs both the attention heads and the Mamba-2 heads.
        c.model.arch = Arch::Hybrid;
        let mut h = HybridConfig {
            pattern: "MSA".into(),
            ..HybridConfig::default()
        };
        h.mixers.attention.n_heads = 6;
        c.model.hybrid = Some(h);
        assert_eq!(width_step(&c), 32 * 3);
    }
}
