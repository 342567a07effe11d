//! `compare` sizes the architectures to matched parameter counts: the chosen width is the closest
//! allowed one for every shipped config, the table shows the counts and the held-out results, and
//! sizes set far apart draw a warning.

use experiments::config::{self, RunConfig};
use experiments::metrics::Table;
use experiments::sizes::{MAX_MISMATCH, SizeOrigin, match_sizes};

use crate::common::*;

const ARCHS: [&str; 3] = ["mamba", "transformer", "hybrid"];

fn configs_of(text: &str, origin: &str, overrides: &[String]) -> Vec<RunConfig> {
    ARCHS
        .iter()
        .map(|a| {
            let mut o = overrides.to_vec();
            o.push(format!("model.arch={a}"));
            config::parse(text, origin, &o).unwrap()
        })
        .collect()
}

#[test]
fn shipped_configs_get_the_closest_matched_widths() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let origin = path.display().to_string();
        let mut configs = configs_of(&text, &origin, &[]);
        let none = vec![Vec::new(); configs.len()];
        let sizes = match_sizes(&mut configs, &text, &none).unwrap();
        let line: Vec<String> = sizes
            .iter()
            .map(|s| format!("{} d{} {}", s.arch.name(), s.d_model, s.num_params))
            .collect();
        println!(
            "{}: {}",
            path.file_name().unwrap().to_string_lossy(),
            line.join(", ")
        );
        for (s, c) in sizes.iter().zip(&configs).skip(1) {
            if s.origin == SizeOrigin::Explicit {
                continue;
            }
            assert!(
                s.mismatch(&sizes[0]).abs() <= MAX_MISMATCH,
                "{origin}: {line:?}"
            );
            // No other allowed width comes closer: try the neighbours.
            let target = sizes[0].num_params;
            for d in [s.d_model.saturating_sub(8), s.d_model + 8] {
                let key = format!("model.{}.d_model={d}", s.arch.name());
                let o = [format!("model.arch={}", s.arch.name()), key];
                let other = config::parse(&text, &origin, &o).unwrap();
                if other.model_config().validate().is_ok() && d > 0 {
                    let p = other.model_config().num_params();
                    assert!(
                        p.abs_diff(target) >= s.num_params.abs_diff(target),
                        "{origin}: {} at d_model {d} has {p} parameters, closer to {target} than {}",
                        s.arch.name(),
                        s.num_params
                    );
                }
            }
            config::validate(c)
                .or_else(|e| {
                    // The byte corpus may not be fetched here; every other check must pass.
                    if format!("{e:#}").contains("task.bytes.path") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .unwrap();
        }
    }
}

