//! Dense matrix products through the `gemm` crate (AVX-512 and AVX2+FMA kernels chosen at run
//! time; 0.75-0.92 of MKL's rate on the model's large products, about 1.8x ndarray's
//! matrixmultiply: experiments/BENCHMARKS.md), with the output rows shared among the rayon threads and each block computed by
//! one single-threaded call. Every output element is computed by exactly one call, so the result
//! does not depend on scheduling.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::backend::cpu::{parts_for, row_blocks_mut, split};
use crate::float::Float;

/// A row-major or transposed operand: its first element and the strides between its rows and
/// between its columns, in elements.
#[derive(Clone, Copy)]
struct Operand<T> {
    ptr: *const T,
    row_stride: usize,
    col_stride: usize,
}

/// The start of `data` read as a matrix with rows `row_stride` apart and columns `col_stride`.
fn operand<T>(data: &[T], row_stride: usize, col_stride: usize) -> Operand<T> {
    Operand {
        ptr: data.as_ptr(),
        row_stride,
        col_stride,
    }
}

/// `dst (rows, cols), row-major = beta · dst + lhs (rows, depth) · rhs (depth, cols)`; with
/// beta 0 the old values of dst are not read.
///
/// The caller guarantees that lhs and rhs address rows × depth and depth × cols elements
/// within the slices they were made from, which outlive the call, and that dst holds
/// rows × cols values.
fn gemm_into<T: Float>(
    dst: &mut [T],
    [rows, depth, cols]: [usize; 3],
    lhs: Operand<T>,
    rhs: Operand<T>,
    beta: T,
) {
    debug_assert!(dst.len() >= rows * cols);
    let stride = |s: usize| s as isize;
    // SAFETY: dst is a live, exclusive slice of rows × cols values, row-major; lhs and rhs point
    // into live slices covering every element the strides reach (the callers derive them from
    // the checked sizes m, k, n), and nothing else writes those slices during the call.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            dst.as_mut_ptr(),
            1,
            stride(cols),
            beta != T::zero(),
            lhs.ptr,
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.ptr,
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            beta,
            T::one(),
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `y (m, n) = beta * y + x (m, k) · wᵀ` with `w (n, k)`: the forward of a linear layer.
pub fn matmul_nt<T: Float>(x: &[T], w: &[T], y: &mut [T], m: usize, k: usize, n: usize, beta: T) {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "matmul_nt: caller checked the sizes"
    );
    let parts = split(m, parts_for(m, k * n));
    let chunks = row_blocks_mut(y, &parts, n);
    chunks.into_par_iter().for_each(|(rows, yc)| {
        let xa = operand(&x[rows.start * k..], k, 1);
        gemm_into(yc, [rows.len(), k, n], xa, operand(w, 1, k), beta);
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
    assert!(
        dy.len() >= m * n && w.len() >= n * k,
        "matmul_nn: caller checked the sizes"
    );
    let parts = split(m, parts_for(m, k * n));
    let chunks = row_blocks_mut(dx, &parts, k);
    chunks.into_par_iter().for_each(|(rows, dxc)| {
        let dya = operand(&dy[rows.start * n..], n, 1);
        gemm_into(dxc, [rows.len(), n, k], dya, operand(w, k, 1), beta);
    });
}

/// `dw (n, k) += dyᵀ · x` with `dy (m, n)` and `x (m, k)`: the weight gradient of a linear layer.
pub fn matmul_tn_acc<T: Float>(dy: &[T], x: &[T], dw: &mut [T], m: usize, n: usize, k: usize) {
    assert!(
        dy.len() >= m * n && x.len() >= m * k,
        "matmul_tn_acc: caller checked the sizes"
    );
    let parts = split(n, parts_for(n, m * k));
    let chunks = row_blocks_mut(dw, &parts, k);
    chunks.into_par_iter().for_each(|(rows, dwc)| {
        // Rows `rows` of dyᵀ: column j of dy from row `rows.start`, one element per dy row.
        let dyt = operand(&dy[rows.start..], 1, n);
        gemm_into(dwc, [rows.len(), m, k], dyt, operand(x, k, 1), T::one());
    });
}
