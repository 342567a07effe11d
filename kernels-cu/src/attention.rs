//! Launches of cu/attention.cu: causal attention with grouped-query heads, tiled with an online
//! softmax, in the layouts of `ssm::ops::attention`: q, o (b, lq, h, hd); k, v (b, lk, hkv, hd)
//! with lk >= lq, query i at position i + lk - lq; lse (b, h, lq).

use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, to_i32};
use crate::{Error, GradBuffer, Result};

/// The largest head dimension the kernels take.
pub const MAX_HEAD_DIM: usize = 128;
const THREADS: u32 = 128;
/// Query (or key) rows per block.
const ROWS: usize = 16;

/// Sizes of one call: batch, query and key lengths, query and kv heads, head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub b: usize,
    pub lq: usize,
    pub lk: usize,
    pub h: usize,
    pub hkv: usize,
    pub hd: usize,
}

impl AttnDims {
    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.h / self.hkv
    }

    /// The first query that sees key `j` (query i sits at position i + lk - lq).
    pub fn first_query(&self, j: usize) -> usize {
        j.saturating_sub(self.lk - self.lq)
    }

    /// How many of the keys `keys` query `i` sees.
    #[inline(always)]
    pub fn visible(&self, i: usize, keys: &std::ops::Range<usize>) -> usize {
        (i + self.lk - self.lq + 1)
            .saturating_sub(keys.start)
            .min(keys.len())
    }

    /// Floats of workspace the backward needs: D = rowsum(dO ∘ O), (b, h, lq).
    pub fn bwd_workspace_len(&self) -> usize {
        self.b * self.h * self.lq
    }

    fn check(&self, kernel: &'static str) -> Result<()> {
        let AttnDims {
            b,
            lq,
            lk,
            h,
            hkv,
            hd,
        } = *self;
        if b == 0
            || lq == 0
            || lk < lq
            || h == 0
            || hkv == 0
            || h % hkv != 0
            || hd == 0
            || hd > MAX_HEAD_DIM
        {
            return Err(Error::Unsupported {
                kernel,
                reason: format!(
                    "needs lk >= lq >= 1, hkv dividing h and 1 <= hd <= {MAX_HEAD_DIM}, got {self:?}"
                ),
            });
        }
        if b > 65535 || h > 65535 {
            return Err(Error::Unsupported {
                kernel,
                reason: format!("b and h must fit the grid's 65535, got {self:?}"),
            });
        }
        to_i32(kernel, "b * lk * h * hd", b * lk * h * hd).map(|_| ())
    }

    fn push(&self, args: KernelArgs, scale: f32) -> KernelArgs {
        args.i32(self.lq as i32)
            .i32(self.lk as i32)
            .i32(self.h as i32)
            .i32(self.hkv as i32)
            .i32(self.hd as i32)
            .f32(scale)
    }
}

/// The gradients of q, k and v, added into, over handles `X`: tensors in `ssm::ops::attention`
/// (its `AttentionGrads`), mutable host slices in its CPU kernels, device addresses here
/// ([`AttnGrads`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnGradsOf<X> {
    pub dq: X,
    pub dk: X,
    pub dv: X,
}

/// Gradient buffers of the backward, as device addresses.
pub type AttnGrads = AttnGradsOf<DevicePtr>;

impl<X> AttnGradsOf<X> {
    /// Every gradient through `f`, in field order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<AttnGradsOf<Y>, E> {
        Ok(AttnGradsOf {
            dq: f(self.dq)?,
            dk: f(self.dk)?,
            dv: f(self.dv)?,
        })
    }

    /// References to every gradient, for a [`try_map`](Self::try_map) that reads them.
    pub fn each_ref(&self) -> AttnGradsOf<&X> {
        AttnGradsOf {
            dq: &self.dq,
            dk: &self.dk,
            dv: &self.dv,
        }
    }

    /// Mutable references to every gradient, for a [`try_map`](Self::try_map) that writes them.
    pub fn each_mut(&mut self) -> AttnGradsOf<&mut X> {
        AttnGradsOf {
            dq: &mut self.dq,
            dk: &mut self.dk,
            dv: &mut self.dv,
        }
    }
}

impl<X: GradBuffer> AttnGradsOf<X> {
    /// Zero gradients shaped like q, k and v and on their device.
    pub fn zeros_like(q: &X, k: &X, v: &X) -> std::result::Result<Self, X::Error> {
        Ok(AttnGradsOf {
            dq: q.zeros_like()?,
            dk: k.zeros_like()?,
            dv: v.zeros_like()?,
        })
    }
}

fn rows_grid(rows: usize, heads: usize, b: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS) as u32, heads as u32, b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// o and lse from q, k, v; `scale` is usually 1/sqrt(hd).
pub fn attention_fwd(
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    o: DevicePtr,
    lse: DevicePtr,
    dims: AttnDims,
    scale: f32,
) -> Result<Launch> {
    fwd_launch("attention_fwd_f32", [q, k, v, o, lse], dims, scale)
}

/// The forward that reads tile columns past hd which it never wrote (cu/tests/attention_broken.cu),
/// for the test that proves the emulation catches reads of unwritten shared memory. Arguments as
/// [`attention_fwd`].
pub fn attention_fwd_broken(
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    o: DevicePtr,
    lse: DevicePtr,
    dims: AttnDims,
    scale: f32,
) -> Result<Launch> {
    fwd_launch("attention_fwd_broken_f32", [q, k, v, o, lse], dims, scale)
}

fn fwd_launch(
    kernel: &'static str,
    ptrs: [DevicePtr; 5],
    dims: AttnDims,
    scale: f32,
) -> Result<Launch> {
    dims.check(kernel)?;
    let args = ptrs.into_iter().fold(KernelArgs::new(), KernelArgs::ptr);
    Ok(Launch {
        kernel,
        config: rows_grid(dims.lq, dims.h, dims.b),
        args: dims.push(args, scale),
    })
}

/// Accumulates `grads` from dout, given the forward's o and lse; `workspace` holds
/// `dims.bwd_workspace_len()` floats. Three launches: D, then dk/dv per key block, then dq per
/// query block.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    o: DevicePtr,
    lse: DevicePtr,
    dout: DevicePtr,
    grads: &AttnGrads,
    workspace: DevicePtr,
    dims: AttnDims,
    scale: f32,
) -> Result<Vec<Launch>> {
    const PREP: &str = "attention_bwd_prep_f32";
    dims.check(PREP)?;
    let AttnDims {
        b,
        lq,
        lk,
        h,
        hkv,
        hd,
    } = dims;
    let warps = b * lq * h;
    let prep = Launch {
        kernel: PREP,
        config: LaunchConfig {
            grid_dim: (warps.div_ceil(8).clamp(1, 132 * 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        },
        args: KernelArgs::new()
            .ptr(o)
            .ptr(dout)
            .ptr(workspace)
            .i32(b as i32)
            .i32(lq as i32)
            .i32(h as i32)
            .i32(hd as i32),
    };
    let common = || {
        KernelArgs::new()
            .ptr(q)
            .ptr(k)
            .ptr(v)
            .ptr(dout)
            .ptr(lse)
            .ptr(workspace)
    };
    let dkdv = Launch {
        kernel: "attention_bwd_dkdv_f32",
        config: rows_grid(lk, hkv, b),
        args: dims.push(common().ptr(grads.dk).ptr(grads.dv), scale),
    };
    let dq = Launch {
        kernel: "attention_bwd_dq_f32",
        config: rows_grid(lq, h, b),
        args: dims.push(common().ptr(grads.dq), scale),
    };
    Ok(vec![prep, dkdv, dq])
}
