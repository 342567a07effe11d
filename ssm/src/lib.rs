//! `ssm`: selective state-space models (Mamba) and attention baselines with hand-written forward
//! and backward passes, on the CPU and (through the CUDA backend) on NVIDIA GPUs.
//!
//! Dimension letters used in names and shape comments throughout:
//!
//! | letter | meaning |
//! |---|---|
//! | `b` | batch |
//! | `l` | sequence length |
//! | `d` | d_model (or channels of an op) |
//! | `di` | d_inner = expand · d_model |
//! | `n` | state size (d_state) |
//! | `r` | dt_rank |
//! | `g` | groups of channels sharing B and C |
//! | `k` | convolution width (d_conv) |
//! | `v` | vocabulary size |
//! | `m` | rows of a matrix product, b · l tokens |
//! | `h` | attention (query) heads |
//! | `hkv` | key/value heads (grouped-query attention; h when equal) |
//! | `hd` | head dimension |
//! | `lq`, `lk` | query and key lengths of attention (lk >= lq; lq = 1 when decoding) |

pub(crate) mod backend;
pub mod device;
pub mod error;
pub mod float;
pub mod io;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod parity;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch;

pub use error::{Error, Result};
pub use tensor::{Device, Float, Shape, Tensor};
