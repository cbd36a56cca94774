//! Mock AssemblyAI Voice Agent API server: the AssemblyAI dialect of the shared mock server
//! ([`crate::peers::mock_server`]), from AssemblyAI's public Voice Agent API documentation
//! (<https://www.assemblyai.com/docs/voice-agents/voice-agent-api>).
//!
//! Route: `GET /v1/ws` WebSocket upgrade. With [`AssemblyAiConfig::api_key`] set, header
//! `Authorization: Bearer <key>` must match, else the upgrade is refused with 401. Other
//! paths → 404; not an upgrade request → 400.
//!
//! Client → server (what is recorded where):
//!
//! | message | recorded as |
//! |---|---|
//! | `{"type":"session.update","session":{…}}` — must be the first message (or `session.resume`) | [`SessionHandle::init_message`]; later ones in [`SessionHandle::other_messages`] |
//! | `{"type":"session.resume","session_id":…}` as the first message (a new socket for an existing session) | [`SessionHandle::init_message`] and [`SessionHandle::resumed_session_id`]; answered per [`AssemblyAiConfig::resume_answer`] |
//! | `{"type":"input.audio","audio":"<base64>"}` | caller audio ([`SessionHandle::user_audio`], …); before `session.ready` was sent it is also a protocol error |
//! | `{"type":"tool.result","call_id":…,"result":"<string>"}` | [`SessionHandle::tool_results`] |
//! | `{"type":"reply.create","instructions":…}` (the relay's keypad digits) | [`SessionHandle::text_inputs`] |
//! | any other type | [`SessionHandle::other_messages`] |
//!
//! Every parsed message except audio is also in [`SessionHandle::messages`], in order.
//!
//! Server → client: `session.ready{session_id}` after the first `session.update` (after
//! [`AssemblyAiConfig::ready_delay`], or never with `None`) — or, after a `session.resume`,
//! what [`ResumeAnswer`] says (by default `session.ready` carrying the resumed session's id,
//! timed the same way); then the [`Behavior`] and the [`Step`]s. Agent audio is
//! `{"type":"reply.audio","data":"<base64 μ-law>"}` (no reply id); replies, barge-in and
//! tool calls are described in [`crate::peers::mock_server::script`]. Manual
//! commands ([`SessionHandle::send_text`], [`SessionHandle::send_tool_call`], …) work
//! alongside the scripted behaviour.
//!
//! In a relay test (the relay started with `--agent assemblyai --assemblyai-url
//! <mock.ws_url()>` and `ASSEMBLYAI_API_KEY=test-key`, then a call run against it):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use loadtest::assemblyai_sim::{self, AssemblyAiConfig};
//! use loadtest::mock_server::script::{Action, Behavior, ReplyScript, Step, Wait};
//! use serde_json::json;
//!
//! const T: Duration = Duration::from_secs(10);
//! let reply = Arc::new(vec![0x55u8; 8000]);
//! let mock = assemblyai_sim::start(
//!     AssemblyAiConfig::new() // wants `Authorization: Bearer test-key`
//!         .with_behavior(Behavior::Reply(ReplyScript {
//!             after_user_bytes: 1600,
//!             interrupt_after_chunks: Some(2), // barge in after 2 chunks
//!             ..ReplyScript::new(reply)
//!         }))
//!         .with_steps(vec![Step::new(
//!             Wait::RepliesDone(1),
//!             Action::ToolCall {
//!                 call_id: "call_1".into(),
//!                 name: "lookup_order".into(),
//!                 arguments: json!({"order": "42"}),
//!             },
//!         )]),
//! )
//! .await?;
//! // … start the relay with mock.ws_url(), run a call …
//! let s = mock.next_session(T).await?;
//! let init = s.init_message(T).await?; // the first session.update
//! assert_eq!(init["session"]["input"]["format"]["encoding"], "audio/pcmu");
//! s.wait_user_audio_bytes(1600, T).await?;
//! let results = s.wait_tool_results(1, T).await?; // call id, result text, receive time
//! assert_eq!(results[0].call_id, "call_1");
//! assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
//! assert_eq!(s.wait_closed(T).await?, Some(1000));
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
    bearer_matches, json_response, Dialect, MockServer, Outgoing, Route, SessionHandle,
};
use crate::truncate;

/// Path of the Voice Agent WebSocket.
pub const WS_PATH: &str = "/v1/ws";

/// Which field a `tool.call` carries its arguments in (the documentation says `arguments`;
/// AssemblyAI's own Twilio example reads `args`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolArgsField {
    /// `"arguments": {…}`.
    #[default]
    Arguments,
    /// `"args": {…}`.
    Args,
}

