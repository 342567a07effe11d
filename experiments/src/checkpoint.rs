//! Run checkpoints. `checkpoints/latest.safetensors` holds everything a run needs to continue
//! bit-identically (parameters, AdamW moments and step, the step that is also the data position,
//! the elapsed time and the config), written atomically and replaced at each save.
//! `checkpoints/final/` holds the trained weights for other tools (a Hugging Face folder for Mamba).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use ssm::io::train_state::{load_params, load_train_state, read_state, save_train_state};
use ssm::optim::AdamW;

use crate::config::{self, RunConfig};
use crate::model::Model;

pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const LATEST: &str = "latest.safetensors";
pub const FINAL: &str = "final";
pub const CONFIG_FILE: &str = "config.toml";

/// The run's progress, stored in the checkpoint's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done; the next step draws the batches of step + 1.
    pub step: u64,
    /// Wall time of the run so far, over all its sessions.
    pub elapsed_s: f64,
    /// CPU threads the run used (bit-identical results need the same count).
    pub threads: usize,
    /// The resolved config as TOML.
    pub config: String,
    /// Steps since the last metrics row and the sums of their losses and gradient norms (as f64
    /// bits, so that they reload exactly): a row averages its whole interval even across a resume.
    pub interval: Interval,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Interval {
    pub steps: u64,
    pub loss_sum_bits: u64,
    pub grad_norm_sum_bits: u64,
}

impl Interval {
    pub fn add(&mut self, loss: f64, grad_norm: f64) {
        self.steps += 1;
        self.loss_sum_bits = (f64::from_bits(self.loss_sum_bits) + loss).to_bits();
        self.grad_norm_sum_bits = (f64::from_bits(self.grad_norm_sum_bits) + grad_norm).to_bits();
    }

    /// Mean loss and gradient norm over the interval.
    pub fn means(&self) -> (f64, f64) {
        let n = self.steps as f64;
        (
            f64::from_bits(self.loss_sum_bits) / n,
            f64::from_bits(self.grad_norm_sum_bits) / n,
        )
    }
}

pub fn latest_path(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINT_DIR).join(LATEST)
}

pub fn save(
    run_dir: &Path,
    model: &mut Model,
    opt: &AdamW<f32>,
    progress: &Progress,
) -> Result<()> {
    let state = serde_json::to_value(progress).expect("progress serializes");
    save_train_state(&latest_path(run_dir), model.module(), opt, &state)?;
    Ok(())
}

/// The step of the run's latest checkpoint, if it has a readable one.
pub fn saved_step(run_dir: &Path) -> Option<u64> {
    let state = read_state(&latest_path(run_dir)).ok()?;
    serde_json::from_value::<Progress>(state)
        .ok()
        .map(|p| p.step)
}

/// Restores model and optimizer from the run's latest checkpoint.
pub fn restore(run_dir: &Path, model: &mut Model, opt: &mut AdamW<f32>) -> Result<Progress> {
    let path = latest_path(run_dir);
    let state = load_train_state(&path, model.module(), opt)?;
    model.check_finite(&path.display().to_string())?;
    serde_json::from_value(state)
        .with_context(|| format!("{}: metadata `state` has the wrong fields", path.display()))
}

/// Writes the final weights for other tools into `checkpoints/final/`, atomically: the folder is
/// assembled aside and renamed into place, so it is either the complete export or absent (a kill
/// midway leaves the previous one or none, and the next resume redoes it).
pub fn export_final(run_dir: &Path, model: &mut Model) -> Result<()> {
    let dir = run_dir.join(CHECKPOINT_DIR);
    let (staging, previous) = (dir.join(".final.tmp"), dir.join(".final.old"));
    ssm::io::remove_dir_all(&staging)?;
    model.export(&staging)?;
    let target = dir.join(FINAL);
    if target.exists() {
        ssm::io::remove_dir_all(&previous)?;
        ssm::io::rename(&target, &previous)?;
    }
    ssm::io::rename(&staging, &target)?;
    ssm::io::remove_dir_all(&previous)?;
    Ok(())
}

/// Whether `checkpoints/final/` holds exactly `model`'s parameters (bit for bit); an export that
/// is missing, unreadable or stale is `Err` with the reason.
pub fn verify_final(run_dir: &Path, model: &mut Model) -> Result<()> {
    let dir = run_dir.join(CHECKPOINT_DIR).join(FINAL);
    if !dir.exists() {
        bail!("{}: missing", dir.display());
    }
    let (mine, exported) = (
        param_values(model)?,
        param_values(&mut Model::load_folder(&dir)?)?,
    );
    if mine.len() != exported.len() {
        bail!("{}: holds another model", dir.display());
    }
    for ((name, x), (_, y)) in mine.iter().zip(&exported) {
        if x.len() != y.len() || x.iter().zip(y).any(|(a, b)| a.to_bits() != b.to_bits()) {
            bail!(
                "{}: tensor `{name}` differs from the last checkpoint",
                dir.display()
            );
        }
    }
    Ok(())
}

fn param_values(model: &mut Model) -> Result<Vec<(String, Vec<f32>)>> {
    let mut values = Vec::new();
    model.module().try_visit_params(&mut |name, p| {
        values.push((name.to_string(), p.value.to_host_vec()?));
        Ok(())
    })?;
    Ok(values)
}

/// A model for inference with the run config and the step of its checkpoint, from any of: a
/// Hugging Face folder (config.json + model.safetensors; no config), a run folder, a run's
/// checkpoints folder, or a training checkpoint file.
pub fn load_for_inference(path: &Path) -> Result<(Model, Option<(RunConfig, u64)>)> {
    if path.is_dir() && path.join(ssm::io::hf::CONFIG_FILE).exists() {
        return Ok((Model::load_folder(path)?, None));
    }
    let file = if path.is_file() {
        path.to_path_buf()
    } else if path.join(CHECKPOINT_DIR).join(LATEST).exists() {
        latest_path(path)
    } else if path.join(LATEST).exists() {
        path.join(LATEST)
    } else if path.exists() {
        bail!(
            "{}: not a checkpoint: expected a Hugging Face folder (config.json), a run folder (checkpoints/{LATEST}) or a training checkpoint file",
            path.display()
        );
    } else {
        bail!("{}: no such file or folder", path.display());
    };
    let progress: Progress = serde_json::from_value(read_state(&file)?)
        .with_context(|| format!("{}: metadata `state` has the wrong fields", file.display()))?;
    let origin = format!("{} (embedded config)", file.display());
    let config = config::parse(&progress.config, &origin, &[])?;
    let model_config = config.model_config();
    model_config.validate().with_context(|| origin.clone())?;
    crate::limits::check_inference(&model_config, &origin)?;
    ssm::io::check_weights_fit(&model_config, &file, 4)?;
    let mut model = Model::new(&config)?;
    load_params(&file, model.module())?;
    model.check_finite(&file.display().to_string())?;
    Ok((model, Some((config, progress.step))))
}
