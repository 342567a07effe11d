//! `ssm-lab bench`: the selective scan forward and backward against the device's own copy
//! bandwidth, and training throughput and peak memory of a Mamba, a Transformer and a hybrid
//! against the sequence length, as tables, CSV files and a plot.
//! Every time is the median of several runs after a warm-up, read after the device finished.
//! With `torch` (the cargo feature of the same name), PyTorch's scan, attention, matmul and
//! training steps are timed beside ours on the same inputs (`torch.rs`).

mod csv;
mod decode;
mod ssd;
#[cfg(feature = "torch")]
mod torch;

pub use decode::{DecodeRow, decode_header, decode_line};
pub use ssd::{SsdRow, ssd_header, ssd_line};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ssm::device::{describe, peak_memory_mb, reset_peak_memory, synchronize, tiled};
use ssm::models::{
    AttentionConfig, HybridConfig, LanguageModel, Mamba2Config, Mamba2MixerConfig, MambaConfig,
    MixerSettings, ModelConfig, TransformerConfig,
};
use ssm::nn::Module;
use ssm::ops::scan::{ScanGrads, ScanInputs, ScanOutput, selective_scan_bwd, selective_scan_fwd};
use ssm::optim::{AdamW, AdamWConfig, clip_grad_norm};
use ssm::{Device, Tensor};

/// What to measure; the defaults are the GPU table of the CUDA issue.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: Device,
    /// Scan batch sizes.
    pub batches: Vec<usize>,
    /// Scan lengths.
    pub lengths: Vec<usize>,
    /// Scan channels (d_inner) and state size.
    pub d: usize,
    pub n: usize,
    /// State sizes of the SSD rows (Mamba-2's scan beside Mamba-1's at d and each N).
    pub ssd_states: Vec<usize>,
    /// Positions per chunk of the SSD rows and of the Mamba-2 model's training and decoding rows:
    /// 64 by default, the fastest on the CPU (experiments/BENCHMARKS.md; mamba_ssm's 256 suits
    /// tensor cores, which the CUDA kernels do not use).
    pub ssd_chunk: usize,
    /// Training: sequence lengths, tokens per step (b = tokens / l, at least 1), model width and
    /// depth of both architectures.
    pub train_lengths: Vec<usize>,
    pub train_tokens: usize,
    pub d_model: usize,
    pub n_layer: usize,
    /// Decoding: batch sizes, context lengths (prefilled before decoding starts) and new tokens
    /// per timed run, for every architecture of the training rows.
    pub decode_batches: Vec<usize>,
    pub decode_contexts: Vec<usize>,
    pub decode_tokens: usize,
    /// Timed runs per measurement, after one warm-up.
    pub repeats: usize,
    /// Folder for bench_scan.csv and bench_train.csv.
    pub out: Option<PathBuf>,
    /// Also time PyTorch (through tch) beside ours: needs a build with the `torch` feature.
    pub torch: bool,
    /// Attention lengths of the PyTorch comparison (b 1, d_model / 64 heads of 64).
    pub attn_lengths: Vec<usize>,
    /// The PyTorch scans (a loop over time, a log-depth scan holding log2(l) copies of the
    /// (b, l, d, n) states) only up to this length.
    pub torch_max_len: usize,
}

