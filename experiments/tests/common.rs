//! Helpers: run the binary, temporary folders, tiny configs.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ssm-lab"))
}

/// A fresh, empty folder for one test, removed when the test passes (kept for a look when it fails).
pub struct TmpDir(PathBuf);

impl Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn tmp_dir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("ssm-lab-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

/// Runs `ssm-lab args` in `cwd`.
pub fn run(cwd: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the binary runs")
}

/// Runs and asserts success; returns stdout.
pub fn run_ok(cwd: &Path, args: &[&str]) -> String {
    let out = run(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ssm-lab {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and asserts a clean failure: a non-zero exit, no panic. Returns stderr.
pub fn run_err(cwd: &Path, args: &[&str]) -> String {
    let out = run(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "ssm-lab {args:?} should fail:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a clean error exit, not a crash:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "a panic instead of an error:\n{stderr}"
    );
    stderr
}

/// A config of a tiny Mamba on MQAR (V = 64, L = 32, K = 4), one thread, short.
pub const TINY_MQAR: &str = r#"
name = "tiny"
threads = 1
[task]
kind = "mqar"
seq_len = 32
vocab_size = 64
[task.mqar]
num_pairs = 4
[model.mamba]
d_model = 32
n_layer = 2
d_state = 8
[train]
steps = 20
batch_size = 8
lr = 3e-3
warmup_steps = 5
checkpoint_every = 10
eval_every = 10
[eval]
lengths = [32, 48]
batches = 2
"#;

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Entries of a folder, sorted (hidden ones included).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).map_or(Vec::new(), |r| {
        r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    });
    v.sort();
    v
}

/// The rows of a result file without its timing columns.
pub fn rows_without_timing(path: &Path) -> Vec<Vec<String>> {
    let t = experiments::metrics::Table::read(path).unwrap_or_else(|e| panic!("{e:#}"));
    let keep: Vec<usize> = (0..t.header.len())
        .filter(|&i| !experiments::metrics::TIMING_COLUMNS.contains(&t.header[i].as_str()))
        .collect();
    t.rows
        .iter()
        .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
        .collect()
}

/// Ten short stand-in plays in `dir/data/shakespeare/`, where scripts/fetch-shakespeare puts the
/// corpus (the tests have no network).
pub fn stand_in_plays(dir: &Path) {
    let plays = dir.join("data/shakespeare");
    std::fs::create_dir_all(&plays).unwrap();
    for play in 0..10 {
        let text = format!("ROMEO: But, soft! what light through yonder window {play} breaks?\n");
        std::fs::write(plays.join(format!("play{play}.txt")), text.repeat(60)).unwrap();
    }
}
