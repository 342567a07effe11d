//! Parity of a CUDA device with the CPU: every op on random inputs, and a whole training step of
//! small models, compared tensor by tensor. `ssm-lab gpu-check` runs it on a real GPU with large
//! shapes; the tests run the same code on [`Device::CudaEmu`] with small ones.
//!
//! A comparison passes when `max |got - want| <= tol · max |want|` (with a floor of 1e-6 on the
//! scale, for tensors that are all but zero): each tolerance is that of f32 arithmetic summed in
//! another order over the op's longest reduction.

mod ops;

pub use ops::op_parity;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::Result;
use crate::models::{LanguageModel, ModelConfig};
use crate::nn::Module;
use crate::optim::{AdamW, AdamWConfig, clip_grad_norm};
use crate::tensor::{Device, Tensor};

/// Shapes of a parity run. `quick` fits the CPU emulation; `full` is what gpu-check runs on a
/// GPU, with odd lengths up to 65536.
#[derive(Clone, Debug)]
pub struct ParityPlan {
    /// (b, l) of the elementwise, norm, conv, linear and loss ops.
    pub rows: Vec<(usize, usize)>,
    /// (b, l, d, n, g) of the selective scan. On a GPU of 132 SMs every shape of `full` but the
    /// b 4, d 768 one splits its sequences into segments (`ssm_kernels::scan::ScanDims::segments`);
    /// the emulated device (2 SMs) splits the l 300 shape of `quick`.
    pub scans: Vec<(usize, usize, usize, usize, usize)>,
    /// (b, l, h, p, g, n, chunk) of the SSD scan of Mamba-2: lengths that leave the last chunk
    /// partial, g = 1 and g > 1, head dims and state sizes over several of the kernels' 64-wide
    /// tiles up to p 128 and n 256.
    pub ssd: Vec<(usize, usize, usize, usize, usize, usize, usize)>,
    /// (b, lq, lk, h, hkv, hd) of attention.
    pub attention: Vec<(usize, usize, usize, usize, usize, usize)>,
    /// (b, l) of the training-step parity of each tiny model.
    pub train: (usize, usize),
}

impl ParityPlan {
    pub fn quick() -> Self {
        ParityPlan {
            rows: vec![(2, 19)],
            scans: vec![(2, 37, 8, 4, 2), (1, 300, 4, 3, 1)],
            ssd: vec![(2, 37, 4, 8, 2, 8, 16), (1, 150, 2, 20, 1, 70, 64)],
            attention: vec![(2, 19, 19, 4, 2, 8), (1, 1, 23, 2, 1, 16)],
            train: (2, 19),
        }
    }

    pub fn full() -> Self {
        ParityPlan {
            rows: vec![(3, 1001), (1, 65536)],
            scans: vec![
                (2, 1000, 64, 16, 1),
                (3, 4097, 48, 16, 2),
                (1, 65536, 32, 16, 1),
                (1, 8191, 1024, 16, 1),
                (4, 2048, 768, 16, 1),
            ],
            ssd: vec![
                (2, 300, 4, 16, 2, 16, 64),
                (1, 1030, 8, 64, 1, 64, 256),
                (2, 2048, 16, 64, 2, 128, 256),
                (1, 4097, 4, 128, 4, 256, 128),
            ],
            attention: vec![
                (2, 1000, 1000, 8, 8, 64),
                (1, 4097, 4097, 4, 2, 128),
                (3, 1, 777, 8, 2, 64),
            ],
            train: (2, 257),
        }
    }
}

/// The column names of [`Check::row`].
pub fn header() -> String {
    format!(
        "{:>12} {:>10} {:>9} {:<4} check",
        "max|diff|", "rel", "tol", "ok"
    )
}

/// One comparison of a device result with the CPU's.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub max_abs_diff: f64,
    /// max |want| (at least 1e-6): the scale the tolerance is relative to.
    pub scale: f64,
    pub tol: f64,
}

impl Check {
    /// A case that could not run: it fails, with the error in its name.
    pub fn error(name: &str, err: impl std::fmt::Display) -> Check {
        Check {
            name: format!("{name}: ERROR: {err}"),
            max_abs_diff: f64::INFINITY,
            scale: 1.0,
            tol: 0.0,
        }
    }

    pub fn rel_err(&self) -> f64 {
        self.max_abs_diff / self.scale
    }

    pub fn ok(&self) -> bool {
        self.rel_err() <= self.tol
    }

    /// One line of [`report`]: the numbers first, so that columns align whatever the name.
    pub fn row(&self) -> String {
        format!(
            "{:>12.3e} {:>10.2e} {:>9.0e} {:<4} {}",
            self.max_abs_diff,
            self.rel_err(),
            self.tol,
            if self.ok() { "ok" } else { "FAIL" },
            self.name
        )
    }
}

/// Receives every check as it is made (gpu-check prints and saves them as they come).
pub type Sink<'a> = &'a mut dyn FnMut(&Check);

