//! Soak and churn runs: long-lived load with call turnover, and many short calls, while the
//! relay process's resources are sampled over time.
//!
//! Both keep `calls` simulated Twilio calls in flight (echo mode, the in-process mock agent):
//! each of `calls` workers runs one call after another until the run ends.
//!
//! - **Soak** (`loadtest --soak`): the run lasts `duration` from the first call. Without a
//!   call length every call lasts the whole window; with `call_len` each call lasts that long
//!   and is replaced as it ends (the first call of worker `w` of `N` lasts
//!   `call_len·(w+1)/N`, so endings are spread evenly and the relay sees a steady turnover of
//!   `N ÷ call_len` calls per second instead of bursts). The last call of each worker is cut
//!   short so that it ends with the window (and skipped if less than 1 s would remain).
//! - **Churn** (`loadtest --churn`): short calls (`call_len`, default 1 s of audio) until
//!   `total_calls` calls have run (or `duration` passed, or the stop file appeared).
//!
//! Each call: connect, `connected`, `start`, one tagged 160-byte frame per 20 ms until its
//! stop time, `linger`, `stop`, wait for the relay to close the socket; then the mock agent's
//! counters for that call are read and the call is judged on its own: **byte-exact** when
//! every frame it sent reached the agent once, unmodified and in order, every frame the
//! agent echoed came back to the caller once and unmodified, no other call's frame showed up,
//! no message broke Twilio's rules, and the relay did not close the call before its `stop`.
//!
//! Every `sample_every` the relay process is sampled: RSS (`/proc/PID/status` VmRSS, or
//! `process_resident_memory_bytes`), open descriptors (`/proc/PID/fd`, or
//! `process_open_fds`), tokio tasks alive (`relay_runtime_tasks_alive`, which the relay
//! refreshes every second) and its `relay_calls_active`, with the harness's counters so far.
//! Before the first call a baseline is sampled; after the last call ends the harness samples
//! every second (up to `after_wait`) until descriptors and tasks are back at the baseline,
//! and reports whether RSS, descriptors and tasks returned to it. The slopes of RSS,
//! descriptors and tasks over the second half of the loaded period are least-squares fits
//! (per minute).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::bench_agent::{AgentCallStats, AgentMode, AgentRun, BenchAgent};
use crate::bench::harness::{self, CallerRun, CallerStats, LoadConfig, Percentiles};
use crate::bench::procstat;
use crate::bench::tag::FramePlan;

/// Soak or churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SoakKind {
    /// Long run, calls replaced as they end.
    Soak,
    /// Many short calls.
    Churn,
}

impl SoakKind {
    fn as_str(self) -> &'static str {
        match self {
            SoakKind::Soak => "soak",
            SoakKind::Churn => "churn",
        }
    }
}

/// What to sample: the relay's pid (for `/proc`) and/or its HTTP address (for `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    /// The relay's pid, for `/proc/PID/status` and `/proc/PID/fd`.
    pub pid: Option<u32>,
    /// `host:port` of the relay's HTTP listener, for `GET /metrics`.
    pub metrics_addr: Option<String>,
}

/// Configuration of a soak or churn run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Soak or churn.
    pub kind: SoakKind,
    /// `ws://host:port/media`.
    pub url: String,
    /// Calls kept in flight.
    pub calls: usize,
    /// Stop after this many calls were started (churn).
    pub total_calls: Option<u64>,
    /// Stop starting calls this long after the first call (soak: the window).
    pub duration: Option<Duration>,
    /// Length of each call's audio; `None`: each call lasts until the end of `duration`.
    pub call_len: Option<Duration>,
    /// Time between a call's last frame and its `stop`.
    pub linger: Duration,
    /// Calls started per second while the workers start.
    pub ramp_per_sec: f64,
    /// Time between resource samples.
    pub sample_every: Duration,
    /// What to sample.
    pub monitor: Monitor,
    /// After the last call: how long to wait for descriptors and tasks to return.
    pub after_wait: Duration,
    /// RSS within this many KiB of the baseline counts as back at the baseline.
    pub rss_tolerance_kib: u64,
    /// Stop starting calls once this file exists.
    pub stop_file: Option<PathBuf>,
    /// Before the baseline: run the same load (calls of at most this long) for this long,
    /// so the baseline is a warmed-up idle process rather than a cold one.
    pub warmup: Option<Duration>,
    /// The caller fixture (echo mode).
    pub plan: FramePlan,
    /// CPU placement, for the report.
    pub pinning: Option<String>,
}

/// One resource sample of the relay process (fields the monitor could not read are `None`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ResSample {
    /// Resident set size, KiB.
    pub rss_kib: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
    /// Tokio tasks alive (`relay_runtime_tasks_alive`).
    pub tasks: Option<u64>,
    /// `relay_calls_active`.
    pub relay_calls_active: Option<u64>,
    /// CPU seconds used so far (user + kernel).
    pub cpu_s: Option<f64>,
}

/// One point of the time series.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the harness epoch (the first call starts at 0.2 s).
    pub t_s: f64,
    /// `cold` (relay just started), `warmup`, `baseline` (idle before the measured calls),
    /// `load`, or `after` (every call ended). Counters are per phase.
    pub phase: &'static str,
    /// The relay process.
    #[serde(flatten)]
    pub res: ResSample,
    /// Calls the harness has open.
    pub harness_calls_active: usize,
    /// Calls started so far.
    pub calls_started: u64,
    /// Calls ended so far (connected and judged).
    pub calls_completed: u64,
    /// Calls that could not connect (including refused upgrades).
    pub calls_failed: u64,
    /// Frames sent by the callers so far.
    pub frames_sent: u64,
    /// Frames received by the mock agent so far.
    pub frames_to_agent: u64,
    /// Media messages received by the callers so far.
    pub media_to_caller: u64,
    /// Frames lost so far, in calls that have ended (both directions).
    pub frames_lost: u64,
}

