//! `ssm-lab`: train, evaluate, sample, sweep and plot SSM experiments. Run `ssm-lab --help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use experiments::bench::{BenchOptions, bench};
use experiments::commands::{self, GenerateOptions, Prompt};
use experiments::config::{self, RunConfig};
use experiments::demo::{self, CompareOptions};
use experiments::gpu_check::{GpuCheckOptions, gpu_check};
use experiments::scaling::{self, ScalingOptions};
use experiments::sweep::{SweepOptions, sweep};
use experiments::train::{self, TrainOptions};
use experiments::{plot, reproduce};
use ssm::Device;

#[derive(Parser)]
#[command(
    name = "ssm-lab",
    version,
    about = "Experiments with selective state-space models: train, evaluate, sweep, plot"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a new run from a config, or continue one with --resume.
    Train {
        /// A TOML config (see experiments/configs/); the run goes to `out_dir/name` of the config
        /// (default runs/<name>).
        #[arg(
            long,
            required_unless_present_any = ["resume", "extend"],
            conflicts_with_all = ["resume", "extend"]
        )]
        config: Option<PathBuf>,
        /// Override any config key, e.g. --set train.lr=3e-3 --set model.mamba.d_model=128.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue the run in this folder from its latest checkpoint, bit-identically (a finished
        /// run only has its final export checked and repaired).
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["set", "extend"])]
        resume: Option<PathBuf>,
        /// Continue the (finished) run in this folder to --steps steps in all; the cosine schedule
        /// is recomputed over the new total.
        #[arg(
            long,
            value_name = "RUN_DIR",
            conflicts_with = "set",
            requires = "steps"
        )]
        extend: Option<PathBuf>,
        /// The new total of steps for --extend.
        #[arg(long, value_name = "N", requires = "extend")]
        steps: Option<u64>,
        /// Stop right after this step as a kill would, without a final checkpoint (tests resume).
        #[arg(long, value_name = "STEP")]
        stop_after: Option<u64>,
        /// Fine-tune: start from the weights of this Hugging Face folder, run folder or checkpoint
        /// (the config key `model.init_from`); the config must describe the same model.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["resume", "extend"])]
        init_from: Option<PathBuf>,
        /// Device: cpu, cuda, cuda:N, or cuda-emu (the CUDA code path emulated on the CPU; slow).
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Evaluate a run's latest checkpoint on its task at its eval lengths.
    Eval {
        /// A run folder or training checkpoint file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Override eval keys, e.g. --set eval.lengths=[64,256,1024].
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Also write the results as CSV, with the columns of eval.csv (default: print only).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device: cpu, cuda, cuda:N, or cuda-emu (the CUDA code path emulated on the CPU; slow).
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Continue a prompt with a trained model (greedy, or sampled with --temperature).
    Generate {
        /// A run folder, training checkpoint file, or exported folder (checkpoints/final; a Hugging
        /// Face folder for Mamba).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text prompt, for byte-level models (runs of task.kind = "bytes" and their exports).
        #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
        prompt: Option<String>,
        /// Prompt as token ids, e.g. 3,1,4; the output is ids too.
        #[arg(long)]
        tokens: Option<String>,
        /// Print only the generated continuation, not the prompt before it.
        #[arg(long)]
        no_echo: bool,
        /// Tokens to generate.
        #[arg(long, default_value_t = 200)]
        max_new: usize,
        /// Softmax temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Sample among the k most likely tokens; 0 means all.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Seed of the sampling (only with --temperature above 0).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Device: cpu, cuda, cuda:N, or cuda-emu (the CUDA code path emulated on the CPU; slow).
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Write the logits (L, vocab) of one token sequence as the f32 tensor `logits`.
    Logits {
        /// A run folder, training checkpoint file, or exported folder (checkpoints/final; a Hugging
        /// Face folder for Mamba).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Token ids, e.g. 3,1,4,1,5.
        #[arg(long)]
        tokens: String,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Device: cpu, cuda, cuda:N, or cuda-emu (the CUDA code path emulated on the CPU; slow).
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Train one run per point of a grid over config keys, then write summary.csv. The grid is
    /// the product of the config's [sweep.grid] axes and the --grid axes; the points are printed
    /// before any runs.
    Sweep {
        /// A TOML config; its optional [sweep.grid] table holds axes ("key" = [values]).
        #[arg(long)]
        config: PathBuf,
        /// An axis, e.g. --grid model.mamba.d_model=32,64 --grid task.seq_len=64,128. An axis on a
        /// key of the config's [sweep.grid] replaces that axis; the config's other axes stay.
        #[arg(long, value_name = "KEY=V1,V2,...")]
        grid: Vec<String>,
        /// Override config keys for every point.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Sweep folder name under out_dir (default: the config's name, then "-sweep").
        #[arg(long)]
        name: Option<String>,
        /// Points trained in parallel, each a child process.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Device of every run: cpu, cuda, cuda:N or cuda-emu.
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Plot runs (overlaid) and sweeps: loss, accuracy vs length, loss vs FLOPs, throughput/memory.
    Plot {
        /// Run folders or sweep folders.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output folder (default: RUN_DIR/plots for one input, runs/plots otherwise).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train the config once per architecture on the same data and seed, side by side: one run
    /// folder each under OUT/NAME, summary.csv, plots and a results table. The first architecture
    /// is sized as configured; each other one whose d_model is not set gets the width (a multiple
    /// of 8 and of 2·n_heads) whose total parameter count is closest to the first's; set sizes more
    /// than 20% apart draw a warning.
    Compare {
        /// A TOML config; its [model.<arch>] sections size each architecture.
        #[arg(long)]
        config: PathBuf,
        /// Architectures, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "mamba,transformer")]
        archs: Vec<String>,
        /// Seeds, comma-separated: every architecture is trained at each (default: the config's
        /// `seeds` key, else its `seed`).
        #[arg(long)]
        seeds: Option<String>,
        /// Override config keys.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Parent folder of the comparison.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Folder name (default: the config file's stem, then "-compare").
        #[arg(long)]
        name: Option<String>,
        /// Runs trained side by side, each a child process with the cores shared out (default: one
        /// per core on the CPU, one on a GPU).
        #[arg(long)]
        jobs: Option<usize>,
        /// Device of every run: cpu, cuda, cuda:N or cuda-emu.
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Run a built-in experiment that reproduces a synthetic result of the Mamba papers
    /// (selective-copying: Table 1; induction-heads: Table 2; mqar: the Mamba-2 paper's Figure 8
    /// and zoology's Figure 2): every model at every seed into OUT/reproduce-SUITE,
    /// with summary.csv, plots and results.md, our accuracies next to the paper's figures.
    Reproduce {
        /// The suite: selective-copying, induction-heads or mqar.
        suite: String,
        /// A few training steps of the same comparison, to check that it runs (into
        /// OUT/reproduce-SUITE-quick).
        #[arg(long)]
        quick: bool,
        /// Parent folder of the suite's folder.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Runs trained side by side, each a child process with the cores shared out (default: one
        /// per core on the CPU, one on a GPU).
        #[arg(long)]
        jobs: Option<usize>,
        /// Device of every run: cpu, cuda, cuda:N or cuda-emu.
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Scaling curves: every architecture of the config's [scaling] table at every width, each
    /// trained for tokens_per_param tokens per non-embedding parameter on byte-level text, into
    /// OUT/NAME as a sweep (resumable: run it again to continue); then the final held-out loss of
    /// each architecture fitted against training compute and parameters (fits.csv), plots and a
    /// table. Without --config: the built-in grid (Shakespeare, Mamba / Transformer / hybrid).
    Scaling {
        /// A TOML config with a [scaling] table (archs, widths, tokens_per_param).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The grid's [scaling.quick] variant (tiny models, a few steps), into OUT/NAME-quick.
        #[arg(long)]
        quick: bool,
        /// Override config keys for every point.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Parent folder of the scaling folder.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Folder name (default "scaling", "scaling-quick" with --quick).
        #[arg(long)]
        name: Option<String>,
        /// Points trained side by side, each a child process with the cores shared out (default:
        /// one per core on the CPU, one on a GPU).
        #[arg(long)]
        jobs: Option<usize>,
        /// Device of every run: cpu, cuda, cuda:N or cuda-emu.
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Time the selective scan (forward, backward; GB/s against the copy bandwidth) and training
    /// steps of a Mamba and a Transformer; defaults are the GPU table (B 1..8, D 1536, L 2^10..2^16;
    /// 4-layer d_model 512 models at L 1024..16384).
    Bench {
        /// Device: cpu, cuda, cuda:N, or cuda-emu (the CUDA code path emulated on the CPU; slow).
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Scan batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().batches)]
        batches: Vec<usize>,
        /// Scan lengths, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().lengths)]
        lengths: Vec<usize>,
        /// Scan channels (d_inner).
        #[arg(long, default_value_t = gpu_bench().d)]
        d: usize,
        /// State sizes of the SSD rows (Mamba-2's scan beside Mamba-1's at d_inner --d, the
        /// largest batch and every scan length), comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().ssd_states)]
        ssd_states: Vec<usize>,
        /// Positions per chunk of the SSD rows and of the Mamba-2 model's training and decoding
        /// rows (at most 256, the CUDA kernels' limit; 64 is the fastest on the CPU).
        #[arg(long, default_value_t = gpu_bench().ssd_chunk)]
        ssd_chunk: usize,
        /// Training lengths, comma-separated (tokens per step stay fixed at --train-tokens).
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().train_lengths)]
        train_lengths: Vec<usize>,
        /// Tokens per training step: batch size = this / length (at least 1).
        #[arg(long, default_value_t = gpu_bench().train_tokens)]
        train_tokens: usize,
        /// Width (d_model) of both trained models.
        #[arg(long, default_value_t = gpu_bench().d_model)]
        d_model: usize,
        /// Depth (layers) of both trained models.
        #[arg(long, default_value_t = gpu_bench().n_layer)]
        n_layer: usize,
        /// Decoding batch sizes, comma-separated (every architecture of the training rows).
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().decode_batches)]
        decode_batches: Vec<usize>,
        /// Decoding contexts: tokens per sequence prefilled before decoding, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().decode_contexts)]
        decode_contexts: Vec<usize>,
        /// New tokens per timed decoding run.
        #[arg(long, default_value_t = gpu_bench().decode_tokens)]
        decode_tokens: usize,
        /// Timed runs per measurement, after a warm-up (median reported).
        #[arg(long, default_value_t = gpu_bench().repeats)]
        repeats: usize,
        /// Folder for bench_scan.csv, bench_train.csv and bench_decode.csv (default: print the
        /// tables only).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also time PyTorch beside ours (scan loop and parallel scan, SDPA, matmul, training
        /// steps) into bench_torch.csv and plots; needs a build with `--features torch`.
        #[arg(long)]
        torch: bool,
        /// Attention lengths of the PyTorch comparison, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = gpu_bench().attn_lengths)]
        attn_lengths: Vec<usize>,
        /// Longest scan the PyTorch formulations run (a loop over time; a log-depth scan holding
        /// log2(l) copies of the states).
        #[arg(long, default_value_t = gpu_bench().torch_max_len)]
        torch_max_len: usize,
    },
    /// On a GPU: parity of every op, training step and decoding step with the CPU, then the
    /// benchmark table and the speed targets; writes parity.csv and the bench CSVs to --out.
    /// Exits with failure when a parity check fails.
    GpuCheck {
        /// Device to check against the CPU: cuda, cuda:N, or cuda-emu (emulated on the CPU; slow).
        #[arg(long, default_value = "cuda")]
        device: Device,
        /// Small shapes, e.g. to try it on `cuda-emu`.
        #[arg(long)]
        quick: bool,
        /// Folder for parity.csv, bench_scan.csv and bench_train.csv.
        #[arg(long, default_value = "gpu-check")]
        out: PathBuf,
    },
    /// Train a small Mamba and a Transformer of about the same parameter count (sized as by
    /// compare) on induction heads in a few minutes, test them at up to 64x the training length,
    /// write runs/demo/ (CSVs, plots) and print a results table.
    Demo {
        /// Parent folder of demo/.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Seeds, comma-separated: both architectures are trained at each (default: 0, 1, 2).
        #[arg(long)]
        seeds: Option<String>,
        /// Override demo config keys, e.g. --set train.steps=100.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Runs trained side by side, each a child process with the cores shared out (default: one
        /// per core on the CPU, one on a GPU).
        #[arg(long)]
        jobs: Option<usize>,
        /// Device of every run: cpu, cuda, cuda:N or cuda-emu.
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
}

/// The defaults of `bench`: the GPU table.
fn gpu_bench() -> BenchOptions {
    BenchOptions::gpu(Device::Cpu)
}

/// Uses `threads` CPU threads for the rest of the process (0: one per core).
fn init_threads(threads: usize) -> Result<()> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot set up the thread pool")?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Train {
            config,
            set,
            resume,
            extend,
            steps,
            stop_after,
            init_from,
            device,
        } => {
            let options = TrainOptions { stop_after, device };
            let mut set = set;
            if let Some(dir) = init_from {
                let value = toml::Value::String(dir.display().to_string());
                set.push(format!("model.init_from={value}"));
            }
            if let Some(dir) = resume {
                init_threads(train::run_config(&dir)?.threads)?;
                train::resume(&dir, &options)?;
            } else if let Some(dir) = extend {
                init_threads(train::run_config(&dir)?.threads)?;
                train::extend(&dir, steps.expect("clap requires --steps"), &options)?;
            } else {
                let c: RunConfig =
                    config::load(&config.expect("clap requires --config or --resume"), &set)?;
                init_threads(c.threads)?;
                train::start(&c, &options)?;
            }
        }
        Cmd::Eval {
            checkpoint,
            set,
            out,
            device,
        } => {
            commands::eval(&checkpoint, &set, out.as_deref(), device)?;
        }
        Cmd::Generate {
            checkpoint,
            prompt,
            tokens,
            max_new,
            temperature,
            top_k,
            seed,
            no_echo,
            device,
        } => {
            let prompt = match (prompt, tokens) {
                (Some(p), _) => Prompt::Text(p),
                (None, Some(t)) => Prompt::Tokens(t),
                (None, None) => unreachable!("clap requires --prompt or --tokens"),
            };
            let options = GenerateOptions {
                max_new,
                temperature,
                top_k,
                seed,
                echo: !no_echo,
            };
            println!(
                "{}",
                commands::generate(&checkpoint, prompt, &options, device)?
            );
        }
        Cmd::Logits {
            checkpoint,
            tokens,
            out,
            device,
        } => commands::logits(&checkpoint, &tokens, &out, device)?,
        Cmd::Sweep {
            config,
            grid,
            set,
            name,
            jobs,
            device,
        } => {
            sweep(&SweepOptions {
                config,
                grid,
                set,
                name,
                jobs,
                device,
            })?;
        }
        Cmd::Plot { runs, out } => {
            let out = out.unwrap_or_else(|| {
                if runs.len() == 1 {
                    runs[0].join("plots")
                } else {
                    PathBuf::from("runs/plots")
                }
            });
            for f in plot::plot(&runs, &out)? {
                println!("{}", f.display());
            }
        }
        Cmd::Compare {
            config,
            archs,
            seeds,
            set,
            out,
            name,
            jobs,
            device,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("{}: cannot read", config.display()))?;
            let stem = config
                .file_stem()
                .map_or("run".into(), |s| s.to_string_lossy().into_owned());
            let dir = out.join(name.unwrap_or(format!("{stem}-compare")));
            let archs: Vec<&str> = archs.iter().map(String::as_str).collect();
            let options = CompareOptions {
                seeds: seeds.as_deref(),
                overrides: &set,
                jobs,
                device,
            };
            demo::compare(&text, &config.display().to_string(), &dir, &archs, &options)?;
        }
        Cmd::Demo {
            out,
            seeds,
            set,
            jobs,
            device,
        } => {
            let options = CompareOptions {
                seeds: seeds.as_deref(),
                overrides: &set,
                jobs,
                device,
            };
            demo::demo(&out, &options)?;
        }
        Cmd::Reproduce {
            suite,
            quick,
            out,
            jobs,
            device,
        } => {
            reproduce::reproduce(reproduce::suite(&suite)?, &out, quick, jobs, device)?;
        }
        Cmd::Scaling {
            config,
            quick,
            set,
            out,
            name,
            jobs,
            device,
        } => {
            scaling::scaling(&ScalingOptions {
                config: config.as_deref(),
                quick,
                out: &out,
                name,
                set: &set,
                jobs,
                device,
            })?;
        }
        Cmd::Bench {
            device,
            batches,
            lengths,
            d,
            ssd_states,
            ssd_chunk,
            train_lengths,
            train_tokens,
            d_model,
            n_layer,
            decode_batches,
            decode_contexts,
            decode_tokens,
            repeats,
            out,
            torch,
            attn_lengths,
            torch_max_len,
        } => {
            let o = BenchOptions {
                device,
                batches,
                lengths,
                d,
                ssd_states,
                ssd_chunk,
                train_lengths,
                train_tokens,
                d_model,
                n_layer,
                decode_batches,
                decode_contexts,
                decode_tokens,
                repeats,
                out,
                torch,
                attn_lengths,
                torch_max_len,
                ..gpu_bench()
            };
            let report = bench(&o)?;
            if !report.errors.is_empty() {
                anyhow::bail!(
                    "bench: {} rows failed: {}",
                    report.errors.len(),
                    report.errors.join("; ")
                );
            }
        }
        Cmd::GpuCheck { device, quick, out } => {
            if !gpu_check(&GpuCheckOptions { device, quick, out })? {
                anyhow::bail!("gpu-check: parity failed (see parity.csv)");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
