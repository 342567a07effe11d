//! cu/ssd.cu through the emulation against ssm's f64 reference (`ssd_ref`, `ssd_ref_bwd`):
//! lengths 1, 7, chunk - 1, chunk, chunk + 1 and over 1000, chunks of one row tile and of several
//! (the last one partial), head dims and state sizes over several tiles, g = 1 and g > 1, every
//! option (D, dt_bias, softplus, dt limits, initial state, a gradient of the last state) on and
//! off, three schedules; y, the last state, every chunk-start state and every gradient, added
//! into non-zero buffers. Also bit-identical results under different schedules, the forward that
//! keeps no states, the refusals, and the shared-memory bank conflicts.

use ssm::Tensor;
use ssm::ops::ssd::{NO_DT_LIMIT, SsdInputs as RefInputs, ssd_ref, ssd_ref_bwd};
use ssm_kernels::emu::Schedule;
use ssm_kernels::ssd::{self as k, SsdDims, SsdGradsOf, SsdInputsOf, SsdOutputs};
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{SEEDS, assert_close_rel, counting_banks, rng, run, schedules, uniform};

/// Tolerance relative to each tensor's largest entry: f32 kernels against the f64 reference land
/// within 4e-6 of it on these shapes.
const REL: f32 = 1e-5;

#[derive(Clone, Copy, Debug)]
struct Opts {
    d_skip: bool,
    dt_bias: bool,
    softplus: bool,
    limit: bool,
    h0: bool,
    dlast: bool,
}

/// Every option off, every option on, and two halves, so that each is on and off for each shape.
const OPTION_SETS: [Opts; 4] = [
    Opts {
        d_skip: false,
        dt_bias: false,
        softplus: false,
        limit: false,
        h0: false,
        dlast: false,
    },
    Opts {
        d_skip: true,
        dt_bias: true,
        softplus: true,
        limit: true,
        h0: true,
        dlast: true,
    },
    Opts {
        d_skip: true,
        dt_bias: false,
        softplus: true,
        limit: false,
        h0: true,
        dlast: false,
    },
    Opts {
        d_skip: false,
        dt_bias: true,
        softplus: false,
        limit: true,
        h0: false,
        dlast: true,
    },
];

/// Δ stays in [0.05, 0.6] when the limits are on.
const LIMIT: [f64; 2] = [0.05, 0.6];

fn dims((b, l, h, p, g, n, chunk): (usize, usize, usize, usize, usize, usize, usize)) -> SsdDims {
    SsdDims {
        b,
        l,
        h,
        p,
        g,
        n,
        chunk,
    }
}

/// Inputs and upstream gradients of one case, f32, in the ssm layouts.
struct Data {
    dims: SsdDims,
    opts: Opts,
    x: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d_skip: Option<Vec<f32>>,
    dt_bias: Option<Vec<f32>>,
    h0: Option<Vec<f32>>,
    dy: Vec<f32>,
    dlast: Option<Vec<f32>>,
}

impl Data {
    fn limit(&self) -> [f64; 2] {
        if self.opts.limit { LIMIT } else { NO_DT_LIMIT }
    }
}

/// Random inputs. Without softplus dt is Δ itself and drawn positive. A is small enough that a
/// state survives a chunk of 256 (e^S ~ e^-5), so that what passes between chunks shows in y.
/// Raw dt whose Δ lands within 0.02 of a limit is moved away from it: f32 and f64 must agree on
/// which side of the clamp it falls.
fn make(dims: SsdDims, opts: Opts, seed: u64) -> Data {
    let SsdDims {
        b, l, h, p, g, n, ..
    } = dims;
    let mut r = rng(seed);
    let (lo, hi) = if opts.softplus {
        (-4.0, 1.0)
    } else {
        (0.01, 0.7)
    };
    let dt_bias = opts.dt_bias.then(|| uniform(&mut r, h, -0.5, 0.5));
    let mut dt = uniform(&mut r, b * l * h, lo, hi);
    if opts.limit {
        for (i, v) in dt.iter_mut().enumerate() {
            let raw = (*v + dt_bias.as_ref().map_or(0.0, |bb| bb[i % h])) as f64;
            let delta = if opts.softplus {
                raw.exp().ln_1p()
            } else {
                raw
            };
            if LIMIT.iter().any(|&edge| (delta - edge).abs() < 0.02) {
                *v += 0.1;
            }
        }
    }
    let mut on = |yes: bool, len: usize| yes.then(|| uniform(&mut r, len, -1.0, 1.0));
    Data {
        dims,
        opts,
        d_skip: on(opts.d_skip, h),
        h0: on(opts.h0, b * h * p * n),
        dlast: on(opts.dlast, b * h * p * n),
        x: uniform(&mut r, b * l * h * p, -1.0, 1.0),
        dt,
        dt_bias,
        a: uniform(&mut r, h, -0.2, -0.02),
        b: uniform(&mut r, b * l * g * n, -1.0, 1.0),
        c: uniform(&mut r, b * l * g * n, -1.0, 1.0),
        dy: uniform(&mut r, b * l * h * p, -1.0, 1.0),
    }
}

