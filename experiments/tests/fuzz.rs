//! Fuzzers of everything a user hands `ssm-lab`: a few hundred random mutations of the shipped
//! configs through `train --stop-after 1`, and corrupted, truncated and lying checkpoints through
//! `logits`, `generate`, `eval` and `train --resume`. Every case must end in a clean exit (0, or 1
//! with an error), never a panic, an abort or a hang, and a refused config leaves nothing on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::common::*;

/// A case that runs longer than this is a hang.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Memory the fuzzed runs may use: low, so that huge but valid sizes are refused quickly.
const MEMORY_LIMIT: &str = "1G";

#[derive(Debug)]
enum Verdict {
    Ran,
    Refused(String),
}

/// Runs `ssm-lab args` in `cwd`, failing the test on a crash, a panic or a hang.
fn run_case(cwd: &Path, args: &[&str], case: &str) -> Verdict {
    let mut child = bin()
        .args(args)
        .current_dir(cwd)
        .env("SSM_LAB_MEMORY_LIMIT", MEMORY_LIMIT)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("{case}: still running after {TIMEOUT:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{case}: a panic:\n{stderr}");
    match status.code() {
        Some(0) => Verdict::Ran,
        Some(1) => Verdict::Refused(stderr),
        other => panic!("{case}: exit {other:?} (a crash):\n{stderr}"),
    }
}

/// The shipped configs, with short evaluations so that a valid mutation runs in a moment, and the
/// bytes task reading a small text of `text`.
fn shipped(text: &Path) -> Vec<(String, toml::Table)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut out = Vec::new();
    // The suites of configs/reproduce/ are built into the binary; the command-line configs are
    // the files at the top.
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if !e.path().is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let mut t: toml::Table =
            toml::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
        t.remove("sweep");
        let eval = t
            .entry("eval")
            .or_insert(toml::Value::Table(Default::default()));
        let eval = eval.as_table_mut().unwrap();
        eval.insert("batches".into(), 1.into());
        eval.insert("batch_size".into(), 2.into());
        eval.remove("lengths");
        if let Some(bytes) = t
            .get_mut("task")
            .and_then(|t| t.get_mut("bytes"))
            .and_then(|b| b.as_table_mut())
        {
            bytes.insert("path".into(), text.display().to_string().into());
        }
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Dotted paths of every leaf of `t`.
fn leaves(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => leaves(sub, &key, out),
            _ => out.push(key),
        }
    }
}

fn set(t: &mut toml::Table, key: &str, v: toml::Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = t;
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .entry(p.to_string())
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("a table on the way");
    }
    cur.insert(parts[parts.len() - 1].to_string(), v);
}

/// Values of every class: types, signs, zero, huge, non-finite.
fn values() -> Vec<(&'static str, toml::Value)> {
    use toml::Value as V;
    vec![
        ("zero", V::Integer(0)),
        ("negative", V::Integer(-1)),
        ("one", V::Integer(1)),
        ("huge", V::Integer(1_000_000)),
        ("huge", V::Integer(1 << 31)),
        ("huge", V::Integer(1 << 40)),
        ("huge", V::Integer(i64::MAX)),
        ("float", V::Float(0.5)),
        ("negative", V::Float(-1.5)),
        ("huge", V::Float(1e300)),
        ("non-finite", V::Float(f64::NAN)),
        ("non-finite", V::Float(f64::INFINITY)),
        ("non-finite", V::Float(f64::NEG_INFINITY)),
        ("zero", V::Float(0.0)),
        ("type", V::String(String::new())),
        ("type", V::String("garbage".into())),
        ("type", V::Boolean(true)),
        ("type", V::Array(vec![])),
        ("huge", V::Array(vec![V::Integer(1 << 30)])),
        ("type", V::Table(Default::default())),
    ]
}

