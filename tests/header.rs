//! include/sdxlrt.h is what cbindgen makes from the current sources (build.rs writes it outside CI; in CI a stale
//! committed header fails here).

#[test]
fn committed_header_matches_the_sources() {
    let fresh = include_str!(concat!(env!("OUT_DIR"), "/sdxlrt.h"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/sdxlrt.h"))
        .expect("include/sdxlrt.h is committed");
    assert!(
        committed == fresh,
        "include/sdxlrt.h is stale: run `cargo build` outside CI and commit the regenerated header"
    );
}

#[test]
fn header_declares_every_abi_function() {
    let header = include_str!(concat!(env!("OUT_DIR"), "/sdxlrt.h"));
    for f in [
        "sdxl_version",
        "sdxl_engine_create",
        "sdxl_engine_free",
        "sdxl_generate",
        "sdxl_generate_images",
        "sdxl_image_batch_free",
        "sdxl_cancel",
        "sdxl_string_free",
        "sdxl_last_error",
        "sdxl_status_str",
        "SDXL_STATUS_PANIC",
    ] {
        assert!(header.contains(f), "header lacks {f}");
    }
}
