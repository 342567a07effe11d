//! cu/reduce.cu: the sum of squares against an f64 sum.

use ssm_kernels::reduce::{SUM_SQUARES_PARTS, sum_squares_into};
use ssm_kernels::{host_ptr, host_ptr_mut as mp};

use crate::common::{rng, run, schedules, uniform};

#[test]
pub(crate) fn sum_of_squares_matches_an_f64_sum_within_its_rounding_bound() {
    for (i, &n) in [0usize, 1, 257, 10_001, 3_000_001].iter().enumerate() {
        let x = uniform(&mut rng(40 + i as u64), n, -2.0, 2.0);
        let out0 = 0.25f32;
        let want = out0 as f64 + x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        // The longest chain of f32 roundings any term goes through: its square, the thread's
        // in-order sum of its grid-stride share, 5 shuffle levels, the 8 warps, the in-order sum
        // of the parts and the final +=. For nonnegative terms the relative error is at most
        // depth · 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 4.2): 1.9e-5 for
        // n = 3_000_001. Round-off in practice is far smaller (random signs of the errors).
        let per_thread = n.div_ceil(SUM_SQUARES_PARTS * 256);
        let depth = 1 + per_thread + 5 + 8 + SUM_SQUARES_PARTS + 1;
        let tol = depth as f64 * f64::from(f32::EPSILON) / 2.0;
        for schedule in schedules() {
            let (mut parts, mut out) = (vec![f32::NAN; SUM_SQUARES_PARTS], vec![out0]);
            let launches = sum_squares_into(host_ptr(&x), n, mp(&mut parts), mp(&mut out)).unwrap();
            // SAFETY: x holds n floats, parts SUM_SQUARES_PARTS, out one.
            unsafe { run(&launches, schedule) };
            let rel = (out[0] as f64 - want).abs() / want;
            assert!(
                rel <= tol,
                "n {n}: got {} want {want} (relative error {rel:e} > {tol:e})",
                out[0]
            );
        }
    }
}
