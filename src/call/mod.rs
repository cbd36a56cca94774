//! One task per call: the [`machine`] (every decision, sans-IO, injected clock), the
//! [`driver`] (the only async code: both sockets, outboxes, the one timer), the tool-webhook
//! client ([`tools`]), playout accounting ([`playout`]) and byte-capped queues ([`outbox`]).
//!
//! A media frame's path: `http::server` upgrades `/media` → [`run`] → the driver reads a
//! Twilio frame (`wire::ws`) → `twilio::codec` decodes it → the machine queues the μ-law in
//! the agent outbox → the driver asks the machine for what the agent leg owes
//! ([`machine::CallMachine::poll_transmit`]), which the call's `agent::Dialect` encodes → the
//! driver writes it. Agent audio takes the mirror path.
//!
//! Nothing here knows a vendor's JSON (that is `agent::*`) or Twilio's (`twilio::codec`).

pub mod driver;
pub mod machine;
pub mod outbox;
pub mod playout;
pub mod tools;

use crate::agent::{AgentKind, AgentSettings};
use crate::auth::tokens::{LiveStreams, StreamTokens};
use crate::obs::metrics::Metrics;
use crate::wire::http_client::HttpClient;
use std::sync::Arc;
use std::time::Duration;

pub use driver::{run, TwilioRead, TwilioWrite};
pub use machine::CallMachine;

/// Largest Twilio message accepted, in bytes (Twilio's are ~400 bytes). A larger one is
/// skipped unbuffered and ends the call (close 1009).
pub const MAX_TWILIO_MESSAGE_BYTES: usize = 64 * 1024;

/// How long closing each socket may take at the end of a call.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Per-call settings, derived from configuration once.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// The agent calls use unless their `agent` parameter names another.
    pub default_agent: AgentKind,
    /// Dialect settings.
    pub agents: AgentSettings,
    /// Echo agent delay.
    pub echo_delay: Duration,
    /// Caller audio kept while the agent connects, in μ-law bytes (8 per ms); the oldest is
    /// dropped beyond it (`early_buffer_full`).
    pub early_audio_bytes: usize,
    /// Agent connect + session-ready limit.
    pub agent_connect_timeout: Duration,
    /// Upgrade → `start` limit.
    pub start_timeout: Duration,
    /// After `start`, a Twilio leg silent this long ends the call (`twilio_idle`); Twilio
    /// sends media every 20 ms, silence included.
    pub twilio_idle_timeout: Duration,
    /// Maximum call length.
    pub max_call_duration: Duration,
    /// Maximum bytes of agent audio per Twilio `media` message.
    pub twilio_chunk_bytes: usize,
    /// Caller audio waiting for the agent socket, in μ-law bytes; the oldest is dropped
    /// beyond it (`outbox_full`).
    pub agent_outbox_bytes: usize,
    /// Agent audio waiting for the Twilio socket, in μ-law bytes; the oldest is dropped
    /// beyond it (`outbox_full`).
    pub twilio_outbox_bytes: usize,
    /// A leg whose socket accepts nothing for this long ends the call
    /// (`twilio_stalled` / `agent_stalled`).
    pub write_stall_timeout: Duration,
    /// Keypad digits are sent to the agent once no new digit came for this long (or on `#`).
    pub dtmf_interdigit: Duration,
    /// Tool webhook.
    pub tools: tools::ToolSettings,
    /// What callers still on the line at the drain deadline hear before the call closes
    /// (`--drain-notice-file`, μ-law 8 kHz); `None` closes at once.
    pub drain_notice: Option<Arc<[u8]>>,
}

/// After the drain notice's audio, how long Twilio may take to confirm it played (its
/// mark echo) before the call closes anyway.
pub const DRAIN_NOTICE_GRACE: Duration = Duration::from_secs(2);

/// What every call shares: settings, metrics, TLS and HTTP clients, authentication state.
#[derive(Debug)]
pub struct CallContext {
    /// Per-call settings from configuration.
    pub settings: Arc<CallSettings>,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
    /// The shared TLS client configuration for agent connections.
    pub tls: Arc<rustls::ClientConfig>,
    /// The pooled HTTP client (signed URLs, tool webhooks).
    pub http: HttpClient,
    /// Stream token checks; `Some` only in the authenticated mode (TWILIO_AUTH_TOKEN set).
    pub tokens: Option<Arc<StreamTokens>>,
    /// Live streams by call SID (duplicate policy: the newest stream replaces the older).
    pub live: Arc<LiveStreams>,
    /// Live and recently ended calls' figures (`GET /calls`).
    pub calls: Arc<crate::obs::calls::CallRegistry>,
}

