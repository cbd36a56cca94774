//! The relay's fixed vocabulary: every closed label set as an enum, from which the label
//! strings, the series created at start and the README tables' names all come.
//!
//! [`label_enum!`] defines one set: the enum, `ALL` (label order), `COUNT`, `as_str()` (the
//! stable snake_case label) and `from_label()`. Error kinds also say on which legs they can
//! happen ([`ErrorKind::legs`]), so `relay_errors_total{leg,kind}` is created at 0 for exactly
//! those pairs. Nothing here imports anything else from the crate: every layer may use it.

/// Defines a closed label set: `enum $name { Variant = "label", … }` with `ALL`, `COUNT`,
/// `as_str()`, `from_label()` and `Display` (the label).
#[macro_export]
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in label order (metrics create one series per value at start).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Number of values.
            pub const COUNT: usize = Self::ALL.len();

            /// The stable snake_case label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }

            /// The value whose label is `s` (exact match).
            pub fn from_label(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }

            /// Position in [`Self::ALL`] (for arrays sized by `COUNT`).
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub use crate::label_enum;

label_enum! {
    /// One side of a call. The `leg` label value of the caller leg is the carrier's name
    /// (`twilio`, `telnyx`), of the others `agent` and `internal`.
    pub enum Leg {
        /// The carrier's media WebSocket (or its webhooks): the caller's side.
        Caller = "caller",
        /// The agent WebSocket (or its HTTP setup).
        Agent = "agent",
        /// The relay itself.
        Internal = "internal",
    }
}

label_enum! {
    /// Direction of audio through the relay. The `direction` label is
    /// `{carrier}_to_agent` / `agent_to_{carrier}` (`twilio_to_agent`, `agent_to_telnyx`).
    pub enum Direction {
        /// Caller audio: carrier → agent.
        ToAgent = "to_agent",
        /// Agent audio: agent → carrier.
        ToCaller = "to_caller",
    }
}

label_enum! {
    /// Reasons a frame is dropped; the `reason` label of `relay_frames_dropped_total`.
    pub enum DropReason {
        /// Caller audio buffered while the agent connected overflowed; oldest dropped.
        EarlyBufferFull = "early_buffer_full",
        /// A leg's outbox reached its byte cap (its socket is not keeping up); oldest dropped.
        OutboxFull = "outbox_full",
        /// Agent audio of a reply the caller interrupted.
        Interrupted = "interrupted",
        /// The echo agent's delay queue overflowed; oldest dropped.
        EchoQueueFull = "echo_queue_full",
        /// Agent audio dropped while a closing call plays the drain notice (the notice replaces
        /// the agent's voice; caller audio still reaches the agent).
        Draining = "draining",
        /// Agent audio that arrived after a call action's goodbye or announcement was complete
        /// (the call is ending or being transferred).
        CallEnding = "call_ending",
        /// Agent audio still queued for the caller when the agent leg failed (hold audio
        /// replaces it).
        AgentFailed = "agent_failed",
    }
}

label_enum! {
    /// Result label of `relay_upgrades_total`.
    pub enum UpgradeResult {
        /// Upgraded; a call started.
        Accepted = "accepted",
        /// Refused with 503: `--max-calls` reached.
        RejectedCapacity = "rejected_capacity",
        /// Refused with 503: the relay is draining.
        RejectedDraining = "rejected_draining",
        /// Refused with 403: bad or missing carrier signature (or stream URL token).
        RejectedSignature = "rejected_signature",
        /// Refused with 400: not a valid WebSocket upgrade.
        BadRequest = "bad_request",
    }
}

label_enum! {
    /// How a tool call ended; the `result` label of `relay_tool_calls_total`.
    pub enum ToolResult {
        /// The webhook answered 2xx with `{"result": …}`.
        Ok = "ok",
        /// The webhook answered a non-2xx status.
        ErrorStatus = "error_status",
        /// The webhook's 2xx answer was not `{"result": …}` JSON.
        BadResponse = "bad_response",
        /// The webhook could not be reached (connect, TLS, HTTP failure).
        Unreachable = "unreachable",
        /// No answer within `--tool-timeout-ms`.
        Timeout = "timeout",
        /// No `RELAY_TOOL_WEBHOOK_URL` is configured.
        NotConfigured = "not_configured",
        /// The call used up its tool calls (`--max-tool-calls-per-call`).
        LimitReached = "limit_reached",
        /// The agent's arguments were not a JSON object.
        InvalidArguments = "invalid_arguments",
        /// A result not delivered: the agent no longer wanted it (AssemblyAI: its reply was
        /// interrupted), or too many results already waited for an agent not reading its
        /// socket (such a result may also have been counted once as refused).
        Discarded = "discarded",
    }
}

