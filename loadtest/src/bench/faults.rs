//! Agent-socket faults for load runs (issue 17's recovery benchmark):
//! `loadtest --spawn --kill-agent-sockets-per-min 10 --duration-secs 120`.
//!
//! **What is injected.** The bench agent ([`crate::bench::bench_agent`]) closes a share of
//! the live agent sockets during the steady window *without the dialect's end signal*:
//! [`KillMode::Close`] sends a WebSocket Close with code 1011 (internal error; no dialect
//! treats it as the end of the conversation) and stops reading the socket, or
//! [`KillMode::Reset`] sets `SO_LINGER` 0 and drops the connection (a TCP reset). It accepts
//! the relay's reconnects at once, in every dialect: ElevenLabs' new conversation (empty
//! `first_message`, then a `contextual_update`), AssemblyAI's `session.resume` (answered with
//! `session.ready` for the resumed id), OpenAI's new session with its
//! `conversation.item.create` replay. Those control messages are counted, never protocol
//! errors.
//!
//! **Schedule** ([`schedule`]). `round(percent/100 × calls × window_minutes)` kills (200
//! calls, 10 %/min, 120 s → 40), stratified over the steady window (kill `j` at a uniformly
//! random instant of the `j`-th equal slice) but not in its last [`FaultConfig::tail`], so
//! every recovery ends before the callers stop; each kill's call is drawn uniformly among
//! the calls with fewer than [`FaultConfig::max_kills_per_call`] kills and none in the last
//! [`FaultConfig::min_spacing`]. A deterministic seed ([`FaultConfig::seed`]) makes the
//! schedule the same in every run. A call whose agent socket is not live at its kill time
//! (still reconnecting) is skipped and counted.
//!
//! **What is measured** ([`FaultReport`]), beside the run's usual figures:
//!
//! - the gap *as the caller hears it*, per kill: receive time of the last agent-echo frame
//!   sent by the agent before the kill (the echo's agent timestamp, bytes 32..48, is older
//!   than the kill) → receive time of the first one sent after it; and *kill → first agent
//!   audio after it*;
//! - the relay's own figures: `relay_agent_recoveries_total{result}` and
//!   `relay_agent_recovery_gap_seconds` (the difference of `/metrics` before and after the
//!   run) and every call's recoveries from `GET /calls/{sid}` (with `gap_ms`), when the
//!   relay's HTTP address and admin token are known (`--spawn` gives the relay a token);
//! - hold audio: while a call's gap is open, media that is not one of the call's own echoed
//!   frames is the relay's hold audio (counted in bytes, not as corrupt frames); echoed frames
//!   the caller sent during the gap (the relay hands the new session the gap's last second of
//!   caller audio) are counted as *replayed*;
//! - frames lost, attributed per frame: a frame sent from 1 s before a kill to the end of
//!   that kill's gap at the caller is "in a gap"; any other lost frame is *unexplained*
//!   (the goal: none);
//! - calls lost: calls the relay closed before the caller's `stop`;
//! - the other calls' latency: caller → agent, agent → caller and round trip of frames of
//!   calls with no kill scheduled, to compare with a run without faults (the same command
//!   with `--kill-agent-sockets-per-min 0`, where every call counts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::bench_agent::{new_histogram, AgentRun};
use crate::bench::harness::{CallerStats, Percentiles};

/// How the bench agent kills a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillMode {
    /// A WebSocket Close with code 1011 (no dialect's end signal), then the socket is read
    /// until the relay closes it (frames read meanwhile are neither checked nor echoed).
    #[default]
    Close,
    /// `SO_LINGER` 0 and the connection dropped: the relay reads a TCP reset.
    Reset,
}

impl KillMode {
    /// `close` or `reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            KillMode::Close => "close",
            KillMode::Reset => "reset",
        }
    }
}

/// Close code of [`KillMode::Close`] (1011: the server met an unexpected condition).
pub const KILL_CLOSE_CODE: u16 = 1011;

/// How to reach the relay's HTTP side for its own recovery figures.
#[derive(Debug, Clone)]
pub struct RelayHttp {
    /// `host:port` of the relay's HTTP listener (`/metrics`, `/calls/{sid}`).
    pub addr: String,
    /// Bearer token for `/calls/{sid}` (`RELAY_ADMIN_TOKEN`); without it only `/metrics`.
    pub admin_token: Option<String>,
}

/// Agent-socket faults of one run.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Share of the live agent sockets killed per minute, percent (0: no kills, but the run
    /// reports like a fault run: the comparison baseline).
    pub percent_per_min: f64,
    /// How a socket is killed.
    pub mode: KillMode,
    /// Seed of the schedule.
    pub seed: u64,
    /// Most kills of one call (the relay's `--max-agent-recoveries`, 3 by default: more
    /// would exhaust its recoveries, which is not what this measures).
    pub max_kills_per_call: u32,
    /// Least time between two kills of one call.
    pub min_spacing: Duration,
    /// No kill in this last part of the steady window (the recovery must end before the
    /// callers stop).
    pub tail: Duration,
    /// The relay's HTTP side, for its figures.
    pub relay: Option<RelayHttp>,
}

impl FaultConfig {
    /// `percent_per_min` with the defaults: close 1011, seed 17, at most 3 kills per call,
    /// 10 s apart, none in the window's last 5 s, no relay figures.
    pub fn new(percent_per_min: f64) -> Self {
        FaultConfig {
            percent_per_min,
            mode: KillMode::Close,
            seed: 17,
            max_kills_per_call: 3,
            min_spacing: Duration::from_secs(10),
            tail: Duration::from_secs(5),
            relay: None,
        }
    }
}

/// One scheduled kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Kill {
    /// When, ns since the run's epoch.
    pub at_ns: u64,
    /// Which call's agent socket.
    pub call: usize,
}

/// splitmix64: small, deterministic, good enough to spread kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }
}

