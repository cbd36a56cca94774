//! Faults on either leg (issue 8), over loopback with the real relay: an agent that stops
//! reading, a caller that stops reading, an agent that closes mid-sentence or resets the
//! connection, an agent host that refuses or never answers the connect, a signed-URL request
//! that hangs. In each: the call ends with a precise outcome (or the other leg keeps
//! working), queues stay within their caps (drops counted), counters say what happened, and a
//! healthy call running beside it (the echo agent, chosen by its `agent` parameter) is
//! byte-exact.

mod common;

use common::fault_agent::{self, Fault};
use common::raw::{self, RawWs};
use common::*;
use loadtest::fixtures;
use loadtest::twilio_sim::{run_call, CallReport, CallScript};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn fault_args(api_base: &str) -> media_relay::config::ServeArgs {
    let mut a = elevenlabs_args(api_base, "fault_agent", None);
    a.call.write_stall_timeout_ms = 1000;
    a.call.agent_connect_timeout_secs = 1;
    a
}

/// A healthy call on the echo agent beside the faulty one.
fn healthy_call(relay: &TestRelay) -> tokio::task::JoinHandle<anyhow::Result<CallReport>> {
    let caller = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 100].to_vec());
    let mut script = CallScript::new(
        relay.media_url(),
        start_params(900, &[("agent", "echo")]),
        caller,
    );
    script.linger = Duration::from_millis(1500);
    tokio::spawn(run_call(script))
}

async fn assert_healthy(h: tokio::task::JoinHandle<anyhow::Result<CallReport>>) {
    let report = h.await.unwrap().unwrap();
    let caller = fixtures::caller_utterance().unwrap()[..160 * 100].to_vec();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert!(
        report.received_audio == caller,
        "the healthy call was disturbed"
    );
}

async fn faulty_call(relay: &TestRelay, n: u64) -> RawWs {
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    let s = loadtest::twilio_sim::StartParams::for_call(n);
    ws.send(&raw::connected_and_start(&s.call_sid, &s.stream_sid))
        .await;
    ws
}

fn media(byte: u8) -> Vec<u8> {
    media_sized(byte, 160)
}

fn media_sized(byte: u8, len: usize) -> Vec<u8> {
    let b64 = base64_simd::STANDARD.encode_to_string(vec![byte; len]);
    raw::text(&format!(
        r#"{{"event":"media","media":{{"payload":"{b64}"}}}}"#
    ))
}

