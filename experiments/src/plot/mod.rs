//! Plots drawn from result files (never from memory), as PNG and SVG: training loss of several runs
//! overlaid, accuracy vs test length, loss vs training FLOPs (log-log curves, no fit: a power law
//! belongs to the final losses of a family of model sizes, not to one training curve), held-out
//! bits per byte of byte-level runs, and throughput and peak memory vs sequence length from a
//! sweep's summary.csv. Runs that differ only by their seed are drawn in the loss and accuracy
//! charts as one line, their mean, with the min-max range shaded. Text uses the DejaVu Sans font
//! embedded in the binary, so no system font is needed.

mod chart;
pub mod scaling;
pub mod ticks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint::CONFIG_FILE;
use crate::config;
use crate::metrics::{EVAL_FILE, METRICS_FILE, Table};
use crate::sweep::{SUMMARY_FILE, is_run, sweep_runs};
use crate::train::RUN_INFO_FILE;
use chart::{Band, Lines, Pair, Series, register_font, save};
use ticks::Scale;

/// The result files of one run.
struct Run {
    label: String,
    steps: Vec<f64>,
    tokens: Vec<f64>,
    loss: Vec<f64>,
    /// "mamba", "transformer" or "hybrid", from run.json.
    arch: Option<String>,
    flops_per_token: Option<f64>,
    /// How `flops_per_token` was counted, from run.json.
    flops_convention: Option<String>,
    /// (length, accuracy) of the last evaluation.
    accuracy: Vec<(f64, f64)>,
    /// Per eval length: (step, held-out bits per byte) of every evaluation; byte-level runs only.
    bits_per_byte: BTreeMap<u64, Vec<(f64, f64)>>,
    /// The run's config with its seed and name blanked: runs that share it differ only by seed.
    setting: Option<String>,
}

impl Run {
    fn read(dir: &Path, label: String) -> Result<Run> {
        let m = Table::read(&dir.join(METRICS_FILE))?;
        if m.rows.is_empty() {
            bail!("{}: no rows yet", m.path.display());
        }
        let info: Option<serde_json::Value> = std::fs::read_to_string(dir.join(RUN_INFO_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let text = |key: &str| {
            info.as_ref()
                .and_then(|i| i.get(key)?.as_str().map(str::to_string))
        };
        let (mut accuracy, mut bits_per_byte) = (Vec::new(), BTreeMap::new());
        if dir.join(EVAL_FILE).exists() {
            let e = Table::read(&dir.join(EVAL_FILE))?;
            let (steps, lengths, acc) = (e.f64s("step")?, e.f64s("length")?, e.f64s("accuracy")?);
            if let Some(&last) = steps.last() {
                accuracy = (0..steps.len())
                    .filter(|&i| steps[i] == last)
                    .map(|i| (lengths[i], acc[i]))
                    .collect();
            }
            for (i, bpb) in e.f64s("bits_per_byte")?.into_iter().enumerate() {
                if bpb.is_finite() {
                    bits_per_byte
                        .entry(lengths[i] as u64)
                        .or_insert_with(Vec::new)
                        .push((steps[i], bpb));
                }
            }
        }
        Ok(Run {
            label,
            steps: m.f64s("step")?,
            tokens: m.f64s("tokens")?,
            loss: m.f64s("loss")?,
            arch: text("arch"),
            flops_per_token: info
                .as_ref()
                .and_then(|i| i.get("flops_per_token")?.as_f64()),
            flops_convention: text("flops_convention"),
            accuracy,
            bits_per_byte,
            setting: setting(dir),
        })
    }
}

fn setting(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).ok()?;
    let mut c = config::parse(&text, "", &[]).ok()?;
    (c.seed, c.name) = (0, String::new());
    Some(c.to_toml())
}

/// One line of a chart: a run, or the runs of one setting at several seeds.
struct Line<'a> {
    label: String,
    runs: Vec<&'a Run>,
}

