//! Every op of the engine on the CPU and on a device, from the same seeded random inputs. Each
//! case is one closure run twice, once per device; gradient buffers start random (but in the
//! optimizer case, where they are the inputs), so that the accumulating backwards are checked to
//! add rather than overwrite.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{Check, ParityPlan, Sink, compare};
use crate::device::synchronize;
use crate::error::Result;
use crate::nn::{Module, Param};
use crate::ops::activation::*;
use crate::ops::attention::{AttentionGrads, AttentionOutput, attention_bwd, attention_fwd};
use crate::ops::conv1d::{causal_conv1d_bwd, causal_conv1d_fwd, causal_conv1d_next_state};
use crate::ops::copy::{add_broadcast, copy_cols, sum_leading_into};
use crate::ops::embedding::{embedding_bwd, embedding_fwd};
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::ops::loss::{IGNORE_INDEX, cross_entropy_bwd, cross_entropy_fwd};
use crate::ops::norm::{rmsnorm_bwd, rmsnorm_fwd};
use crate::ops::rope::{rope_bwd, rope_fwd, rope_fwd_inplace};
use crate::ops::scan::{ScanGrads, ScanInputs, ScanOutput, selective_scan_bwd, selective_scan_fwd};
use crate::ops::ssd::{NO_DT_LIMIT, SsdGrads, SsdInputs, SsdOutput, ssd_bwd, ssd_fwd};
use crate::optim::{AdamW, AdamWConfig, clip_grad_norm};
use crate::tensor::{Device, Tensor};

/// Elementwise results: only the rounding of `expf`/`tanhf` and fused multiply-adds differ.
const ELEMENTWISE: f64 = 1e-5;
/// Sums over one row (matmuls, norms, softmax) in another order.
const ROW_SUMS: f64 = 1e-4;
/// Sums over every token of a long sequence (weight gradients, the scan's dA/dB/dC and the
/// attention's dk/dv): cuBLAS, atomics and chunked scans add thousands of terms in another order.
const TOKEN_SUMS: f64 = 1e-3;

type Outputs = Vec<(&'static str, Tensor)>;

/// Seeded random tensors on one device; the same seed gives the same values on every device.
struct Inputs {
    rng: StdRng,
    device: Device,
}

impl Inputs {
    fn new(device: Device) -> Self {
        Inputs {
            rng: StdRng::seed_from_u64(2024),
            device,
        }
    }

    fn uniform(&mut self, dims: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
        let n = dims.iter().product();
        let v = (0..n).map(|_| self.rng.random_range(lo..hi)).collect();
        Tensor::from_vec(dims, v)?.to_device(self.device)
    }

    fn t(&mut self, dims: &[usize]) -> Result<Tensor> {
        self.uniform(dims, -1.0, 1.0)
    }

    fn ids(&mut self, n: usize, v: u32) -> Vec<u32> {
        (0..n).map(|_| self.rng.random_range(0..v)).collect()
    }
}

struct Runner<'a> {
    device: Device,
    checks: Vec<Check>,
    sink: Sink<'a>,
}

impl Runner<'_> {
    /// Runs `f` on the CPU and on the device and compares each output with the tolerance `tol`
    /// gives for its name. A case that fails to run (a launch error, a fault found when the
    /// device synchronizes) becomes a failed check, and the run goes on.
    fn case(
        &mut self,
        name: String,
        tol: impl Fn(&str) -> f64,
        f: impl Fn(&mut Inputs) -> Result<Outputs>,
    ) {
        let run = || -> Result<Vec<Check>> {
            let want = f(&mut Inputs::new(Device::Cpu))?;
            let got = f(&mut Inputs::new(self.device))?;
            synchronize(self.device)?;
            want.iter()
                .zip(&got)
                .map(|((what, w), (_, g))| compare(format!("{name} {what}"), w, g, tol(what)))
                .collect()
        };
        let checks = run().unwrap_or_else(|e| vec![Check::error(&name, e)]);
        for c in checks {
            (self.sink)(&c);
            self.checks.push(c);
        }
    }
}

