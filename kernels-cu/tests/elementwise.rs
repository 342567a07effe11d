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
fn unary_ops_and_their_backward_match_the_cpu_ops() {
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
fn gate_and_add_match_the_cpu_ops() {
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
