//! Launches kernels on the CPU through the emulation that build.rs compiles from cu/ (see
//! emu/cuda_emu.h): blocks one at a time, the threads of a block as fibers under a seeded random
//! schedule, or as OS threads for ThreadSanitizer. [`launch_counting_banks`] also counts the
//! shared-memory bank conflicts that a GPU would see (emu/banks.cpp).

use std::ffi::{c_char, c_int, c_void};

use crate::launch::Launch;
use crate::{Error, Result};

/// How the threads of a block interleave between synchronization points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Random order, drawn from this seed (and the block index).
    Random(u64),
    /// Always the lowest runnable thread index first.
    InOrder,
    /// One OS thread per CUDA thread, for ThreadSanitizer (build with `SSM_EMU_TSAN=1`): real
    /// concurrency, so that TSan sees every unsynchronized pair of accesses.
    Threads,
}

/// The emulation's launch configuration (`emu::LaunchConfig` in emu/cuda_emu.h).
#[repr(C)]
struct RawConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    schedule: i32,
    seed: u64,
    banks: *mut RawBankStats,
}

/// `emu::BankSite` in emu/cuda_emu.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawBankSite {
    pc: u64,
    requests: u64,
    degree_sum: u64,
    worst: u32,
}

/// `emu::BankStats` in emu/cuda_emu.h.
#[repr(C)]
struct RawBankStats {
    sites: *mut RawBankSite,
    cap: u32,
    count: u32,
    requests: u64,
    degree_sum: u64,
    worst: u32,
}

/// The most instructions with shared-memory accesses that one launch reports.
const MAX_BANK_SITES: usize = 1 << 16;

/// The shared-memory requests of one launch, as a GPU with 32 banks of 4-byte words serves them.
/// A request is one instruction's accesses by the lanes of a warp between two synchronizations of
/// the warp; its degree is the number of wavefronts it takes: the largest number of distinct words
/// in one bank (lanes reading one word share a broadcast). 1 is conflict-free.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BankConflicts {
    pub requests: u64,
    pub degree_sum: u64,
    pub worst: u32,
    /// Per instruction, by its address in the executable (see [`source_lines`]).
    pub sites: Vec<BankSite>,
}

/// The requests of one instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BankSite {
    /// Offset of the access in the executable file that holds the emulated kernels.
    pub pc: u64,
    pub requests: u64,
    pub degree_sum: u64,
    pub worst: u32,
}

impl BankSite {
    /// Mean degree.
    pub fn mean(&self) -> f64 {
        self.degree_sum as f64 / self.requests.max(1) as f64
    }
}

impl BankConflicts {
    /// Mean degree over every request (1 when there were none).
    pub fn mean(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.degree_sum as f64 / self.requests as f64
        }
    }

    /// Adds the requests of `other` (another launch of the same kernel).
    pub fn merge(&mut self, other: &BankConflicts) {
        self.requests += other.requests;
        self.degree_sum += other.degree_sum;
        self.worst = self.worst.max(other.worst);
        for s in &other.sites {
            match self.sites.binary_search_by_key(&s.pc, |m| m.pc) {
                Ok(i) => {
                    let m = &mut self.sites[i];
                    m.requests += s.requests;
                    m.degree_sum += s.degree_sum;
                    m.worst = m.worst.max(s.worst);
                }
                Err(i) => self.sites.insert(i, *s),
            }
        }
    }
}

/// `file:line` of each site's pc, from the line tables of the running executable through binutils'
/// `addr2line`; `None` when that cannot run.
pub fn source_lines(pcs: &[u64]) -> Option<Vec<String>> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new("addr2line")
        .arg("-e")
        .arg(exe)
        .args(pcs.iter().map(|pc| format!("{pc:#x}")))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let l = l.split(" (discriminator").next().unwrap_or(l);
            l.rsplit('/').next().unwrap_or(l).to_string()
        })
        .collect();
    (out.status.success() && lines.len() == pcs.len()).then_some(lines)
}

type LaunchFn =
    unsafe extern "C" fn(*const RawConfig, *const *mut c_void, *mut c_char, usize) -> c_int;
type SignatureFn = unsafe extern "C" fn(*mut usize, c_int) -> c_int;

struct EmulatedKernel {
    name: &'static str,
    launch: LaunchFn,
    signature: SignatureFn,
}

include!(concat!(env!("OUT_DIR"), "/emulated.rs"));

