//! The SSD scan of Mamba-2 (state space duality; Dao & Gu 2024, arXiv 2405.21060, §6), in the
//! layouts of `ssm::ops::ssd`: x, y (b, l, h, p); dt (b, l, h); A, D, dt_bias (h); B, C
//! (b, l, g, n), head `hh` uses group `hh / (h / g)`; initial and last state (b, h, p, n); the
//! states at chunk starts kept for the backward (b, chunks, h, p, n), `chunks = ceil(l / chunk)`.
//! Optional inputs and outputs are `None`.
//!
//! The structs of inputs and gradients over a handle `X` are shared by `ssm`'s op API (tensors),
//! its CPU kernels (host slices) and the launches (device addresses).

use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, grid_1d, to_i32, to_i64};
use crate::reduce::sum_rows_into;
use crate::{Error, GradBuffer, Result};

/// Sizes of one SSD scan: batch, length, heads, head dim, groups of B/C, state size, and the
/// chunk length of the chunked form (the granularity of the saved states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdDims {
    pub b: usize,
    pub l: usize,
    pub h: usize,
    pub p: usize,
    pub g: usize,
    pub n: usize,
    pub chunk: usize,
}

impl SsdDims {
    pub fn chunks(&self) -> usize {
        self.l.div_ceil(self.chunk)
    }

    /// Elements of the saved chunk-start states, (b, chunks, h, p, n).
    pub fn chunk_states_len(&self) -> usize {
        self.b * self.chunks() * self.h * self.p * self.n
    }

    /// Heads per group of B and C.
    pub fn heads_per_group(&self) -> usize {
        self.h / self.g
    }
}

/// The inputs of one SSD scan, over handles `X`. `dt_limit` clamps Δ after the bias and the
/// softplus (transformers' `time_step_limit`; `[0, ∞)` is no limit).
#[derive(Clone, Copy, Debug)]
pub struct SsdInputsOf<X> {
    pub x: X,
    pub dt: X,
    pub a: X,
    pub b: X,
    pub c: X,
    pub d_skip: Option<X>,
    pub dt_bias: Option<X>,
    pub dt_softplus: bool,
    pub dt_limit: [f64; 2],
    pub h0: Option<X>,
}

/// No limit on Δ.
pub const NO_DT_LIMIT: [f64; 2] = [0.0, f64::INFINITY];

impl<X> SsdInputsOf<X> {
    /// Every input through `f`, in field order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<SsdInputsOf<Y>, E> {
        Ok(SsdInputsOf {
            x: f(self.x)?,
            dt: f(self.dt)?,
            a: f(self.a)?,
            b: f(self.b)?,
            c: f(self.c)?,
            d_skip: self.d_skip.map(&mut f).transpose()?,
            dt_bias: self.dt_bias.map(&mut f).transpose()?,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            h0: self.h0.map(&mut f).transpose()?,
        })
    }

    /// References to every input.
    pub fn each_ref(&self) -> SsdInputsOf<&X> {
        SsdInputsOf {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d_skip: self.d_skip.as_ref(),
            dt_bias: self.dt_bias.as_ref(),
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            h0: self.h0.as_ref(),
        }
    }

    /// Every input present: x, dt, A, B, C, then the optional ones given.
    pub fn present(self) -> Vec<X> {
        let opts = [self.d_skip, self.dt_bias, self.h0];
        [self.x, self.dt, self.a, self.b, self.c]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
}

/// The gradients of an SSD scan's inputs, added into, over handles `X`; options follow the
/// inputs. `ddt` is the gradient of the raw dt, before bias, softplus and limits.
#[derive(Clone, Copy, Debug)]
pub struct SsdGradsOf<X> {
    pub dx: X,
    pub ddt: X,
    pub da: X,
    pub db: X,
    pub dc: X,
    pub dd_skip: Option<X>,
    pub ddt_bias: Option<X>,
    pub dh0: Option<X>,
}

impl<X> SsdGradsOf<X> {
    /// One gradient per input of `inp`, from `f`: an option present where its input is.
    pub fn try_like<Y, E>(
        inp: SsdInputsOf<Y>,
        f: impl FnMut(Y) -> std::result::Result<X, E>,
    ) -> std::result::Result<Self, E> {
        let g = inp.try_map(f)?;
        Ok(SsdGradsOf {
            dx: g.x,
            ddt: g.dt,
            da: g.a,
            db: g.b,
            dc: g.c,
            dd_skip: g.d_skip,
            ddt_bias: g.dt_bias,
            dh0: g.h0,
        })
    }

