//! The CSV files of `ssm-lab bench`: bench_scan, bench_ssd, bench_train and bench_decode, each
//! with the device in its first column.

use std::path::Path;

use anyhow::{Context, Result};

use super::{BenchOptions, BenchReport};
use crate::metrics::Table;

pub(super) fn write_csvs(r: &BenchReport, o: &BenchOptions, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Each file: the device in the first column, then the row's own.
    let device = r.device.replace(',', ";");
    let write = |name: &str, header: &[&str], rows: Vec<Vec<String>>| -> Result<()> {
        let path = dir.join(name);
        Table {
            path: path.clone(),
            header: std::iter::once("device")
                .chain(header.iter().copied())
                .map(str::to_string)
                .collect(),
            rows: rows
                .into_iter()
                .map(|row| std::iter::once(device.clone()).chain(row).collect())
                .collect(),
            torn: false,
        }
        .write(&path)
    };
    let opt = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    write(
        "bench_scan.csv",
        &[
            "b",
            "l",
            "d",
            "n",
            "fwd_ms",
            "fwd_gbps",
            "bwd_ms",
            "bwd_gbps",
            "copy_gbps",
        ],
        r.scans
            .iter()
            .map(|s| {
                vec![
                    s.b.to_string(),
                    s.l.to_string(),
                    o.d.to_string(),
                    o.n.to_string(),
                    format!("{:.4}", s.fwd_ms),
                    format!("{:.2}", s.fwd_gbps),
                    format!("{:.4}", s.bwd_ms),
                    format!("{:.2}", s.bwd_gbps),
                    format!("{:.2}", r.copy_gbps),
                ]
            })
            .collect(),
    )?;
    write(
        "bench_ssd.csv",
        &[
            "n",
            "b",
            "l",
            "d",
            "chunk",
            "scan_fwd_ms",
            "scan_bwd_ms",
            "ssd_fwd_ms",
            "ssd_bwd_ms",
        ],
        r.ssd
            .iter()
            .map(|s| {
                vec![
                    s.n.to_string(),
                    s.b.to_string(),
                    s.l.to_string(),
                    o.d.to_string(),
                    o.ssd_chunk.to_string(),
                    opt(s.scan_fwd_ms, 4),
                    opt(s.scan_bwd_ms, 4),
                    format!("{:.4}", s.ssd_fwd_ms),
                    format!("{:.4}", s.ssd_bwd_ms),
                ]
            })
            .collect(),
    )?;
    write(
        "bench_train.csv",
        &[
            "arch",
            "d_model",
            "n_layer",
            "l",
            "b",
            "ms_per_step",
            "tokens_per_s",
            "peak_mem_mb",
            "peak_rise_mb",
        ],
        r.train
            .iter()
            .map(|t| {
                vec![
                    t.arch.to_string(),
                    o.d_model.to_string(),
                    o.n_layer.to_string(),
                    t.l.to_string(),
                    t.b.to_string(),
                    format!("{:.3}", t.ms_per_step),
                    format!("{:.1}", t.tokens_per_s),
                    opt(t.peak_mem_mb, 1),
                    opt(t.peak_rise_mb, 1),
                ]
            })
            .collect(),
    )?;
    crate::plot::bench_train(&r.train, o, dir)?;
    write(
        "bench_decode.csv",
        &[
            "arch",
            "d_model",
            "n_layer",
            "b",
            "context",
            "prefill_tokens_per_s",
            "tokens_per_s",
            "ms_per_step",
            "peak_rise_mb",
        ],
        r.decode
            .iter()
            .map(|t| {
                vec![
                    t.arch.to_string(),
                    o.d_model.to_string(),
                    o.n_layer.to_string(),
                    t.b.to_string(),
                    t.context.to_string(),
                    format!("{:.1}", t.prefill_tokens_per_s),
                    format!("{:.1}", t.tokens_per_s),
                    format!("{:.4}", t.ms_per_step),
                    opt(t.peak_rise_mb, 1),
                ]
            })
            .collect(),
    )?;
    if r.torch.is_empty() {
        return Ok(());
    }
    write(
        "bench_torch.csv",
        &[
            "section", "shape", "l", "impl", "fwd_ms", "full_ms", "rate", "peak_mb", "vs_ours",
        ],
        r.torch
            .iter()
            .map(|t| {
                vec![
                    t.section.to_string(),
                    t.shape.clone(),
                    t.l.to_string(),
                    t.imp.to_string(),
                    opt(t.fwd_ms, 4),
                    format!("{:.4}", t.full_ms),
                    opt(t.rate, 1),
                    opt(t.peak_mb, 1),
                    format!("{:.3}", t.vs_ours),
                ]
            })
            .collect(),
    )?;
    crate::plot::bench_torch(&r.torch, dir)?;
    Ok(())
}
