//! A C program built against the committed header and the cdylib: proves the header is complete C and the shared
//! library works for a non-Rust host. Needs a C compiler (scripts/setup.sh installs one).

use std::path::PathBuf;
use std::process::Command;

use crate::util::fixtures;

#[test]
fn a_c_host_compiles_against_the_header_and_generates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Build the cdylib this test links (cargo test builds only the rlib).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built =
        Command::new(cargo).args(["build", "--release", "--lib", "--quiet"]).current_dir(&root).status().unwrap();
    assert!(built.success(), "cargo build --release --lib failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let libdir = target.join("release");
    assert!(libdir.join("libsdxlrt.so").is_file(), "no libsdxlrt.so in {}", libdir.display());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("smoke");
    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(root.join("tests/c/smoke.c"))
        .arg("-I")
        .arg(root.join("include"))
        .arg("-L")
        .arg(&libdir)
        .arg("-lsdxlrt")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .output()
        .expect("a C compiler (cc) is installed");
    assert!(cc.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&exe).arg(fixtures()).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.starts_with("ok version"), "{stdout}");
}
