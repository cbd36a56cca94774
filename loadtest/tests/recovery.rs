//! The recovery benchmark's fault path through a spawned relay (debug build): the bench
//! agent kills agent sockets during the window (WebSocket Close 1011 in every dialect, and
//! a TCP reset for ElevenLabs), the relay reconnects (ElevenLabs: new conversation with a
//! `contextual_update`; AssemblyAI: `session.resume`; OpenAI: new session and
//! `conversation.item.create` replay), and the run's fault report must show every kill
//! recovered and heard, no call lost, no loss outside the gaps, no frame judged corrupt
//! (hold audio is counted apart) and the relay's own figures agreeing. No timing
//! assertions. The runs take turns.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use loadtest::bench_agent::{BenchAgent, BenchDialect};
use loadtest::faults::{FaultConfig, KillMode, RelayHttp};
use loadtest::harness::{self, AgentSide, LoadConfig, RunOptions};
use loadtest::{fixtures, procs};

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

async fn recovers(dialect: BenchDialect, mode: KillMode) {
    let _turn = one_at_a_time().await;
    let bin = procs::relay_binary("debug", false).expect("relay binary");
    let agent = BenchAgent::start_dialect("127.0.0.1:0", dialect)
        .await
        .unwrap();
    let relay = procs::spawn_relay_env(
        &bin,
        &agent.relay_agent(),
        "warn",
        None,
        &[("RELAY_ADMIN_TOKEN", "t")],
    )
    .await
    .unwrap();
    let log = relay.log.display().to_string();
    let (plan, echo) = harness::echo_setup(Arc::new(fixtures::caller_utterance().unwrap()));
    let cfg = LoadConfig {
        url: relay.media_url(),
        floor: false,
        calls: 20,
        ramp_per_sec: 50.0,
        duration: Duration::from_secs(12),
        settle: Duration::from_millis(500),
        plan,
        mode: echo,
        aligned: false,
        monitor_pid: Some(relay.proc.pid()),
    };
    // 100 % per minute of 20 calls over 12 s: 4 kills, in the window's first 7 s.
    let mut faults = FaultConfig::new(100.0);
    faults.mode = mode;
    faults.relay = Some(RelayHttp {
        addr: relay.addr.clone(),
        admin_token: Some("t".into()),
    });
    let r = harness::run_load_faults(
        cfg,
        &RunOptions::default(),
        AgentSide::InProcess(&agent),
        None,
        Some(&faults),
    )
    .await
    .unwrap();
    let summary = format!("{}\nrelay log {log}", loadtest::report::summarize(&r));
    let f = r.faults.as_ref().expect("a fault report");
    let c = &r.caller;
    let a = r.agent.clone().unwrap();
    assert_eq!(f.kills_planned, 4, "{summary}");
    assert_eq!(f.kills_done, 4, "{summary}");
    assert_eq!(f.heard_gaps.len(), 4, "{summary}");
    assert_eq!(f.reconnects, 4, "{summary}");
    assert!(f.recovered_cleanly(), "{summary}");
    assert_eq!(f.calls_lost, 0, "{summary}");
    assert_eq!(c.closed_early, 0, "{summary}");
    assert_eq!(r.agent_unidentified, 0, "{summary}");
    assert_eq!(
        c.corrupt + c.cross_talk + a.corrupt + a.cross_talk,
        0,
        "{summary}"
    );
    assert_eq!(c.duplicates + a.duplicates + a.reordered, 0, "{summary}");
    assert_eq!(c.protocol_errors + a.protocol_errors, 0, "{summary}");
    assert!(
        f.hold_audio_ms > 0.0,
        "the callers heard hold audio: {summary}"
    );
    assert_eq!(f.calls_affected + f.calls_unaffected, 20);
    assert!(f.unaffected_round_trip.is_some(), "{summary}");
    match dialect {
        BenchDialect::ElevenLabs => assert_eq!(f.contextual_updates, 4, "{summary}"),
        BenchDialect::AssemblyAi => assert_eq!(f.resumes, 4, "{summary}"),
        BenchDialect::OpenAi => assert!(f.item_creates >= 4, "{summary}"),
    }
    let rel = f.relay.as_ref().expect("relay figures");
    assert!(rel.errors.is_empty(), "{:?}", rel.errors);
    assert_eq!(
        rel.recoveries_total.get("recovered"),
        Some(&4.0),
        "{summary}"
    );
    assert_eq!(rel.gap_count, 4.0, "{summary}");
    assert_eq!(rel.calls_listed, 20, "{summary}");
    let recovered = rel
        .recoveries
        .iter()
        .filter(|x| x.result.as_deref() == Some("recovered") && x.gap_ms.is_some())
        .count();
    assert_eq!(recovered, 4, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_recovers_from_closed_sockets() {
    recovers(BenchDialect::ElevenLabs, KillMode::Close).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_recovers_from_reset_sockets() {
    recovers(BenchDialect::ElevenLabs, KillMode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_resumes_after_closed_sockets() {
    recovers(BenchDialect::AssemblyAi, KillMode::Close).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_replays_after_closed_sockets() {
    recovers(BenchDialect::OpenAi, KillMode::Close).await;
}

/// Without faults a run's JSON has no `faults` member (other scripts parse it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_without_faults_report_as_before() {
    let _turn = one_at_a_time().await;
    let bin = procs::relay_binary("debug", false).expect("relay binary");
    let agent = BenchAgent::start("127.0.0.1:0").await.unwrap();
    let relay = procs::spawn_relay(&bin, &agent.api_base(), "warn", None)
        .await
        .unwrap();
    let (plan, mode) = harness::echo_setup(Arc::new(fixtures::caller_utterance().unwrap()));
    let cfg = LoadConfig {
        url: relay.media_url(),
        floor: false,
        calls: 5,
        ramp_per_sec: 50.0,
        duration: Duration::from_secs(2),
        settle: Duration::from_millis(300),
        plan,
        mode,
        aligned: false,
        monitor_pid: None,
    };
    let r = harness::run_load(cfg, Some(&agent), None).await.unwrap();
    assert!(r.clean(), "{}", loadtest::report::summarize(&r));
    assert!(r.faults.is_none());
    let v = serde_json::to_value(&r).unwrap();
    assert!(v.get("faults").is_none(), "no faults member without faults");
    assert!(v.get("caller").is_some());
}
