//! `ssm-lab scaling`: a family of model sizes per architecture trained on byte-level language
//! modelling, each for a number of tokens proportional to its size (a fixed tokens-per-parameter
//! rule, as Hoffmann et al. 2022 recommend for compute-optimal training), and the final held-out
//! loss of each fitted against training compute and against non-embedding parameters, one law per
//! architecture (`fit`). The grid is the config's `[scaling]` table: every architecture of
//! `archs` at every width of `widths`, with depth and the rest as its `[model.<arch>]` and
//! `[train.<arch>]` sections set them. It runs as a sweep (points in parallel, a killed grid
//! continues where it stopped, summary.csv) and adds fits.csv, the scaling plots and the
//! training curves of every point.

pub mod fit;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use ssm::Device;

use crate::config::{self, Arch, RunConfig, TaskKind};
use crate::metrics::{Table, cell};
use crate::recipes;
use crate::sizes::thousands;
use crate::sweep::{
    Axis, Point, SUMMARY_FILE, open_sweep_dir, run_points, threads_per_job, write_summary,
};
use fit::Fit;

/// The default grid, built into the binary so that `scaling` runs from any folder.
pub const SCALING_CONFIG: &str = include_str!("../../configs/scaling.toml");
pub const FITS_FILE: &str = "fits.csv";
/// The config a scaling folder was made from, kept in it.
pub const GRID_FILE: &str = "scaling.toml";

/// `[scaling]`: the grid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grid {
    /// Architectures, each trained at every width.
    archs: Vec<String>,
    /// `model.<arch>.d_model` of the sizes.
    widths: Vec<usize>,
    /// Training tokens per non-embedding parameter.
    tokens_per_param: f64,
    /// Warm-up steps as a share of each point's steps (default 0.05).
    #[serde(default = "default_warmup")]
    warmup_fraction: f64,
    /// `[scaling.quick]`: what `--quick` changes.
    quick: Option<Quick>,
}

fn default_warmup() -> f64 {
    0.05
}

/// `[scaling.quick]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quick {
    widths: Vec<usize>,
    tokens_per_param: f64,
    /// Overrides of config keys (`key=value`), before those of `--set`.
    #[serde(default)]
    set: Vec<String>,
}

pub struct ScalingOptions<'a> {
    /// A config with a `[scaling]` table; `None`: the built-in one.
    pub config: Option<&'a Path>,
    /// The grid's `[scaling.quick]` variant, into `<name>-quick`.
    pub quick: bool,
    /// Parent folder of the scaling folder.
    pub out: &'a Path,
    /// Folder name (default "scaling").
    pub name: Option<String>,
    pub set: &'a [String],
    /// Points trained side by side (default: one per core on the CPU, one on a GPU).
    pub jobs: Option<usize>,
    pub device: Device,
}

/// A point of the grid as planned.
struct Planned {
    arch: Arch,
    width: usize,
    non_embedding: usize,
    tokens: u64,
    config: RunConfig,
}

