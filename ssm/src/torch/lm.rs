//! A PyTorch copy of any [`LanguageModel`]: the same layers written in torch ops, the Mamba block
//! as transformers' `MambaMixer.slow_forward` (in_proj, depthwise conv1d, x_proj, dt_proj,
//! softplus, the scan loop of [`super::scan::scan_loop`]), the Mamba-2 block as
//! `Mamba2Mixer.torch_forward` with its SSD as the recurrence, a loop over time (so that the
//! chunked form of ours meets an independent one), the attention block as Llama's
//! (RMSNorm, rotate-half RoPE, `scaled_dot_product_attention`, SwiGLU or GELU), the head tied to
//! the embedding. Its parameters live in a tch `VarStore` under our names, copied from a model of
//! ours, so losses and gradients compare name by name; torch's AdamW trains it.

use std::collections::HashMap;

use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Reduction, Tensor};

use super::attention::sdpa;
use super::scan::{TorchScan, scan_loop};
use super::{causal_conv1d, kind_of, rmsnorm, to_torch};
use crate::error::{Error, Result};
use crate::models::{
    AttentionConfig, LanguageModel, Mamba2MixerConfig, MambaMixerConfig, MixerConfig, ModelSpec,
};
use crate::nn::attention::PosEncoding;
use crate::nn::mlp::MlpKind;
use crate::nn::{Module, Param};
use crate::ops::loss::IGNORE_INDEX;
use crate::optim::AdamWConfig;
use crate::tensor::Float;

/// The torch model: variables named as the parameters of ours, in a `VarStore` whose group 1
/// holds the parameters with weight decay and group 0 the others.
pub struct TorchLm {
    pub vs: nn::VarStore,
    spec: ModelSpec,
    vars: HashMap<String, Tensor>,
    /// Our parameter names in `visit_params` order.
    names: Vec<String>,
}

