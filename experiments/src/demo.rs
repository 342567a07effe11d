//! `ssm-lab compare` trains several architectures on the same task, data and seed (one run folder
//! each, summary.csv, plots side by side, a results table); `ssm-lab demo` is a compare of Mamba
//! and the Transformer baseline with a built-in config that reaches high accuracy in a few
//! minutes on two cores.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use ssm::Device;

use crate::config::{self, RunConfig};
use crate::plot::plot;
use crate::sweep::{SUMMARY_FILE, write_summary};
use crate::train::{self, Outcome, TrainOptions};

/// The demo's config, built into the binary so that the demo runs from any folder.
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.toml");

/// The architectures the demo compares: same task, data, seed, optimizer and schedule.
pub const DEMO_ARCHS: &[&str] = &["mamba", "transformer"];

/// Written into a compare folder with the config it ran; such a folder may be replaced by the
/// next compare of the same name.
/// The file that marks a folder written by compare or demo.
pub const MARKER: &str = "compare.toml";

/// The demo: `compare` of `DEMO_ARCHS` with the built-in config, into `out_dir/demo`.
pub fn demo(out_dir: &Path, overrides: &[String], device: Device) -> Result<PathBuf> {
    compare(
        DEMO_CONFIG,
        "configs/demo.toml (built in)",
        &out_dir.join("demo"),
        DEMO_ARCHS,
        overrides,
        device,
    )
}

/// Trains the config once per architecture in `archs` (as `model.arch`), each into `dir/<arch>`,
/// then writes `dir/summary.csv`, plots them together under `dir/plots` and prints a table. Every
/// config is resolved and validated before anything is written.
pub fn compare(
    config_text: &str,
    origin: &str,
    dir: &Path,
    archs: &[&str],
    overrides: &[String],
    device: Device,
) -> Result<PathBuf> {
    if archs.is_empty() {
        bail!("--archs: name at least one architecture");
    }
    let configs = archs
        .iter()
        .map(|arch| {
            let mut o = overrides.to_vec();
            o.push(format!("model.arch={arch}"));
            o.push(format!(
                "out_dir={}",
                toml::Value::String(dir.display().to_string())
            ));
            o.push(format!("name={arch}"));
            let c = config::resolve(config_text, origin, &o)?;
            config::validate(&c)?;
            Ok(c)
        })
        .collect::<Result<Vec<RunConfig>>>()?;
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{}: exists and was not written by compare or demo (no {MARKER}); move it away or choose another folder",
                dir.display()
            );
        }
        // Renamed aside first: a kill while removing never leaves a folder without its marker.
        let old = dir.with_file_name(format!(
            ".{}.removing",
            dir.file_name()
                .map_or("compare".into(), |n| n.to_string_lossy())
        ));
        ssm::io::remove_dir_all(&old)?;
        ssm::io::rename(dir, &old)?;
        ssm::io::remove_dir_all(&old)?;
    }
    ssm::io::create_dir_all(dir)?;
    ssm::io::atomic_write(&dir.join(MARKER), config_text.as_bytes())?;
    let outcomes = configs
        .iter()
        .map(|c| {
            let options = TrainOptions {
                device,
                ..TrainOptions::default()
            };
            train::start(c, &options)
        })
        .collect::<Result<Vec<Outcome>>>()?;
    let rows: Vec<(String, Vec<String>)> = archs
        .iter()
        .map(|a| (a.to_string(), vec![a.to_string()]))
        .collect();
    write_summary(dir, &["model.arch".to_string()], &rows)?;
    let files = plot(&[dir.to_path_buf()], &dir.join("plots"))?;
    print_table(&configs[0], archs, &outcomes);
    println!(
        "\nresults in {}: {SUMMARY_FILE}, */metrics.csv, */eval.csv, plots/ ({} files)",
        dir.display(),
        files.len()
    );
    Ok(dir.to_path_buf())
}

fn print_table(config: &RunConfig, archs: &[&str], outcomes: &[Outcome]) {
    let t = &config.task;
    println!(
        "\ndemo: task {}, trained at length {} for {} steps",
        t.kind.name(),
        t.seq_len,
        config.train.steps
    );
    let lengths = config.eval_lengths();
    let mut header = format!("{:<12} {:>10} {:>10}", "arch", "time (s)", "loss");
    for l in &lengths {
        header += &format!(" {:>9}", format!("acc@{l}"));
    }
    println!("{header}");
    for (arch, o) in archs.iter().zip(outcomes) {
        let mut line = format!("{arch:<12} {:>10.1} {:>10.4}", o.elapsed_s, o.last_loss);
        for l in &lengths {
            let acc = o
                .evals
                .iter()
                .find(|e| e.length == *l)
                .map_or(f64::NAN, |e| e.accuracy);
            line += &format!(" {acc:>9.3}");
        }
        println!("{line}");
    }
}
