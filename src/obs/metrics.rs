//! Prometheus metrics: every family the relay exports, registered once per server against
//! its own recorder (no global recorder, so several relays can live in one test process).
//!
//! Owns the names, HELP texts, units, the label sets (closed enums and constant lists), the
//! histogram buckets, and rendering for `GET /metrics`. Every series a closed label set
//! allows is created at 0 when the relay starts, so the first event of every kind is seen by
//! `rate()` and `increase()` (a series that appears with its first increment hides that
//! increment from Prometheus).
//!
//! Per-frame counting does not happen here: calls accumulate in [`CallMetrics`] and fold
//! batches in ([`CallMetrics::fold`]); a contended histogram observation costs hundreds of
//! nanoseconds, a local increment a few.

use crate::obs::latency::{FrameHistogram, LatencyHistogram};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::sync::Arc;

static META: Metadata<'static> = Metadata::new("media_relay", Level::INFO, Some("media_relay"));

/// Direction of a frame through the relay; the `direction` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Caller audio: Twilio → agent.
    TwilioToAgent = 0,
    /// Agent audio: agent → Twilio.
    AgentToTwilio = 1,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::TwilioToAgent, Direction::AgentToTwilio];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::TwilioToAgent => "twilio_to_agent",
            Direction::AgentToTwilio => "agent_to_twilio",
        }
    }
}

/// Which side an error came from; the `leg` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The Twilio WebSocket (or a Twilio webhook).
    Twilio = 0,
    /// The agent WebSocket (or its HTTP setup).
    Agent = 1,
    /// The relay itself.
    Internal = 2,
}

impl Leg {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Twilio => "twilio",
            Leg::Agent => "agent",
            Leg::Internal => "internal",
        }
    }
}

/// Every `kind` of `relay_errors_total`, per leg: the closed label set (each comes from an
/// error enum's `kind()` or a fixed string in the call machine). Both error counters
/// debug-assert membership, so a test that reaches a new kind fails until it is listed here.
pub const ERROR_KINDS: [(Leg, &[&str]); 3] = [
    (
        Leg::Twilio,
        &[
            // framing (wire::ws::ReadError)
            "message_too_large",
            "websocket_protocol",
            "invalid_utf8",
            "io",
            // messages (twilio::codec::DecodeError and the machine)
            "malformed_json",
            "missing_event",
            "missing_field",
            "invalid_stream_sid",
            "invalid_call_sid",
            "invalid_base64",
            "empty_payload",
            "invalid_dtmf",
            "binary_frame",
            "media_before_start",
            "duplicate_start",
            "media_format_unsupported",
            // signatures and stream tokens (auth)
            "signature_missing",
            "signature_mismatch",
            "signature_malformed",
            "body_hash_missing",
            "body_hash_mismatch",
            "token_missing",
            "token_invalid",
            "outbound_url_signature",
            "outbound_url_expired",
        ],
    ),
    (
        Leg::Agent,
        &[
            "message_too_large",
            "websocket_protocol",
            "invalid_utf8",
            "io",
            "malformed_json",
            "missing_type",
            "missing_field",
            "invalid_base64",
            "binary_frame",
            "audio_format_mismatch",
            "agent_error_event",
            // connecting (agent::connect::ConnectError, wire::net::NetError)
            "invalid_url",
            "connect",
            "tls",
            "http",
            "body_too_large",
            "timeout",
            "signed_url_status",
            "signed_url_body",
            "handshake",
            "bad_accept",
            "connect_timeout",
            "agent_not_configured",
            "ready_timeout",
        ],
    ),
    (Leg::Internal, &["upgrade_downcast"]),
];

/// The `agent` label values, indexed by `AgentKind as usize` (a test in `agent` keeps them
/// in step with `AgentKind::ALL`: `agent_labels_follow_agent_kinds`).
pub const AGENT_LABELS: [&str; 4] = ["elevenlabs", "assemblyai", "openai", "echo"];

/// The `outcome` label values of `relay_calls_total` (a test in `call` checks that every
/// `EndReason` maps into this list).
pub const CALL_OUTCOMES: [&str; 17] = [
    "twilio_stop",
    "twilio_closed",
    "twilio_error",
    "twilio_idle",
    "twilio_stalled",
    "media_format_unsupported",
    "agent_closed",
    "agent_ended",
    "agent_error",
    "agent_connect_failed",
    "agent_stalled",
    "audio_format_mismatch",
    "start_timeout",
    "shutdown",
    "max_duration",
    "token_rejected",
    "replaced",
];

