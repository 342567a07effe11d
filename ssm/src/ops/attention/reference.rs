//! The plain reference of causal attention, forward and backward: per head, the full (lq, lk)
//! score matrix, the causal mask, the softmax and P·V, library `exp` (see `crate::ops` for what
//! every reference promises; these read CPU tensors only).

use ssm_kernels::attention::AttnDims;

use super::{AttentionGrads, AttentionOutput, check, resolve_scale};
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// The probabilities (lq, lk) of query head `hq` of sequence `bi`, masked entries zero, and the
/// lse (lq,) of each row: the whole score matrix, library `exp`.
fn ref_probs<T: Float>(
    (q, k): (&[T], &[T]),
    dims: AttnDims,
    scale: T,
    bi: usize,
    hq: usize,
) -> (Vec<T>, Vec<T>) {
    let AttnDims {
        lq, lk, h, hkv, hd, ..
    } = dims;
    let kvh = hq / dims.group();
    let mut p = vec![T::zero(); lq * lk];
    let mut lse = vec![T::zero(); lq];
    for i in 0..lq {
        let qi = &q[((bi * lq + i) * h + hq) * hd..][..hd];
        let row = &mut p[i * lk..(i + 1) * lk];
        let seen = i + lk - lq + 1;
        for (j, s) in row[..seen].iter_mut().enumerate() {
            let kj = &k[((bi * lk + j) * hkv + kvh) * hd..][..hd];
            *s = scale * qi.iter().zip(kj).map(|(&x, &y)| x * y).sum::<T>();
        }
        let m = row[..seen]
            .iter()
            .fold(T::from_f64(f64::NEG_INFINITY), |x, &y| x.max(y));
        let mut sum = T::zero();
        for s in row[..seen].iter_mut() {
            *s = (*s - m).exp();
            sum += *s;
        }
        for s in row[..seen].iter_mut() {
            *s = *s / sum;
        }
        lse[i] = m + sum.ln();
    }
    (p, lse)
}

/// What both references start from: the checked sizes, the scale, and q, k, v on the host.
fn inputs<'a, T: Float>(
    op: &'static str,
    (q, k, v): (&'a Tensor<T>, &'a Tensor<T>, &'a Tensor<T>),
    scale: Option<f64>,
) -> Result<(AttnDims, f64, [&'a [T]; 3])> {
    let dims = check(op, q, k, v)?;
    let scale = resolve_scale(op, scale, dims.hd)?;
    Ok((dims, scale, [q.host()?, k.host()?, v.host()?]))
}

/// The plain reference: per head, the full (lq, lk) score matrix, causal mask, softmax, P·V.
pub fn attention_ref<T: Float>(
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
    scale: Option<f64>,
) -> Result<AttentionOutput<T>> {
    let (dims, scale, [qs, ks, vs]) = inputs("attention_ref", (q, k, v), scale)?;
    let sc = T::from_f64(scale);
    let AttnDims {
        b,
        lq,
        lk,
        h,
        hkv,
        hd,
    } = dims;
    let mut o = vec![T::zero(); q.numel()];
    let mut lse = vec![T::zero(); b * h * lq];
    for bi in 0..b {
        for hq in 0..h {
            let kvh = hq / dims.group();
            let (p, lse_h) = ref_probs((qs, ks), dims, sc, bi, hq);
            lse[(bi * h + hq) * lq..][..lq].copy_from_slice(&lse_h);
            for i in 0..lq {
                let oi = &mut o[((bi * lq + i) * h + hq) * hd..][..hd];
                for j in 0..lk {
                    let vj = &vs[((bi * lk + j) * hkv + kvh) * hd..][..hd];
                    for (y, &x) in oi.iter_mut().zip(vj) {
                        *y += p[i * lk + j] * x;
                    }
                }
            }
        }
    }
    Ok(AttentionOutput {
        o: Tensor::from_vec(q.shape().clone(), o)?,
        lse: Tensor::from_vec([b, h, lq], lse)?,
        scale,
    })
}

/// The reference backward, from the full probability matrix of each head:
/// dP = dO Vᵀ, dS = P ∘ (dP - rowsum(P ∘ dP)), dQ = scale·dS K, dK = scale·dSᵀ Q, dV = Pᵀ dO.
pub fn attention_ref_bwd<T: Float>(
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
    scale: Option<f64>,
    d_o: &Tensor<T>,
) -> Result<AttentionGrads<T>> {
    const OP: &str = "attention_ref_bwd";
    let (dims, scale, [qs, ks, vs]) = inputs(OP, (q, k, v), scale)?;
    d_o.expect_dims(OP, "d_o", q.dims())?;
    let sc = T::from_f64(scale);
    let d_o = d_o.host()?;
    let AttnDims {
        b,
        lq,
        lk,
        h,
        hkv,
        hd,
    } = dims;
    let mut gr = AttentionGrads::zeros_like(q, k, v)?;
    let (dq, dk, dv) = (gr.dq.host_mut()?, gr.dk.host_mut()?, gr.dv.host_mut()?);
    for bi in 0..b {
        for hq in 0..h {
            let kvh = hq / dims.group();
            let qrow = |t: usize| ((bi * lq + t) * h + hq) * hd;
            let krow = |t: usize| ((bi * lk + t) * hkv + kvh) * hd;
            let (p, _) = ref_probs((qs, ks), dims, sc, bi, hq);
            for i in 0..lq {
                let doi = &d_o[qrow(i)..qrow(i) + hd];
                let dp: Vec<T> = (0..lk)
                    .map(|j| (0..hd).map(|c| doi[c] * vs[krow(j) + c]).sum())
                    .collect();
                let pdp: T = (0..lk).map(|j| p[i * lk + j] * dp[j]).sum();
                for j in 0..lk {
                    let pij = p[i * lk + j];
                    let ds = sc * pij * (dp[j] - pdp);
                    for c in 0..hd {
                        dq[qrow(i) + c] += ds * ks[krow(j) + c];
                        dk[krow(j) + c] += ds * qs[qrow(i) + c];
                        dv[krow(j) + c] += pij * doi[c];
                    }
                }
            }
        }
    }
    Ok(gr)
}
