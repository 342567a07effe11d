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
    assert_eq!(out.trim().split(',').count(), 5, "{out}");
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
        ],
    );
    assert!(eval.contains("40"), "{eval}");
}
