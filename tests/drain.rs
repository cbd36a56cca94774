//! The drain deadline (issues 8 and 11): calls still running when `--drain-timeout-secs`
//! passes hear the drain notice (an operator-provided μ-law file) and are then closed with
//! 1001, counted as outcome `shutdown` and in `relay_drain_notices_total`. (Without a notice
//! they are closed at once: the call machine's `drain_deadline_without_a_notice_ends_at_once`.)

mod common;

use common::*;
use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn notice_path() -> std::path::PathBuf {
    loadtest::fixtures::fixture_path("drain-notice-8k-mulaw.wav")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hear_the_drain_notice_then_the_call_closes_with_1001() {
    let notice = loadtest::fixtures::load_mulaw_wav(&notice_path()).unwrap();
    let mut a = args();
    a.http.drain_timeout_secs = 1;
    a.agents.echo.echo_delay_ms = 20;
    a.call.drain_notice_file = Some(notice_path());
    let mut relay = start_relay(a).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = TwilioClient::connect(&relay.media_url(), &[])
            .await
            .unwrap();
        c.send_connected().await.unwrap();
        c.send_start(&StartParams::for_call(60 + i)).await.unwrap();
        clients.push(c);
    }
    // Keep talking (the echo agent answers) while the relay drains.
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let senders: Vec<_> = clients
        .iter()
        .map(|c| {
            let s = c.sender().clone();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                loop {
                    if s.send_media(&[0x42; 160]).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = stop.recv() => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            })
        })
        .collect();
    // All three calls are up and the echo is answering before the drain starts.
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 3.0).await,
        3.0
    );
    for c in &mut clients {
        loop {
            match tokio::time::timeout(T, c.recv()).await.unwrap().unwrap() {
                Some(TwilioInbound::Media { .. }) => break,
                Some(_) => {}
                None => panic!("closed before the echo answered"),
            }
        }
    }
    relay.shutdown();
    let mut notices_seen = 0;
    for c in &mut clients {
        // After the echo and a clear, the notice arrives whole, then the close.
        let mut audio = Vec::new();
        let mut cleared = false;
        let code = loop {
            match tokio::time::timeout(T, c.recv()).await.unwrap().unwrap() {
                Some(TwilioInbound::Media { payload, .. }) => audio.extend(payload),
                Some(TwilioInbound::Clear { .. }) => {
                    cleared = true;
                    audio.clear();
                }
                Some(TwilioInbound::Mark { name, .. }) => {
                    // This caller's playback runs behind (marks of the echo are not
                    // confirmed), so audio is still queued at the drain deadline and must be
                    // cleared. The echo of the mark after the notice confirms it played.
                    if cleared {
                        let _ = c.send_mark(&name).await;
                    }
                }
                Some(TwilioInbound::Close { code, .. }) => break code,
                None => break None,
            }
        };
        assert!(
            cleared,
            "the echo's queued audio was cleared for the notice"
        );
        assert!(audio.ends_with(&notice), "the whole notice played last");
        assert_eq!(code, Some(1001));
        notices_seen += 1;
    }
    assert_eq!(notices_seen, 3);
    let _ = tx.send(());
    for s in senders {
        let _ = s.await;
    }
    tokio::time::timeout(T, &mut relay.done)
        .await
        .expect("relay stops after draining")
        .unwrap();
}

/// The count, read while the notice plays (the listener still answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_notices_are_counted_while_they_play() {
    let mut a = args();
    a.http.drain_timeout_secs = 1;
    a.call.drain_notice_file = Some(notice_path());
    let mut relay = start_relay(a).await;
    let mut c = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    c.send_connected().await.unwrap();
    c.send_start(&StartParams::for_call(70)).await.unwrap();
    relay.shutdown();
    let m = wait_metric(relay.addr, "relay_drain_notices_total", 1.0).await;
    assert_eq!(metric(&m, "relay_drain_notices_total"), 1.0);
    assert_eq!(metric(&m, "relay_draining"), 1.0);
    // This caller never echoes marks: the call closes after the notice's length plus grace.
    assert_eq!(wait_twilio_close(&mut c).await, Some(1001));
    let _ = tokio::time::timeout(T, &mut relay.done).await;
}
