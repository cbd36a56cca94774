//! Self-tests of the simulators: a deliberately tiny relay written here (not media-relay)
//! bridges `twilio_sim` and `telnyx_sim` to `agent_sim`, so both sides of each simulator are
//! exercised.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketWrite};
use http_body_util::{BodyExt, Empty, Full};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use loadtest::agent_sim::{self, AgentBehavior, MockAgentConfig, STALE_AUDIO_BYTE};
use loadtest::telnyx_sim::{
    self, url_with_relay_token, CustomParametersShape, FrameOrder, TelnyxClient, TelnyxInbound,
};
use loadtest::twilio_sim::{
    run_call, CallScript, StartParams, TwilioClient, TwilioInbound, TwilioProtocolError,
};
use serde_json::{json, Value};
use tokio::io::WriteHalf;
use tokio::sync::Mutex;

type Writer = Arc<Mutex<WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>>>;

struct Exec;
impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

async fn write_text(w: &Writer, text: String) -> bool {
    let mut w = w.lock().await;
    w.write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await
        .is_ok()
        && w.flush().await.is_ok()
}

async fn write_close(w: &Writer, code: u16) {
    let mut w = w.lock().await;
    if !w.is_closed() {
        let _ = w.write_frame(Frame::close(code, b"")).await;
        let _ = w.flush().await;
    }
}

/// Reads the next text frame (None at close/EOF/error), answering control frames via `w`.
async fn next_text(
    r: &mut FragmentCollectorRead<tokio::io::ReadHalf<TokioIo<Upgraded>>>,
    w: &Writer,
) -> Option<String> {
    let w2 = w.clone();
    let mut send_fn = move |f: Frame<'static>| {
        let w = w2.clone();
        async move {
            let mut w = w.lock().await;
            if !w.is_closed() {
                w.write_frame(f).await?;
                w.flush().await?;
            }
            Ok::<(), fastwebsockets::WebSocketError>(())
        }
    };
    loop {
        let frame = r.read_frame(&mut send_fn).await.ok()?;
        match frame.opcode {
            OpCode::Text => return String::from_utf8(frame.payload.to_vec()).ok(),
            OpCode::Close => return None,
            _ => continue,
        }
    }
}

fn split(
    ws: WebSocket<TokioIo<Upgraded>>,
) -> (
    FragmentCollectorRead<tokio::io::ReadHalf<TokioIo<Upgraded>>>,
    Writer,
) {
    let (r, w) = ws.split(tokio::io::split);
    (FragmentCollectorRead::new(r), Arc::new(Mutex::new(w)))
}

/// Fetches the signed URL and connects to the agent.
async fn connect_agent(api_base: &str, agent_id: &str) -> WebSocket<TokioIo<Upgraded>> {
    let authority = api_base.strip_prefix("http://").unwrap().to_owned();
    let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!(
        "/v1/convai/conversation/get-signed-url?agent_id={agent_id}"
    ))
    .header("Host", &authority)
    .header("xi-api-key", "test-key")
    .body(Empty::<Bytes>::new())
    .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let url = v["signed_url"].as_str().unwrap();
    let rest = url.strip_prefix("ws://").unwrap();
    let slash = rest.find('/').unwrap();
    let (auth, path) = (&rest[..slash], &rest[slash..]);
    let tcp = tokio::net::TcpStream::connect(auth).await.unwrap();
    let req = hyper::Request::get(path)
        .header("Host", auth)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    fastwebsockets::handshake::client(&Exec, req, tcp)
        .await
        .unwrap()
        .0
}

/// Which carrier's wire a bridged call speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Carrier {
    Twilio,
    Telnyx,
}

/// What the tiny relay saw from callers, in arrival order: (event, sequence number, chunk).
type WireLog = Arc<std::sync::Mutex<Vec<(String, Option<u64>, Option<u64>)>>>;

/// A carrier message for the caller: Twilio's carry the `streamSid`; Telnyx's no stream id.
fn to_carrier(carrier: Carrier, sid: &str, mut v: Value) -> String {
    if carrier == Carrier::Twilio {
        v["streamSid"] = json!(sid);
    }
    v.to_string()
}

