//! Sizes and floats beyond reason are refused before anything is allocated or written, naming the
//! key; an update that makes a parameter non-finite is never checkpointed; non-finite weights are
//! refused for inference.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;

/// `train` with `overrides` on the tiny config fails naming every one of `culprits`, and leaves
/// nothing on disk.
fn refused(overrides: &[&str], culprits: &[&str]) {
    refused_with(overrides, culprits, None);
}

fn refused_with(overrides: &[&str], culprits: &[&str], memory_limit: Option<&str>) {
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let dir = tmp_dir(&format!("limits-{}", CASE.fetch_add(1, Ordering::Relaxed)));
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssm-lab"));
    cmd.args(["train", "--config", &cfg]).current_dir(&*dir);
    for o in overrides {
        cmd.args(["--set", o]);
    }
    if let Some(l) = memory_limit {
        cmd.env("SSM_LAB_MEMORY_LIMIT", l);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{overrides:?}: a clean error:\n{err}"
    );
    for c in culprits {
        assert!(
            err.contains(c),
            "{overrides:?}: the error should name {c}:\n{err}"
        );
    }
    assert_eq!(
        entries(&dir),
        vec!["c.toml".to_string()],
        "{overrides:?}: files left"
    );
}

#[test]
fn huge_sizes_are_refused_naming_the_key() {
    refused(
        &["model.mamba.d_model=1000000"],
        &["model.mamba", "d_model", "beyond reason"],
    );
    refused(&["model.mamba.n_layer=9223372036854775807"], &["n_layer"]);
    refused(&["model.mamba.expand=4611686018427387904"], &["expand"]);
    refused(&["model.mamba.d_state=1000000"], &["d_state"]);
    refused(&["model.mamba.dt_rank=100000000"], &["dt_rank"]);
    refused(
        &["model.mamba.pad_vocab_size_multiple=1099511627776"],
        &["pad_vocab_size_multiple"],
    );
    refused(&["train.batch_size=1099511627776"], &["train.batch_size"]);
    refused(&["train.grad_accum=1000000000"], &["train.grad_accum"]);
    refused(
        &["train.batch_size=100000", "train.grad_accum=4000"],
        &["tokens per step"],
    );
    refused(&["task.seq_len=9223372036854775806"], &["task.seq_len"]);
    refused(
        &["eval.lengths=[32, 4611686018427387904]"],
        &["eval.lengths"],
    );
    refused(
        &["eval.batches=100000", "eval.batch_size=100000"],
        &["per evaluation"],
    );
    refused(&["task.vocab_size=1000000000000"], &["vocab_size"]);
    refused(&["threads=1000000"], &["threads"]);
    refused(
        &[
            "model.arch=transformer",
            "model.transformer.mlp_hidden=1000000000",
        ],
        &["model.transformer", "mlp_hidden"],
    );
    refused(
        &[
            "model.arch=hybrid",
            "model.hybrid.pattern=\"M\"",
            "model.hybrid.d_model=9223372036854775807",
        ],
        &["model.hybrid", "d_model"],
    );
}

#[test]
fn memory_beyond_the_limit_is_refused_with_the_bytes() {
    // 8192 wide: ~0.5 G parameters of Mamba, 8 GB with gradients and AdamW moments.
    refused_with(
        &["model.mamba.d_model=8192"],
        &[
            "needs at least",
            "GB",
            "SSM_LAB_MEMORY_LIMIT",
            "parameters",
            "model.mamba",
        ],
        Some("1G"),
    );
    // A small model with an enormous evaluation batch: the activations are the culprit.
    refused_with(
        &["eval.batch_size=60000", "eval.batches=1"],
        &["needs at least", "eval.batch_size"],
        Some("1G"),
    );
    refused_with(
        &["train.batch_size=200000"],
        &["train.batch_size"],
        Some("1G"),
    );
}

