//! Parity against PyTorch (the `torch` feature): each op of ours against an implementation in
//! torch ops with autograd's gradients, and whole training steps against [`TorchLm`] holding the
//! same weights, all in f64 so that the tolerances are near rounding. Every comparison prints
//! its largest difference.

use rand::RngExt;
use ssm::Tensor;
use ssm::models::{
    AttentionConfig, HybridConfig, LanguageModel, Mamba2Config, Mamba2MixerConfig, MambaConfig,
    MambaMixerConfig, ModelConfig, TransformerConfig,
};
use ssm::nn::attention::PosEncoding;
use ssm::nn::mlp::MlpKind;
use ssm::nn::{Module, Param};
use ssm::ops::attention::{AttentionGrads, AttentionOutput, attention_bwd, attention_fwd};
use ssm::ops::conv1d::{causal_conv1d_bwd, causal_conv1d_fwd};
use ssm::ops::loss::{IGNORE_INDEX, cross_entropy_bwd, cross_entropy_fwd};
use ssm::ops::norm::{rmsnorm_bwd, rmsnorm_fwd};
use ssm::ops::scan::{ScanGrads, ScanInputs, ScanOutput, selective_scan_bwd, selective_scan_fwd};
use ssm::optim::{AdamW, AdamWConfig};
use ssm::torch::attention::sdpa;
use ssm::torch::lm::TorchLm;
use ssm::torch::scan::{scan_loop, scan_parallel};
use ssm::torch::tch::{self, Reduction};
use ssm::torch::{causal_conv1d, max_abs_diff, rmsnorm, to_torch};

use crate::common::{rng, uniform};

const CPU: tch::Device = tch::Device::Cpu;

/// A torch leaf copy of `t` that collects its gradient.
fn leaf(t: &Tensor<f64>) -> tch::Tensor {
    to_torch(t, CPU).unwrap().set_requires_grad(true)
}

/// Prints and checks max |ours - theirs|.
fn close(what: &str, ours: &Tensor<f64>, theirs: &tch::Tensor, tol: f64) {
    let d = max_abs_diff(ours, theirs).unwrap();
    println!("{what:<40} max |ours - torch| = {d:.3e}");
    assert!(d <= tol, "{what}: {d:.3e} above {tol:.0e}");
}

fn optional(on: bool, t: Tensor<f64>) -> Option<Tensor<f64>> {
    on.then_some(t)
}

