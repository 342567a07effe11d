//! `logits` on a Hugging Face folder against transformers' logits, and on our own run folder
//! against the same model exported as a Hugging Face folder.

use std::path::{Path, PathBuf};

use ssm::io::tensors::TensorFile;

use crate::common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ssm/tests/fixtures")
}

#[test]
fn hf_folder_logits_match_transformers() {
    let dir = tmp_dir("logits-hf");
    let reference = TensorFile::open(&fixtures().join("hf_tiny_mamba_ref.safetensors")).unwrap();
    let (shape, ids) = reference.i64("input_ids").unwrap();
    let l = shape[1];
    let row0: Vec<String> = ids[..l].iter().map(|i| i.to_string()).collect();
    let out = dir.join("logits.safetensors");
    let model = fixtures().join("hf_tiny_mamba");
    // The CPU, and the CUDA code path through the emulated kernels.
    for device in ["cpu", "cuda-emu"] {
        run_ok(
            &dir,
            &[
                "logits",
                "--checkpoint",
                model.to_str().unwrap(),
                "--tokens",
                &row0.join(","),
                "--out",
                out.to_str().unwrap(),
                "--device",
                device,
            ],
        );
        let got = TensorFile::open(&out).unwrap().f32("logits").unwrap();
        let want = reference.f32("logits").unwrap();
        let v = want.dims()[2];
        assert_eq!(got.dims(), &[l, v]);
        let diff = got
            .to_vec()
            .iter()
            .zip(&want.to_vec()[..l * v])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{device}: logits vs transformers, row 0: maxdiff = {diff:.2e}");
        assert!(diff < 1e-4, "{device}: maxdiff {diff}");
    }
    let err = run_err(
        &dir,
        &[
            "logits",
            "--checkpoint",
            model.to_str().unwrap(),
            "--tokens",
            "1,64",
            "--out",
            "x.safetensors",
        ],
    );
    assert!(err.contains("64") && err.contains("vocabulary"), "{err}");
}

#[test]
fn run_folder_and_exported_folder_give_the_same_logits() {
    let dir = tmp_dir("logits-run");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    run_ok(&dir, &["train", "--config", &cfg, "--set", "train.steps=3"]);
    let tokens = "3,1,4,1,5,9,2,6";
    run_ok(
        &dir,
        &[
            "logits",
            "--checkpoint",
            "runs/tiny",
            "--tokens",
            tokens,
            "--out",
            "a.safetensors",
        ],
    );
    run_ok(
        &dir,
        &[
            "logits",
            "--checkpoint",
            "runs/tiny/checkpoints/final",
            "--tokens",
            tokens,
            "--out",
            "b.safetensors",
        ],
    );
    let a = TensorFile::open(&dir.join("a.safetensors"))
        .unwrap()
        .f32("logits")
        .unwrap();
    let b = TensorFile::open(&dir.join("b.safetensors"))
        .unwrap()
        .f32("logits")
        .unwrap();
    assert_eq!(a.dims(), &[8, 64]);
    assert_eq!(a.to_vec(), b.to_vec());
    let out = run_ok(
        &dir,
        &[
            "generate",
            "--checkpoint",
            "runs/tiny",
            "--tokens",
            "3,1,4",
            "--max-new",
            "5",
        ],
    );
    assert_eq!(out.trim().split(',').count(), 3 + 5, "{out}");
    assert!(out.starts_with("3,1,4,"), "the prompt is echoed: {out}");
    let new = run_ok(
        &dir,
        &[
            "generate",
            "--checkpoint",
            "runs/tiny",
            "--tokens",
            "3,1,4",
            "--max-new",
            "5",
            "--no-echo",
        ],
    );
    assert_eq!(format!("3,1,4,{}", new.trim()), out.trim());
    let sampled = [
        "generate",
        "--checkpoint",
        "runs/tiny",
        "--tokens",
        "3,1,4",
        "--max-new",
        "8",
        "--temperature",
        "1.0",
        "--seed",
        "4",
    ];
    assert_eq!(
        run_ok(&dir, &sampled),
        run_ok(&dir, &sampled),
        "a seed fixes the sample"
    );
    let eval = run_ok(
        &dir,
        &[
            "eval",
            "--checkpoint",
            "runs/tiny",
            "--set",
            "eval.lengths=[32,40]",
            "--out",
            "eval-out.csv",
        ],
    );
    assert!(eval.contains("40"), "{eval}");
    let table = experiments::metrics::Table::read(&dir.join("eval-out.csv")).unwrap();
    assert_eq!(
        table.f64s("step").unwrap(),
        [3.0, 3.0],
        "the checkpoint's step"
    );
}

