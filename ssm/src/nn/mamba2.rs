//! The Mamba-2 mixer (mamba_ssm's `Mamba2`, transformers' `Mamba2Mixer`; Dao & Gu 2024, Figure
//! 6) and the pre-norm residual block around it.
//!
//! ```text
//! x (b, l, d) ─ in_proj ─┬─ z  (b, l, di)                                          ┐
//!                        ├─ xBC (b, l, di + 2·g·n) ─ conv1d ─ silu ─┬─ xs (b, l, h, p)  │
//!                        │                                          ├─ B, C (b, l, g, n)│
//!                        └─ dt (b, l, h)                            │                   │
//! y = ssd(xs, dt, A = -exp(A_log), B, C, D, dt_bias, softplus, dt_limit)  (b, l, di)    │
//! out = out_proj(rmsnorm_groups(y · silu(z)) · norm.weight)  ─────────────────────────┘
//! ```
//!
//! Dimension letters: `d` d_model, `di` d_inner = expand·d, `h` heads, `p` head dim (di = h·p),
//! `g` groups of B and C (and of the gated norm), `n` state size, `k` the convolution width.
//! `in_proj` is kept as its three parts (z, xBC, dt) so that each is one contiguous product;
//! checkpoints store the concatenation in transformers' order [z, xBC, dt].

use rand::RngExt;
use rand::rngs::StdRng;

use super::init::{full, torch_default};
use super::residual::{PreNorm, SeqMixer};
use super::{Module, Param};
use crate::error::{Error, Result};
use crate::ops::activation::{
    add_into, gate_bwd, gate_fwd, mul_add_into, neg_exp, silu_bwd, silu_fwd,
};
use crate::ops::conv1d::{causal_conv1d_bwd, causal_conv1d_fwd, causal_conv1d_next_state};
use crate::ops::copy::copy_cols;
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::ops::norm::{rmsnorm_grouped_bwd, rmsnorm_grouped_fwd};
use crate::ops::ssd::{SsdGrads, SsdInputs, SsdOutput, ssd_bwd, ssd_fwd};
use crate::tensor::{Float, Tensor};

/// Sizes and fixed settings of one Mamba-2 mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mamba2Dims {
    pub d_model: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub n_groups: usize,
    /// Positions per chunk of the SSD scan.
    pub chunk: usize,
    /// Limits on Δ after the softplus (`[0, ∞)` is none).
    pub dt_limit: [f64; 2],
    /// Biases on in_proj and out_proj (`use_bias`).
    pub bias: bool,
    /// Bias on the convolution (`use_conv_bias`).
    pub conv_bias: bool,
    /// Epsilon of the gated norm.
    pub norm_eps: f64,
}

impl Mamba2Dims {
    /// Channels of the convolution: x, B and C.
    pub fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.n_groups * self.d_state
    }
}

/// How the mixer is initialised (mamba_ssm's `Mamba2` arguments): Δ log-uniform in
/// [dt_min, dt_max] floored at dt_floor, A uniform in `a_range`.
#[derive(Clone, Copy, Debug)]
pub struct Mamba2Init {
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_floor: f64,
    pub a_range: [f64; 2],
}

/// The recurrent state of one Mamba-2 mixer for token-by-token decoding.
#[derive(Clone, Debug)]
pub struct Mamba2State<T: Float> {
    /// The last d_conv - 1 inputs of the convolution, (b, k-1, di + 2·g·n).
    pub conv: Tensor<T>,
    /// The SSM state, (b, h, p, n).
    pub ssm: Tensor<T>,
}

