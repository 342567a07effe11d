//! Decoding rows of `ssm-lab bench`: greedy generation with each layer's recurrent `step` (the
//! Mamba state updated in place, attention reading its KV cache) after a prefill of the context by
//! the parallel forward, for every architecture of the training rows, batch size and context
//! length; the inference-throughput comparison of the Mamba paper (its Figure 8, right).

use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ssm::device::synchronize;
use ssm::models::{LanguageModel, ModelConfig};
use ssm::nn::Module;

use super::{BenchOptions, Peak};

/// Positions per sequence that one prefill forward takes: longer contexts are read in pieces,
/// each continuing the state, which bounds the activations a forward holds.
const PREFILL_PIECE: usize = 1024;

/// One row of the decoding table.
#[derive(Clone, Debug)]
pub struct DecodeRow {
    pub arch: &'static str,
    pub b: usize,
    /// Tokens per sequence before decoding starts.
    pub context: usize,
    /// Context tokens per second of the prefill (b · context over its time, one run).
    pub prefill_tokens_per_s: f64,
    /// New tokens per second over the batch (b per step), median of the repeats.
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    /// How far the peak memory rose over prefill and decoding: the states and KV caches, the
    /// prefill's activations.
    pub peak_rise_mb: Option<f64>,
}

/// Prefills `context` random tokens into `b` sequences, then times `o.decode_tokens` greedy steps
/// `o.repeats` times after two warm-up steps.
pub(crate) fn decode_row(
    o: &BenchOptions,
    arch: &'static str,
    config: ModelConfig,
    b: usize,
    context: usize,
) -> Result<DecodeRow> {
    let mut model = LanguageModel::<f32>::new(config, 0)?;
    model.to_device(o.device)?;
    let mut rng = StdRng::seed_from_u64(13);
    let ids: Vec<u32> = (0..b * context).map(|_| rng.random_range(0..256)).collect();
    let peak = Peak::reset(o.device);
    let mut state = model.zero_state(b)?;
    let started = Instant::now();
    let (mut logits, mut piece_len) = (Vec::new(), 0);
    for start in (0..context).step_by(PREFILL_PIECE) {
        piece_len = PREFILL_PIECE.min(context - start);
        let piece: Vec<u32> = (0..b)
            .flat_map(|s| ids[s * context + start..][..piece_len].iter().copied())
            .collect();
        let out = model.forward(&piece, b, Some(&mut state), false)?;
        // Only the last piece's logits choose the first new tokens.
        if start + piece_len == context {
            logits = out.to_host_vec()?;
        }
    }
    synchronize(o.device)?;
    let prefill_s = started.elapsed().as_secs_f64();
    let v = model.vocab();
    // Logits (b, piece_len, v): each sequence's last position chooses its first new token.
    let mut next = greedy(&logits, v, piece_len);
    let mut step = |next: &mut Vec<u32>| -> Result<()> {
        *next = greedy(&model.step(next, &mut state)?.to_host_vec()?, v, 1);
        Ok(())
    };
    for _ in 0..2 {
        step(&mut next)?;
    }
    let mut times = Vec::with_capacity(o.repeats);
    for _ in 0..o.repeats {
        let t = Instant::now();
        for _ in 0..o.decode_tokens {
            step(&mut next)?;
        }
        synchronize(o.device)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let s = times[times.len() / 2];
    Ok(DecodeRow {
        arch,
        b,
        context,
        prefill_tokens_per_s: (b * context) as f64 / prefill_s,
        tokens_per_s: (b * o.decode_tokens) as f64 / s,
        ms_per_step: s * 1e3 / o.decode_tokens as f64,
        peak_rise_mb: peak.above_start(),
    })
}

/// The most likely token at the last of every `rows` positions of logits (·, rows, v).
fn greedy(logits: &[f32], v: usize, rows: usize) -> Vec<u32> {
    logits
        .chunks_exact(v * rows)
        .map(|seq| {
            let last = &seq[(rows - 1) * v..];
            (0..v)
                .max_by(|&i, &j| last[i].total_cmp(&last[j]))
                .unwrap_or(0) as u32
        })
        .collect()
}

/// The header of the decoding table.
pub fn decode_header() -> String {
    format!(
        "{:<12} {:>4} {:>8} {:>12} {:>11} {:>9} {:>9}",
        "arch", "b", "context", "prefill t/s", "tokens/s", "ms/step", "peak MiB"
    )
}

/// One row of the decoding table.
pub fn decode_line(r: &DecodeRow) -> String {
    format!(
        "{:<12} {:>4} {:>8} {:>12.0} {:>11.0} {:>9.3} {:>9}",
        r.arch,
        r.b,
        r.context,
        r.prefill_tokens_per_s,
        r.tokens_per_s,
        r.ms_per_step,
        r.peak_rise_mb.map_or("-".into(), |m| format!("{m:.1}"))
    )
}
