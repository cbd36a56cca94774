//! The load harness's caller side and run orchestration.
//!
//! [`run_load`] drives `calls` simulated Twilio calls ([`crate::peers::twilio_sim`]) against a
//! relay (or against the floor echo server, [`crate::bench::floor`]), ramped at `ramp_per_sec`,
//! every call sending one tagged 160-byte frame ([`crate::bench::tag`]) per 20 ms tick of a
//! shared clock: each call's ticks lie on the grid `epoch + k·20 ms + phase`, with
//! `phase = call index mod 20` ms (spreading the calls evenly over the 20 ms period) or 0 for
//! all with `aligned`.
//!
//! Timeline (all from one epoch, `std::time::Instant`):
//! `0.2 s` first call → ramp → `ramp_end` → `settle` → **steady window** of `duration` →
//! callers linger 0.5 s, send `stop`, wait for the relay to close.
//! Latencies are recorded for frames *sent* inside the steady window; counts and checks cover
//! every frame of the run. Resource samples of the monitored process are taken before the
//! first call (idle RSS) and at the window's start and end.
//!
//! Latency definitions (nanoseconds on the harness clock; the mock agent runs in this process):
//! - *caller → agent*: mock receive time − caller send time (relay + 2 loopback hops +
//!   both simulators' scheduling);
//! - *agent → caller* (echo mode): caller receive time − the mock's send time, which the mock
//!   wrote into the echoed frame (bytes 32..48, see `tag`);
//! - *round trip*: caller receive − caller send (the only latency for the floor echo server);
//! - *turn* (conversation): send time of the caller's last speech frame → first agent audio at
//!   the caller; *barge-in*: mock sends its barge-in signal (`interruption`,
//!   `reply.done{status:"interrupted"}`, `input_audio_buffer.speech_started`) → caller
//!   receives `clear`;
//!   *call setup*: WebSocket open at the caller → the session's init message at the mock
//!   (`conversation_initiation_client_data`, or `session.update` for AssemblyAI and OpenAI).
//!
//! **Pacing** ([`Pacing`], [`RunOptions`]): by default (`per-call`) every call has a timer of
//! its own on that grid and its task sends its frame when the timer fires. With `lockstep`,
//! one ticker task on the 20 ms grid (phase 0) sends every call's frame in one burst per tick,
//! one after another from one task, the way a media gateway that batches its calls does; the
//! calls' tasks then only echo marks and end the call. Either way every frame sent in the
//! steady window is counted by its phase within the 20 ms period (1 ms buckets,
//! [`LoadResult::send_phase_ms`]), and lockstep ticks are summarised as [`Bursts`].
//!
//! **Agent placement** ([`AgentSide`]): the mock agent runs in this process on the harness's
//! runtime ([`BenchAgent`]), or as a process of its own ([`AgentProcess`], `loadtest
//! agent-server`, single-threaded) whose results are copied back into the run.
//!
//! The mock agent speaks the dialect it was started with ([`BenchAgent::start_dialect`]); each
//! call carries its index as custom parameter `lt_call` and, for AssemblyAI and OpenAI, also
//! as `prompt` = `lt_call=<index>` (see [`bench_agent::call_prompt`]).
//!
//! **Agent-socket faults** ([`run_load_faults`], [`crate::bench::faults`]): the mock kills a
//! share of the live agent sockets during the window; the callers count the relay's hold
//! audio apart, time each gap, and keep the calls no kill hit apart for their latency.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant as TInstant, MissedTickBehavior};

use crate::bench::agent_process::AgentProcess;
use crate::bench::bench_agent::{
    self, new_histogram, AgentCallStats, AgentMode, AgentRun, BenchAgent, BenchDialect,
    PingSchedule,
};
use crate::bench::faults::{self, AgentFaults, CallerFaults, FaultConfig, FaultReport, GapTrack};
use crate::bench::procstat::{self, ProcSample};
use crate::bench::tag::{self, FramePlan, FrameTag};
use crate::peers::twilio_sim::{
    parse_server_message, StartParams, TwilioClient, TwilioInbound, TwilioSender,
};
use crate::MULAW_FRAME_BYTES;

/// 20 ms frame period.
pub const FRAME_PERIOD: Duration = Duration::from_millis(20);

/// Play events (mark received, clear) queued from a call's receiver to its sender loop.
const PLAY_QUEUE: usize = 256;

/// Configuration of one load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `ws://host:port/path` of the relay's Twilio endpoint (or the floor server).
    pub url: String,
    /// The target is the floor echo server: it reflects the caller's own messages, so replies
    /// are not validated as Twilio messages and frames come back un-re-tagged.
    pub floor: bool,
    /// Concurrent calls.
    pub calls: usize,
    /// Calls started per second during the ramp.
    pub ramp_per_sec: f64,
    /// Length of the steady window (all calls up).
    pub duration: Duration,
    /// Pause between the last call starting and the steady window (agent connects settle).
    pub settle: Duration,
    /// What the callers send under their tags (echo or conversation turns).
    pub plan: FramePlan,
    /// The agent's behaviour (must match `plan`: `turns` set iff conversation).
    pub mode: AgentMode,
    /// All calls tick at the same instant instead of being spread over the 20 ms period.
    pub aligned: bool,
    /// Process to sample for CPU/RSS (the relay or the floor server), if any.
    pub monitor_pid: Option<u32>,
}

/// How the callers' frame sends are clocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// Each call has its own 20 ms timer on the shared grid, at its phase (index mod 20 ms,
    /// or 0 for all with `aligned`), and its own task sends its frame.
    #[default]
    PerCall,
    /// One ticker on the grid (phase 0) sends every active call's frame per tick, one after
    /// another from one task: N frames in one burst every 20 ms.
    Lockstep,
}

impl Pacing {
    /// `per-call` or `lockstep`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pacing::PerCall => "per-call",
            Pacing::Lockstep => "lockstep",
        }
    }
}

/// Options of a run beyond [`LoadConfig`] (see [`run_load_with`]); the defaults are what
/// [`run_load`] does.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// How caller frames are clocked.
    pub pacing: Pacing,
    /// When the ElevenLabs mock agent pings.
    pub agent_ping: PingSchedule,
    /// Count context switches and system calls of the monitored process over the steady
    /// window with `perf stat` (see [`PerfStat`]). It adds a little cost to every system
    /// call of that process, so keep ratio runs without it.
    pub perf_stat: bool,
}

/// Where the mock agent of a run is.
#[derive(Clone, Copy)]
pub enum AgentSide<'a> {
    /// No mock agent (the floor, or a relay whose agent is elsewhere).
    None,
    /// In this process, on the harness's runtime.
    InProcess(&'a BenchAgent),
    /// A process of its own (`loadtest agent-server`).
    Process(&'a AgentProcess),
}

impl AgentSide<'_> {
    fn dialect(&self) -> Option<BenchDialect> {
        match self {
            AgentSide::None => None,
            AgentSide::InProcess(a) => Some(a.dialect()),
            AgentSide::Process(p) => Some(p.dialect()),
        }
    }

    /// `in-process`, `separate process` or `none`.
    pub fn describe(&self) -> &'static str {
        match self {
            AgentSide::None => "none",
            AgentSide::InProcess(_) => "in-process",
            AgentSide::Process(_) => "separate process",
        }
    }
}

/// Lockstep ticks in the steady window.
#[derive(Debug, Clone, Serialize)]
pub struct Bursts {
    /// Ticks whose scheduled time lay in the steady window.
    pub ticks: u64,
    /// Frames sent on those ticks.
    pub frames: u64,
    /// Fewest frames sent on one tick.
    pub frames_per_tick_min: u64,
    /// Most frames sent on one tick.
    pub frames_per_tick_max: u64,
    /// Time from a tick's first send to its last (the burst's length).
    pub span: Option<Percentiles>,
    /// Time from a tick's scheduled instant to its first send.
    pub late: Option<Percentiles>,
}

