//! A kill at every file-changing step of `train` (ssm::io::fault: SIGKILL at the N-th create,
//! write, fsync, rename or remove), in a first session and in a resumed one; recovering as a user
//! would (`train --resume`, or `train --config` again when the run folder never appeared) gives
//! metrics, eval rows, every checkpoint tensor and the final export bit-identical to an
//! uninterrupted run, and leaves no temporary file behind.

use std::path::Path;
use std::process::Output;

use experiments::checkpoint::latest_path;
use experiments::metrics::Table;
use ssm::io::fault::{KILL_AT_VAR, LOG_VAR};
use ssm::io::tensors::TensorFile;

use crate::common::*;

/// Six steps with rows every 2, evaluation every 3 and checkpoints every 2: every kind of write.
const RUN: &str = r#"
name = "k"
threads = 1
[task]
kind = "mqar"
seq_len = 16
vocab_size = 32
[task.mqar]
num_pairs = 2
[model.mamba]
d_model = 16
n_layer = 1
d_state = 4
[train]
steps = 6
batch_size = 4
warmup_steps = 2
log_every = 2
eval_every = 3
checkpoint_every = 2
[eval]
batches = 1
"#;

fn train(cwd: &Path, args: &[&str], kill_at: Option<usize>, log: Option<&Path>) -> Output {
    let mut cmd = bin();
    cmd.arg("train").args(args).current_dir(cwd);
    if let Some(n) = kill_at {
        cmd.env(KILL_AT_VAR, n.to_string());
    }
    if let Some(l) = log {
        cmd.env(LOG_VAR, l);
    }
    cmd.output().expect("the binary runs")
}

fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let f = TensorFile::open(path).unwrap_or_else(|e| panic!("{e:#}"));
    f.names()
        .into_iter()
        .map(|n| {
            let bits = f
                .f32(&n)
                .unwrap()
                .to_vec()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (n, bits)
        })
        .collect()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn assert_same(reference: &Path, run: &Path, case: &str) {
    assert_eq!(files(reference), files(run), "{case}: files differ");
    for csv in ["metrics.csv", "eval.csv"] {
        assert_eq!(
            rows_without_timing(&reference.join(csv)),
            rows_without_timing(&run.join(csv)),
            "{case}: {csv} differs"
        );
    }
    assert_eq!(
        tensors(&latest_path(reference)),
        tensors(&latest_path(run)),
        "{case}: the last checkpoint differs"
    );
    let exported = |d: &Path| d.join("checkpoints/final");
    assert_eq!(
        tensors(&exported(reference).join("model.safetensors")),
        tensors(&exported(run).join("model.safetensors")),
        "{case}: the final export differs"
    );
    assert_eq!(
        std::fs::read(exported(reference).join("config.json")).unwrap(),
        std::fs::read(exported(run).join("config.json")).unwrap(),
        "{case}: the exported config differs"
    );
}

