//! `ssm-lab`: the experiment runner of the ssm engine. A run is a folder `runs/<name>/` with the
//! resolved config, `metrics.csv`, `eval.csv`, checkpoints and plots; plots and summaries are
//! drawn from those files, never from memory.
//!
//! Letters in shape comments follow the `ssm` crate: `b` batch, `l` length, `v` vocabulary.

pub mod bench;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod demo;
pub mod eval;
pub mod gpu_check;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod recipes;
pub mod reproduce;
pub mod scaling;
pub mod sizes;
pub mod sweep;
pub mod tasks;
pub mod toml_keys;
pub mod train;
