//! `ssm-lab gpu-check`: everything a GPU machine should be asked, in one run of a few minutes
//! (docs/ARCHITECTURE.md §4, level 3): parity of every op, of training steps and of decoding with the
//! CPU, then the benchmark table with the speed targets of the CUDA issue. Writes parity.csv,
//! bench_scan.csv, bench_ssd.csv, bench_train.csv and bench_decode.csv.

use std::path::PathBuf;
use std::time::Instant;

use std::io::Write;

use anyhow::{Context, Result};
use ssm::Device;
use ssm::device::describe;
use ssm::parity::{Check, ParityPlan, decode_parity, op_parity, train_step_parity};

use crate::bench::{
    BenchOptions, BenchReport, bench, decode_header, decode_line, scan_header, scan_line,
    ssd_header, ssd_line, train_header, train_line,
};

#[derive(Clone, Debug)]
pub struct GpuCheckOptions {
    pub device: Device,
    /// Small shapes (the CPU emulation in tests); the full check otherwise.
    pub quick: bool,
    pub out: PathBuf,
}

/// Runs the check; returns whether every parity check passed.
pub fn gpu_check(o: &GpuCheckOptions) -> Result<bool> {
    let started = Instant::now();
    let plan = if o.quick {
        ParityPlan::quick()
    } else {
        ParityPlan::full()
    };
    println!("{}", describe(o.device)?);
    // Each check is printed and saved as it comes, so that a crash or a timeout of the machine
    // still leaves everything before it.
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create {}", o.out.display()))?;
    let csv_path = o.out.join("parity.csv");
    let mut csv = std::fs::File::create(&csv_path)
        .with_context(|| format!("cannot create {}", csv_path.display()))?;
    writeln!(csv, "check,max_abs_diff,scale,rel_err,tol,ok")?;
    let mut write_error = None;
    let mut sink = |c: &Check| {
        println!("{}", c.row());
        let row = format!(
            "{},{:e},{:e},{:e},{:e},{}",
            c.name.replace(',', ";"),
            c.max_abs_diff,
            c.scale,
            c.rel_err(),
            c.tol,
            c.ok()
        );
        if let Err(e) = writeln!(csv, "{row}").and_then(|()| csv.flush()) {
            write_error.get_or_insert(e);
        }
        let _ = std::io::stdout().flush();
    };
    println!("{}", ssm::parity::header());
    let mut checks = op_parity(o.device, &plan, &mut sink);
    checks.extend(train_step_parity(o.device, plan.train, &mut sink));
    checks.extend(decode_parity(o.device, &mut sink));
    if let Some(e) = write_error {
        return Err(e).with_context(|| format!("cannot write {}", csv_path.display()));
    }
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok()).collect();
    let worst = checks
        .iter()
        .max_by(|a, b| (a.rel_err() / a.tol).total_cmp(&(b.rel_err() / b.tol)));
    // The summary: printed again at the end and saved, so that the last lines of the output
    // (all that a remote runner may return) hold every failure and the benchmark table.
    let mut summary = vec![format!(
        "parity on {}: {} checks, {} failed, in {:.1} s{}",
        o.device,
        checks.len(),
        failed.len(),
        started.elapsed().as_secs_f64(),
        worst.map_or(String::new(), |w| format!(
            "; closest to its tolerance: {} at {:.2e} (tol {:.0e})",
            w.name,
            w.rel_err(),
            w.tol
        ))
    )];
    summary.extend(failed.iter().map(|c| {
        format!(
            "  FAIL {}: max |diff| {:.3e}, rel {:.2e}, tol {:.0e}",
            c.name,
            c.max_abs_diff,
            c.rel_err(),
            c.tol
        )
    }));
    println!("{}", summary.join("\n"));
    let mut options = if o.quick {
        BenchOptions::tiny(o.device)
    } else {
        BenchOptions::gpu(o.device)
    };
    options.out = Some(o.out.clone());
    let report = bench(&options)?;
    summary.push(format!(
        "{}: copy bandwidth {:.1} GB/s",
        report.device, report.copy_gbps
    ));
    summary.push(scan_header());
    summary.extend(report.scans.iter().map(|r| scan_line(r, report.copy_gbps)));
    summary.push(ssd_header());
    summary.extend(report.ssd.iter().map(ssd_line));
    summary.push(train_header());
    summary.extend(report.train.iter().map(train_line));
    summary.push(decode_header());
    summary.extend(report.decode.iter().map(decode_line));
    if !o.quick {
        summary.extend(targets(&report));
    }
    summary.extend(report.errors.iter().map(|e| format!("  bench ERROR {e}")));
    summary.push(format!(
        "gpu-check done in {:.1} s; CSVs in {}",
        started.elapsed().as_secs_f64(),
        o.out.display()
    ));
    let text = summary.join("\n") + "\n";
    println!("\n== gpu-check summary\n{text}");
    ssm::io::atomic_write(&o.out.join("summary.txt"), text.as_bytes())?;
    Ok(failed.is_empty())
}

/// The speed targets: scan forward >= 50% and backward >= 30% of the copy bandwidth at b = 8,
/// l >= 4096; Mamba training not slower per token at the longest length than at the shortest.
fn targets(r: &BenchReport) -> Vec<String> {
    let mut lines = Vec::new();
    let long = r.scans.iter().filter(|s| s.b == 8 && s.l >= 4096);
    let (fwd, bwd) = long.fold((f64::INFINITY, f64::INFINITY), |(f, b), s| {
        (f.min(s.fwd_gbps), b.min(s.bwd_gbps))
    });
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    if fwd.is_finite() {
        let (f, b) = (fwd / r.copy_gbps, bwd / r.copy_gbps);
        lines.push(format!(
            "target scan fwd >= 50% of copy at b=8, l>=4096: worst {:.0}%: {}",
            100.0 * f,
            verdict(f >= 0.5)
        ));
        lines.push(format!(
            "target scan bwd >= 30% of copy at b=8, l>=4096: worst {:.0}%: {}",
            100.0 * b,
            verdict(b >= 0.3)
        ));
    }
    let mamba: Vec<_> = r.train.iter().filter(|t| t.arch == "mamba").collect();
    if let (Some(first), Some(last)) = (mamba.first(), mamba.last()) {
        let ratio = last.tokens_per_s / first.tokens_per_s;
        lines.push(format!(
            "target Mamba tokens/s at l={} vs l={}: {:.2}x: {}",
            last.l,
            first.l,
            ratio,
            verdict(ratio >= 0.95)
        ));
    }
    lines
}
