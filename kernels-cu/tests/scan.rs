//! The selective scan kernels through the emulation against ssm's f64 reference
//! (`selective_scan_ref`, `selective_scan_ref_bwd`): L = 1, odd lengths, lengths over two and
//! three chunks, G = 1 and 2, 1, 2 and 4 channels per block, every option on and off, three
//! schedules, each sequence in one block or split into segments (one chunk each, or uneven runs);
//! a 65536-step sequence split as a small batch is on a GPU. Also the broken copy of the forward
//! that the emulation must catch.

use ssm::Tensor;
use ssm::ops::scan as cpu;
use ssm_kernels::emu::Schedule;
use ssm_kernels::scan::{self as k, ScanDims, ScanSplit};
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{SEEDS, assert_close_rel, rng, run, schedules, uniform};

/// Tolerance relative to each tensor's largest entry: f32 kernels against the f64 reference land
/// within 4e-7 of it on these shapes.
const REL: f32 = 1e-5;

/// (b, l, d, n, g): channels per block 4, 1, 4, 4, 2 (d / g = 8, 3, 4, 4, 6).
const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (2, 1, 8, 4, 1),
    (1, 37, 6, 16, 2),
    (2, 300, 8, 5, 2),
    (1, 600, 4, 16, 1),
    (1, 513, 12, 9, 2),
];

#[derive(Clone, Copy, Debug)]
struct Opts {
    d_skip: bool,
    z: bool,
    delta_bias: bool,
    softplus: bool,
    h0: bool,
    dlast: bool,
}

/// Every option off, every option on, and two halves, so that each is on and off for each shape.
const OPTION_SETS: [Opts; 4] = [
    Opts {
        d_skip: false,
        z: false,
        delta_bias: false,
        softplus: false,
        h0: false,
        dlast: false,
    },
    Opts {
        d_skip: true,
        z: true,
        delta_bias: true,
        softplus: true,
        h0: true,
        dlast: true,
    },
    Opts {
        d_skip: true,
        z: false,
        delta_bias: false,
        softplus: true,
        h0: true,
        dlast: false,
    },
    Opts {
        d_skip: false,
        z: true,
        delta_bias: true,
        softplus: false,
        h0: false,
        dlast: true,
    },
];

/// Inputs and upstream gradients of one case, f32, in the ssm layouts.
struct Data {
    dims: ScanDims,
    opts: Opts,
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d_skip: Option<Vec<f32>>,
    z: Option<Vec<f32>>,
    delta_bias: Option<Vec<f32>>,
    h0: Option<Vec<f32>>,
    dy: Vec<f32>,
    dlast: Option<Vec<f32>>,
}

fn make(dims: ScanDims, opts: Opts, seed: u64) -> Data {
    let ScanDims { b, l, d, n, g } = dims;
    let mut r = rng(seed);
    let bld = b * l * d;
    // dt must stay positive without softplus, or the state grows without bound.
    let ((lo, hi), (blo, bhi)) = if opts.softplus {
        ((-4.0, 1.0), (-1.0, 0.5))
    } else {
        ((0.0, 0.5), (0.0, 0.3))
    };
    let mut on =
        |yes: bool, len: usize, lo: f32, hi: f32| yes.then(|| uniform(&mut r, len, lo, hi));
    Data {
        dims,
        opts,
        d_skip: on(opts.d_skip, d, -1.0, 1.0),
        z: on(opts.z, bld, -3.0, 3.0),
        delta_bias: on(opts.delta_bias, d, blo, bhi),
        h0: on(opts.h0, b * d * n, -1.0, 1.0),
        dlast: on(opts.dlast, b * d * n, -1.0, 1.0),
        u: uniform(&mut r, bld, -1.0, 1.0),
        delta: uniform(&mut r, bld, lo, hi),
        a: uniform(&mut r, d * n, -2.0, -0.1),
        b: uniform(&mut r, b * l * g * n, -1.0, 1.0),
        c: uniform(&mut r, b * l * g * n, -1.0, 1.0),
        dy: uniform(&mut r, bld, -1.0, 1.0),
    }
}

fn f64_tensor(dims: &[usize], v: &[f32]) -> Tensor<f64> {
    Tensor::from_vec(dims.to_vec(), v.iter().map(|&x| x as f64).collect()).unwrap()
}

fn to_f32(t: &Tensor<f64>) -> Vec<f32> {
    t.to_vec().iter().map(|&x| x as f32).collect()
}

