//! Token embedding lookup.

use rayon::prelude::*;

use crate::float::Float;

/// out (m, d) = table[ids] with table (v, d); ids were checked to be below v.
pub fn embedding_fwd<T: Float>(ids: &[u32], table: &[T], out: &mut [T], d: usize) {
    out.par_chunks_exact_mut(d)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            let id = id as usize;
            row.copy_from_slice(&table[id * d..(id + 1) * d]);
        });
}

/// dtable[ids[i]] += dout[i]. Sequential: repeated ids must add in a fixed order.
pub fn embedding_bwd<T: Float>(ids: &[u32], dout: &[T], dtable: &mut [T], d: usize) {
    for (&id, g) in ids.iter().zip(dout.chunks_exact(d)) {
        let id = id as usize;
        for (t, &gv) in dtable[id * d..(id + 1) * d].iter_mut().zip(g) {
            *t += gv;
        }
    }
}
