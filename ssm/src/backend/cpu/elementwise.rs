//! Elementwise activations and their derivatives, shared by the kernels that fuse them.

use rayon::prelude::*;

use crate::tensor::Float;

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
        .zip(x.par_chunks(GRAIN).zip(z.par_chunks(GRAIN)).zip(dy.par_chunks(GRAIN)))
        .for_each(|((dxc, dzc), ((xc, zc), gc))| {
            for i in 0..dxc.len() {
                dxc[i] += gc[i] * silu(zc[i]);
                dzc[i] += gc[i] * xc[i] * silu_grad(zc[i]);
            }
        });
}

/// y += x.
pub fn add_into<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o += v));
}