label_enum! {
    /// Per-call event counters (the `agent`-labelled families a call folds in).
    pub enum CallEventKind {
        /// `relay_barge_ins_total`: interruptions that sent the carrier a `clear`.
        BargeIn = "barge_in",
        /// `relay_dtmf_total`: keypad digits received from the carrier.
        DtmfDigit = "dtmf_digit",
        /// `relay_marks_total{result="played"}`.
        MarkPlayed = "mark_played",
        /// `relay_marks_total{result="flushed"}`.
        MarkFlushed = "mark_flushed",
        /// `relay_unknown_events_total{leg=<carrier>}`.
        UnknownCallerEvent = "unknown_caller_event",
        /// `relay_unknown_events_total{leg="agent"}`.
        UnknownAgentEvent = "unknown_agent_event",
    }
}

label_enum! {
    /// A per-agent histogram a call records into directly (rare events).
    pub enum Sample {
        /// `relay_turn_latency_seconds`.
        Turn = "turn",
        /// `relay_agent_turn_latency_seconds`.
        AgentTurn = "agent_turn",
        /// `relay_barge_in_latency_seconds`.
        BargeIn = "barge_in",
        /// `relay_playout_lag_seconds`.
        PlayoutLag = "playout_lag",
        /// `relay_agent_ping_rtt_seconds`.
        PingRtt = "ping_rtt",
        /// `relay_goodbye_cut_seconds`.
        GoodbyeCut = "goodbye_cut",
        /// `relay_agent_recovery_gap_seconds`.
        RecoveryGap = "recovery_gap",
    }
}

label_enum! {
    /// The `outcome` label of `relay_calls_total`: how a call ended (one per
    /// `call::EndReason` variant).
    pub enum Outcome {
        /// The carrier sent `stop`: the caller hung up (no relay action was in progress).
        CallerHangup = "caller_hangup",
        /// The carrier's socket closed (close frame or TCP end) without `stop`.
        CallerClosed = "caller_closed",
        /// The caller leg broke the protocol in a way that ends the call.
        CallerError = "caller_error",
        /// The carrier sent nothing for `--twilio-idle-timeout-secs` after `start`.
        CallerIdle = "caller_idle",
        /// The carrier's socket accepted nothing for `--write-stall-timeout-ms`.
        CallerStalled = "caller_stalled",
        /// The stream's media format is not G.711 μ-law 8000 Hz mono.
        MediaFormatUnsupported = "media_format_unsupported",
        /// The agent closed its socket.
        AgentClosed = "agent_closed",
        /// The agent ended the session cleanly (AssemblyAI `session.ended`).
        AgentEnded = "agent_ended",
        /// The agent leg failed after connecting.
        AgentError = "agent_error",
        /// The agent could not be connected, or did not report ready in time.
        AgentConnectFailed = "agent_connect_failed",
        /// The agent socket accepted nothing for `--write-stall-timeout-ms`.
        AgentStalled = "agent_stalled",
        /// The agent's audio formats are not μ-law 8 kHz both ways.
        AudioFormatMismatch = "audio_format_mismatch",
        /// No `start` arrived in time after the upgrade.
        StartTimeout = "start_timeout",
        /// The relay is shutting down: the drain deadline closed the call.
        Shutdown = "shutdown",
        /// The call reached `--max-call-duration-secs`.
        MaxDuration = "max_duration",
        /// The stream's `relay_token` was missing or wrong.
        TokenRejected = "token_rejected",
        /// A newer stream for the same call replaced this one.
        Replaced = "replaced",
        /// The agent ended the call (`end_call` from any source) and its goodbye was heard.
        AgentEndCall = "agent_end_call",
        /// The call was handed to a person (the carrier redirected it after the REST update).
        Transferred = "transferred",
        /// A transfer the call depended on (no agent to go back to) could not be placed.
        TransferFailed = "transfer_failed",
        /// An outbound call reached voicemail; the message was left and heard to its end.
        VoicemailLeft = "voicemail_left",
    }
}

