//! The CUDA backend without a GPU: the documented error where there is no driver, and the whole
//! GPU code path (op dispatch, launch planning, allocator, the cuBLAS argument mapping) on the
//! emulated device, checked against the CPU by the same parity code that `ssm-lab gpu-check`
//! runs on a real GPU.

use std::sync::{Mutex, MutexGuard};

use ssm::device::{compile_cubin, memory_stats, release_cache, reset_peak_memory};
use ssm::models::{LanguageModel, MambaConfig, MambaMixerConfig};
use ssm::nn::Module;
use ssm::ops::activation::add_into;
use ssm::ops::ssd::{SsdGrads, SsdInputs, SsdOutput, ssd_bwd, ssd_fwd};
use ssm::parity::{ParityPlan, decode_parity, op_parity, report, train_step_parity};
use ssm::{Device, Error, Tensor};

use crate::common::{rng, uniform};

/// The emulated device is one per process and its memory counters are global: its tests take
/// turns.
static EMULATED: Mutex<()> = Mutex::new(());

fn emulated() -> MutexGuard<'static, ()> {
    EMULATED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this machine has the NVIDIA driver library, as cudarc would look for it.
fn driver_present() -> bool {
    // SAFETY: opening the driver library runs only its initializers.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    let got = Tensor::<f32>::zeros([4], Device::Cuda(0));
    if driver_present() {
        assert_eq!(got.expect("a GPU machine").device(), Device::Cuda(0));
        return;
    }
    let err = got.expect_err("no driver on this machine");
    let msg = err.to_string();
    assert!(matches!(err, Error::Device { .. }), "{msg}");
    assert!(
        msg.starts_with("device cuda:0: no CUDA driver: libcuda.so could not be loaded"),
        "{msg}"
    );
    let moved = Tensor::from_vec([2], vec![1.0f32, 2.0])
        .unwrap()
        .to_device(Device::Cuda(0));
    assert!(moved.unwrap_err().to_string().contains("no CUDA driver"));
}

#[test]
fn emulated_device_matches_the_cpu_on_every_op() {
    let _turn = emulated();
    let checks = op_parity(Device::CudaEmu, &ParityPlan::quick(), &mut |_| {});
    println!("{}", report(&checks));
    assert!(checks.len() >= 70, "only {} checks", checks.len());
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok()).collect();
    assert!(failed.is_empty(), "{}", report(&checks));
}

#[test]
fn emulated_device_trains_and_decodes_like_the_cpu() {
    let _turn = emulated();
    let mut checks = train_step_parity(Device::CudaEmu, ParityPlan::quick().train, &mut |_| {});
    checks.extend(decode_parity(Device::CudaEmu, &mut |_| {}));
    println!("{}", report(&checks));
    assert!(checks.iter().all(|c| c.ok()), "{}", report(&checks));
}

#[test]
fn tensors_move_between_devices_and_ops_refuse_mixed_devices() {
    let _turn = emulated();
    let cpu = Tensor::from_vec([2, 3], vec![1.0f32, -2.0, 3.5, 0.0, 5.0, -6.25]).unwrap();
    let dev = cpu.to_device(Device::CudaEmu).unwrap();
    assert_eq!(dev.device(), Device::CudaEmu);
    assert_eq!(dev.dims(), &[2, 3]);
    assert_eq!(dev.to_device(Device::Cpu).unwrap().to_vec(), cpu.to_vec());
    let err = dev.host().unwrap_err().to_string();
    assert!(
        err.contains("cuda-emu") && err.contains("to_device"),
        "{err}"
    );
    let err = Tensor::<f64>::zeros([2], Device::CudaEmu).unwrap_err();
    assert!(err.to_string().contains("f32 values, not f64"), "{err}");
    // copy_from takes the source's device, reusing the allocation where it can.
    let mut t = dev.clone();
    t.copy_from(&cpu).unwrap();
    assert_eq!((t.device(), t.to_vec()), (Device::Cpu, cpu.to_vec()));
    t.copy_from(&dev).unwrap();
    assert_eq!((t.device(), t.to_vec()), (Device::CudaEmu, cpu.to_vec()));
    let mut y = cpu.clone();
    let err = add_into(&dev, &mut y).unwrap_err();
    assert!(
        matches!(err, Error::DeviceMismatch { op: "add_into", .. }),
        "{err}"
    );
}