/// Reasons a frame is dropped; the `reason` label of `relay_frames_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Caller audio buffered while the agent connected overflowed; oldest dropped.
    EarlyBufferFull = 0,
    /// A leg's outbox reached its byte cap (its socket is not keeping up); oldest dropped.
    OutboxFull = 1,
    /// Agent audio of a reply the caller interrupted.
    Interrupted = 2,
    /// The echo agent's delay queue overflowed; oldest dropped.
    EchoQueueFull = 3,
    /// Agent audio dropped while a closing call plays the drain notice (the notice replaces
    /// the agent's voice; caller audio still reaches the agent).
    Draining = 4,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 5] = [
        DropReason::EarlyBufferFull,
        DropReason::OutboxFull,
        DropReason::Interrupted,
        DropReason::EchoQueueFull,
        DropReason::Draining,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::EarlyBufferFull => "early_buffer_full",
            DropReason::OutboxFull => "outbox_full",
            DropReason::Interrupted => "interrupted",
            DropReason::EchoQueueFull => "echo_queue_full",
            DropReason::Draining => "draining",
        }
    }
}

/// Result label of `relay_upgrades_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResult {
    /// Upgraded; a call started.
    Accepted,
    /// Refused with 503: `--max-calls` reached.
    RejectedCapacity,
    /// Refused with 503: the relay is draining.
    RejectedDraining,
    /// Refused with 403: bad or missing Twilio signature.
    RejectedSignature,
    /// Refused with 400: not a valid WebSocket upgrade.
    BadRequest,
}

impl UpgradeResult {
    /// Every result.
    pub const ALL: [UpgradeResult; 5] = [
        UpgradeResult::Accepted,
        UpgradeResult::RejectedCapacity,
        UpgradeResult::RejectedDraining,
        UpgradeResult::RejectedSignature,
        UpgradeResult::BadRequest,
    ];
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeResult::Accepted => "accepted",
            UpgradeResult::RejectedCapacity => "rejected_capacity",
            UpgradeResult::RejectedDraining => "rejected_draining",
            UpgradeResult::RejectedSignature => "rejected_signature",
            UpgradeResult::BadRequest => "bad_request",
        }
    }
}

/// How a tool call ended; the `result` label of `relay_tool_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolResult {
    /// The webhook answered 2xx with `{"result": …}`.
    Ok = 0,
    /// The webhook answered a non-2xx status.
    ErrorStatus = 1,
    /// The webhook's 2xx answer was not `{"result": …}` JSON.
    BadResponse = 2,
    /// The webhook could not be reached (connect, TLS, HTTP failure).
    Unreachable = 3,
    /// No answer within `--tool-timeout-ms`.
    Timeout = 4,
    /// No `RELAY_TOOL_WEBHOOK_URL` is configured.
    NotConfigured = 5,
    /// The call used up its tool calls (`--max-tool-calls-per-call`).
    LimitReached = 6,
    /// The agent's arguments were not a JSON object.
    InvalidArguments = 7,
    /// A result not delivered: the agent no longer wanted it (AssemblyAI: its reply was
    /// interrupted), or too many results already waited for an agent not reading its socket
    /// (`MAX_TOOL_RESULTS_WAITING`; such a result may also have been counted once as
    /// refused, e.g. `limit_reached`).
    Discarded = 8,
}

impl ToolResult {
    /// Every result.
    pub const ALL: [ToolResult; 9] = [
        ToolResult::Ok,
        ToolResult::ErrorStatus,
        ToolResult::BadResponse,
        ToolResult::Unreachable,
        ToolResult::Timeout,
        ToolResult::NotConfigured,
        ToolResult::LimitReached,
        ToolResult::InvalidArguments,
        ToolResult::Discarded,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolResult::Ok => "ok",
            ToolResult::ErrorStatus => "error_status",
            ToolResult::BadResponse => "bad_response",
            ToolResult::Unreachable => "unreachable",
            ToolResult::Timeout => "timeout",
            ToolResult::NotConfigured => "not_configured",
            ToolResult::LimitReached => "limit_reached",
            ToolResult::InvalidArguments => "invalid_arguments",
            ToolResult::Discarded => "discarded",
        }
    }
}

/// Per-call event counters (the `agent`-labelled families a call folds in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEventKind {
    /// `relay_barge_ins_total`: interruptions that sent Twilio a `clear`.
    BargeIn = 0,
    /// `relay_dtmf_total`: keypad digits received from Twilio.
    DtmfDigit = 1,
    /// `relay_marks_total{result="played"}`.
    MarkPlayed = 2,
    /// `relay_marks_total{result="flushed"}`.
    MarkFlushed = 3,
    /// `relay_unknown_events_total{leg="twilio"}`.
    UnknownTwilioEvent = 4,
    /// `relay_unknown_events_total{leg="agent"}`.
    UnknownAgentEvent = 5,
}

const CALL_EVENT_KINDS: usize = 6;

/// Buckets (seconds) of `relay_forward_latency_seconds` and
/// `relay_call_forward_latency_p99_seconds`: powers of two of microseconds (and 1.5×) from
/// 32 µs to 131 ms, on [`LatencyHistogram`] bucket edges so batched folding keeps bucket
/// counts exact.
pub const FORWARD_LATENCY_BUCKETS: [f64; 15] = [
    0.000_032, 0.000_064, 0.000_128, 0.000_256, 0.000_512, 0.000_768, 0.001_024, 0.001_536,
    0.002_048, 0.004_096, 0.008_192, 0.016_384, 0.032_768, 0.065_536, 0.131_072,
];

