//! The load shape of issue 19 through a spawned relay (debug build, or `$LOADTEST_RELAY_BIN`):
//! lockstep pacing (one 20 ms clock sends every call's frame in one burst per tick), the
//! ElevenLabs mock agent as a process of its own (`loadtest agent-server`, one thread) pinging
//! on a timer, marks echoed when their audio has played, nothing pinned.
//!
//! Checks byte-exactness and zero loss end to end, that the cross-process clock gives sane
//! one-way latencies, that the relay answers the agent's pings, and that lockstep really
//! sends in bursts on one clock: every tick of the window carries every call's frame, a
//! burst lasts a small part of the period, and the window's sends crowd into a few
//! milliseconds of the 20 ms period where per-call pacing spreads them over all of it. Then
//! the same shape once through the `loadtest` command line. The runs take turns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use loadtest::bench::agent_process::AgentProcess;
use loadtest::bench_agent::{BenchDialect, PingSchedule};
use loadtest::harness::{self, AgentSide, LoadConfig, LoadResult, Pacing, RunOptions};
use loadtest::{fixtures, procs};

const CALLS: usize = 20;

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

fn relay_bin() -> PathBuf {
    match std::env::var_os("LOADTEST_RELAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => procs::relay_binary("debug", false).expect("relay binary"),
    }
}

fn loadtest_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_loadtest"))
}

fn assert_clean(r: &LoadResult) {
    let summary = loadtest::report::summarize(r);
    let a = r.agent.clone().expect("agent stats");
    let c = &r.caller;
    assert_eq!(c.connected, CALLS as u64, "{summary}");
    assert_eq!(r.agent_unidentified, 0, "{summary}");
    assert!(c.frames_sent > (CALLS * 100) as u64, "{summary}");
    assert_eq!(r.lost_caller_to_agent, Some(0), "{summary}");
    assert_eq!(r.lost_to_caller, 0, "{summary}");
    assert_eq!(a.unique, c.frames_sent, "{summary}");
    assert_eq!(c.unique, c.frames_sent, "every frame echoed: {summary}");
    assert_eq!(a.corrupt + c.corrupt, 0, "{summary}");
    assert_eq!(a.cross_talk + c.cross_talk, 0, "{summary}");
    assert_eq!(a.duplicates + c.duplicates, 0, "{summary}");
    assert_eq!(a.reordered + c.reordered, 0, "{summary}");
    assert_eq!(a.protocol_errors + c.protocol_errors, 0, "{summary}");
    assert!(c.marks_echoed > 0, "{summary}");
    assert!(r.clean(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_with_a_separate_agent_is_byte_exact_and_bursts_on_one_clock() {
    let _turn = one_at_a_time().await;
    let agent = AgentProcess::spawn(loadtest_exe(), BenchDialect::ElevenLabs, "127.0.0.1:0")
        .await
        .expect("agent-server");
    let relay = procs::spawn_relay_with(&relay_bin(), &agent.relay_agent(), "warn", None)
        .await
        .expect("relay");
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let (plan, mode) = harness::echo_setup(caller);
    let cfg = LoadConfig {
        url: relay.media_url(),
        floor: false,
        calls: CALLS,
        ramp_per_sec: 50.0,
        duration: Duration::from_secs(3),
        settle: Duration::from_millis(300),
        plan,
        mode,
        aligned: false,
        monitor_pid: Some(relay.proc.pid()),
    };
    let lockstep = RunOptions {
        pacing: Pacing::Lockstep,
        agent_ping: PingSchedule::IntervalMs(500),
        perf_stat: false,
    };
    let r = harness::run_load_with(cfg.clone(), &lockstep, AgentSide::Process(&agent), None)
        .await
        .unwrap();
    let summary = loadtest::report::summarize(&r);
    assert_clean(&r);
    assert_eq!(r.agent_placement, "separate process");
    assert!(r.agent_process_cores.is_some(), "{summary}");

    // The agent's receive times and re-tags are on the harness's clock.
    for p in [&r.caller_to_agent, &r.agent_to_caller] {
        let p = p.as_ref().expect("one-way latencies");
        assert!(p.count > 0, "{summary}");
        assert!(p.p50_us > 1.0 && p.p50_us < 100_000.0, "{summary}");
    }

    // Timed pings, every one answered but perhaps the last of each call.
    let a = r.agent.clone().unwrap();
    assert!(a.pings >= (CALLS * 4) as u64, "{summary}");
    assert!(a.pongs + CALLS as u64 >= a.pings, "{summary}");

    // One clock: every tick of the window sent every call's frame, in one short burst.
    let b = r.bursts.clone().expect("lockstep bursts");
    assert!(b.ticks >= 100, "{summary}");
    assert_eq!(b.frames_per_tick_min, CALLS as u64, "{summary}");
    assert_eq!(b.frames_per_tick_max, CALLS as u64, "{summary}");
    assert_eq!(b.frames, b.ticks * CALLS as u64, "{summary}");
    assert!(b.span.as_ref().unwrap().p50_us < 5_000.0, "{summary}");
    let lockstep_conc = r.send_phase_concentration(4);
    assert!(lockstep_conc >= 0.5, "{lockstep_conc}: {summary}");

    // The same calls with per-call timers: spread over the whole period.
    let per_call = RunOptions {
        pacing: Pacing::PerCall,
        ..lockstep.clone()
    };
    let cfg2 = LoadConfig {
        duration: Duration::from_secs(2),
        ..cfg
    };
    let r2 = harness::run_load_with(cfg2, &per_call, AgentSide::Process(&agent), None)
        .await
        .unwrap();
    let summary2 = loadtest::report::summarize(&r2);
    assert_clean(&r2);
    assert!(r2.bursts.is_none());
    let spread_conc = r2.send_phase_concentration(4);
    assert!(
        spread_conc <= 0.4 && spread_conc < lockstep_conc,
        "{spread_conc} vs lockstep {lockstep_conc}: {summary2}"
    );
}

#[test]
fn the_command_line_runs_the_shape_unpinned_against_the_floor() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _turn = rt.block_on(one_at_a_time());
    let out = std::process::Command::new(loadtest_exe())
        .args(["--spawn", "--relay-bin"])
        .arg(relay_bin())
        .args([
            "--calls",
            "5",
            "--duration-secs",
            "1",
            "--settle-secs",
            "0.3",
            "--pacing",
            "lockstep",
            "--agent-process",
            "separate",
            "--agent-ping-ms",
            "1000",
            "--pin",
            "none",
        ])
        .output()
        .expect("run loadtest");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(
        text.contains(
            "== shape: pacing lockstep; agent separate process, pings every 1000 ms; unpinned"
        ),
        "{text}"
    );
    assert!(text.contains("== not pinned"), "{text}");
    assert!(text.contains("FLOOR"), "{text}");
    assert!(text.contains("relay ÷ floor CPU per frame"), "{text}");
    assert_eq!(text.matches("checks: CLEAN").count(), 2, "{text}");
}
