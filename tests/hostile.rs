//! Hostile and broken peers on the Twilio leg, over real loopback sockets with hand-crafted
//! frames (issue 8): each finding is reproduced here; each test checks the hostile call ends
//! (or goes on) with the documented outcome and leaves no state behind. (That other calls go
//! on beside a hostile one is `tests/relay.rs`'s
//! `bad_twilio_input_is_skipped_and_counted_while_a_healthy_call_goes_on`.)

mod common;

use common::raw::{self, RawWs};
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// RFC 6455 §5.2: after a buffered fragment, a continuation whose 64-bit length has the top
/// bits set used to wrap the length arithmetic and panic the call task (so the call skipped
/// its end bookkeeping). It must be a protocol error: close 1002, outcome `caller_error`,
/// and the call's registry entry removed. (The header check now refuses the top bit before
/// any sum; the next test covers the sum with a legal length.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_continuation_length_is_a_protocol_error_not_a_panic() {
    let relay = start_relay(args()).await;
    let call_sid = "CA00000000000000000000000000000001";
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::connected_and_start(
        call_sid,
        "MZ00000000000000000000000000000001",
    ))
    .await;
    // A first fragment of a text message (not FIN), then a continuation claiming
    // 2^64 - 10 bytes: so_far (10) + that length wraps to 0 in u64.
    let mut bytes = raw::frame(0x01, b"{\"event\":\"");
    bytes.extend(raw::header_with_len64(0x80, u64::MAX - 9));
    ws.send(&bytes).await;
    let close = ws
        .until_close(T)
        .await
        .expect("a close frame, not a dropped socket");
    assert_eq!(close.close_code(), Some(1002));

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_error\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_error\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"twilio\",kind=\"websocket_protocol\"}"
        ),
        1.0
    );
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 0.0).await,
        0.0
    );

    // The registry entry is gone: a new stream for the same call is not a duplicate.
    let mut again = RawWs::connect(relay.addr, "/media").await;
    again
        .send(&raw::connected_and_start(
            call_sid,
            "MZ00000000000000000000000000000002",
        ))
        .await;
    again.send(&raw::text(r#"{"event":"stop"}"#)).await;
    let close = again.until_close(T).await.expect("normal close");
    assert_eq!(close.close_code(), Some(1000));
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(metric(&m, "relay_duplicate_streams_total"), 0.0);
}

/// The same continuation with the top bit of its length clear (2^63 - 5 bytes): the
/// header is legal, so the length sum with the buffered fragment is what must hold. It
/// exceeds the message cap: close 1009, outcome `caller_error`, no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_legal_continuation_length_is_too_large_not_a_panic() {
    let relay = start_relay(args()).await;
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::connected_and_start(
        "CA00000000000000000000000000000021",
        "MZ00000000000000000000000000000021",
    ))
    .await;
    let mut bytes = raw::frame(0x01, b"{\"event\":\"");
    bytes.extend(raw::header_with_len64(0x80, (1u64 << 63) - 5));
    ws.send(&bytes).await;
    let close = ws.until_close(T).await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1009));
    wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_error\"}",
        1.0,
    )
    .await;
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 0.0).await,
        0.0
    );
}

/// RFC 6455 §5.2: "the most significant bit MUST be 0" in a 64-bit length; a single frame
/// with it set is a protocol error, not a message to skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_with_the_top_bit_set_is_refused() {
    let relay = start_relay(args()).await;
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::connected_and_start(
        "CA00000000000000000000000000000003",
        "MZ00000000000000000000000000000003",
    ))
    .await;
    ws.send(&raw::header_with_len64(0x81, 1 << 63)).await;
    let close = ws.until_close(T).await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1002));
}

/// RFC 6455 §5.5.1: a close frame is answered with a close frame (Twilio would otherwise log
/// an abnormal closure, 1006); the relay echoes the code and then drops TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_close_is_answered_with_a_close() {
    let relay = start_relay(args()).await;
    for (sent, want) in [
        (Some(1000u16), Some(1000u16)),
        (Some(4000), Some(4000)),
        (None, None),
    ] {
        let mut ws = RawWs::connect(relay.addr, "/media").await;
        ws.send(&raw::connected_and_start(
            "CA00000000000000000000000000000004",
            "MZ00000000000000000000000000000004",
        ))
        .await;
        let payload = sent.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
        ws.send(&raw::frame(0x88, &payload)).await;
        let reply = ws.until_close(T).await.expect("a close reply");
        assert_eq!(reply.close_code(), want, "reply to {sent:?}");
        assert!(
            ws.closed_by_server(T).await,
            "server drops TCP after the handshake"
        );
    }
}

