//! Prometheus metrics: every family the relay exports, registered once per server against
//! its own recorder (no global recorder, so several relays can live in one test process).
//!
//! Owns the names, the label sets (all closed enums or `&'static str` kinds), the histogram
//! buckets, and rendering for `GET /metrics`. Per-frame counting does not happen here: calls
//! accumulate locally and [`CallMetrics::fold`] adds batches (stack.md: a contended histogram
//! observation costs ~400 ns, a local increment a few).

use crate::obs::latency::LatencyHistogram;
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
    /// The Twilio WebSocket.
    Twilio,
    /// The agent WebSocket (or its HTTP setup).
    Agent,
    /// The relay itself.
    Internal,
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

/// Reasons a frame is dropped; the `reason` label of `relay_frames_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Caller audio buffered while the agent connected overflowed; oldest dropped.
    EarlyBufferFull,
    /// Agent audio from before an interruption (`event_id <=` the interruption's).
    Interrupted,
    /// The echo agent's delay queue overflowed; oldest dropped.
    EchoQueueFull,
}

impl DropReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::EarlyBufferFull => "early_buffer_full",
            DropReason::Interrupted => "interrupted",
            DropReason::EchoQueueFull => "echo_queue_full",
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
    const ALL: [UpgradeResult; 5] = [
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

/// Buckets (seconds) of `relay_forward_latency_seconds`: powers of two of microseconds (and
/// 1.5×) from 32 µs to 131 ms, chosen to coincide with [`LatencyHistogram`] bucket edges so
/// batched folding keeps bucket counts exact.
pub const FORWARD_LATENCY_BUCKETS: [f64; 15] = [
    0.000_032, 0.000_064, 0.000_128, 0.000_256, 0.000_512, 0.000_768, 0.001_024, 0.001_536,
    0.002_048, 0.004_096, 0.008_192, 0.016_384, 0.032_768, 0.065_536, 0.131_072,
];

/// Buckets (seconds) of `relay_agent_connect_duration_seconds`.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets (seconds) of `relay_call_duration_seconds`.
pub const CALL_DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// All metric handles of one relay instance. Cheap to share (`Arc`).
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `relay_calls_active`: calls in progress.
    pub calls_active: Gauge,
    /// `relay_call_duration_seconds`.
    pub call_duration: Histogram,
    frames: [Counter; 2],
    audio_bytes: [Counter; 2],
    latency: [Histogram; 2],
    /// `relay_agent_connect_duration_seconds`: agent connect (signed URL + TCP/TLS + upgrade).
    pub agent_connect: Histogram,
    upgrades: [Counter; 5],
    /// `relay_marks_total{result="played"}`.
    pub marks_played: Counter,
    /// `relay_marks_total{result="flushed"}`.
    pub marks_flushed: Counter,
    /// `relay_playout_audio_bytes_total{result="played"}` (8000 bytes = 1 s).
    pub playout_played_bytes: Counter,
    /// `relay_playout_audio_bytes_total{result="flushed"}`.
    pub playout_flushed_bytes: Counter,
    /// `relay_barge_ins_total`: interruptions that sent Twilio a `clear`.
    pub barge_ins: Counter,
    /// `relay_dtmf_total`: DTMF digits received from Twilio.
    pub dtmf: Counter,
    /// `relay_agent_tool_calls_total`: tool calls the agent asked the relay to run.
    pub tool_calls: Counter,
    /// `relay_unknown_events_total{leg="twilio"}`.
    pub unknown_twilio_events: Counter,
    /// `relay_unknown_events_total{leg="agent"}`.
    pub unknown_agent_events: Counter,
    /// `relay_streams_unauthenticated_total`: streams admitted without signature checks.
    pub streams_unauthenticated: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Builds a recorder with real Prometheus histograms and registers every family.
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("relay_forward_latency_seconds".into()),
                &FORWARD_LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("relay_agent_connect_duration_seconds".into()),
                    &CONNECT_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("relay_call_duration_seconds".into()),
                    &CALL_DURATION_BUCKETS,
                )
            })
            // Only fails on an empty bucket list; ours are constants.
            .expect("static bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        describe(r);
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            r.register_counter(&key(name, labels), &META)
        };
        let hist = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            r.register_histogram(&key(name, labels), &META)
        };
        let dirs = [Direction::TwilioToAgent, Direction::AgentToTwilio];
        let m = Metrics {
            calls_active: r.register_gauge(&key("relay_calls_active", &[]), &META),
            call_duration: hist("relay_call_duration_seconds", &[]),
            frames: dirs.map(|d| counter("relay_frames_total", &[("direction", d.as_str())])),
            audio_bytes: dirs
                .map(|d| counter("relay_audio_bytes_total", &[("direction", d.as_str())])),
            latency: dirs.map(|d| {
                hist(
                    "relay_forward_latency_seconds",
                    &[("direction", d.as_str())],
                )
            }),
            agent_connect: hist("relay_agent_connect_duration_seconds", &[]),
            upgrades: UpgradeResult::ALL
                .map(|u| counter("relay_upgrades_total", &[("result", u.as_str())])),
            marks_played: counter("relay_marks_total", &[("result", "played")]),
            marks_flushed: counter("relay_marks_total", &[("result", "flushed")]),
            playout_played_bytes: counter(
                "relay_playout_audio_bytes_total",
                &[("result", "played")],
            ),
            playout_flushed_bytes: counter(
                "relay_playout_audio_bytes_total",
                &[("result", "flushed")],
            ),
            barge_ins: counter("relay_barge_ins_total", &[]),
            dtmf: counter("relay_dtmf_total", &[]),
            tool_calls: counter("relay_agent_tool_calls_total", &[]),
            unknown_twilio_events: counter("relay_unknown_events_total", &[("leg", "twilio")]),
            unknown_agent_events: counter("relay_unknown_events_total", &[("leg", "agent")]),
            streams_unauthenticated: counter("relay_streams_unauthenticated_total", &[]),
            recorder,
            handle,
        };
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

    /// `relay_forward_latency_seconds{direction}` handle.
    pub fn latency(&self, d: Direction) -> &Histogram {
        &self.latency[d as usize]
    }

    /// Counts one upgrade attempt by result.
    pub fn upgrade(&self, r: UpgradeResult) {
        self.upgrades[r as usize].increment(1);
    }

    /// Counts an error: `relay_errors_total{leg,kind}`. `kind` comes from an error enum's
    /// `kind()` (a closed set). Registry lookup per call: errors are off the per-frame path.
    pub fn error(&self, leg: Leg, kind: &'static str) {
        self.recorder
            .register_counter(
                &key(
                    "relay_errors_total",
                    &[("leg", leg.as_str()), ("kind", kind)],
                ),
                &META,
            )
            .increment(1);
    }

    /// Counts `n` dropped frames: `relay_frames_dropped_total{direction,reason}`.
    pub fn dropped(&self, d: Direction, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.recorder
            .register_counter(
                &key(
                    "relay_frames_dropped_total",
                    &[("direction", d.as_str()), ("reason", reason.as_str())],
                ),
                &META,
            )
            .increment(n);
    }

    /// Counts a finished call: `relay_calls_total{outcome}`.
    pub fn call_ended(&self, outcome: &'static str) {
        self.count("relay_calls_total", &[("outcome", outcome)], 1);
    }

    /// Adds `n` to the counter `name{labels}` (registry lookup: for events, not frames).
    /// Label values must come from closed sets.
    pub fn count(&self, name: &'static str, labels: &[(&'static str, &'static str)], n: u64) {
        self.recorder
            .register_counter(&key(name, labels), &META)
            .increment(n);
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Drains pending histogram samples; call periodically (stack.md: the recorder does not).
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
    let h = |n: &'static str, d: &'static str| {
        r.describe_histogram(n.into(), Some(Unit::Seconds), d.into())
    };
    r.describe_gauge(
        "relay_calls_active".into(),
        None,
        "Calls in progress.".into(),
    );
    c("relay_calls_total", None, "Calls ended, by outcome.");
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
        "Messages of unknown type, tolerated and skipped.",
    );
    h(
        "relay_forward_latency_seconds",
        "Relay-added latency per frame: fully read to handed to the other socket's write.",
    );
    h(
        "relay_agent_connect_duration_seconds",
        "Agent connect time (signed URL, TCP, TLS, upgrade).",
    );
    c(
        "relay_upgrades_total",
        None,
        "Media WebSocket upgrade attempts, by result.",
    );
    c(
        "relay_marks_total",
        None,
        "Twilio mark echoes, by played or flushed.",
    );
    c(
        "relay_playout_audio_bytes_total",
        Some(Unit::Bytes),
        "Agent audio confirmed played or flushed.",
    );
    c(
        "relay_barge_ins_total",
        None,
        "Interruptions that sent Twilio a clear.",
    );
    c("relay_dtmf_total", None, "DTMF digits received.");
    c(
        "relay_agent_tool_calls_total",
        None,
        "Tool calls requested by agents.",
    );
    c(
        "relay_streams_unauthenticated_total",
        None,
        "Streams admitted without signature validation.",
    );
}

