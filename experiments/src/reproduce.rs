//! `ssm-lab reproduce <suite>`: built-in experiments, one per synthetic result of the Mamba paper
//! (Gu & Dao, 2023, arXiv 2312.00752) and of the Mamba-2 paper (Dao & Gu, 2024, arXiv
//! 2405.21060), each a comparison of several models at several seeds (`demo::compare_entries`),
//! on a grid of widths and task variants where the result is a curve, whose results table sets
//! ours next to the paper's figure and says where our setup departs from the paper's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::config;
use crate::demo::{CompareOptions, Entry, compare_entries};
use crate::metrics::Table;
use crate::plot;
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

/// A task variant of a width grid: MQAR at one length with its key-value count, trained on
/// batches of its own size (the same tokens per step at every length).
struct Variant {
    seq_len: usize,
    num_pairs: usize,
    batch_size: usize,
}

/// A suite that trains every model at every width on every variant and plots accuracy against
/// width.
struct Grid {
    widths: &'static [usize],
    variants: &'static [Variant],
    /// What `--quick` keeps: the first widths and variants.
    quick: (usize, usize),
}

/// A built-in experiment.
pub struct Suite {
    pub name: &'static str,
    /// The paper's result it reproduces.
    pub result: &'static str,
    config: &'static str,
    models: &'static [Model],
    /// Every model at several widths and task variants instead of once each.
    grid: Option<Grid>,
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
        grid: None,
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
        grid: None,
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
    Suite {
        name: "mqar",
        result: "Mamba-2 paper, Figure 8 (after zoology, Figure 2): multi-query associative recall accuracy vs model width",
        config: include_str!("../configs/reproduce/mqar.toml"),
        models: &[
            Model {
                name: "mamba",
                arch: "mamba",
                overrides: &[],
                paper: "needs width as the length and the pairs grow (Figure 8, Mamba)",
            },
            Model {
                name: "mamba2-N16",
                arch: "mamba2",
                overrides: &["model.mamba2.d_state=16"],
                paper: "between Mamba and attention (Figure 8, Mamba-2 N = 16)",
            },
            Model {
                name: "mamba2-N64",
                arch: "mamba2",
                overrides: &["model.mamba2.d_state=64"],
                paper: "close to attention, better with the larger state (Figure 8, Mamba-2 N = 64)",
            },
            Model {
                name: "attention",
                arch: "transformer",
                overrides: &[],
                paper: "solves it at every width and length (Figure 8, Attention)",
            },
            Model {
                name: "hybrid",
                arch: "hybrid",
                overrides: &["model.hybrid.pattern=\"MA\""],
                paper: "not in Figure 8",
            },
        ],
        grid: Some(Grid {
            widths: &[16, 32, 64],
            variants: &[
                Variant {
                    seq_len: 64,
                    num_pairs: 4,
                    batch_size: 64,
                },
                Variant {
                    seq_len: 128,
                    num_pairs: 8,
                    batch_size: 32,
                },
            ],
            quick: (2, 1),
        }),
        quick: &["train.steps=4", "train.eval_every=0", "seeds=[0, 1]"],
        departures: &[
            "lengths 64 and 128 with 4 and 8 key-value pairs (zoology's K = L/16; Figure 8: lengths 256 to 1024), widths 16 to 64 (Figure 8: 32 to 256): the widths and lengths that fit in 30 minutes at two seeds",
            "a vocabulary of 256 tokens, not 8,192: the output layer dominates the cost of so small a model on the CPU, and MQAR needs more tokens than positions",
            "training: 1,200 steps of 4,096 tokens (64 × 64 or 32 × 128) on fresh random sequences at one learning rate for all; the paper trains on 100,000 sequences for many epochs and reports the best of a learning-rate sweep",
            "2-layer models; the hybrid is one Mamba layer under one attention layer (pattern \"MA\")",
            "Mamba-2 with heads of 16 channels (the paper: 64), so that d_inner = 2 · width splits into heads at width 16; states 16 and 64 (Figure 8 also has 256)",
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
    let entries = entries(suite, quick);
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
    let wall_s = start.elapsed().as_secs_f64();
    let table = match &suite.grid {
        None => results(suite, &dir, trained_at, wall_s, quick)?,
        Some(grid) => grid_results(suite, grid, &dir, wall_s, quick)?,
    };
    ssm::io::atomic_write(&dir.join(RESULTS_FILE), table.as_bytes())?;
    println!("\n{table}");
    println!("written to {}", dir.join(RESULTS_FILE).display());
    Ok(dir)
}

/// The runs of a suite: each model once, or on a grid each model at every width of every
/// variant, named `<model>-L<length>-d<width>`.
fn entries(suite: &Suite, quick: bool) -> Vec<Entry> {
    let own = |m: &Model| {
        m.overrides
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let Some(grid) = &suite.grid else {
        return suite
            .models
            .iter()
            .map(|m| Entry {
                name: m.name.into(),
                arch: m.arch.into(),
                overrides: own(m),
            })
            .collect();
    };
    let (widths, variants) = grid_axes(grid, quick);
    let mut out = Vec::new();
    for v in variants {
        for m in suite.models {
            for w in widths {
                let mut overrides = own(m);
                overrides.extend([
                    format!("model.{}.d_model={w}", m.arch),
                    format!("task.seq_len={}", v.seq_len),
                    format!("task.mqar.num_pairs={}", v.num_pairs),
                    format!("train.batch_size={}", v.batch_size),
                    format!("eval.lengths=[{}]", v.seq_len),
                ]);
                out.push(Entry {
                    name: grid_name(m, v, *w),
                    arch: m.arch.into(),
                    overrides,
                });
            }
        }
    }
    out
}

fn grid_axes(grid: &Grid, quick: bool) -> (&[usize], &[Variant]) {
    match quick {
        true => (&grid.widths[..grid.quick.0], &grid.variants[..grid.quick.1]),
        false => (grid.widths, grid.variants),
    }
}

fn grid_name(m: &Model, v: &Variant, width: usize) -> String {
    format!("{}-L{}-d{width}", m.name, v.seq_len)
}

/// The seeds of the finished runs of a summary, in the order they ran.
fn finished_seeds(summary: &Table) -> Result<Vec<String>> {
    let status = summary.strings("status")?;
    let mut seeds: Vec<String> = Vec::new();
    for (s, st) in summary
        .strings("seed")
        .unwrap_or_default()
        .into_iter()
        .zip(&status)
    {
        if st == "ok" && !seeds.contains(&s) {
            seeds.push(s);
        }
    }
    Ok(seeds)
}

/// The summary.csv rows holding the mean, min and max of the runs of `name` over the seeds (the
/// run's own row when there is one seed), if it finished.
fn aggregate_rows(summary: &Table, name: &str, seeds: usize) -> Result<Option<[usize; 3]>> {
    let (variant, status) = (summary.strings("variant")?, summary.strings("status")?);
    let row = |what: &str| (0..variant.len()).find(|&i| variant[i] == name && status[i] == what);
    Ok(match seeds > 1 {
        true => row("mean")
            .zip(row("min"))
            .zip(row("max"))
            .map(|((a, b), c)| [a, b, c]),
        false => row("ok").map(|r| [r; 3]),
    })
}

/// One cell: the mean and [min-max] over several seeds, the value alone over one.
fn cell(values: &[f64], rows: [usize; 3], seeds: usize) -> String {
    let [mean, min, max] = rows.map(|r| values[r]);
    match (mean.is_finite(), seeds > 1) {
        (false, _) => "—".into(),
        (true, true) => format!("{mean:.3} [{min:.2}-{max:.2}]"),
        (true, false) => format!("{mean:.3}"),
    }
}

/// The first lines of a results table: the suite, the --quick warning, the seeds and the wall
/// time.
fn heading(suite: &Suite, what: &str, seeds: &[String], wall_s: f64, quick: bool) -> String {
    let mut out = format!("### {}: {}\n\n", suite.name, suite.result);
    if quick {
        out += "**--quick: a few training steps, to check the suite runs; not a result.**\n\n";
    }
    out += &format!(
        "Ours: {what}; mean and [min-max] over {} seeds ({}); {wall_s:.0} s wall on {} core(s).\n\n",
        seeds.len().max(1),
        seeds.join(", "),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    out
}

fn departures(suite: &Suite) -> String {
    let mut out = "\nDepartures from the paper's setup:\n".to_string();
    for d in suite.departures {
        out += &format!("- {d}\n");
    }
    out
}

/// The results table of a grid suite in Markdown: per model and width, its size and the accuracy
/// on every variant at its own length, next to the paper's figure; and the accuracy-vs-width plot.
fn grid_results(
    suite: &Suite,
    grid: &Grid,
    dir: &Path,
    wall_s: f64,
    quick: bool,
) -> Result<String> {
    let summary = Table::read(&dir.join(SUMMARY_FILE))?;
    let seeds = finished_seeds(&summary)?;
    let n = seeds.len();
    let params = summary.f64s("num_params")?;
    let (widths, variants) = grid_axes(grid, quick);
    let accuracy = variants
        .iter()
        .map(|v| summary.f64s(&format!("accuracy@{}", v.seq_len)))
        .collect::<Result<Vec<_>>>()?;
    let mut out = heading(
        suite,
        "accuracy at the training length, after training there",
        &seeds,
        wall_s,
        quick,
    );
    out += "| model | d_model | params |";
    for v in variants {
        out += &format!(" L {}, K {} |", v.seq_len, v.num_pairs);
    }
    out += " paper |\n|---|---|---|";
    out += &"---|".repeat(variants.len() + 1);
    out.push('\n');
    let mut curves = Vec::new();
    for m in suite.models {
        let mut points = vec![Vec::new(); variants.len()];
        for &w in widths {
            let mut row = String::new();
            let mut size = None;
            for (j, v) in variants.iter().enumerate() {
                let name = grid_name(m, v, w);
                let Some(rows) = aggregate_rows(&summary, &name, n)? else {
                    bail!("{}: no finished run of {name}", dir.display());
                };
                size.get_or_insert(params[rows[0]]);
                row += &format!(" {} |", cell(&accuracy[j], rows, n));
                let [mean, min, max] = rows.map(|r| accuracy[j][r]);
                points[j].push((w as f64, mean, min, max));
            }
            let size = thousands(size.unwrap_or(f64::NAN) as usize);
            out += &format!("| {} | {w} | {size} |{row} {} |\n", m.name, m.paper);
        }
        for (v, p) in variants.iter().zip(points) {
            curves.push((
                format!("{} (L {}, K {})", m.name, v.seq_len, v.num_pairs),
                p,
            ));
        }
    }
    plot::accuracy_vs_width(curves, &dir.join("plots"))?;
    Ok(out + &departures(suite))
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
    let seeds = finished_seeds(&summary)?;
    let n = seeds.len();
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
    let what = format!("trained at length {trained_at}; accuracy of the last evaluation");
    let mut out = heading(suite, &what, &seeds, wall_s, quick);
    out += "| model | params |";
    for l in &lengths {
        out += &format!(" acc@{l} |");
    }
    out += " paper |\n|---|---|";
    out += &"---|".repeat(lengths.len() + 1);
    out.push('\n');
    for m in suite.models {
        let Some(rows) = aggregate_rows(&summary, m.name, n)? else {
            bail!("{}: no finished run of {}", dir.display(), m.name);
        };
        out += &format!("| {} | {} |", m.name, thousands(params[rows[0]] as usize));
        for acc in &accuracy {
            out += &format!(" {} |", cell(acc, rows, n));
        }
        out += &format!(" {} |\n", m.paper);
    }
    Ok(out + &departures(suite))
}
