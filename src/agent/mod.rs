//! The agent leg: the voice-agent side of a call.
//!
//! Owns the dialect-neutral [`AgentEvent`] that every agent codec decodes into (the
//! cross-provider mapping of protocols.md §5.5), the dialect codecs (ElevenLabs today;
//! AssemblyAI and OpenAI Realtime fit the same shape), connecting ([`connect`]) and the
//! built-in [`echo`] agent. Does not own the call loop (see `call`).

pub mod connect;
pub mod echo;
pub mod elevenlabs;

/// One message from an agent, in dialect-neutral terms, borrowing from the frame buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentEvent<'a> {
    /// The session is ready for audio; carries the negotiated formats (ElevenLabs
    /// `conversation_initiation_metadata`, §2.2).
    Ready {
        /// Provider conversation id, for logs.
        conversation_id: Option<&'a str>,
        /// Format the agent expects for caller audio (must be μ-law 8 kHz).
        input_format: Option<&'a str>,
        /// Format of the agent's audio (must be μ-law 8 kHz).
        output_format: Option<&'a str>,
    },
    /// Agent speech: base64 μ-law (not yet validated) and the provider's event id, if any.
    Audio {
        /// Base64 μ-law audio (standard alphabet).
        payload_b64: &'a str,
        /// ElevenLabs `audio_event.event_id`, used for interruption filtering (§2.4).
        event_id: Option<u64>,
    },
    /// Barge-in: the caller spoke over the agent. Audio with `event_id <=` this one is stale.
    /// `None` when the provider did not say (then all audio received so far is stale).
    Interruption {
        /// ElevenLabs `interruption_event.event_id` (UNCERTAIN: may be absent).
        event_id: Option<u64>,
    },
    /// Application-level keepalive that must be answered at once with the same id.
    Ping {
        /// The id to echo in the pong.
        event_id: u64,
    },
    /// Text of what the agent said (logged).
    AgentResponse {
        /// The response text.
        text: &'a str,
    },
    /// Final transcript of what the caller said (logged).
    UserTranscript {
        /// The transcript text.
        text: &'a str,
    },
    /// The agent asked the client to run a tool (logged and counted; no client tools yet).
    ToolCall {
        /// Tool name.
        name: &'a str,
        /// Provider call id.
        call_id: &'a str,
    },
    /// The provider reported an error (logged with its type; the close that follows ends the call).
    Error {
        /// Numeric code (ElevenLabs uses WebSocket close codes here, §2.5).
        code: Option<u64>,
        /// Provider error type, e.g. `override_error`.
        error_type: Option<&'a str>,
        /// Human-readable message.
        message: Option<&'a str>,
    },
    /// Any other message type: tolerated and counted.
    Other {
        /// The `type` value.
        kind: &'a str,
    },
}

/// Why an agent frame could not be decoded; [`DecodeError::kind`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not valid JSON; carries the parser's message.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The object has no `type` field.
    #[error("message has no \"type\" field")]
    MissingType,
    /// A known message lacks a field the relay needs.
    #[error("message is missing {0}")]
    MissingField(&'static str),
}

impl DecodeError {
    /// Stable snake_case name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::MissingType => "missing_type",
            DecodeError::MissingField(_) => "missing_field",
        }
    }
}

/// Which agent a call talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentKind {
    /// ElevenLabs Conversational AI over WebSocket (protocols.md §2).
    Elevenlabs,
    /// The built-in echo agent: plays the caller's audio back after a delay. No account needed.
    Echo,
}

impl AgentKind {
    /// Name used in logs and the `agent` span field.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Elevenlabs => "elevenlabs",
            AgentKind::Echo => "echo",
        }
    }
}
