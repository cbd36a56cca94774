//! Smoke run of the load harness through a spawned relay (debug build): 20 calls × 5 s in
//! echo mode and in conversation mode, asserting zero loss, zero cross-talk, byte-exact audio
//! and every turn answered. No timing assertions.

use std::sync::Arc;
use std::time::Duration;

use loadtest::bench_agent::BenchAgent;
use loadtest::harness::{self, LoadConfig, LoadResult};
use loadtest::{fixtures, procs, MULAW_FRAME_BYTES};

fn assert_clean(r: &LoadResult) {
    let summary = loadtest::report::summarize(r);
    let a = r.agent.clone().expect("agent stats");
    let c = &r.caller;
    assert_eq!(c.connected, 20, "{summary}");
    assert_eq!(c.connect_failures, 0, "{summary}");
    assert!(c.frames_sent > 20 * 200, "{summary}");
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
    assert_clean(&r);
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
    assert_clean(&r);
    assert!(r.caller.turns_expected >= 20, "{}", r.caller.turns_expected);
}
