//! The plots of `ssm-lab scaling`: final held-out loss against training compute and against
//! non-embedding parameters (log-log; the points of each architecture as markers and its fitted
//! law as a line in the same colour, the fitted parameters and the FLOPs convention below), and
//! the training curves of every point (the charts of `plot`).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::chart::{Lines, Series, register_font, save};
use super::lines;
use super::ticks::Scale;
use crate::scaling::fit::Fit;
use crate::scaling::{ArchFits, Measured, Results};

/// The x of one scaling chart: what it is, how to read it off a point, which fit goes with it.
struct Axis {
    stem: &'static str,
    title: &'static str,
    x_desc: &'static str,
    x_name: &'static str,
    x_of: fn(&Measured) -> f64,
    fit_of: fn(&ArchFits) -> &Result<Fit, String>,
}

/// Draws every chart of the scaling folder `dir` into `dir/plots`; returns the files written.
pub fn plot(dir: &Path, r: &Results) -> Result<Vec<PathBuf>> {
    register_font();
    let out = dir.join("plots");
    ssm::io::create_dir_all(&out)?;
    let mut files = super::plot(&[dir.to_path_buf()], &out)?;
    let charts = [
        Axis {
            stem: "scaling_loss_vs_compute",
            title: "held-out loss vs training compute",
            x_desc: "training compute C (FLOPs)",
            x_name: "C",
            x_of: |p| p.flops,
            fit_of: |f| &f.compute,
        },
        Axis {
            stem: "scaling_loss_vs_params",
            title: "held-out loss vs model size",
            x_desc: "non-embedding parameters N",
            x_name: "N",
            x_of: |p| p.non_embedding,
            fit_of: |f| &f.params,
        },
    ];
    for Axis {
        stem,
        title,
        x_desc,
        x_name,
        x_of,
        fit_of,
    } in charts
    {
        let mut series = Vec::new();
        let mut curves = Vec::new();
        let mut note = Vec::new();
        for (i, f) in r.fits.iter().enumerate() {
            let points: Vec<(f64, f64)> = r
                .points
                .iter()
                .filter(|p| p.arch == f.arch)
                .map(|p| (x_of(p), p.loss))
                .collect();
            note.push(match fit_of(f) {
                Ok(fit) => {
                    curves.push((i, curve(fit, &points)));
                    format!("{}: {}", f.arch, formula(fit, x_name))
                }
                Err(e) => format!("{}: no fit ({e})", f.arch),
            });
            series.push(Series {
                label: f.arch.clone(),
                points,
            });
        }
        if x_name == "C" {
            note.extend(conventions(r));
        }
        let chart = Lines {
            markers_only: true,
            curves,
            note,
            ..lines(
                title,
                x_desc,
                "held-out loss (nats per byte)",
                (Scale::Log10, Scale::Log10),
                series,
            )
        };
        files.extend(save(&chart, &out, stem)?);
    }
    Ok(files)
}

/// The law at 64 points spanning the measured x (a little beyond each end).
fn curve(fit: &Fit, points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let (lo, hi) = points.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (lo, hi) = ((lo / 1.3).ln(), (hi * 1.3).ln());
    (0..64)
        .map(|i| {
            let x = (lo + (hi - lo) * i as f64 / 63.0).exp();
            (x, fit.predict(x))
        })
        .collect()
}

/// "L = 1.21 (±0.05) + 3.2e3·C^-0.21 (±0.02), 5 points, R² 0.998"
fn formula(fit: &Fit, x: &str) -> String {
    let pm = |se: f64, digits: usize| {
        if se.is_finite() {
            format!(" (±{se:.digits$})")
        } else {
            String::new()
        }
    };
    let e = match fit.e {
        0.0 => String::new(),
        e => format!("{e:.3}{} + ", pm(fit.e_se, 3)),
    };
    format!(
        "L = {e}{}·{x}^-{:.3}{}, {} points, R² {:.3}{}",
        significant(fit.a),
        fit.alpha,
        pm(fit.alpha_se, 3),
        fit.points,
        fit.r2,
        if fit.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", fit.note)
        }
    )
}

/// Four significant digits, in scientific notation outside [0.01, 10⁴).
fn significant(v: f64) -> String {
    if (0.01..1e4).contains(&v.abs()) {
        format!(
            "{v:.*}",
            (3 - v.abs().log10().floor() as i32).max(0) as usize
        )
    } else {
        format!("{v:.3e}")
    }
}

/// The FLOPs convention of each architecture.
fn conventions(r: &Results) -> Vec<String> {
    let mut lines = vec!["C = training tokens × FLOPs per token:".to_string()];
    for f in &r.fits {
        if let Some(p) = r.points.iter().find(|p| p.arch == f.arch) {
            lines.push(format!("  {}: {}", f.arch, p.flops_convention));
        }
    }
    lines
}
