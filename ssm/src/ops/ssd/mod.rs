//! The SSD scan of Mamba-2 (state space duality; Dao & Gu 2024, arXiv 2405.21060), with the
//! semantics of mamba_ssm's `mamba_chunk_scan_combined` (and transformers' `torch_forward`):
//!
//! ```text
//! Δ_t  = clamp(softplus(dt_t + dt_bias), lo, hi)        (softplus if dt_softplus; [lo, hi] = dt_limit)
//! h_t  = exp(Δ_t · A) · h_{t-1} + Δ_t · x_t ⊗ B_t       per head: a (p, n) state, A a scalar
//! y_t  = h_t · C_t + D · x_t                            (h_0 = 0 or the given initial state)
//! ```
//!
//! The clamp applies always, as in transformers' torch path: with `dt_softplus` off, the default
//! limits [`NO_DT_LIMIT`] = [0, ∞) clamp a negative Δ to 0 (mamba_ssm's kernels skip the clamp at
//! the default; the Mamba-2 block always takes the softplus, where the two agree).
//!
//! Layouts (token-major like every activation): x, y (b, l, h, p); dt (b, l, h); A, D, dt_bias
//! (h); B, C (b, l, g, n), head `hh` reads group `hh / (h / g)`; initial and last state
//! (b, h, p, n). The gate z of the Mamba-2 block is applied by its gated norm, not here.
//!
//! The fast paths compute the chunked (matmul) form: within a chunk of `chunk` positions, the
//! masked product (C Bᵀ ∘ exp(segsum(Δ A))) · (Δ x); across chunks, the states at chunk ends
//! passed on with their decay. The states at chunk starts are kept for the backward,
//! (b, chunks, h, p, n) on every device, so memory stays linear in l.

mod cpu;
mod cuda;
pub mod reference;

use super::{check_grad_buffers, gpu_of};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
pub use reference::{ssd_ref, ssd_ref_bwd};
pub use ssm_kernels::ssd::{
    MAX_CHUNK as CUDA_MAX_CHUNK, NO_DT_LIMIT, SsdDims, SsdGradsOf, SsdInputsOf,
};

/// The inputs of one SSD scan, as tensors; optional parts are `None`.
pub type SsdInputs<'a, T> = SsdInputsOf<&'a Tensor<T>>;

/// Gradients of every input, accumulated into; options follow the inputs.
pub type SsdGrads<T> = SsdGradsOf<Tensor<T>>;

/// The longest chunk the op takes: the intra-chunk products are chunk² per head.
pub const MAX_CHUNK: usize = 1 << 12;

const OP: &str = "ssd";

/// Checks every shape of an SSD scan's inputs and the chunk length; returns the sizes.
pub fn ssd_dims<T: Float>(inp: &SsdInputs<T>, chunk: usize) -> Result<SsdDims> {
    let [b, l, h, p] = *inp.x.dims() else {
        return Err(Error::shape(OP, "x", "[b, l, h, p]", inp.x.dims()));
    };
    if b == 0 || l == 0 || h == 0 || p == 0 {
        return Err(Error::shape(OP, "x", "b, l, h, p >= 1", inp.x.dims()));
    }
    let (g, n) = match *inp.b.dims() {
        [bb, lb, g, n] if bb == b && lb == l && g > 0 && n > 0 && h % g == 0 => (g, n),
        _ => {
            return Err(Error::shape(
                OP,
                "B",
                format!("[{b}, {l}, g, n] with g dividing {h} and n >= 1"),
                inp.b.dims(),
            ));
        }
    };
    if chunk == 0 || chunk > MAX_CHUNK {
        return Err(Error::config(
            "chunk_size",
            format!("must be in 1..={MAX_CHUNK}, got {chunk}"),
        ));
    }
    let [lo, hi] = inp.dt_limit;
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(Error::config(
            "time_step_limit",
            format!("needs lo <= hi, got [{lo}, {hi}]"),
        ));
    }
    inp.dt.expect_dims(OP, "dt", &[b, l, h])?;
    inp.a.expect_dims(OP, "A", &[h])?;
    inp.c.expect_dims(OP, "C", &[b, l, g, n])?;
    for (what, t) in [("D", inp.d_skip), ("dt_bias", inp.dt_bias)] {
        if let Some(t) = t {
            t.expect_dims(OP, what, &[h])?;
        }
    }
    if let Some(h0) = inp.h0 {
        h0.expect_dims(OP, "initial state", &[b, h, p, n])?;
    }
    Ok(SsdDims {
        b,
        l,
        h,
        p,
        g,
        n,
        chunk,
    })
}

