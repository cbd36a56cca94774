//! Twilio signature enforcement on the media upgrade and the TwiML webhook (Twilio webhook security, https://www.twilio.com/docs/usage/security).

mod common;

use common::*;
use loadtest::twilio_sim::{StartParams, TwilioClient};
use media_relay::auth::Secret;
use media_relay::carrier::twilio::signature::compute_signature;

/// Twilio webhook security example: token `12345`, `wss://relay.example.com/media`, no params.
const MEDIA_SIGNATURE: &str = "MVVXQK8WMm1ywK7bu7blrI+Pdd8=";

fn signed_args() -> media_relay::config::ServeArgs {
    let mut a = args();
    a.carriers.twilio.twilio_auth_token = Some(Secret::new("12345"));
    a.http.public_host = Some("relay.example.com".into());
    a
}

/// Asks the relay's signed `/twiml` for call `call_sid` and returns its `relay_token`.
async fn relay_token_for(addr: std::net::SocketAddr, call_sid: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!("CallSid={call_sid}&From=%2B15551230000");
    let sig = compute_signature(
        b"12345",
        "https://relay.example.com/twiml",
        &[("CallSid", call_sid), ("From", "+15551230000")],
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /twiml HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\nX-Twilio-Signature: {sig}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let after = out
        .split("<Parameter name=\"relay_token\" value=\"")
        .nth(1)
        .expect("TwiML carries relay_token");
    after.split('"').next().unwrap().to_owned()
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
        "relay_calls_total{outcome=\"caller_hangup\"}",
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
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(metric(&m, "relay_streams_unauthenticated_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_tokens_bind_streams_to_their_call() {
    let mut a = signed_args();
    a.agents.echo.echo_delay_ms = 20;
    let relay = start_relay(a).await;
    let url = relay.media_url();
    let call_a = "CA00000000000000000000000000000001";
    let call_b = "CA00000000000000000000000000000002";
    let token_a = relay_token_for(relay.addr, call_a).await;
    let token_b = relay_token_for(relay.addr, call_b).await;
    assert_ne!(token_a, token_b);

    // Wrong token, another call's token, no token: closed with 1008 before any audio flows.
    for params in [
        vec![("relay_token", "forged")],
        vec![("relay_token", token_b.as_str())],
        vec![],
    ] {
        let mut c = TwilioClient::connect(&url, &sig_header(MEDIA_SIGNATURE))
            .await
            .unwrap();
        c.send_connected().await.unwrap();
        c.send_start(&start_params(1, &params)).await.unwrap(); // call SID = call_a
        let _ = c.send_media(&[0x42; 160]).await;
        assert_eq!(wait_twilio_close(&mut c).await, Some(1008), "{params:?}");
    }

    // The right token: audio flows (the echo agent plays it back).
    let mut good = TwilioClient::connect(&url, &sig_header(MEDIA_SIGNATURE))
        .await
        .unwrap();
    good.send_connected().await.unwrap();
    good.send_start(&start_params(1, &[("relay_token", &token_a)]))
        .await
        .unwrap();
    good.send_media(&[0x42; 160]).await.unwrap();
    assert_eq!(next_media(&mut good).await, vec![0x42; 160]);

    // A second stream for the same call replaces the first (keep the newest).
    let mut second = TwilioClient::connect(&url, &sig_header(MEDIA_SIGNATURE))
        .await
        .unwrap();
    second.send_connected().await.unwrap();
    second
        .send_start(&start_params(1, &[("relay_token", &token_a)]))
        .await
        .unwrap();
    assert_eq!(wait_twilio_close(&mut good).await, Some(1000));
    second.send_media(&[0x43; 160]).await.unwrap();
    assert_eq!(next_media(&mut second).await, vec![0x43; 160]);
    second.send_stop().await.unwrap();

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"token_rejected\"}"),
        3.0
    );
    assert_eq!(metric(&m, "relay_calls_total{outcome=\"replaced\"}"), 1.0);
    assert_eq!(metric(&m, "relay_duplicate_streams_total"), 1.0);
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"token_invalid\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"token_missing\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"valid\"}"),
        2.0
    );
}
