//! `carrier::twilio::markup::connect_stream` (and the Telnyx TeXML) on webhook parameters. Input
//! format and checks: `media_relay_fuzz_checks::twiml` (`checks/src/twiml.rs`), which `cargo test`
//! also runs on every file of `seeds/twiml/` and `regressions/twiml/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::twiml(data));
