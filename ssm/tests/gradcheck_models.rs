//! Central finite-difference checks in f64 of GELU, and of tiny Transformer, hybrid, Mamba-2 and
//! non-selective Mamba language models end to end (every parameter), through `LanguageModel`.

use ssm::Tensor;
use ssm::models::{
    AttentionConfig, HybridConfig, LanguageModel, Mamba2Config, Mamba2MixerConfig, MambaConfig,
    MambaMixerConfig, MixerSettings, ModelConfig, TransformerConfig,
};
use ssm::nn::Module;
use ssm::nn::attention::PosEncoding;
use ssm::nn::mlp::MlpKind;
use ssm::ops::activation::{gelu_bwd, gelu_fwd};
use ssm::ops::loss::IGNORE_INDEX;

use crate::common::*;
use crate::gradcheck_ops::tiny_config;

const H: f64 = 1e-4;
const TOL: f64 = 1e-6;

#[test]
fn gelu() {
    let mut r = rng(21);
    // Both tails: tanh saturates at ±1 there, and its form 1 - 2/(e^{2u} + 1) must not give NaN.
    let mut x = uniform::<f64>(&mut r, &[40], -5.0, 5.0);
    x.host_mut().unwrap()[..2].copy_from_slice(&[-30.0, 30.0]);
    let wy = uniform::<f64>(&mut r, &[40], -1.0, 1.0);
    let f = |x: &Tensor<f64>| {
        let mut y = Tensor::default();
        gelu_fwd(x, &mut y).unwrap();
        dot(&y, &wy)
    };
    let mut dx = Tensor::zeros_cpu([40]);
    gelu_bwd(&x, &wy, &mut dx).unwrap();
    let mut xc = x.clone();
    assert_grad("gelu dx", &dx, &numeric_grad(&mut xc, H, f), TOL);
    // The formula evaluated with Python's math.tanh, and the saturated tails.
    let mut y = Tensor::default();
    let x: Vec<f64> = vec![-3.0, -1.0, 0.0, 0.5, 2.0, -30.0, 30.0];
    gelu_fwd(&Tensor::from_vec([7], x).unwrap(), &mut y).unwrap();
    let want = [
        -0.0036373920817729943,
        -0.15880800939172324,
        0.0,
        0.34571400982514394,
        1.954597694087775,
        0.0,
        30.0,
    ];
    for (g, w) in y.to_vec().iter().zip(want) {
        assert!((g - w).abs() < 1e-14, "gelu {g} vs {w}");
    }
}

/// Moves every parameter off its initial value (ones, zeros, a small std) so each path matters.
fn perturb(model: &mut LanguageModel<f64>, seed: u64, amp: f64) {
    let mut r = rng(seed);
    model.visit_params(&mut |_, p| {
        let noise = uniform::<f64>(&mut r, p.value.dims(), -amp, amp);
        for (v, n) in p.value.host_mut().unwrap().iter_mut().zip(noise.to_vec()) {
            *v += n;
        }
    });
}

/// Compares ∂loss/∂θ of every parameter tensor with central differences.
fn check_model(config: ModelConfig, seed: u64) {
    let mut model = LanguageModel::<f32>::new(config, seed)
        .unwrap()
        .cast::<f64>();
    perturb(&mut model, seed + 1, 0.3);
    let (b, l) = (2, 5);
    let ids: Vec<u32> = (0..b * l).map(|i| ((i * 7 + 3) % 13) as u32).collect();
    let targets: Vec<i64> = (0..b * l)
        .map(|i| {
            if i % 4 == 1 {
                IGNORE_INDEX
            } else {
                ((i * 5 + 1) % 13) as i64
            }
        })
        .collect();
    model.zero_grad().unwrap();
    model.forward_loss(&ids, &targets, b).unwrap();
    model.backward().unwrap();
    let mut params = Vec::new();
    model.visit_params(&mut |name, p| {
        params.push((name.to_string(), p.grad.clone(), p.value.clone()))
    });
    let set = |model: &mut LanguageModel<f64>, idx: usize, t: &Tensor<f64>| {
        let mut i = 0;
        model.visit_params(&mut |_, p| {
            if i == idx {
                p.value = t.clone();
            }
            i += 1;
        });
    };
    for (idx, (name, analytic, value)) in params.iter().enumerate() {
        let mut x = value.clone();
        let num = numeric_grad(&mut x, H, |t| {
            set(&mut model, idx, t);
            let loss = model.forward_loss(&ids, &targets, b).unwrap();
            set(&mut model, idx, value);
            loss
        });
        // The rows of a learned position table past l see no token: their gradient is zero.
        assert_grad(name, analytic, &num, TOL);
    }
}