/// The kills of a run of `calls` calls whose steady window is `window_ns` (see the module
/// docs), sorted by time.
pub fn schedule(cfg: &FaultConfig, calls: usize, window_ns: (u64, u64)) -> Vec<Kill> {
    let window = window_ns.1.saturating_sub(window_ns.0);
    let span = window.saturating_sub(cfg.tail.as_nanos() as u64);
    if cfg.percent_per_min <= 0.0 || calls == 0 || span == 0 {
        return Vec::new();
    }
    let n = (cfg.percent_per_min / 100.0 * calls as f64 * window as f64 / 60e9).round() as usize;
    let mut rng = Rng(cfg.seed ^ 0x6C6F_6164_7465_7374);
    let spacing = cfg.min_spacing.as_nanos() as u64;
    let mut count = vec![0u32; calls];
    let mut last: Vec<Option<u64>> = vec![None; calls];
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        let at = window_ns.0 + ((j as f64 + rng.unit()) / n as f64 * span as f64) as u64;
        let ok = |c: usize, count: &[u32], last: &[Option<u64>]| {
            count[c] < cfg.max_kills_per_call && last[c].is_none_or(|t| at >= t + spacing)
        };
        let mut pick = None;
        for _ in 0..64 {
            let c = rng.below(calls);
            if ok(c, &count, &last) {
                pick = Some(c);
                break;
            }
        }
        if pick.is_none() {
            let start = rng.below(calls);
            pick = (0..calls)
                .map(|k| (start + k) % calls)
                .find(|&c| ok(c, &count, &last));
        }
        if let Some(c) = pick {
            count[c] += 1;
            last[c] = Some(at);
            out.push(Kill { at_ns: at, call: c });
        }
    }
    out
}

/// Runs the kills of `kills` against the run's agent sockets, each at its time.
pub(crate) async fn kill_loop(run: std::sync::Arc<AgentRun>, kills: Vec<Kill>) {
    for k in kills {
        let at = run.epoch + Duration::from_nanos(k.at_ns);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        run.kill(k.call);
    }
}

/// Agent-side state of a fault run (in [`AgentRun::faults`]).
pub(crate) struct AgentFaults {
    pub(crate) mode: KillMode,
    /// Call index → a kill is scheduled for it.
    pub(crate) affected: Vec<bool>,
    /// caller → agent latency of frames (sent in the window) of calls never killed.
    pub(crate) c2a_unaffected: Mutex<Histogram<u64>>,
    pub(crate) kills_done: AtomicU64,
    pub(crate) kills_skipped: AtomicU64,
    /// Conversations after a call's first (the relay's reconnects).
    pub(crate) reconnects: AtomicU64,
    /// AssemblyAI `session.resume` openings.
    pub(crate) resumes: AtomicU64,
    /// ElevenLabs `contextual_update` messages.
    pub(crate) context_updates: AtomicU64,
    /// OpenAI `conversation.item.create` messages.
    pub(crate) item_creates: AtomicU64,
    /// Other control messages (not audio) the mock had nothing to do with.
    pub(crate) other_control: AtomicU64,
    /// Frames read on a killed socket after the kill (neither checked nor echoed).
    pub(crate) drained_frames: AtomicU64,
}

impl AgentFaults {
    pub(crate) fn new(mode: KillMode, affected: Vec<bool>) -> Self {
        AgentFaults {
            mode,
            affected,
            c2a_unaffected: Mutex::new(new_histogram()),
            kills_done: AtomicU64::new(0),
            kills_skipped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            context_updates: AtomicU64::new(0),
            item_creates: AtomicU64::new(0),
            other_control: AtomicU64::new(0),
            drained_frames: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_affected(&self, call: usize) -> bool {
        self.affected.get(call).copied().unwrap_or(false)
    }
}

/// One gap as a caller heard it.
#[derive(Debug, Clone, Serialize)]
pub struct HeardGap {
    /// Call index.
    pub call: usize,
    /// The kill, ms since the run's epoch.
    pub kill_ms: f64,
    /// Last agent-echo frame from before the kill → first from after it, at the caller, ms.
    pub gap_ms: f64,
    /// Kill → first agent-echo frame from after it, at the caller, ms.
    pub kill_to_audio_ms: f64,
    /// Hold audio received during the gap, ms of audio (8 bytes per ms).
    pub hold_ms: f64,
}

/// What one call's caller keeps for the loss attribution after the run.
#[derive(Default)]
pub(crate) struct CallTables {
    /// Send time of each frame, by sequence number.
    pub(crate) sent: Vec<u64>,
    /// Receive count of each echoed frame, by sequence number.
    pub(crate) seen: Vec<u8>,
    /// Each gap as `(kill_ns, end_ns)`: the end is the first post-kill echo's receive time
    /// (`None`: it never came).
    pub(crate) gaps: Vec<(u64, Option<u64>)>,
}

/// Caller-side state of a fault run (in the harness's caller run).
pub(crate) struct CallerFaults {
    pub(crate) affected: Vec<bool>,
    pub(crate) round_trip_unaffected: Mutex<Histogram<u64>>,
    pub(crate) a2c_unaffected: Mutex<Histogram<u64>>,
    /// Spans around the scheduled kills (see [`NEAR_KILL`]), sorted.
    near: Vec<(u64, u64)>,
    /// Round trip of the unaffected calls' frames sent near a kill / away from every kill.
    pub(crate) round_trip_near_kills: Mutex<Histogram<u64>>,
    pub(crate) round_trip_away: Mutex<Histogram<u64>>,
    /// The steady window's start (ns since the epoch) and the unaffected calls' round trip
    /// per second of it (by send time; 2 significant digits, 1 µs .. 10 s).
    window_start_ns: u64,
    per_second: Vec<Mutex<Histogram<u64>>>,
    pub(crate) gaps: Mutex<Vec<HeardGap>>,
    pub(crate) hold_bytes: AtomicU64,
    pub(crate) hold_messages: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) per_call: Vec<Mutex<CallTables>>,
}

/// "Near a kill": from 50 ms before a scheduled kill to 500 ms after it (the relay's
/// reconnect work, a few ms, lies well inside).
pub const NEAR_KILL: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

impl CallerFaults {
    pub(crate) fn new(affected: Vec<bool>, kills: &[Kill], window_ns: (u64, u64)) -> Self {
        let n = affected.len();
        let secs = window_ns
            .1
            .saturating_sub(window_ns.0)
            .div_ceil(1_000_000_000) as usize;
        let per_second = (0..secs.max(1))
            .map(|_| {
                Mutex::new(
                    Histogram::new_with_bounds(1_000, 10_000_000_000, 2)
                        .expect("valid histogram bounds"),
                )
            })
            .collect();
        let (before, after) = (NEAR_KILL.0.as_nanos() as u64, NEAR_KILL.1.as_nanos() as u64);
        let mut near: Vec<(u64, u64)> = kills
            .iter()
            .map(|k| (k.at_ns.saturating_sub(before), k.at_ns + after))
            .collect();
        near.sort_unstable();
        CallerFaults {
            affected,
            round_trip_unaffected: Mutex::new(new_histogram()),
            a2c_unaffected: Mutex::new(new_histogram()),
            near,
            round_trip_near_kills: Mutex::new(new_histogram()),
            round_trip_away: Mutex::new(new_histogram()),
            window_start_ns: window_ns.0,
            per_second,
            gaps: Mutex::new(Vec::new()),
            hold_bytes: AtomicU64::new(0),
            hold_messages: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            per_call: (0..n).map(|_| Mutex::new(CallTables::default())).collect(),
        }
    }

