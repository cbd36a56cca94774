//! The scripted agent over loopback with the real relay: its default script greets with the
//! committed clip, byte-exact and in real-time frames, and a script's `end_call` step ends
//! the call once the clip was heard.

mod common;

use common::*;
use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound};
use std::time::{Duration, Instant};

const CLIP: &[u8] = include_bytes!("../src/agent/assets/scripted_hello.wav");

fn clip_audio() -> Vec<u8> {
    media_relay::audio::mulaw_from_file_bytes(CLIP).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_agent_greets_with_its_clip_then_ends_the_call_after_it_was_heard() {
    let dir = std::env::temp_dir().join(format!("scripted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.json");
    std::fs::write(
        &script,
        r#"{"steps":[{"on":"start","say":"builtin","end_call":true}]}"#,
    )
    .unwrap();
    let mut a = args();
    a.call.agent = Some(media_relay::agent::AgentKind::Scripted);
    a.agents.scripted.scripted_agent_script = Some(script);
    let relay = start_relay(a).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(8)).await.unwrap();
    let started = Instant::now();
    let mut audio = Vec::new();
    let mut played = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(15), client.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Some(TwilioInbound::Media { payload, .. }) => audio.extend(payload),
            // Echo each mark at once: this caller "plays" instantly.
            Some(TwilioInbound::Mark { name, .. }) => {
                client.send_mark(&name).await.unwrap();
                played.push(name);
            }
            Some(TwilioInbound::Close { code, .. }) => break code,
            Some(_) => {}
            None => break None,
        }
    };
    let want = clip_audio();
    assert_eq!(audio.len(), want.len());
    assert!(audio == want, "the clip arrives byte-exact");
    assert!(
        started.elapsed() >= Duration::from_millis(want.len() as u64 / 8 - 200),
        "played in real time"
    );
    assert_eq!(close, Some(1000));
    assert_eq!(
        played.last().map(String::as_str),
        Some(format!("ms-{}", want.len() / 8).as_str())
    );
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"agent_end_call\"}",
            1.0
        )
        .await,
        1.0
    );
}
