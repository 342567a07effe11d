//! `ssm-lab compare` trains several architectures on the same task, data and seed, sized to about
//! the same parameter count (see `sizes`), with one run folder each, summary.csv, plots side by
//! side and a results table; `ssm-lab demo` is a compare of Mamba and the Transformer baseline
//! with a built-in config that reaches high accuracy in a few minutes on two cores.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ssm::Device;

use crate::config::{self, RunConfig, TrainConfig};
use crate::metrics::Table;
use crate::plot::plot;
use crate::recipes;
use crate::sizes::{MAX_MISMATCH, Size, SizeOrigin, match_sizes, thousands};
use crate::sweep::{SUMMARY_FILE, write_summary};
use crate::train::{self, Outcome, TrainOptions};

/// The demo's config, built into the binary so that the demo runs from any folder.
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.toml");

/// The architectures the demo compares: same task, data, seed, optimizer and schedule.
pub const DEMO_ARCHS: &[&str] = &["mamba", "transformer"];

/// Written into a compare folder with the config it ran: it marks a folder written by compare or
/// demo, which the next compare of the same name may replace.
pub const MARKER: &str = "compare.toml";

/// The hidden sibling `.NAME.what` of `dir`, where it is assembled or taken apart.
fn aside(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or("compare".into(), |n| n.to_string_lossy());
    dir.with_file_name(format!(".{name}.{what}"))
}

/// The demo: `compare` of `DEMO_ARCHS` with the built-in config, into `out_dir/demo`.
pub fn demo(
    out_dir: &Path,
    seeds: Option<&str>,
    overrides: &[String],
    device: Device,
) -> Result<PathBuf> {
    compare(
        DEMO_CONFIG,
        "configs/demo.toml (built in)",
        &out_dir.join("demo"),
        DEMO_ARCHS,
        seeds,
        overrides,
        device,
    )
}

/// Trains the config once per architecture in `archs` (as `model.arch`), each into `dir/<arch>`,
/// sized to the first one's parameter count unless its `d_model` is given (`sizes`), then writes
/// `dir/summary.csv`, plots them together under `dir/plots` and prints a table. Every config is
/// resolved and validated before anything is written.
pub fn compare(
    config_text: &str,
    origin: &str,
    dir: &Path,
    archs: &[&str],
    seeds: Option<&str>,
    overrides: &[String],
    device: Device,
) -> Result<PathBuf> {
    if archs.is_empty() {
        bail!("--archs: name at least one architecture");
    }
    if let Some(a) = recipes::first_repeat(archs) {
        bail!("--archs: `{a}` is named twice; each architecture gets one run folder");
    }
    let mut table: toml::Table =
        toml::from_str(config_text).with_context(|| format!("{origin}: invalid TOML"))?;
    for o in overrides {
        config::apply_override(&mut table, o)?;
    }
    let seeds = recipes::seeds(&table, seeds, origin)?;
    let mut configs = archs
        .iter()
        .map(|arch| {
            let mut o = overrides.to_vec();
            o.push(format!("model.arch={arch}"));
            o.push(format!(
                "out_dir={}",
                toml::Value::String(dir.display().to_string())
            ));
            o.push(format!("name={arch}"));
            config::resolve(config_text, origin, &o)
        })
        .collect::<Result<Vec<RunConfig>>>()?;
    let sizes = match_sizes(&mut configs, config_text, overrides)?;
    // Every architecture at every seed, seed by seed; the sizes do not depend on the seed.
    let n_seeds = seeds.len();
    let runs: Vec<RunConfig> = seeds
        .iter()
        .flat_map(|&seed| {
            configs.iter().map(move |c| RunConfig {
                seed,
                name: run_name(c.model.arch.name(), seed, n_seeds),
                ..c.clone()
            })
        })
        .collect();
    for c in &runs {
        config::validate(c)?;
    }
    print_sizes(&sizes);
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{}: exists and was not written by compare or demo (no {MARKER}); move it away or choose another folder",
                dir.display()
            );
        }
        // Renamed aside first: a kill while removing never leaves a folder without its marker.
        let old = aside(dir, "removing");
        ssm::io::remove_dir_all(&old)?;
        ssm::io::rename(dir, &old)?;
        ssm::io::remove_dir_all(&old)?;
    }
    // Assembled aside with its marker and renamed into place: a kill never leaves a folder
    // without the marker, which the next compare would refuse to replace.
    let staging = aside(dir, "creating");
    ssm::io::remove_dir_all(&staging)?;
    ssm::io::create_dir_all(&staging)?;
    ssm::io::atomic_write(&staging.join(MARKER), config_text.as_bytes())?;
    ssm::io::rename(&staging, dir)?;
    let outcomes = runs
        .iter()
        .map(|c| {
            let options = TrainOptions {
                device,
                ..TrainOptions::default()
            };
            train::start(c, &options)
        })
        .collect::<Result<Vec<Outcome>>>()?;
    let mut keys = vec!["model.arch".to_string()];
    if seeds.len() > 1 {
        keys.push("seed".into());
    }
    let rows: Vec<(String, Vec<String>)> = runs
        .iter()
        .map(|c| {
            let mut values = vec![c.model.arch.name().to_string()];
            if seeds.len() > 1 {
                values.push(c.seed.to_string());
            }
            (c.name.clone(), values)
        })
        .collect();
    write_summary(dir, &keys, &rows)?;
    let files = plot(&[dir.to_path_buf()], &dir.join("plots"))?;
    print_table(dir, &configs, &sizes, &seeds, &outcomes)?;
    println!(
        "\nresults in {}: {SUMMARY_FILE}, */metrics.csv, */eval.csv, plots/ ({} files)",
        dir.display(),
        files.len()
    );
    Ok(dir.to_path_buf())
}

