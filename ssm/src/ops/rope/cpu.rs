//! Rotary position embeddings on the CPU, "rotate half" pairing: within each head, element i and
//! element i + hd/2 form a pair rotated by the angle pos · θ_i.

use rayon::prelude::*;

use crate::backend::cpu::{parts_for, row_blocks_mut, split};
use crate::float::Float;

/// cos and sin of (offset + t) · θ_i with θ_i = base^(-2i/hd), for t in 0..l and i in 0..hd/2:
/// two (l, hd/2) tables. `inverse` negates the angles (the transpose of the rotation). Angles are
/// formed in f64 so that large positions keep their precision in f32.
pub fn rope_table<T: Float>(
    l: usize,
    hd: usize,
    offset: usize,
    base: f64,
    inverse: bool,
) -> (Vec<T>, Vec<T>) {
    let half = hd / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    let theta: Vec<f64> = (0..half)
        .map(|i| base.powf(-2.0 * i as f64 / hd as f64))
        .collect();
    let mut cos = Vec::with_capacity(l * half);
    let mut sin = Vec::with_capacity(l * half);
    for t in 0..l {
        for &th in &theta {
            let angle = (offset + t) as f64 * th;
            cos.push(T::from_f64(angle.cos()));
            sin.push(T::from_f64(sign * angle.sin()));
        }
    }
    (cos, sin)
}

/// Splits the (m, h, hd) tokens of x into parts with their token range.
fn token_parts(m: usize, width: usize) -> Vec<std::ops::Range<usize>> {
    split(m, parts_for(m, 4 * width))
}

/// x (b·l, h, hd) rotated in place, token t of a sequence by row t mod l of the tables.
pub fn rope_rotate<T: Float>(x: &mut [T], cos: &[T], sin: &[T], l: usize, h: usize, hd: usize) {
    let (half, m) = (hd / 2, x.len() / (h * hd));
    let parts = token_parts(m, h * hd);
    row_blocks_mut(x, &parts, h * hd)
        .into_par_iter()
        .for_each(|(tokens, xs)| {
            for (tok, xt) in tokens.zip(xs.chunks_exact_mut(h * hd)) {
                let (c, s) = (
                    &cos[(tok % l) * half..][..half],
                    &sin[(tok % l) * half..][..half],
                );
                for head in xt.chunks_exact_mut(hd) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (x1[i], x2[i]);
                        x1[i] = a * c[i] - b * s[i];
                        x2[i] = b * c[i] + a * s[i];
                    }
                }
            }
        });
}

/// dst += the rotation of src, both (b·l, h, hd); tables as for `rope_rotate`.
pub fn rope_rotate_add<T: Float>(
    src: &[T],
    dst: &mut [T],
    cos: &[T],
    sin: &[T],
    l: usize,
    h: usize,
    hd: usize,
) {
    let (half, m) = (hd / 2, dst.len() / (h * hd));
    let parts = token_parts(m, h * hd);
    row_blocks_mut(dst, &parts, h * hd)
        .into_par_iter()
        .for_each(|(tokens, ds)| {
            for (tok, dt) in tokens.zip(ds.chunks_exact_mut(h * hd)) {
                let (c, s) = (
                    &cos[(tok % l) * half..][..half],
                    &sin[(tok % l) * half..][..half],
                );
                let st = &src[tok * h * hd..(tok + 1) * h * hd];
                for (head, sh) in dt.chunks_exact_mut(hd).zip(st.chunks_exact(hd)) {
                    let (y1, y2) = head.split_at_mut(half);
                    let (x1, x2) = sh.split_at(half);
                    for i in 0..half {
                        y1[i] += x1[i] * c[i] - x2[i] * s[i];
                        y2[i] += x2[i] * c[i] + x1[i] * s[i];
                    }
                }
            }
        });
}