#[test]
fn mutated_configs_never_crash_hang_or_leave_files() {
    let dir = tmp_dir("fuzz-configs");
    let text = dir.join("text.txt");
    let corpus: String = (0..400)
        .map(|i| format!("line {i}: to be or not to be, that is the question.\n"))
        .collect();
    std::fs::write(&text, corpus).unwrap();
    let bases = shipped(&text);
    let mut rng = StdRng::seed_from_u64(7);
    let vals = values();
    let mut classes: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for i in 0..300 {
        let (base_name, base) = &bases[rng.random_range(0..bases.len())];
        let mut t = base.clone();
        let mut keys = Vec::new();
        leaves(&t, "", &mut keys);
        keys.retain(|k| k != "out_dir");
        let (class, text) = match rng.random_range(0..10) {
            0 => {
                let s = toml::to_string(&t).unwrap();
                let cut = rng.random_range(0..s.len());
                ("truncated", s.as_bytes()[..cut].to_vec())
            }
            1 => {
                let mut s = toml::to_string(&t).unwrap().into_bytes();
                for _ in 0..4 {
                    let at = rng.random_range(0..s.len());
                    s[at] = rng.random();
                }
                ("garbage bytes", s)
            }
            2 => {
                let key = &keys[rng.random_range(0..keys.len())];
                set(&mut t, &format!("{key}_typo"), toml::Value::Integer(1));
                ("unknown key", toml::to_string(&t).unwrap().into_bytes())
            }
            _ => {
                let key = keys[rng.random_range(0..keys.len())].clone();
                let (class, v) = vals[rng.random_range(0..vals.len())].clone();
                set(&mut t, &key, v);
                (class, toml::to_string(&t).unwrap().into_bytes())
            }
        };
        let case_dir = dir.join(format!("case-{i}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let cfg = case_dir.join("c.toml");
        std::fs::write(&cfg, &text).unwrap();
        let case = format!(
            "case {i} ({class}, from {base_name}):\n{}",
            String::from_utf8_lossy(&text)
        );
        let verdict = run_case(
            &case_dir,
            &[
                "train",
                "--config",
                "c.toml",
                "--stop-after",
                "1",
                "--set",
                "out_dir=runs",
            ],
            &case,
        );
        let counts = classes.entry(class).or_default();
        match verdict {
            Verdict::Ran => counts.0 += 1,
            Verdict::Refused(err)
                if case_dir
                    .join("runs")
                    .join(run_name(&t))
                    .join("run.json")
                    .exists() =>
            {
                // Valid, started, then stopped with an error (a diverging learning rate, say).
                counts.2 += 1;
                assert!(
                    err.contains("step "),
                    "{case}: stopped without saying where:\n{err}"
                );
            }
            Verdict::Refused(err) => {
                counts.1 += 1;
                assert!(!err.trim().is_empty(), "{case}: refused without a word");
                assert_eq!(
                    entries(&case_dir),
                    vec!["c.toml".to_string()],
                    "{case}: a refused config left files behind:\n{err}"
                );
            }
        }
        std::fs::remove_dir_all(&case_dir).unwrap();
    }
    for (class, (ran, refused, stopped)) in &classes {
        println!(
            "config fuzz, {class}: {ran} ran, {refused} refused cleanly, {stopped} started and stopped with an error"
        );
    }
}

/// The run folder name a (mutated) config asks for.
fn run_name(t: &toml::Table) -> String {
    t.get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("run")
        .to_string()
}

/// Corruptions that no reader may accept; the others may be (docs/ARCHITECTURE.md, "What is
/// accepted on purpose").
const MUST_REFUSE: [&str; 5] = [
    "truncated",
    "non-finite data",
    "lying header",
    "huge header length",
    "huge embedded config",
];

/// A finished tiny run: its training checkpoint and its exported Hugging Face folder.
fn trained(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = write(dir, "tiny.toml", TINY_MQAR);
    run_ok(
        dir,
        &[
            "train",
            "--config",
            &cfg,
            "--set",
            "train.steps=2",
            "--set",
            "eval.lengths=[32]",
        ],
    );
    let run = dir.join("runs/tiny");
    (
        run.join("checkpoints/latest.safetensors"),
        run.join("checkpoints/final"),
    )
}

/// The length of a safetensors file's JSON header.
fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// The file with its JSON header replaced (the length prefix follows).
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + header_len(bytes)..]);
    out
}

