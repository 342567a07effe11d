//! Hugging Face layout for Mamba: a folder with `config.json` (field names of transformers'
//! `MambaConfig`) and `model.safetensors` (tensor names of `MambaForCausalLM`). Folders written by
//! state-spaces/mamba (`backbone.embedding.weight`, `d_model`/`n_layer`/`ssm_cfg` config keys)
//! load too.

use std::path::Path;

use serde_json::{Value, json};

use super::atomic_write;
use super::tensors::{TensorFile, write_tensors};
use crate::error::{Error, Result};
use crate::models::mamba::{MambaConfig, MambaMixerConfig};
use crate::models::{LanguageModel, ModelConfig};
use crate::nn::Param;
use crate::nn::mamba::{MambaBlock, Selection};
use crate::tensor::{Device, Float, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

pub(super) const EMBEDDING: &str = "backbone.embeddings.weight";
const EMBEDDING_STATE_SPACES: &str = "backbone.embedding.weight";
const LM_HEAD: &str = "lm_head.weight";

/// Which half of a parameter to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Value,
    Grad,
}

/// A host copy of the value or gradient of `p`, whatever its device.
pub(super) fn part<T: Float>(p: &Param<T>, which: Part) -> Result<Tensor<T>> {
    match which {
        Part::Value => p.value.to_device(Device::Cpu),
        Part::Grad => p.grad.to_device(Device::Cpu),
    }
}

/// a and b (host tensors of equal row width) stacked along their first dimension.
pub(super) fn concat_rows<T: Float>(a: Tensor<T>, b: Tensor<T>) -> Result<Tensor<T>> {
    let mut dims = a.dims().to_vec();
    dims[0] += b.dims()[0];
    let mut v = a.host()?.to_vec();
    v.extend_from_slice(b.host()?);
    Tensor::from_vec(dims, v)
}

/// The config of a Mamba model; other architectures have no Hugging Face Mamba layout.
fn mamba_config<T: Float>(model: &LanguageModel<T>) -> Result<&MambaConfig> {
    match model.config() {
        ModelConfig::Mamba(c) => Ok(c),
        other => Err(Error::config(
            "arch",
            format!(
                "{} has no Hugging Face Mamba layout (only arch = \"mamba\" has)",
                other.arch()
            ),
        )),
    }
}

/// The Mamba blocks of a Mamba model, bottom to top.
fn mamba_blocks<T: Float>(model: &LanguageModel<T>) -> impl Iterator<Item = &MambaBlock<T>> {
    model.layers.iter().filter_map(|l| l.as_mamba())
}

