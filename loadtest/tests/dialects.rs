//! Self-tests of the AssemblyAI and OpenAI Realtime mocks over real loopback sockets, driven
//! by a minimal WebSocket client written here (not the relay, not the crate's own client).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite,
};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use loadtest::agent_sim::STALE_AUDIO_BYTE;
use loadtest::assemblyai_sim::{self, AssemblyAiConfig, ToolArgsField};
use loadtest::mock_server::script::{Action, Behavior, ReplyScript, Step, Wait};
use loadtest::mock_server::{Dialect, SessionHandle};
use loadtest::openai_sim::{self, RealtimeConfig};
use serde_json::{json, Value};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::Mutex;

const T: Duration = Duration::from_secs(5);

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

type Io = TokioIo<Upgraded>;

/// What the client read.
#[derive(Debug)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
}

/// A minimal WebSocket client: one reader, a shared writer.
struct Client {
    r: FragmentCollectorRead<ReadHalf<Io>>,
    w: Arc<Mutex<WebSocketWrite<WriteHalf<Io>>>>,
}

impl Client {
    /// Connects to `ws://host:port/path?query` with extra headers; `Err(status)` on refusal.
    async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let rest = url.strip_prefix("ws://").unwrap();
        let slash = rest.find('/').unwrap();
        let (auth, path) = (&rest[..slash], &rest[slash..]);
        let tcp = tokio::net::TcpStream::connect(auth).await.unwrap();
        let mut req = hyper::Request::get(path)
            .header("Host", auth)
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let ws = match fastwebsockets::handshake::client(&Exec, req, tcp).await {
            Ok((ws, _)) => ws,
            Err(WebSocketError::InvalidStatusCode(s)) => return Err(s),
            Err(e) => panic!("handshake: {e}"),
        };
        let (r, w) = ws.split(tokio::io::split);
        Ok(Client {
            r: FragmentCollectorRead::new(r),
            w: Arc::new(Mutex::new(w)),
        })
    }

    async fn write(&self, f: Frame<'_>) {
        let mut w = self.w.lock().await;
        w.write_frame(f).await.unwrap();
        w.flush().await.unwrap();
    }

    async fn send(&self, v: Value) {
        self.send_raw(&v.to_string()).await;
    }

    async fn send_raw(&self, s: &str) {
        self.write(Frame::text(Payload::Owned(s.as_bytes().to_vec())))
            .await;
    }

    async fn send_binary(&self, b: &[u8]) {
        self.write(Frame::binary(Payload::Owned(b.to_vec()))).await;
    }

    async fn close(&self, code: u16) {
        self.write(Frame::close(code, b"")).await;
    }

    /// The next message (panics after 5 s).
    async fn recv(&mut self) -> Msg {
        let w = self.w.clone();
        let mut send_fn = move |f: Frame<'static>| {
            let w = w.clone();
            async move {
                let mut w = w.lock().await;
                if !w.is_closed() {
                    w.write_frame(f).await?;
                    w.flush().await?;
                }
                Ok::<(), WebSocketError>(())
            }
        };
        let frame = tokio::time::timeout(T, self.r.read_frame(&mut send_fn))
            .await
            .expect("timed out reading")
            .expect("read failed");
        match frame.opcode {
            OpCode::Text => Msg::Text(String::from_utf8(frame.payload.to_vec()).unwrap()),
            OpCode::Binary => Msg::Binary(frame.payload.to_vec()),
            OpCode::Close => {
                let p = frame.payload.to_vec();
                Msg::Close((p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
            }
            op => panic!("unexpected {op:?}"),
        }
    }

    /// The next message, which must be JSON text.
    async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Msg::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
            m => panic!("expected text, got {m:?}"),
        }
    }

    /// JSON messages up to and including the first whose `type` is `kind`.
    async fn recv_until(&mut self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.recv_json().await;
            let done = v["type"] == kind;
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

fn types(msgs: &[Value]) -> Vec<&str> {
    msgs.iter()
        .map(|m| m["type"].as_str().unwrap_or("<none>"))
        .collect()
}

fn b64_field(v: &Value, field: &str) -> Vec<u8> {
    B64.decode(v[field].as_str().unwrap()).unwrap()
}

// --- AssemblyAI ---------------------------------------------------------------------------

fn aai_update() -> Value {
    let fmt = json!({"encoding": "audio/pcmu", "sample_rate": 8000});
    json!({"type": "session.update", "session": {
        "system_prompt": "Be brief.",
        "input": {"format": fmt},
        "output": {"format": fmt, "voice": "ivy"},
    }})
}

fn aai_audio(bytes: &[u8]) -> Value {
    json!({"type": "input.audio", "audio": B64.encode(bytes)})
}

const BEARER: (&str, &str) = ("Authorization", "Bearer test-key");

#[tokio::test]
async fn assemblyai_refuses_bad_keys_and_paths() {
    let mock = assemblyai_sim::start(AssemblyAiConfig::new())
        .await
        .unwrap();
    let url = mock.ws_url();
    assert!(url.ends_with("/v1/ws"), "{url}");
    assert_eq!(Client::connect(&url, &[]).await.err(), Some(401));
    assert_eq!(
        Client::connect(&url, &[("Authorization", "Bearer nope")])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        Client::connect(&url, &[("Authorization", "test-key")])
            .await
            .err(),
        Some(401)
    );
    let other = format!("ws://{}/v2/ws", mock.addr());
    assert_eq!(Client::connect(&other, &[BEARER]).await.err(), Some(404));
    assert_eq!(mock.sessions_started(), 0);
    let _c = Client::connect(&url, &[BEARER]).await.unwrap();
    let s = mock.next_session(T).await.unwrap();
    assert_eq!(s.id(), "sess_1");
    assert_eq!(
        s.request_header("authorization").as_deref(),
        Some("Bearer test-key")
    );
}

#[tokio::test]
async fn assemblyai_echo_records_and_answers() {
    let mut cfg = AssemblyAiConfig::new().with_behavior(Behavior::Echo);
    cfg.echo_chunk_bytes = 80;
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.send(aai_update()).await;
    let ready = c.recv_json().await;
    assert_eq!(
        ready,
        json!({"type": "session.ready", "session_id": "sess_1"})
    );
    let audio: Vec<u8> = (0..800u32).map(|i| (i % 251) as u8).collect();
    for f in audio.chunks(160) {
        c.send(aai_audio(f)).await;
    }
    let mut echoed = Vec::new();
    for _ in 0..10 {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "reply.audio");
        assert!(m.get("reply_id").is_none(), "{m}");
        let d = b64_field(&m, "data");
        assert_eq!(d.len(), 80);
        echoed.extend(d);
    }
    assert_eq!(echoed, audio);
    c.send(json!({"type": "reply.create", "instructions": "The caller pressed 5 on the phone keypad."}))
        .await;
    c.send(json!({"type": "conversation.item.whatever", "x": 1}))
        .await;

    let s = mock.next_session(T).await.unwrap();
    let init = s.init_message(T).await.unwrap();
    assert_eq!(init["session"]["input"]["format"]["encoding"], "audio/pcmu");
    assert_eq!(init["session"]["output"]["format"]["sample_rate"], 8000);
    s.wait_user_audio_bytes(800, T).await.unwrap();
    assert_eq!(s.user_audio(), audio);
    assert_eq!(s.user_audio_chunks(), 5);
    assert_eq!(s.user_audio_chunk_times().len(), 5);
    let inputs = s.wait_text_inputs(1, T).await.unwrap();
    assert_eq!(inputs[0].text, "The caller pressed 5 on the phone keypad.");
    s.wait_messages_of_type("conversation.item.whatever", 1, T)
        .await
        .unwrap();
    assert_eq!(
        s.other_messages(),
        vec![json!({"type": "conversation.item.whatever", "x": 1})]
    );
    assert_eq!(
        types(
            &s.messages()
                .into_iter()
                .map(|m| m.message)
                .collect::<Vec<_>>()
        ),
        [
            "session.update",
            "reply.create",
            "conversation.item.whatever"
        ]
    );
    assert!(s.session_ready_sent());
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
    c.close(1000).await;
    assert!(matches!(c.recv().await, Msg::Close(Some(1000))));
    assert_eq!(s.wait_closed(T).await.unwrap(), Some(1000));
}