#[test]
fn non_finite_floats_are_refused_naming_the_key() {
    refused(&["model.mamba.norm_eps=inf"], &["norm_eps"]);
    refused(&["model.mamba.dt_max=nan"], &["dt_max"]);
    refused(&["model.mamba.dt_max=inf"], &["dt_max"]);
    refused(&["model.mamba.dt_init_floor=nan"], &["dt_init_floor"]);
    refused(&["model.mamba.dt_min=-1.0"], &["dt_min"]);
    refused(&["train.lr=inf"], &["train.lr"]);
    refused(&["train.adamw.eps=nan"], &["train.adamw"]);
    refused(
        &["model.arch=transformer", "model.transformer.norm_eps=nan"],
        &["model.transformer", "norm_eps"],
    );
}

#[test]
fn a_learned_position_table_shorter_than_the_run_is_refused_up_front() {
    refused(
        &[
            "model.arch=transformer",
            "model.transformer.pos_encoding=learned",
            "model.transformer.max_seq_len=40",
        ],
        &["max_seq_len", "48"],
    );
}

#[test]
fn an_update_that_makes_weights_non_finite_is_never_checkpointed() {
    for steps in ["1", "2"] {
        let dir = tmp_dir("non-finite-update");
        let cfg = write(&dir, "c.toml", TINY_MQAR);
        let err = run_err(
            &dir,
            &[
                "train",
                "--config",
                &cfg,
                "--set",
                "train.lr=1e39",
                "--set",
                "train.min_lr=0",
                "--set",
                "train.warmup_steps=0",
                "--set",
                "train.clip_grad_norm=0",
                "--set",
                &format!("train.steps={steps}"),
                "--set",
                "train.checkpoint_every=1",
            ],
        );
        assert!(
            err.contains("step 1")
                && err.contains("non-finite")
                && err.contains("train.lr")
                && err.contains("train.clip_grad_norm"),
            "{err}"
        );
        assert!(err.contains("parameter `"), "names a tensor: {err}");
        let ckpt = dir.join("runs/tiny/checkpoints");
        assert!(!ckpt.join("latest.safetensors").exists(), "no checkpoint");
        assert!(!ckpt.join("final").exists(), "no export");
    }
}