/// Buckets (seconds) of `relay_inbound_jitter_seconds`: deviation of Twilio's media
/// inter-arrival from 20 ms, 0.5 ms to 0.5 s, on [`LatencyHistogram`] edges.
pub const JITTER_BUCKETS: [f64; 11] = [
    0.000_512, 0.001_024, 0.002_048, 0.004_096, 0.008_192, 0.016_384, 0.032_768, 0.065_536,
    0.131_072, 0.262_144, 0.524_288,
];

/// Buckets (seconds) of `relay_agent_connect_duration_seconds`.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets (seconds) of `relay_call_duration_seconds`: 1 s to 2 h in steps a person reads
/// (15 s, 30 s, 1, 2, 3, 5, 10, 15, 20, 30, 45 min, 1, 1.5, 2 h).
pub const CALL_DURATION_BUCKETS: [f64; 20] = [
    1.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0,
    1800.0, 2700.0, 3600.0, 5400.0, 7200.0,
];

/// Buckets (seconds) of the turn latencies (caller stops speaking → first agent audio to
/// Twilio) and of `relay_call_turn_latency_p95_seconds`; 1.5 s is an edge, so the share of
/// calls over it is exact.
pub const TURN_BUCKETS: [f64; 17] = [
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
];

/// Buckets (seconds) of `relay_barge_in_latency_seconds` (interruption signal → `clear`
/// written to Twilio).
pub const BARGE_IN_BUCKETS: [f64; 13] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets (seconds) of `relay_playout_lag_seconds` (mark sent → echoed as played: the
/// audio queued at Twilio ahead of the mark, plus the network).
pub const PLAYOUT_LAG_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
];

/// Buckets (seconds) of `relay_agent_ping_rtt_seconds`.
pub const PING_RTT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];

/// Histogram families kept by the exporter, and their buckets (the per-frame families
/// `relay_forward_latency_seconds` and `relay_inbound_jitter_seconds` are [`FrameHistogram`]s
/// of our own, see `obs::latency`).
const HISTOGRAMS: [(&str, &[f64]); 9] = [
    (
        "relay_call_forward_latency_p99_seconds",
        &FORWARD_LATENCY_BUCKETS,
    ),
    ("relay_agent_connect_duration_seconds", &CONNECT_BUCKETS),
    ("relay_call_duration_seconds", &CALL_DURATION_BUCKETS),
    ("relay_turn_latency_seconds", &TURN_BUCKETS),
    ("relay_agent_turn_latency_seconds", &TURN_BUCKETS),
    ("relay_call_turn_latency_p95_seconds", &TURN_BUCKETS),
    ("relay_barge_in_latency_seconds", &BARGE_IN_BUCKETS),
    ("relay_playout_lag_seconds", &PLAYOUT_LAG_BUCKETS),
    ("relay_agent_ping_rtt_seconds", &PING_RTT_BUCKETS),
];

/// Label values of `relay_stream_tokens_total{result}`.
pub const STREAM_TOKEN_RESULTS: [&str; 3] = ["valid", "token_missing", "token_invalid"];

/// Per-agent histogram handles.
struct AgentHistograms {
    connect: Histogram,
    turn: Histogram,
    agent_turn: Histogram,
    call_turn_p95: Histogram,
    barge_in: Histogram,
    playout_lag: Histogram,
    ping_rtt: Histogram,
}

