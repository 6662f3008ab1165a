//! Build script: for the board build only (bare-metal target with feature
//! `board-u5a5`), put `memory.x` on the linker search path and pass the
//! cortex-m-rt and defmt linker scripts. Host builds are left alone.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    let bare_metal = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none");
    let board = env::var_os("CARGO_FEATURE_BOARD_U5A5").is_some();
    if !(bare_metal && board) {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
}
