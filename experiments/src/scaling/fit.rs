//! Least-squares fits of final held-out loss against training compute C (or parameters N): the
//! saturating power law L = E + A·x^(-α) of Kaplan et al. 2020 (eq. 1.1-1.3) and Hoffmann et al.
//! 2022 (eq. 2, one variable at a time), and the pure power law L = A·x^(-α) when the irreducible
//! loss E cannot be identified from the points (E at or below 0, above the smallest loss, or α at
//! the edge of its range). Standard errors come from the Gauss-Newton covariance s²·(JᵀJ)⁻¹ at the
//! optimum, s² = RSS / (n - parameters): asymptotic, and wide with a handful of points.

use anyhow::{Result, bail};

/// Exponents searched for the saturating form: beyond them E is not identifiable (α → 0 turns
/// E + A·x^(-α) into a logarithm; α → ∞ into a step).
const ALPHA_RANGE: (f64, f64) = (1e-3, 4.0);
const ALPHA_GRID: usize = 400;

/// Which law a fit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// L = E + A·x^(-α).
    Saturating,
    /// L = A·x^(-α).
    PowerLaw,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Saturating => "E + A*x^-alpha",
            Form::PowerLaw => "A*x^-alpha",
        }
    }
}

/// A fitted law with the standard error of each parameter (NaN where it has none).
#[derive(Clone, Debug)]
pub struct Fit {
    pub form: Form,
    /// Irreducible loss (0 for the pure power law).
    pub e: f64,
    pub e_se: f64,
    pub a: f64,
    pub a_se: f64,
    pub alpha: f64,
    pub alpha_se: f64,
    pub points: usize,
    /// Root mean square residual of L.
    pub rmse: f64,
    /// 1 - RSS / TSS of L.
    pub r2: f64,
    /// Why the saturating form was not taken; empty when it was.
    pub note: String,
}

impl Fit {
    pub fn predict(&self, x: f64) -> f64 {
        self.e + self.a * x.powf(-self.alpha)
    }
}

/// Fits L(x) to `points` (x, L): the saturating law when E is identifiable (4 points or more),
/// else the pure power law (3 points or more).
pub fn fit(points: &[(f64, f64)]) -> Result<Fit> {
    if points.len() < 3 {
        bail!(
            "fit: {} point(s); a power law with an uncertainty needs at least 3 (the saturating law E + A·x^-α at least 4)",
            points.len()
        );
    }
    if let Some(p) = points
        .iter()
        .find(|(x, l)| !(x.is_finite() && *x > 0.0 && l.is_finite() && *l > 0.0))
    {
        bail!("fit: the point {p:?} is not positive and finite");
    }
    if points
        .iter()
        .all(|p| p.0.to_bits() == points[0].0.to_bits())
    {
        bail!("fit: every point has x = {}; nothing to fit", points[0].0);
    }
    let note = if points.len() < 4 {
        format!("{} points: too few for E", points.len())
    } else {
        match saturating(points) {
            Ok(f) => return Ok(f),
            Err(why) => why,
        }
    };
    Ok(Fit {
        note,
        ..power_law(points)
    })
}

/// ln x centred on its mean, and the centre, so that the exponentials stay near 1.
fn centred_logs(points: &[(f64, f64)]) -> (Vec<f64>, f64) {
    let logs: Vec<f64> = points.iter().map(|p| p.0.ln()).collect();
    let centre = logs.iter().sum::<f64>() / logs.len() as f64;
    (logs.iter().map(|l| l - centre).collect(), centre)
}

/// Linear least squares of L on [1, e^(-α·u)] at a fixed α: (E, A', RSS), A' = A·x_c^(-α).
fn profile(u: &[f64], l: &[f64], alpha: f64) -> (f64, f64, f64) {
    let n = u.len() as f64;
    let g: Vec<f64> = u.iter().map(|u| (-alpha * u).exp()).collect();
    let (mg, ml) = (g.iter().sum::<f64>() / n, l.iter().sum::<f64>() / n);
    let sgg: f64 = g.iter().map(|g| (g - mg) * (g - mg)).sum();
    let sgl: f64 = g.iter().zip(l).map(|(g, l)| (g - mg) * (l - ml)).sum();
    let a = sgl / sgg;
    let e = ml - a * mg;
    let rss = g.iter().zip(l).map(|(g, l)| (l - e - a * g).powi(2)).sum();
    (e, a, rss)
}

