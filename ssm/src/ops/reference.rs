//! Plain references for RMSNorm, the causal depthwise conv1d, the linear layer and the selective
//! scan: the textbook formula of each forward and its backward, one output element at a time,
//! written apart from the fast paths and importing nothing from them (library `exp` and `ln_1p`
//! throughout). Parity tests hold the CPU kernels and the CUDA launches (emulated or real) to
//! these. Each takes tensors on any device and returns new tensors on the CPU; gradients are
//! returned fresh, not accumulated.

use super::scan::{ScanGrads, ScanInputs};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

fn rows_of<T: Float>(op: &'static str, x: &Tensor<T>) -> Result<(usize, usize)> {
    match x.dims() {
        [.., d] if *d > 0 => Ok((x.numel() / d, *d)),
        _ => Err(Error::shape(op, "x", "[..., d] with d >= 1", x.dims())),
    }
}

/// 1 / sqrt(mean(row²) + eps).
fn rstd<T: Float>(row: &[T], eps: f64) -> T {
    let ms = row.iter().fold(T::zero(), |s, &v| s + v * v) / T::from_usize(row.len());
    T::one() / (ms + T::from_f64(eps)).sqrt()
}

/// y = x / sqrt(mean(x²) + eps) · w over the last dimension (d); w (d).
pub fn rmsnorm_ref<T: Float>(x: &Tensor<T>, w: &Tensor<T>, eps: f64) -> Result<Tensor<T>> {
    let (_, d) = rows_of("rmsnorm_ref", x)?;
    w.expect_dims("rmsnorm_ref", "weight", &[d])?;
    let (xs, ws) = (x.to_host_vec()?, w.to_host_vec()?);
    let mut y = Vec::with_capacity(xs.len());
    for row in xs.chunks_exact(d) {
        let r = rstd(row, eps);
        y.extend(row.iter().zip(&ws).map(|(&v, &wj)| v * r * wj));
    }
    Tensor::from_vec(x.dims(), y)
}

/// (dx, dw) of [`rmsnorm_ref`] given dy: with r = rstd of the row and y_j = x_j r,
/// dw_j = Σ_rows dy_j y_j and dx_i = r (w_i dy_i - y_i · mean_j(w_j dy_j y_j)).
pub fn rmsnorm_ref_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    eps: f64,
    dy: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>)> {
    let (_, d) = rows_of("rmsnorm_ref_bwd", x)?;
    w.expect_dims("rmsnorm_ref_bwd", "weight", &[d])?;
    dy.expect_dims("rmsnorm_ref_bwd", "dy", x.dims())?;
    let (xs, ws, dys) = (x.to_host_vec()?, w.to_host_vec()?, dy.to_host_vec()?);
    let mut dx = Vec::with_capacity(xs.len());
    let mut dw = vec![T::zero(); d];
    for (row, g) in xs.chunks_exact(d).zip(dys.chunks_exact(d)) {
        let r = rstd(row, eps);
        let mut mean = T::zero();
        for j in 0..d {
            dw[j] += g[j] * row[j] * r;
            mean += ws[j] * g[j] * row[j] * r;
        }
        mean = mean / T::from_usize(d);
        dx.extend((0..d).map(|i| r * (ws[i] * g[i] - row[i] * r * mean)));
    }
    Ok((Tensor::from_vec(x.dims(), dx)?, Tensor::from_vec([d], dw)?))
}

/// The sizes (b, l, d, k) of a conv1d call, checked.
fn conv_dims<T: Float>(
    op: &'static str,
    x: &Tensor<T>,
    w: &Tensor<T>,
    state: Option<&Tensor<T>>,
) -> Result<[usize; 4]> {
    let [b, l, d] = *x.dims() else {
        return Err(Error::shape(op, "x", "[b, l, d]", x.dims()));
    };
    let k = match *w.dims() {
        [wd, k] if wd == d && k > 0 => k,
        _ => return Err(Error::shape(op, "weight", format!("[{d}, k]"), w.dims())),
    };
    if let Some(s) = state {
        s.expect_dims(op, "state", &[b, k - 1, d])?;
    }
    Ok([b, l, d, k])
}

