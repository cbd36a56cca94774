//! Post-call webhooks over loopback with the real relay: a call's transcript reaches a local
//! receiver signed `t=…,v0=…`, in the ElevenLabs post-call envelope, after the receiver
//! failed twice (retries with backoff), and every outcome is counted.

mod common;

use bytes::Bytes;
use common::*;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use loadtest::agent_sim::{self, MockAgentConfig};
use loadtest::twilio_sim::TwilioClient;
use media_relay::auth::Secret;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "post-call-secret";

/// (arrival, signature header, body) of each request; the first `fail` get 500.
type Seen = Arc<Mutex<Vec<(Instant, Option<String>, Vec<u8>)>>>;

async fn receiver(fail: usize) -> (std::net::SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let sig = req
                            .headers()
                            .get("relay-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        let n = {
                            let mut g = s.lock().unwrap();
                            g.push((Instant::now(), sig, body));
                            g.len()
                        };
                        let status = if n <= fail {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn verify(sig: &str, body: &[u8]) -> bool {
    let Some((t, v0)) = sig
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v0=")?)))
    else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v0
}

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
