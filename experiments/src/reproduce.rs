//! `ssm-lab reproduce <suite>`: built-in experiments, one per synthetic result of the Mamba paper
//! (Gu & Dao, 2023, arXiv 2312.00752), each a comparison of several models at several seeds
//! (`demo::compare_entries`) whose results table sets ours next to the paper's figure and says
//! where our setup departs from the paper's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::config;
use crate::demo::{CompareOptions, Entry, compare_entries};
use crate::metrics::Table;
use crate::sizes::thousands;
use crate::sweep::SUMMARY_FILE;

/// The results table a suite writes into its folder.
pub const RESULTS_FILE: &str = "results.md";

/// One model of a suite and what the paper reports for it.
struct Model {
    name: &'static str,
    arch: &'static str,
    overrides: &'static [&'static str],
    /// The paper's figure for this model, with where it stands in the paper.
    paper: &'static str,
}

/// A built-in experiment.
pub struct Suite {
    pub name: &'static str,
    /// The paper's result it reproduces.
    pub result: &'static str,
    config: &'static str,
    models: &'static [Model],
    /// Overrides of `--quick`: the same comparison, trained for a few steps.
    quick: &'static [&'static str],
    /// Where our setup differs from the paper's, and why.
    departures: &'static [&'static str],
}

pub const SUITES: &[Suite] = &[
    Suite {
        name: "selective-copying",
        result: "Mamba paper, Table 1: selective copying accuracy by layer",
        config: include_str!("../configs/reproduce/selective_copying.toml"),
        models: &[
            Model {
                name: "mamba-s6",
                arch: "mamba",
                overrides: &[],
                paper: "99.8% (Table 1, Mamba with S6)",
            },
            Model {
                name: "mamba-s4",
                arch: "mamba",
                overrides: &["model.mamba.selective=false"],
                paper: "56.4% (Table 1, Mamba with S4)",
            },
            Model {
                name: "transformer",
                arch: "transformer",
                overrides: &[],
                paper: "not in Table 1",
            },
        ],
        quick: &["train.steps=4", "train.eval_every=0", "seeds=[0, 1]"],
        departures: &[
            "sequence: 64 noise positions and 16 tokens to copy, tested also with 256 (the paper: 4096)",
            "training: 3,000 steps of 32 sequences, orders of magnitude fewer than the paper's",
            "our S4 ablation is S4D-real with B and C shared by all channels, as in the selective layer (the paper's S4 row is complex-valued S4)",
        ],
    },
    Suite {
        name: "induction-heads",
        result: "Mamba paper, Table 2: induction heads accuracy at test lengths beyond training",
        config: include_str!("../configs/reproduce/induction_heads.toml"),
        models: &[
            Model {
                name: "mamba",
                arch: "mamba",
                overrides: &["eval.lengths=[48, 64, 128, 256, 1024, 4096, 16384, 65536]"],
                paper: "100% at every length 2^6..2^20 (Table 2, Mamba)",
            },
            Model {
                name: "mha-rope",
                arch: "transformer",
                overrides: &[],
                paper: "100% up to the training length, fails beyond ~2x (Table 2, MHA-RoPE)",
            },
            Model {
                name: "mha-learned",
                arch: "transformer",
                overrides: &[
                    "model.transformer.pos_encoding=\"learned\"",
                    "model.transformer.max_seq_len=256",
                    "eval.lengths=[48, 64, 128, 256]",
                ],
                paper: "100% up to the training length, fails beyond ~2x (Table 2, MHA-Abs)",
            },
            Model {
                name: "mha-none",
                arch: "transformer",
                overrides: &["model.transformer.pos_encoding=\"none\""],
                paper: "(the paper has no position-free MHA; Table 2's MHA variants fail beyond ~2x)",
            },
        ],
        quick: &[
            "train.steps=4",
            "train.eval_every=0",
            "seeds=[0, 1]",
            "eval.lengths=[64, 256]",
            "eval.batches=1",
        ],
        departures: &[
            "trained at length 48, not 256, on batches of 256: only at short lengths and large batches does a 2-layer MHA leave its plateau within a CPU budget (at length 64 it stays at chance for 400 to 800+ steps, depending on the seed)",
            "tested up to 2^16 for Mamba and 2^13 for attention (quadratic time), the learned table up to its 256 positions (the paper: up to 2^20)",
            "the learned position table has 256 rows, counted in its parameters; the rows past the training length are never trained",
        ],
    },
];

/// The suite called `name`, or an error listing them all.
pub fn suite(name: &str) -> Result<&'static Suite> {
    SUITES.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        anyhow::anyhow!(
            "reproduce: no suite `{name}`; the suites are {}",
            names.join(", ")
        )
    })
}

