//! cu/attention.cu against ssm's f64 reference (`attention_ref`, `attention_ref_bwd`): one token,
//! odd lengths over several tiles, more keys than queries (a KV cache), grouped-query heads,
//! head dimensions from 8 to the maximum of 128, three schedules. Also the broken forward that
//! reads tile columns past hd that it never wrote, which the poisoned shared memory must expose.

use ssm::Tensor;
use ssm::ops::attention as cpu;
use ssm_kernels::attention::{self as k, AttnDims};
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use ssm_kernels::emu::Schedule;

use crate::common::{assert_close_rel, rng, run, schedules, uniform};

const REL: f32 = 1e-5;

fn f64_tensor(dims: &[usize], v: &[f32]) -> Tensor<f64> {
    Tensor::from_vec(dims.to_vec(), v.iter().map(|&x| x as f64).collect()).unwrap()
}

fn f32s(t: &Tensor<f64>) -> Vec<f32> {
    t.to_vec().iter().map(|&x| x as f32).collect()
}

fn dims_of((b, lq, lk, h, hkv, hd): (usize, usize, usize, usize, usize, usize)) -> AttnDims {
    AttnDims {
        b,
        lq,
        lk,
        h,
        hkv,
        hd,
    }
}

/// q, k, v: (b, lq, h, hd), (b, lk, hkv, hd) twice.
fn qkv(dims: AttnDims, r: &mut rand::rngs::StdRng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (nq, nk) = (
        dims.b * dims.lq * dims.h * dims.hd,
        dims.b * dims.lk * dims.hkv * dims.hd,
    );
    (
        uniform(r, nq, -2.0, 2.0),
        uniform(r, nk, -2.0, 2.0),
        uniform(r, nk, -1.0, 1.0),
    )
}

type Forward =
    fn(u64, u64, u64, u64, u64, AttnDims, f32) -> ssm_kernels::Result<ssm_kernels::Launch>;

/// o and lse of the forward kernel `fwd`.
fn forward(
    fwd: Forward,
    dims: AttnDims,
    (q, kk, v): (&[f32], &[f32], &[f32]),
    schedule: Schedule,
) -> (Vec<f32>, Vec<f32>) {
    let mut o = vec![0.0f32; q.len()];
    let mut lse = vec![0.0f32; dims.b * dims.h * dims.lq];
    let scale = cpu::default_scale(dims.hd) as f32;
    let launch = fwd(p(q), p(kk), p(v), pm(&mut o), pm(&mut lse), dims, scale).unwrap();
    // SAFETY: every buffer has the length of its layout for `dims`.
    unsafe { run(&[launch], schedule) };
    (o, lse)
}

