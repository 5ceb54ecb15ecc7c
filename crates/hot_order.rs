// Included by the build scripts of berthd and containerd-shim-berth-v2: links the binary with
// its crate's `hot.order` as lld's symbol ordering file, so that the code a running process
// executes sits together and it maps little more of its binary than that (scripts/layout.sh
// makes the files; names not in the binary are skipped).
fn link_hot_order() {
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