/// The scan with each option on and off, groups 1, 2 and 3 and an initial state: y, the last
/// state and every gradient against autograd through `selective_scan_ref`'s loop, and the
/// parallel formulation against the loop.
#[test]
fn scan_matches_torch_loop_and_parallel_scan_with_every_option() {
    let (b, l, d, n) = (2, 13, 6, 4);
    let cases = [
        // g, D, z, delta_bias, softplus, h0
        (1, true, true, true, true, true),
        (2, false, false, false, false, false),
        (3, true, false, true, true, false),
        (1, false, true, false, true, true),
        (2, true, true, true, false, true),
    ];
    for (case, &(g, has_d, has_z, has_bias, softplus, has_h0)) in cases.iter().enumerate() {
        println!(
            "case {case}: g {g}, D {has_d}, z {has_z}, delta_bias {has_bias}, softplus {softplus}, h0 {has_h0}"
        );
        let r = &mut rng(40 + case as u64);
        let delta_range = if softplus { (-2.0, 1.0) } else { (0.05, 1.0) };
        let u = uniform(r, &[b, l, d], -1.0, 1.0);
        let delta = uniform(r, &[b, l, d], delta_range.0, delta_range.1);
        let a = uniform(r, &[d, n], -1.5, -0.2);
        let bm = uniform(r, &[b, l, g, n], -1.0, 1.0);
        let cm = uniform(r, &[b, l, g, n], -1.0, 1.0);
        let d_skip = optional(has_d, uniform(r, &[d], -1.0, 1.0));
        let z = optional(has_z, uniform(r, &[b, l, d], -1.0, 1.0));
        let bias = optional(has_bias, uniform(r, &[d], -0.5, 0.5));
        let h0 = optional(has_h0, uniform(r, &[b, d, n], -1.0, 1.0));
        let dy = uniform(r, &[b, l, d], -1.0, 1.0);
        let dlast = uniform(r, &[b, d, n], -1.0, 1.0);
        let inp = ScanInputs {
            u: &u,
            delta: &delta,
            a: &a,
            b: &bm,
            c: &cm,
            d_skip: d_skip.as_ref(),
            z: z.as_ref(),
            delta_bias: bias.as_ref(),
            delta_softplus: softplus,
            h0: h0.as_ref(),
        };
        let mut out = ScanOutput::default();
        selective_scan_fwd(&inp, &mut out, true).unwrap();
        let mut grads = ScanGrads::zeros_like(&inp).unwrap();
        selective_scan_bwd(&inp, &out, &dy, Some(&dlast), &mut grads).unwrap();

        let t = inp.try_map(|x| Ok::<_, ()>(leaf(x))).unwrap();
        let ts = t.each_ref();
        let (y, last) = scan_loop(&ts);
        close("scan y", &out.y, &y, 1e-12);
        close("scan last state", &out.last_state, &last, 1e-12);
        let (py, plast) = scan_parallel(&ts);
        close("parallel scan y (vs ours)", &out.y, &py, 1e-12);
        close(
            "parallel scan last state (vs ours)",
            &out.last_state,
            &plast,
            1e-12,
        );
        let loss = (&y * to_torch(&dy, CPU).unwrap()).sum(None)
            + (&last * to_torch(&dlast, CPU).unwrap()).sum(None);
        loss.backward();
        let pairs = [
            ("du", Some(&grads.du), Some(&t.u)),
            ("ddelta", Some(&grads.ddelta), Some(&t.delta)),
            ("dA", Some(&grads.da), Some(&t.a)),
            ("dB", Some(&grads.db), Some(&t.b)),
            ("dC", Some(&grads.dc), Some(&t.c)),
            ("dD", grads.dd_skip.as_ref(), t.d_skip.as_ref()),
            ("dz", grads.dz.as_ref(), t.z.as_ref()),
            (
                "ddelta_bias",
                grads.ddelta_bias.as_ref(),
                t.delta_bias.as_ref(),
            ),
            ("dh0", grads.dh0.as_ref(), t.h0.as_ref()),
        ];
        for (name, ours, theirs) in pairs {
            match (ours, theirs) {
                (Some(o), Some(th)) => close(&format!("scan {name}"), o, &th.grad(), 1e-11),
                (None, None) => {}
                _ => panic!("{name}: present on one side only"),
            }
        }
    }
}

/// Attention against `scaled_dot_product_attention` and its autograd gradients: multi-head and
/// grouped-query, training (lq = lk) and queries at the last positions (lq < lk).
#[test]
fn attention_matches_torch_sdpa_and_its_gradients() {
    for (case, &(lq, lk, h, hkv)) in [(9, 9, 4, 4), (9, 9, 4, 2), (3, 10, 4, 1)]
        .iter()
        .enumerate()
    {
        println!("case {case}: lq {lq}, lk {lk}, h {h}, hkv {hkv}");
        let (b, hd) = (2, 8);
        let r = &mut rng(60 + case as u64);
        let q = uniform(r, &[b, lq, h, hd], -1.0, 1.0);
        let k = uniform(r, &[b, lk, hkv, hd], -1.0, 1.0);
        let v = uniform(r, &[b, lk, hkv, hd], -1.0, 1.0);
        let d_o = uniform(r, &[b, lq, h, hd], -1.0, 1.0);
        let mut out = AttentionOutput::default();
        attention_fwd(&q, &k, &v, None, &mut out).unwrap();
        let mut grads = AttentionGrads::zeros_like(&q, &k, &v).unwrap();
        attention_bwd(&q, &k, &v, &out, &d_o, &mut grads).unwrap();
        let (tq, tk, tv) = (leaf(&q), leaf(&k), leaf(&v));
        let o = sdpa(&tq, &tk, &tv, None);
        close("attention o", &out.o, &o, 1e-12);
        (&o * to_torch(&d_o, CPU).unwrap()).sum(None).backward();
        close("attention dq", &grads.dq, &tq.grad(), 1e-12);
        close("attention dk", &grads.dk, &tk.grad(), 1e-12);
        close("attention dv", &grads.dv, &tv.grad(), 1e-12);
    }
}