impl BenchOptions {
    /// Refuses sizes of zero and sizes beyond reason before anything is allocated: every scan
    /// tensor (b, l, d) within 2^32 values, training steps within `limits::MAX_TOKENS` tokens.
    pub fn validate(&self) -> Result<()> {
        let one_to = |flag: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                bail!("--{flag}: {v} must lie in 1..={max}")
            }
        };
        let ceiling = |flag: &str, values: &[usize]| -> Result<usize> {
            if values.is_empty() {
                bail!("--{flag}: give at least one value");
            }
            for &v in values {
                one_to(flag, v, crate::limits::MAX_LEN)?;
            }
            Ok(*values.iter().max().expect("not empty"))
        };
        let (b, l) = (
            ceiling("batches", &self.batches)?,
            ceiling("lengths", &self.lengths)?,
        );
        one_to("d", self.d, ssm::models::limits::MAX_WIDTH)?;
        one_to("n", self.n, ssm::models::limits::MAX_STATE)?;
        for &n in &self.ssd_states {
            one_to("ssd-states", n, ssm::models::limits::MAX_STATE)?;
        }
        one_to("ssd-chunk", self.ssd_chunk, ssm::ops::ssd::CUDA_MAX_CHUNK)?;
        let n_max = self
            .ssd_states
            .iter()
            .copied()
            .max()
            .unwrap_or(self.n)
            .max(self.n);
        if (b as u128) * (l as u128) * (n_max as u128) > 1 << 32 {
            bail!(
                "--batches, --lengths, --n, --ssd-states: {b} × {l} × {n_max} values per B or C are beyond reason (at most 2^32)"
            );
        }
        if (b as u128) * (l as u128) * (self.d as u128) > 1 << 32 {
            bail!(
                "--batches, --lengths, --d: {b} × {l} × {} values per scan tensor are beyond reason (at most 2^32)",
                self.d
            );
        }
        ceiling("train-lengths", &self.train_lengths)?;
        one_to(
            "train-tokens",
            self.train_tokens,
            crate::limits::MAX_TOKENS as usize,
        )?;
        one_to("d-model", self.d_model, ssm::models::limits::MAX_WIDTH)?;
        let (db, dc) = (
            ceiling("decode-batches", &self.decode_batches)?,
            ceiling("decode-contexts", &self.decode_contexts)?,
        );
        if (db as u128) * (dc as u128) > crate::limits::MAX_TOKENS {
            bail!(
                "--decode-batches, --decode-contexts: {db} × {dc} context tokens are beyond reason (at most {})",
                crate::limits::MAX_TOKENS
            );
        }
        one_to("decode-tokens", self.decode_tokens, 1 << 20)?;
        one_to("n-layer", self.n_layer, ssm::models::limits::MAX_LAYERS)?;
        if self.torch && !cfg!(feature = "torch") {
            bail!(
                "--torch: this ssm-lab was built without the `torch` feature; build it with \
                 `--features torch` and LIBTORCH set (README, 'PyTorch side by side')"
            );
        }
        ceiling("attn-lengths", &self.attn_lengths)?;
        one_to("torch-max-len", self.torch_max_len, crate::limits::MAX_LEN)?;
        one_to("repeats", self.repeats, 1000)
    }

    pub fn gpu(device: Device) -> Self {
        BenchOptions {
            device,
            batches: vec![1, 2, 4, 8],
            lengths: (10..=16).map(|p| 1 << p).collect(),
            d: 1536,
            n: 16,
            ssd_states: vec![16, 64, 128],
            ssd_chunk: 64,
            train_lengths: vec![1024, 2048, 4096, 8192, 16384],
            train_tokens: 16384,
            d_model: 512,
            n_layer: 4,
            decode_batches: vec![1, 32],
            decode_contexts: vec![1024, 8192],
            decode_tokens: 64,
            repeats: 5,
            out: None,
            torch: false,
            attn_lengths: (9..=14).map(|p| 1 << p).collect(),
            torch_max_len: 8192,
        }
    }

    /// Shapes small enough for the CPU emulation (tests of the command itself).
    pub fn tiny(device: Device) -> Self {
        BenchOptions {
            device,
            batches: vec![1],
            lengths: vec![300],
            d: 8,
            n: 4,
            ssd_states: vec![4],
            ssd_chunk: 64,
            train_lengths: vec![32],
            train_tokens: 64,
            d_model: 16,
            n_layer: 1,
            decode_batches: vec![1, 2],
            decode_contexts: vec![20],
            decode_tokens: 3,
            repeats: 1,
            out: None,
            torch: false,
            attn_lengths: vec![64],
            torch_max_len: 300,
        }
    }
}

