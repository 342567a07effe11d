//! Selective copying (Mamba paper, section 4.1.1): M data tokens at random positions among noise,
//! to be reproduced in order after M markers. The model must select by content, which a
//! time-invariant SSM cannot do.

use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::index::sample;

/// Vocabulary: 0 is noise, 1..=A-2 are data tokens, A-1 is the marker.
pub struct SelectiveCopying {
    /// A.
    pub vocab: usize,
    /// M.
    pub num_tokens: usize,
}

impl SelectiveCopying {
    /// Fills one sequence of L + 2M tokens (L = ids.len() - 2M): the M data tokens sit at sorted
    /// random positions among the first L + M, noise (0) elsewhere, then M markers. The
    /// target of the i-th marker position is the i-th data token; nothing else is scored.
    pub fn example(&self, rng: &mut StdRng, ids: &mut [u32], targets: &mut [i64]) {
        let m = self.num_tokens;
        let span = ids.len() - m;
        let mut positions = sample(rng, span, m).into_vec();
        positions.sort_unstable();
        ids.fill(0);
        targets.fill(super::IGNORE);
        for (i, &p) in positions.iter().enumerate() {
            let token = rng.random_range(1..=self.vocab as u32 - 2);
            ids[p] = token;
            ids[span + i] = self.vocab as u32 - 1;
            targets[span + i] = token as i64;
        }
    }
}
