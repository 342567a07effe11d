//! Launches of cu/elementwise.cu: SiLU, softplus, GELU, the gate `x * silu(z)` and `y += x`,
//! forward and backward, and the small ops around them (`-exp`, `out += a · b`, scaling, broadcast
//! adds) over `n` contiguous elements (any layout); and copies of row blocks between strided
//! matrices. Backward launches add into their outputs.

use crate::launch::{DevicePtr, KernelArgs, Launch, grid_1d, to_i32, to_i64};
use crate::{Error, Result};

const THREADS: u32 = 256;
/// Enough blocks to fill an H200 (132 SMs) several times over; larger inputs use grid-stride loops.
const MAX_BLOCKS: u32 = 132 * 16;

fn launch(kernel: &'static str, n: usize, ptrs: &[DevicePtr]) -> Result<Launch> {
    let args = ptrs
        .iter()
        .fold(KernelArgs::new(), |a, &p| a.ptr(p))
        .i32(to_i32(kernel, "n", n)?);
    Ok(Launch {
        kernel,
        config: grid_1d(n, THREADS, MAX_BLOCKS),
        args,
    })
}

/// y (n) = silu(x (n)).
pub fn silu_fwd(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("silu_fwd_f32", n, &[x, y])
}

/// dx (n) += dy · silu'(x).
pub fn silu_bwd(x: DevicePtr, dy: DevicePtr, dx: DevicePtr, n: usize) -> Result<Launch> {
    launch("silu_bwd_f32", n, &[x, dy, dx])
}

/// y (n) = softplus(x (n)), x itself above 20.
pub fn softplus_fwd(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("softplus_fwd_f32", n, &[x, y])
}

/// dx (n) += dy · sigmoid(x).
pub fn softplus_bwd(x: DevicePtr, dy: DevicePtr, dx: DevicePtr, n: usize) -> Result<Launch> {
    launch("softplus_bwd_f32", n, &[x, dy, dx])
}

/// y (n) = x · silu(z).
pub fn gate_fwd(x: DevicePtr, z: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("gate_fwd_f32", n, &[x, z, y])
}

/// dx (n) += dy · silu(z); dz (n) += dy · x · silu'(z).
pub fn gate_bwd(
    x: DevicePtr,
    z: DevicePtr,
    dy: DevicePtr,
    dx: DevicePtr,
    dz: DevicePtr,
    n: usize,
) -> Result<Launch> {
    launch("gate_bwd_f32", n, &[x, z, dy, dx, dz])
}

/// y (n) += x (n).
pub fn add_into(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("add_into_f32", n, &[x, y])
}

/// y (n) = gelu(x (n)), tanh approximation as `ssm::ops::activation::gelu_fwd`.
pub fn gelu_fwd(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("gelu_fwd_f32", n, &[x, y])
}

/// dx (n) += dy · gelu'(x).
pub fn gelu_bwd(x: DevicePtr, dy: DevicePtr, dx: DevicePtr, n: usize) -> Result<Launch> {
    launch("gelu_bwd_f32", n, &[x, dy, dx])
}

/// y (n) = -exp(x (n)): Mamba's A = -exp(A_log).
pub fn neg_exp(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("neg_exp_f32", n, &[x, y])
}

/// out (n) += a (n) · b (n).
pub fn mul_add_into(a: DevicePtr, b: DevicePtr, out: DevicePtr, n: usize) -> Result<Launch> {
    launch("mul_add_into_f32", n, &[a, b, out])
}

/// x (n) *= s, in place.
pub fn scale(x: DevicePtr, s: f32, n: usize) -> Result<Launch> {
    const K: &str = "scale_f32";
    Ok(Launch {
        kernel: K,
        config: grid_1d(n, THREADS, MAX_BLOCKS),
        args: KernelArgs::new().ptr(x).f32(s).i32(to_i32(K, "n", n)?),
    })
}

/// dst (n / inner, inner) += src (inner,) on every row (bias rows, learned position tables); `n`
/// must be a multiple of `inner` >= 1.
pub fn add_broadcast(src: DevicePtr, inner: usize, dst: DevicePtr, n: usize) -> Result<Launch> {
    const K: &str = "add_broadcast_f32";
    if inner == 0 || !n.is_multiple_of(inner) {
        return Err(Error::Unsupported {
            kernel: K,
            reason: format!("n = {n} must be a multiple of inner = {inner} >= 1"),
        });
    }
    Ok(Launch {
        kernel: K,
        config: grid_1d(n, THREADS, MAX_BLOCKS),
        args: KernelArgs::new()
            .ptr(src)
            .i32(to_i32(K, "inner", inner)?)
            .ptr(dst)
            .i32(to_i32(K, "n", n)?),
    })
}

/// dst (rows, dst_stride)[:, :cols] = src (rows, src_stride)[:, :cols], or `+=` when
/// `accumulate`; strides in elements, at least `cols` unless there is a single row. Slices a
/// column block out of a wider matrix (x and z of an in_proj output) or writes one back.
pub fn copy_strided(
    src: DevicePtr,
    src_stride: usize,
    dst: DevicePtr,
    dst_stride: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) -> Result<Launch> {
    const K: &str = "copy_strided_f32";
    if rows > 1 && cols > src_stride.min(dst_stride) {
        return Err(Error::Unsupported {
            kernel: K,
            reason: format!(
                "cols = {cols} exceeds a stride (src {src_stride}, dst {dst_stride}): rows would overlap"
            ),
        });
    }
    // Saturating, so that an overflow of usize fails the conversion too.
    to_i64(K, "rows * cols", rows.saturating_mul(cols))?;
    let args = KernelArgs::new()
        .ptr(src)
        .i64(to_i64(K, "src_stride", src_stride)?)
        .ptr(dst)
        .i64(to_i64(K, "dst_stride", dst_stride)?)
        .i64(to_i64(K, "rows", rows)?)
        .i64(to_i64(K, "cols", cols)?)
        .i32(accumulate as i32);
    Ok(Launch {
        kernel: K,
        config: grid_1d(rows * cols, THREADS, MAX_BLOCKS),
        args,
    })
}
