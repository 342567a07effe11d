//! The training loop: batches → forward_loss → backward (gradient accumulation) → clip → AdamW →
//! a metrics row, with periodic evaluation and atomic checkpoints. A resumed run continues exactly
//! as if it had never stopped: the data of step s depends only on (seed, s), and the checkpoint
//! holds the parameters, the AdamW moments and the step.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use ssm::Device;
use ssm::device::{peak_memory_mb, reset_peak_memory, synchronize};
use ssm::ops::activation::scale_;
use ssm::optim::{AdamW, clip_grad_norm, cosine_lr};
use tracing::{info, warn};

use crate::checkpoint::{self, CHECKPOINT_DIR, CONFIG_FILE, Interval, Progress};
use crate::config::{self, RunConfig};
use crate::eval::{EvalResult, evaluate};
use crate::metrics::{
    CsvWriter, EVAL_FILE, EVAL_HEADER, METRICS_FILE, METRICS_HEADER, cell, truncate_after,
};
use crate::model::Model;
use crate::tasks::Task;

/// Facts about a run that plots and summaries need, written once when the run starts.
pub const RUN_INFO_FILE: &str = "run.json";

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Stop right after this step, as a kill would (no final checkpoint): for testing resume.
    pub stop_after: Option<u64>,
    /// Where the model trains; checkpoints load onto it whatever device wrote them.
    pub device: Device,
}

/// What a training session ended with.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub run_dir: PathBuf,
    /// Steps done.
    pub step: u64,
    /// Whether the run reached `train.steps`.
    pub finished: bool,
    /// Mean training loss of the last metrics row.
    pub last_loss: f64,
    /// The last evaluation of this session.
    pub evals: Vec<EvalResult>,
    /// Wall time of the whole run.
    pub elapsed_s: f64,
}