/// Every op of `plan` on `device` against the CPU; each check goes to `sink` as it is made.
pub fn op_parity(device: Device, plan: &ParityPlan, sink: Sink) -> Vec<Check> {
    let mut r = Runner {
        device,
        checks: Vec::new(),
        sink,
    };
    for &(b, l) in &plan.rows {
        rows_ops(&mut r, b, l);
    }
    for &(b, l, d, n, g) in &plan.scans {
        scan(&mut r, [b, l, d, n, g]);
    }
    for &(b, l, h, p, g, n, chunk) in &plan.ssd {
        ssd(&mut r, [b, l, h, p, g, n, chunk]);
    }
    for &(b, lq, lk, h, hkv, hd) in &plan.attention {
        attention(&mut r, [b, lq, lk, h, hkv, hd]);
    }
    optimizer(&mut r);
    r.checks
}

/// The ops over token rows: linear, embedding, RMSNorm, conv1d, activations, loss, RoPE, copies.
fn rows_ops(r: &mut Runner, b: usize, l: usize) {
    let tag = |op: &str| format!("{op} b{b} l{l}");
    let (k, n, v) = (48, 40, 50);
    r.case(
        tag("linear"),
        |_| ROW_SUMS,
        |inp| {
            let (x, w, bias, dy) = (
                inp.t(&[b, l, k])?,
                inp.t(&[n, k])?,
                inp.t(&[n])?,
                inp.t(&[b, l, n])?,
            );
            let (mut dx, mut dw, mut db) = (inp.t(&[b, l, k])?, inp.t(&[n, k])?, inp.t(&[n])?);
            let mut y = Tensor::default();
            linear_fwd(&x, &w, Some(&bias), &mut y)?;
            linear_bwd(&x, &w, &dy, Some(&mut dx), &mut dw, Some(&mut db))?;
            Ok(vec![("y", y), ("dx", dx)])
        },
    );
    r.case(
        tag("linear weight grads"),
        |_| TOKEN_SUMS,
        |inp| {
            let (x, w, dy) = (inp.t(&[b, l, k])?, inp.t(&[n, k])?, inp.t(&[b, l, n])?);
            let (mut dw, mut db) = (inp.t(&[n, k])?, inp.t(&[n])?);
            linear_bwd(&x, &w, &dy, None, &mut dw, Some(&mut db))?;
            Ok(vec![("dw", dw), ("dbias", db)])
        },
    );
    r.case(
        tag("embedding"),
        |_| TOKEN_SUMS,
        |inp| {
            let ids = inp.ids(b * l, v as u32);
            let (table, dout, mut dtable) =
                (inp.t(&[v, 24])?, inp.t(&[b, l, 24])?, inp.t(&[v, 24])?);
            let mut out = Tensor::default();
            embedding_fwd(&ids, &[b, l], &table, &mut out)?;
            embedding_bwd(&ids, &dout, &mut dtable)?;
            Ok(vec![("out", out), ("dtable", dtable)])
        },
    );
    r.case(
        tag("rmsnorm"),
        |_| ROW_SUMS,
        |inp| {
            let (x, w, dy, mut dx) = (
                inp.t(&[b, l, n])?,
                inp.t(&[n])?,
                inp.t(&[b, l, n])?,
                inp.t(&[b, l, n])?,
            );
            let (mut y, mut rstd, mut dw) = (Tensor::default(), Tensor::default(), inp.t(&[n])?);
            rmsnorm_fwd(&x, &w, 1e-5, &mut y, &mut rstd)?;
            rmsnorm_bwd(&dy, &x, &w, &rstd, &mut dx, &mut dw)?;
            Ok(vec![("y", y), ("rstd", rstd), ("dx", dx), ("dw", dw)])
        },
    );
    r.case(
        tag("conv1d"),
        |_| TOKEN_SUMS,
        |inp| {
            let d = 24;
            let (x, w, bias, state) = (
                inp.t(&[b, l, d])?,
                inp.t(&[d, 4])?,
                inp.t(&[d])?,
                inp.t(&[b, 3, d])?,
            );
            let (dy, mut dx, mut dw, mut db) = (
                inp.t(&[b, l, d])?,
                inp.t(&[b, l, d])?,
                inp.t(&[d, 4])?,
                inp.t(&[d])?,
            );
            let mut y = Tensor::default();
            causal_conv1d_fwd(&x, &w, Some(&bias), Some(&state), &mut y)?;
            causal_conv1d_bwd(&x, &w, Some(&state), &dy, &mut dx, &mut dw, Some(&mut db))?;
            let mut next = state.try_clone()?;
            causal_conv1d_next_state(&x, &mut next)?;
            let (x1, mut short) = (inp.t(&[b, 1, d])?, state.try_clone()?);
            causal_conv1d_next_state(&x1, &mut short)?;
            Ok(vec![
                ("y", y),
                ("dx", dx),
                ("dw", dw),
                ("dbias", db),
                ("next state", next),
                ("next state after 1", short),
            ])
        },
    );
    r.case(
        tag("activations"),
        |_| ELEMENTWISE,
        |inp| {
            let (x, z, dy) = (
                inp.uniform(&[b, l, n], -8.0, 8.0)?,
                inp.t(&[b, l, n])?,
                inp.t(&[b, l, n])?,
            );
            let mut outs = Vec::new();
            type Fwd = fn(&Tensor, &mut Tensor) -> Result<()>;
            type Bwd = fn(&Tensor, &Tensor, &mut Tensor) -> Result<()>;
            let pairs: [(&str, &str, Fwd, Bwd); 3] = [
                ("silu", "dsilu", silu_fwd, silu_bwd),
                ("softplus", "dsoftplus", softplus_fwd, softplus_bwd),
                ("gelu", "dgelu", gelu_fwd, gelu_bwd),
            ];
            for (fname, bname, fwd, bwd) in pairs {
                let (mut y, mut dx) = (Tensor::default(), inp.t(&[b, l, n])?);
                fwd(&x, &mut y)?;
                bwd(&x, &dy, &mut dx)?;
                outs.extend([(fname, y), (bname, dx)]);
            }
            let (mut y, mut dx, mut dz) =
                (Tensor::default(), inp.t(&[b, l, n])?, inp.t(&[b, l, n])?);
            gate_fwd(&x, &z, &mut y)?;
            gate_bwd(&x, &z, &dy, &mut dx, &mut dz)?;
            let (mut acc, mut a) = (z.try_clone()?, Tensor::default());
            add_into(&x, &mut acc)?;
            neg_exp(&z, &mut a)?;
            let mut prod = dy.try_clone()?;
            mul_add_into(&x, &z, &mut prod)?;
            outs.extend([
                ("gate", y),
                ("dgate x", dx),
                ("dgate z", dz),
                ("add_into", acc),
                ("neg_exp", a),
                ("mul_add_into", prod),
            ]);
            Ok(outs)
        },
    );
    r.case(
        tag("cross entropy"),
        |_| ROW_SUMS,
        |inp| {
            let logits = inp.uniform(&[b * l, v], -4.0, 4.0)?;
            let targets: Vec<i64> = inp
                .ids(b * l, v as u32)
                .into_iter()
                .enumerate()
                .map(|(i, t)| if i % 7 == 3 { IGNORE_INDEX } else { t as i64 })
                .collect();
            let (mut lse, mut dlogits) = (Tensor::default(), inp.t(&[b * l, v])?);
            let loss = cross_entropy_fwd(&logits, &targets, &mut lse)?.0;
            cross_entropy_bwd(&logits, &targets, &lse, 0.7, &mut dlogits)?;
            Ok(vec![
                ("loss", Tensor::from_vec([1], vec![loss as f32])?),
                ("lse", lse),
                ("dlogits", dlogits),
            ])
        },
    );
    r.case(
        tag("rope"),
        |_| ELEMENTWISE,
        |inp| {
            let (x, dy, mut dx) = (
                inp.t(&[b, l, 3, 16])?,
                inp.t(&[b, l, 3, 16])?,
                inp.t(&[b, l, 3, 16])?,
            );
            let (mut y, mut inplace) = (Tensor::default(), x.try_clone()?);
            rope_fwd(&x, 5, 10_000.0, &mut y)?;
            rope_fwd_inplace(&mut inplace, 5, 10_000.0)?;
            rope_bwd(&dy, 5, 10_000.0, &mut dx)?;
            Ok(vec![("y", y), ("in place", inplace), ("dx", dx)])
        },
    );
    r.case(
        tag("copies"),
        |_| ELEMENTWISE,
        |inp| {
            let (src, mut dst) = (inp.t(&[b, l, 20])?, inp.t(&[b, l, 12])?);
            copy_cols(&src, &mut dst, b * l, [3, 2], 7, false)?;
            copy_cols(&src, &mut dst, b * l, [11, 9], 3, true)?;
            let (table, mut x) = (inp.t(&[l + 4, 6])?, inp.t(&[b, l, 6])?);
            add_broadcast(&table, 2 * 6, &mut x)?;
            let mut dtable = inp.t(&[l + 4, 6])?;
            sum_leading_into(&x, &mut dtable, 6)?;
            Ok(vec![
                ("copy_cols", dst),
                ("add_broadcast", x),
                ("sum_leading_into", dtable),
            ])
        },
    );
}