/// `start.customParameters` (Twilio) or `start.custom_parameters` (Telnyx, an object or a list
/// of `{name, value}`) as one object.
fn custom_parameters(carrier: Carrier, start: &Value) -> Value {
    match carrier {
        Carrier::Twilio => start["customParameters"].clone(),
        Carrier::Telnyx => match &start["custom_parameters"] {
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    (
                        i["name"].as_str().unwrap_or("").to_owned(),
                        i["value"].clone(),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            other => other.clone(),
        },
    }
}

/// One bridged call: carrier leg `tw`, agent leg fetched from `api_base`. Caller messages are
/// handled in sequence-number order (held until the gap before them fills), as Telnyx's
/// unordered frames require.
async fn bridge(
    tw: WebSocket<TokioIo<Upgraded>>,
    api_base: String,
    carrier: Carrier,
    log: WireLog,
) {
    let (mut tr, tw_w) = split(tw);
    let (mut ar, ag_w) = split(connect_agent(&api_base, "agent_1").await);
    let stream_sid = Arc::new(std::sync::Mutex::new(String::new()));

    // agent -> carrier
    let (tw_w2, ag_w2, sid2) = (tw_w.clone(), ag_w.clone(), stream_sid.clone());
    let down = tokio::spawn(async move {
        let mut last_interrupt = i64::MIN;
        let mut mark_n = 0;
        while let Some(text) = next_text(&mut ar, &ag_w2).await {
            let v: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let sid = sid2.lock().unwrap().clone();
            match v["type"].as_str() {
                Some("audio") => {
                    let id = v["audio_event"]["event_id"].as_i64().unwrap_or(0);
                    if id <= last_interrupt {
                        continue;
                    }
                    let payload = v["audio_event"]["audio_base_64"].as_str().unwrap_or("");
                    let media = json!({"event":"media","media":{"payload":payload}});
                    write_text(&tw_w2, to_carrier(carrier, &sid, media)).await;
                    mark_n += 1;
                    let mark = json!({"event":"mark","mark":{"name":format!("m{mark_n}")}});
                    write_text(&tw_w2, to_carrier(carrier, &sid, mark)).await;
                }
                Some("interruption") => {
                    last_interrupt = v["interruption_event"]["event_id"].as_i64().unwrap_or(0);
                    let clear = to_carrier(carrier, &sid, json!({"event":"clear"}));
                    write_text(&tw_w2, clear).await;
                }
                Some("ping") => {
                    let id = v["ping_event"]["event_id"].clone();
                    write_text(&ag_w2, json!({"type":"pong","event_id":id}).to_string()).await;
                }
                _ => {}
            }
        }
        write_close(&tw_w2, 1000).await;
    });

    // carrier -> agent
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
    let mut next_seq = 1;
    let mut held = std::collections::BTreeMap::<u64, Value>::new();
    'read: while let Some(text) = next_text(&mut tr, &tw_w).await {
        let v: Value = serde_json::from_str(&text).unwrap();
        // Lenient on purpose: a caller of the other carrier still gets answers to judge.
        let seq = number(&v["sequenceNumber"]).or(number(&v["sequence_number"]));
        log.lock().unwrap().push((
            v["event"].as_str().unwrap_or("").to_owned(),
            seq,
            number(&v["media"]["chunk"]),
        ));
        let Some(seq) = seq else { continue }; // `connected`
        held.insert(seq, v);
        while let Some(v) = held.remove(&next_seq) {
            next_seq += 1;
            match v["event"].as_str() {
                Some("start") => {
                    let sid = match carrier {
                        Carrier::Twilio => &v["streamSid"],
                        Carrier::Telnyx => &v["stream_id"],
                    };
                    *stream_sid.lock().unwrap() = sid.as_str().unwrap_or("").to_owned();
                    let init = json!({"type":"conversation_initiation_client_data",
                        "dynamic_variables": custom_parameters(carrier, &v["start"])});
                    write_text(&ag_w, init.to_string()).await;
                }
                Some("media") => {
                    let p = v["media"]["payload"].as_str().unwrap();
                    write_text(&ag_w, json!({"user_audio_chunk": p}).to_string()).await;
                }
                Some("stop") => break 'read,
                _ => {}
            }
        }
    }
    write_close(&ag_w, 1000).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), down).await;
    write_close(&tw_w, 1000).await;
}

