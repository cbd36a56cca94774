//! `carrier::telnyx`: decode, the reordering session fed frames in any order, the encoders. Input
//! format and checks: `media_relay_fuzz_checks::telnyx_codec` (`checks/src/telnyx_codec.rs`), which
//! `cargo test` also runs on every file of `seeds/telnyx_codec/` and `regressions/telnyx_codec/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::telnyx_codec(data));
