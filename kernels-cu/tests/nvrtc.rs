//! Level 2 of docs/ARCHITECTURE.md §4: every kernel source compiles with the real NVRTC (13.0.88 from
//! PyPI) for sm_90, and ptxas reports registers, shared memory and spills per kernel. A compile
//! error or warning fails, and so does any spill in the scan kernels (Mamba-1's and Mamba-2's). No
//! GPU or CUDA toolkit is needed, but the NVRTC library is: this test fails (it never skips) when
//! it cannot be loaded.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::ptr;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW, Symbol};
use ssm_kernels::{HEADERS, KernelSource, NVRTC_OPTIONS, SOURCES, TEST_SOURCES};

const ARCH: &str = "--gpu-architecture=sm_90";
/// Sources whose kernels must not spill registers: the hot loops of the engine.
const NO_SPILL: &[&str] = &["scan", "ssd"];

type Program = *mut std::ffi::c_void;

/// The NVRTC entry points used here, resolved from the loaded library.
struct Nvrtc {
    _builtins: Option<Library>,
    lib: Library,
}

impl Nvrtc {
    /// `libnvrtc.so.13` from the dynamic loader's path (LD_LIBRARY_PATH), else from the
    /// workspace's venv, where `scripts/setup-venv --nvrtc` installs it. In the venv case the
    /// builtins library that NVRTC opens by name is loaded first by path, so that the loader
    /// finds it already resident.
    fn load() -> Result<Nvrtc, String> {
        let flags = RTLD_NOW | RTLD_GLOBAL;
        // SAFETY: loading NVRTC runs only its initializers, which have no preconditions.
        if let Ok(lib) = unsafe { Library::open(Some("libnvrtc.so.13"), flags) } {
            return Ok(Nvrtc {
                _builtins: None,
                lib,
            });
        }
        let dir = venv_lib_dir()
            .ok_or("libnvrtc.so.13 is neither on the loader path nor in the workspace's .venv")?;
        // SAFETY: as above.
        let builtins = unsafe { Library::open(Some(dir.join("libnvrtc-builtins.so.13.0")), flags) }
            .map_err(|e| e.to_string())?;
        // SAFETY: as above.
        let lib = unsafe { Library::open(Some(dir.join("libnvrtc.so.13")), flags) }
            .map_err(|e| e.to_string())?;
        Ok(Nvrtc {
            _builtins: Some(builtins),
            lib,
        })
    }

    fn sym<T>(&self, name: &[u8]) -> Symbol<T> {
        // SAFETY: every symbol is used with the signature of nvrtc.h (CUDA 13.0).
        unsafe { self.lib.get(name) }
            .unwrap_or_else(|e| panic!("NVRTC lacks {}: {e}", String::from_utf8_lossy(name)))
    }

    fn check(&self, what: &str, rc: c_int) -> Result<(), String> {
        if rc == 0 {
            return Ok(());
        }
        let err: Symbol<unsafe extern "C" fn(c_int) -> *const c_char> =
            self.sym(b"nvrtcGetErrorString\0");
        // SAFETY: NVRTC returns a static string for every result code.
        Err(format!(
            "{what}: {}",
            unsafe { CStr::from_ptr(err(rc)) }.to_string_lossy()
        ))
    }

    fn version(&self) -> (i32, i32) {
        let f: Symbol<unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int> =
            self.sym(b"nvrtcVersion\0");
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both out-pointers are valid.
        self.check("nvrtcVersion", unsafe { f(&mut major, &mut minor) })
            .unwrap();
        (major, minor)
    }

    /// Compiles one source to a cubin; returns (success, program log, cubin size).
    fn compile(
        &self,
        src: &KernelSource,
        options: &[String],
    ) -> Result<(bool, String, usize), String> {
        let create: Symbol<
            unsafe extern "C" fn(
                *mut Program,
                *const c_char,
                *const c_char,
                c_int,
                *const *const c_char,
                *const *const c_char,
            ) -> c_int,
        > = self.sym(b"nvrtcCreateProgram\0");
        let compile: Symbol<unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int> =
            self.sym(b"nvrtcCompileProgram\0");
        let log_size: Symbol<unsafe extern "C" fn(Program, *mut usize) -> c_int> =
            self.sym(b"nvrtcGetProgramLogSize\0");
        let get_log: Symbol<unsafe extern "C" fn(Program, *mut c_char) -> c_int> =
            self.sym(b"nvrtcGetProgramLog\0");
        let cubin_size: Symbol<unsafe extern "C" fn(Program, *mut usize) -> c_int> =
            self.sym(b"nvrtcGetCUBINSize\0");
        let destroy: Symbol<unsafe extern "C" fn(*mut Program) -> c_int> =
            self.sym(b"nvrtcDestroyProgram\0");

        let cstr = |s: &str| CString::new(s).expect("no NUL in sources");
        let source = cstr(src.source);
        let name = cstr(&format!("{}.cu", src.name));
        let header_texts: Vec<CString> = HEADERS.iter().map(|(_, text)| cstr(text)).collect();
        let header_names: Vec<CString> = HEADERS.iter().map(|(n, _)| cstr(n)).collect();
        let texts: Vec<*const c_char> = header_texts.iter().map(|s| s.as_ptr()).collect();
        let names: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
        let opts: Vec<CString> = options.iter().map(|o| cstr(o)).collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();

        let mut prog: Program = ptr::null_mut();
        // SAFETY: every string is NUL-terminated and outlives the program; counts match arrays.
        self.check("nvrtcCreateProgram", unsafe {
            create(
                &mut prog,
                source.as_ptr(),
                name.as_ptr(),
                texts.len() as c_int,
                texts.as_ptr(),
                names.as_ptr(),
            )
        })?;
        // SAFETY: `prog` was created above; options as above.
        let ok = unsafe { compile(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) } == 0;
        let mut n = 0usize;
        // SAFETY: `prog` is valid; the log buffer has the size NVRTC reported.
        self.check("nvrtcGetProgramLogSize", unsafe { log_size(prog, &mut n) })?;
        let mut log = vec![0u8; n.max(1)];
        self.check("nvrtcGetProgramLog", unsafe {
            get_log(prog, log.as_mut_ptr().cast())
        })?;
        let mut bytes = 0usize;
        if ok {
            // SAFETY: `prog` compiled successfully.
            self.check("nvrtcGetCUBINSize", unsafe { cubin_size(prog, &mut bytes) })?;
        }
        // SAFETY: `prog` is destroyed once.
        self.check("nvrtcDestroyProgram", unsafe { destroy(&mut prog) })?;
        let log = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .to_string();
        Ok((ok, log, bytes))
    }
}

