//! Kernel tests, one binary: the emulation's self-test, every kernel through the emulation against
//! the CPU ops of `ssm`, a deliberately broken kernel that the harness must catch, and the NVRTC
//! compile check of every source.

mod adamw;
mod attention;
mod banks;
mod common;
mod conv1d;
mod cross_entropy;
mod elementwise;
mod embedding;
mod emu_selftest;
mod nvrtc;
mod reduce;
mod rmsnorm;
mod rope;
mod scan;
mod ssd;
