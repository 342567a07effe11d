//! SSD rows of `ssm-lab bench`: Mamba-2's chunked scan against Mamba-1's selective scan at equal
//! d_inner (`--d`) and state size N (each of `--ssd-states`), forward (keeping the states for the
//! backward, as in training) and backward, at the largest scan batch and every scan length. The
//! SSD runs heads of 64 channels (for a d that 64 does not divide, the largest power of two that
//! does), one group of B and C, chunks of `--ssd-chunk` (64 by default): the Mamba-2 paper's
//! point is that its state can grow 4-8x at matmul speed.

use anyhow::Result;
use ssm::ops::scan::CUDA_MAX_STATE;
use ssm::ops::ssd::{NO_DT_LIMIT, SsdGrads, SsdInputs, SsdOutput, ssd_bwd, ssd_fwd};

use super::{BenchOptions, random, scan_row, time};

/// One row of the SSD table: the times of both scans on inputs of the same size.
#[derive(Clone, Debug)]
pub struct SsdRow {
    pub n: usize,
    pub b: usize,
    pub l: usize,
    /// Mamba-1's scan; `None` where it cannot run (the CUDA kernels take N ≤ 64).
    pub scan_fwd_ms: Option<f64>,
    pub scan_bwd_ms: Option<f64>,
    pub ssd_fwd_ms: f64,
    pub ssd_bwd_ms: f64,
}

/// Channels per head of the timed SSD: 64, or the largest power of two dividing a smaller d.
pub(crate) fn head_dim(d: usize) -> usize {
    1 << d.trailing_zeros().min(6)
}

/// Times the SSD at (n, b, l) beside Mamba-1's scan at the same d_inner and N.
pub(crate) fn ssd_row(o: &BenchOptions, n: usize, b: usize, l: usize) -> Result<SsdRow> {
    // The CUDA scan takes states up to its kernels' maximum; beyond it the row has the SSD alone.
    let scan = match !o.device.is_cuda() || n <= CUDA_MAX_STATE {
        true => Some(scan_row(&BenchOptions { n, ..o.clone() }, b, l)?),
        false => None,
    };
    let (d, dev) = (o.d, o.device);
    let p = head_dim(d);
    let h = d / p;
    let x = random(dev, &[b, l, h, p], -1.0, 1.0, 21)?;
    let dt = random(dev, &[b, l, h], -3.0, 0.5, 22)?;
    let a = random(dev, &[h], -2.0, -0.1, 23)?;
    let bm = random(dev, &[b, l, 1, n], -1.0, 1.0, 24)?;
    let cm = random(dev, &[b, l, 1, n], -1.0, 1.0, 25)?;
    let d_skip = random(dev, &[h], -1.0, 1.0, 26)?;
    let bias = random(dev, &[h], -1.0, 0.0, 27)?;
    let dy = random(dev, &[b, l, h, p], -1.0, 1.0, 28)?;
    let inp = SsdInputs {
        x: &x,
        dt: &dt,
        a: &a,
        b: &bm,
        c: &cm,
        d_skip: Some(&d_skip),
        dt_bias: Some(&bias),
        dt_softplus: true,
        dt_limit: NO_DT_LIMIT,
        h0: None,
    };
    let mut out = SsdOutput::default();
    let fwd = time(o.repeats, dev, &mut || {
        Ok(ssd_fwd(&inp, o.ssd_chunk, &mut out, true)?)
    })?;
    let mut grads = SsdGrads::zeros_like(&inp)?;
    let bwd = time(o.repeats, dev, &mut || {
        Ok(ssd_bwd(&inp, &out, &dy, None, &mut grads)?)
    })?;
    Ok(SsdRow {
        n,
        b,
        l,
        scan_fwd_ms: scan.as_ref().map(|s| s.fwd_ms),
        scan_bwd_ms: scan.as_ref().map(|s| s.bwd_ms),
        ssd_fwd_ms: fwd * 1e3,
        ssd_bwd_ms: bwd * 1e3,
    })
}

/// The header of the SSD table.
pub fn ssd_header() -> String {
    format!(
        "{:>4} {:>3} {:>6} {:>11} {:>11} {:>10} {:>10} {:>9}",
        "n", "b", "l", "scan fwd ms", "scan bwd ms", "ssd fwd ms", "ssd bwd ms", "scan/ssd"
    )
}

/// One row of the SSD table; scan/ssd is the ratio of forward + backward times.
pub fn ssd_line(r: &SsdRow) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let ratio = match (r.scan_fwd_ms, r.scan_bwd_ms) {
        (Some(f), Some(b)) => format!("{:.2}", (f + b) / (r.ssd_fwd_ms + r.ssd_bwd_ms)),
        _ => "-".to_string(),
    };
    format!(
        "{:>4} {:>3} {:>6} {:>11} {:>11} {:>10.3} {:>10.3} {:>9}",
        r.n,
        r.b,
        r.l,
        ms(r.scan_fwd_ms),
        ms(r.scan_bwd_ms),
        r.ssd_fwd_ms,
        r.ssd_bwd_ms,
        ratio
    )
}
