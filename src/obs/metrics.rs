//! The relay's metrics registry: every family of [`super::families`] registered once per
//! server against its own recorder (no global recorder, so several relays can live in one
//! test process), with typed handles for every series, and rendering for `GET /metrics`.
//!
//! Every series a closed label set allows is created at 0 when the relay starts, so the first
//! event of every kind is seen by `rate()` and `increase()` (a series that appears with its
//! first increment hides that increment from Prometheus). The agent and carrier label sets
//! are passed in ([`MetricLabels`]): they come from the registries in `agent` and `carrier`,
//! which sit above this module. Nobody looks a series up by name at run time: call sites
//! hold handles ([`Metrics`] fields and methods, [`LabeledCounters`]).
//!
//! Per-frame counting does not happen here: calls accumulate in
//! [`super::call_metrics::CallMetrics`] and fold batches in; a contended histogram
//! observation costs hundreds of nanoseconds, a local increment a few.

use super::families::{self as fam, Family, FamilyKind};
use super::labels::{
    ActionKind, ActionResult, ActionSource, AnsweredBy, CallEventKind, Direction, DropReason,
    ErrorKind, HttpRejectReason, Leg, Outcome, PostCallResult, PostCallType, RecordingResult,
    RecoveryResult, TokenResult, ToolResult, TransferResult, UpgradeResult, UploadResult,
};
use super::latency::FrameHistogram;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::sync::Arc;

static META: Metadata<'static> = Metadata::new("media_relay", Level::INFO, Some("media_relay"));

/// Buckets (seconds) of `relay_forward_latency_seconds` and
/// `relay_call_forward_latency_p99_seconds`: powers of two of microseconds (and 1.5×) from
/// 32 µs to 131 ms, on [`super::latency::LatencyHistogram`] bucket edges so batched folding
/// keeps bucket counts exact.
pub const FORWARD_LATENCY_BUCKETS: [f64; 15] = [
    0.000_032, 0.000_064, 0.000_128, 0.000_256, 0.000_512, 0.000_768, 0.001_024, 0.001_536,
    0.002_048, 0.004_096, 0.008_192, 0.016_384, 0.032_768, 0.065_536, 0.131_072,
];

/// Buckets (seconds) of `relay_inbound_jitter_seconds`: deviation of the carrier's media
/// inter-arrival from 20 ms, 0.5 ms to 0.5 s, on latency-histogram edges.
pub const JITTER_BUCKETS: [f64; 11] = [
    0.000_512, 0.001_024, 0.002_048, 0.004_096, 0.008_192, 0.016_384, 0.032_768, 0.065_536,
    0.131_072, 0.262_144, 0.524_288,
];

/// Buckets (seconds) of `relay_agent_connect_duration_seconds`.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets (seconds) of `relay_call_duration_seconds`: 1 s to 2 h in steps a person reads.
pub const CALL_DURATION_BUCKETS: [f64; 20] = [
    1.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0,
    1800.0, 2700.0, 3600.0, 5400.0, 7200.0,
];

/// Buckets (seconds) of the turn latencies and of `relay_call_turn_latency_p95_seconds`;
/// 1.5 s is an edge, so the share of calls over it is exact.
pub const TURN_BUCKETS: [f64; 17] = [
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
];

/// Buckets (seconds) of `relay_barge_in_latency_seconds` (interruption signal → `clear`
/// written to the carrier).
pub const BARGE_IN_BUCKETS: [f64; 13] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets (seconds) of `relay_playout_lag_seconds` (mark sent → echoed as played).
pub const PLAYOUT_LAG_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
];

/// Buckets (seconds) of `relay_agent_ping_rtt_seconds`.
pub const PING_RTT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];

