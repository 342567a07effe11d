//! The fast CPU selective scan against the plain sequential reference, forward and backward,
//! over lengths, groups and every option; and both against finite differences in f64.

use ssm::Tensor;
use ssm::ops::scan::{
    ScanGrads, ScanInputs, ScanOutput, selective_scan_bwd, selective_scan_fwd, selective_scan_ref,
    selective_scan_ref_bwd,
};

use crate::common::*;

/// Owned inputs of one scan test case.
pub struct Case<T: ssm::Float> {
    pub u: Tensor<T>,
    pub delta: Tensor<T>,
    pub a: Tensor<T>,
    pub b: Tensor<T>,
    pub c: Tensor<T>,
    pub d_skip: Option<Tensor<T>>,
    pub z: Option<Tensor<T>>,
    pub delta_bias: Option<Tensor<T>>,
    pub h0: Option<Tensor<T>>,
    pub softplus: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub d_skip: bool,
    pub z: bool,
    pub delta_bias: bool,
    pub h0: bool,
    pub softplus: bool,
}

pub const ALL: Opts = Opts {
    d_skip: true,
    z: true,
    delta_bias: true,
    h0: true,
    softplus: true,
};

impl<T: ssm::Float> Case<T> {
    pub fn random(
        seed: u64,
        (b, l, d, n, g): (usize, usize, usize, usize, usize),
        o: Opts,
    ) -> Self {
        let mut r = rng(seed);
        // delta around the values Mamba sees: softplus(delta + bias) in roughly [1e-3, 0.5].
        // Without softplus dt = delta + bias must stay positive or the recurrence grows.
        let ((dlo, dhi), (blo, bhi)) = if o.softplus {
            ((-4.0, 0.0), (-1.0, 0.5))
        } else {
            ((0.001, 0.3), (0.0, 0.2))
        };
        Case {
            u: uniform(&mut r, &[b, l, d], -1.0, 1.0),
            delta: uniform(&mut r, &[b, l, d], dlo, dhi),
            a: uniform(&mut r, &[d, n], -2.0, -0.1),
            b: uniform(&mut r, &[b, l, g, n], -1.0, 1.0),
            c: uniform(&mut r, &[b, l, g, n], -1.0, 1.0),
            d_skip: o.d_skip.then(|| uniform(&mut r, &[d], 0.5, 1.5)),
            z: o.z.then(|| uniform(&mut r, &[b, l, d], -2.0, 2.0)),
            delta_bias: o.delta_bias.then(|| uniform(&mut r, &[d], blo, bhi)),
            h0: o.h0.then(|| uniform(&mut r, &[b, d, n], -1.0, 1.0)),
            softplus: o.softplus,
        }
    }

    pub fn inputs(&self) -> ScanInputs<'_, T> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d_skip: self.d_skip.as_ref(),
            z: self.z.as_ref(),
            delta_bias: self.delta_bias.as_ref(),
            delta_softplus: self.softplus,
            h0: self.h0.as_ref(),
        }
    }
}

fn grad_pairs<T: ssm::Float>(g: &ScanGrads<T>) -> Vec<(&'static str, Option<&Tensor<T>>)> {
    vec![
        ("du", Some(&g.du)),
        ("ddelta", Some(&g.ddelta)),
        ("dA", Some(&g.da)),
        ("dB", Some(&g.db)),
        ("dC", Some(&g.dc)),
        ("dD", g.dd_skip.as_ref()),
        ("dz", g.dz.as_ref()),
        ("ddelta_bias", g.ddelta_bias.as_ref()),
        ("dh0", g.dh0.as_ref()),
    ]
}

/// Fast vs reference in f32: outputs, last state and every gradient.
fn check_fast_vs_ref(seed: u64, dims: (usize, usize, usize, usize, usize), o: Opts) {
    let case = Case::<f32>::random(seed, dims, o);
    let inp = case.inputs();
    let (y_ref, last_ref) = selective_scan_ref(&inp).unwrap();
    let mut out = ScanOutput::default();
    selective_scan_fwd(&inp, &mut out, true).unwrap();
    println!("case {dims:?} {o:?}");
    assert_close("y", &out.y, &y_ref, 2e-5);
    assert_close("last state", &out.last_state, &last_ref, 2e-5);

    let mut r = rng(seed + 1);
    let dy = uniform::<f32>(&mut r, out.y.dims(), -1.0, 1.0);
    let dlast = uniform::<f32>(&mut r, out.last_state.dims(), -1.0, 1.0);
    let want = selective_scan_ref_bwd(&inp, &dy, Some(&dlast)).unwrap();
    let mut got = ScanGrads::zeros_like(&inp).unwrap();
    selective_scan_bwd(&inp, &out, &dy, Some(&dlast), &mut got).unwrap();
    for ((name, g), (_, w)) in grad_pairs(&got).into_iter().zip(grad_pairs(&want)) {
        match (g, w) {
            (Some(g), Some(w)) => {
                // Gradients summed over many steps (dA, dD, ...) grow with l: compare relatively.
                let scale = w.to_vec().iter().map(|v| v.abs()).fold(1.0f32, f32::max) as f64;
                assert_close(name, g, w, 5e-5 * scale);
            }
            (None, None) => {}
            _ => panic!("{name}: present in one gradient set only"),
        }
    }
}