    /// Every gradient through `f`, in field order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<SsdGradsOf<Y>, E> {
        Ok(SsdGradsOf {
            dx: f(self.dx)?,
            ddt: f(self.ddt)?,
            da: f(self.da)?,
            db: f(self.db)?,
            dc: f(self.dc)?,
            dd_skip: self.dd_skip.map(&mut f).transpose()?,
            ddt_bias: self.ddt_bias.map(&mut f).transpose()?,
            dh0: self.dh0.map(&mut f).transpose()?,
        })
    }

    /// Mutable references to every gradient.
    pub fn each_mut(&mut self) -> SsdGradsOf<&mut X> {
        SsdGradsOf {
            dx: &mut self.dx,
            ddt: &mut self.ddt,
            da: &mut self.da,
            db: &mut self.db,
            dc: &mut self.dc,
            dd_skip: self.dd_skip.as_mut(),
            ddt_bias: self.ddt_bias.as_mut(),
            dh0: self.dh0.as_mut(),
        }
    }

    /// Every gradient present: dx, ddt, dA, dB, dC, then the optional ones given.
    pub fn present(self) -> Vec<X> {
        let opts = [self.dd_skip, self.ddt_bias, self.dh0];
        [self.dx, self.ddt, self.da, self.db, self.dc]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
}

impl<X: GradBuffer> SsdGradsOf<X> {
    /// Zero gradients shaped like the inputs and on their device.
    pub fn zeros_like(inp: &SsdInputsOf<&X>) -> std::result::Result<Self, X::Error> {
        Self::try_like(*inp, X::zeros_like)
    }

    /// Sets every gradient to zero, keeping the buffers.
    pub fn zero_(&mut self) -> std::result::Result<(), X::Error> {
        self.each_mut().present().into_iter().try_for_each(X::zero_)
    }
}

// The launches of cu/ssd.cu (its design in cu/ssd.cuh). A forward is three launches and a backward
// eight to ten, all of blocks of 256 threads on one (sequence, head, chunk) and a 64 x 64 tile, or
// grid-stride; their intermediates live in a workspace that the caller allocates. Limits: chunks
// of at most MAX_CHUNK positions; l, h p, g n, h n, p n and the chunk count fit an i32; the
// (sequence, head, chunk) blocks times their tiles fit gridDim.x (2^31 - 1), which leaves b up to
// 65535 at any l the GPU's memory holds. p and n are otherwise free (tiles of 64, contraction in
// steps of 16); beyond the limits the builders return `Error::Unsupported`.

/// The longest chunk the kernels take: one thread per position in the scan of the log-decays.
pub const MAX_CHUNK: usize = 256;
/// Threads per block of every chunk kernel (`ssd::kThreads`).
const THREADS: u32 = 256;
/// Rows and columns of the kernels' output tiles (`ssd::kTile`).
const TILE: usize = 64;
/// CUDA's limit on gridDim.x.
const MAX_BLOCKS: usize = (1 << 31) - 1;
/// Blocks of the grid-stride kernels: enough to fill a large GPU.
const STRIDE_BLOCKS: u32 = 132 * 8;

/// Device addresses of the inputs.
pub type SsdInputs = SsdInputsOf<DevicePtr>;

/// Device addresses of the gradient buffers.
pub type SsdGrads = SsdGradsOf<DevicePtr>;

/// Outputs of the forward: y (b, l, h, p), the last state (b, h, p, n) and, to keep them for the
/// backward, the states at chunk starts (b, chunks, h, p, n).
#[derive(Clone, Copy, Debug)]
pub struct SsdOutputs {
    pub y: DevicePtr,
    pub last_state: DevicePtr,
    pub chunk_states: Option<DevicePtr>,
}

fn tiles(len: usize) -> usize {
    len.div_ceil(TILE)
}

/// Where the backward keeps its intermediates in its workspace, as float offsets.
struct BwdWorkspace {
    /// What each chunk's outputs send to its start state, then the gradients at chunk ends
    /// (b, chunks, h, p, n).
    dstates: usize,
    /// Total log-decay of each chunk (b, chunks, h).
    decays: usize,
    /// The row dot products of the products (b, h, l, row slots).
    rowpart: usize,
    /// dC and dB of each head (b, l, h, n).
    dc_heads: usize,
    db_heads: usize,
    /// Per-chunk partials of dA, dD and d(dt_bias) (b, chunks, h).
    da_part: usize,
    dd_part: usize,
    ddb_part: usize,
    len: usize,
}