/// Every parameter (or gradient) of `model` under its transformers name, in transformers' shapes:
/// in_proj halves concatenated, conv1d weight as (di, 1, k). Models other than Mamba, and the
/// non-selective ablation, have no such layout and are refused.
pub fn named_tensors<T: Float>(
    model: &LanguageModel<T>,
    which: Part,
) -> Result<Vec<(String, Tensor<T>)>> {
    if !mamba_config(model)?.mixer.selective {
        return Err(Error::config(
            "selective",
            "false has no Hugging Face layout: transformers' Mamba is always selective",
        ));
    }
    let mut out = vec![(EMBEDDING.to_string(), part(&model.embedding, which)?)];
    for (i, layer) in mamba_blocks(model).enumerate() {
        let m = &layer.mixer;
        let p = |s: &str| format!("backbone.layers.{i}.{s}");
        out.push((p("norm.weight"), part(&layer.norm.weight, which)?));
        out.push((
            p("mixer.in_proj.weight"),
            concat_rows(part(&m.in_proj_x, which)?, part(&m.in_proj_z, which)?)?,
        ));
        if let (Some(bx), Some(bz)) = (&m.in_bias_x, &m.in_bias_z) {
            out.push((
                p("mixer.in_proj.bias"),
                concat_rows(part(bx, which)?, part(bz, which)?)?,
            ));
        }
        let conv = part(&m.conv_w, which)?;
        let (di, k) = (conv.dims()[0], conv.dims()[1]);
        out.push((p("mixer.conv1d.weight"), conv.reshape([di, 1, k])?));
        if let Some(cb) = &m.conv_b {
            out.push((p("mixer.conv1d.bias"), part(cb, which)?));
        }
        if let Selection::Selective { x_proj, dt_proj_w } = &m.selection {
            out.push((p("mixer.x_proj.weight"), part(x_proj, which)?));
            out.push((p("mixer.dt_proj.weight"), part(dt_proj_w, which)?));
        }
        out.push((p("mixer.dt_proj.bias"), part(&m.dt_proj_b, which)?));
        out.push((p("mixer.A_log"), part(&m.a_log, which)?));
        out.push((p("mixer.D"), part(&m.d_skip, which)?));
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

/// The transformers `config.json` of a model.
pub fn config_json(c: &MambaConfig) -> Value {
    json!({
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "vocab_size": c.padded_vocab(),
        "state_size": c.mixer.d_state,
        "expand": c.mixer.expand,
        "intermediate_size": c.d_inner(),
        "conv_kernel": c.mixer.d_conv,
        "time_step_rank": c.dt_rank(),
        "use_bias": c.mixer.bias,
        "use_conv_bias": c.mixer.conv_bias,
        "layer_norm_epsilon": c.norm_eps,
        "time_step_min": c.mixer.dt_min,
        "time_step_max": c.mixer.dt_max,
        "time_step_floor": c.mixer.dt_init_floor,
        "hidden_act": "silu",
        "residual_in_fp32": true,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    })
}

/// Typed reads of a `config.json`'s fields, each error naming the file and the field; integers
/// are also read from under state-spaces' `ssm_cfg`.
pub(super) struct Fields<'a> {
    pub v: &'a Value,
    pub path: &'a Path,
}

impl Fields<'_> {
    pub fn err(&self, field: &str, why: String) -> Error {
        Error::checkpoint(self.path, format!("field `{field}`: {why}"))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.v
            .get(name)
            .or_else(|| self.v.get("ssm_cfg").and_then(|s| s.get(name)))
    }

    /// The first of `names` present, as a non-negative integer; `default` when none is.
    pub fn uint(&self, names: &[&str], default: Option<usize>) -> Result<usize> {
        match names.iter().find_map(|n| self.get(n).map(|x| (*n, x))) {
            Some((n, x)) => x
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| self.err(n, format!("expected a non-negative integer, got {x}"))),
            None => default.ok_or_else(|| self.err(names[0], "is missing".into())),
        }
    }

    pub fn boolean(&self, name: &str, default: bool) -> Result<bool> {
        match self.v.get(name) {
            Some(x) => x
                .as_bool()
                .ok_or_else(|| self.err(name, format!("expected true or false, got {x}"))),
            None => Ok(default),
        }
    }

    pub fn float(&self, name: &str, default: f64) -> Result<f64> {
        match self.v.get(name) {
            Some(x) => x
                .as_f64()
                .ok_or_else(|| self.err(name, format!("expected a number, got {x}"))),
            None => Ok(default),
        }
    }
}

