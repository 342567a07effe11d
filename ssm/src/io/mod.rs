//! Checkpoints: safetensors files (never executable, unlike pickles) and Hugging Face folders.

pub mod fault;
pub mod hf;
pub mod hf_mamba2;
pub mod tensors;
pub mod train_state;

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename, fsync
/// of the folder. A crash leaves either the old file or the new one, never half of one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::checkpoint(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        fault::point("create", &tmp);
        let mut f = std::fs::File::create(&tmp)?;
        fault::point("write", &tmp);
        f.write_all(bytes)?;
        fault::point("fsync", &tmp);
        f.sync_all()?;
        fault::point("rename", path);
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Refuses a validated config whose parameters cannot all be in the weights file `weights` (each
/// value takes at least `min_bytes` there: 2 for files that may hold f16/bf16), before the model
/// is allocated: a config.json that lies about its sizes is an error, not an allocation failure.
pub fn check_weights_fit(
    config: &crate::models::ModelConfig,
    weights: &Path,
    min_bytes: u64,
) -> Result<()> {
    let size = std::fs::metadata(weights)
        .map_err(|e| Error::io(weights, e))?
        .len();
    let need = config.num_params() as u64;
    if need.saturating_mul(min_bytes) > size {
        return Err(Error::checkpoint(
            weights,
            format!(
                "the config describes {need} parameters, but the file has only {size} bytes; the config and the weights do not belong together"
            ),
        ));
    }
    Ok(())
}

/// Renames `from` to `to` (a file or a folder) and makes the rename durable.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fault::point("rename", to);
    std::fs::rename(from, to)
        .and_then(|()| sync_parent(to))
        .map_err(|e| Error::io(to, e))
}

/// Creates `dir` and its missing parents.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fault::point("mkdir", dir);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Removes the folder `dir` with everything in it, if it exists.
pub fn remove_dir_all(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    fault::point("remove", dir);
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            fault::point("fsync", dir);
            std::fs::File::open(dir)?.sync_all()
        }
        None => Ok(()),
    }
}
