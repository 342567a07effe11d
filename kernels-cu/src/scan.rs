//! Launches of the selective scan (cu/scan.cuh, cu/scan.cu), forward and backward, in the layouts
//! of `ssm::ops::scan`: u, delta, z, y (b, l, d); A (d, n); B, C (b, l, g, n); D, delta_bias (d);
//! initial and last state (b, d, n). Optional inputs and outputs are `None`.

use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, to_i32};
use crate::reduce::sum_rows_into;
use crate::{Error, Result};

/// Steps per chunk: the granularity of the states saved for the backward.
pub const CHUNK: usize = 256;
/// The largest state size the kernels take.
pub const MAX_STATE: usize = 64;
const THREADS: u32 = 64;
const MAX_CHANNELS_PER_BLOCK: usize = 4;

/// Sizes of one scan: batch, length, channels, state size, groups of B/C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanDims {
    pub b: usize,
    pub l: usize,
    pub d: usize,
    pub n: usize,
    pub g: usize,
}

impl ScanDims {
    pub fn chunks(&self) -> usize {
        self.l.div_ceil(CHUNK)
    }

    /// Elements of the saved chunk states, (b, chunks, d, n).
    pub fn chunk_states_len(&self) -> usize {
        self.b * self.chunks() * self.d * self.n
    }

    /// Elements of the f32 workspace the backward needs: per-sequence partials of dA (b, d, n),
    /// dD (b, d) and d_delta_bias (b, d).
    pub fn bwd_workspace_len(&self) -> usize {
        self.b * self.d * (self.n + 2)
    }

    /// Channels per block: the largest of 4, 2, 1 dividing d / g, so that a block's channels share
    /// one group of B and C.
    fn channels_per_block(&self) -> usize {
        let per_group = self.d / self.g;
        [MAX_CHANNELS_PER_BLOCK, 2, 1]
            .into_iter()
            .find(|&dc| per_group.is_multiple_of(dc))
            .unwrap_or(1)
    }

