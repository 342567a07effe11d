//! RMSNorm, conv1d and linear against their plain references (`ssm::ops::<family>::reference`):
//! outputs and every gradient, on the CPU in f64 and f32 and through the emulated CUDA launches in
//! f32. The references' own backward passes are held to finite differences of their forwards.

use ssm::ops::conv1d::reference::{causal_conv1d_ref, causal_conv1d_ref_bwd};
use ssm::ops::conv1d::{causal_conv1d_bwd, causal_conv1d_fwd};
use ssm::ops::linear::reference::{linear_ref, linear_ref_bwd};
use ssm::ops::linear::{linear_bwd, linear_fwd};
use ssm::ops::norm::reference::{rmsnorm_ref, rmsnorm_ref_bwd};
use ssm::ops::norm::{rmsnorm_bwd, rmsnorm_fwd};
use ssm::{Device, Float, Tensor};

use crate::common::{assert_close, assert_grad, dot, numeric_grad, rng, uniform};

/// The devices and tolerances each op runs at: exact-order agreement in f64, float rounding in
/// f32 (sums of up to ~100 terms).
fn cases() -> [(Device, bool, f64); 3] {
    [
        (Device::Cpu, true, 1e-12),
        (Device::Cpu, false, 2e-5),
        (Device::CudaEmu, false, 2e-5),
    ]
}

fn on<T: Float>(t: &Tensor<f64>, device: Device) -> Tensor<T> {
    t.cast::<T>().to_device(device).unwrap()
}

fn rmsnorm_case<T: Float>(device: Device, tol: f64) {
    let mut r = rng(1);
    let (x, w, dy) = (
        uniform::<f64>(&mut r, &[3, 5, 40], -2.0, 2.0),
        uniform::<f64>(&mut r, &[40], 0.5, 1.5),
        uniform::<f64>(&mut r, &[3, 5, 40], -1.0, 1.0),
    );
    let (xt, wt, dyt) = (
        on::<T>(&x, device),
        on::<T>(&w, device),
        on::<T>(&dy, device),
    );
    let (mut y, mut rstd) = (Tensor::default(), Tensor::default());
    rmsnorm_fwd(&xt, &wt, 1e-5, &mut y, &mut rstd).unwrap();
    // The fast backward accumulates: start from a known non-zero gradient to check that too.
    let mut dx = on::<T>(&dy, device);
    let mut dw = on::<T>(&w, device);
    rmsnorm_bwd(&dyt, &xt, &wt, &rstd, &mut dx, &mut dw).unwrap();
    let (want_dx, want_dw) = rmsnorm_ref_bwd(&x, &w, 1e-5, &dy).unwrap();
    let tag = format!("rmsnorm {device} {}", std::any::type_name::<T>());
    assert_close(&tag, &y.cast(), &rmsnorm_ref(&x, &w, 1e-5).unwrap(), tol);
    assert_close(&format!("{tag} dx"), &dx.cast(), &plus(&want_dx, &dy), tol);
    assert_close(&format!("{tag} dw"), &dw.cast(), &plus(&want_dw, &w), tol);
}

fn conv_case<T: Float>(device: Device, tol: f64) {
    let mut r = rng(2);
    let (b, l, d, k) = (2, 9, 24, 4);
    let x = uniform::<f64>(&mut r, &[b, l, d], -1.0, 1.0);
    let w = uniform::<f64>(&mut r, &[d, k], -1.0, 1.0);
    let bias = uniform::<f64>(&mut r, &[d], -1.0, 1.0);
    let state = uniform::<f64>(&mut r, &[b, k - 1, d], -1.0, 1.0);
    let dy = uniform::<f64>(&mut r, &[b, l, d], -1.0, 1.0);
    let tag = format!("conv1d {device} {}", std::any::type_name::<T>());
    for st in [None, Some(&state)] {
        let (xt, wt, bt, dyt) = (
            on::<T>(&x, device),
            on::<T>(&w, device),
            on::<T>(&bias, device),
            on::<T>(&dy, device),
        );
        let stt = st.map(|s| on::<T>(s, device));
        let mut y = Tensor::default();
        causal_conv1d_fwd(&xt, &wt, Some(&bt), stt.as_ref(), &mut y).unwrap();
        let (mut dx, mut dw, mut db) = (
            Tensor::<T>::zeros([b, l, d], device).unwrap(),
            Tensor::<T>::zeros([d, k], device).unwrap(),
            Tensor::<T>::zeros([d], device).unwrap(),
        );
        causal_conv1d_bwd(
            &xt,
            &wt,
            stt.as_ref(),
            &dyt,
            &mut dx,
            &mut dw,
            Some(&mut db),
        )
        .unwrap();
        let want = causal_conv1d_ref(&x, &w, Some(&bias), st).unwrap();
        let (want_dx, want_dw, want_db) = causal_conv1d_ref_bwd(&x, &w, st, &dy).unwrap();
        let tag = format!("{tag} state {}", st.is_some());
        assert_close(&tag, &y.cast(), &want, tol);
        assert_close(&format!("{tag} dx"), &dx.cast(), &want_dx, tol);
        assert_close(&format!("{tag} dw"), &dw.cast(), &want_dw, tol);
        assert_close(&format!("{tag} dbias"), &db.cast(), &want_db, tol);
    }
}

