//! Shared helpers: seeded random tensors, central finite differences, tensor comparisons.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ssm::{Float, Tensor};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A tensor of values uniform in [lo, hi).
pub fn uniform<T: Float>(rng: &mut StdRng, dims: &[usize], lo: f64, hi: f64) -> Tensor<T> {
    let n = dims.iter().product();
    let v = (0..n)
        .map(|_| T::from_f64(rng.random_range(lo..hi)))
        .collect();
    Tensor::from_vec(dims, v).unwrap()
}

/// max |a - b| over all elements.
pub fn max_abs_diff<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    a.to_vec()
        .iter()
        .zip(b.to_vec())
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max)
}

/// ‖a - b‖ / max(‖a‖, ‖b‖): a relative error that ignores the scale of the tensor.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na.max(nb) == 0.0 {
        0.0
    } else {
        diff / na.max(nb)
    }
}

/// Asserts that two tensors agree to `tol` in max absolute difference, printing the result.
pub fn assert_close<T: Float>(name: &str, got: &Tensor<T>, want: &Tensor<T>, tol: f64) {
    let d = max_abs_diff(got, want);
    println!("{name:<24} maxdiff = {d:.3e}");
    assert!(d <= tol, "{name}: max abs diff {d:e} > {tol:e}");
}

/// Central finite differences of `f` with respect to every element of `x`: the five-point stencil
/// (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / 12h, whose error is O(h⁴), so that a step large
/// enough to keep round-off small (1e-4 in f64) still resolves small gradients.
pub fn numeric_grad(
    x: &mut Tensor<f64>,
    h: f64,
    mut f: impl FnMut(&Tensor<f64>) -> f64,
) -> Vec<f64> {
    let n = x.numel();
    let mut g = vec![0.0; n];
    for (i, gi) in g.iter_mut().enumerate() {
        let orig = x.host().unwrap()[i];
        let mut at = |dx: f64| {
            x.host_mut().unwrap()[i] = orig + dx;
            f(x)
        };
        let (p1, m1, p2, m2) = (at(h), at(-h), at(2.0 * h), at(-2.0 * h));
        x.host_mut().unwrap()[i] = orig;
        *gi = (m2 - 8.0 * m1 + 8.0 * p1 - p2) / (12.0 * h);
    }
    g
}

/// Asserts that an analytic gradient matches central differences to `tol` (relative, as `rel_err`).
pub fn assert_grad(name: &str, analytic: &Tensor<f64>, numeric: &[f64], tol: f64) {
    let a = analytic.to_vec();
    let e = rel_err(&a, numeric);
    let md = a
        .iter()
        .zip(numeric)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!("{name:<28} rel err = {e:.3e}  maxdiff = {md:.3e}");
    assert!(e < tol, "{name}: relative error {e:e} >= {tol:e}");
    assert!(
        a.iter().any(|v| *v != 0.0),
        "{name}: gradient is identically zero, the check proves nothing"
    );
}

/// Σ x ∘ w: a scalar loss whose gradient with respect to x is w.
pub fn dot(x: &Tensor<f64>, w: &Tensor<f64>) -> f64 {
    x.host()
        .unwrap()
        .iter()
        .zip(w.host().unwrap())
        .map(|(a, b)| a * b)
        .sum()
}
