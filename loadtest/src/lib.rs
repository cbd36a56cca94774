//! Simulated peers for testing and load-testing `media-relay`.
//!
//! This crate is an *independent* implementation of the two peers the relay talks to, written
//! from the wire documentation rather than from the relay's code, so that tests cross-check the
//! relay instead of agreeing with it by construction:
//!
//! - [`twilio_sim`]: a simulated Twilio Media Streams caller. Twilio is the WebSocket **client**
//!   on this leg (its frames are masked). It sends `connected`/`start`/`media`/`mark`/`dtmf`/`stop`
//!   exactly as Twilio does, and validates what the relay sends back as strictly as Twilio does
//!   (only `media`/`mark`/`clear`, no extra fields, valid base64).
//! - [`agent_sim`]: a mock ElevenLabs Conversational AI server (signed-URL endpoint plus the
//!   conversation WebSocket) with scripted behaviours (echo, silent, reply with interruption,
//!   garbage) and handles for tests to drive and inspect each conversation.
//! - [`assemblyai_sim`]: a mock AssemblyAI Voice Agent API server, and [`openai_sim`]: a mock
//!   OpenAI Realtime API (GA) server, with the same kinds of behaviours plus timed steps (tool
//!   calls, errors, session end, raw frames) and handles.
//! - [`mock_server`]: the skeleton the three mock agents share (accept loop, upgrade, auth,
//!   per-session recording, wait/notify, send/close); each mock is a dialect of it.
//! - [`fixtures`]: loaders for the speech fixtures in `tests/fixtures/` (8 kHz mono μ-law WAV).
//!
//! The load harness (issue 3, binary `loadtest`) is built on them: [`harness`] (callers and
//! run orchestration), [`bench_agent`] (a lean, tag-aware mock agent in each dialect), [`tag`]
//! (per-frame tags inside the audio), [`floor`] (the fastwebsockets echo cost floor),
//! [`procstat`] (CPU/RSS from `/proc`), [`procs`] (spawning the relay and the floor) and
//! [`report`] (summary table, JSON, SVG), and [`soak`] (soak and churn runs: calls replaced as
//! they end, each judged byte-exact, the relay's RSS, descriptors and tasks sampled over time).
//!
//! Audio everywhere in this crate is headerless G.711 μ-law at 8000 samples/s, mono:
//! 1 byte per sample, 8 bytes per millisecond, 160 bytes per 20 ms frame.
//!
//! All network traffic is plain `ws://`/`http://` and meant for loopback (`127.0.0.1`).

#![warn(missing_docs)]

pub mod agent_sim;
pub mod assemblyai_sim;
pub mod bench_agent;
pub mod fixtures;
pub mod floor;
pub mod harness;
pub mod mock_server;
pub mod openai_sim;
pub mod pin;
pub mod procs;
pub mod procstat;
pub mod report;
pub mod soak;
pub mod tag;
pub mod twilio_sim;
mod ws;

/// μ-law bytes per millisecond of audio (8000 samples/s × 1 byte per sample ÷ 1000).
pub const MULAW_BYTES_PER_MS: usize = 8;

/// μ-law bytes in one 20 ms Twilio frame.
pub const MULAW_FRAME_BYTES: usize = 160;

/// `s` cut to at most `max` bytes (on a char boundary) with `…` appended when cut, for
/// protocol-error messages that quote what a peer sent.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
