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
use crate::sweep::{Point, SUMMARY_FILE, run_points, threads_per_job, write_summary};

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

/// How a comparison runs.
pub struct CompareOptions<'a> {
    /// `--seeds`: comma-separated seeds (default: the config's `seeds`, else its `seed`).
    pub seeds: Option<&'a str>,
    /// `--set` overrides of the config.
    pub overrides: &'a [String],
    /// Runs trained side by side, each a child process `ssm-lab train` with the cores shared out
    /// (unless the config sets `threads`); `None`: one per core on the CPU, one on a GPU.
    pub jobs: Option<usize>,
    pub device: Device,
}

/// The demo: `compare` of `DEMO_ARCHS` with the built-in config, into `out_dir/demo`.
pub fn demo(out_dir: &Path, o: &CompareOptions) -> Result<PathBuf> {
    compare(
        DEMO_CONFIG,
        "configs/demo.toml (built in)",
        &out_dir.join("demo"),
        DEMO_ARCHS,
        o,
    )
}

/// Trains the config once per architecture in `archs` (as `model.arch`), each into `dir/<arch>`,
/// sized to the first one's parameter count unless its `d_model` is given (`sizes`), then writes
/// `dir/summary.csv`, plots them together under `dir/plots` and prints a table. Every config is
/// resolved and validated before anything is written; `dir/configs/` keeps them and `dir/logs/`
/// the output of each run.
pub fn compare(
    config_text: &str,
    origin: &str,
    dir: &Path,
    archs: &[&str],
    o: &CompareOptions,
) -> Result<PathBuf> {
    if archs.is_empty() {
        bail!("--archs: name at least one architecture");
    }
    if let Some(a) = recipes::first_repeat(archs) {
        bail!("--archs: `{a}` is named twice; each architecture gets one run folder");
    }
    let entries: Vec<Entry> = archs
        .iter()
        .map(|a| Entry {
            name: a.to_string(),
            arch: a.to_string(),
            overrides: Vec::new(),
        })
        .collect();
    compare_entries(config_text, origin, dir, &entries, "model.arch", o)
}

/// One model of a comparison: its folder name, its architecture, and overrides of its own (an
/// ablation, another position encoding) on top of the comparison's.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub arch: String,
    pub overrides: Vec<String>,
}

/// [`compare`] of any entries; `key` names the summary.csv column of the entry names.
pub fn compare_entries(
    config_text: &str,
    origin: &str,
    dir: &Path,
    entries: &[Entry],
    key: &str,
    o: &CompareOptions,
) -> Result<PathBuf> {
    let overrides = o.overrides;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    if let Some(n) = recipes::first_repeat(&names) {
        bail!("compare: `{n}` is named twice; each entry gets one run folder");
    }
    if o.jobs == Some(0) {
        bail!("--jobs: must be at least 1");
    }
    let mut table: toml::Table =
        toml::from_str(config_text).with_context(|| format!("{origin}: invalid TOML"))?;
    for o in overrides {
        crate::toml_keys::apply_override(&mut table, o)?;
    }
    let seeds = recipes::seeds(&table, o.seeds, origin)?;
    // Per entry: its own keys first, so that the comparison's overrides (`--set`) win.
    let entry_overrides: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut o = e.overrides.clone();
            o.extend(overrides.iter().cloned());
            o.push(format!("model.arch={}", e.arch));
            o.push(format!(
                "out_dir={}",
                toml::Value::String(dir.display().to_string())
            ));
            o.push(format!("name={}", toml::Value::String(e.name.clone())));
            o
        })
        .collect();
    let mut configs = entries
        .iter()
        .zip(&entry_overrides)
        .map(|(e, o)| {
            config::resolve(config_text, origin, o).with_context(|| format!("entry {}", e.name))
        })
        .collect::<Result<Vec<RunConfig>>>()?;
    let sizes = match_sizes(&mut configs, config_text, &entry_overrides)?;
    // Every architecture at every seed, seed by seed; the sizes do not depend on the seed.
    let n_seeds = seeds.len();
    let jobs = o.jobs.unwrap_or(if o.device.is_cuda() {
        1
    } else {
        threads_per_job(1)
    });
    let jobs = jobs.min(n_seeds * configs.len());
    let threads = match table.contains_key("threads") {
        true => configs[0].threads,
        false => threads_per_job(jobs),
    };
    let runs: Vec<RunConfig> = seeds
        .iter()
        .flat_map(|&seed| {
            configs.iter().zip(&names).map(move |(c, name)| RunConfig {
                seed,
                threads,
                name: run_name(name, seed, n_seeds),
                ..c.clone()
            })
        })
        .collect();
    for c in &runs {
        config::validate(c)?;
    }
    print_sizes(&sizes, &names);
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
    for sub in ["configs", "logs"] {
        ssm::io::create_dir_all(&staging.join(sub))?;
    }
    for c in &runs {
        let path = staging.join("configs").join(format!("{}.toml", c.name));
        ssm::io::atomic_write(&path, c.to_toml().as_bytes())?;
    }
    ssm::io::atomic_write(&staging.join(MARKER), config_text.as_bytes())?;
    ssm::io::rename(&staging, dir)?;
    println!(
        "{} runs, {jobs} at a time with {threads} thread(s) each; their output in {}",
        runs.len(),
        dir.join("logs").display()
    );
    let points: Vec<Point> = runs
        .iter()
        .map(|c| Point {
            name: c.name.clone(),
            values: Vec::new(),
            config: c.clone(),
        })
        .collect();
    let failed = run_points(dir, &points, jobs, o.device)?;
    let mut keys = vec![key.to_string()];
    if seeds.len() > 1 {
        keys.push("seed".into());
    }
    let rows: Vec<(String, Vec<String>)> = runs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut values = vec![names[i % names.len()].to_string()];
            if seeds.len() > 1 {
                values.push(c.seed.to_string());
            }
            (c.name.clone(), values)
        })
        .collect();
    write_summary(dir, &keys, &rows)?;
    if !failed.is_empty() {
        bail!(
            "compare: {} of {} runs failed ({}); see {}",
            failed.len(),
            runs.len(),
            failed.join(", "),
            dir.join("logs").display()
        );
    }
    let files = plot(&[dir.to_path_buf()], &dir.join("plots"))?;
    print_table(dir, &configs, &names, &sizes, &seeds)?;
    println!(
        "\nresults in {}: {SUMMARY_FILE}, */metrics.csv, */eval.csv, plots/ ({} files)",
        dir.display(),
        files.len()
    );
    Ok(dir.to_path_buf())
}