#[tokio::test]
async fn assemblyai_protocol_errors() {
    // Audio before session.ready (ready comes 300 ms after the update).
    let mut cfg = AssemblyAiConfig::new();
    cfg.ready_delay = Some(Duration::from_millis(300));
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.send(aai_update()).await;
    c.send(aai_audio(&[1; 160])).await;
    let s = mock.next_session(T).await.unwrap();
    let errs = s.wait_protocol_errors(1, T).await.unwrap();
    assert!(errs[0].contains("before session.ready"), "{errs:?}");
    assert_eq!(c.recv_json().await["type"], "session.ready");
    c.send(aai_audio(&[2; 160])).await;
    s.wait_user_audio_bytes(320, T).await.unwrap();
    assert_eq!(s.protocol_errors().len(), 1);

    // A first message that is not session.update; then invalid JSON, binary, no type, bad
    // base64; session.ready only after a later session.update.
    let mock = assemblyai_sim::start(AssemblyAiConfig::new())
        .await
        .unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.send(aai_audio(&[1; 160])).await;
    let s = mock.next_session(T).await.unwrap();
    assert!(s.init_message(T).await.is_err());
    c.send_raw("{nope").await;
    c.send_binary(&[1, 2, 3]).await;
    c.send(json!({"audio": "AAAA"})).await;
    c.send(json!({"type": "input.audio", "audio": "***"})).await;
    c.send(aai_update()).await;
    assert_eq!(c.recv_json().await["type"], "session.ready");
    let errs = s.wait_protocol_errors(6, T).await.unwrap();
    assert!(
        errs[0].contains("first message is not session.update"),
        "{errs:?}"
    );
    assert!(errs[1].contains("before session.ready"), "{errs:?}");
    assert!(errs[2].contains("invalid JSON"), "{errs:?}");
    assert!(errs[3].contains("binary frame"), "{errs:?}");
    assert!(errs[4].contains("no string `type`"), "{errs:?}");
    assert!(errs[5].contains("not valid base64"), "{errs:?}");
    assert_eq!(s.user_audio(), vec![1; 160]);
}

