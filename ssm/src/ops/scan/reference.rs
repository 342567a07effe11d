//! The plain reference of the selective scan, forward and backward: one channel at a time with
//! every state kept, its own softplus and SiLU, library `exp` and `ln_1p` (see `crate::ops` for
//! what every reference promises).

use ssm_kernels::scan::ScanInputsOf;

use super::{ScanGrads, ScanInputs, scan_dims};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

pub(crate) fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

pub(crate) fn silu<T: Float>(x: T) -> T {
    x * sigmoid(x)
}

pub(crate) fn silu_grad<T: Float>(x: T) -> T {
    sigmoid(x) * (T::one() + x * (T::one() - sigmoid(x)))
}

/// ln(1 + eˣ), and x itself above 20, as PyTorch's `F.softplus`.
pub(crate) fn softplus<T: Float>(x: T) -> T {
    if x > T::from_f64(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

pub(crate) fn softplus_grad<T: Float>(x: T) -> T {
    if x > T::from_f64(20.0) {
        T::one()
    } else {
        sigmoid(x)
    }
}

/// The values of a scan's inputs, copied to the host.
type Host<T> = ScanInputsOf<Vec<T>>;

/// The plain sequential reference: one channel at a time, every state kept, library `exp`.
/// Returns y (b, l, d) and the last state (b, d, n).
pub fn selective_scan_ref<T: Float>(inp: &ScanInputs<T>) -> Result<(Tensor<T>, Tensor<T>)> {
    let dims = scan_dims(inp)?;
    let v = inp.try_map(Tensor::to_host_vec)?;
    let (b, l, d, n, g) = (dims.b, dims.l, dims.d, dims.n, dims.g);
    let mut y = vec![T::zero(); b * l * d];
    let mut last = vec![T::zero(); b * d * n];
    for bi in 0..b {
        for ch in 0..d {
            let gi = ch / (d / g);
            let mut h: Vec<T> = (0..n)
                .map(|s| {
                    v.h0.as_deref()
                        .map_or(T::zero(), |h0| h0[(bi * d + ch) * n + s])
                })
                .collect();
            for t in 0..l {
                let i = (bi * l + t) * d + ch;
                let dt = ref_dt(&v, i, ch);
                let mut acc = v.d_skip.as_deref().map_or(T::zero(), |ds| ds[ch] * v.u[i]);
                for (s, hs) in h.iter_mut().enumerate() {
                    let bc = ((bi * l + t) * g + gi) * n + s;
                    *hs = (dt * v.a[ch * n + s]).exp() * *hs + dt * v.b[bc] * v.u[i];
                    acc += v.c[bc] * *hs;
                }
                y[i] = v.z.as_deref().map_or(acc, |z| acc * silu(z[i]));
            }
            last[(bi * d + ch) * n..(bi * d + ch + 1) * n].copy_from_slice(&h);
        }
    }
    Ok((
        Tensor::from_vec([b, l, d], y)?,
        Tensor::from_vec([b, d, n], last)?,
    ))
}

fn ref_dt<T: Float>(v: &Host<T>, i: usize, ch: usize) -> T {
    let x = v.delta[i] + v.delta_bias.as_deref().map_or(T::zero(), |bb| bb[ch]);
    if v.delta_softplus { softplus(x) } else { x }
}

/// The reference backward: keeps h for every step of one channel, then runs the reverse
/// recurrence ∂L/∂h_{t-1} = exp(dt_t A) ∘ (∂L/∂h_t) and reads off every gradient.
pub fn selective_scan_ref_bwd<T: Float>(
    inp: &ScanInputs<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
) -> Result<ScanGrads<T>> {
    let dims = scan_dims(inp)?;
    let v = inp.try_map(Tensor::to_host_vec)?;
    let (b, l, d, n, g) = (dims.b, dims.l, dims.d, dims.n, dims.g);
    dy.expect_dims("selective_scan_ref_bwd", "dy", &[b, l, d])?;
    let dy = dy.to_host_vec()?;
    let dlast = dlast.map(|t| t.to_host_vec()).transpose()?;
    let zeros = |t: &Tensor<T>| Ok::<_, Error>(Tensor::zeros_cpu(t.shape().clone()));
    let mut gr = ScanGrads::try_like(*inp, zeros)?;
    let mut hs = vec![T::zero(); (l + 1) * n];
    for bi in 0..b {
        for ch in 0..d {
            let gi = ch / (d / g);
            let bc = |t: usize, s: usize| ((bi * l + t) * g + gi) * n + s;
            for s in 0..n {
                hs[s] =
                    v.h0.as_deref()
                        .map_or(T::zero(), |h0| h0[(bi * d + ch) * n + s]);
            }
            for t in 0..l {
                let i = (bi * l + t) * d + ch;
                let dt = ref_dt(&v, i, ch);
                for s in 0..n {
                    hs[(t + 1) * n + s] =
                        (dt * v.a[ch * n + s]).exp() * hs[t * n + s] + dt * v.b[bc(t, s)] * v.u[i];
                }
            }
            let mut dh: Vec<T> = (0..n)
                .map(|s| {
                    dlast
                        .as_deref()
                        .map_or(T::zero(), |dl| dl[(bi * d + ch) * n + s])
                })
                .collect();
            for t in (0..l).rev() {
                let i = (bi * l + t) * d + ch;
                let raw = v.delta[i] + v.delta_bias.as_deref().map_or(T::zero(), |bb| bb[ch]);
                let dt = ref_dt(&v, i, ch);
                let u = v.u[i];
                let mut dyp = dy[i];
                if let Some(z) = v.z.as_deref() {
                    let mut ypre = v.d_skip.as_deref().map_or(T::zero(), |ds| ds[ch] * u);
                    for s in 0..n {
                        ypre += v.c[bc(t, s)] * hs[(t + 1) * n + s];
                    }
                    if let Some(dz) = gr.dz.as_mut() {
                        dz.host_mut()?[i] += dyp * ypre * silu_grad(z[i]);
                    }
                    dyp *= silu(z[i]);
                }
                let mut du = T::zero();
                if let (Some(ds), Some(dd)) = (v.d_skip.as_deref(), gr.dd_skip.as_mut()) {
                    dd.host_mut()?[ch] += dyp * u;
                    du += dyp * ds[ch];
                }
                let mut ddt = T::zero();
                for s in 0..n {
                    let decay = (dt * v.a[ch * n + s]).exp();
                    let (h_prev, h_t) = (hs[t * n + s], hs[(t + 1) * n + s]);
                    gr.dc.host_mut()?[bc(t, s)] += dyp * h_t;
                    let gv = dh[s] + v.c[bc(t, s)] * dyp;
                    ddt += gv * (v.a[ch * n + s] * decay * h_prev + v.b[bc(t, s)] * u);
                    gr.da.host_mut()?[ch * n + s] += gv * dt * decay * h_prev;
                    gr.db.host_mut()?[bc(t, s)] += gv * dt * u;
                    du += gv * dt * v.b[bc(t, s)];
                    dh[s] = gv * decay;
                }
                let dx = if v.delta_softplus {
                    ddt * softplus_grad(raw)
                } else {
                    ddt
                };
                gr.ddelta.host_mut()?[i] += dx;
                if let Some(db) = gr.ddelta_bias.as_mut() {
                    db.host_mut()?[ch] += dx;
                }
                gr.du.host_mut()?[i] += du;
            }
            if let Some(dh0) = gr.dh0.as_mut() {
                dh0.host_mut()?[(bi * d + ch) * n..(bi * d + ch + 1) * n].copy_from_slice(&dh);
            }
        }
    }
    Ok(gr)
}