/// The sizes of the entries `names` and how they were chosen; a loud warning when set sizes are
/// far apart.
fn print_sizes(sizes: &[Size], names: &[&str]) {
    let reference = &sizes[0];
    println!(
        "compare: {} has {} parameters (d_model {}); the others are sized to match unless their d_model is set",
        names[0],
        thousands(reference.num_params),
        reference.d_model
    );
    for (s, name) in sizes.iter().zip(names).skip(1) {
        let how = match s.origin {
            SizeOrigin::Explicit => "as set",
            _ => "matched",
        };
        println!(
            "  {:<20} d_model {:>5} ({how}): {:>12} parameters ({:+.1}%)",
            name,
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

/// The run folder of entry `name` at `seed`: `<name>`, or `<name>-seed<k>` when there are
/// several seeds.
fn run_name(name: &str, seed: u64, seeds: usize) -> String {
    if seeds > 1 {
        format!("{name}-seed{seed}")
    } else {
        name.to_string()
    }
}

/// Parameters, training time, and the held-out loss and accuracy of the last evaluation at every
/// test length, all from summary.csv: one line per run, and with several seeds the mean and the
/// range [min, max] of each architecture. The `[train]` keys that differ between the
/// architectures are listed.
fn print_table(
    dir: &Path,
    configs: &[RunConfig],
    names: &[&str],
    sizes: &[Size],
    seeds: &[u64],
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
        println!("training recipes differ ({}):", names.join(" / "));
        for d in differ {
            println!("  {d}");
        }
    }
    let mut lengths: Vec<usize> = configs.iter().flat_map(|c| c.eval_lengths()).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut header = format!("{:<28} {:>12} {:>9}", "run", "params", "time (s)");
    for l in &lengths {
        header += &format!(" {:>9} {:>9}", format!("loss@{l}"), format!("acc@{l}"));
    }
    println!("{header}");
    let summary = Table::read(&dir.join(SUMMARY_FILE))?;
    let (points, status) = (summary.strings("point")?, summary.strings("status")?);
    let column = |name: &str| summary.f64s(name);
    let mut columns = vec![column("elapsed_s")?];
    for l in &lengths {
        columns.push(column(&format!("loss@{l}"))?);
        columns.push(column(&format!("accuracy@{l}"))?);
    }
    let row = |i: usize| columns.iter().map(|c| c[i]).collect::<Vec<f64>>();
    let line = |name: &str, params: &str, v: &[f64]| {
        let mut line = format!("{name:<28} {params:>12} {:>9.1}", v[0]);
        for pair in v[1..].chunks(2) {
            line += &match pair[0].is_finite() {
                true => format!(" {:>9.4} {:>9.3}", pair[0], pair[1]),
                false => format!(" {:>9} {:>9}", "-", "-"),
            };
        }
        println!("{line}");
    };
    let runs = sizes.len() * seeds.len();
    for i in 0..runs {
        line(
            &points[i],
            &thousands(sizes[i % sizes.len()].num_params),
            &row(i),
        );
    }
    if seeds.len() < 2 {
        return Ok(());
    }
    let at = |arch: &str, what: &str| {
        (runs..status.len()).find(|&i| status[i] == what && summary.rows[i][1] == arch)
    };
    println!("over {} seeds: mean, and [min-max] below it", seeds.len());
    for (s, name) in sizes.iter().zip(names) {
        let (Some(mean), Some(min), Some(max)) =
            (at(name, "mean"), at(name, "min"), at(name, "max"))
        else {
            continue;
        };
        line(
            &format!("{name} mean"),
            &thousands(s.num_params),
            &row(mean),
        );
        let mut range = format!("{:<28} {:>12} {:>9}", "", "", "");
        for (lo, hi) in row(min).iter().zip(row(max)).skip(1) {
            let cell = match lo.is_finite() {
                true => format!("{lo:.2}-{hi:.2}"),
                false => "-".into(),
            };
            range += &format!(" {cell:>9}");
        }
        println!("{range}");
    }
    Ok(())
}
