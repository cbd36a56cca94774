//! Shared helpers for integration tests: an in-process relay on 127.0.0.1:0, plain HTTP
//! requests, and a small Prometheus text matcher. All traffic stays on loopback.

#![allow(dead_code)]

pub mod fault_agent;
pub mod post_call_receiver;
pub mod raw;
pub mod webhook;

use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound};
use media_relay::config::ServeArgs;
use media_relay::Relay;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A relay running in this process.
pub struct TestRelay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

impl TestRelay {
    pub fn media_url(&self) -> String {
        format!("ws://{}/media", self.addr)
    }

    /// Triggers shutdown (drain) as SIGTERM would.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Default args with the listener on an ephemeral loopback port.
pub fn args() -> ServeArgs {
    let mut a = ServeArgs::defaults();
    a.http.listen = "127.0.0.1:0".parse().unwrap();
    // Most tests check what an agent failure ends the call as: continuity off (0
    // recoveries), as `--max-agent-recoveries 0`; tests/continuity.rs turns it on.
    a.call.max_agent_recoveries = 0;
    a
}

/// Args pointing the relay at a mock ElevenLabs server.
pub fn elevenlabs_args(api_base: &str, agent_id: &str, api_key: Option<&str>) -> ServeArgs {
    let mut a = args();
    a.call.agent = Some(media_relay::agent::AgentKind::Elevenlabs);
    a.agents.elevenlabs.elevenlabs_agent_id = Some(agent_id.into());
    a.agents.elevenlabs.elevenlabs_api_base = api_base.into();
    a.agents.elevenlabs.elevenlabs_api_key = api_key.map(media_relay::auth::Secret::new);
    // These tests are about the media path; signatures have their own tests.
    a.carriers.twilio.insecure_skip_twilio_signature = true;
    a
}

pub async fn start_relay(args: ServeArgs) -> TestRelay {
    let settings = args.settings().expect("valid test configuration");
    let relay = Relay::bind(settings).await.expect("relay binds");
    let addr = relay.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(relay.run(async move {
        let _ = rx.await;
    }));
    TestRelay {
        addr,
        stop: Some(tx),
        done,
    }
}

/// The `media-relay` binary with the agent, listen and thread-layout variables of this
/// process's environment removed (the flags each test passes decide).
pub fn relay_binary() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_media-relay"));
    for var in [
        "RELAY_AGENT",
        "ELEVENLABS_AGENT_ID",
        "ELEVENLABS_API_KEY",
        "RELAY_LISTEN",
        "RELAY_RUNTIME",
        "RELAY_WORKER_THREADS",
    ] {
        c.env_remove(var);
    }
    c
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &[], body).await
}

/// [`http`] with extra request headers (`name`, `value`).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

/// Value of the sample `series` (name plus labels exactly as rendered, e.g.
/// `relay_errors_total{leg="twilio",kind="binary_frame"}`) in Prometheus text; 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

pub async fn metrics(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    body
}

/// Waits until `series` reaches at least `want` (metrics fold at call end, asynchronously).
///
/// Returns a scrape taken *after* the one that showed `series` at `want`: a scrape is not a
/// snapshot (the exporter reads one counter after another while calls keep counting), so the
/// scrape that saw a call's `relay_calls_total` may have read that call's other counters
/// before its end-of-call fold. Everything counted before `series` is in the next scrape.
pub async fn wait_metric(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(addr).await;
        if metric(&m, series) >= want {
            return metrics(addr).await;
        }
        if tokio::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `series` equals `want` (e.g. a gauge settling after a call ends).
pub async fn wait_metric_eq(addr: SocketAddr, series: &str, want: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(&metrics(addr).await, series);
        if v == want || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count` frames of 160 bytes: fixture audio with the first bytes tagged (call, sequence)
/// so any cross-talk or reordering shows.
pub fn tagged_audio(call: u8, count: usize, fixture: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 160);
    for seq in 0..count {
        let start = (seq * 160) % fixture.len().saturating_sub(160).max(1);
        let mut frame = fixture[start..start + 160].to_vec();
        frame[0] = call;
        frame[1] = (seq & 0xff) as u8;
        frame[2] = (seq >> 8) as u8;
        out.extend_from_slice(&frame);
    }
    out
}

/// Status of `GET path`, or `None` if nothing answers.
pub async fn try_http(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Twilio `start` parameters for simulated call `n` with these custom parameters.
pub fn start_params(n: u64, params: &[(&str, &str)]) -> StartParams {
    let mut s = StartParams::for_call(n);
    s.custom_parameters = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s
}

/// Reads from the client until the relay closes; returns the close code.
pub async fn wait_twilio_close(client: &mut TwilioClient) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("relay closes the Twilio socket in time");
        match next {
            Ok(Some(TwilioInbound::Close { code, .. })) => return code,
            Ok(None) => return None,
            Ok(Some(_)) => continue,
            Err(e) => panic!("Twilio-side protocol error: {e:#}"),
        }
    }
}

/// Reads until the next `media` message and returns its audio; panics if the relay closes
/// the stream or nothing arrives within 10 s.
pub async fn next_media(client: &mut TwilioClient) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .expect("media in time")
            .expect("valid Twilio message")
        {
            Some(TwilioInbound::Media { payload, .. }) => return payload,
            Some(TwilioInbound::Close { code, reason }) => {
                panic!("stream closed ({code:?} {reason}) instead of media")
            }
            Some(_) => continue,
            None => panic!("stream ended instead of media"),
        }
    }
}
