//! cu/cross_entropy.cu against ssm::ops::loss, with ignored rows (-100), vocabularies below and
//! above the block size, and large logits (the max subtraction must hold).

use rand::RngExt;
use ssm::Tensor;
use ssm::ops::loss;
use ssm_kernels::cross_entropy as k;
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{assert_close_rel, rng, run, schedules, uniform};

#[test]
pub(crate) fn forward_and_backward_match_the_cpu_op() {
    for (i, &(m, v)) in [(1usize, 5usize), (13, 300), (40, 1001)].iter().enumerate() {
        let mut r = rng(i as u64);
        let logits = uniform(&mut r, m * v, -30.0, 30.0);
        let targets: Vec<i64> = (0..m)
            .map(|j| {
                if j % 4 == 3 {
                    loss::IGNORE_INDEX
                } else {
                    r.random_range(0..v as i64)
                }
            })
            .collect();
        let dlogits0 = uniform(&mut r, m * v, -1.0, 1.0);
        let lt = Tensor::from_vec([m, v], logits.clone()).unwrap();
        let mut want_lse = Tensor::default();
        let (want_mean, scored) = loss::cross_entropy_fwd(&lt, &targets, &mut want_lse).unwrap();
        let mut want_dl = Tensor::from_vec([m, v], dlogits0.clone()).unwrap();
        loss::cross_entropy_bwd(&lt, &targets, &want_lse, 0.7, &mut want_dl).unwrap();
        for schedule in schedules() {
            let (mut lse, mut rows, mut dl) =
                (vec![0.0f32; m], vec![f32::NAN; m], dlogits0.clone());
            let launches = [
                k::cross_entropy_fwd(p(&logits), p(&targets), pm(&mut lse), pm(&mut rows), m, v)
                    .unwrap(),
                k::cross_entropy_bwd(
                    p(&logits),
                    p(&targets),
                    p(&lse),
                    pm(&mut dl),
                    m,
                    v,
                    0.7,
                    scored,
                )
                .unwrap(),
            ];
            // SAFETY: logits and dl (m, v), targets, lse and rows (m); targets are in range or -100.
            unsafe { run(&launches, schedule) };
            let ctx = format!("m {m} v {v} {schedule:?}");
            assert_close_rel(&format!("lse, {ctx}"), &lse, &want_lse.to_vec(), 1e-6);
            let mean = rows.iter().map(|&x| x as f64).sum::<f64>() / scored as f64;
            assert!(
                (mean - want_mean).abs() <= 1e-5 * want_mean.abs(),
                "mean loss {mean} vs {want_mean}, {ctx}"
            );
            assert!(
                targets
                    .iter()
                    .zip(&rows)
                    .all(|(&t, &l)| t != loss::IGNORE_INDEX || l == 0.0),
                "ignored rows, {ctx}"
            );
            assert_close_rel(&format!("dlogits, {ctx}"), &dl, &want_dl.to_vec(), 1e-6);
        }
    }
}
