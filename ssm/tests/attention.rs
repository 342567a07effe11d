//! The tiled attention against the naive (lq, lk) reference, forward and backward, over lengths
//! around the tile size, GQA and a KV-cache layout; both backwards against finite differences in
//! f64; the memory the op keeps at l = 8192; RoPE's relative-position property, backward and offset.

use ssm::ops::attention::{
    AttentionGrads, AttentionOutput, attention_bwd, attention_bwd_workspace_bytes, attention_fwd,
    attention_ref, attention_ref_bwd,
};
use ssm::ops::rope::{DEFAULT_ROPE_BASE, rope_bwd, rope_fwd, rope_fwd_inplace};
use ssm::{Float, Tensor};

use crate::common::*;

/// Sizes of one case: batch, query length, key length, query heads, kv heads, head dim.
type Dims = (usize, usize, usize, usize, usize, usize);

struct Case<T: Float> {
    q: Tensor<T>,
    k: Tensor<T>,
    v: Tensor<T>,
    d_o: Tensor<T>,
}

impl<T: Float> Case<T> {
    fn random(seed: u64, (b, lq, lk, h, hkv, hd): Dims) -> Self {
        let mut r = rng(seed);
        // q and k in [-2, 2] give scores of a few units: softmaxes that are neither uniform nor one-hot.
        Case {
            q: uniform(&mut r, &[b, lq, h, hd], -2.0, 2.0),
            k: uniform(&mut r, &[b, lk, hkv, hd], -2.0, 2.0),
            v: uniform(&mut r, &[b, lk, hkv, hd], -1.0, 1.0),
            d_o: uniform(&mut r, &[b, lq, h, hd], -1.0, 1.0),
        }
    }

    fn fast(&self) -> (AttentionOutput<T>, AttentionGrads<T>) {
        let mut out = AttentionOutput::default();
        attention_fwd(&self.q, &self.k, &self.v, None, &mut out).unwrap();
        let mut g = AttentionGrads::zeros_like(&self.q, &self.k, &self.v).unwrap();
        attention_bwd(&self.q, &self.k, &self.v, &out, &self.d_o, &mut g).unwrap();
        (out, g)
    }
}

fn max_abs<T: Float>(t: &Tensor<T>) -> f64 {
    t.to_vec()
        .iter()
        .map(|v| v.to_f64().abs())
        .fold(0.0, f64::max)
}

/// Asserts agreement to `tol` relative to the magnitude of the reference (at least 1).
fn assert_close_rel<T: Float>(name: &str, got: &Tensor<T>, want: &Tensor<T>, tol: f64) {
    assert_close(name, got, want, tol * max_abs(want).max(1.0));
}

/// Tokens `range` of every sequence of a (b, l, ...) tensor.
fn slice_tokens<T: Float>(x: &Tensor<T>, range: std::ops::Range<usize>) -> Tensor<T> {
    let (b, l) = (x.dims()[0], x.dims()[1]);
    let w = x.numel() / (b * l);
    let v = x.to_vec();
    let data = (0..b)
        .flat_map(|bi| v[(bi * l + range.start) * w..(bi * l + range.end) * w].to_vec())
        .collect();
    let mut dims = x.dims().to_vec();
    dims[1] = range.len();
    Tensor::from_vec(dims, data).unwrap()
}

fn check_fast_vs_ref(seed: u64, dims: Dims) {
    let case = Case::<f32>::random(seed, dims);
    let want = attention_ref(&case.q, &case.k, &case.v, None).unwrap();
    let want_g = attention_ref_bwd(&case.q, &case.k, &case.v, None, &case.d_o).unwrap();
    let (out, g) = case.fast();
    println!("case (b, lq, lk, h, hkv, hd) = {dims:?}");
    assert_close_rel("o", &out.o, &want.o, 1e-5);
    assert_close_rel("lse", &out.lse, &want.lse, 1e-5);
    // Gradients sum over up to l products: compare relative to their magnitude.
    assert_close_rel("dq", &g.dq, &want_g.dq, 1e-5);
    assert_close_rel("dk", &g.dk, &want_g.dk, 1e-5);
    assert_close_rel("dv", &g.dv, &want_g.dv, 1e-5);
}

