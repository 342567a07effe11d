//! Hugging Face layout for Mamba-2: a folder with `config.json` (field names of transformers'
//! `Mamba2Config`, `model_type: "mamba2"`) and `model.safetensors` (tensor names of
//! `Mamba2ForCausalLM`: `backbone.layers.{i}.mixer.{in_proj, conv1d, dt_bias, A_log, D, norm,
//! out_proj}`). transformers writes the default `time_step_limit = (0, inf)` as
//! `{"__float__": "Infinity"}` (5.x) or as Python's bare `Infinity`, which is not JSON (4.x); the
//! reader takes both.

use std::path::Path;

use serde_json::{Value, json};

use super::atomic_write;
use super::hf::{
    CONFIG_FILE, EMBEDDING, Fields, Part, WEIGHTS_FILE, concat_rows, part, read_named, split_rows,
};
use super::tensors::{TensorFile, write_tensors};
use crate::error::{Error, Result};
use crate::models::{LanguageModel, Mamba2Config, Mamba2MixerConfig, ModelConfig};
use crate::tensor::{Float, Tensor};

/// `model_type` of a Mamba-2 config.json.
pub const MODEL_TYPE: &str = "mamba2";

/// The config of a Mamba-2 model; other architectures have no Hugging Face Mamba-2 layout.
fn mamba2_config<T: Float>(model: &LanguageModel<T>) -> Result<&Mamba2Config> {
    match model.config() {
        ModelConfig::Mamba2(c) => Ok(c),
        other => Err(Error::config(
            "arch",
            format!(
                "{} has no Hugging Face Mamba-2 layout (only arch = \"mamba2\" has)",
                other.arch()
            ),
        )),
    }
}

/// Every parameter (or gradient) of `model` under its transformers name and shape: in_proj's
/// parts concatenated in the order [z, xBC, dt], conv1d weight as (di + 2·g·n, 1, k).
pub fn named_tensors<T: Float>(
    model: &LanguageModel<T>,
    which: Part,
) -> Result<Vec<(String, Tensor<T>)>> {
    mamba2_config(model)?;
    let mut out = vec![(EMBEDDING.to_string(), part(&model.embedding, which)?)];
    for (i, layer) in model
        .layers
        .iter()
        .filter_map(|l| l.as_mamba2())
        .enumerate()
    {
        let m = &layer.mixer;
        let p = |s: &str| format!("backbone.layers.{i}.{s}");
        let cat3 = |a, b, c| concat_rows(concat_rows(a, b)?, c);
        out.push((p("norm.weight"), part(&layer.norm.weight, which)?));
        let in_proj = cat3(
            part(&m.in_proj_z, which)?,
            part(&m.in_proj_xbc, which)?,
            part(&m.in_proj_dt, which)?,
        )?;
        out.push((p("mixer.in_proj.weight"), in_proj));
        if let Some([bz, bxbc, bdt]) = &m.in_bias {
            let bias = cat3(part(bz, which)?, part(bxbc, which)?, part(bdt, which)?)?;
            out.push((p("mixer.in_proj.bias"), bias));
        }
        let conv = part(&m.conv_w, which)?;
        let (cd, k) = (conv.dims()[0], conv.dims()[1]);
        out.push((p("mixer.conv1d.weight"), conv.reshape([cd, 1, k])?));
        if let Some(cb) = &m.conv_b {
            out.push((p("mixer.conv1d.bias"), part(cb, which)?));
        }
        out.push((p("mixer.dt_bias"), part(&m.dt_bias, which)?));
        out.push((p("mixer.A_log"), part(&m.a_log, which)?));
        out.push((p("mixer.D"), part(&m.d_skip, which)?));
        out.push((p("mixer.norm.weight"), part(&m.norm_w, which)?));
        out.push((p("mixer.out_proj.weight"), part(&m.out_proj, which)?));
        if let Some(ob) = &m.out_bias {
            out.push((p("mixer.out_proj.bias"), part(ob, which)?));
        }
    }
    out.push((
        "backbone.norm_f.weight".to_string(),
        part(&model.norm_f.weight, which)?,
    ));
    Ok(out)
}