    pub(crate) fn is_affected(&self, call: usize) -> bool {
        self.affected.get(call).copied().unwrap_or(false)
    }

    /// Records an unaffected call's round trip `rt_ns` of a frame sent at `sent_ns` (in the
    /// window) by the second of the window it was sent in.
    pub(crate) fn record_per_second(&self, sent_ns: u64, rt_ns: u64) {
        let k = (sent_ns.saturating_sub(self.window_start_ns) / 1_000_000_000) as usize;
        if let Some(h) = self.per_second.get(k) {
            let _ = h
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(rt_ns.clamp(1_000, 10_000_000_000));
        }
    }

    /// Whether a frame sent at `sent_ns` was sent near a scheduled kill.
    pub(crate) fn near_kill(&self, sent_ns: u64) -> bool {
        // Spans are sorted by start and at most 550 ms long: only the last few starting at
        // or before `sent_ns` can cover it.
        let i = self.near.partition_point(|s| s.0 <= sent_ns);
        self.near[..i].iter().rev().take(8).any(|s| sent_ns <= s.1)
    }

    pub(crate) fn tables(&self, call: usize) -> std::sync::MutexGuard<'_, CallTables> {
        self.per_call[call]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The caller's view of one call's gaps (kept by its receiver).
#[derive(Default)]
pub(crate) struct GapTrack {
    /// Receive time of the newest agent-echo frame.
    last_echo_rx: u64,
    /// The newest kill already seen.
    seen_kill: u64,
    open: Option<OpenGap>,
    /// The newest closed gap `(kill_ns, end_ns)`: echoes of frames sent in it are replayed.
    last_closed: Option<(u64, u64)>,
    /// Every gap of the call.
    pub(crate) gaps: Vec<(u64, Option<u64>)>,
}

struct OpenGap {
    kill_ns: u64,
    /// Receive time of the newest echo from before the kill.
    from_rx: u64,
    hold_bytes: u64,
}

impl GapTrack {
    /// A media message arrives; `last_kill_ns` is the call's newest kill (0: none). True if a
    /// gap is open (what is not the call's own echo is hold audio).
    pub(crate) fn on_media(&mut self, last_kill_ns: u64) -> bool {
        if last_kill_ns > self.seen_kill {
            self.seen_kill = last_kill_ns;
            // A second kill before the first gap closed: the first stays open (`None`).
            self.open = Some(OpenGap {
                kill_ns: last_kill_ns,
                from_rx: self.last_echo_rx,
                hold_bytes: 0,
            });
            self.gaps.push((last_kill_ns, None));
        }
        self.open.is_some()
    }

    /// Hold audio of `bytes` bytes arrived in the open gap.
    pub(crate) fn on_hold(&mut self, bytes: usize) {
        if let Some(g) = self.open.as_mut() {
            g.hold_bytes += bytes as u64;
        }
    }