#[test]
fn tiled_attention_matches_reference() {
    let cases: [Dims; 8] = [
        (2, 1, 1, 4, 2, 8),      // l = 1
        (2, 100, 100, 4, 2, 16), // l not a multiple of the tile, GQA 2:1
        (1, 200, 200, 4, 1, 8),  // multi-query: one kv head, backward split into key ranges
        (2, 130, 130, 4, 4, 32), // plain multi-head, one row past two tiles
        (1, 64, 64, 2, 2, 8),    // exactly one tile
        (2, 257, 257, 2, 1, 64), // hd = 64, several tiles and a one-row tail
        (1, 37, 150, 4, 2, 8),   // queries are the last 37 of 150 positions
        (2, 1, 77, 4, 1, 16),    // one decoding step against a cache of 76
    ];
    for (i, dims) in cases.into_iter().enumerate() {
        check_fast_vs_ref(100 + i as u64, dims);
    }
}

/// Other thread counts cut the backward into other key ranges: each still matches, and a run
/// repeated in the same pool is bit-identical.
#[test]
fn tiled_attention_is_deterministic_across_runs_and_correct_for_any_thread_count() {
    for threads in [1, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            println!("threads = {threads}");
            check_fast_vs_ref(7, (1, 300, 300, 2, 1, 16));
            let case = Case::<f32>::random(8, (2, 150, 150, 4, 2, 8));
            let (o1, g1) = case.fast();
            let (o2, g2) = case.fast();
            for (a, b) in [
                (&o1.o, &o2.o),
                (&o1.lse, &o2.lse),
                (&g1.dq, &g2.dq),
                (&g1.dk, &g2.dk),
                (&g1.dv, &g2.dv),
            ] {
                assert!(
                    a.to_vec()
                        .iter()
                        .zip(b.to_vec())
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "results differ between runs"
                );
            }
        });
    }
}

#[test]
fn attention_backward_accumulates() {
    let case = Case::<f32>::random(3, (1, 90, 90, 2, 1, 8));
    let (out, fresh) = case.fast();
    let mut r = rng(4);
    let init = AttentionGrads {
        dq: uniform(&mut r, case.q.dims(), -1.0, 1.0),
        dk: uniform(&mut r, case.k.dims(), -1.0, 1.0),
        dv: uniform(&mut r, case.v.dims(), -1.0, 1.0),
    };
    let mut g = init.clone();
    attention_bwd(&case.q, &case.k, &case.v, &out, &case.d_o, &mut g).unwrap();
    let sum = |a: &Tensor<f32>, b: &Tensor<f32>| {
        Tensor::from_vec(
            a.dims(),
            a.to_vec()
                .iter()
                .zip(b.to_vec())
                .map(|(x, y)| x + y)
                .collect(),
        )
        .unwrap()
    };
    assert_close("dq accumulated", &g.dq, &sum(&init.dq, &fresh.dq), 1e-6);
    assert_close("dk accumulated", &g.dk, &sum(&init.dk, &fresh.dk), 1e-6);
    assert_close("dv accumulated", &g.dv, &sum(&init.dv, &fresh.dv), 1e-6);
}

/// Queries at the end of a longer key sequence (a KV cache) give the last rows of the full
/// causal attention.
#[test]
fn attention_over_a_cache_equals_the_last_rows_of_the_full_sequence() {
    let case = Case::<f32>::random(5, (2, 140, 140, 4, 2, 16));
    let mut full = AttentionOutput::default();
    attention_fwd(&case.q, &case.k, &case.v, None, &mut full).unwrap();
    for n in [1, 5, 70] {
        let mut tail = AttentionOutput::default();
        attention_fwd(
            &slice_tokens(&case.q, 140 - n..140),
            &case.k,
            &case.v,
            None,
            &mut tail,
        )
        .unwrap();
        assert_close(
            &format!("last {n} rows of o"),
            &tail.o,
            &slice_tokens(&full.o, 140 - n..140),
            1e-6,
        );
    }
}