impl SsdDims {
    /// Floats of the f32 workspace the forward needs: the chunks' log-decays (b, chunks, h) and,
    /// unless the states are kept in `SsdOutputs::chunk_states`, room for them (b, chunks, h, p, n).
    pub fn fwd_workspace_len(&self, keep_states: bool) -> usize {
        let states = if keep_states {
            0
        } else {
            self.chunk_states_len()
        };
        self.b * self.chunks() * self.h + states
    }

    /// Floats of the f32 workspace the backward needs.
    pub fn bwd_workspace_len(&self) -> usize {
        self.bwd_workspace().len
    }

    /// Per-position dot products of the backward: per p-tile x · dXD, x · dXD_state and x · dy,
    /// per n-tile C · dC, per n-tile B · dB (`ssd::row_slots`).
    fn row_slots(&self) -> usize {
        3 * tiles(self.p) + 2 * tiles(self.n)
    }

    fn bwd_workspace(&self) -> BwdWorkspace {
        let SsdDims { b, l, h, n, .. } = *self;
        let bch = b * self.chunks() * h;
        let mut at = 0;
        let mut take = |len: usize| {
            at += len;
            at - len
        };
        let dstates = take(self.chunk_states_len());
        let decays = take(bch);
        let rowpart = take(b * h * l * self.row_slots());
        let dc_heads = take(b * l * h * n);
        let db_heads = take(b * l * h * n);
        let da_part = take(bch);
        let dd_part = take(bch);
        let ddb_part = take(bch);
        BwdWorkspace {
            dstates,
            decays,
            rowpart,
            dc_heads,
            db_heads,
            da_part,
            dd_part,
            ddb_part,
            len: at,
        }
    }

    /// Checks what the kernels take: every size at least 1, g dividing h, the chunk at most
    /// [`MAX_CHUNK`], sizes that fit the kernels' ints and grids that fit CUDA's limits; errors
    /// name `kernel`. [`ssd_fwd`] and [`ssd_bwd`] check it too; callers check it first to
    /// refuse a shape before allocating its workspace.
    pub fn check(&self, kernel: &'static str) -> Result<()> {
        let SsdDims {
            b,
            l,
            h,
            p,
            g,
            n,
            chunk,
        } = *self;
        let bad = |reason: String| Err(Error::Unsupported { kernel, reason });
        if [b, l, h, p, g, n, chunk].contains(&0) || h % g != 0 {
            return bad(format!(
                "needs b, l, h, p, g, n, chunk >= 1 with g dividing h, got {self:?}"
            ));
        }
        if chunk > MAX_CHUNK {
            return bad(format!(
                "chunk {chunk} exceeds the kernels' maximum of {MAX_CHUNK} (one thread per position)"
            ));
        }
        let ints = [
            ("l", l),
            ("h * p", h.saturating_mul(p)),
            ("g * n", g.saturating_mul(n)),
            ("h * n", h.saturating_mul(n)),
            ("p * n", p.saturating_mul(n)),
            ("chunks", self.chunks()),
        ];
        for (what, v) in ints {
            to_i32(kernel, what, v)?;
        }
        let elems = [b, l, h, p, n]
            .iter()
            .try_fold(1usize, |a, &v| a.checked_mul(v));
        to_i64(kernel, "b * l * h * p * n", elems.unwrap_or(usize::MAX))?;
        let bhc = b.saturating_mul(h).saturating_mul(self.chunks());
        let per_chunk = [
            tiles(p) * tiles(n),
            tiles(chunk.min(l)) * tiles(p).max(tiles(n)),
        ];
        if per_chunk
            .iter()
            .any(|&t| bhc.saturating_mul(t) > MAX_BLOCKS)
        {
            return bad(format!(
                "{bhc} (sequence, head, chunk) blocks times their tiles exceed the grid's {MAX_BLOCKS}"
            ));
        }
        Ok(())
    }

    /// The sizes every chunk kernel ends with, then how Δ comes from dt.
    fn tail(&self, args: KernelArgs, inp: &SsdInputs) -> KernelArgs {
        let [lo, hi] = inp.dt_limit;
        [self.l, self.h, self.p, self.g, self.n, self.chunk]
            .into_iter()
            .fold(args, |a, v| a.i32(v as i32))
            .i32(inp.dt_softplus as i32)
            .f32(lo as f32)
            .f32(hi as f32)
    }