/// The scan with every option (D, z, delta_bias with softplus, initial state, a gradient of the
/// last state) and with none, gradients accumulated into random buffers.
fn scan(r: &mut Runner, [b, l, d, n, g]: [usize; 5]) {
    for full in [true, false] {
        let name = format!(
            "scan {} b{b} l{l} d{d} n{n} g{g}",
            if full { "all options" } else { "bare" }
        );
        // dA, dB, dC, dD and d_delta_bias sum over every token of a sequence (dB and dC through
        // atomics across channel blocks on the GPU).
        let tol = |what: &str| match what {
            "dA" | "dB" | "dC" | "dD" | "ddelta_bias" => TOKEN_SUMS,
            _ => ROW_SUMS,
        };
        r.case(name, tol, |inp| {
            let u = inp.t(&[b, l, d])?;
            // Without softplus, delta is the step itself and must be positive.
            let delta = if full {
                inp.uniform(&[b, l, d], -3.0, 0.5)?
            } else {
                inp.uniform(&[b, l, d], 0.01, 1.0)?
            };
            let a = inp.uniform(&[d, n], -2.0, -0.1)?;
            let (bm, cm) = (inp.t(&[b, l, g, n])?, inp.t(&[b, l, g, n])?);
            let (d_skip, z, h0) = (inp.t(&[d])?, inp.t(&[b, l, d])?, inp.t(&[b, d, n])?);
            let delta_bias = inp.uniform(&[d], -1.0, 0.0)?;
            let (dy, dlast) = (inp.t(&[b, l, d])?, inp.t(&[b, d, n])?);
            let some = |t| full.then_some(t);
            let scan_inputs = ScanInputs {
                u: &u,
                delta: &delta,
                a: &a,
                b: &bm,
                c: &cm,
                d_skip: some(&d_skip),
                z: some(&z),
                delta_bias: some(&delta_bias),
                delta_softplus: full,
                h0: some(&h0),
            };
            let mut out = ScanOutput::default();
            selective_scan_fwd(&scan_inputs, &mut out, true)?;
            let mut random_like = |t: &Tensor| inp.t(t.dims());
            let mut gr = ScanGrads {
                du: random_like(&u)?,
                ddelta: random_like(&delta)?,
                da: random_like(&a)?,
                db: random_like(&bm)?,
                dc: random_like(&cm)?,
                dd_skip: some(&d_skip).map(&mut random_like).transpose()?,
                dz: some(&z).map(&mut random_like).transpose()?,
                ddelta_bias: some(&delta_bias).map(&mut random_like).transpose()?,
                dh0: some(&h0).map(&mut random_like).transpose()?,
            };
            selective_scan_bwd(&scan_inputs, &out, &dy, some(&dlast), &mut gr)?;
            let mut outs = vec![
                ("y", out.y),
                ("last state", out.last_state),
                ("du", gr.du),
                ("ddelta", gr.ddelta),
                ("dA", gr.da),
                ("dB", gr.db),
                ("dC", gr.dc),
            ];
            let optional = [
                ("dD", gr.dd_skip),
                ("dz", gr.dz),
                ("ddelta_bias", gr.ddelta_bias),
                ("dh0", gr.dh0),
            ];
            outs.extend(optional.into_iter().filter_map(|(w, t)| t.map(|t| (w, t))));
            Ok(outs)
        });
    }
}

