//! `Tensor`: a contiguous, row-major array of `f32` (or `f64`, for gradient checks) with a shape and
//! a device. The CPU storage is a `Vec`; the CUDA storage is a `GpuBuffer` of the CUDA backend
//! (f32 only), and the ops keep one signature and dispatch on [`Tensor::device`].

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

pub use crate::backend::Device;
use crate::backend::cuda::{Gpu, GpuBuffer};
use crate::error::{Error, Result};
pub use crate::float::Float;

/// The dimensions of a tensor, outermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape::new(d)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl<const R: usize> From<[usize; R]> for Shape {
    fn from(d: [usize; R]) -> Self {
        Shape(d.to_vec())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[derive(Debug)]
enum Storage<T> {
    Cpu(Vec<T>),
    Cuda(GpuBuffer),
}

/// A contiguous row-major tensor.
#[derive(Debug)]
pub struct Tensor<T: Float = f32> {
    shape: Shape,
    storage: Storage<T>,
}

impl<T: Float> Tensor<T> {
    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<Self> {
        let storage = match &self.storage {
            Storage::Cpu(v) => Storage::Cpu(v.clone()),
            Storage::Cuda(b) => Storage::Cuda(b.try_clone()?),
        };
        Ok(Tensor {
            shape: self.shape.clone(),
            storage,
        })
    }

    /// Makes this tensor a copy of `src`, on `src`'s device, reusing the allocation when it is
    /// there and large enough: layers copy gradients into their scratch buffers every step.
    pub fn copy_from(&mut self, src: &Self) -> Result<()> {
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(dst), Storage::Cpu(s)) => {
                dst.clone_from(s);
                self.shape.clone_from(&src.shape);
            }
            (_, Storage::Cpu(_)) => *self = src.try_clone()?,
            (_, Storage::Cuda(s)) => {
                self.reset_output(src.shape.clone(), src.device())?;
                // SAFETY: `self` now holds `src.numel()` values on `src`'s device, in another
                // buffer than `src` (both are borrowed, one mutably).
                unsafe { s.gpu().copy(s.ptr(), self.cuda_ptr()?, src.numel())? };
            }
        }
        Ok(())
    }
}

/// `clone` and `clone_from` copy on the tensor's device; a device that fails to allocate or copy
/// panics here, so code that must survive that uses [`Tensor::try_clone`] / [`Tensor::copy_from`].
impl<T: Float> Clone for Tensor<T> {
    fn clone(&self) -> Self {
        self.try_clone()
            .unwrap_or_else(|e| panic!("cloning a tensor: {e}"))
    }

    fn clone_from(&mut self, src: &Self) {
        self.copy_from(src)
            .unwrap_or_else(|e| panic!("copying a tensor: {e}"))
    }
}

fn not_on_host(device: Device) -> Error {
    Error::Device {
        device: device.to_string(),
        reason: "the tensor lives in device memory; copy it with `to_device(Device::Cpu)` or \
                 `to_host_vec()` to read it on the host"
            .into(),
    }
}

/// CUDA tensors hold f32; f64 exists for gradient checks on the CPU.
fn check_f32<T: Float>(device: Device) -> Result<()> {
    if T::NAME == "f32" {
        return Ok(());
    }
    Err(Error::Device {
        device: device.to_string(),
        reason: format!("CUDA tensors hold f32 values, not {}", T::NAME),
    })
}

impl<T: Float> Tensor<T> {
    /// A tensor of zeros on `device`.
    pub fn zeros(shape: impl Into<Shape>, device: Device) -> Result<Self> {
        let shape = shape.into();
        let storage = match device {
            Device::Cpu => Storage::Cpu(vec![T::zero(); shape.numel()]),
            cuda => {
                check_f32::<T>(cuda)?;
                Storage::Cuda(Gpu::get(cuda)?.zeros(shape.numel())?)
            }
        };
        Ok(Tensor { storage, shape })
    }

    /// A CPU tensor of zeros (infallible).
    pub fn zeros_cpu(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        Tensor {
            storage: Storage::Cpu(vec![T::zero(); shape.numel()]),
            shape,
        }
    }

