//! AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay, a cosine learning-rate schedule
//! with linear warm-up, and gradient clipping by global norm.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use ssm_kernels::adamw::{AdamWStep, adamw};
use ssm_kernels::reduce::{SUM_SQUARES_PARTS, sum_squares_into};

use crate::backend::cuda::{Gpu, GpuBuffer};
use crate::error::{Error, Result};
use crate::nn::{Module, Param};
use crate::ops::activation::scale_;
use crate::ops::{dptr, gpu_of};
use crate::tensor::{Float, Tensor};

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled decay, applied only to parameters flagged `decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// AdamW state: first and second moments per parameter, in `visit_params` order.
#[derive(Clone, Debug)]
pub struct AdamW<T: Float = f32> {
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    pub m: Vec<Tensor<T>>,
    pub v: Vec<Tensor<T>>,
}

impl<T: Float> AdamW<T> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// One update of every parameter of `model` with learning rate `lr`:
    /// θ ← θ − lr · (m̂ / (√v̂ + eps) + wd · θ).
    pub fn update(&mut self, model: &mut dyn Module<T>, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let (b1, b2) = (T::from_f64(c.beta1), T::from_f64(c.beta2));
        let (step_size, eps) = (T::from_f64(lr / bc1), T::from_f64(c.eps));
        let inv_bc2_sqrt = T::from_f64(1.0 / bc2.sqrt());
        let (m, v, step) = (&mut self.m, &mut self.v, self.step);
        let mut i = 0;
        model.try_visit_params(&mut |name, p: &mut Param<T>| {
            let device = p.value.device();
            if i == m.len() {
                m.push(Tensor::zeros(p.value.shape().clone(), device)?);
                v.push(Tensor::zeros(p.value.shape().clone(), device)?);
            }
            if m[i].dims() != p.value.dims() {
                return Err(Error::shape(
                    "AdamW::update",
                    name.to_string(),
                    format!("{:?}", m[i].dims()),
                    p.value.dims(),
                ));
            }
            // Moments restored from a checkpoint follow the model to its device.
            if m[i].device() != device {
                m[i] = m[i].to_device(device)?;
                v[i] = v[i].to_device(device)?;
            }
            let (mi, vi) = (&mut m[i], &mut v[i]);
            i += 1;
            if let Some(gpu) = gpu_of("AdamW::update", &p.value, &[&p.grad])? {
                let h = AdamWStep {
                    lr,
                    beta1: c.beta1,
                    beta2: c.beta2,
                    eps: c.eps,
                    weight_decay: c.weight_decay,
                    step,
                    decay: p.decay,
                };
                let (w, g) = (dptr(&p.value)?, dptr(&p.grad)?);
                return gpu.launch(&adamw(w, g, dptr(mi)?, dptr(vi)?, p.value.numel(), &h)?);
            }
            let decay = T::from_f64(if p.decay { lr * c.weight_decay } else { 0.0 });
            let (w, g, mi, vi) = (
                p.value.host_mut()?,
                p.grad.host()?,
                mi.host_mut()?,
                vi.host_mut()?,
            );
            for j in 0..w.len() {
                mi[j] = b1 * mi[j] + (T::one() - b1) * g[j];
                vi[j] = b2 * vi[j] + (T::one() - b2) * g[j] * g[j];
                w[j] -= step_size * mi[j] / (vi[j].sqrt() * inv_bc2_sqrt + eps) + decay * w[j];
            }
            Ok(())
        })
    }
}

/// A running sum of squares over tensors on one device: on a GPU the squares are summed there
/// (in f32, in a fixed order) and only the total comes back; on the CPU in f64.
#[derive(Default)]
struct SquareSum {
    host: f64,
    gpu: Option<(Arc<Gpu>, GpuBuffer, GpuBuffer)>,
}

impl SquareSum {
    fn add<T: Float>(&mut self, t: &Tensor<T>) -> Result<()> {
        let Some(gpu) = gpu_of("sum_squares", t, &[])? else {
            self.host += t
                .host()?
                .iter()
                .map(|g| g.to_f64() * g.to_f64())
                .sum::<f64>();
            return Ok(());
        };
        let (first, parts, total) = match &self.gpu {
            Some(state) => state,
            None => self
                .gpu
                .insert((gpu.clone(), gpu.alloc(SUM_SQUARES_PARTS)?, gpu.zeros(1)?)),
        };
        if first.device() != gpu.device() {
            return Err(Error::DeviceMismatch {
                op: "sum_squares",
                a: first.device().to_string(),
                b: gpu.device().to_string(),
            });
        }
        gpu.launch_all(&sum_squares_into(
            dptr(t)?,
            t.numel(),
            parts.ptr(),
            total.ptr(),
        )?)
    }

    fn total(self) -> Result<f64> {
        Ok(match &self.gpu {
            Some((_, _, total)) => self.host + total.to_host()?[0] as f64,
            None => self.host,
        })
    }
}

/// The sum of squares over every parameter's value and both AdamW moments, in one pass (one
/// device read-back): non-finite when any of them is, or when a GPU's f32 sum overflows. A
/// training loop checks it after every update; only a non-finite sum needs locating.
pub fn state_sum_squares<T: Float>(model: &mut dyn Module<T>, opt: &AdamW<T>) -> Result<f64> {
    let mut sum = SquareSum::default();
    model.try_visit_params(&mut |_, p| sum.add(&p.value))?;
    for t in opt.m.iter().chain(&opt.v) {
        sum.add(t)?;
    }
    sum.total()
}

/// Whether every AdamW moment is finite, element by element. A finite gradient beyond ~1.8e19
/// overflows the second moment in f32 while the update stays finite (and zero from then on): a
/// run that silently stopped learning.
pub fn moments_finite<T: Float>(opt: &AdamW<T>) -> Result<bool> {
    for t in opt.m.iter().chain(&opt.v) {
        if t.to_host_vec()?.iter().any(|x| !x.to_f64().is_finite()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. A non-finite norm is returned as is, with gradients left untouched.
pub fn clip_grad_norm<T: Float>(model: &mut dyn Module<T>, max_norm: f64) -> Result<f64> {
    let mut sum = SquareSum::default();
    model.try_visit_params(&mut |_, p| sum.add(&p.grad))?;
    let norm = sum.total()?.sqrt();
    if norm.is_finite() && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        model.try_visit_params(&mut |_, p| scale_(&mut p.grad, s))?;
    }
    Ok(norm)
}

/// Learning rate at `step` (0-based): linear warm-up from 0 to `max_lr` over `warmup` steps, then a
/// cosine decay to `min_lr` at `total` steps, constant after.
pub fn cosine_lr(step: u64, warmup: u64, total: u64, max_lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return max_lr * (step + 1) as f64 / warmup as f64;
    }
    if step >= total || total <= warmup {
        return min_lr;
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    min_lr + 0.5 * (max_lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowed_second_moment_is_found() {
        let tensor = |v: Vec<f32>| Tensor::from_vec([v.len()], v).unwrap();
        let mut opt = AdamW::<f32>::new(AdamWConfig::default());
        opt.m = vec![tensor(vec![1.0, -2.0]), tensor(vec![3.0])];
        opt.v = vec![tensor(vec![1e30, 4.0]), tensor(vec![9.0])];
        assert!(
            moments_finite(&opt).unwrap(),
            "large but finite moments pass"
        );
        let mut model = crate::nn::norm::RmsNorm::<f32>::new(2, 1e-5);
        assert!(state_sum_squares(&mut model, &opt).unwrap().is_finite());
        opt.v[1] = tensor(vec![f32::INFINITY]);
        assert!(!moments_finite(&opt).unwrap());
        assert!(!state_sum_squares(&mut model, &opt).unwrap().is_finite());
        opt.v[1] = tensor(vec![9.0]);
        opt.m[0] = tensor(vec![f32::NAN, 0.0]);
        assert!(!moments_finite(&opt).unwrap());
    }
}