/// The saturating fit, or why E is not identifiable.
fn saturating(points: &[(f64, f64)]) -> std::result::Result<Fit, String> {
    let (u, centre) = centred_logs(points);
    let l: Vec<f64> = points.iter().map(|p| p.1).collect();
    let (lo, hi) = (ALPHA_RANGE.0.ln(), ALPHA_RANGE.1.ln());
    let alpha_at = |i: f64| (lo + (hi - lo) * i / (ALPHA_GRID - 1) as f64).exp();
    let rss = |alpha: f64| profile(&u, &l, alpha).2;
    let best = (0..ALPHA_GRID)
        .map(|i| (i, rss(alpha_at(i as f64))))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("a grid")
        .0;
    if best == 0 || best == ALPHA_GRID - 1 {
        return Err(format!(
            "E not identifiable: the best α is the edge {} of [{}, {}]",
            alpha_at(best as f64),
            ALPHA_RANGE.0,
            ALPHA_RANGE.1
        ));
    }
    // Golden-section search between the grid neighbours of the best exponent.
    let (mut a, mut b) = (alpha_at(best as f64 - 1.0), alpha_at(best as f64 + 1.0));
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..100 {
        let (c, d) = (b - phi * (b - a), a + phi * (b - a));
        if rss(c) < rss(d) {
            b = d;
        } else {
            a = c;
        }
    }
    let alpha = (a + b) / 2.0;
    let (e, a_c, rss) = profile(&u, &l, alpha);
    let min_l = l.iter().copied().fold(f64::INFINITY, f64::min);
    if a_c.is_nan() || a_c <= 0.0 {
        return Err("E not identifiable: the loss does not fall with x".into());
    }
    if !(e > 0.0 && e < min_l) {
        return Err(format!(
            "E not identifiable: the fit puts it at {e:.4}, outside (0, {min_l:.4})"
        ));
    }
    // Jacobian columns of E + A'·e^(-α·u): ∂E = 1, ∂A' = e^(-α·u), ∂α = -A'·u·e^(-α·u).
    let rows: Vec<[f64; 3]> = u
        .iter()
        .map(|u| {
            let g = (-alpha * u).exp();
            [1.0, g, -a_c * u * g]
        })
        .collect();
    let Some(cov) = covariance(&rows, rss) else {
        return Err("E not identifiable: the Jacobian is singular at the optimum".into());
    };
    // A = A'·x_c^α with ln x_c = centre; its error by the delta method over (A', α).
    let scale = (alpha * centre).exp();
    let a_full = a_c * scale;
    let grad = [scale, a_full * centre];
    let var_a = grad[0] * grad[0] * cov[1][1]
        + 2.0 * grad[0] * grad[1] * cov[1][2]
        + grad[1] * grad[1] * cov[2][2];
    Ok(Fit {
        form: Form::Saturating,
        e,
        e_se: cov[0][0].sqrt(),
        a: a_full,
        a_se: var_a.max(0.0).sqrt(),
        alpha,
        alpha_se: cov[2][2].sqrt(),
        points: points.len(),
        rmse: (rss / l.len() as f64).sqrt(),
        r2: 1.0 - rss / total_squares(&l),
        note: String::new(),
    })
}

/// ln L = ln A - α·ln x by ordinary least squares.
fn power_law(points: &[(f64, f64)]) -> Fit {
    let (u, centre) = centred_logs(points);
    let y: Vec<f64> = points.iter().map(|p| p.1.ln()).collect();
    let n = u.len() as f64;
    let my = y.iter().sum::<f64>() / n;
    let suu: f64 = u.iter().map(|u| u * u).sum();
    let slope = u.iter().zip(&y).map(|(u, y)| u * (y - my)).sum::<f64>() / suu;
    let intercept = my - slope * centre;
    let log_rss: f64 = u
        .iter()
        .zip(&y)
        .map(|(u, y)| (y - my - slope * u).powi(2))
        .sum();
    let s2 = log_rss / (n - 2.0);
    let a = intercept.exp();
    let fit = Fit {
        form: Form::PowerLaw,
        e: 0.0,
        e_se: f64::NAN,
        a,
        a_se: a * (s2 * (1.0 / n + centre * centre / suu)).sqrt(),
        alpha: -slope,
        alpha_se: (s2 / suu).sqrt(),
        points: points.len(),
        rmse: 0.0,
        r2: 0.0,
        note: String::new(),
    };
    let l: Vec<f64> = points.iter().map(|p| p.1).collect();
    let rss: f64 = points
        .iter()
        .map(|p| (p.1 - fit.predict(p.0)).powi(2))
        .sum();
    Fit {
        rmse: (rss / n).sqrt(),
        r2: 1.0 - rss / total_squares(&l),
        ..fit
    }
}

fn total_squares(l: &[f64]) -> f64 {
    let m = l.iter().sum::<f64>() / l.len() as f64;
    l.iter().map(|l| (l - m) * (l - m)).sum()
}

/// s²·(JᵀJ)⁻¹ with s² = RSS / (n - 3), or None when JᵀJ is singular.
fn covariance(rows: &[[f64; 3]], rss: f64) -> Option<[[f64; 3]; 3]> {
    let mut jtj = [[0.0; 3]; 3];
    for r in rows {
        for i in 0..3 {
            for j in 0..3 {
                jtj[i][j] += r[i] * r[j];
            }
        }
    }
    let inv = invert3(jtj)?;
    let s2 = rss / (rows.len() as f64 - 3.0);
    Some(inv.map(|row| row.map(|v| v * s2)))
}

