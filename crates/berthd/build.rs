//! Packed relative relocations (DT_RELR, glibc 2.36+): the loader reads a few KiB of
//! relocations instead of hundreds, which then no longer stay resident in the daemon.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
