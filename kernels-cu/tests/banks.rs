//! Shared-memory bank conflicts of every kernel, counted by the emulation over the launches of the
//! kernel's own parity test (one schedule): one line per kernel with the worst and mean degree
//! (1 = conflict-free, k = k wavefronts per warp request), then the source lines that conflict.
//! Every kernel that uses shared memory must stay at or under 2-way: everywhere, or in the hot
//! loops of the scan.

use std::collections::BTreeMap;

use ssm_kernels::emu::{self, BankConflicts, BankSite};

use crate::common::counting_banks;

/// The most wavefronts a warp request may take.
const MAX_DEGREE: u32 = 2;

/// Prints one line per kernel and one per conflicting source line, worst first.
fn report(counts: &BTreeMap<&'static str, BankConflicts>) {
    for (kernel, c) in counts {
        if c.requests == 0 {
            println!("banks {kernel:<34} no shared memory");
            continue;
        }
        println!(
            "banks {kernel:<34} {:>10} requests  worst {:>2}-way  mean {:.3}",
            c.requests,
            c.worst,
            c.mean()
        );
        let bad: Vec<_> = c.sites.iter().filter(|s| s.worst > 1).collect();
        let pcs: Vec<u64> = bad.iter().map(|s| s.pc).collect();
        let lines = emu::source_lines(&pcs)
            .unwrap_or_else(|| pcs.iter().map(|pc| format!("{pc:#x}")).collect());
        // Unrolled loops and inlined helpers put several instructions on one line.
        let mut by_line: BTreeMap<String, BankSite> = BTreeMap::new();
        for (s, line) in bad.into_iter().zip(lines) {
            let m = by_line.entry(line).or_default();
            m.requests += s.requests;
            m.degree_sum += s.degree_sum;
            m.worst = m.worst.max(s.worst);
        }
        let mut by_line: Vec<_> = by_line.into_iter().collect();
        by_line.sort_by_key(|(_, s)| std::cmp::Reverse((s.worst, s.requests)));
        for (line, s) in by_line {
            println!(
                "      {line:<28} {:>10} requests  worst {:>2}-way  mean {:.3}",
                s.requests,
                s.worst,
                s.mean()
            );
        }
    }
}

/// Asserts that no instruction of `kernels` that issues at least `min_share` of its kernel's
/// requests takes more than `max` wavefronts per request.
#[track_caller]
fn assert_at_most(
    counts: &BTreeMap<&'static str, BankConflicts>,
    kernels: &[&str],
    max: u32,
    min_share: f64,
) {
    for k in kernels {
        let c = counts
            .get(k)
            .unwrap_or_else(|| panic!("{k} was not launched"));
        assert!(c.requests > 0, "{k}: no shared-memory requests counted");
        let worst = c
            .sites
            .iter()
            .filter(|s| s.requests as f64 >= min_share * c.requests as f64)
            .max_by_key(|s| s.worst)
            .expect("a site");
        let line =
            emu::source_lines(&[worst.pc]).map_or(format!("{:#x}", worst.pc), |l| l[0].clone());
        assert!(
            worst.worst <= max,
            "{k}: a warp request at {line} takes {} wavefronts (mean {:.3} over its {} requests), more than {max}",
            worst.worst,
            worst.mean(),
            worst.requests
        );
    }
}

#[test]
fn attention_is_at_most_two_way_bank_conflicted() {
    let counts = counting_banks(crate::attention::forward_and_backward_match_the_reference);
    report(&counts);
    let kernels = [
        "attention_fwd_f32",
        "attention_bwd_dkdv_f32",
        "attention_bwd_dq_f32",
    ];
    assert_at_most(&counts, &kernels, MAX_DEGREE, 0.0);
}

/// The scan's hot loops: the instructions that issue at least 1% of a kernel's requests. That
/// leaves out the copies of the carried state in and out of shared memory, once per chunk or per
/// launch (a few hundred requests out of ~10^5), which are 4-way at n 16 (rows of kMaxState).
#[test]
fn scan_is_at_most_two_way_bank_conflicted() {
    let counts = counting_banks(crate::scan::forward_and_backward_match_the_reference);
    report(&counts);
    let kernels = ["selective_scan_fwd_f32", "selective_scan_bwd_f32"];
    assert_at_most(&counts, &kernels, MAX_DEGREE, 0.01);
}

#[test]
fn bank_conflicts_of_the_other_kernels() {
    let counts = counting_banks(|| {
        crate::adamw::updates_match_the_formula_over_several_steps();
        crate::conv1d::forward_and_backward_match_the_cpu_ops();
        crate::cross_entropy::forward_and_backward_match_the_cpu_op();
        crate::elementwise::unary_ops_and_their_backward_match_the_cpu_ops();
        crate::elementwise::gate_and_add_match_the_cpu_ops();
        crate::elementwise::gelu_and_its_backward_match_the_cpu_ops();
        crate::elementwise::neg_exp_mul_add_scale_and_broadcast_match_plain_loops();
        crate::elementwise::strided_copies_touch_only_their_columns();
        crate::embedding::forward_and_backward_match_the_cpu_op();
        crate::reduce::sum_of_squares_matches_an_f64_sum_within_its_rounding_bound();
        crate::rmsnorm::forward_and_backward_match_the_cpu_op();
        crate::rope::forward_backward_and_in_place_match_the_cpu_ops();
    });
    report(&counts);
    let kernels = [
        "causal_conv1d_bwd_f32",
        "cross_entropy_fwd_f32",
        "rmsnorm_bwd_f32",
        "rmsnorm_fwd_f32",
        "sum_squares_parts_f32",
    ];
    assert_at_most(&counts, &kernels, MAX_DEGREE, 0.0);
}