fn f64_tensor(dims: &[usize], v: &[f32]) -> Tensor<f64> {
    Tensor::from_vec(dims.to_vec(), v.iter().map(|&x| x as f64).collect()).unwrap()
}

fn f32s(t: &Tensor<f64>) -> Vec<f32> {
    t.to_vec().iter().map(|&x| x as f32).collect()
}

/// What the kernels produce, or the reference says they should.
#[derive(Debug)]
struct Results {
    y: Vec<f32>,
    last: Vec<f32>,
    /// The state at the start of every chunk but the first, (b, chunks - 1, h, p, n).
    states: Vec<f32>,
    grads: Vec<(&'static str, Vec<f32>)>,
}

/// Initial contents of the gradient buffers: the kernels add into them.
fn grad_init(data: &Data) -> Vec<(&'static str, Vec<f32>)> {
    let SsdDims {
        b, l, h, p, g, n, ..
    } = data.dims;
    let o = data.opts;
    let mut r = rng(99);
    let sizes = [
        ("dx", true, b * l * h * p),
        ("ddt", true, b * l * h),
        ("dA", true, h),
        ("dB", true, b * l * g * n),
        ("dC", true, b * l * g * n),
        ("dD", o.d_skip, h),
        ("ddt_bias", o.dt_bias, h),
        ("dh0", o.h0, b * h * p * n),
    ];
    sizes
        .into_iter()
        .filter(|s| s.1)
        .map(|(name, _, len)| (name, uniform(&mut r, len, -0.5, 0.5)))
        .collect()
}

/// The reference's y and last state of `data` on its first `l` positions, and on all of them its
/// gradients added to `grad_init`; no chunk states.
fn reference_on(data: &Data, l: usize) -> Results {
    let SsdDims { b, h, p, g, n, .. } = data.dims;
    let full = data.dims.l;
    let cut = |v: &[f32], row: usize| -> Vec<f32> {
        (0..b)
            .flat_map(|bi| v[bi * full * row..(bi * full + l) * row].to_vec())
            .collect()
    };
    let t = |dims: &[usize], v: &Option<Vec<f32>>| v.as_ref().map(|v| f64_tensor(dims, v));
    let (x, dt, a) = (
        f64_tensor(&[b, l, h, p], &cut(&data.x, h * p)),
        f64_tensor(&[b, l, h], &cut(&data.dt, h)),
        f64_tensor(&[h], &data.a),
    );
    let (bm, cm) = (
        f64_tensor(&[b, l, g, n], &cut(&data.b, g * n)),
        f64_tensor(&[b, l, g, n], &cut(&data.c, g * n)),
    );
    let (d_skip, dt_bias, h0) = (
        t(&[h], &data.d_skip),
        t(&[h], &data.dt_bias),
        t(&[b, h, p, n], &data.h0),
    );
    let inp = RefInputs {
        x: &x,
        dt: &dt,
        a: &a,
        b: &bm,
        c: &cm,
        d_skip: d_skip.as_ref(),
        dt_bias: dt_bias.as_ref(),
        dt_softplus: data.opts.softplus,
        dt_limit: data.limit(),
        h0: h0.as_ref(),
    };
    let (y, last) = ssd_ref(&inp).unwrap();
    let mut res = Results {
        y: f32s(&y),
        last: f32s(&last),
        states: Vec::new(),
        grads: Vec::new(),
    };
    if l < full {
        return res;
    }
    let dlast = t(&[b, h, p, n], &data.dlast);
    let gr = ssd_ref_bwd(&inp, &f64_tensor(&[b, l, h, p], &data.dy), dlast.as_ref()).unwrap();
    let refs: [(&str, Option<&Tensor<f64>>); 8] = [
        ("dx", Some(&gr.dx)),
        ("ddt", Some(&gr.ddt)),
        ("dA", Some(&gr.da)),
        ("dB", Some(&gr.db)),
        ("dC", Some(&gr.dc)),
        ("dD", gr.dd_skip.as_ref()),
        ("ddt_bias", gr.ddt_bias.as_ref()),
        ("dh0", gr.dh0.as_ref()),
    ];
    res.grads = grad_init(data)
        .into_iter()
        .map(|(name, init)| {
            let (_, r) = refs.iter().find(|(n2, _)| *n2 == name).unwrap();
            let r = f32s(r.expect("a reference gradient for every buffer"));
            (name, init.iter().zip(r).map(|(i, g)| i + g).collect())
        })
        .collect();
    res
}

/// The reference results of `data`; the chunk-start states are the reference's last states on
/// the positions before each chunk.
fn reference(data: &Data) -> Results {
    let SsdDims {
        b, h, p, n, chunk, ..
    } = data.dims;
    let per_chunk: Vec<Vec<f32>> = (1..data.dims.chunks())
        .map(|c| reference_on(data, c * chunk).last)
        .collect();
    let hpn = h * p * n;
    let states = (0..b)
        .flat_map(|bi| {
            per_chunk
                .iter()
                .flat_map(move |s| s[bi * hpn..][..hpn].to_vec())
        })
        .collect();
    Results {
        states,
        ..reference_on(data, data.dims.l)
    }
}

fn inputs(data: &Data) -> k::SsdInputs {
    SsdInputsOf {
        x: p(&data.x),
        dt: p(&data.dt),
        a: p(&data.a),
        b: p(&data.b),
        c: p(&data.c),
        d_skip: data.d_skip.as_deref().map(p),
        dt_bias: data.dt_bias.as_deref().map(p),
        dt_softplus: data.opts.softplus,
        dt_limit: data.limit(),
        h0: data.h0.as_deref().map(p),
    }
}

/// y, the last state and the chunk-start states (b, chunks, h, p, n) of the forward; with
/// `keep_states` false the states stay in the workspace and come back empty.
fn forward(data: &Data, schedule: Schedule, keep_states: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dims = data.dims;
    let mut y = vec![f32::NAN; dims.b * dims.l * dims.h * dims.p];
    let mut last = vec![f32::NAN; dims.b * dims.h * dims.p * dims.n];
    let states_len = if keep_states {
        dims.chunk_states_len()
    } else {
        0
    };
    let mut states = vec![f32::NAN; states_len];
    let mut ws = vec![f32::NAN; dims.fwd_workspace_len(keep_states)];
    let out = SsdOutputs {
        y: pm(&mut y),
        last_state: pm(&mut last),
        chunk_states: keep_states.then(|| pm(&mut states)),
    };
    let launches = k::ssd_fwd(&inputs(data), &out, dims, pm(&mut ws)).unwrap();
    // SAFETY: every buffer has the length of its layout for `dims`, the workspace that of
    // fwd_workspace_len.
    unsafe { run(&launches, schedule) };
    (y, last, states)
}

/// Forward and backward; the states are those of every chunk but the first.
fn kernels(data: &Data, schedule: Schedule) -> Results {
    let dims = data.dims;
    let (y, last, states) = forward(data, schedule, true);
    let mut grads = grad_init(data);
    let mut ws = vec![f32::NAN; dims.bwd_workspace_len()];
    let mut ptr = |name: &str| {
        grads
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| pm(v))
    };
    let g = SsdGradsOf {
        dx: ptr("dx").unwrap(),
        ddt: ptr("ddt").unwrap(),
        da: ptr("dA").unwrap(),
        db: ptr("dB").unwrap(),
        dc: ptr("dC").unwrap(),
        dd_skip: ptr("dD"),
        ddt_bias: ptr("ddt_bias"),
        dh0: ptr("dh0"),
    };
    let dlast = data.dlast.as_deref().map(p);
    let launches = k::ssd_bwd(
        &inputs(data),
        p(&states),
        p(&data.dy),
        dlast,
        &g,
        dims,
        pm(&mut ws),
    )
    .unwrap();
    // SAFETY: as in `forward`; the workspace has bwd_workspace_len() floats.
    unsafe { run(&launches, schedule) };
    let hpn = dims.h * dims.p * dims.n;
    let later = (0..dims.b)
        .flat_map(|bi| {
            states[(bi * dims.chunks() + 1) * hpn..(bi + 1) * dims.chunks() * hpn].to_vec()
        })
        .collect();
    Results {
        y,
        last,
        states: later,
        grads,
    }
}

