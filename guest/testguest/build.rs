//! Build script: link the test guest as a static, non-PIE ELF at 1 MiB with our own linker script.

use std::path::PathBuf;

fn main() {
    let dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR unset"));
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    let args = [
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        "-static".to_string(),
        "-no-pie".to_string(),
        format!("-Wl,-T,{}", script.display()),
        "-Wl,--build-id=none".to_string(),
        "-Wl,-z,max-page-size=4096".to_string(),
        "-Wl,-z,norelro".to_string(),
        "-Wl,-z,noexecstack".to_string(),
        "-Wl,--no-dynamic-linker".to_string(),
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