/// Runs the grid into `out/<name>` and writes summary.csv, fits.csv and plots; returns the folder.
pub fn scaling(o: &ScalingOptions) -> Result<PathBuf> {
    let (text, origin) = match o.config {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            SCALING_CONFIG.to_string(),
            "configs/scaling.toml (built in)".to_string(),
        ),
    };
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{origin}: invalid TOML"))?;
    let grid: Grid = table
        .remove("scaling")
        .with_context(|| format!("{origin}: no [scaling] table (archs, widths, tokens_per_param)"))?
        .try_into()
        .with_context(|| format!("{origin}: config key `scaling`"))?;
    let (widths, tokens_per_param, mut overrides) = match (&grid.quick, o.quick) {
        (Some(q), true) => (q.widths.clone(), q.tokens_per_param, q.set.clone()),
        (None, true) => bail!("{origin}: --quick needs a [scaling.quick] table"),
        (_, false) => (grid.widths.clone(), grid.tokens_per_param, Vec::new()),
    };
    overrides.extend(o.set.iter().cloned());
    check_grid(&grid, &widths, tokens_per_param, o.jobs)?;
    let name = o.name.clone().unwrap_or_else(|| match o.quick {
        true => "scaling-quick".into(),
        false => "scaling".into(),
    });
    let dir = o.out.join(&name);
    let jobs = o
        .jobs
        .unwrap_or(if o.device.is_cuda() {
            1
        } else {
            threads_per_job(1)
        })
        .min(grid.archs.len() * widths.len());
    let threads_given =
        table.contains_key("threads") || overrides.iter().any(|s| s.starts_with("threads="));
    let base = toml::to_string(&table).expect("tables serialize");
    let mut planned = Vec::new();
    for arch in &grid.archs {
        let arch = Arch::parse(arch).expect("checked");
        for &width in &widths {
            let point = point_name(arch, width);
            let mut set = overrides.clone();
            set.extend([
                format!("model.arch={}", arch.name()),
                format!("model.{}.d_model={width}", arch.name()),
                format!("out_dir={}", toml::Value::String(dir.display().to_string())),
                format!("name={}", toml::Value::String(point.clone())),
            ]);
            if !threads_given {
                set.push(format!("threads={}", threads_per_job(jobs)));
            }
            let p = plan(&base, &origin, &set, arch, width, tokens_per_param, &grid)
                .with_context(|| format!("scaling point {point}"))?;
            planned.push(p);
        }
    }
    print_plan(&dir, &planned, tokens_per_param, jobs);
    let points: Vec<Point> = planned
        .iter()
        .map(|p| Point {
            name: p.config.name.clone(),
            values: vec![p.arch.name().to_string(), p.width.to_string()],
            config: p.config.clone(),
        })
        .collect();
    let axes = [
        Axis {
            key: "model.arch".into(),
            values: grid
                .archs
                .iter()
                .map(|a| toml::Value::String(a.clone()))
                .collect(),
        },
        Axis {
            key: "width".into(),
            values: widths
                .iter()
                .map(|&w| toml::Value::Integer(w as i64))
                .collect(),
        },
    ];
    open_sweep_dir(&dir, &axes, &points)?;
    ssm::io::atomic_write(&dir.join(GRID_FILE), text.as_bytes())?;
    let failed = run_points(&dir, &points, jobs, o.device)?;
    let keys = vec!["model.arch".to_string(), "width".to_string()];
    let rows: Vec<(String, Vec<String>)> = points
        .iter()
        .map(|p| (p.name.clone(), p.values.clone()))
        .collect();
    write_summary(&dir, &keys, &rows)?;
    // Fits and plots of whatever finished, also when some points failed.
    let outcome = results(&dir, planned[0].config.task.seq_len).and_then(|r| {
        print_results(&r);
        crate::plot::scaling::plot(&dir, &r)
    });
    if !failed.is_empty() {
        bail!(
            "scaling: {} of {} points failed ({}); see {}{}",
            failed.len(),
            points.len(),
            failed.join(", "),
            dir.join("logs").display(),
            outcome
                .err()
                .map_or(String::new(), |e| format!("; no fits: {e:#}"))
        );
    }
    let files = outcome?;
    println!(
        "\nresults in {}: {SUMMARY_FILE}, {FITS_FILE}, plots/ ({} files)",
        dir.display(),
        files.len()
    );
    Ok(dir)
}

fn point_name(arch: Arch, width: usize) -> String {
    format!("{}-d{width}", arch.name())
}

fn check_grid(
    grid: &Grid,
    widths: &[usize],
    tokens_per_param: f64,
    jobs: Option<usize>,
) -> Result<()> {
    if grid.archs.is_empty() {
        bail!("config key `scaling.archs`: name at least one architecture");
    }
    for a in &grid.archs {
        if Arch::parse(a).is_none() {
            bail!(
                "config key `scaling.archs`: unknown architecture `{a}` (mamba, transformer or hybrid)"
            );
        }
    }
    if let Some(a) = recipes::first_repeat(&grid.archs) {
        bail!("config key `scaling.archs`: `{a}` is named twice");
    }
    if widths.len() < 3 {
        bail!(
            "config key `scaling.widths`: {} width(s); a fit needs at least 3 sizes per architecture (4 for E + A·C^-α)",
            widths.len()
        );
    }
    if let Some(w) = recipes::first_repeat(widths) {
        bail!("config key `scaling.widths`: {w} is named twice");
    }
    if !(tokens_per_param.is_finite() && tokens_per_param > 0.0) {
        bail!("config key `scaling.tokens_per_param`: must be positive, got {tokens_per_param}");
    }
    if !(0.0..1.0).contains(&grid.warmup_fraction) {
        bail!(
            "config key `scaling.warmup_fraction`: must lie in [0, 1), got {}",
            grid.warmup_fraction
        );
    }
    if jobs == Some(0) {
        bail!("--jobs: must be at least 1");
    }
    Ok(())
}

