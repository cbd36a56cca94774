//! Rate-limited logging of bad input (issue 8), in its own test binary: `tracing` caches
//! each log callsite's interest process-wide, so a callsite first reached by another test's
//! thread (with no subscriber) would stay silent for this test's scoped subscriber.

mod common;

use common::raw::{self, RawWs};
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// One hostile call sending hundreds of bad messages gets a handful of `warn` lines and a
/// counted total, not a line per message; every message is still counted. (A current-thread
/// runtime, so the test's log subscriber sees the call task's lines.)
#[tokio::test(flavor = "current_thread")]
async fn bad_input_logging_is_rate_limited_per_call() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("media_relay=info")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // The subscriber above is this thread's only: keep the call on this thread (with more
    // per-core workers the kernel may hand the connection to another thread's listener).
    let mut a = args();
    a.http.worker_threads = 1;
    let relay = start_relay(a).await;
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::connected_and_start(
        "CA00000000000000000000000000000012",
        "MZ00000000000000000000000000000012",
    ))
    .await;
    for _ in 0..300 {
        ws.send(&raw::text("{not json")).await;
    }
    ws.send(&raw::text(r#"{"event":"stop"}"#)).await;
    let close = ws.until_close(T).await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1000));
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"twilio\",kind=\"malformed_json\"}"
        ),
        300.0,
        "every bad message is counted"
    );
    // The summary line is written as the call task finishes, just after its outcome is
    // counted: wait for it.
    let deadline = std::time::Instant::now() + T;
    let text = loop {
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        if text.contains("call ended") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let warned = text.matches("skipped bad message").count();
    assert_eq!(warned, 5, "{text}");
    assert!(text.contains("further bad messages on this call are counted"));
    assert!(
        text.contains("bad_inputs=300"),
        "the summary line counts them: {text}"
    );
}
