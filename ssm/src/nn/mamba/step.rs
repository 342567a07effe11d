//! The recurrent step of the Mamba mixer (mamba_simple's `step`): one new token per sequence,
//! the convolution window rolled by one, the SSM state updated in place. On the CPU it works on
//! host values with no tensor op: the projections as matrix-vector products for one sequence
//! (no thread dispatch) or one GEMM over a batch, then the convolution and the recurrence per
//! sequence.

use rayon::prelude::*;

use super::{MambaBlock, MambaMixer, MixerDims, MixerState, Selection};
use crate::backend::cpu::multiversion;
use crate::error::{Error, Result};
use crate::nn::residual::SeqMixer;
use crate::ops::activation::add_into;
use crate::ops::activation::cpu::{silu, softplus};
use crate::ops::linear::cpu::linear_rows;
use crate::tensor::{Float, Tensor};

/// Where Δ, B and C of one token come from, as host slices.
enum Select<'a, T> {
    /// x_proj (r + 2n, di) and dt_proj.weight (di, r).
    Selective { x_proj: &'a [T], dt_w: &'a [T] },
    /// B and C (n), the same at every position.
    Fixed { b: &'a [T], c: &'a [T] },
}

/// The mixer's parameters as host slices.
struct Weights<'a, T> {
    dims: MixerDims,
    in_x: &'a [T],
    in_z: &'a [T],
    bias_x: Option<&'a [T]>,
    bias_z: Option<&'a [T]>,
    conv_w: &'a [T],
    conv_b: Option<&'a [T]>,
    select: Select<'a, T>,
    dt_b: &'a [T],
    a_log: &'a [T],
    d_skip: &'a [T],
    out: &'a [T],
    out_b: Option<&'a [T]>,
}

impl<'a, T: Float> Weights<'a, T> {
    fn of(m: &'a MambaMixer<T>) -> Result<Self> {
        let host = |p: &'a Option<super::Param<T>>| p.as_ref().map(|p| p.value.host()).transpose();
        let select = match &m.selection {
            Selection::Selective { x_proj, dt_proj_w } => Select::Selective {
                x_proj: x_proj.value.host()?,
                dt_w: dt_proj_w.value.host()?,
            },
            Selection::Fixed { b, c } => Select::Fixed {
                b: b.value.host()?,
                c: c.value.host()?,
            },
        };
        Ok(Weights {
            dims: m.dims,
            in_x: m.in_proj_x.value.host()?,
            in_z: m.in_proj_z.value.host()?,
            bias_x: host(&m.in_bias_x)?,
            bias_z: host(&m.in_bias_z)?,
            conv_w: m.conv_w.value.host()?,
            conv_b: host(&m.conv_b)?,
            select,
            dt_b: m.dt_proj_b.value.host()?,
            a_log: m.a_log.value.host()?,
            d_skip: m.d_skip.value.host()?,
            out: m.out_proj.value.host()?,
            out_b: host(&m.out_bias)?,
        })
    }

    /// out (b, d) = mixer(x (b, d)) for one token of each of b sequences, whose windows
    /// (b, k-1, di) and states (b, di, n) are advanced past it. The projections are one
    /// product over the batch; the convolution and the recurrence run per sequence.
    fn tokens(&self, x: &[T], out: &mut [T], windows: &mut [T], h: &mut [T], b: usize) {
        let MixerDims {
            d_model: d,
            d_inner: di,
            d_state: n,
            d_conv: k,
            dt_rank: r,
            ..
        } = self.dims;
        let mut xi = vec![T::zero(); b * di];
        let mut z = vec![T::zero(); b * di];
        project(x, self.in_x, self.bias_x, &mut xi, [b, d, di]);
        project(x, self.in_z, self.bias_z, &mut z, [b, d, di]);
        let mut xc = vec![T::zero(); b * di];
        for bi in 0..b {
            let window = &mut windows[bi * (k - 1) * di..(bi + 1) * (k - 1) * di];
            self.conv(
                &xi[bi * di..(bi + 1) * di],
                window,
                &mut xc[bi * di..(bi + 1) * di],
            );
        }
        let xdbl = match self.select {
            Select::Selective { x_proj, .. } => {
                let mut xdbl = vec![T::zero(); b * (r + 2 * n)];
                project(&xc, x_proj, None, &mut xdbl, [b, di, r + 2 * n]);
                xdbl
            }
            Select::Fixed { .. } => Vec::new(),
        };
        let mut y = vec![T::zero(); b * di];
        let seq = |(bi, (hs, ys)): (usize, (&mut [T], &mut [T]))| {
            let xdbl_row = if xdbl.is_empty() {
                &xdbl[..]
            } else {
                &xdbl[bi * (r + 2 * n)..(bi + 1) * (r + 2 * n)]
            };
            self.recurrence(
                &xc[bi * di..(bi + 1) * di],
                &z[bi * di..(bi + 1) * di],
                xdbl_row,
                hs,
                ys,
            );
        };
        if b == 1 {
            h.chunks_exact_mut(di * n)
                .zip(y.chunks_exact_mut(di))
                .enumerate()
                .for_each(seq);
        } else {
            h.par_chunks_exact_mut(di * n)
                .zip(y.par_chunks_exact_mut(di))
                .enumerate()
                .for_each(seq);
        }
        project(&y, self.out, self.out_b, out, [b, di, d]);
    }

