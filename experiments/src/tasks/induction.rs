//! Induction heads (Mamba paper, section 4.1.2): after a trigger token comes an answer token; at
//! the end the trigger appears again and the model must recall the answer. Trained at one length
//! and tested at many, it measures length generalisation.

use rand::RngExt;
use rand::rngs::StdRng;

/// Vocabulary: 0..V-2 are ordinary tokens, V-1 is the trigger.
pub struct InductionHeads {
    /// V.
    pub vocab: usize,
}

impl InductionHeads {
    /// Fills one sequence of L tokens: ordinary tokens drawn uniformly, the trigger at a random
    /// position p <= L-3 followed by the answer at p+1, and the trigger again at L-1, whose target
    /// is the answer; only that last position is scored.
    pub fn example(&self, rng: &mut StdRng, ids: &mut [u32], targets: &mut [i64]) {
        let l = ids.len();
        let trigger = self.vocab as u32 - 1;
        for id in ids.iter_mut() {
            *id = rng.random_range(0..trigger);
        }
        targets.fill(super::IGNORE);
        let p = rng.random_range(0..l - 2);
        let answer = ids[p + 1];
        ids[p] = trigger;
        ids[l - 1] = trigger;
        targets[l - 1] = answer as i64;
    }
}