/// Names of every kernel the emulation can run.
pub fn kernels() -> impl Iterator<Item = &'static str> {
    EMULATED.iter().map(|k| k.name)
}

/// The byte sizes of a kernel's parameters, in order.
pub fn signature(kernel: &str) -> Result<Vec<usize>> {
    let k = find(kernel)?;
    let mut sizes = [0usize; 64];
    // SAFETY: the callee writes at most `cap` sizes into the buffer.
    let n = unsafe { (k.signature)(sizes.as_mut_ptr(), sizes.len() as c_int) } as usize;
    Ok(sizes[..n.min(sizes.len())].to_vec())
}

fn find(kernel: &str) -> Result<&'static EmulatedKernel> {
    EMULATED
        .iter()
        .find(|k| k.name == kernel)
        .ok_or_else(|| Error::Launch {
            kernel: kernel.to_string(),
            message: "no such kernel in the emulation".into(),
        })
}

/// Runs `launch` on the CPU. Launches are serialized (shared memory is a global of the
/// emulation), so tests may call this from several threads.
///
/// # Safety
/// Every pointer argument must be a host address valid for everything the kernel reads and
/// writes through it, as a device pointer would have to be for a real launch.
pub unsafe fn launch(launch: &Launch, schedule: Schedule) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { run(launch, schedule, std::ptr::null_mut()) }
}

/// Runs `launch` as [`launch`] does and counts its shared-memory bank conflicts. Needs a fiber
/// schedule, and a build without ThreadSanitizer.
///
/// # Safety
/// As for [`launch`].
pub unsafe fn launch_counting_banks(launch: &Launch, schedule: Schedule) -> Result<BankConflicts> {
    let mut sites = vec![RawBankSite::default(); MAX_BANK_SITES];
    let mut raw = RawBankStats {
        sites: sites.as_mut_ptr(),
        cap: MAX_BANK_SITES as u32,
        count: 0,
        requests: 0,
        degree_sum: 0,
        worst: 0,
    };
    // SAFETY: forwarded from the caller; `raw` points at `sites`, which holds `cap` entries, and
    // both outlive the call.
    unsafe { run(launch, schedule, &mut raw) }?;
    if raw.count as usize > MAX_BANK_SITES {
        return Err(Error::Launch {
            kernel: launch.kernel.to_string(),
            message: format!(
                "{} instructions access shared memory, more than the {MAX_BANK_SITES} counted",
                raw.count
            ),
        });
    }
    sites.truncate(raw.count as usize);
    Ok(BankConflicts {
        requests: raw.requests,
        degree_sum: raw.degree_sum,
        worst: raw.worst,
        sites: sites
            .iter()
            .map(|s| BankSite {
                pc: s.pc,
                requests: s.requests,
                degree_sum: s.degree_sum,
                worst: s.worst,
            })
            .collect(),
    })
}

/// # Safety
/// As for [`launch`]; `banks` is null or valid for the call.
unsafe fn run(launch: &Launch, schedule: Schedule, banks: *mut RawBankStats) -> Result<()> {
    let k = find(launch.kernel)?;
    let expected = signature(launch.kernel)?;
    if expected != launch.args.sizes() {
        return Err(Error::Launch {
            kernel: launch.kernel.to_string(),
            message: format!(
                "argument sizes {:?} do not match the kernel's parameters {expected:?}",
                launch.args.sizes()
            ),
        });
    }
    let (mode, seed) = match schedule {
        Schedule::Random(seed) => (0, seed),
        Schedule::InOrder => (1, 0),
        Schedule::Threads => (2, 0),
    };
    let c = launch.config;
    let raw = RawConfig {
        grid: [c.grid_dim.0, c.grid_dim.1, c.grid_dim.2],
        block: [c.block_dim.0, c.block_dim.1, c.block_dim.2],
        shared_bytes: c.shared_mem_bytes,
        schedule: mode,
        seed,
        banks,
    };
    let mut args = launch.args.clone();
    let params = args.params();
    let mut err = [0u8; 1024];
    // SAFETY: `raw` and `params` outlive the call; the argument count and sizes match the
    // kernel's parameters (checked above); the caller vouches for the pointers inside them.
    let rc = unsafe { (k.launch)(&raw, params.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
    if rc == 0 {
        return Ok(());
    }
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Err(Error::Launch {
        kernel: launch.kernel.to_string(),
        message: String::from_utf8_lossy(&err[..end]).into_owned(),
    })
}