    /// One of the call's own echoed frames arrived at `now_ns`: the agent sent it at
    /// `agent_ns`; the caller sent it at `sent_ns`. Returns the gap it closes, if any, and
    /// whether it is a replayed frame (sent by the caller during a gap).
    pub(crate) fn on_echo(
        &mut self,
        call: usize,
        now_ns: u64,
        agent_ns: Option<u64>,
        sent_ns: u64,
    ) -> (Option<HeardGap>, bool) {
        let mut closed = None;
        if let (Some(g), Some(a)) = (self.open.as_mut(), agent_ns) {
            if a < g.kill_ns {
                // Sent before the kill, still arriving: audio from before the failure.
                g.from_rx = now_ns;
            } else {
                let g = self.open.take().expect("open gap");
                let from = if g.from_rx > 0 { g.from_rx } else { g.kill_ns };
                closed = Some(HeardGap {
                    call,
                    kill_ms: g.kill_ns as f64 / 1e6,
                    gap_ms: now_ns.saturating_sub(from) as f64 / 1e6,
                    kill_to_audio_ms: now_ns.saturating_sub(g.kill_ns) as f64 / 1e6,
                    hold_ms: g.hold_bytes as f64 / crate::MULAW_BYTES_PER_MS as f64,
                });
                if let Some(e) = self.gaps.iter_mut().rev().find(|e| e.0 == g.kill_ns) {
                    e.1 = Some(now_ns);
                }
                self.last_closed = Some((g.kill_ns, now_ns));
            }
        }
        self.last_echo_rx = now_ns;
        let replayed = self
            .last_closed
            .is_some_and(|(k, e)| sent_ns >= k && sent_ns <= e);
        (closed, replayed)
    }
}

/// Frames lost in a fault run, attributed to the gaps or not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LossAttribution {
    /// Caller frames that never reached the agent, sent in a gap (1 s before a kill to the
    /// end of its gap at the caller): the relay drops caller audio of the gap beyond its
    /// resume buffer, and frames in flight on the killed socket.
    pub to_agent_in_gaps: u64,
    /// Caller frames that never reached the agent, sent outside any gap (goal: 0).
    pub to_agent_unexplained: u64,
    /// Frames the agent received but whose echo never reached the caller, in a gap (the
    /// agent's echo failed on the killed socket, or the relay dropped queued agent audio
    /// for the hold audio).
    pub to_caller_in_gaps: u64,
    /// Such frames outside any gap (goal: 0).
    pub to_caller_unexplained: u64,
    /// Calls with an unexplained loss.
    pub calls_with_unexplained_loss: u64,
}

/// One recovery as the relay's `GET /calls/{sid}` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RelayRecovery {
    /// Call index.
    pub call: usize,
    /// `closed`, `reset`, …
    pub cause: String,
    /// `recovered`, `exhausted`, `rollover`, or `null` (in progress).
    pub result: Option<String>,
    /// Reconnect attempts.
    pub attempts: u64,
    /// Since the call's start, ms.
    pub at_ms: u64,
    /// Last agent audio before the failure → first after it, ms.
    pub gap_ms: Option<u64>,
}

/// The relay's own recovery figures of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayFigures {
    /// `relay_agent_recoveries_total` by `result`, increase over the run.
    pub recoveries_total: BTreeMap<String, f64>,
    /// `relay_agent_recovery_gap_seconds` buckets `(le seconds, count)`, increase over the
    /// run (cumulative, as Prometheus keeps them; `+Inf` as `f64::MAX`).
    pub gap_histogram: Vec<(f64, f64)>,
    /// Its `_count` increase.
    pub gap_count: f64,
    /// Its `_sum` increase, seconds.
    pub gap_sum_s: f64,
    /// p50 / p95 interpolated linearly within the buckets, seconds (coarse: the buckets
    /// start at 0.25 s).
    pub gap_p50_s_from_buckets: Option<f64>,
    /// See `gap_p50_s_from_buckets`.
    pub gap_p95_s_from_buckets: Option<f64>,
    /// The upper bound of the bucket holding the p50 (seconds): "p50 ≤ this".
    pub gap_p50_bucket_le_s: Option<f64>,
    /// The upper bound of the bucket holding the p95 (seconds): "p95 ≤ this".
    pub gap_p95_bucket_le_s: Option<f64>,
    /// `relay_calls_total` by outcome, increase over the run.
    pub call_outcomes: BTreeMap<String, f64>,
    /// Every call's recoveries from `GET /calls/{sid}` (when the admin token is known).
    pub recoveries: Vec<RelayRecovery>,
    /// Calls `GET /calls/{sid}` answered for.
    pub calls_listed: usize,
    /// Their outcomes.
    pub listed_outcomes: BTreeMap<String, u64>,
    /// `gap_ms` of the recovered recoveries listed: p50 / p95 / max, ms.
    pub gap_ms: Option<GapStats>,
    /// What could not be read, if anything.
    pub errors: Vec<String>,
}

