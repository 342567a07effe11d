//! The SSD scan of Mamba-2: the chunked CPU form against the sequential reference (lengths 1, 7,
//! chunk - 1, chunk, chunk + 1 and over 1000, groups 1 and > 1, every option on and off, dt
//! limits, initial state), both backwards against central differences in f64, and the refusals.

use ssm::Tensor;
use ssm::ops::ssd::{
    NO_DT_LIMIT, SsdGrads, SsdInputs, SsdOutput, ssd_bwd, ssd_fwd, ssd_ref, ssd_ref_bwd,
};

use crate::common::{assert_grad, dot, max_abs_diff, numeric_grad, rng, uniform};

#[derive(Clone, Copy, Debug)]
struct Opts {
    d_skip: bool,
    dt_bias: bool,
    softplus: bool,
    limit: Option<[f64; 2]>,
    h0: bool,
    dlast: bool,
}

const ALL: Opts = Opts {
    d_skip: true,
    dt_bias: true,
    softplus: true,
    limit: Some([0.05, 0.6]),
    h0: true,
    dlast: true,
};

const NONE: Opts = Opts {
    d_skip: false,
    dt_bias: false,
    softplus: false,
    limit: None,
    h0: false,
    dlast: false,
};

/// (b, l, h, p, g, n)
type Dims = (usize, usize, usize, usize, usize, usize);

struct Case<T: ssm::Float> {
    x: Tensor<T>,
    dt: Tensor<T>,
    a: Tensor<T>,
    b: Tensor<T>,
    c: Tensor<T>,
    d_skip: Option<Tensor<T>>,
    dt_bias: Option<Tensor<T>>,
    h0: Option<Tensor<T>>,
    softplus: bool,
    limit: [f64; 2],
}

impl<T: ssm::Float> Case<T> {
    /// Random inputs in the ranges of a trained Mamba-2 layer. Without softplus, dt is drawn
    /// positive (it is Δ itself); raw values whose Δ would land within 0.02 of a limit are moved
    /// away from it, so that finite differences never straddle the clamp's kink.
    fn random(seed: u64, (b, l, h, p, g, n): Dims, o: Opts) -> Self {
        let mut r = rng(seed);
        let (lo, hi) = if o.softplus { (-4.0, 1.0) } else { (0.01, 0.7) };
        let dt_bias = o.dt_bias.then(|| uniform::<f64>(&mut r, &[h], -0.5, 0.5));
        let mut dt = uniform::<f64>(&mut r, &[b, l, h], lo, hi);
        let limit = o.limit.unwrap_or(NO_DT_LIMIT);
        let bias = dt_bias.as_ref().map(|t| t.to_vec());
        for (i, v) in dt.host_mut().unwrap().iter_mut().enumerate() {
            let raw = *v + bias.as_ref().map_or(0.0, |bb| bb[i % h]);
            let delta = if o.softplus { raw.exp().ln_1p() } else { raw };
            if limit.iter().any(|&edge| (delta - edge).abs() < 0.02) {
                *v += 0.1;
            }
        }
        Case {
            x: uniform(&mut r, &[b, l, h, p], -1.0, 1.0),
            dt: dt.cast(),
            a: uniform(&mut r, &[h], -2.0, -0.1),
            b: uniform(&mut r, &[b, l, g, n], -1.0, 1.0),
            c: uniform(&mut r, &[b, l, g, n], -1.0, 1.0),
            d_skip: o.d_skip.then(|| uniform(&mut r, &[h], -1.0, 1.0)),
            dt_bias: dt_bias.map(|t| t.cast()),
            h0: o.h0.then(|| uniform(&mut r, &[b, h, p, n], -1.0, 1.0)),
            softplus: o.softplus,
            limit,
        }
    }

    fn inputs(&self) -> SsdInputs<'_, T> {
        SsdInputs {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d_skip: self.d_skip.as_ref(),
            dt_bias: self.dt_bias.as_ref(),
            dt_softplus: self.softplus,
            dt_limit: self.limit,
            h0: self.h0.as_ref(),
        }
    }
}

fn grad_pairs<T: ssm::Float>(g: &SsdGrads<T>) -> Vec<(&'static str, Option<&Tensor<T>>)> {
    vec![
        ("dx", Some(&g.dx)),
        ("ddt", Some(&g.ddt)),
        ("dA", Some(&g.da)),
        ("dB", Some(&g.db)),
        ("dC", Some(&g.dc)),
        ("dD", g.dd_skip.as_ref()),
        ("ddt_bias", g.ddt_bias.as_ref()),
        ("dh0", g.dh0.as_ref()),
    ]
}

/// max |a - b| / max(1, max |b|): a tolerance relative to the tensor's scale.
fn scaled_diff<T: ssm::Float>(a: &Tensor<T>, b: &Tensor<f64>) -> f64 {
    let scale = b.to_vec().iter().fold(1.0f64, |m, v| m.max(v.abs()));
    max_abs_diff(&a.cast::<f64>(), b) / scale
}

