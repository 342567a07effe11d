//! Integration tests of the `ssm` crate: one binary, one module per subject.

mod attention;
mod common;
mod cuda;
mod gradcheck_models;
mod gradcheck_ops;
mod hf_fixture;
mod hf_mamba2_fixture;
mod model;
mod reference_parity;
mod scan_parity;
mod ssd;
#[cfg(feature = "torch")]
mod torch_parity;
mod transformer;