    /// xc (di) = silu(conv(window ++ xi)) with w (di, k) whose last tap meets the newest input,
    /// then the window (k-1, di) rolled to end with xi.
    fn conv(&self, xi: &[T], window: &mut [T], xc: &mut [T]) {
        let (di, k) = (self.dims.d_inner, self.dims.d_conv);
        for (c, o) in xc.iter_mut().enumerate() {
            let taps = &self.conv_w[c * k..(c + 1) * k];
            let mut acc = self.conv_b.map_or(T::zero(), |cb| cb[c]) + taps[k - 1] * xi[c];
            for (j, &w) in taps[..k - 1].iter().enumerate() {
                acc += w * window[j * di + c];
            }
            *o = silu(acc);
        }
        if k > 1 {
            window.copy_within(di.., 0);
            window[(k - 2) * di..].copy_from_slice(xi);
        }
    }

    /// One step of the scan for one sequence, with Δ = softplus(dt_proj(dt_low) + dt bias) and
    /// dt_low, B, C read from xdbl (r + 2n) or fixed: see [`recurrence_kernel`].
    fn recurrence(&self, u: &[T], z: &[T], xdbl: &[T], h: &mut [T], y: &mut [T]) {
        let (n, r) = (self.dims.d_state, self.dims.dt_rank);
        let (bv, cv): (&[T], &[T]) = match self.select {
            Select::Selective { .. } => (&xdbl[r..r + n], &xdbl[r + n..]),
            Select::Fixed { b, c } => (b, c),
        };
        let dt: Vec<T> = (0..y.len())
            .map(|c| {
                let raw = match self.select {
                    Select::Selective { dt_w, .. } => dot(&dt_w[c * r..(c + 1) * r], &xdbl[..r]),
                    Select::Fixed { .. } => T::zero(),
                };
                softplus(raw + self.dt_b[c])
            })
            .collect();
        // SAFETY: the dispatch runs a target-feature build only on a CPU that has the features.
        unsafe { recurrence_dispatch(u, z, &dt, bv, cv, self.a_log, self.d_skip, h, y) };
    }
}

multiversion!(recurrence_dispatch => recurrence_kernel(u: &[T], z: &[T], dt: &[T], bv: &[T], cv: &[T], a_log: &[T], d_skip: &[T], h: &mut [T], y: &mut [T]));

/// For every channel c of u, z, dt, y (di): h_c (n) = exp(dt_c · A_c) ∘ h_c + dt_c · B · u_c and
/// y_c = (C · h_c + D_c · u_c) · silu(z_c), with A = -exp(A_log) (di, n), B, C (n), h (di, n).
/// Both exps are the fast CPU scan's (A is recomputed per token rather than cached, so a step
/// always sees the current A_log), and the loops over n vectorize in the target-feature builds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn recurrence_kernel<T: Float>(
    u: &[T],
    z: &[T],
    dt: &[T],
    bv: &[T],
    cv: &[T],
    a_log: &[T],
    d_skip: &[T],
    h: &mut [T],
    y: &mut [T],
) {
    let n = bv.len();
    for (c, yc) in y.iter_mut().enumerate() {
        let (hc, ac) = (&mut h[c * n..(c + 1) * n], &a_log[c * n..(c + 1) * n]);
        let (dtc, uc) = (dt[c], u[c]);
        for ((hs, &a_s), &b_s) in hc.iter_mut().zip(ac).zip(bv) {
            let decay = (-(dtc * a_s.fast_exp_fused())).fast_exp_fused();
            *hs = decay * *hs + dtc * b_s * uc;
        }
        *yc = (dot(cv, hc) + d_skip[c] * uc) * silu(z[c]);
    }
}

