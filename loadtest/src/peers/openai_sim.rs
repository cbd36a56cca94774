//! Mock OpenAI Realtime API (GA) server: the OpenAI dialect of the shared mock server
//! ([`crate::peers::mock_server`]), from OpenAI's public Realtime API reference
//! (<https://platform.openai.com/docs/api-reference/realtime>).
//!
//! Route: `GET /v1/realtime?model=<model>` WebSocket upgrade. With [`RealtimeConfig::api_key`]
//! set, header `Authorization: Bearer <key>` must match, else 401. A missing `model` → 400;
//! with [`RealtimeConfig::model`] set, another model → 400. Other paths → 404; not an
//! upgrade request → 400.
//!
//! On accept the server sends `session.created` (with the API's defaults: `audio/pcm` at
//! 24 kHz both ways — a relay must not take that for its configuration). The client's first
//! message must be `session.update`; every `session.update` is answered with
//! `session.updated` echoing the requested session (with `id`; see
//! [`RealtimeConfig::reported_format`] to report other formats).
//!
//! Client → server (what is recorded where):
//!
//! | message | recorded as |
//! |---|---|
//! | `session.update` (first) | [`SessionHandle::init_message`]; later ones in [`SessionHandle::other_messages`] |
//! | `input_audio_buffer.append{audio}` | caller audio ([`SessionHandle::user_audio`], …) |
//! | `conversation.item.truncate{item_id,content_index,audio_end_ms}` | [`SessionHandle::truncates`]; answered `conversation.item.truncated`, or `error` (and a protocol error) when `audio_end_ms` exceeds the audio sent for that item or the item is unknown |
//! | `conversation.item.create` of a `function_call_output` | [`SessionHandle::tool_results`] |
//! | `conversation.item.create` of a user `message` (the relay's keypad digits) | [`SessionHandle::text_inputs`] |
//! | `response.create` and any other type | [`SessionHandle::other_messages`] |
//!
//! Every parsed message except audio is also in [`SessionHandle::messages`], in order (so
//! e.g. `messages_of_type("response.create")` shows the one after a tool result).
//!
//! Agent audio is `response.output_audio.delta{item_id,delta}`; each scripted reply is a new
//! response with a new item. Replies, barge-in and tool calls are described in
//! [`crate::peers::mock_server::script`].
//!
//! In a relay test (the relay started with `--agent openai --openai-realtime-url
//! <mock.ws_url()>` and `OPENAI_API_KEY=test-key`, then a call run against it):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use loadtest::mock_server::script::{Behavior, ReplyScript};
//! use loadtest::openai_sim::{self, RealtimeConfig};
//!
//! const T: Duration = Duration::from_secs(10);
//! let reply = Arc::new(vec![0x55u8; 8000]);
//! let mock = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Reply(
//!     ReplyScript {
//!         after_user_bytes: 1600,
//!         chunk_bytes: 80, // 10 ms deltas
//!         chunk_interval: std::time::Duration::from_millis(5),
//!         interrupt_after_chunks: Some(30), // speech_started after 300 ms of reply
//!         ..ReplyScript::new(reply)
//!     },
//! )))
//! .await?;
//! // … start the relay with mock.ws_url(), run a call …
//! let s = mock.next_session(T).await?;
//! let init = s.init_message(T).await?; // the first session.update
//! assert_eq!(init["session"]["audio"]["output"]["format"]["type"], "audio/pcmu");
//! let t = s.wait_truncates(1, T).await?; // what the relay says the caller heard
//! assert!(t[0].accepted && t[0].audio_end_ms <= t[0].sent_ms.unwrap());
//! assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::peers::agent_sim::{GARBAGE_FOLLOWUP_AUDIO_BYTES, STALE_AUDIO_BYTE};
use crate::peers::mock_server::script::{
    self, Action, Behavior, Exchanges, ReplyScript, Scripted, Speaking, Step, TextInput, ToolResult,
};
use crate::peers::mock_server::{
    bearer_matches, json_response, query_param, Dialect, MockServer, Outgoing, Route, SessionHandle,
};
use crate::{truncate, MULAW_BYTES_PER_MS};

/// Path of the Realtime WebSocket.
pub const WS_PATH: &str = "/v1/realtime";

/// Items whose sent audio is remembered per session (for truncate checks); older ones are
/// forgotten (a truncate naming them gets an error).
pub const MAX_TRACKED_ITEMS: usize = 1024;

