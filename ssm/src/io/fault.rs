//! Kill points for crash-recovery tests. Every step that changes a file (create, write, fsync,
//! rename, remove) first calls [`point`]. With the environment variable `SSM_FAULT_KILL_AT=N` the
//! process kills itself with SIGKILL at the N-th point, exactly as an external `kill -9` landing
//! between two system calls would; with `SSM_FAULT_LOG=FILE` every point appends a line
//! `N<TAB>label` to FILE, so that a test knows how many points a run passes. Without either
//! variable a point costs one relaxed atomic increment.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the point to die at (1-based).
pub const KILL_AT_VAR: &str = "SSM_FAULT_KILL_AT";
/// The variable naming the file that lists the points passed.
pub const LOG_VAR: &str = "SSM_FAULT_LOG";

struct Plan {
    kill_at: Option<u64>,
    log: Option<std::path::PathBuf>,
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| Plan {
        kill_at: std::env::var(KILL_AT_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok()),
        log: std::env::var_os(LOG_VAR).map(Into::into),
    })
}

static PASSED: AtomicU64 = AtomicU64::new(0);

/// Marks the moment before a file-changing step `what` on `path`.
pub fn point(what: &str, path: &Path) {
    let n = PASSED.fetch_add(1, Ordering::Relaxed) + 1;
    let plan = plan();
    if let Some(log) = &plan.log
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{n}\t{what} {}", path.display());
    }
    if plan.kill_at == Some(n) {
        kill_self();
    }
}

fn kill_self() -> ! {
    // SIGKILL cannot be caught: no destructor, flush or atexit handler runs, as with `kill -9`.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::process::abort()
}
