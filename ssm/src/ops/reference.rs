//! Plain references for RMSNorm, the causal depthwise conv1d and the linear layer: the textbook
//! formula of each forward and its backward, one output element at a time, written apart from
//! the fast paths and importing nothing from them. Parity tests hold the CPU kernels and the
//! CUDA launches (emulated or real) to these. Each takes tensors on any device and returns new
//! tensors on the CPU; gradients are returned fresh, not accumulated.

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
