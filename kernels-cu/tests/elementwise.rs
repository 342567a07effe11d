//! cu/elementwise.cu against ssm::ops::activation.

use ssm::Tensor;
use ssm::ops::activation as act;
use ssm_kernels::{elementwise as ew, host_ptr, host_ptr_mut as mp};

use crate::common::{assert_close, rng, run, schedules, uniform};

const SIZES: [usize; 3] = [1, 1001, 70_003];

fn t(v: &[f32]) -> Tensor<f32> {
    Tensor::from_vec([v.len()], v.to_vec()).unwrap()
}

#[test]
pub(crate) fn unary_ops_and_their_backward_match_the_cpu_ops() {
    for (i, &n) in SIZES.iter().enumerate() {
        let mut r = rng(i as u64);
        // Wide enough to cross softplus' threshold of 20 and both tails of the sigmoid.
        let x = uniform(&mut r, n, -30.0, 30.0);
        let dy = uniform(&mut r, n, -1.0, 1.0);
        let dx0 = uniform(&mut r, n, -1.0, 1.0);
        for schedule in schedules() {
            for (name, fwd, bwd) in [
                (
                    "silu",
                    ew::silu_fwd as fn(_, _, _) -> _,
                    ew::silu_bwd as fn(_, _, _, _) -> _,
                ),
                ("softplus", ew::softplus_fwd, ew::softplus_bwd),
            ] {
                let (mut y, mut dx) = (vec![0.0f32; n], dx0.clone());
                let launches = [
                    fwd(host_ptr(&x), mp(&mut y), n).unwrap(),
                    bwd(host_ptr(&x), host_ptr(&dy), mp(&mut dx), n).unwrap(),
                ];
                // SAFETY: every buffer holds n floats.
                unsafe { run(&launches, schedule) };
                let (mut want_y, mut want_dx) = (Tensor::default(), t(&dx0));
                if name == "silu" {
                    act::silu_fwd(&t(&x), &mut want_y).unwrap();
                    act::silu_bwd(&t(&x), &t(&dy), &mut want_dx).unwrap();
                } else {
                    act::softplus_fwd(&t(&x), &mut want_y).unwrap();
                    act::softplus_bwd(&t(&x), &t(&dy), &mut want_dx).unwrap();
                }
                assert_close(
                    &format!("{name} y, n {n}"),
                    &y,
                    &want_y.to_vec(),
                    1e-6,
                    1e-5,
                );
                assert_close(
                    &format!("{name} dx, n {n}"),
                    &dx,
                    &want_dx.to_vec(),
                    1e-6,
                    1e-5,
                );
            }
        }
    }
}

#[test]
pub(crate) fn gate_and_add_match_the_cpu_ops() {
    for (i, &n) in SIZES.iter().enumerate() {
        let mut r = rng(10 + i as u64);
        let (x, z, dy) = (
            uniform(&mut r, n, -3.0, 3.0),
            uniform(&mut r, n, -12.0, 12.0),
            uniform(&mut r, n, -1.0, 1.0),
        );
        let (dx0, dz0) = (uniform(&mut r, n, -1.0, 1.0), uniform(&mut r, n, -1.0, 1.0));
        for schedule in schedules() {
            let (mut y, mut dx, mut dz, mut acc) =
                (vec![0.0f32; n], dx0.clone(), dz0.clone(), dz0.clone());
            let launches = [
                ew::gate_fwd(host_ptr(&x), host_ptr(&z), mp(&mut y), n).unwrap(),
                ew::gate_bwd(
                    host_ptr(&x),
                    host_ptr(&z),
                    host_ptr(&dy),
                    mp(&mut dx),
                    mp(&mut dz),
                    n,
                )
                .unwrap(),
                ew::add_into(host_ptr(&x), mp(&mut acc), n).unwrap(),
            ];
            // SAFETY: every buffer holds n floats.
            unsafe { run(&launches, schedule) };
            let (mut want_y, mut want_dx, mut want_dz, mut want_acc) =
                (Tensor::default(), t(&dx0), t(&dz0), t(&dz0));
            act::gate_fwd(&t(&x), &t(&z), &mut want_y).unwrap();
            act::gate_bwd(&t(&x), &t(&z), &t(&dy), &mut want_dx, &mut want_dz).unwrap();
            act::add_into(&t(&x), &mut want_acc).unwrap();
            assert_close(&format!("gate y, n {n}"), &y, &want_y.to_vec(), 1e-6, 1e-5);
            assert_close(
                &format!("gate dx, n {n}"),
                &dx,
                &want_dx.to_vec(),
                1e-6,
                1e-5,
            );
            assert_close(
                &format!("gate dz, n {n}"),
                &dz,
                &want_dz.to_vec(),
                1e-6,
                1e-5,
            );
            assert_eq!(acc, want_acc.to_vec(), "add_into, n {n}");
        }
    }
}

/// Sizes of the newer ops: one element, one past a block, and many blocks with a ragged end.
const ODD_SIZES: [usize; 3] = [1, 257, 10_001];

