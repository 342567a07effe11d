//! `ssm-lab scaling --quick` end to end on stand-in plays: every point trained for the tokens its
//! size calls for, summary.csv with held-out loss and bits per byte, fits.csv equal to the fits of
//! those points, the plots; a second run continues the folder instead of training again; a bad
//! grid is refused before anything is written.

use experiments::metrics::Table;
use experiments::scaling::fit::fit;
use experiments::scaling::{FITS_FILE, GRID_FILE};

use crate::common::*;

#[test]
fn scaling_quick_trains_its_grid_and_fits_every_architecture() {
    let dir = tmp_dir("scaling");
    stand_in_plays(&dir);
    let stdout = run_ok(&dir, &["scaling", "--quick", "--jobs", "2"]);
    let root = dir.join("runs/scaling-quick");
    assert!(stdout.contains("fits of the held-out loss"), "{stdout}");
    let s = Table::read(&root.join("summary.csv")).unwrap();
    let (archs, status) = (s.strings("arch").unwrap(), s.strings("status").unwrap());
    assert_eq!(archs.len(), 12, "3 architectures × 4 widths");
    assert!(status.iter().all(|s| s == "ok"), "{status:?}");
    // 0.5 tokens per non-embedding parameter, in whole steps of 4 sequences of 32 bytes.
    let (params, steps, tokens) = (
        s.f64s("non_embedding_params").unwrap(),
        s.f64s("steps").unwrap(),
        s.f64s("tokens").unwrap(),
    );
    for i in 0..archs.len() {
        assert_eq!(steps[i], (0.5 * params[i] / 128.0).ceil(), "row {i}");
        assert_eq!(tokens[i], steps[i] * 128.0, "row {i}");
    }
    let (loss, bpb) = (
        s.f64s("loss@32").unwrap(),
        s.f64s("bits_per_byte@32").unwrap(),
    );
    for i in 0..archs.len() {
        assert!(
            (bpb[i] - loss[i] / std::f64::consts::LN_2).abs() < 1e-9,
            "bits per byte = held-out loss / ln 2"
        );
    }
    // fits.csv: per architecture, the fits of its points against compute and parameters.
    let f = Table::read(&root.join(FITS_FILE)).unwrap();
    let (arch, x, alpha, e, a) = (
        f.strings("arch").unwrap(),
        f.strings("x").unwrap(),
        f.f64s("alpha").unwrap(),
        f.f64s("E").unwrap(),
        f.f64s("A").unwrap(),
    );
    assert_eq!(arch.len(), 6);
    let fpt = s.f64s("flops_per_token").unwrap();
    for (i, (arch, x)) in arch.iter().zip(&x).enumerate() {
        let points: Vec<(f64, f64)> = (0..archs.len())
            .filter(|&j| archs[j] == *arch)
            .map(|j| {
                let at = match x.as_str() {
                    "compute" => tokens[j] * fpt[j],
                    _ => params[j],
                };
                (at, loss[j])
            })
            .collect();
        let expect = fit(&points).unwrap();
        for (name, got, want) in [
            ("alpha", alpha[i], expect.alpha),
            ("E", e[i], expect.e),
            ("A", a[i], expect.a),
        ] {
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{arch} {x} {name}: {got} in fits.csv, {want} refitted"
            );
        }
    }
    for stem in [
        "scaling_loss_vs_compute",
        "scaling_loss_vs_params",
        "loss",
        "loss_vs_flops",
    ] {
        for ext in ["png", "svg"] {
            let p = root.join("plots").join(format!("{stem}.{ext}"));
            assert!(
                p.metadata().is_ok_and(|m| m.len() > 1000),
                "{}",
                p.display()
            );
        }
    }
    assert!(root.join(GRID_FILE).exists());
    // Again: every point is finished, so nothing trains and the results stay.
    let metrics = rows_without_timing(&root.join("mamba-d8/metrics.csv"));
    let again = run(&dir, &["scaling", "--quick", "--jobs", "2"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() && stderr.contains("continuing it"),
        "{stderr}"
    );
    assert_eq!(
        rows_without_timing(&root.join("mamba-d8/metrics.csv")),
        metrics
    );
    assert_eq!(
        Table::read(&root.join(FITS_FILE)).unwrap().rows,
        f.rows,
        "the same fits"
    );
}

#[test]
fn a_bad_grid_is_refused_naming_its_key_and_leaves_nothing() {
    let dir = tmp_dir("scaling-bad");
    stand_in_plays(&dir);
    let base =
        "[task]\nkind = \"bytes\"\nseq_len = 32\n[task.bytes]\npath = \"data/shakespeare\"\n";
    for (grid, expect) in [
        (
            "[scaling]\narchs = [\"mamba\"]\nwidths = [8, 16, 24]\ntokens_per_param = 1\nsteps = 3\n",
            "unknown field `steps`",
        ),
        (
            "[scaling]\narchs = [\"mamba\", \"rnn\"]\nwidths = [8, 16, 24]\ntokens_per_param = 1\n",
            "scaling.archs",
        ),
        (
            "[scaling]\narchs = [\"mamba\"]\nwidths = [8, 16]\ntokens_per_param = 1\n",
            "scaling.widths",
        ),
        (
            "[scaling]\narchs = [\"mamba\"]\nwidths = [8, 16, 24]\ntokens_per_param = -1\n",
            "scaling.tokens_per_param",
        ),
        (
            "[scaling]\narchs = [\"mamba\"]\nwidths = [8, 16, 0]\ntokens_per_param = 1\n",
            "d_model",
        ),
    ] {
        let config = write(&dir, "grid.toml", &format!("{base}{grid}"));
        let err = run_err(&dir, &["scaling", "--config", &config]);
        assert!(err.contains(expect), "{grid}: {err}");
        assert!(
            !dir.join("runs").exists(),
            "{grid}: left {:?}",
            entries(&dir.join("runs"))
        );
    }
    let config = write(
        &dir,
        "grid.toml",
        "[task]\nkind = \"mqar\"\n[scaling]\narchs = [\"mamba\"]\nwidths = [8, 16, 24]\ntokens_per_param = 1\n",
    );
    let err = run_err(&dir, &["scaling", "--config", &config]);
    assert!(err.contains("task.kind") && err.contains("bytes"), "{err}");
}
