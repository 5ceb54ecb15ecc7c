//! What a streaming client sends berthd after the upgrade: SPDY/3.1 frames, header
//! blocks through the connection's zlib stream. Every input is frames, an error or the
//! end, never a panic or a hang.
#![no_main]
use berth_cri::streaming::spdy::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut codec = Codec::new();
        let mut r = data;
        while let Ok(Some(_)) = codec.read(&mut r).await {}
    });
});