/// Activations a forward keeps for the backward; reused from step to step. cd = di + 2·g·n.
#[derive(Clone, Debug, Default)]
struct Cache<T: Float> {
    z: Tensor<T>,    // (b, l, di)
    xbc: Tensor<T>,  // (b, l, cd), the convolution's input
    dt: Tensor<T>,   // (b, l, h), raw
    conv: Tensor<T>, // (b, l, cd), before the SiLU
    act: Tensor<T>,  // (b, l, cd), after it
    xs: Tensor<T>,   // (b, l, h, p)
    bmat: Tensor<T>, // (b, l, g, n)
    cmat: Tensor<T>, // (b, l, g, n)
    a: Tensor<T>,    // (h), -exp(A_log)
    scan: SsdOutput<T>,
    y: Tensor<T>,                  // (b, l, di), the scan's output
    gated: Tensor<T>,              // (b, l, di), y · silu(z)
    normed: Tensor<T>,             // (b, l, di)
    rstd: Tensor<T>,               // (b · l · g)
    conv_state: Option<Tensor<T>>, // (b, k-1, cd) the forward continued from, when training
}

/// Gradient scratch buffers; reused from step to step; shaped like what they are the gradient of.
#[derive(Clone, Debug, Default)]
struct Scratch<T: Float> {
    dnormed: Tensor<T>,
    dgated: Tensor<T>,
    dy: Tensor<T>,
    dz: Tensor<T>,
    scan: Option<SsdGrads<T>>,
    dact: Tensor<T>,
    dconv: Tensor<T>,
    dxbc: Tensor<T>,
}

/// The Mamba-2 mixer: its parameters in transformers' layout but for in_proj, which is kept as
/// its three parts, and the caches of the backward.
#[derive(Clone, Debug)]
pub struct Mamba2Mixer<T: Float = f32> {
    pub dims: Mamba2Dims,
    /// (di, d), (di + 2·g·n, d), (h, d): the three parts of in_proj.
    pub in_proj_z: Param<T>,
    pub in_proj_xbc: Param<T>,
    pub in_proj_dt: Param<T>,
    /// Their biases with `use_bias`: (di), (di + 2·g·n), (h).
    pub in_bias: Option<[Param<T>; 3]>,
    /// (di + 2·g·n, k) and (di + 2·g·n).
    pub conv_w: Param<T>,
    pub conv_b: Option<Param<T>>,
    /// (h) each.
    pub dt_bias: Param<T>,
    pub a_log: Param<T>,
    pub d_skip: Param<T>,
    /// The gated norm's weight, (di).
    pub norm_w: Param<T>,
    /// (d, di) and (d).
    pub out_proj: Param<T>,
    pub out_bias: Option<Param<T>>,
    cache: Cache<T>,
    scratch: Scratch<T>,
}

/// softplus⁻¹(y) = y + ln(1 - e^{-y}).
fn inv_softplus(y: f64) -> f64 {
    y + (-(-y).exp_m1()).ln()
}