/// Compares `got` (any device) with `want` (the CPU result); NaN in either fails the check.
pub fn compare(name: impl Into<String>, want: &Tensor, got: &Tensor, tol: f64) -> Result<Check> {
    let name = name.into();
    let (w, g) = (want.to_host_vec()?, got.to_host_vec()?);
    let mut check = Check {
        name,
        max_abs_diff: 0.0,
        scale: 1e-6,
        tol,
    };
    if want.dims() != got.dims() {
        check.max_abs_diff = f64::INFINITY;
        return Ok(check);
    }
    for (&a, &b) in w.iter().zip(&g) {
        let diff = (a as f64 - b as f64).abs();
        // NaN compares false: force the failure explicitly.
        check.max_abs_diff = if diff.is_nan() {
            f64::INFINITY
        } else {
            check.max_abs_diff.max(diff)
        };
        check.scale = check.scale.max((a as f64).abs());
    }
    Ok(check)
}

/// A plain-text table of checks, failures marked.
pub fn report(checks: &[Check]) -> String {
    let mut s = header() + "\n";
    for c in checks {
        s += &c.row();
        s.push('\n');
    }
    s
}

/// Tiny configurations of the four architectures, with every option that changes the kernels
/// used switched on somewhere: biases, GQA, RoPE and learned positions, both MLPs, the
/// non-selective Mamba, Mamba-2's groups and dt limits.
pub fn tiny_models() -> Vec<(&'static str, ModelConfig)> {
    use crate::models::{
        AttentionConfig, HybridConfig, Mamba2Config, Mamba2MixerConfig, MambaConfig,
        MambaMixerConfig, MixerSettings, TransformerConfig,
    };
    use crate::nn::attention::PosEncoding;
    use crate::nn::mlp::MlpKind;
    let mamba = MambaConfig {
        d_model: 16,
        n_layer: 2,
        vocab_size: 37,
        mixer: MambaMixerConfig {
            d_state: 8,
            d_conv: 4,
            dt_rank: Some(3),
            bias: true,
            ..MambaMixerConfig::default()
        },
        ..MambaConfig::default()
    };
    let mamba2_mixer = Mamba2MixerConfig {
        d_state: 8,
        headdim: 8,
        ngroups: 2,
        chunk_size: 8,
        dt_limit: Some([1e-3, 0.5]),
        bias: true,
        ..Mamba2MixerConfig::default()
    };
    let mamba2 = Mamba2Config {
        d_model: 16,
        n_layer: 2,
        vocab_size: 37,
        mixer: mamba2_mixer.clone(),
        ..Mamba2Config::default()
    };
    let transformer = TransformerConfig {
        d_model: 32,
        n_layer: 2,
        vocab_size: 37,
        block: AttentionConfig {
            n_heads: 4,
            n_kv_heads: Some(2),
            mlp_hidden: Some(48),
            attn_bias: true,
            ..AttentionConfig::default()
        },
        ..TransformerConfig::default()
    };
    let learned = TransformerConfig {
        pos_encoding: PosEncoding::Learned,
        max_seq_len: 4096,
        block: AttentionConfig {
            mlp: MlpKind::Gelu,
            n_kv_heads: None,
            attn_bias: false,
            ..transformer.clone().block
        },
        ..transformer.clone()
    };
    let hybrid = HybridConfig {
        pattern: "MSA".into(),
        d_model: 32,
        vocab_size: 37,
        mixers: MixerSettings {
            mamba: MambaMixerConfig {
                d_state: 8,
                ..MambaMixerConfig::default()
            },
            mamba2: mamba2_mixer,
            attention: AttentionConfig {
                n_heads: 4,
                ..AttentionConfig::default()
            },
        },
        ..HybridConfig::default()
    };
    let fixed = MambaConfig {
        mixer: MambaMixerConfig {
            selective: false,
            ..mamba.clone().mixer
        },
        ..mamba.clone()
    };
    vec![
        ("mamba", mamba.into()),
        ("mamba-non-selective", fixed.into()),
        ("mamba2-groups-limits", mamba2.into()),
        ("transformer-rope-swiglu-gqa", transformer.into()),
        ("transformer-learned-gelu", learned.into()),
        ("hybrid-MSA", hybrid.into()),
    ]
}

/// Gradients of a whole model sum over every token and pass through every layer: f32 in another
/// order lands within a few 1e-6 of the largest value; 1e-4 leaves room and still catches any
/// wrong index or missing term, which shows up at the 1e-1 level.
const GRAD_TOL: f64 = 1e-4;

/// Two training steps (forward, loss, backward, clipping, AdamW) of each tiny model on the CPU and
/// on `device` from the same weights and batch: the losses and gradient norms of both steps and
/// every parameter gradient of the first compared.
pub fn train_step_parity(device: Device, (b, l): (usize, usize), sink: Sink) -> Vec<Check> {
    let mut checks = Vec::new();
    for (name, config) in tiny_models() {
        let model_checks = train_step_checks(device, (b, l), name, config)
            .unwrap_or_else(|e| vec![Check::error(name, e)]);
        model_checks.iter().for_each(&mut *sink);
        checks.extend(model_checks);
    }
    checks
}

