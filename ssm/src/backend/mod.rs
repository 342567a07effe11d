//! Device runtimes, below the ops: `cpu` holds what the CPU kernels share (work splits, row
//! blocks, the `multiversion!` dispatch to AVX-512 or AVX2), `cuda` the CUDA device (driver,
//! emulation, cuBLAS-style GEMM, caching allocator). The kernels and launch mappings of each op
//! live with the op, in `crate::ops::<family>`; nothing here imports the ops, the layers or the
//! tensor module. [`Device`] is declared here, with the runtimes that serve it, and re-exported by
//! `crate::tensor`.

pub mod cpu;
pub mod cuda;

use std::fmt;

use crate::error::{Error, Result};

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
    /// The CUDA backend with its kernels run by the CPU emulation of `ssm-kernels`: the GPU code
    /// path on a machine without a GPU, slowly (for tests and for debugging kernels).
    CudaEmu,
}

impl Device {
    /// Whether tensors on this device use the CUDA backend.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::CudaEmu => write!(f, "cuda-emu"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "device",
                format!("expected `cpu`, `cuda`, `cuda:N` or `cuda-emu`, got `{s}`"),
            )
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "cuda-emu" => Ok(Device::CudaEmu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}