label_enum! {
    /// What made the agent leg fail (logs and `/calls`, not a metric label).
    pub enum RecoveryCause {
        /// The socket closed without the dialect's end signal.
        Closed = "closed",
        /// The socket failed (reset, protocol error, write error).
        Reset = "reset",
        /// The socket accepted nothing within the write-stall timeout.
        Stalled = "stalled",
        /// The agent sent a fatal error.
        FatalError = "fatal_error",
        /// The agent said nothing for `--agent-response-timeout-ms` after the caller spoke.
        Silent = "silent",
        /// Connecting failed (at the call's start or during a recovery).
        ConnectFailed = "connect_failed",
        /// The agent connected but never became ready.
        ReadyTimeout = "ready_timeout",
        /// A proactive switch before the vendor's session cap.
        Rollover = "rollover",
    }
}

label_enum! {
    /// A post-call record: the `type` label of `relay_post_call_webhooks_total`.
    pub enum PostCallType {
        /// The call's transcript and figures, when it ends.
        PostCallTranscription = "post_call_transcription",
        /// Where the call's recording is, once it is complete.
        PostCallAudio = "post_call_audio",
        /// An outbound call that never started (busy, no answer, failed, canceled).
        CallInitiationFailure = "call_initiation_failure",
    }
}

label_enum! {
    /// What became of a post-call record: the `result` label of
    /// `relay_post_call_webhooks_total`.
    pub enum PostCallResult {
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// An attempt failed and another follows.
        Retried = "retried",
        /// Every attempt failed.
        Failed = "failed",
        /// The queue was full.
        Dropped = "dropped",
    }
}

label_enum! {
    /// How a recovery ended: the `result` label of `relay_agent_recoveries_total`.
    pub enum RecoveryResult {
        /// A new session took over.
        Recovered = "recovered",
        /// The deadline or the call's recoveries ran out.
        Exhausted = "exhausted",
        /// A proactive switch before the vendor's session cap.
        Rollover = "rollover",
    }
}

label_enum! {
    /// A call action: the `action` label of `relay_call_actions_total`.
    pub enum ActionKind {
        /// Hang up once the goodbye was heard.
        EndCall = "end_call",
        /// Hand the caller to a person.
        Transfer = "transfer",
        /// Pause the call's recording (PCI).
        PauseRecording = "pause_recording",
        /// Resume the call's recording.
        ResumeRecording = "resume_recording",
    }
}

label_enum! {
    /// Who asked for a call action: the `source` label of `relay_call_actions_total`.
    pub enum ActionSource {
        /// The relay's built-in `end_call` / `transfer_call` tool (AssemblyAI, OpenAI).
        BuiltinTool = "builtin_tool",
        /// An ElevenLabs system tool (`agent_tool_response`), or its clean close after one.
        SystemTool = "system_tool",
        /// An ElevenLabs client tool named `end_call` / `transfer_call`.
        ClientTool = "client_tool",
        /// The tool webhook's answer (`"action": {…}`).
        Webhook = "webhook",
        /// The caller pressed the operator key.
        Dtmf = "dtmf",
        /// The agent ended its session itself (AssemblyAI `session.ended`, a local agent).
        Agent = "agent",
        /// The relay, after recovery from an agent failure was exhausted.
        Recovery = "recovery",
        /// Answering-machine detection: the voicemail message was left.
        Amd = "amd",
    }
}

label_enum! {
    /// What became of a call action: the `result` label of `relay_call_actions_total`.
    pub enum ActionResult {
        /// Accepted; it runs once the agent's audio was heard.
        Accepted = "accepted",
        /// A transfer target that is neither a configured name nor an allowed number.
        UnknownTarget = "unknown_target",
        /// Another action is already in progress.
        InProgress = "in_progress",
        /// The carrier has no REST access for transfers (or no public host to sign URLs).
        Unavailable = "unavailable",
        /// The carrier's REST update failed or timed out.
        UpdateFailed = "update_failed",
        /// Caller speech cancelled an `end_call` (with `--end-call-cancel-on-speech`).
        Cancelled = "cancelled",
    }
}

