//! A call's own figures (issue 10): `GET /calls` lists live calls, `GET /calls/{call_sid}`
//! returns a live or recently ended call, both behind `RELAY_ADMIN_TOKEN`; a scripted call's
//! summary matches what the simulated caller measured, within stated tolerances.

mod common;

use common::*;
use loadtest::agent_sim::{self, AgentBehavior, MockAgentConfig};
use loadtest::fixtures;
use loadtest::twilio_sim::{run_call, CallScript};
use media_relay::audio::vad::{SpeechDetector, SpeechEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-secret";

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_with(addr, "GET", path, &headers, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_routes_need_the_admin_token_and_are_absent_without_one() {
    let relay = start_relay(args()).await;
    assert_eq!(get(relay.addr, "/calls", Some(ADMIN)).await.0, 404);
    assert_eq!(get(relay.addr, "/calls/CA1", None).await.0, 404);
    let mut a = args();
    a.http.admin_token = Some(media_relay::auth::Secret::new(ADMIN));
    let relay = start_relay(a).await;
    assert_eq!(get(relay.addr, "/calls", None).await.0, 401);
    assert_eq!(get(relay.addr, "/calls", Some("wrong")).await.0, 401);
    let (status, body) = get(relay.addr, "/calls", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 0);
    assert_eq!(get(relay.addr, "/calls/CA404", Some(ADMIN)).await.0, 404);
}

/// Tolerances: frame counts and barge-ins exact; played ms exact (the last mark the caller
/// echoed); turn latency within 80 ms of the caller's own measurement (the relay's speech
/// detector works in 20 ms frames and timestamps on arrival; the caller timestamps its send
/// tick and the reply's arrival, so loopback and scheduling sit between the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_summary_matches_what_the_caller_measured() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let mut cfg = MockAgentConfig::new("agent_obs");
    cfg.behavior = AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: caller.len(),
        think_time: Duration::from_millis(300),
        chunk_bytes: 1600,
        chunk_interval: Duration::from_millis(40),
        interrupt_after_chunks: None,
    };
    let mock = agent_sim::start(cfg).await.unwrap();
    let mut a = elevenlabs_args(&mock.api_base(), "agent_obs", None);
    a.http.admin_token = Some(media_relay::auth::Secret::new(ADMIN));
    // Live figures republished every 200 ms, so the test waits for them, not for time.
    a.call.call_summary_interval_ms = 200;
    let relay = start_relay(a).await;
    let start = start_params(77, &[]);
    let call_sid = start.call_sid.clone();
    // Like Twilio, the caller keeps streaming (silence) while the agent answers.
    let mut stream = caller.to_vec();
    stream.extend(std::iter::repeat_n(0xFFu8, 8000 * 8));
    let mut script = CallScript::new(relay.media_url(), start, Arc::new(stream));
    script.linger = Duration::from_millis(500);
    let began = Instant::now();
    let call = tokio::spawn(run_call(script));

    // Live: listed with running figures (polled until the call has relayed 100 frames).
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        let (status, body) = get(relay.addr, "/calls", Some(ADMIN)).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["calls"][0]["frames_caller_to_agent"]
            .as_u64()
            .unwrap_or(0)
            > 100
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no live figures: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["count"], 1, "{v}");
    let live = &v["calls"][0];
    assert_eq!(live["call_sid"], call_sid.as_str());
    assert_eq!(live["state"], "live");
    assert_eq!(live["agent"], "elevenlabs");
    assert!(
        live["frames_caller_to_agent"].as_u64().unwrap() > 100,
        "{live}"
    );

    let report = call.await.unwrap().unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    let _ = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    let (status, body) = get(relay.addr, &format!("/calls/{call_sid}"), Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["state"], "ended");
    assert_eq!(s["outcome"], "caller_hangup");
    assert_eq!(
        s["frames_caller_to_agent"].as_u64().unwrap(),
        report.frames_sent as u64
    );
    assert_eq!(
        s["frames_agent_to_caller"].as_u64().unwrap(),
        report.media_messages as u64
    );
    assert_eq!(s["barge_ins"].as_u64().unwrap(), report.clears as u64);
    let last_echoed: u64 = report
        .marks_echoed
        .last()
        .and_then(|m| m.strip_prefix("ms-")?.parse().ok())
        .unwrap();
    assert_eq!(s["played_ms"].as_u64().unwrap(), last_echoed);
    assert_eq!(s["dropped_caller_to_agent"], 0);
    assert_eq!(s["dropped_agent_to_caller"], 0);

    // Turn latency: the caller's speech ends at the last voiced frame of the fixture (the
    // same detector, on the bytes it sent); it was sent at that frame's 20 ms tick.
    let mut det = SpeechDetector::default();
    let t0 = Instant::now();
    let mut end_frame = None;
    for (i, f) in caller.chunks(160).enumerate() {
        if let Some(SpeechEvent::Ended(at)) = det.push(f, t0 + Duration::from_millis(20 * i as u64))
        {
            end_frame = Some((at - t0).as_millis() as u64 / 20);
        }
    }
    // The fixture's own trailing silence is shorter than the hangover; the silence streamed
    // after it completes the end, at the last voiced frame.
    let end_frame = end_frame.unwrap_or_else(|| {
        caller
            .chunks(160)
            .rposition(|f| {
                media_relay::audio::vad::level_dbfs(f) >= media_relay::audio::vad::SPEECH_LEVEL_DBFS
            })
            .unwrap() as u64
    });
    let first_reply = report.first_media_at.unwrap();
    let measured_by_caller =
        first_reply.saturating_duration_since(began + Duration::from_millis(20 * end_frame));
    let turn = &s["latency"]["turn"];
    assert_eq!(turn["count"], 1, "{turn}");
    let relay_ms = turn["p50_ms"].as_f64().unwrap();
    let caller_ms = measured_by_caller.as_secs_f64() * 1e3;
    assert!(
        (relay_ms - caller_ms).abs() <= 80.0,
        "turn latency: relay {relay_ms:.1} ms, caller {caller_ms:.1} ms"
    );
    // The other latencies were measured too.
    for name in [
        "forward_caller_to_agent",
        "forward_agent_to_caller",
        "playout_lag",
        "inbound_jitter",
    ] {
        assert!(
            s["latency"][name]["count"].as_u64().unwrap() > 0,
            "{name}: {}",
            s["latency"][name]
        );
    }
    // Live list is empty again.
    let (_, body) = get(relay.addr, "/calls", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 0);
}