/// y (m, n) = x (m, k) · wᵀ + bias with w (n, k): matrix-vector products for one row, the
/// engine's GEMM for a batch.
fn project<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T], [m, k, n]: [usize; 3]) {
    match m {
        1 => matvec(w, x, bias, y),
        _ => linear_rows(x, w, bias, y, [m, k, n]),
    }
}

/// y (rows) = w (rows, k) · x (k) + bias.
fn matvec<T: Float>(w: &[T], x: &[T], bias: Option<&[T]>, y: &mut [T]) {
    // SAFETY: the dispatch runs a target-feature build only on a CPU that has the features.
    unsafe { matvec_dispatch(w, x, bias, y) }
}

multiversion!(matvec_dispatch => matvec_kernel(w: &[T], x: &[T], bias: Option<&[T]>, y: &mut [T]));

/// [`matvec`]'s loop, whose dot products vectorize to the widest registers of the build.
#[inline(always)]
unsafe fn matvec_kernel<T: Float>(w: &[T], x: &[T], bias: Option<&[T]>, y: &mut [T]) {
    for (i, (yi, row)) in y.iter_mut().zip(w.chunks_exact(x.len())).enumerate() {
        *yi = dot(row, x) + bias.map_or(T::zero(), |b| b[i]);
    }
}

/// Σ a·b with eight running sums, which the compiler keeps in vector registers.
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (ca, cb) in a8.zip(b8) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

impl<T: Float> MambaMixer<T> {
    /// out (b, 1, d) = mixer(x (b, 1, d)) for one new token per sequence, continuing `state` and
    /// advancing it past that token: the numbers of [`MambaMixer::forward`] at l = 1 with the
    /// state, computed as the recurrence. On a GPU it is that forward.
    pub fn step(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut MixerState<T>,
    ) -> Result<()> {
        const OP: &str = "MambaMixer::step";
        let MixerDims {
            d_model: d,
            d_inner: di,
            d_state: n,
            d_conv: k,
            ..
        } = self.dims;
        let b = match *x.dims() {
            [b, 1, dx] if dx == d && b > 0 => b,
            _ => return Err(Error::shape(OP, "x", format!("[b, 1, {d}]"), x.dims())),
        };
        state.conv.expect_dims(OP, "state.conv", &[b, k - 1, di])?;
        state.ssm.expect_dims(OP, "state.ssm", &[b, di, n])?;
        if x.device().is_cuda() {
            return self.forward(x, out, Some(state), false);
        }
        let w = Weights::of(self)?;
        out.reset_output([b, 1, d], x.device())?;
        let (xs, os) = (x.host()?, out.host_mut()?);
        let (conv, ssm) = (state.conv.host_mut()?, state.ssm.host_mut()?);
        w.tokens(xs, os, conv, ssm, b);
        Ok(())
    }
}

