//! `ssm-lab reproduce`: every built-in suite runs in its `--quick` form and writes its results
//! table next to the paper's figures, summary.csv with the seed aggregates, and plots; an unknown
//! suite is an error that lists the suites.

use experiments::metrics::Table;
use experiments::reproduce::{RESULTS_FILE, SUITES};

use crate::common::*;

#[test]
fn every_suite_runs_quick_and_writes_its_results_table() {
    let dir = tmp_dir("reproduce");
    for suite in SUITES {
        let stdout = run_ok(&dir, &["reproduce", suite.name, "--quick"]);
        let root = dir.join(format!("runs/reproduce-{}-quick", suite.name));
        let table = std::fs::read_to_string(root.join(RESULTS_FILE)).unwrap();
        assert!(stdout.contains(&table), "{} printed its table", suite.name);
        assert!(
            table.contains(suite.result) && table.contains("not a result"),
            "{table}"
        );
        assert!(table.contains("over 2 seeds (0, 1)"), "{table}");
        let summary = Table::read(&root.join("summary.csv")).unwrap();
        let (variant, status) = (
            summary.strings("variant").unwrap(),
            summary.strings("status").unwrap(),
        );
        let acc = summary.f64s("accuracy@64").unwrap();
        let params = summary.f64s("num_params").unwrap();
        // One row per model in the table, with its mean and range over both seeds, and the
        // paper's figure with where it stands in the paper.
        // A grid suite has a row per model and width, its run named by both and the length.
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        let grid = rows[0].starts_with("| model | d_model |");
        assert_eq!(rows.len(), 1 + variant.len() / 5, "{table}");
        for row in &rows[1..] {
            let cols: Vec<&str> = row.trim_start_matches("| ").split(" | ").collect();
            let name = match grid {
                true => format!("{}-L64-d{}", cols[0], cols[1]),
                false => cols[0].to_string(),
            };
            let name = name.as_str();
            let at = |what: &str| {
                (0..variant.len())
                    .find(|&i| variant[i] == name && status[i] == what)
                    .unwrap_or_else(|| panic!("{name} {what} in summary.csv"))
            };
            let (mean, min, max) = (at("mean"), at("min"), at("max"));
            let runs: Vec<f64> = (0..variant.len())
                .filter(|&i| variant[i] == name && status[i] == "ok")
                .map(|i| acc[i])
                .collect();
            assert_eq!(runs.len(), 2, "{name}");
            assert!((acc[mean] - (runs[0] + runs[1]) / 2.0).abs() < 1e-12);
            let cell = format!("| {:.3} [{:.2}-{:.2}] |", acc[mean], acc[min], acc[max]);
            assert!(row.contains(&cell), "{cell} in {row}");
            let shown = experiments::sizes::thousands(params[mean] as usize);
            assert!(row.contains(&shown), "{shown} in {row}");
            assert!(row.contains("Table ") || row.contains("Figure "), "{row}");
        }
        let by = if grid { "width" } else { "length" };
        for plot in [format!("accuracy_vs_{by}.png"), "loss.png".into()] {
            assert!(root.join("plots").join(&plot).exists(), "{plot}");
        }
    }
    // The non-selective ablation trains at the selective Mamba's width.
    let c = std::fs::read_to_string(
        dir.join("runs/reproduce-selective-copying-quick/mamba-s4-seed0/config.toml"),
    )
    .unwrap();
    assert!(
        c.contains("selective = false") && c.contains("d_model = 64"),
        "{c}"
    );

    let out = run(&dir, &["reproduce", "copying"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no suite `copying`")
            && err.contains("selective-copying, induction-heads, mqar"),
        "{err}"
    );
    assert!(!dir.join("runs/reproduce-copying").exists());

    // The grid suite trains every model at every width, its own d_model, length and batch.
    let c = std::fs::read_to_string(
        dir.join("runs/reproduce-mqar-quick/attention-L64-d16-seed1/config.toml"),
    )
    .unwrap();
    let c = experiments::config::parse(&c, "", &[]).unwrap();
    assert_eq!(
        (
            c.model.transformer.unwrap().d_model,
            c.task.seq_len,
            c.train.batch_size,
            c.seed
        ),
        (16, 64, 64, 1)
    );
}