/// All metric handles of one relay instance. Cheap to share (`Arc`).
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// `relay_calls_active`: calls in progress.
    pub calls_active: Gauge,
    /// `relay_calls_max`: the admission limit (`--max-calls`).
    pub calls_max: Gauge,
    /// `relay_draining`: 1 while the relay drains after SIGTERM.
    pub draining: Gauge,
    /// `relay_runtime_tasks_alive`: tokio tasks alive (calls, connections, helpers).
    pub tasks_alive: Gauge,
    /// `relay_call_duration_seconds`.
    pub call_duration: Histogram,
    frames: [Counter; 2],
    audio_bytes: [Counter; 2],
    latency: [FrameHistogram; 2],
    call_latency_p99: [Histogram; 2],
    drops: [[Counter; 5]; 2],
    /// `relay_inbound_jitter_seconds`.
    pub jitter: FrameHistogram,
    /// `relay_inbound_frames_missing_total`.
    pub frames_missing: Counter,
    agents: [AgentHistograms; 4],
    events: [[Counter; CALL_EVENT_KINDS]; 4],
    tool_calls: [[Counter; 9]; 4],
    calls_started: [Counter; 4],
    agent_connects: [[Counter; 2]; 4],
    upgrades: [Counter; 5],
    /// `relay_playout_audio_bytes_total{result="played"}` (8000 bytes = 1 s).
    pub playout_played_bytes: Counter,
    /// `relay_playout_audio_bytes_total{result="flushed"}`.
    pub playout_flushed_bytes: Counter,
    /// `relay_streams_unauthenticated_total`: streams admitted without signature checks.
    pub streams_unauthenticated: Counter,
    http_pending: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Builds a recorder with real Prometheus histograms, registers every family, and
    /// creates every series of every closed label set at 0.
    pub fn new() -> Arc<Self> {
        let mut b = PrometheusBuilder::new();
        for (name, buckets) in HISTOGRAMS {
            // Only fails on an empty bucket list; ours are constants.
            b = b
                .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("static bucket lists are non-empty");
        }
        let recorder = b.build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        describe(r);
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            let c = r.register_counter(&key(name, labels), &META);
            c.increment(0);
            c
        };
        let hist = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            r.register_histogram(&key(name, labels), &META)
        };
        let dirs = Direction::ALL;
        let per_agent = |name: &'static str| AGENT_LABELS.map(|a| hist(name, &[("agent", a)]));
        let [c0, c1, c2, c3] = per_agent("relay_agent_connect_duration_seconds");
        let [t0, t1, t2, t3] = per_agent("relay_turn_latency_seconds");
        let [at0, at1, at2, at3] = per_agent("relay_agent_turn_latency_seconds");
        let [p0, p1, p2, p3] = per_agent("relay_call_turn_latency_p95_seconds");
        let [b0, b1, b2, b3] = per_agent("relay_barge_in_latency_seconds");
        let [l0, l1, l2, l3] = per_agent("relay_playout_lag_seconds");
        let [r0, r1, r2, r3] = per_agent("relay_agent_ping_rtt_seconds");
        let agents = [
            (c0, t0, at0, p0, b0, l0, r0),
            (c1, t1, at1, p1, b1, l1, r1),
            (c2, t2, at2, p2, b2, l2, r2),
            (c3, t3, at3, p3, b3, l3, r3),
        ]
        .map(
            |(connect, turn, agent_turn, call_turn_p95, barge_in, playout_lag, ping_rtt)| {
                AgentHistograms {
                    connect,
                    turn,
                    agent_turn,
                    call_turn_p95,
                    barge_in,
                    playout_lag,
                    ping_rtt,
                }
            },
        );
        let events = AGENT_LABELS.map(|a| {
            [
                counter("relay_barge_ins_total", &[("agent", a)]),
                counter("relay_dtmf_total", &[("agent", a)]),
                counter("relay_marks_total", &[("agent", a), ("result", "played")]),
                counter("relay_marks_total", &[("agent", a), ("result", "flushed")]),
                counter(
                    "relay_unknown_events_total",
                    &[("agent", a), ("leg", "twilio")],
                ),
                counter(
                    "relay_unknown_events_total",
                    &[("agent", a), ("leg", "agent")],
                ),
            ]
        });
        for outcome in CALL_OUTCOMES {
            let _ = counter("relay_calls_total", &[("outcome", outcome)]);
        }
        for (leg, kinds) in ERROR_KINDS {
            for kind in kinds {
                let _ = counter(
                    "relay_errors_total",
                    &[("leg", leg.as_str()), ("kind", kind)],
                );
            }
        }
        for result in STREAM_TOKEN_RESULTS {
            let _ = counter("relay_stream_tokens_total", &[("result", result)]);
        }
        let _ = counter("relay_duplicate_streams_total", &[]);
        for reason in ["limit", "header_timeout", "body_timeout"] {
            let _ = counter(
                "relay_http_connections_rejected_total",
                &[("reason", reason)],
            );
        }
        let _ = counter("relay_drain_notices_total", &[]);
        let build = r.register_gauge(
            &key(
                "relay_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))],
            ),
            &META,
        );
        build.set(1.0);
        let m = Metrics {
            calls_active: r.register_gauge(&key("relay_calls_active", &[]), &META),
            calls_max: r.register_gauge(&key("relay_calls_max", &[]), &META),
            draining: r.register_gauge(&key("relay_draining", &[]), &META),
            tasks_alive: r.register_gauge(&key("relay_runtime_tasks_alive", &[]), &META),
            call_duration: hist("relay_call_duration_seconds", &[]),
            frames: dirs.map(|d| counter("relay_frames_total", &[("direction", d.as_str())])),
            audio_bytes: dirs
                .map(|d| counter("relay_audio_bytes_total", &[("direction", d.as_str())])),
            latency: dirs.map(|_| FrameHistogram::new(&FORWARD_LATENCY_BUCKETS)),
            call_latency_p99: dirs.map(|d| {
                hist(
                    "relay_call_forward_latency_p99_seconds",
                    &[("direction", d.as_str())],
                )
            }),
            drops: dirs.map(|d| {
                DropReason::ALL.map(|reason| {
                    counter(
                        "relay_frames_dropped_total",
                        &[("direction", d.as_str()), ("reason", reason.as_str())],
                    )
                })
            }),
            jitter: FrameHistogram::new(&JITTER_BUCKETS),
            frames_missing: counter("relay_inbound_frames_missing_total", &[]),
            agents,
            events,
            tool_calls: AGENT_LABELS.map(|a| {
                ToolResult::ALL.map(|t| {
                    counter(
                        "relay_tool_calls_total",
                        &[("agent", a), ("result", t.as_str())],
                    )
                })
            }),
            calls_started: AGENT_LABELS
                .map(|a| counter("relay_calls_started_total", &[("agent", a)])),
            agent_connects: AGENT_LABELS.map(|a| {
                ["ok", "failed"].map(|res| {
                    counter(
                        "relay_agent_connects_total",
                        &[("agent", a), ("result", res)],
                    )
                })
            }),
            upgrades: UpgradeResult::ALL
                .map(|u| counter("relay_upgrades_total", &[("result", u.as_str())])),
            playout_played_bytes: counter(
                "relay_playout_audio_bytes_total",
                &[("result", "played")],
            ),
            playout_flushed_bytes: counter(
                "relay_playout_audio_bytes_total",
                &[("result", "flushed")],
            ),
            streams_unauthenticated: counter("relay_streams_unauthenticated_total", &[]),
            http_pending: r.register_gauge(&key("relay_http_connections_pending", &[]), &META),
            process: metrics_process::Collector::default(),
            recorder,
            handle,
        };
        metrics::with_local_recorder(&m.recorder, || m.process.describe());
        Arc::new(m)
    }

    /// `relay_frames_total{direction}` handle.
    pub fn frames(&self, d: Direction) -> &Counter {
        &self.frames[d as usize]
    }

    /// `relay_audio_bytes_total{direction}` handle.
    pub fn audio_bytes(&self, d: Direction) -> &Counter {
        &self.audio_bytes[d as usize]
    }

    /// `relay_forward_latency_seconds{direction}`.
    pub fn latency(&self, d: Direction) -> &FrameHistogram {
        &self.latency[d as usize]
    }

    /// `relay_agent_connect_duration_seconds{agent}` (agent index as in [`AGENT_LABELS`]).
    pub fn agent_connect(&self, agent: usize, seconds: f64, ok: bool) {
        if ok {
            self.agents[agent].connect.record(seconds);
        }
        self.agent_connects[agent][usize::from(!ok)].increment(1);
    }

    /// Counts a call that started with `agent`: `relay_calls_started_total{agent}`.
    pub fn call_started(&self, agent: usize) {
        self.calls_started[agent].increment(1);
    }

    /// Counts one upgrade attempt by result.
    pub fn upgrade(&self, r: UpgradeResult) {
        self.upgrades[r as usize].increment(1);
    }

    /// Counts an error: `relay_errors_total{leg,kind}`. `kind` comes from [`ERROR_KINDS`]
    /// (registry lookup: errors are off the per-frame path).
    pub fn error(&self, leg: Leg, kind: &'static str) {
        debug_assert!(
            ERROR_KINDS
                .iter()
                .any(|(l, kinds)| *l == leg && kinds.contains(&kind)),
            "error kind {kind} of leg {} is not in ERROR_KINDS",
            leg.as_str()
        );
        self.count(
            "relay_errors_total",
            &[("leg", leg.as_str()), ("kind", kind)],
            1,
        );
    }

    /// Sets `relay_http_connections_pending`.
    pub fn gauge_pending(&self, n: usize) {
        self.http_pending.set(n as f64);
    }

    /// Counts a finished call: `relay_calls_total{outcome}` (`outcome` from [`CALL_OUTCOMES`]).
    pub fn call_ended(&self, outcome: &'static str) {
        debug_assert!(CALL_OUTCOMES.contains(&outcome), "{outcome}");
        self.count("relay_calls_total", &[("outcome", outcome)], 1);
    }

    /// Adds `n` to the counter `name{labels}` (registry lookup: for events, not frames).
    /// Label values must come from closed sets.
    pub fn count(&self, name: &'static str, labels: &[(&'static str, &'static str)], n: u64) {
        self.recorder
            .register_counter(&key(name, labels), &META)
            .increment(n);
    }

    /// Records a finished call's quality figures: its p95 turn latency (if it had turns)
    /// and its p99 relay-added latency per direction (if it relayed frames).
    pub fn call_quality(&self, agent: usize, turn_p95: Option<f64>, forward_p99: [Option<f64>; 2]) {
        if let Some(v) = turn_p95 {
            self.agents[agent].call_turn_p95.record(v);
        }
        for (h, v) in self.call_latency_p99.iter().zip(forward_p99) {
            if let Some(v) = v {
                h.record(v);
            }
        }
    }

    /// Prometheus text exposition of everything registered, process metrics refreshed.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.run_upkeep();
        let mut out = self.handle.render();
        out.push_str("# HELP relay_forward_latency_seconds Relay-added latency per frame: fully read to written to the other leg's socket.\n# TYPE relay_forward_latency_seconds histogram\n");
        for d in Direction::ALL {
            self.latency[d as usize].render(
                "relay_forward_latency_seconds",
                &format!("direction=\"{}\"", d.as_str()),
                &mut out,
            );
        }
        out.push_str("# HELP relay_inbound_jitter_seconds How far the inter-arrival time of Twilio media messages deviates from 20 ms.\n# TYPE relay_inbound_jitter_seconds histogram\n");
        self.jitter
            .render("relay_inbound_jitter_seconds", "", &mut out);
        out
    }

    /// Drains pending histogram samples; call periodically (the recorder does not).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|&(k, v)| Label::new(k, v))
            .collect::<Vec<_>>(),
    )
}