/// Counters of `perf stat -e …` over the steady window of the monitored process.
#[derive(Debug, Clone, Serialize)]
pub struct PerfStat {
    /// The command run.
    pub command: String,
    /// Event → count.
    pub counts: BTreeMap<String, f64>,
    /// Event → count ÷ frames relayed in the window.
    pub per_frame: BTreeMap<String, f64>,
    /// Frames relayed in the window (the denominator).
    pub frames: u64,
}

/// Events counted by [`RunOptions::perf_stat`].
pub const PERF_EVENTS: &[&str] = &[
    "context-switches",
    "cpu-migrations",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_futex",
    // `--runtime uring`: one submission (and wait) for many operations.
    "syscalls:sys_enter_io_uring_enter",
];

/// Latency percentiles of one series, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// 50th percentile, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// Percentile curve for plots: (percentile 0..100, µs), log-spaced towards the tail.
    pub curve: Vec<(f64, f64)>,
}

impl Percentiles {
    /// Summarises a nanosecond histogram; `None` if it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut curve = Vec::new();
        // x = -log10(1 - p): 0 → p0, 1 → p90, 2 → p99, 3 → p99.9, 4 → p99.99.
        let mut x = 0.0f64;
        while x <= 4.0001 {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            curve.push((p, us(h.value_at_quantile(p / 100.0))));
            x += 0.05;
        }
        Some(Percentiles {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            curve,
        })
    }
}

/// Caller-side counters (what the simulated Twilio callers saw), summed over calls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallerStats {
    /// Calls whose WebSocket upgrade succeeded.
    pub connected: u64,
    /// Calls that could not connect or start (including `refused`).
    pub connect_failures: u64,
    /// Of those, calls whose WebSocket upgrade was answered with an HTTP status instead of
    /// 101 (e.g. 503 from a relay that is draining or full, or from a proxy with no server).
    pub refused: u64,
    /// Tagged media frames sent.
    pub frames_sent: u64,
    /// `media` messages received.
    pub media_received: u64,
    /// Tagged frames received back (echo/floor).
    pub frames_received: u64,
    /// Distinct tagged frames received back.
    pub unique: u64,
    /// Tagged frames received more than once.
    pub duplicates: u64,
    /// Tagged frames received after a later one.
    pub reordered: u64,
    /// Frames tagged with another call's index.
    pub cross_talk: u64,
    /// Frames whose bytes differ from what was sent (or untaggable/odd-sized payloads).
    pub corrupt: u64,
    /// `mark` messages received.
    pub marks_received: u64,
    /// Marks echoed back after emulated playback.
    pub marks_echoed: u64,
    /// `clear` messages received.
    pub clears: u64,
    /// Messages Twilio would reject, and transport failures.
    pub protocol_errors: u64,
    /// First few protocol error texts.
    pub protocol_error_samples: Vec<String>,
    /// Calls the relay closed before the caller's `stop`.
    pub closed_early: u64,
    /// Conversation turns that should have been answered (speech ended well before stop).
    pub turns_expected: u64,
    /// Of those, turns for which agent audio arrived.
    pub turns_answered: u64,
    /// Turns whose agent audio was not the reply fixture byte for byte (a prefix when
    /// barge-in is on, the whole reply otherwise).
    pub turn_audio_mismatch: u64,
    /// How the relay ended each connection: close code → calls (`0`: no Close frame, the
    /// TCP connection just ended or failed).
    pub close_codes: BTreeMap<u16, u64>,
}

impl CallerStats {
    /// Adds `o`'s counters to these.
    pub fn add(&mut self, o: &CallerStats) {
        self.connected += o.connected;
        self.connect_failures += o.connect_failures;
        self.refused += o.refused;
        self.frames_sent += o.frames_sent;
        self.media_received += o.media_received;
        self.frames_received += o.frames_received;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.cross_talk += o.cross_talk;
        self.corrupt += o.corrupt;
        self.marks_received += o.marks_received;
        self.marks_echoed += o.marks_echoed;
        self.clears += o.clears;
        self.protocol_errors += o.protocol_errors;
        for s in &o.protocol_error_samples {
            if self.protocol_error_samples.len() < 5 {
                self.protocol_error_samples.push(s.clone());
            }
        }
        self.closed_early += o.closed_early;
        self.turns_expected += o.turns_expected;
        self.turns_answered += o.turns_answered;
        self.turn_audio_mismatch += o.turn_audio_mismatch;
        for (code, n) in &o.close_codes {
            *self.close_codes.entry(*code).or_default() += n;
        }
    }
}

/// Resource use of the monitored process over the steady window.
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    /// Process id sampled.
    pub pid: u32,
    /// Before the first call.
    pub idle: ProcSample,
    /// At the start of the steady window.
    pub window_start: ProcSample,
    /// At the end of the steady window.
    pub window_end: ProcSample,
    /// Window length, seconds.
    pub window_s: f64,
    /// CPU seconds (user + kernel) used in the window.
    pub cpu_s: f64,
    /// Share of the window's CPU spent in the kernel, 0..1.
    pub kernel_share: f64,
    /// Cores busy on average (cpu_s ÷ window_s).
    pub cores: f64,
    /// Frames relayed in the window: for a relay, frames received by the agent plus media
    /// messages received by the callers; for the floor, frames echoed. Each is one read +
    /// one write by the process.
    pub frames: u64,
    /// CPU microseconds per relayed frame.
    pub cpu_us_per_frame: f64,
    /// (RSS at window end − idle RSS) ÷ calls, KiB.
    pub rss_kib_per_call: f64,
    /// Calls one fully busy core would carry at this cost (calls ÷ cores).
    pub calls_per_core: f64,
    /// Voluntary context switches (all threads, `/proc/<pid>/task/*/status`) in the window
    /// ÷ frames.
    pub voluntary_switches_per_frame: f64,
    /// Involuntary (preempted) context switches in the window ÷ frames.
    pub nonvoluntary_switches_per_frame: f64,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Target URL.
    pub url: String,
    /// The target was the floor echo server.
    pub floor: bool,
    /// `echo` or `conversation`.
    pub mode: String,
    /// Calls requested.
    pub calls: usize,
    /// Ramp, calls per second.
    pub ramp_per_sec: f64,
    /// Steady window, seconds.
    pub window_s: f64,
    /// Caller-side counters.
    pub caller: CallerStats,
    /// Agent-side counters (`None` without the in-process mock agent).
    pub agent: Option<AgentCallStats>,
    /// Conversations the mock could not attribute to a call.
    pub agent_unidentified: usize,
    /// Frames sent by callers that never reached the agent (`None` without the mock).
    pub lost_caller_to_agent: Option<u64>,
    /// Frames sent back (by the agent, or echoed by the floor) that never reached the caller.
    pub lost_to_caller: u64,
    /// caller → agent one-way latency.
    pub caller_to_agent: Option<Percentiles>,
    /// agent → caller one-way latency (echo mode).
    pub agent_to_caller: Option<Percentiles>,
    /// Caller → (relay → agent → relay | floor) → caller round trip (echo mode).
    pub round_trip: Option<Percentiles>,
    /// Turn latency (conversation mode).
    pub turn: Option<Percentiles>,
    /// Barge-in latency (conversation mode with barge-in).
    pub barge_in: Option<Percentiles>,
    /// Call setup latency (WebSocket open → agent init).
    pub call_setup: Option<Percentiles>,
    /// CPU/RSS of the monitored process.
    pub resources: Option<Resources>,
    /// Cores the harness process itself (callers + mock agent) kept busy in the steady
    /// window — on a small machine it competes with the relay for CPU, which shows in the
    /// latency tail.
    pub harness_cores: f64,
    /// How the callers' sends were clocked.
    pub pacing: Pacing,
    /// Where the mock agent ran: `in-process`, `separate process` or `none`.
    pub agent_placement: String,
    /// Cores the separate agent process kept busy in the steady window.
    pub agent_process_cores: Option<f64>,
    /// Frames sent in the steady window by their phase in the 20 ms period on the harness
    /// clock: element `k` counts sends at `k..k+1` ms past a grid point.
    pub send_phase_ms: Vec<u64>,
    /// Lockstep pacing: the ticks of the steady window.
    pub bursts: Option<Bursts>,
    /// `perf stat` counters of the monitored process, if asked for.
    pub perf: Option<PerfStat>,
    /// Agent-socket faults and recoveries (a fault run only, see [`run_load_faults`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultReport>,
}