/// The limits on Δ of the SSD cases with every option: some Δ fall outside.
const SSD_LIMIT: [f64; 2] = [0.05, 0.6];

/// The SSD scan of Mamba-2 with every option (D, dt_bias with softplus, limits that bind, an
/// initial state, a gradient of the last state) and with none; outputs, the saved chunk-start
/// states and every gradient, accumulated into random buffers.
fn ssd(r: &mut Runner, [b, l, h, p, g, n, chunk]: [usize; 7]) {
    for full in [true, false] {
        let name = format!(
            "ssd {} b{b} l{l} h{h} p{p} g{g} n{n} chunk{chunk}",
            if full { "all options" } else { "bare" }
        );
        // dA, dD and d(dt_bias) sum over every token of every sequence, dB and dC over a
        // sequence's chunks and the heads of a group, dh0 through every chunk's state.
        let tol = |what: &str| match what {
            "dA" | "dB" | "dC" | "dD" | "ddt_bias" | "dh0" => TOKEN_SUMS,
            _ => ROW_SUMS,
        };
        r.case(name, tol, |inp| {
            let x = inp.t(&[b, l, h, p])?;
            let bias: Vec<f32> = (0..h).map(|_| inp.rng.random_range(-1.0..0.0)).collect();
            // Without softplus, dt is Δ itself and must be positive. A Δ within 1e-3 of a limit
            // is moved off it: the devices' softplus differ in the last bits, and one of them
            // could clamp where the other does not.
            let dt: Vec<f32> = (0..b * l * h)
                .map(|i| {
                    if !full {
                        return inp.rng.random_range(0.01..0.7);
                    }
                    let raw: f32 = inp.rng.random_range(-3.0..0.5);
                    let delta = (raw as f64 + bias[i % h] as f64).exp().ln_1p();
                    let near = SSD_LIMIT.iter().any(|&edge| (delta - edge).abs() < 1e-3);
                    if near { raw + 0.01 } else { raw }
                })
                .collect();
            let dt = Tensor::from_vec([b, l, h], dt)?.to_device(inp.device)?;
            let dt_bias = Tensor::from_vec([h], bias)?.to_device(inp.device)?;
            // Decays that let a state outlive a chunk, so that what passes between chunks counts.
            let a = inp.uniform(&[h], -0.25, -0.02)?;
            let (bm, cm) = (inp.t(&[b, l, g, n])?, inp.t(&[b, l, g, n])?);
            let d_skip = inp.t(&[h])?;
            let h0 = inp.t(&[b, h, p, n])?;
            let (dy, dlast) = (inp.t(&[b, l, h, p])?, inp.t(&[b, h, p, n])?);
            let some = |t| full.then_some(t);
            let ssd_inputs = SsdInputs {
                x: &x,
                dt: &dt,
                a: &a,
                b: &bm,
                c: &cm,
                d_skip: some(&d_skip),
                dt_bias: some(&dt_bias),
                dt_softplus: full,
                dt_limit: if full { SSD_LIMIT } else { NO_DT_LIMIT },
                h0: some(&h0),
            };
            let mut out = SsdOutput::default();
            ssd_fwd(&ssd_inputs, chunk, &mut out, true)?;
            let mut random_like = |t: &Tensor| inp.t(t.dims());
            let mut gr = SsdGrads {
                dx: random_like(&x)?,
                ddt: random_like(&dt)?,
                da: random_like(&a)?,
                db: random_like(&bm)?,
                dc: random_like(&cm)?,
                dd_skip: some(&d_skip).map(&mut random_like).transpose()?,
                ddt_bias: some(&dt_bias).map(&mut random_like).transpose()?,
                dh0: some(&h0).map(&mut random_like).transpose()?,
            };
            ssd_bwd(&ssd_inputs, &out, &dy, some(&dlast), &mut gr)?;
            let mut outs = vec![
                ("y", out.y),
                ("last state", out.last_state),
                ("chunk states", out.chunk_states),
                ("dx", gr.dx),
                ("ddt", gr.ddt),
                ("dA", gr.da),
                ("dB", gr.db),
                ("dC", gr.dc),
            ];
            let optional = [
                ("dD", gr.dd_skip),
                ("ddt_bias", gr.ddt_bias),
                ("dh0", gr.dh0),
            ];
            outs.extend(optional.into_iter().filter_map(|(w, t)| t.map(|t| (w, t))));
            Ok(outs)
        });
    }
}