#[test]
fn fast_scan_matches_reference_across_lengths_and_groups() {
    let none = Opts {
        d_skip: false,
        z: false,
        delta_bias: false,
        h0: false,
        softplus: false,
    };
    // Lengths: 1, odd, one step either side of the chunk size (64), several chunks, 1000+.
    for (i, l) in [1usize, 7, 63, 64, 65, 129, 1031].into_iter().enumerate() {
        for g in [1, 2] {
            check_fast_vs_ref(10 + i as u64, (2, l, 70, 5, g), ALL);
        }
    }
    // Each option alone and none at all, with channel counts that leave a partial tile.
    let singles = [
        none,
        Opts {
            d_skip: true,
            ..none
        },
        Opts { z: true, ..none },
        Opts {
            delta_bias: true,
            ..none
        },
        Opts { h0: true, ..none },
        Opts {
            softplus: true,
            ..none
        },
    ];
    for (i, o) in singles.into_iter().enumerate() {
        check_fast_vs_ref(40 + i as u64, (3, 130, 37, 4, 1), o);
        check_fast_vs_ref(50 + i as u64, (1, 200, 6, 16, 2), o);
    }
}

/// Both the reference and the fast backward against central differences in f64.
#[test]
fn scan_gradients_match_finite_differences() {
    for (seed, dims) in [(1u64, (2, 5, 4, 3, 2)), (2, (1, 70, 3, 2, 1))] {
        let mut case = Case::<f64>::random(seed, dims, ALL);
        let mut r = rng(seed + 100);
        let (y, last) = selective_scan_ref(&case.inputs()).unwrap();
        let wy = uniform::<f64>(&mut r, y.dims(), -1.0, 1.0);
        let wl = uniform::<f64>(&mut r, last.dims(), -1.0, 1.0);
        let loss = |c: &Case<f64>| {
            let (y, last) = selective_scan_ref(&c.inputs()).unwrap();
            dot(&y, &wy) + dot(&last, &wl)
        };
        let reference = selective_scan_ref_bwd(&case.inputs(), &wy, Some(&wl)).unwrap();
        let mut out = ScanOutput::default();
        selective_scan_fwd(&case.inputs(), &mut out, true).unwrap();
        let mut fast = ScanGrads::zeros_like(&case.inputs()).unwrap();
        selective_scan_bwd(&case.inputs(), &out, &wy, Some(&wl), &mut fast).unwrap();

        macro_rules! fd {
            ($field:ident, $name:literal, $grad:expr, $fast:expr) => {{
                let mut t = case.$field.clone();
                let num = numeric_grad(&mut t, 1e-4, |t| {
                    let saved = std::mem::replace(&mut case.$field, t.clone());
                    let v = loss(&case);
                    case.$field = saved;
                    v
                });
                assert_grad(concat!("ref ", $name), $grad, &num, 1e-6);
                assert_grad(concat!("fast ", $name), $fast, &num, 1e-6);
            }};
        }
        fd!(u, "du", &reference.du, &fast.du);
        fd!(delta, "ddelta", &reference.ddelta, &fast.ddelta);
        fd!(a, "dA", &reference.da, &fast.da);
        fd!(b, "dB", &reference.db, &fast.db);
        fd!(c, "dC", &reference.dc, &fast.dc);
        macro_rules! fd_opt {
            ($field:ident, $name:literal, $grad:ident) => {{
                let mut t = case.$field.clone().unwrap();
                let num = numeric_grad(&mut t, 1e-4, |t| {
                    let saved = case.$field.replace(t.clone());
                    let v = loss(&case);
                    case.$field = saved;
                    v
                });
                assert_grad(
                    concat!("ref ", $name),
                    reference.$grad.as_ref().unwrap(),
                    &num,
                    1e-6,
                );
                assert_grad(
                    concat!("fast ", $name),
                    fast.$grad.as_ref().unwrap(),
                    &num,
                    1e-6,
                );
            }};
        }
        fd_opt!(d_skip, "dD", dd_skip);
        fd_opt!(z, "dz", dz);
        fd_opt!(delta_bias, "ddelta_bias", ddelta_bias);
        fd_opt!(h0, "dh0", dh0);
    }
}

/// A backward needs the chunk states of a forward that saved them: after a forward without
/// them (an evaluation between training steps, say) the states left from an earlier forward of
/// the same sizes would give wrong gradients, and the backward refuses them instead.
#[test]
fn backward_refuses_states_a_forward_did_not_save() {
    let case = Case::<f32>::random(5, (1, 9, 4, 3, 1), ALL);
    let inp = case.inputs();
    let mut out = ScanOutput::default();
    selective_scan_fwd(&inp, &mut out, true).unwrap();
    selective_scan_fwd(&inp, &mut out, false).unwrap();
    let dy = Tensor::<f32>::zeros(out.y.dims(), ssm::Device::Cpu).unwrap();
    let mut grads = ScanGrads::zeros_like(&inp).unwrap();
    let e = selective_scan_bwd(&inp, &out, &dy, None, &mut grads).unwrap_err();
    assert!(
        e.to_string().contains("saved chunk states (None layout)"),
        "{e}"
    );
    selective_scan_fwd(&inp, &mut out, true).unwrap();
    selective_scan_bwd(&inp, &out, &dy, None, &mut grads).unwrap();
}
