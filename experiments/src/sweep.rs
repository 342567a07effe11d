//! Sweeps: a grid over any config keys, one run folder per point under `runs/<sweep>/`, each
//! trained by a child process of this binary (`--jobs` at a time), and `summary.csv` with one row
//! per point. The grid is the product of the config's `[sweep.grid]` axes and the `--grid` axes,
//! a `--grid` axis replacing the config's axis of the same key. Every point's config is resolved
//! and validated before anything is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ssm::Device;
use tracing::{info, warn};

use crate::checkpoint::CONFIG_FILE;
use crate::config::{self, RunConfig};
use crate::metrics::{EVAL_FILE, METRICS_FILE, Table, cell};
use crate::toml_keys::parse_value;
use crate::train::RUN_INFO_FILE;

pub const SUMMARY_FILE: &str = "summary.csv";
/// The grid of a sweep, in the sweep folder.
pub const SWEEP_FILE: &str = "sweep.toml";

/// One axis of the grid: a dotted config key and its values.
#[derive(Clone, Debug)]
pub struct Axis {
    pub key: String,
    pub values: Vec<toml::Value>,
}

/// Parses `--grid key=v1,v2,...` (a TOML array `key=[v1, v2]` works too).
pub fn parse_axis(text: &str) -> Result<Axis> {
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("--grid {text}: expected key=v1,v2,..."))?;
    let raw = raw.trim();
    let values = match parse_value(raw) {
        toml::Value::Array(a) => a,
        _ => raw.split(',').map(|v| parse_value(v.trim())).collect(),
    };
    if values.is_empty() {
        bail!("--grid {text}: no values");
    }
    Ok(Axis {
        key: key.trim().to_string(),
        values,
    })
}

