//! Transformer and hybrid models: KV-cache decoding against the parallel forward,
//! generation, training, parameter and FLOP counts by hand, and config errors that name the field.

use ssm::models::generate::Sampling;
use ssm::models::{
    AttentionConfig, Decoder, HybridConfig, LanguageModel, Mamba2Config, Mamba2MixerConfig,
    MambaConfig, MambaMixerConfig, MixerSettings, ModelConfig, TransformerConfig,
};
use ssm::nn::Module;
use ssm::nn::attention::PosEncoding;
use ssm::nn::mlp::MlpKind;
use ssm::optim::{AdamW, AdamWConfig, clip_grad_norm};

use crate::common::*;

fn small_transformer(pos_encoding: PosEncoding, mlp: MlpKind) -> ModelConfig {
    let c = TransformerConfig {
        d_model: 32,
        n_layer: 2,
        pos_encoding,
        max_seq_len: 160,
        vocab_size: 50,
        block: AttentionConfig {
            n_heads: 4,
            n_kv_heads: Some(2),
            mlp,
            ..AttentionConfig::default()
        },
        ..TransformerConfig::default()
    };
    c.into()
}

fn small_hybrid(pattern: &str) -> ModelConfig {
    let c = HybridConfig {
        pattern: pattern.into(),
        d_model: 32,
        vocab_size: 50,
        mixers: MixerSettings {
            mamba: MambaMixerConfig {
                d_state: 8,
                ..MambaMixerConfig::default()
            },
            attention: AttentionConfig {
                n_heads: 4,
                n_kv_heads: Some(2),
                ..AttentionConfig::default()
            },
            ..MixerSettings::default()
        },
        ..HybridConfig::default()
    };
    c.into()
}