impl LoadResult {
    /// The largest share (0..1) of the window's frames sent within `width_ms` consecutive
    /// 1 ms phases of the 20 ms period (wrapping around): ~1 when every call sends on one
    /// clock, ~`width_ms`/20 when the calls are spread over the period.
    pub fn send_phase_concentration(&self, width_ms: usize) -> f64 {
        let h = &self.send_phase_ms;
        let total: u64 = h.iter().sum();
        if total == 0 || h.is_empty() {
            return 0.0;
        }
        let w = width_ms.clamp(1, h.len());
        let best = (0..h.len())
            .map(|k| (0..w).map(|j| h[(k + j) % h.len()]).sum::<u64>())
            .max()
            .unwrap_or(0);
        best as f64 / total as f64
    }

    /// Total frames lost in either direction (unknown directions count as 0).
    pub fn lost(&self) -> u64 {
        self.lost_caller_to_agent.unwrap_or(0) + self.lost_to_caller
    }

    /// True if no frame was lost, duplicated, corrupted or misrouted, every call connected,
    /// and no protocol error was seen.
    pub fn clean(&self) -> bool {
        let a = self.agent.clone().unwrap_or_default();
        self.lost() == 0
            && self.caller.connect_failures == 0
            && self.caller.cross_talk + a.cross_talk == 0
            && self.caller.corrupt + a.corrupt == 0
            && self.caller.duplicates + a.duplicates == 0
            && self.caller.protocol_errors + a.protocol_errors == 0
            && self.caller.turn_audio_mismatch == 0
            && self.caller.turns_answered == self.caller.turns_expected
    }
}

/// Caller-side shared state of one run.
pub(crate) struct CallerRun {
    pub(crate) epoch: Instant,
    pub(crate) cfg: LoadConfig,
    pub(crate) window_ns: (u64, u64),
    pub(crate) stop_ns: u64,
    pub(crate) agent_to_caller: Mutex<Histogram<u64>>,
    pub(crate) round_trip: Mutex<Histogram<u64>>,
    pub(crate) turn: Mutex<Histogram<u64>>,
    pub(crate) barge_in: Mutex<Histogram<u64>>,
    pub(crate) media_rx: AtomicU64,
    /// Tagged media frames sent by all callers so far.
    pub(crate) frames_tx: AtomicU64,
    pub(crate) active: AtomicUsize,
    pub(crate) open_ns: Vec<AtomicU64>,
    pub(crate) agent: Option<Arc<AgentRun>>,
    /// The mock agent's dialect, if there is one.
    pub(crate) dialect: Option<BenchDialect>,
    /// Lockstep pacing: the calls the one ticker sends for (`None`: per-call timers).
    pub(crate) lockstep: Option<Lockstep>,
    /// Frames sent in the window by 1 ms phase of the 20 ms period.
    pub(crate) send_phase: Vec<AtomicU64>,
    /// A fault run's caller-side state.
    pub(crate) faults: Option<Arc<CallerFaults>>,
}