fn describe(r: &PrometheusRecorder) {
    let c = |n: &'static str, u: Option<Unit>, d: &'static str| {
        r.describe_counter(n.into(), u, d.into())
    };
    let g = |n: &'static str, d: &'static str| r.describe_gauge(n.into(), None, d.into());
    let h = |n: &'static str, d: &'static str| {
        r.describe_histogram(n.into(), Some(Unit::Seconds), d.into())
    };
    g("relay_calls_active", "Calls in progress.");
    g(
        "relay_calls_max",
        "The admission limit (--max-calls): upgrades beyond it get 503.",
    );
    g(
        "relay_draining",
        "1 while the relay drains after SIGTERM, else 0.",
    );
    g(
        "relay_runtime_tasks_alive",
        "Tokio tasks alive: one per call and per HTTP connection, plus a few of the relay's own.",
    );
    g(
        "relay_build_info",
        "Always 1; the version label gives the relay's version.",
    );
    c("relay_calls_total", None, "Calls ended, by outcome.");
    c(
        "relay_calls_started_total",
        None,
        "Calls that sent start, by agent.",
    );
    h(
        "relay_call_duration_seconds",
        "Call duration from upgrade to end.",
    );
    c(
        "relay_frames_total",
        None,
        "Audio frames relayed, by direction.",
    );
    c(
        "relay_audio_bytes_total",
        Some(Unit::Bytes),
        "μ-law audio bytes relayed (8000 = 1 s).",
    );
    c(
        "relay_frames_dropped_total",
        None,
        "Frames dropped, by direction and reason.",
    );
    c("relay_errors_total", None, "Errors, by leg and kind.");
    c(
        "relay_unknown_events_total",
        None,
        "Messages of unknown type, tolerated and skipped, by agent and leg.",
    );
    h(
        "relay_call_forward_latency_p99_seconds",
        "Each ended call's p99 relay-added latency, by direction (one observation per call).",
    );
    c(
        "relay_inbound_frames_missing_total",
        None,
        "Twilio media frames missing according to gaps in media.chunk.",
    );
    h(
        "relay_agent_connect_duration_seconds",
        "Agent connect time (signed URL, TCP, TLS, WebSocket upgrade), by agent.",
    );
    c(
        "relay_agent_connects_total",
        None,
        "Agent connection attempts, by agent and result (ok, failed).",
    );
    h(
        "relay_turn_latency_seconds",
        "Turn latency as the relay measures it: the caller stops speaking (μ-law energy) to the first agent audio of the reply written to Twilio, by agent.",
    );
    h(
        "relay_agent_turn_latency_seconds",
        "Turn latency from the agent's own end-of-speech event to the first agent audio of the reply written to Twilio, by agent.",
    );
    h(
        "relay_call_turn_latency_p95_seconds",
        "Each ended call's p95 turn latency (relay-measured), by agent (one observation per call with turns).",
    );
    h(
        "relay_barge_in_latency_seconds",
        "The agent's interruption signal read to the clear written to Twilio, by agent.",
    );
    h(
        "relay_playout_lag_seconds",
        "Mark sent to Twilio to mark echoed as played, by agent.",
    );
    h(
        "relay_agent_ping_rtt_seconds",
        "Round-trip time the agent reports for its keepalive pings, by agent.",
    );
    c(
        "relay_upgrades_total",
        None,
        "Media WebSocket upgrade attempts, by result.",
    );
    c(
        "relay_marks_total",
        None,
        "Twilio mark echoes, by agent and result (played, flushed).",
    );
    c(
        "relay_playout_audio_bytes_total",
        Some(Unit::Bytes),
        "Agent audio confirmed played or flushed.",
    );
    c(
        "relay_barge_ins_total",
        None,
        "Interruptions that sent Twilio a clear, by agent.",
    );
    c("relay_dtmf_total", None, "DTMF digits received, by agent.");
    c(
        "relay_tool_calls_total",
        None,
        "Tool calls agents asked the relay to run, by agent and result.",
    );
    c(
        "relay_streams_unauthenticated_total",
        None,
        "Streams admitted without signature validation.",
    );
    c(
        "relay_duplicate_streams_total",
        None,
        "Streams that replaced a live stream of the same call.",
    );
    c(
        "relay_stream_tokens_total",
        None,
        "Stream token checks at start, by result.",
    );
    c(
        "relay_outbound_calls_total",
        None,
        "POST /outbound-call requests, by result.",
    );
    c(
        "relay_call_status_callbacks_total",
        None,
        "Twilio call status callbacks, by CallStatus.",
    );
    c(
        "relay_stream_status_callbacks_total",
        None,
        "Twilio stream status callbacks, by StreamEvent.",
    );
    c(
        "relay_http_connections_rejected_total",
        None,
        "HTTP connections closed before a request completed, by reason (limit, header_timeout, body_timeout).",
    );
    g(
        "relay_http_connections_pending",
        "HTTP connections accepted that have not been upgraded or closed.",
    );
    c(
        "relay_drain_notices_total",
        None,
        "Calls that heard the drain notice before the drain deadline closed them.",
    );
}

