//! The CUDA backend: one [`Gpu`] per device with a stream, a lazily filled module cache, cuBLAS and
//! a caching allocator; tensors on it hold a [`GpuBuffer`]. The kernels are those of
//! `ssm-kernels` (cu/*.cu), planned by its launch builders; each op maps its tensors to them in
//! `crate::ops::<family>::cuda`.
//!
//! Two engines run the same launches:
//! - [`Device::Cuda`]: the NVIDIA driver through cudarc (driver.rs). Kernels are compiled on first
//!   use with NVRTC for the device's architecture, matmuls go to cuBLAS, everything is queued on
//!   one stream and the host waits only when it reads values back.
//! - [`Device::CudaEmu`]: the CPU emulation of the kernels (emulated.rs), with host memory as
//!   "device" memory and a reference of cuBLAS's column-major GEMM. It is slow, and it exists so
//!   that every line above the driver calls (op dispatch, launch planning, the allocator, the
//!   cuBLAS argument mapping) is tested on machines without a GPU.

mod driver;
mod emulated;
mod gemm;
mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use driver::compile_cubin;
pub(crate) use gemm::Gemm;
use ssm_kernels::{DevicePtr, Launch};

use super::Device;
use crate::error::{Error, Result};
use pool::Pool;

enum Engine {
    Driver(driver::Driver),
    Emulated(emulated::Emulated),
}

/// Bytes of device memory: held by live tensors now, at most so far, and cached for reuse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub in_use: usize,
    pub peak: usize,
    pub cached: usize,
}

/// A CUDA device (or its emulation) and the state kept for it.
pub struct Gpu {
    device: Device,
    engine: Engine,
    pool: Mutex<Pool>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.device)
    }
}

