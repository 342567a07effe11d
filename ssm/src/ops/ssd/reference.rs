//! The plain reference of the SSD scan, forward and backward: the sequential recurrence one head
//! at a time with every state kept (the semantics of mamba_ssm's `ssd_minimal_discrete` without
//! its chunking), library `exp` and `ln_1p` (see `crate::ops` for what every reference promises).

use super::{SsdDims, SsdGrads, SsdInputs, SsdInputsOf, ssd_dims};
use crate::error::{Error, Result};
use crate::ops::scan::reference::{softplus, softplus_grad};
use crate::tensor::{Float, Tensor};

/// The values of an SSD scan's inputs, copied to the host.
type Host<T> = SsdInputsOf<Vec<T>>;

/// Δ of head `hh` at flat position `i` (into dt) and dΔ/d(raw dt): bias, softplus, then the
/// limits, whose gradient is 0 where they bind (torch's `clamp`).
fn ref_dt<T: Float>(v: &Host<T>, i: usize, hh: usize) -> (T, T) {
    let raw = v.dt[i] + v.dt_bias.as_deref().map_or(T::zero(), |bb| bb[hh]);
    let (dt, grad) = if v.dt_softplus {
        (softplus(raw), softplus_grad(raw))
    } else {
        (raw, T::one())
    };
    let [lo, hi] = v.dt_limit.map(T::from_f64);
    if dt < lo {
        (lo, T::zero())
    } else if dt > hi {
        (hi, T::zero())
    } else {
        (dt, grad)
    }
}

/// Index helpers of one (batch, head) pair.
struct At {
    dims: SsdDims,
    bi: usize,
    hh: usize,
}

impl At {
    fn x(&self, t: usize, q: usize) -> usize {
        let SsdDims { l, h, p, .. } = self.dims;
        ((self.bi * l + t) * h + self.hh) * p + q
    }
    fn dt(&self, t: usize) -> usize {
        (self.bi * self.dims.l + t) * self.dims.h + self.hh
    }
    fn bc(&self, t: usize, s: usize) -> usize {
        let SsdDims { l, g, n, .. } = self.dims;
        ((self.bi * l + t) * g + self.hh / self.dims.heads_per_group()) * n + s
    }
    /// The start of this pair's (p, n) state in a (b, h, p, n) tensor.
    fn state(&self) -> usize {
        (self.bi * self.dims.h + self.hh) * self.dims.p * self.dims.n
    }
}

/// Every state h_0..h_l of one (batch, head) pair, (l + 1, p, n).
fn states<T: Float>(v: &Host<T>, at: &At) -> Vec<T> {
    let SsdDims { l, p, n, .. } = at.dims;
    let pn = p * n;
    let mut hs = vec![T::zero(); (l + 1) * pn];
    if let Some(h0) = v.h0.as_deref() {
        hs[..pn].copy_from_slice(&h0[at.state()..at.state() + pn]);
    }
    for t in 0..l {
        let (dt, _) = ref_dt(v, at.dt(t), at.hh);
        let decay = (dt * v.a[at.hh]).exp();
        for q in 0..p {
            for s in 0..n {
                let prev = hs[t * pn + q * n + s];
                hs[(t + 1) * pn + q * n + s] =
                    decay * prev + dt * v.x[at.x(t, q)] * v.b[at.bc(t, s)];
            }
        }
    }
    hs
}