#[test]
pub(crate) fn gelu_and_its_backward_match_the_cpu_ops() {
    for (i, &n) in ODD_SIZES.iter().enumerate() {
        let mut r = rng(20 + i as u64);
        // Past |x| = 10, where tanh saturates and e^{2u} overflows on the negative side.
        let x = uniform(&mut r, n, -12.0, 12.0);
        let (dy, dx0) = (uniform(&mut r, n, -1.0, 1.0), uniform(&mut r, n, -1.0, 1.0));
        let (mut want_y, mut want_dx) = (Tensor::default(), t(&dx0));
        act::gelu_fwd(&t(&x), &mut want_y).unwrap();
        act::gelu_bwd(&t(&x), &t(&dy), &mut want_dx).unwrap();
        for schedule in schedules() {
            let (mut y, mut dx) = (vec![f32::NAN; n], dx0.clone());
            let launches = [
                ew::gelu_fwd(host_ptr(&x), mp(&mut y), n).unwrap(),
                ew::gelu_bwd(host_ptr(&x), host_ptr(&dy), mp(&mut dx), n).unwrap(),
            ];
            // SAFETY: every buffer holds n floats.
            unsafe { run(&launches, schedule) };
            assert_close(&format!("gelu y, n {n}"), &y, &want_y.to_vec(), 1e-6, 1e-5);
            let want_dx = want_dx.to_vec();
            assert_close(&format!("gelu dx, n {n}"), &dx, &want_dx, 1e-6, 1e-5);
        }
    }
}

#[test]
pub(crate) fn neg_exp_mul_add_scale_and_broadcast_match_plain_loops() {
    for (i, &n) in ODD_SIZES.iter().enumerate() {
        let mut r = rng(30 + i as u64);
        let (a, b, out0) = (
            uniform(&mut r, n, -4.0, 4.0),
            uniform(&mut r, n, -1.0, 1.0),
            uniform(&mut r, n, -1.0, 1.0),
        );
        // A row as long as n itself, and one that divides n into many rows.
        let inners = [n, [1, 1, 73][i]];
        let want_neg_exp: Vec<f32> = a.iter().map(|v| -v.exp()).collect();
        let want_fma: Vec<f32> = (0..n).map(|j| out0[j] + a[j] * b[j]).collect();
        let want_scaled: Vec<f32> = out0.iter().map(|v| v * -0.37).collect();
        for schedule in schedules() {
            let (mut y, mut out, mut scaled) = (vec![f32::NAN; n], out0.clone(), out0.clone());
            let mut launches = vec![
                ew::neg_exp(host_ptr(&a), mp(&mut y), n).unwrap(),
                ew::mul_add_into(host_ptr(&a), host_ptr(&b), mp(&mut out), n).unwrap(),
                ew::scale(mp(&mut scaled), -0.37, n).unwrap(),
            ];
            let mut broadcast = vec![out0.clone(); inners.len()];
            for (dst, &inner) in broadcast.iter_mut().zip(&inners) {
                launches.push(ew::add_broadcast(host_ptr(&b), inner, mp(dst), n).unwrap());
            }
            // SAFETY: every buffer holds n floats, and b at least inner.
            unsafe { run(&launches, schedule) };
            assert_close(&format!("neg_exp, n {n}"), &y, &want_neg_exp, 0.0, 1e-6);
            assert_close(&format!("mul_add_into, n {n}"), &out, &want_fma, 1e-6, 1e-6);
            assert_eq!(scaled, want_scaled, "scale, n {n}");
            for (got, &inner) in broadcast.iter().zip(&inners) {
                let want: Vec<f32> = (0..n).map(|j| out0[j] + b[j % inner]).collect();
                assert_eq!(got, &want, "add_broadcast, n {n}, inner {inner}");
            }
        }
    }
    assert!(ew::add_broadcast(0, 0, 0, 0).is_err());
    assert!(ew::add_broadcast(0, 3, 0, 10).is_err());
}

#[test]
pub(crate) fn strided_copies_touch_only_their_columns() {
    // (rows, cols, src_stride, dst_stride): one long row, a row wider than both strides (allowed
    // for a single row), narrow rows of wider matrices both ways, and rows of equal stride.
    for &(rows, cols, ss, ds) in &[
        (1usize, 10_001usize, 10_001usize, 10_001usize),
        (1, 9, 4, 2),
        (37, 5, 12, 7),
        (257, 33, 33, 100),
        (3, 64, 64, 64),
    ] {
        let mut r = rng((rows * cols) as u64);
        let src = uniform(&mut r, (rows - 1) * ss + cols, -1.0, 1.0);
        let dst0 = uniform(&mut r, (rows - 1) * ds + cols + 3, -1.0, 1.0);
        for accumulate in [false, true] {
            let mut want = dst0.clone();
            for row in 0..rows {
                for c in 0..cols {
                    let v = src[row * ss + c];
                    let d = &mut want[row * ds + c];
                    *d = if accumulate { *d + v } else { v };
                }
            }
            for schedule in schedules() {
                let mut dst = dst0.clone();
                let launch =
                    ew::copy_strided(host_ptr(&src), ss, mp(&mut dst), ds, rows, cols, accumulate)
                        .unwrap();
                // SAFETY: src and dst hold (rows - 1) strides plus cols floats.
                unsafe { run(&[launch], schedule) };
                assert_eq!(
                    dst, want,
                    "rows {rows}, cols {cols}, strides {ss}/{ds}, accumulate {accumulate}"
                );
            }
        }
    }
    assert!(ew::copy_strided(0, 4, 0, 8, 2, 5, false).is_err());
    assert!(ew::copy_strided(0, 8, 0, 4, 2, 5, true).is_err());
    assert!(ew::copy_strided(0, 0, 0, 0, 0, 0, false).is_ok());
}
