//! The byte range of a content Read, from the request's offset and size.
#![no_main]
use berth_core::content::read_range;
use berth_core::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (i64, i64, u64)| {
    let (offset, size, blob) = input;
    if let Ok((start, end)) = read_range(&Digest::of(b"x"), offset, size, blob) {
        assert!(0 <= start && start <= end);
        assert!(end as u128 <= blob as u128);
    }
});
