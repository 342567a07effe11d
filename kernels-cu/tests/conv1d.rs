//! cu/conv1d.cu against ssm::ops::conv1d (followed by ssm's SiLU for the fused variant): widths
//! 1 to 4, L = 1 and odd lengths, with and without bias, state and SiLU, three schedules.

use ssm::Tensor;
use ssm::ops::{activation, conv1d as cpu};
use ssm_kernels::conv1d::{self as k, ConvDims};
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{assert_close_rel, rng, run, schedules, uniform};

const REL: f32 = 1e-5;

fn t(dims: &[usize], v: &[f32]) -> Tensor<f32> {
    Tensor::from_vec(dims.to_vec(), v.to_vec()).unwrap()
}

#[test]
pub(crate) fn forward_and_backward_match_the_cpu_ops() {
    let shapes = [
        (2, 1, 5, 4),
        (1, 37, 40, 4),
        (3, 130, 33, 3),
        (1, 70, 8, 1),
        (2, 9, 64, 2),
    ];
    for (si, &(b, l, d, kw)) in shapes.iter().enumerate() {
        let dims = ConvDims { b, l, d, k: kw };
        for variant in 0..4 {
            let (with_bias, with_state, silu) = (variant != 1, variant >= 2, variant % 2 == 1);
            let mut r = rng(si as u64 * 7 + variant as u64);
            let x = uniform(&mut r, b * l * d, -2.0, 2.0);
            let w = uniform(&mut r, d * kw, -1.0, 1.0);
            let bias = uniform(&mut r, d, -0.5, 0.5);
            let state = uniform(&mut r, b * (kw - 1) * d, -2.0, 2.0);
            let dy = uniform(&mut r, b * l * d, -1.0, 1.0);
            let (dx0, dw0, db0) = (
                uniform(&mut r, b * l * d, -1.0, 1.0),
                uniform(&mut r, d * kw, -1.0, 1.0),
                uniform(&mut r, d, -1.0, 1.0),
            );

            let (xt, wt) = (t(&[b, l, d], &x), t(&[d, kw], &w));
            let bt = with_bias.then(|| t(&[d], &bias));
            let st = with_state.then(|| t(&[b, kw - 1, d], &state));
            let mut pre = Tensor::default();
            cpu::causal_conv1d_fwd(&xt, &wt, bt.as_ref(), st.as_ref(), &mut pre).unwrap();
            let (mut want_y, mut g) = (pre.clone(), t(&[b, l, d], &dy));
            if silu {
                activation::silu_fwd(&pre, &mut want_y).unwrap();
                g = Tensor::zeros_cpu([b, l, d]);
                activation::silu_bwd(&pre, &t(&[b, l, d], &dy), &mut g).unwrap();
            }
            let (mut want_dx, mut want_dw, mut want_db) =
                (t(&[b, l, d], &dx0), t(&[d, kw], &dw0), t(&[d], &db0));
            cpu::causal_conv1d_bwd(
                &xt,
                &wt,
                st.as_ref(),
                &g,
                &mut want_dx,
                &mut want_dw,
                with_bias.then_some(&mut want_db),
            )
            .unwrap();

            for schedule in schedules() {
                let (mut y, mut dx, mut dw, mut db) = (
                    vec![0.0f32; b * l * d],
                    dx0.clone(),
                    dw0.clone(),
                    db0.clone(),
                );
                let mut ws = vec![f32::NAN; dims.bwd_workspace_len(silu)];
                let (bp, sp) = (with_bias.then(|| p(&bias)), with_state.then(|| p(&state)));
                let mut launches = vec![
                    k::causal_conv1d_fwd(p(&x), p(&w), bp, sp, pm(&mut y), dims, silu).unwrap(),
                ];
                let dbp = with_bias.then(|| pm(&mut db));
                launches.extend(
                    k::causal_conv1d_bwd(
                        p(&x),
                        p(&w),
                        bp,
                        sp,
                        p(&dy),
                        pm(&mut dx),
                        pm(&mut dw),
                        dbp,
                        pm(&mut ws),
                        dims,
                        silu,
                    )
                    .unwrap(),
                );
                // SAFETY: every buffer has the length of its layout for `dims`.
                unsafe { run(&launches, schedule) };
                let ctx = format!(
                    "{dims:?} bias {with_bias} state {with_state} silu {silu} {schedule:?}"
                );
                assert_close_rel(&format!("y, {ctx}"), &y, &want_y.to_vec(), REL);
                assert_close_rel(&format!("dx, {ctx}"), &dx, &want_dx.to_vec(), REL);
                assert_close_rel(&format!("dw, {ctx}"), &dw, &want_dw.to_vec(), REL);
                assert_close_rel(&format!("dbias, {ctx}"), &db, &want_db.to_vec(), REL);
            }
        }
    }
}
