//! The bench agent ([`crate::bench::bench_agent`]) as a process of its own:
//! `loadtest agent-server --dialect elevenlabs --listen 127.0.0.1:0`, for load shapes where
//! the mock agent must not share the harness's runtime and threads (issue 19: the outside
//! tester ran a Node `ws` server on its own thread).
//!
//! The child runs the very same [`BenchAgent`] (same HTTP routes, signed-URL endpoint, per-frame
//! tag checks, echo, pings) on a **single-threaded** tokio runtime, as Node runs its event loop
//! on one thread. It prints `listening on ADDR` once bound and is then driven over its stdin and
//! stdout, one JSON object per line, so the agent's sockets carry nothing but agent traffic:
//!
//! | request | answer |
//! |---|---|
//! | `{"cmd":"run", …}`: the run's epoch, window, calls, frame plan, agent mode, ping schedule | `{"ok":true}` |
//! | `{"cmd":"status"}` | `{"ok":true,"frames_rx":…,"conversations_done":…,"unidentified":…}` |
//! | `{"cmd":"results"}` | the above plus every slot (init time, echoed, counters) and the caller→agent latency histogram |
//!
//! **One clock across processes.** Latencies are differences of nanoseconds since the run's
//! epoch. On Linux `std::time::Instant` is `CLOCK_MONOTONIC`, which is system-wide, so the
//! harness sends its epoch as a `CLOCK_MONOTONIC` reading and the agent rebuilds the same
//! `Instant` from it: the agent's receive times and the echo's re-tag (bytes 32..48) are on
//! the harness's clock, exactly as with the in-process agent.
//!
//! The harness keeps a local mirror [`AgentRun`] and fills it from the child
//! ([`AgentProcess::refresh`] at the window's edges, [`AgentProcess::collect`] at the end),
//! so the rest of the run's accounting does not know where the agent ran. What a separate
//! process cannot give is the barge-in latency (the time the agent sent its interruption is
//! read by the caller the moment `clear` arrives): it is not measured with this agent.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::bench::bench_agent::{
    self, AgentCallStats, AgentMode, AgentRun, BenchAgent, BenchDialect, ConversationScript,
    PingSchedule,
};
use crate::bench::procs::RelayAgent;
use crate::bench::tag::{FramePlan, TurnPlan};

/// `CLOCK_MONOTONIC` now, nanoseconds (the clock `std::time::Instant` reads on Linux).
pub fn mono_now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// `instant` as a `CLOCK_MONOTONIC` reading, nanoseconds.
pub fn instant_to_mono_ns(instant: Instant) -> u64 {
    let now_mono = mono_now_ns();
    let now = Instant::now();
    let age = now.saturating_duration_since(instant).as_nanos() as u64;
    now_mono.saturating_sub(age)
}

/// The `Instant` of the `CLOCK_MONOTONIC` reading `mono_ns`.
pub fn mono_ns_to_instant(mono_ns: u64) -> Instant {
    let now_mono = mono_now_ns();
    let now = Instant::now();
    if mono_ns <= now_mono {
        now.checked_sub(Duration::from_nanos(now_mono - mono_ns))
            .unwrap_or(now)
    } else {
        now + Duration::from_nanos(mono_ns - now_mono)
    }
}

/// A running `loadtest agent-server` child (killed on drop).
pub struct AgentProcess {
    child: Child,
    ctl: tokio::sync::Mutex<Control>,
    addr: SocketAddr,
    dialect: BenchDialect,
    pid: u32,
}