/// A call that could not connect (for matching against instance state in scale tests).
#[derive(Debug, Clone, Serialize)]
pub struct FailureEvent {
    /// Seconds since the harness epoch.
    pub t_s: f64,
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The call's index.
    pub call: u64,
    /// What happened (e.g. `upgrade refused with HTTP 503`).
    pub what: String,
}

/// Least-squares slopes over the second half of the loaded period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Slopes {
    /// Fit window start, seconds since the epoch.
    pub from_s: f64,
    /// Fit window end.
    pub to_s: f64,
    /// Samples in the fit.
    pub samples: usize,
    /// RSS slope, KiB per minute.
    pub rss_kib_per_min: Option<f64>,
    /// Descriptor slope, per minute.
    pub fds_per_min: Option<f64>,
    /// Task slope, per minute.
    pub tasks_per_min: Option<f64>,
}

/// Whether a resource returned to its baseline after the calls ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaselineCheck {
    /// RSS within `rss_tolerance_kib` of the baseline.
    pub rss: Option<bool>,
    /// Descriptors ≤ baseline.
    pub fds: Option<bool>,
    /// Tasks ≤ baseline.
    pub tasks: Option<bool>,
    /// The tolerance used for RSS, KiB.
    pub rss_tolerance_kib: u64,
    /// Seconds after the last call ended when the final sample was taken.
    pub settled_after_s: f64,
}

/// Peak values while calls were running.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peaks {
    /// Highest RSS, KiB.
    pub rss_kib: Option<u64>,
    /// Most descriptors.
    pub fds: Option<u64>,
    /// Most tasks.
    pub tasks: Option<u64>,
    /// Most `relay_calls_active`.
    pub relay_calls_active: Option<u64>,
}

/// Everything a soak or churn run measured (the JSON document).
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `soak` or `churn`.
    pub kind: SoakKind,
    /// Target.
    pub url: String,
    /// Calls in flight.
    pub calls_in_flight: usize,
    /// Call target (churn).
    pub total_calls_target: Option<u64>,
    /// Duration limit, seconds.
    pub duration_limit_s: Option<f64>,
    /// Audio per call, seconds (`None`: the whole window).
    pub call_secs: Option<f64>,
    /// Linger before `stop`, ms.
    pub linger_ms: u64,
    /// Sampling period, seconds.
    pub sample_secs: f64,
    /// Relay pid sampled.
    pub pid: Option<u32>,
    /// Relay HTTP address sampled.
    pub metrics_addr: Option<String>,
    /// CPU placement.
    pub pinning: Option<String>,
    /// From the first call's start to the last call's end, seconds.
    pub load_s: f64,
    /// Calls started.
    pub calls_started: u64,
    /// Calls that connected and ended.
    pub calls_completed: u64,
    /// Calls that could not connect (including refused).
    pub calls_failed: u64,
    /// Upgrades answered with an HTTP status instead of 101.
    pub calls_refused: u64,
    /// Calls judged byte-exact (see the module docs).
    pub calls_byte_exact: u64,
    /// Connected calls that were not.
    pub calls_not_exact: u64,
    /// Calls the relay closed before the caller's `stop`.
    pub calls_cut: u64,
    /// Completed calls per second over the loaded period.
    pub calls_per_sec: f64,
    /// Frames the callers sent.
    pub frames_sent: u64,
    /// Sent frames that never reached the agent.
    pub lost_caller_to_agent: u64,
    /// Frames the agent echoed that never reached the caller.
    pub lost_to_caller: u64,
    /// Caller-side totals.
    pub caller: CallerStats,
    /// Agent-side totals.
    pub agent: AgentCallStats,
    /// Caller → agent one-way latency, all frames.
    pub caller_to_agent: Option<Percentiles>,
    /// Agent → caller one-way latency, all frames.
    pub agent_to_caller: Option<Percentiles>,
    /// Round trip, all frames.
    pub round_trip: Option<Percentiles>,
    /// Relay `relay_calls_total` by outcome, change over the run.
    pub relay_outcomes: BTreeMap<String, f64>,
    /// Resources right after the relay started (before any call).
    pub cold_start: ResSample,
    /// The warm-up phase, if one ran.
    pub warmup: Option<Warmup>,
    /// Resources before the first measured call (after the warm-up, if any).
    pub baseline: ResSample,
    /// Peaks while calls ran.
    pub during_max: Peaks,
    /// The last sample after the calls ended.
    pub after: ResSample,
    /// Whether each resource came back.
    pub back_at_baseline: BaselineCheck,
    /// Slopes over the second half of the loaded period.
    pub slopes: Slopes,
    /// First problems seen (per call).
    pub problems: Vec<String>,
    /// Calls that could not connect (first 1000).
    pub failures: Vec<FailureEvent>,
    /// The time series.
    pub samples: Vec<SoakSample>,
}

