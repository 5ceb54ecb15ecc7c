//! Packed relative relocations (DT_RELR, glibc 2.36+): a position-independent shim's loader
//! then reads a few KiB of relocations instead of hundreds, in every shim and every runtime
//! call, and keeps less of the binary resident.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
