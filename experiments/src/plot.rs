//! Plots drawn from result files (never from memory), as PNG and SVG: training loss of several runs
//! overlaid, accuracy vs test length, loss vs training FLOPs (log-log, with a fitted power law),
//! and throughput and peak memory vs sequence length from a sweep's summary.csv. Text uses the
//! DejaVu Sans font embedded in the binary, so no system font is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::{EVAL_FILE, METRICS_FILE, Table};
use crate::model::FLOPS_CONVENTION;
use crate::sweep::{SUMMARY_FILE, is_run, sweep_runs};
use crate::train::RUN_INFO_FILE;

const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Registers the embedded font once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is valid"));
    });
}

/// The result files of one run.
struct Run {
    label: String,
    steps: Vec<f64>,
    tokens: Vec<f64>,
    loss: Vec<f64>,
    flops_per_token: Option<f64>,
    /// (length, accuracy) of the last evaluation.
    accuracy: Vec<(f64, f64)>,
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
        let mut accuracy = Vec::new();
        if dir.join(EVAL_FILE).exists() {
            let e = Table::read(&dir.join(EVAL_FILE))?;
            let (steps, lengths, acc) = (e.f64s("step")?, e.f64s("length")?, e.f64s("accuracy")?);
            if let Some(&last) = steps.last() {
                accuracy = (0..steps.len())
                    .filter(|&i| steps[i] == last)
                    .map(|i| (lengths[i], acc[i]))
                    .collect();
            }
        }
        Ok(Run {
            label,
            steps: m.f64s("step")?,
            tokens: m.f64s("tokens")?,
            loss: m.f64s("loss")?,
            flops_per_token: info.and_then(|i| i.get("flops_per_token").and_then(|f| f.as_f64())),
            accuracy,
        })
    }
}

/// A series of (x, y) points with a legend label.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// A chart that draws itself on any plotters backend.
trait Chart {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

fn save(chart: &impl Chart, out: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let (png, svg) = (
        out.join(format!("{stem}.png")),
        out.join(format!("{stem}.svg")),
    );
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|_| chart.draw(&root))
            .and_then(|_| root.present())
            .map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|_| chart.draw(&root))
            .and_then(|_| root.present())
            .map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    Ok(vec![png, svg])
}

/// Range of positive finite values, widened by `pad` (a factor) on both sides.
fn log_range(values: impl Iterator<Item = f64>, pad: f64) -> Option<std::ops::Range<f64>> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let (lo, hi) = if lo == hi {
        (lo / 2.0, hi * 2.0)
    } else {
        (lo, hi)
    };
    Some(lo / pad..hi * pad)
}

fn fmt_num(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e5).contains(&a) {
        format!("{v:.0e}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// The axis scales a chart uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Axes {
    /// x linear from 0 (steps), y log10 (losses).
    LinearLog,
    /// x log2 (sequence lengths), y linear from 0.
    Log2Linear,
    /// Both log10 (scaling laws).
    LogLog,
}

struct Lines {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<Series>,
    axes: Axes,
    /// Top of a linear y axis; the data's maximum (plus a margin) when `None`.
    y_max: Option<f64>,
    /// A dashed black line (the fit) with its label.
    fit: Option<Series>,
    note: Option<String>,
}

macro_rules! draw_on {
    ($self:ident, $chart:ident) => {{
        $chart
            .configure_mesh()
            .x_desc($self.x_desc.as_str())
            .y_desc($self.y_desc.as_str())
            .x_label_formatter(&fmt_num)
            .y_label_formatter(&fmt_num)
            .label_style((FONT, 14))
            .draw()?;
        for (i, s) in $self.series.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            $chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            if pts.len() <= 32 {
                $chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
        if let Some(fit) = &$self.fit {
            let dashes = fit
                .points
                .windows(2)
                .step_by(2)
                .map(|w| PathElement::new(vec![w[0], w[1]], BLACK.stroke_width(2)));
            $chart
                .draw_series(dashes)?
                .label(fit.label.as_str())
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
        }
        $chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }};
}

impl Chart for Lines {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let area = match &self.note {
            Some(note) => {
                let (top, bottom) = root.split_vertically(SIZE.1 - 28);
                bottom.draw_text(note, &(FONT, 13).into_text_style(&bottom), (12, 6))?;
                top
            }
            None => root.clone(),
        };
        let all = || {
            self.series
                .iter()
                .chain(&self.fit)
                .flat_map(|s| s.points.iter().copied())
        };
        let xs = log_range(all().map(|p| p.0), 1.1).unwrap_or(1.0..10.0);
        let ys = log_range(all().map(|p| p.1), 1.3).unwrap_or(0.1..10.0);
        let y_top = self.y_max.unwrap_or_else(|| {
            all()
                .map(|p| p.1)
                .filter(|y| y.is_finite())
                .fold(0.0, f64::max)
                * 1.1
        });
        let mut builder = ChartBuilder::on(&area);
        builder
            .caption(&self.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70);
        match self.axes {
            Axes::LinearLog => {
                let mut chart = builder.build_cartesian_2d(0.0..xs.end, ys.log_scale())?;
                draw_on!(self, chart);
            }
            Axes::Log2Linear => {
                let mut chart =
                    builder.build_cartesian_2d(xs.log_scale().base(2.0), 0.0..y_top.max(1e-9))?;
                draw_on!(self, chart);
            }
            Axes::LogLog => {
                let mut chart = builder.build_cartesian_2d(xs.log_scale(), ys.log_scale())?;
                draw_on!(self, chart);
            }
        }
        Ok(())
    }
}

/// Two charts side by side.
struct Pair(Lines, Lines);

impl Chart for Pair {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        self.0.draw(&left)?;
        self.1.draw(&right)
    }
}

