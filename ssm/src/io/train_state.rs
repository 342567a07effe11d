//! Training checkpoints: everything a run needs to continue bit-identically, in one safetensors
//! file written atomically (a crash leaves the previous checkpoint whole). Parameters are stored
//! under `param.<name>` and the AdamW moments under `adamw.m.<name>` / `adamw.v.<name>`, with the
//! names of `Module::visit_params`, so any model that implements `Module` can be saved. The
//! optimizer step and a caller-defined JSON value (data position, counters, the run config) live in
//! the header metadata; loading never executes anything.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::tensors::{TensorFile, write_tensors};
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::optim::AdamW;
use crate::tensor::{Device, Tensor};

/// Value of the `format` metadata key; a file without it is not a training checkpoint.
pub const FORMAT: &str = "ssm-train-state-v1";

const PARAM: &str = "param.";
const M: &str = "adamw.m.";
const V: &str = "adamw.v.";

/// Host copies of the parameters, whatever their device.
fn params(model: &mut dyn Module<f32>) -> Result<Vec<(String, Tensor<f32>)>> {
    let mut out = Vec::new();
    model.try_visit_params(&mut |name, p| {
        out.push((name.to_string(), p.value.to_device(Device::Cpu)?));
        Ok(())
    })?;
    Ok(out)
}

/// Writes the parameters of `model`, the moments and step of `opt` (which has either never
/// stepped or holds one moment per parameter) and `state` to `path`, atomically.
pub fn save_train_state(
    path: &Path,
    model: &mut dyn Module<f32>,
    opt: &AdamW<f32>,
    state: &Value,
) -> Result<()> {
    let named = params(model)?;
    if !opt.m.is_empty() && (opt.m.len() != named.len() || opt.v.len() != named.len()) {
        return Err(Error::checkpoint(
            path,
            format!(
                "optimizer holds {} moments for {} parameters",
                opt.m.len(),
                named.len()
            ),
        ));
    }
    let mut tensors = Vec::with_capacity(3 * named.len());
    for (i, (name, value)) in named.into_iter().enumerate() {
        if !opt.m.is_empty() {
            tensors.push((format!("{M}{name}"), opt.m[i].to_device(Device::Cpu)?));
            tensors.push((format!("{V}{name}"), opt.v[i].to_device(Device::Cpu)?));
        }
        tensors.push((format!("{PARAM}{name}"), value));
    }
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("adamw_step".to_string(), opt.step.to_string()),
        ("state".to_string(), state.to_string()),
    ]);
    write_tensors(path, &tensors, Some(metadata))
}

/// The caller's JSON value of a training checkpoint, without loading any tensor.
pub fn read_state(path: &Path) -> Result<Value> {
    read_state_of(&TensorFile::open(path)?)
}

fn read_state_of(file: &TensorFile) -> Result<Value> {
    let meta = file.metadata();
    let path = file.path();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::checkpoint(
            path,
            format!("not a training checkpoint (metadata `format` is not `{FORMAT}`)"),
        ));
    }
    let text = meta
        .get("state")
        .ok_or_else(|| Error::checkpoint(path, "metadata `state` is missing"))?;
    serde_json::from_str(text)
        .map_err(|e| Error::checkpoint(path, format!("metadata `state` is not valid JSON: {e}")))
}

/// Copies every tensor `{prefix}{name}` of `file` into the matching parameter of `model`; every
/// parameter must be present with its exact shape.
fn load_into(
    file: &TensorFile,
    model: &mut dyn Module<f32>,
    prefix: &str,
    mut put: impl FnMut(Tensor<f32>),
) -> Result<()> {
    let mut err = None;
    model.visit_params(&mut |name, p| {
        if err.is_some() {
            return;
        }
        let key = format!("{prefix}{name}");
        match file.f32(&key) {
            Ok(t) if t.dims() == p.value.dims() => put(t),
            Ok(t) => {
                err = Some(Error::checkpoint(
                    file.path(),
                    format!(
                        "tensor `{key}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        p.value.dims()
                    ),
                ))
            }
            Err(e) => err = Some(e),
        }
    });
    err.map_or(Ok(()), Err)
}