struct Control {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What [`AgentProcess::refresh`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentStatus {
    /// Frames the agent received in this run.
    pub frames_rx: u64,
    /// Conversations that ended.
    pub conversations_done: usize,
    /// Conversations that never identified themselves.
    pub unidentified: usize,
}

impl AgentProcess {
    /// Starts `exe agent-server --dialect <dialect> --listen <listen>` and waits for its
    /// `listening on ADDR` line. The child inherits this process's CPU affinity (with
    /// `--pin`, the harness's CPUs).
    pub async fn spawn(exe: &Path, dialect: BenchDialect, listen: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args([
                "agent-server",
                "--dialect",
                dialect.as_str(),
                "--listen",
                listen,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} agent-server", exe.display()))?;
        let pid = child.id().context("agent-server pid")?;
        let stdin = child.stdin.take().context("agent-server stdin")?;
        let stdout = child.stdout.take().context("agent-server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("agent-server did not start within 10 s")??
            .context("agent-server exited before listening")?;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected agent-server output {line:?}"))?
            .parse()?;
        Ok(AgentProcess {
            child,
            ctl: tokio::sync::Mutex::new(Control { stdin, lines }),
            addr,
            dialect,
            pid,
        })
    }

    /// The agent's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> BenchDialect {
        self.dialect
    }

    /// Its pid (for CPU samples).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How to point a relay at it.
    pub fn relay_agent(&self) -> RelayAgent {
        bench_agent::relay_agent_for(self.addr, self.dialect)
    }

    async fn request(&self, req: Value) -> anyhow::Result<Value> {
        let mut ctl = self.ctl.lock().await;
        let mut line = req.to_string();
        line.push('\n');
        ctl.stdin.write_all(line.as_bytes()).await?;
        ctl.stdin.flush().await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), ctl.lines.next_line())
            .await
            .context("agent-server did not answer within 10 s")??
            .context("agent-server exited")?;
        let v: Value = serde_json::from_str(&answer)
            .with_context(|| format!("agent-server answered {answer:?}"))?;
        if v.get("ok") != Some(&Value::Bool(true)) {
            bail!("agent-server: {}", v.get("error").unwrap_or(&v));
        }
        Ok(v)
    }

    /// Starts a run in the child shaped like the harness's mirror `run` (same epoch, window,
    /// calls, plan, mode and ping schedule).
    pub async fn start_run(&self, run: &AgentRun) -> anyhow::Result<()> {
        self.request(run_request(run)).await.map(|_| ())
    }

    /// Reads the child's counters and stores them in the mirror `run`.
    pub async fn refresh(&self, run: &AgentRun) -> anyhow::Result<AgentStatus> {
        let v = self.request(json!({"cmd": "status"})).await?;
        let st = parse_status(&v);
        store_status(run, st);
        Ok(st)
    }

    /// Copies everything the child measured into the mirror `run`: counters, every slot, the
    /// caller→agent histogram.
    pub async fn collect(&self, run: &AgentRun) -> anyhow::Result<()> {
        let v = self.request(json!({"cmd": "results"})).await?;
        store_status(run, parse_status(&v));
        let slots = v
            .get("slots")
            .and_then(Value::as_array)
            .context("no slots")?;
        for (slot, s) in run.slots.iter().zip(slots) {
            let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
            slot.init_ns.store(n("init_ns"), Ordering::Relaxed);
            slot.interrupt_ns
                .store(n("interrupt_ns"), Ordering::Relaxed);
            slot.echoed.store(n("echoed"), Ordering::Relaxed);
            let stats: Option<AgentCallStats> = match s.get("stats") {
                Some(Value::Null) | None => None,
                Some(x) => Some(serde_json::from_value(x.clone())?),
            };
            *slot.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        }
        let mut h = run
            .caller_to_agent
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.reset();
        for pair in v
            .get("caller_to_agent")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let value = pair.get(0).and_then(Value::as_u64).unwrap_or(1).max(1);
            let count = pair.get(1).and_then(Value::as_u64).unwrap_or(0);
            h.record_n(value, count)
                .map_err(|e| anyhow!("histogram: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn parse_status(v: &Value) -> AgentStatus {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    AgentStatus {
        frames_rx: n("frames_rx"),
        conversations_done: n("conversations_done") as usize,
        unidentified: n("unidentified") as usize,
    }
}

fn store_status(run: &AgentRun, st: AgentStatus) {
    run.frames_rx.store(st.frames_rx, Ordering::Relaxed);
    run.conversations_done
        .store(st.conversations_done, Ordering::Relaxed);
    run.unidentified.store(st.unidentified, Ordering::Relaxed);
}

/// The `run` request describing `run`.
fn run_request(run: &AgentRun) -> Value {
    let turns = run
        .plan
        .turns
        .map(|t| json!({"speech_frames": t.speech_frames, "turn_frames": t.turn_frames}));
    let conversation = match &run.mode {
        AgentMode::Echo => Value::Null,
        AgentMode::Conversation(c) => json!({
            "reply": B64.encode(&c.reply[..]),
            "think_time_us": c.think_time.as_micros() as u64,
            "chunk_bytes": c.chunk_bytes,
            "chunk_interval_us": c.chunk_interval.as_micros() as u64,
            "barge_in": c.barge_in,
        }),
    };
    json!({
        "cmd": "run",
        "epoch_mono_ns": instant_to_mono_ns(run.epoch),
        "window_ns": [run.window_ns.0, run.window_ns.1],
        "calls": run.slots.len(),
        "fixture": B64.encode(&run.plan.fixture[..]),
        "turns": turns,
        "conversation": conversation,
        "ping": run.ping,
    })
}

/// The child's [`AgentRun`] for a `run` request.
fn parse_run(v: &Value) -> anyhow::Result<AgentRun> {
    let u = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .with_context(|| format!("run: no {k}"))
    };
    let window = v
        .get("window_ns")
        .and_then(Value::as_array)
        .context("run: no window_ns")?;
    let w = |i: usize| window.get(i).and_then(Value::as_u64).unwrap_or(0);
    let fixture = B64.decode(
        v.get("fixture")
            .and_then(Value::as_str)
            .context("run: no fixture")?,
    )?;
    let turns = match v.get("turns") {
        Some(t) if !t.is_null() => Some(TurnPlan {
            speech_frames: t
                .get("speech_frames")
                .and_then(Value::as_u64)
                .context("speech_frames")? as u32,
            turn_frames: t
                .get("turn_frames")
                .and_then(Value::as_u64)
                .context("turn_frames")? as u32,
        }),
        _ => None,
    };
    let mode = match v.get("conversation") {
        Some(c) if !c.is_null() => {
            let cu = |k: &str| {
                c.get(k)
                    .and_then(Value::as_u64)
                    .with_context(|| format!("conversation: no {k}"))
            };
            AgentMode::Conversation(ConversationScript {
                reply: Arc::new(
                    B64.decode(c.get("reply").and_then(Value::as_str).context("reply")?)?,
                ),
                think_time: Duration::from_micros(cu("think_time_us")?),
                chunk_bytes: cu("chunk_bytes")? as usize,
                chunk_interval: Duration::from_micros(cu("chunk_interval_us")?),
                barge_in: c.get("barge_in").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        _ => AgentMode::Echo,
    };
    let ping: PingSchedule = match v.get("ping") {
        Some(p) => serde_json::from_value(p.clone())?,
        None => PingSchedule::default(),
    };
    Ok(AgentRun::new(
        mono_ns_to_instant(u("epoch_mono_ns")?),
        FramePlan {
            fixture: Arc::new(fixture),
            turns,
        },
        mode,
        (w(0), w(1)),
        u("calls")? as usize,
    )
    .with_ping(ping))
}

fn status_json(run: Option<&AgentRun>) -> Value {
    match run {
        Some(r) => json!({
            "ok": true,
            "frames_rx": r.frames_rx.load(Ordering::Relaxed),
            "conversations_done": r.conversations_done.load(Ordering::Relaxed),
            "unidentified": r.unidentified.load(Ordering::Relaxed),
        }),
        None => json!({"ok": true, "frames_rx": 0, "conversations_done": 0, "unidentified": 0}),
    }
}

fn results_json(run: Option<&AgentRun>) -> Value {
    let mut v = status_json(run);
    let Some(r) = run else {
        v["slots"] = json!([]);
        v["caller_to_agent"] = json!([]);
        return v;
    };
    let slots: Vec<Value> = r
        .slots
        .iter()
        .map(|s| {
            json!({
                "init_ns": s.init_ns.load(Ordering::Relaxed),
                "interrupt_ns": s.interrupt_ns.load(Ordering::Relaxed),
                "echoed": s.echoed.load(Ordering::Relaxed),
                "stats": *s.stats.lock().unwrap_or_else(|p| p.into_inner()),
            })
        })
        .collect();
    let h = r.caller_to_agent.lock().unwrap_or_else(|p| p.into_inner());
    let pairs: Vec<Value> = h
        .iter_recorded()
        .map(|x| json!([x.value_iterated_to(), x.count_at_value()]))
        .collect();
    v["slots"] = Value::Array(slots);
    v["caller_to_agent"] = Value::Array(pairs);
    v
}

/// The child's side: serves a [`BenchAgent`] of `dialect` on `listen`, prints `listening on
/// ADDR`, then answers control requests on stdin until it closes. Run it on a
/// current-thread runtime (`loadtest agent-server` does).
pub async fn serve(listen: &str, dialect: BenchDialect) -> anyhow::Result<()> {
    let agent = BenchAgent::start_dialect(listen, dialect).await?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("listening on {}\n", agent.addr()).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut current: Option<Arc<AgentRun>> = None;
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Value>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) => match req.get("cmd").and_then(Value::as_str) {
                Some("run") => match parse_run(&req) {
                    Ok(run) => {
                        let run = Arc::new(run);
                        agent.set_run(run.clone());
                        current = Some(run);
                        json!({"ok": true})
                    }
                    Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
                },
                Some("status") => status_json(current.as_deref()),
                Some("results") => results_json(current.as_deref()),
                other => json!({"ok": false, "error": format!("unknown cmd {other:?}")}),
            },
        };
        let mut text = answer.to_string();
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_instants_round_trip() {
        let t = Instant::now() - Duration::from_millis(5);
        let back = mono_ns_to_instant(instant_to_mono_ns(t));
        let d = if back > t { back - t } else { t - back };
        assert!(d < Duration::from_micros(200), "{d:?}");
    }

    #[test]
    fn run_requests_round_trip() {
        let plan = FramePlan {
            fixture: Arc::new(vec![0x55; 320]),
            turns: Some(TurnPlan {
                speech_frames: 2,
                turn_frames: 5,
            }),
        };
        let mode = AgentMode::Conversation(ConversationScript {
            reply: Arc::new(vec![1, 2, 3]),
            think_time: Duration::from_millis(200),
            chunk_bytes: 1600,
            chunk_interval: Duration::from_millis(50),
            barge_in: true,
        });
        let run = AgentRun::new(Instant::now(), plan, mode, (10, 20), 7)
            .with_ping(PingSchedule::IntervalMs(1000));
        let back = parse_run(&run_request(&run)).unwrap();
        assert_eq!(back.slots.len(), 7);
        assert_eq!(back.window_ns, (10, 20));
        assert_eq!(back.ping, PingSchedule::IntervalMs(1000));
        assert_eq!(back.plan.fixture.len(), 320);
        assert_eq!(back.plan.turns.unwrap().turn_frames, 5);
        match back.mode {
            AgentMode::Conversation(c) => {
                assert_eq!(&c.reply[..], &[1, 2, 3]);
                assert!(c.barge_in);
                assert_eq!(c.think_time, Duration::from_millis(200));
            }
            AgentMode::Echo => panic!("mode lost"),
        }
    }
}
