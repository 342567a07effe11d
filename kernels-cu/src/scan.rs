//! Launches of the selective scan (cu/scan.cuh, cu/scan.cu), forward and backward, in the layouts
//! of `ssm::ops::scan`: u, delta, z, y (b, l, d); A (d, n); B, C (b, l, g, n); D, delta_bias (d);
//! initial and last state (b, d, n). Optional inputs and outputs are `None`.
//!
//! One block walks the chunks of one sequence for a few channels, so `b · d / dc` blocks must fill
//! the GPU. When they cannot (small batches), each sequence is split into segments of consecutive
//! chunks ([`ScanDims::segments`]) and a scan is three launches: a map pass in which every
//! (channel group, sequence, segment) block composes its segment into the affine map
//! h -> exp(A Σdt) h + V per channel and state; a chain over the segments in order (in reverse for
//! the backward, whose map from the gradient at a segment's end to the one at its start has the same
//! form), which turns the V into each segment's starting state; and the full pass, in which every
//! segment replays itself from that state. Partial sums stay per sequence and segment, so dA, dD
//! and d_delta_bias are still added up in a fixed order.

use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, grid_1d, to_i32};
use crate::reduce::sum_rows_into;
use crate::{Error, GradBuffer, Result};

/// Steps per chunk: the granularity of the states saved for the backward.
pub const CHUNK: usize = 256;
/// The largest state size the kernels take.
pub const MAX_STATE: usize = 64;
const THREADS: u32 = 64;
const MAX_CHANNELS_PER_BLOCK: usize = 4;
/// Scan blocks one SM holds at once: ~33 KB of static shared memory each in 228 KB (H100, H200).
const BLOCKS_PER_SM: usize = 6;

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

    /// Segments per sequence for a GPU of `sms` multiprocessors: 1 while the `b · d / dc` blocks
    /// of an unsplit launch fill half of its block slots or more (a split costs a map pass of about
    /// half the work, so it only pays when it at least doubles the blocks); else as many as one wave
    /// of blocks holds, at most one per chunk.
    pub fn segments(&self, sms: usize) -> usize {
        if self.g == 0 || !self.d.is_multiple_of(self.g) {
            return 1;
        }
        let blocks = (self.b * self.d / self.channels_per_block()).max(1);
        let slots = BLOCKS_PER_SM * sms;
        if 2 * blocks > slots {
            return 1;
        }
        self.split(slots / blocks).1
    }

    /// (chunks per segment, segments) when `segments` are asked for: equal runs of chunks, the
    /// last one possibly shorter, none empty.
    fn split(&self, segments: usize) -> (usize, usize) {
        let chunks = self.chunks().max(1);
        let per = chunks.div_ceil(segments.clamp(1, chunks));
        (per, chunks.div_ceil(per))
    }

    /// Elements of the f32 workspace a forward in `segments` needs: none unsplit, else the
    /// segment maps and states (b, segments, d, n) and the sums of dt (b, segments, d).
    pub fn fwd_workspace_len(&self, segments: usize) -> usize {
        match self.split(segments).1 {
            1 => 0,
            s => self.b * s * self.d * (self.n + 1),
        }
    }

    /// Elements of the f32 workspace the backward in `segments` needs: per sequence and segment
    /// partials of dA (b, segments, d, n), dD (b, segments, d) and d_delta_bias (b, segments, d),
    /// then what a split forward needs.
    pub fn bwd_workspace_len(&self, segments: usize) -> usize {
        let s = self.split(segments).1;
        self.b * s * self.d * (self.n + 2) + self.fwd_workspace_len(segments)
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

    fn check(&self, kernel: &'static str, segments: usize) -> Result<LaunchConfig> {
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
        let z = self.split(segments).1;
        if z > 65535 {
            return bad(format!("{z} segments exceed the grid's z limit of 65535"));
        }
        to_i32(kernel, "b * l * d", b * l * d)?;
        to_i32(kernel, "b * l * g * n", b * l * g * n)?;
        let dc = self.channels_per_block();
        Ok(LaunchConfig {
            grid_dim: ((d / dc) as u32, b as u32, z as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    fn tail(
        &self,
        args: KernelArgs,
        kernel: &'static str,
        segments: usize,
        delta_softplus: bool,
    ) -> Result<KernelArgs> {
        Ok(args
            .i32(to_i32(kernel, "l", self.l)?)
            .i32(to_i32(kernel, "d", self.d)?)
            .i32(self.n as i32)
            .i32(to_i32(kernel, "g", self.g)?)
            .i32(self.channels_per_block() as i32)
            .i32(to_i32(
                kernel,
                "chunks per segment",
                self.split(segments).0,
            )?)
            .i32(delta_softplus as i32))
    }

    /// Where a split scan keeps its segments from `workspace` on: the maps, then starting states
    /// (b, segments, d, n), and the sums of dt (b, segments, d).
    fn segment_buffers(&self, segments: usize, workspace: DevicePtr) -> (DevicePtr, DevicePtr) {
        let maps = self.b * self.split(segments).1 * self.d * self.n;
        (workspace, workspace + 4 * maps as u64)
    }

    /// The chain over the segments of every sequence: `seg` holds the maps' offsets and receives
    /// the starting states (forward, from `init` = h0) or the gradients at the segments' ends
    /// (reverse, from `init` = dlast).
    fn chain(
        &self,
        segments: usize,
        (seg, dt_sum): (DevicePtr, DevicePtr),
        a: DevicePtr,
        init: Option<DevicePtr>,
        reverse: bool,
    ) -> Result<Launch> {
        const K: &str = "selective_scan_chain_f32";
        let bdn = self.b * self.d * self.n;
        Ok(Launch {
            kernel: K,
            config: grid_1d(bdn, 128, 132 * 8),
            args: KernelArgs::new()
                .ptr(a)
                .ptr(dt_sum)
                .ptr(opt(init))
                .ptr(seg)
                .i32(to_i32(K, "b", self.b)?)
                .i32(to_i32(K, "d", self.d)?)
                .i32(self.n as i32)
                .i32(to_i32(K, "segments", self.split(segments).1)?)
                .i32(reverse as i32),
        })
    }
}

/// How a launch splits each sequence: `segments` as [`ScanDims::segments`] chooses (any count is
/// accepted and rounded to equal runs of chunks), and the f32 workspace of
/// [`ScanDims::fwd_workspace_len`] or [`ScanDims::bwd_workspace_len`] floats (unused when a
/// forward has one segment).
#[derive(Clone, Copy, Debug)]
pub struct ScanSplit {
    pub segments: usize,
    pub workspace: DevicePtr,
}

impl ScanSplit {
    /// One segment per sequence: the plain launch, no workspace for the forward.
    pub const NONE: ScanSplit = ScanSplit {
        segments: 1,
        workspace: 0,
    };
}

/// The inputs of one scan, over handles `X`: tensors in `ssm::ops::scan` (its `ScanInputs`), host
/// slices in its CPU kernels, device addresses here ([`ScanInputs`]). Layouts as in the module
/// doc; optional inputs are `None`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanInputsOf<X> {
    pub u: X,
    pub delta: X,
    pub a: X,
    pub b: X,
    pub c: X,
    pub d_skip: Option<X>,
    pub z: Option<X>,
    pub delta_bias: Option<X>,
    pub delta_softplus: bool,
    pub h0: Option<X>,
}

/// Device addresses of the scan inputs.
pub type ScanInputs = ScanInputsOf<DevicePtr>;

impl<X> ScanInputsOf<X> {
    /// Every input through `f` (a tensor to its host slice or device address, say), in field
    /// order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<ScanInputsOf<Y>, E> {
        Ok(ScanInputsOf {
            u: f(self.u)?,
            delta: f(self.delta)?,
            a: f(self.a)?,
            b: f(self.b)?,
            c: f(self.c)?,
            d_skip: self.d_skip.map(&mut f).transpose()?,
            z: self.z.map(&mut f).transpose()?,
            delta_bias: self.delta_bias.map(&mut f).transpose()?,
            delta_softplus: self.delta_softplus,
            h0: self.h0.map(&mut f).transpose()?,
        })
    }

    /// References to every input, for a [`try_map`](Self::try_map) that reads them, or for
    /// code that takes the inputs by reference.
    pub fn each_ref(&self) -> ScanInputsOf<&X> {
        ScanInputsOf {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d_skip: self.d_skip.as_ref(),
            z: self.z.as_ref(),
            delta_bias: self.delta_bias.as_ref(),
            delta_softplus: self.delta_softplus,
            h0: self.h0.as_ref(),
        }
    }

    /// Every input present: u, delta, A, B, C, then the optional ones given.
    pub fn present(self) -> Vec<X> {
        let opts = [self.d_skip, self.z, self.delta_bias, self.h0];
        [self.u, self.delta, self.a, self.b, self.c]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
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

/// The forward launches: one, or for a split scan the map pass, the chain and the full pass.
pub fn selective_scan_fwd(
    inp: &ScanInputs,
    out: &ScanOutputs,
    dims: ScanDims,
    split: ScanSplit,
) -> Result<Vec<Launch>> {
    const K: &str = "selective_scan_fwd_f32";
    let segments = dims.split(split.segments).1;
    if segments == 1 {
        return Ok(vec![fwd_launch(K, inp, out, dims, 1, (0, 0))?]);
    }
    let bufs = dims.segment_buffers(segments, split.workspace);
    let from_zero = ScanInputs { h0: None, ..*inp };
    let from_chain = ScanInputs {
        h0: Some(bufs.0),
        ..*inp
    };
    Ok(vec![
        fwd_launch(K, &from_zero, &ScanOutputs::default(), dims, segments, bufs)?,
        dims.chain(segments, bufs, inp.a, inp.h0, false)?,
        fwd_launch(K, &from_chain, out, dims, segments, (0, 0))?,
    ])
}

/// The forward with a barrier removed (cu/tests/scan_broken.cu), for the test that proves the
/// emulation catches races.
pub fn selective_scan_fwd_broken(
    inp: &ScanInputs,
    out: &ScanOutputs,
    dims: ScanDims,
) -> Result<Launch> {
    fwd_launch("selective_scan_fwd_broken_f32", inp, out, dims, 1, (0, 0))
}

/// One forward launch; `(seg_map, dt_sum)` non-null makes it the map pass.
fn fwd_launch(
    kernel: &'static str,
    inp: &ScanInputs,
    out: &ScanOutputs,
    dims: ScanDims,
    segments: usize,
    (seg_map, dt_sum): (DevicePtr, DevicePtr),
) -> Result<Launch> {
    let config = dims.check(kernel, segments)?;
    let args = inp
        .push(KernelArgs::new())
        .ptr(opt(inp.h0))
        .ptr(out.y)
        .ptr(opt(out.last_state))
        .ptr(opt(out.chunk_states))
        .ptr(seg_map)
        .ptr(dt_sum);
    Ok(Launch {
        kernel,
        config,
        args: dims.tail(args, kernel, segments, inp.delta_softplus)?,
    })
}

/// The gradients of a scan's inputs, added into, over handles `X`: tensors in `ssm::ops::scan`
/// (its `ScanGrads`), mutable host slices in its CPU kernels, device addresses here
/// ([`ScanGrads`]). Options follow the inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanGradsOf<X> {
    pub du: X,
    pub ddelta: X,
    pub da: X,
    pub db: X,
    pub dc: X,
    pub dd_skip: Option<X>,
    pub dz: Option<X>,
    pub ddelta_bias: Option<X>,
    pub dh0: Option<X>,
}

/// Gradient buffers of the backward, as device addresses.
pub type ScanGrads = ScanGradsOf<DevicePtr>;

impl<X> ScanGradsOf<X> {
    /// One gradient per input of `inp`, from `f`: an option present where its input is.
    pub fn try_like<Y, E>(
        inp: ScanInputsOf<Y>,
        f: impl FnMut(Y) -> std::result::Result<X, E>,
    ) -> std::result::Result<Self, E> {
        let g = inp.try_map(f)?;
        Ok(ScanGradsOf {
            du: g.u,
            ddelta: g.delta,
            da: g.a,
            db: g.b,
            dc: g.c,
            dd_skip: g.d_skip,
            dz: g.z,
            ddelta_bias: g.delta_bias,
            dh0: g.h0,
        })
    }

    /// Every gradient through `f`, in field order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<ScanGradsOf<Y>, E> {
        Ok(ScanGradsOf {
            du: f(self.du)?,
            ddelta: f(self.ddelta)?,
            da: f(self.da)?,
            db: f(self.db)?,
            dc: f(self.dc)?,
            dd_skip: self.dd_skip.map(&mut f).transpose()?,
            dz: self.dz.map(&mut f).transpose()?,
            ddelta_bias: self.ddelta_bias.map(&mut f).transpose()?,
            dh0: self.dh0.map(&mut f).transpose()?,
        })
    }

    /// References to every gradient, for a [`try_map`](Self::try_map) that reads them.
    pub fn each_ref(&self) -> ScanGradsOf<&X> {
        ScanGradsOf {
            du: &self.du,
            ddelta: &self.ddelta,
            da: &self.da,
            db: &self.db,
            dc: &self.dc,
            dd_skip: self.dd_skip.as_ref(),
            dz: self.dz.as_ref(),
            ddelta_bias: self.ddelta_bias.as_ref(),
            dh0: self.dh0.as_ref(),
        }
    }

    /// Mutable references to every gradient, for a [`try_map`](Self::try_map) that writes them.
    pub fn each_mut(&mut self) -> ScanGradsOf<&mut X> {
        ScanGradsOf {
            du: &mut self.du,
            ddelta: &mut self.ddelta,
            da: &mut self.da,
            db: &mut self.db,
            dc: &mut self.dc,
            dd_skip: self.dd_skip.as_mut(),
            dz: self.dz.as_mut(),
            ddelta_bias: self.ddelta_bias.as_mut(),
            dh0: self.dh0.as_mut(),
        }
    }

    /// Every gradient present: du, ddelta, dA, dB, dC, then the optional ones given.
    pub fn present(self) -> Vec<X> {
        let opts = [self.dd_skip, self.dz, self.ddelta_bias, self.dh0];
        [self.du, self.ddelta, self.da, self.db, self.dc]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
}

impl<X: GradBuffer> ScanGradsOf<X> {
    /// Zero gradients shaped like the inputs and on their device, with an option present where
    /// its input is.
    pub fn zeros_like(inp: &ScanInputsOf<&X>) -> std::result::Result<Self, X::Error> {
        Self::try_like(*inp, X::zeros_like)
    }

    /// Sets every gradient to zero, keeping the buffers.
    pub fn zero_(&mut self) -> std::result::Result<(), X::Error> {
        self.each_mut().present().into_iter().try_for_each(X::zero_)
    }
}

/// The backward launches: the scan (the map pass, the reverse chain and the full pass when split),
/// then the reductions of dA, dD and d_delta_bias over the batch and the segments. `chunk_states`
/// comes from the forward, split or not; `split.workspace` holds `dims.bwd_workspace_len(segments)`
/// floats.
pub fn selective_scan_bwd(
    inp: &ScanInputs,
    chunk_states: DevicePtr,
    dy: DevicePtr,
    dlast: Option<DevicePtr>,
    grads: &ScanGrads,
    dims: ScanDims,
    split: ScanSplit,
) -> Result<Vec<Launch>> {
    const K: &str = "selective_scan_bwd_f32";
    let segments = dims.split(split.segments).1;
    let config = dims.check(K, segments)?;
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
    let rows = dims.b * segments;
    let (rd, rdn) = (rows * dims.d, rows * dims.d * dims.n);
    let ws = split.workspace;
    let (ws_da, ws_dd, ws_ddb) = (ws, ws + 4 * rdn as u64, ws + 4 * (rdn + rd) as u64);
    let bufs = dims.segment_buffers(segments, ws + 4 * (rdn + 2 * rd) as u64);
    let launch = |dlast: Option<DevicePtr>,
                  g: &ScanGrads,
                  parts: [DevicePtr; 3],
                  (seg_map, dt_sum): (DevicePtr, DevicePtr)|
     -> Result<Launch> {
        let args = inp
            .push(KernelArgs::new())
            .ptr(chunk_states)
            .ptr(dy)
            .ptr(opt(dlast))
            .ptr(g.du)
            .ptr(g.ddelta)
            .ptr(g.db)
            .ptr(g.dc)
            .ptr(opt(g.dz))
            .ptr(opt(g.dh0))
            .ptr(parts[0])
            .ptr(parts[1])
            .ptr(parts[2])
            .ptr(seg_map)
            .ptr(dt_sum);
        Ok(Launch {
            kernel: K,
            config,
            args: dims.tail(args, K, segments, inp.delta_softplus)?,
        })
    };
    let parts = [
        ws_da,
        grads.dd_skip.map_or(0, |_| ws_dd),
        grads.ddelta_bias.map_or(0, |_| ws_ddb),
    ];
    let mut launches = if segments == 1 {
        vec![launch(dlast, grads, parts, (0, 0))?]
    } else {
        vec![
            launch(None, &ScanGrads::default(), [0; 3], bufs)?,
            dims.chain(segments, bufs, inp.a, dlast, true)?,
            launch(Some(bufs.0), grads, parts, (0, 0))?,
        ]
    };
    launches.push(sum_rows_into(ws_da, rows, dims.d * dims.n, grads.da)?);
    if let Some(dd) = grads.dd_skip {
        launches.push(sum_rows_into(ws_dd, rows, dims.d, dd)?);
    }
    if let Some(ddb) = grads.ddelta_bias {
        launches.push(sum_rows_into(ws_ddb, rows, dims.d, ddb)?);
    }
    Ok(launches)
}
