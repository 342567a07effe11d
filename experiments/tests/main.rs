//! Integration tests of `ssm-lab`: one binary, one module per subject. Most run the real binary
//! (env!("CARGO_BIN_EXE_ssm-lab")) in a fresh temporary folder.

mod bad_input;
mod common;
mod compare;
mod configs;
mod device;
mod end_to_end;
mod fuzz;
mod generators;
mod kill_points;
mod limits;
mod logits;
mod plot;
mod readme;
mod reproduce;
mod resume;
mod scaling;
mod svg_plots;
mod torch;
