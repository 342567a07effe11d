//! End to end: a tiny Mamba trained for 300 steps on selective copying reaches a loss far below
//! chance, and its files are complete.

use experiments::metrics::Table;

use crate::common::*;

/// Selective copying with L = 16 noise positions and M = 4 tokens from 14 symbols (chance ln 14).
const TINY_COPY: &str = r#"
name = "copy"
threads = 1
[task]
kind = "selective_copying"
seq_len = 16
vocab_size = 16
[task.selective_copying]
num_tokens = 4
[model.mamba]
d_model = 64
n_layer = 2
d_state = 8
[train]
steps = 300
batch_size = 64
lr = 3e-3
warmup_steps = 10
checkpoint_every = 0
[eval]
batches = 4
"#;

#[test]
fn tiny_mamba_learns_selective_copying() {
    let dir = tmp_dir("e2e");
    let cfg = write(&dir, "c.toml", TINY_COPY);
    run_ok(&dir, &["train", "--config", &cfg]);
    let run = dir.join("runs/copy");
    let metrics = Table::read(&run.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.header,
        [
            "step",
            "tokens",
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "elapsed_s",
            "peak_mem_mb"
        ]
    );
    assert_eq!(metrics.rows.len(), 300);
    assert_eq!(
        metrics.f64s("tokens").unwrap()[299],
        (300 * 64 * (16 + 2 * 4)) as f64
    );
    let eval = Table::read(&run.join("eval.csv")).unwrap();
    let (loss, accuracy) = (
        eval.f64s("loss").unwrap()[0],
        eval.f64s("accuracy").unwrap()[0],
    );
    let chance = 14f64.ln();
    println!(
        "selective copying after 300 steps: eval loss {loss:.4} (chance {chance:.4}), accuracy {accuracy:.4}"
    );
    assert!(loss < 0.3 * chance, "eval loss {loss} vs chance {chance}");
    assert!(accuracy > 0.75, "accuracy {accuracy}");
    for f in [
        "config.toml",
        "run.json",
        "checkpoints/latest.safetensors",
        "checkpoints/final/config.json",
        "checkpoints/final/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
}
