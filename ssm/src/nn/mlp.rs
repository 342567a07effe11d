//! The position-wise MLP of a Transformer block, without biases (Llama):
//!
//! ```text
//! SwiGLU (Shazeer, 2020):  out = down_proj(silu(gate_proj(x)) ∘ up_proj(x))   three (·, d) matrices
//! GELU (GPT-2):            out = down_proj(gelu(up_proj(x)))                   two matrices
//! ```
//!
//! GELU is the tanh approximation (GPT-2's `gelu_new`, PyTorch's `approximate="tanh"`), see
//! `ops::activation::gelu_fwd`.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::init::normal;
use super::{Module, Param};
use crate::error::Result;
use crate::ops::activation::{gate_bwd, gate_fwd, gelu_bwd, gelu_fwd};
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::tensor::{Float, Tensor};

/// Which MLP a Transformer block uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// silu(gate) ∘ up, then down (Llama): three matrices.
    #[default]
    SwiGlu,
    /// gelu(up), then down (GPT-2, tanh approximation): two matrices.
    Gelu,
}

impl MlpKind {
    /// The hidden width when the config leaves it open: 4·d for GELU (GPT-2); for SwiGLU,
    /// ⌊8·d/3⌋ rounded up to a multiple of `multiple_of`, Llama's rule, which keeps the parameters
    /// of the three matrices near those of a 4·d two-matrix MLP.
    pub fn default_hidden(self, d_model: usize, multiple_of: usize) -> usize {
        match self {
            MlpKind::Gelu => 4 * d_model,
            MlpKind::SwiGlu => (8 * d_model / 3).div_ceil(multiple_of.max(1)) * multiple_of.max(1),
        }
    }

    /// Weight matrices of shape (hidden, d) or (d, hidden).
    pub fn n_matrices(self) -> usize {
        match self {
            MlpKind::SwiGlu => 3,
            MlpKind::Gelu => 2,
        }
    }
}

/// Activations a forward keeps for the backward; reused from step to step.
#[derive(Clone, Debug, Default)]
struct Cache<T: Float> {
    /// gate_proj(x) (SwiGLU only), up_proj(x) and the activation fed to down_proj, (b, l, hidden).
    gate: Tensor<T>,
    up: Tensor<T>,
    act: Tensor<T>,
}

/// Gradient scratch buffers; reused from step to step.
#[derive(Clone, Debug, Default)]
struct Scratch<T: Float> {
    dact: Tensor<T>,
    dgate: Tensor<T>,
    dup: Tensor<T>,
}

#[derive(Clone, Debug)]
pub struct Mlp<T: Float = f32> {
    pub kind: MlpKind,
    /// (hidden, d), SwiGLU only.
    pub gate_proj: Option<Param<T>>,
    /// (hidden, d).
    pub up_proj: Param<T>,
    /// (d, hidden).
    pub down_proj: Param<T>,
    cache: Cache<T>,
    scratch: Scratch<T>,
}

impl<T: Float> Mlp<T> {
    /// Weights from N(0, std²), down_proj from N(0, out_std²) (scaled with depth, as GPT-2).
    pub fn new(
        kind: MlpKind,
        d: usize,
        hidden: usize,
        std: f64,
        out_std: f64,
        rng: &mut StdRng,
    ) -> Self {
        let gate_proj =
            (kind == MlpKind::SwiGlu).then(|| Param::new(normal(rng, &[hidden, d], std), true));
        Mlp {
            kind,
            gate_proj,
            up_proj: Param::new(normal(rng, &[hidden, d], std), true),
            down_proj: Param::new(normal(rng, &[d, hidden], out_std), true),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }

    /// out (b, l, d) = mlp(x (b, l, d)); keeps its hidden activations for the backward.
    pub fn forward(&mut self, x: &Tensor<T>, out: &mut Tensor<T>) -> Result<()> {
        let c = &mut self.cache;
        linear_fwd(x, &self.up_proj.value, None, &mut c.up)?;
        match &self.gate_proj {
            Some(gate) => {
                linear_fwd(x, &gate.value, None, &mut c.gate)?;
                gate_fwd(&c.up, &c.gate, &mut c.act)?;
            }
            None => gelu_fwd(&c.up, &mut c.act)?,
        }
        linear_fwd(&c.act, &self.down_proj.value, None, out)
    }

    /// dx += ∂L/∂x given dout, for the `x` of the last forward.
    pub fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        let (c, s) = (&self.cache, &mut self.scratch);
        s.dact.reset_like(&c.act)?;
        linear_bwd(
            &c.act,
            &self.down_proj.value,
            dout,
            Some(&mut s.dact),
            &mut self.down_proj.grad,
            None,
        )?;
        s.dup.reset_like(&c.up)?;
        match &mut self.gate_proj {
            Some(gate) => {
                s.dgate.reset_like(&c.gate)?;
                gate_bwd(&c.up, &c.gate, &s.dact, &mut s.dup, &mut s.dgate)?;
                linear_bwd(
                    x,
                    &gate.value,
                    &s.dgate,
                    Some(&mut *dx),
                    &mut gate.grad,
                    None,
                )?;
            }
            None => gelu_bwd(&c.up, &s.dact, &mut s.dup)?,
        }
        linear_bwd(
            x,
            &self.up_proj.value,
            &s.dup,
            Some(dx),
            &mut self.up_proj.grad,
            None,
        )
    }

    /// The same layer in another float type, with fresh caches.
    pub fn cast<U: Float>(&self) -> Mlp<U> {
        Mlp {
            kind: self.kind,
            gate_proj: self.gate_proj.as_ref().map(Param::cast),
            up_proj: self.up_proj.cast(),
            down_proj: self.down_proj.cast(),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }
}

impl<T: Float> Module<T> for Mlp<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        if let Some(p) = &mut self.gate_proj {
            f("gate_proj.weight", p);
        }
        f("up_proj.weight", &mut self.up_proj);
        f("down_proj.weight", &mut self.down_proj);
    }
}
