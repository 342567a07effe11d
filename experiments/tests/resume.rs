//! Resume: 2N steps straight vs N steps, a stop (or a real kill), and a resume: identical metrics
//! and eval rows (timing columns aside) and bit-identical final parameters.

use std::path::Path;
use std::time::{Duration, Instant};

use experiments::checkpoint::latest_path;
use ssm::io::tensors::TensorFile;

use crate::common::*;

fn assert_same_run(a: &Path, b: &Path, rows: usize) {
    let (ma, mb) = (
        rows_without_timing(&a.join("metrics.csv")),
        rows_without_timing(&b.join("metrics.csv")),
    );
    assert_eq!(ma.len(), rows);
    assert_eq!(ma, mb, "metrics rows differ");
    assert_eq!(
        rows_without_timing(&a.join("eval.csv")),
        rows_without_timing(&b.join("eval.csv")),
        "eval rows differ"
    );
    let (fa, fb) = (
        TensorFile::open(&latest_path(a)).unwrap(),
        TensorFile::open(&latest_path(b)).unwrap(),
    );
    assert_eq!(fa.names(), fb.names());
    for name in fa.names() {
        let (x, y) = (
            fa.f32(&name).unwrap().to_vec(),
            fb.f32(&name).unwrap().to_vec(),
        );
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs"
        );
    }
}

#[test]
fn stop_and_resume_is_bit_identical() {
    let dir = tmp_dir("resume");
    let cfg = write(&dir, "tiny.toml", TINY_MQAR);
    // With gradient accumulation (two micro-batches a step) and rows that average 3 steps: row 9
    // averages steps 7 and 8, done before the checkpoint at step 8, and step 9, done after it.
    let set = [
        "--set",
        "train.steps=24",
        "--set",
        "train.checkpoint_every=8",
        "--set",
        "train.eval_every=6",
        "--set",
        "train.grad_accum=2",
        "--set",
        "train.log_every=3",
    ];
    run_ok(
        &dir,
        &[
            &["train", "--config", &cfg, "--set", "name=straight"][..],
            &set,
        ]
        .concat(),
    );
    // Stop at step 13: the checkpoint is at step 8; steps 9..13 (rows 9 and 12) are redone.
    run_ok(
        &dir,
        &[
            &[
                "train",
                "--config",
                &cfg,
                "--set",
                "name=stopped",
                "--stop-after",
                "13",
            ][..],
            &set,
        ]
        .concat(),
    );
    assert_eq!(
        rows_without_timing(&dir.join("runs/stopped/metrics.csv")).len(),
        4
    );
    run_ok(&dir, &["train", "--resume", "runs/stopped"]);
    assert_same_run(&dir.join("runs/straight"), &dir.join("runs/stopped"), 8);
    // A finished run resumes to nothing.
    run_ok(&dir, &["train", "--resume", "runs/stopped"]);
    assert_same_run(&dir.join("runs/straight"), &dir.join("runs/stopped"), 8);
}

#[test]
fn killed_process_resumes_bit_identically() {
    let dir = tmp_dir("kill");
    let cfg = write(&dir, "tiny.toml", TINY_MQAR);
    let set = [
        "--set",
        "train.steps=300",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.eval_every=50",
    ];
    run_ok(
        &dir,
        &[
            &["train", "--config", &cfg, "--set", "name=straight"][..],
            &set,
        ]
        .concat(),
    );
    let mut child = bin()
        .args(
            [
                &["train", "--config", &cfg, "--set", "name=killed"][..],
                &set,
            ]
            .concat(),
        )
        .current_dir(&*dir)
        .spawn()
        .unwrap();
    let metrics = dir.join("runs/killed/metrics.csv");
    let started = Instant::now();
    // Kill it mid-run, at whatever point it has reached after its second checkpoint.
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 12 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = rows_without_timing(&metrics).len();
    assert!(done < 300, "killed before the end ({done} steps)");
    run_ok(&dir, &["train", "--resume", "runs/killed"]);
    assert_same_run(&dir.join("runs/straight"), &dir.join("runs/killed"), 300);
}
