//! Multi-query associative recall, zoology's `multiquery_ar` (Arora et al., 2023): K key-value
//! pairs, then the K keys queried again at gaps drawn from a power law, random tokens between.

use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::index::sample;

/// Keys come from [1, V/2), values from [V/2, V).
pub struct Mqar {
    /// V.
    pub vocab: usize,
    /// K.
    pub num_pairs: usize,
    /// a of p_i ∝ a·i^(a-1).
    pub power_a: f64,
}

impl Mqar {
    /// Fills one sequence of L tokens (L even, 4K <= L, V > L): positions 0..2K hold k_1 v_1 ...
    /// k_K v_K with distinct keys and distinct values; query i sits at 2K + 2·g_i where the gaps
    /// g_i are distinct, drawn without replacement from [0, (L-2K)/2) with probability
    /// proportional to a·(g+1)^(a-1); its target is v_i. Every other position holds a uniform
    /// random token of [0, V) and is not scored.
    pub fn example(&self, rng: &mut StdRng, ids: &mut [u32], targets: &mut [i64]) {
        let (v, k, l) = (self.vocab, self.num_pairs, ids.len());
        let half = v / 2;
        let keys: Vec<u32> = sample(rng, half - 1, k)
            .iter()
            .map(|i| (i + 1) as u32)
            .collect();
        let values: Vec<u32> = sample(rng, v - half, k)
            .iter()
            .map(|i| (i + half) as u32)
            .collect();
        let context = 2 * k;
        let gaps = power_law_gaps(rng, (l - context) / 2, k, self.power_a);
        for id in ids[context..].iter_mut() {
            *id = rng.random_range(0..v as u32);
        }
        targets.fill(super::IGNORE);
        for i in 0..k {
            ids[2 * i] = keys[i];
            ids[2 * i + 1] = values[i];
            let q = context + 2 * gaps[i];
            ids[q] = keys[i];
            targets[q] = values[i] as i64;
        }
    }
}

/// `k` distinct gaps from [0, space), drawn one after another with probability proportional to
/// a·(g+1)^(a-1) among those not yet drawn (numpy's `choice(replace=False, p=...)`).
fn power_law_gaps(rng: &mut StdRng, space: usize, k: usize, a: f64) -> Vec<usize> {
    let mut weights: Vec<f64> = (1..=space).map(|i| a * (i as f64).powf(a - 1.0)).collect();
    let mut total: f64 = weights.iter().sum();
    let mut gaps = Vec::with_capacity(k);
    for _ in 0..k {
        let mut u = rng.random::<f64>() * total;
        // Rounding can leave u past the last weight: fall back to the last gap still available.
        let mut pick = weights.iter().rposition(|&w| w > 0.0).expect("k <= space");
        for (g, &w) in weights.iter().enumerate() {
            if w > 0.0 && u < w {
                pick = g;
                break;
            }
            u -= w;
        }
        total -= weights[pick];
        weights[pick] = 0.0;
        gaps.push(pick);
    }
    gaps
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn gaps_are_distinct_and_favour_short_ones() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut first = 0;
        for _ in 0..200 {
            let mut g = power_law_gaps(&mut rng, 100, 10, 0.01);
            if g.contains(&0) {
                first += 1;
            }
            g.sort_unstable();
            g.dedup();
            assert_eq!(g.len(), 10);
            assert!(g.iter().all(|&x| x < 100));
        }
        // With a = 0.01, p_1 is about 0.19 of the mass among 100 gaps: gap 0 is nearly always drawn.
        assert!(first > 150, "{first}");
    }
}
