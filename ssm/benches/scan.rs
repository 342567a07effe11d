//! Selective scan forward + backward: the tiled CPU kernel against the plain sequential reference
//! at the shape of one layer of the reference training configuration (b 8, l 1024, d_inner 512,
//! d_state 16, z gating, D, delta_bias, softplus).
//!
//! `cargo bench -p ssm --bench scan`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ssm::Tensor;
use ssm::ops::scan::{
    ScanGrads, ScanInputs, ScanOutput, selective_scan_bwd, selective_scan_fwd, selective_scan_ref,
    selective_scan_ref_bwd,
};

fn rand_tensor(rng: &mut StdRng, dims: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(dims, (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

fn scan(c: &mut Criterion) {
    let (b, l, d, n) = (8, 1024, 512, 16);
    let mut rng = StdRng::seed_from_u64(0);
    let u = rand_tensor(&mut rng, &[b, l, d], -1.0, 1.0);
    let delta = rand_tensor(&mut rng, &[b, l, d], -4.0, 0.0);
    let a = rand_tensor(&mut rng, &[d, n], -8.0, -1.0);
    let bm = rand_tensor(&mut rng, &[b, l, 1, n], -1.0, 1.0);
    let cm = rand_tensor(&mut rng, &[b, l, 1, n], -1.0, 1.0);
    let d_skip = rand_tensor(&mut rng, &[d], 0.5, 1.5);
    let z = rand_tensor(&mut rng, &[b, l, d], -2.0, 2.0);
    let bias = rand_tensor(&mut rng, &[d], -3.0, -1.0);
    let dy = rand_tensor(&mut rng, &[b, l, d], -1.0, 1.0);
    let inp = ScanInputs {
        u: &u,
        delta: &delta,
        a: &a,
        b: &bm,
        c: &cm,
        d_skip: Some(&d_skip),
        z: Some(&z),
        delta_bias: Some(&bias),
        delta_softplus: true,
        h0: None,
    };
    let mut group = c.benchmark_group("selective_scan_b8_l1024_d512_n16");
    group.sample_size(10);
    group.throughput(Throughput::Elements((b * l) as u64));
    let mut out = ScanOutput::default();
    let mut grads = ScanGrads::zeros_like(&inp).unwrap();
    group.bench_function("fast_fwd_bwd", |bench| {
        bench.iter(|| {
            selective_scan_fwd(&inp, &mut out, true).unwrap();
            grads.zero_().unwrap();
            selective_scan_bwd(&inp, &out, &dy, None, &mut grads).unwrap();
        })
    });
    group.bench_function("reference_fwd_bwd", |bench| {
        bench.iter(|| {
            selective_scan_ref(&inp).unwrap();
            selective_scan_ref_bwd(&inp, &dy, None).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
