//! media-relay: relays Twilio Media Streams calls to voice agents (ElevenLabs Conversational
//! AI, the AssemblyAI Voice Agent API, the OpenAI Realtime API, or a built-in echo agent),
//! forwarding μ-law audio both ways byte-exact with no transcoding.
//!
//! # Layout
//! `config` and `http` sit on top (`config` builds the settings `http` and `call` take); below
//! them each module imports only from modules listed after it.
//! - [`config`]: flags and environment, validated before binding.
//! - [`http`]: the control plane: accept loop, limits before the upgrade, routes, admission,
//!   drain ([`http::server`]), TwiML, outbound calls and status callbacks, `GET /calls`.
//! - [`call`]: one task per call: the sans-IO [`call::machine::CallMachine`] (every decision
//!   and timer, injected clock), the async [`call::driver`] (both sockets, byte-capped
//!   outboxes), tool webhooks, playout accounting.
//! - [`agent`]: the dialect-neutral [`agent::AgentEvent`] and one sans-IO translator per
//!   agent API ([`agent::elevenlabs`], [`agent::assemblyai`], [`agent::openai`]), the echo
//!   agent, and connecting the agent leg.
//! - [`twilio`]: the Twilio Media Streams codec (simd-json, base64-simd).
//! - [`auth`]: Twilio request signatures, per-call stream tokens, secrets.
//! - [`obs`]: Prometheus metrics, per-call latency histograms, live and recent call figures.
//! - [`audio`]: G.711 μ-law facts and the caller speech-end detector.
//! - [`wire`]: data-path WebSocket framing, JSON helpers, outbound TCP/TLS and HTTP.

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
