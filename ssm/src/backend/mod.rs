//! Device backends. Ops validate shapes and pick the backend from their tensors' device; each
//! backend has one file per op family.

pub mod cpu;
pub mod cuda;