impl CallerRun {
    /// Fresh caller-side state (`cfg.calls` is the number of call indexes used).
    pub(crate) fn new(
        epoch: Instant,
        cfg: LoadConfig,
        window_ns: (u64, u64),
        stop_ns: u64,
        agent: Option<Arc<AgentRun>>,
        dialect: Option<BenchDialect>,
    ) -> Self {
        CallerRun {
            epoch,
            window_ns,
            stop_ns,
            agent_to_caller: Mutex::new(new_histogram()),
            round_trip: Mutex::new(new_histogram()),
            turn: Mutex::new(new_histogram()),
            barge_in: Mutex::new(new_histogram()),
            media_rx: AtomicU64::new(0),
            frames_tx: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            open_ns: (0..cfg.calls).map(|_| AtomicU64::new(0)).collect(),
            agent,
            dialect,
            lockstep: None,
            send_phase: (0..PHASE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            faults: None,
            cfg,
        }
    }

    /// The same state with lockstep pacing: the run must also start [`lockstep_ticker`].
    pub(crate) fn with_lockstep(mut self) -> Self {
        self.lockstep = Some(Lockstep::new());
        self
    }

    /// Counts a frame sent at `ns` by its phase, if it is in the window.
    fn note_send(&self, ns: u64) {
        if self.in_window(ns) {
            let k = ((ns % FRAME_PERIOD.as_nanos() as u64) / 1_000_000) as usize;
            self.send_phase[k.min(PHASE_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_ns.0 && ns <= self.window_ns.1
    }
    fn tinstant(&self, ns: u64) -> TInstant {
        TInstant::from_std(self.epoch + Duration::from_nanos(ns))
    }
}

/// 1 ms phase buckets of the 20 ms period.
const PHASE_BUCKETS: usize = 20;

/// One call as the lockstep ticker sees it.
pub(crate) struct LockstepCall {
    index: u32,
    tx: TwilioSender,
    sent: Arc<Mutex<Vec<u64>>>,
    stop_ns: u64,
    /// Next sequence number (only the ticker touches it).
    seq: AtomicU64,
    frames_sent: AtomicU64,
    done: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicBool,
    /// Woken once when the call is done (stop time reached, or a send failed).
    notify: tokio::sync::Notify,
}

impl LockstepCall {
    fn finish(&self, failed: bool) {
        if failed {
            self.failed.store(true, Ordering::Relaxed);
        }
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }
    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct LockstepRegistry {
    calls: Vec<Arc<LockstepCall>>,
    /// The ticker has stopped: calls registering now are done at once.
    closed: bool,
}

/// Lockstep pacing's shared state: the registered calls and the burst statistics.
pub(crate) struct Lockstep {
    registry: Mutex<LockstepRegistry>,
    ticks: AtomicU64,
    frames: AtomicU64,
    min_frames: AtomicU64,
    max_frames: AtomicU64,
    span: Mutex<Histogram<u64>>,
    late: Mutex<Histogram<u64>>,
}

impl Lockstep {
    fn new() -> Self {
        Lockstep {
            registry: Mutex::new(LockstepRegistry::default()),
            ticks: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            min_frames: AtomicU64::new(u64::MAX),
            max_frames: AtomicU64::new(0),
            span: Mutex::new(new_histogram()),
            late: Mutex::new(new_histogram()),
        }
    }

    fn register(
        &self,
        index: u32,
        tx: TwilioSender,
        sent: Arc<Mutex<Vec<u64>>>,
        stop_ns: u64,
    ) -> Arc<LockstepCall> {
        let c = Arc::new(LockstepCall {
            index,
            tx,
            sent,
            stop_ns,
            seq: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            done: std::sync::atomic::AtomicBool::new(false),
            failed: std::sync::atomic::AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
        });
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if reg.closed {
            c.finish(false);
        } else {
            reg.calls.push(c.clone());
        }
        c
    }

    fn summary(&self) -> Bursts {
        let ticks = self.ticks.load(Ordering::Relaxed);
        let h = |m: &Mutex<Histogram<u64>>| {
            Percentiles::of(&m.lock().unwrap_or_else(|p| p.into_inner()))
        };
        Bursts {
            ticks,
            frames: self.frames.load(Ordering::Relaxed),
            frames_per_tick_min: if ticks > 0 {
                self.min_frames.load(Ordering::Relaxed)
            } else {
                0
            },
            frames_per_tick_max: self.max_frames.load(Ordering::Relaxed),
            span: h(&self.span),
            late: h(&self.late),
        }
    }
}

/// The lockstep clock: one 20 ms ticker (grid phase 0, missed ticks sent late in a burst,
/// as per-call timers do) that sends every registered call's next frame per tick, one after
/// another from this one task, until the run's stop time. The burst runs unconstrained by
/// tokio's cooperative budget, so it is not cut into slices by forced yields.
pub(crate) async fn lockstep_ticker(s: Arc<CallerRun>) {
    let Some(ls) = s.lockstep.as_ref() else {
        return;
    };
    let period = FRAME_PERIOD.as_nanos() as u64;
    let mut due = (s.now_ns() / period + 1) * period;
    let mut ticker = tokio::time::interval_at(s.tinstant(due), FRAME_PERIOD);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut batch: Vec<Arc<LockstepCall>> = Vec::new();
    loop {
        ticker.tick().await;
        let tick_due = due;
        due += period;
        let stopping = s.now_ns() >= s.stop_ns;
        batch.clear();
        {
            let mut reg = ls.registry.lock().unwrap_or_else(|p| p.into_inner());
            reg.calls.retain(|c| !c.is_done());
            batch.extend(reg.calls.iter().cloned());
            if stopping {
                reg.closed = true;
                reg.calls.clear();
            }
        }
        if stopping {
            for c in &batch {
                c.finish(false);
            }
            return;
        }
        let (n, first, last) = tokio::task::unconstrained(async {
            let (mut n, mut first, mut last) = (0u64, None::<u64>, 0u64);
            for c in &batch {
                if c.is_done() {
                    continue;
                }
                let now = s.now_ns();
                if now >= c.stop_ns {
                    c.finish(false);
                    continue;
                }
                let seq = c.seq.fetch_add(1, Ordering::Relaxed) as u32;
                let frame = s.cfg.plan.frame(FrameTag {
                    call: c.index,
                    seq,
                    sent_ns: now,
                });
                c.sent.lock().unwrap_or_else(|p| p.into_inner()).push(now);
                if c.tx.send_media(&frame).await.is_err() {
                    c.finish(true);
                    continue;
                }
                c.frames_sent.fetch_add(1, Ordering::Relaxed);
                s.frames_tx.fetch_add(1, Ordering::Relaxed);
                s.note_send(now);
                n += 1;
                first.get_or_insert(now);
                last = now;
            }
            (n, first, last)
        })
        .await;
        if s.in_window(tick_due) {
            ls.ticks.fetch_add(1, Ordering::Relaxed);
            ls.frames.fetch_add(n, Ordering::Relaxed);
            ls.min_frames.fetch_min(n, Ordering::Relaxed);
            ls.max_frames.fetch_max(n, Ordering::Relaxed);
            if let Some(f) = first {
                record(&ls.span, last - f);
                record(&ls.late, f.saturating_sub(tick_due));
            }
        }
    }
}

fn record(h: &Mutex<Histogram<u64>>, ns: u64) {
    let _ = h
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(ns.max(1));
}

/// Progress information for a UI.
pub trait Progress: Send + Sync {
    /// Called about every 250 ms: elapsed and total run time (s), active calls, media
    /// messages received so far.
    fn tick(&self, elapsed_s: f64, total_s: f64, active: usize, media_rx: u64);
}

/// Runs one load run with the default [`RunOptions`] (per-call pacing). `agent` is the
/// in-process mock (if any); its run state is replaced.
pub async fn run_load(
    cfg: LoadConfig,
    agent: Option<&BenchAgent>,
    progress: Option<&dyn Progress>,
) -> anyhow::Result<LoadResult> {
    let side = agent.map_or(AgentSide::None, AgentSide::InProcess);
    run_load_with(cfg, &RunOptions::default(), side, progress).await
}

/// Runs one load run shaped by `opts`, with the mock agent at `agent` (its run state is
/// replaced).
pub async fn run_load_with(
    cfg: LoadConfig,
    opts: &RunOptions,
    agent: AgentSide<'_>,
    progress: Option<&dyn Progress>,
) -> anyhow::Result<LoadResult> {
    run_load_faults(cfg, opts, agent, progress, None).await
}

/// [`run_load_with`], and with `faults` the bench agent kills agent sockets during the
/// steady window ([`crate::bench::faults`]; echo mode with the in-process agent only): the
/// result's [`LoadResult::faults`] reports the recoveries.
pub async fn run_load_faults(
    cfg: LoadConfig,
    opts: &RunOptions,
    agent: AgentSide<'_>,
    progress: Option<&dyn Progress>,
    faults: Option<&FaultConfig>,
) -> anyhow::Result<LoadResult> {
    if faults.is_some() {
        if !matches!(agent, AgentSide::InProcess(_)) {
            anyhow::bail!("agent-socket faults need the in-process mock agent");
        }
        if cfg.plan.turns.is_some() || cfg.floor {
            anyhow::bail!("agent-socket faults run in echo mode against a relay");
        }
    }
    let ticks = procstat::clock_ticks();
    let idle = match cfg.monitor_pid {
        Some(pid) => Some(procstat::sample(pid, ticks)?),
        None => None,
    };
    let epoch = Instant::now();
    let first_ns: u64 = 200_000_000;
    let ramp_ns = ((cfg.calls.saturating_sub(1)) as f64 / cfg.ramp_per_sec.max(0.001) * 1e9) as u64;
    let window_start = first_ns + ramp_ns + cfg.settle.as_nanos() as u64;
    let window_end = window_start + cfg.duration.as_nanos() as u64;
    let stop_ns = window_end + 200_000_000;
    let total_s = (stop_ns as f64) / 1e9 + 1.0;
    // Fault runs: the kills, and which calls they hit.
    let kills = faults.map_or_else(Vec::new, |f| {
        faults::schedule(f, cfg.calls, (window_start, window_end))
    });
    let mut affected = vec![false; cfg.calls];
    for k in &kills {
        affected[k.call] = true;
    }
    let agent_faults = faults.map(|f| Arc::new(AgentFaults::new(f.mode, affected.clone())));
    let caller_faults = faults.map(|_| {
        Arc::new(CallerFaults::new(
            affected,
            &kills,
            (window_start, window_end),
        ))
    });
    let mut relay_errors = Vec::new();
    let relay_before = match faults.and_then(|f| f.relay.as_ref()) {
        Some(r) => Some(faults::scrape(r, &mut relay_errors).await),
        None => None,
    };
    let agent_run = match agent {
        AgentSide::None => None,
        _ => {
            let mut run = AgentRun::new(
                epoch,
                cfg.plan.clone(),
                cfg.mode.clone(),
                (window_start, window_end),
                cfg.calls,
            )
            .with_ping(opts.agent_ping);
            if let Some(f) = &agent_faults {
                run = run.with_faults(f.clone());
            }
            Some(Arc::new(run))
        }
    };
    match (agent, &agent_run) {
        (AgentSide::InProcess(a), Some(run)) => a.set_run(run.clone()),
        // The separate agent gets the same run; `agent_run` is then its local mirror.
        (AgentSide::Process(p), Some(run)) => p.start_run(run).await?,
        _ => {}
    }
    let agent_pid = match agent {
        AgentSide::Process(p) => Some(p.pid()),
        _ => None,
    };
    let mut caller_run = CallerRun::new(
        epoch,
        cfg.clone(),
        (window_start, window_end),
        stop_ns,
        agent_run.clone(),
        agent.dialect(),
    );
    if opts.pacing == Pacing::Lockstep {
        caller_run = caller_run.with_lockstep();
    }
    caller_run.faults = caller_faults.clone();
    let shared = Arc::new(caller_run);
    let killer = match (&agent_run, faults) {
        (Some(a), Some(_)) => Some(tokio::spawn(faults::kill_loop(a.clone(), kills.clone()))),
        _ => None,
    };
    let ticker = (opts.pacing == Pacing::Lockstep).then(|| {
        let shared = shared.clone();
        tokio::spawn(lockstep_ticker(shared))
    });
    let perf = match (opts.perf_stat, cfg.monitor_pid) {
        (true, Some(pid)) => Some(tokio::spawn(perf_stat_window(
            pid,
            shared.tinstant(window_start),
            cfg.duration,
        ))),
        _ => None,
    };

    let mut handles = Vec::with_capacity(cfg.calls);
    for i in 0..cfg.calls {
        let start_ns = first_ns + (i as f64 / cfg.ramp_per_sec.max(0.001) * 1e9) as u64;
        let shared = shared.clone();
        handles.push(tokio::spawn(call(i, start_ns, shared)));
    }

    // Sample resources at the window edges; report progress meanwhile.
    let frames_now = |s: &CallerRun| {
        s.media_rx.load(Ordering::Relaxed)
            + s.agent
                .as_ref()
                .map_or(0, |a| a.frames_rx.load(Ordering::Relaxed))
    };
    let mut samples: Vec<(ProcSample, u64)> = Vec::new();
    let mut own: Vec<ProcSample> = Vec::new();
    let mut agent_samples: Vec<ProcSample> = Vec::new();
    for edge in [window_start, window_end] {
        loop {
            let now = shared.now_ns();
            if let Some(p) = progress {
                p.tick(
                    now as f64 / 1e9,
                    total_s,
                    shared.active.load(Ordering::Relaxed),
                    shared.media_rx.load(Ordering::Relaxed),
                );
            }
            if now >= edge {
                break;
            }
            let wait = Duration::from_nanos((edge - now).min(250_000_000));
            tokio::time::sleep(wait).await;
        }
        if let (AgentSide::Process(p), Some(run)) = (agent, &agent_run) {
            p.refresh(run).await?;
        }
        let frames = frames_now(&shared);
        own.push(procstat::sample(std::process::id(), ticks).unwrap_or_default());
        if let Some(pid) = agent_pid {
            agent_samples.push(procstat::sample(pid, ticks).unwrap_or_default());
        }
        if let Some(pid) = cfg.monitor_pid {
            samples.push((procstat::sample(pid, ticks)?, frames));
        } else {
            samples.push((ProcSample::default(), frames));
        }
    }
    let mut caller = CallerStats::default();
    let mut pending = handles.into_iter();
    for h in pending.by_ref() {
        while !h.is_finished() {
            if let Some(p) = progress {
                p.tick(
                    shared.now_ns() as f64 / 1e9,
                    total_s,
                    shared.active.load(Ordering::Relaxed),
                    shared.media_rx.load(Ordering::Relaxed),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        caller.add(&h.await?);
    }
    // Let the mock finish its conversations (the relay closes them after each `stop`).
    if let Some(a) = &agent_run {
        let expect = caller.connected as usize;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let AgentSide::Process(p) = agent {
                p.refresh(a).await?;
            }
            let ended = a.conversations_done.load(Ordering::Relaxed);
            let done = ended + a.unidentified.load(Ordering::Relaxed);
            // In a fault run a call has several conversations (the relay reconnected its
            // agent): wait for the last one too.
            let all_ended =
                faults.is_none() || ended >= a.conversations_started.load(Ordering::Relaxed);
            if (done >= expect && all_ended) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let AgentSide::Process(p) = agent {
            p.collect(a).await?;
        }
    }
    if let Some(t) = ticker {
        let _ = t.await;
    }
    if let Some(t) = killer {
        t.abort();
    }
    let fault_report = match (faults, &caller_faults, &agent_run) {
        (Some(f), Some(cf), Some(a)) => {
            let af = a.faults.clone().expect("a fault run's agent has faults");
            let mut rep = faults::analyze(f, &kills, cf, a, &af, &caller);
            if let (Some(r), Some(before)) = (f.relay.as_ref(), relay_before.as_deref()) {
                // Let the relay fold the calls' last figures.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let mut fig = faults::relay_figures(
                    r,
                    before,
                    cfg.calls,
                    agent.dialect().map(|d| d.as_str()),
                )
                .await;
                relay_errors.append(&mut fig.errors);
                fig.errors = relay_errors;
                rep.relay = Some(fig);
            }
            Some(rep)
        }
        _ => None,
    };

    let resources = match (cfg.monitor_pid, idle) {
        (Some(pid), Some(idle)) => {
            let (s0, f0) = samples[0];
            let (s1, f1) = samples[1];
            let window_s = cfg.duration.as_secs_f64();
            let cpu_s = s1.cpu_s() - s0.cpu_s();
            let frames = f1 - f0;
            Some(Resources {
                pid,
                idle,
                window_start: s0,
                window_end: s1,
                window_s,
                cpu_s,
                kernel_share: if cpu_s > 0.0 {
                    (s1.system_s - s0.system_s) / cpu_s
                } else {
                    0.0
                },
                cores: cpu_s / window_s,
                frames,
                cpu_us_per_frame: if frames > 0 {
                    cpu_s * 1e6 / frames as f64
                } else {
                    0.0
                },
                rss_kib_per_call: (s1.rss_kib as f64 - idle.rss_kib as f64)
                    / cfg.calls.max(1) as f64,
                calls_per_core: if cpu_s > 0.0 {
                    cfg.calls as f64 / (cpu_s / window_s)
                } else {
                    0.0
                },
                voluntary_switches_per_frame: per_frame(
                    s1.voluntary_switches.saturating_sub(s0.voluntary_switches),
                    frames,
                ),
                nonvoluntary_switches_per_frame: per_frame(
                    s1.nonvoluntary_switches
                        .saturating_sub(s0.nonvoluntary_switches),
                    frames,
                ),
            })
        }
        _ => None,
    };

    let mut setup = new_histogram();
    let (agent_totals, lost_c2a, lost_to_caller, unidentified) = match &agent_run {
        Some(a) => {
            for (i, slot) in a.slots.iter().enumerate() {
                let init = slot.init_ns.load(Ordering::Relaxed);
                let open = shared.open_ns[i].load(Ordering::Relaxed);
                if init > 0 && open > 0 {
                    let _ = setup.record(init.saturating_sub(open).max(1));
                }
            }
            let t = a.totals();
            let lost_c2a = caller.frames_sent.saturating_sub(t.unique);
            let lost_back = if cfg.plan.turns.is_none() {
                t.echoed.saturating_sub(caller.unique)
            } else {
                0
            };
            (
                Some(t),
                Some(lost_c2a),
                lost_back,
                a.unidentified.load(Ordering::Relaxed),
            )
        }
        None => {
            let back = if cfg.floor {
                caller.frames_sent.saturating_sub(caller.unique)
            } else {
                0
            };
            (None, None, back, 0)
        }
    };
    let h =
        |m: &Mutex<Histogram<u64>>| Percentiles::of(&m.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(LoadResult {
        url: cfg.url.clone(),
        floor: cfg.floor,
        mode: if cfg.plan.turns.is_some() {
            "conversation".into()
        } else {
            "echo".into()
        },
        calls: cfg.calls,
        ramp_per_sec: cfg.ramp_per_sec,
        window_s: cfg.duration.as_secs_f64(),
        caller,
        agent: agent_totals,
        agent_unidentified: unidentified,
        lost_caller_to_agent: lost_c2a,
        lost_to_caller,
        caller_to_agent: agent_run.as_ref().and_then(|a| h(&a.caller_to_agent)),
        agent_to_caller: h(&shared.agent_to_caller),
        round_trip: h(&shared.round_trip),
        turn: h(&shared.turn),
        barge_in: h(&shared.barge_in),
        call_setup: Percentiles::of(&setup),
        harness_cores: (own[1].cpu_s() - own[0].cpu_s()) / cfg.duration.as_secs_f64().max(1e-9),
        pacing: opts.pacing,
        agent_placement: agent.describe().to_owned(),
        agent_process_cores: (agent_samples.len() == 2).then(|| {
            (agent_samples[1].cpu_s() - agent_samples[0].cpu_s())
                / cfg.duration.as_secs_f64().max(1e-9)
        }),
        send_phase_ms: shared
            .send_phase
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
        bursts: shared.lockstep.as_ref().map(Lockstep::summary),
        perf: match perf {
            Some(t) => match t.await {
                Ok(Ok((command, counts))) => {
                    let frames = resources.as_ref().map_or(0, |r| r.frames);
                    Some(PerfStat {
                        per_frame: counts
                            .iter()
                            .map(|(k, v)| (k.clone(), v / frames.max(1) as f64))
                            .collect(),
                        command,
                        counts,
                        frames,
                    })
                }
                Ok(Err(e)) => {
                    tracing::warn!("perf stat failed: {e:#}");
                    None
                }
                Err(_) => None,
            },
            None => None,
        },
        resources,
        faults: fault_report,
    })
}

fn per_frame(n: u64, frames: u64) -> f64 {
    if frames > 0 {
        n as f64 / frames as f64
    } else {
        0.0
    }
}

/// Runs `perf stat -x, -e <PERF_EVENTS> -p <pid> -- sleep <window>` from `start`, and
/// returns the command line and the counts (events perf could not count are left out).
async fn perf_stat_window(
    pid: u32,
    start: TInstant,
    window: Duration,
) -> anyhow::Result<(String, BTreeMap<String, f64>)> {
    tokio::time::sleep_until(start).await;
    let events = PERF_EVENTS.join(",");
    let secs = format!("{:.3}", window.as_secs_f64());
    let args = [
        "stat",
        "-x",
        ",",
        "-e",
        &events,
        "-p",
        &pid.to_string(),
        "--",
        "sleep",
        &secs,
    ]
    .map(str::to_owned);
    let out = tokio::process::Command::new("perf")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stderr);
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        // CSV: value,unit,event,run time,percentage,...
        let f: Vec<&str> = line.split(',').collect();
        if f.len() >= 3 {
            if let Ok(v) = f[0].trim().parse::<f64>() {
                counts.insert(f[2].trim().to_owned(), v);
            }
        }
    }
    if counts.is_empty() {
        anyhow::bail!("perf stat printed no counts: {}", text.trim());
    }
    Ok((format!("perf {}", args.join(" ")), counts))
}

/// From the receiver to the sender: marks to echo after playback, or a `clear`.
enum PlayEvent {
    Mark(String, TInstant),
    Clear,
}

/// One simulated call: connect, `connected`/`start`, tagged frames until the stop time, 0.5 s
/// linger, `stop`, wait for the close.
async fn call(i: usize, start_ns: u64, s: Arc<CallerRun>) -> CallerStats {
    let stop_ns = s.stop_ns;
    call_span(i, start_ns, stop_ns, Duration::from_millis(500), s).await
}

/// One simulated call with its own schedule: connect at `start_ns`, `connected`/`start`,
/// tagged frames until `stop_ns`, `linger`, `stop`, wait for the relay's close.
pub(crate) async fn call_span(
    i: usize,
    start_ns: u64,
    stop_ns: u64,
    linger: Duration,
    s: Arc<CallerRun>,
) -> CallerStats {
    let mut stats = CallerStats::default();
    tokio::time::sleep_until(s.tinstant(start_ns)).await;
    let client = match TwilioClient::try_connect(&s.cfg.url, &[]).await {
        Ok(Ok(c)) => c,
        Ok(Err(status)) => {
            stats.connect_failures += 1;
            stats.refused += 1;
            stats
                .protocol_error_samples
                .push(format!("upgrade refused with HTTP {status}"));
            return stats;
        }
        Err(e) => {
            stats.connect_failures += 1;
            stats.protocol_error_samples.push(format!("connect: {e:#}"));
            return stats;
        }
    };
    s.open_ns[i].store(s.now_ns(), Ordering::Relaxed);
    stats.connected += 1;
    s.active.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = client.split();
    let mut params = StartParams::for_call(i as u64);
    params
        .custom_parameters
        .push((bench_agent::CALL_PARAM.to_owned(), i.to_string()));
    if s.dialect.is_some_and(|d| d != BenchDialect::ElevenLabs) {
        // AssemblyAI and OpenAI have no variables: the index travels in the prompt.
        params
            .custom_parameters
            .push(("prompt".to_owned(), bench_agent::call_prompt(i)));
    }
    let sent: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::with_capacity(1024)));
    // Bounded: marks arrive every ~100 ms and the sender loop takes them at once; a full queue
    // only makes the receiver wait.
    let (play_tx, mut play_rx) = mpsc::channel::<PlayEvent>(PLAY_QUEUE);
    let receiver = tokio::spawn(receive(
        i as u32,
        rx,
        params.stream_sid.clone(),
        s.clone(),
        sent.clone(),
        play_tx,
    ));
    if tx.send_connected().await.is_err() || tx.send_start(&params).await.is_err() {
        stats.connect_failures += 1;
        receiver.abort();
        s.active.fetch_sub(1, Ordering::Relaxed);
        return stats;
    }
    // Lockstep: the one ticker sends this call's frames from now on.
    let lockstep = s
        .lockstep
        .as_ref()
        .map(|ls| ls.register(i as u32, tx.clone(), sent.clone(), stop_ns));
    // Shared 20 ms grid: first grid point after now, plus this call's phase.
    let phase_ns = if s.cfg.aligned {
        0
    } else {
        (i as u64 % 20) * 1_000_000
    };
    let now = s.now_ns();
    let period = FRAME_PERIOD.as_nanos() as u64;
    let first = (now / period + 1) * period + phase_ns;
    let mut ticker = tokio::time::interval_at(s.tinstant(first), FRAME_PERIOD);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut seq: u32 = 0;
    let mut marks: VecDeque<(String, TInstant)> = VecDeque::new();
    let linger_end = s.tinstant(stop_ns + linger.as_nanos() as u64);
    let mut sending = true;
    let mut failed = false;
    loop {
        let due = marks.front().map(|m| m.1);
        tokio::select! {
            _ = async {
                match &lockstep {
                    Some(c) => c.notify.notified().await,
                    None => std::future::pending().await,
                }
            }, if sending => {
                // The ticker is done with this call: its stop time came, or a send failed.
                if lockstep.as_ref().is_some_and(|c| c.failed.load(Ordering::Relaxed)) {
                    failed = true;
                    break;
                }
                sending = false;
            }
            _ = ticker.tick(), if sending && lockstep.is_none() => {
                let now = s.now_ns();
                if now >= stop_ns {
                    sending = false;
                    continue;
                }
                let frame = s.cfg.plan.frame(FrameTag { call: i as u32, seq, sent_ns: now });
                sent.lock().unwrap_or_else(|p| p.into_inner()).push(now);
                if tx.send_media(&frame).await.is_err() {
                    failed = true;
                    break;
                }
                stats.frames_sent += 1;
                s.frames_tx.fetch_add(1, Ordering::Relaxed);
                s.note_send(now);
                seq += 1;
            }
            ev = play_rx.recv() => match ev {
                Some(PlayEvent::Mark(name, at)) => marks.push_back((name, at)),
                Some(PlayEvent::Clear) => {
                    let now = TInstant::now();
                    for m in marks.iter_mut() { m.1 = now; }
                }
                None => { failed = true; break; } // the receiver ended: relay closed
            },
            _ = async { match due { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                let now = TInstant::now();
                while marks.front().is_some_and(|m| m.1 <= now) {
                    let (name, _) = marks.pop_front().expect("front exists");
                    if tx.send_mark(&name).await.is_err() { failed = true; break; }
                    stats.marks_echoed += 1;
                }
                if failed { break; }
            }
            _ = tokio::time::sleep_until(linger_end), if !sending => break,
        }
    }
    if let Some(c) = &lockstep {
        c.finish(false);
        stats.frames_sent += c.frames_sent.load(Ordering::Relaxed);
    }
    if failed {
        stats.closed_early += 1;
    } else {
        let _ = tx.send_stop().await;
        if s.cfg.floor {
            // The floor only reflects `stop`; close from our side (it echoes the Close).
            let _ = tx.close(1000).await;
        }
    }
    let mut receiver = receiver;
    let r = match tokio::time::timeout(Duration::from_secs(3), &mut receiver).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => CallerStats {
            protocol_errors: 1,
            protocol_error_samples: vec![format!("receiver task failed: {e}")],
            ..Default::default()
        },
        Err(_) => {
            let _ = tx.close(1000).await;
            match tokio::time::timeout(Duration::from_secs(2), &mut receiver).await {
                Ok(Ok(mut r)) => {
                    r.protocol_errors += 1;
                    r.protocol_error_samples
                        .push("the relay did not close within 3 s of stop".into());
                    r
                }
                _ => {
                    receiver.abort();
                    CallerStats {
                        protocol_errors: 1,
                        protocol_error_samples: vec![
                            "the connection did not end within 5 s of stop".into(),
                        ],
                        ..Default::default()
                    }
                }
            }
        }
    };
    s.active.fetch_sub(1, Ordering::Relaxed);
    if let Some(f) = &s.faults {
        f.tables(i).sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    }
    stats.add(&r);
    stats
}

/// Per-turn bookkeeping of the receiver (conversation mode).
struct TurnTrack {
    turn: Option<u32>,
    audio: Vec<u8>,
    speech_end_ns: u64,
}

/// Receives everything the relay (or floor) sends to one call and checks it.
async fn receive(
    call: u32,
    mut rx: crate::peers::twilio_sim::TwilioReceiver,
    sid: String,
    s: Arc<CallerRun>,
    sent: Arc<Mutex<Vec<u64>>>,
    play: mpsc::Sender<PlayEvent>,
) -> CallerStats {
    let mut st = CallerStats::default();
    let mut seen: Vec<u8> = Vec::with_capacity(2048);
    let mut max_seq: Option<u32> = None;
    let mut play_end = TInstant::now();
    let mut turn = TurnTrack {
        turn: None,
        audio: Vec::new(),
        speech_end_ns: 0,
    };
    let conv = match &s.cfg.mode {
        AgentMode::Conversation(c) => Some(c.clone()),
        AgentMode::Echo => None,
    };
    let err = |st: &mut CallerStats, e: String| {
        st.protocol_errors += 1;
        if st.protocol_error_samples.len() < 3 {
            st.protocol_error_samples.push(e);
        }
    };
    // A fault run: the call's gaps, and what arrives in them.
    let fault = s.faults.clone();
    let mut gaps = GapTrack::default();
    let hold = |gaps: &mut GapTrack, n: usize| {
        if let Some(f) = &fault {
            f.hold_bytes.fetch_add(n as u64, Ordering::Relaxed);
            f.hold_messages.fetch_add(1, Ordering::Relaxed);
            gaps.on_hold(n);
        }
    };
    // One of this call's own echoed frames, byte-exact (anything else in a gap is hold audio).
    let own_echo = |frame: &[u8]| {
        FrameTag::read(frame).is_some_and(|tag| {
            tag.call == call
                && sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(tag.seq as usize)
                    .is_some_and(|&t| t == tag.sent_ns)
                && s.cfg.plan.matches(frame, tag.seq, Some(tag::AGENT_TS))
        })
    };
    loop {
        let text = match rx.recv_raw().await {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => {
                err(&mut st, format!("transport: {e:#}"));
                break;
            }
        };
        let now_ns = s.now_ns();
        let now = TInstant::now();
        let msg = if s.cfg.floor {
            // The floor reflects our own messages: only `media` matters, shape unchecked.
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match (
                v.get("event").and_then(Value::as_str),
                v.pointer("/media/payload").and_then(Value::as_str),
            ) {
                (Some("media"), Some(p)) => match B64.decode(p) {
                    Ok(payload) => TwilioInbound::Media {
                        stream_sid: sid.clone(),
                        payload,
                    },
                    Err(e) => {
                        err(&mut st, format!("bad base64 from floor: {e}"));
                        continue;
                    }
                },
                _ => continue,
            }
        } else {
            match parse_server_message(&text, Some(&sid)) {
                Ok(m) => m,
                Err(e) => {
                    err(&mut st, e.to_string());
                    continue;
                }
            }
        };
        match msg {
            TwilioInbound::Media { payload, .. } => {
                st.media_received += 1;
                s.media_rx.fetch_add(1, Ordering::Relaxed);
                play_end = play_end.max(now) + Duration::from_micros(payload.len() as u64 * 125);
                if let (Some(c), Some(turns)) = (&conv, s.cfg.plan.turns) {
                    // Agent reply audio belongs to the latest turn whose speech has ended.
                    let table = sent.lock().unwrap_or_else(|p| p.into_inner());
                    let n = table.len() as u32;
                    let k = (n >= turns.speech_frames)
                        .then(|| (n - turns.speech_frames) / turns.turn_frames);
                    let end_of =
                        |k: u32| table[(k * turns.turn_frames + turns.speech_frames - 1) as usize];
                    let end_ns = k.map(end_of);
                    if k != turn.turn {
                        // Turns skipped entirely (no audio at all) between the last and this one.
                        let from = turn.turn.map_or(0, |t| t + 1);
                        for kk in from..k.unwrap_or(0) {
                            if expected_answer(end_of(kk), &s, c) {
                                st.turns_expected += 1;
                            }
                        }
                        finish_turn(&mut st, &turn, &s, c);
                        turn = TurnTrack {
                            turn: k,
                            audio: Vec::new(),
                            speech_end_ns: end_ns.unwrap_or(0),
                        };
                        if k.is_some() {
                            record(&s.turn, now_ns.saturating_sub(turn.speech_end_ns));
                        }
                    }
                    drop(table);
                    turn.audio.extend_from_slice(&payload);
                    continue;
                }
                let gap_open = match (&fault, &s.agent) {
                    (Some(_), Some(a)) => gaps.on_media(
                        a.slots[call as usize]
                            .fault
                            .last_kill_ns
                            .load(Ordering::Relaxed),
                    ),
                    _ => false,
                };
                if payload.len() % MULAW_FRAME_BYTES != 0 || payload.is_empty() {
                    if gap_open {
                        hold(&mut gaps, payload.len());
                        continue;
                    }
                    st.corrupt += 1;
                    continue;
                }
                for frame in payload.chunks(MULAW_FRAME_BYTES) {
                    if gap_open && !own_echo(frame) {
                        hold(&mut gaps, frame.len());
                        continue;
                    }
                    st.frames_received += 1;
                    let Some(tag) = FrameTag::read(frame) else {
                        st.corrupt += 1;
                        continue;
                    };
                    if tag.call != call {
                        st.cross_talk += 1;
                        continue;
                    }
                    let sent_ns = sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(tag.seq as usize)
                        .copied();
                    let skip = (!s.cfg.floor).then_some(tag::AGENT_TS);
                    if sent_ns != Some(tag.sent_ns) || !s.cfg.plan.matches(frame, tag.seq, skip) {
                        st.corrupt += 1;
                        continue;
                    }
                    if let Some(f) = &fault {
                        let (closed, replayed) = gaps.on_echo(
                            call as usize,
                            now_ns,
                            tag::read_agent_ts(frame),
                            tag.sent_ns,
                        );
                        if let Some(g) = closed {
                            f.gaps.lock().unwrap_or_else(|p| p.into_inner()).push(g);
                        }
                        if replayed {
                            f.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let idx = tag.seq as usize;
                    if idx >= seen.len() {
                        seen.resize(idx + 1, 0);
                    }
                    seen[idx] = seen[idx].saturating_add(1);
                    if seen[idx] > 1 {
                        st.duplicates += 1;
                        continue;
                    }
                    st.unique += 1;
                    match max_seq {
                        Some(m) if tag.seq < m => st.reordered += 1,
                        _ => max_seq = Some(tag.seq),
                    }
                    if s.in_window(tag.sent_ns) {
                        let rt = now_ns.saturating_sub(tag.sent_ns);
                        record(&s.round_trip, rt);
                        // A fault run also keeps the calls no kill hit apart.
                        let unaffected = fault.as_ref().filter(|f| !f.is_affected(call as usize));
                        if let Some(f) = unaffected {
                            record(&f.round_trip_unaffected, rt);
                            f.record_per_second(tag.sent_ns, rt);
                            if f.near_kill(tag.sent_ns) {
                                record(&f.round_trip_near_kills, rt);
                            } else {
                                record(&f.round_trip_away, rt);
                            }
                        }
                        if !s.cfg.floor {
                            if let Some(a) = tag::read_agent_ts(frame) {
                                record(&s.agent_to_caller, now_ns.saturating_sub(a));
                                if let Some(f) = unaffected {
                                    record(&f.a2c_unaffected, now_ns.saturating_sub(a));
                                }
                            }
                        }
                    }
                }
            }
            TwilioInbound::Mark { name, .. } => {
                st.marks_received += 1;
                let _ = play.send(PlayEvent::Mark(name, play_end.max(now))).await;
            }
            TwilioInbound::Clear { .. } => {
                st.clears += 1;
                play_end = now;
                let _ = play.send(PlayEvent::Clear).await;
                if let Some(a) = &s.agent {
                    let t = a.slots[call as usize].interrupt_ns.load(Ordering::Relaxed);
                    if t > 0 {
                        record(&s.barge_in, now_ns.saturating_sub(t));
                    }
                }
            }
            TwilioInbound::Close { .. } => break,
        }
    }
    let code = rx.ended_with().flatten().unwrap_or(0);
    *st.close_codes.entry(code).or_default() += 1;
    if let Some(f) = &fault {
        let mut t = f.tables(call as usize);
        t.seen = std::mem::take(&mut seen);
        t.gaps = std::mem::take(&mut gaps.gaps);
    }
    if let Some(c) = &conv {
        finish_turn(&mut st, &turn, &s, c);
        // Turns whose speech ended but that got no audio at all.
        if let Some(turns) = s.cfg.plan.turns {
            let table = sent.lock().unwrap_or_else(|p| p.into_inner());
            let n = table.len() as u32;
            let last_with_audio = turn.turn.map_or(-1i64, i64::from);
            let mut k = (last_with_audio + 1) as u32;
            while k * turns.turn_frames + turns.speech_frames <= n {
                let end = table[(k * turns.turn_frames + turns.speech_frames - 1) as usize];
                if expected_answer(end, &s, c) {
                    st.turns_expected += 1;
                }
                k += 1;
            }
        }
    }
    st
}

/// Whether a turn whose speech ended at `end_ns` should have been answered before stop.
fn expected_answer(end_ns: u64, s: &CallerRun, c: &bench_agent::ConversationScript) -> bool {
    end_ns + c.think_time.as_nanos() as u64 + 1_000_000_000 < s.stop_ns
}

fn finish_turn(
    st: &mut CallerStats,
    t: &TurnTrack,
    s: &CallerRun,
    c: &bench_agent::ConversationScript,
) {
    if t.turn.is_none() {
        return;
    }
    let expected = expected_answer(t.speech_end_ns, s, c);
    if expected {
        st.turns_expected += 1;
        if !t.audio.is_empty() {
            st.turns_answered += 1;
        }
    }
    let ok = if c.barge_in {
        t.audio.len() <= c.reply.len() && t.audio[..] == c.reply[..t.audio.len()]
    } else if expected {
        t.audio[..] == c.reply[..]
    } else {
        t.audio.len() <= c.reply.len() && t.audio[..] == c.reply[..t.audio.len()]
    };
    if !ok {
        st.turn_audio_mismatch += 1;
    }
}

/// Frame plan and agent mode for echo mode: the caller fixture loops; the agent echoes.
pub fn echo_setup(caller_fixture: Arc<Vec<u8>>) -> (FramePlan, AgentMode) {
    (
        FramePlan {
            fixture: caller_fixture,
            turns: None,
        },
        AgentMode::Echo,
    )
}

/// Frame plan and agent mode for conversation mode.
///
/// Each turn: the caller speaks `caller_fixture` (all of it, whole frames), then listens.
/// The agent answers `think_time` after the last speech frame with `reply` in 200 ms chunks
/// (1600 bytes) every 50 ms (4× real time). Without barge-in the caller listens for the whole
/// reply's playback plus 0.5 s; with barge-in it starts the next turn 0.5 s after the first
/// reply audio is due, while the agent is still sending, so the agent interrupts itself.
pub fn conversation_setup(
    caller_fixture: Arc<Vec<u8>>,
    reply: Arc<Vec<u8>>,
    think_time: Duration,
    barge_in: bool,
) -> (FramePlan, AgentMode) {
    let speech = (caller_fixture.len() / MULAW_FRAME_BYTES).max(1) as u32;
    let think = (think_time.as_millis() / 20) as u32;
    let reply_frames = reply.len().div_ceil(MULAW_FRAME_BYTES) as u32;
    let listen = if barge_in {
        think + 25
    } else {
        think + reply_frames + 25
    };
    let plan = FramePlan {
        fixture: caller_fixture,
        turns: Some(tag::TurnPlan {
            speech_frames: speech,
            turn_frames: speech + listen,
        }),
    };
    let mode = AgentMode::Conversation(bench_agent::ConversationScript {
        reply,
        think_time,
        chunk_bytes: 1600,
        chunk_interval: Duration::from_millis(50),
        barge_in,
    });
    (plan, mode)
}