/// RMSNorm against torch's `rms_norm`, the causal depthwise convolution against torch's
/// `conv1d`, and cross-entropy (with ignored rows) against `cross_entropy_loss`, forward and
/// gradients.
#[test]
fn rmsnorm_conv1d_and_cross_entropy_match_torch() {
    let r = &mut rng(70);
    let (x, w) = (
        uniform(r, &[3, 5, 16], -2.0, 2.0),
        uniform(r, &[16], 0.5, 1.5),
    );
    let dy = uniform(r, &[3, 5, 16], -1.0, 1.0);
    let (mut y, mut rstd) = (Tensor::default(), Tensor::default());
    rmsnorm_fwd(&x, &w, 1e-5, &mut y, &mut rstd).unwrap();
    let (mut dx, mut dw) = (Tensor::zeros_cpu([3, 5, 16]), Tensor::zeros_cpu([16]));
    rmsnorm_bwd(&dy, &x, &w, &rstd, &mut dx, &mut dw).unwrap();
    let (tx, tw) = (leaf(&x), leaf(&w));
    let ty = rmsnorm(&tx, &tw, 1e-5);
    close("rmsnorm y", &y, &ty, 1e-13);
    (&ty * to_torch(&dy, CPU).unwrap()).sum(None).backward();
    close("rmsnorm dx", &dx, &tx.grad(), 1e-13);
    close("rmsnorm dw", &dw, &tw.grad(), 1e-13);

    let (b, l, d, k) = (2, 11, 6, 4);
    let x = uniform(r, &[b, l, d], -1.0, 1.0);
    let (w, bias) = (uniform(r, &[d, k], -1.0, 1.0), uniform(r, &[d], -1.0, 1.0));
    let dy = uniform(r, &[b, l, d], -1.0, 1.0);
    let mut y = Tensor::default();
    causal_conv1d_fwd(&x, &w, Some(&bias), None, &mut y).unwrap();
    let mut g = [
        Tensor::zeros_cpu([b, l, d]),
        Tensor::zeros_cpu([d, k]),
        Tensor::zeros_cpu([d]),
    ];
    let [dx, dw, db] = &mut g;
    causal_conv1d_bwd(&x, &w, None, &dy, dx, dw, Some(db)).unwrap();
    let (tx, tw, tb) = (leaf(&x), leaf(&w), leaf(&bias));
    let ty = causal_conv1d(&tx, &tw, Some(&tb));
    close("conv1d y", &y, &ty, 1e-13);
    (&ty * to_torch(&dy, CPU).unwrap()).sum(None).backward();
    close("conv1d dx", dx, &tx.grad(), 1e-13);
    close("conv1d dw", dw, &tw.grad(), 1e-13);
    close("conv1d dbias", db, &tb.grad(), 1e-13);

    let (m, v) = (12, 7);
    let logits = uniform(r, &[m, v], -3.0, 3.0);
    let targets: Vec<i64> = (0..m)
        .map(|i| {
            if i % 5 == 2 {
                IGNORE_INDEX
            } else {
                r.random_range(0..v as i64)
            }
        })
        .collect();
    let mut lse = Tensor::default();
    let (loss, scored) = cross_entropy_fwd(&logits, &targets, &mut lse).unwrap();
    assert_eq!(scored, m - 2);
    let mut dlogits = Tensor::zeros_cpu([m, v]);
    cross_entropy_bwd(&logits, &targets, &lse, 1.0, &mut dlogits).unwrap();
    let tl = leaf(&logits);
    let tloss = tl.cross_entropy_loss::<tch::Tensor>(
        &tch::Tensor::from_slice(&targets),
        None,
        Reduction::Mean,
        IGNORE_INDEX,
        0.0,
    );
    let diff = (loss - tloss.double_value(&[])).abs();
    println!(
        "{:<40} max |ours - torch| = {diff:.3e}",
        "cross-entropy loss"
    );
    assert!(diff < 1e-13);
    tloss.backward();
    close("cross-entropy dlogits", &dlogits, &tl.grad(), 1e-14);
}