/// What the kernels produce, or the reference says they should.
#[derive(Debug)]
struct Results {
    y: Vec<f32>,
    last: Vec<f32>,
    grads: Vec<(&'static str, Vec<f32>)>,
}

/// Initial contents of the gradient buffers: the kernels add into them.
fn grad_init(data: &Data) -> Vec<(&'static str, Vec<f32>)> {
    let ScanDims { b, l, d, n, g } = data.dims;
    let o = data.opts;
    let mut r = rng(99);
    let sizes = [
        ("du", true, b * l * d),
        ("ddelta", true, b * l * d),
        ("dA", true, d * n),
        ("dB", true, b * l * g * n),
        ("dC", true, b * l * g * n),
        ("dD", o.d_skip, d),
        ("dz", o.z, b * l * d),
        ("ddelta_bias", o.delta_bias, d),
        ("dh0", o.h0, b * d * n),
    ];
    sizes
        .into_iter()
        .filter(|s| s.1)
        .map(|(name, _, len)| (name, uniform(&mut r, len, -0.5, 0.5)))
        .collect()
}

fn reference(data: &Data) -> Results {
    let ScanDims { b, l, d, n, g } = data.dims;
    let t = |dims: &[usize], v: &Option<Vec<f32>>| v.as_ref().map(|v| f64_tensor(dims, v));
    let (u, delta, a) = (
        f64_tensor(&[b, l, d], &data.u),
        f64_tensor(&[b, l, d], &data.delta),
        f64_tensor(&[d, n], &data.a),
    );
    let (bm, cm) = (
        f64_tensor(&[b, l, g, n], &data.b),
        f64_tensor(&[b, l, g, n], &data.c),
    );
    let (d_skip, z, delta_bias, h0) = (
        t(&[d], &data.d_skip),
        t(&[b, l, d], &data.z),
        t(&[d], &data.delta_bias),
        t(&[b, d, n], &data.h0),
    );
    let inp = cpu::ScanInputs {
        u: &u,
        delta: &delta,
        a: &a,
        b: &bm,
        c: &cm,
        d_skip: d_skip.as_ref(),
        z: z.as_ref(),
        delta_bias: delta_bias.as_ref(),
        delta_softplus: data.opts.softplus,
        h0: h0.as_ref(),
    };
    let (y, last) = cpu::selective_scan_ref(&inp).unwrap();
    let dlast = t(&[b, d, n], &data.dlast);
    let gr = cpu::selective_scan_ref_bwd(&inp, &f64_tensor(&[b, l, d], &data.dy), dlast.as_ref())
        .unwrap();
    let refs: Vec<(&str, Option<&Tensor<f64>>)> = vec![
        ("du", Some(&gr.du)),
        ("ddelta", Some(&gr.ddelta)),
        ("dA", Some(&gr.da)),
        ("dB", Some(&gr.db)),
        ("dC", Some(&gr.dc)),
        ("dD", gr.dd_skip.as_ref()),
        ("dz", gr.dz.as_ref()),
        ("ddelta_bias", gr.ddelta_bias.as_ref()),
        ("dh0", gr.dh0.as_ref()),
    ];
    let grads = grad_init(data)
        .into_iter()
        .map(|(name, init)| {
            let r = refs
                .iter()
                .find(|(n2, _)| *n2 == name)
                .and_then(|(_, t)| *t)
                .expect("reference gradient");
            (
                name,
                init.iter().zip(to_f32(r)).map(|(i, g)| i + g).collect(),
            )
        })
        .collect();
    Results {
        y: to_f32(&y),
        last: to_f32(&last),
        grads,
    }
}

fn inputs(data: &Data) -> k::ScanInputs {
    k::ScanInputs {
        u: p(&data.u),
        delta: p(&data.delta),
        a: p(&data.a),
        b: p(&data.b),
        c: p(&data.c),
        d_skip: data.d_skip.as_deref().map(p),
        z: data.z.as_deref().map(p),
        delta_bias: data.delta_bias.as_deref().map(p),
        delta_softplus: data.opts.softplus,
        h0: data.h0.as_deref().map(p),
    }
}

/// Which forward runs: the kernel in `segments` per sequence, or its broken copy.
#[derive(Clone, Copy, Debug)]
enum Fwd {
    Segments(usize),
    Broken,
}

/// Forward only: y, the last state and the chunk states.
fn forward(data: &Data, schedule: Schedule, fwd: Fwd) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dims = data.dims;
    let mut y = vec![0.0f32; dims.b * dims.l * dims.d];
    let mut last = vec![0.0f32; dims.b * dims.d * dims.n];
    let mut states = vec![0.0f32; dims.chunk_states_len()];
    let out = k::ScanOutputs {
        y: pm(&mut y),
        last_state: Some(pm(&mut last)),
        chunk_states: Some(pm(&mut states)),
    };
    let segments = match fwd {
        Fwd::Segments(s) => s,
        Fwd::Broken => 1,
    };
    let mut ws = vec![f32::NAN; dims.fwd_workspace_len(segments)];
    let split = ScanSplit {
        segments,
        workspace: pm(&mut ws),
    };
    let launches = match fwd {
        Fwd::Segments(_) => k::selective_scan_fwd(&inputs(data), &out, dims, split).unwrap(),
        Fwd::Broken => vec![k::selective_scan_fwd_broken(&inputs(data), &out, dims).unwrap()],
    };
    // SAFETY: every buffer has the length of its layout for `dims`, the workspace that of
    // fwd_workspace_len.
    unsafe { run(&launches, schedule) };
    (y, last, states)
}

