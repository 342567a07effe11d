//! The CUDA C++ kernels of the engine (`cu/*.cu`), embedded as sources for NVRTC, and the
//! machinery to run them without a GPU.
//!
//! - [`SOURCES`] and [`HEADERS`]: what the CUDA backend compiles with NVRTC, using
//!   [`NVRTC_OPTIONS`] plus the device's architecture.
//! - One module per kernel family builds the [`Launch`]es of an op (geometry and packed
//!   arguments) from device addresses and sizes; the CUDA backend and the emulation share them.
//!   The dims types of the families and the argument structs of the scan and of attention's
//!   gradients are declared here once, generic over the handle where `ssm`'s tensors and CPU
//!   kernels use the same list.
//! - [`emu`]: runs a [`Launch`] on the CPU (docs/ARCHITECTURE.md §4, level 1).
//!
//! Every kernel uses the token-major layouts of the `ssm` ops, so a CUDA backend implements the
//! same op API without transposes. Dimension letters as in `ssm`: `b` batch, `l` length, `d`
//! channels, `n` state size, `g` groups of B/C, `k` conv width, `v` vocabulary, `m` rows.

pub mod adamw;
pub mod attention;
pub mod conv1d;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod emu;
pub mod launch;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod scan;
pub mod ssd;

pub use launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, host_ptr, host_ptr_mut};

/// A kernel source file and the `extern "C"` entry points it defines.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
    pub entry_points: &'static [&'static str],
}

include!(concat!(env!("OUT_DIR"), "/sources.rs"));

/// The source that defines entry point `kernel` (what the CUDA backend compiles and loads to
/// launch it), among [`SOURCES`] and [`TEST_SOURCES`].
pub fn source_of(kernel: &str) -> Option<&'static KernelSource> {
    SOURCES
        .iter()
        .chain(TEST_SOURCES)
        .find(|s| s.entry_points.contains(&kernel))
}

/// NVRTC options every source compiles with, besides `--gpu-architecture`.
pub const NVRTC_OPTIONS: &[&str] = &["--std=c++17"];

/// Errors of launch planning and of the emulation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kernel}: {reason}")]
    Unsupported {
        kernel: &'static str,
        reason: String,
    },
    #[error("{kernel}: launch failed: {message}")]
    Launch { kernel: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the gradient structs of an op (`scan::ScanGradsOf`, `attention::AttnGradsOf`) need of
/// their handle to be made and cleared whole: `ssm`'s tensors implement it, so that its op-level
/// gradients have `zeros_like` and `zero_`.
pub trait GradBuffer: Sized {
    type Error;
    /// A buffer of zeros shaped like `self`, on its device.
    fn zeros_like(&self) -> std::result::Result<Self, Self::Error>;
    /// Sets every value to zero, keeping the buffer.
    fn zero_(&mut self) -> std::result::Result<(), Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_has_one_source_and_an_emulated_launcher() {
        for src in SOURCES.iter().chain(TEST_SOURCES) {
            for &k in src.entry_points {
                assert_eq!(source_of(k).map(|s| s.name), Some(src.name), "{k}");
                assert!(
                    emu::kernels().any(|e| e == k),
                    "{k} has no emulated launcher"
                );
            }
        }
        assert!(source_of("selective_scan_fwd_f32").is_some_and(|s| s.name == "scan"));
        assert!(source_of("no_such_kernel").is_none());
    }
}