impl<T: Float> Mamba2Mixer<T> {
    /// mamba_ssm's `Mamba2` initialisation: PyTorch defaults for the projections and the
    /// convolution, dt_bias = softplus⁻¹(Δ) with Δ log-uniform in [dt_min, dt_max] floored at
    /// dt_floor, A_log = ln A with A uniform in `a_range`, D = 1, the norm's weight 1.
    /// `out_scale` multiplies out_proj (the prenorm-residual rescaling).
    pub fn new(dims: Mamba2Dims, init: Mamba2Init, out_scale: f64, rng: &mut StdRng) -> Self {
        let Mamba2Dims {
            d_model: d,
            d_inner: di,
            d_conv: k,
            n_heads: h,
            ..
        } = dims;
        let cd = dims.conv_dim();
        let in_z = torch_default(rng, &[di, d], d);
        let in_xbc = torch_default(rng, &[cd, d], d);
        let in_dt = torch_default(rng, &[h, d], d);
        let conv_w = torch_default(rng, &[cd, k], k);
        let conv_b = dims
            .conv_bias
            .then(|| Param::new(torch_default(rng, &[cd], k), false));
        let (lo, hi) = (init.dt_min.ln(), init.dt_max.ln());
        let dt_bias: Vec<T> = (0..h)
            .map(|_| {
                let dt = (rng.random::<f64>() * (hi - lo) + lo)
                    .exp()
                    .max(init.dt_floor);
                T::from_f64(inv_softplus(dt))
            })
            .collect();
        let [a_lo, a_hi] = init.a_range;
        let a_log: Vec<T> = (0..h)
            .map(|_| T::from_f64(rng.random_range(a_lo..a_hi).ln()))
            .collect();
        let mut out = torch_default::<T>(rng, &[d, di], di);
        for v in out.host_mut().expect("new tensors live on the CPU") {
            *v *= T::from_f64(out_scale);
        }
        let zeros = |len: usize| Param::new(full(&[len], 0.0), false);
        Mamba2Mixer {
            dims,
            in_proj_z: Param::new(in_z, true),
            in_proj_xbc: Param::new(in_xbc, true),
            in_proj_dt: Param::new(in_dt, true),
            in_bias: dims.bias.then(|| [zeros(di), zeros(cd), zeros(h)]),
            conv_w: Param::new(conv_w, true),
            conv_b,
            dt_bias: Param::new(Tensor::from_vec([h], dt_bias).expect("sizes"), false),
            a_log: Param::new(Tensor::from_vec([h], a_log).expect("sizes"), false),
            d_skip: Param::new(full(&[h], 1.0), false),
            norm_w: Param::new(full(&[di], 1.0), false),
            out_proj: Param::new(out, true),
            out_bias: dims.bias.then(|| zeros(d)),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }

    /// A zero decoding state for `b` sequences, on the device of the parameters.
    pub fn zero_state(&self, b: usize) -> Result<Mamba2State<T>> {
        let Mamba2Dims {
            d_state: n,
            d_conv: k,
            n_heads: h,
            head_dim: p,
            ..
        } = self.dims;
        let device = self.a_log.value.device();
        Ok(Mamba2State {
            conv: Tensor::zeros([b, k - 1, self.dims.conv_dim()], device)?,
            ssm: Tensor::zeros([b, h, p, n], device)?,
        })
    }

    /// The SSD's inputs from the forward's cache.
    fn ssd_inputs<'a>(&'a self, c: &'a Cache<T>, h0: Option<&'a Tensor<T>>) -> SsdInputs<'a, T> {
        SsdInputs {
            x: &c.xs,
            dt: &c.dt,
            a: &c.a,
            b: &c.bmat,
            c: &c.cmat,
            d_skip: Some(&self.d_skip.value),
            dt_bias: Some(&self.dt_bias.value),
            dt_softplus: true,
            dt_limit: self.dims.dt_limit,
            h0,
        }
    }
}

impl<T: Float> Module<T> for Mamba2Mixer<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f("in_proj_z", &mut self.in_proj_z);
        f("in_proj_xbc", &mut self.in_proj_xbc);
        f("in_proj_dt", &mut self.in_proj_dt);
        if let Some([bz, bxbc, bdt]) = &mut self.in_bias {
            f("in_bias_z", bz);
            f("in_bias_xbc", bxbc);
            f("in_bias_dt", bdt);
        }
        f("conv1d.weight", &mut self.conv_w);
        if let Some(p) = &mut self.conv_b {
            f("conv1d.bias", p);
        }
        f("dt_bias", &mut self.dt_bias);
        f("A_log", &mut self.a_log);
        f("D", &mut self.d_skip);
        f("norm.weight", &mut self.norm_w);
        f("out_proj.weight", &mut self.out_proj);
        if let Some(p) = &mut self.out_bias {
            f("out_proj.bias", p);
        }
    }
}

/// Pre-norm residual block: x + mixer(rmsnorm(x)). With a state, the tokens continue the
/// sequences it holds (a single token is the recurrent step: a chunk of one position).
pub type Mamba2Block<T = f32> = PreNorm<T, Mamba2Mixer<T>>;

impl<T: Float> SeqMixer<T> for Mamba2Mixer<T> {
    type State = Mamba2State<T>;
    type Cast<U: Float> = Mamba2Mixer<U>;

