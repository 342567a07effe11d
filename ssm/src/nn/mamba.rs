//! The Mamba mixer (mamba_simple.py of state-spaces/mamba; Gu & Dao 2023, Figure 3) and the
//! pre-norm residual block around it.
//!
//! ```text
//! x (b, l, d) ─ in_proj ─┬─ xi (b, l, di) ─ conv1d ─ silu ─ xc ─ x_proj ─ dt_low (r), B (n), C (n)
//!                        └─ z  (b, l, di)                       dt_proj(dt_low) = delta (di)
//! y = selective_scan(xc, delta, A = -exp(A_log), B, C, D, z, delta_bias = dt_proj.bias, softplus)
//! out = out_proj(y) (b, l, d)
//! ```
//!
//! `in_proj` is kept as its two halves (x and z) so each half is one contiguous matrix product;
//! checkpoints store the concatenation under the usual name.
//!
//! The non-selective ablation ([`Selection::Fixed`], the paper's Table 1 "S4" row) has no x_proj
//! or dt_proj weight: B and C are learned vectors (n) broadcast over every position, and
//! Δ = softplus(dt_proj.bias), so the layer is linear time-invariant (S4D-real with shared B, C).

mod step;

use rand::rngs::StdRng;

use super::init::{full, normal, torch_default, uniform};
use super::residual::{PreNorm, SeqMixer};
use super::{Module, Param};
use crate::error::Result;
use crate::ops::activation::{add_into, mul_add_into, neg_exp, silu_bwd, silu_fwd};
use crate::ops::conv1d::{causal_conv1d_bwd, causal_conv1d_fwd, causal_conv1d_next_state};
use crate::ops::copy::{add_broadcast, copy_cols, sum_leading_into};
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::ops::scan::{ScanGrads, ScanInputs, ScanOutput, selective_scan_bwd, selective_scan_fwd};
use crate::tensor::{Float, Tensor};

/// Sizes of one mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixerDims {
    pub d_model: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub dt_rank: usize,
    /// Biases on in_proj and out_proj (`use_bias`).
    pub bias: bool,
    /// Bias on the convolution (`use_conv_bias`).
    pub conv_bias: bool,
    /// Δ, B and C depend on the input (S6); false gives [`Selection::Fixed`].
    pub selective: bool,
}

/// Where the scan's Δ, B and C come from.
#[derive(Clone, Debug)]
pub enum Selection<T: Float = f32> {
    /// Functions of the input (S6): x_proj (r + 2n, di) maps xc to dt_low (r), B and C (n);
    /// Δ = softplus(dt_proj_w · dt_low + dt_proj.bias).
    Selective {
        x_proj: Param<T>,
        dt_proj_w: Param<T>,
    },
    /// Learned and input-independent: B and C (n), shared by every channel as in the selective
    /// case, at every position; Δ = softplus(dt_proj.bias).
    Fixed { b: Param<T>, c: Param<T> },
}

impl<T: Float> Selection<T> {
    fn cast<U: Float>(&self) -> Selection<U> {
        match self {
            Selection::Selective { x_proj, dt_proj_w } => Selection::Selective {
                x_proj: x_proj.cast(),
                dt_proj_w: dt_proj_w.cast(),
            },
            Selection::Fixed { b, c } => Selection::Fixed {
                b: b.cast(),
                c: c.cast(),
            },
        }
    }
}

/// Initialisation ranges of dt (mamba_simple defaults: 1e-3, 0.1, floor 1e-4).
#[derive(Clone, Copy, Debug)]
pub struct DtInit {
    pub min: f64,
    pub max: f64,
    pub floor: f64,
}

/// The recurrent state of one mixer for token-by-token decoding.
#[derive(Clone, Debug)]
pub struct MixerState<T: Float> {
    /// The last d_conv - 1 inputs of the convolution, (b, k-1, di).
    pub conv: Tensor<T>,
    /// The SSM state, (b, di, n).
    pub ssm: Tensor<T>,
}

/// Activations a forward keeps for the backward; reused from step to step.
#[derive(Clone, Debug, Default)]
struct Cache<T: Float> {
    xi: Tensor<T>,
    z: Tensor<T>,
    conv: Tensor<T>,
    xc: Tensor<T>,
    xdbl: Tensor<T>,
    dt_low: Tensor<T>,
    bmat: Tensor<T>,
    cmat: Tensor<T>,
    delta: Tensor<T>,
    a: Tensor<T>,
    scan: ScanOutput<T>,
    conv_state: Option<Tensor<T>>,
}

