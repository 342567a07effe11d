//! The selective scan of Mamba (S6; Gu & Dao 2023, Algorithm 2), with the semantics of
//! `selective_scan_ref` in state-spaces/mamba:
//!
//! ```text
//! dt  = delta + delta_bias;  dt = softplus(dt) if delta_softplus
//! h_t = exp(dt_t · A) ∘ h_{t-1} + dt_t · B_t · u_t          (h_0 = 0 or the given initial state)
//! y_t = C_t · h_t + D · u_t;   y_t = y_t · silu(z_t) if z is given
//! ```
//!
//! Layouts are token-major like every activation of the engine (state-spaces' kernels use
//! channel-major (b, d, l); the math is identical):
//! u, delta, z, y: (b, l, d); A: (d, n); B, C: (b, l, g, n), channel c uses group c / (d / g);
//! D, delta_bias: (d,); initial and last state: (b, d, n).

mod cpu;
mod cuda;
pub mod reference;

use super::{check_grad_buffers, gpu_of};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
pub use reference::{selective_scan_ref, selective_scan_ref_bwd};
/// The largest state size the CUDA kernels of the scan take (the CPU takes any).
pub use ssm_kernels::scan::MAX_STATE as CUDA_MAX_STATE;
use ssm_kernels::scan::{ScanDims, ScanGradsOf, ScanInputsOf};

/// The inputs of one scan, as tensors; optional parts are `None`. The field list is the kernels'
/// [`ScanInputsOf`], shared with the CPU kernels and the launches.
pub type ScanInputs<'a, T> = ScanInputsOf<&'a Tensor<T>>;

const OP: &str = "selective_scan";

/// Checks every shape of a scan's inputs and returns the sizes.
pub fn scan_dims<T: Float>(inp: &ScanInputs<T>) -> Result<ScanDims> {
    let [b, l, d] = *inp.u.dims() else {
        return Err(Error::shape(OP, "u", "[b, l, d]", inp.u.dims()));
    };
    let [_, n] = *inp.a.dims() else {
        return Err(Error::shape(OP, "A", format!("[{d}, n]"), inp.a.dims()));
    };
    inp.a.expect_dims(OP, "A", &[d, n])?;
    let g = match *inp.b.dims() {
        [bb, lb, g, nb] if bb == b && lb == l && nb == n && g > 0 && d % g == 0 => g,
        _ => {
            return Err(Error::shape(
                OP,
                "B",
                format!("[{b}, {l}, g, {n}] with g dividing {d}"),
                inp.b.dims(),
            ));
        }
    };
    if l == 0 || b == 0 || d == 0 || n == 0 {
        return Err(Error::shape(
            OP,
            "u and A",
            "b, l, d, n >= 1",
            &[b, l, d, n],
        ));
    }
    inp.delta.expect_dims(OP, "delta", &[b, l, d])?;
    inp.c.expect_dims(OP, "C", &[b, l, g, n])?;
    for (what, t) in [("D", inp.d_skip), ("delta_bias", inp.delta_bias)] {
        if let Some(t) = t {
            t.expect_dims(OP, what, &[d])?;
        }
    }
    if let Some(z) = inp.z {
        z.expect_dims(OP, "z", &[b, l, d])?;
    }
    if let Some(h0) = inp.h0 {
        h0.expect_dims(OP, "initial state", &[b, d, n])?;
    }
    Ok(ScanDims { b, l, d, n, g })
}

/// What a forward produces: y (b, l, d), the last state (b, d, n) and, when asked for, the states
/// at chunk starts that the backward recomputes from, in the layout of the device that ran it
/// (`chunk_layout`). Reused across calls to avoid allocation.
#[derive(Clone, Debug, Default)]
pub struct ScanOutput<T: Float> {
    pub y: Tensor<T>,
    pub last_state: Tensor<T>,
    pub chunk_states: Tensor<T>,
    pub chunk_layout: ChunkLayout,
}

/// How `ScanOutput::chunk_states` is laid out. Each backend's chunking is its own (the CPU cuts
/// time into chunks of its tile length, the kernels into theirs), so a backward only accepts the
/// states of a forward of its own kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkLayout {
    /// No states kept (a forward without `save_for_backward`, or none yet).
    #[default]
    None,
    /// The CPU's (b, chunks, n, d): channels innermost, as its tiles run over channels.
    Cpu,
    /// The CUDA kernels' (b, chunks, d, n): one thread's state innermost.
    Cuda,
}