/// A value as it appears in a folder name and in summary.csv.
fn plain(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A point's folder name: `key=value` pairs of the last key segments, joined by `_`.
fn point_name(axes: &[Axis], values: &[&toml::Value]) -> String {
    let short: Vec<&str> = axes
        .iter()
        .map(|a| a.key.rsplit('.').next().unwrap_or(&a.key))
        .collect();
    let unique = short.iter().collect::<BTreeSet<_>>().len() == short.len();
    let parts: Vec<String> = axes
        .iter()
        .zip(values)
        .zip(&short)
        .map(|((a, v), s)| {
            format!(
                "{}={}",
                if unique {
                    s.to_string()
                } else {
                    a.key.replace('.', "-")
                },
                plain(v)
            )
        })
        .collect();
    parts
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The cartesian product of the axes' values.
fn grid(axes: &[Axis]) -> Vec<Vec<&toml::Value>> {
    axes.iter().fold(vec![Vec::new()], |points, axis| {
        points
            .iter()
            .flat_map(|p| {
                axis.values
                    .iter()
                    .map(move |v| [p.clone(), vec![v]].concat())
            })
            .collect()
    })
}

pub struct SweepOptions {
    pub config: PathBuf,
    pub grid: Vec<String>,
    pub set: Vec<String>,
    pub name: Option<String>,
    pub jobs: usize,
    /// Where every point trains (`--device` of each `ssm-lab train`).
    pub device: Device,
}

/// A point ready to run: its folder name, its values on the axes, its resolved config.
pub(crate) struct Point {
    pub name: String,
    pub values: Vec<String>,
    pub config: RunConfig,
}

/// CPU threads of each of `jobs` runs side by side: the cores shared out, at least one.
pub(crate) fn threads_per_job(jobs: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / jobs.max(1)).max(1)
}

pub fn sweep(o: &SweepOptions) -> Result<PathBuf> {
    let text = std::fs::read_to_string(&o.config)
        .with_context(|| format!("cannot read config file {}", o.config.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", o.config.display()))?;
    // A --grid axis replaces the config's axis of the same key; the other axes of the config
    // stay, and the sweep runs their product.
    let mut axes = file_axes(&mut table, &o.config)?;
    let mut origins = vec!["[sweep.grid] of the config"; axes.len()];
    for g in &o.grid {
        let axis = parse_axis(g)?;
        let origin = match axes.iter().position(|a| a.key == axis.key) {
            Some(i) => {
                axes.remove(i);
                origins.remove(i);
                "--grid, replacing the config's axis"
            }
            None => "--grid",
        };
        axes.push(axis);
        origins.push(origin);
    }
    if axes.is_empty() {
        bail!(
            "sweep: no grid; give --grid KEY=V1,V2,... or a [sweep.grid] table in {}",
            o.config.display()
        );
    }
    if o.jobs == 0 {
        bail!("--jobs: must be at least 1");
    }
    let base_text = toml::to_string(&table).expect("tables serialize");
    let origin = o.config.display().to_string();
    let base = config::parse(&base_text, &origin, &o.set)?;
    // Not the config's own name: that is where `train` puts its run of the same config.
    let name = o
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-sweep", base.name));
    let sweep_dir = base.out_dir.join(&name);
    let threads_given =
        table.contains_key("threads") || o.set.iter().any(|s| s.starts_with("threads="));
    let mut points = Vec::new();
    for values in grid(&axes) {
        let point = point_name(&axes, &values);
        let mut overrides = o.set.clone();
        for (a, v) in axes.iter().zip(&values) {
            overrides.push(format!("{}={}", a.key, v));
        }
        overrides.push(format!(
            "out_dir={}",
            toml::Value::String(sweep_dir.display().to_string())
        ));
        overrides.push(format!("name={}", toml::Value::String(point.clone())));
        if !threads_given {
            overrides.push(format!("threads={}", threads_per_job(o.jobs)));
        }
        let config = config::resolve(&base_text, &origin, &overrides)
            .with_context(|| format!("sweep point {point}"))?;
        if points.iter().any(|p: &Point| p.name == point) {
            bail!(
                "sweep: two grid points share the folder name {point}; use values that differ in letters or digits"
            );
        }
        points.push(Point {
            name: point,
            values: values.iter().map(|v| plain(v)).collect(),
            config,
        });
    }
    print_grid(&sweep_dir, &axes, &origins, &points);
    open_sweep_dir(&sweep_dir, &axes, &points)?;
    let failed = run_points(&sweep_dir, &points, o.jobs, o.device)?;
    let keys: Vec<String> = axes.iter().map(|a| a.key.clone()).collect();
    let rows: Vec<(String, Vec<String>)> = points
        .iter()
        .map(|p| (p.name.clone(), p.values.clone()))
        .collect();
    write_summary(&sweep_dir, &keys, &rows)?;
    info!(
        "{}: {} points, summary in {}",
        sweep_dir.display(),
        points.len(),
        sweep_dir.join(SUMMARY_FILE).display()
    );
    if !failed.is_empty() {
        bail!(
            "sweep: {} of {} points failed ({}); see {}",
            failed.len(),
            points.len(),
            failed.join(", "),
            sweep_dir.join("logs").display()
        );
    }
    Ok(sweep_dir)
}

/// The axes, where each came from, and the points about to run.
fn print_grid(dir: &Path, axes: &[Axis], origins: &[&str], points: &[Point]) {
    println!(
        "sweep {}: {} points, the product of {} axes:",
        dir.display(),
        points.len(),
        axes.len()
    );
    for (a, origin) in axes.iter().zip(origins) {
        let values: Vec<String> = a.values.iter().map(plain).collect();
        println!("  {} = [{}]  ({origin})", a.key, values.join(", "));
    }
    for p in points {
        println!("  point {}", p.name);
    }
}

/// Takes the `[sweep]` table (`grid = { "key" = [values] }`) out of a config file.
fn file_axes(table: &mut toml::Table, path: &Path) -> Result<Vec<Axis>> {
    let Some(sweep) = table.remove("sweep") else {
        return Ok(Vec::new());
    };
    let toml::Value::Table(mut sweep) = sweep else {
        bail!("{}: config key `sweep`: expected a table", path.display());
    };
    let grid = sweep
        .remove("grid")
        .unwrap_or(toml::Value::Table(toml::Table::new()));
    if let Some(k) = sweep.keys().next() {
        bail!(
            "{}: config key `sweep.{k}`: unknown field, expected `grid`",
            path.display()
        );
    }
    let toml::Value::Table(grid) = grid else {
        bail!(
            "{}: config key `sweep.grid`: expected a table of key = [values]",
            path.display()
        );
    };
    grid.into_iter()
        .map(|(key, v)| match v {
            toml::Value::Array(values) if !values.is_empty() => Ok(Axis { key, values }),
            _ => bail!(
                "{}: config key `sweep.grid.\"{key}\"`: expected a non-empty array of values",
                path.display()
            ),
        })
        .collect()
}

/// Creates the sweep folder of `points`, or checks that the one there holds the very same points
/// and continues it.
pub(crate) fn open_sweep_dir(dir: &Path, axes: &[Axis], points: &[Point]) -> Result<()> {
    if dir.exists() {
        check_same_sweep(dir, points)?;
        info!(
            "{}: exists with the same points; continuing it (finished points are only checked)",
            dir.display()
        );
        Ok(())
    } else {
        create_sweep_dir(dir, axes, points)
    }
}

/// A sweep folder can be continued (after a kill, say) only by the very same points.
fn check_same_sweep(dir: &Path, points: &[Point]) -> Result<()> {
    let d = dir.display();
    if !dir.join(SWEEP_FILE).exists() {
        bail!("{d}: exists and is not a sweep folder (no {SWEEP_FILE}); choose another --name");
    }
    let configs = dir.join("configs");
    let mut stored: Vec<String> = std::fs::read_dir(&configs)
        .with_context(|| format!("cannot read {}", configs.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml") && !n.starts_with('.'))
        .collect();
    stored.sort();
    let mut wanted: Vec<String> = points.iter().map(|p| format!("{}.toml", p.name)).collect();
    wanted.sort();
    // The thread count may differ (another --jobs or machine): each point keeps the count it
    // started with, stored in its config, so that it continues bit-identically.
    let same_configs = || {
        points.iter().all(|p| {
            let path = configs.join(format!("{}.toml", p.name));
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| config::parse(&t, &path.display().to_string(), &[]).ok())
                .is_some_and(|mut c| {
                    c.threads = p.config.threads;
                    c == p.config
                })
        })
    };
    if stored != wanted || !same_configs() {
        bail!(
            "{d}: a sweep with other points or settings exists there; choose another --name to start a new one"
        );
    }
    Ok(())
}

fn create_sweep_dir(dir: &Path, axes: &[Axis], points: &[Point]) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.creating",
        dir.file_name().expect("named").to_string_lossy()
    ));
    ssm::io::remove_dir_all(&staging)?;
    for sub in ["configs", "logs"] {
        ssm::io::create_dir_all(&staging.join(sub))?;
    }
    for p in points {
        ssm::io::atomic_write(
            &staging.join("configs").join(format!("{}.toml", p.name)),
            p.config.to_toml().as_bytes(),
        )?;
    }
    let mut grid = toml::Table::new();
    for a in axes {
        grid.insert(a.key.clone(), toml::Value::Array(a.values.clone()));
    }
    let mut sweep = toml::Table::new();
    sweep.insert("grid".into(), toml::Value::Table(grid));
    ssm::io::atomic_write(
        &staging.join(SWEEP_FILE),
        toml::to_string_pretty(&toml::Table::from_iter([(
            "sweep".to_string(),
            toml::Value::Table(sweep),
        )]))?
        .as_bytes(),
    )?;
    ssm::io::rename(&staging, dir)?;
    Ok(())
}

/// Runs every point as `ssm-lab train --config configs/<point>.toml`, `jobs` at a time; returns
/// the names of the points that failed.
pub(crate) fn run_points(
    dir: &Path,
    points: &[Point],
    jobs: usize,
    device: Device,
) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot locate the ssm-lab binary")?;
    let mut queue = points.iter();
    let mut running: Vec<(&Point, Child)> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < jobs
            && let Some(p) = queue.next()
        {
            let log_path = dir.join("logs").join(format!("{}.log", p.name));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            // A point whose run folder exists (a sweep killed and started again) resumes.
            let run_dir = dir.join(&p.name);
            let mut cmd = Command::new(&exe);
            if run_dir.exists() {
                cmd.args(["train", "--resume"]).arg(&run_dir);
            } else {
                cmd.args(["train", "--config"])
                    .arg(dir.join("configs").join(format!("{}.toml", p.name)));
            }
            let child = cmd
                .args(["--device", &device.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            info!("point {} started", p.name);
            running.push((p, child));
        }
        if running.is_empty() {
            return Ok(failed);
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].1.try_wait()? {
                let (p, _) = running.swap_remove(i);
                if status.success() {
                    info!("point {} done", p.name);
                } else {
                    warn!(
                        "point {} failed ({status}); see {}",
                        p.name,
                        dir.join("logs").join(format!("{}.log", p.name)).display()
                    );
                    failed.push(p.name.clone());
                }
            } else {
                i += 1;
            }
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Writes `summary.csv` of the runs `dir/<name>` (one row each, with the grid `keys` and their
/// values; with a `seed` key also `mean`, `min` and `max` rows over the seeds): size (all and
/// non-embedding parameters) and FLOPs per token, steps and tokens trained, final training loss,
/// median throughput (first row, the warm-up, excluded), peak training memory, and the last
/// evaluation at every length (with bits per byte for byte corpora).
pub fn write_summary(dir: &Path, keys: &[String], runs: &[(String, Vec<String>)]) -> Result<()> {
    let mut lengths = BTreeSet::new();
    let mut rows = Vec::new();
    let mut bytes = false;
    for (name, values) in runs {
        let run = dir.join(name);
        let mut row = vec![name.clone()];
        row.extend(values.iter().cloned());
        let (status, cells, evals) = match summarize_run(&run) {
            Ok((c, e)) => ("ok", c, e),
            Err(e) => {
                warn!("{}: {e:#}", run.display());
                ("failed", vec![String::new(); RUN_COLUMNS.len()], Vec::new())
            }
        };
        row.push(status.into());
        row.extend(cells);
        lengths.extend(evals.iter().map(|e| e.length));
        bytes |= evals.iter().any(|e| e.bits_per_byte.is_finite());
        rows.push((row, evals));
    }
    let mut header: Vec<String> = ["point"]
        .iter()
        .map(|s| s.to_string())
        .chain(keys.iter().cloned())
        .collect();
    header.push("status".into());
    header.extend(RUN_COLUMNS.iter().map(|s| s.to_string()));
    for l in &lengths {
        header.extend([format!("loss@{l}"), format!("accuracy@{l}")]);
        if bytes {
            header.push(format!("bits_per_byte@{l}"));
        }
    }
    let mut rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(mut row, evals)| {
            for l in &lengths {
                let e = evals.iter().find(|e| e.length == *l);
                row.push(e.map_or(String::new(), |e| cell(e.loss)));
                row.push(e.map_or(String::new(), |e| cell(e.accuracy)));
                if bytes {
                    row.push(e.map_or(String::new(), |e| cell(e.bits_per_byte)));
                }
            }
            row
        })
        .collect();
    if let Some(seed) = keys.iter().position(|k| k == "seed") {
        let aggregates = seed_aggregates(&rows, 1 + seed, 1 + keys.len());
        rows.extend(aggregates);
    }
    Table {
        path: dir.join(SUMMARY_FILE),
        header,
        rows,
        torn: false,
    }
    .write(&dir.join(SUMMARY_FILE))
}

/// Rows `mean`, `min` and `max` (in the status column) over the seeds of every setting of the
/// other keys that finished at two seeds or more: numbers are aggregated over the runs with
/// status `ok`, text kept where all agree. `seed` and `status` are the columns of the seed and
/// the status.
fn seed_aggregates(rows: &[Vec<String>], seed: usize, status: usize) -> Vec<Vec<String>> {
    let mut groups: Vec<(Vec<&String>, Vec<&Vec<String>>)> = Vec::new();
    for row in rows.iter().filter(|r| r[status] == "ok") {
        let key: Vec<&String> = (1..status)
            .filter(|&i| i != seed)
            .map(|i| &row[i])
            .collect();
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(row),
            None => groups.push((key, vec![row])),
        }
    }
    let mut out = Vec::new();
    for (key, runs) in groups.iter().filter(|g| g.1.len() > 1) {
        let label = match key.is_empty() {
            true => "seeds".to_string(),
            false => key.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("_"),
        };
        for (what, pick) in [
            (
                "mean",
                (|v: &[f64]| v.iter().sum::<f64>() / v.len() as f64) as fn(&[f64]) -> f64,
            ),
            ("min", |v| v.iter().copied().fold(f64::INFINITY, f64::min)),
            ("max", |v| {
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            }),
        ] {
            let mut row = runs[0].clone();
            row[0] = format!("{label}_{what}");
            row[seed] = format!("{} seeds", runs.len());
            row[status] = what.into();
            for (i, c) in row.iter_mut().enumerate().skip(status + 1) {
                let numbers: Option<Vec<f64>> =
                    runs.iter().map(|r| r[i].parse::<f64>().ok()).collect();
                *c = match numbers {
                    Some(v) => cell(pick(&v)),
                    None if runs.iter().all(|r| r[i] == runs[0][i]) => runs[0][i].clone(),
                    None => String::new(),
                };
            }
            out.push(row);
        }
    }
    out
}

const RUN_COLUMNS: [&str; 12] = [
    "arch",
    "seq_len",
    "input_len",
    "num_params",
    "non_embedding_params",
    "flops_per_token",
    "steps",
    "tokens",
    "final_loss",
    "tokens_per_s",
    "peak_mem_mb",
    "elapsed_s",
];

/// One evaluation: its length, loss, accuracy and bits per byte (NaN but for byte corpora).
struct EvalPoint {
    length: usize,
    loss: f64,
    accuracy: f64,
    bits_per_byte: f64,
}

/// The summary cells of one run and its last evaluation.
fn summarize_run(run: &Path) -> Result<(Vec<String>, Vec<EvalPoint>)> {
    let info_path = run.join(RUN_INFO_FILE);
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&info_path)
            .with_context(|| format!("cannot read {}", info_path.display()))?,
    )?;
    let metrics = Table::read(&run.join(METRICS_FILE))?;
    if metrics.rows.is_empty() {
        bail!("{}: no rows", metrics.path.display());
    }
    let last = |col: &str| metrics.f64s(col).map(|v| *v.last().expect("rows"));
    let speed = metrics.f64s("tokens_per_s")?;
    let speed = if speed.len() > 1 {
        speed[1..].to_vec()
    } else {
        speed
    };
    // Training memory: the rows up to the first evaluation, whose long test sequences would
    // otherwise dominate.
    let eval_path = run.join(EVAL_FILE);
    let eval = if eval_path.exists() {
        Some(Table::read(&eval_path)?)
    } else {
        None
    };
    let first_eval = eval
        .as_ref()
        .and_then(|t| t.f64s("step").ok())
        .and_then(|s| s.first().copied())
        .unwrap_or(f64::INFINITY);
    let steps = metrics.f64s("step")?;
    let peak = metrics
        .f64s("peak_mem_mb")?
        .into_iter()
        .zip(&steps)
        .filter(|(m, s)| m.is_finite() && **s <= first_eval)
        .fold(f64::NAN, |a, (m, _)| a.max(m));
    let text = |k: &str| {
        info.get(k).map_or(String::new(), |v| {
            v.as_str().map_or(v.to_string(), str::to_string)
        })
    };
    let cells = vec![
        text("arch"),
        text("seq_len"),
        text("input_len"),
        text("num_params"),
        text("non_embedding_params"),
        text("flops_per_token"),
        cell(last("step")?),
        cell(last("tokens")?),
        cell(last("loss")?),
        format!("{:.1}", median(speed)),
        cell(peak),
        cell(last("elapsed_s")?),
    ];
    let mut evals = Vec::new();
    if let Some(t) = eval {
        let (steps, lengths, losses, accs, bpb) = (
            t.f64s("step")?,
            t.f64s("length")?,
            t.f64s("loss")?,
            t.f64s("accuracy")?,
            t.f64s("bits_per_byte")?,
        );
        if let Some(&final_step) = steps.last() {
            for i in (0..steps.len()).filter(|&i| steps[i] == final_step) {
                evals.push(EvalPoint {
                    length: lengths[i] as usize,
                    loss: losses[i],
                    accuracy: accs[i],
                    bits_per_byte: bpb[i],
                });
            }
        }
    }
    Ok((cells, evals))
}

/// The run folders of a sweep (or demo) folder, from its summary.csv.
pub fn sweep_runs(dir: &Path) -> Result<Vec<PathBuf>> {
    let t = Table::read(&dir.join(SUMMARY_FILE))?;
    let (points, status) = (t.strings("point")?, t.strings("status")?);
    Ok(points
        .into_iter()
        .zip(status)
        .filter(|(_, s)| s == "ok")
        .map(|(p, _)| dir.join(p))
        .collect())
}

/// Whether `dir` holds a finished-or-running run (its config and metrics).
pub fn is_run(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).exists() && dir.join(METRICS_FILE).exists()
}