/// Gradient scratch buffers; reused from step to step.
#[derive(Clone, Debug, Default)]
struct Scratch<T: Float> {
    dy: Tensor<T>,
    scan: Option<ScanGrads<T>>,
    ddt_low: Tensor<T>,
    dxdbl: Tensor<T>,
    dxc: Tensor<T>,
    dconv: Tensor<T>,
    dxi: Tensor<T>,
}

#[derive(Clone, Debug)]
pub struct MambaMixer<T: Float = f32> {
    pub dims: MixerDims,
    pub in_proj_x: Param<T>,
    pub in_proj_z: Param<T>,
    pub in_bias_x: Option<Param<T>>,
    pub in_bias_z: Option<Param<T>>,
    pub conv_w: Param<T>,
    pub conv_b: Option<Param<T>>,
    pub selection: Selection<T>,
    pub dt_proj_b: Param<T>,
    pub a_log: Param<T>,
    pub d_skip: Param<T>,
    pub out_proj: Param<T>,
    pub out_bias: Option<Param<T>>,
    cache: Cache<T>,
    scratch: Scratch<T>,
}

/// softplus⁻¹(y) = y + ln(1 - e^{-y}).
fn inv_softplus(y: f64) -> f64 {
    y + (-(-y).exp_m1()).ln()
}

impl<T: Float> MambaMixer<T> {
    /// mamba_simple's initialisation: PyTorch defaults for the projections and the convolution,
    /// dt_proj weight uniform in ±dt_rank^-½, dt_proj bias = softplus⁻¹(dt) with dt log-uniform in
    /// [dt.min, dt.max] floored at dt.floor, A_log = ln(1..n) per channel (S4D-real), D = 1.
    /// `out_scale` multiplies out_proj (1/√n_layer for the prenorm-residual rescaling). The fixed
    /// B and C start as S4D's: B = 1, C ~ N(0, 1).
    pub fn new(dims: MixerDims, dt: DtInit, out_scale: f64, rng: &mut StdRng) -> Self {
        let MixerDims {
            d_model: d,
            d_inner: di,
            d_state: n,
            d_conv: k,
            dt_rank: r,
            ..
        } = dims;
        let in_proj = torch_default::<T>(rng, &[2 * di, d], d).to_vec();
        let conv_w = torch_default(rng, &[di, k], k);
        let conv_b = dims
            .conv_bias
            .then(|| Param::new(torch_default(rng, &[di], k), false));
        let selection = if dims.selective {
            Selection::Selective {
                x_proj: Param::new(torch_default(rng, &[r + 2 * n, di], di), true),
                dt_proj_w: Param::new(uniform(rng, &[di, r], (r as f64).powf(-0.5)), true),
            }
        } else {
            Selection::Fixed {
                b: Param::new(full(&[n], 1.0), false),
                c: Param::new(normal(rng, &[n], 1.0), false),
            }
        };
        let dt_b: Vec<T> = uniform::<f64>(rng, &[di], 0.5)
            .to_vec()
            .into_iter()
            .map(|u| {
                let (lo, hi) = (dt.min.ln(), dt.max.ln());
                let v = ((u + 0.5) * (hi - lo) + lo).exp().max(dt.floor);
                T::from_f64(inv_softplus(v))
            })
            .collect();
        let a_log: Vec<T> = (0..di * n)
            .map(|i| T::from_f64(((i % n + 1) as f64).ln()))
            .collect();
        let mut out = torch_default::<T>(rng, &[d, di], di);
        for v in out.host_mut().expect("new tensors live on the CPU") {
            *v *= T::from_f64(out_scale);
        }
        let half = |h: usize| {
            Tensor::from_vec([di, d], in_proj[h * di * d..(h + 1) * di * d].to_vec())
                .expect("sizes")
        };
        let bias = |len: usize| dims.bias.then(|| Param::new(full(&[len], 0.0), false));
        MambaMixer {
            dims,
            in_proj_x: Param::new(half(0), true),
            in_proj_z: Param::new(half(1), true),
            in_bias_x: bias(di),
            in_bias_z: bias(di),
            conv_w: Param::new(conv_w, true),
            conv_b,
            selection,
            dt_proj_b: Param::new(Tensor::from_vec([di], dt_b).expect("sizes"), false),
            a_log: Param::new(Tensor::from_vec([di, n], a_log).expect("sizes"), false),
            d_skip: Param::new(full(&[di], 1.0), false),
            out_proj: Param::new(out, true),
            out_bias: bias(d),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }

    /// A zero decoding state for `b` sequences, on the device of the parameters.
    pub fn zero_state(&self, b: usize) -> Result<MixerState<T>> {
        let MixerDims {
            d_inner: di,
            d_state: n,
            d_conv: k,
            ..
        } = self.dims;
        let device = self.a_log.value.device();
        Ok(MixerState {
            conv: Tensor::zeros([b, k - 1, di], device)?,
            ssm: Tensor::zeros([b, di, n], device)?,
        })
    }
}

/// The scan's inputs: everything but D and the dt bias comes from the forward's cache.
fn scan_inputs<'a, T: Float>(
    c: &'a Cache<T>,
    d_skip: &'a Tensor<T>,
    dt_bias: &'a Tensor<T>,
    h0: Option<&'a Tensor<T>>,
) -> ScanInputs<'a, T> {
    ScanInputs {
        u: &c.xc,
        delta: &c.delta,
        a: &c.a,
        b: &c.bmat,
        c: &c.cmat,
        d_skip: Some(d_skip),
        z: Some(&c.z),
        delta_bias: Some(dt_bias),
        delta_softplus: true,
        h0,
    }
}