/// Runs that differ only by their seed become one line (their mean, with the min-max range
/// shaded), labelled by the first run's label without its `-seed<k>` suffix.
fn seed_lines<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Vec<Line<'a>> {
    let mut out: Vec<Line> = Vec::new();
    for r in runs {
        match out
            .iter_mut()
            .find(|l| r.setting.is_some() && l.runs[0].setting == r.setting)
        {
            Some(l) => l.runs.push(r),
            None => out.push(Line {
                label: r.label.clone(),
                runs: vec![r],
            }),
        }
    }
    for l in &mut out {
        if l.runs.len() > 1 {
            let base = l
                .label
                .rsplit_once("-seed")
                .map_or(l.label.as_str(), |b| b.0);
            l.label = format!("{base} (mean of {} seeds)", l.runs.len());
        }
    }
    out
}

/// The mean and the (x, min, max) range over `runs` of the points `of` gives, at the x values
/// all of them have.
fn mean_and_band(runs: &[&Run], of: fn(&Run) -> Vec<(f64, f64)>) -> (Series, Vec<(f64, f64, f64)>) {
    let first = of(runs[0]);
    let others: Vec<BTreeMap<u64, f64>> = runs[1..]
        .iter()
        .map(|r| of(r).into_iter().map(|(x, y)| (x.to_bits(), y)).collect())
        .collect();
    let mut points = Vec::new();
    let mut band = Vec::new();
    for &(x, y) in &first {
        let ys: Option<Vec<f64>> = std::iter::once(Some(y))
            .chain(others.iter().map(|o| o.get(&x.to_bits()).copied()))
            .collect();
        if let Some(ys) = ys {
            points.push((x, ys.iter().sum::<f64>() / ys.len() as f64));
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            band.push((x, lo, hi));
        }
    }
    let series = Series {
        label: String::new(),
        points,
    };
    (series, band)
}

/// A chart's series and bands: one per line, a mean with a band for several seeds.
fn seed_series(lines: &[Line], of: fn(&Run) -> Vec<(f64, f64)>) -> (Vec<Series>, Vec<Band>) {
    let (mut series, mut bands) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate() {
        let (mut s, band) = mean_and_band(&l.runs, of);
        s.label = l.label.clone();
        if l.runs.len() > 1 {
            bands.push((i, band));
        }
        series.push(s);
    }
    (series, bands)
}

/// What `plot` was given: runs to overlay and sweep summaries.
/// Run folders with their legend labels, and sweep summaries.
type Inputs = (Vec<(PathBuf, String)>, Vec<Table>);

fn collect(inputs: &[PathBuf]) -> Result<Inputs> {
    let (mut runs, mut summaries) = (Vec::new(), Vec::new());
    for dir in inputs {
        if dir.join(SUMMARY_FILE).exists() {
            summaries.push(Table::read(&dir.join(SUMMARY_FILE))?);
            for r in sweep_runs(dir)? {
                let label = r
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned());
                runs.push((r, label));
            }
        } else if is_run(dir) {
            let label = dir.file_name().map_or(dir.display().to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
            runs.push((dir.clone(), label));
        } else if !dir.exists() {
            bail!("{}: no such folder", dir.display());
        } else {
            bail!(
                "{}: no {METRICS_FILE} (not a run folder) and no {SUMMARY_FILE} (not a sweep folder): nothing to plot",
                dir.display()
            );
        }
    }
    let names: Vec<&String> = runs.iter().map(|r| &r.1).collect();
    if names.iter().collect::<BTreeSet<_>>().len() < names.len() {
        for (dir, label) in &mut runs {
            *label = dir.display().to_string();
        }
    }
    Ok((runs, summaries))
}

