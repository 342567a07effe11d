//! Bounds on model configurations, checked before anything is allocated. Each size has a ceiling
//! far above any model this engine trains (the largest published dense models have d_model 16384,
//! ~130 layers and vocabularies of ~256K) yet low enough that every size product in the models
//! (parameter counts, FLOPs, activation sizes per token) fits in 64 bits: with the ceilings below
//! the largest such product, n_layer · 5 · d_inner · d_model, stays under 2^52.

use crate::error::{Error, Result};

/// d_model, d_inner, dt_rank, MLP widths.
pub const MAX_WIDTH: usize = 1 << 16;
/// expand, so that d_inner = expand · d_model stays within 2^22.
pub const MAX_EXPAND: usize = 64;
/// Layers (a hybrid's pattern letters).
pub const MAX_LAYERS: usize = 1 << 10;
/// vocab_size and its padding multiple (the padded vocabulary stays within twice this).
pub const MAX_VOCAB: usize = 1 << 22;
/// d_state (Mamba-2 uses up to 256).
pub const MAX_STATE: usize = 1 << 12;
/// d_conv.
pub const MAX_CONV: usize = 1 << 8;
/// Positions of a learned table.
pub const MAX_POSITIONS: usize = 1 << 24;
/// MLP hidden widths.
pub const MAX_HIDDEN: usize = 4 * MAX_WIDTH;
/// Trainable values: 2^36 is 275 GB in f32 before gradients and optimizer state.
pub const MAX_PARAMS: usize = 1 << 36;

/// `value` lies in 1..=max.
pub(crate) fn size(field: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::config(field, "must be at least 1"));
    }
    if value > max {
        return Err(Error::config(
            field,
            format!("{value} is beyond reason (at most {max})"),
        ));
    }
    Ok(())
}

/// `value` is finite and lies in (low, high].
pub(crate) fn float_in(field: &str, value: f64, low: f64, high: f64) -> Result<()> {
    if value.is_finite() && value > low && value <= high {
        return Ok(());
    }
    Err(Error::config(
        field,
        format!("must be a finite number in ({low}, {high}], got {value}"),
    ))
}

/// `vocab` rounded up to a multiple of `multiple`: the rows of an embedding.
pub(crate) fn padded(vocab: usize, multiple: usize) -> usize {
    vocab.div_ceil(multiple.max(1)) * multiple.max(1)
}

/// The sizes every language model has: the width of its residual stream, its vocabulary and
/// that vocabulary's padding, and the epsilon of its norms.
pub(crate) fn trunk(
    d_model: usize,
    vocab: usize,
    pad_multiple: usize,
    norm_eps: f64,
) -> Result<()> {
    size("d_model", d_model, MAX_WIDTH)?;
    size("vocab_size", vocab, MAX_VOCAB)?;
    size("pad_vocab_size_multiple", pad_multiple, MAX_VOCAB)?;
    float_in("norm_eps", norm_eps, 0.0, 1.0)
}

/// The range and floor of the initial Δ of a Mamba mixer: 0 < dt_min <= dt_max <= 1000 and a
/// finite floor >= 0.
pub(crate) fn dt_init(dt_min: f64, dt_max: f64, floor: f64) -> Result<()> {
    float_in("dt_max", dt_max, 0.0, 1e3)?;
    float_in("dt_min", dt_min, 0.0, dt_max)?;
    if !(floor.is_finite() && floor >= 0.0) {
        return Err(Error::config(
            "dt_init_floor",
            format!("must be a finite number >= 0, got {floor}"),
        ));
    }
    Ok(())
}