/// Restores the parameters of `model` and the state of `opt` from `path`, and returns the
/// caller's JSON value. Tensors that belong to no parameter are an error, so a checkpoint of
/// another model never loads silently.
pub fn load_train_state(
    path: &Path,
    model: &mut dyn Module<f32>,
    opt: &mut AdamW<f32>,
) -> Result<Value> {
    let file = TensorFile::open(path)?;
    let state = read_state_of(&file)?;
    let step_text = file
        .metadata()
        .get("adamw_step")
        .cloned()
        .unwrap_or_default();
    let step: u64 = step_text.parse().map_err(|_| {
        Error::checkpoint(
            path,
            format!("metadata `adamw_step` is not an integer: {step_text:?}"),
        )
    })?;
    let named = params(model)?;
    for name in file.names() {
        let param = [PARAM, M, V].iter().find_map(|p| name.strip_prefix(p));
        if !param.is_some_and(|p| named.iter().any(|(n, _)| n == p)) {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}` belongs to no parameter of this model"),
            ));
        }
    }
    let mut values = Vec::with_capacity(named.len());
    load_into(&file, model, PARAM, |t| values.push(t))?;
    let (mut m, mut v) = (Vec::new(), Vec::new());
    if step > 0 {
        load_into(&file, model, M, |t| m.push(t))?;
        load_into(&file, model, V, |t| v.push(t))?;
    }
    let mut values = values.into_iter();
    model.visit_params(&mut |_, p| p.value = values.next().expect("one value per parameter"));
    opt.step = step;
    opt.m = m;
    opt.v = v;
    Ok(state)
}

/// Restores only the parameters of `model` (inference) and returns the caller's JSON value.
pub fn load_params(path: &Path, model: &mut dyn Module<f32>) -> Result<Value> {
    let file = TensorFile::open(path)?;
    let state = read_state_of(&file)?;
    let mut values = Vec::new();
    load_into(&file, model, PARAM, |t| values.push(t))?;
    let mut values = values.into_iter();
    model.visit_params(&mut |_, p| p.value = values.next().expect("one value per parameter"));
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{LanguageModel, MambaConfig, MambaMixerConfig};
    use crate::optim::AdamWConfig;

    fn tiny(d_model: usize, seed: u64) -> LanguageModel<f32> {
        LanguageModel::new(
            MambaConfig {
                d_model,
                n_layer: 1,
                vocab_size: 16,
                mixer: MambaMixerConfig {
                    d_state: 4,
                    ..MambaMixerConfig::default()
                },
                ..MambaConfig::default()
            },
            seed,
        )
        .unwrap()
    }

    fn values(model: &mut LanguageModel<f32>) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        model.visit_params(&mut |_, p| {
            out.push(p.value.to_vec().iter().map(|x| x.to_bits()).collect())
        });
        out
    }

    #[test]
    fn round_trip_is_exact_and_other_models_are_rejected() {
        let dir = std::env::temp_dir().join(format!("ssm-train-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.safetensors");
        let mut model = tiny(8, 1);
        let mut opt = AdamW::new(AdamWConfig::default());
        model.visit_params(&mut |_, p| p.grad.host_mut().unwrap().fill(0.5));
        opt.update(&mut model, 1e-2).unwrap();
        let state = serde_json::json!({"step": 7});
        save_train_state(&path, &mut model, &opt, &state).unwrap();

        let mut again = tiny(8, 2);
        let mut opt2 = AdamW::new(AdamWConfig::default());
        assert_eq!(
            load_train_state(&path, &mut again, &mut opt2).unwrap(),
            state
        );
        assert_eq!(values(&mut again), values(&mut model));
        assert_eq!(opt2.step, 1);
        let bits = |ts: &[Tensor<f32>]| {
            ts.iter()
                .map(|t| t.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&opt2.m), bits(&opt.m));
        assert_eq!(bits(&opt2.v), bits(&opt.v));
        assert_eq!(read_state(&path).unwrap(), state);

        let err = load_train_state(
            &path,
            &mut tiny(16, 1),
            &mut AdamW::new(AdamWConfig::default()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shape"), "{err}");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        assert!(load_params(&path, &mut tiny(8, 1)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
