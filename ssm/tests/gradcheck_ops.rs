//! Central finite-difference checks in f64 of every op's backward, and of a tiny 2-layer Mamba
//! model end to end.

use ssm::Tensor;
use ssm::models::{LanguageModel, MambaConfig, MambaMixerConfig};
use ssm::nn::Module;
use ssm::ops::activation::*;
use ssm::ops::conv1d::{causal_conv1d_bwd, causal_conv1d_fwd};
use ssm::ops::embedding::{embedding_bwd, embedding_fwd};
use ssm::ops::linear::{linear_bwd, linear_fwd};
use ssm::ops::loss::{IGNORE_INDEX, cross_entropy_bwd, cross_entropy_fwd};
use ssm::ops::norm::reference::rmsnorm_grouped_ref;
use ssm::ops::norm::{rmsnorm_bwd, rmsnorm_fwd, rmsnorm_grouped_bwd, rmsnorm_grouped_fwd};

use crate::common::*;

const H: f64 = 1e-4;
const TOL: f64 = 1e-6;

/// Checks the gradient `analytic` of `loss` with respect to `x` by central differences.
fn check(name: &str, x: &Tensor<f64>, analytic: &Tensor<f64>, loss: impl Fn(&Tensor<f64>) -> f64) {
    let mut x = x.clone();
    let num = numeric_grad(&mut x, H, loss);
    assert_grad(name, analytic, &num, TOL);
}

#[test]
fn linear() {
    let mut r = rng(1);
    let x = uniform::<f64>(&mut r, &[2, 3, 5], -1.0, 1.0);
    let w = uniform::<f64>(&mut r, &[4, 5], -1.0, 1.0);
    let b = uniform::<f64>(&mut r, &[4], -1.0, 1.0);
    let wy = uniform::<f64>(&mut r, &[2, 3, 4], -1.0, 1.0);
    let f = |x: &Tensor<f64>, w: &Tensor<f64>, b: &Tensor<f64>| {
        let mut y = Tensor::default();
        linear_fwd(x, w, Some(b), &mut y).unwrap();
        dot(&y, &wy)
    };
    let (mut dx, mut dw, mut db) = (
        Tensor::zeros_cpu([2, 3, 5]),
        Tensor::zeros_cpu([4, 5]),
        Tensor::zeros_cpu([4]),
    );
    linear_bwd(&x, &w, &wy, Some(&mut dx), &mut dw, Some(&mut db)).unwrap();
    check("linear dx", &x, &dx, |t| f(t, &w, &b));
    check("linear dw", &w, &dw, |t| f(&x, t, &b));
    check("linear dbias", &b, &db, |t| f(&x, &w, t));
}

#[test]
fn rmsnorm() {
    let mut r = rng(2);
    let x = uniform::<f64>(&mut r, &[3, 7], -1.0, 1.0);
    let w = uniform::<f64>(&mut r, &[7], 0.5, 1.5);
    let wy = uniform::<f64>(&mut r, &[3, 7], -1.0, 1.0);
    let f = |x: &Tensor<f64>, w: &Tensor<f64>| {
        let (mut y, mut rstd) = (Tensor::default(), Tensor::default());
        rmsnorm_fwd(x, w, 1e-5, &mut y, &mut rstd).unwrap();
        dot(&y, &wy)
    };
    let (mut y, mut rstd) = (Tensor::default(), Tensor::default());
    rmsnorm_fwd(&x, &w, 1e-5, &mut y, &mut rstd).unwrap();
    let (mut dx, mut dw) = (Tensor::zeros_cpu([3, 7]), Tensor::zeros_cpu([7]));
    rmsnorm_bwd(&wy, &x, &w, &rstd, &mut dx, &mut dw).unwrap();
    check("rmsnorm dx", &x, &dx, |t| f(t, &w));
    check("rmsnorm dw", &w, &dw, |t| f(&x, t));
}