/// The transformers `config.json` of a model. No limit on Δ is written as transformers'
/// default, `[0.0, Infinity]`.
pub fn config_json(c: &Mamba2Config) -> Value {
    let m = &c.mixer;
    let limit = match m.dt_limit {
        Some([lo, hi]) => json!([lo, hi]),
        None => json!([0.0, {"__float__": "Infinity"}]),
    };
    json!({
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": MODEL_TYPE,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "vocab_size": c.padded_vocab(),
        "state_size": m.d_state,
        "expand": m.expand,
        "head_dim": m.headdim,
        "num_heads": m.n_heads(c.d_model),
        "n_groups": m.ngroups,
        "conv_kernel": m.d_conv,
        "chunk_size": m.chunk_size,
        "use_bias": m.bias,
        "use_conv_bias": m.conv_bias,
        "layer_norm_epsilon": c.norm_eps,
        "time_step_min": m.dt_min,
        "time_step_max": m.dt_max,
        "time_step_floor": m.dt_init_floor,
        "time_step_limit": limit,
        "hidden_act": "silu",
        "rms_norm": true,
        "residual_in_fp32": true,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    })
}

/// The text of a config.json with Python's bare `Infinity`, `-Infinity` and `NaN` (outside
/// strings) quoted, so that it parses as JSON; [`limit_value`] reads them back.
pub fn quote_python_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            in_str = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_str = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push_str(&format!("\"{word}\""));
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// One end of `time_step_limit`: a number, or infinity as transformers writes it.
fn limit_value(f: &Fields, x: &Value) -> Result<f64> {
    let word = x.get("__float__").unwrap_or(x).as_str();
    match (x.as_f64(), word) {
        (Some(v), _) => Ok(v),
        (_, Some("Infinity")) => Ok(f64::INFINITY),
        _ => Err(f.err(
            "time_step_limit",
            format!("expected [lo, hi] numbers, got {x}"),
        )),
    }
}

/// Reads a model config from transformers' `Mamba2Config` fields; missing optional fields take
/// its defaults, every present one must have the right type and the sizes must agree.
pub fn parse_config(v: &Value, path: &Path) -> Result<Mamba2Config> {
    let f = Fields { v, path };
    match v.get("model_type").and_then(Value::as_str) {
        Some(MODEL_TYPE) => {}
        other => {
            return Err(f.err(
                "model_type",
                format!("expected \"{MODEL_TYPE}\", got {other:?}"),
            ));
        }
    }
    let d_model = f.uint(&["hidden_size"], None)?;
    let expand = f.uint(&["expand"], Some(2))?;
    let head_dim = f.uint(&["head_dim"], Some(64))?;
    let heads = f.uint(&["num_heads"], Some(128))?;
    if heads * head_dim != expand * d_model {
        return Err(f.err(
            "num_heads",
            format!(
                "{heads} heads of head_dim {head_dim} do not make expand · hidden_size = {}",
                expand * d_model
            ),
        ));
    }
    for (field, want) in [("rms_norm", true), ("residual_in_fp32", true)] {
        if f.boolean(field, want)? != want {
            return Err(f.err(field, format!("this engine supports only {want}")));
        }
    }
    if let Some(act) = v.get("hidden_act").filter(|a| a.as_str() != Some("silu")) {
        return Err(f.err(
            "hidden_act",
            format!("this engine supports only \"silu\", got {act}"),
        ));
    }
    let dt_limit = match v.get("time_step_limit") {
        None => None,
        Some(Value::Array(a)) if a.len() == 2 => {
            // No upper limit above a lower one becomes the largest finite f64, which JSON and
            // TOML hold.
            let (lo, hi) = (limit_value(&f, &a[0])?, limit_value(&f, &a[1])?);
            (lo != 0.0 || hi.is_finite()).then_some([lo, hi.min(f64::MAX)])
        }
        Some(x) => return Err(f.err("time_step_limit", format!("expected [lo, hi], got {x}"))),
    };
    let defaults = Mamba2MixerConfig::default();
    let config = Mamba2Config {
        d_model,
        n_layer: f.uint(&["num_hidden_layers"], None)?,
        vocab_size: f.uint(&["vocab_size"], None)?,
        norm_eps: f.float("layer_norm_epsilon", 1e-5)?,
        pad_vocab_size_multiple: 1,
        mixer: Mamba2MixerConfig {
            d_state: f.uint(&["state_size"], Some(128))?,
            d_conv: f.uint(&["conv_kernel"], Some(4))?,
            expand,
            headdim: head_dim,
            ngroups: f.uint(&["n_groups"], Some(8))?,
            chunk_size: f.uint(&["chunk_size"], Some(256))?,
            dt_min: f.float("time_step_min", defaults.dt_min)?,
            dt_max: f.float("time_step_max", defaults.dt_max)?,
            dt_init_floor: f.float("time_step_floor", defaults.dt_init_floor)?,
            dt_limit,
            conv_bias: f.boolean("use_conv_bias", true)?,
            bias: f.boolean("use_bias", false)?,
            ..defaults
        },
    };
    // `tie_word_embeddings` is transformers' false by default; the loader accepts an lm_head
    // equal to the embedding and refuses any other.
    config
        .validate()
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(config)
}