impl<T: Float> MambaBlock<T> {
    /// out (b, 1, d) = x + mixer(norm(x)) for one new token per sequence, advancing `state`.
    pub fn step(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut MixerState<T>,
    ) -> Result<()> {
        self.norm.forward(x, &mut self.normed)?;
        self.mixer.step(&self.normed, out, state)?;
        add_into(x, out)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::{DtInit, scan_inputs};
    use super::*;
    use crate::nn::init::normal;
    use crate::ops::scan::selective_scan_ref;

    fn mixer(selective: bool, k: usize, seed: u64) -> MambaMixer<f64> {
        let dims = MixerDims {
            d_model: 6,
            d_inner: 12,
            d_state: 5,
            d_conv: k,
            dt_rank: 3,
            bias: true,
            conv_bias: true,
            selective,
        };
        let dt = DtInit {
            min: 1e-3,
            max: 0.1,
            floor: 1e-4,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = MambaMixer::<f64>::new(dims, dt, 1.0, &mut rng);
        // Non-zero biases and a varied A, so that every term of the step is exercised.
        let mut perturb = |p: &mut crate::nn::Param<f64>| {
            let noise = normal::<f64>(&mut rng, p.value.dims(), 0.3);
            for (v, e) in p.value.host_mut().unwrap().iter_mut().zip(noise.to_vec()) {
                *v += e;
            }
        };
        for p in [&mut m.in_bias_x, &mut m.in_bias_z, &mut m.out_bias]
            .into_iter()
            .flatten()
        {
            perturb(p);
        }
        perturb(&mut m.a_log);
        perturb(&mut m.d_skip);
        m
    }

    fn input(b: usize, l: usize, d: usize, seed: u64) -> Tensor<f64> {
        normal(&mut StdRng::seed_from_u64(seed), &[b, l, d], 1.0)
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Token j of every sequence of x (b, l, d), as (b, 1, d).
    fn position(x: &Tensor<f64>, j: usize) -> Tensor<f64> {
        let [b, l, d] = *x.dims() else { panic!() };
        let v = x.to_vec();
        let rows = (0..b).flat_map(|bi| v[(bi * l + j) * d..(bi * l + j + 1) * d].to_vec());
        Tensor::from_vec([b, 1, d], rows.collect()).unwrap()
    }

    #[test]
    fn step_matches_the_parallel_forward_at_every_position() {
        for (selective, k, b) in [(true, 4, 1), (true, 4, 3), (false, 4, 2), (true, 2, 2)] {
            let (l, d) = (7, 6);
            let mut m = mixer(selective, k, 11);
            let x = input(b, l, d, 5);
            // The forward continues a state that is not zero: a prefix of three tokens.
            let prefix = input(b, 3, d, 9);
            let mut scratch = Tensor::default();
            let mut par_state = m.zero_state(b).unwrap();
            m.forward(&prefix, &mut scratch, Some(&mut par_state), false)
                .unwrap();
            let mut step_state = par_state.clone();
            let mut full = Tensor::default();
            m.forward(&x, &mut full, Some(&mut par_state), false)
                .unwrap();
            let full = full.to_vec();
            let mut out = Tensor::default();
            for j in 0..l {
                m.step(&position(&x, j), &mut out, &mut step_state).unwrap();
                let want = position(&Tensor::from_vec([b, l, d], full.clone()).unwrap(), j);
                let diff = max_diff(&out.to_vec(), &want.to_vec());
                assert!(
                    diff < 1e-12,
                    "selective {selective}, k {k}, b {b}, t {j}: {diff}"
                );
            }
            let conv = max_diff(&step_state.conv.to_vec(), &par_state.conv.to_vec());
            let ssm = max_diff(&step_state.ssm.to_vec(), &par_state.ssm.to_vec());
            assert!(conv < 1e-14 && ssm < 1e-12, "states: {conv} {ssm}");
        }
    }

    #[test]
    fn stepped_state_equals_the_reference_scan_of_the_same_inputs() {
        let (b, l, d) = (2, 9, 6);
        let mut m = mixer(true, 4, 3);
        let x = input(b, l, d, 1);
        let mut out = Tensor::default();
        m.forward(&x, &mut out, None, true).unwrap();
        let inputs = scan_inputs(&m.cache, &m.d_skip.value, &m.dt_proj_b.value, None);
        let (_, last) = selective_scan_ref(&inputs).unwrap();
        let mut state = m.zero_state(b).unwrap();
        let mut y = Tensor::default();
        for j in 0..l {
            m.step(&position(&x, j), &mut y, &mut state).unwrap();
        }
        let diff = max_diff(&state.ssm.to_vec(), &last.to_vec());
        assert!(diff < 1e-12, "last state vs selective_scan_ref: {diff}");
    }

    #[test]
    fn step_names_a_wrong_shape() {
        let mut m = mixer(true, 4, 0);
        let mut state = m.zero_state(2).unwrap();
        let mut out = Tensor::default();
        let e = m
            .step(&input(2, 2, 6, 0), &mut out, &mut state)
            .unwrap_err();
        assert!(e.to_string().contains("x"), "{e}");
        let e = m
            .step(&input(3, 1, 6, 0), &mut out, &mut state)
            .unwrap_err();
        assert!(e.to_string().contains("state.conv"), "{e}");
    }
}
