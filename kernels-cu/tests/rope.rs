//! cu/rope.cu against ssm::ops::rope: forward, backward (inverse rotation added into dx) and in
//! place, at position 0 and past 65536 where the angles need f64.

use ssm::Tensor;
use ssm::ops::rope::{DEFAULT_ROPE_BASE, rope_bwd, rope_fwd, rope_fwd_inplace};
use ssm_kernels::rope::{RopeDims, rope};
use ssm_kernels::{host_ptr, host_ptr_mut as mp};

use crate::common::{assert_close, rng, run, schedules, uniform};

#[test]
pub(crate) fn forward_backward_and_in_place_match_the_cpu_ops() {
    let shapes = [
        RopeDims {
            b: 2,
            l: 37,
            h: 3,
            hd: 8,
        },
        RopeDims {
            b: 1,
            l: 5,
            h: 2,
            hd: 2,
        },
        RopeDims {
            b: 3,
            l: 9,
            h: 1,
            hd: 70,
        },
    ];
    for (i, &dims) in shapes.iter().enumerate() {
        let RopeDims { b, l, h, hd } = dims;
        let size = b * l * h * hd;
        let mut r = rng(50 + i as u64);
        let (x, dy, dx0) = (
            uniform(&mut r, size, -2.0, 2.0),
            uniform(&mut r, size, -1.0, 1.0),
            uniform(&mut r, size, -1.0, 1.0),
        );
        let t = |v: &[f32]| Tensor::from_vec([b, l, h, hd], v.to_vec()).unwrap();
        for (offset, base) in [
            (0, DEFAULT_ROPE_BASE),
            (65_000, DEFAULT_ROPE_BASE),
            (3, 500.0),
        ] {
            let (mut want_y, mut want_dx, mut want_inplace) = (Tensor::default(), t(&dx0), t(&x));
            rope_fwd(&t(&x), offset, base, &mut want_y).unwrap();
            rope_bwd(&t(&dy), offset, base, &mut want_dx).unwrap();
            rope_fwd_inplace(&mut want_inplace, offset, base).unwrap();
            for schedule in schedules() {
                let (mut y, mut dx, mut inplace) = (vec![f32::NAN; size], dx0.clone(), x.clone());
                let launches = [
                    rope(host_ptr(&x), mp(&mut y), dims, offset, base, false, false).unwrap(),
                    rope(host_ptr(&dy), mp(&mut dx), dims, offset, base, true, true).unwrap(),
                    rope(
                        host_ptr(&inplace),
                        mp(&mut inplace),
                        dims,
                        offset,
                        base,
                        false,
                        false,
                    )
                    .unwrap(),
                ];
                // SAFETY: every buffer holds b · l · h · hd floats; the in-place launch reads and
                // writes the same one, which the kernel allows.
                unsafe { run(&launches, schedule) };
                let what = |op: &str| format!("{op}, {dims:?}, offset {offset}, base {base}");
                assert_close(&what("rope_fwd"), &y, &want_y.to_vec(), 1e-6, 0.0);
                assert_close(&what("rope_bwd"), &dx, &want_dx.to_vec(), 1e-6, 0.0);
                assert_close(
                    &what("rope_fwd_inplace"),
                    &inplace,
                    &want_inplace.to_vec(),
                    1e-6,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn unsupported_rope_arguments_are_errors() {
    let dims = |hd| RopeDims {
        b: 1,
        l: 4,
        h: 2,
        hd,
    };
    assert!(rope(0, 0, dims(8), 0, DEFAULT_ROPE_BASE, false, false).is_ok());
    for hd in [0, 7] {
        assert!(
            rope(0, 0, dims(hd), 0, DEFAULT_ROPE_BASE, false, false).is_err(),
            "hd {hd}"
        );
    }
    for base in [0.0, -10.0, f64::NAN, f64::INFINITY] {
        assert!(
            rope(0, 0, dims(8), 0, base, false, false).is_err(),
            "base {base}"
        );
    }
}
