//! `bench --torch`: PyTorch (through tch, libtorch 2.11) timed beside ours in one process, on the
//! same inputs, after the same warm-up, median of the same repeats:
//!
//! - the selective scan: ours against `selective_scan_ref`'s loop over time and a log-depth
//!   parallel scan, both with autograd for the backward (`ssm::torch::scan`);
//! - causal attention: ours against `scaled_dot_product_attention`;
//! - the model's matrix products: our GEMM against torch's matmul (MKL on the CPU, cuBLAS on a
//!   GPU), the machine's ceiling;
//! - whole training steps of the bench's Mamba and Transformer: ours against the torch copy of
//!   the same model (`ssm::torch::lm::TorchLm`, Mamba as transformers' slow path) with torch's
//!   AdamW and gradient clipping.
//!
//! A PyTorch failure (out of memory, say) is a reported row error, not the end of the table.

use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::{Result, anyhow, bail};
use ssm::ops::attention::{AttentionGrads, AttentionOutput, attention_bwd, attention_fwd};
use ssm::ops::linear::linear_fwd;
use ssm::ops::scan::{ScanGrads, ScanOutput, selective_scan_bwd, selective_scan_fwd};
use ssm::optim::AdamWConfig;
use ssm::torch::attention::sdpa;
use ssm::torch::lm::TorchLm;
use ssm::torch::scan::{TorchScan, scan_loop, scan_parallel};
use ssm::torch::{tch, to_torch, torch_device};
use ssm::{Device, Tensor};

use super::{
    BenchOptions, Peak, ScanTensors, TorchRow, TrainRow, bench_models, random, time, train_setup,
};

/// Runs the PyTorch comparison of `o`, printing each row; failed rows go to `errors`.
pub fn bench_torch(
    o: &BenchOptions,
    train: &[TrainRow],
    errors: &mut Vec<String>,
) -> Result<Vec<TorchRow>> {
    let td = torch_device(o.device)?;
    if let tch::Device::Cuda(_) = td
        && !tch::Cuda::is_available()
    {
        bail!(
            "--torch on {}: PyTorch sees no CUDA device (a CPU-only libtorch, or libtorch_cuda \
             dropped at link time)",
            o.device
        );
    }
    let threads = rayon::current_num_threads();
    tch::set_num_threads(threads as i32);
    println!(
        "PyTorch (libtorch 2.11 through tch) on {td:?}, {threads} threads as ours; times in ms, \
         x ours = its time / ours (above 1: PyTorch slower)"
    );
    let mut rows = Vec::new();
    // A row that fails (PyTorch out of memory, say) is reported and the table goes on.
    let mut attempt = |what: String, r: Result<()>| {
        if let Err(e) = r {
            println!("  {what}: ERROR: {e:#}");
            errors.push(format!("torch {what}: {e:#}"));
        }
    };
    header("selective scan (all options on; fwd keeps what the backward needs)");
    for &b in &o.batches {
        for &l in &o.lengths {
            attempt(
                format!("scan b={b} l={l}"),
                scan_rows(o, td, b, l, &mut rows),
            );
        }
    }
    header("causal attention (b 1, heads of 64)");
    for &l in &o.attn_lengths {
        attempt(
            format!("attention l={l}"),
            attention_rows(o, td, l, &mut rows),
        );
    }
    header("matrix products of the bench's Mamba (x · wᵀ; rate in GFLOP/s)");
    attempt("gemm".into(), gemm_rows(o, td, &mut rows));
    header("training steps (rate in tokens/s; full = zero grads, forward, backward, clip, AdamW)");
    // PyTorch copies of the two pure architectures; the hybrid's rows of ours stand alone.
    for (arch, config) in bench_models(o).into_iter().take(2) {
        for &l in &o.train_lengths {
            let r = train_rows(o, td, (arch, config.clone(), l), train, &mut rows);
            attempt(format!("training {arch} l={l}"), r);
        }
    }
    Ok(rows)
}

/// Prints a section's title and the table header.
fn header(title: &str) {
    println!("{title}");
    println!(
        "  {:<34} {:<15} {:>10} {:>11} {:>10} {:>9} {:>7}",
        "shape", "impl", "fwd", "fwd+bwd", "rate", "peak MiB", "x ours"
    );
}

/// Prints and keeps one row.
fn push(rows: &mut Vec<TorchRow>, row: TorchRow) {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    println!(
        "  {:<34} {:<15} {:>10} {:>11.3} {:>10} {:>9} {:>7.2}",
        row.shape,
        row.imp,
        ms(row.fwd_ms),
        row.full_ms,
        row.rate.map_or("-".into(), |r| format!("{r:.1}")),
        row.peak_mb.map_or("-".into(), |m| format!("{m:.0}")),
        row.vs_ours
    );
    rows.push(row);
}

/// Runs a PyTorch measurement, turning its panics (tch panics on a torch error: out of memory,
/// an unsupported dtype) into an error.
fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Result<R> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow!(
            "{what}: PyTorch failed: {}",
            msg.lines().next().unwrap_or("")
        )
    })
}