async fn outcome(relay: &TestRelay, outcome: &str) -> String {
    let series = format!("relay_calls_total{{outcome=\"{outcome}\"}}");
    let m = wait_metric(relay.addr, &series, 1.0).await;
    assert_eq!(metric(&m, &series), 1.0, "{series}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_stops_reading_ends_the_call_as_agent_stalled() {
    let agent = fault_agent::start(Fault::StopReading).await;
    let relay = start_relay(fault_args(&agent.api_base())).await;
    let healthy = healthy_call(&relay);
    let mut ws = faulty_call(&relay, 1).await;
    // 30 KB caller frames, far faster than real time: loopback send buffers grow to a few
    // MiB, so only a flood fills them behind an agent that stopped reading.
    let mut got_media = 0;
    let mut close = None;
    for i in 0..5000u32 {
        ws.send(&media_sized((i % 200) as u8, 30_000)).await;
        if i % 50 == 0 {
            // Agent audio keeps reaching the caller while the agent leg is stalled.
            while let Some(f) = ws.next_frame(Duration::from_millis(1)).await {
                if f.opcode == 8 {
                    close = f.close_code();
                    break;
                }
                got_media += 1;
            }
            if close.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_micros(400)).await;
    }
    let close = match close {
        Some(c) => Some(c),
        None => ws.until_close(T).await.and_then(|f| f.close_code()),
    };
    assert_eq!(close, Some(1011));
    assert!(
        got_media >= 5,
        "agent audio reached the caller: {got_media}"
    );
    let m = outcome(&relay, "agent_stalled").await;
    assert!(
        metric(
            &m,
            "relay_frames_dropped_total{direction=\"twilio_to_agent\",reason=\"outbox_full\"}"
        ) >= 1.0,
        "the agent outbox stayed within its cap by dropping the oldest caller audio"
    );
    assert_healthy(healthy).await;
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 0.0).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_that_stops_reading_ends_the_call_as_twilio_stalled() {
    // The agent floods audio as fast as the relay takes it (more than loopback socket
    // buffers hold).
    let agent = fault_agent::start(Fault::Flood).await;
    let relay = start_relay(fault_args(&agent.api_base())).await;
    let healthy = healthy_call(&relay);
    let mut ws = RawWs::connect_small_window(relay.addr, "/media").await;
    let s = loadtest::twilio_sim::StartParams::for_call(2);
    ws.send(&raw::connected_and_start(&s.call_sid, &s.stream_sid))
        .await;
    // Keep sending real-time caller audio (the relay reads us fine) but never read, until
    // the relay stops taking it: it closed the connection, or it stopped reading us while it
    // ends the call (its close handshake waits for a reply this caller never reads), or the
    // outcome is already counted.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncWriteExt::write_all(&mut ws.stream, &media(1)),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let m = metrics(relay.addr).await;
        if metric(&m, "relay_calls_total{outcome=\"caller_stalled\"}") >= 1.0 {
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the relay took the stalled caller's audio for 30 s"
    );
    // The call ends as caller_stalled (counted once its close is done).
    let m = outcome(&relay, "caller_stalled").await;
    assert!(
        metric(
            &m,
            "relay_frames_dropped_total{direction=\"agent_to_twilio\",reason=\"outbox_full\"}"
        ) >= 1.0,
        "the Twilio outbox stayed within its cap by dropping the oldest agent audio"
    );
    assert_healthy(healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_closing_mid_sentence_ends_the_call_as_agent_closed() {
    let agent = fault_agent::start(Fault::CloseMidSentence {
        chunks: 10,
        code: 1011,
    })
    .await;
    let relay = start_relay(fault_args(&agent.api_base())).await;
    let healthy = healthy_call(&relay);
    let mut ws = faulty_call(&relay, 3).await;
    let mut audio = 0usize;
    let close = loop {
        match ws.next_frame(T).await {
            Some(f) if f.opcode == 8 => break f.close_code(),
            Some(f) => {
                let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
                if v["event"] == "media" {
                    let mut a = Vec::new();
                    media_relay::wire::b64::decode(v["media"]["payload"].as_str().unwrap(), &mut a)
                        .unwrap();
                    audio += a.len();
                }
            }
            None => break None,
        }
    };
    assert_eq!(audio, 1600, "the half-sentence that arrived was relayed");
    assert_eq!(
        close,
        Some(1000),
        "Twilio goes on with the TwiML after </Connect>"
    );
    outcome(&relay, "agent_closed").await;
    assert_healthy(healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reset_ends_the_call_as_agent_error() {
    let agent = fault_agent::start(Fault::Reset).await;
    let relay = start_relay(fault_args(&agent.api_base())).await;
    let healthy = healthy_call(&relay);
    let mut ws = faulty_call(&relay, 4).await;
    let close = ws.until_close(T).await.and_then(|f| f.close_code());
    assert_eq!(close, Some(1011));
    let m = outcome(&relay, "agent_error").await;
    assert_eq!(
        metric(&m, "relay_errors_total{leg=\"agent\",kind=\"io\"}"),
        1.0
    );
    assert_healthy(healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_hanging_and_silent_agent_hosts_fail_the_connect_precisely() {
    // Connection refused: a port with nothing listening.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let never = fault_agent::start(Fault::NeverUpgrade).await;
    let hang = fault_agent::start(Fault::HangSignedUrl).await;
    for (api_base, key, kind) in [
        (format!("http://127.0.0.1:{closed_port}"), None, "connect"),
        (never.api_base(), None, "ready_timeout"),
        (hang.api_base(), Some("xi-key"), "ready_timeout"),
    ] {
        let mut a = fault_args(&api_base);
        a.agents.elevenlabs.elevenlabs_api_key = key.map(media_relay::auth::Secret::new);
        let relay = start_relay(a).await;
        let healthy = healthy_call(&relay);
        let started = std::time::Instant::now();
        let mut ws = faulty_call(&relay, 5).await;
        // Caller audio while connecting is held, not lost, not unbounded.
        for i in 0..20 {
            ws.send(&media(i)).await;
        }
        let close = ws.until_close(T).await.and_then(|f| f.close_code());
        assert_eq!(close, Some(1011), "{kind}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{kind}: {:?}",
            started.elapsed()
        );
        let m = outcome(&relay, "agent_connect_failed").await;
        assert_eq!(
            metric(
                &m,
                &format!("relay_errors_total{{leg=\"agent\",kind=\"{kind}\"}}")
            ),
            1.0,
            "{kind}"
        );
        assert_eq!(
            metric(
                &m,
                "relay_agent_connects_total{agent=\"elevenlabs\",result=\"failed\"}"
            ),
            if kind == "connect" { 1.0 } else { 0.0 },
            "{kind}"
        );
        assert_healthy(healthy).await;
    }
    assert!(never.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(hang.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}
