//! Tick values and their labels, chosen by us rather than by plotters so that every axis gets at
//! least three labels whatever its range (a log axis with no power of ten in range falls back to
//! 1-2-5 multiples, then to 1..9 multiples, then to round linear steps), length axes get powers of
//! two, and no two labels of an axis overlap (their extents are estimated from the font size).

use std::ops::Range;

/// Width of one character of a tick label in pixels: DejaVu Sans digits are 0.64 em, and the
/// label font is [`LABEL_FONT`] pixels, taken at face value (larger than it renders) to err on the
/// side of fewer labels.
pub const CHAR_PX: f64 = 0.64 * LABEL_FONT as f64;
/// Font size of tick labels, legends and notes.
pub const LABEL_FONT: u32 = 14;
/// Free space kept between two neighbouring labels, in pixels.
const GAP_PX: f64 = 6.0;
/// Fewest labels an axis shows.
const MIN_TICKS: usize = 3;

/// How values are placed along an axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Linear,
    /// Log scale with decimal ticks (losses, FLOPs).
    Log10,
    /// Log scale with power-of-two ticks (sequence lengths), labelled as integers.
    Log2,
}

/// One axis: its range, tick values and labels.
#[derive(Clone, Debug)]
pub struct Axis {
    pub scale: Scale,
    pub range: Range<f64>,
    pub ticks: Vec<f64>,
    pub labels: Vec<String>,
}

impl Axis {
    /// An axis over `range` (positive for log scales) of `length_px` pixels; `horizontal` says
    /// whether labels sit side by side (their widths must not touch) or stacked (their heights).
    pub fn new(scale: Scale, range: Range<f64>, length_px: f64, horizontal: bool) -> Axis {
        let range = match scale {
            Scale::Log2 => pow2_range(range),
            _ => range,
        };
        let candidates = match scale {
            Scale::Linear => linear_ticks(&range),
            Scale::Log10 => log10_ticks(&range),
            Scale::Log2 => pow2_ticks(&range),
        };
        let position = |v: f64| fraction(scale, &range, v) * length_px;
        let extent = |label: &str| {
            if horizontal {
                label.chars().count() as f64 * CHAR_PX
            } else {
                LABEL_FONT as f64
            }
        };
        let label = |v: f64| {
            if scale == Scale::Log2 {
                format!("{}", v.round())
            } else {
                format_tick(v)
            }
        };
        // The smallest stride through the candidates whose labels keep apart.
        let (ticks, labels) = (1..=candidates.len().max(1))
            .map(|stride| {
                let ticks: Vec<f64> = candidates.iter().copied().step_by(stride).collect();
                let labels: Vec<String> = ticks.iter().map(|&v| label(v)).collect();
                (ticks, labels)
            })
            .find(|(ticks, labels)| {
                ticks.windows(2).zip(labels.windows(2)).all(|(t, l)| {
                    position(t[1]) - position(t[0])
                        >= (extent(&l[0]) + extent(&l[1])) / 2.0 + GAP_PX
                })
            })
            .unwrap_or_default();
        Axis {
            scale,
            range,
            ticks,
            labels,
        }
    }

    /// Where `v` sits along the axis, from 0 at the start of the range to 1 at its end.
    pub fn fraction(&self, v: f64) -> f64 {
        fraction(self.scale, &self.range, v)
    }

    /// Whether `v` can be drawn on this axis (finite, and positive on a log scale).
    pub fn shows(&self, v: f64) -> bool {
        v.is_finite() && (self.scale == Scale::Linear || v > 0.0)
    }

    /// The label of tick value `v` (plotters asks by value).
    pub fn label(&self, v: f64) -> String {
        self.ticks
            .iter()
            .position(|&t| (t - v).abs() <= 1e-9 * t.abs().max(1e-300))
            .map_or_else(|| format_tick(v), |i| self.labels[i].clone())
    }
}

fn fraction(scale: Scale, range: &Range<f64>, v: f64) -> f64 {
    match scale {
        Scale::Linear => (v - range.start) / (range.end - range.start),
        Scale::Log10 | Scale::Log2 => (v / range.start).ln() / (range.end / range.start).ln(),
    }
}