label_enum! {
    /// How a transfer ended: the `result` label of `relay_transfers_total` (the carrier's
    /// `DialCallStatus`, or the relay's own REST failure).
    pub enum TransferResult {
        /// The person answered and the call was bridged.
        Completed = "completed",
        /// Busy.
        Busy = "busy",
        /// Nobody answered in time.
        NoAnswer = "no_answer",
        /// The dial failed.
        Failed = "failed",
        /// The dial was canceled.
        Canceled = "canceled",
        /// The relay's REST update of the call failed.
        UpdateFailed = "update_failed",
    }
}

impl TransferResult {
    /// The result for a carrier's `DialCallStatus` value (`answered` counts as completed;
    /// anything unknown as failed).
    pub fn from_dial_status(s: &str) -> TransferResult {
        match s {
            "completed" | "answered" => TransferResult::Completed,
            "busy" => TransferResult::Busy,
            "no-answer" => TransferResult::NoAnswer,
            "canceled" => TransferResult::Canceled,
            _ => TransferResult::Failed,
        }
    }
}

/// Declares [`ErrorKind`]: each kind with its label and the legs it can happen on.
macro_rules! error_kinds {
    ( $( $(#[$vmeta:meta])* $variant:ident = $label:literal [$($leg:ident),+] ),+ $(,)? ) => {
        label_enum! {
            /// Every `kind` of `relay_errors_total`. Each error enum's `kind()` returns one.
            pub enum ErrorKind {
                $( $(#[$vmeta])* $variant = $label ),+
            }
        }

        impl ErrorKind {
            /// The legs this kind can happen on (its `relay_errors_total` series at start).
            pub fn legs(self) -> &'static [Leg] {
                match self {
                    $( ErrorKind::$variant => &[$(Leg::$leg),+] ),+
                }
            }
        }
    };
}

error_kinds! {
    // framing (wire::ws::ReadError)
    /// A WebSocket message over the leg's size limit.
    MessageTooLarge = "message_too_large" [Caller, Agent],
    /// A WebSocket protocol violation (RFC 6455).
    WebsocketProtocol = "websocket_protocol" [Caller, Agent],
    /// A text frame that is not UTF-8.
    InvalidUtf8 = "invalid_utf8" [Caller, Agent],
    /// A socket read or write error.
    Io = "io" [Caller, Agent],
    /// A socket write failed.
    WriteFailed = "write_failed" [Caller, Agent],
    /// A binary frame where the protocol sends text.
    BinaryFrame = "binary_frame" [Caller, Agent],
    // messages
    /// Not valid JSON.
    MalformedJson = "malformed_json" [Caller, Agent],
    /// A carrier message without `event`.
    MissingEvent = "missing_event" [Caller],
    /// An agent message without `type`.
    MissingType = "missing_type" [Agent],
    /// A known message without a field the relay needs.
    MissingField = "missing_field" [Caller, Agent],
    /// A stream id that is not a valid identifier.
    InvalidStreamSid = "invalid_stream_sid" [Caller],
    /// A call id that is not a valid identifier.
    InvalidCallSid = "invalid_call_sid" [Caller],
    /// Audio that is not valid base64.
    InvalidBase64 = "invalid_base64" [Caller, Agent],
    /// A `media` message with no audio.
    EmptyPayload = "empty_payload" [Caller],
    /// A `dtmf` digit that is not a keypad character.
    InvalidDtmf = "invalid_dtmf" [Caller],
    /// `media` before `start`.
    MediaBeforeStart = "media_before_start" [Caller],
    /// A second `start` on one stream.
    DuplicateStart = "duplicate_start" [Caller],
    /// A media format other than G.711 μ-law 8000 Hz mono.
    MediaFormatUnsupported = "media_format_unsupported" [Caller],
    /// A carrier `error` event on the stream.
    CarrierErrorEvent = "carrier_error_event" [Caller],
    /// Frames dropped because the carrier's reordering window overflowed.
    OutOfOrder = "out_of_order" [Caller],
    // signatures and stream tokens (auth)
    /// No signature header.
    SignatureMissing = "signature_missing" [Caller],
    /// The signature does not match.
    SignatureMismatch = "signature_mismatch" [Caller],
    /// The signature header is not in the expected form.
    SignatureMalformed = "signature_malformed" [Caller],
    /// A signed request's timestamp is outside the tolerance.
    SignatureStale = "signature_stale" [Caller],
    /// A JSON webhook without `bodySHA256`.
    BodyHashMissing = "body_hash_missing" [Caller],
    /// A JSON webhook whose body does not match `bodySHA256`.
    BodyHashMismatch = "body_hash_mismatch" [Caller],
    /// The stream has no `relay_token`.
    TokenMissing = "token_missing" [Caller],
    /// The stream's `relay_token` does not match its call.
    TokenInvalid = "token_invalid" [Caller],
    /// A relay-signed URL whose signature is missing or wrong.
    OutboundUrlSignature = "outbound_url_signature" [Caller],
    /// A relay-signed URL that has expired.
    OutboundUrlExpired = "outbound_url_expired" [Caller],
    /// A transfer's dial-result URL posted for another call than it was signed for.
    TransferUrlWrongCall = "transfer_url_wrong_call" [Caller],
    // the agent leg
    /// The agent's audio formats are not μ-law 8 kHz both ways.
    AudioFormatMismatch = "audio_format_mismatch" [Agent],
    /// The agent reported an error event.
    AgentErrorEvent = "agent_error_event" [Agent],
    /// The call named an agent this relay does not know.
    UnknownAgent = "unknown_agent" [Agent],
    /// The call named an agent this relay has no settings for.
    AgentNotConfigured = "agent_not_configured" [Agent],
    /// The agent did not report ready in time.
    ReadyTimeout = "ready_timeout" [Agent],
    // connecting (agent connect errors, wire::net::NetError)
    /// A configured or returned URL is not valid.
    InvalidUrl = "invalid_url" [Agent],
    /// TCP connect failed.
    Connect = "connect" [Agent],
    /// The TLS handshake failed.
    Tls = "tls" [Agent],
    /// An HTTP exchange failed.
    Http = "http" [Agent],
    /// An HTTP answer over its size limit.
    BodyTooLarge = "body_too_large" [Agent],
    /// An HTTP exchange took too long.
    Timeout = "timeout" [Agent],
    /// The signed-URL endpoint answered a non-200 status.
    SignedUrlStatus = "signed_url_status" [Agent],
    /// The signed-URL answer had no usable `signed_url`.
    SignedUrlBody = "signed_url_body" [Agent],
    /// The WebSocket handshake failed.
    Handshake = "handshake" [Agent],
    /// The server's `Sec-WebSocket-Accept` did not match.
    BadAccept = "bad_accept" [Agent],
    /// Connecting took longer than the configured timeout.
    ConnectTimeout = "connect_timeout" [Agent],
    // the relay itself
    /// An upgraded connection was not the TCP stream expected.
    UpgradeDowncast = "upgrade_downcast" [Internal],
    /// A call socket could not be moved to io_uring (`--runtime uring`).
    UringSocket = "uring_socket" [Internal],
}

label_enum! {
    /// The `result` label of `relay_stream_tokens_total`.
    pub enum TokenResult {
        /// The token matched the call.
        Valid = "valid",
        /// No token.
        TokenMissing = "token_missing",
        /// A token for another call, or forged.
        TokenInvalid = "token_invalid",
    }
}

label_enum! {
    /// The `reason` label of `relay_http_connections_rejected_total`.
    pub enum HttpRejectReason {
        /// Too many connections pending (`--max-pending-connections`).
        Limit = "limit",
        /// The request head did not arrive in time.
        HeaderTimeout = "header_timeout",
        /// A webhook body did not arrive in time.
        BodyTimeout = "body_timeout",
    }
}

label_enum! {
    /// `CallStatus` values of carrier call-status callbacks (Twilio Call resource status
    /// callbacks, <https://www.twilio.com/docs/voice/api/call-resource>; Telnyx TeXML uses the
    /// same values): the `status` label of `relay_call_status_callbacks_total`.
    pub enum CallStatus {
        /// `queued`.
        Queued = "queued",
        /// `initiated`.
        Initiated = "initiated",
        /// `ringing`.
        Ringing = "ringing",
        /// `in-progress`.
        InProgress = "in-progress",
        /// `completed`.
        Completed = "completed",
        /// `busy`.
        Busy = "busy",
        /// `failed`.
        Failed = "failed",
        /// `no-answer`.
        NoAnswer = "no-answer",
        /// `canceled`.
        Canceled = "canceled",
        /// Anything else.
        Other = "other",
    }
}

label_enum! {
    /// `StreamEvent` values of stream status callbacks (Twilio `<Stream>` statusCallback,
    /// <https://www.twilio.com/docs/voice/twiml/stream>; Telnyx TeXML adds `stream-failed`):
    /// the `event` label of `relay_stream_status_callbacks_total`.
    pub enum StreamEvent {
        /// `stream-started`.
        Started = "stream-started",
        /// `stream-stopped`.
        Stopped = "stream-stopped",
        /// `stream-error`.
        Error = "stream-error",
        /// `stream-failed` (Telnyx).
        Failed = "stream-failed",
        /// Anything else.
        Other = "other",
    }
}

/// `value`'s variant in a set that has an `other` catch-all, else that catch-all.
pub fn bounded<T: Copy>(all: &[T], label: impl Fn(T) -> &'static str, value: &str, other: T) -> T {
    all.iter()
        .copied()
        .find(|v| label(*v) == value)
        .unwrap_or(other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_are_unique() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(all: &[T], s: impl Fn(T) -> &'static str) {
            let mut seen = std::collections::HashSet::new();
            for v in all {
                assert!(seen.insert(s(*v)), "duplicate label {}", s(*v));
                let l = s(*v);
                assert!(
                    l.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'_'
                        || b == b'-'),
                    "{l}"
                );
            }
        }
        check(ErrorKind::ALL, ErrorKind::as_str);
        check(Outcome::ALL, Outcome::as_str);
        check(DropReason::ALL, DropReason::as_str);
        check(ToolResult::ALL, ToolResult::as_str);
        check(CallStatus::ALL, CallStatus::as_str);
        check(StreamEvent::ALL, StreamEvent::as_str);
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_label(k.as_str()), Some(*k));
            assert!(!k.legs().is_empty());
        }
        assert_eq!(ErrorKind::from_label("nope"), None);
    }

    #[test]
    fn indexes_follow_the_label_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        for (i, k) in Outcome::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn unknown_values_fall_into_other() {
        let s = bounded(
            CallStatus::ALL,
            CallStatus::as_str,
            "RINGING",
            CallStatus::Other,
        );
        assert_eq!(s, CallStatus::Other);
        let s = bounded(
            CallStatus::ALL,
            CallStatus::as_str,
            "ringing",
            CallStatus::Other,
        );
        assert_eq!(s, CallStatus::Ringing);
        let e = bounded(
            StreamEvent::ALL,
            StreamEvent::as_str,
            "",
            StreamEvent::Other,
        );
        assert_eq!(e, StreamEvent::Other);
    }
}