/// Both backwards against central differences of the reference forward, loss = Σ o ∘ w.
#[test]
fn attention_gradients_match_finite_differences() {
    // Small with GQA and a cache offset; then one crossing a tile boundary for the fast path.
    for (seed, dims) in [(1u64, (2, 5, 7, 4, 2, 3)), (2, (1, 70, 70, 2, 1, 4))] {
        let mut case = Case::<f64>::random(seed, dims);
        let w = case.d_o.clone();
        let reference = attention_ref_bwd(&case.q, &case.k, &case.v, None, &w).unwrap();
        let (fast_out, fast) = case.fast();
        println!("case (b, lq, lk, h, hkv, hd) = {dims:?}");
        // In f64 the tiled path and the reference differ only by summation order.
        assert_close_rel(
            "tiled vs ref o (f64)",
            &fast_out.o,
            &attention_ref(&case.q, &case.k, &case.v, None).unwrap().o,
            1e-13,
        );
        for (name, got, want) in [
            ("dq", &fast.dq, &reference.dq),
            ("dk", &fast.dk, &reference.dk),
            ("dv", &fast.dv, &reference.dv),
        ] {
            assert_close_rel(&format!("tiled vs ref {name} (f64)"), got, want, 1e-13);
        }
        macro_rules! fd {
            ($field:ident, $name:literal, $grad:ident) => {{
                let mut t = case.$field.clone();
                let num = numeric_grad(&mut t, 1e-6, |t| {
                    let saved = std::mem::replace(&mut case.$field, t.clone());
                    let o = attention_ref(&case.q, &case.k, &case.v, None).unwrap().o;
                    case.$field = saved;
                    dot(&o, &w)
                });
                assert_grad(concat!("ref ", $name), &reference.$grad, &num, 1e-6);
                assert_grad(concat!("tiled ", $name), &fast.$grad, &num, 1e-6);
            }};
        }
        fd!(q, "dq", dq);
        fd!(k, "dk", dk);
        fd!(v, "dv", dv);
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let t = |d: &[usize]| Tensor::<f32>::zeros_cpu(d);
    let mut out = AttentionOutput::default();
    let err =
        |q: &Tensor<f32>, k: &Tensor<f32>, v: &Tensor<f32>, out: &mut AttentionOutput<f32>| {
            attention_fwd(q, k, v, None, out).unwrap_err().to_string()
        };
    assert!(
        err(
            &t(&[1, 4, 2]),
            &t(&[1, 4, 2, 8]),
            &t(&[1, 4, 2, 8]),
            &mut out
        )
        .contains("attention_fwd: q")
    );
    assert!(
        err(
            &t(&[1, 4, 3, 8]),
            &t(&[1, 4, 2, 8]),
            &t(&[1, 4, 2, 8]),
            &mut out
        )
        .contains("k")
    );
    assert!(
        err(
            &t(&[1, 5, 2, 8]),
            &t(&[1, 4, 2, 8]),
            &t(&[1, 4, 2, 8]),
            &mut out
        )
        .contains("lk >= 5")
    );
    assert!(
        err(
            &t(&[1, 4, 2, 8]),
            &t(&[1, 4, 2, 8]),
            &t(&[1, 4, 2, 4]),
            &mut out
        )
        .contains("v")
    );
    assert!(
        err(
            &t(&[1, 0, 2, 8]),
            &t(&[1, 0, 2, 8]),
            &t(&[1, 0, 2, 8]),
            &mut out
        )
        .contains("lq, h, hd >= 1")
    );
}

/// At l = 8192 the op keeps only the lse for the backward, and the backward's workspace grows
/// like l, far below one l x l matrix; spot rows still match the reference.
#[test]
fn attention_memory_is_linear_in_length() {
    let (b, l, h, hd) = (1, 8192, 1, 8);
    let case = Case::<f32>::random(9, (b, l, l, h, h, hd));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    pool.install(|| {
        let (out, g) = case.fast();
        let f32s = std::mem::size_of::<f32>();
        let square = l * l * f32s;
        println!(
            "saved for backward: {} bytes (one l x l matrix: {square})",
            out.saved_bytes()
        );
        assert_eq!(out.saved_bytes(), b * h * l * f32s);
        // D (b, h, l) plus at most 7 private dq buffers of (l, hd) with 4 threads (8 key ranges).
        let ws = attention_bwd_workspace_bytes(&case.q, &case.k, &case.v).unwrap();
        println!("backward workspace: {ws} bytes");
        assert!(
            ws <= b * h * l * (1 + 7 * hd) * f32s && ws * 100 < square,
            "workspace {ws} bytes"
        );
        for t in [0, 5000, l - 1] {
            let keys = 0..t + 1;
            let row = attention_ref(
                &slice_tokens(&case.q, t..t + 1),
                &slice_tokens(&case.k, keys.clone()),
                &slice_tokens(&case.v, keys),
                None,
            )
            .unwrap();
            assert_close_rel(
                &format!("o row {t}"),
                &slice_tokens(&out.o, t..t + 1),
                &row.o,
                1e-5,
            );
        }
        assert!(
            g.dq.to_vec()
                .iter()
                .chain(&g.dk.to_vec())
                .chain(&g.dv.to_vec())
                .all(|x| x.is_finite())
        );
    });
}

/// q · k after rotation depends only on the distance between the positions.
#[test]
fn rope_scores_depend_only_on_relative_position() {
    let mut r = rng(11);
    let (q, k) = (
        uniform::<f64>(&mut r, &[1, 1, 1, 16], -1.0, 1.0),
        uniform::<f64>(&mut r, &[1, 1, 1, 16], -1.0, 1.0),
    );
    let score = |p: usize, s: usize| {
        let (mut qr, mut kr) = (Tensor::default(), Tensor::default());
        rope_fwd(&q, p, DEFAULT_ROPE_BASE, &mut qr).unwrap();
        rope_fwd(&k, s, DEFAULT_ROPE_BASE, &mut kr).unwrap();
        dot(&qr, &kr)
    };
    for (p, s, shift) in [(0, 5, 7), (10, 3, 100), (999, 1000, 12_345), (4, 4, 50_000)] {
        let (a, b) = (score(p, s), score(p + shift, s + shift));
        println!("positions ({p}, {s}) and shifted by {shift}: {a:.15} vs {b:.15}");
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }
    assert!(
        (score(0, 5) - score(0, 6)).abs() > 1e-3,
        "scores do not depend on position at all"
    );
}

/// The rotate-half pairing and the frequencies, written out for hd = 4 at position 3.
#[test]
fn rope_follows_the_rotate_half_convention() {
    let x = Tensor::<f64>::from_vec([1, 1, 1, 4], vec![0.3, -0.7, 1.1, 0.5]).unwrap();
    let mut y = Tensor::default();
    rope_fwd(&x, 3, DEFAULT_ROPE_BASE, &mut y).unwrap();
    let (a0, a1) = (3.0f64, 3.0 * 10_000f64.powf(-0.5));
    let want = [
        0.3 * a0.cos() - 1.1 * a0.sin(),
        -0.7 * a1.cos() - 0.5 * a1.sin(),
        1.1 * a0.cos() + 0.3 * a0.sin(),
        0.5 * a1.cos() - 0.7 * a1.sin(),
    ];
    assert_close(
        "rope hd=4 pos=3",
        &y,
        &Tensor::from_vec([1, 1, 1, 4], want.to_vec()).unwrap(),
        1e-15,
    );
    let mut inplace = x.clone();
    rope_fwd_inplace(&mut inplace, 3, DEFAULT_ROPE_BASE).unwrap();
    assert_close("in place", &inplace, &y, 0.0);
    let odd = Tensor::<f64>::zeros_cpu([1, 1, 1, 5]);
    assert!(
        rope_fwd(&odd, 0, DEFAULT_ROPE_BASE, &mut y)
            .unwrap_err()
            .to_string()
            .contains("hd even")
    );
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut r = rng(12);
    let mut x = uniform::<f64>(&mut r, &[2, 3, 2, 6], -1.0, 1.0);
    let w = uniform::<f64>(&mut r, &[2, 3, 2, 6], -1.0, 1.0);
    let offset = 17;
    let mut dx = Tensor::zeros_cpu([2, 3, 2, 6]);
    rope_bwd(&w, offset, DEFAULT_ROPE_BASE, &mut dx).unwrap();
    let num = numeric_grad(&mut x, 1e-6, |x| {
        let mut y = Tensor::default();
        rope_fwd(x, offset, DEFAULT_ROPE_BASE, &mut y).unwrap();
        dot(&y, &w)
    });
    assert_grad("rope dx", &dx, &num, 1e-6);
    let once = dx.clone();
    rope_bwd(&w, offset, DEFAULT_ROPE_BASE, &mut dx).unwrap();
    let twice =
        Tensor::from_vec(once.dims(), once.to_vec().iter().map(|v| 2.0 * v).collect()).unwrap();
    assert_close("rope dx accumulates", &dx, &twice, 1e-15);
}

/// RoPE of a chunk at offset s equals rows s.. of RoPE of the whole sequence (KV-cache decoding).
#[test]
fn rope_offset_matches_slicing_a_longer_sequence() {
    let mut r = rng(13);
    let x = uniform::<f32>(&mut r, &[2, 300, 3, 8], -1.0, 1.0);
    let mut full = Tensor::default();
    rope_fwd(&x, 0, DEFAULT_ROPE_BASE, &mut full).unwrap();
    for range in [250..300, 299..300, 0..40] {
        let mut part = slice_tokens(&x, range.clone());
        rope_fwd_inplace(&mut part, range.start, DEFAULT_ROPE_BASE).unwrap();
        assert_close(
            &format!("rope tokens {range:?}"),
            &part,
            &slice_tokens(&full, range),
            0.0,
        );
    }
}
