//! The model a run trains: ssm's `LanguageModel` (Mamba, Transformer or hybrid, chosen by
//! `model.arch`), plus the runner's file formats for it, so that the training loop, evaluation and
//! the commands never name an architecture.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ssm::Device;
use ssm::io::hf;
use ssm::io::hf_mamba2::{self, MODEL_TYPE as MAMBA2, quote_python_floats};
use ssm::io::tensors::{TensorFile, write_tensors};
use ssm::models::generate::Sampling;
use ssm::models::{Decoder, LanguageModel, ModelConfig};
use ssm::nn::Module;

use crate::config::{RunConfig, TaskKind};

/// The key of an exported config.json that says what the token ids stand for; ours, so
/// transformers ignores it. Absent means task symbols.
pub const TOKENIZER_KEY: &str = "ssm_tokenizer";

/// What a model's token ids stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vocabulary {
    /// Symbols of a synthetic task, given and shown as ids.
    Ids,
    /// The bytes of a text (task.kind = "bytes"): `TOKENIZER_KEY` = "bytes" in exports.
    Bytes,
}

pub struct Model(LanguageModel<f32>, Vocabulary);

impl Model {
    /// A freshly initialised model of the run's architecture.
    pub fn new(c: &RunConfig) -> Result<Model> {
        let key = format!("config key `model.{}`", c.model.arch.name());
        let vocabulary = match c.task.kind {
            TaskKind::Bytes => Vocabulary::Bytes,
            _ => Vocabulary::Ids,
        };
        Ok(Model(
            LanguageModel::new(c.model_config(), c.seed).context(key)?,
            vocabulary,
        ))
    }

    /// Loads an exported folder: a Hugging Face Mamba or Mamba-2 folder (config.json with
    /// transformers' fields + model.safetensors), or one that `export` wrote for another
    /// architecture (its
    /// config.json holds ssm's `ModelConfig`, tagged by `arch`). `TOKENIZER_KEY` tells a
    /// byte-level model.
    pub fn load_folder(dir: &Path) -> Result<Model> {
        let cfg_path = dir.join(hf::CONFIG_FILE);
        let origin = cfg_path.display().to_string();
        let text =
            std::fs::read_to_string(&cfg_path).with_context(|| format!("{origin}: cannot read"))?;
        // transformers 4.x writes Mamba-2's unbounded time_step_limit as a bare `Infinity`.
        let mut value: serde_json::Value = serde_json::from_str(&quote_python_floats(&text))
            .with_context(|| format!("{origin}: invalid JSON"))?;
        let vocabulary = match value.as_object_mut().and_then(|o| o.remove(TOKENIZER_KEY)) {
            None => Vocabulary::Ids,
            Some(v) if v == "bytes" => Vocabulary::Bytes,
            Some(v) => {
                bail!("{origin}: field `{TOKENIZER_KEY}`: expected \"bytes\" or no field, got {v}")
            }
        };
        let is_mamba2 = value.get("model_type").and_then(|t| t.as_str()) == Some(MAMBA2);
        let config: ModelConfig = if is_mamba2 {
            hf_mamba2::read_config(dir)?.1.into()
        } else if value.get("arch").is_none() {
            hf::parse_config(&value, &cfg_path)?.into()
        } else {
            serde_json::from_value(value)
                .with_context(|| format!("{origin}: not an ssm model config"))?
        };
        config.validate().with_context(|| origin.clone())?;
        crate::limits::check_inference(&config, &origin)?;
        let mut model = match config {
            ModelConfig::Mamba(_) => Model(hf::load_mamba(dir)?, vocabulary),
            ModelConfig::Mamba2(_) if is_mamba2 => Model(hf_mamba2::load_mamba2(dir)?, vocabulary),
            other => Model(
                Model::load_ssm_folder(other, &dir.join(hf::WEIGHTS_FILE))?,
                vocabulary,
            ),
        };
        model.check_finite(&dir.display().to_string())?;
        Ok(model)
    }

