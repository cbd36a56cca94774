//! media-relay: relays a carrier's call media streams (Twilio Media Streams, Telnyx media
//! streaming) to voice agents (ElevenLabs Conversational AI, the AssemblyAI Voice Agent API,
//! the OpenAI Realtime API, or a built-in agent), forwarding μ-law audio both ways byte-exact
//! with no transcoding.
//!
//! # Layout
//! Arrows point down only: each module imports from modules on the floors below it, never
//! above (`tests/layering.rs` checks this against the source).
//! - [`config`] (top): flags and environment, validated and turned into plain settings; only
//!   `main` uses it.
//! - [`http`]: the control plane: accept loop, limits before the upgrade, routes, admission,
//!   drain, the carriers' webhooks, outbound calls, `GET /calls`.
//! - [`call`]: one task per call: the sans-IO [`call::machine::CallMachine`] (every decision
//!   and timer, injected clock, in parts), the async [`call::driver`] (both sockets,
//!   byte-capped outboxes), connecting the agent, tool webhooks.
//! - [`carrier`] and [`agent`]: one module per carrier (codec, markup, signatures, REST) and
//!   per agent dialect (sans-IO translator), each behind a registry of one line per entry.
//! - [`wire`]: data-path WebSocket framing and client handshakes, base64, JSON and XML
//!   helpers, outbound TCP/TLS and HTTP; [`audio`]: G.711 μ-law facts and the speech detector.
//! - [`auth`]: stream tokens, bearer tokens, secrets, the shared signature error.
//! - [`obs`] (bottom): the label vocabulary, metric families and registry, per-call
//!   accumulators, call figures.

// The default build has no unsafe code. The `uring` experiment needs an `unsafe impl Send`
// for each of its two socket halves, allowed in `wire::uring` alone (its module docs argue why).
#![cfg_attr(not(feature = "uring"), forbid(unsafe_code))]
#![cfg_attr(feature = "uring", deny(unsafe_code))]
#![warn(missing_docs)]

pub mod agent;
pub mod audio;
pub mod auth;
pub mod call;
pub mod carrier;
pub mod config;
pub mod flags;
pub mod http;
pub mod obs;
pub mod wire;

pub use http::server::Relay;
