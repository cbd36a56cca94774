//! `wire::ws::WsWriter` → `WsReader` round trip of what the relay sends. Input format and checks:
//! `media_relay_fuzz_checks::ws_roundtrip` (`checks/src/ws_roundtrip.rs`), which `cargo test` also
//! runs on every file of `seeds/ws_roundtrip/` and `regressions/ws_roundtrip/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::ws_roundtrip(data));
