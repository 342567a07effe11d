//! Causal multi-head attention (Vaswani et al., 2017) with grouped-query attention (Ainslie et
//! al., 2023): per query head, `o_i = Σ_{j ≤ pos(i)} softmax_j(scale · q_i · k_j) v_j`, query head
//! `hq` reading kv head `hq / (h / hkv)`.
//!
//! Layouts, token-major like every activation: q, o: (b, lq, h, hd); k, v: (b, lk, hkv, hd) with
//! lk >= lq. The queries are the last lq positions, pos(i) = i + lk - lq, so a training forward
//! (lk = lq) and a decoding step against a KV cache (lq = 1) are the same op. lse: (b, h, lq), the
//! log-sum-exp of each query's scaled scores, is all the forward keeps for the backward beyond its
//! inputs and output; the fast path never forms an lq x lk matrix (see `cpu.rs`).

mod cpu;
mod cuda;
pub mod reference;

use super::gpu_of;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
use cpu::AttnArgs;
pub use reference::{attention_ref, attention_ref_bwd};
use ssm_kernels::attention::{AttnDims, AttnGradsOf};

/// The softmax scale of "Attention is all you need", 1/sqrt(hd): the default.
pub fn default_scale(hd: usize) -> f64 {
    1.0 / (hd as f64).sqrt()
}

/// What the forward produces: o (b, lq, h, hd), lse (b, h, lq) and the scale it used, which the
/// backward reuses. Reused across calls to avoid allocation.
#[derive(Clone, Debug, Default)]
pub struct AttentionOutput<T: Float> {
    pub o: Tensor<T>,
    pub lse: Tensor<T>,
    pub scale: f64,
}

impl<T: Float> AttentionOutput<T> {
    /// Bytes kept for the backward beyond the op's inputs and its output o: the lse, b·h·lq values.
    pub fn saved_bytes(&self) -> usize {
        self.lse.numel() * std::mem::size_of::<T>()
    }
}

/// Gradients of q, k and v, accumulated into. The field list is the kernels' [`AttnGradsOf`],
/// which also gives `zeros_like(q, k, v)`.
pub type AttentionGrads<T> = AttnGradsOf<Tensor<T>>;

/// Checks the shapes of q, k, v and returns the sizes.
fn check<T: Float>(
    op: &'static str,
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
) -> Result<AttnDims> {
    let [b, lq, h, hd] = *q.dims() else {
        return Err(Error::shape(op, "q", "[b, lq, h, hd]", q.dims()));
    };
    if lq == 0 || h == 0 || hd == 0 {
        return Err(Error::shape(
            op,
            "q",
            "[b, lq, h, hd] with lq, h, hd >= 1",
            q.dims(),
        ));
    }
    let (lk, hkv) = match *k.dims() {
        [bk, lk, hkv, hdk] if bk == b && lk >= lq && hkv > 0 && h % hkv == 0 && hdk == hd => {
            (lk, hkv)
        }
        _ => {
            return Err(Error::shape(
                op,
                "k",
                format!("[{b}, lk >= {lq}, hkv dividing {h}, {hd}]"),
                k.dims(),
            ));
        }
    };
    v.expect_dims(op, "v", k.dims())?;
    Ok(AttnDims {
        b,
        lq,
        lk,
        h,
        hkv,
        hd,
    })
}

fn resolve_scale(op: &'static str, scale: Option<f64>, hd: usize) -> Result<f64> {
    match scale {
        None => Ok(default_scale(hd)),
        Some(s) if s.is_finite() => Ok(s),
        Some(s) => Err(Error::config(
            "attention scale",
            format!("{op}: expected a finite scale, got {s}"),
        )),
    }
}

fn args<'a, T: Float>(
    q: &'a Tensor<T>,
    k: &'a Tensor<T>,
    v: &'a Tensor<T>,
    dims: AttnDims,
    scale: f64,
) -> Result<AttnArgs<'a, T>> {
    Ok(AttnArgs {
        q: q.host()?,
        k: k.host()?,
        v: v.host()?,
        dims,
        scale: T::from_f64(scale),
    })
}

/// Causal attention of q (b, lq, h, hd) over k, v (b, lk, hkv, hd), tiled with an online softmax
/// (FlashAttention-2). `scale` defaults to 1/sqrt(hd). `out.o` and `out.lse` are resized.
pub fn attention_fwd<T: Float>(
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
    scale: Option<f64>,
    out: &mut AttentionOutput<T>,
) -> Result<()> {
    const OP: &str = "attention_fwd";
    let dims = check(OP, q, k, v)?;
    out.scale = resolve_scale(OP, scale, dims.hd)?;
    out.o.reset_output(q.shape().clone(), q.device())?;
    out.lse
        .reset_output([dims.b, dims.h, dims.lq], q.device())?;
    if let Some(g) = gpu_of(OP, q, &[k, v])? {
        return cuda::fwd(&g, q, k, v, dims, out);
    }
    cpu::attention_fwd(
        &args(q, k, v, dims, out.scale)?,
        out.o.host_mut()?,
        out.lse.host_mut()?,
    );
    Ok(())
}

/// Accumulates dq, dk, dv from d_o (b, lq, h, hd); `out` must come from `attention_fwd` on the
/// same q, k, v. Recomputes the probabilities tile by tile from q, k and the saved lse.
pub fn attention_bwd<T: Float>(
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
    out: &AttentionOutput<T>,
    d_o: &Tensor<T>,
    grads: &mut AttentionGrads<T>,
) -> Result<()> {
    const OP: &str = "attention_bwd";
    let dims = check(OP, q, k, v)?;
    resolve_scale(OP, Some(out.scale), dims.hd)?;
    out.o.expect_dims(OP, "saved o", q.dims())?;
    out.lse
        .expect_dims(OP, "saved lse", &[dims.b, dims.h, dims.lq])?;
    d_o.expect_dims(OP, "d_o", q.dims())?;
    grads.dq.expect_dims(OP, "dq", q.dims())?;
    grads.dk.expect_dims(OP, "dk", k.dims())?;
    grads.dv.expect_dims(OP, "dv", v.dims())?;
    let others = [k, v, &out.o, &out.lse, d_o, &grads.dq, &grads.dk, &grads.dv];
    if let Some(g) = gpu_of(OP, q, &others)? {
        return cuda::bwd(&g, q, k, v, dims, out, d_o, grads);
    }
    let g = grads.each_mut().try_map(Tensor::host_mut)?;
    cpu::attention_bwd(
        &args(q, k, v, dims, out.scale)?,
        out.o.host()?,
        out.lse.host()?,
        d_o.host()?,
        g,
    );
    Ok(())
}

/// Bytes of the workspace `attention_bwd` allocates for these shapes in the current rayon pool,
/// besides O(block²) scratch per task: D (b, h, lq) and, when there are fewer (sequence, kv head)
/// pairs than tasks wanted, private dq buffers of at most lq · (h / hkv) · hd values per task.
pub fn attention_bwd_workspace_bytes<T: Float>(
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
) -> Result<usize> {
    let dims = check("attention_bwd_workspace_bytes", q, k, v)?;
    Ok(cpu::bwd_workspace_len(&dims) * std::mem::size_of::<T>())
}