#[test]
fn compare_trains_matched_sizes_and_warns_about_set_ones() {
    let dir = tmp_dir("compare");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let args = [
        "compare",
        "--config",
        &cfg,
        "--archs",
        "mamba,transformer,hybrid",
        "--set",
        "train.steps=2",
        "--set",
        "model.mamba.d_model=64",
    ];
    let out = bin().args(args).current_dir(&*dir).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    assert!(
        stdout.contains("compare: task mqar") && !stdout.contains("demo:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("params") && stdout.contains("loss@32") && stdout.contains("acc@48"),
        "{stdout}"
    );
    let summary = Table::read(&dir.join("runs/c-compare/summary.csv")).unwrap();
    let params = summary.f64s("num_params").unwrap();
    for p in &params[1..] {
        assert!((p / params[0] - 1.0).abs() <= MAX_MISMATCH, "{params:?}");
    }
    for p in &params {
        let shown = experiments::sizes::thousands(*p as usize);
        assert!(stdout.contains(&shown), "{shown} in\n{stdout}");
    }
    // The table's loss is the held-out loss of the last evaluation, not the training loss.
    let eval = Table::read(&dir.join("runs/c-compare/mamba/eval.csv")).unwrap();
    let loss = eval.f64s("loss").unwrap()[0];
    assert!(
        stdout.contains(&format!("{loss:.4}")),
        "{loss} in\n{stdout}"
    );

    let err = run_ok_stderr(
        &dir,
        &[
            "compare",
            "--config",
            &cfg,
            "--archs",
            "mamba,transformer",
            "--set",
            "train.steps=1",
            "--set",
            "model.transformer.d_model=128",
        ],
    );
    assert!(
        err.contains("WARNING: transformer has") && err.contains("not on equal terms"),
        "{err}"
    );
}

/// Runs and asserts success; returns stderr.
fn run_ok_stderr(cwd: &std::path::Path, args: &[&str]) -> String {
    let out = run(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ssm-lab {args:?} failed:\n{stderr}");
    stderr
}

#[test]
fn compare_runs_every_architecture_at_every_seed_with_its_own_recipe() {
    let dir = tmp_dir("compare-seeds");
    let text = format!("seeds = [3, 5]\n{TINY_MQAR}\n[train.transformer]\nlr = 2.5e-4\n");
    let cfg = write(&dir, "c.toml", &text);
    let stdout = run_ok(
        &dir,
        &["compare", "--config", &cfg, "--set", "train.steps=2"],
    );
    assert!(
        stdout.contains("seeds [3, 5]") && stdout.contains("train.lr: "),
        "{stdout}"
    );
    let root = dir.join("runs/c-compare");
    let summary = Table::read(&root.join("summary.csv")).unwrap();
    let (points, status) = (
        summary.strings("point").unwrap(),
        summary.strings("status").unwrap(),
    );
    assert_eq!(
        points,
        [
            "mamba-seed3",
            "transformer-seed3",
            "mamba-seed5",
            "transformer-seed5",
            "mamba_mean",
            "mamba_min",
            "mamba_max",
            "transformer_mean",
            "transformer_min",
            "transformer_max"
        ]
    );
    // Each run trained at its seed with its architecture's recipe, saved in its folder.
    for (point, seed, lr) in [("mamba-seed3", 3, 0.0), ("transformer-seed5", 5, 2.5e-4)] {
        let c = config::parse(
            &std::fs::read_to_string(root.join(point).join("config.toml")).unwrap(),
            point,
            &[],
        )
        .unwrap();
        assert_eq!(c.seed, seed, "{point}");
        if lr > 0.0 {
            assert_eq!(c.train.lr, lr, "{point}");
        } else {
            assert_ne!(c.train.lr, 2.5e-4, "{point}");
        }
    }
    // The printed means are summary.csv's.
    let mean32 = summary.f64s("loss@32").unwrap()[4];
    assert!(
        stdout.contains("mamba mean") && stdout.contains(&format!("{mean32:.4}")),
        "{mean32} in\n{stdout}"
    );
    // The plots draw one line per architecture: the mean over the seeds, its range shaded.
    let svg = std::fs::read_to_string(root.join("plots/loss.svg")).unwrap();
    for label in ["mamba (mean of 2 seeds)", "transformer (mean of 2 seeds)"] {
        assert!(svg.contains(label), "{label}");
    }
    assert!(!svg.contains("mamba-seed3"));
    assert_eq!(
        svg.matches("<polygon").count(),
        2,
        "one band per architecture"
    );
    // Different seeds give different runs, and the aggregate rows are their mean, min and max.
    let loss = summary.f64s("final_loss").unwrap();
    assert_ne!(loss[0], loss[2]);
    for (arch, runs, first) in [("mamba", [0, 2], 4), ("transformer", [1, 3], 7)] {
        assert_eq!(status[first..first + 3], ["mean", "min", "max"], "{arch}");
        let (a, b) = (loss[runs[0]], loss[runs[1]]);
        let want = [(a + b) / 2.0, a.min(b), a.max(b)];
        for (k, w) in want.iter().enumerate() {
            assert!(
                (loss[first + k] - w).abs() <= 1e-12 * w.abs(),
                "{arch}: {loss:?}"
            );
        }
    }
}