/// Per-call accumulators, folded into [`Metrics`] every [`CallMetrics::FOLD_EVERY_FRAMES`]
/// frames and at call end. Lives inside the call task: no atomics on the per-frame path.
#[derive(Default)]
pub struct CallMetrics {
    frames: [u64; 2],
    bytes: [u64; 2],
    folded_frames: [u64; 2],
    folded_bytes: [u64; 2],
    /// Relay-added latency per direction.
    pub latency: [LatencyHistogram; 2],
    /// Dropped frames by (direction, reason), not yet folded.
    drops: Vec<(Direction, DropReason, u64)>,
    /// Totals of dropped frames per direction (for the summary line).
    pub dropped_total: [u64; 2],
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
    pub fn drop_frames(&mut self, d: Direction, reason: DropReason, n: u64) {
        self.dropped_total[d as usize] += n;
        match self
            .drops
            .iter_mut()
            .find(|(dd, r, _)| *dd == d && *r == reason)
        {
            Some((_, _, c)) => *c += n,
            None => self.drops.push((d, reason, n)),
        }
    }

    /// Frames relayed so far in direction `d`.
    pub fn frames_total(&self, d: Direction) -> u64 {
        self.frames[d as usize]
    }

    /// True when a fold is due.
    #[inline]
    pub fn fold_due(&self) -> bool {
        self.latency[0].unfolded() >= Self::FOLD_EVERY_FRAMES
            || self.latency[1].unfolded() >= Self::FOLD_EVERY_FRAMES
    }

    /// Adds everything accumulated since the last fold to the shared metrics.
    pub fn fold(&mut self, m: &Metrics) {
        for d in [Direction::TwilioToAgent, Direction::AgentToTwilio] {
            let i = d as usize;
            m.frames(d)
                .increment(self.frames[i] - self.folded_frames[i]);
            m.audio_bytes(d)
                .increment(self.bytes[i] - self.folded_bytes[i]);
            self.folded_frames[i] = self.frames[i];
            self.folded_bytes[i] = self.bytes[i];
            self.latency[i].fold_into(m.latency(d));
        }
        for (d, r, n) in self.drops.drain(..) {
            m.dropped(d, r, n);
        }
    }
}
