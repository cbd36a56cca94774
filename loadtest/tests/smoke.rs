//! Smoke runs of the load harness through a spawned relay (debug build): 20 calls in echo
//! mode and in conversation mode, asserting zero loss, zero cross-talk, byte-exact audio and
//! every turn answered — with the mock agent speaking ElevenLabs, AssemblyAI and OpenAI
//! Realtime (the latter two with barge-in too). No timing assertions. The runs take turns
//! (one at a time), so they do not load the machine together.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use loadtest::bench_agent::{BenchAgent, BenchDialect};
use loadtest::harness::{self, LoadConfig, LoadResult};
use loadtest::{fixtures, procs, MULAW_FRAME_BYTES};

/// Held by each smoke test for its whole run.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

fn assert_clean(r: &LoadResult, min_frames: u64) {
    let summary = loadtest::report::summarize(r);
    let a = r.agent.clone().expect("agent stats");
    let c = &r.caller;
    assert_eq!(c.connected, 20, "{summary}");
    assert_eq!(c.connect_failures, 0, "{summary}");
    assert!(c.frames_sent > min_frames, "{summary}");
    assert_eq!(r.agent_unidentified, 0, "{summary}");
    assert_eq!(r.lost_caller_to_agent, Some(0), "{summary}");
    assert_eq!(r.lost_to_caller, 0, "{summary}");
    assert_eq!(a.unique, c.frames_sent, "{summary}");
    assert_eq!(a.cross_talk + c.cross_talk, 0, "{summary}");
    assert_eq!(a.corrupt + c.corrupt, 0, "{summary}");
    assert_eq!(a.duplicates + c.duplicates, 0, "{summary}");
    assert_eq!(a.reordered + c.reordered, 0, "{summary}");
    assert_eq!(a.protocol_errors + c.protocol_errors, 0, "{summary}");
    assert_eq!(c.turn_audio_mismatch, 0, "{summary}");
    assert_eq!(c.turns_answered, c.turns_expected, "{summary}");
    assert!(r.clean(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_through_the_spawned_relay() {
    let _turn = one_at_a_time().await;
    let bin = procs::relay_binary("debug", false).expect("relay binary");
    let agent = BenchAgent::start("127.0.0.1:0").await.unwrap();
    let relay = procs::spawn_relay(&bin, &agent.api_base(), "warn", None)
        .await
        .unwrap();
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());

    // Echo: every frame round-trips; each checked at the agent and back at the caller.
    let (plan, mode) = harness::echo_setup(caller.clone());
    let base = LoadConfig {
        url: relay.media_url(),
        floor: false,
        calls: 20,
        ramp_per_sec: 50.0,
        duration: Duration::from_secs(5),
        settle: Duration::from_millis(500),
        plan,
        mode,
        aligned: false,
        monitor_pid: Some(relay.proc.pid()),
    };
    let r = harness::run_load(base.clone(), Some(&agent), None)
        .await
        .unwrap();
    assert_clean(&r, 20 * 200);
    assert_eq!(r.caller.unique, r.caller.frames_sent, "every frame echoed");
    assert!(r.caller.marks_received > 0);

    // Conversation: short turns (1 s of speech, 1.6 s reply) so each call has ≥ 1 turn.
    let speech = Arc::new(caller[..50 * MULAW_FRAME_BYTES].to_vec());
    let answer = Arc::new(reply[..80 * MULAW_FRAME_BYTES].to_vec());
    let (plan, mode) =
        harness::conversation_setup(speech, answer, Duration::from_millis(200), false);
    let r = harness::run_load(
        LoadConfig {
            plan,
            mode,
            ..base.clone()
        },
        Some(&agent),
        None,
    )
    .await
    .unwrap();
    assert_clean(&r, 20 * 200);
    assert!(r.caller.turns_expected >= 20, "{}", r.caller.turns_expected);
}

/// Echo, conversation and conversation with barge-in through a relay spawned for `dialect`.
async fn dialect_smoke(dialect: BenchDialect) {
    let _turn = one_at_a_time().await;
    let bin = procs::relay_binary("debug", false).expect("relay binary");
    let agent = BenchAgent::start_dialect("127.0.0.1:0", dialect)
        .await
        .unwrap();
    let relay = procs::spawn_relay_with(&bin, &agent.relay_agent(), "warn", None)
        .await
        .unwrap();
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let log = relay.log.display().to_string();

    let (plan, mode) = harness::echo_setup(caller.clone());
    let base = LoadConfig {
        url: relay.media_url(),
        floor: false,
        calls: 20,
        ramp_per_sec: 50.0,
        duration: Duration::from_secs(4),
        settle: Duration::from_millis(500),
        plan,
        mode,
        aligned: false,
        monitor_pid: Some(relay.proc.pid()),
    };
    let r = harness::run_load(base.clone(), Some(&agent), None)
        .await
        .unwrap();
    assert_clean(&r, 20 * 150);
    assert_eq!(
        r.caller.unique, r.caller.frames_sent,
        "every frame echoed (relay log {log})"
    );

    let speech = Arc::new(caller[..50 * MULAW_FRAME_BYTES].to_vec());
    for barge_in in [false, true] {
        // Without barge-in a 1.6 s answer; with it the whole reply fixture, still being sent
        // (at 4× real time) when the caller starts the next turn 0.5 s after it began.
        let answer = if barge_in {
            reply.clone()
        } else {
            Arc::new(reply[..80 * MULAW_FRAME_BYTES].to_vec())
        };
        let (plan, mode) = harness::conversation_setup(
            speech.clone(),
            answer,
            Duration::from_millis(200),
            barge_in,
        );
        let r = harness::run_load(
            LoadConfig {
                plan,
                mode,
                ..base.clone()
            },
            Some(&agent),
            None,
        )
        .await
        .unwrap();
        assert_clean(&r, 20 * 150);
        assert!(r.caller.turns_expected >= 20, "{}", r.caller.turns_expected);
        let a = r.agent.clone().unwrap();
        if barge_in {
            let summary = loadtest::report::summarize(&r);
            assert!(a.interruptions >= 20, "{summary}");
            assert!(r.caller.clears >= 20, "{summary}");
            assert!(r.barge_in.is_some(), "{summary}");
            if dialect == BenchDialect::OpenAi {
                // The relay tells the agent what was heard; the mock checked each truncate.
                assert!(a.truncates >= 20, "{summary}");
            }
        } else {
            assert_eq!(a.interruptions, 0);
            assert_eq!(r.caller.clears, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_through_the_spawned_relay_assemblyai() {
    dialect_smoke(BenchDialect::AssemblyAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_through_the_spawned_relay_openai() {
    dialect_smoke(BenchDialect::OpenAi).await;
}
