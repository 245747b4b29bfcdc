//! Builds the bundled test guest (guest/testguest) so `plainvm run` without --kernel can boot it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("..")
        .canonicalize()
        .expect("the workspace root exists");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("testguest-target");
    // A separate target directory: the outer cargo holds the lock on the workspace's.
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--offline", "-p", "plainvm-testguest"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cannot run cargo to build the test guest");
    assert!(status.success(), "building the test guest failed");
    let elf = target_dir.join("release/plainvm-testguest");
    println!("cargo:rustc-env=PLAINVM_TESTGUEST_ELF={}", elf.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guest/testguest").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guest/proto").display()
    );
}
