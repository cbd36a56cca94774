//! Twilio request signatures (`carrier::twilio::signature`) and `auth::tokens`. Input format and
//! checks: `media_relay_fuzz_checks::signature` (`checks/src/signature.rs`), which `cargo test`
//! also runs on every file of `seeds/signature/` and `regressions/signature/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::signature(data));
