//! The agent dialects (`agent::Session`): session init and a sequence of agent frames. Input format
//! and checks: `media_relay_fuzz_checks::agent_dialects` (`checks/src/agent_dialects.rs`), which
//! `cargo test` also runs on every file of `seeds/agent_dialects/` and
//! `regressions/agent_dialects/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::agent_dialects(data));