    fn check(&self, kernel: &'static str) -> Result<LaunchConfig> {
        let ScanDims { b, l, d, n, g } = *self;
        let bad = |reason: String| Err(Error::Unsupported { kernel, reason });
        if b == 0 || l == 0 || d == 0 || n == 0 || g == 0 || d % g != 0 {
            return bad(format!(
                "needs b, l, d, n, g >= 1 with g dividing d, got {self:?}"
            ));
        }
        if n > MAX_STATE {
            return bad(format!(
                "state size n = {n} exceeds the kernel's maximum of {MAX_STATE}"
            ));
        }
        if b > 65535 {
            return bad(format!("batch {b} exceeds the grid's y limit of 65535"));
        }
        to_i32(kernel, "b * l * d", b * l * d)?;
        to_i32(kernel, "b * l * g * n", b * l * g * n)?;
        let dc = self.channels_per_block();
        Ok(LaunchConfig {
            grid_dim: ((d / dc) as u32, b as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    fn tail(
        &self,
        args: KernelArgs,
        kernel: &'static str,
        delta_softplus: bool,
    ) -> Result<KernelArgs> {
        Ok(args
            .i32(to_i32(kernel, "l", self.l)?)
            .i32(to_i32(kernel, "d", self.d)?)
            .i32(self.n as i32)
            .i32(to_i32(kernel, "g", self.g)?)
            .i32(self.channels_per_block() as i32)
            .i32(delta_softplus as i32))
    }
}

/// Device addresses of the scan inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanInputs {
    pub u: DevicePtr,
    pub delta: DevicePtr,
    pub a: DevicePtr,
    pub b: DevicePtr,
    pub c: DevicePtr,
    pub d_skip: Option<DevicePtr>,
    pub z: Option<DevicePtr>,
    pub delta_bias: Option<DevicePtr>,
    pub delta_softplus: bool,
    pub h0: Option<DevicePtr>,
}

impl ScanInputs {
    fn push(&self, args: KernelArgs) -> KernelArgs {
        args.ptr(self.u)
            .ptr(self.delta)
            .ptr(self.a)
            .ptr(self.b)
            .ptr(self.c)
            .ptr(opt(self.d_skip))
            .ptr(opt(self.z))
            .ptr(opt(self.delta_bias))
    }
}

fn opt(p: Option<DevicePtr>) -> DevicePtr {
    p.unwrap_or(0)
}

/// Outputs of the forward: y (b, l, d); optionally the last state (b, d, n) and the chunk states
/// (b, chunks, d, n) that the backward needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanOutputs {
    pub y: DevicePtr,
    pub last_state: Option<DevicePtr>,
    pub chunk_states: Option<DevicePtr>,
}

/// The forward launch.
pub fn selective_scan_fwd(inp: &ScanInputs, out: &ScanOutputs, dims: ScanDims) -> Result<Launch> {
    fwd_launch("selective_scan_fwd_f32", inp, out, dims)
}

/// The forward with a barrier removed (cu/tests/scan_broken.cu), for the test that proves the
/// emulation catches races.
pub fn selective_scan_fwd_broken(
    inp: &ScanInputs,
    out: &ScanOutputs,
    dims: ScanDims,
) -> Result<Launch> {
    fwd_launch("selective_scan_fwd_broken_f32", inp, out, dims)
}

fn fwd_launch(
    kernel: &'static str,
    inp: &ScanInputs,
    out: &ScanOutputs,
    dims: ScanDims,
) -> Result<Launch> {
    let config = dims.check(kernel)?;
    let args = inp
        .push(KernelArgs::new())
        .ptr(opt(inp.h0))
        .ptr(out.y)
        .ptr(opt(out.last_state))
        .ptr(opt(out.chunk_states));
    Ok(Launch {
        kernel,
        config,
        args: dims.tail(args, kernel, inp.delta_softplus)?,
    })
}

/// Gradient buffers of the backward, added into; options follow the inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanGrads {
    pub du: DevicePtr,
    pub ddelta: DevicePtr,
    pub da: DevicePtr,
    pub db: DevicePtr,
    pub dc: DevicePtr,
    pub dd_skip: Option<DevicePtr>,
    pub dz: Option<DevicePtr>,
    pub ddelta_bias: Option<DevicePtr>,
    pub dh0: Option<DevicePtr>,
}

/// The backward launches: the scan, then the batch reductions of dA, dD and d_delta_bias.
/// `chunk_states` comes from the forward; `workspace` holds `dims.bwd_workspace_len()` floats.
pub fn selective_scan_bwd(
    inp: &ScanInputs,
    chunk_states: DevicePtr,
    dy: DevicePtr,
    dlast: Option<DevicePtr>,
    grads: &ScanGrads,
    workspace: DevicePtr,
    dims: ScanDims,
) -> Result<Vec<Launch>> {
    const K: &str = "selective_scan_bwd_f32";
    let config = dims.check(K)?;
    let mismatch = [
        (
            "dz without z, or z without dz",
            inp.z.is_some() != grads.dz.is_some(),
        ),
        (
            "dD without D",
            grads.dd_skip.is_some() && inp.d_skip.is_none(),
        ),
        (
            "d_delta_bias without delta_bias",
            grads.ddelta_bias.is_some() && inp.delta_bias.is_none(),
        ),
    ];
    if let Some((what, _)) = mismatch.iter().find(|(_, bad)| *bad) {
        return Err(Error::Unsupported {
            kernel: K,
            reason: format!("gradient buffers must follow the inputs: {what}"),
        });
    }
    let (bd, bdn) = (dims.b * dims.d, dims.b * dims.d * dims.n);
    let (ws_da, ws_dd, ws_ddb) = (
        workspace,
        workspace + 4 * bdn as u64,
        workspace + 4 * (bdn + bd) as u64,
    );
    let args = inp
        .push(KernelArgs::new())
        .ptr(chunk_states)
        .ptr(dy)
        .ptr(opt(dlast))
        .ptr(grads.du)
        .ptr(grads.ddelta)
        .ptr(grads.db)
        .ptr(grads.dc)
        .ptr(opt(grads.dz))
        .ptr(opt(grads.dh0))
        .ptr(ws_da)
        .ptr(grads.dd_skip.map_or(0, |_| ws_dd))
        .ptr(grads.ddelta_bias.map_or(0, |_| ws_ddb));
    let mut launches = vec![Launch {
        kernel: K,
        config,
        args: dims.tail(args, K, inp.delta_softplus)?,
    }];
    launches.push(sum_rows_into(ws_da, dims.b, dims.d * dims.n, grads.da)?);
    if let Some(dd) = grads.dd_skip {
        launches.push(sum_rows_into(ws_dd, dims.b, dims.d, dd)?);
    }
    if let Some(ddb) = grads.ddelta_bias {
        launches.push(sum_rows_into(ws_ddb, dims.b, dims.d, ddb)?);
    }
    Ok(launches)
}
