//! Tests of the real `media-relay` binary: SIGTERM drain and configuration errors.

mod common;

use loadtest::twilio_sim::{StartParams, TwilioClient};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn relay_command() -> Command {
    let mut c = common::relay_binary();
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let out = relay_command()
        .args(["serve", "--agent", "elevenlabs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ELEVENLABS_AGENT_ID"), "{err}");

    let out = relay_command()
        .args(["serve", "--max-calls", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_then_exits() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = relay_command()
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--drain-timeout-secs",
            "20",
            "--echo-delay-ms",
            "20",
        ])
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while common::try_http(addr, "/healthz").await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://{addr}/media");
    let mut client = TwilioClient::connect(&url, &[]).await.unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(1)).await.unwrap();

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    while common::try_http(addr, "/readyz").await != Some(503) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never went 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match TwilioClient::try_connect(&url, &[]).await.unwrap() {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("new call admitted while draining"),
    }
    // The call in progress is still relayed: the echo agent plays a frame back.
    client.send_media(&[0x42; 160]).await.unwrap();
    let echoed = common::next_media(&mut client).await;
    assert_eq!(echoed, vec![0x42; 160]);
    // Ending the call lets the process exit on its own, long before the drain timeout.
    client.send_stop().await.unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(tokio::time::Instant::now() < deadline);
}

/// `--log-format json` writes one JSON object per line to stderr; the default text format
/// has no ANSI colour codes when stderr is not a terminal (here: a pipe).
#[test]
fn log_formats() {
    use std::io::{BufRead, BufReader};
    for (format, json) in [("json", true), ("text", false)] {
        let port = free_port();
        let mut child = relay_command()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                format,
            ])
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        while let Some(Ok(line)) = lines.next() {
            let done = line.contains("media-relay listening");
            seen.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            seen.iter().any(|l| l.contains("media-relay listening")),
            "{seen:?}"
        );
        for line in &seen {
            assert!(!line.contains('\u{1b}'), "ANSI escape in {line:?}");
            if json {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v.get("level").is_some() && v.get("fields").is_some(), "{v}");
            }
        }
    }
}

/// SIGTERM under load (issue 8): with calls shorter than the drain timeout, every call in
/// progress finishes on its own: 0 calls cut, 0 frames lost (each caller hears its whole
/// utterance echoed back byte-exact), and the process exits once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_cuts_no_call_and_loses_no_frame() {
    use loadtest::twilio_sim::{run_call, CallScript};
    use std::sync::Arc;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = relay_command()
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--drain-timeout-secs",
            "30",
            "--echo-delay-ms",
            "100",
        ])
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while common::try_http(addr, "/healthz").await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audio = Arc::new(loadtest::fixtures::caller_utterance().unwrap()[..160 * 150].to_vec());
    let url = format!("ws://{addr}/media");
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let mut s = CallScript::new(url.clone(), StartParams::for_call(100 + i), audio.clone());
            s.linger = Duration::from_millis(800);
            tokio::spawn(run_call(s))
        })
        .collect();
    // Mid-call (1 s into 3 s of audio), SIGTERM.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert!(r.protocol_errors.is_empty(), "{:?}", r.protocol_errors);
        assert!(r.received_audio == *audio, "a call lost frames or was cut");
        assert_eq!(r.close_code, Some(1000), "closed normally after stop");
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(tokio::time::Instant::now() < deadline);
}
