//! `wire::ws::WsReader` on arbitrary bytes from a peer, in both roles, chunked and cancelled. Input
//! format and checks: `media_relay_fuzz_checks::ws_reader` (`checks/src/ws_reader.rs`), which
//! `cargo test` also runs on every file of `seeds/ws_reader/` and `regressions/ws_reader/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::ws_reader(data));
