//! Training throughput and peak memory of the Mamba model on the CPU, one configuration per process
//! (so that the peak resident memory belongs to that configuration alone).
//!
//! `cargo run --release -p ssm --example train_throughput -- [L] [B] [STEPS]`
//! (defaults: L 1024, B 8, 6 measured steps after 2 warm-up steps; d_model 256, 4 layers,
//! d_state 16, vocab 256). Prints the median tokens/s of forward + backward + clipping + AdamW and
//! the peak resident set (VmHWM).

use ssm::Device;
use ssm::device::peak_memory_mb;
use ssm::models::{LanguageModel, MambaConfig};
use ssm::nn::Module;
use ssm::optim::{AdamW, AdamWConfig, clip_grad_norm};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are integers: L B STEPS"))
        .collect();
    let l = args.first().copied().unwrap_or(1024);
    let b = args.get(1).copied().unwrap_or(8);
    let steps = args.get(2).copied().unwrap_or(6);
    let config = MambaConfig::default(); // d_model 256, 4 layers, d_state 16, vocab 256
    let mut model = LanguageModel::<f32>::new(config, 0).expect("valid config");
    let mut opt = AdamW::new(AdamWConfig::default());
    let ids: Vec<u32> = (0..b * l)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) & 255) as u32)
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
    let mut rates = Vec::new();
    for step in 0..steps + 2 {
        let t = std::time::Instant::now();
        model.zero_grad().unwrap();
        model.forward_loss(&ids, &targets, b).expect("forward");
        model.backward().expect("backward");
        clip_grad_norm(&mut model, 1.0).unwrap();
        opt.update(&mut model, 1e-3).expect("update");
        if step >= 2 {
            rates.push((b * l) as f64 / t.elapsed().as_secs_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "L {l:>5}  B {b}  threads {}  params {}  tokens/s median {median:.0} (min {:.0}, max {:.0})  peak RSS {:.0} MB",
        rayon::current_num_threads(),
        model.num_params(),
        rates[0],
        rates[rates.len() - 1],
        peak_memory_mb(Device::Cpu).unwrap_or(f64::NAN)
    );
}