/// p50 / p95 / max of a set of gaps, ms.
#[derive(Debug, Clone, Serialize)]
pub struct GapStats {
    /// Gaps.
    pub count: usize,
    /// Median, ms (nearest rank).
    pub p50_ms: f64,
    /// 95th percentile, ms (nearest rank).
    pub p95_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

impl GapStats {
    /// Of `v` (ms); `None` if empty.
    pub fn of(v: &[f64]) -> Option<GapStats> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(GapStats {
            count: s.len(),
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            max_ms: s[s.len() - 1],
            mean_ms: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// Everything a fault run adds to its [`crate::bench::harness::LoadResult`].
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// Share of live agent sockets killed per minute, percent.
    pub percent_per_min: f64,
    /// `close` (1011) or `reset`.
    pub kill_mode: KillMode,
    /// Schedule seed.
    pub seed: u64,
    /// Kills scheduled.
    pub kills_planned: usize,
    /// Kills done (the call's agent socket was live).
    pub kills_done: u64,
    /// Kills skipped (no live socket for the call at that time).
    pub kills_skipped: u64,
    /// Calls with at least one kill scheduled.
    pub calls_affected: usize,
    /// Calls with none (their latency is `unaffected_*`).
    pub calls_unaffected: usize,
    /// The schedule.
    pub schedule: Vec<Kill>,
    /// Gaps the callers heard, one per kill whose recovery they heard.
    pub heard_gaps: Vec<HeardGap>,
    /// p50 / p95 / max of `heard_gaps[].gap_ms`.
    pub heard_gap: Option<GapStats>,
    /// p50 / p95 / max of `heard_gaps[].kill_to_audio_ms`.
    pub kill_to_audio: Option<GapStats>,
    /// Kill → the relay's new session identified itself at the mock (its init message, or
    /// AssemblyAI's `session.resume`), ms: the reconnect alone.
    pub kill_to_reconnect: Option<GapStats>,
    /// Kills whose gap never closed at the caller (no agent audio after them).
    pub gaps_unrecovered: u64,
    /// Hold audio received by the callers, ms of audio.
    pub hold_audio_ms: f64,
    /// Media messages (or parts) that were hold audio.
    pub hold_messages: u64,
    /// Echoed frames the callers had sent during a gap (delivered late, to the new session).
    pub replayed_frames: u64,
    /// The relay's reconnects as the mock saw them (conversations after a call's first).
    pub reconnects: u64,
    /// AssemblyAI `session.resume` openings answered.
    pub resumes: u64,
    /// ElevenLabs `contextual_update` messages received.
    pub contextual_updates: u64,
    /// OpenAI `conversation.item.create` messages received.
    pub item_creates: u64,
    /// Other control messages received (ignored).
    pub other_control_messages: u64,
    /// Frames read on killed sockets after their kill.
    pub drained_frames: u64,
    /// Lost frames, attributed.
    pub loss: LossAttribution,
    /// Calls that ended before their scheduled end (closed by the relay before `stop`, or
    /// never connected).
    pub calls_lost: u64,
    /// caller → agent latency of the unaffected calls' frames in the window.
    pub unaffected_caller_to_agent: Option<Percentiles>,
    /// agent → caller latency of the unaffected calls' frames.
    pub unaffected_agent_to_caller: Option<Percentiles>,
    /// Round trip of the unaffected calls' frames.
    pub unaffected_round_trip: Option<Percentiles>,
    /// Of those, frames sent near a kill (50 ms before to 500 ms after a scheduled kill of
    /// another call): the same run's tail with reconnects going on ...
    pub unaffected_round_trip_near_kills: Option<Percentiles>,
    /// ... and away from every kill.
    pub unaffected_round_trip_away_from_kills: Option<Percentiles>,
    /// The unaffected calls' round trip per second of the window, by send time: `(second,
    /// frames, p50 µs, p99 µs)` (a trend over the run shows here, e.g. a cost that recovered
    /// calls keep after their recovery).
    pub unaffected_round_trip_per_second: Vec<(usize, u64, f64, f64)>,
    /// The relay's figures (`None` without its HTTP address).
    pub relay: Option<RelayFigures>,
}

impl FaultReport {
    /// No call lost, every kill done and recovered (heard by the caller), no unexplained
    /// loss; other counters are the run's usual checks.
    pub fn recovered_cleanly(&self) -> bool {
        self.calls_lost == 0
            && self.gaps_unrecovered == 0
            && self.loss.to_agent_unexplained == 0
            && self.loss.to_caller_unexplained == 0
            && self.heard_gaps.len() as u64 == self.kills_done
    }
}

/// Builds the report of a finished fault run (the relay's figures are added by
/// [`relay_figures`]).
pub(crate) fn analyze(
    cfg: &FaultConfig,
    kills: &[Kill],
    caller: &CallerFaults,
    agent: &AgentRun,
    faults: &AgentFaults,
    stats: &CallerStats,
) -> FaultReport {
    let mut heard = caller
        .gaps
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    heard.sort_by(|a, b| a.kill_ms.total_cmp(&b.kill_ms));
    let mut loss = LossAttribution::default();
    let mut unrecovered = 0u64;
    let mut reconnect_ms = Vec::new();
    const PRE_NS: u64 = 1_000_000_000;
    for (call, t) in caller.per_call.iter().enumerate() {
        let t = t.lock().unwrap_or_else(|p| p.into_inner());
        let agent_seen = agent.agent_seen(call);
        let agent_kills = agent.kill_times(call);
        let starts = agent.conversation_starts(call);
        for &k in &agent_kills {
            if let Some(&c) = starts.iter().find(|&&c| c > k) {
                reconnect_ms.push((c - k) as f64 / 1e6);
            }
        }
        // Gap windows: every kill of the call, to its end at the caller (or for ever).
        let windows: Vec<(u64, u64)> = agent_kills
            .iter()
            .map(|&k| {
                let end = t
                    .gaps
                    .iter()
                    .find(|g| g.0 == k)
                    .and_then(|g| g.1)
                    .unwrap_or(u64::MAX);
                (k.saturating_sub(PRE_NS), end)
            })
            .collect();
        unrecovered += agent_kills
            .iter()
            .filter(|&&k| !t.gaps.iter().any(|g| g.0 == k && g.1.is_some()))
            .count() as u64;
        let in_gap = |ns: u64| windows.iter().any(|&(a, b)| ns >= a && ns <= b);
        let mut unexplained = false;
        for (seq, &sent_ns) in t.sent.iter().enumerate() {
            let a = agent_seen.get(seq).is_some_and(|&n| n > 0);
            let c = t.seen.get(seq).is_some_and(|&n| n > 0);
            match (a, c, in_gap(sent_ns)) {
                (false, _, true) => loss.to_agent_in_gaps += 1,
                (false, _, false) => {
                    loss.to_agent_unexplained += 1;
                    unexplained = true;
                }
                (true, false, true) => loss.to_caller_in_gaps += 1,
                (true, false, false) => {
                    loss.to_caller_unexplained += 1;
                    unexplained = true;
                }
                (true, true, _) => {}
            }
        }
        if unexplained {
            loss.calls_with_unexplained_loss += 1;
        }
    }
    let h =
        |m: &Mutex<Histogram<u64>>| Percentiles::of(&m.lock().unwrap_or_else(|p| p.into_inner()));
    let gap_v: Vec<f64> = heard.iter().map(|g| g.gap_ms).collect();
    let kta_v: Vec<f64> = heard.iter().map(|g| g.kill_to_audio_ms).collect();
    let affected = caller.affected.iter().filter(|&&a| a).count();
    FaultReport {
        percent_per_min: cfg.percent_per_min,
        kill_mode: cfg.mode,
        seed: cfg.seed,
        kills_planned: kills.len(),
        kills_done: faults.kills_done.load(Ordering::Relaxed),
        kills_skipped: faults.kills_skipped.load(Ordering::Relaxed),
        calls_affected: affected,
        calls_unaffected: caller.affected.len() - affected,
        schedule: kills.to_vec(),
        heard_gap: GapStats::of(&gap_v),
        kill_to_audio: GapStats::of(&kta_v),
        kill_to_reconnect: GapStats::of(&reconnect_ms),
        heard_gaps: heard,
        gaps_unrecovered: unrecovered,
        hold_audio_ms: caller.hold_bytes.load(Ordering::Relaxed) as f64
            / crate::MULAW_BYTES_PER_MS as f64,
        hold_messages: caller.hold_messages.load(Ordering::Relaxed),
        replayed_frames: caller.replayed.load(Ordering::Relaxed),
        reconnects: faults.reconnects.load(Ordering::Relaxed),
        resumes: faults.resumes.load(Ordering::Relaxed),
        contextual_updates: faults.context_updates.load(Ordering::Relaxed),
        item_creates: faults.item_creates.load(Ordering::Relaxed),
        other_control_messages: faults.other_control.load(Ordering::Relaxed),
        drained_frames: faults.drained_frames.load(Ordering::Relaxed),
        loss,
        calls_lost: stats.closed_early + stats.connect_failures,
        unaffected_caller_to_agent: h(&faults.c2a_unaffected),
        unaffected_agent_to_caller: h(&caller.a2c_unaffected),
        unaffected_round_trip: h(&caller.round_trip_unaffected),
        unaffected_round_trip_near_kills: h(&caller.round_trip_near_kills),
        unaffected_round_trip_away_from_kills: h(&caller.round_trip_away),
        unaffected_round_trip_per_second: caller
            .per_second
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let h = m.lock().unwrap_or_else(|p| p.into_inner());
                let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
                (k, h.len(), q(0.5), q(0.99))
            })
            .collect(),
        relay: None,
    }
}

/// One sample of a Prometheus text exposition: name, labels, value.
fn samples<'a>(text: &'a str, name: &str) -> Vec<(BTreeMap<&'a str, &'a str>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let mut m = BTreeMap::new();
        for kv in labels.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                m.insert(k.trim(), v.trim().trim_matches('"'));
            }
        }
        out.push((m, v));
    }
    out
}