/// Gradients of every input, accumulated into; options follow the inputs. The field list is the
/// kernels' [`ScanGradsOf`], which also gives `zeros_like(&inputs)` and `zero_()`.
pub type ScanGrads<T> = ScanGradsOf<Tensor<T>>;

/// Runs the scan; with `save_for_backward` the chunk-start states are kept in `out`.
pub fn selective_scan_fwd<T: Float>(
    inp: &ScanInputs<T>,
    out: &mut ScanOutput<T>,
    save_for_backward: bool,
) -> Result<()> {
    let dims = scan_dims(inp)?;
    let device = inp.u.device();
    out.y.reset_output([dims.b, dims.l, dims.d], device)?;
    out.last_state
        .reset_output([dims.b, dims.d, dims.n], device)?;
    out.chunk_layout = ChunkLayout::None;
    if let Some(g) = gpu_of(OP, inp.u, &inp.present())? {
        cuda::fwd(&g, inp, dims, out, save_for_backward)?;
        if save_for_backward {
            out.chunk_layout = ChunkLayout::Cuda;
        }
        return Ok(());
    }
    let args = inp.try_map(Tensor::host)?;
    let saved = if save_for_backward {
        out.chunk_states
            .reset_output([dims.b, cpu::chunks(dims), dims.n, dims.d], device)?;
        Some(out.chunk_states.host_mut()?)
    } else {
        None
    };
    cpu::scan_fwd(
        &args,
        dims,
        out.y.host_mut()?,
        Some(out.last_state.host_mut()?),
        saved,
    );
    if save_for_backward {
        out.chunk_layout = ChunkLayout::Cpu;
    }
    Ok(())
}

/// Accumulates the gradients of every input from dy (b, l, d) and optionally the gradient of the
/// last state (b, d, n). `out` must come from `selective_scan_fwd` with `save_for_backward`.
pub fn selective_scan_bwd<T: Float>(
    inp: &ScanInputs<T>,
    out: &ScanOutput<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
    grads: &mut ScanGrads<T>,
) -> Result<()> {
    const BWD: &str = "selective_scan_bwd";
    let dims = scan_dims(inp)?;
    dy.expect_dims(BWD, "dy", &[dims.b, dims.l, dims.d])?;
    if let Some(dl) = dlast {
        dl.expect_dims(BWD, "dlast", &[dims.b, dims.d, dims.n])?;
    }
    check_grads(inp, grads)?;
    let mut others = inp.present();
    others.extend([&out.chunk_states, dy]);
    others.extend(dlast);
    others.extend(grads.each_ref().present());
    let gpu = gpu_of(BWD, inp.u, &others)?;
    let want = match gpu {
        Some(_) => ChunkLayout::Cuda,
        None => ChunkLayout::Cpu,
    };
    if out.chunk_layout != want {
        return Err(Error::shape(
            BWD,
            format!("saved chunk states ({:?} layout)", out.chunk_layout),
            format!("those of a forward with save_for_backward on this device ({want:?} layout)"),
            out.chunk_states.dims(),
        ));
    }
    if let Some(g) = gpu {
        return cuda::bwd(&g, inp, dims, &out.chunk_states, dy, dlast, grads);
    }
    let args = inp.try_map(Tensor::host)?;
    out.chunk_states.expect_dims(
        BWD,
        "saved chunk states",
        &[dims.b, cpu::chunks(dims), dims.n, dims.d],
    )?;
    let g = grads.each_mut().try_map(Tensor::host_mut)?;
    let dlast = dlast.map(|t| t.host()).transpose()?;
    cpu::scan_bwd(&args, dims, out.chunk_states.host()?, dy.host()?, dlast, g);
    Ok(())
}

fn check_grads<T: Float>(inp: &ScanInputs<T>, g: &ScanGrads<T>) -> Result<()> {
    const BWD: &str = "selective_scan_bwd";
    let pairs = [
        ("du", Some(&g.du), Some(inp.u)),
        ("ddelta", Some(&g.ddelta), Some(inp.delta)),
        ("dA", Some(&g.da), Some(inp.a)),
        ("dB", Some(&g.db), Some(inp.b)),
        ("dC", Some(&g.dc), Some(inp.c)),
        ("dD", g.dd_skip.as_ref(), inp.d_skip),
        ("dz", g.dz.as_ref(), inp.z),
        ("ddelta_bias", g.ddelta_bias.as_ref(), inp.delta_bias),
        ("dh0", g.dh0.as_ref(), inp.h0),
    ];
    check_grad_buffers(BWD, &pairs)
}
