//! Launches of cu/adamw.cu: one AdamW update of a parameter tensor with its gradient and moments,
//! the formula of `ssm::optim::AdamW::update`.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, grid_1d, to_i32};

/// Hyper-parameters of one update; `step` counts from 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    /// Whether this parameter takes weight decay.
    pub decay: bool,
}

/// p, m, v (n) updated in place from g (n).
pub fn adamw(
    p: DevicePtr,
    g: DevicePtr,
    m: DevicePtr,
    v: DevicePtr,
    n: usize,
    h: &AdamWStep,
) -> Result<Launch> {
    const K: &str = "adamw_f32";
    let step = i32::try_from(h.step).unwrap_or(i32::MAX);
    let bc1 = 1.0 - h.beta1.powi(step);
    let bc2 = 1.0 - h.beta2.powi(step);
    let decay = if h.decay { h.lr * h.weight_decay } else { 0.0 };
    let args = KernelArgs::new()
        .ptr(p)
        .ptr(g)
        .ptr(m)
        .ptr(v)
        .i32(to_i32(K, "n", n)?)
        .f32(h.beta1 as f32)
        .f32(h.beta2 as f32)
        .f32(h.eps as f32)
        .f32((h.lr / bc1) as f32)
        .f32((1.0 / bc2.sqrt()) as f32)
        .f32(decay as f32);
    Ok(Launch {
        kernel: K,
        config: grid_1d(n, 256, 132 * 16),
        args,
    })
}
