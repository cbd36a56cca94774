//! `call::CallMachine` driven like `call::driver` by a script of frames, clock steps, socket
//! progress and tool answers. Input format and checks: `media_relay_fuzz_checks::call_machine`
//! (`checks/src/call_machine.rs`), which `cargo test` also runs on every file of
//! `seeds/call_machine/` and `regressions/call_machine/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| media_relay_fuzz_checks::call_machine(data));
