//! Byte-level language modelling on a text file: the first part trains, the last
//! `val_fraction` validates; the model predicts each next byte, and losses convert to bits per byte.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::RngExt;
use rand::rngs::StdRng;

/// Bytes of the training and validation parts of a file of `size` bytes.
pub fn split_sizes(size: usize, val_fraction: f64) -> (usize, usize) {
    let val = ((size as f64) * val_fraction).round() as usize;
    (size - val, val)
}

pub struct ByteCorpus {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
}

impl ByteCorpus {
    pub fn open(path: &Path, val_fraction: f64) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "config key `task.bytes.path`: cannot read {}",
                path.display()
            )
        })?;
        let (train, _) = split_sizes(bytes.len(), val_fraction);
        if train < 2 || bytes.len() - train < 2 {
            bail!(
                "config key `task.bytes.path`: {} is too short to split ({} bytes)",
                path.display(),
                bytes.len()
            );
        }
        Ok(ByteCorpus {
            val: bytes[train..].to_vec(),
            train: bytes[..train].to_vec(),
        })
    }

    /// A uniformly random training window: ids are bytes t..t+L, targets bytes t+1..t+L+1.
    pub fn train_example(&self, rng: &mut StdRng, ids: &mut [u32], targets: &mut [i64]) {
        let start = rng.random_range(0..self.train.len() - ids.len());
        window(&self.train, start, ids, targets);
    }

    /// Validation windows `index·b .. (index+1)·b` of `count·b` windows spread evenly over the
    /// validation text (they overlap when the text is short).
    pub fn val_windows(
        &self,
        index: usize,
        count: usize,
        ids: &mut [u32],
        targets: &mut [i64],
        l: usize,
    ) {
        let b = ids.len() / l;
        let total = count * b;
        let room = self.val.len() - l - 1;
        for (j, (i, t)) in ids.chunks_mut(l).zip(targets.chunks_mut(l)).enumerate() {
            let w = index * b + j;
            let start = if total > 1 { w * room / (total - 1) } else { 0 };
            window(&self.val, start, i, t);
        }
    }
}

fn window(text: &[u8], start: usize, ids: &mut [u32], targets: &mut [i64]) {
    for (j, (id, t)) in ids.iter_mut().zip(targets.iter_mut()).enumerate() {
        *id = text[start + j] as u32;
        *t = text[start + j + 1] as i64;
    }
}