/// Sums of `name` by the value of `label`.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (l, v) in samples(text, name) {
        if let Some(x) = l.get(label) {
            *m.entry((*x).to_owned()).or_insert(0.0) += v;
        }
    }
    m
}

fn diff(after: BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .into_iter()
        .map(|(k, v)| {
            let b = before.get(&k).copied().unwrap_or(0.0);
            (k, v - b)
        })
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// `GET http://addr<path>` (with a bearer token), returning (status, body).
async fn http_get(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), fut).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The relay's `/metrics` text (empty on failure, with the error noted).
pub(crate) async fn scrape(relay: &RelayHttp, errors: &mut Vec<String>) -> String {
    match http_get(&relay.addr, "/metrics", None).await {
        Ok((200, body)) => body,
        Ok((s, _)) => {
            errors.push(format!("GET /metrics: HTTP {s}"));
            String::new()
        }
        Err(e) => {
            errors.push(format!("GET /metrics: {e:#}"));
            String::new()
        }
    }
}

/// The relay's figures: the increase of its recovery families from `before` (the
/// `/metrics` text at the run's start) to now, and every call's recoveries from
/// `GET /calls/{sid}` (call `i`'s sid is the harness's `CA{i:032x}`).
pub(crate) async fn relay_figures(
    relay: &RelayHttp,
    before: &str,
    calls: usize,
    agent_label: Option<&str>,
) -> RelayFigures {
    let mut f = RelayFigures::default();
    let after = scrape(relay, &mut f.errors).await;
    let keep = |l: &BTreeMap<&str, &str>| agent_label.is_none_or(|a| l.get("agent") == Some(&a));
    let sum_by = |text: &str, name: &str, label: &str| {
        let mut m = BTreeMap::new();
        for (l, v) in samples(text, name) {
            if !keep(&l) {
                continue;
            }
            if let Some(x) = l.get(label) {
                *m.entry((*x).to_owned()).or_insert(0.0) += v;
            }
        }
        m
    };
    let name = "relay_agent_recoveries_total";
    f.recoveries_total = diff(
        sum_by(&after, name, "result"),
        &sum_by(before, name, "result"),
    );
    f.call_outcomes = diff(
        by_label(&after, "relay_calls_total", "outcome"),
        &by_label(before, "relay_calls_total", "outcome"),
    );
    let hist = "relay_agent_recovery_gap_seconds";
    let buckets = |text: &str| {
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        for (l, v) in samples(text, &format!("{hist}_bucket")) {
            if keep(&l) {
                if let Some(le) = l.get("le") {
                    *m.entry((*le).to_owned()).or_insert(0.0) += v;
                }
            }
        }
        m
    };
    let (b1, b0) = (buckets(&after), buckets(before));
    let mut hv: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, v)| {
            let x = if le == "+Inf" {
                f64::MAX
            } else {
                le.parse().unwrap_or(f64::MAX)
            };
            (x, v - b0.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    hv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = |text: &str, suffix: &str| {
        samples(text, &format!("{hist}{suffix}"))
            .into_iter()
            .filter(|(l, _)| keep(l))
            .map(|x| x.1)
            .sum::<f64>()
    };
    f.gap_count = total(&after, "_count") - total(before, "_count");
    f.gap_sum_s = total(&after, "_sum") - total(before, "_sum");
    let quant = |q: f64| -> Option<(f64, f64)> {
        let n = hv.last()?.1;
        if n <= 0.0 {
            return None;
        }
        let target = q * n;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &hv {
            if c >= target {
                if le == f64::MAX {
                    return Some((prev.0, le));
                }
                let frac = if c > prev.1 {
                    (target - prev.1) / (c - prev.1)
                } else {
                    1.0
                };
                return Some((prev.0 + frac * (le - prev.0), le));
            }
            prev = (le, c);
        }
        None
    };
    if let Some((v, le)) = quant(0.5) {
        f.gap_p50_s_from_buckets = Some(v);
        f.gap_p50_bucket_le_s = Some(le);
    }
    if let Some((v, le)) = quant(0.95) {
        f.gap_p95_s_from_buckets = Some(v);
        f.gap_p95_bucket_le_s = Some(le);
    }
    f.gap_histogram = hv;
    if let Some(token) = relay.admin_token.as_deref() {
        for i in 0..calls {
            let sid = format!("CA{i:032x}");
            match http_get(&relay.addr, &format!("/calls/{sid}"), Some(token)).await {
                Ok((200, body)) => {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    f.calls_listed += 1;
                    let outcome = v
                        .get("outcome")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_owned();
                    *f.listed_outcomes.entry(outcome).or_default() += 1;
                    for r in v
                        .get("recoveries")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
                        f.recoveries.push(RelayRecovery {
                            call: i,
                            cause: s("cause").unwrap_or_default(),
                            result: s("result"),
                            attempts: r.get("attempts").and_then(Value::as_u64).unwrap_or(0),
                            at_ms: r.get("at_ms").and_then(Value::as_u64).unwrap_or(0),
                            gap_ms: r.get("gap_ms").and_then(Value::as_u64),
                        });
                    }
                }
                Ok((s, _)) => {
                    if f.errors.len() < 5 {
                        f.errors.push(format!("GET /calls/{sid}: HTTP {s}"));
                    }
                }
                Err(e) => {
                    if f.errors.len() < 5 {
                        f.errors.push(format!("GET /calls/{sid}: {e:#}"));
                    }
                }
            }
        }
        let gaps: Vec<f64> = f
            .recoveries
            .iter()
            .filter(|r| r.result.as_deref() == Some("recovered"))
            .filter_map(|r| r.gap_ms.map(|g| g as f64))
            .collect();
        f.gap_ms = GapStats::of(&gaps);
    }
    f
}