fn attention(r: &mut Runner, [b, lq, lk, h, hkv, hd]: [usize; 6]) {
    let name = format!("attention b{b} lq{lq} lk{lk} h{h}/{hkv} hd{hd}");
    r.case(
        name,
        |_| TOKEN_SUMS,
        |inp| {
            let (q, k, v) = (
                inp.t(&[b, lq, h, hd])?,
                inp.t(&[b, lk, hkv, hd])?,
                inp.t(&[b, lk, hkv, hd])?,
            );
            let d_o = inp.t(&[b, lq, h, hd])?;
            let mut out = AttentionOutput::default();
            attention_fwd(&q, &k, &v, None, &mut out)?;
            let mut g = AttentionGrads {
                dq: inp.t(q.dims())?,
                dk: inp.t(k.dims())?,
                dv: inp.t(k.dims())?,
            };
            attention_bwd(&q, &k, &v, &out, &d_o, &mut g)?;
            Ok(vec![
                ("o", out.o),
                ("lse", out.lse),
                ("dq", g.dq),
                ("dk", g.dk),
                ("dv", g.dv),
            ])
        },
    );
}

/// Parameters without a model, for the optimizer ops.
struct Params(Vec<Param>);

impl Module<f32> for Params {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<f32>)) {
        for (i, p) in self.0.iter_mut().enumerate() {
            f(&format!("p{i}"), p);
        }
    }
}

/// Gradient clipping and two AdamW updates of parameters with random gradients.
fn optimizer(r: &mut Runner) {
    r.case(
        "clip_grad_norm + 2 AdamW steps".into(),
        |_| ROW_SUMS,
        |inp| {
            let mut params = Params(Vec::new());
            for (dims, decay) in [(vec![300, 7], true), (vec![1001], false)] {
                let mut p = Param::new(inp.t(&dims)?, decay);
                p.to_device(inp.device)?;
                p.grad = inp.t(&dims)?;
                params.0.push(p);
            }
            let mut opt = AdamW::new(AdamWConfig::default());
            let norm = clip_grad_norm(&mut params, 2.0)?;
            opt.update(&mut params, 1e-2)?;
            opt.update(&mut params, 1e-2)?;
            let mut outs = vec![("grad norm", Tensor::from_vec([1], vec![norm as f32])?)];
            for p in params.0 {
                outs.extend([("clipped grad", p.grad), ("value", p.value)]);
            }
            Ok(outs)
        },
    );
}