/// Forward and backward in `segments` per sequence.
fn kernels(data: &Data, schedule: Schedule, segments: usize) -> (Results, Vec<f32>) {
    let (y, last, states) = forward(data, schedule, Fwd::Segments(segments));
    let mut grads = grad_init(data);
    let mut ws = vec![f32::NAN; data.dims.bwd_workspace_len(segments)];
    let mut ptr = |name: &str| {
        grads
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| pm(v))
    };
    let g = k::ScanGrads {
        du: ptr("du").unwrap(),
        ddelta: ptr("ddelta").unwrap(),
        da: ptr("dA").unwrap(),
        db: ptr("dB").unwrap(),
        dc: ptr("dC").unwrap(),
        dd_skip: ptr("dD"),
        dz: ptr("dz"),
        ddelta_bias: ptr("ddelta_bias"),
        dh0: ptr("dh0"),
    };
    let dlast = data.dlast.as_deref().map(p);
    let launches = k::selective_scan_bwd(
        &inputs(data),
        p(&states),
        p(&data.dy),
        dlast,
        &g,
        data.dims,
        ScanSplit {
            segments,
            workspace: pm(&mut ws),
        },
    )
    .unwrap();
    // SAFETY: as in `forward`; the workspace has bwd_workspace_len() floats.
    unsafe { run(&launches, schedule) };
    (Results { y, last, grads }, states)
}

/// The state before step `t` of every sequence: the reference's last state on the first t steps.
fn state_at(data: &Data, t: usize) -> Vec<f32> {
    let ScanDims { b, l, d, n, g } = data.dims;
    let cut = |v: &[f32], row: usize| -> Vec<f32> {
        (0..b)
            .flat_map(|bi| v[bi * l * row..(bi * l + t) * row].to_vec())
            .collect()
    };
    let mut short = make(ScanDims { l: t, ..data.dims }, data.opts, 0);
    short.u = cut(&data.u, d);
    short.delta = cut(&data.delta, d);
    short.b = cut(&data.b, g * n);
    short.c = cut(&data.c, g * n);
    short.z = data.z.as_ref().map(|z| cut(z, d));
    (short.a, short.d_skip, short.delta_bias, short.h0) = (
        data.a.clone(),
        data.d_skip.clone(),
        data.delta_bias.clone(),
        data.h0.clone(),
    );
    short.dy = cut(&data.dy, d);
    reference(&short).last
}

/// Asserts the kernels' results against the reference's.
fn assert_results(ctx: &str, got: &Results, want: &Results) {
    assert_close_rel(&format!("y, {ctx}"), &got.y, &want.y, REL);
    assert_close_rel(&format!("last state, {ctx}"), &got.last, &want.last, REL);
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        assert_close_rel(&format!("{name}, {ctx}"), g, w, REL);
    }
}

#[test]
fn forward_and_backward_match_the_reference() {
    for (si, &(b, l, d, n, g)) in SHAPES.iter().enumerate() {
        let dims = ScanDims { b, l, d, n, g };
        // Unsplit, two segments (uneven over three chunks) and one chunk per segment.
        let mut splits = vec![1, 2, dims.chunks()];
        splits.retain(|&s| s <= dims.chunks());
        splits.dedup();
        for (oi, &opts) in OPTION_SETS.iter().enumerate() {
            let data = make(dims, opts, (si * 10 + oi) as u64);
            let want = reference(&data);
            let want_states: Vec<Vec<f32>> = (1..dims.chunks())
                .map(|chunk| state_at(&data, chunk * k::CHUNK))
                .collect();
            for (schedule, &segments) in schedules()
                .into_iter()
                .flat_map(|s| splits.iter().map(move |x| (s, x)))
            {
                let (got, states) = kernels(&data, schedule, segments);
                let ctx = format!("{dims:?} {opts:?} {schedule:?} segments {segments}");
                assert_results(&ctx, &got, &want);
                for (chunk, want_state) in (1..dims.chunks()).zip(&want_states) {
                    let saved: Vec<f32> = (0..b)
                        .flat_map(|bi| {
                            states[(bi * dims.chunks() + chunk) * d * n..][..d * n].to_vec()
                        })
                        .collect();
                    assert_close_rel(
                        &format!("state before chunk {chunk}, {ctx}"),
                        &saved,
                        want_state,
                        REL,
                    );
                }
            }
        }
    }
}