fn linear_case<T: Float>(device: Device, tol: f64) {
    let mut r = rng(3);
    let (x, w, bias, dy) = (
        uniform::<f64>(&mut r, &[2, 7, 33], -1.0, 1.0),
        uniform::<f64>(&mut r, &[20, 33], -1.0, 1.0),
        uniform::<f64>(&mut r, &[20], -1.0, 1.0),
        uniform::<f64>(&mut r, &[2, 7, 20], -1.0, 1.0),
    );
    let (xt, wt, bt, dyt) = (
        on::<T>(&x, device),
        on::<T>(&w, device),
        on::<T>(&bias, device),
        on::<T>(&dy, device),
    );
    let mut y = Tensor::default();
    linear_fwd(&xt, &wt, Some(&bt), &mut y).unwrap();
    let (mut dx, mut dw, mut db) = (
        Tensor::<T>::zeros([2, 7, 33], device).unwrap(),
        Tensor::<T>::zeros([20, 33], device).unwrap(),
        Tensor::<T>::zeros([20], device).unwrap(),
    );
    linear_bwd(&xt, &wt, &dyt, Some(&mut dx), &mut dw, Some(&mut db)).unwrap();
    let (want_dx, want_dw, want_db) = linear_ref_bwd(&x, &w, &dy).unwrap();
    let tag = format!("linear {device} {}", std::any::type_name::<T>());
    assert_close(
        &tag,
        &y.cast(),
        &linear_ref(&x, &w, Some(&bias)).unwrap(),
        tol,
    );
    assert_close(&format!("{tag} dx"), &dx.cast(), &want_dx, tol);
    assert_close(&format!("{tag} dw"), &dw.cast(), &want_dw, tol);
    assert_close(&format!("{tag} dbias"), &db.cast(), &want_db, tol);
}

fn plus(a: &Tensor<f64>, b: &Tensor<f64>) -> Tensor<f64> {
    let v = a
        .to_vec()
        .iter()
        .zip(b.to_vec())
        .map(|(x, y)| x + y)
        .collect();
    Tensor::from_vec(a.dims(), v).unwrap()
}

#[test]
fn rmsnorm_matches_its_reference() {
    for (device, f64_, tol) in cases() {
        if f64_ {
            rmsnorm_case::<f64>(device, tol)
        } else {
            rmsnorm_case::<f32>(device, tol)
        }
    }
}

#[test]
fn conv1d_matches_its_reference() {
    for (device, f64_, tol) in cases() {
        if f64_ {
            conv_case::<f64>(device, tol)
        } else {
            conv_case::<f32>(device, tol)
        }
    }
}

#[test]
fn linear_matches_its_reference() {
    for (device, f64_, tol) in cases() {
        if f64_ {
            linear_case::<f64>(device, tol)
        } else {
            linear_case::<f32>(device, tol)
        }
    }
}

