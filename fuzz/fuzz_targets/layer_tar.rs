//! Layer streams (tar, gzip, zstd) applied into a scratch directory: an error or a tree,
//! never a panic, and never a write outside the directory.
#![no_main]
use berth_core::apply::{apply_layer, ApplyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for overlay in [false, true] {
        let opts = ApplyOptions {
            overlay_whiteouts: overlay,
            lowers: Vec::new(),
        };
        let _ = apply_layer(&root, data, &opts);
    }
    let outside: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
    assert_eq!(outside.len(), 1, "a layer wrote outside its root");
});