    /// Blocks of one (sequence, head, chunk) in `tiles_per_chunk` tiles.
    fn chunk_grid(&self, tiles_per_chunk: usize, y: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                (self.b * self.h * self.chunks() * tiles_per_chunk) as u32,
                y,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Row tiles of a chunk in the products.
    fn row_tiles(&self) -> usize {
        tiles(self.chunk.min(self.l))
    }

    /// ssd_chunk_state_f32: each chunk's own end state from (x, B), or what its outputs send to
    /// its start state from (dy, C), into `out`, and the chunks' log-decays into `decays`.
    fn chunk_state(
        &self,
        inp: &SsdInputs,
        (u, v): (DevicePtr, DevicePtr),
        out: DevicePtr,
        decays: DevicePtr,
        backward: bool,
    ) -> Launch {
        let args = KernelArgs::new()
            .ptr(u)
            .ptr(v)
            .ptr(inp.dt)
            .ptr(inp.a)
            .ptr(opt(inp.dt_bias))
            .ptr(out)
            .ptr(decays)
            .i32(backward as i32);
        Launch {
            kernel: "ssd_chunk_state_f32",
            config: self.chunk_grid(tiles(self.p) * tiles(self.n), 1),
            args: self.tail(args, inp),
        }
    }

    /// ssd_state_pass_f32 over `states` with the chunks' `decays`, from `init` into `last`.
    fn state_pass(
        &self,
        states: DevicePtr,
        decays: DevicePtr,
        (init, last): (Option<DevicePtr>, Option<DevicePtr>),
        backward: bool,
    ) -> Launch {
        let pn = self.p * self.n;
        Launch {
            kernel: "ssd_state_pass_f32",
            config: grid_1d(self.b * self.h * pn, THREADS, STRIDE_BLOCKS),
            args: KernelArgs::new()
                .ptr(states)
                .ptr(decays)
                .ptr(opt(init))
                .ptr(opt(last))
                // The backward adds into dh0 and walks the chunks from the last.
                .i32(backward as i32)
                .i32(backward as i32)
                .i32(self.b as i32)
                .i32(self.chunks() as i32)
                .i32(self.h as i32)
                .i32(pn as i32),
        }
    }
}

fn opt(p: Option<DevicePtr>) -> DevicePtr {
    p.unwrap_or(0)
}

/// The forward: three launches (each chunk's own state, the pass over chunks, the outputs).
/// Every address must be that of a device buffer of its layout for `dims` (the module doc), and
/// `workspace` hold `dims.fwd_workspace_len(out.chunk_states.is_some())` floats: the launches
/// read and write exactly those ranges.
pub fn ssd_fwd(
    inp: &SsdInputs,
    out: &SsdOutputs,
    dims: SsdDims,
    workspace: DevicePtr,
) -> Result<Vec<Launch>> {
    dims.check("ssd_fwd")?;
    let decays = workspace;
    let decays_len = dims.fwd_workspace_len(true);
    let states = out
        .chunk_states
        .unwrap_or(workspace + 4 * decays_len as u64);
    let y = KernelArgs::new()
        .ptr(inp.x)
        .ptr(inp.dt)
        .ptr(inp.a)
        .ptr(inp.b)
        .ptr(inp.c)
        .ptr(opt(inp.d_skip))
        .ptr(opt(inp.dt_bias))
        .ptr(states)
        .ptr(out.y);
    Ok(vec![
        dims.chunk_state(inp, (inp.x, inp.b), states, decays, false),
        dims.state_pass(states, decays, (inp.h0, Some(out.last_state)), false),
        Launch {
            kernel: "ssd_chunk_y_f32",
            config: dims.chunk_grid(dims.row_tiles() * tiles(dims.p), 1),
            args: dims.tail(y, inp),
        },
    ])
}

/// The backward, adding into `grads`: what the outputs send to each chunk's start, the reverse
/// pass over chunks (into dh0), dx with its row dot products, each head's dB and dC with theirs,
/// ddt and the per-chunk partials, then the sums over the heads of each group (dB, dC) and over
/// sequences and chunks (dA, dD, d(dt_bias)), all in a fixed order. `chunk_states` (b, chunks, h,
/// p, n) come from the forward, dy is (b, l, h, p) and dlast (b, h, p, n); as for [`ssd_fwd`],
/// every address must be that of a buffer of its layout for `dims`, and `workspace` hold
/// `dims.bwd_workspace_len()` floats.
pub fn ssd_bwd(
    inp: &SsdInputs,
    chunk_states: DevicePtr,
    dy: DevicePtr,
    dlast: Option<DevicePtr>,
    grads: &SsdGrads,
    dims: SsdDims,
    workspace: DevicePtr,
) -> Result<Vec<Launch>> {
    const K: &str = "ssd_bwd";
    dims.check(K)?;
    let mismatch = [
        ("dD", grads.dd_skip.is_some() && inp.d_skip.is_none()),
        (
            "ddt_bias",
            grads.ddt_bias.is_some() && inp.dt_bias.is_none(),
        ),
        ("dh0", grads.dh0.is_some() && inp.h0.is_none()),
    ];
    if let Some((what, _)) = mismatch.iter().find(|(_, bad)| *bad) {
        return Err(Error::Unsupported {
            kernel: K,
            reason: format!("{what} without its input: gradient buffers must follow the inputs"),
        });
    }
    let ws = dims.bwd_workspace();
    let at = |offset: usize| workspace + 4 * offset as u64;
    let (dstates, decays, rowpart) = (at(ws.dstates), at(ws.decays), at(ws.rowpart));
    let (dc_heads, db_heads) = (at(ws.dc_heads), at(ws.db_heads));
    let parts = [at(ws.da_part), at(ws.dd_part), at(ws.ddb_part)];
    // A fresh list per launch, not a closure over a list passed by value: rustc 1.95 miscompiles
    // a closure called twice with a `KernelArgs::new()` argument (rust-lang/rust#155241).
    let products = || {
        KernelArgs::new()
            .ptr(inp.x)
            .ptr(inp.dt)
            .ptr(inp.a)
            .ptr(inp.b)
            .ptr(inp.c)
    };
    let dx = products()
        .ptr(opt(inp.d_skip))
        .ptr(opt(inp.dt_bias))
        .ptr(dstates)
        .ptr(dy)
        .ptr(grads.dx)
        .ptr(rowpart);
    let dbc = products()
        .ptr(opt(inp.dt_bias))
        .ptr(chunk_states)
        .ptr(dstates)
        .ptr(dy)
        .ptr(dc_heads)
        .ptr(db_heads)
        .ptr(rowpart);
    let ddt = KernelArgs::new()
        .ptr(inp.dt)
        .ptr(inp.a)
        .ptr(opt(inp.dt_bias))
        .ptr(chunk_states)
        .ptr(dstates)
        .ptr(rowpart)
        .ptr(grads.ddt);
    let ddt = parts.into_iter().fold(ddt, KernelArgs::ptr);
    let rows = dims.b * dims.l;
    let sum_heads = |heads: DevicePtr, out: DevicePtr| -> Result<Launch> {
        const S: &str = "ssd_sum_heads_f32";
        Ok(Launch {
            kernel: S,
            config: grid_1d(rows * dims.g * dims.n, THREADS, STRIDE_BLOCKS),
            args: KernelArgs::new()
                .ptr(heads)
                .i64(to_i64(S, "b * l", rows)?)
                .i32(dims.h as i32)
                .i32(dims.g as i32)
                .i32(dims.n as i32)
                .ptr(out),
        })
    };
    let mut launches = vec![
        dims.chunk_state(inp, (dy, inp.c), dstates, decays, true),
        dims.state_pass(dstates, decays, (dlast, grads.dh0), true),
        Launch {
            kernel: "ssd_chunk_dx_f32",
            config: dims.chunk_grid(dims.row_tiles() * tiles(dims.p), 1),
            args: dims.tail(dx, inp),
        },
        Launch {
            kernel: "ssd_chunk_dbc_f32",
            config: dims.chunk_grid(dims.row_tiles() * tiles(dims.n), 2),
            args: dims.tail(dbc, inp),
        },
        Launch {
            kernel: "ssd_chunk_ddt_f32",
            config: dims.chunk_grid(1, 1),
            args: dims.tail(ddt, inp),
        },
        sum_heads(dc_heads, grads.dc)?,
        sum_heads(db_heads, grads.db)?,
    ];
    let chunk_rows = dims.b * dims.chunks();
    let reductions = [Some(grads.da), grads.dd_skip, grads.ddt_bias];
    for (part, grad) in parts.into_iter().zip(reductions) {
        if let Some(grad) = grad {
            launches.push(sum_rows_into(part, chunk_rows, dims.h, grad)?);
        }
    }
    Ok(launches)
}