/// Resolves one point and sets its steps by the tokens-per-parameter rule.
fn plan(
    base: &str,
    origin: &str,
    set: &[String],
    arch: Arch,
    width: usize,
    tokens_per_param: f64,
    grid: &Grid,
) -> Result<Planned> {
    let mut c = config::resolve(base, origin, set)?;
    if c.task.kind != TaskKind::Bytes {
        bail!(
            "config key `task.kind`: scaling fits held-out language-modelling loss; it needs \"bytes\", got \"{}\"",
            c.task.kind.name()
        );
    }
    let non_embedding = c.model_config().non_embedding_params();
    let per_step = (c.train.batch_size * c.train.grad_accum * c.task.seq_len) as f64;
    let steps = (tokens_per_param * non_embedding as f64 / per_step)
        .ceil()
        .max(1.0) as u64;
    c.train.steps = steps;
    c.train.warmup_steps = (grid.warmup_fraction * steps as f64).round() as u64;
    config::validate(&c)?;
    Ok(Planned {
        arch,
        width,
        non_embedding,
        tokens: steps * per_step as u64,
        config: c,
    })
}

fn print_plan(dir: &Path, planned: &[Planned], tokens_per_param: f64, jobs: usize) {
    println!(
        "scaling {}: {} points, {tokens_per_param} training tokens per non-embedding parameter, {jobs} at a time",
        dir.display(),
        planned.len()
    );
    println!(
        "  {:<20} {:>12} {:>8} {:>12} {:>10}",
        "point", "params", "steps", "tokens", "FLOPs"
    );
    for p in planned {
        let model = p.config.model_config();
        println!(
            "  {:<20} {:>12} {:>8} {:>12} {:>10.2e}",
            p.config.name,
            thousands(p.non_embedding),
            p.config.train.steps,
            thousands(p.tokens as usize),
            p.tokens as f64 * model.flops_per_token(p.config.task.seq_len)
        );
    }
    let (lo, hi) = planned.iter().fold((usize::MAX, 0), |(lo, hi), p| {
        (lo.min(p.non_embedding), hi.max(p.non_embedding))
    });
    if hi < 10 * lo {
        println!(
            "  note: the sizes span {:.1}x in non-embedding parameters, less than 10x",
            hi as f64 / lo as f64
        );
    }
}

/// One finished point: its size, compute and held-out loss.
#[derive(Clone, Debug)]
pub struct Measured {
    pub arch: String,
    pub width: usize,
    pub non_embedding: f64,
    pub tokens: f64,
    pub flops: f64,
    pub loss: f64,
    pub bits_per_byte: f64,
    pub tokens_per_s: f64,
    /// How the FLOPs per token were counted (run.json).
    pub flops_convention: String,
}

/// The fits of one architecture against compute and against parameters, or why there is none.
pub struct ArchFits {
    pub arch: String,
    pub compute: Result<Fit, String>,
    pub params: Result<Fit, String>,
}

pub struct Results {
    pub points: Vec<Measured>,
    pub fits: Vec<ArchFits>,
}