/// Reads a model config from transformers' or state-spaces' `config.json` fields. Missing optional
/// fields take transformers' defaults; every present field must have the right type. A Mamba-2
/// folder is refused by name: its tensors are not Mamba's.
pub fn parse_config(v: &Value, path: &Path) -> Result<MambaConfig> {
    let f = Fields { v, path };
    let ssm_cfg = v.get("ssm_cfg");
    if v.get("model_type").and_then(Value::as_str) == Some(super::hf_mamba2::MODEL_TYPE) {
        return Err(f.err(
            "model_type",
            "\"mamba2\": a Mamba-2 checkpoint, not a Mamba one; it loads as arch = \"mamba2\" (ssm::io::hf_mamba2)".into(),
        ));
    }
    if let Some(layer) = ssm_cfg
        .and_then(|c| c.get("layer"))
        .filter(|l| l.as_str() != Some("Mamba1"))
    {
        return Err(f.err(
            "ssm_cfg.layer",
            format!("{layer}: a state-spaces checkpoint of another layer than Mamba-1; only transformers' Mamba2ForCausalLM folders load as Mamba-2"),
        ));
    }
    let d_model = f.uint(&["hidden_size", "d_model"], None)?;
    let expand = match (v.get("intermediate_size"), v.get("expand")) {
        (Some(i), _) => {
            let i = i.as_u64().ok_or_else(|| {
                f.err("intermediate_size", format!("expected an integer, got {i}"))
            })? as usize;
            if d_model == 0 || !i.is_multiple_of(d_model) {
                return Err(f.err(
                    "intermediate_size",
                    format!("{i} is not a multiple of hidden_size {d_model}"),
                ));
            }
            i / d_model
        }
        _ => f.uint(&["expand"], Some(2))?,
    };
    let dt_rank = match v
        .get("time_step_rank")
        .or_else(|| ssm_cfg.and_then(|s| s.get("dt_rank")))
    {
        None => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(x) => Some(x.as_u64().ok_or_else(|| {
            f.err(
                "time_step_rank",
                format!("expected an integer or \"auto\", got {x}"),
            )
        })? as usize),
    };
    if !f.boolean("tie_word_embeddings", true)? || !f.boolean("tie_embeddings", true)? {
        return Err(f.err(
            "tie_word_embeddings",
            "is false, but this engine ties lm_head to the embedding".into(),
        ));
    }
    let defaults = MambaMixerConfig::default();
    let config = MambaConfig {
        d_model,
        n_layer: f.uint(&["num_hidden_layers", "n_layer"], None)?,
        vocab_size: f.uint(&["vocab_size"], None)?,
        norm_eps: f.float("layer_norm_epsilon", 1e-5)?,
        pad_vocab_size_multiple: f.uint(&["pad_vocab_size_multiple"], Some(1))?,
        mixer: MambaMixerConfig {
            d_state: f.uint(&["state_size", "d_state"], Some(16))?,
            d_conv: f.uint(&["conv_kernel", "d_conv"], Some(4))?,
            expand,
            dt_rank,
            conv_bias: f.boolean("use_conv_bias", true)?,
            bias: f.boolean("use_bias", false)?,
            dt_min: f.float("time_step_min", defaults.dt_min)?,
            dt_max: f.float("time_step_max", defaults.dt_max)?,
            dt_init_floor: f.float("time_step_floor", defaults.dt_init_floor)?,
            selective: true,
        },
    };
    config
        .validate()
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(config)
}

pub(super) fn assign<T: Float>(
    dst: &mut Tensor<T>,
    src: Tensor<f32>,
    name: &str,
    path: &Path,
) -> Result<()> {
    if src.dims() != dst.dims() {
        return Err(Error::checkpoint(
            path,
            format!(
                "tensor `{name}` has shape {:?}, the config needs {:?}",
                src.dims(),
                dst.dims()
            ),
        ));
    }
    *dst = src.cast::<T>();
    Ok(())
}