/// Mamba-2's grouped norm: three slices of four per row, each with its own statistics, against
/// the reference forward and central differences.
#[test]
fn rmsnorm_grouped() {
    let mut r = rng(3);
    let x = uniform::<f64>(&mut r, &[2, 3, 12], -1.0, 1.0);
    let w = uniform::<f64>(&mut r, &[12], 0.5, 1.5);
    let wy = uniform::<f64>(&mut r, &[2, 3, 12], -1.0, 1.0);
    let f = |x: &Tensor<f64>, w: &Tensor<f64>| {
        let (mut y, mut rstd) = (Tensor::default(), Tensor::default());
        rmsnorm_grouped_fwd(x, w, 1e-5, 3, &mut y, &mut rstd).unwrap();
        dot(&y, &wy)
    };
    let (mut y, mut rstd) = (Tensor::default(), Tensor::default());
    rmsnorm_grouped_fwd(&x, &w, 1e-5, 3, &mut y, &mut rstd).unwrap();
    assert_close(
        "grouped y",
        &y,
        &rmsnorm_grouped_ref(&x, &w, 1e-5, 3).unwrap(),
        1e-14,
    );
    let mut whole = Tensor::default();
    rmsnorm_fwd(&x, &w, 1e-5, &mut whole, &mut rstd.clone()).unwrap();
    assert!(max_abs_diff(&whole, &y) > 1e-3, "groups change the result");
    let (mut dx, mut dw) = (Tensor::zeros_cpu([2, 3, 12]), Tensor::zeros_cpu([12]));
    rmsnorm_grouped_bwd(&wy, &x, &w, &rstd, 3, &mut dx, &mut dw).unwrap();
    check("grouped rmsnorm dx", &x, &dx, |t| f(t, &w));
    check("grouped rmsnorm dw", &w, &dw, |t| f(&x, t));
    let e = rmsnorm_grouped_fwd(&x, &w, 1e-5, 5, &mut y, &mut rstd).unwrap_err();
    assert!(e.to_string().contains("divisible by the 5 groups"), "{e}");
}

#[test]
fn embedding() {
    let mut r = rng(3);
    let table = uniform::<f64>(&mut r, &[6, 4], -1.0, 1.0);
    let ids = [1u32, 5, 1, 0, 3];
    let wy = uniform::<f64>(&mut r, &[5, 4], -1.0, 1.0);
    let f = |t: &Tensor<f64>| {
        let mut y = Tensor::default();
        embedding_fwd(&ids, &[5], t, &mut y).unwrap();
        dot(&y, &wy)
    };
    let mut dt = Tensor::zeros_cpu([6, 4]);
    embedding_bwd(&ids, &wy, &mut dt).unwrap();
    check("embedding dtable", &table, &dt, f);
    let err = embedding_fwd(&[9], &[1], &table, &mut Tensor::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("token id 9"), "{err}");
}

#[test]
fn causal_conv1d() {
    let mut r = rng(4);
    let x = uniform::<f64>(&mut r, &[2, 6, 3], -1.0, 1.0);
    let w = uniform::<f64>(&mut r, &[3, 4], -1.0, 1.0);
    let b = uniform::<f64>(&mut r, &[3], -1.0, 1.0);
    let state = uniform::<f64>(&mut r, &[2, 3, 3], -1.0, 1.0);
    let wy = uniform::<f64>(&mut r, &[2, 6, 3], -1.0, 1.0);
    for with_state in [false, true] {
        let st = with_state.then_some(&state);
        let f = |x: &Tensor<f64>, w: &Tensor<f64>, b: &Tensor<f64>| {
            let mut y = Tensor::default();
            causal_conv1d_fwd(x, w, Some(b), st, &mut y).unwrap();
            dot(&y, &wy)
        };
        let (mut dx, mut dw, mut db) = (
            Tensor::zeros_cpu([2, 6, 3]),
            Tensor::zeros_cpu([3, 4]),
            Tensor::zeros_cpu([3]),
        );
        causal_conv1d_bwd(&x, &w, st, &wy, &mut dx, &mut dw, Some(&mut db)).unwrap();
        check("conv1d dx", &x, &dx, |t| f(t, &w, &b));
        check("conv1d dw", &w, &dw, |t| f(&x, t, &b));
        check("conv1d dbias", &b, &db, |t| f(&x, &w, t));
    }
}