/// How the mock answers a session's opening `session.resume` (the API keeps a dropped session
/// for a while; a client resumes it on a new socket).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResumeAnswer {
    /// `session.ready` carrying the resumed session's id (not the new socket's), timed like a
    /// new session's ([`AssemblyAiConfig::ready_delay`]; never with `None`).
    #[default]
    Ready,
    /// `{"type":"session.error","code":…,"message":…}` (e.g. `session_not_found`,
    /// `session_forbidden`), and nothing else: the socket stays open, never ready.
    Error {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Nothing: the test answers, e.g. with [`SessionHandle::send_session_ready`] (which
    /// carries the resumed id), or resets the connection.
    Ignore,
}

/// Configuration of a [`MockAssemblyAi`].
#[derive(Debug, Clone)]
pub struct AssemblyAiConfig {
    /// If `Some`, the upgrade needs `Authorization: Bearer <key>` (else 401).
    pub api_key: Option<String>,
    /// Scripted behaviour of every session.
    pub behavior: Behavior,
    /// Timed steps of every session (tool calls, errors, `session.ended`, raw frames, …).
    pub steps: Vec<Step>,
    /// Where `tool.call` puts the arguments.
    pub tool_args_field: ToolArgsField,
    /// [`Behavior::Echo`] splits each caller message into `reply.audio` messages of this many
    /// bytes (0 = one message per caller message, same bytes).
    pub echo_chunk_bytes: usize,
    /// Delay between the first `session.update` and `session.ready`; `None` = never send it
    /// (send it by hand with [`SessionHandle::send_session_ready`]).
    pub ready_delay: Option<Duration>,
    /// What a session opened with `session.resume` is answered.
    pub resume_answer: ResumeAnswer,
}

impl AssemblyAiConfig {
    /// API key `test-key`, [`Behavior::Silent`], no steps, `arguments`, echo as received,
    /// `session.ready` at once, `session.resume` answered [`ResumeAnswer::Ready`].
    pub fn new() -> Self {
        AssemblyAiConfig {
            api_key: Some("test-key".into()),
            behavior: Behavior::Silent,
            steps: Vec::new(),
            tool_args_field: ToolArgsField::Arguments,
            echo_chunk_bytes: 0,
            ready_delay: Some(Duration::ZERO),
            resume_answer: ResumeAnswer::Ready,
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

impl Default for AssemblyAiConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The AssemblyAI dialect (its configuration).
pub struct AssemblyAi {
    config: AssemblyAiConfig,
}

impl AssemblyAi {
    /// The server's configuration.
    pub fn config(&self) -> &AssemblyAiConfig {
        &self.config
    }
}

/// AssemblyAI-specific recorded state of one session.
#[derive(Default)]
pub struct AssemblyAiState {
    /// `session.ready` was sent (or is being sent).
    ready_sent: bool,
    /// A `session.ready` is scheduled or sent.
    ready_scheduled: bool,
    /// Replies started so far (`reply_<n>` ids).
    replies: u64,
    exchanges: Exchanges,
}

/// A running mock AssemblyAI server. Dropping it stops accepting new connections.
pub type MockAssemblyAi = MockServer<AssemblyAi>;

/// A test's handle on one AssemblyAI session (cheap to clone).
pub type AssemblyAiSession = SessionHandle<AssemblyAi>;

/// Starts a mock AssemblyAI server on `127.0.0.1:0`.
pub async fn start(config: AssemblyAiConfig) -> anyhow::Result<MockAssemblyAi> {
    if let Behavior::Reply(ReplyScript { chunk_bytes: 0, .. }) = config.behavior {
        bail!("ReplyScript::chunk_bytes must be > 0");
    }
    crate::peers::mock_server::serve(AssemblyAi { config }).await
}

impl MockServer<AssemblyAi> {
    /// `ws://127.0.0.1:<port>/v1/ws`, the value for the relay's `--assemblyai-url`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{WS_PATH}", self.addr())
    }
}

impl SessionHandle<AssemblyAi> {
    /// True once `session.ready` was sent.
    pub fn session_ready_sent(&self) -> bool {
        self.read(|s| s.x.ready_sent)
    }

    /// The `session_id` of the `session.resume` that opened this socket (`None`: it opened
    /// with `session.update`, or nothing yet).
    pub fn resumed_session_id(&self) -> Option<String> {
        resume_of(self)
    }

    /// Sends `session.ready` now (for [`AssemblyAiConfig::ready_delay`] `None` or
    /// [`ResumeAnswer::Ignore`]) with this session's id, or the resumed one's; from then on
    /// `input.audio` is allowed.
    pub async fn send_session_ready(&self) {
        let msg = self.mark_ready();
        self.send_all(vec![msg]).await;
    }

    /// Sends a type-less error event `{"code":…,"message":…}` (a shape the API documents).
    pub async fn send_typeless_error(&self, code: &str, message: &str) {
        self.send_text(json!({"code": code, "message": message}).to_string())
            .await;
    }

    fn mark_ready(&self) -> Outgoing {
        self.update(|s| {
            s.x.ready_sent = true;
            s.x.ready_scheduled = true;
        });
        let resumed = resume_of(self);
        let id = resumed.as_deref().unwrap_or(self.id());
        json!({"type": "session.ready", "session_id": id}).into()
    }

    fn current_reply_id(&self) -> String {
        format!("reply_{}", self.read(|s| s.x.replies))
    }
}

/// The `session_id` of the session's init message when it is a `session.resume` (an empty
/// string if it names none).
fn resume_of(s: &AssemblyAiSession) -> Option<String> {
    s.read(|st| {
        let init = st.init.as_ref()?;
        (init.get("type").and_then(Value::as_str) == Some("session.resume")).then(|| {
            init.get("session_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
    })
}

fn reply_audio(audio: &[u8]) -> Outgoing {
    let mut s = String::with_capacity(32 + audio.len() * 4 / 3);
    s.push_str(r#"{"type":"reply.audio","data":""#);
    B64.encode_string(audio, &mut s);
    s.push_str(r#""}"#);
    Outgoing::Text(s)
}

impl Dialect for AssemblyAi {
    type State = AssemblyAiState;
    const INIT_TYPE: &'static str = "session.update";

    fn session_id(&self, n: usize) -> String {
        format!("sess_{n}")
    }

    fn route(&self, _addr: SocketAddr, req: &Request<Incoming>) -> Route {
        let fail = |status, code: &str, message: &str| {
            Route::Respond(json_response(
                status,
                json!({"code": code, "message": message}).to_string(),
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
                return fail(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid API key");
            }
        }
        Route::Accept
    }

    fn is_audio(&self, msg: &Value) -> bool {
        msg.get("type").and_then(Value::as_str) == Some("input.audio")
    }

    /// `session.update`, or `session.resume` (a new socket for an existing session).
    fn is_init(&self, msg: &Value) -> bool {
        matches!(
            msg.get("type").and_then(Value::as_str),
            Some("session.update" | "session.resume")
        )
    }

    fn on_first(&self, s: &AssemblyAiSession, init: bool) -> Vec<Outgoing> {
        let mut outs = Vec::new();
        let resume = init.then(|| resume_of(s)).flatten();
        if resume.as_deref() == Some("") {
            s.protocol_error("session.resume without a string session_id".into());
        }
        match (&resume, &self.config.resume_answer) {
            (Some(_), ResumeAnswer::Error { code, message }) => {
                s.update(|st| st.x.ready_scheduled = true);
                outs.push(
                    json!({"type": "session.error", "code": code, "message": message}).into(),
                );
            }
            (Some(_), ResumeAnswer::Ignore) => s.update(|st| st.x.ready_scheduled = true),
            _ => {
                if init && self.config.ready_delay == Some(Duration::ZERO) {
                    outs.push(s.mark_ready());
                }
                if init {
                    s.update(|st| st.x.ready_scheduled = self.config.ready_delay.is_some());
                }
            }
        }
        if let Behavior::Garbage = self.config.behavior {
            outs.extend(script::garbage(reply_audio(
                &[0xFF; GARBAGE_FOLLOWUP_AUDIO_BYTES],
            )));
        }
        outs
    }

    fn start_tasks(&self, s: &AssemblyAiSession) -> Vec<JoinHandle<()>> {
        let mut tasks = script::start_common(s, &self.config.behavior, &self.config.steps);
        if let Some(delay) = self.config.ready_delay.filter(|d| !d.is_zero()) {
            let answers_ready =
                resume_of(s).is_none() || self.config.resume_answer == ResumeAnswer::Ready;
            if s.read(|st| st.init.is_some()) && answers_ready {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    s.send_session_ready().await;
                }));
            }
        }
        tasks
    }

    fn on_message(&self, s: &AssemblyAiSession, msg: Value, raw: &str) -> Vec<Outgoing> {
        if !msg.is_object() {
            s.protocol_error(format!(
                "message is not a JSON object: {}",
                truncate(raw, 200)
            ));
            return Vec::new();
        }
        let now = Instant::now();
        match msg.get("type").and_then(Value::as_str) {
            Some("input.audio") => {
                let Some(audio) = s.decode_audio_field(&msg, "audio", "input.audio") else {
                    return Vec::new();
                };
                if !s.session_ready_sent() {
                    s.protocol_error(format!(
                        "input.audio ({} bytes) before session.ready",
                        audio.len()
                    ));
                }
                s.record_audio(&audio);
                if matches!(self.config.behavior, Behavior::Echo) {
                    return script::pieces(&audio, self.config.echo_chunk_bytes)
                        .map(reply_audio)
                        .collect();
                }
            }
            Some("tool.result") => {
                let call_id = msg.get("call_id").and_then(Value::as_str);
                if call_id.is_none() {
                    s.protocol_error(format!(
                        "tool.result without a string call_id: {}",
                        truncate(raw, 200)
                    ));
                }
                let output = match msg.get("result") {
                    Some(Value::String(r)) => r.clone(),
                    other => {
                        s.protocol_error(format!(
                            "tool.result.result is not a string: {}",
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
            Some("reply.create") => {
                let text = msg
                    .get("instructions")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                s.record_text_input(TextInput {
                    text,
                    message: msg.clone(),
                    at: now,
                });
            }
            Some("session.update") => {
                s.update(|st| st.push_other(msg.clone()));
                // A session that did not open with session.update gets ready on its first one.
                if !s.read(|st| st.x.ready_scheduled) && self.config.ready_delay.is_some() {
                    return vec![s.mark_ready()];
                }
            }
            Some(_) => s.update(|st| st.push_other(msg.clone())),
            None => s.protocol_error(format!(
                "message has no string `type`: {}",
                truncate(raw, 200)
            )),
        }
        Vec::new()
    }
}

impl Speaking for AssemblyAi {
    fn reply_prelude(&self, _s: &AssemblyAiSession, r: &ReplyScript) -> Vec<Outgoing> {
        vec![
            json!({"type": "input.speech.started"}).into(),
            json!({"type": "input.speech.stopped"}).into(),
            json!({"type": "transcript.user", "text": r.user_transcript}).into(),
        ]
    }

    fn reply_begin(&self, s: &AssemblyAiSession, _r: &ReplyScript) -> Vec<Outgoing> {
        s.update(|st| st.x.replies += 1);
        vec![json!({"type": "reply.started", "reply_id": s.current_reply_id()}).into()]
    }

    fn reply_chunk(&self, _s: &AssemblyAiSession, chunk: &[u8]) -> Outgoing {
        reply_audio(chunk)
    }

    fn reply_cut(&self, s: &AssemblyAiSession, r: &ReplyScript) -> Vec<Outgoing> {
        let stale = vec![STALE_AUDIO_BYTE; r.chunk_bytes];
        let words: Vec<&str> = r.agent_transcript.split_whitespace().collect();
        let partial = words[..words.len().div_ceil(2)].join(" ");
        vec![
            json!({"type": "input.speech.started"}).into(),
            json!({
                "type": "transcript.agent",
                "text": partial,
                "reply_id": s.current_reply_id(),
                "interrupted": true,
            })
            .into(),
            json!({"type": "reply.done", "status": "interrupted"}).into(),
            reply_audio(&stale),
            reply_audio(&stale),
        ]
    }

    fn reply_finish(&self, s: &AssemblyAiSession, r: &ReplyScript) -> Vec<Outgoing> {
        vec![
            json!({
                "type": "transcript.agent",
                "text": r.agent_transcript,
                "reply_id": s.current_reply_id(),
                "interrupted": false,
            })
            .into(),
            json!({"type": "reply.done", "status": "completed"}).into(),
        ]
    }
}

impl Scripted for AssemblyAi {
    fn exchanges(state: &AssemblyAiState) -> &Exchanges {
        &state.exchanges
    }

    fn exchanges_mut(state: &mut AssemblyAiState) -> &mut Exchanges {
        &mut state.exchanges
    }

    fn agent_audio(&self, _s: &AssemblyAiSession, audio: &[u8]) -> Outgoing {
        reply_audio(audio)
    }

    fn dialect_action(&self, _s: &AssemblyAiSession, a: &Action) -> Vec<Outgoing> {
        match a {
            Action::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                let field = match self.config.tool_args_field {
                    ToolArgsField::Arguments => "arguments",
                    ToolArgsField::Args => "args",
                };
                let mut m = json!({"type": "tool.call", "call_id": call_id, "name": name});
                m[field] = arguments.clone();
                vec![m.into()]
            }
            Action::Error { code, message } => {
                vec![json!({"type": "session.error", "code": code, "message": message}).into()]
            }
            Action::SpeechStarted => vec![json!({"type": "input.speech.started"}).into()],
            Action::End => vec![json!({"type": "session.ended"}).into()],
            _ => Vec::new(),
        }
    }
}
