//! Launches of cu/reduce.cu.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, grid_1d, to_i32};

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