/// A byte-level model exported to checkpoints/final keeps its tokenizer kind, so `generate
/// --prompt` takes the exported folder (Mamba: a Hugging Face folder; Transformer: ssm's) and
/// prints what the run folder prints; text and id prompts print alike, with the prompt or without.
#[test]
fn byte_level_export_round_trips_through_generate_prompt() {
    let dir = tmp_dir("bytes-export");
    let text = "To be, or not to be, that is the question. ".repeat(40);
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let cfg = write(
        &dir,
        "b.toml",
        r#"
name = "bytes"
threads = 1
[task]
kind = "bytes"
seq_len = 32
[task.bytes]
path = "corpus.txt"
[model.mamba]
d_model = 16
n_layer = 1
d_state = 4
[model.transformer]
d_model = 16
n_layer = 1
n_heads = 2
[train]
steps = 3
batch_size = 2
[eval]
batches = 1
"#,
    );
    for arch in ["mamba", "transformer"] {
        let name = format!("name={arch}");
        let set_arch = format!("model.arch={arch}");
        run_ok(
            &dir,
            &[
                "train", "--config", &cfg, "--set", &name, "--set", &set_arch,
            ],
        );
        let run = format!("runs/{arch}");
        let exported = format!("{run}/checkpoints/final");
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(&exported).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["ssm_tokenizer"], "bytes", "{config}");
        let generate = |checkpoint: &str, extra: &[&str]| {
            let mut args = vec!["generate", "--checkpoint", checkpoint, "--max-new", "6"];
            args.extend(extra);
            run_ok(&dir, &args)
        };
        let from_run = generate(&run, &["--prompt", "To be"]);
        let from_export = generate(&exported, &["--prompt", "To be"]);
        assert_eq!(from_run, from_export, "{arch}");
        assert!(from_export.starts_with("To be"), "{from_export:?}");
        let new = generate(&exported, &["--prompt", "To be", "--no-echo"]);
        assert_eq!(format!("To be{new}"), from_export);
        // The same prompt as byte ids prints the same continuation as ids.
        let ids = generate(&exported, &["--tokens", "84,111,32,98,101"]);
        let bytes: Vec<u8> = ids.trim().split(',').map(|t| t.parse().unwrap()).collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            from_export.trim_end_matches('\n')
        );
    }
    // A model of task symbols still refuses text.
    let tiny = write(&dir, "t.toml", TINY_MQAR);
    run_ok(
        &dir,
        &["train", "--config", &tiny, "--set", "train.steps=1"],
    );
    let err = run_err(
        &dir,
        &[
            "generate",
            "--checkpoint",
            "runs/tiny/checkpoints/final",
            "--prompt",
            "hi",
        ],
    );
    assert!(err.contains("byte-level"), "{err}");
}

