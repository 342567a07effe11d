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

use super::gpu_of;
use crate::backend::cpu::elementwise::{silu, silu_grad, softplus, softplus_grad};
use crate::backend::cpu::scan::{self, ScanArgs, ScanDims, ScanGradsMut};
use crate::backend::cuda::scan as cuda_scan;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// The inputs of one scan; optional parts are `None`.
#[derive(Clone, Copy)]
pub struct ScanInputs<'a, T: Float> {
    pub u: &'a Tensor<T>,
    pub delta: &'a Tensor<T>,
    pub a: &'a Tensor<T>,
    pub b: &'a Tensor<T>,
    pub c: &'a Tensor<T>,
    pub d_skip: Option<&'a Tensor<T>>,
    pub z: Option<&'a Tensor<T>>,
    pub delta_bias: Option<&'a Tensor<T>>,
    pub delta_softplus: bool,
    pub h0: Option<&'a Tensor<T>>,
}

const OP: &str = "selective_scan";

impl<'a, T: Float> ScanInputs<'a, T> {
    /// Checks every shape and returns the sizes.
    pub fn dims(&self) -> Result<ScanDims> {
        let [b, l, d] = *self.u.dims() else {
            return Err(Error::shape(OP, "u", "[b, l, d]", self.u.dims()));
        };
        let [_, n] = *self.a.dims() else {
            return Err(Error::shape(OP, "A", format!("[{d}, n]"), self.a.dims()));
        };
        self.a.expect_dims(OP, "A", &[d, n])?;
        let g = match *self.b.dims() {
            [bb, lb, g, nb] if bb == b && lb == l && nb == n && g > 0 && d % g == 0 => g,
            _ => {
                return Err(Error::shape(
                    OP,
                    "B",
                    format!("[{b}, {l}, g, {n}] with g dividing {d}"),
                    self.b.dims(),
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
        self.delta.expect_dims(OP, "delta", &[b, l, d])?;
        self.c.expect_dims(OP, "C", &[b, l, g, n])?;
        for (what, t) in [("D", self.d_skip), ("delta_bias", self.delta_bias)] {
            if let Some(t) = t {
                t.expect_dims(OP, what, &[d])?;
            }
        }
        if let Some(z) = self.z {
            z.expect_dims(OP, "z", &[b, l, d])?;
        }
        if let Some(h0) = self.h0 {
            h0.expect_dims(OP, "initial state", &[b, d, n])?;
        }
        Ok(ScanDims { b, l, d, n, g })
    }

    /// Every input tensor present, for device checks.
    fn all(&self) -> Vec<&'a Tensor<T>> {
        let opts = [self.d_skip, self.z, self.delta_bias, self.h0];
        [self.u, self.delta, self.a, self.b, self.c]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }

    fn args(&self) -> Result<ScanArgs<'a, T>> {
        let opt = |t: Option<&'a Tensor<T>>| t.map(|t| t.host()).transpose();
        Ok(ScanArgs {
            u: self.u.host()?,
            delta: self.delta.host()?,
            a: self.a.host()?,
            b: self.b.host()?,
            c: self.c.host()?,
            d_skip: opt(self.d_skip)?,
            z: opt(self.z)?,
            delta_bias: opt(self.delta_bias)?,
            delta_softplus: self.delta_softplus,
            h0: opt(self.h0)?,
        })
    }
}

/// What a forward produces: y (b, l, d), the last state (b, d, n) and, when asked for, the states
/// at chunk starts that the backward recomputes from. Reused across calls to avoid allocation.
#[derive(Clone, Debug, Default)]
pub struct ScanOutput<T: Float> {
    pub y: Tensor<T>,
    pub last_state: Tensor<T>,
    pub chunk_states: Tensor<T>,
}

/// Gradients of every input, accumulated into; options follow the inputs.
#[derive(Clone, Debug)]
pub struct ScanGrads<T: Float> {
    pub du: Tensor<T>,
    pub ddelta: Tensor<T>,
    pub da: Tensor<T>,
    pub db: Tensor<T>,
    pub dc: Tensor<T>,
    pub dd_skip: Option<Tensor<T>>,
    pub dz: Option<Tensor<T>>,
    pub ddelta_bias: Option<Tensor<T>>,
    pub dh0: Option<Tensor<T>>,
}

impl<T: Float> ScanGrads<T> {
    /// Zero gradients shaped like the inputs and on their device, with an option present where
    /// its input is.
    pub fn zeros_like(inp: &ScanInputs<T>) -> Result<Self> {
        let z = |t: &Tensor<T>| Tensor::zeros(t.shape().clone(), t.device());
        let opt = |t: Option<&Tensor<T>>| t.map(z).transpose();
        Ok(ScanGrads {
            du: z(inp.u)?,
            ddelta: z(inp.delta)?,
            da: z(inp.a)?,
            db: z(inp.b)?,
            dc: z(inp.c)?,
            dd_skip: opt(inp.d_skip)?,
            dz: opt(inp.z)?,
            ddelta_bias: opt(inp.delta_bias)?,
            dh0: opt(inp.h0)?,
        })
    }
}

impl<T: Float> ScanGrads<T> {
    /// Sets every gradient to zero, keeping the buffers.
    pub fn zero_(&mut self) -> Result<()> {
        for t in [
            &mut self.du,
            &mut self.ddelta,
            &mut self.da,
            &mut self.db,
            &mut self.dc,
        ] {
            t.zero_()?;
        }
        for t in [
            &mut self.dd_skip,
            &mut self.dz,
            &mut self.ddelta_bias,
            &mut self.dh0,
        ]
        .into_iter()
        .flatten()
        {
            t.zero_()?;
        }
        Ok(())
    }

    /// Every gradient buffer present, for device checks.
    fn all(&self) -> Vec<&Tensor<T>> {
        let opts = [&self.dd_skip, &self.dz, &self.ddelta_bias, &self.dh0];
        [&self.du, &self.ddelta, &self.da, &self.db, &self.dc]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
}

/// Runs the scan; with `save_for_backward` the chunk-start states are kept in `out`.
pub fn selective_scan_fwd<T: Float>(
    inp: &ScanInputs<T>,
    out: &mut ScanOutput<T>,
    save_for_backward: bool,
) -> Result<()> {
    let dims = inp.dims()?;
    let device = inp.u.device();
    out.y.reset_output([dims.b, dims.l, dims.d], device)?;
    out.last_state
        .reset_output([dims.b, dims.d, dims.n], device)?;
    if let Some(g) = gpu_of(OP, inp.u, &inp.all())? {
        return cuda_scan::fwd(&g, inp, dims, out, save_for_backward);
    }
    let args = inp.args()?;
    let saved = if save_for_backward {
        out.chunk_states
            .reset_output([dims.b, dims.chunks(), dims.n, dims.d], device)?;
        Some(out.chunk_states.host_mut()?)
    } else {
        None
    };
    scan::scan_fwd(
        &args,
        dims,
        out.y.host_mut()?,
        Some(out.last_state.host_mut()?),
        saved,
    );
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
    let dims = inp.dims()?;
    dy.expect_dims(BWD, "dy", &[dims.b, dims.l, dims.d])?;
    if let Some(dl) = dlast {
        dl.expect_dims(BWD, "dlast", &[dims.b, dims.d, dims.n])?;
    }
    check_grads(inp, grads)?;
    let mut others = inp.all();
    others.extend([&out.chunk_states, dy]);
    others.extend(dlast);
    others.extend(grads.all());
    if let Some(g) = gpu_of(BWD, inp.u, &others)? {
        return cuda_scan::bwd(&g, inp, dims, &out.chunk_states, dy, dlast, grads);
    }
    let args = inp.args()?;
    out.chunk_states.expect_dims(
        BWD,
        "saved chunk states",
        &[dims.b, dims.chunks(), dims.n, dims.d],
    )?;
    let g = ScanGradsMut {
        du: grads.du.host_mut()?,
        ddelta: grads.ddelta.host_mut()?,
        da: grads.da.host_mut()?,
        db: grads.db.host_mut()?,
        dc: grads.dc.host_mut()?,
        dd_skip: opt_host_mut(&mut grads.dd_skip)?,
        dz: opt_host_mut(&mut grads.dz)?,
        ddelta_bias: opt_host_mut(&mut grads.ddelta_bias)?,
        dh0: opt_host_mut(&mut grads.dh0)?,
    };
    let dlast = dlast.map(|t| t.host()).transpose()?;
    scan::scan_bwd(&args, dims, out.chunk_states.host()?, dy.host()?, dlast, g);
    Ok(())
}

fn opt_host_mut<T: Float>(t: &mut Option<Tensor<T>>) -> Result<Option<&mut [T]>> {
    t.as_mut().map(|t| t.host_mut()).transpose()
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
    for (what, grad, input) in pairs {
        match (grad, input) {
            (Some(gt), Some(it)) => gt.expect_dims(BWD, what, it.dims())?,
            (Some(_), None) => {
                return Err(Error::shape(
                    BWD,
                    what,
                    "no gradient buffer for an absent input",
                    &[],
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The plain sequential reference: one channel at a time, every state kept, library `exp`.
/// Returns y (b, l, d) and the last state (b, d, n).
pub fn selective_scan_ref<T: Float>(inp: &ScanInputs<T>) -> Result<(Tensor<T>, Tensor<T>)> {
    let dims = inp.dims()?;
    let a = inp.args()?;
    let ScanDims { b, l, d, n, g } = dims;
    let mut y = vec![T::zero(); b * l * d];
    let mut last = vec![T::zero(); b * d * n];
    for bi in 0..b {
        for ch in 0..d {
            let gi = ch / (d / g);
            let mut h: Vec<T> = (0..n)
                .map(|s| a.h0.map_or(T::zero(), |h0| h0[(bi * d + ch) * n + s]))
                .collect();
            for t in 0..l {
                let i = (bi * l + t) * d + ch;
                let dt = ref_dt(&a, i, ch);
                let mut acc = a.d_skip.map_or(T::zero(), |ds| ds[ch] * a.u[i]);
                for (s, hs) in h.iter_mut().enumerate() {
                    let bc = ((bi * l + t) * g + gi) * n + s;
                    *hs = (dt * a.a[ch * n + s]).exp() * *hs + dt * a.b[bc] * a.u[i];
                    acc += a.c[bc] * *hs;
                }
                y[i] = a.z.map_or(acc, |z| acc * silu(z[i]));
            }
            last[(bi * d + ch) * n..(bi * d + ch + 1) * n].copy_from_slice(&h);
        }
    }
    Ok((
        Tensor::from_vec([b, l, d], y)?,
        Tensor::from_vec([b, d, n], last)?,
    ))
}

fn ref_dt<T: Float>(a: &ScanArgs<T>, i: usize, ch: usize) -> T {
    let x = a.delta[i] + a.delta_bias.map_or(T::zero(), |bb| bb[ch]);
    if a.delta_softplus { softplus(x) } else { x }
}

/// The reference backward: keeps h for every step of one channel, then runs the reverse
/// recurrence ∂L/∂h_{t-1} = exp(dt_t A) ∘ (∂L/∂h_t) and reads off every gradient.
pub fn selective_scan_ref_bwd<T: Float>(
    inp: &ScanInputs<T>,
    dy: &Tensor<T>,
    dlast: Option<&Tensor<T>>,
) -> Result<ScanGrads<T>> {
    let dims = inp.dims()?;
    let a = inp.args()?;
    let ScanDims { b, l, d, n, g } = dims;
    dy.expect_dims("selective_scan_ref_bwd", "dy", &[b, l, d])?;
    let dy = dy.host()?;
    let dlast = dlast.map(|t| t.host()).transpose()?;
    let mut gr = ScanGrads::zeros_like(inp)?;
    let mut hs = vec![T::zero(); (l + 1) * n];
    for bi in 0..b {
        for ch in 0..d {
            let gi = ch / (d / g);
            let bc = |t: usize, s: usize| ((bi * l + t) * g + gi) * n + s;
            for s in 0..n {
                hs[s] = a.h0.map_or(T::zero(), |h0| h0[(bi * d + ch) * n + s]);
            }
            for t in 0..l {
                let i = (bi * l + t) * d + ch;
                let dt = ref_dt(&a, i, ch);
                for s in 0..n {
                    hs[(t + 1) * n + s] =
                        (dt * a.a[ch * n + s]).exp() * hs[t * n + s] + dt * a.b[bc(t, s)] * a.u[i];
                }
            }
            let mut dh: Vec<T> = (0..n)
                .map(|s| dlast.map_or(T::zero(), |dl| dl[(bi * d + ch) * n + s]))
                .collect();
            for t in (0..l).rev() {
                let i = (bi * l + t) * d + ch;
                let raw = a.delta[i] + a.delta_bias.map_or(T::zero(), |bb| bb[ch]);
                let dt = ref_dt(&a, i, ch);
                let u = a.u[i];
                let mut dyp = dy[i];
                if let Some(z) = a.z {
                    let mut ypre = a.d_skip.map_or(T::zero(), |ds| ds[ch] * u);
                    for s in 0..n {
                        ypre += a.c[bc(t, s)] * hs[(t + 1) * n + s];
                    }
                    if let Some(dz) = gr.dz.as_mut() {
                        dz.host_mut()?[i] += dyp * ypre * silu_grad(z[i]);
                    }
                    dyp *= silu(z[i]);
                }
                let mut du = T::zero();
                if let (Some(ds), Some(dd)) = (a.d_skip, gr.dd_skip.as_mut()) {
                    dd.host_mut()?[ch] += dyp * u;
                    du += dyp * ds[ch];
                }
                let mut ddt = T::zero();
                for s in 0..n {
                    let decay = (dt * a.a[ch * n + s]).exp();
                    let (h_prev, h_t) = (hs[t * n + s], hs[(t + 1) * n + s]);
                    gr.dc.host_mut()?[bc(t, s)] += dyp * h_t;
                    let gv = dh[s] + a.c[bc(t, s)] * dyp;
                    ddt += gv * (a.a[ch * n + s] * decay * h_prev + a.b[bc(t, s)] * u);
                    gr.da.host_mut()?[ch * n + s] += gv * dt * decay * h_prev;
                    gr.db.host_mut()?[bc(t, s)] += gv * dt * u;
                    du += gv * dt * a.b[bc(t, s)];
                    dh[s] = gv * decay;
                }
                let dx = if a.delta_softplus {
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
