//! What a run may ask for, checked before anything is allocated or written: every size in a
//! config against a ceiling (so that no size product overflows and no loop runs for days), and the
//! memory the model, a training micro-batch and an evaluation batch need against the machine's
//! memory or the explicit limit `SSM_LAB_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix).
//!
//! The memory estimate is a lower bound (parameters with their gradients and AdamW moments, the
//! activations that the forward certainly keeps, the logits and their gradient), so it refuses only
//! what certainly cannot fit.

use anyhow::{Context, Result, bail};
use ssm::models::ModelConfig;

use crate::config::RunConfig;

/// The variable that sets the memory limit instead of the machine's memory.
pub const MEMORY_LIMIT_VAR: &str = "SSM_LAB_MEMORY_LIMIT";
/// Sequence lengths (training and evaluation).
pub const MAX_LEN: usize = 1 << 24;
/// Sequences per batch (training and evaluation) and evaluation batches.
pub const MAX_BATCH: usize = 1 << 20;
/// Micro-batches per step: more is a larger `batch_size` in disguise, and hours per step.
pub const MAX_GRAD_ACCUM: usize = 1 << 12;
/// Tokens of one optimizer step, and of one whole evaluation over every length.
pub const MAX_TOKENS: u128 = 1 << 27;
/// Steps of the MQAR generator for one batch (K·L per sequence): about ten seconds.
pub const MAX_GENERATOR_WORK: u128 = 1 << 34;
/// CPU threads.
pub const MAX_THREADS: usize = 1 << 10;
/// Selective copying's data tokens.
pub const MAX_COPY_TOKENS: usize = 1 << 20;

fn size(key: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        bail!("config key `{key}`: {value} is beyond reason (at most {max})");
    }
    Ok(())
}

/// The sizes of the run config itself (the model's are checked by `ModelConfig::validate`); runs
/// before anything that multiplies them.
pub fn check_sizes(c: &RunConfig) -> Result<()> {
    size("threads", c.threads, MAX_THREADS)?;
    size("task.seq_len", c.task.seq_len, MAX_LEN)?;
    for &l in &c.eval.lengths {
        size("eval.lengths", l, MAX_LEN)?;
    }
    if let Some(v) = c.task.vocab_size {
        size("task.vocab_size", v, ssm::models::limits::MAX_VOCAB)?;
    }
    if let Some(s) = &c.task.selective_copying {
        size(
            "task.selective_copying.num_tokens",
            s.num_tokens,
            MAX_COPY_TOKENS,
        )?;
    }
    size("train.batch_size", c.train.batch_size, MAX_BATCH)?;
    size("train.grad_accum", c.train.grad_accum, MAX_GRAD_ACCUM)?;
    size("eval.batches", c.eval.batches, MAX_BATCH)?;
    size("eval.batch_size", c.eval.batch_size, MAX_BATCH)
}

/// The input length the model reads for task length `l` (selective copying adds its markers).
fn input_len(c: &RunConfig, l: usize) -> usize {
    l + 2 * c
        .task
        .selective_copying
        .as_ref()
        .map_or(0, |s| s.num_tokens)
}

/// Token counts, positions and memory of a run whose sizes passed [`check_sizes`] and whose model
/// config validated.
pub fn check_run(c: &RunConfig, model: &ModelConfig) -> Result<()> {
    let t = &c.train;
    let train_len = input_len(c, c.task.seq_len);
    let step_tokens = (t.batch_size * t.grad_accum) as u128 * train_len as u128;
    if step_tokens > MAX_TOKENS {
        bail!(
            "config keys `train.batch_size` × `train.grad_accum` × length: {} × {} × {train_len} = {step_tokens} tokens per step, beyond reason (at most {MAX_TOKENS})",
            t.batch_size,
            t.grad_accum
        );
    }
    let eval_b = c.eval_batch_size();
    let eval_lens: Vec<usize> = c.eval_lengths().iter().map(|&l| input_len(c, l)).collect();
    let eval_tokens: u128 = eval_lens
        .iter()
        .map(|&l| (c.eval.batches * eval_b) as u128 * l as u128)
        .sum();
    if eval_tokens > MAX_TOKENS {
        bail!(
            "config keys `eval.batches` × `eval.batch_size` × `eval.lengths`: {eval_tokens} tokens per evaluation, beyond reason (at most {MAX_TOKENS})"
        );
    }
    if let Some(max) = model.max_positions() {
        let longest = eval_lens.iter().copied().chain([train_len]).max();
        if let Some(l) = longest.filter(|&l| l > max) {
            bail!(
                "config key `model.{}.max_seq_len`: the learned position table has {max} positions, but the run reads sequences of {l} tokens (task.seq_len / eval.lengths); raise max_seq_len or use pos_encoding = \"rope\"",
                model.arch()
            );
        }
    }
    let eval_len = eval_lens.iter().copied().max().unwrap_or(train_len);
    if let Some(m) = &c.task.mqar {
        // Drawing K gaps without replacement from a space of about L costs K·L per sequence.
        let work = |tokens: usize| tokens as u128 * m.num_pairs as u128;
        let worst = work(t.batch_size * train_len).max(work(eval_b * eval_len));
        if worst > MAX_GENERATOR_WORK {
            bail!(
                "config keys `task.mqar.num_pairs` × length × batch: generating one batch of {} key-value pairs at length {} costs {worst} steps, beyond reason (at most {MAX_GENERATOR_WORK})",
                m.num_pairs,
                train_len.max(eval_len)
            );
        }
    }
    check_memory(c, model, train_len, eval_b, eval_len)
}