#[test]
fn activations_and_gate() {
    let mut r = rng(5);
    // Softplus is also checked above its threshold of 20.
    let mut x = uniform::<f64>(&mut r, &[40], -6.0, 6.0);
    x.host_mut().unwrap()[0] = 25.0;
    let z = uniform::<f64>(&mut r, &[40], -4.0, 4.0);
    let wy = uniform::<f64>(&mut r, &[40], -1.0, 1.0);
    type Fwd = fn(&Tensor<f64>, &mut Tensor<f64>) -> ssm::Result<()>;
    type Bwd = fn(&Tensor<f64>, &Tensor<f64>, &mut Tensor<f64>) -> ssm::Result<()>;
    let unary: [(&str, Fwd, Bwd); 2] = [
        ("silu", silu_fwd, silu_bwd),
        ("softplus", softplus_fwd, softplus_bwd),
    ];
    for (name, fwd, bwd) in unary {
        let mut dx = Tensor::zeros_cpu([40]);
        bwd(&x, &wy, &mut dx).unwrap();
        check(name, &x, &dx, |t| {
            let mut y = Tensor::default();
            fwd(t, &mut y).unwrap();
            dot(&y, &wy)
        });
    }
    let f = |x: &Tensor<f64>, z: &Tensor<f64>| {
        let mut y = Tensor::default();
        gate_fwd(x, z, &mut y).unwrap();
        dot(&y, &wy)
    };
    let (mut dx, mut dz) = (Tensor::zeros_cpu([40]), Tensor::zeros_cpu([40]));
    gate_bwd(&x, &z, &wy, &mut dx, &mut dz).unwrap();
    check("gate dx", &x, &dx, |t| f(t, &z));
    check("gate dz", &z, &dz, |t| f(&x, t));
}

#[test]
fn cross_entropy_with_ignored_targets() {
    let mut r = rng(6);
    let logits = uniform::<f64>(&mut r, &[5, 7], -3.0, 3.0);
    let targets = [3i64, IGNORE_INDEX, 0, 6, IGNORE_INDEX];
    let f = |t: &Tensor<f64>| {
        cross_entropy_fwd(t, &targets, &mut Tensor::default())
            .unwrap()
            .0
    };
    let mut lse = Tensor::default();
    let (loss, count) = cross_entropy_fwd(&logits, &targets, &mut lse).unwrap();
    assert_eq!(count, 3);
    // The mean over scored rows, computed directly.
    let l = logits.to_vec();
    let want: f64 = [(0usize, 3usize), (2, 0), (3, 6)]
        .iter()
        .map(|&(i, t)| {
            let row = &l[i * 7..(i + 1) * 7];
            row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[t]
        })
        .sum::<f64>()
        / 3.0;
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    let mut d = Tensor::zeros_cpu([5, 7]);
    cross_entropy_bwd(&logits, &targets, &lse, 1.0, &mut d).unwrap();
    check("cross_entropy dlogits", &logits, &d, f);
    assert!(
        d.to_vec()[7..14].iter().all(|&g| g == 0.0),
        "ignored row got a gradient"
    );
}

/// A tiny 2-layer model with every optional part on (biases, conv bias). dt starts larger than
/// Mamba's default so that the gradients of A_log and dt_proj stand well above the round-off of
/// finite differences.
pub fn tiny_config() -> MambaConfig {
    MambaConfig {
        d_model: 8,
        n_layer: 2,
        vocab_size: 13,
        mixer: MambaMixerConfig {
            d_state: 4,
            d_conv: 3,
            expand: 2,
            dt_rank: Some(2),
            bias: true,
            dt_min: 0.1,
            dt_max: 1.0,
            ..MambaMixerConfig::default()
        },
        ..MambaConfig::default()
    }
}

/// Sets every parameter element in turn and compares ∂loss/∂θ with central differences.
#[test]
fn mamba_lm_end_to_end() {
    let mut model = LanguageModel::<f32>::new(tiny_config(), 7)
        .unwrap()
        .cast::<f64>();
    // Move every parameter off its special initial value (ones, zeros) so each path matters.
    let mut r = rng(8);
    model.visit_params(&mut |_, p| {
        let noise = uniform::<f64>(&mut r, p.value.dims(), -0.2, 0.2);
        for (v, n) in p.value.host_mut().unwrap().iter_mut().zip(noise.to_vec()) {
            *v += n;
        }
    });
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
    let mut grads = Vec::new();
    model.visit_params(&mut |name, p| {
        grads.push((name.to_string(), p.grad.clone(), p.value.clone()))
    });
    for (idx, (name, analytic, value)) in grads.iter().enumerate() {
        let mut value = value.clone();
        let num = numeric_grad(&mut value, H, |t| {
            let mut i = 0;
            model.visit_params(&mut |_, p| {
                if i == idx {
                    p.value = t.clone();
                }
                i += 1;
            });
            let loss = model.forward_loss(&ids, &targets, b).unwrap();
            let mut i = 0;
            model.visit_params(&mut |_, p| {
                if i == idx {
                    p.value = grads[idx].2.clone();
                }
                i += 1;
            });
            loss
        });
        assert_grad(name, analytic, &num, TOL);
    }
}