/// The tiny relay: `/twilio` for Twilio; `/telnyx?relay_token=<telnyx_token>` for Telnyx
/// (403 without the right token). Returns `ws://addr` and its log of what callers sent.
async fn start_tiny_relay(api_base: String, telnyx_token: &str) -> (String, WireLog) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = WireLog::default();
    let (log2, token) = (log.clone(), telnyx_token.to_owned());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (api_base, log, token) = (api_base.clone(), log2.clone(), token.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req| {
                    let (api_base, log) = (api_base.clone(), log.clone());
                    let query = loadtest::mock_server::parse_query(req.uri().query().unwrap_or(""));
                    let token_ok = query == [("relay_token".to_owned(), token.clone())];
                    let carrier = match req.uri().path() {
                        "/twilio" => Some(Carrier::Twilio),
                        "/telnyx" if token_ok => Some(Carrier::Telnyx),
                        _ => None,
                    };
                    async move {
                        let Some(carrier) = carrier else {
                            let mut r = hyper::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::FORBIDDEN;
                            return Ok::<_, Infallible>(r);
                        };
                        let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
                        tokio::spawn(async move {
                            bridge(fut.await.unwrap(), api_base, carrier, log).await
                        });
                        let (parts, _) = resp.into_parts();
                        Ok(hyper::Response::from_parts(parts, Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (format!("ws://{addr}"), log)
}

/// Starts the tiny relay; returns its Twilio ws:// URL.
async fn start_relay(api_base: String) -> String {
    let (base, _) = start_tiny_relay(api_base, "unused").await;
    format!("{base}/twilio")
}

fn config(behavior: AgentBehavior) -> MockAgentConfig {
    let mut c = MockAgentConfig::new("agent_1");
    c.api_key = Some("test-key".into());
    c.behavior = behavior;
    c
}

#[tokio::test]
async fn echo_call_round_trips_audio_and_marks() {
    let agent = agent_sim::start(config(AgentBehavior::Echo)).await.unwrap();
    let url = start_relay(agent.api_base()).await;
    let audio = Arc::new(loadtest::fixtures::caller_utterance().unwrap()[..16_000].to_vec());
    let mut start = StartParams::for_call(7);
    start.custom_parameters = vec![("tenant".into(), "acme".into())];
    let mut script = CallScript::new(url, start, audio.clone());
    script.frame_interval = Duration::from_millis(2); // 10x real time
    script.linger = Duration::from_millis(300);
    let report = run_call(script).await.unwrap();

    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert_eq!(report.frames_sent, 100);
    assert_eq!(report.received_audio, *audio);
    assert_eq!(report.media_messages, 100);
    assert_eq!(report.marks_received.len(), 100);
    assert_eq!(report.close_code, Some(1000));
    assert!(report.first_media_at.is_some());
    // 2 s of audio played from ~0 at 10x speed: only some marks have played by the end.
    assert!(!report.marks_echoed.is_empty());
    assert!(
        report.marks_echoed.len() < 100,
        "{}",
        report.marks_echoed.len()
    );
    assert_eq!(
        report.marks_echoed[..],
        report.marks_received[..report.marks_echoed.len()]
    );

    let conv = agent
        .next_conversation(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(conv.conversation_id(), "conv_1");
    let init = conv.init_data(Duration::from_secs(1)).await.unwrap();
    assert_eq!(init["dynamic_variables"]["tenant"], "acme");
    assert_eq!(conv.user_audio(), *audio);
    assert_eq!(conv.user_audio_chunks(), 100);
    assert_eq!(
        conv.wait_closed(Duration::from_secs(2)).await.unwrap(),
        Some(1000)
    );
    assert!(
        conv.protocol_errors().is_empty(),
        "{:?}",
        conv.protocol_errors()
    );
    assert_eq!(agent.conversations_started(), 1);
}

#[tokio::test]
async fn reply_with_interruption_clears_and_drops_stale_audio() {
    let reply = Arc::new(loadtest::fixtures::agent_reply().unwrap()[..8_000].to_vec());
    let mut cfg = config(AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: 1_600,
        think_time: Duration::from_millis(10),
        chunk_bytes: 2_000,
        chunk_interval: Duration::from_millis(20),
        interrupt_after_chunks: Some(2),
    });
    cfg.ping_interval = Some(Duration::from_millis(50));
    let agent = agent_sim::start(cfg).await.unwrap();
    let url = start_relay(agent.api_base()).await;
    let audio = Arc::new(vec![0xFFu8; 160 * 30]);
    let mut script = CallScript::new(url, StartParams::for_call(1), audio);
    script.linger = Duration::from_millis(400);
    let report = run_call(script).await.unwrap();

    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert_eq!(report.clears, 1);
    assert_eq!(report.received_audio, *reply, "stale audio must be dropped");
    assert!(!report.received_audio.contains(&STALE_AUDIO_BYTE));
    assert_eq!(report.marks_received, ["m1", "m2", "m3", "m4"]);
    // m1, m2 were pending when clear came: echoed at once; m3, m4 played within the linger.
    assert_eq!(report.marks_echoed, ["m1", "m2", "m3", "m4"]);

    let conv = agent
        .next_conversation(Duration::from_secs(1))
        .await
        .unwrap();
    conv.wait_pong(1, Duration::from_secs(1)).await.ok();
    assert!(
        !conv.pongs().is_empty(),
        "expected pongs for scripted pings"
    );
    assert!(
        conv.protocol_errors().is_empty(),
        "{:?}",
        conv.protocol_errors()
    );
}

#[tokio::test]
async fn refusals_and_manual_control() {
    let agent = agent_sim::start(config(AgentBehavior::Silent))
        .await
        .unwrap();
    // Wrong agent id → 404; right agent without signature → 403; wrong path → 404.
    let base = format!("ws://{}", agent.addr());
    let st = |r: anyhow::Result<Result<TwilioClient, u16>>| match r.unwrap() {
        Ok(_) => 101,
        Err(s) => s,
    };
    assert_eq!(
        st(
            TwilioClient::try_connect(&format!("{base}/v1/convai/conversation?agent_id=x"), &[])
                .await
        ),
        404
    );
    assert_eq!(
        st(TwilioClient::try_connect(
            &format!("{base}/v1/convai/conversation?agent_id=agent_1"),
            &[]
        )
        .await),
        403
    );
    assert_eq!(
        st(TwilioClient::try_connect(&format!("{base}/nope"), &[]).await),
        404
    );
    assert!(TwilioClient::connect(&format!("{base}/nope"), &[])
        .await
        .is_err());

    // A public agent accepts any client; drive it by hand. The "client" here is a
    // TwilioClient sending raw agent-protocol text, which is all the mock needs.
    let mut cfg = config(AgentBehavior::Garbage);
    cfg.api_key = None;
    let agent = agent_sim::start(cfg).await.unwrap();
    let client = TwilioClient::connect(&agent.ws_url(), &[]).await.unwrap();
    let (tx, mut rx) = client.split();
    tx.send_text_raw(json!({"user_audio_chunk": B64.encode([1, 2, 3])}).to_string())
        .await
        .unwrap();
    let conv = agent
        .next_conversation(Duration::from_secs(1))
        .await
        .unwrap();
    conv.wait_user_audio_bytes(3, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(conv.init_data(Duration::from_millis(100)).await.is_err());
    assert!(conv.protocol_errors()[0].contains("first message"));
    tx.send_text_raw(r#"{"type":"user_activity"}"#.into())
        .await
        .unwrap();
    tx.send_text_raw(r#"{"type":"pong","event_id":42}"#.into())
        .await
        .unwrap();
    conv.wait_pong(42, Duration::from_secs(1)).await.unwrap();
    assert_eq!(conv.other_messages(), vec![json!({"type":"user_activity"})]);

    // What the mock sent: metadata, garbage text, binary, audio (as seen by a strict Twilio
    // validator, every one is a violation, which is also a good test of the validator).
    let mut errors = Vec::new();
    for _ in 0..4 {
        errors.push(format!("{:#}", rx.recv().await.unwrap_err()));
    }
    assert!(
        errors[0].contains("unknown event") || errors[0].contains("missing `event`"),
        "{errors:?}"
    );
    assert!(errors[1].contains("invalid JSON"), "{errors:?}");
    assert!(errors[2].contains("binary frame"), "{errors:?}");

    conv.send_ping(9).await;
    conv.close(1008, "bye").await;
    let mut close = None;
    loop {
        match rx.recv().await {
            Ok(Some(TwilioInbound::Close { code, reason })) => close = Some((code, reason)),
            Ok(Some(_)) => {}
            Ok(None) => break,
            // The agent's ping is not a Twilio message: a violation, keep reading.
            Err(e) if e.is::<TwilioProtocolError>() => {}
            Err(e) => panic!("{e:#}"),
        }
    }
    assert_eq!(close, Some((Some(1008), "bye".to_owned())));
    assert_eq!(
        conv.wait_closed(Duration::from_secs(1)).await.unwrap(),
        Some(1008)
    );
}

/// The chunk numbers of the media frames the tiny relay received, in arrival order.
fn chunks_seen(log: &WireLog) -> Vec<u64> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(event, _, _)| event == "media")
        .filter_map(|(_, _, chunk)| *chunk)
        .collect()
}

#[tokio::test]
async fn telnyx_reordered_frames_round_trip_byte_exact() {
    let agent = agent_sim::start(config(AgentBehavior::Echo)).await.unwrap();
    let (base, log) = start_tiny_relay(agent.api_base(), "tok/7").await;
    let url = url_with_relay_token(&format!("{base}/telnyx"), "tok/7");
    let audio = Arc::new(loadtest::fixtures::caller_utterance().unwrap()[..16_000].to_vec());
    let mut start = telnyx_sim::StartParams::for_call(7);
    start.custom_parameters = vec![("tenant".into(), "acme".into())];
    start.custom_parameters_shape = CustomParametersShape::List;
    let mut script = telnyx_sim::CallScript::new(url, start, audio.clone());
    script.frame_interval = Duration::from_millis(2); // 10x real time
    script.linger = Duration::from_millis(300);
    script.frame_order = FrameOrder::Shuffle { seed: 7, window: 3 };
    let expected_order = script.frame_order.wire_order(100).unwrap();
    let report = telnyx_sim::run_call(script).await.unwrap();

    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert_eq!(report.frames_sent, 100);
    assert!(report.frames_out_of_order > 0);
    // The wire carried the shuffled order, each frame with its own chunk number...
    let seen = chunks_seen(&log);
    let expected: Vec<u64> = expected_order.iter().map(|&i| i as u64 + 1).collect();
    assert_eq!(seen, expected);
    // ...and the relay, ordering by sequence_number, gave the agent the audio byte-exact.
    let conv = agent
        .next_conversation(Duration::from_secs(1))
        .await
        .unwrap();
    let init = conv.init_data(Duration::from_secs(1)).await.unwrap();
    assert_eq!(init["dynamic_variables"]["tenant"], "acme");
    assert_eq!(conv.user_audio(), *audio);
    assert_eq!(report.received_audio, *audio);
    assert_eq!(report.media_messages, 100);
    assert_eq!(report.marks_received.len(), 100);
    assert!(!report.marks_echoed.is_empty() && report.marks_echoed.len() < 100);
    assert_eq!(
        report.marks_echoed[..],
        report.marks_received[..report.marks_echoed.len()]
    );
    assert_eq!(report.close_code, Some(1000));
    // Telnyx numbering on the wire: start is 1; every later message takes the next number.
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], ("connected".to_owned(), None, None));
    assert_eq!(log[1], ("start".to_owned(), Some(1), None));
    let mut seqs: Vec<u64> = log.iter().filter_map(|e| e.1).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(log.last().unwrap().0, "stop");
}

#[tokio::test]
async fn telnyx_swapped_frames_and_interruption() {
    let reply = Arc::new(loadtest::fixtures::agent_reply().unwrap()[..8_000].to_vec());
    let agent = agent_sim::start(config(AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: 1_600,
        think_time: Duration::from_millis(10),
        chunk_bytes: 2_000,
        chunk_interval: Duration::from_millis(20),
        interrupt_after_chunks: Some(2),
    }))
    .await
    .unwrap();
    let (base, log) = start_tiny_relay(agent.api_base(), "t").await;
    let mut start = telnyx_sim::StartParams::for_call(1);
    start.custom_parameters = vec![("tenant".into(), "acme".into())]; // object shape
    let audio: Arc<Vec<u8>> = Arc::new((0..160 * 30).map(|i| (i / 160) as u8).collect());
    let mut script =
        telnyx_sim::CallScript::new(format!("{base}/telnyx?relay_token=t"), start, audio.clone());
    script.linger = Duration::from_millis(400);
    script.frame_order = FrameOrder::SwapPairs(vec![(0, 1), (5, 8)]);
    let report = telnyx_sim::run_call(script).await.unwrap();

    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert_eq!(report.frames_out_of_order, 4);
    assert_eq!(chunks_seen(&log)[..10], [2, 1, 3, 4, 5, 9, 7, 8, 6, 10]);
    assert_eq!(report.clears, 1);
    assert_eq!(report.received_audio, *reply, "stale audio must be dropped");
    assert_eq!(report.marks_received, ["m1", "m2", "m3", "m4"]);
    // m1, m2 were pending when clear came: echoed at once; m3, m4 played within the linger.
    assert_eq!(report.marks_echoed, ["m1", "m2", "m3", "m4"]);
    let conv = agent
        .next_conversation(Duration::from_secs(1))
        .await
        .unwrap();
    let init = conv.init_data(Duration::from_secs(1)).await.unwrap();
    assert_eq!(init["dynamic_variables"]["tenant"], "acme");
    conv.wait_user_audio_bytes(audio.len(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        conv.user_audio(),
        *audio,
        "frames reassembled in sequence order"
    );
}

#[tokio::test]
async fn telnyx_token_refusals_strictness_and_manual_control() {
    let agent = agent_sim::start(config(AgentBehavior::Echo)).await.unwrap();
    let (base, log) = start_tiny_relay(agent.api_base(), "secret").await;
    let st = |r: anyhow::Result<Result<TelnyxClient, u16>>| match r.unwrap() {
        Ok(_) => 101,
        Err(s) => s,
    };
    let telnyx = format!("{base}/telnyx");
    assert_eq!(st(TelnyxClient::try_connect(&telnyx, &[]).await), 403);
    let wrong = url_with_relay_token(&telnyx, "guess");
    assert_eq!(st(TelnyxClient::try_connect(&wrong, &[]).await), 403);

    // A relay answering in Twilio's shape (with a streamSid) breaks Telnyx's rules.
    let audio = Arc::new(vec![0xFFu8; 160 * 5]);
    let mut script = telnyx_sim::CallScript::new(
        format!("{base}/twilio"),
        telnyx_sim::StartParams::for_call(2),
        audio,
    );
    script.frame_interval = Duration::from_millis(2);
    script.linger = Duration::from_millis(200);
    let report = telnyx_sim::run_call(script).await.unwrap();
    assert_eq!(report.media_messages, 0);
    assert_eq!(
        report.protocol_errors.len(),
        10,
        "{:?}",
        report.protocol_errors
    );
    assert!(report
        .protocol_errors
        .iter()
        .all(|e| e.starts_with("Telnyx protocol violation") && e.contains("carries `streamSid`")));
    let _ = agent.next_conversation(Duration::from_secs(1)).await;

    // Manual control: every Telnyx message, numbered in line.
    log.lock().unwrap().clear();
    let url = url_with_relay_token(&telnyx, "secret");
    let client = TelnyxClient::connect(&url, &[]).await.unwrap();
    let (tx, mut rx) = client.split();
    tx.send_connected().await.unwrap();
    tx.send_start(&telnyx_sim::StartParams::for_call(3))
        .await
        .unwrap();
    tx.send_dtmf("5").await.unwrap();
    tx.send_error(
        100003,
        "malformed_frame",
        "Received frame was not formed correctly",
    )
    .await
    .unwrap();
    // Sent out of order by hand: frame 2 first, then frame 1.
    let first = tx.encode_media(&[1; 160]).await;
    let second = tx.encode_media(&[2; 160]).await;
    tx.send_text_raw(second).await.unwrap();
    tx.send_text_raw(first).await.unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 320 {
        match rx.recv().await.unwrap() {
            Some(TelnyxInbound::Media { payload }) => echoed.extend(payload),
            Some(TelnyxInbound::Mark { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(echoed[..160], [1; 160]);
    assert_eq!(echoed[160..], [2; 160]);
    tx.send_mark("m1").await.unwrap();
    tx.send_stop().await.unwrap();
    let mut close = None;
    while let Some(m) = rx.recv().await.unwrap() {
        if let TelnyxInbound::Close { code, .. } = m {
            close = code;
        }
    }
    assert_eq!(close, Some(1000));
    assert_eq!(rx.ended_with(), Some(Some(1000)));
    let log = log.lock().unwrap().clone();
    let events: Vec<(&str, Option<u64>, Option<u64>)> =
        log.iter().map(|(e, s, c)| (e.as_str(), *s, *c)).collect();
    assert_eq!(
        events,
        [
            ("connected", None, None),
            ("start", Some(1), None),
            ("dtmf", Some(2), None),
            ("error", Some(3), None),
            ("media", Some(5), Some(2)),
            ("media", Some(4), Some(1)),
            ("mark", Some(6), None),
            ("stop", Some(7), None),
        ]
    );
}
