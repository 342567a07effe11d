//! Launches of cu/reduce.cu: deterministic sums (no atomics), the second stage of kernels that
//! write per-block partials, and the sum of squares of a buffer (gradient norms).

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, grid_1d, to_i32, to_i64};

/// out (cols) += Σ_r parts (rows, cols)[r], in a fixed order.
pub fn sum_rows_into(parts: DevicePtr, rows: usize, cols: usize, out: DevicePtr) -> Result<Launch> {
    const K: &str = "sum_rows_into_f32";
    Ok(Launch {
        kernel: K,
        config: grid_1d(cols, 256, 132 * 8),
        args: KernelArgs::new()
            .ptr(parts)
            .i32(to_i32(K, "rows", rows)?)
            .i32(to_i32(K, "cols", cols)?)
            .ptr(out),
    })
}

/// Blocks of the first stage of [`sum_squares_into`], and floats of its `parts` workspace.
pub const SUM_SQUARES_PARTS: usize = 256;
/// Threads per block of that stage (`sum_squares::kThreads` in cu/reduce.cu).
const SUM_SQUARES_THREADS: u32 = 256;

/// out (1,) += Σ_i x (n)[i]², deterministically: a fixed grid of [`SUM_SQUARES_PARTS`] blocks
/// writes one partial each into `parts` (SUM_SQUARES_PARTS floats), then [`sum_rows_into`] adds
/// them in order.
pub fn sum_squares_into(
    x: DevicePtr,
    n: usize,
    parts: DevicePtr,
    out: DevicePtr,
) -> Result<Vec<Launch>> {
    const K: &str = "sum_squares_parts_f32";
    let first = Launch {
        kernel: K,
        config: LaunchConfig {
            grid_dim: (SUM_SQUARES_PARTS as u32, 1, 1),
            block_dim: (SUM_SQUARES_THREADS, 1, 1),
            shared_mem_bytes: 0,
        },
        args: KernelArgs::new().ptr(x).i64(to_i64(K, "n", n)?).ptr(parts),
    };
    Ok(vec![
        first,
        sum_rows_into(parts, SUM_SQUARES_PARTS, 1, out)?,
    ])
}
