//! The inference commands: `eval`, `generate` and `logits` on a checkpoint.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ssm::io::tensors::write_tensors;
use ssm::models::generate::Sampling;
use ssm::{Device, Tensor};

use crate::checkpoint::load_for_inference;
use crate::config::{self, RunConfig};
use crate::eval::{EvalResult, evaluate};
use crate::metrics::{EVAL_HEADER, Table, cell};
use crate::model::{Model, Vocabulary};
use crate::tasks::Task;

/// Token ids from "3,1,4,1,5".
pub fn parse_tokens(text: &str) -> Result<Vec<u32>> {
    let tokens = text
        .split(',')
        .map(|t| {
            t.trim().parse::<u32>().with_context(|| {
                format!("--tokens: {t:?} is not a token id (expected a list like 3,1,4)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if tokens.is_empty() {
        bail!("--tokens: needs at least one token");
    }
    Ok(tokens)
}

fn check_vocab(model: &Model, tokens: &[u32]) -> Result<()> {
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= model.vocab()) {
        bail!(
            "--tokens: token {t} is outside the model's vocabulary of {}",
            model.vocab()
        );
    }
    Ok(())
}

/// A checkpoint loaded for inference and moved to `device`.
fn load_on(checkpoint: &Path, device: Device) -> Result<(Model, Option<(RunConfig, u64)>)> {
    let (mut model, config) = load_for_inference(checkpoint)?;
    model.to_device(device)?;
    Ok((model, config))
}

/// Writes the logits (l, v) of one sequence as the f32 tensor `logits`.
pub fn logits(checkpoint: &Path, tokens: &str, out: &Path, device: Device) -> Result<()> {
    let tokens = parse_tokens(tokens)?;
    let (mut model, _) = load_on(checkpoint, device)?;
    check_vocab(&model, &tokens)?;
    let v = model.vocab();
    let logits = model.logits(&tokens, 1)?; // (1, l, v)
    let tensor = Tensor::from_vec([tokens.len(), v], logits)?;
    write_tensors(out, &[("logits".to_string(), tensor)], None)?;
    println!("{}: logits ({}, {v})", out.display(), tokens.len());
    Ok(())
}

/// Evaluates a run checkpoint on its task; `overrides` may change `eval.*` keys and the corpus
/// path (`task.bytes.path`). Prints a table and, with `out`, writes it as CSV.
pub fn eval(
    checkpoint: &Path,
    overrides: &[String],
    out: Option<&Path>,
    device: Device,
) -> Result<Vec<EvalResult>> {
    if let Some(o) = overrides
        .iter()
        .find(|o| !(o.starts_with("eval.") || o.starts_with("task.bytes.path=")))
    {
        bail!("--set {o}: eval may only change `eval.*` keys and `task.bytes.path`");
    }
    let (mut model, config) = load_on(checkpoint, device)?;
    let Some((config, step)) = config else {
        bail!(
            "{}: a Hugging Face folder has no task to evaluate on; give a run folder",
            checkpoint.display()
        );
    };
    let config = config::resolve(
        &config.to_toml(),
        &checkpoint.display().to_string(),
        overrides,
    )?;
    let task = Task::new(&config)?;
    let results = evaluate(&mut model, &task, &config)?;
    println!(
        "{:<6} {:>8} {:>10} {:>9}",
        "split", "length", "loss", "accuracy"
    );
    for r in &results {
        let bpb = r
            .bits_per_byte
            .map_or(String::new(), |b| format!("  {b:.4} bits/byte"));
        println!(
            "{:<6} {:>8} {:>10.4} {:>9.4}{bpb}",
            r.split, r.length, r.loss, r.accuracy
        );
    }
    if let Some(out) = out {
        let rows = results
            .iter()
            .map(|r| {
                vec![
                    step.to_string(),
                    r.split.into(),
                    r.length.to_string(),
                    cell(r.loss),
                    cell(r.accuracy),
                    r.bits_per_byte.map_or(String::new(), cell),
                ]
            })
            .collect();
        Table {
            path: out.to_path_buf(),
            header: EVAL_HEADER.iter().map(|s| s.to_string()).collect(),
            rows,
            torn: false,
        }
        .write(out)?;
    }
    Ok(results)
}

/// How `generate` continues a prompt and what it prints.
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    /// Tokens to generate.
    pub max_new: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Sample among the k most likely tokens; 0 means all.
    pub top_k: usize,
    pub seed: u64,
    /// Print the prompt before the continuation.
    pub echo: bool,
}

/// What `generate` continues.
pub enum Prompt {
    /// Text, for byte-level models.
    Text(String),
    Tokens(String),
}

/// Samples `o.max_new` tokens after the prompt (greedy when the temperature is 0) and shows them
/// as the prompt was given (text or ids), after the prompt when `o.echo`.
pub fn generate(
    checkpoint: &Path,
    prompt: Prompt,
    o: &GenerateOptions,
    device: Device,
) -> Result<String> {
    let GenerateOptions {
        max_new,
        temperature,
        top_k,
        seed,
        echo,
    } = *o;
    let (mut model, _) = load_on(checkpoint, device)?;
    let ids = match &prompt {
        Prompt::Text(_) if model.vocabulary() != Vocabulary::Bytes => bail!(
            "--prompt: text prompts need a byte-level model (a run of task.kind = \"bytes\" or its export); give --tokens"
        ),
        Prompt::Text(t) => t.bytes().map(u32::from).collect(),
        Prompt::Tokens(t) => parse_tokens(t)?,
    };
    if ids.is_empty() {
        bail!("--prompt: needs at least one byte");
    }
    check_vocab(&model, &ids)?;
    let max = model.max_positions().unwrap_or(crate::limits::MAX_LEN);
    if ids.len().saturating_add(max_new) > max {
        bail!(
            "--max-new: {} prompt tokens and {max_new} new ones exceed the {max} positions the model can read",
            ids.len()
        );
    }
    if temperature.is_nan() || temperature < 0.0 {
        bail!("--temperature: must be >= 0 (0 is greedy), got {temperature}");
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_k,
            seed,
        }
    };
    let new = model.generate(&ids, max_new, sampling)?;
    let shown: Vec<u32> = if echo {
        ids.iter().chain(&new).copied().collect()
    } else {
        new
    };
    Ok(match prompt {
        Prompt::Text(_) => {
            let bytes: Vec<u8> = shown.iter().map(|&b| b.min(255) as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Prompt::Tokens(_) => shown
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    })
}