/// Why a call ended: a normal ending is not an error. [`EndReason::outcome`] is the
/// `outcome` label of `relay_calls_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop`: the call ended normally.
    TwilioStop,
    /// The Twilio socket closed (close frame or TCP end) without `stop`.
    TwilioClosed,
    /// The Twilio leg broke the protocol in a way that ends the call; carries the kind and
    /// the close code owed (1002, 1007, 1009).
    TwilioError {
        /// Error kind (metric label).
        kind: &'static str,
        /// Close code sent to Twilio.
        close_code: u16,
    },
    /// Twilio sent nothing for `--twilio-idle-timeout-secs` after `start`.
    TwilioIdle,
    /// The Twilio socket accepted nothing for `--write-stall-timeout-ms`.
    TwilioStalled,
    /// `start.mediaFormat` is not G.711 μ-law 8000 Hz mono (the relay never transcodes).
    MediaFormatUnsupported,
    /// The agent closed its socket; carries its close code.
    AgentClosed(Option<u16>),
    /// The agent ended the session cleanly (AssemblyAI `session.ended`).
    AgentEnded,
    /// The agent leg failed after connecting (read error, fatal error event); carries the kind.
    AgentError(&'static str),
    /// The agent could not be connected, or did not report ready in time.
    AgentConnectFailed(&'static str),
    /// The agent socket accepted nothing for `--write-stall-timeout-ms`.
    AgentStalled,
    /// The agent's audio formats are not μ-law 8 kHz both ways.
    AudioFormatMismatch,
    /// No `start` arrived in time after the upgrade.
    StartTimeout,
    /// The relay is shutting down: the drain deadline closed the call (close 1001).
    Shutdown,
    /// The call reached `--max-call-duration-secs`.
    MaxDuration,
    /// The stream's `relay_token` was missing or wrong (authenticated mode); carries the kind.
    TokenRejected(&'static str),
    /// A newer stream for the same call SID replaced this one.
    Replaced,
}

impl EndReason {
    /// Bounded label value (one of `obs::metrics::CALL_OUTCOMES`).
    pub fn outcome(&self) -> &'static str {
        match self {
            EndReason::TwilioStop => "twilio_stop",
            EndReason::TwilioClosed => "twilio_closed",
            EndReason::TwilioError { .. } => "twilio_error",
            EndReason::TwilioIdle => "twilio_idle",
            EndReason::TwilioStalled => "twilio_stalled",
            EndReason::MediaFormatUnsupported => "media_format_unsupported",
            EndReason::AgentClosed(_) => "agent_closed",
            EndReason::AgentEnded => "agent_ended",
            EndReason::AgentError(_) => "agent_error",
            EndReason::AgentConnectFailed(_) => "agent_connect_failed",
            EndReason::AgentStalled => "agent_stalled",
            EndReason::AudioFormatMismatch => "audio_format_mismatch",
            EndReason::StartTimeout => "start_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::MaxDuration => "max_duration",
            EndReason::TokenRejected(_) => "token_rejected",
            EndReason::Replaced => "replaced",
        }
    }

    /// Close code and reason sent to Twilio (RFC 6455 §7.4.1).
    pub fn twilio_close(&self) -> (u16, &'static str) {
        match self {
            EndReason::Shutdown => (1001, "relay shutting down"),
            EndReason::TwilioError { close_code, .. } => (*close_code, "protocol error"),
            EndReason::MediaFormatUnsupported => {
                (1003, "media format must be audio/x-mulaw 8000 Hz mono")
            }
            EndReason::TwilioIdle => (1000, "no media"),
            EndReason::TwilioStalled => (1011, "not reading"),
            EndReason::AgentConnectFailed(_) | EndReason::AudioFormatMismatch => {
                (1011, "agent unavailable")
            }
            EndReason::AgentError(_) | EndReason::AgentStalled => (1011, "agent error"),
            EndReason::TokenRejected(_) => (1008, "invalid stream token"),
            EndReason::Replaced => (1000, "replaced by a newer stream"),
            _ => (1000, "call ended"),
        }
    }

    /// Close code and reason sent to the agent.
    pub fn agent_close(&self) -> (u16, &'static str) {
        match self {
            EndReason::Shutdown => (1001, "relay shutting down"),
            EndReason::AgentError("websocket_protocol") => (1002, "protocol error"),
            EndReason::AgentError("invalid_utf8") => (1007, "invalid UTF-8"),
            EndReason::AgentStalled => (1011, "not reading"),
            _ => (1000, "call ended"),
        }
    }

    /// Whether the end is a failure worth a `warn` summary line.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            EndReason::TwilioError { .. }
                | EndReason::TwilioIdle
                | EndReason::TwilioStalled
                | EndReason::MediaFormatUnsupported
                | EndReason::AgentError(_)
                | EndReason::AgentConnectFailed(_)
                | EndReason::AgentStalled
                | EndReason::AudioFormatMismatch
                | EndReason::StartTimeout
                | EndReason::TokenRejected(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::metrics::CALL_OUTCOMES;

    #[test]
    fn every_outcome_is_a_known_label() {
        let all = [
            EndReason::TwilioStop,
            EndReason::TwilioClosed,
            EndReason::TwilioError {
                kind: "x",
                close_code: 1002,
            },
            EndReason::TwilioIdle,
            EndReason::TwilioStalled,
            EndReason::MediaFormatUnsupported,
            EndReason::AgentClosed(None),
            EndReason::AgentEnded,
            EndReason::AgentError("x"),
            EndReason::AgentConnectFailed("x"),
            EndReason::AgentStalled,
            EndReason::AudioFormatMismatch,
            EndReason::StartTimeout,
            EndReason::Shutdown,
            EndReason::MaxDuration,
            EndReason::TokenRejected("x"),
            EndReason::Replaced,
        ];
        for r in &all {
            assert!(CALL_OUTCOMES.contains(&r.outcome()), "{r:?}");
            assert!(crate::wire::ws::is_valid_close_code(r.twilio_close().0));
            assert!(crate::wire::ws::is_valid_close_code(r.agent_close().0));
        }
    }
}