/// Tiny models of every kind the engine builds, in f64.
fn tiny_models() -> Vec<(&'static str, ModelConfig)> {
    let attention = AttentionConfig {
        n_heads: 2,
        ..AttentionConfig::default()
    };
    let mamba = MambaMixerConfig {
        d_state: 4,
        ..MambaMixerConfig::default()
    };
    // Four heads of 8 in two groups, chunks of 4 (the batches' 9 positions end in a partial one).
    let mamba2 = Mamba2MixerConfig {
        d_state: 4,
        headdim: 8,
        ngroups: 2,
        chunk_size: 4,
        ..Mamba2MixerConfig::default()
    };
    vec![
        (
            "transformer (RoPE, SwiGLU)",
            TransformerConfig {
                d_model: 16,
                n_layer: 2,
                vocab_size: 29,
                pad_vocab_size_multiple: 8,
                block: attention.clone(),
                ..TransformerConfig::default()
            }
            .into(),
        ),
        (
            "transformer (learned positions, GELU, GQA, biases)",
            TransformerConfig {
                d_model: 16,
                n_layer: 2,
                vocab_size: 32,
                pos_encoding: PosEncoding::Learned,
                max_seq_len: 16,
                block: AttentionConfig {
                    n_heads: 4,
                    n_kv_heads: Some(2),
                    attn_bias: true,
                    mlp: MlpKind::Gelu,
                    ..AttentionConfig::default()
                },
                ..TransformerConfig::default()
            }
            .into(),
        ),
        (
            "mamba",
            MambaConfig {
                d_model: 16,
                n_layer: 2,
                vocab_size: 32,
                mixer: mamba.clone(),
                ..MambaConfig::default()
            }
            .into(),
        ),
        (
            "mamba (non-selective, biases)",
            MambaConfig {
                d_model: 16,
                n_layer: 1,
                vocab_size: 32,
                mixer: MambaMixerConfig {
                    selective: false,
                    bias: true,
                    ..mamba.clone()
                },
                ..MambaConfig::default()
            }
            .into(),
        ),
        (
            "mamba2 (groups, chunks of 4)",
            Mamba2Config {
                d_model: 16,
                n_layer: 2,
                vocab_size: 32,
                mixer: mamba2.clone(),
                ..Mamba2Config::default()
            }
            .into(),
        ),
        (
            "mamba2 (biases, dt limits)",
            Mamba2Config {
                d_model: 16,
                n_layer: 1,
                vocab_size: 32,
                mixer: Mamba2MixerConfig {
                    bias: true,
                    dt_limit: Some([0.002, 0.08]),
                    ..mamba2.clone()
                },
                ..Mamba2Config::default()
            }
            .into(),
        ),
        (
            "hybrid MSA",
            HybridConfig {
                pattern: "MSA".into(),
                d_model: 16,
                vocab_size: 32,
                mixers: ssm::models::MixerSettings {
                    mamba,
                    mamba2,
                    attention,
                },
                ..HybridConfig::default()
            }
            .into(),
        ),
    ]
}

/// ids and next-token targets (b, l), a few targets ignored.
fn batch(b: usize, l: usize, vocab: usize, seed: u64) -> (Vec<u32>, Vec<i64>) {
    let r = &mut rng(seed);
    let ids: Vec<u32> = (0..b * l)
        .map(|_| r.random_range(0..vocab as u32))
        .collect();
    let targets = (0..b * l)
        .map(|i| {
            if i % 6 == 5 {
                IGNORE_INDEX
            } else {
                r.random_range(0..vocab as i64)
            }
        })
        .collect();
    (ids, targets)
}

/// Our gradients by name.
fn our_grads(model: &mut LanguageModel<f64>) -> Vec<(String, Tensor<f64>)> {
    let mut out = Vec::new();
    model.visit_params(&mut |name, p| out.push((name.to_string(), p.grad.clone())));
    out
}