fn train_step_checks(
    device: Device,
    (b, l): (usize, usize),
    name: &str,
    config: ModelConfig,
) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    let v = config_vocab(&config);
    let ids: Vec<u32> = (0..b * l)
        .map(|_| rand::RngExt::random_range(&mut rng, 0..v as u32))
        .collect();
    let targets: Vec<i64> = (0..b * l)
        .map(|i| {
            if i % 5 == 4 {
                -100
            } else {
                ids[(i + 1) % ids.len()] as i64
            }
        })
        .collect();
    // Two steps of forward, backward, clipping (the small max norm makes it scale) and AdamW:
    // the second loss sees the first update. Parameters themselves are not compared after
    // AdamW, which turns round-off in a near-zero gradient into a sizeable step; the update
    // is checked on identical inputs in `op_parity`.
    let step = |model: &mut LanguageModel| -> Result<(Vec<f64>, Vec<Tensor>)> {
        let mut opt = AdamW::new(AdamWConfig::default());
        let mut scalars = Vec::new();
        let mut grads = Vec::new();
        for _ in 0..2 {
            model.zero_grad()?;
            scalars.push(model.forward_loss(&ids, &targets, b)?);
            model.backward()?;
            if grads.is_empty() {
                model.try_visit_params(&mut |_, p| {
                    grads.push(p.grad.to_device(Device::Cpu)?);
                    Ok(())
                })?;
            }
            scalars.push(clip_grad_norm(model, 0.05)?);
            opt.update(model, 1e-3)?;
        }
        Ok((scalars, grads))
    };
    let mut cpu = LanguageModel::new(config.clone(), 1)?;
    let mut gpu = LanguageModel::new(config, 1)?;
    gpu.to_device(device)?;
    let (want_s, want_g) = step(&mut cpu)?;
    let (got_s, got_g) = step(&mut gpu)?;
    let mut names = Vec::new();
    cpu.visit_params(&mut |n, _| names.push(n.to_string()));
    // The scalars alternate loss, gradient norm; each kind is compared on its own scale.
    let every_other = |x: &[f64], first: usize| {
        let v: Vec<f32> = x.iter().skip(first).step_by(2).map(|&v| v as f32).collect();
        Tensor::from_vec([v.len()], v)
    };
    for (first, what) in [(0, "losses"), (1, "gradient norms")] {
        checks.push(compare(
            format!("{name} {what} of 2 steps"),
            &every_other(&want_s, first)?,
            &every_other(&got_s, first)?,
            1e-5,
        )?);
    }
    for ((n, w), g) in names.iter().zip(&want_g).zip(&got_g) {
        checks.push(compare(format!("{name} d{n}"), w, g, GRAD_TOL)?);
    }
    Ok(checks)
}

fn config_vocab(c: &ModelConfig) -> usize {
    match c {
        ModelConfig::Mamba(m) => m.vocab_size,
        ModelConfig::Mamba2(m) => m.vocab_size,
        ModelConfig::Transformer(t) => t.vocab_size,
        ModelConfig::Hybrid(h) => h.vocab_size,
    }
}

/// Decoding on `device` against the CPU for each tiny model: a prefill of two sequences that
/// fills the recurrent states and KV caches, then single-token steps; every logit compared.
pub fn decode_parity(device: Device, sink: Sink) -> Vec<Check> {
    let mut checks = Vec::new();
    for (name, config) in tiny_models() {
        let model_checks =
            decode_checks(device, name, config).unwrap_or_else(|e| vec![Check::error(name, e)]);
        model_checks.iter().for_each(&mut *sink);
        checks.extend(model_checks);
    }
    checks
}

fn decode_checks(device: Device, name: &str, config: ModelConfig) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let v = config_vocab(&config) as u32;
    let prompt: Vec<u32> = (0..2 * 7).map(|i| (i * 5 + 3) % v).collect();
    let run = |model: &mut LanguageModel| -> Result<Vec<Tensor>> {
        let mut state = model.zero_state(2)?;
        let mut out = vec![
            model
                .forward(&prompt, 2, Some(&mut state), false)?
                .try_clone()?,
        ];
        for t in 0..4u32 {
            out.push(model.step(&[t % v, (t * 7 + 1) % v], &mut state)?);
        }
        out.iter().map(|t| t.to_device(Device::Cpu)).collect()
    };
    let want = run(&mut LanguageModel::new(config.clone(), 5)?)?;
    let mut gpu = LanguageModel::new(config, 5)?;
    gpu.to_device(device)?;
    let got = run(&mut gpu)?;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let what = if i == 0 {
            "prefill".into()
        } else {
            format!("step {i}")
        };
        checks.push(compare(format!("{name} decode {what} logits"), w, g, 1e-5)?);
    }
    Ok(checks)
}