/// Per-call accumulators, folded into [`Metrics`] every [`CallMetrics::FOLD_EVERY_FRAMES`]
/// frames, when an event was counted, and at call end. Lives inside the call: no atomics on
/// the per-frame path.
#[derive(Default)]
pub struct CallMetrics {
    /// The call's agent (index into [`AGENT_LABELS`]).
    pub agent: usize,
    frames: [u64; 2],
    bytes: [u64; 2],
    folded_frames: [u64; 2],
    folded_bytes: [u64; 2],
    /// Relay-added latency per direction.
    pub latency: [LatencyHistogram; 2],
    /// Inbound jitter.
    pub jitter: LatencyHistogram,
    /// Dropped frames by direction and reason, not yet folded.
    drops: [[u64; 5]; 2],
    /// Totals of dropped frames per direction (for the summary).
    pub dropped_total: [u64; 2],
    events: [u64; CALL_EVENT_KINDS],
    /// Event totals (for the summary).
    pub events_total: [u64; CALL_EVENT_KINDS],
    tools: [u64; 9],
    errors: Vec<(Leg, &'static str, u64)>,
    missing_frames: u64,
    missing_total: u64,
    /// Samples for shared histograms that are rare enough to record one by one (turns,
    /// barge-ins, pings, mark lags): (which, seconds).
    samples: Vec<(Sample, f64)>,
    playout_bytes: [u64; 2],
    events_dirty: bool,
}

/// A per-agent histogram a call records into directly (rare events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// `relay_turn_latency_seconds`.
    Turn,
    /// `relay_agent_turn_latency_seconds`.
    AgentTurn,
    /// `relay_barge_in_latency_seconds`.
    BargeIn,
    /// `relay_playout_lag_seconds`.
    PlayoutLag,
    /// `relay_agent_ping_rtt_seconds`.
    PingRtt,
}

