//! `--device`: the documented error without a GPU, training on the emulated CUDA device against
//! the CPU, checkpoints that move between devices, and `gpu-check` itself on the emulated device.

use ssm::io::tensors::TensorFile;

use crate::common::*;

/// Loss column of a run's metrics.csv.
fn losses(dir: &std::path::Path, run: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("runs").join(run).join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn cuda_without_a_gpu_is_a_clean_error_that_creates_nothing() {
    // SAFETY: opening the driver library runs only its initializers.
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_ok() {
        // A GPU machine: `ssm`'s tests check the successful path there.
        return;
    }
    let dir = tmp_dir("device-none");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let err = run_err(&dir, &["train", "--config", &cfg, "--device", "cuda"]);
    assert!(err.contains("device cuda:0: no CUDA driver"), "{err}");
    assert!(
        entries(&dir.join("runs")).is_empty(),
        "{:?}",
        entries(&dir.join("runs"))
    );
    // A bad name is a usage error of the command line (clap's exit code 2).
    let out = run(&dir, &["train", "--config", &cfg, "--device", "gpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--device") && err.contains("cuda-emu"),
        "{err}"
    );
}

#[test]
fn emulated_gpu_trains_like_the_cpu_and_its_checkpoint_resumes_on_the_cpu() {
    let dir = tmp_dir("device-emu");
    let cfg = write(&dir, "c.toml", TINY_MQAR);
    let short = [
        "--set",
        "train.steps=6",
        "--set",
        "train.log_every=2",
        "--set",
        "train.checkpoint_every=3",
        "--set",
        "train.eval_every=0",
        "--set",
        "train.batch_size=2",
    ];
    let args = |name: &str, device: &'static str| {
        let mut a = vec!["train", "--config", &cfg, "--device", device, "--set"];
        a.push(Box::leak(format!("name={name}").into_boxed_str()));
        a.extend(short);
        a
    };
    run_ok(&dir, &args("cpu", "cpu"));
    let mut gpu = args("gpu", "cuda-emu");
    gpu.extend(["--stop-after", "3"]);
    run_ok(&dir, &gpu);
    run_ok(&dir, &["train", "--resume", "runs/gpu", "--device", "cpu"]);
    let (want, got) = (losses(&dir, "cpu"), losses(&dir, "gpu"));
    assert_eq!(want.len(), 3);
    assert_eq!(got.len(), 3);
    for (w, g) in want.iter().zip(&got) {
        assert!((w - g).abs() < 1e-5 * w.abs(), "losses {want:?} vs {got:?}");
    }
    // The weights at the end of both runs agree to float round-off.
    let load = |run: &str| {
        let path = dir
            .join("runs")
            .join(run)
            .join("checkpoints/final/model.safetensors");
        TensorFile::open(&path).unwrap()
    };
    let (a, b) = (load("cpu"), load("gpu"));
    let name = "backbone.embeddings.weight";
    let diff = a
        .f32(name)
        .unwrap()
        .to_vec()
        .iter()
        .zip(b.f32(name).unwrap().to_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "{name}: max diff {diff}");
}

#[test]
fn gpu_check_runs_on_the_emulated_device() {
    let dir = tmp_dir("device-gpu-check");
    let out = run_ok(
        &dir,
        &[
            "gpu-check",
            "--device",
            "cuda-emu",
            "--quick",
            "--out",
            "gc",
        ],
    );
    assert!(out.contains("0 failed"), "{out}");
    assert!(out.contains("copy bandwidth"), "{out}");
    for file in [
        "parity.csv",
        "bench_scan.csv",
        "bench_ssd.csv",
        "bench_train.csv",
    ] {
        let text = std::fs::read_to_string(dir.join("gc").join(file)).unwrap();
        assert!(text.lines().count() > 1, "{file}: {text}");
    }
    // Decoding: every architecture at batch 1 and 2 after a prefill of 20 tokens.
    let decode = experiments::metrics::Table::read(&dir.join("gc/bench_decode.csv")).unwrap();
    let archs = decode.strings("arch").unwrap();
    assert_eq!(
        archs,
        [
            "mamba",
            "mamba",
            "transformer",
            "transformer",
            "hybrid",
            "hybrid",
            "mamba2",
            "mamba2"
        ]
    );
    assert_eq!(decode.f64s("b").unwrap(), [1.0, 2.0].repeat(4));
    for col in ["prefill_tokens_per_s", "tokens_per_s", "ms_per_step"] {
        let v = decode.f64s(col).unwrap();
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{col}: {v:?}");
    }
    let parity = std::fs::read_to_string(dir.join("gc/parity.csv")).unwrap();
    assert!(
        parity.lines().count() > 200 && !parity.contains(",false"),
        "{parity}"
    );
}
