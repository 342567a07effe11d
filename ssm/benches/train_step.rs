//! One training step (forward, backward, clipping, AdamW) of the reference CPU configuration of
//! the engine issue: the Mamba model, d_model 256, 4 layers, d_state 16, vocab 256, batch 8, at L =
//! 1024 and 4096. Throughput is reported in tokens.
//!
//! `cargo bench -p ssm --bench train_step`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ssm::models::{LanguageModel, MambaConfig};
use ssm::nn::Module;
use ssm::optim::{AdamW, AdamWConfig, clip_grad_norm};

fn train_step(c: &mut Criterion) {
    let config = MambaConfig::default(); // d_model 256, 4 layers, d_state 16, vocab 256
    let b = 8;
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    for l in [1024usize, 4096] {
        let mut model = LanguageModel::<f32>::new(config.clone(), 0).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default());
        let ids: Vec<u32> = (0..b * l)
            .map(|i| ((i * 2654435761usize) >> 7 & 255) as u32)
            .collect();
        let targets: Vec<i64> = (0..b * l)
            .map(|i| {
                if i % l == l - 1 {
                    -100
                } else {
                    ids[i + 1] as i64
                }
            })
            .collect();
        group.throughput(Throughput::Elements((b * l) as u64));
        group.bench_function(format!("mamba_d256_x4_b8_l{l}"), |bench| {
            bench.iter(|| {
                model.zero_grad().unwrap();
                let loss = model.forward_loss(&ids, &targets, b).unwrap();
                model.backward().unwrap();
                clip_grad_norm(&mut model, 1.0).unwrap();
                opt.update(&mut model, 1e-3).unwrap();
                loss
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
