//! `plot` writes non-empty PNG and SVG files for runs and sweeps, and fails clearly without
//! metrics; `sweep` runs its points as parallel child processes and writes summary.csv.

use experiments::metrics::Table;

use crate::common::*;

fn assert_image_pair(dir: &std::path::Path, stem: &str) {
    let png = std::fs::read(dir.join(format!("{stem}.png")))
        .unwrap_or_else(|e| panic!("{stem}.png: {e}"));
    assert!(
        png.len() > 5000 && png.starts_with(b"\x89PNG"),
        "{stem}.png: {} bytes",
        png.len()
    );
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<text") && svg.len() > 2000,
        "{stem}.svg"
    );
}

#[test]
fn plots_of_a_sweep_and_clear_failure_without_metrics() {
    let dir = tmp_dir("plot");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(
        &dir,
        &[
            "sweep",
            "--config",
            &cfg,
            "--name",
            "sw",
            "--grid",
            "task.seq_len=16,32",
            "--set",
            "train.steps=6",
            "--set",
            "eval.lengths=[]",
            "--jobs",
            "2",
        ],
    );
    let summary = Table::read(&dir.join("runs/sw/summary.csv")).unwrap();
    assert_eq!(
        summary.strings("point").unwrap(),
        ["seq_len=16", "seq_len=32"]
    );
    assert_eq!(summary.strings("status").unwrap(), ["ok", "ok"]);
    assert_eq!(summary.f64s("steps").unwrap(), [6.0, 6.0]);
    assert!(
        summary
            .f64s("tokens_per_s")
            .unwrap()
            .iter()
            .all(|&t| t > 0.0)
    );
    assert!(
        summary.header.contains(&"accuracy@32".to_string()),
        "{:?}",
        summary.header
    );

    let out = run_ok(
        &dir,
        &["plot", "runs/sw", "runs/sw/seq_len=32", "--out", "figs"],
    );
    assert!(out.contains("loss.png"), "{out}");
    let figs = dir.join("figs");
    for stem in ["loss", "loss_vs_flops", "throughput_memory"] {
        assert_image_pair(&figs, stem);
    }
    // Each point is tested at its own length only: single points make no accuracy curve.
    assert!(!figs.join("accuracy_vs_length.png").exists());
    let svg = std::fs::read_to_string(figs.join("loss_vs_flops.svg")).unwrap();
    assert!(
        svg.contains("6N + Σ_mamba 27·d_inner·d_state"),
        "the FLOPs convention is on the plot"
    );

    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let err = run_err(&dir, &["plot", "empty"]);
    assert!(
        err.contains("empty") && err.contains("metrics.csv"),
        "{err}"
    );
    assert!(!dir.join("empty/plots").exists());
    let err = run_err(&dir, &["plot", "absent"]);
    assert!(err.contains("absent"), "{err}");
    // A bad grid value is caught before any point runs.
    let err = run_err(
        &dir,
        &[
            "sweep",
            "--config",
            &cfg,
            "--name",
            "bad",
            "--grid",
            "task.seq_len=16,33",
        ],
    );
    assert!(
        err.contains("task.seq_len") && err.contains("seq_len=33"),
        "{err}"
    );
    assert!(!dir.join("runs/bad").exists());
}

/// The grid is the product of the config's [sweep.grid] and the --grid axes; a --grid axis on a
/// key of [sweep.grid] replaces that axis, and the points are printed before they run.
#[test]
fn sweep_grid_axes_from_the_config_and_the_command_line() {
    let dir = tmp_dir("sweep-grid");
    let text = format!(
        "{TINY_MQAR}\n[sweep.grid]\n\"model.mamba.d_model\" = [16, 32]\n\"task.seq_len\" = [16, 32]\n"
    );
    let cfg = write(&dir, "g.toml", &text);
    let out = run_ok(
        &dir,
        &[
            "sweep",
            "--config",
            &cfg,
            "--grid",
            "task.seq_len=16,24,32",
            "--set",
            "train.steps=1",
            "--set",
            "eval.lengths=[]",
        ],
    );
    assert!(out.contains("6 points, the product of 2 axes"), "{out}");
    assert!(
        out.contains("model.mamba.d_model = [16, 32]  ([sweep.grid] of the config)"),
        "{out}"
    );
    assert!(
        out.contains("task.seq_len = [16, 24, 32]  (--grid, replacing the config's axis)"),
        "{out}"
    );
    assert!(out.contains("point d_model=32_seq_len=24"), "{out}");
    let summary = Table::read(&dir.join("runs/tiny-sweep/summary.csv")).unwrap();
    assert_eq!(summary.rows.len(), 6);
}
