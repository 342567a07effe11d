//! Decoding throughput of the Mamba model on the CPU: tokens/s of the recurrent `step` after a
//! prefill.
//!
//! `cargo run --release -p ssm --example decode_throughput -- [B] [TOKENS] [REPEATS]`
//! (defaults: batch 1, 256 new tokens, 5 repeats after one warm-up; d_model 256, 4 layers,
//! d_state 16, vocab 256, a prefill of 16 tokens). Prints the median tokens/s over the repeats
//! (b · TOKENS tokens each).

use ssm::models::{Decoder, LanguageModel, MambaConfig};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are integers: B TOKENS REPEATS"))
        .collect();
    let b = args.first().copied().unwrap_or(1);
    let tokens = args.get(1).copied().unwrap_or(256);
    let repeats = args.get(2).copied().unwrap_or(5);
    let config = MambaConfig::default(); // d_model 256, 4 layers, d_state 16, vocab 256
    let mut model = LanguageModel::<f32>::new(config, 0).expect("valid config");
    let prompt: Vec<u32> = (0..16 * b).map(|i| (i * 37 % 256) as u32).collect();
    let mut rates = Vec::new();
    for rep in 0..=repeats {
        let mut state = model.zero_state(b).expect("state");
        model
            .forward_state(&prompt, b, &mut state)
            .expect("prefill");
        let mut next: Vec<u32> = (0..b as u32).collect();
        let t = std::time::Instant::now();
        for _ in 0..tokens {
            let logits = model.step(&next, &mut state).expect("step").to_vec();
            for (bi, row) in logits.chunks_exact(model.vocab()).enumerate() {
                next[bi] = (0..row.len())
                    .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                    .unwrap() as u32;
            }
        }
        if rep > 0 {
            rates.push((b * tokens) as f64 / t.elapsed().as_secs_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "B {b}  threads {}  new tokens {tokens}  tokens/s median {:.0} (min {:.0}, max {:.0})",
        rayon::current_num_threads(),
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}