/// A small batch of long sequences, which a GPU runs split: one 65536-step sequence (256 chunks)
/// of 4 channels in the segments that a 2-SM device gets (12 uneven runs: 11 of 22 chunks and one
/// of 14), with every option and with none.
#[test]
fn a_long_sequence_split_into_segments_matches_the_reference() {
    let dims = ScanDims {
        b: 1,
        l: 65536,
        d: 4,
        n: 16,
        g: 1,
    };
    let segments = dims.segments(2);
    assert_eq!(segments, 12);
    for (oi, opts) in [OPTION_SETS[0], OPTION_SETS[1]].into_iter().enumerate() {
        let data = make(dims, opts, 100 + oi as u64);
        let (got, _) = kernels(&data, Schedule::Random(SEEDS[oi]), segments);
        assert_results(
            &format!("{dims:?} {opts:?} segments {segments}"),
            &got,
            &reference(&data),
        );
    }
}

/// The split is for batches that leave the GPU's block slots half empty, and never makes a
/// segment of less than a chunk.
#[test]
fn sequences_split_only_when_the_batch_leaves_the_gpu_idle() {
    let dims = |b, l, d| ScanDims {
        b,
        l,
        d,
        n: 16,
        g: 1,
    };
    // H200: 132 SMs, 6 scan blocks each; 4 channels per block.
    assert_eq!(dims(8, 65536, 1536).segments(132), 1);
    assert_eq!(dims(2, 65536, 1536).segments(132), 1);
    assert_eq!(dims(1, 16384, 1536).segments(132), 2);
    assert_eq!(dims(1, 65536, 32).segments(132), 86);
    assert_eq!(dims(1, 300, 32).segments(132), 2);
    assert_eq!(dims(1, 1, 4).segments(132), 1);
}

#[test]
fn the_harness_catches_a_missing_barrier() {
    let data = make(
        ScanDims {
            b: 2,
            l: 300,
            d: 8,
            n: 16,
            g: 1,
        },
        OPTION_SETS[1],
        7,
    );
    let want = reference(&data);
    let scale = want.y.iter().fold(0.0f32, |a, w| a.max(w.abs()));
    let agrees = |y: &[f32]| {
        y.iter()
            .zip(&want.y)
            .all(|(g, w)| (g - w).abs() <= REL * scale)
    };
    assert!(
        agrees(&forward(&data, Schedule::InOrder, Fwd::Segments(1)).0),
        "the intact kernel agrees in order"
    );
    assert!(
        agrees(&forward(&data, Schedule::InOrder, Fwd::Broken).0),
        "in order, warp 0 runs ahead and hides the race"
    );
    for seed in SEEDS {
        assert!(
            agrees(&forward(&data, Schedule::Random(seed), Fwd::Segments(1)).0),
            "the intact kernel agrees under seed {seed}"
        );
        assert!(
            !agrees(&forward(&data, Schedule::Random(seed), Fwd::Broken).0),
            "seed {seed} must expose the missing barrier"
        );
    }
}

#[test]
fn unsupported_shapes_are_errors() {
    let inp = k::ScanInputs::default();
    let out = k::ScanOutputs::default();
    let too_big = ScanDims {
        b: 1,
        l: 8,
        d: 4,
        n: k::MAX_STATE + 1,
        g: 1,
    };
    assert!(
        k::selective_scan_fwd(&inp, &out, too_big, ScanSplit::NONE)
            .unwrap_err()
            .to_string()
            .contains("state size")
    );
    let bad_groups = ScanDims {
        b: 1,
        l: 8,
        d: 6,
        n: 4,
        g: 4,
    };
    assert!(k::selective_scan_fwd(&inp, &out, bad_groups, ScanSplit::NONE).is_err());
    let chunk_per_segment = ScanSplit {
        segments: 70000,
        workspace: 0,
    };
    let long = ScanDims {
        b: 1,
        l: 70000 * k::CHUNK,
        d: 4,
        n: 4,
        g: 1,
    };
    assert!(
        k::selective_scan_fwd(&inp, &out, long, chunk_per_segment)
            .unwrap_err()
            .to_string()
            .contains("grid's z limit")
    );
    let grads = k::ScanGrads {
        dz: Some(1),
        ..Default::default()
    };
    let dims = ScanDims {
        b: 1,
        l: 8,
        d: 4,
        n: 4,
        g: 1,
    };
    assert!(
        k::selective_scan_bwd(&inp, 0, 0, None, &grads, dims, ScanSplit::NONE)
            .unwrap_err()
            .to_string()
            .contains("dz")
    );
}
