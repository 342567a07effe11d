//! cu/embedding.cu against ssm::ops::embedding, with repeated ids (which the backward must sum).

use ssm::Tensor;
use ssm::ops::embedding as cpu;
use ssm_kernels::embedding as k;
use ssm_kernels::{host_ptr as p, host_ptr_mut as pm};

use crate::common::{rng, run, schedules, uniform};
use rand::RngExt;

#[test]
pub(crate) fn forward_and_backward_match_the_cpu_op() {
    for (i, &(m, v, d)) in [(1usize, 3usize, 5usize), (77, 10, 130), (300, 200, 64)]
        .iter()
        .enumerate()
    {
        let mut r = rng(i as u64);
        let ids: Vec<u32> = (0..m).map(|_| r.random_range(0..v as u32)).collect();
        let (table, dout, dtable0) = (
            uniform(&mut r, v * d, -1.0, 1.0),
            uniform(&mut r, m * d, -1.0, 1.0),
            uniform(&mut r, v * d, -1.0, 1.0),
        );
        let mut want_out = Tensor::default();
        cpu::embedding_fwd(
            &ids,
            &[m],
            &Tensor::from_vec([v, d], table.clone()).unwrap(),
            &mut want_out,
        )
        .unwrap();
        let mut want_dt = Tensor::from_vec([v, d], dtable0.clone()).unwrap();
        cpu::embedding_bwd(
            &ids,
            &Tensor::from_vec([m, d], dout.clone()).unwrap(),
            &mut want_dt,
        )
        .unwrap();
        for schedule in schedules() {
            let (mut out, mut dtable) = (vec![0.0f32; m * d], dtable0.clone());
            let launches = [
                k::embedding_fwd(p(&ids), p(&table), pm(&mut out), m, d).unwrap(),
                k::embedding_bwd(p(&ids), p(&dout), pm(&mut dtable), m, d).unwrap(),
            ];
            // SAFETY: ids (m), table and dtable (v, d), out and dout (m, d); every id is below v.
            unsafe { run(&launches, schedule) };
            assert_eq!(out, want_out.to_vec(), "out, m {m} v {v} d {d}");
            // Both add the rows of each id in token order: bit-identical.
            assert_eq!(dtable, want_dt.to_vec(), "dtable, m {m} v {v} d {d}");
        }
    }
}