/// Buckets (seconds) of `relay_goodbye_cut_seconds`: 0 is its own bucket (the goal), then
/// up to 10 s.
pub const GOODBYE_CUT_BUCKETS: [f64; 9] = [0.0, 0.02, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

/// Buckets (seconds) of `relay_agent_recovery_gap_seconds` (the goal: p95 ≤ 1.5 s).
pub const RECOVERY_GAP_BUCKETS: [f64; 11] =
    [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0];

/// Histogram families kept by the exporter, and their buckets (the per-frame families are
/// [`FrameHistogram`]s of our own, see `obs::latency`).
const HISTOGRAMS: [(Family, &[f64]); 11] = [
    (fam::CALL_FORWARD_LATENCY_P99, &FORWARD_LATENCY_BUCKETS),
    (fam::AGENT_CONNECT_DURATION, &CONNECT_BUCKETS),
    (fam::CALL_DURATION, &CALL_DURATION_BUCKETS),
    (fam::TURN_LATENCY, &TURN_BUCKETS),
    (fam::AGENT_TURN_LATENCY, &TURN_BUCKETS),
    (fam::CALL_TURN_LATENCY_P95, &TURN_BUCKETS),
    (fam::BARGE_IN_LATENCY, &BARGE_IN_BUCKETS),
    (fam::PLAYOUT_LAG, &PLAYOUT_LAG_BUCKETS),
    (fam::AGENT_PING_RTT, &PING_RTT_BUCKETS),
    (fam::GOODBYE_CUT, &GOODBYE_CUT_BUCKETS),
    (fam::AGENT_RECOVERY_GAP, &RECOVERY_GAP_BUCKETS),
];

/// The open label sets the registry is built for: agent dialect names (`agent` label, in
/// `AgentKind` order) and carrier names (caller `leg` label and `direction` prefix, in
/// `CarrierKind` order).
#[derive(Debug, Clone)]
pub struct MetricLabels {
    /// Agent names, indexed by `AgentKind as usize`.
    pub agents: Vec<&'static str>,
    /// Carrier names, indexed by `CarrierKind as usize`.
    pub carriers: Vec<&'static str>,
}

/// The `direction` label of `d` on carrier `carrier`: `twilio_to_agent`, `agent_to_telnyx`.
pub fn direction_label(carrier: &str, d: Direction) -> String {
    match d {
        Direction::ToAgent => format!("{carrier}_to_agent"),
        Direction::ToCaller => format!("agent_to_{carrier}"),
    }
}

/// Counters of one family, one per value of a closed label set, indexed like the set.
#[derive(Debug, Clone)]
pub struct LabeledCounters(Vec<Counter>);

impl LabeledCounters {
    /// Adds `n` to the series of value number `index` (out-of-range indexes are ignored).
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        if let Some(c) = self.0.get(index) {
            c.increment(n);
        }
    }
}

/// Per-agent histogram handles.
struct AgentHistograms {
    connect: Histogram,
    turn: Histogram,
    agent_turn: Histogram,
    call_turn_p95: Histogram,
    barge_in: Histogram,
    playout_lag: Histogram,
    ping_rtt: Histogram,
    goodbye_cut: Histogram,
    recovery_gap: Histogram,
}

/// Series of one agent.
struct AgentSeries {
    hist: AgentHistograms,
    /// `CallEventKind` order; `UnknownCallerEvent` is per carrier, in `unknown_caller`.
    events: Vec<Counter>,
    unknown_caller: Vec<Counter>,
    tools: Vec<Counter>,
    started: Counter,
    connects: [Counter; 2],
    /// `relay_agent_recoveries_total`, by `RecoveryResult`.
    recoveries: Vec<Counter>,
}

/// Series of one carrier.
struct CarrierSeries {
    frames: [Counter; 2],
    audio_bytes: [Counter; 2],
    latency: [FrameHistogram; 2],
    latency_labels: [String; 2],
    call_latency_p99: [Histogram; 2],
    drops: [Vec<Counter>; 2],
    started: Counter,
}

