//! What clients name things with: image references, platforms, filters, namespaces and
//! container ids, digests.
#![no_main]
use berth_core::filters::Filter;
use berth_core::images::{Platform, Reference};
use berth_core::{ContainerId, Digest, Namespace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        let _ = (r.to_string(), r.familiar(), r.object(), r.api_host());
    }
    let _ = Platform::parse(s);
    let _ = Filter::parse_all(&[s.to_owned()]);
    let _ = Namespace::new(s);
    let _ = ContainerId::new(s);
    let _ = Digest::parse(s);
});