/// The chunked f32 forward and backward against the f64 reference, on one case.
fn check_chunked_vs_ref(seed: u64, dims: Dims, chunk: usize, o: Opts) {
    let case = Case::<f64>::random(seed, dims, o);
    let c32 = Case::<f32> {
        x: case.x.cast(),
        dt: case.dt.cast(),
        a: case.a.cast(),
        b: case.b.cast(),
        c: case.c.cast(),
        d_skip: case.d_skip.as_ref().map(Tensor::cast),
        dt_bias: case.dt_bias.as_ref().map(Tensor::cast),
        h0: case.h0.as_ref().map(Tensor::cast),
        softplus: case.softplus,
        limit: case.limit,
    };
    let (y_ref, last_ref) = ssd_ref(&case.inputs()).unwrap();
    let mut r = rng(seed + 1000);
    let dy = uniform::<f64>(&mut r, y_ref.dims(), -1.0, 1.0);
    let dlast = o
        .dlast
        .then(|| uniform::<f64>(&mut r, last_ref.dims(), -1.0, 1.0));
    let g_ref = ssd_ref_bwd(&case.inputs(), &dy, dlast.as_ref()).unwrap();

    let mut out = SsdOutput::default();
    ssd_fwd(&c32.inputs(), chunk, &mut out, true).unwrap();
    let mut g = SsdGrads::zeros_like(&c32.inputs()).unwrap();
    let dlast32 = dlast.as_ref().map(Tensor::cast::<f32>);
    ssd_bwd(&c32.inputs(), &out, &dy.cast(), dlast32.as_ref(), &mut g).unwrap();

    let what = format!("{dims:?} chunk {chunk} {o:?}");
    let mut checks = vec![("y", scaled_diff(&out.y, &y_ref))];
    checks.push(("last state", scaled_diff(&out.last_state, &last_ref)));
    for ((name, got), (_, want)) in grad_pairs(&g).into_iter().zip(grad_pairs(&g_ref)) {
        match (got, want) {
            (Some(got), Some(want)) => checks.push((name, scaled_diff(got, want))),
            (None, None) => {}
            _ => panic!("{what}: {name} present on one side only"),
        }
    }
    for (name, d) in checks {
        // f32 sums of up to a few thousand terms of size ~1 against f64.
        assert!(d < 2e-4, "{what}: {name} differs by {d:e} (scaled)");
    }
}

#[test]
fn chunked_matches_reference_at_chunk_edges_groups_and_options() {
    let chunk = 16;
    let lengths = [1, 7, chunk - 1, chunk, chunk + 1, 3 * chunk + 5];
    for (i, &l) in lengths.iter().enumerate() {
        let seed = i as u64;
        check_chunked_vs_ref(seed, (2, l, 4, 3, 1, 5), chunk, ALL);
        check_chunked_vs_ref(seed + 10, (1, l, 6, 4, 3, 2), chunk, NONE);
        check_chunked_vs_ref(seed + 20, (2, l, 4, 2, 2, 3), chunk, ALL);
    }
    // each option alone
    let singles = [
        Opts {
            d_skip: true,
            ..NONE
        },
        Opts {
            dt_bias: true,
            ..NONE
        },
        Opts {
            softplus: true,
            ..NONE
        },
        Opts {
            limit: Some([0.05, 0.3]),
            ..NONE
        },
        Opts { h0: true, ..NONE },
        Opts {
            dlast: true,
            ..NONE
        },
    ];
    for (i, o) in singles.into_iter().enumerate() {
        check_chunked_vs_ref(40 + i as u64, (1, 2 * chunk + 3, 2, 3, 1, 4), chunk, o);
    }
}

#[test]
fn chunked_matches_reference_over_a_thousand_steps() {
    check_chunked_vs_ref(60, (1, 1100, 2, 4, 1, 8), 64, ALL);
    check_chunked_vs_ref(61, (1, 1030, 4, 2, 2, 4), 256, ALL);
}