/// Loads a Mamba checkpoint folder (ours, transformers' or state-spaces').
pub fn load_mamba(dir: &Path) -> Result<LanguageModel<f32>> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&cfg_path, format!("invalid JSON: {e}")))?;
    let config = parse_config(&v, &cfg_path)?;
    config
        .validate()
        .map_err(|e| Error::checkpoint(&cfg_path, e.to_string()))?;
    let weights = dir.join(WEIGHTS_FILE);
    super::check_weights_fit(&config.clone().into(), &weights, 2)?;
    let file = TensorFile::open(&weights)?;
    let mut model = LanguageModel::<f32>::new(config, 0)?;
    let emb_name = if file.contains(EMBEDDING) || !file.contains(EMBEDDING_STATE_SPACES) {
        EMBEDDING
    } else {
        EMBEDDING_STATE_SPACES
    };
    let wanted = named_tensors(&model, Part::Value)?;
    let loaded = read_named(&file, &wanted, |name| match name {
        EMBEDDING => emb_name,
        other => other,
    })?;
    let mut it = loaded.into_iter();
    let mut next = || it.next().expect("one tensor per name");
    model.embedding.value = next();
    for layer in model.layers.iter_mut().filter_map(|l| l.as_mamba_mut()) {
        let m = &mut layer.mixer;
        let di = m.dims.d_inner;
        layer.norm.weight.value = next();
        [m.in_proj_x.value, m.in_proj_z.value] = split_rows(&next(), [di, di])?;
        if let (Some(bx), Some(bz)) = (&mut m.in_bias_x, &mut m.in_bias_z) {
            [bx.value, bz.value] = split_rows(&next(), [di, di])?;
        }
        m.conv_w.value = next().reshape([di, m.dims.d_conv])?;
        if let Some(cb) = &mut m.conv_b {
            cb.value = next();
        }
        if let Selection::Selective { x_proj, dt_proj_w } = &mut m.selection {
            x_proj.value = next();
            dt_proj_w.value = next();
        }
        m.dt_proj_b.value = next();
        m.a_log.value = next();
        m.d_skip.value = next();
        m.out_proj.value = next();
        if let Some(ob) = &mut m.out_bias {
            ob.value = next();
        }
    }
    model.norm_f.weight.value = next();
    Ok(model)
}

/// The tensors of `wanted` (transformers names, the embedding first, with the shapes the config
/// gives) read from `file` under `source(name)`; an `lm_head.weight` there must equal the
/// embedding, as this engine ties them.
pub(super) fn read_named<'a>(
    file: &TensorFile,
    wanted: &'a [(String, Tensor<f32>)],
    source: impl Fn(&'a str) -> &'a str,
) -> Result<Vec<Tensor<f32>>> {
    let path = file.path().to_path_buf();
    let mut loaded = Vec::with_capacity(wanted.len());
    for (name, like) in wanted {
        let src = source(name.as_str());
        let mut dst = like.clone();
        assign(&mut dst, file.f32(src)?, src, &path)?;
        loaded.push(dst);
    }
    if file.contains(LM_HEAD) && file.f32(LM_HEAD)?.to_vec() != loaded[0].to_vec() {
        return Err(Error::checkpoint(
            &path,
            format!("tensor `{LM_HEAD}` differs from the embedding; this engine ties them"),
        ));
    }
    Ok(loaded)
}

/// `t` cut along its first dimension into blocks of `rows[0]`, `rows[1]`, ... rows.
pub(super) fn split_rows<T: Float, const K: usize>(
    t: &Tensor<T>,
    rows: [usize; K],
) -> Result<[Tensor<T>; K]> {
    let width: usize = t.dims()[1..].iter().product();
    let v = t.to_vec();
    let mut start = 0;
    let blocks = rows.map(|r| {
        let mut dims = t.dims().to_vec();
        dims[0] = r;
        let block = Tensor::from_vec(dims, v[start * width..(start + r) * width].to_vec());
        start += r;
        block
    });
    let mut out = Vec::with_capacity(K);
    for b in blocks {
        out.push(b?);
    }
    Ok(out.try_into().unwrap_or_else(|_| unreachable!("K blocks")))
}

/// Saves `model` as a transformers-compatible folder; each file is written atomically.
pub fn save_mamba(model: &LanguageModel<f32>, dir: &Path) -> Result<()> {
    let config = mamba_config(model)?;
    super::create_dir_all(dir)?;
    write_tensors(
        &dir.join(WEIGHTS_FILE),
        &named_tensors(model, Part::Value)?,
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    let text = serde_json::to_string_pretty(&config_json(config)).expect("JSON values serialize");
    atomic_write(&dir.join(CONFIG_FILE), text.as_bytes())
}