/// Draws every chart the inputs allow into `out` and returns the files written.
pub fn plot(inputs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let (dirs, summaries) = collect(inputs)?;
    let mut runs = Vec::new();
    for (dir, label) in &dirs {
        match Run::read(dir, label.clone()) {
            Ok(run) => runs.push(run),
            Err(e) if dirs.len() > 1 => tracing::warn!("skipping {}: {e:#}", dir.display()),
            Err(e) => return Err(e),
        }
    }
    if runs.is_empty() {
        bail!("nothing to plot: no run with metrics among {inputs:?}");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut files = save(&loss_chart(&runs), out, "loss")?;
    // A curve needs two test lengths: runs tested at their training length alone (a sweep over
    // lengths, a reproduce grid) are single points, which the summary's tables show better.
    if runs.iter().any(|r| r.accuracy.len() > 1) {
        files.extend(save(&accuracy_chart(&runs), out, "accuracy_vs_length")?);
    }
    if runs.iter().any(|r| r.flops_per_token.is_some()) {
        files.extend(save(&flops_chart(&runs), out, "loss_vs_flops")?);
    }
    // Held-out bits per byte over training needs two evaluations: runs evaluated once, at the
    // end (the points of a scaling grid), are single points, which their summary shows better.
    if runs.iter().any(evaluated_often) {
        files.extend(save(&bits_per_byte_chart(&runs), out, "bits_per_byte")?);
    }
    for (i, s) in summaries.iter().enumerate() {
        if let Some(pair) = scaling_charts(s)? {
            let stem = if summaries.len() == 1 {
                "throughput_memory".to_string()
            } else {
                format!("throughput_memory_{i}")
            };
            files.extend(save(&pair, out, &stem)?);
        }
    }
    Ok(files)
}

/// A line of mean accuracy over seeds, (x, mean, min, max) per point, with its legend label.
pub type BandedCurve = (String, Vec<(f64, f64, f64, f64)>);

/// Accuracy against model width (d_model on a log2 axis), one line per curve with its min-max
/// range over the seeds shaded, into `out/accuracy_vs_width.{png,svg}`.
pub fn accuracy_vs_width(curves: Vec<BandedCurve>, out: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    ssm::io::create_dir_all(out)?;
    let mut bands = Vec::new();
    let mut series = Vec::new();
    for (i, (label, points)) in curves.into_iter().enumerate() {
        if points.iter().any(|p| p.2 != p.3) {
            bands.push((i, points.iter().map(|p| (p.0, p.2, p.3)).collect()));
        }
        series.push(Series {
            label,
            points: points.iter().map(|p| (p.0, p.1)).collect(),
        });
    }
    let chart = Lines {
        y_max: Some(1.05),
        bands,
        ..lines(
            "accuracy at the training length vs model width",
            "d_model",
            "accuracy",
            (Scale::Log2, Scale::Linear),
            series,
        )
    };
    save(&chart, out, "accuracy_vs_width")
}

/// The PyTorch comparison of `bench --torch`: forward + backward time against the sequence length
/// for the scan (one line per implementation and batch size) and attention, into
/// `out/bench_torch_scan.{png,svg}` and `out/bench_torch_attention.{png,svg}`.
pub fn bench_torch(rows: &[crate::bench::TorchRow], out: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let mut files = Vec::new();
    for (section, title, stem) in [
        (
            "scan",
            "selective scan, forward + backward",
            "bench_torch_scan",
        ),
        (
            "attention",
            "causal attention, forward + backward",
            "bench_torch_attention",
        ),
    ] {
        let mut by_line: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.section == section) {
            let batch = r.shape.split_whitespace().next().unwrap_or("");
            by_line
                .entry(format!("{} ({batch})", r.imp))
                .or_default()
                .push((r.l as f64, r.full_ms));
        }
        if by_line.is_empty() {
            continue;
        }
        let series = by_line
            .into_iter()
            .map(|(label, points)| Series { label, points })
            .collect();
        let chart = Lines {
            note: vec![format!(
                "median of repeated runs after a warm-up, same inputs, one process; {}",
                rows.iter()
                    .find(|r| r.section == section)
                    .map_or(String::new(), |r| fixed_dims(&r.shape))
            )],
            ..lines(
                title,
                "sequence length l (tokens)",
                "time (ms)",
                (Scale::Log2, Scale::Log10),
                series,
            )
        };
        files.extend(save(&chart, out, stem)?);
    }
    Ok(files)
}

