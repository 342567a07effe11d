//! PyTorch fixtures of Mamba-2 (scripts/make_mamba2_fixtures.py): a tiny random
//! `transformers.Mamba2ForCausalLM` (2 groups, biases, 13 positions in chunks of 8) saved with
//! `save_pretrained`, its logits and the gradient of the mean next-token cross-entropy for every
//! parameter. Our loader reads the folder and our model must reproduce both; also the round trip,
//! the config forms transformers writes, and the refusals.

use std::path::{Path, PathBuf};

use ssm::io::hf::Part;
use ssm::io::hf::load_mamba;
use ssm::io::hf_mamba2::{load_mamba2, named_tensors, save_mamba2};
use ssm::io::tensors::TensorFile;
use ssm::models::ModelConfig;
use ssm::nn::Module;

use crate::common::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny_mamba2")
}

fn reference() -> TensorFile {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    TensorFile::open(&dir.join("hf_tiny_mamba2_ref.safetensors")).unwrap()
}

#[test]
fn logits_and_gradients_match_transformers() {
    let mut model = load_mamba2(&fixture()).unwrap();
    let ModelConfig::Mamba2(c) = model.config() else {
        panic!("not a Mamba-2 config")
    };
    assert_eq!(
        (c.mixer.ngroups, c.mixer.chunk_size, c.mixer.dt_limit),
        (2, 8, None)
    );
    let reference = reference();
    let (shape, ids) = reference.i64("input_ids").unwrap();
    let (b, l) = (shape[0], shape[1]);
    assert!(
        l % c.mixer.chunk_size != 0,
        "L must not be a multiple of the chunk"
    );
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let logits = model.forward(&ids, b, None, false).unwrap().clone();
    assert_close("logits", &logits, &reference.f32("logits").unwrap(), 1e-4);

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
    assert_eq!(
        grads.len(),
        2 + 2 * 11,
        "every parameter of the fixture model"
    );
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
    let d = std::env::temp_dir().join(format!("ssm-test-{}-m2-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the fixture folder with its config.json text rewritten by `edit`.
fn with_config(name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = tmp_dir(name);
    let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), edit(text)).unwrap();
    std::fs::copy(
        fixture().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    dir
}

#[test]
fn save_load_round_trip_is_exact_and_python_infinity_reads() {
    let model = load_mamba2(&fixture()).unwrap();
    let dir = tmp_dir("roundtrip");
    save_mamba2(&model, &dir).unwrap();
    let again = load_mamba2(&dir).unwrap();
    assert_eq!(again.config(), model.config());
    for ((n1, a), (n2, b)) in named_tensors(&model, Part::Value)
        .unwrap()
        .into_iter()
        .zip(named_tensors(&again, Part::Value).unwrap())
    {
        assert_eq!(n1, n2);
        assert_eq!(a.to_vec(), b.to_vec(), "{n1} changed in the round trip");
    }
    // transformers 4.x wrote the limit with Python's bare Infinity.
    let old = with_config("bare-infinity", |t| {
        t.replace("{\n      \"__float__\": \"Infinity\"\n    }", "Infinity")
    });
    assert!(
        std::fs::read_to_string(old.join("config.json"))
            .unwrap()
            .contains(" Infinity")
    );
    assert_eq!(load_mamba2(&old).unwrap().config(), model.config());
    let limited = with_config("limit", |t| {
        t.replace("{\n      \"__float__\": \"Infinity\"\n    }", "0.5")
    });
    let ModelConfig::Mamba2(c) = load_mamba2(&limited).unwrap().config().clone() else {
        panic!("not Mamba-2")
    };
    assert_eq!(c.mixer.dt_limit, Some([0.0, 0.5]));
}

#[test]
fn loaders_refuse_the_wrong_family_and_bad_configs_by_name() {
    let e = load_mamba(&fixture()).unwrap_err().to_string();
    assert!(
        e.contains("model_type") && e.contains("Mamba-2 checkpoint"),
        "{e}"
    );
    let e =
        load_mamba2(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny_mamba"))
            .unwrap_err()
            .to_string();
    assert!(e.contains("model_type") && e.contains("mamba2"), "{e}");
    let heads = with_config("heads", |t| {
        t.replace("\"num_heads\": 8", "\"num_heads\": 6")
    });
    let e = load_mamba2(&heads).unwrap_err().to_string();
    assert!(e.contains("num_heads"), "{e}");
    let groups = with_config("groups", |t| {
        t.replace("\"n_groups\": 2", "\"n_groups\": 3")
    });
    let e = load_mamba2(&groups).unwrap_err().to_string();
    assert!(e.contains("ngroups") || e.contains("n_groups"), "{e}");
    let state = with_config("state", |t| {
        t.replace("\"state_size\": 8", "\"state_size\": 4")
    });
    let e = load_mamba2(&state).unwrap_err().to_string();
    assert!(e.contains("in_proj.weight") && e.contains("shape"), "{e}");
}