#[test]
pub(crate) fn forward_and_backward_match_the_reference() {
    let shapes = [
        (1, 1, 1, 1, 1, 8),
        (2, 37, 37, 4, 2, 16),
        (1, 20, 45, 2, 1, 24),
        (1, 70, 70, 3, 3, 8),
        (1, 40, 40, 2, 1, 64),
        (1, 17, 17, 2, 1, 128),
    ];
    for (si, &shape) in shapes.iter().enumerate() {
        let dims = dims_of(shape);
        let AttnDims {
            b,
            lq,
            lk,
            h,
            hkv,
            hd,
        } = dims;
        let mut r = rng(si as u64);
        let (nq, nk) = (b * lq * h * hd, b * lk * hkv * hd);
        let (q, kk, v) = qkv(dims, &mut r);
        let dout = uniform(&mut r, nq, -1.0, 1.0);
        let (dq0, dk0, dv0) = (
            uniform(&mut r, nq, -1.0, 1.0),
            uniform(&mut r, nk, -1.0, 1.0),
            uniform(&mut r, nk, -1.0, 1.0),
        );
        let scale = cpu::default_scale(hd);
        let (qt, kt, vt) = (
            f64_tensor(&[b, lq, h, hd], &q),
            f64_tensor(&[b, lk, hkv, hd], &kk),
            f64_tensor(&[b, lk, hkv, hd], &v),
        );
        let want = cpu::attention_ref(&qt, &kt, &vt, Some(scale)).unwrap();
        let wg = cpu::attention_ref_bwd(
            &qt,
            &kt,
            &vt,
            Some(scale),
            &f64_tensor(&[b, lq, h, hd], &dout),
        )
        .unwrap();
        let plus = |init: &[f32], g: &Tensor<f64>| {
            init.iter()
                .zip(f32s(g))
                .map(|(a, b)| a + b)
                .collect::<Vec<f32>>()
        };
        let (want_dq, want_dk, want_dv) =
            (plus(&dq0, &wg.dq), plus(&dk0, &wg.dk), plus(&dv0, &wg.dv));
        for schedule in schedules() {
            let mut ws = vec![f32::NAN; dims.bwd_workspace_len()];
            let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
            let (o, lse) = forward(k::attention_fwd, dims, (&q, &kk, &v), schedule);
            let bwd = k::attention_bwd(
                p(&q),
                p(&kk),
                p(&v),
                p(&o),
                p(&lse),
                p(&dout),
                &k::AttnGrads {
                    dq: pm(&mut dq),
                    dk: pm(&mut dk),
                    dv: pm(&mut dv),
                },
                pm(&mut ws),
                dims,
                scale as f32,
            )
            .unwrap();
            // SAFETY: every buffer has the length of its layout for `dims`; the workspace has
            // bwd_workspace_len() floats.
            unsafe { run(&bwd, schedule) };
            let ctx = format!("{dims:?} {schedule:?}");
            assert_close_rel(&format!("o, {ctx}"), &o, &f32s(&want.o), REL);
            assert_close_rel(&format!("lse, {ctx}"), &lse, &f32s(&want.lse), REL);
            assert_close_rel(&format!("dq, {ctx}"), &dq, &want_dq, REL);
            assert_close_rel(&format!("dk, {ctx}"), &dk, &want_dk, REL);
            assert_close_rel(&format!("dv, {ctx}"), &dv, &want_dv, REL);
        }
    }
}

#[test]
fn the_emulation_catches_reads_past_the_head_dimension() {
    for shape in [(1, 70, 70, 2, 1, 64), (1, 70, 70, 2, 1, 8)] {
        let dims = dims_of(shape);
        let (q, kk, v) = qkv(dims, &mut rng(7));
        let want = cpu::attention_ref(
            &f64_tensor(&[dims.b, dims.lq, dims.h, dims.hd], &q),
            &f64_tensor(&[dims.b, dims.lk, dims.hkv, dims.hd], &kk),
            &f64_tensor(&[dims.b, dims.lk, dims.hkv, dims.hd], &v),
            Some(cpu::default_scale(dims.hd)),
        )
        .unwrap();
        for schedule in schedules() {
            let (o, _) = forward(k::attention_fwd, dims, (&q, &kk, &v), schedule);
            assert_close_rel(&format!("o, {dims:?}"), &o, &f32s(&want.o), REL);
            let (bad, _) = forward(k::attention_fwd_broken, dims, (&q, &kk, &v), schedule);
            assert!(
                bad.iter().any(|x| x.is_nan()),
                "{dims:?} {schedule:?}: the broken kernel's reads past hd went unnoticed"
            );
        }
    }
}

#[test]
fn unsupported_shapes_are_errors() {
    let too_wide = AttnDims {
        b: 1,
        lq: 4,
        lk: 4,
        h: 2,
        hkv: 1,
        hd: k::MAX_HEAD_DIM + 1,
    };
    assert!(k::attention_fwd(0, 0, 0, 0, 0, too_wide, 1.0).is_err());
    let fewer_keys = AttnDims {
        b: 1,
        lq: 5,
        lk: 4,
        h: 2,
        hkv: 1,
        hd: 8,
    };
    assert!(k::attention_fwd(0, 0, 0, 0, 0, fewer_keys, 1.0).is_err());
}