/// Both backwards against central differences in f64, every input, the initial state included.
#[test]
fn ssd_gradients_match_finite_differences() {
    for (seed, dims, chunk, o) in [
        (1u64, (2, 9, 4, 2, 2, 3), 4, ALL),
        (2, (1, 13, 2, 3, 1, 2), 5, Opts { limit: None, ..ALL }),
        (
            3,
            (1, 6, 2, 2, 1, 2),
            6,
            Opts {
                softplus: false,
                ..ALL
            },
        ),
    ] {
        let mut case = Case::<f64>::random(seed, dims, o);
        let mut r = rng(seed + 100);
        let (y, last) = ssd_ref(&case.inputs()).unwrap();
        let wy = uniform::<f64>(&mut r, y.dims(), -1.0, 1.0);
        let wl = uniform::<f64>(&mut r, last.dims(), -1.0, 1.0);
        let loss = |c: &Case<f64>| {
            let (y, last) = ssd_ref(&c.inputs()).unwrap();
            dot(&y, &wy) + dot(&last, &wl)
        };
        let reference = ssd_ref_bwd(&case.inputs(), &wy, Some(&wl)).unwrap();
        let mut out = SsdOutput::default();
        ssd_fwd(&case.inputs(), chunk, &mut out, true).unwrap();
        let mut fast = SsdGrads::zeros_like(&case.inputs()).unwrap();
        ssd_bwd(&case.inputs(), &out, &wy, Some(&wl), &mut fast).unwrap();
        assert!(max_abs_diff(&out.y, &y) < 1e-12, "chunked y");

        macro_rules! fd {
            ($field:ident, $name:literal, $grad:ident) => {{
                let mut t = case.$field.clone();
                let num = numeric_grad(&mut t, 1e-4, |t| {
                    let saved = std::mem::replace(&mut case.$field, t.clone());
                    let v = loss(&case);
                    case.$field = saved;
                    v
                });
                assert_grad(concat!("ref ", $name), &reference.$grad, &num, 1e-6);
                assert_grad(concat!("chunked ", $name), &fast.$grad, &num, 1e-6);
            }};
        }
        fd!(x, "dx", dx);
        fd!(dt, "ddt", ddt);
        fd!(a, "dA", da);
        fd!(b, "dB", db);
        fd!(c, "dC", dc);
        macro_rules! fd_opt {
            ($field:ident, $name:literal, $grad:ident) => {{
                let mut t = case.$field.clone().unwrap();
                let num = numeric_grad(&mut t, 1e-4, |t| {
                    let saved = case.$field.replace(t.clone());
                    let v = loss(&case);
                    case.$field = saved;
                    v
                });
                let (r, f) = (reference.$grad.as_ref(), fast.$grad.as_ref());
                assert_grad(concat!("ref ", $name), r.unwrap(), &num, 1e-6);
                assert_grad(concat!("chunked ", $name), f.unwrap(), &num, 1e-6);
            }};
        }
        fd_opt!(d_skip, "dD", dd_skip);
        fd_opt!(dt_bias, "ddt_bias", ddt_bias);
        fd_opt!(h0, "dh0", dh0);
    }
}

/// Where the limits bind, Δ is constant and its raw dt gets no gradient (torch's `clamp`).
#[test]
fn dt_limits_clamp_and_stop_the_gradient() {
    let o = Opts {
        limit: Some([0.2, 0.4]),
        ..ALL
    };
    let case = Case::<f64>::random(7, (1, 20, 2, 2, 1, 2), o);
    let wy = uniform::<f64>(&mut rng(8), &[1, 20, 2, 2], -1.0, 1.0);
    let g = ssd_ref_bwd(&case.inputs(), &wy, None).unwrap();
    let (dt, bias) = (case.dt.to_vec(), case.dt_bias.as_ref().unwrap().to_vec());
    let mut bound = 0;
    for (i, (&raw, &gv)) in dt.iter().zip(&g.ddt.to_vec()).enumerate() {
        let delta = (raw + bias[i % 2]).exp().ln_1p();
        if !(0.2..=0.4).contains(&delta) {
            bound += 1;
            assert_eq!(gv, 0.0, "position {i}: Δ {delta} is clamped");
        } else {
            assert_ne!(gv, 0.0, "position {i}: Δ {delta} is free");
        }
    }
    assert!(
        bound > 5 && bound < 35,
        "{bound} of 40 bind: the case tests both sides"
    );
}

#[test]
fn refuses_bad_shapes_chunks_limits_and_unsaved_states() {
    let case = Case::<f32>::random(9, (1, 5, 4, 2, 2, 3), ALL);
    let mut out = SsdOutput::default();
    let err = |inp: SsdInputs<f32>, chunk: usize| {
        ssd_fwd(&inp, chunk, &mut SsdOutput::default(), false)
            .unwrap_err()
            .to_string()
    };
    let b3 = Tensor::<f32>::zeros_cpu([1, 5, 3, 3]);
    assert!(
        err(
            SsdInputs {
                b: &b3,
                ..case.inputs()
            },
            4
        )
        .contains("g dividing 4")
    );
    let a5 = Tensor::<f32>::zeros_cpu([5]);
    assert!(
        err(
            SsdInputs {
                a: &a5,
                ..case.inputs()
            },
            4
        )
        .contains("A")
    );
    assert!(err(case.inputs(), 0).contains("chunk_size"));
    let bad = SsdInputs {
        dt_limit: [1.0, 0.5],
        ..case.inputs()
    };
    assert!(err(bad, 4).contains("time_step_limit"));
    ssd_fwd(&case.inputs(), 4, &mut out, false).unwrap();
    let dy = Tensor::<f32>::zeros_cpu(out.y.dims());
    let mut g = SsdGrads::zeros_like(&case.inputs()).unwrap();
    let e = ssd_bwd(&case.inputs(), &out, &dy, None, &mut g).unwrap_err();
    assert!(e.to_string().contains("save_for_backward"), "{e}");
}