fn gap_line(o: &mut String, name: &str, g: &Option<GapStats>) {
    match g {
        Some(g) => {
            let _ = writeln!(
                o,
                "  {name:<38} n {:>4}  p50 {:>7.0}  p95 {:>7.0}  max {:>7.0}  mean {:>7.0} ms",
                g.count, g.p50_ms, g.p95_ms, g.max_ms, g.mean_ms
            );
        }
        None => {
            let _ = writeln!(o, "  {name:<38} -");
        }
    }
}

fn pct_line(o: &mut String, name: &str, p: &Option<Percentiles>) {
    match p {
        Some(p) => {
            let _ = writeln!(
                o,
                "  {name:<38} n {:>8}  p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>9.1} µs",
                p.count, p.p50_us, p.p99_us, p.p999_us, p.max_us
            );
        }
        None => {
            let _ = writeln!(o, "  {name:<38} -");
        }
    }
}

/// Human summary of a fault run's report.
pub fn summarize(f: &FaultReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== agent-socket faults: {} %/min ({}, seed {}): {} kills planned, {} done, {} skipped; {} calls affected, {} not",
        f.percent_per_min,
        match f.kill_mode {
            KillMode::Close => "close 1011",
            KillMode::Reset => "TCP reset",
        },
        f.seed,
        f.kills_planned,
        f.kills_done,
        f.kills_skipped,
        f.calls_affected,
        f.calls_unaffected
    );
    let _ = writeln!(
        o,
        "  reconnects seen by the mock {} (resumes {}, contextual_updates {}, item.creates {}, other control {}); frames drained from killed sockets {}",
        f.reconnects, f.resumes, f.contextual_updates, f.item_creates, f.other_control_messages, f.drained_frames
    );
    gap_line(&mut o, "gap heard by the caller", &f.heard_gap);
    gap_line(
        &mut o,
        "kill → first agent audio at the caller",
        &f.kill_to_audio,
    );
    gap_line(
        &mut o,
        "kill → new session at the mock",
        &f.kill_to_reconnect,
    );
    if let Some(r) = &f.relay {
        gap_line(&mut o, "relay gap_ms (GET /calls, recovered)", &r.gap_ms);
        let le = |v: Option<f64>| {
            v.map_or("-".into(), |v| {
                if v == f64::MAX {
                    "+Inf".to_owned()
                } else {
                    format!("{v}")
                }
            })
        };
        let _ = writeln!(
            o,
            "  relay recoveries_total {:?}; relay_agent_recovery_gap_seconds: n {}, mean {} ms, p50 bucket ≤ {} s, p95 bucket ≤ {} s",
            r.recoveries_total,
            r.gap_count,
            if r.gap_count > 0.0 {
                format!("{:.0}", r.gap_sum_s * 1000.0 / r.gap_count)
            } else {
                "-".into()
            },
            le(r.gap_p50_bucket_le_s),
            le(r.gap_p95_bucket_le_s),
        );
        let _ = writeln!(
            o,
            "  relay call outcomes {:?}; /calls listed {} {:?}",
            r.call_outcomes, r.calls_listed, r.listed_outcomes
        );
        for e in &r.errors {
            let _ = writeln!(o, "    relay figures: {e}");
        }
    }
    let _ = writeln!(
        o,
        "  gaps unrecovered {}   calls lost {}   hold audio {:.1} s in {} messages   replayed frames {}",
        f.gaps_unrecovered,
        f.calls_lost,
        f.hold_audio_ms / 1000.0,
        f.hold_messages,
        f.replayed_frames
    );
    let l = &f.loss;
    let _ = writeln!(
        o,
        "  frames lost in gaps: →agent {} →caller {};  unexplained: →agent {} →caller {} ({} calls)",
        l.to_agent_in_gaps,
        l.to_caller_in_gaps,
        l.to_agent_unexplained,
        l.to_caller_unexplained,
        l.calls_with_unexplained_loss
    );
    pct_line(
        &mut o,
        "unaffected calls: caller→agent",
        &f.unaffected_caller_to_agent,
    );
    pct_line(
        &mut o,
        "unaffected calls: agent→caller",
        &f.unaffected_agent_to_caller,
    );
    pct_line(
        &mut o,
        "unaffected calls: round trip",
        &f.unaffected_round_trip,
    );
    pct_line(
        &mut o,
        "  of which sent near a kill",
        &f.unaffected_round_trip_near_kills,
    );
    pct_line(
        &mut o,
        "  of which sent away from kills",
        &f.unaffected_round_trip_away_from_kills,
    );
    // The per-second series in about six slices of the window: a trend shows here.
    let ps = &f.unaffected_round_trip_per_second;
    if ps.iter().any(|x| x.1 > 0) {
        let step = ps.len().div_ceil(6).max(1);
        let slices: Vec<String> = ps
            .chunks(step)
            .map(|c| {
                let mut p99: Vec<f64> = c.iter().filter(|x| x.1 > 0).map(|x| x.3).collect();
                p99.sort_by(f64::total_cmp);
                let med = p99.get(p99.len() / 2).copied().unwrap_or(0.0);
                format!("{}–{} s {:.0}", c[0].0, c[c.len() - 1].0 + 1, med)
            })
            .collect();
        let _ = writeln!(
            o,
            "  unaffected round trip, median of the per-second p99s (µs): {}",
            slices.join(", ")
        );
    }
    let _ = writeln!(
        o,
        "  recovery checks: {}",
        if f.recovered_cleanly() {
            "CLEAN (every kill recovered, no call lost, no loss outside the gaps)"
        } else {
            "PROBLEMS (see above)"
        }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_deterministic_spread_and_capped() {
        let mut cfg = FaultConfig::new(10.0);
        let w = (5_000_000_000u64, 125_000_000_000u64);
        let a = schedule(&cfg, 200, w);
        assert_eq!(a.len(), 40, "10 % of 200 per minute over 2 minutes");
        assert_eq!(a, schedule(&cfg, 200, w), "same seed, same schedule");
        assert!(a.windows(2).all(|p| p[0].at_ns <= p[1].at_ns));
        assert!(a
            .iter()
            .all(|k| k.at_ns >= w.0 && k.at_ns <= w.1 - 5_000_000_000));
        // Spread: each 20 s slice of the span holds about a sixth of the kills.
        let span = w.1 - 5_000_000_000 - w.0;
        for s in 0..5 {
            let lo = w.0 + span / 5 * s;
            let n = a
                .iter()
                .filter(|k| k.at_ns >= lo && k.at_ns < lo + span / 5)
                .count();
            assert_eq!(n, 8, "slice {s}");
        }
        cfg.seed = 18;
        assert_ne!(a, schedule(&cfg, 200, w));
        // Few calls: at most 3 kills each, 10 s apart.
        let b = schedule(&FaultConfig::new(100.0), 4, w);
        for c in 0..4 {
            let t: Vec<u64> = b.iter().filter(|k| k.call == c).map(|k| k.at_ns).collect();
            assert!(t.len() <= 3);
            assert!(t.windows(2).all(|p| p[1] - p[0] >= 10_000_000_000));
        }
        assert!(schedule(&FaultConfig::new(0.0), 200, w).is_empty());
    }

    #[test]
    fn gaps_are_timed_from_the_last_echo_before_the_kill() {
        let mut g = GapTrack::default();
        assert!(!g.on_media(0));
        assert!(g.on_echo(3, 1_000, Some(900), 800).0.is_none());
        // Kill at 1 500; an echo sent before it still arrives at 1 600.
        assert!(g.on_media(1_500));
        g.on_hold(160);
        assert!(g.on_echo(3, 1_600_000_000, Some(1_400), 1_300).0.is_none());
        g.on_hold(320);
        let (gap, replayed) = g.on_echo(3, 1_900_000_000, Some(1_800_000_000), 1_700);
        let gap = gap.unwrap();
        assert!(replayed, "sent after the kill, during the gap");
        assert_eq!(gap.gap_ms, 300.0);
        assert_eq!(gap.hold_ms, 60.0);
        assert!(!g.on_media(1_500), "the same kill does not reopen");
        assert_eq!(g.gaps, vec![(1_500, Some(1_900_000_000))]);
    }

    #[test]
    fn frames_near_kills_are_told_apart() {
        let kills = [
            Kill {
                at_ns: 10_000_000_000,
                call: 1,
            },
            Kill {
                at_ns: 10_200_000_000,
                call: 2,
            },
            Kill {
                at_ns: 20_000_000_000,
                call: 3,
            },
        ];
        let f = CallerFaults::new(vec![false; 4], &kills, (0, 30_000_000_000));
        f.record_per_second(1_500_000_000, 2_000_000);
        f.record_per_second(99_000_000_000, 2_000_000);
        assert_eq!(f.per_second.len(), 30);
        assert_eq!(f.per_second[1].lock().unwrap().len(), 1);
        assert!(!f.near_kill(9_900_000_000));
        assert!(f.near_kill(9_960_000_000));
        assert!(f.near_kill(10_600_000_000), "within 500 ms of the second");
        assert!(!f.near_kill(10_800_000_000));
        assert!(f.near_kill(20_500_000_000));
        assert!(!f.near_kill(20_500_000_001));
        assert!(!f.near_kill(0));
    }

    #[test]
    fn gap_stats_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = GapStats::of(&v).unwrap();
        assert_eq!((s.p50_ms, s.p95_ms, s.max_ms), (50.0, 95.0, 100.0));
        assert!(GapStats::of(&[]).is_none());
    }

    #[test]
    fn prometheus_samples_parse() {
        let t = "# TYPE x counter\nrelay_agent_recoveries_total{agent=\"elevenlabs\",result=\"recovered\"} 40\n\
                 relay_agent_recovery_gap_seconds_bucket{agent=\"elevenlabs\",le=\"0.25\"} 3\n\
                 relay_agent_recovery_gap_seconds_bucket{agent=\"elevenlabs\",le=\"+Inf\"} 4\n";
        let m = by_label(t, "relay_agent_recoveries_total", "result");
        assert_eq!(m.get("recovered"), Some(&40.0));
        let b = samples(t, "relay_agent_recovery_gap_seconds_bucket");
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].0.get("le"), Some(&"+Inf"));
        assert_eq!(dechunk("4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"), "abcdef");
    }
}