impl CallMetrics {
    /// Fold roughly every 5 s of audio per direction (250 frames of 20 ms).
    pub const FOLD_EVERY_FRAMES: u32 = 250;

    /// Records one relayed frame of `audio_bytes` μ-law bytes.
    #[inline]
    pub fn frame(&mut self, d: Direction, audio_bytes: usize) {
        self.frames[d as usize] += 1;
        self.bytes[d as usize] += audio_bytes as u64;
    }

    /// Records `n` dropped frames.
    #[inline]
    pub fn drop_frames(&mut self, d: Direction, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped_total[d as usize] += n;
        self.drops[d as usize][reason as usize] += n;
        self.events_dirty = true;
    }

    /// Counts one event.
    #[inline]
    pub fn event(&mut self, e: CallEventKind) {
        self.events[e as usize] += 1;
        self.events_total[e as usize] += 1;
        self.events_dirty = true;
    }

    /// Counts a tool call's result.
    pub fn tool(&mut self, r: ToolResult) {
        self.tools[r as usize] += 1;
        self.events_dirty = true;
    }

    /// Counts an error (`kind` from [`ERROR_KINDS`]).
    pub fn error(&mut self, leg: Leg, kind: &'static str) {
        debug_assert!(
            ERROR_KINDS
                .iter()
                .any(|(l, kinds)| *l == leg && kinds.contains(&kind)),
            "error kind {kind} of leg {} is not in ERROR_KINDS",
            leg.as_str()
        );
        match self
            .errors
            .iter_mut()
            .find(|(l, k, _)| *l == leg && *k == kind)
        {
            Some((_, _, n)) => *n += 1,
            None => self.errors.push((leg, kind, 1)),
        }
        self.events_dirty = true;
    }

    /// Counts frames missing from Twilio's media sequence.
    pub fn missing_frames(&mut self, n: u64) {
        self.missing_frames = self.missing_frames.saturating_add(n);
        self.missing_total = self.missing_total.saturating_add(n);
        self.events_dirty = true;
    }

    /// Frames missing from Twilio's media sequence so far.
    pub fn missing_total(&self) -> u64 {
        self.missing_total
    }

    /// Records one rare-event latency (seconds).
    pub fn sample(&mut self, which: Sample, seconds: f64) {
        self.samples.push((which, seconds));
        self.events_dirty = true;
    }