/// Runs `suite` into `out/reproduce-<name>` (`-quick` with `quick`), then writes and prints its
/// results table (`results.md`).
pub fn reproduce(
    suite: &Suite,
    out: &Path,
    quick: bool,
    jobs: Option<usize>,
    device: ssm::Device,
) -> Result<PathBuf> {
    let suffix = if quick { "-quick" } else { "" };
    let dir = out.join(format!("reproduce-{}{suffix}", suite.name));
    let overrides: Vec<String> = match quick {
        true => suite.quick.iter().map(|s| s.to_string()).collect(),
        false => Vec::new(),
    };
    println!("reproduce {}: {}", suite.name, suite.result);
    println!("departures from the paper's setup:");
    for d in suite.departures {
        println!("  - {d}");
    }
    let entries: Vec<Entry> = suite
        .models
        .iter()
        .map(|m| Entry {
            name: m.name.into(),
            arch: m.arch.into(),
            overrides: m.overrides.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    let options = CompareOptions {
        seeds: None,
        overrides: &overrides,
        jobs,
        device,
    };
    let start = Instant::now();
    let origin = format!("configs/reproduce/{}.toml (built in)", suite.name);
    compare_entries(suite.config, &origin, &dir, &entries, "variant", &options)?;
    let trained_at = config::parse(suite.config, &origin, &overrides)?
        .task
        .seq_len;
    let table = results(
        suite,
        &dir,
        trained_at,
        start.elapsed().as_secs_f64(),
        quick,
    )?;
    ssm::io::atomic_write(&dir.join(RESULTS_FILE), table.as_bytes())?;
    println!("\n{table}");
    println!("written to {}", dir.join(RESULTS_FILE).display());
    Ok(dir)
}

/// The results table in Markdown: per model, its size and the accuracy at every test length
/// (mean and [min-max] over the seeds), next to the paper's figure.
fn results(
    suite: &Suite,
    dir: &Path,
    trained_at: usize,
    wall_s: f64,
    quick: bool,
) -> Result<String> {
    let summary = Table::read(&dir.join(SUMMARY_FILE))?;
    let (variant, status) = (summary.strings("variant")?, summary.strings("status")?);
    // The seeds in the order they ran, from the rows of the runs.
    let mut seeds: Vec<String> = Vec::new();
    let seed_column = summary.strings("seed").unwrap_or_default();
    for (s, st) in seed_column.into_iter().zip(&status) {
        if st == "ok" && !seeds.contains(&s) {
            seeds.push(s);
        }
    }
    let mut lengths: Vec<usize> = summary
        .header
        .iter()
        .filter_map(|h| h.strip_prefix("accuracy@")?.parse().ok())
        .collect();
    lengths.sort_unstable();
    let params = summary.f64s("num_params")?;
    let accuracy = lengths
        .iter()
        .map(|l| summary.f64s(&format!("accuracy@{l}")))
        .collect::<Result<Vec<_>>>()?;
    let row_of = |name: &str, what: &str| {
        (0..variant.len()).find(|&i| variant[i] == name && status[i] == what)
    };
    let mut out = format!("### {}: {}\n\n", suite.name, suite.result);
    if quick {
        out += "**--quick: a few training steps, to check the suite runs; not a result.**\n\n";
    }
    out += &format!(
        "Ours: trained at length {trained_at}; accuracy of the last evaluation, mean and [min-max] over {} seeds ({}); {:.0} s wall on {} core(s).\n\n",
        seeds.len().max(1),
        seeds.join(", "),
        wall_s,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    out += "| model | params |";
    for l in &lengths {
        out += &format!(" acc@{l} |");
    }
    out += " paper |\n|---|---|";
    out += &"---|".repeat(lengths.len() + 1);
    out.push('\n');
    for m in suite.models {
        let (mean, min, max) = match seeds.len() > 1 {
            true => (
                row_of(m.name, "mean"),
                row_of(m.name, "min"),
                row_of(m.name, "max"),
            ),
            false => {
                let ok = row_of(m.name, "ok");
                (ok, ok, ok)
            }
        };
        let Some(mean) = mean else {
            bail!("{}: no finished run of {}", dir.display(), m.name);
        };
        out += &format!("| {} | {} |", m.name, thousands(params[mean] as usize));
        for acc in &accuracy {
            let (lo, hi) = (
                min.map_or(f64::NAN, |i| acc[i]),
                max.map_or(f64::NAN, |i| acc[i]),
            );
            out += &match acc[mean].is_finite() {
                true if seeds.len() > 1 => format!(" {:.3} [{lo:.2}-{hi:.2}] |", acc[mean]),
                true => format!(" {:.3} |", acc[mean]),
                false => " — |".to_string(),
            };
        }
        out += &format!(" {} |\n", m.paper);
    }
    out += "\nDepartures from the paper's setup:\n";
    for d in suite.departures {
        out += &format!("- {d}\n");
    }
    Ok(out)
}
