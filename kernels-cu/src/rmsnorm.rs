//! Launches of cu/rmsnorm.cu: RMSNorm over the last dimension of x (m, d), as `ssm::ops::norm`;
//! in the grouped form each of the `groups` slices of a row is normalised on its own.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, to_i32};
use crate::reduce::sum_rows_into;

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 4;

fn blocks(m: usize) -> usize {
    m.clamp(1, MAX_BLOCKS)
}

fn config(m: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(m) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Floats of workspace the backward needs: one row of dw partials per block.
pub fn bwd_workspace_len(m: usize, d: usize, groups: usize) -> usize {
    blocks(m * groups) * d
}

/// The kernels' rows and width: `groups` rows of d / groups per row of the op.
fn slices(kernel: &'static str, m: usize, d: usize, groups: usize) -> Result<(i32, i32)> {
    if groups == 0 || !d.is_multiple_of(groups) {
        return Err(crate::Error::Unsupported {
            kernel,
            reason: format!("{groups} groups do not divide the width {d}"),
        });
    }
    to_i32(kernel, "m * d", m * d)?;
    Ok(((m * groups) as i32, (d / groups) as i32))
}

/// y (m, d) = x · rstd · w and rstd (m · groups,) for the backward.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd(
    x: DevicePtr,
    w: DevicePtr,
    y: DevicePtr,
    rstd: DevicePtr,
    m: usize,
    d: usize,
    groups: usize,
    eps: f32,
) -> Result<Launch> {
    const K: &str = "rmsnorm_fwd_f32";
    let (rows, width) = slices(K, m, d, groups)?;
    let args = KernelArgs::new()
        .ptr(x)
        .ptr(w)
        .ptr(y)
        .ptr(rstd)
        .i32(rows)
        .i32(width)
        .i32(groups as i32)
        .f32(eps);
    Ok(Launch {
        kernel: K,
        config: config(m * groups),
        args,
    })
}

/// Accumulates dx (m, d) and dw (d,); `workspace` holds `bwd_workspace_len(m, d, groups)` floats.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(
    dy: DevicePtr,
    x: DevicePtr,
    w: DevicePtr,
    rstd: DevicePtr,
    dx: DevicePtr,
    dw: DevicePtr,
    workspace: DevicePtr,
    m: usize,
    d: usize,
    groups: usize,
) -> Result<Vec<Launch>> {
    const K: &str = "rmsnorm_bwd_f32";
    let (rows, width) = slices(K, m, d, groups)?;
    let args = KernelArgs::new()
        .ptr(dy)
        .ptr(x)
        .ptr(w)
        .ptr(rstd)
        .ptr(dx)
        .ptr(workspace)
        .i32(rows)
        .i32(width)
        .i32(groups as i32);
    Ok(vec![
        Launch {
            kernel: K,
            config: config(m * groups),
            args,
        },
        sum_rows_into(workspace, blocks(m * groups), d, dw)?,
    ])
}