fn check_memory(
    c: &RunConfig,
    model: &ModelConfig,
    train_len: usize,
    eval_b: usize,
    eval_len: usize,
) -> Result<()> {
    let Some((limit, source)) = memory_limit()? else {
        return Ok(());
    };
    let floats = |tokens: usize, per_token: usize| 4.0 * tokens as f64 * per_token as f64;
    let state = 16.0 * model.num_params() as f64;
    let train = floats(
        c.train.batch_size * train_len,
        model.training_floats_per_token(),
    );
    let eval = floats(eval_b * eval_len, eval_floats_per_token(model));
    let total = state + train.max(eval);
    if total <= limit {
        return Ok(());
    }
    let arch = model.arch();
    let culprit = if state >= train.max(eval) {
        format!(
            "parameters with gradients and AdamW moments: {} (model.{arch}: d_model, n_layer, vocabulary)",
            gb(state)
        )
    } else if train >= eval {
        format!(
            "activations of one micro-batch: {} (train.batch_size = {} × length {train_len})",
            gb(train),
            c.train.batch_size
        )
    } else {
        format!(
            "activations of one evaluation batch: {} (eval.batch_size = {eval_b} × length {eval_len} of eval.lengths)",
            gb(eval)
        )
    };
    bail!(
        "the run needs at least {} of memory, more than the {} {source}; the largest part is the {culprit}",
        gb(total),
        gb(limit)
    )
}

/// Logits and a few activations per token of an inference forward.
fn eval_floats_per_token(model: &ModelConfig) -> usize {
    model.training_floats_per_token() / 2 + 4 * model.d_model()
}

/// Refuses an inference model (a checkpoint's or a Hugging Face folder's config) whose weights
/// alone cannot fit, before it is allocated.
pub fn check_inference(model: &ModelConfig, origin: &str) -> Result<()> {
    let bytes = 4.0 * model.num_params() as f64;
    if let Some((limit, source)) = memory_limit()?
        && bytes > limit
    {
        bail!(
            "{origin}: the model's {} parameters need {}, more than the {} {source}",
            model.num_params(),
            gb(bytes),
            gb(limit)
        );
    }
    Ok(())
}

fn gb(bytes: f64) -> String {
    format!("{:.2} GB", bytes / 1e9)
}

/// The memory a run may use and where that number comes from; `None` where neither the variable
/// nor /proc/meminfo says.
pub fn memory_limit() -> Result<Option<(f64, &'static str)>> {
    if let Ok(text) = std::env::var(MEMORY_LIMIT_VAR) {
        let bytes = parse_bytes(&text)
            .with_context(|| format!("{MEMORY_LIMIT_VAR}={text}: expected bytes such as 8G"))?;
        return Ok(Some((bytes, "set by SSM_LAB_MEMORY_LIMIT")));
    }
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    });
    Ok(total.map(|kb| {
        (
            kb * 1024.0,
            "of this machine (set SSM_LAB_MEMORY_LIMIT to change the limit)",
        )
    }))
}

fn parse_bytes(text: &str) -> Result<f64> {
    let t = text.trim();
    let (number, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => bail!("unknown unit `{c}`"),
            };
            (&t[..i], scale)
        }
        _ => (t, 1.0),
    };
    let v: f64 = number.trim().parse().context("not a number")?;
    if !(v.is_finite() && v > 0.0) {
        bail!("must be positive");
    }
    Ok(v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units() {
        assert_eq!(parse_bytes("512").unwrap(), 512.0);
        assert_eq!(parse_bytes("1.5G").unwrap(), 1.5e9);
        assert_eq!(parse_bytes("64m").unwrap(), 64e6);
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3X").is_err());
    }
}