/// Waits for torch's work on `td`.
fn torch_sync(td: tch::Device) {
    if let tch::Device::Cuda(i) = td {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A torch leaf copy of `t` on `td`, collecting its gradient when `grad`.
fn leaf(t: &Tensor, td: tch::Device, grad: bool) -> Result<tch::Tensor> {
    Ok(to_torch(t, td)?.set_requires_grad(grad))
}

/// What one comparison measures; its rows differ in the implementation.
struct Case {
    section: &'static str,
    shape: String,
    l: usize,
}

impl Case {
    /// A row of `imp` from its times in seconds; `ours_ms` is the full time of ours on the same
    /// inputs (this row's own for ours).
    fn row(
        &self,
        imp: &'static str,
        (fwd, full): (Option<f64>, f64),
        rate: Option<f64>,
        peak_mb: Option<f64>,
        ours_ms: f64,
    ) -> TorchRow {
        TorchRow {
            section: self.section,
            shape: self.shape.clone(),
            l: self.l,
            imp,
            fwd_ms: fwd.map(|s| s * 1e3),
            full_ms: full * 1e3,
            rate,
            peak_mb,
            vs_ours: full * 1e3 / ours_ms,
        }
    }
}

fn scan_rows(
    o: &BenchOptions,
    td: tch::Device,
    b: usize,
    l: usize,
    rows: &mut Vec<TorchRow>,
) -> Result<()> {
    let dev = o.device;
    let case = Case {
        section: "scan",
        shape: format!("b={b} l={l} d={} n={}", o.d, o.n),
        l,
    };
    let tensors = ScanTensors::new(o, b, l)?;
    let (inp, dy) = (tensors.inputs(), &tensors.dy);
    let peak = Peak::reset(dev);
    let mut out = ScanOutput::default();
    let fwd = time(o.repeats, dev, &mut || {
        Ok(selective_scan_fwd(&inp, &mut out, true)?)
    })?;
    let mut grads = ScanGrads::zeros_like(&inp)?;
    let full = time(o.repeats, dev, &mut || {
        selective_scan_fwd(&inp, &mut out, true)?;
        Ok(selective_scan_bwd(&inp, &out, dy, None, &mut grads)?)
    })?;
    let ours = full * 1e3;
    push(
        rows,
        case.row("ours", (Some(fwd), full), None, peak.above_start(), ours),
    );
    drop((out, grads));
    if l > o.torch_max_len {
        println!(
            "  {:<34} torch           skipped: l above --torch-max-len {}",
            case.shape, o.torch_max_len
        );
        return Ok(());
    }
    let t = inp.try_map(|x| leaf(x, td, true))?;
    let (ts, tdy) = (t.each_ref(), to_torch(dy, td)?);
    type Formulation = fn(&TorchScan) -> (tch::Tensor, tch::Tensor);
    let formulations: [(&'static str, Formulation); 2] =
        [("torch loop", scan_loop), ("torch parallel", scan_parallel)];
    for (imp, scan) in formulations {
        let (times, peak) = torch_fwd_bwd(o, td, imp, &|| scan(&ts).0, &|| {
            (scan(&ts).0 * &tdy).sum(None)
        })?;
        push(rows, case.row(imp, times, None, peak, ours));
    }
    Ok(())
}

/// (forward, forward + backward) in seconds, and the peak memory in MiB.
type Measured = ((Option<f64>, f64), Option<f64>);

/// Times a PyTorch forward without autograd and forward + backward of `loss`, after the same
/// warm-up and repeats as ours; returns the times in seconds and the peak memory (CPU only).
fn torch_fwd_bwd(
    o: &BenchOptions,
    td: tch::Device,
    imp: &str,
    forward: &dyn Fn() -> tch::Tensor,
    loss: &dyn Fn() -> tch::Tensor,
) -> Result<Measured> {
    let dev = o.device;
    guarded(imp, || -> Result<_> {
        let peak = Peak::reset(dev);
        let fwd = time(o.repeats, dev, &mut || {
            let _ = tch::no_grad(forward);
            torch_sync(td);
            Ok(())
        })?;
        let full = time(o.repeats, dev, &mut || {
            loss().backward();
            torch_sync(td);
            Ok(())
        })?;
        Ok(((Some(fwd), full), cpu_only(dev, peak.above_start())))
    })?
}

/// PyTorch's memory is the process's on the CPU; on a GPU its caching allocator is not ours.
fn cpu_only(dev: Device, v: Option<f64>) -> Option<f64> {
    (dev == Device::Cpu).then_some(v).flatten()
}

fn attention_rows(
    o: &BenchOptions,
    td: tch::Device,
    l: usize,
    rows: &mut Vec<TorchRow>,
) -> Result<()> {
    let (hd, dev) = (64, o.device);
    let h = (o.d_model / hd).max(1);
    let case = Case {
        section: "attention",
        shape: format!("b=1 l={l} h={h} hd={hd}"),
        l,
    };
    let dims = [1, l, h, hd];
    let (q, k, v) = (
        random(dev, &dims, -1.0, 1.0, 21)?,
        random(dev, &dims, -1.0, 1.0, 22)?,
        random(dev, &dims, -1.0, 1.0, 23)?,
    );
    let d_o = random(dev, &dims, -1.0, 1.0, 24)?;
    let peak = Peak::reset(dev);
    let mut out = AttentionOutput::default();
    let fwd = time(o.repeats, dev, &mut || {
        Ok(attention_fwd(&q, &k, &v, None, &mut out)?)
    })?;
    let mut grads = AttentionGrads::zeros_like(&q, &k, &v)?;
    let full = time(o.repeats, dev, &mut || {
        attention_fwd(&q, &k, &v, None, &mut out)?;
        Ok(attention_bwd(&q, &k, &v, &out, &d_o, &mut grads)?)
    })?;
    let ours = full * 1e3;
    push(
        rows,
        case.row("ours", (Some(fwd), full), None, peak.above_start(), ours),
    );
    drop((out, grads));
    let (tq, tk, tv) = (
        leaf(&q, td, true)?,
        leaf(&k, td, true)?,
        leaf(&v, td, true)?,
    );
    let tdo = to_torch(&d_o, td)?;
    let (times, peak) = torch_fwd_bwd(o, td, "torch sdpa", &|| sdpa(&tq, &tk, &tv, None), &|| {
        (sdpa(&tq, &tk, &tv, None) * &tdo).sum(None)
    })?;
    push(rows, case.row("torch sdpa", times, None, peak, ours));
    Ok(())
}

/// The products of one Mamba layer and the head at the bench's width, m = train_tokens rows,
/// and a square 1024³ product.
fn gemm_rows(o: &BenchOptions, td: tch::Device, rows: &mut Vec<TorchRow>) -> Result<()> {
    let (d, m, dev) = (o.d_model, o.train_tokens, o.device);
    let (di, r) = (2 * d, d.div_ceil(16));
    let shapes = [
        ("in_proj (x or z)", m, d, di),
        ("out_proj", m, di, d),
        ("x_proj", m, di, r + 32),
        ("head (vocab 256)", m, d, 256),
        ("square", 1024, 1024, 1024),
    ];
    for (name, m, k, n) in shapes {
        let case = Case {
            section: "gemm",
            shape: format!("{name} {m}x{k}x{n}"),
            l: m,
        };
        let x = random(dev, &[m, k], -1.0, 1.0, 31)?;
        let w = random(dev, &[n, k], -1.0, 1.0, 32)?;
        let gflops = |s: f64| Some(2.0 * (m * k * n) as f64 / s / 1e9);
        let mut y = Tensor::default();
        let ours = time(o.repeats, dev, &mut || {
            Ok(linear_fwd(&x, &w, None, &mut y)?)
        })?;
        push(
            rows,
            case.row("ours", (None, ours), gflops(ours), None, ours * 1e3),
        );
        let (tx, tw) = (to_torch(&x, td)?, to_torch(&w, td)?);
        let theirs = guarded("torch matmul", || {
            time(o.repeats, dev, &mut || {
                let _ = tch::no_grad(|| tx.linear::<tch::Tensor>(&tw, None));
                torch_sync(td);
                Ok(())
            })
        })??;
        let row = case.row(
            "torch matmul",
            (None, theirs),
            gflops(theirs),
            None,
            ours * 1e3,
        );
        push(rows, row);
    }
    Ok(())
}

fn train_rows(
    o: &BenchOptions,
    td: tch::Device,
    (arch, config, l): (&'static str, ssm::models::ModelConfig, usize),
    train: &[TrainRow],
    rows: &mut Vec<TorchRow>,
) -> Result<()> {
    let b = (o.train_tokens / l).max(1);
    let case = Case {
        section: "train",
        shape: format!("{arch} l={l} b={b}"),
        l,
    };
    // Ours as the training table measured it, earlier in this run, on the same model and batch.
    let ours = train
        .iter()
        .find(|r| r.arch == arch && r.l == l)
        .ok_or_else(|| anyhow!("no training row of ours for {arch} l={l}"))?;
    let (ours_s, ours_ms) = (ours.ms_per_step / 1e3, ours.ms_per_step);
    let rate = Some(ours.tokens_per_s);
    push(
        rows,
        case.row("ours", (None, ours_s), rate, ours.peak_rise_mb, ours_ms),
    );
    let (mut model, ids, targets) = train_setup(o, config, l)?;
    let row = guarded("torch training step", || -> Result<TorchRow> {
        let peak = Peak::reset(o.device);
        let torch = TorchLm::from_model(&mut model, td)?;
        let mut opt = torch.optimizer(AdamWConfig::default(), 1e-4)?;
        let tids = torch.ids(&ids, b);
        let s = time(o.repeats, o.device, &mut || {
            opt.zero_grad();
            torch.loss(&tids, &targets)?.backward();
            opt.clip_grad_norm(1.0);
            opt.step();
            torch_sync(td);
            Ok(())
        })?;
        let (rate, peak) = ((b * l) as f64 / s, cpu_only(o.device, peak.above_start()));
        Ok(case.row("torch", (None, s), Some(rate), peak, ours_ms))
    })??;
    push(rows, row);
    Ok(())
}