    /// A CPU tensor owning `data`, which must hold exactly `shape.numel()` values.
    pub fn from_vec(shape: impl Into<Shape>, data: Vec<T>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape(
                "Tensor::from_vec",
                "data",
                format!("{} values for shape {shape}", shape.numel()),
                &[data.len()],
            ));
        }
        Ok(Tensor {
            shape,
            storage: Storage::Cpu(data),
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => b.gpu().device(),
        }
    }

    /// The values, when the tensor lives in host memory.
    pub fn host(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(b) => Err(not_on_host(b.gpu().device())),
        }
    }

    /// The values, mutably, when the tensor lives in host memory.
    pub fn host_mut(&mut self) -> Result<&mut [T]> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(b) => Err(not_on_host(b.gpu().device())),
        }
    }

    fn gpu_buffer(&self) -> Result<&GpuBuffer> {
        match &self.storage {
            Storage::Cuda(b) => Ok(b),
            Storage::Cpu(_) => Err(Error::Device {
                device: "cpu".into(),
                reason: "expected a tensor in CUDA device memory".into(),
            }),
        }
    }

    /// The CUDA device holding the tensor.
    pub fn gpu(&self) -> Result<&Arc<Gpu>> {
        Ok(self.gpu_buffer()?.gpu())
    }

    /// The device address of the first value, for kernel launches.
    pub fn cuda_ptr(&self) -> Result<ssm_kernels::DevicePtr> {
        Ok(self.gpu_buffer()?.ptr())
    }

    /// A copy of the values in host memory, whatever the device.
    pub fn to_host_vec(&self) -> Result<Vec<T>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Cuda(b) => Ok(T::vec_from_f32(b.to_host()?)),
        }
    }

    /// A copy of the values in host memory, for tests and tools. A device that fails to copy
    /// back (a lost GPU) panics here; library code uses [`Tensor::to_host_vec`].
    pub fn to_vec(&self) -> Vec<T> {
        self.to_host_vec()
            .unwrap_or_else(|e| panic!("copying a tensor to the host: {e}"))
    }

    /// A copy of this tensor on `device` (also when it already lives there).
    pub fn to_device(&self, device: Device) -> Result<Self> {
        let storage = match (device, &self.storage) {
            (Device::Cpu, _) => Storage::Cpu(self.to_host_vec()?),
            (cuda, Storage::Cuda(b)) if cuda == b.gpu().device() => Storage::Cuda(b.try_clone()?),
            (cuda, Storage::Cpu(v)) => {
                check_f32::<T>(cuda)?;
                Storage::Cuda(Gpu::get(cuda)?.upload(&T::slice_as_f32(v))?)
            }
            // Between two CUDA devices, through the host.
            (cuda, Storage::Cuda(b)) => Storage::Cuda(Gpu::get(cuda)?.upload(&b.to_host()?)?),
        };
        Ok(Tensor {
            shape: self.shape.clone(),
            storage,
        })
    }

    /// The same values under another shape with the same number of elements.
    pub fn reshape(mut self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "Tensor::reshape",
                "target",
                format!("{} elements", self.numel()),
                shape.dims(),
            ));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Gives the tensor `shape` on `device` and sets every value to zero, reusing the allocation
    /// when it is on that device and large enough; layers call this on their cached buffers so
    /// that steady-state training does not allocate.
    pub fn reset(&mut self, shape: impl Into<Shape>, device: Device) -> Result<()> {
        let shape = shape.into();
        let len = shape.numel();
        match &mut self.storage {
            Storage::Cpu(v) if device == Device::Cpu => refill(v, len, T::zero()),
            Storage::Cuda(b) if b.gpu().device() == device && b.fits(len) => {
                b.set_len(len);
                b.gpu().memset_zero(b.ptr(), len)?;
            }
            _ => *self = Tensor::zeros(shape.clone(), device)?,
        }
        self.shape = shape;
        Ok(())
    }

    /// [`Tensor::reset`] for an op's output that its kernel overwrites entirely: unspecified
    /// values (no pass over them) on a GPU and, in optimised builds, on the CPU. The emulated
    /// device, and the CPU in builds with debug assertions (the tests), fill them with NaN
    /// instead, so that an element an op fails to write shows up in the tests.
    pub fn reset_output(&mut self, shape: impl Into<Shape>, device: Device) -> Result<()> {
        let shape = shape.into();
        let len = shape.numel();
        match &mut self.storage {
            Storage::Cpu(v) if device == Device::Cpu => {
                if cfg!(debug_assertions) {
                    refill(v, len, T::from_f64(f64::NAN));
                } else {
                    // Old values stay where the allocation is reused: the op overwrites them.
                    v.resize(len, T::zero());
                }
            }
            Storage::Cuda(b) if b.gpu().device() == device && b.fits(len) => {
                b.set_len(len);
                b.gpu().invalidate(b.ptr(), len);
            }
            _ if device.is_cuda() => {
                check_f32::<T>(device)?;
                let buf = Gpu::get(device)?.alloc(len)?;
                self.storage = Storage::Cuda(buf);
            }
            _ => return self.reset(shape, device),
        }
        self.shape = shape;
        Ok(())
    }

    /// [`Tensor::reset`] to the shape and device of `like`.
    pub fn reset_like(&mut self, like: &Tensor<T>) -> Result<()> {
        self.reset(like.shape.clone(), like.device())
    }

    /// Sets every value to zero.
    pub fn zero_(&mut self) -> Result<()> {
        match &mut self.storage {
            Storage::Cpu(v) => refill(v, v.len(), T::zero()),
            Storage::Cuda(b) => b.gpu().memset_zero(b.ptr(), b.len())?,
        }
        Ok(())
    }

    /// Converts every value to another float type on the CPU (gradient checks run models in
    /// f64); like [`Tensor::to_vec`], a device that fails to copy back panics.
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            storage: Storage::Cpu(
                self.to_vec()
                    .into_iter()
                    .map(|x| U::from_f64(x.to_f64()))
                    .collect(),
            ),
        }
    }

    /// Checks that the tensor has exactly `expected` dims; `-` in messages names the op.
    pub fn expect_dims(&self, op: &'static str, what: &str, expected: &[usize]) -> Result<()> {
        if self.dims() != expected {
            return Err(Error::shape(op, what, format!("{expected:?}"), self.dims()));
        }
        Ok(())
    }
}

/// An empty CPU tensor, the starting value of layer caches.
impl<T: Float> Default for Tensor<T> {
    fn default() -> Self {
        Tensor::zeros_cpu([0])
    }
}

/// `v` as `len` copies of `value`, reusing its allocation; large buffers are filled by every
/// rayon thread, since a single-threaded pass over them would leave the others idle.
fn refill<T: Float>(v: &mut Vec<T>, len: usize, value: T) {
    const PARALLEL_FROM: usize = 1 << 16;
    v.truncate(len);
    if v.len() >= PARALLEL_FROM {
        v.par_chunks_mut(PARALLEL_FROM).for_each(|c| c.fill(value));
    } else {
        v.fill(value);
    }
    v.resize(len, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parses() {
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        // Display and FromStr round-trip: sweeps pass devices to child processes as text.
        for d in [Device::Cpu, Device::Cuda(3), Device::CudaEmu] {
            assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
        }
        assert!(
            "gpu"
                .parse::<Device>()
                .unwrap_err()
                .to_string()
                .contains("device")
        );
    }
}