/// A transformers Mamba-2 folder through the binary: `logits` equal transformers' (row 0),
/// `generate` continues it, and `train --init-from` starts a run from its weights (a step at lr
/// 1e-30 moves no f32 weight, so the run's export holds them exactly); a config of another model
/// is refused before anything is written.
#[test]
fn mamba2_hf_folder_logits_generate_and_fine_tuning() {
    let dir = tmp_dir("mamba2-hf");
    let reference = TensorFile::open(&fixtures().join("hf_tiny_mamba2_ref.safetensors")).unwrap();
    let (shape, ids) = reference.i64("input_ids").unwrap();
    let l = shape[1];
    let row0: Vec<String> = ids[..l].iter().map(|i| i.to_string()).collect();
    let model = fixtures().join("hf_tiny_mamba2");
    let out = dir.join("logits.safetensors");
    let m = model.to_str().unwrap();
    run_ok(
        &dir,
        &[
            "logits",
            "--checkpoint",
            m,
            "--tokens",
            &row0.join(","),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let got = TensorFile::open(&out).unwrap().f32("logits").unwrap();
    let want = reference.f32("logits").unwrap();
    let v = want.dims()[2];
    let diff = got
        .to_vec()
        .iter()
        .zip(&want.to_vec()[..l * v])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("mamba2 logits vs transformers, row 0: maxdiff = {diff:.2e}");
    assert!(diff < 1e-4, "maxdiff {diff}");
    // transformers 4.x wrote the unbounded limit as a bare `Infinity`, which is not JSON.
    let old = dir.join("old-config");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        old.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let bare = config.replace("{\n      \"__float__\": \"Infinity\"\n    }", "Infinity");
    assert!(bare.contains(" Infinity"));
    std::fs::write(old.join("config.json"), bare).unwrap();
    let old_out = dir.join("old.safetensors");
    let (o, oo) = (old.to_str().unwrap(), old_out.to_str().unwrap());
    let tokens = row0.join(",");
    run_ok(
        &dir,
        &[
            "logits",
            "--checkpoint",
            o,
            "--tokens",
            &tokens,
            "--out",
            oo,
        ],
    );
    let again = TensorFile::open(&old_out).unwrap().f32("logits").unwrap();
    assert_eq!(again.to_vec(), got.to_vec());
    let text = run_ok(
        &dir,
        &[
            "generate",
            "--checkpoint",
            m,
            "--tokens",
            "1,2,3",
            "--max-new",
            "5",
            "--no-echo",
        ],
    );
    assert_eq!(text.trim().split(',').count(), 5, "{text}");

    let config = dir.join("ft.toml");
    std::fs::write(
        &config,
        r#"name = "ft"
[task]
kind = "induction_heads"
seq_len = 16
vocab_size = 64
[model]
arch = "mamba2"
[model.mamba2]
d_model = 32
n_layer = 2
d_state = 8
headdim = 8
ngroups = 2
chunk_size = 8
bias = true
pad_vocab_size_multiple = 1
[train]
steps = 1
batch_size = 2
lr = 1e-30
min_lr = 0.0
warmup_steps = 0
eval_every = 0
checkpoint_every = 0
[eval]
batches = 1
lengths = [16]
"#,
    )
    .unwrap();
    let c = config.to_str().unwrap();
    run_ok(&dir, &["train", "--config", c, "--init-from", m]);
    let exported =
        TensorFile::open(&dir.join("runs/ft/checkpoints/final/model.safetensors")).unwrap();
    let original = TensorFile::open(&model.join("model.safetensors")).unwrap();
    assert_eq!(exported.names().len(), original.names().len());
    for name in original.names() {
        let (a, b) = (exported.f32(&name).unwrap(), original.f32(&name).unwrap());
        assert_eq!(a.to_vec(), b.to_vec(), "{name}");
    }
    let e = run_err(
        &dir,
        &[
            "train",
            "--config",
            c,
            "--init-from",
            m,
            "--set",
            "name=\"bad\"",
            "--set",
            "model.mamba2.d_state=16",
        ],
    );
    assert!(e.contains("model.init_from") && e.contains("shape"), "{e}");
    assert!(
        !dir.join("runs/bad").exists(),
        "a refused config leaves nothing behind"
    );
}