/// Training throughput and the memory the steps need against the sequence length, one line per
/// architecture (the linear-vs-quadratic picture), into `out/bench_train.{png,svg}`.
pub fn bench_train(
    rows: &[crate::bench::TrainRow],
    o: &crate::bench::BenchOptions,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    register_font();
    // One line per architecture in the order of the rows, on both sides: one legend serves both.
    let mut archs: Vec<&str> = Vec::new();
    for r in rows {
        if !archs.contains(&r.arch) {
            archs.push(r.arch);
        }
    }
    if archs.is_empty() {
        return Ok(Vec::new());
    }
    let series = |y: fn(&crate::bench::TrainRow) -> Option<f64>| -> Vec<Series> {
        archs
            .iter()
            .map(|&arch| Series {
                label: arch.to_string(),
                points: rows
                    .iter()
                    .filter(|r| r.arch == arch)
                    .filter_map(|r| Some((r.l as f64, y(r)?)))
                    .collect(),
            })
            .collect()
    };
    let note = vec![
        format!(
            "d_model {}, {} layers, {} tokens per step (b = tokens / l); the median of {} timed steps after a warm-up",
            o.d_model, o.n_layer, o.train_tokens, o.repeats
        ),
        "memory: how far the peak (resident set on the CPU, our allocator on a GPU) rose during the steps".into(),
    ];
    let chart = |title: &str, y: &str, series| {
        lines(
            title,
            "sequence length l (tokens)",
            y,
            (Scale::Log2, Scale::Linear),
            series,
        )
    };
    save(
        &Pair(
            Lines {
                note,
                ..chart(
                    "training throughput",
                    "tokens/s",
                    series(|r| Some(r.tokens_per_s)),
                )
            },
            chart(
                "memory of the training step",
                "MiB",
                series(|r| r.peak_rise_mb),
            ),
        ),
        out,
        "bench_train",
    )
}

