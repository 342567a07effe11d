//! Byte-level language modelling on a text file or a folder of documents. A file trains on its
//! first part and validates on its last `val_fraction`; a folder (one document per file, such as
//! the plays that `scripts/fetch-shakespeare` writes to `data/shakespeare/`) holds out whole
//! documents, every k-th in name order with k = round(1 / val_fraction), so that no validation
//! text was seen in training, not even a neighbouring line of it. The model predicts each next
//! byte, and losses convert to bits per byte.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::RngExt;
use rand::rngs::StdRng;

/// One piece of the corpus: a file's bytes in the source (the files concatenated in name
/// order), and which side of the split it is on.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub file: PathBuf,
    /// Bytes of the source: of the file itself for a single file, of the concatenation in name
    /// order for a folder.
    pub source: Range<usize>,
    pub held_out: bool,
}

/// The pieces of the corpus at `path` and their split, from the file sizes alone: whole
/// documents of a folder, the tail of a single file.
pub fn split(path: &Path, val_fraction: f64) -> Result<Vec<Piece>> {
    let key = "config key `task.bytes.path`";
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?;
    if !meta.is_dir() {
        let size = meta.len() as usize;
        let val = ((size as f64) * val_fraction).round() as usize;
        let piece = |source, held_out| Piece {
            file: path.to_path_buf(),
            source,
            held_out,
        };
        return Ok(vec![
            piece(0..size - val, false),
            piece(size - val..size, true),
        ]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{key}: cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let every = ((1.0 / val_fraction).round() as usize).max(2);
    if files.len() < every {
        bail!(
            "{key}: {} holds {} documents; holding out every {every}th (task.bytes.val_fraction = {val_fraction}) needs at least {every}",
            path.display(),
            files.len()
        );
    }
    let mut start = 0;
    let mut pieces = Vec::with_capacity(files.len());
    for (i, file) in files.into_iter().enumerate() {
        let size = std::fs::metadata(&file)
            .with_context(|| format!("{key}: cannot read {}", file.display()))?
            .len() as usize;
        pieces.push(Piece {
            file,
            source: start..start + size,
            held_out: i % every == every - 1,
        });
        start += size;
    }
    Ok(pieces)
}

/// Bytes of the training and validation sides of a split.
pub fn split_sizes(pieces: &[Piece]) -> (usize, usize) {
    let side = |held_out: bool| -> usize {
        pieces
            .iter()
            .filter(|p| p.held_out == held_out)
            .map(|p| p.source.len())
            .sum()
    };
    (side(false), side(true))
}

pub struct ByteCorpus {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
    /// Where each side's bytes came from.
    pub pieces: Vec<Piece>,
}

impl ByteCorpus {
    pub fn open(path: &Path, val_fraction: f64) -> Result<Self> {
        let pieces = split(path, val_fraction)?;
        let read = |file: &Path| {
            std::fs::read(file).with_context(|| {
                format!(
                    "config key `task.bytes.path`: cannot read {}",
                    file.display()
                )
            })
        };
        let (mut train, mut val) = (Vec::new(), Vec::new());
        // A folder's pieces are whole files; a single file's are ranges of it, read once.
        let whole = if path.is_dir() {
            None
        } else {
            Some(read(path)?)
        };
        for p in &pieces {
            let part = match &whole {
                Some(bytes) => bytes.get(p.source.clone()).with_context(|| {
                    format!(
                        "config key `task.bytes.path`: {} changed size while read",
                        path.display()
                    )
                })?,
                None => &read(&p.file)?,
            };
            if p.held_out { &mut val } else { &mut train }.extend_from_slice(part);
        }
        if train.len() < 2 || val.len() < 2 {
            bail!(
                "config key `task.bytes.path`: {} is too short to split ({} training and {} validation bytes)",
                path.display(),
                train.len(),
                val.len()
            );
        }
        Ok(ByteCorpus { train, val, pieces })
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