/// Splits x_proj's output (b, l, r + 2n) into dt_low (b, l, r), B and C (b, l, 1, n).
fn split_xdbl<T: Float>(
    xdbl: &Tensor<T>,
    out: [&mut Tensor<T>; 3],
    [b, l]: [usize; 2],
    r: usize,
    n: usize,
) -> Result<()> {
    let [dt, bm, cm] = out;
    let device = xdbl.device();
    dt.reset_output([b, l, r], device)?;
    bm.reset_output([b, l, 1, n], device)?;
    cm.reset_output([b, l, 1, n], device)?;
    copy_cols(xdbl, dt, b * l, [0, 0], r, false)?;
    copy_cols(xdbl, bm, b * l, [r, 0], n, false)?;
    copy_cols(xdbl, cm, b * l, [r + n, 0], n, false)
}

/// out (b, l, 1, n) = v (n) at every position.
fn every_position<T: Float>(v: &Tensor<T>, [b, l]: [usize; 2], out: &mut Tensor<T>) -> Result<()> {
    let n = v.numel();
    let mut rows = std::mem::take(out);
    rows.reset([b * l, n], v.device())?;
    add_broadcast(v, 0, &mut rows)?;
    *out = rows.reshape([b, l, 1, n])?;
    Ok(())
}

/// dv (n) += Σ over the positions of g (b, l, 1, n): the backward of [`every_position`].
fn sum_positions<T: Float>(g: &mut Tensor<T>, dv: &mut Tensor<T>) -> Result<()> {
    let shape = g.shape().clone();
    let n = dv.numel();
    let rows = std::mem::take(g).reshape([shape.numel() / n, n])?;
    sum_leading_into(&rows, dv, 0)?;
    *g = rows.reshape(shape)?;
    Ok(())
}

/// The inverse of `split_xdbl`, for the gradients.
fn join_xdbl<T: Float>(
    parts: [&Tensor<T>; 3],
    xdbl: &mut Tensor<T>,
    [b, l]: [usize; 2],
    r: usize,
    n: usize,
) -> Result<()> {
    xdbl.reset_output([b, l, r + 2 * n], parts[0].device())?;
    copy_cols(parts[0], xdbl, b * l, [0, 0], r, false)?;
    copy_cols(parts[1], xdbl, b * l, [0, r], n, false)?;
    copy_cols(parts[2], xdbl, b * l, [0, r + n], n, false)
}

