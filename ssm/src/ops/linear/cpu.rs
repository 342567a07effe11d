//! Dense matrix products through the `gemm` crate (AVX-512 and AVX2+FMA kernels chosen at run
//! time; 0.75-0.92 of MKL's rate on the model's large products, about 1.8x ndarray's
//! matrixmultiply: experiments/BENCHMARKS.md), with the output rows shared among the rayon
//! threads and each block computed by one single-threaded call. Every output element is computed
//! by exactly one call, so the result does not depend on scheduling.

use gemm::Parallelism;
use ndarray::{ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;

use crate::backend::cpu::{parts_for, row_blocks_mut, split};
use crate::float::Float;

pub(crate) fn view<T>(data: &[T], rows: usize, cols: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols), data).expect("matmul: caller checked the sizes")
}

pub(crate) fn view_mut<T>(data: &mut [T], rows: usize, cols: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("matmul: caller checked the sizes")
}

/// `c = alpha · a · b + beta · c` on views of any (non-negative) strides, as ndarray's
/// `general_mat_mul`, on the calling thread; with beta 0 the old values of c are not read.
pub(crate) fn gemm_views<T: Float>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    beta: T,
    c: &mut ArrayViewMut2<'_, T>,
) {
    let ((m, k), (kb, n)) = (a.dim(), b.dim());
    assert!(
        kb == k && c.dim() == (m, n),
        "gemm_views: shapes must chain"
    );
    let (sa, sb) = (a.strides(), b.strides());
    let sc = [c.strides()[0], c.strides()[1]];
    assert!(
        [sa, sb, &sc[..]].iter().all(|s| s.iter().all(|&x| x >= 0)),
        "gemm_views: negative strides"
    );
    let dst = c.as_mut_ptr();
    // SAFETY: each view addresses exactly its own elements through its pointer and strides, and
    // the borrows keep them alive; c is borrowed exclusively, so nothing else touches it while
    // the single-threaded call writes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            sc[1],
            sc[0],
            beta != T::zero(),
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[1],
            sb[0],
            beta,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `y (m, n) = beta * y + x (m, k) · wᵀ` with `w (n, k)`: the forward of a linear layer.
pub fn matmul_nt<T: Float>(x: &[T], w: &[T], y: &mut [T], m: usize, k: usize, n: usize, beta: T) {
    let w = view(w, n, k);
    let parts = split(m, parts_for(m, k * n));
    let chunks = row_blocks_mut(y, &parts, n);
    chunks.into_par_iter().for_each(|(rows, yc)| {
        let xa = view(&x[rows.start * k..rows.end * k], rows.len(), k);
        gemm_views(
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
        gemm_views(T::one(), &dya, &w, beta, &mut view_mut(dxc, rows.len(), k));
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
        gemm_views(
            T::one(),
            &dyt.t(),
            &x,
            T::one(),
            &mut view_mut(dwc, rows.len(), k),
        );
    });
}