    /// Agent audio confirmed played (`played`) or flushed, in bytes.
    pub fn playout(&mut self, played: bool, bytes: u64) {
        self.playout_bytes[usize::from(!played)] += bytes;
        self.events_dirty = true;
    }

    /// Frames relayed so far in direction `d`.
    pub fn frames_total(&self, d: Direction) -> u64 {
        self.frames[d as usize]
    }

    /// Events are folded at most this often (a call with marks flowing has an event every
    /// 100 ms; Prometheus scrapes every few seconds).
    pub const EVENT_FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// True when a fold is due: enough frames accumulated, or an event has waited since the
    /// last fold, `since_fold` ago, for at least [`CallMetrics::EVENT_FOLD_INTERVAL`].
    #[inline]
    pub fn fold_due(&self, since_fold: std::time::Duration) -> bool {
        self.latency[0].unfolded() >= Self::FOLD_EVERY_FRAMES
            || self.latency[1].unfolded() >= Self::FOLD_EVERY_FRAMES
            || (self.events_dirty && since_fold >= Self::EVENT_FOLD_INTERVAL)
    }

    /// Adds everything accumulated since the last fold to the shared metrics.
    pub fn fold(&mut self, m: &Metrics) {
        for d in Direction::ALL {
            let i = d as usize;
            m.frames(d)
                .increment(self.frames[i] - self.folded_frames[i]);
            m.audio_bytes(d)
                .increment(self.bytes[i] - self.folded_bytes[i]);
            self.folded_frames[i] = self.frames[i];
            self.folded_bytes[i] = self.bytes[i];
            self.latency[i].fold_into(m.latency(d));
        }
        self.jitter.fold_into(&m.jitter);
        if !self.events_dirty {
            return;
        }
        self.events_dirty = false;
        for (d, row) in self.drops.iter_mut().enumerate() {
            for (r, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    m.drops[d][r].increment(std::mem::take(n));
                }
            }
        }
        let a = self.agent.min(AGENT_LABELS.len() - 1);
        for (i, n) in self.events.iter_mut().enumerate() {
            if *n > 0 {
                m.events[a][i].increment(std::mem::take(n));
            }
        }
        for (i, n) in self.tools.iter_mut().enumerate() {
            if *n > 0 {
                m.tool_calls[a][i].increment(std::mem::take(n));
            }
        }
        for (leg, kind, n) in self.errors.drain(..) {
            m.count(
                "relay_errors_total",
                &[("leg", leg.as_str()), ("kind", kind)],
                n,
            );
        }
        if self.missing_frames > 0 {
            m.frames_missing
                .increment(std::mem::take(&mut self.missing_frames));
        }
        let [played, flushed] = std::mem::take(&mut self.playout_bytes);
        m.playout_played_bytes.increment(played);
        m.playout_flushed_bytes.increment(flushed);
        let h = &m.agents[a];
        for (which, v) in self.samples.drain(..) {
            match which {
                Sample::Turn => h.turn.record(v),
                Sample::AgentTurn => h.agent_turn.record(v),
                Sample::BargeIn => h.barge_in.record(v),
                Sample::PlayoutLag => h.playout_lag.record(v),
                Sample::PingRtt => h.ping_rtt.record(v),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every labelled series of a closed label set is on `/metrics` before anything
    /// happened, and every family has HELP text.
    #[test]
    fn every_series_exists_at_start_with_help() {
        let m = Metrics::new();
        let text = m.render();
        for outcome in CALL_OUTCOMES {
            assert!(
                text.contains(&format!("relay_calls_total{{outcome=\"{outcome}\"}} 0")),
                "{outcome}"
            );
        }
        for (leg, kinds) in ERROR_KINDS {
            for kind in kinds {
                let s = format!(
                    "relay_errors_total{{leg=\"{}\",kind=\"{kind}\"}} 0",
                    leg.as_str()
                );
                assert!(text.contains(&s), "{s}");
            }
        }
        for d in Direction::ALL {
            for r in DropReason::ALL {
                let s = format!(
                    "relay_frames_dropped_total{{direction=\"{}\",reason=\"{}\"}} 0",
                    d.as_str(),
                    r.as_str()
                );
                assert!(text.contains(&s), "{s}");
            }
        }
        for a in AGENT_LABELS {
            for t in ToolResult::ALL {
                let s = format!(
                    "relay_tool_calls_total{{agent=\"{a}\",result=\"{}\"}} 0",
                    t.as_str()
                );
                assert!(text.contains(&s), "{s}");
            }
            assert!(text.contains(&format!("relay_calls_started_total{{agent=\"{a}\"}} 0")));
            assert!(text.contains(&format!("relay_barge_ins_total{{agent=\"{a}\"}} 0")));
        }
        // Every family that has samples has HELP and TYPE lines.
        let mut families = std::collections::BTreeSet::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            families.insert(family.to_owned());
        }
        for f in &families {
            let base = f.as_str();
            assert!(
                text.contains(&format!("# HELP {base} ")),
                "no HELP for {base}"
            );
        }
        assert!(text.contains("relay_build_info{"));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
