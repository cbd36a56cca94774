//! Twilio signature enforcement on the media upgrade and the TwiML webhook (protocols.md §1.6).

mod common;

use common::*;
use loadtest::twilio_sim::{StartParams, TwilioClient};
use media_relay::config::Secret;
use media_relay::twilio::signature::compute_signature;

/// protocols.md §1.6.4 example: token `12345`, `wss://relay.example.com/media`, no params.
const MEDIA_SIGNATURE: &str = "MVVXQK8WMm1ywK7bu7blrI+Pdd8=";

fn signed_args() -> media_relay::config::ServeArgs {
    let mut a = args();
    a.twilio_auth_token = Some(Secret::new("12345"));
    a.public_host = Some("relay.example.com".into());
    a
}

fn sig_header(v: &str) -> Vec<(String, String)> {
    vec![("X-Twilio-Signature".to_string(), v.to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_upgrade_requires_a_valid_signature() {
    let relay = start_relay(signed_args()).await;
    let url = relay.media_url();
    for bad in [
        vec![],
        sig_header("MVVXQK8WMm1ywK7bu7blrI+Pdd9="),
        sig_header("garbage"),
    ] {
        match TwilioClient::try_connect(&url, &bad).await.unwrap() {
            Err(status) => assert_eq!(status, 403),
            Ok(_) => panic!("unsigned or forged stream admitted: {bad:?}"),
        }
    }
    let client = TwilioClient::connect(&url, &sig_header(MEDIA_SIGNATURE))
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(1)).await.unwrap();
    client.send_stop().await.unwrap();
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"twilio_stop\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_upgrades_total{result=\"rejected_signature\"}"),
        3.0
    );
    assert_eq!(metric(&m, "relay_upgrades_total{result=\"accepted\"}"), 1.0);
    assert_eq!(metric(&m, "relay_streams_unauthenticated_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twiml_webhook_requires_a_valid_signature() {
    let relay = start_relay(signed_args()).await;
    let body = "CallSid=CA1&From=%2B15551230000&To=%2B15557654321";
    let good = compute_signature(
        b"12345",
        "https://relay.example.com/twiml",
        &[
            ("CallSid", "CA1"),
            ("From", "+15551230000"),
            ("To", "+15557654321"),
        ],
    );
    let post = |sig: String| {
        let addr = relay.addr;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "POST /twiml HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\nX-Twilio-Signature: {sig}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let ok = post(good.clone()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("wss://relay.example.com/media"));
    let forged = post("L/OH5YylLD5NRKLltdqwSvS0BnU=".into()).await;
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    // Tampered body with the original signature.
    let (status, _) = http(relay.addr, "POST", "/twiml", body).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_streams_are_admitted_and_counted() {
    let relay = start_relay(args()).await;
    let client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(2)).await.unwrap();
    client.send_stop().await.unwrap();
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"twilio_stop\"}",
        1.0,
    )
    .await;
    assert_eq!(metric(&m, "relay_streams_unauthenticated_total"), 1.0);
}
