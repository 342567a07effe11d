//! Token-by-token generation with the recurrent `step` of a model.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from softmax(logits / temperature) restricted to the `top_k` most likely tokens
    /// (all when 0), from a generator seeded with `seed`.
    Sample {
        temperature: f64,
        top_k: usize,
        seed: u64,
    },
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
        Sampling::Sample {
            temperature, top_k, ..
        } => {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            // Stable sort: ties keep index order, so a seed always gives the same draw.
            order.sort_by(|&a, &b| {
                logits[b]
                    .partial_cmp(&logits[a])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if top_k > 0 {
                order.truncate(top_k);
            }
            let top = logits[order[0]].to_f64();
            let weights: Vec<f64> = order
                .iter()
                .map(|&i| ((logits[i].to_f64() - top) / temperature).exp())
                .collect();
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

/// What token-by-token generation needs of a model: a decoding state (recurrent state, KV cache
/// or both), a forward that continues it, and a one-token step.
pub trait Decoder<T: Float> {
    type State;
    /// Columns of the logits.
    fn vocab(&self) -> usize;
    /// A fresh decoding state for `b` sequences.
    fn zero_state(&self, b: usize) -> Result<Self::State>;
    /// Logits (b, l, v) of `ids` (b · l) continuing `state`, which is advanced past them.
    fn forward_state(
        &mut self,
        ids: &[u32],
        b: usize,
        state: &mut Self::State,
    ) -> Result<&Tensor<T>>;
    /// Logits (b, v) for one new token per sequence, advancing `state`.
    fn step(&mut self, tokens: &[u32], state: &mut Self::State) -> Result<Tensor<T>>;

    /// Continues `prompt` by `n_new` tokens (see [`generate`]).
    fn generate(&mut self, prompt: &[u32], n_new: usize, sampling: Sampling) -> Result<Vec<u32>> {
        generate(self, prompt, n_new, sampling)
    }
}

/// Continues `prompt` by `n_new` tokens: the prompt is consumed in one parallel forward that
/// leaves the decoding state at its end, then each new token costs one `step`.
pub fn generate<T: Float, M: Decoder<T> + ?Sized>(
    model: &mut M,
    prompt: &[u32],
    n_new: usize,
    sampling: Sampling,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::config("prompt", "needs at least one token"));
    }
    if let Sampling::Sample { temperature, .. } = sampling
        && (temperature.is_nan() || temperature <= 0.0)
    {
        return Err(Error::config(
            "temperature",
            format!("must be positive, got {temperature}"),
        ));
    }
    let seed = match sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut state = model.zero_state(1)?;
    let v = model.vocab();
    let logits = model.forward_state(prompt, 1, &mut state)?;
    let last = logits.to_host_vec()?[(prompt.len() - 1) * v..].to_vec();
    // Reserved up to a bound: a huge `n_new` fails at the first error, not in the allocator.
    let mut out = Vec::with_capacity(n_new.min(1 << 16));
    let mut next = pick(&last, sampling, &mut rng);
    for i in 0..n_new {
        out.push(next);
        if i + 1 < n_new {
            let logits = model.step(&[next], &mut state)?;
            next = pick(&logits.to_host_vec()?, sampling, &mut rng);
        }
    }
    Ok(out)
}