/// A training step's loss and the gradient of every parameter, for each tiny model, against the
/// torch copy holding the same weights.
#[test]
fn training_step_loss_and_every_gradient_match_the_torch_model() {
    for (what, config) in tiny_models() {
        println!("{what}");
        let mut model = LanguageModel::<f64>::new(config, 3).unwrap();
        let torch = TorchLm::from_model(&mut model, CPU).unwrap();
        let (b, l) = (2, 9);
        let (ids, targets) = batch(b, l, 29, 8);
        model.zero_grad().unwrap();
        let loss = model.forward_loss(&ids, &targets, b).unwrap();
        model.backward().unwrap();
        let tloss = torch.loss(&torch.ids(&ids, b), &targets).unwrap();
        let diff = (loss - tloss.double_value(&[])).abs();
        println!("{:<40} max |ours - torch| = {diff:.3e}", "loss");
        assert!(
            diff < 1e-12,
            "{what}: loss {loss} vs torch {}",
            tloss.double_value(&[])
        );
        tloss.backward();
        let grads = our_grads(&mut model);
        assert_eq!(grads.len(), torch.names().len());
        for (name, g) in grads {
            close(&name, &g, &torch.var(&name).unwrap().grad(), 1e-11);
        }
    }
}

/// Two AdamW steps (bias corrections, decay on the matrices only) against torch's AdamW, from
/// the same weights and the same gradients.
#[test]
fn adamw_steps_match_torch_adamw() {
    let (_, config) = tiny_models().swap_remove(0);
    let mut model = LanguageModel::<f64>::new(config, 5).unwrap();
    let torch = TorchLm::from_model(&mut model, CPU).unwrap();
    let c = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let lr = 3e-3;
    let mut ours = AdamW::<f64>::new(c);
    let mut theirs = torch.optimizer(c, lr).unwrap();
    for step in 0..2u64 {
        let r = &mut rng(90 + step);
        let mut grads = Vec::new();
        model.visit_params(&mut |name, p: &mut Param<f64>| {
            p.grad = uniform(r, p.value.dims(), -1.0, 1.0);
            grads.push((name.to_string(), p.grad.clone()));
        });
        ours.update(&mut model, lr).unwrap();
        theirs.zero_grad();
        // The gradient of Σ θ·g is g: torch's step sees the same gradients as ours.
        let loss = grads
            .iter()
            .map(|(name, g)| (torch.var(name).unwrap() * to_torch(g, CPU).unwrap()).sum(None))
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        theirs.step();
        let mut values = Vec::new();
        model.visit_params(&mut |name, p| values.push((name.to_string(), p.value.clone())));
        for (name, v) in values {
            close(
                &format!("step {} {name}", step + 1),
                &v,
                torch.var(&name).unwrap(),
                1e-14,
            );
        }
    }
}

/// The same f32 step against torch in f32: what the benchmarks compare runs the same math.
#[test]
fn f32_training_step_matches_the_torch_model_in_f32() {
    let (_, config) = tiny_models().swap_remove(2);
    let mut model = LanguageModel::<f32>::new(config, 4).unwrap();
    let torch = TorchLm::from_model(&mut model, CPU).unwrap();
    let (ids, targets) = batch(2, 16, 32, 9);
    model.zero_grad().unwrap();
    let loss = model.forward_loss(&ids, &targets, 2).unwrap();
    model.backward().unwrap();
    let tloss = torch.loss(&torch.ids(&ids, 2), &targets).unwrap();
    let diff = (loss - tloss.double_value(&[])).abs();
    println!("{:<40} max |ours - torch| = {diff:.3e}", "f32 loss");
    assert!(diff < 1e-5);
    tloss.backward();
    let mut worst = 0.0f64;
    model.visit_params(&mut |name, p| {
        let d = max_abs_diff(&p.grad, &torch.var(name).unwrap().grad()).unwrap();
        println!("{name:<40} max |ours - torch| = {d:.3e}");
        worst = worst.max(d);
    });
    assert!(worst < 1e-5, "{worst:.3e}");
}
