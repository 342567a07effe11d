//! Every `ssm-lab` command line of the README runs as written, so the README cannot drift. The
//! lines (`cargo run --release -p experiments -- ARGS` or `ssm-lab ARGS` inside ```sh blocks) run
//! in order through the built binary in a scratch folder holding a copy of experiments/configs and
//! a small stand-in for the Shakespeare corpus, each with overrides that only make it small
//! (fewer steps, smaller batches and test lengths). Lines with `--device cuda` run in a folder of
//! their own: where there is no CUDA driver they must fail cleanly, saying so; on a GPU machine
//! they run with tiny shapes.

use std::path::Path;
use std::time::Instant;

use crate::common::*;

const PREFIXES: [&str; 2] = ["cargo run --release -p experiments -- ", "ssm-lab "];

/// The README's command lines as argument lists, in order.
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(rest) = PREFIXES.iter().find_map(|p| line.strip_prefix(p)) {
            commands.push(split_words(rest));
        }
    }
    commands
}

/// Shell words: blanks separate, double quotes group, `#` outside quotes starts a comment.
fn split_words(text: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in text.chars() {
        match c {
            '"' => (quoted, any) = (!quoted, true),
            '#' if !quoted && !any => break,
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// Overrides that keep a command small without changing what it does.
fn small(args: &[String], gpu_present: bool) -> Vec<String> {
    let sets: &[&str] = match args[0].as_str() {
        "train" if args.iter().any(|a| a == "--resume") => &[],
        "train" | "compare" | "sweep" => &[
            "train.steps=3",
            "train.batch_size=2",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "eval.batches=1",
            "eval.batch_size=2",
            "eval.lengths=[]",
        ],
        "demo" => &[
            "train.steps=3",
            "train.batch_size=2",
            "eval.batches=1",
            "eval.batch_size=2",
            "eval.lengths=[64,256]",
        ],
        "eval" => &["eval.batches=1", "eval.batch_size=2", "eval.lengths=[128]"],
        _ => &[],
    };
    let mut extra: Vec<String> = sets
        .iter()
        .flat_map(|s| ["--set".into(), s.to_string()])
        .collect();
    if (args[0] == "reproduce" || args[0] == "scaling") && !args.iter().any(|a| a == "--quick") {
        extra.push("--quick".into());
    }
    if gpu_present {
        let tiny: &[&str] = match args[0].as_str() {
            "bench" => &[
                "--batches",
                "1",
                "--lengths",
                "1024",
                "--d",
                "64",
                "--train-lengths",
                "128",
                "--train-tokens",
                "256",
                "--d-model",
                "32",
                "--n-layer",
                "1",
                "--repeats",
                "1",
            ],
            "gpu-check" => &["--quick"],
            _ => &[],
        };
        extra.extend(tiny.iter().map(|s| s.to_string()));
    }
    extra
}

/// A scratch folder as a fresh clone would look for the commands: the configs, and `data/` as
/// scripts/fetch-shakespeare leaves it (stand-in plays here: the tests have no network).
fn scratch(name: &str) -> TmpDir {
    let dir = tmp_dir(name);
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let dest = dir.join("experiments/configs");
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(configs).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dest.join(path.file_name().unwrap())).unwrap();
        }
    }
    stand_in_plays(&dir);
    dir
}

#[test]
fn every_readme_command_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let commands = readme_commands(&readme);
    let names: Vec<&str> = commands.iter().map(|c| c[0].as_str()).collect();
    for must in [
        "demo",
        "train",
        "compare",
        "sweep",
        "plot",
        "eval",
        "logits",
        "generate",
        "bench",
        "reproduce",
    ] {
        assert!(
            names.contains(&must),
            "the README shows `{must}`: {names:?}"
        );
    }
    assert!(
        commands
            .iter()
            .any(|c| c[0] == "generate" && c.iter().any(|a| a == "--prompt")),
        "the README shows generate with a prompt"
    );
    // SAFETY: loading the driver library runs its initialisers only, as cudarc does.
    let gpu_present = unsafe { libloading::Library::new("libcuda.so.1") }.is_ok();
    let dir = scratch("readme");
    let mut timings = Vec::new();
    for (i, args) in commands.iter().enumerate() {
        let gpu_line = args
            .windows(2)
            .any(|w| w[0] == "--device" && w[1] == "cuda");
        let own = gpu_line.then(|| scratch(&format!("readme-gpu-{i}")));
        let cwd: &Path = own.as_deref().unwrap_or(&dir);
        let mut full = args.clone();
        full.extend(small(args, gpu_present));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let started = Instant::now();
        if gpu_line && !gpu_present {
            let err = run_err(cwd, &full);
            assert!(err.contains("no CUDA driver"), "ssm-lab {full:?}:\n{err}");
        } else {
            run_ok(cwd, &full);
        }
        timings.push((args.join(" "), started.elapsed().as_secs_f64()));
    }
    for (command, seconds) in &timings {
        println!("{seconds:>7.2} s  ssm-lab {command}");
    }
}

#[test]
fn readme_lines_split_like_a_shell() {
    assert_eq!(
        split_words(r#"generate --prompt "ROMEO: hi" --max-new 5   # a comment"#),
        ["generate", "--prompt", "ROMEO: hi", "--max-new", "5"]
    );
    let cmds = readme_commands(
        "```sh\nssm-lab plot runs/x\n```\nssm-lab not code\n```text\nssm-lab no\n```\n",
    );
    assert_eq!(cmds, [vec!["plot".to_string(), "runs/x".into()]]);
}