/// Configuration of a [`MockRealtime`].
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// If `Some`, the upgrade needs `Authorization: Bearer <key>` (else 401).
    pub api_key: Option<String>,
    /// If `Some`, the only model served (the `model` query parameter must equal it).
    pub model: Option<String>,
    /// Scripted behaviour of every session.
    pub behavior: Behavior,
    /// Timed steps of every session (tool calls, errors, raw frames, close, …).
    pub steps: Vec<Step>,
    /// [`Behavior::Echo`] splits each caller message into deltas of this many bytes (0 = one
    /// delta per caller message, same bytes).
    pub echo_chunk_bytes: usize,
    /// `None`: `session.updated` echoes the requested audio formats. `Some(t)`: it reports
    /// format type `t` (e.g. `"audio/pcm"`) for input and output instead.
    pub reported_format: Option<String>,
}

impl RealtimeConfig {
    /// API key `test-key`, any model, [`Behavior::Silent`], no steps, echo as received,
    /// formats echoed.
    pub fn new() -> Self {
        RealtimeConfig {
            api_key: Some("test-key".into()),
            model: None,
            behavior: Behavior::Silent,
            steps: Vec::new(),
            echo_chunk_bytes: 0,
            reported_format: None,
        }
    }

    /// This config with `behavior`.
    pub fn with_behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// This config with `steps`.
    pub fn with_steps(mut self, steps: Vec<Step>) -> Self {
        self.steps = steps;
        self
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A `conversation.item.truncate` the client sent.
#[derive(Debug, Clone)]
pub struct Truncate {
    /// The item it names.
    pub item_id: String,
    /// Its `content_index` (`-1` if missing or not an integer).
    pub content_index: i64,
    /// Its `audio_end_ms`.
    pub audio_end_ms: u64,
    /// Milliseconds of audio the mock had sent for that item when the truncate arrived
    /// (`None`: unknown item).
    pub sent_ms: Option<u64>,
    /// Whether the mock answered `conversation.item.truncated` (else it sent `error`).
    pub accepted: bool,
    /// The whole message.
    pub message: Value,
    /// When it was read.
    pub at: Instant,
}

/// The OpenAI Realtime dialect (its configuration).
pub struct OpenAiRealtime {
    config: RealtimeConfig,
}

impl OpenAiRealtime {
    /// The server's configuration.
    pub fn config(&self) -> &RealtimeConfig {
        &self.config
    }
}

/// OpenAI-specific recorded state of one session.
#[derive(Default)]
pub struct RealtimeState {
    /// Responses started (`resp_<n>`).
    responses: u64,
    /// Items created (`item_<n>`), agent and user.
    items: u64,
    /// The agent item audio goes to (the current or last reply's).
    current_item: Option<String>,
    /// Bytes of audio sent per agent item (most recent last; bounded).
    item_audio: Vec<(String, usize)>,
    truncates: Vec<Truncate>,
    exchanges: Exchanges,
}

impl RealtimeState {
    fn new_item(&mut self) -> String {
        self.items += 1;
        format!("item_{}", self.items)
    }

    fn new_agent_item(&mut self) -> String {
        let id = self.new_item();
        if self.item_audio.len() >= MAX_TRACKED_ITEMS {
            self.item_audio.remove(0);
        }
        self.item_audio.push((id.clone(), 0));
        self.current_item = Some(id.clone());
        id
    }

    /// The current agent item (a new one if none).
    fn agent_item(&mut self) -> String {
        match &self.current_item {
            Some(i) => i.clone(),
            None => self.new_agent_item(),
        }
    }

    fn add_audio(&mut self, item: &str, n: usize) {
        if let Some(e) = self.item_audio.iter_mut().rev().find(|(i, _)| i == item) {
            e.1 += n;
        }
    }
}

/// A running mock OpenAI Realtime server. Dropping it stops accepting new connections.
pub type MockRealtime = MockServer<OpenAiRealtime>;

/// A test's handle on one OpenAI Realtime session (cheap to clone).
pub type RealtimeSession = SessionHandle<OpenAiRealtime>;

/// Starts a mock OpenAI Realtime server on `127.0.0.1:0`.
pub async fn start(config: RealtimeConfig) -> anyhow::Result<MockRealtime> {
    if let Behavior::Reply(ReplyScript { chunk_bytes: 0, .. }) = config.behavior {
        bail!("ReplyScript::chunk_bytes must be > 0");
    }
    crate::peers::mock_server::serve(OpenAiRealtime { config }).await
}

impl MockServer<OpenAiRealtime> {
    /// `ws://127.0.0.1:<port>/v1/realtime?model=<model>` (the configured model, else
    /// `gpt-realtime`): the value for the relay's `--openai-realtime-url`.
    pub fn ws_url(&self) -> String {
        let model = self
            .dialect()
            .config
            .model
            .as_deref()
            .unwrap_or("gpt-realtime");
        format!(
            "ws://{}{WS_PATH}?model={}",
            self.addr(),
            crate::peers::mock_server::encode_query_value(model)
        )
    }
}

impl SessionHandle<OpenAiRealtime> {
    /// The `model` query parameter of the upgrade request.
    pub fn model(&self) -> String {
        let uri = self.request_uri();
        let q = uri.split_once('?').map_or("", |(_, q)| q);
        crate::peers::mock_server::parse_query(q)
            .into_iter()
            .find(|(k, _)| k == "model")
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// Truncates received, in order.
    pub fn truncates(&self) -> Vec<Truncate> {
        self.read(|s| s.x.truncates.clone())
    }

    /// Waits until at least `n` truncates have arrived; returns them all.
    pub async fn wait_truncates(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Truncate>> {
        self.wait_state(
            timeout,
            |s| format!("{n} truncate(s) (have {})", s.x.truncates.len()),
            |s| (s.x.truncates.len() >= n).then(|| s.x.truncates.clone()),
        )
        .await
    }

    /// The agent item audio currently goes to (the current or last reply's), if any.
    pub fn current_item(&self) -> Option<String> {
        self.read(|s| s.x.current_item.clone())
    }

    /// Milliseconds of agent audio sent so far for `item_id` (`None`: unknown item).
    pub fn item_audio_ms(&self, item_id: &str) -> Option<u64> {
        self.read(|s| {
            s.x.item_audio
                .iter()
                .find(|(i, _)| i == item_id)
                .map(|(_, b)| (*b / MULAW_BYTES_PER_MS) as u64)
        })
    }

    /// Sends a `response.output_audio.delta` of `audio` for `item_id` (counted for truncate
    /// checks if the mock created that item).
    pub async fn send_delta(&self, item_id: &str, audio: &[u8]) {
        let msg = self.update(|s| {
            s.x.add_audio(item_id, audio.len());
            delta(&format!("resp_{}", s.x.responses), item_id, audio)
        });
        self.send_all(vec![msg]).await;
    }

    fn audio_ms(&self) -> u64 {
        self.read(|s| (s.audio_total / MULAW_BYTES_PER_MS) as u64)
    }
}

fn delta(response_id: &str, item_id: &str, audio: &[u8]) -> Outgoing {
    let mut s = String::with_capacity(160 + audio.len() * 4 / 3);
    s.push_str(r#"{"type":"response.output_audio.delta","response_id":""#);
    s.push_str(response_id);
    s.push_str(r#"","item_id":""#);
    s.push_str(item_id);
    s.push_str(r#"","output_index":0,"content_index":0,"delta":""#);
    B64.encode_string(audio, &mut s);
    s.push_str(r#""}"#);
    Outgoing::Text(s)
}

fn error_event(code: &str, message: &str, param: Option<&str>) -> Outgoing {
    json!({
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": null,
        }
    })
    .into()
}

fn speech_started(audio_start_ms: u64, item_id: &str) -> Outgoing {
    json!({
        "type": "input_audio_buffer.speech_started",
        "audio_start_ms": audio_start_ms,
        "item_id": item_id,
    })
    .into()
}

impl OpenAiRealtime {
    /// `session.updated` for the requested `session.update`.
    fn session_updated(&self, s: &RealtimeSession, update: &Value) -> Outgoing {
        let mut session = match update.get("session") {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => json!({}),
        };
        session["id"] = json!(s.id());
        session["object"] = json!("realtime.session");
        if let Some(t) = &self.config.reported_format {
            for dir in ["input", "output"] {
                if !session["audio"].is_object() {
                    session["audio"] = json!({});
                }
                if !session["audio"][dir].is_object() {
                    session["audio"][dir] = json!({});
                }
                session["audio"][dir]["format"] = json!({"type": t, "rate": 24000});
            }
        }
        json!({"type": "session.updated", "session": session}).into()
    }

    fn truncate(&self, s: &RealtimeSession, msg: &Value, raw: &str) -> Vec<Outgoing> {
        let item_id = msg.get("item_id").and_then(Value::as_str);
        let end = msg.get("audio_end_ms").and_then(Value::as_u64);
        let (Some(item_id), Some(end)) = (item_id, end) else {
            s.protocol_error(format!(
                "conversation.item.truncate without a string item_id and an integer audio_end_ms: {}",
                truncate(raw, 200)
            ));
            return vec![error_event(
                "missing_required_parameter",
                "item_id and audio_end_ms are required",
                None,
            )];
        };
        let content_index = msg
            .get("content_index")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let sent = s.read(|st| {
            st.x.item_audio
                .iter()
                .find(|(i, _)| i == item_id)
                .map(|(_, b)| *b)
        });
        let sent_ms = sent.map(|b| (b / MULAW_BYTES_PER_MS) as u64);
        let (accepted, out) = match sent {
            None => (
                false,
                error_event(
                    "item_not_found",
                    &format!("Item with item_id '{item_id}' not found."),
                    Some("item_id"),
                ),
            ),
            Some(_) if content_index != 0 => (
                false,
                error_event(
                    "invalid_value",
                    &format!(
                        "Invalid content_index {content_index}: the item has one audio part (0)."
                    ),
                    Some("content_index"),
                ),
            ),
            Some(b) if end.saturating_mul(MULAW_BYTES_PER_MS as u64) > b as u64 => (
                false,
                error_event(
                    "invalid_value",
                    &format!(
                        "Audio content of {}ms is already shorter than {end}ms",
                        sent_ms.unwrap_or(0)
                    ),
                    Some("audio_end_ms"),
                ),
            ),
            Some(_) => (
                true,
                json!({
                    "type": "conversation.item.truncated",
                    "item_id": item_id,
                    "content_index": content_index,
                    "audio_end_ms": end,
                })
                .into(),
            ),
        };
        if !accepted {
            s.protocol_error(format!(
                "conversation.item.truncate refused (item {item_id}, content_index {content_index}, audio_end_ms {end}, sent {sent_ms:?} ms)"
            ));
        }
        let t = Truncate {
            item_id: item_id.to_owned(),
            content_index,
            audio_end_ms: end,
            sent_ms,
            accepted,
            message: msg.clone(),
            at: Instant::now(),
        };
        s.update(|st| {
            let dropped = &mut st.dropped;
            crate::peers::mock_server::push_capped(&mut st.x.truncates, t, dropped);
        });
        vec![out]
    }

    fn item_create(&self, s: &RealtimeSession, msg: &Value, raw: &str) {
        let now = Instant::now();
        let item = msg.get("item").unwrap_or(&Value::Null);
        match item.get("type").and_then(Value::as_str) {
            Some("function_call_output") => {
                let call_id = item.get("call_id").and_then(Value::as_str);
                if call_id.is_none() {
                    s.protocol_error(format!(
                        "function_call_output without a string call_id: {}",
                        truncate(raw, 200)
                    ));
                }
                let output = match item.get("output") {
                    Some(Value::String(o)) => o.clone(),
                    other => {
                        s.protocol_error(format!(
                            "function_call_output.output is not a string: {}",
                            truncate(raw, 200)
                        ));
                        other.map(Value::to_string).unwrap_or_default()
                    }
                };
                s.record_tool_result(ToolResult {
                    call_id: call_id.unwrap_or_default().to_owned(),
                    output,
                    message: msg.clone(),
                    at: now,
                });
            }
            Some("message") if item.get("role").and_then(Value::as_str) == Some("user") => {
                let parts = item.get("content").and_then(Value::as_array);
                let texts: Vec<&str> = parts
                    .map(|p| {
                        p.iter()
                            .filter(|c| c.get("type").and_then(Value::as_str) == Some("input_text"))
                            .filter_map(|c| c.get("text").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                if texts.is_empty() {
                    s.protocol_error(format!(
                        "user message item without input_text content: {}",
                        truncate(raw, 200)
                    ));
                }
                s.record_text_input(TextInput {
                    text: texts.join(""),
                    message: msg.clone(),
                    at: now,
                });
            }
            _ => s.update(|st| st.push_other(msg.clone())),
        }
    }
}

impl Dialect for OpenAiRealtime {
    type State = RealtimeState;
    const INIT_TYPE: &'static str = "session.update";

    fn session_id(&self, n: usize) -> String {
        format!("sess_{n}")
    }

    fn route(&self, _addr: SocketAddr, req: &Request<Incoming>) -> Route {
        let fail = |status, code: &str, message: &str| {
            Route::Respond(json_response(
                status,
                json!({"error": {"type": "invalid_request_error", "code": code, "message": message}})
                    .to_string(),
            ))
        };
        if req.method() != hyper::Method::GET {
            return fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            );
        }
        if req.uri().path() != WS_PATH {
            return fail(StatusCode::NOT_FOUND, "not_found", "not found");
        }
        if let Some(key) = &self.config.api_key {
            if !bearer_matches(req, key) {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "Incorrect API key provided.",
                );
            }
        }
        match (query_param(req, "model"), &self.config.model) {
            (None, _) => fail(
                StatusCode::BAD_REQUEST,
                "missing_model",
                "model is required",
            ),
            (Some(m), Some(want)) if &m != want => fail(
                StatusCode::BAD_REQUEST,
                "model_not_found",
                "The model does not exist.",
            ),
            _ => Route::Accept,
        }
    }

    fn is_audio(&self, msg: &Value) -> bool {
        msg.get("type").and_then(Value::as_str) == Some("input_audio_buffer.append")
    }

    /// `session.created` with the API's defaults (PCM 24 kHz, not what the relay wants).
    fn on_open(&self, s: &RealtimeSession) -> Vec<Outgoing> {
        vec![json!({
            "type": "session.created",
            "session": {
                "id": s.id(),
                "object": "realtime.session",
                "type": "realtime",
                "model": s.model(),
                "output_modalities": ["audio"],
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000},
                              "turn_detection": {"type": "server_vad"}},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
                },
            }
        })
        .into()]
    }

    fn on_first(&self, s: &RealtimeSession, init: bool) -> Vec<Outgoing> {
        let mut outs = Vec::new();
        if init {
            let update = s.read(|st| st.init.clone()).unwrap_or_default();
            outs.push(self.session_updated(s, &update));
        }
        if let Behavior::Garbage = self.config.behavior {
            let item = s.update(|st| st.x.agent_item());
            s.update(|st| st.x.add_audio(&item, GARBAGE_FOLLOWUP_AUDIO_BYTES));
            outs.extend(script::garbage(delta(
                "resp_0",
                &item,
                &[0xFF; GARBAGE_FOLLOWUP_AUDIO_BYTES],
            )));
        }
        outs
    }

    fn start_tasks(&self, s: &RealtimeSession) -> Vec<JoinHandle<()>> {
        script::start_common(s, &self.config.behavior, &self.config.steps)
    }

    fn on_message(&self, s: &RealtimeSession, msg: Value, raw: &str) -> Vec<Outgoing> {
        if !msg.is_object() {
            s.protocol_error(format!(
                "message is not a JSON object: {}",
                truncate(raw, 200)
            ));
            return Vec::new();
        }
        match msg.get("type").and_then(Value::as_str) {
            Some("input_audio_buffer.append") => {
                let Some(audio) = s.decode_audio_field(&msg, "audio", "input_audio_buffer.append")
                else {
                    return Vec::new();
                };
                s.record_audio(&audio);
                if matches!(self.config.behavior, Behavior::Echo) {
                    return s.update(|st| {
                        let item = st.x.agent_item();
                        let resp = format!("resp_{}", st.x.responses);
                        script::pieces(&audio, self.config.echo_chunk_bytes)
                            .map(|p| {
                                st.x.add_audio(&item, p.len());
                                delta(&resp, &item, p)
                            })
                            .collect()
                    });
                }
            }
            Some("session.update") => {
                s.update(|st| st.push_other(msg.clone()));
                return vec![self.session_updated(s, &msg)];
            }
            Some("conversation.item.truncate") => return self.truncate(s, &msg, raw),
            Some("conversation.item.create") => self.item_create(s, &msg, raw),
            Some(_) => s.update(|st| st.push_other(msg.clone())),
            None => s.protocol_error(format!(
                "message has no string `type`: {}",
                truncate(raw, 200)
            )),
        }
        Vec::new()
    }
}

impl Speaking for OpenAiRealtime {
    fn reply_prelude(&self, s: &RealtimeSession, r: &ReplyScript) -> Vec<Outgoing> {
        let end = s.audio_ms();
        let start = end.saturating_sub((r.after_user_bytes / MULAW_BYTES_PER_MS) as u64);
        let item = s.update(|st| st.x.new_item());
        vec![
            speech_started(start, &item),
            json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end, "item_id": item}).into(),
            json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item,
                "content_index": 0,
                "transcript": r.user_transcript,
            })
            .into(),
        ]
    }

    fn reply_begin(&self, s: &RealtimeSession, _r: &ReplyScript) -> Vec<Outgoing> {
        let resp = s.update(|st| {
            st.x.responses += 1;
            st.x.new_agent_item();
            format!("resp_{}", st.x.responses)
        });
        vec![json!({
            "type": "response.created",
            "response": {"id": resp, "object": "realtime.response", "status": "in_progress", "output": []},
        })
        .into()]
    }

    fn reply_chunk(&self, s: &RealtimeSession, chunk: &[u8]) -> Outgoing {
        s.update(|st| {
            let item = st.x.agent_item();
            st.x.add_audio(&item, chunk.len());
            delta(&format!("resp_{}", st.x.responses), &item, chunk)
        })
    }

    fn reply_cut(&self, s: &RealtimeSession, r: &ReplyScript) -> Vec<Outgoing> {
        let heard = s.audio_ms();
        let stale = vec![STALE_AUDIO_BYTE; r.chunk_bytes];
        let (user_item, resp, d1, d2) = s.update(|st| {
            let user_item = st.x.new_item();
            let item = st.x.agent_item();
            let resp = format!("resp_{}", st.x.responses);
            st.x.add_audio(&item, 2 * stale.len());
            let d1 = delta(&resp, &item, &stale);
            let d2 = delta(&resp, &item, &stale);
            (user_item, resp, d1, d2)
        });
        vec![
            speech_started(heard, &user_item),
            d1,
            d2,
            json!({
                "type": "response.done",
                "response": {
                    "id": resp,
                    "object": "realtime.response",
                    "status": "cancelled",
                    "status_details": {"type": "cancelled", "reason": "turn_detected"},
                },
            })
            .into(),
        ]
    }

    fn reply_finish(&self, s: &RealtimeSession, r: &ReplyScript) -> Vec<Outgoing> {
        let (resp, item) = s.read(|st| {
            (
                format!("resp_{}", st.x.responses),
                st.x.current_item.clone().unwrap_or_default(),
            )
        });
        vec![
            json!({"type": "response.output_audio.done", "response_id": resp, "item_id": item,
                   "output_index": 0, "content_index": 0})
            .into(),
            json!({"type": "response.output_audio_transcript.done", "response_id": resp,
                   "item_id": item, "output_index": 0, "content_index": 0,
                   "transcript": r.agent_transcript})
            .into(),
            json!({
                "type": "response.done",
                "response": {"id": resp, "object": "realtime.response", "status": "completed"},
            })
            .into(),
        ]
    }
}

impl Scripted for OpenAiRealtime {
    fn exchanges(state: &RealtimeState) -> &Exchanges {
        &state.exchanges
    }

