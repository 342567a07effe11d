//! `bench --torch`. With the `torch` feature: every section has our row and PyTorch's on the
//! same shapes, the ratios are those of the times, and the CSV and plots are written. Without
//! it: the binary links no libtorch and refuses `--torch`, naming the feature.

use crate::common::*;

/// The README's command for the PyTorch comparison, and tiny shapes for it.
const TORCH_BENCH: &[&str] = &[
    "bench",
    "--torch",
    "--batches",
    "1",
    "--lengths",
    "64",
    "--d",
    "16",
    "--train-lengths",
    "32",
    "--train-tokens",
    "64",
    "--d-model",
    "64",
    "--n-layer",
    "1",
    "--attn-lengths",
    "64",
    "--repeats",
    "1",
    "--out",
    "out",
];

#[cfg(feature = "torch")]
#[test]
fn torch_bench_times_pytorch_beside_ours_on_every_section() {
    let dir = tmp_dir("torch-bench");
    let stdout = run_ok(&dir, TORCH_BENCH);
    let csv = std::fs::read_to_string(dir.join("out/bench_torch.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "device,section,shape,l,impl,fwd_ms,full_ms,rate,peak_mb,vs_ours"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let wanted = [
        ("scan", ["ours", "torch loop", "torch parallel"].as_slice()),
        ("attention", &["ours", "torch sdpa"]),
        ("gemm", &["ours", "torch matmul"]),
        ("train", &["ours", "torch"]),
    ];
    for (section, imps) in wanted {
        for imp in imps {
            assert!(
                rows.iter().any(|r| r[1] == section && r[4] == *imp),
                "no {section} row of {imp}:\n{csv}\n{stdout}"
            );
        }
    }
    // Each PyTorch row's ratio is its time over the time of ours on the same shape.
    for r in rows.iter().filter(|r| r[4] != "ours") {
        let ours = rows
            .iter()
            .find(|o| o[4] == "ours" && o[1] == r[1] && o[2] == r[2])
            .expect("ours on the same shape");
        let t = |row: &[&str]| row[6].parse::<f64>().unwrap();
        let ratio: f64 = r[9].parse().unwrap();
        assert!(t(r) > 0.0 && t(ours) > 0.0);
        assert!(
            (ratio - t(r) / t(ours)).abs() <= 1e-3 * ratio.max(1.0) + 1e-3,
            "{r:?} vs {ours:?}"
        );
    }
    // Two training architectures, each with a tokens/s rate on both sides.
    let train: Vec<_> = rows.iter().filter(|r| r[1] == "train").collect();
    assert_eq!(train.len(), 4, "{train:?}");
    assert!(train.iter().all(|r| r[7].parse::<f64>().unwrap() > 0.0));
    for plot in ["bench_torch_scan", "bench_torch_attention"] {
        for ext in ["png", "svg"] {
            let f = dir.join(format!("out/{plot}.{ext}"));
            assert!(
                std::fs::metadata(&f).unwrap().len() > 1000,
                "{}",
                f.display()
            );
        }
    }
}

#[cfg(not(feature = "torch"))]
#[test]
fn default_build_links_no_libtorch_and_refuses_torch_rows_by_name() {
    let dir = tmp_dir("no-torch");
    let err = run_err(&dir, TORCH_BENCH);
    assert!(err.contains("--features torch"), "{err}");
    assert!(
        !dir.join("out").exists(),
        "nothing written by a refused bench"
    );
    let elf = std::process::Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_ssm-lab")])
        .output()
        .expect("readelf (binutils, beside gcc) runs");
    let dynamic = String::from_utf8_lossy(&elf.stdout);
    assert!(dynamic.contains("(NEEDED)"), "{dynamic}");
    assert!(!dynamic.contains("libtorch"), "{dynamic}");
    assert!(!dynamic.contains("libc10"), "{dynamic}");
}