/// Least-squares fit of log y = log a + b · log x; returns (a, b).
pub fn fit_power_law(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0 && x.is_finite() && y.is_finite())
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    let n = logs.len() as f64;
    if logs.len() < 2 {
        return None;
    }
    let (mx, my) = (
        logs.iter().map(|p| p.0).sum::<f64>() / n,
        logs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    Some(((my - b * mx).exp(), b))
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
    if runs.iter().any(|r| !r.accuracy.is_empty()) {
        files.extend(save(&accuracy_chart(&runs), out, "accuracy_vs_length")?);
    }
    if runs.iter().any(|r| r.flops_per_token.is_some()) {
        files.extend(save(&flops_chart(&runs), out, "loss_vs_flops")?);
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

fn loss_chart(runs: &[Run]) -> Lines {
    Lines {
        title: "training loss".into(),
        x_desc: "step".into(),
        y_desc: "loss (nats)".into(),
        series: runs
            .iter()
            .map(|r| Series {
                label: r.label.clone(),
                points: r
                    .steps
                    .iter()
                    .copied()
                    .zip(r.loss.iter().copied())
                    .collect(),
            })
            .collect(),
        axes: Axes::LinearLog,
        y_max: None,
        fit: None,
        note: None,
    }
}

fn accuracy_chart(runs: &[Run]) -> Lines {
    Lines {
        title: "accuracy vs test length (last evaluation)".into(),
        x_desc: "test length".into(),
        y_desc: "accuracy".into(),
        series: runs
            .iter()
            .filter(|r| !r.accuracy.is_empty())
            .map(|r| Series {
                label: r.label.clone(),
                points: r.accuracy.clone(),
            })
            .collect(),
        axes: Axes::Log2Linear,
        y_max: Some(1.05),
        fit: None,
        note: None,
    }
}

/// Loss against cumulative training FLOPs. The power law is fitted to the final losses of the
/// runs when there are at least three (the compute frontier of a size sweep), else to the second
/// half of each curve.
fn flops_chart(runs: &[Run]) -> Lines {
    let curves: Vec<Series> = runs
        .iter()
        .filter_map(|r| {
            let f = r.flops_per_token?;
            Some(Series {
                label: r.label.clone(),
                points: r
                    .tokens
                    .iter()
                    .zip(&r.loss)
                    .map(|(t, l)| (t * f, *l))
                    .collect(),
            })
        })
        .collect();
    let (fit_points, fitted_to): (Vec<(f64, f64)>, &str) = if curves.len() >= 3 {
        (
            curves
                .iter()
                .filter_map(|c| c.points.last().copied())
                .collect(),
            "final losses",
        )
    } else {
        (
            curves
                .iter()
                .flat_map(|c| c.points[c.points.len() / 2..].iter().copied())
                .collect(),
            "second half of each curve",
        )
    };
    let fit = fit_power_law(&fit_points).map(|(a, b)| {
        let xs = log_range(fit_points.iter().map(|p| p.0), 1.0).unwrap_or(1.0..10.0);
        let points = (0..=40)
            .map(|i| xs.start * (xs.end / xs.start).powf(i as f64 / 40.0))
            .map(|x| (x, a * x.powf(b)))
            .collect();
        Series {
            label: format!("fit to {fitted_to}: L = {a:.3e} · C^{b:.3}"),
            points,
        }
    });
    Lines {
        title: "loss vs training compute".into(),
        x_desc: "training FLOPs C".into(),
        y_desc: "loss (nats)".into(),
        series: curves,
        axes: Axes::LogLog,
        y_max: None,
        fit,
        note: Some(FLOPS_CONVENTION.to_string()),
    }
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
    let chart = |title: &str, y: &str, series| Lines {
        title: title.into(),
        x_desc: "sequence length (tokens)".into(),
        y_desc: y.into(),
        series,
        axes: Axes::Log2Linear,
        y_max: None,
        fit: None,
        note: None,
    };
    Ok(Some(Pair(
        chart("training throughput", "tokens/s", series(|g| &g.0)),
        chart("peak resident memory", "MiB", series(|g| &g.1)),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_law_fit_recovers_exponent() {
        let pts: Vec<(f64, f64)> = (1..10)
            .map(|i| (10f64.powi(i), 3.0 * 10f64.powi(i).powf(-0.25)))
            .collect();
        let (a, b) = fit_power_law(&pts).unwrap();
        assert!(
            (a - 3.0).abs() < 1e-9 && (b + 0.25).abs() < 1e-12,
            "{a} {b}"
        );
    }
}
