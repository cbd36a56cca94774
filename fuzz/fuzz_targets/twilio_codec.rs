//! `carrier::twilio::codec`: decode of one Twilio frame, base64 payloads, the encoders. Input
//! format and checks: `media_relay_fuzz_checks::twilio_codec` (`checks/src/twilio_codec.rs`), which
//! `cargo test` also runs on every file of `seeds/twilio_codec/` and `regressions/twilio_codec/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::twilio_codec(data));