/// The inverse of a 3×3 matrix by cofactors, or None when it is (numerically) singular.
fn invert3(m: [[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let c = |i: usize, j: usize| {
        let (r0, r1) = ((i + 1) % 3, (i + 2) % 3);
        let (c0, c1) = ((j + 1) % 3, (j + 2) % 3);
        m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
    };
    let det = m[0][0] * c(0, 0) + m[0][1] * c(0, 1) + m[0][2] * c(0, 2);
    let scale: f64 = m.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    if det.is_nan() || det.abs() <= 1e-14 * scale.powi(3) {
        return None;
    }
    let mut inv = [[0.0; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = c(j, i) / det;
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compute budgets 1e9 .. 1e13, `n` of them evenly spaced in log.
    fn budgets(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 10f64.powf(9.0 + 4.0 * i as f64 / (n - 1) as f64))
            .collect()
    }

    #[test]
    fn recovers_a_saturating_law_exactly_without_noise() {
        let (e, a, alpha) = (1.2, 80.0, 0.25);
        let points: Vec<(f64, f64)> = budgets(7)
            .into_iter()
            .map(|c| (c, e + a * c.powf(-alpha)))
            .collect();
        let f = fit(&points).unwrap();
        println!("{f:?}");
        assert_eq!(f.form, Form::Saturating);
        assert!((f.e - e).abs() < 1e-6 * e, "E {}", f.e);
        assert!((f.a - a).abs() < 1e-4 * a, "A {}", f.a);
        assert!((f.alpha - alpha).abs() < 1e-6, "alpha {}", f.alpha);
        assert!(f.rmse < 1e-9 && f.r2 > 1.0 - 1e-12);
    }

    #[test]
    fn recovers_a_noisy_saturating_law_within_its_errors() {
        let (e, a, alpha) = (1.5, 40.0, 0.2);
        // ±0.4% deterministic noise.
        let noise = [0.004, -0.003, 0.001, -0.004, 0.002, 0.003, -0.002, -0.001];
        let points: Vec<(f64, f64)> = budgets(8)
            .into_iter()
            .zip(noise)
            .map(|(c, z)| (c, (e + a * c.powf(-alpha)) * (1.0 + z)))
            .collect();
        let f = fit(&points).unwrap();
        println!("{f:?}");
        assert_eq!(f.form, Form::Saturating);
        for (name, got, se, truth) in [
            ("E", f.e, f.e_se, e),
            ("alpha", f.alpha, f.alpha_se, alpha),
            ("A", f.a, f.a_se, a),
        ] {
            assert!(se.is_finite() && se > 0.0, "{name}: se {se}");
            assert!(
                (got - truth).abs() < 3.0 * se,
                "{name}: {got} ± {se}, truth {truth}"
            );
        }
        assert!((f.alpha - alpha).abs() < 0.05 && (f.e - e).abs() < 0.1);
        assert!(f.r2 > 0.99, "r2 {}", f.r2);
    }

    #[test]
    fn falls_back_to_a_power_law_when_e_is_not_identifiable() {
        // Loss falling linearly in ln C bends the wrong way for E + A·C^-α: the best exponent runs
        // to the edge of its range, and the power law is fitted instead.
        let points: Vec<(f64, f64)> = budgets(6)
            .into_iter()
            .map(|c| (c, 6.0 - 0.12 * c.ln()))
            .collect();
        let f = fit(&points).unwrap();
        println!("{f:?}");
        assert_eq!(f.form, Form::PowerLaw, "{f:?}");
        assert!(f.note.contains("E not identifiable"), "{}", f.note);
        assert!(f.alpha > 0.0 && f.r2 > 0.95, "{f:?}");
        // Three points of an exact power law: recovered, saying why E was not tried.
        let points: Vec<(f64, f64)> = budgets(3)
            .into_iter()
            .map(|c| (c, 30.0 * c.powf(-0.05)))
            .collect();
        let f = fit(&points).unwrap();
        assert_eq!(f.form, Form::PowerLaw);
        assert!(f.note.contains("3 points"), "{}", f.note);
        assert!(
            (f.alpha - 0.05).abs() < 1e-12 && (f.a - 30.0).abs() < 1e-9,
            "{f:?}"
        );
        assert!(f.alpha_se < 1e-9, "an exact law has no error: {f:?}");
    }

    #[test]
    fn refuses_too_few_or_bad_points() {
        let err = fit(&[(1e9, 2.0), (1e10, 1.8)]).unwrap_err().to_string();
        assert!(
            err.contains("2 point(s)") && err.contains("at least 3"),
            "{err}"
        );
        let err = fit(&[(1e9, 2.0), (1e10, f64::NAN), (1e11, 1.5)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not positive and finite"), "{err}");
        let err = fit(&[(1e9, 2.0), (1e9, 1.9), (1e9, 1.8)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing to fit"), "{err}");
    }
}