    /// Every parameter value of `source` into this model, matched by name and shape (a
    /// fine-tuning start); an error names the first tensor that differs.
    pub fn copy_weights_from(&mut self, source: &mut Model) -> Result<()> {
        let mut theirs = std::collections::HashMap::new();
        source.0.try_visit_params(&mut |name, p| {
            theirs.insert(name.to_string(), p.value.to_device(Device::Cpu)?);
            Ok(())
        })?;
        let mut mine = 0;
        let mut err = None;
        self.0.visit_params(&mut |name, p| {
            mine += 1;
            match theirs.get(name) {
                _ if err.is_some() => {}
                Some(t) if t.dims() == p.value.dims() => p.value = t.clone(),
                Some(t) => {
                    err = Some(anyhow::anyhow!(
                        "tensor `{name}` has shape {:?} there, {:?} here",
                        t.dims(),
                        p.value.dims()
                    ))
                }
                None => err = Some(anyhow::anyhow!("it has no tensor `{name}`")),
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if mine != theirs.len() {
            bail!("it has {} tensors, this model {mine}", theirs.len());
        }
        Ok(())
    }

    /// The parameters of an `export` of a non-Mamba architecture, under their ssm names.
    fn load_ssm_folder(config: ModelConfig, weights: &Path) -> Result<LanguageModel<f32>> {
        ssm::io::check_weights_fit(&config, weights, 4)?;
        let mut model = LanguageModel::new(config, 0)?;
        let file = TensorFile::open(weights)?;
        let mut err = None;
        model.visit_params(&mut |name, p| {
            if err.is_some() {
                return;
            }
            match file.f32(name) {
                Ok(t) if t.dims() == p.value.dims() => p.value = t,
                Ok(t) => {
                    err = Some(anyhow::anyhow!(
                        "{}: tensor `{name}` has shape {:?}, the config needs {:?}",
                        file.path().display(),
                        t.dims(),
                        p.value.dims()
                    ))
                }
                Err(e) => err = Some(e.into()),
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// The first parameter (or gradient, with `grads`) holding a NaN or an infinity.
    pub fn first_non_finite(&mut self, grads: bool) -> Result<Option<String>> {
        let mut found = None;
        self.0.try_visit_params(&mut |name, p| {
            let t = if grads { &p.grad } else { &p.value };
            if found.is_none() && t.to_host_vec()?.iter().any(|x| !x.is_finite()) {
                found = Some(name.to_string());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Refuses weights with a NaN or an infinity for inference, naming the tensor.
    pub fn check_finite(&mut self, origin: &str) -> Result<()> {
        match self.first_non_finite(false)? {
            Some(name) => bail!(
                "{origin}: parameter `{name}` holds NaN or infinite values; these weights cannot be used"
            ),
            None => Ok(()),
        }
    }

    /// Moves the parameters to `device` (activations follow on the next forward).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        Ok(self.0.to_device(device)?)
    }

    pub fn arch(&self) -> &'static str {
        self.0.arch()
    }

    pub fn vocabulary(&self) -> Vocabulary {
        self.1
    }

    pub fn module(&mut self) -> &mut dyn Module<f32> {
        &mut self.0
    }

    /// The longest sequence the model reads: its learned position table, else none.
    pub fn max_positions(&self) -> Option<usize> {
        self.0.config().max_positions()
    }

    /// Columns of the logits (the padded vocabulary).
    pub fn vocab(&self) -> usize {
        self.0.vocab()
    }

    /// Mean cross-entropy over the scored targets of `b` sequences, keeping what `backward` needs.
    pub fn forward_loss(&mut self, ids: &[u32], targets: &[i64], b: usize) -> Result<f64> {
        Ok(self.0.forward_loss(ids, targets, b)?)
    }

    /// Adds the gradient of the last `forward_loss` into every parameter.
    pub fn backward(&mut self) -> Result<()> {
        Ok(self.0.backward()?)
    }

    /// Logits (b, l, v), row-major, of an inference forward.
    pub fn logits(&mut self, ids: &[u32], b: usize) -> Result<Vec<f32>> {
        Ok(self.0.forward(ids, b, None, false)?.to_host_vec()?)
    }

    /// Continues `prompt` by `n_new` tokens.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        n_new: usize,
        sampling: Sampling,
    ) -> Result<Vec<u32>> {
        Ok(self.0.generate(prompt, n_new, sampling)?)
    }

    pub fn num_params(&mut self) -> usize {
        self.0.num_params()
    }

    pub fn non_embedding_params(&self) -> usize {
        self.0.non_embedding_params()
    }

    /// Training FLOPs per token at context length `seq_len`, with the convention of
    /// `flops_convention`.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        self.0.flops_per_token(seq_len)
    }

    pub fn flops_convention(&self) -> String {
        self.0.flops_convention()
    }

    /// Saves the weights alone where other tools read them: a Hugging Face folder for Mamba and
    /// Mamba-2; for
    /// the others (and the non-selective ablation, which transformers has no layout for) ssm's
    /// config (config.json) and the parameters under their ssm names. A
    /// byte-level model's config.json also gets `TOKENIZER_KEY`.
    pub fn export(&mut self, dir: &Path) -> Result<()> {
        self.export_weights(dir)?;
        if self.1 == Vocabulary::Bytes {
            let path = dir.join(hf::CONFIG_FILE);
            let mut config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read", path.display()))?,
            )?;
            config
                .as_object_mut()
                .with_context(|| format!("{}: not a JSON object", path.display()))?
                .insert(TOKENIZER_KEY.into(), "bytes".into());
            ssm::io::atomic_write(&path, serde_json::to_string_pretty(&config)?.as_bytes())?;
        }
        Ok(())
    }

    fn export_weights(&mut self, dir: &Path) -> Result<()> {
        if let ModelConfig::Mamba(c) = self.0.config()
            && c.mixer.selective
        {
            return Ok(hf::save_mamba(&self.0, dir)?);
        }
        if let ModelConfig::Mamba2(_) = self.0.config() {
            return Ok(hf_mamba2::save_mamba2(&self.0, dir)?);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors = Vec::new();
        self.0.try_visit_params(&mut |name, p| {
            tensors.push((name.to_string(), p.value.to_device(Device::Cpu)?));
            Ok(())
        })?;
        if tensors.is_empty() {
            bail!("model has no parameters to export");
        }
        write_tensors(&dir.join(hf::WEIGHTS_FILE), &tensors, None)?;
        let config = serde_json::to_string_pretty(&self.0.config())?;
        ssm::io::atomic_write(&dir.join(hf::CONFIG_FILE), config.as_bytes())?;
        Ok(())
    }
}
