//! What code outside the library needs of a device, on the CPU and on CUDA alike: waiting for
//! queued work, a description for logs, the peak memory of a stretch of work, the caching
//! allocator's counters, large tensors filled without generating every value on the host, and
//! the NVRTC compilation the GPU runs. Nothing outside `ssm` touches the backends.

use crate::backend::cuda::Gpu;
pub use crate::backend::cuda::{MemoryStats, compile_cubin};
use crate::error::Result;
use crate::tensor::{Device, Tensor};

/// Waits for all work queued on `device`; nothing to wait for on the CPU. Timings read the clock
/// after this.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        gpu => Gpu::get(gpu)?.synchronize(),
    }
}

/// A one-line description of `device` for logs and reports.
pub fn describe(device: Device) -> Result<String> {
    Ok(match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        gpu => format!("{gpu}: {}", Gpu::get(gpu)?.describe()),
    })
}

/// Peak memory in MiB since the last [`reset_peak_memory`]: the process's resident set (VmHWM) on
/// the CPU, the caching allocator's peak on a GPU; `None` where it cannot be read (no /proc, no
/// GPU).
pub fn peak_memory_mb(device: Device) -> Option<f64> {
    match device {
        Device::Cpu => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        }
        gpu => Gpu::get(gpu)
            .ok()
            .map(|g| g.memory().peak as f64 / (1024.0 * 1024.0)),
    }
}

/// The caching allocator's counters of a GPU (bytes in use, peak, cached); `None` on the CPU or
/// where the device cannot be opened.
pub fn memory_stats(device: Device) -> Option<MemoryStats> {
    match device {
        Device::Cpu => None,
        gpu => Gpu::get(gpu).ok().map(|g| g.memory()),
    }
}

/// Hands the blocks a GPU's caching allocator holds back to the driver; nothing to do on the CPU.
pub fn release_cache(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        gpu => Gpu::get(gpu)?.release_cache(),
    }
}

/// Starts a new peak for [`peak_memory_mb`] from the memory in use now. On the CPU this is
/// `echo 5 > /proc/self/clear_refs`, a no-op where the kernel does not allow it.
pub fn reset_peak_memory(device: Device) {
    match device {
        Device::Cpu => {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        gpu => {
            if let Ok(g) = Gpu::get(gpu) {
                g.reset_peak();
            }
        }
    }
}

/// A tensor of `dims` on `device` holding `block` repeated (the last copy cut short). The block
/// is sent to the device once and copied there, so a benchmark can fill gigabytes from a few
/// megabytes of host values.
pub fn tiled(dims: &[usize], block: &[f32], device: Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    if n == 0 || block.is_empty() {
        return Tensor::zeros(dims, device);
    }
    if n <= block.len() || device == Device::Cpu {
        let v = block.iter().copied().cycle().take(n).collect();
        return Tensor::from_vec(dims, v)?.to_device(device);
    }
    let out = Tensor::zeros(dims, device)?;
    let gpu = Gpu::get(device)?;
    let src = gpu.upload(block)?;
    let base = out.cuda_ptr()?;
    for start in (0..n).step_by(block.len()) {
        let len = block.len().min(n - start);
        // SAFETY: `src` holds block.len() >= len values and `out` n, of which
        // [start, start + len) is in range; the two are different live buffers of this device.
        unsafe { gpu.copy(src.ptr(), base + 4 * start as u64, len)? };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_repeats_the_block_on_every_device() {
        let block = [1.0, 2.0, 3.0];
        for device in [Device::Cpu, Device::CudaEmu] {
            let t = tiled(&[2, 4], &block, device).unwrap();
            assert_eq!(t.dims(), &[2, 4]);
            assert_eq!(t.to_vec(), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0]);
        }
        assert_eq!(
            tiled(&[2], &block, Device::CudaEmu).unwrap().to_vec(),
            [1.0, 2.0]
        );
    }

    #[test]
    fn peak_memory_is_read_on_the_cpu_and_the_emulated_gpu() {
        let _t = Tensor::<f32>::zeros([1 << 16], Device::CudaEmu).unwrap();
        let gpu = peak_memory_mb(Device::CudaEmu).unwrap();
        assert!(gpu >= 0.25, "{gpu} MiB");
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_memory_mb(Device::Cpu).unwrap() > 0.0);
        }
        synchronize(Device::CudaEmu).unwrap();
        assert!(describe(Device::Cpu).unwrap().starts_with("cpu ("));
    }
}