#[tokio::test]
async fn assemblyai_reply_with_barge_in() {
    let reply: Vec<u8> = (0..8000u32).map(|i| 0x10 + (i % 200) as u8).collect();
    let r = ReplyScript {
        after_user_bytes: 320,
        think_time: Duration::from_millis(10),
        chunk_bytes: 2000,
        chunk_interval: Duration::from_millis(5),
        interrupt_after_chunks: Some(2),
        ..ReplyScript::new(Arc::new(reply.clone()))
    };
    let mock = assemblyai_sim::start(AssemblyAiConfig::new().with_behavior(Behavior::Reply(r)))
        .await
        .unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.send(aai_update()).await;
    assert_eq!(c.recv_json().await["type"], "session.ready");
    c.send(aai_audio(&[0xFF; 160])).await;
    c.send(aai_audio(&[0xFF; 160])).await;
    let first = c.recv_until("reply.done").await;
    assert_eq!(
        types(&first),
        [
            "input.speech.started",
            "input.speech.stopped",
            "transcript.user",
            "reply.started",
            "reply.audio",
            "reply.audio",
            "input.speech.started",
            "transcript.agent",
            "reply.done",
        ]
    );
    assert_eq!(first[3]["reply_id"], "reply_1");
    assert_eq!(first[7]["interrupted"], true);
    assert_eq!(first[7]["reply_id"], "reply_1");
    assert_eq!(first[8]["status"], "interrupted");
    let mut heard: Vec<u8> = first[4..6]
        .iter()
        .flat_map(|m| b64_field(m, "data"))
        .collect();
    // Two stale chunks of the cut reply, after reply.done.
    for _ in 0..2 {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "reply.audio");
        assert_eq!(b64_field(&m, "data"), vec![STALE_AUDIO_BYTE; 2000]);
    }
    let rest = c.recv_until("reply.done").await;
    assert_eq!(
        types(&rest),
        [
            "reply.started",
            "reply.audio",
            "reply.audio",
            "transcript.agent",
            "reply.done"
        ]
    );
    assert_eq!(rest[0]["reply_id"], "reply_2");
    assert_eq!(rest[3]["interrupted"], false);
    assert_eq!(rest[4]["status"], "completed");
    heard.extend(rest[1..3].iter().flat_map(|m| b64_field(m, "data")));
    assert_eq!(heard, reply);
    let s = mock.next_session(T).await.unwrap();
    wait_replies(&s, 1).await;
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

