//! `Tensor`: a contiguous, row-major array of `f32` (or `f64`, for gradient checks) with a shape and
//! a device. The CPU storage is a `Vec`; a CUDA storage slots in as another `Storage` variant, so
//! the ops keep their signatures and dispatch on [`Tensor::device`].

use std::fmt;

use crate::error::{Error, Result};
pub use crate::float::Float;

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "device",
                format!("expected `cpu`, `cuda` or `cuda:N`, got `{s}`"),
            )
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

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
}

/// A contiguous row-major tensor.
#[derive(Debug)]
pub struct Tensor<T: Float = f32> {
    shape: Shape,
    storage: Storage<T>,
}

impl<T: Float> Clone for Tensor<T> {
    fn clone(&self) -> Self {
        let storage = match &self.storage {
            Storage::Cpu(v) => Storage::Cpu(v.clone()),
        };
        Tensor {
            shape: self.shape.clone(),
            storage,
        }
    }

    /// Reuses the allocation: layers copy gradients into their scratch buffers every step.
    fn clone_from(&mut self, src: &Self) {
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(dst), Storage::Cpu(s)) => dst.clone_from(s),
        }
        self.shape.clone_from(&src.shape);
    }
}

fn no_backend(device: Device) -> Error {
    Error::Device {
        device: device.to_string(),
        reason: "this build has no backend for the device".into(),
    }
}

impl<T: Float> Tensor<T> {
    /// A tensor of zeros on `device`.
    pub fn zeros(shape: impl Into<Shape>, device: Device) -> Result<Self> {
        let shape = shape.into();
        match device {
            Device::Cpu => Ok(Tensor {
                storage: Storage::Cpu(vec![T::zero(); shape.numel()]),
                shape,
            }),
            other => Err(no_backend(other)),
        }
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
        match self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// The values, when the tensor lives in host memory.
    pub fn host(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
        }
    }

    /// The values, mutably, when the tensor lives in host memory.
    pub fn host_mut(&mut self) -> Result<&mut [T]> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
        }
    }

    /// A copy of the values in host memory, whatever the device.
    pub fn to_vec(&self) -> Vec<T> {
        match &self.storage {
            Storage::Cpu(v) => v.clone(),
        }
    }

    /// A copy of this tensor on `device`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Tensor {
                shape: self.shape.clone(),
                storage: Storage::Cpu(self.to_vec()),
            }),
            other => Err(no_backend(other)),
        }
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

    /// Gives the tensor `shape` and sets every value to zero, reusing the allocation when it is
    /// large enough; layers call this on their cached buffers so that steady-state training does
    /// not allocate.
    pub fn reset(&mut self, shape: impl Into<Shape>) {
        let shape = shape.into();
        match &mut self.storage {
            Storage::Cpu(v) => {
                v.clear();
                v.resize(shape.numel(), T::zero());
            }
        }
        self.shape = shape;
    }

    /// Sets every value to zero.
    pub fn zero_(&mut self) {
        match &mut self.storage {
            Storage::Cpu(v) => v.fill(T::zero()),
        }
    }

    /// Converts every value to another float type (gradient checks run models in f64).
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        match &self.storage {
            Storage::Cpu(v) => Tensor {
                shape: self.shape.clone(),
                storage: Storage::Cpu(v.iter().map(|x| U::from_f64(x.to_f64())).collect()),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parses() {
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert!(
            "gpu"
                .parse::<Device>()
                .unwrap_err()
                .to_string()
                .contains("device")
        );
    }
}