fn tiny_transformer() -> TransformerConfig {
    TransformerConfig {
        d_model: 8,
        n_layer: 2,
        vocab_size: 13,
        block: AttentionConfig {
            n_heads: 2,
            n_kv_heads: Some(1),
            mlp_hidden: Some(12),
            ..AttentionConfig::default()
        },
        ..TransformerConfig::default()
    }
}

#[test]
fn transformer_rope_swiglu_gqa_biases() {
    check_model(
        TransformerConfig {
            block: AttentionConfig {
                attn_bias: true,
                ..tiny_transformer().block
            },
            ..tiny_transformer()
        }
        .into(),
        31,
    );
}

#[test]
fn transformer_learned_positions_gelu_gqa() {
    let c = TransformerConfig {
        pos_encoding: PosEncoding::Learned,
        max_seq_len: 7,
        block: AttentionConfig {
            mlp: MlpKind::Gelu,
            ..tiny_transformer().block
        },
        ..tiny_transformer()
    };
    check_model(c.into(), 32);
}

#[test]
fn transformer_no_positions() {
    let c = TransformerConfig {
        pos_encoding: PosEncoding::None,
        n_layer: 1,
        ..tiny_transformer()
    };
    check_model(c.into(), 33);
}

/// "AMA": attention first and last, a Mamba block between. dt starts larger than Mamba's default
/// so the gradients of A_log and dt_proj stand above the round-off of finite differences.
#[test]
fn hybrid_end_to_end() {
    let c = HybridConfig {
        pattern: "AMA".into(),
        d_model: 8,
        vocab_size: 13,
        mixers: MixerSettings {
            mamba: MambaMixerConfig {
                d_state: 4,
                d_conv: 3,
                dt_rank: Some(2),
                bias: true,
                dt_min: 0.1,
                dt_max: 1.0,
                ..MambaMixerConfig::default()
            },
            attention: AttentionConfig {
                n_heads: 2,
                n_kv_heads: Some(1),
                mlp_hidden: Some(12),
                ..AttentionConfig::default()
            },
            ..MixerSettings::default()
        },
        ..HybridConfig::default()
    };
    check_model(c.into(), 34);
}

/// The non-selective ablation: Δ, B and C are learned constants (their gradients are sums over
/// every position), with the hybrid's Mamba layers non-selective as well.
#[test]
fn mamba_non_selective_end_to_end() {
    let c = MambaConfig {
        mixer: MambaMixerConfig {
            selective: false,
            ..tiny_config().mixer
        },
        ..tiny_config()
    };
    check_model(c.into(), 35);
    let h = HybridConfig {
        pattern: "MA".into(),
        d_model: 8,
        vocab_size: 13,
        mixers: MixerSettings {
            mamba: MambaMixerConfig {
                d_state: 4,
                d_conv: 3,
                dt_min: 0.1,
                dt_max: 1.0,
                selective: false,
                ..MambaMixerConfig::default()
            },
            attention: AttentionConfig {
                n_heads: 2,
                mlp_hidden: Some(12),
                ..AttentionConfig::default()
            },
            ..MixerSettings::default()
        },
        ..HybridConfig::default()
    };
    check_model(h.into(), 36);
}

/// A tiny Mamba-2 (two groups, heads of 2, chunks of 3 so that the 5 positions span two, biases,
/// dt limits that never bind), and a hybrid of Mamba-2, attention and Mamba-1 blocks. dt starts
/// larger than the default so the gradients of A_log and dt_bias stand above the round-off.
fn tiny_mamba2() -> Mamba2MixerConfig {
    Mamba2MixerConfig {
        d_state: 3,
        d_conv: 3,
        headdim: 2,
        ngroups: 2,
        chunk_size: 3,
        dt_min: 0.1,
        dt_max: 1.0,
        dt_limit: Some([1e-4, 50.0]),
        bias: true,
        ..Mamba2MixerConfig::default()
    }
}

#[test]
fn mamba2_end_to_end() {
    let c = Mamba2Config {
        d_model: 4,
        n_layer: 2,
        vocab_size: 13,
        mixer: tiny_mamba2(),
        ..Mamba2Config::default()
    };
    check_model(c.into(), 41);
}

#[test]
fn hybrid_with_mamba2_end_to_end() {
    let c = HybridConfig {
        pattern: "SAM".into(),
        d_model: 8,
        vocab_size: 13,
        mixers: MixerSettings {
            mamba: MambaMixerConfig {
                d_state: 4,
                dt_min: 0.1,
                dt_max: 1.0,
                ..MambaMixerConfig::default()
            },
            mamba2: Mamba2MixerConfig {
                headdim: 4,
                ..tiny_mamba2()
            },
            attention: AttentionConfig {
                n_heads: 2,
                mlp_hidden: Some(12),
                ..AttentionConfig::default()
            },
        },
        ..HybridConfig::default()
    };
    check_model(c.into(), 42);
}
