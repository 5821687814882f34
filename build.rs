//! Generates the C header with cbindgen into OUT_DIR, and refreshes the committed `include/sdxlrt.h` from it
//! outside CI. In CI (`CI` set) the committed header is left alone, so the `header_is_current` test catches a
//! header that was not regenerated and committed.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=CI");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let generated = match cbindgen::Builder::new().with_crate(&crate_dir).with_config(config).generate() {
        Ok(g) => g,
        Err(e) => {
            // A syntax error elsewhere is reported by rustc with better context; don't fail the build here.
            println!("cargo:warning=cbindgen could not generate the header: {e}");
            return;
        }
    };
    let fresh = out_dir.join("sdxlrt.h");
    generated.write_to_file(&fresh);
    if std::env::var_os("CI").is_none() {
        let committed = crate_dir.join("include/sdxlrt.h");
        let new = std::fs::read(&fresh).expect("header just written");
        if std::fs::read(&committed).ok().as_deref() != Some(new.as_slice()) {
            std::fs::create_dir_all(crate_dir.join("include")).expect("create include/");
            std::fs::write(&committed, new).expect("write include/sdxlrt.h");
        }
    }
}
