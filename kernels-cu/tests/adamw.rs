//! cu/adamw.cu against an f64 evaluation of ssm::optim::AdamW's formula, over several steps, with
//! and without weight decay.

use ssm_kernels::adamw::{AdamWStep, adamw};
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{assert_close_rel, rng, run, schedules, uniform};

#[test]
pub(crate) fn updates_match_the_formula_over_several_steps() {
    let n = 1003;
    for decay in [false, true] {
        for schedule in schedules() {
            let mut r = rng(decay as u64);
            let mut param = uniform(&mut r, n, -1.0, 1.0);
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut want: Vec<(f64, f64, f64)> =
                param.iter().map(|&x| (x as f64, 0.0, 0.0)).collect();
            for step in 1..=4u64 {
                let h = AdamWStep {
                    lr: 3e-3,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    step,
                    decay,
                };
                let g = uniform(&mut r, n, -1.0, 1.0);
                let launch = adamw(pm(&mut param), p(&g), pm(&mut m), pm(&mut v), n, &h).unwrap();
                // SAFETY: all four buffers hold n floats.
                unsafe { run(&[launch], schedule) };
                let (bc1, bc2) = (
                    1.0 - h.beta1.powi(step as i32),
                    1.0 - h.beta2.powi(step as i32),
                );
                for (w, &gi) in want.iter_mut().zip(&g) {
                    let gi = gi as f64;
                    w.1 = h.beta1 * w.1 + (1.0 - h.beta1) * gi;
                    w.2 = h.beta2 * w.2 + (1.0 - h.beta2) * gi * gi;
                    let wd = if decay { h.lr * h.weight_decay } else { 0.0 };
                    w.0 -= h.lr / bc1 * w.1 / (w.2.sqrt() / bc2.sqrt() + h.eps) + wd * w.0;
                }
                let ctx = format!("decay {decay} step {step} {schedule:?}");
                assert_close_rel(
                    &format!("param, {ctx}"),
                    &param,
                    &want.iter().map(|w| w.0 as f32).collect::<Vec<_>>(),
                    1e-6,
                );
                assert_close_rel(
                    &format!("m, {ctx}"),
                    &m,
                    &want.iter().map(|w| w.1 as f32).collect::<Vec<_>>(),
                    1e-6,
                );
                assert_close_rel(
                    &format!("v, {ctx}"),
                    &v,
                    &want.iter().map(|w| w.2 as f32).collect::<Vec<_>>(),
                    1e-6,
                );
            }
        }
    }
}
