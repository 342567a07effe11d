//! Token embedding: rows of a (vocab, d) table picked by token ids.

mod cpu;
mod cuda;

use super::gpu_of;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

fn check<T: Float>(op: &'static str, ids: &[u32], table: &Tensor<T>) -> Result<(usize, usize)> {
    let [v, d] = *table.dims() else {
        return Err(Error::shape(op, "table", "[vocab, d]", table.dims()));
    };
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(Error::shape(
            op,
            format!("token id {bad}"),
            format!("ids below vocab size {v}"),
            &[bad as usize],
        ));
    }
    Ok((v, d))
}

/// out (ids.len(), d) = table[ids]; `out` is resized to `[lead.., d]` where `lead` multiplies to
/// `ids.len()`.
pub fn embedding_fwd<T: Float>(
    ids: &[u32],
    lead: &[usize],
    table: &Tensor<T>,
    out: &mut Tensor<T>,
) -> Result<()> {
    let (_, d) = check("embedding_fwd", ids, table)?;
    if lead.iter().product::<usize>() != ids.len() {
        return Err(Error::shape(
            "embedding_fwd",
            "ids",
            format!("{} ids", lead.iter().product::<usize>()),
            &[ids.len()],
        ));
    }
    let mut dims = lead.to_vec();
    dims.push(d);
    out.reset_output(dims, table.device())?;
    if let Some(g) = gpu_of("embedding_fwd", table, &[])? {
        return cuda::fwd(&g, ids, table, out, d);
    }
    cpu::embedding_fwd(ids, table.host()?, out.host_mut()?, d);
    Ok(())
}

/// Accumulates dtable (vocab, d) from dout (..., d).
pub fn embedding_bwd<T: Float>(
    ids: &[u32],
    dout: &Tensor<T>,
    dtable: &mut Tensor<T>,
) -> Result<()> {
    let (_, d) = check("embedding_bwd", ids, dtable)?;
    if dout.numel() != ids.len() * d {
        return Err(Error::shape(
            "embedding_bwd",
            "dout",
            format!("[{}, {d}]", ids.len()),
            dout.dims(),
        ));
    }
    if let Some(g) = gpu_of("embedding_bwd", dout, &[dtable])? {
        return cuda::bwd(&g, ids, dout, dtable, d);
    }
    cpu::embedding_bwd(ids, dout.host()?, dtable.host_mut()?, d);
    Ok(())
}
