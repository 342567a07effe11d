//! Bad input: a non-zero exit, an error naming the culprit, no panic, and nothing half-written.

use std::path::Path;

use experiments::checkpoint::latest_path;

use crate::common::*;

/// Runs `train` with `config` and `overrides` and checks the error names `culprit` and that the
/// output folder stays empty.
fn train_fails(dir: &Path, config: &str, overrides: &[&str], culprit: &str) {
    let cfg = write(dir, "c.toml", config);
    let mut args = vec!["train", "--config", &cfg];
    for o in overrides {
        args.extend(["--set", o]);
    }
    let err = run_err(dir, &args);
    assert!(
        err.contains(culprit),
        "the error should name {culprit}:\n{err}"
    );
    assert!(
        entries(&dir.join("runs")).is_empty(),
        "nothing written: {:?}",
        entries(&dir.join("runs"))
    );
}

#[test]
fn bad_configs_fail_before_any_file_is_written() {
    let dir = tmp_dir("bad-config");
    train_fails(
        &dir,
        &format!("{TINY_MQAR}\n[optimizer]\nlr = 1\n"),
        &[],
        "optimizer",
    );
    train_fails(&dir, TINY_MQAR, &["train.lrr=1"], "train.lrr");
    train_fails(&dir, TINY_MQAR, &["model.mamba.dmodel=64"], "dmodel");
    train_fails(&dir, TINY_MQAR, &["train.lr=fast"], "train.lr");
    train_fails(&dir, TINY_MQAR, &["train.steps=-3"], "train.steps");
    train_fails(&dir, TINY_MQAR, &["model.arch=rnn"], "model.arch");
    train_fails(
        &dir,
        TINY_MQAR,
        &["model.arch=transformer", "model.transformer.n_heads=3"],
        "model.transformer",
    );
    // Impossible shapes: MQAR needs 4K <= L and V > L; a model needs at least one layer.
    train_fails(&dir, TINY_MQAR, &["task.mqar.num_pairs=9"], "task.seq_len");
    train_fails(&dir, TINY_MQAR, &["eval.lengths=[32, 66]"], "eval.lengths");
    train_fails(&dir, TINY_MQAR, &["task.vocab_size=32"], "task.vocab_size");
    train_fails(&dir, TINY_MQAR, &["model.mamba.n_layer=0"], "n_layer");
    train_fails(
        &dir,
        TINY_MQAR,
        &["model.mamba.vocab_size=100"],
        "model.mamba.vocab_size",
    );
    train_fails(
        &dir,
        TINY_MQAR,
        &["task.kind=selective_copying"],
        "task.mqar",
    );
    // Missing files: the corpus of the bytes task, the config itself.
    let bytes = TINY_MQAR
        .replace("kind = \"mqar\"", "kind = \"bytes\"")
        .replace(
            "vocab_size = 64\n[task.mqar]\nnum_pairs = 4",
            "[task.bytes]\npath = \"missing.txt\"",
        );
    train_fails(&dir, &bytes, &[], "missing.txt");
    let err = run_err(&dir, &["train", "--config", "no-such.toml"]);
    assert!(err.contains("no-such.toml"), "{err}");
    assert!(!dir.join("runs").exists());
}

#[test]
fn existing_run_folder_is_not_overwritten() {
    let dir = tmp_dir("exists");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(&dir, &["train", "--config", &cfg, "--set", "train.steps=2"]);
    let before = std::fs::read(dir.join("runs/tiny/metrics.csv")).unwrap();
    let err = run_err(&dir, &["train", "--config", &cfg]);
    assert!(
        err.contains("runs/tiny") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("runs/tiny/metrics.csv")).unwrap(),
        before
    );
}

#[test]
fn corrupt_or_missing_checkpoints_are_reported() {
    let dir = tmp_dir("corrupt");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(
        &dir,
        &[
            "train",
            "--config",
            &cfg,
            "--set",
            "train.steps=12",
            "--stop-after",
            "11",
        ],
    );
    let ckpt = latest_path(&dir.join("runs/tiny"));
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let metrics = std::fs::read(dir.join("runs/tiny/metrics.csv")).unwrap();
    let err = run_err(&dir, &["train", "--resume", "runs/tiny"]);
    assert!(err.contains("latest.safetensors"), "{err}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap().len(),
        bytes.len() / 2,
        "the checkpoint is left as found"
    );
    assert_eq!(
        std::fs::read(dir.join("runs/tiny/metrics.csv")).unwrap(),
        metrics,
        "nothing truncated"
    );
    let err = run_err(
        &dir,
        &[
            "logits",
            "--checkpoint",
            "runs/tiny",
            "--tokens",
            "1,2",
            "--out",
            "l.safetensors",
        ],
    );
    assert!(err.contains("latest.safetensors"), "{err}");
    assert!(!dir.join("l.safetensors").exists());
    // Another file in its place: not a training checkpoint.
    std::fs::write(&ckpt, b"{}").unwrap();
    let err = run_err(&dir, &["eval", "--checkpoint", "runs/tiny"]);
    assert!(err.contains("latest.safetensors"), "{err}");
    let err = run_err(
        &dir,
        &[
            "logits",
            "--checkpoint",
            "nowhere",
            "--tokens",
            "1",
            "--out",
            "l.safetensors",
        ],
    );
    assert!(err.contains("nowhere"), "{err}");
    let err = run_err(&dir, &["train", "--resume", "nowhere"]);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn non_finite_training_stops_with_a_report() {
    let dir = tmp_dir("nan");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let err = run_err(
        &dir,
        &[
            "train",
            "--config",
            &cfg,
            "--set",
            "train.lr=1e30",
            "--set",
            "train.warmup_steps=0",
            "--set",
            "train.clip_grad_norm=0",
        ],
    );
    assert!(
        err.contains("step ") && (err.contains("not finite") || err.contains("overflowed")),
        "{err}"
    );
    assert!(
        err.contains("`layers.") || err.contains("`embedding") || err.contains("`norm_f"),
        "names a tensor: {err}"
    );
    assert!(
        !dir.join("runs/tiny/checkpoints/latest.safetensors")
            .exists(),
        "no checkpoint of a diverged model"
    );
}
