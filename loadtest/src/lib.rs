//! Simulated peers for testing and load-testing `media-relay`.
//!
//! This crate is an *independent* implementation of the peers the relay talks to, written from
//! the wire documentation rather than from the relay's code (it does not depend on `media-relay`),
//! so that tests cross-check the relay instead of agreeing with it by construction.
//!
//! # Layout
//!
//! [`peers`]: reusable test peers, one module per carrier and per agent dialect.
//!
//! - [`carrier`]: the one simulated carrier caller (connection, numbering, strict validation
//!   of what the relay sends, scripted calls with playback-paced mark echoes, frame
//!   reordering), generic over a [`CarrierWire`](peers::carrier::CarrierWire) that supplies one
//!   carrier's message shapes. Carriers are the WebSocket **client** on this leg (frames are
//!   masked).
//! - [`twilio_sim`]: the Twilio Media Streams wire (`streamSid`, `sequenceNumber`; the relay
//!   may send only `media`/`mark`/`clear` carrying the stream's `streamSid`), and
//!   [`telnyx_sim`]: the Telnyx media-streaming wire (`stream_id`, `sequence_number`,
//!   `custom_parameters` as an object or a list; the relay may send only `media`/`mark`/`clear`
//!   with **no** stream id). Each names its instantiation of the caller (`TwilioClient`,
//!   `TelnyxClient`, `CallScript`, `run_call`, …).
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
//! [`bench`](mod@bench): the load harness (issue 3, binary `loadtest`), built on the peers:
//! [`harness`] (callers and run orchestration), [`bench_agent`] (a lean, tag-aware mock agent in
//! each dialect), [`tag`] (per-frame tags inside the audio), [`floor`] (the fastwebsockets echo
//! cost floor), [`procstat`] (CPU/RSS from `/proc`), [`procs`] (spawning the relay and the
//! floor, and the agent settings it is given), [`pin`] (CPU pinning), [`report`] (summary
//! table, JSON, SVG) and [`soak`] (soak and churn runs: calls replaced as they end, each judged
//! byte-exact, the relay's RSS, descriptors and tasks sampled over time) and [`faults`]
//! (agent sockets killed during a run: the recovery benchmark of issue 17).
//!
//! Every module is also re-exported at the crate root (`loadtest::twilio_sim`,
//! `loadtest::harness`, …), the paths tests use. Bench modules may use peers; peers never use
//! bench. Both share the crate-private WebSocket plumbing in `ws`.
//!
//! Audio everywhere in this crate is headerless G.711 μ-law at 8000 samples/s, mono:
//! 1 byte per sample, 8 bytes per millisecond, 160 bytes per 20 ms frame.
//!
//! All network traffic is plain `ws://`/`http://` and meant for loopback (`127.0.0.1`).

#![warn(missing_docs)]

pub mod bench;
pub mod peers;
mod ws;

pub use bench::{bench_agent, faults, floor, harness, pin, procs, procstat, report, soak, tag};
pub use peers::{
    agent_sim, assemblyai_sim, carrier, fixtures, mock_server, openai_sim, telnyx_sim, twilio_sim,
};

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