impl TorchLm {
    /// A copy of `model`'s parameters on `device`, in the dtype of `T`.
    pub fn from_model<T: Float>(model: &mut LanguageModel<T>, device: tch::Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind_of::<T>());
        let (mut vars, mut names) = (HashMap::new(), Vec::new());
        let mut failed = None;
        model.visit_params(&mut |name, p: &mut Param<T>| {
            if failed.is_some() {
                return;
            }
            match to_torch(&p.value, device) {
                Ok(value) => {
                    let mut path = vs.root().set_group(usize::from(p.decay));
                    let mut parts: Vec<&str> = name.split('.').collect();
                    let leaf = parts.pop().expect("a name has one part");
                    for part in parts {
                        path = path.sub(part);
                    }
                    vars.insert(name.to_string(), path.var_copy(leaf, &value));
                    names.push(name.to_string());
                }
                Err(e) => failed = Some(e),
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(TorchLm {
            vs,
            spec: model.spec(),
            vars,
            names,
        })
    }

    /// Parameter names in our `visit_params` order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The variable holding parameter `name`.
    pub fn var(&self, name: &str) -> Result<&Tensor> {
        self.vars.get(name).ok_or_else(|| {
            Error::config(
                "torch model",
                format!(
                    "no parameter named {name} (the model has {})",
                    self.names.len()
                ),
            )
        })
    }

    fn opt_var(&self, name: &str) -> Option<&Tensor> {
        self.vars.get(name)
    }

    /// Token ids (b · l, row-major) as the (b, l) int64 tensor the model takes.
    pub fn ids(&self, ids: &[u32], b: usize) -> Tensor {
        let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        Tensor::from_slice(&v)
            .view([b as i64, -1])
            .to_device(self.vs.device())
    }

    /// Logits (b, l, vocab) of ids (b, l).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let l = ids.size()[1];
        let emb = self.var("embedding.weight")?;
        let mut x = Tensor::embedding(emb, ids, -1, false, false);
        if self.spec.pos_encoding == PosEncoding::Learned {
            x = x + self.var("pos_embedding.weight")?.narrow(0, 0, l);
        }
        for (i, layer) in self.spec.layers.iter().enumerate() {
            let p = format!("layers.{i}.");
            x = match layer {
                MixerConfig::Mamba(m) => self.pre_norm(&x, &p, |q, h| self.mamba(m, q, h))?,
                MixerConfig::Mamba2(m) => self.pre_norm(&x, &p, |q, h| self.mamba2(m, q, h))?,
                MixerConfig::Attention(a) => {
                    let eps = self.spec.norm_eps;
                    let h = rmsnorm(&x, self.var(&format!("{p}attn_norm.weight"))?, eps);
                    let x = &x + self.attention(a, &format!("{p}attn."), &h)?;
                    let h = rmsnorm(&x, self.var(&format!("{p}mlp_norm.weight"))?, eps);
                    &x + self.mlp(a.mlp, &format!("{p}mlp."), &h)?
                }
            };
        }
        let x = rmsnorm(&x, self.var("norm_f.weight")?, self.spec.norm_eps);
        Ok(x.matmul(&emb.tr()))
    }

    /// The mean cross-entropy of the next-token targets (b · l; `IGNORE_INDEX` not scored), as
    /// `LanguageModel::forward_loss`.
    pub fn loss(&self, ids: &Tensor, targets: &[i64]) -> Result<Tensor> {
        let logits = self.logits(ids)?;
        let v = *logits.size().last().expect("rank 3");
        let t = Tensor::from_slice(targets).to_device(self.vs.device());
        Ok(logits.view([-1, v]).cross_entropy_loss::<Tensor>(
            &t,
            None,
            Reduction::Mean,
            IGNORE_INDEX,
            0.0,
        ))
    }

    /// torch's AdamW over every parameter, weight decay only where ours applies it.
    pub fn optimizer(&self, c: AdamWConfig, lr: f64) -> Result<nn::Optimizer> {
        let mut opt = nn::AdamW {
            beta1: c.beta1,
            beta2: c.beta2,
            wd: c.weight_decay,
            eps: c.eps,
            amsgrad: false,
        }
        .build(&self.vs, lr)
        .map_err(|e| Error::config("torch optimizer", e.to_string()))?;
        opt.set_weight_decay_group(0, 0.0);
        opt.set_weight_decay_group(1, c.weight_decay);
        Ok(opt)
    }

    /// `linear_fwd`: x · wᵀ + bias.
    fn linear(&self, x: &Tensor, weight: &str, bias: &str) -> Result<Tensor> {
        Ok(x.linear(self.var(weight)?, self.opt_var(bias)))
    }

    /// One Mamba mixer (parameters under `p`) on h (b, l, d).
    fn mamba(&self, m: &MambaMixerConfig, p: &str, h: &Tensor) -> Result<Tensor> {
        let (b, l) = (h.size()[0], h.size()[1]);
        let n = m.d_state as i64;
        let xi = self.linear(h, &format!("{p}in_proj_x"), &format!("{p}in_bias_x"))?;
        let z = self.linear(h, &format!("{p}in_proj_z"), &format!("{p}in_bias_z"))?;
        let conv_w = self.var(&format!("{p}conv1d.weight"))?;
        let xc = causal_conv1d(&xi, conv_w, self.opt_var(&format!("{p}conv1d.bias"))).silu();
        let (delta, bm, cm) = if m.selective {
            let r = self.var(&format!("{p}dt_proj.weight"))?.size()[1];
            let xdbl = xc.linear::<Tensor>(self.var(&format!("{p}x_proj.weight"))?, None);
            let parts = xdbl.split_with_sizes([r, n, n], -1);
            let delta = parts[0].linear::<Tensor>(self.var(&format!("{p}dt_proj.weight"))?, None);
            let groups = |t: &Tensor| t.view([b, l, 1, n]);
            (delta, groups(&parts[1]), groups(&parts[2]))
        } else {
            let every = |name: &str| -> Result<Tensor> {
                Ok(self
                    .var(&format!("{p}{name}"))?
                    .view([1, 1, 1, n])
                    .expand([b, l, 1, n], false))
            };
            (xc.zeros_like(), every("B")?, every("C")?)
        };
        let a = -self.var(&format!("{p}A_log"))?.exp();
        let (y, _) = scan_loop(&TorchScan {
            u: &xc,
            delta: &delta,
            a: &a,
            b: &bm,
            c: &cm,
            d_skip: Some(self.var(&format!("{p}D"))?),
            z: Some(&z),
            delta_bias: Some(self.var(&format!("{p}dt_proj.bias"))?),
            delta_softplus: true,
            h0: None,
        });
        self.linear(
            &y,
            &format!("{p}out_proj.weight"),
            &format!("{p}out_proj.bias"),
        )
    }

    /// x + mixer(rmsnorm(x)) for the block under `p`; `mixer` takes its parameter prefix.
    fn pre_norm(
        &self,
        x: &Tensor,
        p: &str,
        mixer: impl FnOnce(&str, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let h = rmsnorm(x, self.var(&format!("{p}norm.weight"))?, self.spec.norm_eps);
        Ok(x + mixer(&format!("{p}mixer."), &h)?)
    }

    /// One Mamba-2 mixer (parameters under `p`) on h (b, l, d).
    fn mamba2(&self, m: &Mamba2MixerConfig, p: &str, h: &Tensor) -> Result<Tensor> {
        let (b, l, d) = (h.size()[0], h.size()[1], h.size()[2] as usize);
        let (di, nh) = (m.d_inner(d) as i64, m.n_heads(d) as i64);
        let (hp, g, n) = (m.headdim as i64, m.ngroups as i64, m.d_state as i64);
        let part = |name: &str| -> Result<Tensor> {
            self.linear(
                h,
                &format!("{p}in_proj_{name}"),
                &format!("{p}in_bias_{name}"),
            )
        };
        let (z, xbc, dt) = (part("z")?, part("xbc")?, part("dt")?);
        let conv_w = self.var(&format!("{p}conv1d.weight"))?;
        let xbc = causal_conv1d(&xbc, conv_w, self.opt_var(&format!("{p}conv1d.bias"))).silu();
        let parts = xbc.split_with_sizes([di, g * n, g * n], -1);
        let x = parts[0].view([b, l, nh, hp]);
        // B and C (b, l, g, n) widened to every head: head hh reads group hh / (nh / g).
        let widen = |t: &Tensor| {
            t.view([b, l, g, n])
                .repeat_interleave_self_int(nh / g, 2, None)
        };
        let (bm, cm) = (widen(&parts[1]), widen(&parts[2]));
        let mut delta = (dt + self.var(&format!("{p}dt_bias"))?).softplus();
        if let Some([lo, hi]) = m.dt_limit {
            delta = delta.clamp(lo, hi);
        }
        let a = -self.var(&format!("{p}A_log"))?.exp();
        let decay = (&delta * &a).exp().view([b, l, nh, 1, 1]);
        // Δ_t x_t ⊗ B_t: (b, l, nh, hp, n).
        let input = (delta.unsqueeze(-1) * &x).unsqueeze(-1) * bm.unsqueeze(3);
        let mut state = Tensor::zeros([b, nh, hp, n], (x.kind(), x.device()));
        let mut ys = Vec::with_capacity(l as usize);
        for t in 0..l {
            state = decay.select(1, t) * &state + input.select(1, t);
            ys.push(state.matmul(&cm.select(1, t).unsqueeze(-1)).squeeze_dim(-1));
        }
        let y = Tensor::stack(&ys, 1) + &x * self.var(&format!("{p}D"))?.view([nh, 1]);
        // The gated RMSNorm over g groups of channels.
        let gated = (y.reshape([b, l, di]) * z.silu()).view([b, l, g, di / g]);
        let normed = gated.rms_norm([di / g], None::<&Tensor>, self.spec.norm_eps);
        let normed = normed.view([b, l, di]) * self.var(&format!("{p}norm.weight"))?;
        self.linear(
            &normed,
            &format!("{p}out_proj.weight"),
            &format!("{p}out_proj.bias"),
        )
    }

    /// One attention layer (parameters under `p`) on h (b, l, d).
    fn attention(&self, a: &AttentionConfig, p: &str, h: &Tensor) -> Result<Tensor> {
        let (b, l, d) = (h.size()[0], h.size()[1], h.size()[2]);
        let hd = a.head_dim(d as usize) as i64;
        let heads = |name: &str, n: usize| -> Result<Tensor> {
            let w = format!("{p}{name}.weight");
            Ok(self
                .linear(h, &w, &format!("{p}{name}.bias"))?
                .view([b, l, n as i64, hd]))
        };
        let mut q = heads("q_proj", a.n_heads)?;
        let mut k = heads("k_proj", a.n_kv_heads())?;
        let v = heads("v_proj", a.n_kv_heads())?;
        if self.spec.pos_encoding == PosEncoding::Rope {
            let (cos, sin) = rope_tables(l, hd, a.rope_base, q.kind(), q.device());
            q = rope(&q, &cos, &sin);
            k = rope(&k, &cos, &sin);
        }
        let o = sdpa(&q, &k, &v, None).reshape([b, l, -1]);
        self.linear(&o, &format!("{p}o_proj.weight"), &format!("{p}o_proj.bias"))
    }

    /// The MLP (parameters under `p`) on h (b, l, d).
    fn mlp(&self, kind: MlpKind, p: &str, h: &Tensor) -> Result<Tensor> {
        let proj = |x: &Tensor, name: &str| -> Result<Tensor> {
            Ok(x.linear::<Tensor>(self.var(&format!("{p}{name}.weight"))?, None))
        };
        let act = match kind {
            MlpKind::SwiGlu => proj(h, "gate_proj")?.silu() * proj(h, "up_proj")?,
            MlpKind::Gelu => proj(h, "up_proj")?.gelu("tanh"),
        };
        proj(&act, "down_proj")
    }
}

/// cos and sin (l, hd) of positions 0..l at θ_i = base^(-2i/hd), each half repeated.
fn rope_tables(l: i64, hd: i64, base: f64, kind: Kind, device: tch::Device) -> (Tensor, Tensor) {
    let i = Tensor::arange(hd / 2, (Kind::Double, device));
    let theta = (i * (-2.0 * base.ln() / hd as f64)).exp();
    let angle = Tensor::arange(l, (Kind::Double, device)).unsqueeze(1) * theta.unsqueeze(0);
    let full = Tensor::cat(&[&angle, &angle], 1);
    (full.cos().to_kind(kind), full.sin().to_kind(kind))
}

/// Llama's rotate-half RoPE of x (b, l, h, hd) with tables (l, hd).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::cat(&[-x2, x1], 3);
    let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
    x * cos + rotated * sin
}