impl Gpu {
    /// The device's handle, created on first use. For `Device::Cuda` this checks that the driver
    /// library loads and the ordinal exists, and returns [`Error::Device`] otherwise.
    pub fn get(device: Device) -> Result<Arc<Gpu>> {
        static GPUS: OnceLock<Mutex<HashMap<Device, Arc<Gpu>>>> = OnceLock::new();
        let mut gpus = GPUS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gpus.get(&device) {
            return Ok(g.clone());
        }
        let engine = match device {
            Device::Cuda(ordinal) => Engine::Driver(driver::Driver::new(ordinal)?),
            Device::CudaEmu => Engine::Emulated(emulated::Emulated::default()),
            Device::Cpu => {
                return Err(Error::Device {
                    device: device.to_string(),
                    reason: "not a CUDA device".into(),
                });
            }
        };
        let gpu = Arc::new(Gpu {
            device,
            engine,
            pool: Mutex::new(Pool::default()),
        });
        gpus.insert(device, gpu.clone());
        Ok(gpu)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The device's name and architecture and the library versions loaded, e.g. `NVIDIA H200
    /// (sm_90), driver CUDA 13.0, NVRTC 13.0, cuBLAS 130100`.
    pub fn describe(&self) -> String {
        match &self.engine {
            Engine::Driver(d) => d.describe(),
            Engine::Emulated(_) => "CPU emulation of the CUDA kernels".into(),
        }
    }

    /// Streaming multiprocessors (a fixed few on the emulated device), for launch planning.
    pub fn sm_count(&self) -> usize {
        match &self.engine {
            Engine::Driver(d) => d.sm_count(),
            Engine::Emulated(_) => emulated::SM_COUNT,
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` f32 values with unspecified contents (NaN on the emulated device), from
    /// the cache when one of its size class is free; when the device is out of memory, the cache
    /// is returned to the driver and the allocation tried once more.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<GpuBuffer> {
        let bytes = pool::size_class(len * 4);
        let cached = self.pool().take(bytes);
        let ptr = match cached {
            Some(p) => p,
            None => match self.malloc(bytes) {
                Ok(p) => p,
                Err(_) => {
                    self.release_cache()?;
                    self.malloc(bytes).map_err(|e| {
                        let MemoryStats { in_use, cached, .. } = self.memory();
                        let reason = format!("{e}; {in_use} bytes in use, {cached} cached");
                        Error::Device {
                            device: self.device.to_string(),
                            reason,
                        }
                    })?
                }
            },
        };
        self.pool().note_alloc(bytes);
        self.invalidate(ptr, len);
        Ok(GpuBuffer {
            gpu: self.clone(),
            ptr,
            len,
            bytes,
        })
    }

    /// A buffer of `len` zeros.
    pub fn zeros(self: &Arc<Self>, len: usize) -> Result<GpuBuffer> {
        let buf = self.alloc(len)?;
        self.memset_zero(buf.ptr, len)?;
        Ok(buf)
    }

    /// A buffer holding a copy of `data` (f32 values, or the u32 token ids and i64 targets that
    /// kernels read); its `len` counts 4-byte words.
    pub fn upload<P: Plain>(self: &Arc<Self>, data: &[P]) -> Result<GpuBuffer> {
        let bytes = std::mem::size_of_val(data);
        let buf = self.alloc(bytes.div_ceil(4))?;
        match &self.engine {
            Engine::Driver(d) => d.htod(data, buf.ptr)?,
            // SAFETY: `buf` holds at least `bytes` bytes.
            Engine::Emulated(_) => unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, buf.ptr as *mut u8, bytes)
            },
        }
        Ok(buf)
    }

    /// Copies `dst.len()` values from device address `src` into host memory, after all queued
    /// work.
    pub(crate) fn download(&self, src: DevicePtr, dst: &mut [f32]) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.dtoh(src, dst),
            Engine::Emulated(_) => {
                // SAFETY: the caller passes the address of a live buffer of at least `dst.len()`.
                unsafe { emulated::copy(src, dst.as_mut_ptr() as DevicePtr, dst.len()) };
                Ok(())
            }
        }
    }

    /// Queues a copy of `len` values between device addresses.
    ///
    /// # Safety
    /// `src` and `dst` must address non-overlapping ranges of `len` floats inside live buffers of
    /// this device (on the emulated device they are host addresses).
    pub unsafe fn copy(&self, src: DevicePtr, dst: DevicePtr, len: usize) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.dtod(src, dst, len),
            Engine::Emulated(_) => {
                // SAFETY: as the caller promises.
                unsafe { emulated::copy(src, dst, len) };
                Ok(())
            }
        }
    }

    /// Sets `len` values at `ptr` to zero.
    pub(crate) fn memset_zero(&self, ptr: DevicePtr, len: usize) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.memset_zero(ptr, len),
            Engine::Emulated(_) => {
                // SAFETY: `ptr` belongs to a live buffer of at least `len` floats.
                unsafe { std::ptr::write_bytes(ptr as *mut f32, 0, len) };
                Ok(())
            }
        }
    }

    /// Marks `len` values at `ptr` as garbage: NaN on the emulated device (a kernel that leaves an
    /// output element unwritten then fails the parity checks), nothing on a real GPU.
    pub(crate) fn invalidate(&self, ptr: DevicePtr, len: usize) {
        if let Engine::Emulated(_) = self.engine {
            // SAFETY: `ptr` belongs to a live buffer of at least `len` floats; all-ones bits are
            // a NaN.
            unsafe { std::ptr::write_bytes(ptr as *mut f32, 0xFF, len) };
        }
    }

    /// Queues a kernel launch planned by `ssm-kernels`. Crate-internal because the pointers in
    /// it must be addresses of live buffers of this device, sized as the builder's documentation
    /// says: the ops pass only the addresses of tensors whose shapes they checked.
    pub(crate) fn launch(&self, launch: &Launch) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.launch(launch),
            Engine::Emulated(e) => e.launch(launch),
        }
    }

    /// Queues launches in order.
    pub(crate) fn launch_all(&self, launches: &[Launch]) -> Result<()> {
        launches.iter().try_for_each(|l| self.launch(l))
    }

    /// Queues a matrix product (cuBLAS on the driver); as for `launch`, the ops vouch for the
    /// buffers behind the addresses.
    pub(crate) fn gemm(&self, g: &Gemm) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.gemm(&g.column_major()),
            Engine::Emulated(_) => {
                // SAFETY: the caller planned `g` over live buffers of this device.
                unsafe { gemm::column_major_ref(&g.column_major()) };
                Ok(())
            }
        }
    }

    /// Waits until all queued work has finished (timings read the clock after this).
    pub fn synchronize(&self) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.synchronize(),
            Engine::Emulated(_) => Ok(()),
        }
    }

    pub fn memory(&self) -> MemoryStats {
        self.pool().stats()
    }

    /// Starts a new peak of [`MemoryStats::peak`] from the memory in use now.
    pub fn reset_peak(&self) {
        self.pool().reset_peak();
    }

    /// Returns every cached block to the driver.
    pub fn release_cache(&self) -> Result<()> {
        let blocks = self.pool().drain();
        if !blocks.is_empty() {
            self.synchronize()?;
        }
        blocks
            .into_iter()
            .try_for_each(|(ptr, bytes)| self.free(ptr, bytes))
    }

    fn malloc(&self, bytes: usize) -> Result<DevicePtr> {
        match &self.engine {
            Engine::Driver(d) => d.malloc(bytes),
            Engine::Emulated(e) => e.malloc(bytes),
        }
    }

    fn free(&self, ptr: DevicePtr, bytes: usize) -> Result<()> {
        match &self.engine {
            Engine::Driver(d) => d.free(ptr),
            Engine::Emulated(e) => {
                e.free(ptr, bytes);
                Ok(())
            }
        }
    }
}

/// Element types whose bytes can be copied to the device as they are.
pub trait Plain: Copy + private::Sealed {}
impl Plain for f32 {}
impl Plain for u32 {}
impl Plain for i64 {}
mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
    impl Sealed for i64 {}
}

/// `len` f32 values in device memory. Dropping it returns the memory to its device's cache; work
/// queued on the device's one stream before the drop finishes before any later reuse.
pub struct GpuBuffer {
    gpu: Arc<Gpu>,
    ptr: DevicePtr,
    len: usize,
    bytes: usize,
}

impl GpuBuffer {
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `len` values fit the allocation without growing it.
    pub(crate) fn fits(&self, len: usize) -> bool {
        len * 4 <= self.bytes
    }

    /// The same allocation viewed as `len` values (`fits(len)` must hold).
    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(self.fits(len));
        self.len = len;
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<GpuBuffer> {
        let out = self.gpu.alloc(self.len)?;
        // SAFETY: both buffers are live and hold `self.len` values; `out` is new.
        unsafe { self.gpu.copy(self.ptr, out.ptr, self.len)? };
        Ok(out)
    }

    /// The values, copied to host memory.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let mut v = vec![0.0; self.len];
        self.gpu.download(self.ptr, &mut v)?;
        Ok(v)
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({}, {} values)", self.gpu.device, self.len)
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.gpu.pool().give_back(self.ptr, self.bytes);
    }
}

impl From<ssm_kernels::Error> for Error {
    fn from(e: ssm_kernels::Error) -> Self {
        Error::Kernel {
            reason: e.to_string(),
        }
    }
}