/// `<workspace>/.venv/lib/python3.*/site-packages/nvidia/cu13/lib`, if it holds libnvrtc.so.13.
fn venv_lib_dir() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/nvidia/cu13/lib"))
        .find(|d| d.join("libnvrtc.so.13").is_file())
}

/// What ptxas reported for one kernel.
#[derive(Debug, Default, Clone, PartialEq)]
struct KernelStats {
    name: String,
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// Parses ptxas `-v` output: "Function properties for K" is followed by the stack/spill line, and
/// "Compiling entry function 'K'" by "Used N registers, ... B bytes smem".
fn parse_ptxas(log: &str) -> Vec<KernelStats> {
    let number_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(unit)
                    .and_then(|s| s.trim().rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut out: Vec<KernelStats> = Vec::new();
    let mut current: Option<usize> = None;
    let mut props_for: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            current = Some(out.iter().position(|k| k.name == name).unwrap_or_else(|| {
                out.push(KernelStats {
                    name,
                    ..Default::default()
                });
                out.len() - 1
            }));
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if line.contains("bytes stack frame") {
            if let Some(name) = props_for.take() {
                let i = out.iter().position(|k| k.name == name).unwrap_or_else(|| {
                    out.push(KernelStats {
                        name,
                        ..Default::default()
                    });
                    out.len() - 1
                });
                out[i].stack = number_before(line, "bytes stack frame");
                out[i].spill_stores = number_before(line, "bytes spill stores");
                out[i].spill_loads = number_before(line, "bytes spill loads");
            }
        } else if let (Some(i), true) = (
            current,
            line.contains("Used ") && line.contains("registers"),
        ) {
            out[i].registers = line
                .split("Used ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            out[i].smem = number_before(line, "bytes smem");
        }
    }
    out
}

#[test]
fn every_source_compiles_for_sm90_without_spills_in_the_scan() {
    let nvrtc = Nvrtc::load().unwrap_or_else(|e| {
        panic!(
            "cannot load NVRTC ({e}). Install it with `scripts/setup-venv --nvrtc`, then export \
             LD_LIBRARY_PATH=<repo>/.venv/lib/python3.11/site-packages/nvidia/cu13/lib (or keep the venv in the \
             workspace, where this test finds it)"
        )
    });
    assert_eq!(
        nvrtc.version(),
        (13, 0),
        "NVRTC 13.0 is what the GPU machine's CUDA 13.0 driver accepts"
    );
    let options: Vec<String> = NVRTC_OPTIONS
        .iter()
        .map(|s| s.to_string())
        .chain([ARCH.into(), "--ptxas-options=-v".into()])
        .collect();
    let mut failures = Vec::new();
    println!(
        "{:<22} {:<36} {:>5} {:>7} {:>6} {:>7}",
        "source", "kernel", "regs", "smem", "stack", "spills"
    );
    for src in SOURCES.iter().chain(TEST_SOURCES) {
        let (ok, log, cubin) = nvrtc
            .compile(src, &options)
            .unwrap_or_else(|e| panic!("{}: {e}", src.name));
        if !ok {
            failures.push(format!("{}.cu does not compile:\n{log}", src.name));
            continue;
        }
        assert!(cubin > 0, "{}: empty cubin", src.name);
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning")).collect();
        if !warnings.is_empty() {
            failures.push(format!(
                "{}.cu compiles with warnings:\n{}",
                src.name,
                warnings.join("\n")
            ));
        }
        let stats = parse_ptxas(&log);
        for entry in src.entry_points {
            let Some(k) = stats.iter().find(|k| k.name == *entry) else {
                failures.push(format!(
                    "{}.cu: ptxas reported nothing for entry point {entry}:\n{log}",
                    src.name
                ));
                continue;
            };
            let spills = k.spill_stores + k.spill_loads;
            println!(
                "{:<22} {:<36} {:>5} {:>7} {:>6} {:>7}",
                src.name, k.name, k.registers, k.smem, k.stack, spills
            );
            if spills > 0 && NO_SPILL.contains(&src.name) {
                failures.push(format!(
                    "{}: {} bytes of spill stores and {} of spill loads",
                    k.name, k.spill_stores, k.spill_loads
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ptxas_statistics_are_parsed() {
    let log = "ptxas info    : 0 bytes gmem\n\
               ptxas info    : Compiling entry function 'scan_fwd' for 'sm_90'\n\
               ptxas info    : Function properties for scan_fwd\n    \
               16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
               ptxas info    : Used 72 registers, used 1 barriers, 30720 bytes smem, 400 bytes cmem[0]\n";
    let k = &parse_ptxas(log)[0];
    assert_eq!(
        (
            k.name.as_str(),
            k.registers,
            k.smem,
            k.stack,
            k.spill_stores,
            k.spill_loads
        ),
        ("scan_fwd", 72, 30720, 16, 8, 4)
    );
}