#[test]
fn non_finite_weights_are_refused_for_inference() {
    let dir = tmp_dir("non-finite-weights");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(&dir, &["train", "--config", &cfg, "--set", "train.steps=2"]);
    let weights = dir.join("runs/tiny/checkpoints/final/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, bytes).unwrap();
    let folder = "runs/tiny/checkpoints/final";
    let err = run_err(
        &dir,
        &[
            "logits",
            "--checkpoint",
            folder,
            "--tokens",
            "1,2",
            "--out",
            "l.safetensors",
        ],
    );
    assert!(err.contains("parameter `") && err.contains("NaN"), "{err}");
    assert!(!dir.join("l.safetensors").exists());
    let err = run_err(
        &dir,
        &["generate", "--checkpoint", folder, "--tokens", "1,2"],
    );
    assert!(err.contains("parameter `"), "{err}");
}

#[test]
fn a_config_json_with_huge_sizes_is_refused_before_allocation() {
    let dir = tmp_dir("huge-config-json");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(&dir, &["train", "--config", &cfg, "--set", "train.steps=2"]);
    let folder = dir.join("runs/tiny/checkpoints/final");
    let path = folder.join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let huge = serde_json::json!(1_000_000_000_000u64);
    for (changes, culprit) in [
        (
            vec![
                ("hidden_size", huge.clone()),
                ("intermediate_size", huge.clone()),
            ],
            "d_model",
        ),
        (
            vec![("num_hidden_layers", serde_json::json!(1_000_000_000u64))],
            "n_layer",
        ),
        (vec![("vocab_size", huge)], "vocab_size"),
        (
            vec![
                ("hidden_size", serde_json::json!(4096)),
                ("intermediate_size", serde_json::json!(8192)),
            ],
            "do not belong together",
        ),
    ] {
        let mut v = original.clone();
        for (field, value) in &changes {
            v[field] = value.clone();
        }
        std::fs::write(&path, v.to_string()).unwrap();
        let err = run_err(
            &dir,
            &[
                "logits",
                "--checkpoint",
                &folder.display().to_string(),
                "--tokens",
                "1",
                "--out",
                "l.safetensors",
            ],
        );
        assert!(
            err.contains(culprit) && err.contains("config.json")
                || err.contains("model.safetensors") && err.contains(culprit),
            "{changes:?}: {err}"
        );
    }
}

#[test]
fn resume_of_a_finished_run_says_so_and_extend_continues_it() {
    let dir = tmp_dir("finished");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(&dir, &["train", "--config", &cfg, "--set", "train.steps=4"]);
    let out = run(&dir, &["train", "--resume", "runs/tiny"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("already complete at step 4 of 4"),
        "{err}"
    );
    let out = run(&dir, &["train", "--extend", "runs/tiny", "--steps", "6"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("extending from 4 to 6 steps") && err.contains("steps 5..6"),
        "{err}"
    );
    let metrics = experiments::metrics::Table::read(&dir.join("runs/tiny/metrics.csv")).unwrap();
    let (steps, lrs) = (metrics.f64s("step").unwrap(), metrics.f64s("lr").unwrap());
    assert_eq!(steps, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // Steps 5 and 6 follow the cosine schedule over the new total (warm-up 5 of TINY_MQAR).
    for (i, step) in [(4usize, 5u64), (5, 6)] {
        let want = ssm::optim::cosine_lr(step - 1, 5, 6, 3e-3, 1e-4);
        assert_eq!(lrs[i], want, "lr of step {step}");
    }
    // The export was redone at step 6: a resume finds it equal to the last checkpoint.
    let out = run(&dir, &["train", "--resume", "runs/tiny"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at step 6 of 6; its final export is complete"),
        "{err}"
    );
    let err = run_err(&dir, &["train", "--extend", "runs/tiny", "--steps", "3"]);
    assert!(err.contains("--steps 3"), "{err}");
}

#[test]
fn hints_never_point_at_a_folder_of_another_kind() {
    let dir = tmp_dir("folder-kinds");
    std::fs::create_dir_all(dir.join("runs/tiny")).unwrap();
    std::fs::write(dir.join("runs/tiny/sweep.toml"), "").unwrap();
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let err = run_err(&dir, &["train", "--config", &cfg]);
    assert!(
        err.contains("sweep folder") && !err.contains("--resume"),
        "{err}"
    );
    let err = run_err(&dir, &["train", "--resume", "runs/tiny"]);
    assert!(
        err.contains("not a run folder") && err.contains("sweep folder"),
        "{err}"
    );
}

#[test]
fn absurd_command_line_values_are_refused() {
    let dir = tmp_dir("absurd-flags");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(&dir, &["train", "--config", &cfg, "--set", "train.steps=2"]);
    let err = run_err(
        &dir,
        &[
            "generate",
            "--checkpoint",
            "runs/tiny",
            "--tokens",
            "1,2",
            "--max-new",
            "18446744073709551615",
        ],
    );
    assert!(err.contains("--max-new"), "{err}");
    for (flag, value) in [
        ("--batches", "0"),
        ("--lengths", "4611686018427387904"),
        ("--repeats", "0"),
    ] {
        let err = run_err(&dir, &["bench", "--device", "cpu", flag, value]);
        assert!(err.contains(flag), "{flag}: {err}");
    }
    let err = run_err(
        &dir,
        &[
            "compare",
            "--config",
            &cfg,
            "--archs",
            "mamba,mamba",
            "--out",
            "cmp",
        ],
    );
    assert!(err.contains("named twice"), "{err}");
    assert!(!dir.join("cmp").exists());
}

#[test]
fn mqar_generation_beyond_reason_is_refused() {
    refused(
        &[
            "task.vocab_size=16384",
            "task.seq_len=8192",
            "task.mqar.num_pairs=2048",
            "train.batch_size=2048",
            "eval.lengths=[8192]",
        ],
        &["task.mqar.num_pairs", "beyond reason"],
    );
}

#[test]
fn a_run_is_trained_by_one_process_at_a_time() {
    let dir = tmp_dir("lock");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let mut first = Command::new(env!("CARGO_BIN_EXE_ssm-lab"))
        .args([
            "train",
            "--config",
            &cfg,
            "--set",
            "train.steps=100000",
            "--set",
            "train.checkpoint_every=0",
        ])
        .current_dir(&*dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.join("runs/tiny/.lock").exists() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the first run did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = run_err(&dir, &["train", "--resume", "runs/tiny"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        err.contains("another ssm-lab process is training this run"),
        "{err}"
    );
}
