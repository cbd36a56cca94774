//! media-relay: relays Twilio Media Streams calls to voice agents (ElevenLabs Conversational
//! AI today; AssemblyAI and OpenAI Realtime fit the same agent-leg shape), forwarding μ-law
//! audio both ways byte-exact with no transcoding.
//!
//! # Layout
//! - [`server`]: HTTP (hyper 1) accept loop, routes, admission, drain.
//! - [`call`]: the per-call supervisor: both legs, early-audio buffer, barge-in, marks.
//! - [`twilio::codec`]: sans-IO Twilio Media Streams decode/encode (simd-json, base64-simd).
//! - [`agent`]: the dialect-neutral [`agent::AgentEvent`], the ElevenLabs codec, connecting,
//!   and the built-in echo agent.
//! - [`ws`]: data-path WebSocket framing (cancel-safe reader, batching writer) after the
//!   fastwebsockets upgrade/handshake.
//! - [`tokens`], [`control`]: per-call stream tokens and the duplicate-stream policy;
//!   outbound calls and Twilio status callbacks.
//! - [`playout`], [`latency`], [`metrics`]: playback accounting, per-call latency
//!   histograms, Prometheus metrics.
//! - [`config`], [`twiml`], [`net`], [`audio`], [`json`], [`twilio::signature`]:
//!   configuration, TwiML, outbound TCP/TLS/HTTP, audio constants, JSON helpers, Twilio
//!   request signatures.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod audio;
pub mod auth;
pub mod call;
pub mod config;
pub mod http;
pub mod obs;
pub mod twilio;
pub mod wire;

pub use http::server::Relay;
