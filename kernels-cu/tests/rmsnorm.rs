//! cu/rmsnorm.cu against ssm::ops::norm: widths below, at and above the block size, one row and
//! more rows than blocks, rows in 1, 2 and 8 groups, three schedules.

use ssm::Tensor;
use ssm::ops::norm;
use ssm_kernels::rmsnorm as k;
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{assert_close_rel, rng, run, schedules, uniform};

#[test]
pub(crate) fn forward_and_backward_match_the_cpu_op() {
    let cases = [
        (1usize, 7usize, 1usize),
        (5, 256, 1),
        (600, 33, 1),
        (3, 1000, 1),
        (4, 96, 8),
        (300, 640, 2),
    ];
    for (i, &(m, d, groups)) in cases.iter().enumerate() {
        let mut r = rng(i as u64);
        let (x, w, dy) = (
            uniform(&mut r, m * d, -2.0, 2.0),
            uniform(&mut r, d, 0.5, 1.5),
            uniform(&mut r, m * d, -1.0, 1.0),
        );
        let (dx0, dw0) = (
            uniform(&mut r, m * d, -1.0, 1.0),
            uniform(&mut r, d, -1.0, 1.0),
        );
        let eps = 1e-5;
        let t = |dims: &[usize], v: &[f32]| Tensor::from_vec(dims.to_vec(), v.to_vec()).unwrap();
        let (mut want_y, mut want_r) = (Tensor::default(), Tensor::default());
        let (xt, wt) = (t(&[m, d], &x), t(&[d], &w));
        norm::rmsnorm_grouped_fwd(&xt, &wt, eps, groups, &mut want_y, &mut want_r).unwrap();
        let (mut want_dx, mut want_dw) = (t(&[m, d], &dx0), t(&[d], &dw0));
        norm::rmsnorm_grouped_bwd(
            &t(&[m, d], &dy),
            &xt,
            &wt,
            &want_r,
            groups,
            &mut want_dx,
            &mut want_dw,
        )
        .unwrap();
        for schedule in schedules() {
            let (mut y, mut rstd, mut dx, mut dw) = (
                vec![0.0f32; m * d],
                vec![0.0f32; m * groups],
                dx0.clone(),
                dw0.clone(),
            );
            let mut ws = vec![f32::NAN; k::bwd_workspace_len(m, d, groups)];
            let fwd = k::rmsnorm_fwd(
                p(&x),
                p(&w),
                pm(&mut y),
                pm(&mut rstd),
                m,
                d,
                groups,
                eps as f32,
            );
            let mut launches = vec![fwd.unwrap()];
            launches.extend(
                k::rmsnorm_bwd(
                    p(&dy),
                    p(&x),
                    p(&w),
                    p(&rstd),
                    pm(&mut dx),
                    pm(&mut dw),
                    pm(&mut ws),
                    m,
                    d,
                    groups,
                )
                .unwrap(),
            );
            // SAFETY: every buffer has the length of its layout for (m, d, groups).
            unsafe { run(&launches, schedule) };
            let ctx = format!("m {m} d {d} groups {groups} {schedule:?}");
            assert_close_rel(&format!("y, {ctx}"), &y, &want_y.to_vec(), 1e-6);
            assert_close_rel(&format!("rstd, {ctx}"), &rstd, &want_r.to_vec(), 1e-6);
            assert_close_rel(&format!("dx, {ctx}"), &dx, &want_dx.to_vec(), 1e-6);
            assert_close_rel(&format!("dw, {ctx}"), &dw, &want_dw.to_vec(), 1e-6);
        }
    }
}