/// Waits until the session has finished `n` scripted replies.
async fn wait_replies<D: Dialect>(s: &SessionHandle<D>, n: usize) {
    for _ in 0..500 {
        if s.replies_done() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("replies_done stayed {}", s.replies_done());
}

#[tokio::test]
async fn assemblyai_tool_calls_errors_and_end() {
    let steps = vec![
        Step::new(
            Wait::UserBytes(160),
            Action::ToolCall {
                call_id: "call_1".into(),
                name: "lookup_order".into(),
                arguments: json!({"order": "42"}),
            },
        ),
        Step::new(
            Wait::ClientMessages {
                kind: "tool.result".into(),
                count: 1,
            },
            Action::Text(r#"{"code":"invalid_audio","message":"bad audio"}"#.into()),
        ),
        Step::new(
            Wait::Now,
            Action::Error {
                code: "invalid_value".into(),
                message: "m".into(),
            },
        ),
        Step::new(Wait::For(Duration::from_millis(10)), Action::End),
    ];
    let mut cfg = AssemblyAiConfig::new().with_steps(steps);
    cfg.tool_args_field = ToolArgsField::Args;
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.send(aai_update()).await;
    assert_eq!(c.recv_json().await["type"], "session.ready");
    c.send(aai_audio(&[0xFF; 160])).await;
    let call = c.recv_json().await;
    assert_eq!(
        call,
        json!({"type":"tool.call","call_id":"call_1","name":"lookup_order","args":{"order":"42"}})
    );
    c.send(json!({"type":"tool.result","call_id":"call_1","result":"{\"status\":\"shipped\"}"}))
        .await;
    let err = c.recv_json().await;
    assert_eq!(err, json!({"code":"invalid_audio","message":"bad audio"}));
    assert_eq!(
        c.recv_json().await,
        json!({"type":"session.error","code":"invalid_value","message":"m"})
    );
    assert_eq!(c.recv_json().await, json!({"type":"session.ended"}));

    let s = mock.next_session(T).await.unwrap();
    let results = s.wait_tool_results(1, T).await.unwrap();
    assert_eq!(results[0].call_id, "call_1");
    assert_eq!(results[0].output, r#"{"status":"shipped"}"#);
    assert!(results[0].at >= s.user_audio_chunk_times()[0]);
    // Manual commands alongside the script.
    s.send_tool_call("call_2", "end_call", json!({})).await;
    assert_eq!(c.recv_json().await["args"], json!({}));
    s.send_typeless_error("UNAUTHORIZED", "bad key").await;
    assert_eq!(
        c.recv_json().await,
        json!({"code":"UNAUTHORIZED","message":"bad key"})
    );
    s.send_agent_audio(&[7; 160]).await;
    assert_eq!(b64_field(&c.recv_json().await, "data"), vec![7; 160]);
    s.close(1011, "internal").await;
    assert!(matches!(c.recv().await, Msg::Close(Some(1011))));
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

// --- OpenAI Realtime ----------------------------------------------------------------------

fn oai_update() -> Value {
    json!({"type":"session.update","session":{
        "type":"realtime","output_modalities":["audio"],
        "audio":{"input":{"format":{"type":"audio/pcmu"},"turn_detection":{"type":"server_vad"}},
                 "output":{"format":{"type":"audio/pcmu"},"voice":"alloy"}},
        "instructions":"Be brief."}})
}

fn oai_audio(bytes: &[u8]) -> Value {
    json!({"type":"input_audio_buffer.append","audio":B64.encode(bytes)})
}

#[tokio::test]
async fn openai_refuses_bad_keys_paths_and_models() {
    let mut cfg = RealtimeConfig::new();
    cfg.model = Some("gpt-realtime".into());
    let mock = openai_sim::start(cfg).await.unwrap();
    let url = mock.ws_url();
    assert!(url.ends_with("/v1/realtime?model=gpt-realtime"), "{url}");
    assert_eq!(Client::connect(&url, &[]).await.err(), Some(401));
    let base = format!("ws://{}", mock.addr());
    assert_eq!(
        Client::connect(&format!("{base}/v1/realtime"), &[BEARER])
            .await
            .err(),
        Some(400)
    );
    assert_eq!(
        Client::connect(&format!("{base}/v1/realtime?model=gpt-4o"), &[BEARER])
            .await
            .err(),
        Some(400)
    );
    assert_eq!(
        Client::connect(&format!("{base}/v1/ws?model=gpt-realtime"), &[BEARER])
            .await
            .err(),
        Some(404)
    );
    let mut c = Client::connect(&url, &[BEARER]).await.unwrap();
    let created = c.recv_json().await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(
        created["session"]["audio"]["input"]["format"]["type"],
        "audio/pcm"
    );
    let s = mock.next_session(T).await.unwrap();
    assert_eq!(s.model(), "gpt-realtime");
}

#[tokio::test]
async fn openai_echo_in_small_deltas_and_formats() {
    let mut cfg = RealtimeConfig::new().with_behavior(Behavior::Echo);
    cfg.echo_chunk_bytes = 80;
    let mock = openai_sim::start(cfg).await.unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    assert_eq!(c.recv_json().await["type"], "session.created");
    c.send(oai_update()).await;
    let updated = c.recv_json().await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(
        updated["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(
        updated["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(updated["session"]["id"], "sess_1");
    let audio: Vec<u8> = (0..480u32).map(|i| (i * 7 % 256) as u8).collect();
    for f in audio.chunks(160) {
        c.send(oai_audio(f)).await;
    }
    let mut echoed = Vec::new();
    let mut item = None;
    for _ in 0..6 {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "response.output_audio.delta");
        let it = m["item_id"].as_str().unwrap().to_owned();
        assert_eq!(*item.get_or_insert(it.clone()), it);
        let d = b64_field(&m, "delta");
        assert_eq!(d.len(), 80);
        echoed.extend(d);
    }
    assert_eq!(echoed, audio);
    let s = mock.next_session(T).await.unwrap();
    assert_eq!(s.item_audio_ms(item.as_deref().unwrap()), Some(60));
    assert_eq!(
        s.init_message(T).await.unwrap()["session"]["instructions"],
        "Be brief."
    );
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());

    // A server reporting other formats than were asked for.
    let mut cfg = RealtimeConfig::new();
    cfg.reported_format = Some("audio/pcm".into());
    let mock = openai_sim::start(cfg).await.unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.recv_json().await;
    c.send(oai_update()).await;
    let updated = c.recv_json().await;
    assert_eq!(
        updated["session"]["audio"]["output"]["format"]["type"],
        "audio/pcm"
    );
    assert_eq!(updated["session"]["audio"]["output"]["voice"], "alloy");
}

#[tokio::test]
async fn openai_reply_with_barge_in_and_truncates() {
    let reply: Vec<u8> = (0..1600u32).map(|i| 0x10 + (i % 200) as u8).collect();
    let r = ReplyScript {
        after_user_bytes: 160,
        chunk_bytes: 80, // 10 ms deltas
        chunk_interval: Duration::from_millis(2),
        interrupt_after_chunks: Some(5),
        ..ReplyScript::new(Arc::new(reply.clone()))
    };
    let mock = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Reply(r)))
        .await
        .unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.recv_json().await;
    c.send(oai_update()).await;
    assert_eq!(c.recv_json().await["type"], "session.updated");
    c.send(oai_audio(&[0xFF; 160])).await;
    let first = c.recv_until("response.done").await;
    let mut expect = vec![
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
    ];
    expect.extend(["response.output_audio.delta"; 5]);
    expect.push("input_audio_buffer.speech_started");
    expect.extend(["response.output_audio.delta"; 2]);
    expect.push("response.done");
    assert_eq!(types(&first), expect);
    assert_eq!(first[0]["audio_start_ms"], 0);
    let item = first[4]["item_id"].as_str().unwrap().to_owned();
    let mut heard: Vec<u8> = first[4..9]
        .iter()
        .flat_map(|m| b64_field(m, "delta"))
        .collect();
    for stale in &first[10..12] {
        assert_eq!(stale["item_id"], item.as_str());
        assert_eq!(b64_field(stale, "delta"), vec![STALE_AUDIO_BYTE; 80]);
    }
    assert_eq!(first[12]["response"]["status"], "cancelled");

    // 50 ms played (5 deltas): accepted; past the 70 ms sent: refused like the real API.
    c.send(json!({"type":"conversation.item.truncate","item_id":item,"content_index":0,"audio_end_ms":50}))
        .await;
    c.send(json!({"type":"conversation.item.truncate","item_id":item,"content_index":0,"audio_end_ms":71}))
        .await;
    let mut answers = Vec::new();
    let mut rest = Vec::new();
    while answers.len() < 2
        || rest
            .last()
            .is_none_or(|m: &Value| m["type"] != "response.done")
    {
        let m = c.recv_json().await;
        match m["type"].as_str() {
            Some("conversation.item.truncated") | Some("error") => answers.push(m),
            _ => rest.push(m),
        }
    }
    assert_eq!(
        answers[0],
        json!({"type":"conversation.item.truncated","item_id":item,"content_index":0,"audio_end_ms":50})
    );
    assert_eq!(answers[1]["type"], "error");
    assert_eq!(answers[1]["error"]["type"], "invalid_request_error");
    assert_eq!(answers[1]["error"]["param"], "audio_end_ms");
    // The rest of the reply is a new response with a new item.
    assert_eq!(rest[0]["type"], "response.created");
    let n = rest.len();
    assert_eq!(
        types(&rest[n - 3..]),
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.done"
        ]
    );
    assert_eq!(rest[n - 1]["response"]["status"], "completed");
    for d in &rest[1..n - 3] {
        assert_eq!(d["type"], "response.output_audio.delta");
        assert_ne!(d["item_id"], item.as_str());
        heard.extend(b64_field(d, "delta"));
    }
    assert_eq!(heard, reply);

    let s = mock.next_session(T).await.unwrap();
    let t = s.wait_truncates(2, T).await.unwrap();
    assert_eq!(
        (t[0].audio_end_ms, t[0].accepted, t[0].sent_ms),
        (50, true, Some(70))
    );
    assert_eq!((t[1].audio_end_ms, t[1].accepted), (71, false));
    let errs = s.protocol_errors();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("truncate refused"), "{errs:?}");
}

#[tokio::test]
async fn openai_tool_calls_keypad_and_errors() {
    let steps = vec![
        Step::new(
            Wait::UserBytes(160),
            Action::ToolCall {
                call_id: "call_1".into(),
                name: "lookup_order".into(),
                arguments: json!({"order": "42"}),
            },
        ),
        Step::new(
            Wait::ClientMessages {
                kind: "response.create".into(),
                count: 3,
            },
            Action::Error {
                code: "invalid_value".into(),
                message: "bad".into(),
            },
        ),
        Step::new(Wait::Now, Action::End),
    ];
    let mock = openai_sim::start(RealtimeConfig::new().with_steps(steps))
        .await
        .unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.recv_json().await;
    c.send(oai_update()).await;
    c.send(json!({"type":"response.create","response":{"instructions":"Greet the caller."}}))
        .await;
    assert_eq!(c.recv_json().await["type"], "session.updated");
    c.send(oai_audio(&[0xFF; 160])).await;
    let call = c.recv_json().await;
    assert_eq!(call["type"], "response.function_call_arguments.done");
    assert_eq!(call["call_id"], "call_1");
    assert_eq!(call["name"], "lookup_order");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"order": "42"}));
    c.send(json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"call_1","output":"{\"status\":\"shipped\"}"}}))
        .await;
    c.send(json!({"type":"response.create"})).await;
    c.send(json!({"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"The caller pressed 7 on the phone keypad."}]}}))
        .await;
    c.send(json!({"type":"response.create"})).await;
    let err = c.recv_json().await;
    assert_eq!(
        err["error"],
        json!({"type":"invalid_request_error","code":"invalid_value","message":"bad","param":null,"event_id":null})
    );
    assert!(matches!(c.recv().await, Msg::Close(Some(1000))));

    let s = mock.next_session(T).await.unwrap();
    let results = s.wait_tool_results(1, T).await.unwrap();
    assert_eq!(results[0].call_id, "call_1");
    assert_eq!(results[0].output, r#"{"status":"shipped"}"#);
    let keys = s.wait_text_inputs(1, T).await.unwrap();
    assert_eq!(keys[0].text, "The caller pressed 7 on the phone keypad.");
    assert!(results[0].at <= keys[0].at);
    let creates = s.messages_of_type("response.create");
    assert_eq!(creates.len(), 3);
    assert_eq!(
        creates[0].message["response"]["instructions"],
        "Greet the caller."
    );
    assert!(creates[1].at >= results[0].at);
    let kinds: Vec<String> = s
        .messages()
        .iter()
        .filter_map(|m| m.kind().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "response.create",
            "conversation.item.create",
            "response.create",
            "conversation.item.create",
            "response.create"
        ]
    );
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

#[tokio::test]
async fn openai_protocol_errors_and_garbage() {
    let mock = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Garbage))
        .await
        .unwrap();
    let mut c = Client::connect(&mock.ws_url(), &[BEARER]).await.unwrap();
    c.recv_json().await;
    c.send(oai_audio(&[1; 160])).await;
    // Garbage after the first message: not JSON, binary, then a valid delta of silence.
    assert!(matches!(c.recv().await, Msg::Text(t) if t == "this is not JSON {"));
    assert!(matches!(c.recv().await, Msg::Binary(b) if b == [0xde, 0xad, 0xbe, 0xef]));
    let d = c.recv_json().await;
    assert_eq!(d["type"], "response.output_audio.delta");
    assert_eq!(
        b64_field(&d, "delta"),
        vec![0xFF; loadtest::agent_sim::GARBAGE_FOLLOWUP_AUDIO_BYTES]
    );
    let s = mock.next_session(T).await.unwrap();
    assert!(s.init_message(T).await.is_err());
    c.send(json!({"type":"conversation.item.truncate","item_id":"item_999","content_index":0,"audio_end_ms":10}))
        .await;
    assert_eq!(c.recv_json().await["error"]["code"], "item_not_found");
    c.send(json!({"type":"conversation.item.truncate"})).await;
    assert_eq!(
        c.recv_json().await["error"]["code"],
        "missing_required_parameter"
    );
    c.send(oai_update()).await;
    assert_eq!(c.recv_json().await["type"], "session.updated");
    let errs = s.wait_protocol_errors(3, T).await.unwrap();
    assert!(
        errs[0].contains("first message is not session.update"),
        "{errs:?}"
    );
    assert!(errs[1].contains("truncate refused"), "{errs:?}");
    assert!(errs[2].contains("without a string item_id"), "{errs:?}");
    // The client goes away without a Close frame.
    drop(c);
    assert_eq!(s.wait_closed(T).await.unwrap(), None);
}
