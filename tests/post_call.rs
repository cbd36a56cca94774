//! Post-call webhooks over loopback with the real relay: a call's transcript reaches a local
//! receiver signed `t=…,v0=…`, in the ElevenLabs post-call envelope, after the receiver
//! failed twice (retries with backoff), and every outcome is counted.

mod common;

use common::post_call_receiver::{receiver, verify, SECRET};
use common::*;
use loadtest::agent_sim::{self, MockAgentConfig};
use loadtest::twilio_sim::TwilioClient;
use media_relay::auth::Secret;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_transcript_reaches_the_receiver_signed_after_it_failed_twice() {
    let (addr, seen) = receiver(2).await;
    let mock = agent_sim::start(MockAgentConfig::new("agent_pc"))
        .await
        .unwrap();
    let mut a = elevenlabs_args(&mock.api_base(), "agent_pc", None);
    a.call.post_call_webhook_url = Some(format!("http://{addr}/post-call"));
    a.call.post_call_webhook_secret = Some(Secret::new(SECRET));
    let relay = start_relay(a).await;
    let client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client
        .send_start(&start_params(
            11,
            &[("From", "+15550001111"), ("To", "+15550002222")],
        ))
        .await
        .unwrap();
    let conv = mock
        .next_conversation(Duration::from_secs(10))
        .await
        .unwrap();
    conv.init_data(Duration::from_secs(10)).await.unwrap();
    conv.send_text(
        r#"{"type":"user_transcript","user_transcription_event":{"user_transcript":"Is my order late?"}}"#
            .into(),
    )
    .await;
    conv.send_text(
        r#"{"type":"agent_response","agent_response_event":{"agent_response":"No, it arrives today."}}"#
            .into(),
    )
    .await;
    // Both transcripts reached the relay before the call ends (a frame each way proves it).
    conv.send_audio(&[0x21; 160], 1).await;
    let mut c = client;
    assert_eq!(next_media(&mut c).await, vec![0x21; 160]);
    c.send_stop().await.unwrap();
    let delivered = wait_metric_eq(
        relay.addr,
        "relay_post_call_webhooks_total{type=\"post_call_transcription\",result=\"delivered\"}",
        1.0,
    )
    .await;
    assert_eq!(delivered, 1.0);
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_post_call_webhooks_total{type=\"post_call_transcription\",result=\"retried\"}"
        ),
        2.0
    );
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two failures, then the delivery");
    let gap = got[2].0.duration_since(got[1].0);
    assert!(
        gap >= Duration::from_millis(1500),
        "backoff doubles: {gap:?}"
    );
    for (_, sig, body) in &got {
        assert!(
            verify(sig.as_deref().unwrap_or(""), body),
            "each attempt is signed t=…,v0=HMAC(t.body)"
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&got[2].2).unwrap();
    assert_eq!(v["type"], "post_call_transcription");
    let t = &v["data"]["transcript"];
    assert_eq!(t[0]["role"], "user");
    assert_eq!(t[0]["message"], "Is my order late?");
    assert_eq!(t[1]["role"], "agent");
    assert_eq!(t[1]["message"], "No, it arrives today.");
    let md = &v["data"]["metadata"];
    assert_eq!(md["phone_call"]["from_number"], "+15550001111");
    assert_eq!(md["phone_call"]["to_number"], "+15550002222");
    assert_eq!(md["termination_reason"], "caller_hangup");
    assert_eq!(v["data"]["relay"]["agent"], "elevenlabs");
}