/// Bad close frames and invalid UTF-8 get the close code RFC 6455 §7.4.1 prescribes: 1002
/// for a 1-byte payload or an invalid code, 1007 for a non-UTF-8 reason or text message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_close_frames_and_invalid_utf8_get_1002_or_1007() {
    let relay = start_relay(args()).await;
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        ("1-byte close".into(), raw::frame(0x88, &[0x03]), 1002),
        (
            "non-UTF-8 reason".into(),
            raw::frame(0x88, &[0x03, 0xe8, 0xff, 0xfe]),
            1007,
        ),
        (
            "non-UTF-8 text".into(),
            raw::frame(0x81, b"{\"event\":\"\xff\"}"),
            1007,
        ),
        (
            "non-UTF-8 text across fragments".into(),
            [raw::frame(0x01, b"{\"a\":\"\xce"), raw::frame(0x80, b"\"}")].concat(),
            1007,
        ),
    ];
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        cases.push((
            format!("close code {code}"),
            raw::frame(0x88, &code.to_be_bytes()),
            1002,
        ));
    }
    for (name, bytes, want) in cases {
        let mut ws = RawWs::connect(relay.addr, "/media").await;
        ws.send(&raw::connected_and_start(
            "CA00000000000000000000000000000005",
            "MZ00000000000000000000000000000005",
        ))
        .await;
        ws.send(&bytes).await;
        let reply = ws.until_close(T).await;
        assert_eq!(
            reply.as_ref().and_then(|f| f.close_code()),
            Some(want),
            "{name}: {reply:?}"
        );
    }
    // A valid UTF-8 sequence split across fragments is fine.
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::connected_and_start(
        "CA00000000000000000000000000000006",
        "MZ00000000000000000000000000000006",
    ))
    .await;
    ws.send(
        &[
            raw::frame(0x01, b"{\"event\":\"caf\xc3"),
            raw::frame(0x80, b"\xa9\"}"),
        ]
        .concat(),
    )
    .await;
    ws.send(&raw::text(r#"{"event":"stop"}"#)).await;
    let reply = ws.until_close(T).await.expect("normal close");
    assert_eq!(reply.close_code(), Some(1000));
}

/// A `start` whose media format is not μ-law 8000 Hz mono is refused: the call ends with
/// its own outcome and a logged reason instead of relaying audio in the wrong encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_in_another_media_format_is_refused() {
    let relay = start_relay(args()).await;
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await;
    ws.send(&raw::text(
        r#"{"event":"start","start":{"streamSid":"MZ00000000000000000000000000000010","callSid":"CA00000000000000000000000000000010","mediaFormat":{"encoding":"audio/x-alaw","sampleRate":8000,"channels":1},"customParameters":{}},"streamSid":"MZ00000000000000000000000000000010"}"#,
    ))
    .await;
    let close = ws.until_close(T).await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1003));
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"media_format_unsupported\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_calls_total{outcome=\"media_format_unsupported\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"twilio\",kind=\"media_format_unsupported\"}"
        ),
        1.0
    );
}

/// A call that sent `start` and then nothing is ended after `--twilio-idle-timeout-secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_twilio_leg_ends_the_call_as_twilio_idle() {
    let mut a = args();
    a.call.twilio_idle_timeout_secs = 1;
    let relay = start_relay(a).await;
    let mut ws = RawWs::connect(relay.addr, "/media").await;
    ws.send(&raw::connected_and_start(
        "CA00000000000000000000000000000011",
        "MZ00000000000000000000000000000011",
    ))
    .await;
    let t = std::time::Instant::now();
    let close = ws.until_close(T).await.expect("a close frame");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"caller_idle\"}",
            1.0
        )
        .await,
        1.0
    );
}