/// Multiples of a round step (1, 2 or 5 times a power of ten) inside `range`, at least three.
fn linear_ticks(range: &Range<f64>) -> Vec<f64> {
    let span = range.end - range.start;
    if !(span > 0.0 && span.is_finite()) {
        return vec![range.start];
    }
    // A step of at most span / 3.2 leaves room for three multiples.
    let raw = span / 8.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .expect("10 × magnitude exceeds raw");
    let first = (range.start / step).ceil() as i64;
    let last = (range.end / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Powers of ten in range; if fewer than three, 1-2-5 multiples; then 1..9 multiples; then round
/// linear steps (a range narrower than a factor of two).
fn log10_ticks(range: &Range<f64>) -> Vec<f64> {
    let (lo, hi) = (
        range.start.log10().floor() as i32,
        range.end.log10().ceil() as i32,
    );
    for mantissas in [
        &[1.0][..],
        &[1.0, 2.0, 5.0],
        &[1., 2., 3., 4., 5., 6., 7., 8., 9.],
    ] {
        let ticks: Vec<f64> = (lo..=hi)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| range.contains(v) || *v == range.end)
            .collect();
        if ticks.len() >= MIN_TICKS {
            return ticks;
        }
    }
    linear_ticks(range)
}

/// Powers of two in range.
fn pow2_ticks(range: &Range<f64>) -> Vec<f64> {
    let (lo, hi) = (
        range.start.log2().ceil() as i32,
        range.end.log2().floor() as i32,
    );
    (lo..=hi).map(|e| 2f64.powi(e)).collect()
}

/// `range` widened to the neighbouring powers of two until it holds three of them.
fn pow2_range(range: Range<f64>) -> Range<f64> {
    let mut r = range;
    while pow2_ticks(&r).len() < MIN_TICKS {
        let (lo, hi) = (r.start.log2().ceil() as i32, r.end.log2().floor() as i32);
        r = if lo > hi {
            2f64.powi(hi)..2f64.powi(lo)
        } else {
            2f64.powi(lo - 1)..2f64.powi(hi + 1)
        };
    }
    r
}

/// The shortest text that reads back as `v` to 1e-9: plain below 1e5 and from 0.01 on,
/// scientific outside ("7e10", "2.5e-4").
pub fn format_tick(v: f64) -> String {
    let a = v.abs();
    let scientific = a != 0.0 && !(1e-2..1e5).contains(&a);
    (0..=6)
        .map(|d| {
            if scientific {
                format!("{v:.d$e}")
            } else {
                format!("{v:.d$}")
            }
        })
        .find(|s| {
            s.parse::<f64>()
                .is_ok_and(|p| (p - v).abs() <= 1e-9 * a.max(1e-12))
        })
        .unwrap_or_else(|| format!("{v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_within_one_decade_gets_ticks() {
        let a = Axis::new(Scale::Log10, 4.25..7.3, 500.0, false);
        assert_eq!(a.ticks, [5.0, 6.0, 7.0]);
        let a = Axis::new(Scale::Log10, 2.0..90.0, 500.0, false);
        assert_eq!(a.ticks, [2.0, 5.0, 10.0, 20.0, 50.0]);
        let a = Axis::new(Scale::Log10, 5.5..5.9, 500.0, false);
        assert!(a.ticks.len() >= 3, "{:?}", a.ticks);
        assert_eq!(a.labels[0], "5.5");
    }

    #[test]
    fn crowded_labels_are_thinned() {
        // 6e10 .. 1.5e11 on a narrow axis: 1..9 multiples, every other one kept.
        let a = Axis::new(Scale::Log10, 6e10..1.5e11, 120.0, true);
        assert!(a.ticks.len() >= 2, "{:?}", a.labels);
        assert!(a.labels.iter().all(|l| l.ends_with("e10") || l == "1e11"));
        let wide = Axis::new(Scale::Log10, 6e10..1.5e11, 800.0, true);
        assert_eq!(wide.labels, ["6e10", "7e10", "8e10", "9e10", "1e11"]);
    }

    #[test]
    fn length_axes_are_powers_of_two() {
        let a = Axis::new(Scale::Log2, 58.0..141.0, 400.0, true);
        assert_eq!(a.labels, ["32", "64", "128", "256"]);
        let a = Axis::new(Scale::Log2, 60.0..70.0, 400.0, true);
        assert_eq!(a.labels, ["32", "64", "128"]);
        let a = Axis::new(Scale::Log2, 29.0..53.0, 400.0, true);
        assert_eq!(a.labels, ["16", "32", "64"]);
    }

    #[test]
    fn linear_ticks_are_round() {
        let a = Axis::new(Scale::Linear, 0.0..1.05, 500.0, false);
        assert_eq!(a.labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(format_tick(0.30000000000000004), "0.3");
        assert_eq!(format_tick(2.5e10), "2.5e10");
        assert_eq!(format_tick(7e10), "7e10");
        assert_eq!(format_tick(1200.0), "1200");
    }
}
