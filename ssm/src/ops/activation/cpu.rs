//! Elementwise activations and their derivatives, shared by the kernels that fuse them.

use rayon::prelude::*;

use crate::float::Float;

const GRAIN: usize = 1 << 14;

#[inline(always)]
pub fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

#[inline(always)]
pub fn silu<T: Float>(x: T) -> T {
    x * sigmoid(x)
}

/// d silu(x) / dx = s (1 + x (1 - s)) with s = sigmoid(x).
#[inline(always)]
pub fn silu_grad<T: Float>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::one() + x * (T::one() - s))
}

/// softplus(x) = ln(1 + eˣ), and x itself above 20 as in the reference implementation
/// (PyTorch's `F.softplus`, which also uses log1p).
#[inline(always)]
pub fn softplus<T: Float>(x: T) -> T {
    if x > T::from_f64(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// d softplus(x) / dx = sigmoid(x), and 1 above the threshold.
#[inline(always)]
pub fn softplus_grad<T: Float>(x: T) -> T {
    if x > T::from_f64(20.0) {
        T::one()
    } else {
        sigmoid(x)
    }
}

/// √(2/π), the constant of the tanh approximation of GELU.
const GELU_C: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation of GELU.
const GELU_A: f64 = 0.044_715;

/// tanh(x) = 1 - 2 / (e^{2x} + 1): saturates to ±1 without overflow to NaN.
#[inline(always)]
fn tanh<T: Float>(x: T) -> T {
    T::one() - T::from_f64(2.0) / ((x + x).exp() + T::one())
}

/// GELU in the tanh approximation of Hendrycks & Gimpel (2016), as GPT-2 and PyTorch's
/// `gelu(x, approximate="tanh")`: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
#[inline(always)]
pub fn gelu<T: Float>(x: T) -> T {
    let u = T::from_f64(GELU_C) * (x + T::from_f64(GELU_A) * x * x * x);
    T::from_f64(0.5) * x * (T::one() + tanh(u))
}

/// d gelu(x) / dx = 0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3 · 0.044715 x²), t = tanh(u).
#[inline(always)]
pub fn gelu_grad<T: Float>(x: T) -> T {
    let c = T::from_f64(GELU_C);
    let a = T::from_f64(GELU_A);
    let half = T::from_f64(0.5);
    let t = tanh(c * (x + a * x * x * x));
    half * (T::one() + t)
        + half * x * (T::one() - t * t) * c * (T::one() + T::from_f64(3.0) * a * x * x)
}

/// y = silu(x).
pub fn silu_fwd<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = silu(v)));
}

/// dx += dy * silu'(x).
pub fn silu_bwd<T: Float>(x: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(dy.par_chunks(GRAIN)))
        .for_each(|(dc, (xc, gc))| {
            for ((d, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                *d += g * silu_grad(v);
            }
        });
}

/// y = softplus(x).
pub fn softplus_fwd<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = softplus(v)));
}

/// dx += dy * softplus'(x).
pub fn softplus_bwd<T: Float>(x: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(dy.par_chunks(GRAIN)))
        .for_each(|(dc, (xc, gc))| {
            for ((d, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                *d += g * softplus_grad(v);
            }
        });
}

/// The gating product `y = x * silu(z)`.
pub fn gate_fwd<T: Float>(x: &[T], z: &[T], y: &mut [T]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(z.par_chunks(GRAIN)))
        .for_each(|(yc, (xc, zc))| {
            for ((o, &a), &b) in yc.iter_mut().zip(xc).zip(zc) {
                *o = a * silu(b);
            }
        });
}

/// dx += dy * silu(z), dz += dy * x * silu'(z).
pub fn gate_bwd<T: Float>(x: &[T], z: &[T], dy: &[T], dx: &mut [T], dz: &mut [T]) {
    dx.par_chunks_mut(GRAIN)
        .zip(dz.par_chunks_mut(GRAIN))
        .zip(
            x.par_chunks(GRAIN)
                .zip(z.par_chunks(GRAIN))
                .zip(dy.par_chunks(GRAIN)),
        )
        .for_each(|((dxc, dzc), ((xc, zc), gc))| {
            for i in 0..dxc.len() {
                dxc[i] += gc[i] * silu(zc[i]);
                dzc[i] += gc[i] * xc[i] * silu_grad(zc[i]);
            }
        });
}

/// y = gelu(x) (tanh approximation).
pub fn gelu_fwd<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = gelu(v)));
}

/// dx += dy * gelu'(x).
pub fn gelu_bwd<T: Float>(x: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(dy.par_chunks(GRAIN)))
        .for_each(|(dc, (xc, gc))| {
            for ((d, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                *d += g * gelu_grad(v);
            }
        });
}

/// y += x.
pub fn add_into<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o += v));
}