label_enum! {
    /// How a recording ended: the `result` label of `relay_recordings_total`.
    pub enum RecordingResult {
        /// Every block was written.
        Complete = "complete",
        /// Written, with lost blocks as silence (the writer fell behind) or agent audio
        /// beyond the recording's bound left out.
        Degraded = "degraded",
        /// Not written (the directory or file could not be written), or not uploaded.
        Failed = "failed",
    }
}

label_enum! {
    /// What became of a recording upload attempt: the `result` label of
    /// `relay_recording_uploads_total`.
    pub enum UploadResult {
        /// The object is stored.
        Uploaded = "uploaded",
        /// An attempt failed and another follows.
        Retried = "retried",
        /// Every attempt failed: the file stays in the recording directory.
        Failed = "failed",
    }
}

label_enum! {
    /// Twilio's answering-machine verdict, `AnsweredBy`
    /// (<https://www.twilio.com/docs/voice/answering-machine-detection>): the `answered_by`
    /// label of `relay_amd_total`.
    pub enum AnsweredBy {
        /// A person.
        Human = "human",
        /// A machine, detected at the start of its greeting (`Enable`).
        MachineStart = "machine_start",
        /// A machine, its greeting ended with a beep (`DetectMessageEnd`).
        MachineEndBeep = "machine_end_beep",
        /// A machine, its greeting ended in silence.
        MachineEndSilence = "machine_end_silence",
        /// A machine, its greeting ended otherwise.
        MachineEndOther = "machine_end_other",
        /// A fax machine.
        Fax = "fax",
        /// Undecided.
        Unknown = "unknown",
        /// Any other value.
        Other = "other",
    }
}

impl AnsweredBy {
    /// Whether the greeting of a machine has ended: leave the voicemail message now.
    pub fn leave_message(self) -> bool {
        matches!(
            self,
            AnsweredBy::MachineEndBeep
                | AnsweredBy::MachineEndSilence
                | AnsweredBy::MachineEndOther
        )
    }
}
