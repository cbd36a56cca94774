//! Outbound calls that reached voicemail, over loopback with the real relay: the stream
//! carries the answering-machine verdict (`relay_answered_by`, set by the markup fetch, see
//! tests/control.rs), the message is left — the relay's `--voicemail-audio-file`, or the
//! agent's first reply with `relay_voicemail_message` as its greeting — and the call hangs up
//! once the caller side played it to the end (outcome `voicemail_left`). A person who
//! answered gets the call as usual.

#[path = "common/call_peers.rs"]
mod call_peers;
mod common;

use call_peers::PlayingCaller;
use common::*;
use loadtest::agent_sim::{self, MockAgentConfig};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_plays_the_voicemail_file_and_hangs_up_once_it_was_heard() {
    let message: Vec<u8> = (0..12_000u32).map(|i| (i % 120) as u8).collect(); // 1.5 s
    let file = std::env::temp_dir().join(format!("media-relay-vm-{}.ulaw", std::process::id()));
    std::fs::write(&file, &message).unwrap();
    let mut a = args();
    a.call.voicemail_audio_file = Some(file.clone());
    let relay = start_relay(a).await;
    let caller = PlayingCaller::connect(
        &relay.media_url(),
        &[],
        &start_params(31, &[("relay_answered_by", "machine_end_beep")]),
        true,
    )
    .await;
    let (_, closed_at) = caller.wait_closed(T).await;
    let (heard, play_end) = caller.heard(|h| (h.audio.clone(), h.play_end));
    assert_eq!(
        heard, message,
        "the whole message, nothing else (no echo agent)"
    );
    assert!(
        play_end.is_some_and(|e| closed_at >= e),
        "closed only after the message played"
    );
    wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"voicemail_left\"}",
        1.0,
    )
    .await;
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_call_actions_total{action=\"end_call\",source=\"amd\",result=\"accepted\"}"
        ),
        1.0
    );
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_leaves_the_voicemail_message_and_the_call_ends_after_it() {
    let mock = agent_sim::start(MockAgentConfig::new("agent_vm"))
        .await
        .unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_vm", None)).await;
    let caller = PlayingCaller::connect(
        &relay.media_url(),
        &[],
        &start_params(
            32,
            &[
                ("relay_answered_by", "machine_end_silence"),
                (
                    "relay_voicemail_message",
                    "Hi, this is Acme. Please call us back.",
                ),
            ],
        ),
        true,
    )
    .await;
    let conv = mock.next_conversation(T).await.unwrap();
    let init = conv.init_data(T).await.unwrap();
    assert_eq!(
        init["conversation_config_override"]["agent"]["first_message"],
        "Hi, this is Acme. Please call us back."
    );
    assert_eq!(
        init["dynamic_variables"]["answered_by"],
        "machine_end_silence"
    );
    // The agent speaks the message (2 s), then nothing.
    conv.send_audio(&[0x66; 16_000], 1).await;
    let (_, closed_at) = caller.wait_closed(T).await;
    let (heard, play_end) = caller.heard(|h| (h.audio.clone(), h.play_end));
    assert_eq!(heard, vec![0x66; 16_000]);
    assert!(
        play_end.is_some_and(|e| closed_at >= e),
        "closed after it played"
    );
    wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"voicemail_left\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_answered_gets_the_call_as_usual() {
    let mut a = args();
    a.agents.echo.echo_delay_ms = 20;
    let relay = start_relay(a).await;
    let caller = PlayingCaller::connect(
        &relay.media_url(),
        &[],
        &start_params(33, &[("relay_answered_by", "human")]),
        true,
    )
    .await;
    // The echo agent answers the caller's frames; the call stays up.
    caller
        .wait("the echo", T, |h| (h.audio.len() >= 3200).then_some(()))
        .await;
    assert!(caller.heard(|h| h.closed.is_none()));
    caller.stop().await;
    wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
}