/// Reads and parses a folder's config.json.
pub fn read_config(dir: &Path) -> Result<(Value, Mamba2Config)> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&quote_python_floats(&text))
        .map_err(|e| Error::checkpoint(&cfg_path, format!("invalid JSON: {e}")))?;
    let config = parse_config(&v, &cfg_path)?;
    Ok((v, config))
}

/// Loads a transformers Mamba-2 checkpoint folder (or one `save_mamba2` wrote).
pub fn load_mamba2(dir: &Path) -> Result<LanguageModel<f32>> {
    let (_, config) = read_config(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    super::check_weights_fit(&config.clone().into(), &weights, 2)?;
    let file = TensorFile::open(&weights)?;
    let mut model = LanguageModel::<f32>::new(config, 0)?;
    let wanted = named_tensors(&model, Part::Value)?;
    let loaded = read_named(&file, &wanted, |name| name)?;
    let mut it = loaded.into_iter();
    let mut next = || it.next().expect("one tensor per name");
    model.embedding.value = next();
    for layer in model.layers.iter_mut().filter_map(|l| l.as_mamba2_mut()) {
        let m = &mut layer.mixer;
        let dm = m.dims;
        let rows = [dm.d_inner, dm.conv_dim(), dm.n_heads];
        layer.norm.weight.value = next();
        [m.in_proj_z.value, m.in_proj_xbc.value, m.in_proj_dt.value] = split_rows(&next(), rows)?;
        if let Some([bz, bxbc, bdt]) = &mut m.in_bias {
            [bz.value, bxbc.value, bdt.value] = split_rows(&next(), rows)?;
        }
        m.conv_w.value = next().reshape([dm.conv_dim(), dm.d_conv])?;
        if let Some(cb) = &mut m.conv_b {
            cb.value = next();
        }
        m.dt_bias.value = next();
        m.a_log.value = next();
        m.d_skip.value = next();
        m.norm_w.value = next();
        m.out_proj.value = next();
        if let Some(ob) = &mut m.out_bias {
            ob.value = next();
        }
    }
    model.norm_f.weight.value = next();
    Ok(model)
}

/// Saves `model` as a transformers-compatible Mamba-2 folder; each file is written atomically.
pub fn save_mamba2(model: &LanguageModel<f32>, dir: &Path) -> Result<()> {
    let config = mamba2_config(model)?;
    super::create_dir_all(dir)?;
    write_tensors(
        &dir.join(WEIGHTS_FILE),
        &named_tensors(model, Part::Value)?,
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    let text = serde_json::to_string_pretty(&config_json(config)).expect("JSON values serialize");
    atomic_write(&dir.join(CONFIG_FILE), text.as_bytes())
}
