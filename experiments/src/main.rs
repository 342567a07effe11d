//! `ssm-lab`: train, evaluate, sample, sweep and plot SSM experiments. Run `ssm-lab --help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use experiments::checkpoint::CONFIG_FILE;
use experiments::commands::{self, Prompt};
use experiments::config::{self, RunConfig};
use experiments::sweep::{SweepOptions, sweep};
use experiments::train::{self, TrainOptions};
use experiments::{demo, plot};

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
        /// A TOML config (see experiments/configs/).
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Override any config key, e.g. --set train.lr=3e-3 --set model.mamba.d_model=128.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue the run in this folder from its latest checkpoint, bit-identically.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "set")]
        resume: Option<PathBuf>,
        /// Stop right after this step as a kill would, without a final checkpoint (tests resume).
        #[arg(long, value_name = "STEP")]
        stop_after: Option<u64>,
    },
    /// Evaluate a run's latest checkpoint on its task at its eval lengths.
    Eval {
        /// A run folder or training checkpoint file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Override eval keys, e.g. --set eval.lengths=[64,256,1024].
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Also write the results as CSV.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Continue a prompt with a trained model (greedy, or sampled with --temperature).
    Generate {
        /// A run folder, training checkpoint file or Hugging Face Mamba folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text prompt (byte-level models).
        #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
        prompt: Option<String>,
        /// Token ids, e.g. 3,1,4.
        #[arg(long)]
        tokens: Option<String>,
        /// Tokens to generate.
        #[arg(long, default_value_t = 200)]
        max_new: usize,
        /// Softmax temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Sample among the k most likely tokens; 0 means all.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write the logits (L, vocab) of one token sequence as the f32 tensor `logits`.
    Logits {
        /// A run folder, training checkpoint file or Hugging Face Mamba folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Token ids, e.g. 3,1,4,1,5.
        #[arg(long)]
        tokens: String,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train one run per point of a grid over config keys, then write summary.csv.
    Sweep {
        #[arg(long)]
        config: PathBuf,
        /// An axis, e.g. --grid model.mamba.d_model=32,64 --grid task.seq_len=64,128.
        #[arg(long, value_name = "KEY=V1,V2,...")]
        grid: Vec<String>,
        /// Override config keys for every point.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Sweep folder name under out_dir (default: the config's name).
        #[arg(long)]
        name: Option<String>,
        /// Points trained in parallel, each a child process.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
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
    /// folder each under OUT/NAME, summary.csv, plots and a results table.
    Compare {
        #[arg(long)]
        config: PathBuf,
        /// Architectures, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "mamba,transformer")]
        archs: Vec<String>,
        /// Override config keys.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Parent folder of the comparison.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Folder name (default: the config file's stem, then "-compare").
        #[arg(long)]
        name: Option<String>,
    },
    /// Train a small Mamba and a Transformer of the same size on induction heads in a few
    /// minutes, test them at up to 64x the training length, write runs/demo/ (CSVs, plots) and
    /// print a results table.
    Demo {
        /// Parent folder of demo/.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Override demo config keys, e.g. --set train.steps=100.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
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
            stop_after,
        } => {
            let options = TrainOptions { stop_after };
            if let Some(dir) = resume {
                let c = config::load(&dir.join(CONFIG_FILE), &[])
                    .with_context(|| format!("cannot resume {}", dir.display()))?;
                init_threads(c.threads)?;
                train::resume(&dir, &options)?;
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
        } => {
            commands::eval(&checkpoint, &set, out.as_deref())?;
        }
        Cmd::Generate {
            checkpoint,
            prompt,
            tokens,
            max_new,
            temperature,
            top_k,
            seed,
        } => {
            let prompt = match (prompt, tokens) {
                (Some(p), _) => Prompt::Text(p),
                (None, Some(t)) => Prompt::Tokens(t),
                (None, None) => unreachable!("clap requires --prompt or --tokens"),
            };
            println!(
                "{}",
                commands::generate(&checkpoint, prompt, max_new, temperature, top_k, seed)?
            );
        }
        Cmd::Logits {
            checkpoint,
            tokens,
            out,
        } => commands::logits(&checkpoint, &tokens, &out)?,
        Cmd::Sweep {
            config,
            grid,
            set,
            name,
            jobs,
        } => {
            sweep(&SweepOptions {
                config,
                grid,
                set,
                name,
                jobs,
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
            set,
            out,
            name,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("{}: cannot read", config.display()))?;
            let stem = config
                .file_stem()
                .map_or("run".into(), |s| s.to_string_lossy().into_owned());
            let dir = out.join(name.unwrap_or(format!("{stem}-compare")));
            let archs: Vec<&str> = archs.iter().map(String::as_str).collect();
            demo::compare(&text, &config.display().to_string(), &dir, &archs, &set)?;
        }
        Cmd::Demo { out, set } => {
            demo::demo(&out, &set)?;
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