/// The parts of a bench shape other than the batch and the length: "d=1536 n=16".
fn fixed_dims(shape: &str) -> String {
    shape
        .split_whitespace()
        .filter(|t| !t.starts_with("b=") && !t.starts_with("l="))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn lines(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    axes: (Scale, Scale),
    series: Vec<Series>,
) -> Lines {
    Lines {
        title: title.into(),
        x_desc: x_desc.into(),
        y_desc: y_desc.into(),
        series,
        x_scale: axes.0,
        y_scale: axes.1,
        y_max: None,
        note: Vec::new(),
        bands: Vec::new(),
        markers_only: false,
        curves: Vec::new(),
    }
}

fn loss_chart(runs: &[Run]) -> Lines {
    let (series, bands) = seed_series(&seed_lines(runs), |r| {
        r.steps
            .iter()
            .copied()
            .zip(r.loss.iter().copied())
            .collect()
    });
    Lines {
        bands,
        ..lines(
            "training loss",
            "step",
            "loss (nats)",
            (Scale::Linear, Scale::Log10),
            series,
        )
    }
}

fn accuracy_chart(runs: &[Run]) -> Lines {
    let with_accuracy = seed_lines(runs.iter().filter(|r| r.accuracy.len() > 1));
    let (series, bands) = seed_series(&with_accuracy, |r| r.accuracy.clone());
    Lines {
        y_max: Some(1.05),
        bands,
        ..lines(
            "accuracy vs test length (last evaluation)",
            "test length (tokens)",
            "accuracy",
            (Scale::Log2, Scale::Linear),
            series,
        )
    }
}

/// Training loss against cumulative training FLOPs, one curve per run, with the FLOPs convention
/// of every architecture shown.
fn flops_chart(runs: &[Run]) -> Lines {
    let with_flops: Vec<&Run> = runs
        .iter()
        .filter(|r| r.flops_per_token.is_some())
        .collect();
    let series = with_flops
        .iter()
        .map(|r| {
            let f = r.flops_per_token.expect("filtered");
            Series {
                label: r.label.clone(),
                points: r
                    .tokens
                    .iter()
                    .zip(&r.loss)
                    .map(|(t, l)| (t * f, *l))
                    .collect(),
            }
        })
        .collect();
    let mut conventions = BTreeMap::new();
    for r in &with_flops {
        let arch = r.arch.clone().unwrap_or_else(|| "model".into());
        let text = r
            .flops_convention
            .clone()
            .unwrap_or_else(|| "not recorded in run.json".into());
        conventions.insert(arch, text);
    }
    let mut note = vec!["training FLOPs C = tokens × FLOPs per token, per token:".to_string()];
    note.extend(conventions.into_iter().map(|(a, c)| format!("  {a}: {c}")));
    Lines {
        note,
        ..lines(
            "loss vs training compute",
            "training FLOPs C",
            "loss (nats)",
            (Scale::Log10, Scale::Log10),
            series,
        )
    }
}

/// Whether a byte-level run has held-out bits per byte from two evaluations or more.
fn evaluated_often(r: &Run) -> bool {
    r.bits_per_byte.values().any(|points| points.len() > 1)
}

/// Byte-level runs: the training loss in bits per byte (loss / ln 2) and the held-out bits per
/// byte of every evaluation, at each eval length.
fn bits_per_byte_chart(runs: &[Run]) -> Lines {
    let mut series = Vec::new();
    for r in runs.iter().filter(|r| evaluated_often(r)) {
        series.push(Series {
            label: format!("{} train", r.label),
            points: r
                .steps
                .iter()
                .zip(&r.loss)
                .map(|(s, l)| (*s, l / std::f64::consts::LN_2))
                .collect(),
        });
        for (length, points) in &r.bits_per_byte {
            series.push(Series {
                label: format!("{} held-out @{length}", r.label),
                points: points.clone(),
            });
        }
    }
    lines(
        "bits per byte",
        "step",
        "bits per byte",
        (Scale::Linear, Scale::Log10),
        series,
    )
}

/// Throughput and peak memory vs sequence length, one line per setting of the other grid keys.
fn scaling_charts(summary: &Table) -> Result<Option<Pair>> {
    let len_col = if summary.header.iter().any(|h| h == "input_len") {
        "input_len"
    } else {
        return Ok(None);
    };
    let lengths = summary.f64s(len_col)?;
    if lengths
        .iter()
        .filter(|l| l.is_finite())
        .map(|l| l.to_bits())
        .collect::<BTreeSet<_>>()
        .len()
        < 2
    {
        return Ok(None);
    }
    let status = summary.strings("status")?;
    let status_at = summary.index("status")?;
    let keys: Vec<usize> = (1..status_at)
        .filter(|&i| !summary.header[i].ends_with("seq_len"))
        .collect();
    let (speed, mem) = (summary.f64s("tokens_per_s")?, summary.f64s("peak_mem_mb")?);
    // Per series label: (length, tokens/s) and (length, MiB) points.
    type Points = Vec<(f64, f64)>;
    let mut groups: BTreeMap<String, (Points, Points)> = BTreeMap::new();
    for (i, row) in summary.rows.iter().enumerate() {
        if status[i] != "ok" {
            continue;
        }
        let label = keys
            .iter()
            .map(|&k| {
                format!(
                    "{}={}",
                    summary.header[k].rsplit('.').next().unwrap_or(""),
                    row[k]
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let g = groups
            .entry(if label.is_empty() {
                "runs".into()
            } else {
                label
            })
            .or_default();
        g.0.push((lengths[i], speed[i]));
        g.1.push((lengths[i], mem[i]));
    }
    let series = |pick: fn(&(Points, Points)) -> &Points| {
        groups
            .iter()
            .map(|(label, g)| {
                let mut points = pick(g).clone();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: label.clone(),
                    points,
                }
            })
            .collect::<Vec<_>>()
    };
    let chart = |title: &str, y: &str, series| {
        lines(
            title,
            "sequence length (tokens)",
            y,
            (Scale::Log2, Scale::Linear),
            series,
        )
    };
    Ok(Some(Pair(
        chart("training throughput", "tokens/s", series(|g| &g.0)),
        chart("peak resident memory", "MiB", series(|g| &g.1)),
    )))
}
