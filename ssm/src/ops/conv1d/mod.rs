//! Depthwise causal conv1d over time (Mamba's short convolution), token-major.

mod cpu;
mod cuda;
pub mod reference;

use super::{gpu_of, same_dims};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
use ssm_kernels::conv1d::ConvDims;

fn check<T: Float>(
    op: &'static str,
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    state: Option<&Tensor<T>>,
) -> Result<ConvDims> {
    let [b, l, d] = *x.dims() else {
        return Err(Error::shape(op, "x", "[b, l, d]", x.dims()));
    };
    let [dw, k] = *w.dims() else {
        return Err(Error::shape(op, "weight", format!("[{d}, k]"), w.dims()));
    };
    if dw != d || k == 0 {
        return Err(Error::shape(
            op,
            "weight",
            format!("[{d}, k] with k >= 1"),
            w.dims(),
        ));
    }
    if let Some(bias) = bias {
        bias.expect_dims(op, "bias", &[d])?;
    }
    if let Some(s) = state {
        s.expect_dims(op, "state", &[b, k - 1, d])?;
    }
    Ok(ConvDims { b, l, d, k })
}

/// y (b, l, d) = causal depthwise conv of x (b, l, d) with w (d, k) plus bias (d); `state`
/// (b, k-1, d) supplies the inputs before step 0 (zeros when absent). `y` is resized.
pub fn causal_conv1d_fwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    state: Option<&Tensor<T>>,
    y: &mut Tensor<T>,
) -> Result<()> {
    let dims = check("causal_conv1d_fwd", x, w, bias, state)?;
    y.reset_output(x.shape().clone(), x.device())?;
    let others: Vec<&Tensor<T>> = [Some(w), bias, state].into_iter().flatten().collect();
    if let Some(g) = gpu_of("causal_conv1d_fwd", x, &others)? {
        return cuda::fwd(&g, (x, w), bias, state, y, dims);
    }
    let bias = bias.map(|b| b.host()).transpose()?;
    let state = state.map(|s| s.host()).transpose()?;
    cpu::conv1d_fwd(x.host()?, w.host()?, bias, state, y.host_mut()?, dims);
    Ok(())
}

/// Accumulates dx (b, l, d), dw (d, k) and dbias (d, if given); the state gets no gradient.
pub fn causal_conv1d_bwd<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    state: Option<&Tensor<T>>,
    dy: &Tensor<T>,
    dx: &mut Tensor<T>,
    dw: &mut Tensor<T>,
    dbias: Option<&mut Tensor<T>>,
) -> Result<()> {
    const OP: &str = "causal_conv1d_bwd";
    let dims = check(OP, x, w, None, state)?;
    same_dims(OP, "dy", dy, x.dims())?;
    same_dims(OP, "dx", dx, x.dims())?;
    same_dims(OP, "dw", dw, w.dims())?;
    if let Some(db) = &dbias {
        same_dims(OP, "dbias", db, &[dims.d])?;
    }
    let mut others: Vec<&Tensor<T>> = vec![w, dy, dx, dw];
    others.extend(state);
    others.extend(dbias.as_deref());
    if let Some(g) = gpu_of(OP, x, &others)? {
        return cuda::bwd(&g, (x, w), state, dy, (dx, dw), dbias, dims);
    }
    let state = state.map(|s| s.host()).transpose()?;
    let dbias = match dbias {
        Some(db) => Some(db.host_mut()?),
        None => None,
    };
    cpu::conv1d_bwd(
        x.host()?,
        w.host()?,
        state,
        dy.host()?,
        dx.host_mut()?,
        dw.host_mut()?,
        dbias,
        dims,
    );
    Ok(())
}

/// Advances a convolution state (b, k-1, d) past x (b, l, d): afterwards it holds the last k-1
/// inputs of the sequence state ++ x, ready for the next call.
pub fn causal_conv1d_next_state<T: Float>(x: &Tensor<T>, state: &mut Tensor<T>) -> Result<()> {
    const OP: &str = "causal_conv1d_next_state";
    let [b, l, d] = *x.dims() else {
        return Err(Error::shape(OP, "x", "[b, l, d]", x.dims()));
    };
    let [bs, km1, ds] = *state.dims() else {
        return Err(Error::shape(
            OP,
            "state",
            format!("[{b}, k-1, {d}]"),
            state.dims(),
        ));
    };
    if bs != b || ds != d {
        return Err(Error::shape(
            OP,
            "state",
            format!("[{b}, k-1, {d}]"),
            state.dims(),
        ));
    }
    if let Some(g) = gpu_of(OP, x, &[state])? {
        return cuda::next_state(&g, x, state, [b, l, d, km1]);
    }
    let x = x.host()?;
    let st = state.host_mut()?;
    for bi in 0..b {
        let old = st[bi * km1 * d..(bi + 1) * km1 * d].to_vec();
        for j in 0..km1 {
            // Time of row j relative to the start of x: l - (k-1) + j.
            let t = l as isize - km1 as isize + j as isize;
            let src = if t >= 0 {
                &x[(bi * l + t as usize) * d..(bi * l + t as usize + 1) * d]
            } else {
                let o = (km1 as isize + t) as usize;
                &old[o * d..(o + 1) * d]
            };
            st[(bi * km1 + j) * d..(bi * km1 + j + 1) * d].copy_from_slice(src);
        }
    }
    Ok(())
}
