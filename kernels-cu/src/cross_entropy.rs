//! Launches of cu/cross_entropy.cu: softmax cross-entropy over the last dimension of logits
//! (m, v) with i64 targets, -100 meaning ignored, as `ssm::ops::loss`.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, to_i32};

const THREADS: u32 = 256;

fn config(m: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (m.clamp(1, 132 * 8) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// lse (m,) and per-row losses (m,), 0 on ignored rows; the mean is the caller's sum over loss
/// divided by the number of scored rows.
pub fn cross_entropy_fwd(
    logits: DevicePtr,
    targets: DevicePtr,
    lse: DevicePtr,
    loss: DevicePtr,
    m: usize,
    v: usize,
) -> Result<Launch> {
    const K: &str = "cross_entropy_fwd_f32";
    to_i32(K, "m * v", m * v)?;
    let args = KernelArgs::new()
        .ptr(logits)
        .ptr(targets)
        .ptr(lse)
        .ptr(loss)
        .i32(m as i32)
        .i32(v as i32);
    Ok(Launch {
        kernel: K,
        config: config(m),
        args,
    })
}

/// dlogits (m, v) += dloss / scored · (softmax − onehot) on scored rows.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_bwd(
    logits: DevicePtr,
    targets: DevicePtr,
    lse: DevicePtr,
    dlogits: DevicePtr,
    m: usize,
    v: usize,
    dloss: f64,
    scored: usize,
) -> Result<Launch> {
    const K: &str = "cross_entropy_bwd_f32";
    to_i32(K, "m * v", m * v)?;
    let scale = if scored == 0 {
        0.0
    } else {
        (dloss / scored as f64) as f32
    };
    let args = KernelArgs::new()
        .ptr(logits)
        .ptr(targets)
        .ptr(lse)
        .ptr(dlogits)
        .i32(m as i32)
        .i32(v as i32)
        .f32(scale);
    Ok(Launch {
        kernel: K,
        config: config(m),
        args,
    })
}