/// max |got - want| / max |want|, the measure that REL bounds.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |a, w| a.max(w.abs())).max(1e-6);
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    diff / scale
}

/// Asserts every tensor of `got` against `want` and returns (name, relative difference) of each.
fn assert_results(ctx: &str, got: &Results, want: &Results) -> Vec<(&'static str, f32)> {
    let mut pairs = vec![
        ("y", &got.y, &want.y),
        ("last state", &got.last, &want.last),
        ("chunk states", &got.states, &want.states),
    ];
    pairs.extend(
        got.grads
            .iter()
            .zip(&want.grads)
            .map(|((n, g), (_, w))| (*n, g, w)),
    );
    pairs
        .into_iter()
        .filter(|(_, _, w)| !w.is_empty())
        .map(|(name, g, w)| {
            assert_close_rel(&format!("{name}, {ctx}"), g, w, REL);
            (name, rel_diff(g, w))
        })
        .collect()
}

/// Prints the largest relative difference of each tensor over `diffs`.
fn report(what: &str, diffs: &[(&'static str, f32)]) {
    let mut worst: Vec<(&str, f32)> = Vec::new();
    for &(name, d) in diffs {
        match worst.iter_mut().find(|(n, _)| *n == name) {
            Some(w) => w.1 = w.1.max(d),
            None => worst.push((name, d)),
        }
    }
    let line: Vec<String> = worst.iter().map(|(n, d)| format!("{n} {d:.1e}")).collect();
    println!("ssd {what}: max |diff| / max |want|: {}", line.join(", "));
}

/// Runs every option set on `shape` under every schedule (or the first only).
fn check_shape(
    shape: (usize, usize, usize, usize, usize, usize, usize),
    seed: u64,
    all_schedules: bool,
) {
    let dims = dims(shape);
    let mut diffs = Vec::new();
    for (oi, &opts) in OPTION_SETS.iter().enumerate() {
        let data = make(dims, opts, seed * 10 + oi as u64);
        let want = reference(&data);
        let mut scheds = schedules();
        if !all_schedules {
            scheds.truncate(1);
        }
        for schedule in scheds {
            let got = kernels(&data, schedule);
            diffs.extend(assert_results(
                &format!("{dims:?} {opts:?} {schedule:?}"),
                &got,
                &want,
            ));
        }
    }
    report(&format!("{shape:?}"), &diffs);
}

/// Chunk 64 (one row tile): lengths 1, 7, chunk - 1, chunk, chunk + 1; g = 2 of h = 4.
#[test]
fn lengths_around_one_chunk_match_the_reference() {
    for (i, l) in [1, 7, 63, 64, 65].into_iter().enumerate() {
        check_shape((2, l, 4, 16, 2, 8, 64), i as u64, true);
    }
}

/// Chunks of 100 positions (two row tiles, the second partial), a partial last chunk, g = h;
/// head dim 72 and state size 80 over two tiles each, g = 1; head dim 128 and state size 256
/// (two and four tiles), one schedule.
#[test]
fn chunks_and_heads_over_several_tiles_match_the_reference() {
    check_shape((1, 233, 3, 12, 3, 10, 100), 10, true);
    check_shape((1, 70, 2, 72, 1, 80, 32), 11, true);
    check_shape((1, 40, 2, 128, 2, 256, 32), 12, false);
}

/// Over a thousand positions in chunks of the maximum 256 (four row tiles; the last chunk has
/// 6 positions), and in chunks of 1.
#[test]
fn long_sequences_match_the_reference() {
    check_shape((1, 1030, 4, 8, 2, 8, 256), 20, false);
    check_shape((2, 9, 2, 3, 1, 5, 1), 21, true);
}

/// Every sum has a fixed order: results are the same bits whatever the thread interleaving.
#[test]
fn results_are_bit_identical_under_every_schedule() {
    let data = make(dims((2, 150, 4, 20, 2, 24, 64)), OPTION_SETS[1], 30);
    let bits = |schedule| {
        let r = kernels(&data, schedule);
        let grads = r.grads.into_iter().flat_map(|(_, v)| v);
        let all: Vec<f32> = [r.y, r.last, r.states]
            .into_iter()
            .flatten()
            .chain(grads)
            .collect();
        all.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let first = bits(Schedule::Random(SEEDS[0]));
    for schedule in SEEDS[1..]
        .iter()
        .map(|&s| Schedule::Random(s))
        .chain([Schedule::InOrder])
    {
        assert!(bits(schedule) == first, "{schedule:?} gives other bits");
    }
}

/// Without chunk states to keep, the forward keeps them in its workspace: same y and last state.
#[test]
fn the_forward_without_saved_states_gives_the_same_outputs() {
    let data = make(dims((2, 150, 2, 16, 1, 16, 64)), OPTION_SETS[1], 40);
    let schedule = Schedule::Random(SEEDS[1]);
    let (y, last, _) = forward(&data, schedule, true);
    let (y2, last2, states) = forward(&data, schedule, false);
    assert!(states.is_empty());
    assert_eq!((y, last), (y2, last2));
}

#[test]
fn unsupported_shapes_and_gradients_are_errors() {
    let inp = SsdInputsOf {
        x: 0,
        dt: 0,
        a: 0,
        b: 0,
        c: 0,
        d_skip: None,
        dt_bias: None,
        dt_softplus: false,
        dt_limit: NO_DT_LIMIT,
        h0: None,
    };
    let out = SsdOutputs {
        y: 0,
        last_state: 0,
        chunk_states: None,
    };
    let err = |d: SsdDims| k::ssd_fwd(&inp, &out, d, 0).unwrap_err().to_string();
    let ok = dims((1, 300, 4, 64, 2, 128, 256));
    assert!(k::ssd_fwd(&inp, &out, ok, 0).is_ok());
    let e = err(SsdDims { chunk: 257, ..ok });
    assert!(e.contains("chunk 257") && e.contains("256"), "{e}");
    assert!(err(SsdDims { g: 3, ..ok }).contains("g dividing h"));
    assert!(err(SsdDims { l: 0, ..ok }).contains(">= 1"));
    let huge = SsdDims {
        b: 65535,
        l: 1 << 20,
        chunk: 1,
        ..ok
    };
    assert!(err(huge).contains("grid"), "{}", err(huge));
    // The largest batch a grid takes.
    assert!(k::ssd_fwd(&inp, &out, SsdDims { b: 65535, ..ok }, 0).is_ok());
    let grads = SsdGradsOf {
        dx: 0,
        ddt: 0,
        da: 0,
        db: 0,
        dc: 0,
        dd_skip: None,
        ddt_bias: None,
        dh0: Some(0),
    };
    let e = k::ssd_bwd(&inp, 0, 0, None, &grads, ok, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dh0"), "{e}");
}

/// Shared-memory requests of every SSD kernel take at most two wavefronts, counted as
/// tests/banks.rs does: 2-way are only the staging writes, the decay lookups once per column tile
/// and the dx epilogue; the inner products are conflict-free.
#[test]
fn ssd_kernels_are_at_most_two_way_bank_conflicted() {
    let counts = counting_banks(|| {
        let data = make(dims((1, 150, 2, 64, 1, 64, 128)), OPTION_SETS[1], 50);
        kernels(&data, Schedule::Random(SEEDS[0]));
    });
    for (kernel, c) in counts.iter().filter(|(k, _)| k.starts_with("ssd_")) {
        println!(
            "banks {kernel:<22} {:>8} requests  worst {}-way  mean {:.3}",
            c.requests,
            c.worst,
            c.mean()
        );
        assert!(
            c.worst <= 2,
            "{kernel}: a request takes {} wavefronts",
            c.worst
        );
    }
    assert!(counts["ssd_chunk_dx_f32"].requests > 0);
}
