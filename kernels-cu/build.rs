//! Compiles every CUDA source under cu/ with g++ against the CPU emulation (emu/cuda_emu.h) into one
//! static library, and writes `$OUT_DIR/sources.rs` (the embedded sources with their entry points)
//! and `$OUT_DIR/emulated.rs` (the launchers `emu_launch_<kernel>` that each file exports with
//! `EMU_EXPORT`).
//!
//! `SSM_EMU_TSAN=1` builds the emulation with ThreadSanitizer, for runs in the OS-thread schedule.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs, thread};

/// One `.cu` file: its path, its entry points (in file order) and whether it only serves tests.
struct CuFile {
    path: PathBuf,
    stem: String,
    entry_points: Vec<String>,
    test_only: bool,
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=cu");
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-env-changed=SSM_EMU_TSAN");
    let tsan = env::var("SSM_EMU_TSAN").is_ok_and(|v| v == "1");

    let mut files: Vec<CuFile> = list(&root.join("cu"), "cu")
        .into_iter()
        .map(|p| parse(p, false))
        .collect();
    files.extend(
        list(&root.join("cu/tests"), "cu")
            .into_iter()
            .map(|p| parse(p, true)),
    );
    let headers = list(&root.join("cu"), "cuh");

    let objects = compile_all(&root, &out, &files, tsan);
    let mut lib = cc::Build::new();
    lib.cpp(true).objects(&objects).compile("ssm_kernels_emu");
    if tsan {
        println!("cargo:rustc-link-lib=dylib=tsan");
    }
    fs::write(out.join("sources.rs"), sources_rs(&files, &headers)).expect("write sources.rs");
    fs::write(out.join("emulated.rs"), emulated_rs(&files)).expect("write emulated.rs");
}

/// Files with extension `ext` directly in `dir`, sorted.
fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("read cu/").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Reads the `extern "C" __global__` kernels and the `EMU_EXPORT(...)` lines of a file; they must
/// name the same kernels, so that every entry point runs in the emulation.
fn parse(path: PathBuf, test_only: bool) -> CuFile {
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut kernels = Vec::new();
    for (_, rest) in text
        .match_indices("extern \"C\" __global__ void")
        .map(|(i, m)| text.split_at(i + m.len()))
    {
        let mut rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("__launch_bounds__(") {
            rest = after.split_once(')').map_or("", |(_, r)| r).trim_start();
        }
        kernels.push(identifier(rest));
    }
    let exports: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("EMU_EXPORT("))
        .map(identifier)
        .collect();
    let (mut k, mut x) = (kernels.clone(), exports.clone());
    k.sort();
    x.sort();
    assert!(
        k == x,
        "{}: the extern \"C\" __global__ kernels {kernels:?} and the EMU_EXPORT lines {exports:?} must name the same kernels",
        path.display()
    );
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    CuFile {
        path,
        stem,
        entry_points: kernels,
        test_only,
    }
}

fn identifier(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Compiles the runtime and every `.cu` file, several at a time; returns the object files.
fn compile_all(root: &Path, out: &Path, files: &[CuFile], tsan: bool) -> Vec<PathBuf> {
    let header = root.join("emu/cuda_emu.h");
    let base = |dir: &str| {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++20")
            .opt_level(2)
            .debug(false)
            .warnings(true)
            .flag("-Wno-unknown-pragmas")
            .include(root.join("emu"))
            .include(root.join("cu"))
            .out_dir(out.join("obj").join(dir))
            .cargo_metadata(false);
        if tsan {
            b.flag("-fsanitize=thread").flag("-g");
        }
        b
    };
    let mut jobs: Vec<cc::Build> = Vec::new();
    let mut runtime = base("runtime");
    runtime.file(root.join("emu/runtime.cpp"));
    jobs.push(runtime);
    for f in files {
        let mut b = base(&format!(
            "{}{}",
            if f.test_only { "tests_" } else { "" },
            f.stem
        ));
        b.flag("-x")
            .flag("c++")
            .flag("-include")
            .flag(header.to_str().expect("utf-8 path"))
            .define("CUDA_CPU_EMULATION", None)
            .define(
                "EMU_SHARED_SECTION",
                Some(format!("emu_shared_{}", section_name(f)).as_str()),
            )
            .file(&f.path);
        jobs.push(b);
    }
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let chunks: Vec<Vec<cc::Build>> = (0..workers)
        .map(|w| jobs.iter().skip(w).step_by(workers).cloned().collect())
        .collect();
    thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .flat_map(|b| b.compile_intermediates())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("compile thread"))
            .collect()
    })
}

/// The linker section that holds a file's `__shared__` variables: a C identifier, so that the
/// linker defines `__start_`/`__stop_` symbols for it.
fn section_name(f: &CuFile) -> String {
    let stem: String = f
        .stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if f.test_only {
        format!("test_{stem}")
    } else {
        stem
    }
}

fn sources_rs(files: &[CuFile], headers: &[PathBuf]) -> String {
    let mut s = String::from("// Generated by build.rs from cu/.\n\n");
    s.push_str("/// Headers the kernel sources include, as (include name, contents).\n");
    s.push_str("pub const HEADERS: &[(&str, &str)] = &[\n");
    for h in headers {
        let name = h.file_name().unwrap().to_string_lossy();
        writeln!(
            s,
            "    ({name:?}, include_str!({:?})),",
            h.display().to_string()
        )
        .unwrap();
    }
    s.push_str("];\n\n");
    for (konst, test_only, doc) in [
        ("SOURCES", false, "Every kernel source of the engine."),
        (
            "TEST_SOURCES",
            true,
            "Kernels that only serve tests: the emulation's self-test and deliberately broken kernels.",
        ),
    ] {
        writeln!(s, "/// {doc}\npub const {konst}: &[KernelSource] = &[").unwrap();
        for f in files.iter().filter(|f| f.test_only == test_only) {
            writeln!(
                s,
                "    KernelSource {{ name: {:?}, source: include_str!({:?}), entry_points: &{:?} }},",
                f.stem,
                f.path.display().to_string(),
                f.entry_points
            )
            .unwrap();
        }
        s.push_str("];\n\n");
    }
    s
}

fn emulated_rs(files: &[CuFile]) -> String {
    let mut s = String::from("// Generated by build.rs from cu/.\n\nunsafe extern \"C\" {\n");
    for k in files.iter().flat_map(|f| &f.entry_points) {
        writeln!(s, "    fn emu_launch_{k}(cfg: *const RawConfig, args: *const *mut c_void, err: *mut c_char, errlen: usize) -> c_int;").unwrap();
        writeln!(
            s,
            "    fn emu_signature_{k}(sizes: *mut usize, cap: c_int) -> c_int;"
        )
        .unwrap();
    }
    s.push_str(
        "}\n\n/// The emulated launcher and the parameter sizes of every kernel, by name.\n",
    );
    s.push_str("static EMULATED: &[EmulatedKernel] = &[\n");
    for k in files.iter().flat_map(|f| &f.entry_points) {
        writeln!(s, "    EmulatedKernel {{ name: {k:?}, launch: emu_launch_{k}, signature: emu_signature_{k} }},")
            .unwrap();
    }
    s.push_str("];\n");
    s
}
