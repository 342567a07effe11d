//! PyTorch fixtures (llm.c style): a tiny random `transformers.MambaForCausalLM` saved with
//! `save_pretrained`, its logits for a token batch and the gradient of the mean next-token
//! cross-entropy with respect to every parameter (scripts/make_fixtures.py). Our loader reads the
//! folder and our model must reproduce both. Also the loader's handling of bad files.

use std::path::{Path, PathBuf};

use ssm::Tensor;
use ssm::io::hf::{Part, load_mamba, named_tensors, save_mamba};
use ssm::io::tensors::{TensorFile, write_tensors};
use ssm::nn::Module;

use crate::common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn logits_and_gradients_match_transformers() {
    let mut model = load_mamba(&fixtures().join("hf_tiny_mamba")).unwrap();
    let reference = TensorFile::open(&fixtures().join("hf_tiny_mamba_ref.safetensors")).unwrap();
    let (shape, ids) = reference.i64("input_ids").unwrap();
    let (b, l) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();

    let logits = model.forward(&ids, b, None, false).unwrap().clone();
    let want = reference.f32("logits").unwrap();
    assert_close("logits", &logits, &want, 1e-4);

    // Next-token targets; the last position of each row predicts nothing.
    let targets: Vec<i64> = (0..b * l)
        .map(|i| {
            if i % l == l - 1 {
                -100
            } else {
                ids[i + 1] as i64
            }
        })
        .collect();
    model.zero_grad().unwrap();
    let loss = model.forward_loss(&ids, &targets, b).unwrap();
    let want_loss = reference.f32("loss").unwrap().to_vec()[0] as f64;
    println!("loss {loss:.7} vs transformers {want_loss:.7}");
    assert!((loss - want_loss).abs() < 1e-5);
    model.backward().unwrap();
    let grads = named_tensors(&model, Part::Grad).unwrap();
    assert_eq!(grads.len(), 22, "every parameter of the fixture model");
    for (name, g) in grads {
        let w = reference.f32(&format!("grad.{name}")).unwrap();
        let w = w.reshape(g.shape().clone()).unwrap();
        let e = rel_err(&g.cast::<f64>().to_vec(), &w.cast::<f64>().to_vec());
        println!(
            "{name:<44} rel err = {e:.2e}  maxdiff = {:.2e}",
            max_abs_diff(&g, &w)
        );
        assert!(e < 1e-3, "{name}: relative error {e:e}");
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ssm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies the fixture folder with its weights rewritten by `edit`.
fn edited_fixture(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor<f32>)>)) -> PathBuf {
    let src = fixtures().join("hf_tiny_mamba");
    let dir = tmp_dir(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let file = TensorFile::open(&src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor<f32>)> = file
        .names()
        .into_iter()
        .map(|n| (n.clone(), file.f32(&n).unwrap()))
        .collect();
    edit(&mut tensors);
    write_tensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    dir
}

#[test]
fn save_load_round_trip_is_exact_and_state_spaces_names_load() {
    let model = load_mamba(&fixtures().join("hf_tiny_mamba")).unwrap();
    let dir = tmp_dir("roundtrip");
    save_mamba(&model, &dir).unwrap();
    let again = load_mamba(&dir).unwrap();
    assert_eq!(again.config(), model.config());
    for ((n1, a), (n2, b)) in named_tensors(&model, Part::Value)
        .unwrap()
        .into_iter()
        .zip(named_tensors(&again, Part::Value).unwrap())
    {
        assert_eq!(n1, n2);
        assert_eq!(a.to_vec(), b.to_vec(), "{n1} changed in the round trip");
    }
    let ss = edited_fixture("state-spaces", |t| {
        for (n, _) in t.iter_mut() {
            if n == "backbone.embeddings.weight" {
                *n = "backbone.embedding.weight".into();
            }
        }
    });
    let renamed = load_mamba(&ss).unwrap();
    assert_eq!(
        renamed.embedding.value.to_vec(),
        model.embedding.value.to_vec()
    );
}

fn load_err(dir: &Path) -> String {
    match load_mamba(dir) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loader_rejects_bad_checkpoints_with_named_errors() {
    let missing = edited_fixture("missing", |t| {
        t.retain(|(n, _)| n != "backbone.layers.1.mixer.A_log")
    });
    let e = load_err(&missing);
    assert!(
        e.contains("backbone.layers.1.mixer.A_log") && e.contains("missing"),
        "{e}"
    );

    let shape = edited_fixture("shape", |t| {
        for (n, v) in t.iter_mut() {
            if n == "backbone.layers.0.mixer.D" {
                *v = Tensor::zeros_cpu([63]);
            }
        }
    });
    let e = load_err(&shape);
    assert!(
        e.contains("backbone.layers.0.mixer.D") && e.contains("[63]"),
        "{e}"
    );

    // An I64 tensor where weights belong: build the file by hand.
    let dtype = tmp_dir("dtype");
    std::fs::copy(
        fixtures().join("hf_tiny_mamba/config.json"),
        dtype.join("config.json"),
    )
    .unwrap();
    let file = TensorFile::open(&fixtures().join("hf_tiny_mamba/model.safetensors")).unwrap();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = file
        .names()
        .into_iter()
        .map(|n| {
            let t = file.f32(&n).unwrap();
            if n == "backbone.norm_f.weight" {
                let raw = t
                    .to_vec()
                    .iter()
                    .flat_map(|v| (*v as i64).to_le_bytes())
                    .collect();
                (n, raw, t.dims().to_vec(), safetensors::Dtype::I64)
            } else {
                (
                    n,
                    t.to_vec().iter().flat_map(|v| v.to_le_bytes()).collect(),
                    t.dims().to_vec(),
                    safetensors::Dtype::F32,
                )
            }
        })
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, b, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dtype.join("model.safetensors")).unwrap();
    let e = load_err(&dtype);
    assert!(
        e.contains("backbone.norm_f.weight") && e.contains("I64"),
        "{e}"
    );

    let truncated = tmp_dir("truncated");
    std::fs::copy(
        fixtures().join("hf_tiny_mamba/config.json"),
        truncated.join("config.json"),
    )
    .unwrap();
    let full = std::fs::read(fixtures().join("hf_tiny_mamba/model.safetensors")).unwrap();
    std::fs::write(
        truncated.join("model.safetensors"),
        &full[..full.len() - 100],
    )
    .unwrap();
    let e = load_err(&truncated);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    let no_config = tmp_dir("noconfig");
    let e = load_err(&no_config);
    assert!(e.contains("config.json"), "{e}");

    let bad_field = tmp_dir("badfield");
    std::fs::write(
        bad_field.join("config.json"),
        r#"{"hidden_size": "wide", "num_hidden_layers": 2, "vocab_size": 64}"#,
    )
    .unwrap();
    let e = load_err(&bad_field);
    assert!(e.contains("hidden_size"), "{e}");
}
