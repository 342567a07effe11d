//! Token-by-token generation with the recurrent `step` of a model.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::mamba::MambaLM;
use crate::error::{Error, Result};
use crate::tensor::Float;

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from softmax(logits / temperature) restricted to the `top_k` most likely tokens
    /// (all when 0), from a generator seeded with `seed`.
    Sample { temperature: f64, top_k: usize, seed: u64 },
}

/// Picks a token from one row of logits.
pub fn pick<T: Float>(logits: &[T], sampling: Sampling, rng: &mut StdRng) -> u32 {
    let argmax = |xs: &[T]| {
        let mut best = 0;
        for (i, &x) in xs.iter().enumerate() {
            if x > xs[best] {
                best = i;
            }
        }
        best as u32
    };
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample { temperature, top_k, .. } => {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            // Stable sort: ties keep index order, so a seed always gives the same draw.
            order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
            if top_k > 0 {
                order.truncate(top_k);
            }
            let top = logits[order[0]].to_f64();
            let weights: Vec<f64> = order.iter().map(|&i| ((logits[i].to_f64() - top) / temperature).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut u = rng.random::<f64>() * total;
            for (&i, w) in order.iter().zip(&weights) {
                if u < *w {
                    return i as u32;
                }
                u -= w;
            }
            order[order.len() - 1] as u32
        }
    }
}

impl<T: Float> MambaLM<T> {
    /// Continues `prompt` by `n_new` tokens: the prompt is consumed in one parallel forward that
    /// leaves the recurrent state at its end, then each new token costs one `step`.
    pub fn generate(&mut self, prompt: &[u32], n_new: usize, sampling: Sampling) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::config("prompt", "needs at least one token"));
        }
        if let Sampling::Sample { temperature, .. } = sampling
            && (temperature.is_nan() || temperature <= 0.0)
        {
            return Err(Error::config("temperature", format!("must be positive, got {temperature}")));
        }
        let seed = match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = self.zero_state(1);
        let v = self.vocab();
        let logits = self.forward(prompt, 1, Some(&mut state), false)?;
        let last = logits.host()?[(prompt.len() - 1) * v..].to_vec();
        let mut out = Vec::with_capacity(n_new);
        let mut next = pick(&last, sampling, &mut rng);
        for i in 0..n_new {
            out.push(next);
            if i + 1 < n_new {
                let logits = self.step(&[next], &mut state)?;
                next = pick(logits.host()?, sampling, &mut rng);
            }
        }
        Ok(out)
    }
}
