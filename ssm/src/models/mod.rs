//! Whole models: one readable file per model, each with a typed config and derived sizes.

pub mod generate;
pub mod mamba;

pub use mamba::{MambaConfig, MambaLM, MambaState};