/// Reads the finished points of `dir/summary.csv` (held-out loss at the training length
/// `seq_len`), fits each architecture and writes `dir/fits.csv`.
pub fn results(dir: &Path, seq_len: usize) -> Result<Results> {
    let s = Table::read(&dir.join(SUMMARY_FILE))?;
    let (names, status) = (s.strings("point")?, s.strings("status")?);
    let (archs, widths) = (s.strings("arch")?, s.f64s("width")?);
    let (params, tokens, fpt) = (
        s.f64s("non_embedding_params")?,
        s.f64s("tokens")?,
        s.f64s("flops_per_token")?,
    );
    let (loss, bpb, speed) = (
        s.f64s(&format!("loss@{seq_len}"))?,
        s.f64s(&format!("bits_per_byte@{seq_len}"))?,
        s.f64s("tokens_per_s")?,
    );
    let convention = |point: &str| -> String {
        std::fs::read_to_string(dir.join(point).join(crate::train::RUN_INFO_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("flops_convention")?.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let points: Vec<Measured> = (0..s.rows.len())
        .filter(|&i| status[i] == "ok")
        .map(|i| Measured {
            flops_convention: convention(&names[i]),
            arch: archs[i].clone(),
            width: widths[i] as usize,
            non_embedding: params[i],
            tokens: tokens[i],
            flops: tokens[i] * fpt[i],
            loss: loss[i],
            bits_per_byte: bpb[i],
            tokens_per_s: speed[i],
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    for p in &points {
        if !order.contains(&p.arch) {
            order.push(p.arch.clone());
        }
    }
    let fits: Vec<ArchFits> = order
        .into_iter()
        .map(|arch| {
            let of = |x: fn(&Measured) -> f64| {
                let xy: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.arch == arch)
                    .map(|p| (x(p), p.loss))
                    .collect();
                fit::fit(&xy).map_err(|e| e.to_string())
            };
            ArchFits {
                compute: of(|p| p.flops),
                params: of(|p| p.non_embedding),
                arch,
            }
        })
        .collect();
    write_fits(dir, &fits)?;
    Ok(Results { points, fits })
}

fn write_fits(dir: &Path, fits: &[ArchFits]) -> Result<()> {
    let header = [
        "arch", "x", "form", "E", "E_se", "A", "A_se", "alpha", "alpha_se", "points", "rmse", "r2",
        "note",
    ];
    let mut rows = Vec::new();
    for f in fits {
        for (x, r) in [("compute", &f.compute), ("params", &f.params)] {
            let mut row = vec![f.arch.clone(), x.to_string()];
            match r {
                Ok(fit) => {
                    row.push(fit.form.name().to_string());
                    row.extend(
                        [fit.e, fit.e_se, fit.a, fit.a_se, fit.alpha, fit.alpha_se].map(cell),
                    );
                    row.push(fit.points.to_string());
                    row.extend([cell(fit.rmse), cell(fit.r2)]);
                    row.push(fit.note.replace(',', ";"));
                }
                Err(e) => {
                    row.extend(std::iter::repeat_n(String::new(), 10));
                    row.push(e.replace(',', ";"));
                }
            }
            rows.push(row);
        }
    }
    let path = dir.join(FITS_FILE);
    Table {
        path: path.clone(),
        header: header.iter().map(|h| h.to_string()).collect(),
        rows,
        torn: false,
    }
    .write(&path)
}

/// "1.234 ± 0.056"
fn with_error(v: f64, se: f64) -> String {
    if se.is_finite() {
        format!("{v:.4} ± {se:.4}")
    } else {
        format!("{v:.4}")
    }
}

fn print_results(r: &Results) {
    println!(
        "\n{:<12} {:>6} {:>12} {:>12} {:>10} {:>10} {:>8} {:>10}",
        "arch", "width", "params", "tokens", "FLOPs", "val loss", "bits/B", "tokens/s"
    );
    for p in &r.points {
        println!(
            "{:<12} {:>6} {:>12} {:>12} {:>10.2e} {:>10.4} {:>8.4} {:>10.0}",
            p.arch,
            p.width,
            thousands(p.non_embedding as usize),
            thousands(p.tokens as usize),
            p.flops,
            p.loss,
            p.bits_per_byte,
            p.tokens_per_s
        );
    }
    println!(
        "\nfits of the held-out loss (nats per byte), x = training FLOPs C or non-embedding parameters N:"
    );
    for f in &r.fits {
        for (x, fit) in [("C", &f.compute), ("N", &f.params)] {
            match fit {
                Ok(fit) => println!(
                    "  {:<12} L({x}) = {}{:.4e}·{x}^-({})   [{} points, rmse {:.4}, R² {:.4}{}]",
                    f.arch,
                    match fit.form {
                        fit::Form::Saturating => format!("{} + ", with_error(fit.e, fit.e_se)),
                        fit::Form::PowerLaw => String::new(),
                    },
                    fit.a,
                    with_error(fit.alpha, fit.alpha_se),
                    fit.points,
                    fit.rmse,
                    fit.r2,
                    if fit.note.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", fit.note)
                    }
                ),
                Err(e) => println!("  {:<12} L({x}): no fit: {e}", f.arch),
            }
        }
    }
}
