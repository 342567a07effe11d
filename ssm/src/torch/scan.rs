//! The selective scan in PyTorch ops, token-major as `ops::scan` (u, delta, z: (b, l, d); A:
//! (d, n); B, C: (b, l, g, n); D, delta_bias: (d); initial state (b, d, n)), in two formulations
//! people write:
//!
//! - [`scan_loop`]: `selective_scan_ref` of state-spaces/mamba (and transformers' slow path):
//!   Δ·A and Δ·B·u for every step at once, then a loop over time;
//! - [`scan_parallel`]: a log-depth parallel scan of `h_t = a_t ∘ h_{t-1} + b_t` (Hillis-Steele:
//!   ⌈log2 l⌉ rounds, each combining every position with the one 2^k before it), the idea of
//!   mamba.py's `pscan`, with autograd's backward instead of a hand-written one.
//!
//! Both return y (b, l, d) and the last state (b, d, n); gradients come from autograd.

use ssm_kernels::scan::ScanInputsOf;
use tch::Tensor;

/// The inputs of one scan as torch tensors, the field list of `ops::scan::ScanInputs`.
pub type TorchScan<'a> = ScanInputsOf<&'a Tensor>;

/// Δ (b, l, d), then exp(Δ·A) and Δ·B·u (b, l, d, n), and C widened to every channel.
fn discretize(s: &TorchScan) -> (Tensor, Tensor, Tensor) {
    let mut dt = s.delta.shallow_clone();
    if let Some(bias) = s.delta_bias {
        dt = dt + bias;
    }
    if s.delta_softplus {
        dt = dt.softplus();
    }
    let (d, g) = (s.u.size()[2], s.b.size()[2]);
    let widen = |m: &Tensor| m.repeat_interleave_self_int(d / g, 2, None);
    let da = (dt.unsqueeze(-1) * s.a).exp();
    let dbu = (&dt * s.u).unsqueeze(-1) * widen(s.b);
    (da, dbu, widen(s.c))
}

/// y from the states (b, l, d, n): C·h, plus D·u, gated by silu(z).
fn output(s: &TorchScan, h: &Tensor, c: &Tensor) -> Tensor {
    let mut y = (h * c).sum_dim_intlist(-1, false, None);
    if let Some(d_skip) = s.d_skip {
        y = y + s.u * d_skip;
    }
    if let Some(z) = s.z {
        y = y * z.silu();
    }
    y
}

/// `selective_scan_ref`: a loop over time. Returns (y, last state).
pub fn scan_loop(s: &TorchScan) -> (Tensor, Tensor) {
    let (da, dbu, c) = discretize(s);
    let (b, l, d, n) = (da.size()[0], da.size()[1], da.size()[2], da.size()[3]);
    let mut h = match s.h0 {
        Some(h0) => h0.shallow_clone(),
        None => Tensor::zeros([b, d, n], (da.kind(), da.device())),
    };
    let mut states = Vec::with_capacity(l as usize);
    for t in 0..l {
        h = da.select(1, t) * &h + dbu.select(1, t);
        states.push(h.shallow_clone());
    }
    (output(s, &Tensor::stack(&states, 1), &c), h)
}

/// The same scan by a log-depth parallel scan over time. Returns (y, last state).
pub fn scan_parallel(s: &TorchScan) -> (Tensor, Tensor) {
    let (mut a, mut h, c) = discretize(s);
    let l = a.size()[1];
    if let Some(h0) = s.h0 {
        // h_0 = a_0 ∘ h0 + b_0: fold the initial state into the first step.
        let first = a.narrow(1, 0, 1) * h0.unsqueeze(1);
        h = h + Tensor::cat(&[first, Tensor::zeros_like(&a.narrow(1, 1, l - 1))], 1);
    }
    let mut step = 1;
    while step < l {
        // Positions t >= step combine with t - step: h_t += a_t ∘ h_{t-step}, a_t *= a_{t-step}.
        let head = |x: &Tensor, pad: &Tensor| Tensor::cat(&[pad, &x.narrow(1, 0, l - step)], 1);
        let pad_h = Tensor::zeros_like(&h.narrow(1, 0, step));
        let pad_a = Tensor::ones_like(&a.narrow(1, 0, step));
        h = &h + &a * head(&h, &pad_h);
        a = &a * head(&a, &pad_a);
        step *= 2;
    }
    let last = h.select(1, l - 1);
    (output(s, &h, &c), last)
}