/// The input of channel c at time t of sequence bi, t counted from -(k-1): the state before 0
/// (zero without one), x after.
fn conv_input<T: Float>(
    x: &[T],
    state: Option<&[T]>,
    [_, l, d, k]: [usize; 4],
    bi: usize,
    t: isize,
    c: usize,
) -> T {
    if t >= 0 {
        x[(bi * l + t as usize) * d + c]
    } else {
        let row = (k as isize - 1 + t) as usize;
        state.map_or(T::zero(), |s| s[(bi * (k - 1) + row) * d + c])
    }
}

/// y[b, t, c] = bias[c] + Σ_j w[c, j] · x[b, t - (k-1) + j, c] for x (b, l, d), w (d, k),
/// bias (d), the inputs before t = 0 from `state` (b, k-1, d) or zero.
pub fn causal_conv1d_ref<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    state: Option<&Tensor<T>>,
) -> Result<Tensor<T>> {
    let dims @ [b, l, d, k] = conv_dims("causal_conv1d_ref", x, w, state)?;
    let (xs, ws) = (x.to_host_vec()?, w.to_host_vec()?);
    let bias = bias.map(|t| t.to_host_vec()).transpose()?;
    let state = state.map(|t| t.to_host_vec()).transpose()?;
    let mut y = vec![T::zero(); b * l * d];
    for bi in 0..b {
        for t in 0..l {
            for c in 0..d {
                let mut acc = bias.as_ref().map_or(T::zero(), |bs| bs[c]);
                for j in 0..k {
                    let s = t as isize - (k as isize - 1) + j as isize;
                    acc += ws[c * k + j] * conv_input(&xs, state.as_deref(), dims, bi, s, c);
                }
                y[(bi * l + t) * d + c] = acc;
            }
        }
    }
    Tensor::from_vec([b, l, d], y)
}

/// (dx, dw, dbias) of [`causal_conv1d_ref`] given dy (b, l, d): each product w[c, j] · input
/// sends dy to both factors; the state gets no gradient.
pub fn causal_conv1d_ref_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    state: Option<&Tensor<T>>,
    dy: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
    let dims @ [b, l, d, k] = conv_dims("causal_conv1d_ref_bwd", x, w, state)?;
    dy.expect_dims("causal_conv1d_ref_bwd", "dy", &[b, l, d])?;
    let (xs, ws, g) = (x.to_host_vec()?, w.to_host_vec()?, dy.to_host_vec()?);
    let state = state.map(|t| t.to_host_vec()).transpose()?;
    let (mut dx, mut dw, mut db) = (
        vec![T::zero(); b * l * d],
        vec![T::zero(); d * k],
        vec![T::zero(); d],
    );
    for bi in 0..b {
        for t in 0..l {
            for c in 0..d {
                let gy = g[(bi * l + t) * d + c];
                db[c] += gy;
                for j in 0..k {
                    let s = t as isize - (k as isize - 1) + j as isize;
                    dw[c * k + j] += gy * conv_input(&xs, state.as_deref(), dims, bi, s, c);
                    if s >= 0 {
                        dx[(bi * l + s as usize) * d + c] += gy * ws[c * k + j];
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec([b, l, d], dx)?,
        Tensor::from_vec([d, k], dw)?,
        Tensor::from_vec([d], db)?,
    ))
}

/// The sizes (m, k, n) of a linear call: x (..., k) as m rows, w (n, k).
fn linear_dims<T: Float>(op: &'static str, x: &Tensor<T>, w: &Tensor<T>) -> Result<[usize; 3]> {
    let (m, k) = rows_of(op, x)?;
    match *w.dims() {
        [n, wk] if wk == k => Ok([m, k, n]),
        _ => Err(Error::shape(op, "w", format!("[n, {k}]"), w.dims())),
    }
}

/// y (..., n) = x (..., k) · wᵀ + bias, w (n, k) as in PyTorch, bias (n).
pub fn linear_ref<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
) -> Result<Tensor<T>> {
    let [m, k, n] = linear_dims("linear_ref", x, w)?;
    let (xs, ws) = (x.to_host_vec()?, w.to_host_vec()?);
    let bias = bias.map(|t| t.to_host_vec()).transpose()?;
    let mut y = vec![T::zero(); m * n];
    for i in 0..m {
        for o in 0..n {
            let mut acc = bias.as_ref().map_or(T::zero(), |bs| bs[o]);
            for j in 0..k {
                acc += xs[i * k + j] * ws[o * k + j];
            }
            y[i * n + o] = acc;
        }
    }
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Tensor::from_vec(dims, y)
}

/// (dx, dw, dbias) of [`linear_ref`] given dy (..., n): dx = dy · w, dw = dyᵀ · x, dbias = Σ dy.
pub fn linear_ref_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    dy: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
    let [m, k, n] = linear_dims("linear_ref_bwd", x, w)?;
    if dy.numel() != m * n || dy.dims().last() != Some(&n) {
        return Err(Error::shape(
            "linear_ref_bwd",
            "dy",
            format!("[..., {n}]"),
            dy.dims(),
        ));
    }
    let (xs, ws, g) = (x.to_host_vec()?, w.to_host_vec()?, dy.to_host_vec()?);
    let (mut dx, mut dw, mut db) = (
        vec![T::zero(); m * k],
        vec![T::zero(); n * k],
        vec![T::zero(); n],
    );
    for i in 0..m {
        for o in 0..n {
            let gy = g[i * n + o];
            db[o] += gy;
            for j in 0..k {
                dx[i * k + j] += gy * ws[o * k + j];
                dw[o * k + j] += gy * xs[i * k + j];
            }
        }
    }
    Ok((
        Tensor::from_vec(x.dims(), dx)?,
        Tensor::from_vec([n, k], dw)?,
        Tensor::from_vec([n], db)?,
    ))
}

fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

fn silu<T: Float>(x: T) -> T {
    x * sigmoid(x)
}

fn silu_grad<T: Float>(x: T) -> T {
    sigmoid(x) * (T::one() + x * (T::one() - sigmoid(x)))
}

/// ln(1 + eˣ), and x itself above 20, as PyTorch's `F.softplus`.
fn softplus<T: Float>(x: T) -> T {
    if x > T::from_f64(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn softplus_grad<T: Float>(x: T) -> T {
    if x > T::from_f64(20.0) {
        T::one()
    } else {
        sigmoid(x)
    }
}

/// The values of a scan's inputs, copied to the host.
struct Host<T> {
    u: Vec<T>,
    delta: Vec<T>,
    a: Vec<T>,
    b: Vec<T>,
    c: Vec<T>,
    d_skip: Option<Vec<T>>,
    z: Option<Vec<T>>,
    delta_bias: Option<Vec<T>>,
    delta_softplus: bool,
    h0: Option<Vec<T>>,
}

fn host<T: Float>(inp: &ScanInputs<T>) -> Result<Host<T>> {
    let opt = |t: Option<&Tensor<T>>| t.map(|t| t.to_host_vec()).transpose();
    Ok(Host {
        u: inp.u.to_host_vec()?,
        delta: inp.delta.to_host_vec()?,
        a: inp.a.to_host_vec()?,
        b: inp.b.to_host_vec()?,
        c: inp.c.to_host_vec()?,
        d_skip: opt(inp.d_skip)?,
        z: opt(inp.z)?,
        delta_bias: opt(inp.delta_bias)?,
        delta_softplus: inp.delta_softplus,
        h0: opt(inp.h0)?,
    })
}

/// The plain sequential reference: one channel at a time, every state kept, library `exp`.
/// Returns y (b, l, d) and the last state (b, d, n).
pub fn selective_scan_ref<T: Float>(inp: &ScanInputs<T>) -> Result<(Tensor<T>, Tensor<T>)> {
    let dims = inp.dims()?;
    let v = host(inp)?;
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
    let dims = inp.dims()?;
    let v = host(inp)?;
    let (b, l, d, n, g) = (dims.b, dims.l, dims.d, dims.n, dims.g);
    dy.expect_dims("selective_scan_ref_bwd", "dy", &[b, l, d])?;
    let dy = dy.to_host_vec()?;
    let dlast = dlast.map(|t| t.to_host_vec()).transpose()?;
    let z = |t: &Tensor<T>| Tensor::zeros_cpu(t.shape().clone());
    let mut gr = ScanGrads {
        du: z(inp.u),
        ddelta: z(inp.delta),
        da: z(inp.a),
        db: z(inp.b),
        dc: z(inp.c),
        dd_skip: inp.d_skip.map(z),
        dz: inp.z.map(z),
        ddelta_bias: inp.delta_bias.map(z),
        dh0: inp.h0.map(z),
    };
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