/// The sequential reference: returns y (b, l, h, p) and the last state (b, h, p, n).
pub fn ssd_ref<T: Float>(inp: &SsdInputs<T>) -> Result<(Tensor<T>, Tensor<T>)> {
    let dims = ssd_dims(inp, 1)?;
    let v = inp.try_map(Tensor::to_host_vec)?;
    let SsdDims { b, l, h, p, n, .. } = dims;
    let pn = p * n;
    let mut y = vec![T::zero(); b * l * h * p];
    let mut last = vec![T::zero(); b * h * pn];
    for bi in 0..b {
        for hh in 0..h {
            let at = At { dims, bi, hh };
            let hs = states(&v, &at);
            for t in 0..l {
                for q in 0..p {
                    let mut acc = v
                        .d_skip
                        .as_deref()
                        .map_or(T::zero(), |d| d[hh] * v.x[at.x(t, q)]);
                    for s in 0..n {
                        acc += hs[(t + 1) * pn + q * n + s] * v.c[at.bc(t, s)];
                    }
                    y[at.x(t, q)] = acc;
                }
            }
            last[at.state()..at.state() + pn].copy_from_slice(&hs[l * pn..]);
        }
    }
    Ok((
        Tensor::from_vec([b, l, h, p], y)?,
        Tensor::from_vec([b, h, p, n], last)?,
    ))
}

/// The reference backward: every state of a head kept, then the reverse recurrence
/// ∂L/∂h_{t-1} = exp(Δ_t A) · ∂L/∂h_t, reading off every gradient on the way.
pub fn ssd_ref_bwd<T: Float>(
    inp: &SsdInputs<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
) -> Result<SsdGrads<T>> {
    let dims = ssd_dims(inp, 1)?;
    let v = inp.try_map(Tensor::to_host_vec)?;
    let SsdDims { b, l, h, p, n, .. } = dims;
    let pn = p * n;
    dy.expect_dims("ssd_ref_bwd", "dy", &[b, l, h, p])?;
    let dy = dy.to_host_vec()?;
    let dlast = dlast.map(|t| t.to_host_vec()).transpose()?;
    let zeros = |t: &Tensor<T>| Ok::<_, Error>(Tensor::zeros_cpu(t.shape().clone()));
    let mut gr = SsdGrads::try_like(*inp, zeros)?;
    for bi in 0..b {
        for hh in 0..h {
            let at = At { dims, bi, hh };
            let hs = states(&v, &at);
            let a = v.a[hh];
            let mut dh: Vec<T> = match dlast.as_deref() {
                Some(dl) => dl[at.state()..at.state() + pn].to_vec(),
                None => vec![T::zero(); pn],
            };
            for t in (0..l).rev() {
                let (dt, dt_grad) = ref_dt(&v, at.dt(t), hh);
                let decay = (dt * a).exp();
                let mut ddt = T::zero();
                let mut da = T::zero();
                for q in 0..p {
                    let xi = at.x(t, q);
                    let (xv, g) = (v.x[xi], dy[xi]);
                    let mut dx = T::zero();
                    if let (Some(d), Some(dd)) = (v.d_skip.as_deref(), gr.dd_skip.as_mut()) {
                        dd.host_mut()?[hh] += g * xv;
                        dx += g * d[hh];
                    }
                    for s in 0..n {
                        let k = q * n + s;
                        let (h_prev, h_t) = (hs[t * pn + k], hs[(t + 1) * pn + k]);
                        let bc = at.bc(t, s);
                        gr.dc.host_mut()?[bc] += g * h_t;
                        // ∂L/∂h_t: from y_t and from h_{t+1}.
                        let gh = dh[k] + g * v.c[bc];
                        ddt += gh * (a * decay * h_prev + xv * v.b[bc]);
                        da += gh * dt * decay * h_prev;
                        gr.db.host_mut()?[bc] += gh * dt * xv;
                        dx += gh * dt * v.b[bc];
                        dh[k] = gh * decay;
                    }
                    gr.dx.host_mut()?[xi] += dx;
                }
                gr.da.host_mut()?[hh] += da;
                let draw = ddt * dt_grad;
                gr.ddt.host_mut()?[at.dt(t)] += draw;
                if let Some(db) = gr.ddt_bias.as_mut() {
                    db.host_mut()?[hh] += draw;
                }
            }
            if let Some(dh0) = gr.dh0.as_mut() {
                dh0.host_mut()?[at.state()..at.state() + pn].copy_from_slice(&dh);
            }
        }
    }
    Ok(gr)
}
