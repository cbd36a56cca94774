//! Every metric family the relay exports, in one table: name, type, unit and HELP text.
//! Registration (`obs::metrics`) and the HELP lines both read it, so a family's name is
//! written once; a typo at a call site cannot create an undocumented family because call
//! sites hold handles, never names.
//!
//! Naming follows Prometheus conventions: base units in the name (`_seconds`, `_bytes`),
//! `_total` on counters, bounded label values only (no call or stream ids).

use metrics::Unit;

/// What kind of series a family holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A Prometheus histogram (classic `le` buckets).
    Histogram,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The exported name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: FamilyKind,
    /// Unit, when the value has one (seconds, bytes).
    pub unit: Option<Unit>,
    /// The HELP text.
    pub help: &'static str,
}

macro_rules! families {
    ( $( $(#[$m:meta])* $const:ident = $name:literal, $kind:ident, $unit:expr, $help:literal; )+ ) => {
        $( $(#[$m])* pub const $const: Family = Family {
            name: $name, kind: FamilyKind::$kind, unit: $unit, help: $help,
        }; )+
        /// Every family, in the order `/metrics` describes them.
        pub const ALL: &[Family] = &[$($const),+];
    };
}

families! {
    /// `relay_calls_active`.
    CALLS_ACTIVE = "relay_calls_active", Gauge, None, "Calls in progress.";
    /// `relay_calls_max`.
    CALLS_MAX = "relay_calls_max", Gauge, None,
        "The admission limit (--max-calls): upgrades beyond it get 503.";
    /// `relay_draining`.
    DRAINING = "relay_draining", Gauge, None, "1 while the relay drains after SIGTERM, else 0.";
    /// `relay_runtime_tasks_alive`.
    TASKS_ALIVE = "relay_runtime_tasks_alive", Gauge, None,
        "Tokio tasks alive: one per call and per HTTP connection, plus a few of the relay's own.";
    /// `relay_build_info`.
    BUILD_INFO = "relay_build_info", Gauge, None,
        "Always 1; the version label gives the relay's version.";
    /// `relay_calls_total{outcome}`.
    CALLS_TOTAL = "relay_calls_total", Counter, None, "Calls ended, by outcome.";
    /// `relay_calls_started_total{agent}`.
    CALLS_STARTED = "relay_calls_started_total", Counter, None, "Calls that sent start, by agent.";
    /// `relay_carrier_calls_started_total{carrier}`.
    CARRIER_CALLS_STARTED = "relay_carrier_calls_started_total", Counter, None,
        "Calls that sent start, by carrier (twilio, telnyx).";
    /// `relay_call_duration_seconds`.
    CALL_DURATION = "relay_call_duration_seconds", Histogram, Some(Unit::Seconds),
        "Call duration from upgrade to end.";
    /// `relay_frames_total{direction}`.
    FRAMES = "relay_frames_total", Counter, None, "Audio frames relayed, by direction.";
    /// `relay_audio_bytes_total{direction}`.
    AUDIO_BYTES = "relay_audio_bytes_total", Counter, Some(Unit::Bytes),
        "μ-law audio bytes relayed (8000 = 1 s).";
    /// `relay_frames_dropped_total{direction,reason}`.
    FRAMES_DROPPED = "relay_frames_dropped_total", Counter, None,
        "Frames dropped, by direction and reason.";
    /// `relay_errors_total{leg,kind}`.
    ERRORS = "relay_errors_total", Counter, None, "Errors, by leg and kind.";
    /// `relay_unknown_events_total{agent,leg}`.
    UNKNOWN_EVENTS = "relay_unknown_events_total", Counter, None,
        "Messages of unknown type, tolerated and skipped, by agent and leg.";
    /// `relay_forward_latency_seconds{direction}` (rendered by `obs::latency`).
    FORWARD_LATENCY = "relay_forward_latency_seconds", Histogram, Some(Unit::Seconds),
        "Relay-added latency per frame: fully read to written to the other leg's socket.";
    /// `relay_inbound_jitter_seconds` (rendered by `obs::latency`).
    INBOUND_JITTER = "relay_inbound_jitter_seconds", Histogram, Some(Unit::Seconds),
        "How far the inter-arrival time of carrier media messages deviates from 20 ms.";
    /// `relay_call_forward_latency_p99_seconds{direction}`.
    CALL_FORWARD_LATENCY_P99 = "relay_call_forward_latency_p99_seconds", Histogram,
        Some(Unit::Seconds),
        "Each ended call's p99 relay-added latency, by direction (one observation per call).";
    /// `relay_inbound_frames_missing_total`.
    FRAMES_MISSING = "relay_inbound_frames_missing_total", Counter, None,
        "Carrier media frames missing according to gaps in media.chunk.";
    /// `relay_agent_connect_duration_seconds{agent}`.
    AGENT_CONNECT_DURATION = "relay_agent_connect_duration_seconds", Histogram,
        Some(Unit::Seconds),
        "Agent connect time (signed URL, TCP, TLS, WebSocket upgrade), by agent.";
    /// `relay_agent_connects_total{agent,result}`.
    AGENT_CONNECTS = "relay_agent_connects_total", Counter, None,
        "Agent connection attempts, by agent and result (ok, failed).";
    /// `relay_turn_latency_seconds{agent}`.
    TURN_LATENCY = "relay_turn_latency_seconds", Histogram, Some(Unit::Seconds),
        "Turn latency as the relay measures it: the caller stops speaking (μ-law energy) to the first agent audio of the reply written to the carrier, by agent.";
    /// `relay_agent_turn_latency_seconds{agent}`.
    AGENT_TURN_LATENCY = "relay_agent_turn_latency_seconds", Histogram, Some(Unit::Seconds),
        "Turn latency from the agent's own end-of-speech event to the first agent audio of the reply written to the carrier, by agent.";
    /// `relay_call_turn_latency_p95_seconds{agent}`.
    CALL_TURN_LATENCY_P95 = "relay_call_turn_latency_p95_seconds", Histogram,
        Some(Unit::Seconds),
        "Each ended call's p95 turn latency (relay-measured), by agent (one observation per call with turns).";
    /// `relay_barge_in_latency_seconds{agent}`.
    BARGE_IN_LATENCY = "relay_barge_in_latency_seconds", Histogram, Some(Unit::Seconds),
        "The agent's interruption signal read to the clear written to the carrier, by agent.";
    /// `relay_playout_lag_seconds{agent}`.
    PLAYOUT_LAG = "relay_playout_lag_seconds", Histogram, Some(Unit::Seconds),
        "Mark sent to the carrier to mark echoed as played, by agent.";
    /// `relay_agent_ping_rtt_seconds{agent}`.
    AGENT_PING_RTT = "relay_agent_ping_rtt_seconds", Histogram, Some(Unit::Seconds),
        "Round-trip time the agent reports for its keepalive pings, by agent.";
    /// `relay_upgrades_total{result}`.
    UPGRADES = "relay_upgrades_total", Counter, None,
        "Media WebSocket upgrade attempts, by result.";
    /// `relay_marks_total{agent,result}`.
    MARKS = "relay_marks_total", Counter, None,
        "Carrier mark echoes, by agent and result (played, flushed).";
    /// `relay_playout_audio_bytes_total{result}`.
    PLAYOUT_AUDIO_BYTES = "relay_playout_audio_bytes_total", Counter, Some(Unit::Bytes),
        "Agent audio confirmed played or flushed.";
    /// `relay_barge_ins_total{agent}`.
    BARGE_INS = "relay_barge_ins_total", Counter, None,
        "Interruptions that sent the carrier a clear, by agent.";
    /// `relay_dtmf_total{agent}`.
    DTMF = "relay_dtmf_total", Counter, None, "DTMF digits received, by agent.";
    /// `relay_tool_calls_total{agent,result}`.
    TOOL_CALLS = "relay_tool_calls_total", Counter, None,
        "Tool calls agents asked the relay to run, by agent and result.";
    /// `relay_streams_unauthenticated_total`.
    STREAMS_UNAUTHENTICATED = "relay_streams_unauthenticated_total", Counter, None,
        "Streams admitted without signature validation.";
    /// `relay_duplicate_streams_total`.
    DUPLICATE_STREAMS = "relay_duplicate_streams_total", Counter, None,
        "Streams that replaced a live stream of the same call.";
    /// `relay_stream_tokens_total{result}`.
    STREAM_TOKENS = "relay_stream_tokens_total", Counter, None,
        "Stream token checks at start, by result.";
    /// `relay_outbound_calls_total{result}`.
    OUTBOUND_CALLS = "relay_outbound_calls_total", Counter, None,
        "POST /outbound-call requests, by result.";
    /// `relay_call_status_callbacks_total{status}`.
    CALL_STATUS_CALLBACKS = "relay_call_status_callbacks_total", Counter, None,
        "Carrier call status callbacks, by CallStatus.";
    /// `relay_stream_status_callbacks_total{event}`.
    STREAM_STATUS_CALLBACKS = "relay_stream_status_callbacks_total", Counter, None,
        "Carrier stream status callbacks, by StreamEvent.";
    /// `relay_http_connections_rejected_total{reason}`.
    HTTP_CONNECTIONS_REJECTED = "relay_http_connections_rejected_total", Counter, None,
        "HTTP connections closed before a request completed, by reason (limit, header_timeout, body_timeout).";
    /// `relay_http_connections_pending`.
    HTTP_CONNECTIONS_PENDING = "relay_http_connections_pending", Gauge, None,
        "HTTP connections accepted that have not been upgraded or closed.";
    /// `relay_call_actions_total{action,source,result}`.
    CALL_ACTIONS = "relay_call_actions_total", Counter, None,
        "Call actions (end_call, transfer) asked for, by action, source and result.";
    /// `relay_transfers_total{result}`.
    TRANSFERS = "relay_transfers_total", Counter, None,
        "Transfers to a person, by result (the carrier's DialCallStatus, or update_failed).";
    /// `relay_goodbye_cut_seconds{agent}`.
    GOODBYE_CUT = "relay_goodbye_cut_seconds", Histogram, Some(Unit::Seconds),
        "Agent audio sent but not yet played when a call ended by a call action closed its stream, by agent.";
    /// `relay_agent_recoveries_total{agent,result}`.
    AGENT_RECOVERIES = "relay_agent_recoveries_total", Counter, None,
        "Agent-leg recoveries by agent and result (recovered, exhausted, rollover).";
    /// `relay_agent_recovery_gap_seconds{agent}`.
    AGENT_RECOVERY_GAP = "relay_agent_recovery_gap_seconds", Histogram, Some(Unit::Seconds),
        "The gap the caller heard across an agent recovery: last agent audio before the failure to the first after it, by agent.";
    /// `relay_post_call_webhooks_total{type,result}`.
    POST_CALL_WEBHOOKS = "relay_post_call_webhooks_total", Counter, None,
        "Post-call webhook records by type and result (delivered, retried, failed, dropped).";
    /// `relay_amd_total{answered_by}`.
    AMD = "relay_amd_total", Counter, None,
        "Answering-machine verdicts of outbound calls (Twilio AnsweredBy), counted when the carrier fetched the call's markup.";
    /// `relay_recordings_total{result}`.
    RECORDINGS = "relay_recordings_total", Counter, None,
        "Call recordings finished, by result (complete, degraded, failed).";
    /// `relay_recording_uploads_total{result}`.
    RECORDING_UPLOADS = "relay_recording_uploads_total", Counter, None,
        "Recording uploads to object storage by result (uploaded, retried, failed).";
    /// `relay_recording_bytes_total`.
    RECORDING_BYTES = "relay_recording_bytes_total", Counter, Some(Unit::Bytes),
        "Audio bytes written to call recordings (both channels).";
    /// `relay_recording_blocks_dropped_total`.
    RECORDING_BLOCKS_DROPPED = "relay_recording_blocks_dropped_total", Counter, None,
        "Half-second recording blocks the writer's queue could not take (written as silence; the recording is degraded).";
    /// `relay_drain_notices_total`.
    DRAIN_NOTICES = "relay_drain_notices_total", Counter, None,
        "Calls that heard the drain notice before the drain deadline closed them.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for f in ALL {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(f.name.starts_with("relay_"), "{}", f.name);
            match f.kind {
                FamilyKind::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                FamilyKind::Gauge | FamilyKind::Histogram => {
                    assert!(!f.name.ends_with("_total"), "{}", f.name)
                }
            }
            if f.unit == Some(Unit::Seconds) {
                assert!(f.name.ends_with("_seconds"), "{}", f.name);
            }
            assert!(!f.help.is_empty());
        }
    }
}
