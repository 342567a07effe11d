//! Helpers shared by the kernel tests: seeded random data, schedules, comparisons that print the
//! largest difference, and bank-conflict counting of whatever a test launches.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ssm_kernels::Launch;
use ssm_kernels::emu::{self, BankConflicts, Schedule};

/// The random schedules every kernel test runs under.
pub const SEEDS: [u64; 3] = [1, 0x5eed, 0xdeadbeef];

/// The schedules of the kernel tests: the three seeds, or only OS threads when
/// `SSM_EMU_SCHEDULE=threads` (the ThreadSanitizer run; see emu/cuda_emu.h).
/// Inside [`counting_banks`], one seed: the counts do not depend on it.
pub fn schedules() -> Vec<Schedule> {
    if COUNTS.with_borrow(Option::is_some) {
        return vec![Schedule::Random(SEEDS[0])];
    }
    match std::env::var("SSM_EMU_SCHEDULE").as_deref() {
        Ok("threads") => vec![Schedule::Threads],
        _ => SEEDS.into_iter().map(Schedule::Random).collect(),
    }
}

/// Runs launches in order on the CPU, panicking with the emulation's message on failure.
///
/// # Safety
/// As [`emu::launch`]: every pointer argument is a live host buffer large enough for the kernel.
pub unsafe fn run(launches: &[Launch], schedule: Schedule) {
    for l in launches {
        if COUNTS.with_borrow(Option::is_none) {
            // SAFETY: forwarded from the caller.
            unsafe { emu::launch(l, schedule) }.unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        // SAFETY: forwarded from the caller.
        let c =
            unsafe { emu::launch_counting_banks(l, schedule) }.unwrap_or_else(|e| panic!("{e}"));
        COUNTS.with_borrow_mut(|m| {
            let m = m.as_mut().expect("counting");
            m.entry(l.kernel).or_default().merge(&c);
        });
    }
}

thread_local! {
    /// The bank conflicts of this thread's launches, per kernel, while [`counting_banks`] runs.
    static COUNTS: RefCell<Option<BTreeMap<&'static str, BankConflicts>>> = const { RefCell::new(None) };
}

/// Runs `body` (typically a whole kernel test) with the bank conflicts of every launch it makes
/// through [`run`] counted, and returns them per kernel.
pub fn counting_banks(body: impl FnOnce()) -> BTreeMap<&'static str, BankConflicts> {
    COUNTS.with_borrow_mut(|m| *m = Some(BTreeMap::new()));
    body();
    COUNTS.with_borrow_mut(Option::take).expect("counting")
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [lo, hi).
pub fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Asserts |a - b| <= atol + rtol |b| elementwise (a NaN anywhere fails); prints the worst
/// element and the largest difference when it does not hold.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let excess = |(i, (g, w)): (usize, (&f32, &f32))| {
        let e = (g - w).abs() - (atol + rtol * w.abs());
        (i, if e.is_nan() { f32::INFINITY } else { e })
    };
    let (i, worst) = got
        .iter()
        .zip(want)
        .enumerate()
        .map(excess)
        .fold((0, f32::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    if worst > 0.0 {
        let maxdiff = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        panic!(
            "{what}: mismatch at {i}: got {} want {} (maxdiff {maxdiff:e}, atol {atol:e}, rtol {rtol:e})",
            got[i], want[i]
        );
    }
}

/// Asserts |a - b| <= rel · max|b| elementwise: the tolerance scales with the tensor, as suits
/// gradients whose entries range over orders of magnitude.
#[track_caller]
pub fn assert_close_rel(what: &str, got: &[f32], want: &[f32], rel: f32) {
    let scale = want.iter().fold(0.0f32, |a, w| a.max(w.abs())).max(1e-6);
    assert_close(what, got, want, rel * scale, 0.0);
}