/// Seconds of `f`, the median of `repeats` runs after one warm-up, each read after `device`
/// finished its work.
pub(crate) fn time(
    repeats: usize,
    device: Device,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    f()?;
    synchronize(device)?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        synchronize(device)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A tensor of values uniform in [lo, hi) on `device`. Large tensors repeat a random block of
/// 2^22 values, which is as good as fresh noise for timing and avoids generating billions of
/// numbers on the host.
pub(crate) fn random(
    device: Device,
    dims: &[usize],
    lo: f32,
    hi: f32,
    seed: u64,
) -> Result<Tensor> {
    const BLOCK: usize = 1 << 22;
    let n: usize = dims.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let block: Vec<f32> = (0..n.min(BLOCK))
        .map(|_| rng.random_range(lo..hi))
        .collect();
    Ok(tiled(dims, &block, device)?)
}

/// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written), over 1 GiB on a GPU
/// and 256 MiB on the CPU.
pub fn copy_bandwidth(device: Device, repeats: usize) -> Result<f64> {
    let len = if device == Device::Cpu {
        1 << 26
    } else {
        1 << 28
    };
    let src = random(device, &[len], -1.0, 1.0, 1)?;
    let mut dst = Tensor::zeros([len], device)?;
    let s = time(repeats, device, &mut || Ok(dst.copy_from(&src)?))?;
    Ok(2.0 * 4.0 * len as f64 / s / 1e9)
}

/// One row of the scan table.
#[derive(Clone, Debug)]
pub struct ScanRow {
    pub b: usize,
    pub l: usize,
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    pub fwd_gbps: f64,
    pub bwd_gbps: f64,
}

/// The scan inputs of the bench at (b, l), random: every option on (z, D, delta_bias, softplus),
/// B and C in one group, no initial state; and a gradient dy of the output.
pub(crate) struct ScanTensors {
    u: Tensor,
    delta: Tensor,
    z: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d_skip: Tensor,
    bias: Tensor,
    pub dy: Tensor,
}

impl ScanTensors {
    pub(crate) fn new(o: &BenchOptions, b: usize, l: usize) -> Result<Self> {
        let (d, n, dev) = (o.d, o.n, o.device);
        Ok(ScanTensors {
            u: random(dev, &[b, l, d], -1.0, 1.0, 2)?,
            delta: random(dev, &[b, l, d], -3.0, 0.5, 3)?,
            z: random(dev, &[b, l, d], -1.0, 1.0, 4)?,
            a: random(dev, &[d, n], -2.0, -0.1, 5)?,
            b: random(dev, &[b, l, 1, n], -1.0, 1.0, 6)?,
            c: random(dev, &[b, l, 1, n], -1.0, 1.0, 7)?,
            d_skip: random(dev, &[d], -1.0, 1.0, 8)?,
            bias: random(dev, &[d], -1.0, 0.0, 9)?,
            dy: random(dev, &[b, l, d], -1.0, 1.0, 10)?,
        })
    }

    pub(crate) fn inputs(&self) -> ScanInputs<'_, f32> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d_skip: Some(&self.d_skip),
            z: Some(&self.z),
            delta_bias: Some(&self.bias),
            delta_softplus: true,
            h0: None,
        }
    }
}

/// Times the scan forward (keeping the chunk states, as in training) and backward at (b, l).
fn scan_row(o: &BenchOptions, b: usize, l: usize) -> Result<ScanRow> {
    let (d, n, dev) = (o.d, o.n, o.device);
    let tensors = ScanTensors::new(o, b, l)?;
    let (inp, dy) = (tensors.inputs(), &tensors.dy);
    let mut out = ScanOutput::default();
    let fwd = time(o.repeats, dev, &mut || {
        Ok(selective_scan_fwd(&inp, &mut out, true)?)
    })?;
    let mut grads = ScanGrads::zeros_like(&inp)?;
    let bwd = time(o.repeats, dev, &mut || {
        Ok(selective_scan_bwd(&inp, &out, dy, None, &mut grads)?)
    })?;
    // The least traffic each pass needs: the forward reads u, delta, z, B, C and writes y; the
    // backward reads those and dy and writes du, ddelta, dz, dB, dC.
    let (bld, bln) = ((b * l * d) as f64, (b * l * n) as f64);
    let fwd_bytes = 4.0 * (4.0 * bld + 2.0 * bln);
    let bwd_bytes = 4.0 * (7.0 * bld + 4.0 * bln);
    Ok(ScanRow {
        b,
        l,
        fwd_ms: fwd * 1e3,
        bwd_ms: bwd * 1e3,
        fwd_gbps: fwd_bytes / fwd / 1e9,
        bwd_gbps: bwd_bytes / bwd / 1e9,
    })
}