/// What a forward produces: y (b, l, h, p), the last state (b, h, p, n) and, when asked for, the
/// states at chunk starts (b, chunks, h, p, n) with the sizes they were computed for. Reused
/// across calls to avoid allocation.
#[derive(Clone, Debug, Default)]
pub struct SsdOutput<T: Float> {
    pub y: Tensor<T>,
    pub last_state: Tensor<T>,
    pub chunk_states: Tensor<T>,
    pub saved: Option<SsdDims>,
}

/// Runs the scan in chunks of `chunk` positions; with `save_for_backward` the chunk-start states
/// are kept in `out`.
pub fn ssd_fwd<T: Float>(
    inp: &SsdInputs<T>,
    chunk: usize,
    out: &mut SsdOutput<T>,
    save_for_backward: bool,
) -> Result<()> {
    let dims = ssd_dims(inp, chunk)?;
    let device = inp.x.device();
    out.y
        .reset_output([dims.b, dims.l, dims.h, dims.p], device)?;
    out.last_state
        .reset_output([dims.b, dims.h, dims.p, dims.n], device)?;
    out.saved = None;
    if save_for_backward {
        out.chunk_states
            .reset_output([dims.b, dims.chunks(), dims.h, dims.p, dims.n], device)?;
    }
    if let Some(g) = gpu_of(OP, inp.x, &inp.present())? {
        cuda::fwd(&g, inp, dims, out, save_for_backward)?;
    } else {
        let args = inp.try_map(Tensor::host)?;
        let saved = if save_for_backward {
            Some(out.chunk_states.host_mut()?)
        } else {
            None
        };
        cpu::ssd_fwd(
            &args,
            dims,
            out.y.host_mut()?,
            out.last_state.host_mut()?,
            saved,
        );
    }
    if save_for_backward {
        out.saved = Some(dims);
    }
    Ok(())
}

/// Accumulates the gradients of every input from dy (b, l, h, p) and optionally the gradient of
/// the last state (b, h, p, n). `out` must come from `ssd_fwd` on these inputs with
/// `save_for_backward`.
pub fn ssd_bwd<T: Float>(
    inp: &SsdInputs<T>,
    out: &SsdOutput<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
    grads: &mut SsdGrads<T>,
) -> Result<()> {
    const BWD: &str = "ssd_bwd";
    let Some(saved) = out.saved else {
        return Err(Error::shape(
            BWD,
            "saved chunk states",
            "those of a forward with save_for_backward",
            out.chunk_states.dims(),
        ));
    };
    let dims = ssd_dims(inp, saved.chunk)?;
    if dims != saved {
        return Err(Error::shape(
            BWD,
            "inputs",
            format!("the sizes of the forward, {saved:?}"),
            inp.x.dims(),
        ));
    }
    let (b, l, h, p, n) = (dims.b, dims.l, dims.h, dims.p, dims.n);
    dy.expect_dims(BWD, "dy", &[b, l, h, p])?;
    if let Some(dl) = dlast {
        dl.expect_dims(BWD, "dlast", &[b, h, p, n])?;
    }
    check_grads(inp, grads)?;
    let mut others = inp.present();
    others.extend([&out.chunk_states, dy]);
    others.extend(dlast);
    let grad_refs: Vec<&Tensor<T>> = [&grads.dx, &grads.ddt, &grads.da, &grads.db, &grads.dc]
        .into_iter()
        .chain(grads.dd_skip.as_ref())
        .chain(grads.ddt_bias.as_ref())
        .chain(grads.dh0.as_ref())
        .collect();
    others.extend(grad_refs);
    out.chunk_states
        .expect_dims(BWD, "saved chunk states", &[b, dims.chunks(), h, p, n])?;
    if let Some(g) = gpu_of(BWD, inp.x, &others)? {
        return cuda::bwd(&g, inp, dims, &out.chunk_states, dy, dlast, grads);
    }
    let args = inp.try_map(Tensor::host)?;
    let dlast = dlast.map(|t| t.host()).transpose()?;
    let g = grads.each_mut().try_map(Tensor::host_mut)?;
    cpu::ssd_bwd(&args, dims, out.chunk_states.host()?, dy.host()?, dlast, g);
    Ok(())
}

fn check_grads<T: Float>(inp: &SsdInputs<T>, g: &SsdGrads<T>) -> Result<()> {
    const BWD: &str = "ssd_bwd";
    let pairs = [
        ("dx", Some(&g.dx), Some(inp.x)),
        ("ddt", Some(&g.ddt), Some(inp.dt)),
        ("dA", Some(&g.da), Some(inp.a)),
        ("dB", Some(&g.db), Some(inp.b)),
        ("dC", Some(&g.dc), Some(inp.c)),
        ("dD", g.dd_skip.as_ref(), inp.d_skip),
        ("ddt_bias", g.ddt_bias.as_ref(), inp.dt_bias),
        ("dh0", g.dh0.as_ref(), inp.h0),
    ];
    check_grad_buffers(BWD, &pairs)
}
