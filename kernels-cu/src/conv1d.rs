//! Launches of cu/conv1d.cu: depthwise causal conv1d, token-major like `ssm::ops::conv1d`:
//! x, y (b, l, d); w (d, k); bias (d); state (b, k-1, d) holding the inputs before step 0. An
//! optional SiLU is fused on the output.

use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, to_i32};
use crate::reduce::sum_rows_into;
use crate::{Error, Result};

/// The widest kernel the launches take.
pub const MAX_WIDTH: usize = 8;
const CHANNELS: usize = 32;
const ROW_THREADS: u32 = 8;
const ROWS_PER_BLOCK: usize = 64;

/// Sizes of one call: batch, length, channels, kernel width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub b: usize,
    pub l: usize,
    pub d: usize,
    pub k: usize,
}

impl ConvDims {
    fn row_blocks(&self) -> usize {
        (self.b * self.l).div_ceil(ROWS_PER_BLOCK)
    }

    /// Floats of workspace the backward needs: the gradient before the SiLU (when fused), and
    /// per-block partial sums of dw and dbias.
    pub fn bwd_workspace_len(&self, silu: bool) -> usize {
        let pre = if silu { self.b * self.l * self.d } else { 0 };
        pre + self.row_blocks() * self.d * (self.k + 1)
    }

    fn config(&self, kernel: &'static str) -> Result<LaunchConfig> {
        let ConvDims { b, l, d, k } = *self;
        if b == 0 || l == 0 || d == 0 || k == 0 || k > MAX_WIDTH {
            return Err(Error::Unsupported {
                kernel,
                reason: format!("needs b, l, d >= 1 and 1 <= k <= {MAX_WIDTH}, got {self:?}"),
            });
        }
        to_i32(kernel, "b * l * d", b * l * d)?;
        let rows = self.row_blocks();
        if rows > 65535 {
            return Err(Error::Unsupported {
                kernel,
                reason: format!("b * l = {} rows exceed the grid's y limit", b * l),
            });
        }
        Ok(LaunchConfig {
            grid_dim: (d.div_ceil(CHANNELS) as u32, rows as u32, 1),
            block_dim: (CHANNELS as u32, ROW_THREADS, 1),
            shared_mem_bytes: 0,
        })
    }

    fn push(&self, args: KernelArgs) -> KernelArgs {
        args.i32(self.b as i32)
            .i32(self.l as i32)
            .i32(self.d as i32)
            .i32(self.k as i32)
    }
}

/// y = conv(x) + bias, then SiLU if `silu`.
pub fn causal_conv1d_fwd(
    x: DevicePtr,
    w: DevicePtr,
    bias: Option<DevicePtr>,
    state: Option<DevicePtr>,
    y: DevicePtr,
    dims: ConvDims,
    silu: bool,
) -> Result<Launch> {
    const K: &str = "causal_conv1d_fwd_f32";
    let config = dims.config(K)?;
    let args = KernelArgs::new()
        .ptr(x)
        .ptr(w)
        .ptr(bias.unwrap_or(0))
        .ptr(state.unwrap_or(0))
        .ptr(y);
    Ok(Launch {
        kernel: K,
        config,
        args: dims.push(args).i32(silu as i32),
    })
}

/// Accumulates dx (b, l, d), dw (d, k) and dbias (d) from dy; the state gets no gradient. `bias`
/// is needed only with the fused SiLU (to recompute its input). `workspace` holds
/// `dims.bwd_workspace_len(silu)` floats.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_bwd(
    x: DevicePtr,
    w: DevicePtr,
    bias: Option<DevicePtr>,
    state: Option<DevicePtr>,
    dy: DevicePtr,
    dx: DevicePtr,
    dw: DevicePtr,
    dbias: Option<DevicePtr>,
    workspace: DevicePtr,
    dims: ConvDims,
    silu: bool,
) -> Result<Vec<Launch>> {
    const K: &str = "causal_conv1d_bwd_f32";
    let config = dims.config(K)?;
    let mut launches = Vec::new();
    // With the fused SiLU the workspace starts with dpre (b, l, d), the gradient before it.
    let (g, ws) = if silu {
        const G: &str = "causal_conv1d_silu_grad_f32";
        let args = KernelArgs::new()
            .ptr(x)
            .ptr(w)
            .ptr(bias.unwrap_or(0))
            .ptr(state.unwrap_or(0))
            .ptr(dy)
            .ptr(workspace);
        launches.push(Launch {
            kernel: G,
            config: dims.config(G)?,
            args: dims.push(args),
        });
        (workspace, workspace + 4 * (dims.b * dims.l * dims.d) as u64)
    } else {
        (dy, workspace)
    };
    let (rows, d, k) = (dims.row_blocks(), dims.d, dims.k);
    let (dw_part, db_part) = (ws, ws + 4 * (rows * d * k) as u64);
    let args = KernelArgs::new()
        .ptr(x)
        .ptr(w)
        .ptr(state.unwrap_or(0))
        .ptr(g)
        .ptr(dx)
        .ptr(dw_part)
        .ptr(dbias.map_or(0, |_| db_part));
    launches.push(Launch {
        kernel: K,
        config,
        args: dims.push(args),
    });
    launches.push(sum_rows_into(dw_part, rows, d * k, dw)?);
    if let Some(db) = dbias {
        launches.push(sum_rows_into(db_part, rows, d, db)?);
    }
    Ok(launches)
}