/// Kill points a session passes: the lines of its fault log.
fn points(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

/// Resumes (or restarts, when the folder never appeared) until the run is done.
fn recover(cwd: &Path, config: &str, case: &str) {
    for _ in 0..3 {
        let out = if cwd.join("runs/k").exists() {
            train(cwd, &["--resume", "runs/k"], None, None)
        } else {
            train(cwd, &["--config", config], None, None)
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: recovery failed:\n{stderr}");
        if stderr.contains("done,") || stderr.contains("already complete") {
            return;
        }
    }
    panic!("{case}: not done after three recoveries");
}

/// In a fresh `cwd`: a session of `train` (after a first one stopped at step 3 when `resumed`)
/// killed at point `n`, recovery, and the comparison with `reference`.
fn kill_and_recover(
    cwd: &Path,
    config: &str,
    reference: &Path,
    resumed: bool,
    n: usize,
    case: &str,
) {
    std::fs::create_dir_all(cwd).unwrap();
    let session: &[&str] = if resumed {
        let first = train(cwd, &["--config", config, "--stop-after", "3"], None, None);
        assert!(first.status.success(), "{case}: the first session failed");
        &["--resume", "runs/k"]
    } else {
        &["--config", config]
    };
    let out = train(cwd, session, Some(n), None);
    assert_eq!(
        out.status.code(),
        None,
        "{case}: the process was not killed"
    );
    recover(cwd, config, case);
    assert_same(reference, &cwd.join("runs/k"), case);
    assert_eq!(
        entries(&cwd.join("runs")),
        ["k"],
        "{case}: left beside the run"
    );
    std::fs::remove_dir_all(cwd).unwrap();
}

#[test]
fn a_kill_at_every_write_recovers_bit_identically() {
    let dir = tmp_dir("kill-points");
    let config = write(&dir, "k.toml", RUN);
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let log = dir.join("first.log");
    assert!(
        train(&reference, &["--config", &config], None, Some(&log))
            .status
            .success()
    );
    let first = points(&log);
    let resumed_log = dir.join("resumed.log");
    let stopped = dir.join("stopped");
    std::fs::create_dir_all(&stopped).unwrap();
    assert!(
        train(
            &stopped,
            &["--config", &config, "--stop-after", "3"],
            None,
            None
        )
        .status
        .success()
    );
    assert!(
        train(&stopped, &["--resume", "runs/k"], None, Some(&resumed_log))
            .status
            .success()
    );
    let resumed = points(&resumed_log);
    assert!(
        first > 40 && resumed > 20,
        "{first} and {resumed} kill points"
    );
    let reference = reference.join("runs/k");
    for n in 1..=first {
        let case = format!("first session, kill at point {n}");
        kill_and_recover(
            &dir.join(format!("first-{n}")),
            &config,
            &reference,
            false,
            n,
            &case,
        );
    }
    for n in 1..=resumed {
        let case = format!("resumed session (after --stop-after 3), kill at point {n}");
        kill_and_recover(
            &dir.join(format!("resumed-{n}")),
            &config,
            &reference,
            true,
            n,
            &case,
        );
    }
    let tried = first + resumed;
    println!(
        "kill points tried and recovered bit-identically: {tried}/{tried} ({first} in a first session, {resumed} in a resumed one)"
    );
}

/// The summary of a sweep without the columns that measure the machine.
fn summary(dir: &Path) -> Vec<Vec<String>> {
    let t = Table::read(&dir.join("summary.csv")).unwrap_or_else(|e| panic!("{e:#}"));
    let keep: Vec<usize> = (0..t.header.len())
        .filter(|&i| {
            let h = t.header[i].as_str();
            !(h.contains("tokens_per_s") || h.contains("peak") || h.contains("elapsed"))
        })
        .collect();
    t.rows
        .iter()
        .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
        .collect()
}

#[test]
fn a_killed_sweep_continues_where_it_stopped() {
    let dir = tmp_dir("kill-sweep");
    // Without `threads` in the config each point gets the cores divided by --jobs.
    let config = write(&dir, "sweep.toml", &RUN.replace("threads = 1\n", ""));
    let sweep = |cwd: &Path, kill_at: Option<usize>, jobs: &str| {
        let mut cmd = bin();
        cmd.args([
            "sweep",
            "--config",
            &config,
            "--grid",
            "model.mamba.d_model=8,16",
            "--jobs",
            jobs,
        ])
        .current_dir(cwd);
        if let Some(n) = kill_at {
            cmd.env(KILL_AT_VAR, n.to_string());
        }
        cmd.output().expect("the binary runs")
    };
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    for d in [&straight, &killed] {
        std::fs::create_dir_all(d).unwrap();
    }
    assert!(sweep(&straight, None, "1").status.success());
    // Every process dies at its own 20th kill point: each child while it creates eval.csv, the
    // sweep itself (19 points to create its folder) while it writes summary.csv.
    let out = sweep(&killed, Some(20), "1");
    assert_eq!(out.status.code(), None, "the sweep process was not killed");
    // Continued with another --jobs: each point keeps the thread count it started with.
    let out = sweep(&killed, None, "2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the sweep did not continue:\n{err}");
    assert!(err.contains("continuing it"), "{err}");
    assert_eq!(
        summary(&straight.join("runs/k-sweep")),
        summary(&killed.join("runs/k-sweep"))
    );
    let other = bin()
        .args([
            "sweep",
            "--config",
            &config,
            "--grid",
            "model.mamba.d_model=8,24",
        ])
        .current_dir(&killed)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{err}");
    assert!(err.contains("other points"), "{err}");
}
