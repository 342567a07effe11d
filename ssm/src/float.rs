//! The scalar types the engine computes in, and the vectorizable approximations of `exp` and
//! `softplus` that the hot loops use in f32.

use std::borrow::Cow;
use std::fmt;

/// Scalar types the engine computes in: `f32` for training, `f64` for finite-difference checks.
pub trait Float:
    ndarray::LinalgScalar
    + Send
    + Sync
    + fmt::Debug
    + fmt::Display
    + Default
    + PartialOrd
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::iter::Sum
{
    const NAME: &'static str;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn min(self, other: Self) -> Self;
    /// `exp` as the hot loops compute it: for `f32` a branch-free polynomial that vectorizes
    /// (relative error below 2e-7); for `f64` the exact library function.
    fn fast_exp(self) -> Self;
    /// `fast_exp` with fused multiply-adds, for loops compiled with FMA enabled (the scan
    /// kernels); elsewhere each `mul_add` becomes a library call.
    fn fast_exp_fused(self) -> Self;
    /// ln(1 + x), accurate for small x.
    fn ln_1p(self) -> Self;
    /// softplus(x) = ln(1 + eˣ) (x itself above 20) as the hot loops compute it: for `f32`
    /// branch-free and vectorizable (absolute error below 1e-9 plus rounding), for `f64` exact.
    /// Uses `fast_exp_fused`: for loops compiled with FMA enabled.
    fn fast_softplus(self) -> Self;
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
    /// Values read back from a CUDA tensor (f32) as this type; no pass over them for `f32`.
    fn vec_from_f32(v: Vec<f32>) -> Vec<Self>;
    /// The values as the f32 a CUDA tensor holds; borrowed for `f32`.
    fn slice_as_f32(s: &[Self]) -> Cow<'_, [f32]>;
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    #[inline(always)]
    fn min(self, other: Self) -> Self {
        f32::min(self, other)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        fast_exp_f32::<false>(self)
    }
    #[inline(always)]
    fn fast_exp_fused(self) -> Self {
        fast_exp_f32::<true>(self)
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        f32::ln_1p(self)
    }
    #[inline(always)]
    fn fast_softplus(self) -> Self {
        fast_softplus_f32(self)
    }
    fn vec_from_f32(v: Vec<f32>) -> Vec<Self> {
        v
    }
    fn slice_as_f32(s: &[Self]) -> Cow<'_, [f32]> {
        Cow::Borrowed(s)
    }
}

impl Float for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    #[inline(always)]
    fn min(self, other: Self) -> Self {
        f64::min(self, other)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn fast_exp_fused(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        f64::ln_1p(self)
    }
    #[inline(always)]
    fn fast_softplus(self) -> Self {
        if self > 20.0 {
            self
        } else {
            self.exp().ln_1p()
        }
    }
    fn vec_from_f32(v: Vec<f32>) -> Vec<Self> {
        v.into_iter().map(f64::from).collect()
    }
    fn slice_as_f32(s: &[Self]) -> Cow<'_, [f32]> {
        Cow::Owned(s.iter().map(|&x| x as f32).collect())
    }
}

/// exp(x) = 2^k * exp(r) with k = round(x / ln 2) and |r| <= ln(2)/2; exp(r) by its Taylor series to
/// degree 7 (truncation error r^8/8! < 6e-9). No branches and no table, so a loop over it
/// vectorizes; inputs are clamped to the range where the result is a normal f32. With `FUSED`
/// the polynomial uses `mul_add`, one instruction in code compiled with FMA (the scan kernels)
/// but a library call anywhere else.
#[inline(always)]
fn fast_exp_f32<const FUSED: bool>(x: f32) -> f32 {
    let fma = |a: f32, b: f32, c: f32| if FUSED { a.mul_add(b, c) } else { a * b + c };
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the float unit itself.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = fma(-k, LN2_LO, fma(-k, LN2_HI, x));
    let mut p = fma(1.0 / 40320.0, r, 1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = fma(p, r, c);
    }
    // 2^k from the bits of the rounding sum: its low mantissa bits hold 2^22 + k, so adding the
    // exponent bias and shifting leaves (k + 127) << 23. No float-to-int conversion, which LLVM
    // would scalarize for its saturation semantics.
    let t = x * LOG2E + ROUND;
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    p * scale
}

/// softplus(x) = max(x, 0) + ln(1 + e^{-|x|}), with ln(1 + y) = 2 atanh(y / (2 + y)) summed to
/// s¹⁷ (s <= 1/3, so the truncation is below 1e-9); x itself above 20, as the reference.
#[inline(always)]
fn fast_softplus_f32(x: f32) -> f32 {
    let y = fast_exp_f32::<true>(-x.abs());
    let s = y / (2.0 + y);
    let s2 = s * s;
    let mut p = 1.0 / 17.0;
    for k in [15.0f32, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0] {
        p = 1.0 / k + s2 * p;
    }
    let sp = x.max(0.0) + 2.0 * s * p;
    if x > 20.0 { x } else { sp }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            for got in [fast_exp_f32::<false>(x), fast_exp_f32::<true>(x)] {
                worst = worst.max(((got as f64) - (x as f64).exp()).abs() / (x as f64).exp());
            }
            x += 0.0137;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn fast_softplus_matches_log1p() {
        let mut worst = 0.0f64;
        let mut x = -60.0f32;
        while x < 30.0 {
            let want = if x > 20.0 {
                x as f64
            } else {
                (x as f64).exp().ln_1p()
            };
            let rel = ((fast_softplus_f32(x) as f64) - want).abs() / want;
            worst = worst.max(rel);
            x += 0.0071;
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
    }
}
