//! Builds every guest program to WebAssembly and generates path constants for them:
//! the Rust examples with `cargo build --release --target wasm32-wasip1` (the component for
//! `wasm32-wasip2`), the C example with clang and wasi-libc, and the WAT fixtures with the `wat` crate.
//! Missing wasm targets are added with rustup; missing clang/wasi-libc are installed from Debian's packages
//! when running as root, otherwise the build stops with the command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

const RUST_GUESTS: [&str; 4] = ["echo", "wordcount", "primes", "mandelbrot"];
const DEBIAN_PACKAGES: [&str; 4] = ["clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let examples = manifest_dir.parent().expect("guest-examples folder").to_path_buf();
    let sdk = examples.parent().expect("repository root").join("sdk/guest");
    let wit = examples.parent().expect("repository root").join("wit");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    for path in [&examples.join("Cargo.toml"), &sdk, &wit] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for dir in ["echo", "wordcount", "primes", "mandelbrot", "component", "sleepy-component", "c", "wat"] {
        println!("cargo:rerun-if-changed={}", examples.join(dir).display());
    }

    let target_dir = guest_target_dir(&out);
    let mut consts = String::new();
    let mut add = |name: &str, path: &Path| {
        let ident = name.to_uppercase().replace('-', "_");
        consts.push_str(&format!(
            "/// `{name}` built to WebAssembly.\npub const {ident}: &str = {:?};\n",
            path
        ));
    };

    ensure_rust_target("wasm32-wasip1");
    ensure_rust_target("wasm32-wasip2");
    cargo_build(&examples, &target_dir, "wasm32-wasip1", &RUST_GUESTS);
    for name in RUST_GUESTS {
        let built = target_dir.join("wasm32-wasip1/release").join(format!("{name}.wasm"));
        add(name, &copy_out(&built, &out, name));
    }
    cargo_build(&examples, &target_dir, "wasm32-wasip2", &["primes-component", "sleepy-component"]);
    for name in ["primes-component", "sleepy-component"] {
        let built = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        add(name, &copy_out(&built, &out, name));
    }

    let c_out = out.join("primes-c.wasm");
    build_c(&examples.join("c/primes.c"), &c_out);
    add("primes-c", &c_out);

    let mut fixtures: Vec<_> = std::fs::read_dir(examples.join("wat"))
        .expect("guest-examples/wat exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wat"))
        .collect();
    fixtures.sort();
    let mut names = Vec::new();
    for wat_path in fixtures {
        let stem = wat_path.file_stem().expect("file name").to_string_lossy().into_owned();
        let binary = wat::parse_file(&wat_path).unwrap_or_else(|e| panic!("{}: {e}", wat_path.display()));
        let path = out.join(format!("{stem}.wasm"));
        std::fs::write(&path, binary).expect("write fixture");
        add(&format!("wat-{stem}"), &path);
        names.push(stem);
    }
    consts.push_str(&format!("/// Names of the WAT fixtures (see `guest-examples/wat`).\npub const WAT_FIXTURES: &[&str] = &{names:?};\n"));
    std::fs::write(out.join("programs.rs"), consts).expect("write programs.rs");
}

/// Copies a built guest into OUT_DIR, so the constants (and `include_bytes!`) have one stable place.
fn copy_out(built: &Path, out: &Path, name: &str) -> PathBuf {
    let dest = out.join(format!("{name}.wasm"));
    std::fs::copy(built, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
    dest
}

/// A target directory for the guest build beside the host's, so it is reused between builds but never
/// shares the host build's lock.
fn guest_target_dir(out: &Path) -> PathBuf {
    if let Ok(dir) = std::env::var("HIVEMIND_GUEST_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    out.ancestors().nth(4).map(|t| t.join("guests")).unwrap_or_else(|| out.join("guests"))
}

fn ensure_rust_target(target: &str) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot =
        Command::new(&rustc).args(["--print", "sysroot"]).output().expect("run rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(target).exists() {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", target]).status();
    if !status.is_ok_and(|s| s.success()) {
        panic!(
            "the Rust target `{target}` is missing and `rustup target add {target}` failed; install it and rebuild"
        );
    }
}

fn cargo_build(examples: &Path, target_dir: &Path, target: &str, packages: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(examples)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS");
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo for the guest examples: {e}"));
    assert!(status.success(), "building the guest examples for {target} failed (see the output above)");
}

fn clang_works() -> bool {
    Command::new("clang").arg("--version").output().is_ok_and(|o| o.status.success())
        && Path::new("/usr/include/wasm32-wasi/stdio.h").exists()
}

fn build_c(source: &Path, out: &Path) {
    if !clang_works() {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let installed = root
            && Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(DEBIAN_PACKAGES)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !clang_works() {
            panic!(
                "building the C example needs clang and wasi-libc: run `sudo apt-get install {}` and rebuild",
                DEBIAN_PACKAGES.join(" ")
            );
        }
    }
    let status = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(source)
        .status()
        .expect("run clang");
    assert!(status.success(), "clang failed to build {}", source.display());
}
