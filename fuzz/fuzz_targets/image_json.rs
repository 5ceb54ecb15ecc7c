//! Manifests, indexes and configs as a registry or an archive may send them: parsing must
//! answer with an error, never a panic, and a parsed index must select without one.
#![no_main]
use berth_core::images::{resolve, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resolve::parse_manifest(data, &"fuzz");
    let _ = resolve::parse_config(data, &"fuzz");
    if let Ok(index) = resolve::parse_index(data, &"fuzz") {
        let _ = index.select(&[Platform::default()], true);
        let _ = index.gc_labels(|_| true);
    }
});