/// Mutations of a safetensors file, by class.
fn corrupt_tensors(bytes: &[u8], rng: &mut StdRng) -> Vec<(&'static str, Vec<u8>)> {
    let h = header_len(bytes);
    let header = std::str::from_utf8(&bytes[8..8 + h]).unwrap().to_string();
    let mut out = Vec::new();
    for _ in 0..6 {
        let cut = rng.random_range(0..bytes.len());
        out.push(("truncated", bytes[..cut].to_vec()));
    }
    for _ in 0..6 {
        let mut b = bytes.to_vec();
        let at = rng.random_range(0..8 + h);
        b[at] ^= 1 << rng.random_range(0..8);
        out.push(("flipped header byte", b));
    }
    for _ in 0..6 {
        let mut b = bytes.to_vec();
        let at = rng.random_range(8 + h..b.len());
        b[at] ^= 1 << rng.random_range(0..8);
        out.push(("flipped data byte", b));
    }
    let mut b = bytes.to_vec();
    for x in b[8 + h..].chunks_exact_mut(4).step_by(7) {
        x.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    out.push(("non-finite data", b));
    out.push(("huge header length", {
        let mut b = bytes.to_vec();
        b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        b
    }));
    let lies = [
        header.replacen("\"F32\"", "\"F64\"", 1),
        header.replacen("\"F32\"", "\"I64\"", 1),
        header.replacen("\"shape\":[", "\"shape\":[4294967296,", 1),
        header.replacen("\"shape\":[", "\"shape\":[0,", 1),
        header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[3,", 1),
        header.replacen("\"data_offsets\":[", "\"data_offsets\":[99999999999,", 1),
    ];
    for lie in lies {
        out.push(("lying header", with_header(bytes, &lie)));
    }
    // The config a training checkpoint embeds (TOML inside its JSON metadata).
    for (from, to) in [
        ("d_model = 32", "d_model = 1000000000000"),
        ("d_model = 32", "d_model = 8192"),
        ("n_layer = 2", "n_layer = 1000000"),
        ("vocab_size = 64", "vocab_size = 4611686018427387904"),
    ] {
        if header.contains(from) {
            out.push((
                "huge embedded config",
                with_header(bytes, &header.replacen(from, to, 1)),
            ));
        }
    }
    out
}

/// Mutations of a Hugging Face config.json, by class.
fn corrupt_config(json: &str) -> Vec<(&'static str, String)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut out = vec![
        ("truncated", json[..json.len() / 2].to_string()),
        ("garbage", "\u{1}\u{2}not json".to_string()),
    ];
    let fields = [
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "state_size",
        "expand",
        "conv_kernel",
        "time_step_rank",
        "layer_norm_epsilon",
    ];
    let sizes = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1_000_000_000_000u64),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e300),
        serde_json::json!("big"),
        serde_json::json!(null),
    ];
    for f in fields {
        for s in &sizes {
            let mut m = v.clone();
            m[f] = s.clone();
            out.push(("huge or wrong size", m.to_string()));
        }
    }
    out
}