/// A model whose parameters are moved off their initial values, so that every part matters.
fn perturbed(config: ModelConfig, seed: u64) -> LanguageModel {
    let mut model = LanguageModel::new(config, seed).unwrap();
    let mut r = rng(seed + 1);
    model.visit_params(&mut |_, p| {
        let noise = uniform::<f32>(&mut r, p.value.dims(), -0.05, 0.05);
        for (v, n) in p.value.host_mut().unwrap().iter_mut().zip(noise.to_vec()) {
            *v += n;
        }
    });
    model
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Token-by-token decoding with the state (KV caches, Mamba states) against one parallel forward,
/// at every position; then a prefill of 100 tokens and one step.
fn check_step_matches_parallel(config: ModelConfig) {
    let mut model = perturbed(config, 3);
    let (b, l) = (2, 150);
    let ids: Vec<u32> = (0..b * l).map(|i| ((i * 31 + 7) % 50) as u32).collect();
    let v = model.vocab();
    let parallel = model.forward(&ids, b, None, false).unwrap().to_vec();
    let mut state = model.zero_state(b).unwrap();
    let mut worst = 0.0f32;
    for t in 0..l {
        let logits = model
            .step(&[ids[t], ids[l + t]], &mut state)
            .unwrap()
            .to_vec();
        for bi in 0..b {
            worst = worst.max(max_diff(
                &logits[bi * v..(bi + 1) * v],
                &parallel[(bi * l + t) * v..(bi * l + t + 1) * v],
            ));
        }
    }
    println!(
        "{}: step vs parallel max abs diff {worst:.2e} over {l} positions",
        model.arch()
    );
    assert!(worst < 1e-5, "{worst}");
    let mut state = model.zero_state(1).unwrap();
    let pre = model
        .forward(&ids[..100], 1, Some(&mut state), false)
        .unwrap()
        .to_vec();
    let d = max_diff(&pre, &parallel[..100 * v]);
    assert!(d < 1e-5, "prefill {d}");
    let next = model.step(&[ids[100]], &mut state).unwrap().to_vec();
    let d = max_diff(&next, &parallel[100 * v..101 * v]);
    assert!(d < 1e-5, "step after prefill {d}");
}

#[test]
fn transformer_step_matches_parallel_forward() {
    check_step_matches_parallel(small_transformer(PosEncoding::Rope, MlpKind::SwiGlu));
    check_step_matches_parallel(small_transformer(PosEncoding::Learned, MlpKind::Gelu));
    check_step_matches_parallel(small_transformer(PosEncoding::None, MlpKind::SwiGlu));
}

#[test]
fn hybrid_step_matches_parallel_forward() {
    check_step_matches_parallel(small_hybrid("MAMA"));
    check_step_matches_parallel(small_hybrid("AMA"));
}

#[test]
fn generation_is_greedy_or_seeded() {
    for config in [
        small_transformer(PosEncoding::Rope, MlpKind::SwiGlu),
        small_hybrid("MAM"),
    ] {
        let mut model = perturbed(config, 5);
        let prompt = [1u32, 2, 3, 4];
        let g1 = model.generate(&prompt, 10, Sampling::Greedy).unwrap();
        let mut seq = prompt.to_vec();
        let v = model.vocab();
        for _ in 0..10 {
            let logits = model.forward(&seq, 1, None, false).unwrap().to_vec();
            let last = &logits[(seq.len() - 1) * v..];
            let best = (0..v)
                .max_by(|&a, &b| last[a].partial_cmp(&last[b]).unwrap().then(b.cmp(&a)))
                .unwrap();
            seq.push(best as u32);
        }
        assert_eq!(
            g1,
            seq[4..],
            "{}: greedy decoding by KV cache and by the parallel forward",
            model.arch()
        );
        let s = Sampling::Sample {
            temperature: 1.5,
            top_k: 5,
            seed: 9,
        };
        assert_eq!(
            model.generate(&prompt, 20, s).unwrap(),
            model.generate(&prompt, 20, s).unwrap()
        );
    }
}

fn train_losses(config: ModelConfig, seed: u64, steps: usize) -> Vec<f64> {
    let mut model = LanguageModel::<f32>::new(config, seed).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    let (b, l) = (2, 70);
    (0..steps)
        .map(|s| {
            let ids: Vec<u32> = (0..b * l).map(|i| ((i * 13 + s * 7) % 50) as u32).collect();
            let targets: Vec<i64> = (0..b * l)
                .map(|i| {
                    if i % l == l - 1 {
                        -100
                    } else {
                        ids[i + 1] as i64
                    }
                })
                .collect();
            model.zero_grad().unwrap();
            let loss = model.forward_loss(&ids, &targets, b).unwrap();
            model.backward().unwrap();
            clip_grad_norm(&mut model, 1.0).unwrap();
            opt.update(&mut model, 3e-3).unwrap();
            loss
        })
        .collect()
}

#[test]
fn training_is_deterministic_and_learns() {
    for config in [
        small_transformer(PosEncoding::Rope, MlpKind::SwiGlu),
        small_hybrid("AM"),
    ] {
        let a = train_losses(config.clone(), 11, 12);
        let b = train_losses(config.clone(), 11, 12);
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        println!("{}: losses {a:?}", config.arch());
        assert!(
            a[11] < a[0] - 0.5,
            "{}: loss went from {} to {}",
            config.arch(),
            a[0],
            a[11]
        );
    }
}

/// Parameter counts and FLOPs worked out by hand for small configs (d = 8, vocab 10 padded to
/// 16, so the embedding is 128 values and the final norm 8).
#[test]
fn param_and_flop_counts_by_hand() {
    // Per block: norms 2·8; q and o 8·8 each; k and v 8·4 each (1 kv head of 4); SwiGLU 3·8·16.
    let t = TransformerConfig {
        d_model: 8,
        n_layer: 2,
        vocab_size: 10,
        block: AttentionConfig {
            n_heads: 2,
            n_kv_heads: Some(1),
            mlp_hidden: Some(16),
            ..AttentionConfig::default()
        },
        ..TransformerConfig::default()
    };
    let block = 16 + 64 + 64 + 32 + 32 + 384;
    assert_eq!(block, 592);
    let n_t = 128 + 2 * block + 8;
    // Learned table 20·8, biases q 8 + k 4 + v 4 + o 8, GELU 2·8·16.
    let tl = TransformerConfig {
        pos_encoding: PosEncoding::Learned,
        max_seq_len: 20,
        block: AttentionConfig {
            attn_bias: true,
            mlp: MlpKind::Gelu,
            ..t.clone().block
        },
        ..t.clone()
    };
    let n_tl = 128 + 160 + 2 * (16 + 192 + 24 + 256) + 8;
    // Mamba block, d_inner 16: norm 8, in_proj 2·16·8, conv 16·3 + 16, x_proj (2 + 2·4)·16,
    // dt_proj 16·2 + 16, A_log 16·4, D 16, out_proj 8·16.
    let m = MambaConfig {
        d_model: 8,
        n_layer: 2,
        vocab_size: 10,
        mixer: MambaMixerConfig {
            d_state: 4,
            d_conv: 3,
            dt_rank: Some(2),
            ..MambaMixerConfig::default()
        },
        ..MambaConfig::default()
    };
    let mblock = 8 + 256 + 64 + 160 + 48 + 64 + 16 + 128;
    let n_m = 128 + 2 * mblock + 8;
    let h = HybridConfig {
        pattern: "MAM".into(),
        d_model: 8,
        vocab_size: 10,
        mixers: MixerSettings {
            mamba: MambaMixerConfig {
                d_state: 4,
                d_conv: 3,
                dt_rank: Some(2),
                ..MambaMixerConfig::default()
            },
            attention: AttentionConfig {
                n_heads: 2,
                n_kv_heads: Some(1),
                mlp_hidden: Some(16),
                ..AttentionConfig::default()
            },
            ..MixerSettings::default()
        },
        ..HybridConfig::default()
    };
    let n_h = 128 + 2 * mblock + block + 8;
    // Non-selective: B 4 and C 4 in place of x_proj and dt_proj's weight; dt_proj.bias stays.
    let mf = MambaConfig {
        mixer: MambaMixerConfig {
            selective: false,
            ..m.clone().mixer
        },
        ..m.clone()
    };
    let n_mf = 128 + 2 * (8 + 256 + 64 + 8 + 16 + 64 + 16 + 128) + 8;
    // Mamba-2 block, d_inner 16 in 4 heads of 4, 2 groups of B and C with n 4 (xBC 16 + 16):
    // norm 8, in_proj (2·16 + 2·2·4 + 4)·8, conv 32·3 + 32, dt_bias, A_log and D 4 each, gated
    // norm 16, out_proj 8·16; with biases in_proj's 52 and out_proj's 8 more.
    let m2 = Mamba2Config {
        d_model: 8,
        n_layer: 2,
        vocab_size: 10,
        mixer: Mamba2MixerConfig {
            d_state: 4,
            d_conv: 3,
            headdim: 4,
            ngroups: 2,
            chunk_size: 16,
            ..Mamba2MixerConfig::default()
        },
        ..Mamba2Config::default()
    };
    let m2block = 8 + 416 + 128 + 12 + 16 + 128;
    assert_eq!(m2block, 708);
    let n_m2 = 128 + 2 * m2block + 8;
    let m2b = Mamba2Config {
        mixer: Mamba2MixerConfig {
            bias: true,
            chunk_size: 64,
            ..m2.clone().mixer
        },
        ..m2.clone()
    };
    let n_m2b = 128 + 2 * (m2block + 60) + 8;
    // Without the embeddings (128 = 16 padded rows × 8; the learned table's 160 = 20 × 8).
    let cases: [(ModelConfig, usize, usize, f64); 7] = [
        // 6N + 6·n_layer·L·d at L = 32.
        (t.into(), n_t, n_t - 128, (6 * n_t + 6 * 2 * 32 * 8) as f64),
        (
            tl.into(),
            n_tl,
            n_tl - 288,
            (6 * n_tl + 6 * 2 * 32 * 8) as f64,
        ),
        // 6N + 27·n_layer·d_inner·d_state.
        (m.into(), n_m, n_m - 128, (6 * n_m + 27 * 2 * 16 * 4) as f64),
        (
            mf.into(),
            n_mf,
            n_mf - 128,
            (6 * n_mf + 27 * 2 * 16 * 4) as f64,
        ),
        // 6N + n_layer·(6·Q·(g·n + d_inner) + 12·d_inner·n), Q = min(chunk, L): 16, then 32.
        (
            m2.into(),
            n_m2,
            n_m2 - 128,
            (6 * n_m2 + 2 * (6 * 16 * 24 + 12 * 16 * 4)) as f64,
        ),
        (
            m2b.into(),
            n_m2b,
            n_m2b - 128,
            (6 * n_m2b + 2 * (6 * 32 * 24 + 12 * 16 * 4)) as f64,
        ),
        // One attention layer, two Mamba layers.
        (
            h.into(),
            n_h,
            n_h - 128,
            (6 * n_h + 6 * 32 * 8 + 27 * 2 * 16 * 4) as f64,
        ),
    ];
    for (config, params, non_embedding, flops) in cases {
        let mut model = LanguageModel::<f32>::new(config.clone(), 0).unwrap();
        println!(
            "{}: {} params, {} FLOPs/token at L = 32 ({})",
            config.arch(),
            model.num_params(),
            model.flops_per_token(32),
            model.flops_convention()
        );
        assert_eq!(config.num_params(), params, "{} formula", config.arch());
        assert_eq!(model.num_params(), params, "{} model", config.arch());
        assert_eq!(
            (config.non_embedding_params(), model.non_embedding_params()),
            (non_embedding, non_embedding),
            "{} without embeddings",
            config.arch()
        );
        assert_eq!(model.flops_per_token(32), flops, "{} FLOPs", config.arch());
    }
    assert_eq!((n_t, n_tl, n_m, n_mf, n_h), (1320, 1272, 1624, 1256, 2216));
}

#[test]
fn default_sizes() {
    let t = TransformerConfig::default();
    // ⌊8·256/3⌋ = 682, rounded up to a multiple of 64.
    assert_eq!((t.head_dim(), t.n_kv_heads(), t.mlp_hidden()), (64, 4, 704));
    let g = TransformerConfig {
        block: AttentionConfig {
            mlp: MlpKind::Gelu,
            ..t.block
        },
        ..t
    };
    assert_eq!(g.mlp_hidden(), 1024);
}

fn config_error(config: impl Into<ModelConfig>) -> String {
    let config = config.into();
    let err = config.validate().unwrap_err().to_string();
    assert!(LanguageModel::<f32>::new(config, 0).is_err());
    err
}

#[test]
fn config_errors_name_the_field() {
    let t = TransformerConfig::default;
    let cases: [(ModelConfig, &str); 9] = [
        (TransformerConfig { d_model: 0, ..t() }.into(), "d_model"),
        (
            TransformerConfig {
                block: AttentionConfig {
                    n_heads: 3,
                    ..t().block
                },
                ..t()
            }
            .into(),
            "n_heads",
        ),
        (
            TransformerConfig {
                block: AttentionConfig {
                    n_kv_heads: Some(3),
                    ..t().block
                },
                ..t()
            }
            .into(),
            "n_kv_heads",
        ),
        (
            TransformerConfig {
                d_model: 6,
                block: AttentionConfig {
                    n_heads: 2,
                    ..t().block
                },
                ..t()
            }
            .into(),
            "n_heads",
        ),
        (
            TransformerConfig {
                block: AttentionConfig {
                    rope_base: f64::NAN,
                    ..t().block
                },
                ..t()
            }
            .into(),
            "rope_base",
        ),
        (
            HybridConfig {
                pattern: String::new(),
                ..HybridConfig::default()
            }
            .into(),
            "pattern",
        ),
        (
            HybridConfig {
                pattern: "MXA".into(),
                ..HybridConfig::default()
            }
            .into(),
            "pattern",
        ),
        (
            HybridConfig {
                mixers: MixerSettings {
                    mamba: MambaMixerConfig {
                        d_state: 0,
                        ..MambaMixerConfig::default()
                    },
                    ..Default::default()
                },
                ..HybridConfig::default()
            }
            .into(),
            "d_state",
        ),
        (
            HybridConfig {
                mixers: MixerSettings {
                    attention: AttentionConfig {
                        n_kv_heads: Some(3),
                        ..AttentionConfig::default()
                    },
                    ..Default::default()
                },
                ..HybridConfig::default()
            }
            .into(),
            "n_kv_heads",
        ),
    ];
    for (config, field) in cases {
        let err = config_error(config);
        assert!(err.contains(&format!("config: {field}:")), "{err}");
    }
    // An odd head_dim is fine without RoPE.
    TransformerConfig {
        d_model: 6,
        pos_encoding: PosEncoding::None,
        block: AttentionConfig {
            n_heads: 2,
            ..t().block
        },
        ..t()
    }
    .validate()
    .unwrap();
}

#[test]
fn architecture_switch_parses_and_rejects_unknown_keys() {
    let c: ModelConfig = serde_json::from_str(r#"{"arch": "hybrid", "pattern": "MAM", "d_model": 16, "attention": {"n_heads": 2, "mlp": "gelu"}, "pos_encoding": "learned"}"#).unwrap();
    let ModelConfig::Hybrid(h) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(
        (
            h.pattern.as_str(),
            h.d_model,
            h.mixers.attention.mlp,
            h.pos_encoding,
            h.mixers.mamba.d_state
        ),
        ("MAM", 16, MlpKind::Gelu, PosEncoding::Learned, 16)
    );
    let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let t: ModelConfig = serde_json::from_str(r#"{"arch": "transformer"}"#).unwrap();
    assert_eq!(t, ModelConfig::Transformer(TransformerConfig::default()));
    let m: ModelConfig = serde_json::from_str(r#"{"arch": "mamba", "d_state": 8}"#).unwrap();
    assert_eq!(m.arch(), "mamba");
    let err = serde_json::from_str::<ModelConfig>(r#"{"arch": "transformer", "d_modle": 8}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("d_modle"), "{err}");
    // Unknown keys are refused inside the mixer settings too, flattened or in a table.
    for json in [
        r#"{"arch": "mamba", "d_stat": 8}"#,
        r#"{"arch": "hybrid", "mamba": {"d_stat": 8}}"#,
        r#"{"arch": "hybrid", "attention": {"n_head": 2}}"#,
    ] {
        let err = serde_json::from_str::<ModelConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d_stat") || err.contains("n_head"),
            "{json}: {err}"
        );
    }
    let err = serde_json::from_str::<ModelConfig>(r#"{"arch": "rnn"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rnn"), "{err}");
    let err = serde_json::from_str::<ModelConfig>(r#"{"arch": "transformer", "mlp": "relu"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("relu"), "{err}");
}

#[test]
fn misuse_gives_errors() {
    // Learned positions end at max_seq_len, in training and in decoding.
    let c = TransformerConfig {
        d_model: 16,
        n_layer: 1,
        pos_encoding: PosEncoding::Learned,
        max_seq_len: 4,
        vocab_size: 10,
        block: AttentionConfig {
            n_heads: 2,
            ..AttentionConfig::default()
        },
        ..TransformerConfig::default()
    };
    let mut model = LanguageModel::<f32>::new(c, 0).unwrap();
    let err = model
        .forward(&[1, 2, 3, 4, 5], 1, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_seq_len"), "{err}");
    let mut state = model.zero_state(1).unwrap();
    model
        .forward(&[1, 2, 3, 4], 1, Some(&mut state), false)
        .unwrap();
    assert!(
        model
            .step(&[1], &mut state)
            .unwrap_err()
            .to_string()
            .contains("max_seq_len")
    );
    // The backward of attention needs a training forward without a KV cache.
    let mut state = model.zero_state(1).unwrap();
    model.forward(&[1, 2], 1, Some(&mut state), true).unwrap();
    assert!(model.backward().is_err());
    // A state of another architecture.
    let mut t = LanguageModel::<f32>::new(small_transformer(PosEncoding::Rope, MlpKind::SwiGlu), 0)
        .unwrap();
    let h = LanguageModel::<f32>::new(small_hybrid("MA"), 0).unwrap();
    let mut wrong = h.zero_state(1).unwrap();
    let err = t.step(&[1], &mut wrong).unwrap_err().to_string();
    assert!(
        err.contains("a Mamba decoding state given to an attention layer"),
        "{err}"
    );
    assert!(t.forward(&[1], 1, Some(&mut wrong), false).is_err());
    // A state whose position and caches disagree.
    let mut state = t.zero_state(1).unwrap();
    t.forward(&[1, 2], 1, Some(&mut state), false).unwrap();
    state.pos = 1;
    let err = t.step(&[3], &mut state).unwrap_err().to_string();
    assert!(
        err.contains("KV cache holds 2 tokens but the state is at position 1"),
        "{err}"
    );
}
