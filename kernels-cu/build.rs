//! Compiles every CUDA source under cu/ with g++ against the CPU emulation (emu/cuda_emu.h) into one
//! static library, and writes `$OUT_DIR/sources.rs` (the embedded sources with their entry points)
//! and `$OUT_DIR/emulated.rs` (the launchers `emu_launch_<kernel>` that each file exports with
//! `EMU_EXPORT`).
//!
//! g++ compiles a copy of each source in which every `__shared__` declaration takes its storage from
//! the emulation's per-block arena (see [`emulated_source`]).
//!
//! The kernels are compiled with `-fsanitize=thread` for its instrumentation only: emu/banks.cpp
//! defines the hooks it calls and counts shared-memory bank conflicts with them, and line tables
//! (`-g1`) let the tests name the source line of each access.
//!
//! `SSM_EMU_TSAN=1` builds the emulation with ThreadSanitizer, for runs in the OS-thread schedule
//! (then ThreadSanitizer's runtime owns the hooks and bank conflicts cannot be counted).

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

    let emu_src = out.join("emu-src");
    for p in files.iter().map(|f| &f.path).chain(&headers) {
        let rel = p.strip_prefix(root.join("cu")).expect("source under cu/");
        let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dst = emu_src.join(rel);
        fs::create_dir_all(dst.parent().unwrap()).expect("create emu-src");
        fs::write(&dst, emulated_source(p, &text)).expect("write emu-src");
    }
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
            .include(out.join("emu-src"))
            .out_dir(out.join("obj").join(dir))
            .cargo_metadata(false);
        if tsan {
            b.flag("-fsanitize=thread").flag("-g");
        }
        b
    };
    let mut jobs: Vec<cc::Build> = Vec::new();
    let mut runtime = base("runtime");
    runtime
        .file(root.join("emu/runtime.cpp"))
        .file(root.join("emu/banks.cpp"));
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
            .file(
                out.join("emu-src")
                    .join(f.path.strip_prefix(root.join("cu")).unwrap()),
            );
        if !tsan {
            b.flag("-fsanitize=thread")
                .flag("--param=tsan-instrument-func-entry-exit=0")
                .flag("-g1");
        }
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

/// The copy of a source that g++ compiles: every `__shared__ T name[dims];` becomes
/// `auto& name = emu::shared_var<T[dims]>([] {});`, storage that the emulation hands out per block
/// from an arena filled with 0xFF before every block (emu/runtime.cpp). A static cannot be
/// poisoned reliably: g++ ignores section attributes on statics inside templates, so they would
/// land in `.bss`, read as zeros and carry values from block to block. cuda_emu.h poisons the
/// identifier `__shared__`, so a declaration this rewrite missed does not compile. Line breaks are
/// kept and a `#line` names the original file, so diagnostics point at the real source.
fn emulated_source(path: &Path, text: &str) -> String {
    const KW: &str = "__shared__";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = format!("#line 1 {:?}\n", path.display().to_string());
    let mut rest = text;
    while let Some(i) = rest.find(KW) {
        let (before, after) = rest.split_at(i);
        let after = &after[KW.len()..];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        let in_word = before.ends_with(is_ident) || after.starts_with(is_ident);
        let keep =
            in_word || before[line_start..].contains("//") || before.trim_end().ends_with("extern");
        out.push_str(before);
        if keep {
            out.push_str(KW);
            rest = after;
            continue;
        }
        let end = after
            .find(';')
            .unwrap_or_else(|| panic!("{}: `__shared__` without `;`", path.display()));
        let decl = &after[..end];
        out.push_str(&shared_var(path, decl));
        out.extend(std::iter::repeat_n('\n', decl.matches('\n').count()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `auto& name = emu::shared_var<T[dims]>([] {});` for the declaration `__shared__ T name[dims]`:
/// the lambda's type makes every declaration (in every template instantiation) its own site.
fn shared_var(path: &Path, decl: &str) -> String {
    let flat = decl.split_whitespace().collect::<Vec<_>>().join(" ");
    let (head, dims) = flat.split_at(flat.find('[').unwrap_or(flat.len()));
    let head = head.trim_end();
    let name_at = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let (ty, name) = head.split_at(name_at);
    assert!(
        !ty.trim().is_empty()
            && !name.is_empty()
            && !flat.contains(['=', ','])
            && !flat.contains("__align__"),
        "{}: `__shared__ {flat};`: the emulation takes a type and one declarator, without initializer or __align__",
        path.display()
    );
    format!(
        "auto& {name} = emu::shared_var<{}{dims}>([] {{}});",
        ty.trim_end()
    )
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