    /// out (b, l, d) = mixer(x (b, l, d)). With `state`, the sequence continues from it and the
    /// state is advanced to the end of x (prefill and decoding); `train` keeps what the backward
    /// needs.
    fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: Option<&mut Mamba2State<T>>,
        train: bool,
    ) -> Result<()> {
        let dm = self.dims;
        let (di, g, n) = (dm.d_inner, dm.n_groups, dm.d_state);
        let [b, l, _] = *x.dims() else {
            return Err(Error::shape("Mamba2Mixer", "x", "[b, l, d]", x.dims()));
        };
        let mut c = std::mem::take(&mut self.cache);
        let bias = |i: usize| self.in_bias.as_ref().map(|bs| &bs[i].value);
        linear_fwd(x, &self.in_proj_z.value, bias(0), &mut c.z)?;
        linear_fwd(x, &self.in_proj_xbc.value, bias(1), &mut c.xbc)?;
        linear_fwd(x, &self.in_proj_dt.value, bias(2), &mut c.dt)?;
        let conv_state = state.as_ref().map(|s| &s.conv);
        causal_conv1d_fwd(
            &c.xbc,
            &self.conv_w.value,
            self.conv_b.as_ref().map(|p| &p.value),
            conv_state,
            &mut c.conv,
        )?;
        // Only a backward reads the state the convolution continued from.
        c.conv_state = match (train, conv_state) {
            (true, Some(s)) => Some(s.try_clone()?),
            _ => None,
        };
        silu_fwd(&c.conv, &mut c.act)?;
        let device = x.device();
        c.xs.reset_output([b, l, dm.n_heads, dm.head_dim], device)?;
        c.bmat.reset_output([b, l, g, n], device)?;
        c.cmat.reset_output([b, l, g, n], device)?;
        copy_cols(&c.act, &mut c.xs, b * l, [0, 0], di, false)?;
        copy_cols(&c.act, &mut c.bmat, b * l, [di, 0], g * n, false)?;
        copy_cols(&c.act, &mut c.cmat, b * l, [di + g * n, 0], g * n, false)?;
        neg_exp(&self.a_log.value, &mut c.a)?;
        let h0 = state.as_ref().map(|s| &s.ssm);
        let mut scan = std::mem::take(&mut c.scan);
        // The last forward's y buffer, handed back so that the scan reuses it.
        scan.y = std::mem::take(&mut c.y);
        ssd_fwd(&self.ssd_inputs(&c, h0), dm.chunk, &mut scan, train)?;
        if let Some(s) = state {
            causal_conv1d_next_state(&c.xbc, &mut s.conv)?;
            s.ssm.copy_from(&scan.last_state)?;
        }
        c.y = std::mem::take(&mut scan.y).reshape([b, l, di])?;
        c.scan = scan;
        gate_fwd(&c.y, &c.z, &mut c.gated)?;
        rmsnorm_grouped_fwd(
            &c.gated,
            &self.norm_w.value,
            dm.norm_eps,
            g,
            &mut c.normed,
            &mut c.rstd,
        )?;
        linear_fwd(
            &c.normed,
            &self.out_proj.value,
            self.out_bias.as_ref().map(|p| &p.value),
            out,
        )?;
        self.cache = c;
        Ok(())
    }

    /// dx += ∂L/∂x given dout, for the `x` of the last (training) forward.
    fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        const OP: &str = "Mamba2Mixer::backward";
        let dm = self.dims;
        let (di, g, n) = (dm.d_inner, dm.n_groups, dm.d_state);
        let [b, l, _] = *x.dims() else {
            return Err(Error::shape(OP, "x", "[b, l, d]", x.dims()));
        };
        // Checked before any gradient is added: a forward without `train` kept no states.
        if self.cache.scan.saved.is_none() || self.cache.xs.dims()[..2] != [b, l] {
            return Err(Error::shape(
                OP,
                "x",
                "the input of the last forward, run with train = true",
                x.dims(),
            ));
        }
        let mut c = std::mem::take(&mut self.cache);
        let mut s = std::mem::take(&mut self.scratch);
        s.dnormed.reset_like(&c.normed)?;
        linear_bwd(
            &c.normed,
            &self.out_proj.value,
            dout,
            Some(&mut s.dnormed),
            &mut self.out_proj.grad,
            self.out_bias.as_mut().map(|p| &mut p.grad),
        )?;
        s.dgated.reset_like(&c.gated)?;
        rmsnorm_grouped_bwd(
            &s.dnormed,
            &c.gated,
            &self.norm_w.value,
            &c.rstd,
            g,
            &mut s.dgated,
            &mut self.norm_w.grad,
        )?;
        s.dy.reset_like(&c.y)?;
        s.dz.reset_like(&c.z)?;
        gate_bwd(&c.y, &c.z, &s.dgated, &mut s.dy, &mut s.dz)?;
        let dy = std::mem::take(&mut s.dy).reshape([b, l, dm.n_heads, dm.head_dim])?;
        // The saved chunk states already start from any initial state; its gradient is not needed.
        let scan = std::mem::take(&mut c.scan);
        let inputs = self.ssd_inputs(&c, None);
        let mut gr = match s.scan.take() {
            Some(mut gr) if gr.dx.dims() == c.xs.dims() && gr.dx.device() == c.xs.device() => {
                gr.zero_()?;
                gr
            }
            _ => SsdGrads::zeros_like(&inputs)?,
        };
        ssd_bwd(&inputs, &scan, &dy, None, &mut gr)?;
        c.scan = scan;
        s.dy = dy.reshape([b, l, di])?;
        // A = -exp(A_log), so ∂A/∂A_log = A.
        mul_add_into(&gr.da, &c.a, &mut self.a_log.grad)?;
        let given = "D and dt_bias are always given";
        add_into(gr.dd_skip.as_ref().expect(given), &mut self.d_skip.grad)?;
        add_into(gr.ddt_bias.as_ref().expect(given), &mut self.dt_bias.grad)?;
        s.dact.reset_output(c.act.shape().clone(), c.act.device())?;
        copy_cols(&gr.dx, &mut s.dact, b * l, [0, 0], di, false)?;
        copy_cols(&gr.db, &mut s.dact, b * l, [0, di], g * n, false)?;
        copy_cols(&gr.dc, &mut s.dact, b * l, [0, di + g * n], g * n, false)?;
        s.dconv.reset_like(&c.conv)?;
        silu_bwd(&c.conv, &s.dact, &mut s.dconv)?;
        s.dxbc.reset_like(&c.xbc)?;
        causal_conv1d_bwd(
            &c.xbc,
            &self.conv_w.value,
            c.conv_state.as_ref(),
            &s.dconv,
            &mut s.dxbc,
            &mut self.conv_w.grad,
            self.conv_b.as_mut().map(|p| &mut p.grad),
        )?;
        let mut bias_grads = match &mut self.in_bias {
            Some([bz, bxbc, bdt]) => [
                Some(&mut bz.grad),
                Some(&mut bxbc.grad),
                Some(&mut bdt.grad),
            ],
            None => [None, None, None],
        };
        let parts = [
            (&mut self.in_proj_z, &s.dz),
            (&mut self.in_proj_xbc, &s.dxbc),
            (&mut self.in_proj_dt, &gr.ddt),
        ];
        for ((w, dpart), bias) in parts.into_iter().zip(bias_grads.iter_mut()) {
            linear_bwd(
                x,
                &w.value,
                dpart,
                Some(&mut *dx),
                &mut w.grad,
                bias.as_deref_mut(),
            )?;
        }
        s.scan = Some(gr);
        self.scratch = s;
        self.cache = c;
        Ok(())
    }

    /// The same mixer in another float type, with fresh caches.
    fn cast<U: Float>(&self) -> Mamba2Mixer<U> {
        let o = |p: &Option<Param<T>>| p.as_ref().map(Param::cast);
        Mamba2Mixer {
            dims: self.dims,
            in_proj_z: self.in_proj_z.cast(),
            in_proj_xbc: self.in_proj_xbc.cast(),
            in_proj_dt: self.in_proj_dt.cast(),
            in_bias: self
                .in_bias
                .as_ref()
                .map(|bs| bs.each_ref().map(Param::cast)),
            conv_w: self.conv_w.cast(),
            conv_b: o(&self.conv_b),
            dt_bias: self.dt_bias.cast(),
            a_log: self.a_log.cast(),
            d_skip: self.d_skip.cast(),
            norm_w: self.norm_w.cast(),
            out_proj: self.out_proj.cast(),
            out_bias: o(&self.out_bias),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }
}