#[test]
fn corrupted_checkpoints_are_clean_errors() {
    let dir = tmp_dir("fuzz-checkpoints");
    let (latest, folder) = trained(&dir);
    let mut rng = StdRng::seed_from_u64(11);
    let mut classes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut record = |class, v: Verdict| {
        let c: &mut (usize, usize) = classes.entry(class).or_default();
        match v {
            Verdict::Ran => c.0 += 1,
            Verdict::Refused(_) => c.1 += 1,
        }
    };
    let inference = |path: &str| -> Vec<Vec<String>> {
        vec![
            [
                "logits",
                "--checkpoint",
                path,
                "--tokens",
                "1,2,3",
                "--out",
                "o.safetensors",
            ]
            .map(String::from)
            .to_vec(),
            [
                "generate",
                "--checkpoint",
                path,
                "--tokens",
                "1,2",
                "--max-new",
                "2",
            ]
            .map(String::from)
            .to_vec(),
        ]
    };
    // The training checkpoint: inference, evaluation and resume.
    let original = std::fs::read(&latest).unwrap();
    for (i, (class, bytes)) in corrupt_tensors(&original, &mut rng).into_iter().enumerate() {
        std::fs::write(&latest, &bytes).unwrap();
        let path = latest.display().to_string();
        let mut commands = inference(&path);
        commands.push(["eval", "--checkpoint", &path].map(String::from).to_vec());
        commands.push(
            ["train", "--resume", "runs/tiny"]
                .map(String::from)
                .to_vec(),
        );
        for args in commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let case = format!("training checkpoint, case {i} ({class}): {args:?}");
            let v = run_case(&dir, &args, &case);
            if MUST_REFUSE.contains(&class) {
                assert!(matches!(v, Verdict::Refused(_)), "{case}: accepted");
            }
            record(class, v);
        }
    }
    std::fs::write(&latest, &original).unwrap();
    // The exported folder: its weights and its config.json.
    let weights = folder.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let path = folder.display().to_string();
    for (i, (class, bytes)) in corrupt_tensors(&original, &mut rng).into_iter().enumerate() {
        std::fs::write(&weights, &bytes).unwrap();
        for args in inference(&path) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let case = format!("exported weights, case {i} ({class}): {args:?}");
            let v = run_case(&dir, &args, &case);
            if MUST_REFUSE.contains(&class) {
                assert!(matches!(v, Verdict::Refused(_)), "{case}: accepted");
            }
            record(class, v);
        }
    }
    std::fs::write(&weights, &original).unwrap();
    let config = folder.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    for (i, (class, text)) in corrupt_config(&original).into_iter().enumerate() {
        std::fs::write(&config, &text).unwrap();
        let args = inference(&path).remove(0);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let case = format!("config.json, case {i} ({class}): {text}");
        record(class, run_case(&dir, &args, &case));
    }
    // The ssm config.json of an exported Transformer: every size wrong or huge.
    run_ok(
        &dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "name=tf",
            "--set",
            "model.arch=transformer",
            "--set",
            "model.transformer.d_model=16",
            "--set",
            "model.transformer.n_layer=1",
            "--set",
            "train.steps=2",
            "--set",
            "eval.lengths=[32]",
        ],
    );
    let tf = dir.join("runs/tf/checkpoints/final");
    let path = tf.display().to_string();
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tf.join("config.json")).unwrap()).unwrap();
    for field in [
        "d_model",
        "n_layer",
        "n_heads",
        "mlp_multiple_of",
        "max_seq_len",
        "vocab_size",
    ] {
        for value in [
            serde_json::json!(1_000_000_000_000u64),
            serde_json::json!(u64::MAX),
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!("x"),
        ] {
            let mut v = original.clone();
            v[field] = value.clone();
            std::fs::write(tf.join("config.json"), v.to_string()).unwrap();
            let args = inference(&path).remove(0);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let case = format!("transformer config.json, {field} = {value}");
            let verdict = run_case(&dir, &args, &case);
            assert!(matches!(verdict, Verdict::Refused(_)), "{case}: accepted");
            record("huge or wrong size (ssm config.json)", verdict);
        }
    }
    for (class, (ran, refused)) in &classes {
        println!("checkpoint fuzz, {class}: {ran} accepted, {refused} refused cleanly");
    }
}
