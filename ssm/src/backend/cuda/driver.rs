//! The real engine: the NVIDIA driver, NVRTC and cuBLAS through cudarc (dynamically loaded, so a
//! binary without a GPU still builds and runs). All work goes to one stream per device; the host
//! waits only when it copies values back or asks to synchronize.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaStream, result as cu, sys as cu_sys};
use cudarc::nvrtc::sys as nvrtc;
use ssm_kernels::{DevicePtr, HEADERS, Launch, NVRTC_OPTIONS, source_of};

use super::gemm::ColumnMajorGemm;
use crate::backend::Device;
use crate::error::{Error, Result};

/// Compiled modules and their entry points, keyed by source and by kernel name. Module and
/// function handles are plain pointers owned by the context, valid on any thread that binds it.
#[derive(Default)]
struct Kernels {
    modules: HashMap<&'static str, usize>,
    functions: HashMap<&'static str, usize>,
}

pub struct Driver {
    device: Device,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    name: String,
    arch: String,
    sms: usize,
    kernels: Mutex<Kernels>,
}

impl Driver {
    /// Opens device `ordinal`: checks that the driver, NVRTC and cuBLAS libraries load before
    /// any cudarc call (cudarc panics on a missing library), then creates the context, a stream
    /// and a cuBLAS handle bound to it.
    pub fn new(ordinal: usize) -> Result<Driver> {
        let device = Device::Cuda(ordinal);
        let err = |reason: String| Error::Device {
            device: device.to_string(),
            reason,
        };
        // SAFETY: the presence checks only try to open the libraries.
        if !unsafe { cu_sys::is_culib_present() } {
            return Err(err(
                "no CUDA driver: libcuda.so could not be loaded (this machine has no NVIDIA driver; \
                 use --device cpu)"
                    .into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { nvrtc::is_culib_present() } {
            return Err(err(
                "NVRTC (libnvrtc.so.13) could not be loaded: put the lib folder of a CUDA 13 NVRTC \
                 on LD_LIBRARY_PATH (PyTorch's nvidia/cu13/lib, or `pip install \
                 nvidia-cuda-nvrtc==13.0.88`)"
                    .into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(err(
                "cuBLAS (libcublas.so.13) could not be loaded: put its folder on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| err(format!("cuInit: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(err(format!(
                "no such GPU: the driver reports {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err(format!("creating a context: {e}")))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| err(format!("creating a stream: {e}")))?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| err(format!("creating cuBLAS: {e}")))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| err(format!("compute capability: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let sms = ctx
            .attribute(cu_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| err(format!("multiprocessor count: {e}")))?;
        Ok(Driver {
            device,
            ctx,
            stream,
            blas,
            name,
            arch: format!("sm_{major}{minor}"),
            sms: sms.max(1) as usize,
            kernels: Mutex::default(),
        })
    }

    /// The GPU, its architecture and the versions of the libraries actually loaded, e.g.
    /// `NVIDIA H200 (sm_90), driver CUDA 13.0, NVRTC 13.0, cuBLAS 130100`.
    pub fn describe(&self) -> String {
        let (mut driver, mut major, mut minor, mut blas) = (0, 0, 0, 0);
        // SAFETY: plain queries writing into the locals; the libraries were checked present.
        unsafe {
            cu_sys::cuDriverGetVersion(&mut driver);
            nvrtc::nvrtcVersion(&mut major, &mut minor);
            blas_sys::cublasGetVersion_v2(*self.blas.handle(), &mut blas);
        }
        format!(
            "{} ({}), driver CUDA {}.{}, NVRTC {major}.{minor}, cuBLAS {blas}",
            self.name,
            self.arch,
            driver / 1000,
            driver % 1000 / 10
        )
    }

    /// Streaming multiprocessors, which launch planning fills.
    pub fn sm_count(&self) -> usize {
        self.sms
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Device {
            device: self.device.to_string(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Makes the context current on the calling thread (ops may run on any thread).
    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))
    }

    pub fn malloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.bind()?;
        // SAFETY: plain allocation; the pool tracks the block until it is freed.
        unsafe { cu::malloc_sync(bytes) }.map_err(|e| self.err(&format!("cuMemAlloc({bytes})"), e))
    }

    pub fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.bind()?;
        // SAFETY: `ptr` came from `malloc` and is no longer referenced (the pool drained it after
        // a synchronize).
        unsafe { cu::free_sync(ptr) }.map_err(|e| self.err("cuMemFree", e))
    }

    pub fn htod<P: Copy>(&self, src: &[P], dst: DevicePtr) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds `size_of_val(src)` bytes. From pageable memory the call returns only once
        // `src` has been staged, so `src` may be dropped afterwards.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyHtoD", e))
    }

    pub fn dtoh(&self, src: DevicePtr, dst: &mut [f32]) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds `dst.len()` floats; the synchronize below completes the copy before
        // `dst` is used.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyDtoH", e))?;
        self.synchronize()
    }

    pub fn dtod(&self, src: DevicePtr, dst: DevicePtr, len: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both buffers hold `len` floats and do not overlap.
        unsafe { cu::memcpy_dtod_async(dst, src, len * 4, self.stream.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyDtoD", e))
    }

    pub fn memset_zero(&self, ptr: DevicePtr, len: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `ptr` holds `len` floats; all-zero bytes are 0.0f.
        unsafe { cu::memset_d8_async(ptr, 0, len * 4, self.stream.cu_stream()) }
            .map_err(|e| self.err("cuMemsetD8", e))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.err("synchronizing the stream", e))
    }

    pub fn launch(&self, launch: &Launch) -> Result<()> {
        self.bind()?;
        let f = self.function(launch.kernel)?;
        let c = launch.config;
        let mut args = launch.args.clone();
        let mut params = args.params();
        // SAFETY: `f` is an entry point of a loaded module; `params` holds one pointer per
        // parameter, with the sizes the kernel declares (the emulated tests check every builder
        // against the kernel's signature), and the launch builders put only addresses of live
        // device buffers of this context into it.
        unsafe {
            cu::launch_kernel(
                f as cu_sys::CUfunction,
                c.grid_dim,
                c.block_dim,
                c.shared_mem_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| self.err(&format!("launching {}", launch.kernel), e))
    }

    pub fn gemm(&self, g: &ColumnMajorGemm) -> Result<()> {
        self.bind()?;
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let int = |what: &str, v: usize| {
            c_int::try_from(v).map_err(|_| self.err("cuBLAS", format!("{what} = {v} exceeds int")))
        };
        // SAFETY: the addresses are live device buffers holding the matrices `g` describes (the
        // ops checked their shapes); alpha and beta live on the host for the whole call.
        unsafe {
            blas::sgemm_strided_batched(
                *self.blas.handle(),
                op(g.trans_x),
                op(g.trans_y),
                int("m", g.rows)?,
                int("n", g.cols)?,
                int("k", g.inner)?,
                &g.alpha,
                g.x as *const f32,
                int("lda", g.ldx)?,
                g.stride_x as i64,
                g.y as *const f32,
                int("ldb", g.ldy)?,
                g.stride_y as i64,
                &g.beta,
                g.out as *mut f32,
                int("ldc", g.ldo)?,
                g.stride_out as i64,
                int("batch", g.batch)?,
            )
        }
        .map_err(|e| self.err("cublasSgemmStridedBatched", e))
    }

    /// The entry point `kernel`, compiling and loading its source on first use.
    fn function(&self, kernel: &'static str) -> Result<usize> {
        let mut k = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&f) = k.functions.get(kernel) {
            return Ok(f);
        }
        let src = source_of(kernel)
            .ok_or_else(|| self.err(kernel, "no kernel source defines this entry point"))?;
        let module = match k.modules.get(src.name) {
            Some(&m) => m,
            None => {
                let cubin = compile_cubin(src.name, src.source, &self.arch).map_err(|e| {
                    self.err(
                        &format!("NVRTC compiling {}.cu for {}", src.name, self.arch),
                        e,
                    )
                })?;
                // SAFETY: `cubin` is a complete image NVRTC produced for this device's
                // architecture.
                let m = unsafe { cu::module::load_data(cubin.as_ptr() as *const c_void) }
                    .map_err(|e| self.err(&format!("loading {}.cu", src.name), e))?;
                k.modules.insert(src.name, m as usize);
                m as usize
            }
        };
        let name = CString::new(kernel).expect("kernel names have no NUL");
        // SAFETY: `module` is loaded and never unloaded while the context lives.
        let f = unsafe { cu::module::get_function(module as cu_sys::CUmodule, name) }
            .map_err(|e| self.err(&format!("finding {kernel}"), e))? as usize;
        k.functions.insert(kernel, f);
        Ok(f)
    }
}

/// Compiles kernel source `name` (one of `ssm_kernels::SOURCES`) to a cubin for `arch` (e.g.
/// `sm_90`) with NVRTC, the headers of `ssm_kernels::HEADERS` available to it. A cubin rather than
/// PTX: the driver loads it without a JIT, whatever PTX version it accepts.
pub fn compile_cubin(
    name: &str,
    source: &str,
    arch: &str,
) -> std::result::Result<Vec<u64>, String> {
    // SAFETY: only tries to open the library.
    if !unsafe { nvrtc::is_culib_present() } {
        return Err(
            "NVRTC (libnvrtc.so.13) could not be loaded: put its folder on LD_LIBRARY_PATH".into(),
        );
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{name}: NUL in a source or option"));
    let (src, file) = (cstr(source)?, cstr(&format!("{name}.cu"))?);
    let texts = HEADERS
        .iter()
        .map(|(_, t)| cstr(t))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let names = HEADERS
        .iter()
        .map(|(n, _)| cstr(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let text_ptrs: Vec<*const c_char> = texts.iter().map(|s| s.as_ptr()).collect();
    let name_ptrs: Vec<*const c_char> = names.iter().map(|s| s.as_ptr()).collect();
    let options = NVRTC_OPTIONS
        .iter()
        .map(|o| cstr(o))
        .chain([cstr(&format!("--gpu-architecture={arch}"))])
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|s| s.as_ptr()).collect();
    let ok = nvrtc::nvrtcResult::NVRTC_SUCCESS;
    let fail = |what: &str, rc: nvrtc::nvrtcResult| format!("NVRTC {what} failed: {rc:?}");
    let mut prog: nvrtc::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every string is NUL-terminated and outlives the program; counts match arrays.
    let rc = unsafe {
        nvrtc::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            file.as_ptr(),
            text_ptrs.len() as c_int,
            text_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
    };
    if rc != ok {
        return Err(fail("create", rc));
    }
    // SAFETY: `prog` is valid until destroyed below; the options outlive the call.
    let compiled = unsafe {
        nvrtc::nvrtcCompileProgram(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr())
    };
    let result = if compiled == ok {
        let mut size = 0usize;
        // SAFETY: `prog` compiled; the buffer has the size NVRTC reports.
        unsafe {
            let rc = nvrtc::nvrtcGetCUBINSize(prog, &mut size);
            // Words, not bytes: the driver reads the ELF image with 8-byte alignment.
            let mut cubin = vec![0u64; size.div_ceil(8)];
            if rc != ok {
                Err(fail("cubin size", rc))
            } else {
                let rc = nvrtc::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char);
                (rc == ok)
                    .then_some(cubin)
                    .ok_or_else(|| fail("get cubin", rc))
            }
        }
    } else {
        Err(program_log(prog))
    };
    // SAFETY: `prog` is destroyed once.
    unsafe { nvrtc::nvrtcDestroyProgram(&mut prog) };
    result
}

/// The compiler's messages for `prog`.
fn program_log(prog: nvrtc::nvrtcProgram) -> String {
    let mut n = 0usize;
    // SAFETY: `prog` is a valid program; the buffer has the size NVRTC reports.
    unsafe {
        nvrtc::nvrtcGetProgramLogSize(prog, &mut n);
        let mut log = vec![0u8; n.max(1)];
        nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
        String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .to_string()
    }
}
