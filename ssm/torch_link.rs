// Link settings for binaries that use libtorch (the `torch` feature), included by the build
// scripts of `ssm` and `experiments`: a link argument reaches only the binaries of the crate that
// prints it. An rpath to libtorch's lib folder, so that tests and ssm-lab start without
// LD_LIBRARY_PATH; and libtorch_cuda kept although no symbol of it is referenced (the linker's
// --as-needed would drop it, and CUDA would never be available; DESIGN §6).

fn torch_link() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        // torch-sys stops the build with its own message naming LIBTORCH.
        return;
    };
    let lib = std::path::Path::new(&libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!(
            "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},-ltorch_cuda,--as-needed",
            lib.display()
        );
    }
}