impl SoakReport {
    /// No loss, every connected call byte-exact, none cut, none failed.
    pub fn clean(&self) -> bool {
        self.lost_caller_to_agent == 0
            && self.lost_to_caller == 0
            && self.calls_not_exact == 0
            && self.calls_cut == 0
            && self.calls_failed == 0
            && self.calls_completed > 0
    }

    /// Writes the JSON document.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// What the warm-up phase did.
#[derive(Debug, Clone, Serialize)]
pub struct Warmup {
    /// Its length, seconds.
    pub secs: f64,
    /// Calls completed.
    pub calls_completed: u64,
    /// Of those, byte-exact.
    pub calls_byte_exact: u64,
    /// Calls that could not connect.
    pub calls_failed: u64,
    /// Frames lost.
    pub frames_lost: u64,
}

impl SoakSample {
    fn idle(t_s: f64, phase: &'static str, res: ResSample) -> Self {
        SoakSample {
            t_s,
            phase,
            res,
            harness_calls_active: 0,
            calls_started: 0,
            calls_completed: 0,
            calls_failed: 0,
            frames_sent: 0,
            frames_to_agent: 0,
            media_to_caller: 0,
            frames_lost: 0,
        }
    }
}

/// Running totals, updated as each call is judged.
#[derive(Default)]
struct Agg {
    caller: CallerStats,
    agent: AgentCallStats,
    completed: u64,
    failed: u64,
    refused: u64,
    exact: u64,
    not_exact: u64,
    cut: u64,
    lost_c2a: u64,
    lost_back: u64,
    problems: Vec<String>,
    failures: Vec<FailureEvent>,
}

struct State {
    cfg: SoakConfig,
    run: Arc<CallerRun>,
    agent: Arc<AgentRun>,
    capacity: u64,
    first_ns: u64,
    end_ns: Option<u64>,
    next: AtomicU64,
    started: AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    agg: Mutex<Agg>,
    completed: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    workers_done: AtomicUsize,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs a soak or churn run against the relay at `cfg.url`, with `agent` (the in-process
/// mock, echo mode) as the relay's agent.
pub async fn run_soak(cfg: SoakConfig, agent: &BenchAgent) -> anyhow::Result<SoakReport> {
    let epoch = Instant::now();
    let now_s = || epoch.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    let cold = sample_monitor(&cfg.monitor).await;
    samples.push(SoakSample::idle(now_s(), "cold", cold));
    let warmup = match cfg.warmup {
        Some(w) if !w.is_zero() => {
            let wcfg = SoakConfig {
                kind: SoakKind::Soak,
                total_calls: None,
                duration: Some(w),
                call_len: Some(cfg.call_len.map_or(w, |l| l.min(w))),
                stop_file: None,
                ..cfg.clone()
            };
            eprintln!(
                "warm-up: {} calls in flight for {} s",
                cfg.calls,
                w.as_secs_f64()
            );
            let st = drive(&wcfg, agent, epoch, &mut samples, "warmup").await?;
            let a = std::mem::take(&mut *st.agg.lock().unwrap_or_else(|p| p.into_inner()));
            // Let the relay go idle again before the baseline.
            let t0 = Instant::now();
            loop {
                let r = sample_monitor(&cfg.monitor).await;
                let idle = r.relay_calls_active.is_none_or(|c| c == 0)
                    && cmp_le(r.fds, cold.fds).unwrap_or(true)
                    && cmp_le(r.tasks, cold.tasks).unwrap_or(true);
                if idle && t0.elapsed() >= Duration::from_secs(2) || t0.elapsed() >= cfg.after_wait
                {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some(Warmup {
                secs: w.as_secs_f64(),
                calls_completed: a.completed,
                calls_byte_exact: a.exact,
                calls_failed: a.failed,
                frames_lost: a.lost_c2a + a.lost_back,
            })
        }
        _ => None,
    };

    let before_outcomes = match cfg.monitor.metrics_addr.as_deref() {
        Some(a) => fetch_metrics(a)
            .await
            .map(|t| outcomes(&t))
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let baseline = sample_monitor(&cfg.monitor).await;
    samples.push(SoakSample::idle(now_s(), "baseline", baseline));
    eprintln!(
        "{} baseline: RSS {} KiB, fds {}, tasks {}{}",
        cfg.kind.as_str(),
        opt(baseline.rss_kib),
        opt(baseline.fds),
        opt(baseline.tasks),
        if warmup.is_some() {
            format!(" (cold start: RSS {} KiB)", opt(cold.rss_kib))
        } else {
            String::new()
        }
    );
    let st = drive(&cfg, agent, epoch, &mut samples, "load").await?;
    let load_end_ns = st.run.now_ns();

    // After: wait for the relay's calls to end, then for descriptors and tasks to return.
    let settle_start = Instant::now();
    let mut after = sample_monitor(&cfg.monitor).await;
    loop {
        let back_fds = cmp_le(after.fds, baseline.fds).unwrap_or(true);
        let back_tasks = cmp_le(after.tasks, baseline.tasks).unwrap_or(true);
        let idle = after.relay_calls_active.is_none_or(|c| c == 0);
        // At least 2 s after the last call (the task gauge lags by up to a second).
        if idle && back_fds && back_tasks && settle_start.elapsed() >= Duration::from_secs(2)
            || settle_start.elapsed() >= cfg.after_wait
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = sample_monitor(&cfg.monitor).await;
        samples.push(series_point(&st, "after", after));
    }
    let settled_after_s = settle_start.elapsed().as_secs_f64();
    if samples.last().is_none_or(|s| s.phase != "after") {
        samples.push(series_point(&st, "after", after));
    }
    let after_outcomes = match cfg.monitor.metrics_addr.as_deref() {
        Some(a) => fetch_metrics(a)
            .await
            .map(|t| outcomes(&t))
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let relay_outcomes = after_outcomes
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v - before_outcomes.get(k).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, v)| *v != 0.0)
        .collect();

    let load_s = (load_end_ns.saturating_sub(st.first_ns)) as f64 / 1e9;
    let agg = std::mem::take(&mut *st.agg.lock().unwrap_or_else(|p| p.into_inner()));
    let mut during_max = Peaks::default();
    for s in samples.iter().filter(|s| s.phase == "load") {
        during_max.rss_kib = max_opt(during_max.rss_kib, s.res.rss_kib);
        during_max.fds = max_opt(during_max.fds, s.res.fds);
        during_max.tasks = max_opt(during_max.tasks, s.res.tasks);
        during_max.relay_calls_active =
            max_opt(during_max.relay_calls_active, s.res.relay_calls_active);
    }
    let back_at_baseline = BaselineCheck {
        rss: match (after.rss_kib, baseline.rss_kib) {
            (Some(a), Some(b)) => Some(a <= b + cfg.rss_tolerance_kib),
            _ => None,
        },
        fds: cmp_le(after.fds, baseline.fds),
        tasks: cmp_le(after.tasks, baseline.tasks),
        rss_tolerance_kib: cfg.rss_tolerance_kib,
        settled_after_s,
    };
    let slopes = slopes(&samples);
    let h = |m: &Mutex<hdrhistogram::Histogram<u64>>| {
        Percentiles::of(&m.lock().unwrap_or_else(|p| p.into_inner()))
    };
    Ok(SoakReport {
        kind: cfg.kind,
        url: cfg.url.clone(),
        calls_in_flight: cfg.calls,
        total_calls_target: cfg.total_calls,
        duration_limit_s: cfg.duration.map(|d| d.as_secs_f64()),
        call_secs: cfg.call_len.map(|d| d.as_secs_f64()),
        linger_ms: cfg.linger.as_millis() as u64,
        sample_secs: cfg.sample_every.as_secs_f64(),
        pid: cfg.monitor.pid,
        metrics_addr: cfg.monitor.metrics_addr.clone(),
        pinning: cfg.pinning.clone(),
        load_s,
        calls_started: st.started.load(Ordering::Relaxed),
        calls_completed: agg.completed,
        calls_failed: agg.failed,
        calls_refused: agg.refused,
        calls_byte_exact: agg.exact,
        calls_not_exact: agg.not_exact,
        calls_cut: agg.cut,
        calls_per_sec: if load_s > 0.0 {
            agg.completed as f64 / load_s
        } else {
            0.0
        },
        frames_sent: agg.caller.frames_sent,
        lost_caller_to_agent: agg.lost_c2a,
        lost_to_caller: agg.lost_back,
        caller: agg.caller,
        agent: agg.agent,
        caller_to_agent: h(&st.agent.caller_to_agent),
        agent_to_caller: h(&st.run.agent_to_caller),
        round_trip: h(&st.run.round_trip),
        relay_outcomes,
        cold_start: cold,
        warmup,
        baseline,
        during_max,
        after,
        back_at_baseline,
        slopes,
        problems: agg.problems,
        failures: agg.failures,
        samples,
    })
}

/// Runs the workers of one phase to the end, sampling into `samples` (phase `phase`).
async fn drive(
    cfg: &SoakConfig,
    agent: &BenchAgent,
    epoch: Instant,
    samples: &mut Vec<SoakSample>,
    phase: &'static str,
) -> anyhow::Result<Arc<State>> {
    let cl = cfg.call_len.map(|d| d.as_secs_f64());
    // Upper bound on calls: slots for the mock agent and the per-call tables.
    let capacity: u64 = match (cfg.total_calls, cfg.duration) {
        (Some(t), _) => t,
        (None, Some(d)) => {
            let per_worker = match cl {
                Some(l) => (d.as_secs_f64() / l.max(0.05)).ceil() as u64 + 2,
                None => 1,
            };
            cfg.calls as u64 * per_worker
        }
        (None, None) => anyhow::bail!("a soak/churn run needs --total-calls or --duration-secs"),
    };
    anyhow::ensure!(
        capacity <= u32::MAX as u64,
        "too many calls for the frame tags"
    );
    let (_, mode) = harness::echo_setup(cfg.plan.fixture.clone());
    let agent_run = Arc::new(AgentRun::new(
        epoch,
        cfg.plan.clone(),
        mode,
        (0, u64::MAX),
        capacity as usize,
    ));
    agent.set_run(agent_run.clone());
    let load_cfg = LoadConfig {
        url: cfg.url.clone(),
        floor: false,
        calls: capacity as usize,
        ramp_per_sec: cfg.ramp_per_sec,
        duration: cfg.duration.unwrap_or_default(),
        settle: Duration::ZERO,
        plan: cfg.plan.clone(),
        mode: AgentMode::Echo,
        aligned: false,
        monitor_pid: cfg.monitor.pid,
    };
    let run = Arc::new(CallerRun::new(
        epoch,
        load_cfg,
        (0, u64::MAX),
        u64::MAX,
        Some(agent_run.clone()),
        Some(agent.dialect()),
    ));
    let first_ns: u64 = (epoch.elapsed().as_nanos() as u64) + 200_000_000;
    let end_ns = cfg.duration.map(|d| first_ns + d.as_nanos() as u64);
    let st = Arc::new(State {
        capacity,
        first_ns,
        end_ns,
        next: AtomicU64::new(0),
        started: AtomicU64::new(0),
        stop: std::sync::atomic::AtomicBool::new(false),
        agg: Mutex::new(Agg::default()),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        workers_done: AtomicUsize::new(0),
        run,
        agent: agent_run,
        cfg: cfg.clone(),
    });
    let mut workers = Vec::with_capacity(cfg.calls);
    for w in 0..cfg.calls {
        workers.push(tokio::spawn(worker(w, st.clone())));
    }
    let mut next_sample = Instant::now() + cfg.sample_every;
    let mut last_print = Instant::now();
    loop {
        if st.workers_done.load(Ordering::Relaxed) == cfg.calls {
            break;
        }
        if let Some(f) = &cfg.stop_file {
            if !st.stop.load(Ordering::Relaxed) && f.exists() {
                eprintln!("stop file {} appeared: no new calls", f.display());
                st.stop.store(true, Ordering::Relaxed);
            }
        }
        if Instant::now() >= next_sample {
            next_sample += cfg.sample_every;
            let r = sample_monitor(&cfg.monitor).await;
            let p = series_point(&st, phase, r);
            if last_print.elapsed() >= Duration::from_secs(10)
                || cfg.sample_every >= Duration::from_secs(10)
            {
                last_print = Instant::now();
                eprintln!(
                    "{phase} t={:>7.1}s  RSS {:>7} KiB  fds {:>5}  tasks {:>5}  relay calls {:>5}  started {:>7}  done {:>7}  failed {}  lost {}",
                    p.t_s,
                    opt(r.rss_kib),
                    opt(r.fds),
                    opt(r.tasks),
                    opt(r.relay_calls_active),
                    p.calls_started,
                    p.calls_completed,
                    p.calls_failed,
                    p.frames_lost
                );
            }
            samples.push(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in workers {
        w.await?;
    }
    Ok(st)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn cmp_le(a: Option<u64>, b: Option<u64>) -> Option<bool> {
    Some(a? <= b?)
}

fn series_point(st: &State, phase: &'static str, res: ResSample) -> SoakSample {
    SoakSample {
        t_s: st.run.now_ns() as f64 / 1e9,
        phase,
        res,
        harness_calls_active: st.run.active.load(Ordering::Relaxed),
        calls_started: st.started.load(Ordering::Relaxed),
        calls_completed: st.completed.load(Ordering::Relaxed),
        calls_failed: st.failed.load(Ordering::Relaxed),
        frames_sent: st.run.frames_tx.load(Ordering::Relaxed),
        frames_to_agent: st.agent.frames_rx.load(Ordering::Relaxed),
        media_to_caller: st.run.media_rx.load(Ordering::Relaxed),
        frames_lost: st.lost.load(Ordering::Relaxed),
    }
}

/// One worker: calls back to back until the run ends.
async fn worker(w: usize, st: Arc<State>) {
    let cfg = &st.cfg;
    let mut start_ns = st.first_ns + (w as f64 / cfg.ramp_per_sec.max(0.001) * 1e9) as u64;
    let mut first = true;
    loop {
        if st.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = st.run.now_ns().max(start_ns);
        let len_ns: u64 = match (cfg.call_len, st.end_ns) {
            (Some(l), _) => {
                let l = l.as_nanos() as u64;
                if first && cfg.kind == SoakKind::Soak {
                    // Spread the first generation's endings evenly over one call length.
                    (l * (w as u64 + 1) / cfg.calls.max(1) as u64).max(1_000_000_000.min(l))
                } else {
                    l
                }
            }
            (None, Some(end)) => end.saturating_sub(now),
            (None, None) => 1_000_000_000,
        };
        let len_ns = match st.end_ns {
            Some(end) if now + len_ns > end => {
                let left = end.saturating_sub(now);
                if left < 1_000_000_000 {
                    break;
                }
                left
            }
            _ => len_ns,
        };
        let k = st.next.fetch_add(1, Ordering::Relaxed);
        if k >= st.capacity {
            break;
        }
        first = false;
        st.started.fetch_add(1, Ordering::Relaxed);
        let stats =
            harness::call_span(k as usize, now, now + len_ns, cfg.linger, st.run.clone()).await;
        judge(&st, k, stats).await;
        start_ns = st.run.now_ns();
    }
    st.workers_done.fetch_add(1, Ordering::Relaxed);
}

/// Judges one finished call against the mock agent's counters for it and adds it up.
async fn judge(st: &State, k: u64, c: CallerStats) {
    if c.connected == 0 {
        st.failed.fetch_add(1, Ordering::Relaxed);
        let mut a = st.agg.lock().unwrap_or_else(|p| p.into_inner());
        a.failed += 1;
        a.refused += c.refused;
        let what = c
            .protocol_error_samples
            .first()
            .cloned()
            .unwrap_or_else(|| "connect failed".into());
        if a.failures.len() < 1000 {
            a.failures.push(FailureEvent {
                t_s: st.run.now_ns() as f64 / 1e9,
                unix_ms: unix_ms(),
                call: k,
                what: what.clone(),
            });
        }
        if a.problems.len() < 20 {
            a.problems.push(format!("call {k}: {what}"));
        }
        a.caller.add(&c);
        return;
    }
    // The mock writes its counters when the relay closes the agent socket (after `stop`).
    let slot = &st.agent.slots[k as usize];
    let deadline = Instant::now() + Duration::from_secs(5);
    let ag = loop {
        if let Some(s) = slot.stats.lock().unwrap_or_else(|p| p.into_inner()).take() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut why: Vec<String> = Vec::new();
    let (lost_c2a, lost_back) = match &ag {
        Some(a) => {
            if a.corrupt > 0 {
                why.push(format!("{} corrupt at the agent", a.corrupt));
            }
            if a.duplicates > 0 || a.reordered > 0 {
                why.push(format!(
                    "{} duplicated / {} reordered at the agent",
                    a.duplicates, a.reordered
                ));
            }
            if a.cross_talk > 0 {
                why.push(format!("{} other-call frames at the agent", a.cross_talk));
            }
            if a.protocol_errors > 0 {
                why.push(format!("{} agent-side protocol errors", a.protocol_errors));
            }
            (
                c.frames_sent.saturating_sub(a.unique),
                a.echoed.saturating_sub(c.unique),
            )
        }
        None => {
            why.push("the mock agent never finished a conversation for it".into());
            (c.frames_sent, 0)
        }
    };
    if lost_c2a > 0 {
        why.push(format!(
            "{lost_c2a}/{} frames lost caller→agent",
            c.frames_sent
        ));
    }
    if lost_back > 0 {
        why.push(format!("{lost_back} frames lost agent→caller"));
    }
    if ag.is_some() && c.unique != c.frames_sent && lost_back == 0 {
        why.push(format!(
            "caller got {} of its {} frames back",
            c.unique, c.frames_sent
        ));
    }
    if c.corrupt + c.duplicates + c.cross_talk + c.reordered > 0 {
        why.push(format!(
            "caller side: corrupt {} dup {} reorder {} cross-talk {}",
            c.corrupt, c.duplicates, c.reordered, c.cross_talk
        ));
    }
    if c.protocol_errors > 0 {
        why.push(format!(
            "{} protocol errors ({})",
            c.protocol_errors,
            c.protocol_error_samples
                .first()
                .cloned()
                .unwrap_or_default()
        ));
    }
    if c.closed_early > 0 {
        let codes: Vec<String> = c.close_codes.keys().map(u16::to_string).collect();
        why.push(format!(
            "closed by the relay before stop (close code {})",
            codes.join(",")
        ));
    }
    st.lost.fetch_add(lost_c2a + lost_back, Ordering::Relaxed);
    st.completed.fetch_add(1, Ordering::Relaxed);
    let mut a = st.agg.lock().unwrap_or_else(|p| p.into_inner());
    a.completed += 1;
    a.lost_c2a += lost_c2a;
    a.lost_back += lost_back;
    a.cut += c.closed_early;
    if why.is_empty() {
        a.exact += 1;
    } else {
        a.not_exact += 1;
        if a.problems.len() < 20 {
            a.problems.push(format!("call {k}: {}", why.join("; ")));
        }
    }
    a.caller.add(&c);
    if let Some(x) = &ag {
        add_agent(&mut a.agent, x);
    }
}

fn add_agent(t: &mut AgentCallStats, o: &AgentCallStats) {
    t.frames += o.frames;
    t.unique += o.unique;
    t.duplicates += o.duplicates;
    t.reordered += o.reordered;
    t.cross_talk += o.cross_talk;
    t.corrupt += o.corrupt;
    t.echoed += o.echoed;
    t.replies += o.replies;
    t.interruptions += o.interruptions;
    t.truncates += o.truncates;
    t.protocol_errors += o.protocol_errors;
}

/// Samples the monitored relay.
pub async fn sample_monitor(m: &Monitor) -> ResSample {
    let mut r = ResSample::default();
    let metrics = match &m.metrics_addr {
        Some(a) => fetch_metrics(a).await.ok(),
        None => None,
    };
    if let Some(pid) = m.pid {
        if let Ok(p) = procstat::sample(pid, procstat::clock_ticks_cached()) {
            r.rss_kib = Some(p.rss_kib);
            r.cpu_s = Some(p.cpu_s());
        }
        r.fds = count_fds(pid);
    }
    if let Some(t) = &metrics {
        r.tasks = metric_sum(t, "relay_runtime_tasks_alive").map(|v| v as u64);
        r.relay_calls_active = metric_sum(t, "relay_calls_active").map(|v| v as u64);
        if r.rss_kib.is_none() {
            r.rss_kib = metric_sum(t, "process_resident_memory_bytes").map(|v| (v / 1024.0) as u64);
        }
        if r.fds.is_none() {
            r.fds = metric_sum(t, "process_open_fds").map(|v| v as u64);
        }
        if r.cpu_s.is_none() {
            r.cpu_s = metric_sum(t, "process_cpu_seconds_total");
        }
    }
    r
}

/// Open descriptors of `pid` (entries of `/proc/PID/fd`).
pub fn count_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// `GET http://addr/metrics`, the body as text.
pub async fn fetch_metrics(addr: &str) -> anyhow::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .context("GET /metrics timed out")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "GET /metrics: {}",
        text.lines().next().unwrap_or("")
    );
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    Ok(body.to_owned())
}

/// Sum of every sample of metric `name` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// `relay_calls_total` by `outcome`.
pub fn outcomes(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("relay_calls_total{") else {
            continue;
        };
        let Some(i) = rest.find("outcome=\"") else {
            continue;
        };
        let o = &rest[i + 9..];
        let Some(j) = o.find('"') else { continue };
        let v = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = v {
            *m.entry(o[..j].to_owned()).or_insert(0.0) += v;
        }
    }
    m
}

/// Least-squares slope of `(x, y)` points, `None` with fewer than 3.
pub fn ls_slope(pts: &[(f64, f64)]) -> Option<f64> {
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn slopes(samples: &[SoakSample]) -> Slopes {
    let load: Vec<&SoakSample> = samples.iter().filter(|s| s.phase == "load").collect();
    let (Some(a), Some(b)) = (load.first(), load.last()) else {
        return Slopes::default();
    };
    let mid = (a.t_s + b.t_s) / 2.0;
    let half: Vec<&&SoakSample> = load.iter().filter(|s| s.t_s >= mid).collect();
    let fit = |f: &dyn Fn(&SoakSample) -> Option<u64>| {
        let pts: Vec<(f64, f64)> = half
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t_s / 60.0, v as f64)))
            .collect();
        ls_slope(&pts)
    };
    Slopes {
        from_s: mid,
        to_s: b.t_s,
        samples: half.len(),
        rss_kib_per_min: fit(&|s| s.res.rss_kib),
        fds_per_min: fit(&|s| s.res.fds),
        tasks_per_min: fit(&|s| s.res.tasks),
    }
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

fn slope_str(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{v:+.2} {unit}/min"))
}

/// Human summary.
pub fn summarize(r: &SoakReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== {}: {} calls in flight, {}{}, calls of {}, linger {} ms, samples every {} s, {}",
        r.kind.as_str().to_uppercase(),
        r.calls_in_flight,
        r.total_calls_target
            .map_or(String::new(), |t| format!("{t} calls in all, ")),
        r.duration_limit_s
            .map_or("no time limit".into(), |d| format!("{d:.0} s window")),
        r.call_secs
            .map_or("the whole window".into(), |c| format!("{c} s")),
        r.linger_ms,
        r.sample_secs,
        r.url
    );
    let _ = writeln!(
        o,
        "   {}",
        r.pinning
            .as_deref()
            .map_or("not pinned".to_owned(), |p| format!("pinned: {p}"))
    );
    let _ = writeln!(
        o,
        "  calls: started {}  completed {}  failed {} (refused {})  byte-exact {}  not exact {}  cut by the relay {}",
        r.calls_started,
        r.calls_completed,
        r.calls_failed,
        r.calls_refused,
        r.calls_byte_exact,
        r.calls_not_exact,
        r.calls_cut
    );
    let _ = writeln!(
        o,
        "  {:.1} s of load, {:.2} calls/s completed",
        r.load_s, r.calls_per_sec
    );
    let c = &r.caller;
    let a = &r.agent;
    let _ = writeln!(
        o,
        "  frames sent {}  at the agent: unique {} corrupt {} dup {} reorder {} cross-talk {}  echoed {}",
        r.frames_sent, a.unique, a.corrupt, a.duplicates, a.reordered, a.cross_talk, a.echoed
    );
    let _ = writeln!(
        o,
        "  back at the callers: unique {} corrupt {} dup {} reorder {} cross-talk {}  marks {}/{}  protocol errors {}",
        c.unique,
        c.corrupt,
        c.duplicates,
        c.reordered,
        c.cross_talk,
        c.marks_received,
        c.marks_echoed,
        c.protocol_errors
    );
    let codes: Vec<String> = c
        .close_codes
        .iter()
        .map(|(k, v)| {
            if *k == 0 {
                format!("no close frame: {v}")
            } else {
                format!("{k}: {v}")
            }
        })
        .collect();
    let _ = writeln!(o, "  relay close codes: {}", codes.join(", "));
    let _ = writeln!(
        o,
        "  frames lost: caller→agent {}  agent→caller {}",
        r.lost_caller_to_agent, r.lost_to_caller
    );
    if !r.relay_outcomes.is_empty() {
        let v: Vec<String> = r
            .relay_outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "  relay_calls_total during the run: {}", v.join(", "));
    }
    for p in &r.problems {
        let _ = writeln!(o, "    problem: {p}");
    }
    let _ = writeln!(
        o,
        "  {:<30} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (µs), all frames", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, p) in [
        ("caller→agent (one way)", &r.caller_to_agent),
        ("agent→caller (one way)", &r.agent_to_caller),
        ("round trip", &r.round_trip),
    ] {
        match p {
            Some(p) => {
                let _ = writeln!(
                    o,
                    "  {name:<30} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    p.count, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
                );
            }
            None => {
                let _ = writeln!(o, "  {name:<30} {:>9}", "-");
            }
        }
    }
    let _ = writeln!(
        o,
        "  relay process {}: {:>12} {:>12} {:>12} {:>9}",
        opt(r.pid),
        "RSS KiB",
        "open fds",
        "tasks",
        "calls"
    );
    let row = |o: &mut String, name: &str, s: &ResSample| {
        let _ = writeln!(
            o,
            "    {name:<26} {:>12} {:>12} {:>12} {:>9}",
            opt(s.rss_kib),
            opt(s.fds),
            opt(s.tasks),
            opt(s.relay_calls_active)
        );
    };
    if let Some(w) = &r.warmup {
        row(&mut o, "cold start", &r.cold_start);
        let _ = writeln!(
            o,
            "    (warm-up {:.0} s: {} calls, {} byte-exact, {} failed, {} frames lost)",
            w.secs, w.calls_completed, w.calls_byte_exact, w.calls_failed, w.frames_lost
        );
        row(&mut o, "baseline (after warm-up)", &r.baseline);
    } else {
        row(&mut o, "baseline (before)", &r.baseline);
    }
    let _ = writeln!(
        o,
        "    {:<26} {:>12} {:>12} {:>12} {:>9}",
        "max during",
        opt(r.during_max.rss_kib),
        opt(r.during_max.fds),
        opt(r.during_max.tasks),
        opt(r.during_max.relay_calls_active)
    );
    row(
        &mut o,
        &format!("after (+{:.0} s)", r.back_at_baseline.settled_after_s),
        &r.after,
    );
    let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+}", a as i64 - b as i64),
        _ => "-".into(),
    };
    let _ = writeln!(
        o,
        "    {:<26} {:>12} {:>12} {:>12}",
        "after − baseline",
        delta(r.after.rss_kib, r.baseline.rss_kib),
        delta(r.after.fds, r.baseline.fds),
        delta(r.after.tasks, r.baseline.tasks)
    );
    let b = &r.back_at_baseline;
    let _ = writeln!(
        o,
        "  back at baseline: RSS {} (tolerance {} KiB)  fds {}  tasks {}",
        yes_no(b.rss),
        b.rss_tolerance_kib,
        yes_no(b.fds),
        yes_no(b.tasks)
    );
    let s = &r.slopes;
    let _ = writeln!(
        o,
        "  slopes over the second half of the load ({:.0}–{:.0} s, {} samples, least squares): RSS {}  fds {}  tasks {}",
        s.from_s,
        s.to_s,
        s.samples,
        slope_str(s.rss_kib_per_min, "KiB"),
        slope_str(s.fds_per_min, "fds"),
        slope_str(s.tasks_per_min, "tasks")
    );
    let _ = writeln!(
        o,
        "  checks: {}",
        if r.clean() {
            "CLEAN (every call byte-exact, 0 frames lost, none cut, none failed)"
        } else {
            "PROBLEMS (see above)"
        }
    );
    o
}

/// Writes an SVG of RSS, open descriptors and tasks (and calls in flight) over time, with
/// each baseline as a grey line.
pub fn write_svg(r: &SoakReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 860)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "media-relay {}: {} calls in flight{}",
        r.kind.as_str(),
        r.calls_in_flight,
        match (r.kind, r.total_calls_target, r.call_secs) {
            (SoakKind::Churn, Some(t), Some(c)) => format!(", {t} calls of {c} s"),
            (_, _, Some(c)) => format!(", calls of {c} s, {:.0} min", r.load_s / 60.0),
            _ => format!(", {:.0} min", r.load_s / 60.0),
        }
    );
    let (top, rest) = root.split_vertically(40);
    top.draw(&Text::new(title, (20, 10), ("sans-serif", 20).into_font()))?;
    let panels = rest.split_evenly((4, 1));
    let xmax = r
        .samples
        .iter()
        .map(|s| s.t_s / 60.0)
        .fold(0.1f64, f64::max);
    type Get = fn(&SoakSample) -> Option<f64>;
    let specs: [(&str, Get, Option<f64>, RGBColor); 4] = [
        (
            "RSS (MiB)",
            |s| s.res.rss_kib.map(|v| v as f64 / 1024.0),
            r.baseline.rss_kib.map(|v| v as f64 / 1024.0),
            RED,
        ),
        (
            "open fds",
            |s| s.res.fds.map(|v| v as f64),
            r.baseline.fds.map(|v| v as f64),
            BLUE,
        ),
        (
            "tokio tasks",
            |s| s.res.tasks.map(|v| v as f64),
            r.baseline.tasks.map(|v| v as f64),
            GREEN,
        ),
        (
            "relay calls active",
            |s| s.res.relay_calls_active.map(|v| v as f64),
            None,
            BLACK,
        ),
    ];
    for (area, (name, get, base, color)) in panels.iter().zip(specs) {
        let pts: Vec<(f64, f64)> = r
            .samples
            .iter()
            .filter_map(|s| get(s).map(|v| (s.t_s / 60.0, v)))
            .collect();
        let ymax = pts.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
        // RSS: zoomed to its range (a slow drift must be visible); counts start at 0.
        let ymin = if name.starts_with("RSS") {
            pts.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(ymax) * 0.9
        } else {
            0.0
        };
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc(name)
            .x_labels(10)
            .y_labels(5)
            .draw()?;
        if let Some(b) = base {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, b), (xmax, b)],
                    RGBColor(160, 160, 160).stroke_width(1),
                ))?
                .label("baseline")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(160, 160, 160))
                });
        }
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        assert!((ls_slope(&pts).unwrap() - 3.0).abs() < 1e-9);
        assert!(ls_slope(&pts[..2]).is_none());
    }

    #[test]
    fn metrics_parse() {
        let t = "# HELP x\nrelay_calls_active 3\nrelay_calls_active_other 9\nrelay_calls_total{outcome=\"caller_hangup\"} 5\nrelay_calls_total{outcome=\"shutdown\"} 2\nprocess_open_fds 17\n";
        assert_eq!(metric_sum(t, "relay_calls_active"), Some(3.0));
        assert_eq!(metric_sum(t, "relay_calls_total"), Some(7.0));
        assert_eq!(metric_sum(t, "nope"), None);
        let o = outcomes(t);
        assert_eq!(o["caller_hangup"], 5.0);
        assert_eq!(o["shutdown"], 2.0);
    }
}
