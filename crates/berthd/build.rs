//! The code a running daemon executes laid out together (scripts/layout.sh makes `hot.order`),
//! so that it maps little more of its binary than that.
fn main() {
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
