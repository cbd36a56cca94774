//! Agent-failure continuity over loopback with the real relay: an agent socket that drops
//! mid-call costs the caller a short hold sound, not the call; the replacement session is
//! re-seeded without a second greeting; recovery that cannot succeed ends in the apology.

mod common;

use common::*;
use loadtest::agent_sim::{self, MockAgentConfig};
use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// What the caller receives until `done` says so (or `T` passes): media bytes, events.
async fn until(
    client: &mut TwilioClient,
    mut done: impl FnMut(&[u8], &[String]) -> bool,
) -> (Vec<u8>, Vec<String>) {
    let (mut audio, mut events) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + T;
    while !done(&audio, &events) {
        let msg = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("the caller waited too long")
            .expect("caller socket error");
        match msg {
            Some(TwilioInbound::Media { payload, .. }) => audio.extend(payload),
            Some(TwilioInbound::Clear { .. }) => events.push(format!("clear@{}", audio.len())),
            Some(TwilioInbound::Close { code, .. }) => {
                events.push(format!("close:{code:?}"));
                break;
            }
            Some(_) => {}
            None => {
                events.push("eof".into());
                break;
            }
        }
    }
    (audio, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_socket_that_drops_costs_the_caller_hold_audio_and_a_reseeded_session_takes_over()
{
    let mock = agent_sim::start(MockAgentConfig::new("agent_cont"))
        .await
        .unwrap();
    let mut a = elevenlabs_args(&mock.api_base(), "agent_cont", None);
    a.call.max_agent_recoveries = 3;
    let relay = start_relay(a).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client
        .send_start(&start_params(5, &[("first_message", "Hello from Acme.")]))
        .await
        .unwrap();
    let conv = mock.next_conversation(T).await.unwrap();
    let init = conv.init_data(T).await.unwrap();
    assert_eq!(
        init["conversation_config_override"]["agent"]["first_message"],
        "Hello from Acme."
    );
    // A turn each, then 500 ms of agent audio the caller hears.
    conv.send_text(
        r#"{"type":"user_transcript","user_transcription_event":{"user_transcript":"Where is my order?"}}"#
            .into(),
    )
    .await;
    conv.send_text(
        r#"{"type":"agent_response","agent_response_event":{"agent_response":"Let me check."}}"#
            .into(),
    )
    .await;
    conv.send_audio(&[0x33; 4000], 1).await;
    let (audio, _) = until(&mut client, |a, _| a.len() >= 4000).await;
    assert!(audio.iter().all(|&b| b == 0x33));

    // The agent's socket drops without an end signal.
    let fault = Instant::now();
    conv.close(1011, "internal error").await;
    let (hold, events) = until(&mut client, |a, _| a.len() >= 800).await;
    let hold_after = fault.elapsed();
    assert!(
        hold_after < Duration::from_millis(200) + Duration::from_millis(300),
        "hold audio {hold_after:?} after the fault"
    );
    assert!(
        events.iter().all(|e| !e.starts_with("close")),
        "the caller's stream stays open: {events:?}"
    );
    assert!(
        hold.iter().any(|&b| b != 0x33),
        "hold audio, not the agent's"
    );

    // A new conversation: the call's settings, no second greeting, the conversation so far.
    let conv2 = mock.next_conversation(T).await.unwrap();
    let init2 = conv2.init_data(T).await.unwrap();
    assert_eq!(
        init2["conversation_config_override"]["agent"]["first_message"],
        ""
    );
    let ctx = conv2
        .wait_messages_of_type("contextual_update", 1, T)
        .await
        .unwrap();
    let text = ctx[0].message["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        text.contains("Caller: Where is my order?") && text.contains("Agent: Let me check."),
        "{text}"
    );
    // The agent is back: hold stops with a clear and the agent is heard again.
    conv2.send_audio(&[0x44; 1600], 1).await;
    let (audio, events) = until(&mut client, |a, _| a.ends_with(&[0x44; 1600])).await;
    assert!(
        events.iter().any(|e| e.starts_with("clear")),
        "hold audio stops with a clear: {events:?}"
    );
    assert!(audio.ends_with(&[0x44; 1600]));
    client.send_stop().await.unwrap();
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"caller_hangup\"}",
            1.0
        )
        .await,
        1.0
    );
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_agent_recoveries_total{agent=\"elevenlabs\",result=\"recovered\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_agent_recovery_gap_seconds_count{agent=\"elevenlabs\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_be_reached_ends_in_the_apology_and_a_clean_hang_up() {
    // Nothing listens on port 9: every connect is refused.
    let mut a = elevenlabs_args("http://127.0.0.1:9", "agent_gone", None);
    a.call.max_agent_recoveries = 1;
    a.call.agent_recovery_deadline_secs = 1;
    let relay = start_relay(a).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(6)).await.unwrap();
    let started = Instant::now();
    let (audio, events) = until(&mut client, |_, e| e.iter().any(|e| e.starts_with("close"))).await;
    // Hold audio, a clear, the whole 3.84 s apology, then the stream closes (the TwiML's
    // <Hangup/> ends the call).
    let cleared_at: usize = events
        .iter()
        .find_map(|e| e.strip_prefix("clear@"))
        .and_then(|n| n.parse().ok())
        .expect("hold audio stops with a clear");
    assert!(cleared_at > 0, "hold audio played first");
    assert!(
        audio.len() - cleared_at >= 30_728,
        "the whole apology was sent: {} bytes",
        audio.len() - cleared_at
    );
    assert!(events.last().unwrap().starts_with("close"), "{events:?}");
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_agent_recoveries_total{agent=\"elevenlabs\",result=\"exhausted\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"agent_connect_failed\"}",
            1.0
        )
        .await,
        1.0
    );
}
