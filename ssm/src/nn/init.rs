//! Parameter initialisation, seeded and deterministic.

use rand::RngExt;
use rand::rngs::StdRng;

use crate::tensor::{Float, Tensor};

/// Values uniform in [-bound, bound).
pub fn uniform<T: Float>(rng: &mut StdRng, dims: &[usize], bound: f64) -> Tensor<T> {
    let n = dims.iter().product();
    let v = (0..n)
        .map(|_| T::from_f64(rng.random_range(-bound..bound)))
        .collect();
    Tensor::from_vec(dims, v).expect("length matches dims")
}

/// Values from N(0, std²) by the Box-Muller transform.
pub fn normal<T: Float>(rng: &mut StdRng, dims: &[usize], std: f64) -> Tensor<T> {
    let n: usize = dims.iter().product();
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = 2.0 * std::f64::consts::PI * u2;
        v.push(T::from_f64(r * th.cos()));
        v.push(T::from_f64(r * th.sin()));
    }
    v.truncate(n);
    Tensor::from_vec(dims, v).expect("length matches dims")
}

/// PyTorch's default for `nn.Linear` and `nn.Conv1d` weights (Kaiming uniform with a = √5):
/// uniform in ±1/√fan_in.
pub fn torch_default<T: Float>(rng: &mut StdRng, dims: &[usize], fan_in: usize) -> Tensor<T> {
    uniform(rng, dims, 1.0 / (fan_in as f64).sqrt())
}

/// A tensor filled with `value`.
pub fn full<T: Float>(dims: &[usize], value: f64) -> Tensor<T> {
    let n = dims.iter().product();
    Tensor::from_vec(dims, vec![T::from_f64(value); n]).expect("length matches dims")
}