    fn exchanges_mut(state: &mut RealtimeState) -> &mut Exchanges {
        &mut state.exchanges
    }

    fn agent_audio(&self, s: &RealtimeSession, audio: &[u8]) -> Outgoing {
        self.reply_chunk(s, audio)
    }

    fn dialect_action(&self, s: &RealtimeSession, a: &Action) -> Vec<Outgoing> {
        match a {
            Action::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                let (resp, item) =
                    s.update(|st| (format!("resp_{}", st.x.responses), st.x.new_item()));
                // Arguments are JSON text; a string is sent as it is (e.g. malformed JSON).
                let args = match arguments {
                    Value::String(t) => t.clone(),
                    v => v.to_string(),
                };
                vec![json!({
                    "type": "response.function_call_arguments.done",
                    "response_id": resp,
                    "item_id": item,
                    "output_index": 0,
                    "call_id": call_id,
                    "name": name,
                    "arguments": args,
                })
                .into()]
            }
            Action::Error { code, message } => vec![error_event(code, message, None)],
            Action::SpeechStarted => {
                let heard = s.audio_ms();
                let item = s.update(|st| st.x.new_item());
                vec![speech_started(heard, &item)]
            }
            Action::End => vec![Outgoing::Close(1000, String::new())],
            _ => Vec::new(),
        }
    }
}