/// An allocation the device cannot satisfy is an error (after the cache was handed back), and
/// the device stays usable.
#[test]
fn device_out_of_memory_is_an_error() {
    let _turn = emulated();
    drop(Tensor::<f32>::zeros([1000], Device::CudaEmu).unwrap());
    let err = Tensor::<f32>::zeros([1 << 42], Device::CudaEmu).unwrap_err();
    assert_eq!(
        memory_stats(Device::CudaEmu).unwrap().cached,
        0,
        "the cache goes back before the retry"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cuda-emu") && msg.contains("out of memory"),
        "{msg}"
    );
    let ok = Tensor::<f32>::zeros([8], Device::CudaEmu).unwrap();
    assert_eq!(ok.to_vec(), vec![0.0; 8]);
}

/// After the first step, training on the device takes every buffer from the cache: the memory
/// obtained from the driver (in use + cached) stops growing, and each step's peak is the same.
#[test]
fn device_memory_is_reused_across_steps() {
    let _turn = emulated();
    let config = MambaConfig {
        d_model: 16,
        n_layer: 2,
        vocab_size: 11,
        mixer: MambaMixerConfig {
            d_state: 4,
            ..MambaMixerConfig::default()
        },
        ..MambaConfig::default()
    };
    let mut model = LanguageModel::new(config, 3).unwrap();
    model.to_device(Device::CudaEmu).unwrap();
    release_cache(Device::CudaEmu).unwrap();
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 5 % 11) as u32).collect();
    let targets: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let step = |model: &mut LanguageModel| {
        reset_peak_memory(Device::CudaEmu);
        model.zero_grad().unwrap();
        model.forward_loss(&ids, &targets, 2).unwrap();
        model.backward().unwrap();
        let m = memory_stats(Device::CudaEmu).unwrap();
        (m.in_use + m.cached, m.peak)
    };
    let first = step(&mut model);
    let later: Vec<_> = (0..3).map(|_| step(&mut model)).collect();
    assert!(
        later.iter().all(|&m| m == later[0]),
        "{first:?} then {later:?}"
    );
    assert!(later[0].0 <= first.0 * 2, "{first:?} then {later:?}");
}

/// The backend's own NVRTC path (through cudarc, headers and options as the GPU gets them)
/// produces a loadable ELF cubin for every kernel source. Needs libnvrtc.so.13 on the loader
/// path, as `scripts/test` arranges.
#[test]
fn backend_compiles_every_kernel_source_to_a_cubin() {
    for src in ssm_kernels::SOURCES {
        let cubin = compile_cubin(src.name, src.source, "sm_90")
            .unwrap_or_else(|e| panic!("{}.cu: {e}", src.name));
        let magic = cubin.first().map(|w| w.to_le_bytes());
        assert!(
            magic.is_some_and(|m| m.starts_with(b"\x7fELF")),
            "{}.cu: not an ELF image",
            src.name
        );
    }
}

/// Δ stays in these limits in the SSD cases.
const SSD_LIMIT: [f64; 2] = [0.05, 0.6];

/// The inputs of one SSD case on the CPU, every option on: x, dt, A, B, C, D, dt_bias, h0, then
/// dy and dlast. A Δ within 1e-3 of a limit is moved off it, so that both devices clamp the
/// same positions (their softplus differ in the last bits).
fn ssd_case(
    seed: u64,
    (b, l, h, p, g, n): (usize, usize, usize, usize, usize, usize),
) -> Vec<Tensor> {
    let mut r = rng(seed);
    let bias: Tensor = uniform(&mut r, &[h], -1.0, 0.0);
    let mut dt: Tensor = uniform(&mut r, &[b, l, h], -3.0, 0.5);
    let bv = bias.to_vec();
    for (i, v) in dt.host_mut().unwrap().iter_mut().enumerate() {
        let delta = (*v as f64 + bv[i % h] as f64).exp().ln_1p();
        if SSD_LIMIT.iter().any(|&edge| (delta - edge).abs() < 1e-3) {
            *v += 0.01;
        }
    }
    let mut t = |dims: &[usize], lo, hi| uniform(&mut r, dims, lo, hi);
    vec![
        t(&[b, l, h, p], -1.0, 1.0),
        dt,
        t(&[h], -0.25, -0.02),
        t(&[b, l, g, n], -1.0, 1.0),
        t(&[b, l, g, n], -1.0, 1.0),
        t(&[h], -1.0, 1.0),
        bias,
        t(&[b, h, p, n], -1.0, 1.0),
        t(&[b, l, h, p], -1.0, 1.0),
        t(&[b, h, p, n], -1.0, 1.0),
    ]
}

