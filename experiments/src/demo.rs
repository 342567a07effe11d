//! `ssm-lab demo`: trains a small model on a synthetic task to high accuracy in a few minutes on
//! two cores, evaluates it at longer lengths, writes `runs/demo/` (one run folder per
//! architecture, summary.csv, plots) and prints a short results table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::{self, RunConfig};
use crate::plot::plot;
use crate::sweep::{SUMMARY_FILE, write_summary};
use crate::train::{self, Outcome, TrainOptions};

/// The demo's config, built into the binary so that the demo runs from any folder.
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.toml");

/// Architectures trained side by side on the same data (same seed, same batches). When the
/// Transformer baseline lands, add "transformer" here and a `[model.transformer]` section to
/// configs/demo.toml: the runs, summary.csv, plots and table pick it up.
pub const ARCHS: &[&str] = &["mamba"];

/// Written into the demo folder; a folder with it may be replaced by the next demo.
const MARKER: &str = "demo.toml";

pub fn demo(out_dir: &Path, overrides: &[String]) -> Result<PathBuf> {
    let dir = out_dir.join("demo");
    let configs = ARCHS
        .iter()
        .map(|arch| {
            let mut o = overrides.to_vec();
            o.push(format!("model.arch={arch}"));
            o.push(format!("out_dir={}", toml::Value::String(dir.display().to_string())));
            o.push(format!("name={arch}"));
            config::resolve(DEMO_CONFIG, "configs/demo.toml (built in)", &o)
        })
        .collect::<Result<Vec<RunConfig>>>()?;
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!("{}: exists and is not a demo folder (no {MARKER}); move it away or pass another --out", dir.display());
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove the previous demo {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    ssm::io::atomic_write(&dir.join(MARKER), DEMO_CONFIG.as_bytes())?;
    let outcomes = configs.iter().map(|c| train::start(c, &TrainOptions::default())).collect::<Result<Vec<Outcome>>>()?;
    let rows: Vec<(String, Vec<String>)> = ARCHS.iter().map(|a| (a.to_string(), vec![a.to_string()])).collect();
    write_summary(&dir, &["model.arch".to_string()], &rows)?;
    let files = plot(std::slice::from_ref(&dir), &dir.join("plots"))?;
    print_table(&configs[0], &outcomes);
    println!("\nresults in {}: {SUMMARY_FILE}, */metrics.csv, */eval.csv, plots/ ({} files)", dir.display(), files.len());
    Ok(dir)
}

fn print_table(config: &RunConfig, outcomes: &[Outcome]) {
    let t = &config.task;
    println!("\ndemo: task {}, trained at length {} for {} steps", t.kind.name(), t.seq_len, config.train.steps);
    let lengths = config.eval_lengths();
    let mut header = format!("{:<12} {:>10} {:>10}", "arch", "time (s)", "loss");
    for l in &lengths {
        header += &format!(" {:>9}", format!("acc@{l}"));
    }
    println!("{header}");
    for (arch, o) in ARCHS.iter().zip(outcomes) {
        let mut line = format!("{arch:<12} {:>10.1} {:>10.4}", o.elapsed_s, o.last_loss);
        for l in &lengths {
            let acc = o.evals.iter().find(|e| e.length == *l).map_or(f64::NAN, |e| e.accuracy);
            line += &format!(" {acc:>9.3}");
        }
        println!("{line}");
    }
}