/// All metric handles of one relay instance. Cheap to share (`Arc`).
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    labels: MetricLabels,
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
    /// `relay_inbound_jitter_seconds`.
    pub jitter: FrameHistogram,
    /// `relay_inbound_frames_missing_total`.
    pub frames_missing: Counter,
    /// `relay_playout_audio_bytes_total{result="played"}` (8000 bytes = 1 s).
    pub playout_played_bytes: Counter,
    /// `relay_playout_audio_bytes_total{result="flushed"}`.
    pub playout_flushed_bytes: Counter,
    /// `relay_streams_unauthenticated_total`: streams admitted without signature checks.
    pub streams_unauthenticated: Counter,
    /// `relay_duplicate_streams_total`.
    pub duplicate_streams: Counter,
    /// `relay_drain_notices_total`.
    pub drain_notices: Counter,
    /// `relay_recording_bytes_total`.
    pub recording_bytes: Counter,
    /// `relay_recording_blocks_dropped_total`.
    pub recording_blocks_dropped: Counter,
    recordings: Vec<Counter>,
    uploads: Vec<Counter>,
    amd: Vec<Counter>,
    carriers: Vec<CarrierSeries>,
    agents: Vec<AgentSeries>,
    /// `relay_errors_total{leg,kind}`: per leg (carriers, then agent, then internal), per
    /// `ErrorKind` index; `None` where the kind cannot happen on that leg.
    errors: Vec<Vec<Option<Counter>>>,
    outcomes: Vec<Counter>,
    upgrades: Vec<Counter>,
    stream_tokens: Vec<Counter>,
    http_rejected: Vec<Counter>,
    http_pending: Gauge,
    /// `relay_call_actions_total`, by action, source, result.
    actions: Vec<Counter>,
    transfers: Vec<Counter>,
    post_call: Vec<Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Builds a recorder with real Prometheus histograms, describes every family, and
    /// creates every series of every closed label set at 0.
    pub fn new(labels: MetricLabels) -> Arc<Self> {
        let mut b = PrometheusBuilder::new();
        for (f, buckets) in HISTOGRAMS {
            // Only fails on an empty bucket list; ours are constants.
            b = b
                .set_buckets_for_metric(Matcher::Full(f.name.into()), buckets)
                .expect("static bucket lists are non-empty");
        }
        let recorder = b.build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        for f in fam::ALL {
            match f.kind {
                FamilyKind::Counter => r.describe_counter(f.name.into(), f.unit, f.help.into()),
                FamilyKind::Gauge => r.describe_gauge(f.name.into(), f.unit, f.help.into()),
                FamilyKind::Histogram => r.describe_histogram(f.name.into(), f.unit, f.help.into()),
            }
        }
        let counter = |f: Family, l: &[(&'static str, String)]| {
            debug_assert_eq!(f.kind, FamilyKind::Counter, "{}", f.name);
            let c = r.register_counter(&key(f.name, l), &META);
            c.increment(0);
            c
        };
        let hist = |f: Family, l: &[(&'static str, String)]| {
            debug_assert_eq!(f.kind, FamilyKind::Histogram, "{}", f.name);
            r.register_histogram(&key(f.name, l), &META)
        };
        let gauge = |f: Family, l: &[(&'static str, String)]| {
            debug_assert_eq!(f.kind, FamilyKind::Gauge, "{}", f.name);
            r.register_gauge(&key(f.name, l), &META)
        };
        let s = |v: &str| v.to_owned();
        let carriers = labels
            .carriers
            .iter()
            .map(|&c| {
                let dirs = [Direction::ToAgent, Direction::ToCaller].map(|d| direction_label(c, d));
                CarrierSeries {
                    frames: dirs
                        .clone()
                        .map(|d| counter(fam::FRAMES, &[("direction", d)])),
                    audio_bytes: dirs
                        .clone()
                        .map(|d| counter(fam::AUDIO_BYTES, &[("direction", d)])),
                    latency: [(); 2].map(|_| FrameHistogram::new(&FORWARD_LATENCY_BUCKETS)),
                    latency_labels: dirs.clone().map(|d| format!("direction=\"{d}\"")),
                    call_latency_p99: dirs
                        .clone()
                        .map(|d| hist(fam::CALL_FORWARD_LATENCY_P99, &[("direction", d)])),
                    drops: dirs.clone().map(|d| {
                        DropReason::ALL
                            .iter()
                            .map(|r| {
                                counter(
                                    fam::FRAMES_DROPPED,
                                    &[("direction", d.clone()), ("reason", s(r.as_str()))],
                                )
                            })
                            .collect()
                    }),
                    started: counter(fam::CARRIER_CALLS_STARTED, &[("carrier", s(c))]),
                }
            })
            .collect();
        let agents = labels
            .agents
            .iter()
            .map(|&a| {
                let h = |f| hist(f, &[("agent", s(a))]);
                let ev = |f: Family, extra: Option<(&'static str, &str)>| {
                    let mut l = vec![("agent", s(a))];
                    if let Some((k, v)) = extra {
                        l.push((k, s(v)));
                    }
                    counter(f, &l)
                };
                AgentSeries {
                    hist: AgentHistograms {
                        connect: h(fam::AGENT_CONNECT_DURATION),
                        turn: h(fam::TURN_LATENCY),
                        agent_turn: h(fam::AGENT_TURN_LATENCY),
                        call_turn_p95: h(fam::CALL_TURN_LATENCY_P95),
                        barge_in: h(fam::BARGE_IN_LATENCY),
                        playout_lag: h(fam::PLAYOUT_LAG),
                        ping_rtt: h(fam::AGENT_PING_RTT),
                        goodbye_cut: h(fam::GOODBYE_CUT),
                        recovery_gap: h(fam::AGENT_RECOVERY_GAP),
                    },
                    recoveries: RecoveryResult::ALL
                        .iter()
                        .map(|r| ev(fam::AGENT_RECOVERIES, Some(("result", r.as_str()))))
                        .collect(),
                    events: CallEventKind::ALL
                        .iter()
                        .map(|k| match k {
                            CallEventKind::BargeIn => ev(fam::BARGE_INS, None),
                            CallEventKind::DtmfDigit => ev(fam::DTMF, None),
                            CallEventKind::MarkPlayed => ev(fam::MARKS, Some(("result", "played"))),
                            CallEventKind::MarkFlushed => {
                                ev(fam::MARKS, Some(("result", "flushed")))
                            }
                            // Per carrier (below); this slot stays unused.
                            CallEventKind::UnknownCallerEvent => Counter::noop(),
                            CallEventKind::UnknownAgentEvent => {
                                ev(fam::UNKNOWN_EVENTS, Some(("leg", "agent")))
                            }
                        })
                        .collect(),
                    unknown_caller: labels
                        .carriers
                        .iter()
                        .map(|&c| ev(fam::UNKNOWN_EVENTS, Some(("leg", c))))
                        .collect(),
                    tools: ToolResult::ALL
                        .iter()
                        .map(|t| ev(fam::TOOL_CALLS, Some(("result", t.as_str()))))
                        .collect(),
                    started: ev(fam::CALLS_STARTED, None),
                    connects: ["ok", "failed"]
                        .map(|res| ev(fam::AGENT_CONNECTS, Some(("result", res)))),
                }
            })
            .collect();
        // Legs: carriers, then the agent, then the relay itself.
        let leg_rows: Vec<(Leg, &'static str)> = labels
            .carriers
            .iter()
            .map(|&c| (Leg::Caller, c))
            .chain([(Leg::Agent, "agent"), (Leg::Internal, "internal")])
            .collect();
        let errors = leg_rows
            .iter()
            .map(|&(kind, label)| {
                ErrorKind::ALL
                    .iter()
                    .map(|k| {
                        k.legs().contains(&kind).then(|| {
                            counter(fam::ERRORS, &[("leg", s(label)), ("kind", s(k.as_str()))])
                        })
                    })
                    .collect()
            })
            .collect();
        let build = gauge(
            fam::BUILD_INFO,
            &[("version", s(env!("CARGO_PKG_VERSION")))],
        );
        build.set(1.0);
        let labelled = |f: Family, name: &'static str, values: &[&'static str]| -> Vec<Counter> {
            values.iter().map(|v| counter(f, &[(name, s(v))])).collect()
        };
        let m = Metrics {
            calls_active: gauge(fam::CALLS_ACTIVE, &[]),
            calls_max: gauge(fam::CALLS_MAX, &[]),
            draining: gauge(fam::DRAINING, &[]),
            tasks_alive: gauge(fam::TASKS_ALIVE, &[]),
            call_duration: hist(fam::CALL_DURATION, &[]),
            jitter: FrameHistogram::new(&JITTER_BUCKETS),
            frames_missing: counter(fam::FRAMES_MISSING, &[]),
            playout_played_bytes: counter(fam::PLAYOUT_AUDIO_BYTES, &[("result", s("played"))]),
            playout_flushed_bytes: counter(fam::PLAYOUT_AUDIO_BYTES, &[("result", s("flushed"))]),
            streams_unauthenticated: counter(fam::STREAMS_UNAUTHENTICATED, &[]),
            duplicate_streams: counter(fam::DUPLICATE_STREAMS, &[]),
            drain_notices: counter(fam::DRAIN_NOTICES, &[]),
            recording_bytes: counter(fam::RECORDING_BYTES, &[]),
            recording_blocks_dropped: counter(fam::RECORDING_BLOCKS_DROPPED, &[]),
            amd: labelled(
                fam::AMD,
                "answered_by",
                &AnsweredBy::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            ),
            uploads: labelled(
                fam::RECORDING_UPLOADS,
                "result",
                &UploadResult::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            ),
            recordings: labelled(
                fam::RECORDINGS,
                "result",
                &RecordingResult::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            ),
            carriers,
            agents,
            errors,
            outcomes: labelled(
                fam::CALLS_TOTAL,
                "outcome",
                &Outcome::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
            ),
            upgrades: labelled(
                fam::UPGRADES,
                "result",
                &UpgradeResult::ALL
                    .iter()
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>(),
            ),
            stream_tokens: labelled(
                fam::STREAM_TOKENS,
                "result",
                &TokenResult::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            ),
            http_rejected: labelled(
                fam::HTTP_CONNECTIONS_REJECTED,
                "reason",
                &HttpRejectReason::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            ),
            http_pending: gauge(fam::HTTP_CONNECTIONS_PENDING, &[]),
            actions: ActionKind::ALL
                .iter()
                .flat_map(|a| ActionSource::ALL.iter().map(move |s| (a, s)))
                .flat_map(|(a, s)| ActionResult::ALL.iter().map(move |r| (a, s, r)))
                .map(|(a, so, r)| {
                    counter(
                        fam::CALL_ACTIONS,
                        &[
                            ("action", s(a.as_str())),
                            ("source", s(so.as_str())),
                            ("result", s(r.as_str())),
                        ],
                    )
                })
                .collect(),
            post_call: PostCallType::ALL
                .iter()
                .flat_map(|t| PostCallResult::ALL.iter().map(move |r| (t, r)))
                .map(|(t, r)| {
                    counter(
                        fam::POST_CALL_WEBHOOKS,
                        &[("type", s(t.as_str())), ("result", s(r.as_str()))],
                    )
                })
                .collect(),
            transfers: labelled(
                fam::TRANSFERS,
                "result",
                &TransferResult::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            ),
            labels,
            process: metrics_process::Collector::default(),
            recorder,
            handle,
        };
        metrics::with_local_recorder(&m.recorder, || m.process.describe());
        Arc::new(m)
    }

    /// The label sets this registry was built for.
    pub fn labels(&self) -> &MetricLabels {
        &self.labels
    }

    /// Counters of `family` labelled `name` = each of `values` (created at 0), for a layer's
    /// own closed label set (outbound results, callback statuses). Call once per process and
    /// keep the handles.
    pub fn counters(
        &self,
        family: Family,
        name: &'static str,
        values: impl IntoIterator<Item = &'static str>,
    ) -> LabeledCounters {
        debug_assert!(fam::ALL.iter().any(|f| f.name == family.name));
        LabeledCounters(
            values
                .into_iter()
                .map(|v| {
                    let c = self
                        .recorder
                        .register_counter(&key(family.name, &[(name, v.to_owned())]), &META);
                    c.increment(0);
                    c
                })
                .collect(),
        )
    }

    /// Counts one agent recovery's end: `relay_agent_recoveries_total{agent,result}`.
    pub fn agent_recovery(&self, agent: usize, r: RecoveryResult) {
        if let Some(a) = self.agents.get(agent) {
            a.recoveries[r.index()].increment(1);
        }
    }

    /// `relay_agent_connect_duration_seconds{agent}` and `relay_agent_connects_total`.
    pub fn agent_connect(&self, agent: usize, seconds: f64, ok: bool) {
        if let Some(a) = self.agents.get(agent) {
            if ok {
                a.hist.connect.record(seconds);
            }
            a.connects[usize::from(!ok)].increment(1);
        }
    }

    /// Counts a call that started with `agent` through `carrier`:
    /// `relay_calls_started_total{agent}` and `relay_carrier_calls_started_total{carrier}`.
    pub fn call_started(&self, agent: usize, carrier: usize) {
        if let Some(a) = self.agents.get(agent) {
            a.started.increment(1);
        }
        if let Some(c) = self.carriers.get(carrier) {
            c.started.increment(1);
        }
    }

    /// Counts one upgrade attempt by result.
    pub fn upgrade(&self, r: UpgradeResult) {
        self.upgrades[r.index()].increment(1);
    }

    /// Counts one stream-token check by result.
    pub fn stream_token(&self, r: TokenResult) {
        self.stream_tokens[r.index()].increment(1);
    }

    /// Counts one call action: `relay_call_actions_total{action,source,result}`.
    pub fn call_action(&self, a: ActionKind, source: ActionSource, r: ActionResult) {
        let i =
            (a.index() * ActionSource::COUNT + source.index()) * ActionResult::COUNT + r.index();
        self.actions[i].increment(1);
    }

    /// Counts one answering-machine verdict: `relay_amd_total{answered_by}`.
    pub fn amd(&self, a: AnsweredBy) {
        self.amd[a.index()].increment(1);
    }

    /// Counts one recording upload attempt: `relay_recording_uploads_total{result}`.
    pub fn recording_upload(&self, r: UploadResult) {
        self.uploads[r.index()].increment(1);
    }

    /// Counts one finished recording: `relay_recordings_total{result}`.
    pub fn recording(&self, r: RecordingResult) {
        self.recordings[r.index()].increment(1);
    }

    /// Counts one post-call record's outcome: `relay_post_call_webhooks_total{type,result}`.
    pub fn post_call_webhook(&self, t: PostCallType, r: PostCallResult) {
        self.post_call[t.index() * PostCallResult::COUNT + r.index()].increment(1);
    }

    /// Counts one transfer's end: `relay_transfers_total{result}`.
    pub fn transfer(&self, r: TransferResult) {
        self.transfers[r.index()].increment(1);
    }

    /// Counts a connection closed before its request completed.
    pub fn http_rejected(&self, r: HttpRejectReason) {
        self.http_rejected[r.index()].increment(1);
    }

    /// The `relay_errors_total{leg,kind}` series of `leg` (through carrier `carrier` for the
    /// caller leg) and `kind`, if that kind can happen on that leg.
    pub fn error_counter(&self, leg: Leg, carrier: usize, kind: ErrorKind) -> Option<&Counter> {
        let row = match leg {
            Leg::Caller => carrier,
            Leg::Agent => self.labels.carriers.len(),
            Leg::Internal => self.labels.carriers.len() + 1,
        };
        self.errors.get(row)?.get(kind.index())?.as_ref()
    }

    /// Counts `n` errors: `relay_errors_total{leg,kind}`.
    pub fn errors(&self, leg: Leg, carrier: usize, kind: ErrorKind, n: u64) {
        match self.error_counter(leg, carrier, kind) {
            Some(c) => c.increment(n),
            None => debug_assert!(false, "error kind {kind} cannot happen on leg {leg}"),
        }
    }

    /// Counts one error of carrier `carrier`'s caller leg.
    pub fn caller_error(&self, carrier: usize, kind: ErrorKind) {
        self.errors(Leg::Caller, carrier, kind, 1);
    }

    /// Counts one error of the agent leg.
    pub fn agent_error(&self, kind: ErrorKind) {
        self.errors(Leg::Agent, 0, kind, 1);
    }

    /// Counts one error of the relay itself.
    pub fn internal_error(&self, kind: ErrorKind) {
        self.errors(Leg::Internal, 0, kind, 1);
    }

    /// Sets `relay_http_connections_pending`.
    pub fn gauge_pending(&self, n: usize) {
        self.http_pending.set(n as f64);
    }

    /// Counts a finished call: `relay_calls_total{outcome}`.
    pub fn call_ended(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].increment(1);
    }

    /// Records a finished call's quality figures: its p95 turn latency (if it had turns)
    /// and its p99 relay-added latency per direction (if it relayed frames).
    pub fn call_quality(
        &self,
        agent: usize,
        carrier: usize,
        turn_p95: Option<f64>,
        forward_p99: [Option<f64>; 2],
    ) {
        if let (Some(v), Some(a)) = (turn_p95, self.agents.get(agent)) {
            a.hist.call_turn_p95.record(v);
        }
        if let Some(c) = self.carriers.get(carrier) {
            for (h, v) in c.call_latency_p99.iter().zip(forward_p99) {
                if let Some(v) = v {
                    h.record(v);
                }
            }
        }
    }

    /// Prometheus text exposition of everything registered, process metrics refreshed.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.run_upkeep();
        let mut out = self.handle.render();
        for (f, per_carrier) in [(fam::FORWARD_LATENCY, true), (fam::INBOUND_JITTER, false)] {
            out.push_str(&format!(
                "# HELP {} {}\n# TYPE {} histogram\n",
                f.name, f.help, f.name
            ));
            if per_carrier {
                for c in &self.carriers {
                    for (h, l) in c.latency.iter().zip(&c.latency_labels) {
                        h.render(f.name, l, &mut out);
                    }
                }
            } else {
                self.jitter.render(f.name, "", &mut out);
            }
        }
        out
    }

    /// Drains pending histogram samples; call periodically (the recorder does not).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    // === for the per-call fold (obs::call_metrics) ===

    pub(crate) fn fold_frames(&self, carrier: usize, d: Direction, frames: u64, bytes: u64) {
        if let Some(c) = self.carriers.get(carrier) {
            c.frames[d.index()].increment(frames);
            c.audio_bytes[d.index()].increment(bytes);
        }
    }

    pub(crate) fn latency(&self, carrier: usize, d: Direction) -> Option<&FrameHistogram> {
        self.carriers.get(carrier).map(|c| &c.latency[d.index()])
    }

    pub(crate) fn fold_drops(&self, carrier: usize, d: Direction, r: DropReason, n: u64) {
        if let Some(c) = self.carriers.get(carrier) {
            c.drops[d.index()][r.index()].increment(n);
        }
    }

    pub(crate) fn fold_event(&self, agent: usize, carrier: usize, e: CallEventKind, n: u64) {
        let Some(a) = self.agents.get(agent) else {
            return;
        };
        match e {
            CallEventKind::UnknownCallerEvent => {
                if let Some(c) = a.unknown_caller.get(carrier) {
                    c.increment(n);
                }
            }
            _ => a.events[e.index()].increment(n),
        }
    }

    pub(crate) fn fold_tool(&self, agent: usize, r: ToolResult, n: u64) {
        if let Some(a) = self.agents.get(agent) {
            a.tools[r.index()].increment(n);
        }
    }

    pub(crate) fn fold_sample(&self, agent: usize, which: super::labels::Sample, v: f64) {
        use super::labels::Sample;
        let Some(a) = self.agents.get(agent) else {
            return;
        };
        let h = &a.hist;
        match which {
            Sample::Turn => h.turn.record(v),
            Sample::AgentTurn => h.agent_turn.record(v),
            Sample::BargeIn => h.barge_in.record(v),
            Sample::PlayoutLag => h.playout_lag.record(v),
            Sample::PingRtt => h.ping_rtt.record(v),
            Sample::GoodbyeCut => h.goodbye_cut.record(v),
            Sample::RecoveryGap => h.recovery_gap.record(v),
        }
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
pub(crate) fn test_labels() -> MetricLabels {
    MetricLabels {
        agents: vec!["elevenlabs", "assemblyai", "openai", "echo"],
        carriers: vec!["twilio", "telnyx"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every labelled series of a closed label set is on `/metrics` before anything
    /// happened, and every family has HELP text.
    #[test]
    fn every_series_exists_at_start_with_help() {
        let labels = test_labels();
        let m = Metrics::new(labels.clone());
        let text = m.render();
        for outcome in Outcome::ALL {
            assert!(
                text.contains(&format!("relay_calls_total{{outcome=\"{outcome}\"}} 0")),
                "{outcome}"
            );
        }
        for kind in ErrorKind::ALL {
            for leg in kind.legs() {
                let names: Vec<&str> = match leg {
                    Leg::Caller => labels.carriers.clone(),
                    Leg::Agent => vec!["agent"],
                    Leg::Internal => vec!["internal"],
                };
                for n in names {
                    let s = format!("relay_errors_total{{leg=\"{n}\",kind=\"{kind}\"}} 0");
                    assert!(text.contains(&s), "{s}");
                }
            }
        }
        for c in &labels.carriers {
            for d in [Direction::ToAgent, Direction::ToCaller] {
                for r in DropReason::ALL {
                    let s = format!(
                        "relay_frames_dropped_total{{direction=\"{}\",reason=\"{r}\"}} 0",
                        direction_label(c, d)
                    );
                    assert!(text.contains(&s), "{s}");
                }
            }
        }
        assert!(text.contains("relay_frames_total{direction=\"twilio_to_agent\"} 0"));
        assert!(text.contains("relay_frames_total{direction=\"agent_to_twilio\"} 0"));
        for a in &labels.agents {
            for t in ToolResult::ALL {
                let s = format!("relay_tool_calls_total{{agent=\"{a}\",result=\"{t}\"}} 0");
                assert!(text.contains(&s), "{s}");
            }
            assert!(text.contains(&format!("relay_calls_started_total{{agent=\"{a}\"}} 0")));
            assert!(text.contains(&format!("relay_barge_ins_total{{agent=\"{a}\"}} 0")));
            for c in &labels.carriers {
                let s = format!("relay_unknown_events_total{{agent=\"{a}\",leg=\"{c}\"}} 0");
                assert!(text.contains(&s), "{s}");
            }
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
            assert!(text.contains(&format!("# HELP {f} ")), "no HELP for {f}");
        }
        assert!(text.contains("relay_build_info{"));
        assert!(text.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn errors_count_only_on_their_legs() {
        let m = Metrics::new(test_labels());
        assert!(m
            .error_counter(Leg::Caller, 1, ErrorKind::MalformedJson)
            .is_some());
        assert!(m
            .error_counter(Leg::Agent, 0, ErrorKind::MissingEvent)
            .is_none());
        assert!(m
            .error_counter(Leg::Internal, 0, ErrorKind::UpgradeDowncast)
            .is_some());
        m.caller_error(1, ErrorKind::InvalidBase64);
        assert!(m
            .render()
            .contains("relay_errors_total{leg=\"telnyx\",kind=\"invalid_base64\"} 1"));
    }
}