impl<T: Float> Module<T> for MambaMixer<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f("in_proj_x", &mut self.in_proj_x);
        f("in_proj_z", &mut self.in_proj_z);
        if let Some(p) = &mut self.in_bias_x {
            f("in_bias_x", p);
        }
        if let Some(p) = &mut self.in_bias_z {
            f("in_bias_z", p);
        }
        f("conv1d.weight", &mut self.conv_w);
        if let Some(p) = &mut self.conv_b {
            f("conv1d.bias", p);
        }
        match &mut self.selection {
            Selection::Selective { x_proj, dt_proj_w } => {
                f("x_proj.weight", x_proj);
                f("dt_proj.weight", dt_proj_w);
            }
            Selection::Fixed { b, c } => {
                f("B", b);
                f("C", c);
            }
        }
        f("dt_proj.bias", &mut self.dt_proj_b);
        f("A_log", &mut self.a_log);
        f("D", &mut self.d_skip);
        f("out_proj.weight", &mut self.out_proj);
        if let Some(p) = &mut self.out_bias {
            f("out_proj.bias", p);
        }
    }
}

/// Pre-norm residual block: x + mixer(rmsnorm(x)).
pub type MambaBlock<T = f32> = PreNorm<T, MambaMixer<T>>;

impl<T: Float> SeqMixer<T> for MambaMixer<T> {
    type State = MixerState<T>;
    type Cast<U: Float> = MambaMixer<U>;