/// The sizes and how they were chosen; a loud warning when set sizes are far apart.
fn print_sizes(sizes: &[Size]) {
    let reference = &sizes[0];
    println!(
        "compare: {} has {} parameters (d_model {}); the others are sized to match unless their d_model is set",
        reference.arch.name(),
        thousands(reference.num_params),
        reference.d_model
    );
    for s in &sizes[1..] {
        let how = match s.origin {
            SizeOrigin::Explicit => "as set",
            _ => "matched",
        };
        println!(
            "  {:<12} d_model {:>5} ({how}): {:>12} parameters ({:+.1}%)",
            s.arch.name(),
            s.d_model,
            thousands(s.num_params),
            100.0 * s.mismatch(reference)
        );
    }
    let unequal: Vec<&Size> = sizes[1..]
        .iter()
        .filter(|s| s.mismatch(reference).abs() > MAX_MISMATCH)
        .collect();
    for s in unequal {
        let advice = match s.origin {
            SizeOrigin::Explicit => format!(
                "drop `model.{}.d_model` to let compare match the sizes",
                s.arch.name()
            ),
            _ => format!(
                "even its closest allowed width is that far off; change its depth (`model.{}.n_layer`, or `pattern` of a hybrid)",
                s.arch.name()
            ),
        };
        let warning = format!(
            "WARNING: {} has {} parameters, {:+.0}% from {}'s {}: this comparison is not on equal terms; {advice}.",
            s.arch.name(),
            thousands(s.num_params),
            100.0 * s.mismatch(reference),
            reference.arch.name(),
            thousands(reference.num_params),
        );
        eprintln!("\n{warning}\n");
    }
}

/// The run folder of `arch` at `seed`: `<arch>`, or `<arch>-seed<k>` when there are several seeds.
fn run_name(arch: &str, seed: u64, seeds: usize) -> String {
    if seeds > 1 {
        format!("{arch}-seed{seed}")
    } else {
        arch.to_string()
    }
}

/// Parameters, wall time, and the held-out loss and accuracy of the last evaluation at every
/// test length: one line per run, and with several seeds the mean and the range [min, max] of
/// each architecture (from summary.csv). The `[train]` keys that differ between the architectures are listed.
fn print_table(
    dir: &Path,
    configs: &[RunConfig],
    sizes: &[Size],
    seeds: &[u64],
    outcomes: &[Outcome],
) -> Result<()> {
    let config = &configs[0];
    let t = &config.task;
    println!(
        "\ncompare: task {}, trained at length {} for {} steps, seeds {seeds:?}; held-out loss (nats) and accuracy of the last evaluation",
        t.kind.name(),
        t.seq_len,
        config.train.steps
    );
    let trains: Vec<&TrainConfig> = configs.iter().map(|c| &c.train).collect();
    let differ = recipes::differences(&trains);
    if !differ.is_empty() {
        let order: Vec<&str> = configs.iter().map(|c| c.model.arch.name()).collect();
        println!("training recipes differ ({}):", order.join(" / "));
        for d in differ {
            println!("  {d}");
        }
    }
    let lengths = config.eval_lengths();
    let mut header = format!("{:<20} {:>12} {:>9}", "run", "params", "time (s)");
    for l in &lengths {
        header += &format!(" {:>9} {:>9}", format!("loss@{l}"), format!("acc@{l}"));
    }
    println!("{header}");
    // Per run: wall time, then (loss, accuracy) at each length.
    let cells = |o: &Outcome| -> Vec<f64> {
        let mut v = vec![o.elapsed_s];
        for l in &lengths {
            let e = o.evals.iter().find(|e| e.length == *l);
            v.extend(e.map_or([f64::NAN; 2], |e| [e.loss, e.accuracy]));
        }
        v
    };
    let line = |name: &str, params: &str, v: &[f64]| {
        let mut line = format!("{name:<20} {params:>12} {:>9.1}", v[0]);
        for pair in v[1..].chunks(2) {
            line += &format!(" {:>9.4} {:>9.3}", pair[0], pair[1]);
        }
        println!("{line}");
    };
    for (i, o) in outcomes.iter().enumerate() {
        let s = &sizes[i % sizes.len()];
        let name = run_name(s.arch.name(), seeds[i / sizes.len()], seeds.len());
        line(&name, &thousands(s.num_params), &cells(o));
    }
    if seeds.len() < 2 {
        return Ok(());
    }
    // The aggregates are summary.csv's mean, min and max rows.
    let summary = Table::read(&dir.join(SUMMARY_FILE))?;
    let status = summary.strings("status")?;
    let column = |name: &str| summary.f64s(name);
    let mut columns = vec![column("elapsed_s")?];
    for l in &lengths {
        columns.push(column(&format!("loss@{l}"))?);
        columns.push(column(&format!("accuracy@{l}"))?);
    }
    let row = |i: usize| columns.iter().map(|c| c[i]).collect::<Vec<f64>>();
    let at = |arch: &str, what: &str| {
        (0..status.len()).find(|&i| status[i] == what && summary.rows[i][1] == arch)
    };
    println!("over {} seeds: mean, and [min-max] below it", seeds.len());
    for s in sizes {
        let arch = s.arch.name();
        let (Some(mean), Some(min), Some(max)) =
            (at(arch, "mean"), at(arch, "min"), at(arch, "max"))
        else {
            continue;
        };
        line(
            &format!("{arch} mean"),
            &thousands(s.num_params),
            &row(mean),
        );
        let mut range = format!("{:<20} {:>12} {:>9}", "", "", "");
        for (lo, hi) in row(min).iter().zip(row(max)).skip(1) {
            range += &format!(" {:>9}", format!("{lo:.2}-{hi:.2}"));
        }
        println!("{range}");
    }
    Ok(())
}