#[test]
fn reference_backwards_match_finite_differences() {
    let mut r = rng(4);
    let dy = uniform::<f64>(&mut r, &[2, 5, 6], -1.0, 1.0);
    let mut x = uniform::<f64>(&mut r, &[2, 5, 6], -1.0, 1.0);
    let mut w = uniform::<f64>(&mut r, &[6], 0.5, 1.5);
    let (dx, dw) = rmsnorm_ref_bwd(&x, &w, 1e-5, &dy).unwrap();
    let w0 = w.clone();
    assert_grad(
        "rmsnorm_ref dx",
        &dx,
        &numeric_grad(&mut x, 1e-4, |x| {
            dot(&rmsnorm_ref(x, &w0, 1e-5).unwrap(), &dy)
        }),
        1e-8,
    );
    let x0 = x.clone();
    assert_grad(
        "rmsnorm_ref dw",
        &dw,
        &numeric_grad(&mut w, 1e-4, |w| {
            dot(&rmsnorm_ref(&x0, w, 1e-5).unwrap(), &dy)
        }),
        1e-8,
    );

    let mut cw = uniform::<f64>(&mut r, &[6, 3], -1.0, 1.0);
    let mut cb = uniform::<f64>(&mut r, &[6], -1.0, 1.0);
    let state = uniform::<f64>(&mut r, &[2, 2, 6], -1.0, 1.0);
    let (dx, dw, db) = causal_conv1d_ref_bwd(&x, &cw, Some(&state), &dy).unwrap();
    let (cw0, cb0) = (cw.clone(), cb.clone());
    let conv = |x: &Tensor<f64>, w: &Tensor<f64>, b: &Tensor<f64>| {
        dot(
            &causal_conv1d_ref(x, w, Some(b), Some(&state)).unwrap(),
            &dy,
        )
    };
    assert_grad(
        "conv1d_ref dx",
        &dx,
        &numeric_grad(&mut x, 1e-4, |x| conv(x, &cw0, &cb0)),
        1e-8,
    );
    assert_grad(
        "conv1d_ref dw",
        &dw,
        &numeric_grad(&mut cw, 1e-4, |w| conv(&x0, w, &cb0)),
        1e-8,
    );
    assert_grad(
        "conv1d_ref dbias",
        &db,
        &numeric_grad(&mut cb, 1e-4, |b| conv(&x0, &cw0, b)),
        1e-8,
    );

    let mut lw = uniform::<f64>(&mut r, &[4, 6], -1.0, 1.0);
    let mut lb = uniform::<f64>(&mut r, &[4], -1.0, 1.0);
    let ldy = uniform::<f64>(&mut r, &[2, 5, 4], -1.0, 1.0);
    let (dx, dw, db) = linear_ref_bwd(&x, &lw, &ldy).unwrap();
    let (lw0, lb0) = (lw.clone(), lb.clone());
    let lin = |x: &Tensor<f64>, w: &Tensor<f64>, b: &Tensor<f64>| {
        dot(&linear_ref(x, w, Some(b)).unwrap(), &ldy)
    };
    assert_grad(
        "linear_ref dx",
        &dx,
        &numeric_grad(&mut x, 1e-4, |x| lin(x, &lw0, &lb0)),
        1e-8,
    );
    assert_grad(
        "linear_ref dw",
        &dw,
        &numeric_grad(&mut lw, 1e-4, |w| lin(&x0, w, &lb0)),
        1e-8,
    );
    assert_grad(
        "linear_ref dbias",
        &db,
        &numeric_grad(&mut lb, 1e-4, |b| lin(&x0, &lw0, b)),
        1e-8,
    );
}

/// The fast matrix products on shapes the threads split (rows of y and dx, rows of dw), odd
/// sizes, a single row, a depth of one, and gradients accumulated over two calls, in f64
/// against the reference.
#[test]
fn linear_matches_its_reference_on_split_and_odd_shapes() {
    for (case, &(m, k, n)) in [(300, 67, 129), (1, 256, 513), (257, 1, 31), (64, 300, 2)]
        .iter()
        .enumerate()
    {
        let mut r = rng(50 + case as u64);
        let x = uniform::<f64>(&mut r, &[m, k], -1.0, 1.0);
        let w = uniform::<f64>(&mut r, &[n, k], -1.0, 1.0);
        let dy = uniform::<f64>(&mut r, &[m, n], -1.0, 1.0);
        let mut y = Tensor::default();
        linear_fwd(&x, &w, None, &mut y).unwrap();
        let (mut dx, mut dw) = (Tensor::zeros_cpu([m, k]), Tensor::zeros_cpu([n, k]));
        for _ in 0..2 {
            linear_bwd(&x, &w, &dy, Some(&mut dx), &mut dw, None).unwrap();
        }
        let (want_dx, want_dw, _) = linear_ref_bwd(&x, &w, &dy).unwrap();
        let tag = format!("linear {m}x{k}x{n}");
        assert_close(&tag, &y, &linear_ref(&x, &w, None).unwrap(), 1e-12);
        assert_close(
            &format!("{tag} dx (twice)"),
            &dx,
            &plus(&want_dx, &want_dx),
            1e-12,
        );
        assert_close(
            &format!("{tag} dw (twice)"),
            &dw,
            &plus(&want_dw, &want_dw),
            1e-12,
        );
    }
}
