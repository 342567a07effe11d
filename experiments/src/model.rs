//! The models the runner trains, behind one enum so that the training loop, evaluation and the
//! commands never name an architecture. Adding one (a Transformer, a hybrid) means a variant here,
//! an `Arch` value and its `[model.<arch>]` section in config.rs; nothing else changes.

use std::path::Path;

use anyhow::{Context, Result};
use ssm::io::hf;
use ssm::models::MambaLM;
use ssm::models::generate::Sampling;
use ssm::nn::Module;

use crate::config::{Arch, RunConfig};

pub enum Model {
    Mamba(MambaLM<f32>),
}

impl Model {
    /// A freshly initialised model of the run's architecture.
    pub fn new(c: &RunConfig) -> Result<Model> {
        Ok(match c.model.arch {
            Arch::Mamba => Model::Mamba(MambaLM::new(c.mamba(), c.seed).context("config key `model.mamba`")?),
        })
    }

    /// Loads a Hugging Face folder (config.json + model.safetensors of MambaForCausalLM).
    pub fn load_hf(dir: &Path) -> Result<Model> {
        Ok(Model::Mamba(hf::load_mamba(dir)?))
    }

    pub fn arch(&self) -> &'static str {
        match self {
            Model::Mamba(_) => "mamba",
        }
    }

    pub fn module(&mut self) -> &mut dyn Module<f32> {
        match self {
            Model::Mamba(m) => m,
        }
    }

    /// Columns of the logits (the padded vocabulary).
    pub fn vocab(&self) -> usize {
        match self {
            Model::Mamba(m) => m.vocab(),
        }
    }

    /// Mean cross-entropy over the scored targets of `b` sequences, keeping what `backward` needs.
    pub fn forward_loss(&mut self, ids: &[u32], targets: &[i64], b: usize) -> Result<f64> {
        Ok(match self {
            Model::Mamba(m) => m.forward_loss(ids, targets, b)?,
        })
    }

    /// Adds the gradient of the last `forward_loss` into every parameter.
    pub fn backward(&mut self) -> Result<()> {
        match self {
            Model::Mamba(m) => m.backward()?,
        }
        Ok(())
    }

    /// Logits (b, l, v), row-major, of an inference forward.
    pub fn logits(&mut self, ids: &[u32], b: usize) -> Result<Vec<f32>> {
        Ok(match self {
            Model::Mamba(m) => m.forward(ids, b, None, false)?.to_vec(),
        })
    }

    /// Continues `prompt` by `n_new` tokens.
    pub fn generate(&mut self, prompt: &[u32], n_new: usize, sampling: Sampling) -> Result<Vec<u32>> {
        Ok(match self {
            Model::Mamba(m) => m.generate(prompt, n_new, sampling)?,
        })
    }

    pub fn num_params(&mut self) -> usize {
        self.module().num_params()
    }

    /// Training FLOPs per token, with the convention of `FLOPS_CONVENTION`. (Attention's count,
    /// 6N + 6·n_layer·L·d, will need the context length L from the caller.)
    pub fn flops_per_token(&mut self) -> f64 {
        let n = self.num_params() as f64;
        match self {
            Model::Mamba(m) => {
                let c = &m.config;
                6.0 * n + 27.0 * (c.n_layer * c.d_inner() * c.d_state) as f64
            }
        }
    }

    /// Saves the weights alone where other tools read them: a Hugging Face folder for Mamba.
    pub fn export(&self, dir: &Path) -> Result<()> {
        match self {
            Model::Mamba(m) => hf::save_mamba(m, dir)?,
        }
        Ok(())
    }
}

/// How `flops_per_token` counts, printed on the plots (DESIGN.md section 8).
pub const FLOPS_CONVENTION: &str = "training FLOPs/token: Mamba 6N + 27·n_layer·d_inner·d_state (N = all parameters, tied embedding once)";