/// Starts a new run in `config.run_dir()`; everything that can fail on bad input fails before the
/// folder exists, and the folder appears complete (config.toml, run.json) or not at all.
pub fn start(config: &RunConfig, options: &TrainOptions) -> Result<Outcome> {
    let run_dir = config.run_dir();
    if run_dir.exists() {
        bail!("{}", occupied(&run_dir));
    }
    let task = Task::new(config)?;
    let mut model = Model::new(config)?;
    if let Some(dir) = &config.model.init_from {
        let (mut source, _) = crate::checkpoint::load_for_inference(dir)
            .with_context(|| format!("config key `model.init_from`: {}", dir.display()))?;
        model.copy_weights_from(&mut source).with_context(|| {
            format!(
                "config key `model.init_from`: {} is not the model the config describes",
                dir.display()
            )
        })?;
    }
    model.to_device(options.device)?;
    let staging = config.out_dir.join(format!(".{}.creating", config.name));
    ssm::io::remove_dir_all(&staging)?;
    ssm::io::create_dir_all(&staging.join(CHECKPOINT_DIR))?;
    ssm::io::atomic_write(&staging.join(CONFIG_FILE), config.to_toml().as_bytes())?;
    let info = json!({
        "arch": model.arch(),
        "task": config.task.kind.name(),
        "num_params": model.num_params(),
        "non_embedding_params": model.non_embedding_params(),
        "flops_per_token": model.flops_per_token(task.input_len(config.task.seq_len)),
        "flops_convention": model.flops_convention(),
        "seq_len": config.task.seq_len,
        "input_len": task.input_len(config.task.seq_len),
        "tokens_per_step": tokens_per_step(config, &task),
        "chance_loss": task.chance_loss(),
        "threads": rayon::current_num_threads(),
        "device": options.device.to_string(),
    });
    ssm::io::atomic_write(
        &staging.join(RUN_INFO_FILE),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    ssm::io::rename(&staging, &run_dir)?;
    let _lock = lock(&run_dir)?;
    let opt = AdamW::new(config.train.adamw);
    let progress = Progress {
        step: 0,
        elapsed_s: 0.0,
        threads: rayon::current_num_threads(),
        config: config.to_toml(),
        interval: Interval::default(),
    };
    run(config, &run_dir, &task, &mut model, opt, progress, options)
}

/// Continues the run in `run_dir` from its latest checkpoint (from the start if it has none). A
/// run that reached `train.steps` only has its final export checked and, if a kill interrupted
/// it, redone.
pub fn resume(run_dir: &Path, options: &TrainOptions) -> Result<Outcome> {
    run_config(run_dir)?;
    let _lock = lock(run_dir)?;
    resume_locked(run_dir, options)
}

/// `resume` by the process that holds the run's lock.
fn resume_locked(run_dir: &Path, options: &TrainOptions) -> Result<Outcome> {
    let config_path = run_dir.join(CONFIG_FILE);
    let config = run_config(run_dir)?;
    remove_temporaries(run_dir)?;
    let task = Task::new(&config)?;
    let mut model = Model::new(&config)?;
    let mut opt = AdamW::new(config.train.adamw);
    let threads = rayon::current_num_threads();
    let trained_on = run_device(run_dir)?;
    if trained_on != options.device {
        warn!(
            "the run trained on {trained_on} and continues on {}: results continue, but not bit-identically",
            options.device
        );
    }
    let progress = if checkpoint::latest_path(run_dir).exists() {
        let mut p = checkpoint::restore(run_dir, &mut model, &mut opt)?;
        if !same_but_steps(&p.config, &config)? {
            bail!(
                "{}: the checkpoint was written with another config than {}",
                checkpoint::latest_path(run_dir).display(),
                config_path.display()
            );
        }
        if p.step > config.train.steps {
            bail!(
                "{}: train.steps = {} is below the {} steps the checkpoint has done",
                config_path.display(),
                config.train.steps,
                p.step
            );
        }
        if p.threads != threads {
            warn!(
                "the run used {} threads and now has {threads}: results continue, but not bit-identically",
                p.threads
            );
        }
        p.config = config.to_toml();
        p
    } else {
        info!(
            "{}: no checkpoint yet, starting from step 0",
            run_dir.display()
        );
        Progress {
            step: 0,
            elapsed_s: 0.0,
            threads,
            config: config.to_toml(),
            interval: Interval::default(),
        }
    };
    model.to_device(options.device)?;
    for file in [METRICS_FILE, EVAL_FILE] {
        truncate_after(&run_dir.join(file), progress.step)?;
    }
    run(&config, run_dir, &task, &mut model, opt, progress, options)
}

/// Continues the run in `run_dir` to `steps` steps in all (more than it has): its config.toml
/// gets the new `train.steps`, and the cosine schedule is recomputed over the new total, so the
/// learning rate rises again from where the finished schedule ended (stated in the log).
pub fn extend(run_dir: &Path, steps: u64, options: &TrainOptions) -> Result<Outcome> {
    let config_path = run_dir.join(CONFIG_FILE);
    let mut config = run_config(run_dir)?;
    let t = &config.train;
    if steps <= t.steps {
        bail!(
            "--steps {steps}: the run already has train.steps = {}; extending needs more",
            t.steps
        );
    }
    let ended = cosine_lr(t.steps - 1, t.warmup_steps, t.steps, t.lr, t.min_lr);
    let next = cosine_lr(t.steps, t.warmup_steps, steps, t.lr, t.min_lr);
    info!(
        "{}: extending from {} to {steps} steps; the cosine schedule now runs over {steps} steps, so step {} trains at lr {next:.3e} (the schedule ended at {ended:.3e})",
        run_dir.display(),
        t.steps,
        t.steps + 1
    );
    let (before, old_steps) = (config.to_toml(), t.steps);
    config.train.steps = steps;
    config::validate(&config)?;
    let _lock = lock(run_dir)?;
    ssm::io::atomic_write(&config_path, config.to_toml().as_bytes())?;
    let outcome = resume_locked(run_dir, options);
    // A run that could not continue past its old end (a corrupt checkpoint, say) keeps the steps
    // it had; one that trained further keeps the new total its checkpoints now need.
    if outcome.is_err() && checkpoint::saved_step(run_dir).is_none_or(|s| s <= old_steps) {
        ssm::io::atomic_write(&config_path, before.as_bytes())?;
    }
    outcome
}

/// Holds the run folder for this process until the returned file is dropped: two processes
/// training one run (a sweep continued while a killed sweep's child still runs, say) would
/// interleave its rows and checkpoints. The lock is the kernel's, so it dies with its process.
fn lock(run_dir: &Path) -> Result<std::fs::File> {
    let path = run_dir.join(".lock");
    ssm::io::fault::point("create", &path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another ssm-lab process is training this run; wait for it or stop it first",
            run_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Removes what a kill inside an atomic write left: `.NAME.tmp` files of the run and its
/// checkpoints folder (the staged final export is redone by `export_final`).
fn remove_temporaries(run_dir: &Path) -> Result<()> {
    for dir in [run_dir.to_path_buf(), run_dir.join(CHECKPOINT_DIR)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_file() {
                ssm::io::fault::point("remove", &entry.path());
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// The config of the run in `run_dir`, validated.
pub fn run_config(run_dir: &Path) -> Result<RunConfig> {
    let config_path = run_dir.join(CONFIG_FILE);
    if !config_path.exists() {
        bail!("{}", not_a_run(run_dir));
    }
    config::load(&config_path, &[])
}

/// Whether the config a checkpoint embeds equals `config` but perhaps for `train.steps` (which
/// `extend` raises).
fn same_but_steps(embedded: &str, config: &RunConfig) -> Result<bool> {
    let mut theirs = config::parse(embedded, "the checkpoint's config", &[])?;
    theirs.train.steps = config.train.steps;
    Ok(theirs.to_toml() == config.to_toml())
}

/// What is in the way of a new run at `dir`, and what to do about it.
fn occupied(dir: &Path) -> String {
    let d = dir.display();
    if dir.join(CONFIG_FILE).exists() && dir.join(RUN_INFO_FILE).exists() {
        format!(
            "{d}: a run of that name exists; continue it with `ssm-lab train --resume {d}`, extend it with `ssm-lab train --extend {d} --steps N`, or choose another name (--set name=...)"
        )
    } else {
        format!(
            "{d}: exists and is not a run folder ({}); choose another name (--set name=...)",
            folder_kind(dir)
        )
    }
}

/// Why `dir` cannot be resumed.
fn not_a_run(dir: &Path) -> String {
    format!(
        "{}: not a run folder (no {CONFIG_FILE}; {})",
        dir.display(),
        folder_kind(dir)
    )
}

/// What kind of folder of ours `dir` is, for error messages.
fn folder_kind(dir: &Path) -> &'static str {
    if dir.join(crate::sweep::SWEEP_FILE).exists() {
        "it is a sweep folder"
    } else if dir.join(crate::demo::MARKER).exists() {
        "it is a compare or demo folder"
    } else if !dir.exists() {
        "it does not exist"
    } else {
        "it holds something else"
    }
}

/// The device recorded in the run's run.json (runs from before devices trained on the CPU).
fn run_device(run_dir: &Path) -> Result<Device> {
    let path = run_dir.join(RUN_INFO_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let info: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    match info.get("device").and_then(|d| d.as_str()) {
        None => Ok(Device::Cpu),
        Some(d) => d
            .parse()
            .with_context(|| format!("{}: field `device`", path.display())),
    }
}

fn tokens_per_step(c: &RunConfig, task: &Task) -> usize {
    c.train.batch_size * c.train.grad_accum * task.input_len(c.task.seq_len)
}

fn progress_bar(total: u64, done: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(done);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar
}

/// Why a forward pass produced a non-finite loss: the first non-finite parameter, or else the
/// parameter of largest magnitude (a diverging run overflows the activations first).
fn diagnose_forward(model: &mut Model) -> Result<String> {
    if let Some(name) = model.first_non_finite(false)? {
        return Ok(format!("parameter `{name}` is not finite"));
    }
    let mut largest = (String::new(), 0.0f32);
    model.module().try_visit_params(&mut |name, p| {
        let m = p
            .value
            .to_host_vec()?
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()));
        if m > largest.1 {
            largest = (name.to_string(), m);
        }
        Ok(())
    })?;
    Ok(format!(
        "every parameter is finite; the largest is `{}` with |value| up to {:e}, so the forward pass overflowed",
        largest.0, largest.1
    ))
}

fn run(
    config: &RunConfig,
    run_dir: &Path,
    task: &Task,
    model: &mut Model,
    mut opt: AdamW<f32>,
    mut progress: Progress,
    options: &TrainOptions,
) -> Result<Outcome> {
    let t = &config.train;
    let mut metrics = CsvWriter::open(&run_dir.join(METRICS_FILE), &METRICS_HEADER)?;
    let mut evals_csv = CsvWriter::open(&run_dir.join(EVAL_FILE), &EVAL_HEADER)?;
    let per_step = tokens_per_step(config, task);
    let seq = config.task.seq_len;
    if progress.step >= t.steps {
        return finish_complete(run_dir, model, &progress, t.steps);
    }
    info!(
        "{}: {} with {} parameters on {} (input length {}), {} tokens/step, steps {}..{}",
        run_dir.display(),
        model.arch(),
        model.num_params(),
        config.task.kind.name(),
        task.input_len(seq),
        per_step,
        progress.step + 1,
        t.steps
    );
    let bar = progress_bar(t.steps, progress.step);
    let session = Instant::now();
    let elapsed_before = progress.elapsed_s;
    // Training time of the steps since the last row, for tokens/s (evaluation and checkpoints excluded).
    let mut interval_s = 0.0;
    let (mut last_loss, mut last_evals) = (f64::NAN, Vec::new());
    reset_peak_memory(options.device);
    while progress.step < t.steps {
        let step = progress.step + 1;
        let started = Instant::now();
        let lr = cosine_lr(step - 1, t.warmup_steps, t.steps, t.lr, t.min_lr);
        model.module().zero_grad()?;
        let mut loss = 0.0;
        for micro in 0..t.grad_accum {
            let batch = task.train_batch(config.seed, step, micro as u64, t.batch_size, seq);
            let l = model.forward_loss(&batch.ids, &batch.targets, batch.b)?;
            if !l.is_finite() {
                bail!(
                    "step {step}: the loss is {l} ({}); stopping, {}",
                    diagnose_forward(model)?,
                    last_checkpoint(config, step - 1)
                );
            }
            model.backward()?;
            loss += l / t.grad_accum as f64;
        }
        if t.grad_accum > 1 {
            let scale = 1.0 / t.grad_accum as f64;
            model
                .module()
                .try_visit_params(&mut |_, p| scale_(&mut p.grad, scale))?;
        }
        let max_norm = if t.clip_grad_norm > 0.0 {
            t.clip_grad_norm
        } else {
            f64::INFINITY
        };
        let grad_norm = clip_grad_norm(model.module(), max_norm)?;
        if !grad_norm.is_finite() {
            let name = model.first_non_finite(true)?.unwrap_or_else(|| "?".into());
            bail!(
                "step {step}: the gradient norm is {grad_norm}; first non-finite gradient: `{name}`; stopping, {}",
                last_checkpoint(config, step - 1)
            );
        }
        opt.update(model.module(), lr)?;
        // One sum over the weights and AdamW's moments; only a non-finite one is located.
        if !ssm::optim::state_sum_squares(model.module(), &opt)?.is_finite() {
            if let Some(name) = model.first_non_finite(false)? {
                bail!(
                    "step {step}: the update made parameter `{name}` non-finite (learning rate {lr:e}, gradient norm {grad_norm:e} before clipping); lower `train.lr` or set `train.clip_grad_norm` (now {}); nothing of this step was saved, {}",
                    t.clip_grad_norm,
                    last_checkpoint(config, step - 1)
                );
            }
            if !ssm::optim::moments_finite(&opt)? {
                bail!(
                    "step {step}: the gradient (norm {grad_norm:e} before clipping) overflowed AdamW's second moment, which would stop all learning; set `train.clip_grad_norm` (now {}) or lower `train.lr`; nothing of this step was saved, {}",
                    t.clip_grad_norm,
                    last_checkpoint(config, step - 1)
                );
            }
        }
        // The step's last launches finish before the clock is read.
        synchronize(options.device)?;
        progress.step = step;
        interval_s += started.elapsed().as_secs_f64();
        progress.interval.add(loss, grad_norm);
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4}"));
        if step.is_multiple_of(t.log_every) || step == t.steps {
            let (mean_loss, mean_norm) = progress.interval.means();
            last_loss = mean_loss;
            let elapsed = elapsed_before + session.elapsed().as_secs_f64();
            metrics.row(&[
                step.to_string(),
                (step as usize * per_step).to_string(),
                cell(last_loss),
                cell(lr),
                cell(mean_norm),
                format!(
                    "{:.1}",
                    (progress.interval.steps as usize * per_step) as f64 / interval_s
                ),
                format!("{elapsed:.3}"),
                peak_memory_mb(options.device).map_or(String::new(), |m| format!("{m:.1}")),
            ])?;
            (progress.interval, interval_s) = (Interval::default(), 0.0);
            reset_peak_memory(options.device);
        }
        if (t.eval_every > 0 && step.is_multiple_of(t.eval_every)) || step == t.steps {
            last_evals = evaluate(model, task, config)?;
            for e in &last_evals {
                evals_csv.row(&[
                    step.to_string(),
                    e.split.into(),
                    e.length.to_string(),
                    cell(e.loss),
                    cell(e.accuracy),
                    e.bits_per_byte.map_or(String::new(), cell),
                ])?;
                let bpb = e
                    .bits_per_byte
                    .map_or(String::new(), |b| format!(", {b:.4} bits/byte"));
                bar.suspend(|| {
                    info!(
                        "step {step}: {} length {}: loss {:.4}, accuracy {:.4}{bpb}",
                        e.split, e.length, e.loss, e.accuracy
                    )
                });
            }
            reset_peak_memory(options.device);
        }
        if (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || step == t.steps {
            progress.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
            checkpoint::save(run_dir, model, &opt, &progress)?;
        }
        if options.stop_after == Some(step) && step < t.steps {
            bar.abandon();
            info!(
                "stopped after step {step} (--stop-after); continue with `ssm-lab train --resume {}`",
                run_dir.display()
            );
            return Ok(Outcome {
                run_dir: run_dir.to_path_buf(),
                step,
                finished: false,
                last_loss,
                evals: last_evals,
                elapsed_s: elapsed_before + session.elapsed().as_secs_f64(),
            });
        }
    }
    bar.finish_and_clear();
    checkpoint::export_final(run_dir, model)?;
    let elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
    info!(
        "{}: done, {} steps in {elapsed_s:.1} s",
        run_dir.display(),
        progress.step
    );
    Ok(Outcome {
        run_dir: run_dir.to_path_buf(),
        step: progress.step,
        finished: true,
        last_loss,
        evals: last_evals,
        elapsed_s,
    })
}

/// A run resumed after its last step: its final export is checked against the last checkpoint
/// and redone if a kill interrupted it.
fn finish_complete(
    run_dir: &Path,
    model: &mut Model,
    progress: &Progress,
    steps: u64,
) -> Result<Outcome> {
    let export = match checkpoint::verify_final(run_dir, model) {
        Ok(()) => "its final export is complete",
        Err(e) => {
            warn!("{e:#}; exporting again");
            checkpoint::export_final(run_dir, model)?;
            "its final export was redone"
        }
    };
    info!(
        "{}: already complete at step {} of {}; {export}. Train further with `ssm-lab train --extend {} --steps N`",
        run_dir.display(),
        progress.step,
        steps,
        run_dir.display()
    );
    Ok(Outcome {
        run_dir: run_dir.to_path_buf(),
        step: progress.step,
        finished: true,
        last_loss: f64::NAN,
        evals: Vec::new(),
        elapsed_s: progress.elapsed_s,
    })
}

/// Where a stopped run can continue from: the newest checkpoint at or before `step`.
fn last_checkpoint(config: &RunConfig, step: u64) -> String {
    match config.train.checkpoint_every {
        every if every > 0 && step >= every => {
            format!("the last checkpoint is at step {}", step / every * every)
        }
        _ => "no checkpoint was written yet".into(),
    }
}
