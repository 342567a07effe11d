//! Evaluation: loss and accuracy on the scored positions of fixed held-out batches, at every test
//! length of the run (bits per byte for the byte corpus).

use anyhow::Result;

use crate::config::RunConfig;
use crate::model::Model;
use crate::tasks::{IGNORE, Task};

/// One line of eval.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    pub split: &'static str,
    pub length: usize,
    /// Mean cross-entropy in nats over the scored positions.
    pub loss: f64,
    /// Fraction of scored positions whose argmax is the target.
    pub accuracy: f64,
    /// loss / ln 2 for the byte corpus, where each token is one byte.
    pub bits_per_byte: Option<f64>,
}

/// Evaluates `model` at every length of `config.eval_lengths()`.
pub fn evaluate(model: &mut Model, task: &Task, config: &RunConfig) -> Result<Vec<EvalResult>> {
    config
        .eval_lengths()
        .into_iter()
        .map(|length| evaluate_length(model, task, config, length))
        .collect()
}

pub fn evaluate_length(
    model: &mut Model,
    task: &Task,
    config: &RunConfig,
    length: usize,
) -> Result<EvalResult> {
    let (batches, b) = (config.eval.batches, config.eval_batch_size());
    let v = model.vocab();
    let (mut loss, mut correct, mut count) = (0.0f64, 0usize, 0usize);
    for i in 0..batches {
        let batch = task.eval_batch(config.seed, i, batches, b, length);
        let logits = model.logits(&batch.ids, b)?; // (b, l, v)
        for (row, &target) in logits.chunks_exact(v).zip(&batch.targets) {
            if target == IGNORE {
                continue;
            }
            let (nll, argmax) = nll_and_argmax(row, target as usize);
            loss += nll;
            correct += (argmax == target as usize) as usize;
            count += 1;
        }
    }
    let loss = loss / count.max(1) as f64;
    let bits_per_byte = matches!(task, Task::Bytes(_)).then(|| loss / std::f64::consts::LN_2);
    Ok(EvalResult {
        split: task.eval_split(),
        length,
        loss,
        accuracy: correct as f64 / count.max(1) as f64,
        bits_per_byte,
    })
}

/// −log softmax(row)[target] in f64, and the index of the largest logit (the first on ties).
fn nll_and_argmax(row: &[f32], target: usize) -> (f64, usize) {
    let mut argmax = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[argmax] {
            argmax = i;
        }
    }
    let max = row[argmax] as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    (lse - row[target] as f64, argmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_matches_log_softmax() {
        let (nll, arg) = nll_and_argmax(&[0.0, 1.0, 2.0], 1);
        let want = -(1f64.exp() / (1.0 + 1f64.exp() + 2f64.exp())).ln();
        assert!((nll - want).abs() < 1e-12);
        assert_eq!(arg, 2);
    }
}
