//! The CUDA backend without a GPU: the documented error where there is no driver, and the whole
//! GPU code path (op dispatch, launch planning, allocator, the cuBLAS argument mapping) on the
//! emulated device, checked against the CPU by the same parity code that `ssm-lab gpu-check`
//! runs on a real GPU.

use std::sync::{Mutex, MutexGuard};

use ssm::device::{compile_cubin, memory_stats, release_cache, reset_peak_memory};
use ssm::models::{LanguageModel, MambaConfig, MambaMixerConfig};
use ssm::nn::Module;
use ssm::ops::activation::add_into;
use ssm::parity::{ParityPlan, decode_parity, op_parity, report, train_step_parity};
use ssm::{Device, Error, Tensor};

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
