//! Dense matrix products through ndarray's `general_mat_mul` (matrixmultiply), with the output
//! rows shared among the rayon threads. Every output element is computed by exactly one call, so
//! the result does not depend on scheduling.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;

use crate::backend::cpu::{parts_for, row_blocks_mut, split};
use crate::float::Float;

fn view<T>(data: &[T], rows: usize, cols: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols), data).expect("matmul: caller checked the sizes")
}

fn view_mut<T>(data: &mut [T], rows: usize, cols: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("matmul: caller checked the sizes")
}

/// `y (m, n) = beta * y + x (m, k) · wᵀ` with `w (n, k)`: the forward of a linear layer.
pub fn matmul_nt<T: Float>(x: &[T], w: &[T], y: &mut [T], m: usize, k: usize, n: usize, beta: T) {
    let w = view(w, n, k);
    let parts = split(m, parts_for(m, k * n));
    let chunks = row_blocks_mut(y, &parts, n);
    chunks.into_par_iter().for_each(|(rows, yc)| {
        let xa = view(&x[rows.start * k..rows.end * k], rows.len(), k);
        general_mat_mul(
            T::one(),
            &xa,
            &w.t(),
            beta,
            &mut view_mut(yc, rows.len(), n),
        );
    });
}

/// `y (m, n) = x (m, k) · wᵀ + bias (n)`: a linear layer's forward over host values.
pub fn linear_rows<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    [m, k, n]: [usize; 3],
) {
    matmul_nt(x, w, y, m, k, n, T::zero());
    if let Some(bias) = bias {
        for row in y.chunks_exact_mut(n) {
            for (o, &bv) in row.iter_mut().zip(bias) {
                *o += bv;
            }
        }
    }
}

/// `dx (m, k) = beta * dx + dy (m, n) · w (n, k)`: the input gradient of a linear layer.
pub fn matmul_nn<T: Float>(dy: &[T], w: &[T], dx: &mut [T], m: usize, n: usize, k: usize, beta: T) {
    let w = view(w, n, k);
    let parts = split(m, parts_for(m, k * n));
    let chunks = row_blocks_mut(dx, &parts, k);
    chunks.into_par_iter().for_each(|(rows, dxc)| {
        let dya = view(&dy[rows.start * n..rows.end * n], rows.len(), n);
        general_mat_mul(T::one(), &dya, &w, beta, &mut view_mut(dxc, rows.len(), k));
    });
}

/// `dw (n, k) += dyᵀ · x` with `dy (m, n)` and `x (m, k)`: the weight gradient of a linear layer.
pub fn matmul_tn_acc<T: Float>(dy: &[T], x: &[T], dw: &mut [T], m: usize, n: usize, k: usize) {
    let dy = view(dy, m, n);
    let x = view(x, m, k);
    let parts = split(n, parts_for(n, m * k));
    let chunks = row_blocks_mut(dw, &parts, k);
    chunks.into_par_iter().for_each(|(rows, dwc)| {
        let dyt = dy.slice(s![.., rows.clone()]);
        general_mat_mul(
            T::one(),
            &dyt.t(),
            &x,
            T::one(),
            &mut view_mut(dwc, rows.len(), k),
        );
    });
}