fn ssd_inputs(t: &[Tensor]) -> SsdInputs<'_, f32> {
    SsdInputs {
        x: &t[0],
        dt: &t[1],
        a: &t[2],
        b: &t[3],
        c: &t[4],
        d_skip: Some(&t[5]),
        dt_bias: Some(&t[6]),
        dt_softplus: true,
        dt_limit: SSD_LIMIT,
        h0: Some(&t[7]),
    }
}

/// The op on `device` from the CPU tensors `t`: y, the last state, the chunk states and every
/// gradient (added into non-zero buffers), back on the CPU. With `saved`, the backward reads
/// those chunk states instead of its own forward's.
fn ssd_on(
    device: Device,
    t: &[Tensor],
    chunk: usize,
    saved: Option<&Tensor>,
) -> ssm::Result<Vec<Tensor>> {
    let t: Vec<Tensor> = t
        .iter()
        .map(|x| x.to_device(device))
        .collect::<ssm::Result<_>>()?;
    let inp = ssd_inputs(&t);
    let mut out = SsdOutput::default();
    ssd_fwd(&inp, chunk, &mut out, true)?;
    if let Some(s) = saved {
        out.chunk_states = s.to_device(device)?;
    }
    let mut g = SsdGrads::zeros_like(&inp)?;
    for (i, gt) in g.each_mut().present().into_iter().enumerate() {
        *gt = Tensor::from_vec(gt.dims(), vec![0.25 + i as f32; gt.numel()])?.to_device(device)?;
    }
    ssd_bwd(&inp, &out, &t[8], Some(&t[9]), &mut g)?;
    let mut all = vec![out.y, out.last_state, out.chunk_states];
    all.extend(g.each_mut().present().into_iter().map(|t| t.clone()));
    all.iter().map(|t| t.to_device(Device::Cpu)).collect()
}

/// max |a - b| / max(1e-6, max |b|).
fn scaled_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_vec(), b.to_vec());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

const SSD_OUTPUTS: [&str; 11] = [
    "y",
    "last state",
    "chunk states",
    "dx",
    "ddt",
    "dA",
    "dB",
    "dC",
    "dD",
    "ddt_bias",
    "dh0",
];

/// ssd_fwd and ssd_bwd on the emulated device equal the CPU op on the same inputs, to f32 sums
/// in another order: chunks of two row tiles and of a fraction of one, g > 1 and g = h.
#[test]
fn ssd_on_the_emulated_device_matches_the_cpu_op() {
    let _turn = emulated();
    for (seed, dims, chunk) in [
        (1, (2, 300, 4, 16, 2, 24), 128),
        (2, (1, 77, 3, 8, 3, 8), 16),
    ] {
        let t = ssd_case(seed, dims);
        let want = ssd_on(Device::Cpu, &t, chunk, None).unwrap();
        let got = ssd_on(Device::CudaEmu, &t, chunk, None).unwrap();
        assert_eq!(got.len(), SSD_OUTPUTS.len());
        for ((name, w), g) in SSD_OUTPUTS.iter().zip(&want).zip(&got) {
            let d = scaled_diff(g, w);
            println!("ssd {dims:?} chunk {chunk} {name:<12} max |diff| / max |cpu| = {d:.1e}");
            assert!(d <= 1e-5, "{dims:?} chunk {chunk} {name}: {d:e}");
        }
    }
}

/// The saved states have one layout on every device: a device backward from the CPU forward's
/// chunk states gives the gradients of the device's own. Chunks longer than the kernels take
/// are a clear error on the device, where the CPU takes them.
#[test]
fn ssd_device_backward_takes_cpu_chunk_states_and_refuses_long_chunks() {
    let _turn = emulated();
    let t = ssd_case(3, (1, 40, 2, 4, 1, 4));
    let mut cpu = SsdOutput::default();
    ssd_fwd(&ssd_inputs(&t), 16, &mut cpu, true).unwrap();
    let mixed = ssd_on(Device::CudaEmu, &t, 16, Some(&cpu.chunk_states)).unwrap();
    let own = ssd_on(Device::CudaEmu, &t, 16, None).unwrap();
    for ((name, m), o) in SSD_OUTPUTS.iter().zip(&mixed).zip(&own).skip(3) {
        let d = scaled_diff(m, o);
        assert!(d <= 1e-6, "{name} from the CPU's chunk states: {d:e}");
    }
    let err = ssd_on(Device::CudaEmu, &t, 512, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Kernel { .. }), "{msg}");
    assert!(msg.contains("chunk 512") && msg.contains("256"), "{msg}");
    assert!(ssd_on(Device::Cpu, &t, 512, None).is_ok());
}