/// One row of the training table.
#[derive(Clone, Debug)]
pub struct TrainRow {
    pub arch: &'static str,
    pub l: usize,
    pub b: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    /// Peak memory of the steps: the CUDA allocator's on a GPU, the process's resident set on the
    /// CPU (as in metrics.csv).
    pub peak_mem_mb: Option<f64>,
    /// How far that peak rose above the memory held when the steps began (after the model and
    /// batch were built): what the steps themselves need.
    pub peak_rise_mb: Option<f64>,
}

/// The models of the training rows at the bench's width and depth: Mamba, the Transformer
/// (heads of 64), the hybrid with one attention layer in four, the second ("MAMM" repeated), and
/// Mamba-2 with heads of 64 (of the largest power of two dividing a d_inner = 2 · d_model that
/// 64 does not), a state of 64 (4x Mamba's 16) and chunks of `ssd_chunk`.
pub(crate) fn bench_models(o: &BenchOptions) -> [(&'static str, ModelConfig); 4] {
    let mamba = MambaConfig {
        d_model: o.d_model,
        n_layer: o.n_layer,
        vocab_size: 256,
        ..MambaConfig::default()
    };
    let attention = AttentionConfig {
        n_heads: (o.d_model / 64).max(1),
        ..AttentionConfig::default()
    };
    let transformer = TransformerConfig {
        d_model: o.d_model,
        n_layer: o.n_layer,
        vocab_size: 256,
        block: attention.clone(),
        ..TransformerConfig::default()
    };
    let hybrid = HybridConfig {
        pattern: "MAMM".chars().cycle().take(o.n_layer).collect(),
        d_model: o.d_model,
        vocab_size: 256,
        mixers: MixerSettings {
            mamba: mamba.mixer.clone(),
            attention,
            ..MixerSettings::default()
        },
        ..HybridConfig::default()
    };
    let mamba2 = Mamba2Config {
        d_model: o.d_model,
        n_layer: o.n_layer,
        vocab_size: 256,
        mixer: Mamba2MixerConfig {
            d_state: 64,
            headdim: ssd::head_dim(2 * o.d_model),
            chunk_size: o.ssd_chunk,
            ..Mamba2MixerConfig::default()
        },
        ..Mamba2Config::default()
    };
    [
        ("mamba", mamba.into()),
        ("transformer", transformer.into()),
        ("hybrid", hybrid.into()),
        ("mamba2", mamba2.into()),
    ]
}

/// The model and batch of a training row: the config's model at seed 0 (on the CPU), and b · l
/// random token ids from seed 11 with themselves as targets, b = train_tokens / l (at least 1).
pub(crate) fn train_setup(
    o: &BenchOptions,
    config: ModelConfig,
    l: usize,
) -> Result<(LanguageModel<f32>, Vec<u32>, Vec<i64>)> {
    let b = (o.train_tokens / l).max(1);
    let model = LanguageModel::<f32>::new(config, 0)?;
    let mut rng = StdRng::seed_from_u64(11);
    let ids: Vec<u32> = (0..b * l).map(|_| rng.random_range(0..256)).collect();
    let targets: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Ok((model, ids, targets))
}

/// Times full training steps (zero grads, forward, loss, backward, clipping, AdamW).
pub(crate) fn train_row(
    o: &BenchOptions,
    arch: &'static str,
    config: ModelConfig,
    l: usize,
) -> Result<TrainRow> {
    let b = (o.train_tokens / l).max(1);
    let (mut model, ids, targets) = train_setup(o, config, l)?;
    model.to_device(o.device)?;
    let mut opt = AdamW::new(AdamWConfig::default());
    let peak = Peak::reset(o.device);
    let s = time(o.repeats, o.device, &mut || {
        model.zero_grad()?;
        model.forward_loss(&ids, &targets, b)?;
        model.backward()?;
        clip_grad_norm(&mut model, 1.0)?;
        Ok(opt.update(&mut model, 1e-4)?)
    })?;
    Ok(TrainRow {
        arch,
        l,
        b,
        ms_per_step: s * 1e3,
        tokens_per_s: (b * l) as f64 / s,
        peak_mem_mb: peak_memory_mb(o.device),
        peak_rise_mb: peak.above_start(),
    })
}

unsafe extern "C" {
    /// glibc: returns the heap's free pages to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// A peak-memory measurement: the rise of the process's resident set (CPU) or of our
/// allocator's use (GPU) above what was held when it started.
pub(crate) struct Peak {
    device: Device,
    start: f64,
}

impl Peak {
    /// Starts a measurement. On the CPU the memory freed by earlier rows is first handed back
    /// to the system: otherwise a row would reuse it without raising the resident set, and look
    /// free.
    pub(crate) fn reset(device: Device) -> Peak {
        if device == Device::Cpu {
            // SAFETY: malloc_trim only releases free memory of glibc's allocator (ours and
            // libtorch's); it takes no pointers.
            unsafe { malloc_trim(0) };
        }
        reset_peak_memory(device);
        Peak {
            device,
            start: peak_memory_mb(device).unwrap_or(0.0),
        }
    }

    pub(crate) fn above_start(&self) -> Option<f64> {
        peak_memory_mb(self.device).map(|p| (p - self.start).max(0.0))
    }
}

/// One row of the PyTorch comparison: one implementation of one measurement, on the same inputs
/// as the row of ours it is compared with.
#[derive(Clone, Debug)]
pub struct TorchRow {
    /// "scan", "attention", "gemm" or "train".
    pub section: &'static str,
    /// The shape, e.g. "b=1 l=2048 d=1536 n=16".
    pub shape: String,
    /// The sequence length (gemm: the rows m of the product).
    pub l: usize,
    /// "ours", "torch loop", "torch parallel", "torch sdpa", "torch matmul" or "torch".
    pub imp: &'static str,
    /// The forward alone, ms (scan and attention).
    pub fwd_ms: Option<f64>,
    /// Forward + backward (scan, attention), the product (gemm) or the whole training step, ms.
    pub full_ms: f64,
    /// GFLOP/s (gemm) or tokens/s (train).
    pub rate: Option<f64>,
    /// Peak memory during the row above the resident set at its start, MiB (the CPU's resident
    /// set; on a GPU our allocator's peak, none for PyTorch).
    pub peak_mb: Option<f64>,
    /// full_ms / full_ms of ours on the same inputs: above 1, PyTorch is slower.
    pub vs_ours: f64,
}

/// Everything `bench` measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub device: String,
    pub copy_gbps: f64,
    pub scans: Vec<ScanRow>,
    pub ssd: Vec<SsdRow>,
    pub train: Vec<TrainRow>,
    pub decode: Vec<DecodeRow>,
    /// With `torch`: our rows and PyTorch's, side by side.
    pub torch: Vec<TorchRow>,
    /// Rows that could not be measured, with the reason.
    pub errors: Vec<String>,
}

/// Runs the measurements of `o`, printing each row as it comes, and writes the CSVs.
pub fn bench(o: &BenchOptions) -> Result<BenchReport> {
    o.validate()?;
    let device = describe(o.device)?;
    let copy_gbps = copy_bandwidth(o.device, o.repeats)?;
    println!("{device}: copy bandwidth {copy_gbps:.1} GB/s (read + write)");
    println!(
        "scan (d {}, n {}; median times; GB/s of the least traffic each pass needs)",
        o.d, o.n
    );
    println!("{}", scan_header());
    let (mut scans, mut errors) = (Vec::new(), Vec::new());
    // A row that fails (out of memory, say) is reported and the table goes on.
    let mut failed = |what: String, e: anyhow::Error| {
        println!("{what}: ERROR: {e:#}");
        errors.push(format!("{what}: {e:#}"));
    };
    for &b in &o.batches {
        for &l in &o.lengths {
            let r = match scan_row(o, b, l) {
                Ok(r) => r,
                Err(e) => {
                    failed(format!("scan b={b} l={l}"), e);
                    continue;
                }
            };
            println!("{}", scan_line(&r, copy_gbps));
            scans.push(r);
        }
    }
    let b = o.batches.iter().copied().max().unwrap_or(1);
    println!(
        "SSD (Mamba-2) vs the selective scan (Mamba-1) at d_inner {}, b {b}; heads of {}, chunks of {}",
        o.d,
        ssd::head_dim(o.d),
        o.ssd_chunk
    );
    println!("{}", ssd_header());
    let mut ssd_rows = Vec::new();
    for &n in &o.ssd_states {
        for &l in &o.lengths {
            match ssd::ssd_row(o, n, b, l) {
                Ok(r) => {
                    println!("{}", ssd_line(&r));
                    ssd_rows.push(r);
                }
                Err(e) => failed(format!("ssd n={n} b={b} l={l}"), e),
            }
        }
    }
    println!(
        "training (d_model {}, {} layers, {} tokens/step; zero grads, forward, backward, clip, AdamW)",
        o.d_model, o.n_layer, o.train_tokens
    );
    println!("{}", train_header());
    let mut train = Vec::new();
    for (arch, config) in bench_models(o) {
        for &l in &o.train_lengths {
            let r = match train_row(o, arch, config.clone(), l) {
                Ok(r) => r,
                Err(e) => {
                    failed(format!("training {arch} l={l}"), e);
                    continue;
                }
            };
            println!("{}", train_line(&r));
            train.push(r);
        }
    }
    println!(
        "decoding (greedy, {} new tokens per timed run after a prefill of the context; tokens/s over the batch)",
        o.decode_tokens
    );
    println!("{}", decode_header());
    let mut decode = Vec::new();
    for (arch, config) in bench_models(o) {
        for &b in &o.decode_batches {
            for &context in &o.decode_contexts {
                match decode::decode_row(o, arch, config.clone(), b, context) {
                    Ok(r) => {
                        println!("{}", decode_line(&r));
                        decode.push(r);
                    }
                    Err(e) => failed(format!("decoding {arch} b={b} context={context}"), e),
                }
            }
        }
    }
    #[cfg(feature = "torch")]
    let torch = if o.torch {
        torch::bench_torch(o, &train, &mut errors)?
    } else {
        Vec::new()
    };
    #[cfg(not(feature = "torch"))]
    let torch = Vec::new();
    let report = BenchReport {
        device,
        copy_gbps,
        scans,
        ssd: ssd_rows,
        train,
        decode,
        torch,
        errors,
    };
    if let Some(dir) = &o.out {
        csv::write_csvs(&report, o, dir)?;
    }
    Ok(report)
}

/// The header of the scan table.
pub fn scan_header() -> String {
    format!(
        "{:>3} {:>6} {:>9} {:>8} {:>6} {:>9} {:>8} {:>6}",
        "b", "l", "fwd ms", "GB/s", "%copy", "bwd ms", "GB/s", "%copy"
    )
}

/// One row of the scan table.
pub fn scan_line(r: &ScanRow, copy_gbps: f64) -> String {
    format!(
        "{:>3} {:>6} {:>9.3} {:>8.1} {:>5.0}% {:>9.3} {:>8.1} {:>5.0}%",
        r.b,
        r.l,
        r.fwd_ms,
        r.fwd_gbps,
        100.0 * r.fwd_gbps / copy_gbps,
        r.bwd_ms,
        r.bwd_gbps,
        100.0 * r.bwd_gbps / copy_gbps
    )
}

/// The header of the training table.
pub fn train_header() -> String {
    format!(
        "{:<12} {:>6} {:>4} {:>10} {:>11} {:>9}",
        "arch", "l", "b", "ms/step", "tokens/s", "peak MiB"
    )
}

/// One row of the training table.
pub fn train_line(r: &TrainRow) -> String {
    format!(
        "{:<12} {:>6} {:>4} {:>10.2} {:>11.0} {:>9}",
        r.arch,
        r.l,
        r.b,
        r.ms_per_step,
        r.tokens_per_s,
        r.peak_mem_mb.map_or("-".into(), |m| if m < 10.0 {
            format!("{m:.2}")
        } else {
            format!("{m:.0}")
        })
    )
}
