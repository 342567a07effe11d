//! Tasks: deterministic generators of (ids, targets) batches. Every batch comes from its own
//! generator seeded from (run seed, stream, step, micro-batch), so the data position of a run is
//! just its step: resuming needs no RNG state, and evaluation data never depends on training.

pub mod bytes;
pub mod induction;
pub mod mqar;
pub mod selective_copying;

use anyhow::Result;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::config::{RunConfig, TaskKind};

/// Targets at positions that are not scored (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// `b` sequences of `l` tokens, row-major: `ids` (b · l) and `targets` (b · l), where
/// `targets[i]` is the token the model must output at position i, or `IGNORE`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub targets: Vec<i64>,
    pub b: usize,
    pub l: usize,
}

impl Batch {
    fn new(b: usize, l: usize) -> Self {
        Batch {
            ids: vec![0; b * l],
            targets: vec![IGNORE; b * l],
            b,
            l,
        }
    }

    /// Scored positions.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// Independent data streams of a run.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Train,
    Eval,
}

/// splitmix64: a well-mixed 64-bit hash, so neighbouring steps get unrelated generators.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The generator of one batch: `a` and `b` are (step, micro-batch) for training and (length,
/// batch index) for evaluation.
pub fn batch_rng(seed: u64, stream: Stream, a: u64, b: u64) -> StdRng {
    let s = mix(mix(mix(seed ^ mix(stream as u64 + 1)) ^ a) ^ b);
    StdRng::seed_from_u64(s)
}

/// A task ready to produce batches.
pub enum Task {
    SelectiveCopying(selective_copying::SelectiveCopying),
    InductionHeads(induction::InductionHeads),
    Mqar(mqar::Mqar),
    Bytes(bytes::ByteCorpus),
}

impl Task {
    /// Builds the task of a validated config (reads the text file of the bytes task).
    pub fn new(c: &RunConfig) -> Result<Task> {
        let v = c.task_vocab();
        Ok(match c.task.kind {
            TaskKind::SelectiveCopying => {
                let m = c
                    .task
                    .selective_copying
                    .as_ref()
                    .expect("resolved config")
                    .num_tokens;
                Task::SelectiveCopying(selective_copying::SelectiveCopying {
                    vocab: v,
                    num_tokens: m,
                })
            }
            TaskKind::InductionHeads => {
                Task::InductionHeads(induction::InductionHeads { vocab: v })
            }
            TaskKind::Mqar => {
                let m = c.task.mqar.as_ref().expect("resolved config");
                Task::Mqar(mqar::Mqar {
                    vocab: v,
                    num_pairs: m.num_pairs,
                    power_a: m.power_a,
                })
            }
            TaskKind::Bytes => {
                let b = c.task.bytes.as_ref().expect("resolved config");
                Task::Bytes(bytes::ByteCorpus::open(&b.path, b.val_fraction)?)
            }
        })
    }

    /// Tokens per sequence for a configured length (selective copying adds 2M).
    pub fn input_len(&self, length: usize) -> usize {
        match self {
            Task::SelectiveCopying(t) => length + 2 * t.num_tokens,
            _ => length,
        }
    }

    /// Loss of a model that knows only which positions are scored and the range of the answers.
    pub fn chance_loss(&self) -> f64 {
        match self {
            Task::SelectiveCopying(t) => ((t.vocab - 2) as f64).ln(),
            Task::InductionHeads(t) => ((t.vocab - 1) as f64).ln(),
            Task::Mqar(t) => ((t.vocab - t.vocab / 2) as f64).ln(),
            Task::Bytes(_) => 256f64.ln(),
        }
    }

    /// Name of the held-out split in eval.csv.
    pub fn eval_split(&self) -> &'static str {
        match self {
            Task::Bytes(_) => "val",
            _ => "test",
        }
    }

    /// One sequence: a random training window for the byte corpus.
    fn example(&self, rng: &mut StdRng, ids: &mut [u32], targets: &mut [i64]) {
        match self {
            Task::SelectiveCopying(t) => t.example(rng, ids, targets),
            Task::InductionHeads(t) => t.example(rng, ids, targets),
            Task::Mqar(t) => t.example(rng, ids, targets),
            Task::Bytes(c) => c.train_example(rng, ids, targets),
        }
    }

    fn batch(&self, rng: &mut StdRng, b: usize, length: usize) -> Batch {
        let l = self.input_len(length);
        let mut batch = Batch::new(b, l);
        for (ids, targets) in batch.ids.chunks_mut(l).zip(batch.targets.chunks_mut(l)) {
            self.example(rng, ids, targets);
        }
        batch
    }

    /// Training micro-batch `micro` of step `step`.
    pub fn train_batch(&self, seed: u64, step: u64, micro: u64, b: usize, length: usize) -> Batch {
        self.batch(&mut batch_rng(seed, Stream::Train, step, micro), b, length)
    }

    /// Evaluation batch `index` (of `count`) at `length`, the same on every call: evenly spread
    /// validation windows for the byte corpus, fresh samples for the synthetic tasks.
    pub fn eval_batch(
        &self,
        seed: u64,
        index: usize,
        count: usize,
        b: usize,
        length: usize,
    ) -> Batch {
        match self {
            Task::Bytes(c) => {
                let mut batch = Batch::new(b, length);
                c.val_windows(index, count, &mut batch.ids, &mut batch.targets, length);
                batch
            }
            _ => self.batch(
                &mut batch_rng(seed, Stream::Eval, length as u64, index as u64),
                b,
                length,
            ),
        }
    }
}