    /// out (b, l, d) = mixer(x (b, l, d)). With `state`, the sequence continues from it and the
    /// state is advanced to the end of x (prefill and decoding); `train` keeps what the backward
    /// needs.
    fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: Option<&mut MixerState<T>>,
        train: bool,
    ) -> Result<()> {
        let MixerDims {
            d_state: n,
            dt_rank: r,
            ..
        } = self.dims;
        let (b, l) = (x.dims()[0], x.dims()[1]);
        let mut c = std::mem::take(&mut self.cache);
        linear_fwd(
            x,
            &self.in_proj_x.value,
            self.in_bias_x.as_ref().map(|p| &p.value),
            &mut c.xi,
        )?;
        linear_fwd(
            x,
            &self.in_proj_z.value,
            self.in_bias_z.as_ref().map(|p| &p.value),
            &mut c.z,
        )?;
        let conv_state = state.as_ref().map(|s| &s.conv);
        causal_conv1d_fwd(
            &c.xi,
            &self.conv_w.value,
            self.conv_b.as_ref().map(|p| &p.value),
            conv_state,
            &mut c.conv,
        )?;
        c.conv_state = conv_state.cloned();
        silu_fwd(&c.conv, &mut c.xc)?;
        match &self.selection {
            Selection::Selective { x_proj, dt_proj_w } => {
                linear_fwd(&c.xc, &x_proj.value, None, &mut c.xdbl)?;
                split_xdbl(
                    &c.xdbl,
                    [&mut c.dt_low, &mut c.bmat, &mut c.cmat],
                    [b, l],
                    r,
                    n,
                )?;
                linear_fwd(&c.dt_low, &dt_proj_w.value, None, &mut c.delta)?;
            }
            Selection::Fixed { b: bp, c: cp } => {
                every_position(&bp.value, [b, l], &mut c.bmat)?;
                every_position(&cp.value, [b, l], &mut c.cmat)?;
                // Δ before its bias is zero: the scan adds dt_proj.bias and takes the softplus.
                c.delta.reset(c.xc.shape().clone(), c.xc.device())?;
            }
        }
        neg_exp(&self.a_log.value, &mut c.a)?;
        let mut scan = std::mem::take(&mut c.scan);
        let h0 = state.as_ref().map(|s| &s.ssm);
        selective_scan_fwd(
            &scan_inputs(&c, &self.d_skip.value, &self.dt_proj_b.value, h0),
            &mut scan,
            train,
        )?;
        if let Some(s) = state {
            causal_conv1d_next_state(&c.xi, &mut s.conv)?;
            s.ssm.copy_from(&scan.last_state)?;
        }
        linear_fwd(
            &scan.y,
            &self.out_proj.value,
            self.out_bias.as_ref().map(|p| &p.value),
            out,
        )?;
        c.scan = scan;
        self.cache = c;
        Ok(())
    }

    /// dx += ∂L/∂x given dout, for the `x` of the last (training) forward.
    fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        let MixerDims {
            d_state: n,
            dt_rank: r,
            ..
        } = self.dims;
        let c = std::mem::take(&mut self.cache);
        let mut s = std::mem::take(&mut self.scratch);
        let (b, l) = (x.dims()[0], x.dims()[1]);
        s.dy.reset_like(&c.scan.y)?;
        linear_bwd(
            &c.scan.y,
            &self.out_proj.value,
            dout,
            Some(&mut s.dy),
            &mut self.out_proj.grad,
            self.out_bias.as_mut().map(|p| &mut p.grad),
        )?;
        // The saved chunk states already start from any initial state; its gradient is not needed.
        let inputs = scan_inputs(&c, &self.d_skip.value, &self.dt_proj_b.value, None);
        let mut g = match s.scan.take() {
            Some(mut g) if g.du.dims() == c.xc.dims() && g.du.device() == c.xc.device() => {
                g.zero_()?;
                g
            }
            _ => ScanGrads::zeros_like(&inputs)?,
        };
        selective_scan_bwd(&inputs, &c.scan, &s.dy, None, &mut g)?;
        // A = -exp(A_log), so ∂A/∂A_log = A.
        mul_add_into(&g.da, &c.a, &mut self.a_log.grad)?;
        add_into(
            g.dd_skip.as_ref().expect("D is always given"),
            &mut self.d_skip.grad,
        )?;
        add_into(
            g.ddelta_bias.as_ref().expect("delta_bias is always given"),
            &mut self.dt_proj_b.grad,
        )?;
        // xc feeds the scan (as u) and, when selective, x_proj.
        s.dxc.copy_from(&g.du)?;
        match &mut self.selection {
            Selection::Selective { x_proj, dt_proj_w } => {
                s.ddt_low.reset_like(&c.dt_low)?;
                linear_bwd(
                    &c.dt_low,
                    &dt_proj_w.value,
                    &g.ddelta,
                    Some(&mut s.ddt_low),
                    &mut dt_proj_w.grad,
                    None,
                )?;
                join_xdbl([&s.ddt_low, &g.db, &g.dc], &mut s.dxdbl, [b, l], r, n)?;
                linear_bwd(
                    &c.xc,
                    &x_proj.value,
                    &s.dxdbl,
                    Some(&mut s.dxc),
                    &mut x_proj.grad,
                    None,
                )?;
            }
            Selection::Fixed { b: bp, c: cp } => {
                sum_positions(&mut g.db, &mut bp.grad)?;
                sum_positions(&mut g.dc, &mut cp.grad)?;
            }
        }
        s.dconv.reset_like(&c.conv)?;
        silu_bwd(&c.conv, &s.dxc, &mut s.dconv)?;
        s.dxi.reset_like(&c.xi)?;
        causal_conv1d_bwd(
            &c.xi,
            &self.conv_w.value,
            c.conv_state.as_ref(),
            &s.dconv,
            &mut s.dxi,
            &mut self.conv_w.grad,
            self.conv_b.as_mut().map(|p| &mut p.grad),
        )?;
        linear_bwd(
            x,
            &self.in_proj_x.value,
            &s.dxi,
            Some(&mut *dx),
            &mut self.in_proj_x.grad,
            self.in_bias_x.as_mut().map(|p| &mut p.grad),
        )?;
        let dz = g.dz.as_ref().expect("z is always given");
        linear_bwd(
            x,
            &self.in_proj_z.value,
            dz,
            Some(dx),
            &mut self.in_proj_z.grad,
            self.in_bias_z.as_mut().map(|p| &mut p.grad),
        )?;
        s.scan = Some(g);
        self.scratch = s;
        self.cache = c;
        Ok(())
    }

    /// The same mixer in another float type, with fresh caches.
    fn cast<U: Float>(&self) -> MambaMixer<U> {
        let o = |p: &Option<Param<T>>| p.as_ref().map(Param::cast);
        MambaMixer {
            dims: self.dims,
            in_proj_x: self.in_proj_x.cast(),
            in_proj_z: self.in_proj_z.cast(),
            in_bias_x: o(&self.in_bias_x),
            in_bias_z: o(&self.in_bias_z),
            conv_w: self.conv_w.cast(),
            conv_b: o(&self.conv_b),
            selection: self.selection.cast(),
            dt_proj_b: self.dt_proj_b.cast(),
            a_log: self.a_log.cast(),
            d_skip: self.d_skip.cast(),
            out_proj: self.out_proj.cast(),
            out_bias: o(&self.out_bias),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }
}
