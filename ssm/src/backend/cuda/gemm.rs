//! Matrix products for cuBLAS. The engine's tensors are row-major and cuBLAS is column-major: a
//! row-major C (m, n) is the column-major Cᵀ (n, m), and Cᵀ = op(B)ᵀ · op(A)ᵀ, so every product
//! becomes one cuBLAS call with the operands swapped and no data moved. [`Gemm::column_major`] does
//! that mapping; the emulated engine runs its result through [`column_major_ref`], so the mapping
//! is tested without a GPU.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use ssm_kernels::DevicePtr;

/// `C (batch, m, n) = alpha · op(A) · op(B) + beta · C` on row-major buffers: A is (m, k), or
/// stored as (k, m) when `trans_a`; B is (k, n), or stored as (n, k) when `trans_b`. Batches are
/// `stride_*` elements apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub a: DevicePtr,
    pub b: DevicePtr,
    pub c: DevicePtr,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// One product without batching.
    #[allow(clippy::too_many_arguments)]
    pub fn single(
        a: DevicePtr,
        trans_a: bool,
        b: DevicePtr,
        trans_b: bool,
        c: DevicePtr,
        (m, n, k): (usize, usize, usize),
        beta: f32,
    ) -> Self {
        Gemm {
            a,
            b,
            c,
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }

    /// The same product as cuBLAS's column-major `gemmStridedBatched` arguments.
    pub fn column_major(&self) -> ColumnMajorGemm {
        ColumnMajorGemm {
            trans_x: self.trans_b,
            trans_y: self.trans_a,
            rows: self.n,
            cols: self.m,
            inner: self.k,
            alpha: self.alpha,
            x: self.b,
            ldx: if self.trans_b { self.k } else { self.n },
            stride_x: self.stride_b,
            y: self.a,
            ldy: if self.trans_a { self.m } else { self.k },
            stride_y: self.stride_a,
            beta: self.beta,
            out: self.c,
            ldo: self.n,
            stride_out: self.stride_c,
            batch: self.batch,
        }
    }
}

/// `out (rows, cols) = alpha · op(x) (rows, inner) · op(y) (inner, cols) + beta · out`, every
/// matrix column-major with the given leading dimension: cuBLAS's (transa, transb, m, n, k, A,
/// lda, B, ldb, C, ldc) under other names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColumnMajorGemm {
    pub trans_x: bool,
    pub trans_y: bool,
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
    pub alpha: f32,
    pub x: DevicePtr,
    pub ldx: usize,
    pub stride_x: usize,
    pub y: DevicePtr,
    pub ldy: usize,
    pub stride_y: usize,
    pub beta: f32,
    pub out: DevicePtr,
    pub ldo: usize,
    pub stride_out: usize,
    pub batch: usize,
}

/// Runs `g` on host memory with cuBLAS's column-major semantics.
///
/// # Safety
/// Every address must point to host memory holding the matrices `g` describes.
pub unsafe fn column_major_ref(g: &ColumnMajorGemm) {
    // An element (i, j) of a column-major matrix with leading dimension ld sits at i + j·ld; the
    // transposed operand swaps the strides.
    let strides = |trans: bool, ld: usize| if trans { (ld, 1) } else { (1, ld) };
    for t in 0..g.batch {
        // SAFETY: the caller vouches for the buffers; the views stay inside each batch's matrix.
        unsafe {
            let x = ArrayView2::from_shape_ptr(
                (g.rows, g.inner).strides(strides(g.trans_x, g.ldx)),
                (g.x as *const f32).add(t * g.stride_x),
            );
            let y = ArrayView2::from_shape_ptr(
                (g.inner, g.cols).strides(strides(g.trans_y, g.ldy)),
                (g.y as *const f32).add(t * g.stride_y),
            );
            let mut out = ArrayViewMut2::from_shape_ptr(
                (g.rows, g.cols).strides((1, g.ldo)),
                (g.out as *mut f32).add(t * g.stride_out),
            );
            general_mat_mul(g.alpha, &x, &y, g.beta, &mut out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transpose combination of the row-major product, through the column-major mapping,
    /// against a direct triple loop.
    #[test]
    fn row_major_products_map_to_column_major_calls() {
        let (m, n, k) = (3, 5, 4);
        let fill = |len: usize, s: f32| (0..len).map(|i| (i as f32 * s).sin()).collect::<Vec<_>>();
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = fill(m * k, 0.7);
            let b = fill(k * n, 1.3);
            let mut c = fill(m * n, 0.1);
            let at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
            let expected: Vec<f32> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    0.5 * c[ij] + (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>()
                })
                .collect();
            let g = Gemm::single(
                a.as_ptr() as DevicePtr,
                trans_a,
                b.as_ptr() as DevicePtr,
                trans_b,
                c.as_mut_ptr() as DevicePtr,
                (m, n, k),
                0.5,
            );
            // SAFETY: the addresses are of the vectors above, sized as `g` says.
            unsafe { column_major_ref(&g.column_major()) };
            for (got, want) in c.iter().zip(&expected) {
                assert!(
                    (got - want).abs() < 1e-5,
                    "{trans_a} {trans_b}: {got} vs {want}"
                );
            }
        }
    }
}
