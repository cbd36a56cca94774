//! Limits before the upgrade (issue 8): header-read timeout, body-read timeout, the cap on
//! connections that have not upgraded, and the request-head size cap. Slow and greedy
//! clients over real loopback sockets; calls in progress are unaffected.

mod common;

use common::raw::RawWs;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limited_args() -> media_relay::config::ServeArgs {
    let mut a = args();
    a.http.header_read_timeout_ms = 500;
    a.http.body_read_timeout_ms = 500;
    a.http.max_pending_connections = 4;
    a
}

/// Reads until EOF (or `timeout`); returns what arrived and whether EOF came in time.
async fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), r.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_line_is_cut_off_after_the_header_timeout() {
    let relay = start_relay(limited_args()).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /hea").await.unwrap();
    let t = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "connection still open after 5 s");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_http_connections_rejected_total{reason=\"header_timeout\"}"
        ),
        1.0
    );
    // A normal request still works.
    assert_eq!(try_http(relay.addr, "/healthz").await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_webhook_body_gets_408() {
    let relay = start_relay(limited_args()).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(
        b"POST /twiml HTTP/1.1\r\nHost: relay.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nCallSid=CA",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(t.elapsed() >= Duration::from_millis(400));
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_http_connections_rejected_total{reason=\"body_timeout\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_pending_cap_are_closed_and_calls_do_not_count() {
    // Idle connections must outlive the test's retries: a long header timeout here.
    let mut a = limited_args();
    a.http.header_read_timeout_ms = 30_000;
    let relay = start_relay(a).await;
    // Two upgraded calls do not count against the cap of 4.
    let mut calls = Vec::new();
    for i in 0..2 {
        let mut ws = RawWs::connect(relay.addr, "/media").await;
        ws.send(&common::raw::connected_and_start(
            &format!("CA0000000000000000000000000000000{i}"),
            &format!("MZ0000000000000000000000000000000{i}"),
        ))
        .await;
        calls.push(ws);
    }
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 2.0).await,
        2.0
    );
    // Four idle connections fill the cap (each sends part of a request, so hyper waits).
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"GET /").await.unwrap();
        idle.push(s);
    }
    // The fifth is closed at once, without an answer (once the relay has accepted all four:
    // until then a request may still be served, which leaves the count as it was).
    let mut refused = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (answer, closed) = read_to_close(&mut s, Duration::from_secs(2)).await;
        if answer.is_empty() {
            refused = Some(closed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused,
        Some(true),
        "the fifth connection was never refused"
    );
    // Once the idle connections go away, requests are served again.
    drop(idle);
    let mut ok = false;
    for _ in 0..50 {
        if try_http(relay.addr, "/healthz").await == Some(200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
    let m = metrics(relay.addr).await;
    assert!(
        metric(
            &m,
            "relay_http_connections_rejected_total{reason=\"limit\"}"
        ) >= 1.0
    );
    // The calls were never disturbed.
    for ws in &mut calls {
        ws.send(&common::raw::text(r#"{"event":"stop"}"#)).await;
        assert_eq!(
            ws.until_close(Duration::from_secs(5))
                .await
                .and_then(|f| f.close_code()),
            Some(1000)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let mut a = limited_args();
    a.http.max_header_bytes = 8192;
    let relay = start_relay(a).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let big = "x".repeat(20_000);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(try_http(relay.addr, "/healthz").await, Some(200));
}

/// The listening socket's backlog as the kernel reports it: `ss -ltn` shows a listener's
/// backlog in its Send-Q column (iproute2; `apt-get install iproute2` where missing).
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("`ss` (Debian package iproute2) is needed by this test");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener: {text:?}"));
    // State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_backlog_is_the_configured_one_capped_by_somaxconn() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The default asks for 1024 (tokio alone would ask for 128).
    let relay = start_relay(args()).await;
    assert_eq!(listen_backlog(relay.addr.port()), 1024.min(somaxconn));
    let mut a = args();
    a.http.listen_backlog = 300;
    let relay = start_relay(a).await;
    assert_eq!(listen_backlog(relay.addr.port()), 300.min(somaxconn));
    assert_eq!(try_http(relay.addr, "/healthz").await, Some(200));
}
