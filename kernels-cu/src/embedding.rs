//! Launches of cu/embedding.cu: rows of a (v, d) table picked by u32 token ids, as
//! `ssm::ops::embedding`.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, grid_1d, to_i32};

const BWD_THREADS: usize = 128;
/// Vocabulary buckets of the backward: blocks per column tile, each adding only the ids of its
/// bucket, so that no two threads write the same element.
const BWD_BUCKETS: u32 = 64;

/// out (m, d) = table[ids (m,)].
pub fn embedding_fwd(
    ids: DevicePtr,
    table: DevicePtr,
    out: DevicePtr,
    m: usize,
    d: usize,
) -> Result<Launch> {
    const K: &str = "embedding_fwd_f32";
    to_i32(K, "m", m)?;
    let args = KernelArgs::new()
        .ptr(ids)
        .ptr(table)
        .ptr(out)
        .i32(m as i32)
        .i32(to_i32(K, "d", d)?);
    Ok(Launch {
        kernel: K,
        config: grid_1d(m * d, 256, 132 * 16),
        args,
    })
}

/// dtable (v, d) += dout (m, d) scattered by ids, deterministically.
pub fn embedding_bwd(
    ids: DevicePtr,
    dout: DevicePtr,
    dtable: DevicePtr,
    m: usize,
    d: usize,
) -> Result<Launch> {
    const K: &str = "embedding_bwd_f32";
    to_i32(K, "m * d", m * d)?;
    let config = LaunchConfig {
        grid_dim: (d.div_ceil(BWD_THREADS).max(1) as u32, BWD_BUCKETS, 1),
        block_dim: (BWD_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = KernelArgs::new()
        .ptr(ids)
        .ptr(dout)
        .ptr(dtable)
        .i32(m as i32)
        .i32(d as i32);
    Ok(Launch {
        kernel: K,
        config,
        args,
    })
}
