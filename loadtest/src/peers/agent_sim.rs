//! Mock ElevenLabs Conversational AI server: the ElevenLabs dialect of the shared mock
//! server ([`crate::peers::mock_server`]).
//!
//! Routes (ElevenLabs Agents WebSocket API, <https://elevenlabs.io/docs/agents-platform/api-reference/agents-platform/websocket>):
//!
//! - `GET /v1/convai/conversation/get-signed-url?agent_id=ID` → `200 {"signed_url":
//!   "ws://127.0.0.1:PORT/v1/convai/conversation?agent_id=ID&conversation_signature=SIG"}`.
//!   If [`MockAgentConfig::api_key`] is set, header `xi-api-key` must equal it (else 401).
//!   An unknown `agent_id` is 404. After [`MockServer::fail_signed_urls`]`(n)` the next `n`
//!   requests answer `500` whatever they carry (an outage); every request's arrival time is
//!   kept ([`MockServer::signed_url_requests`]).
//! - `GET /v1/convai/conversation?agent_id=ID[&conversation_signature=SIG]`: WebSocket upgrade.
//!   Unknown `agent_id` → 404; with an API key configured, a missing or never-issued
//!   signature → 403; not an upgrade request → 400. Signatures stay valid for the server's
//!   lifetime and may be reused.
//! - anything else → 404.
//!
//! Each accepted WebSocket is a conversation: the client's first message must be
//! `conversation_initiation_client_data` (anything else is recorded as a protocol error); the
//! server then answers `conversation_initiation_metadata` and runs the configured
//! [`AgentBehavior`]. Tests inspect and drive conversations through [`ConversationHandle`]
//! (a [`SessionHandle`], so its dialect-independent methods apply too); manual commands work
//! alongside the scripted behaviour.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::peers::mock_server::script::{self, ReplyScript, Speaking};
use crate::peers::mock_server::{
    detail_response, encode_query_value, json_response, lock, parse_query, wait_for, Dialect,
    MockServer, Outgoing, Route, SessionHandle,
};
use crate::truncate;

/// Path of the signed-URL endpoint.
pub const SIGNED_URL_PATH: &str = "/v1/convai/conversation/get-signed-url";
/// Path of the conversation WebSocket.
pub const CONVERSATION_PATH: &str = "/v1/convai/conversation";
/// Byte value of the stale audio sent after a scripted interruption (see
/// [`AgentBehavior::Reply`]). μ-law `0x00` is full-scale negative, so a run of it never occurs
/// in the speech fixtures: finding one in the relay's output means stale audio leaked.
pub const STALE_AUDIO_BYTE: u8 = 0x00;
/// Bytes of μ-law silence (`0xFF`, 100 ms) in the valid `audio` event sent by
/// [`AgentBehavior::Garbage`] after the garbage frames.
pub const GARBAGE_FOLLOWUP_AUDIO_BYTES: usize = 800;

/// What the mock agent does on its own in each conversation, after sending
/// `conversation_initiation_metadata`. Scripted audio events take their `event_id` from one
/// per-conversation counter starting at 1 that scripted pings share.
#[derive(Debug, Clone)]
pub enum AgentBehavior {
    /// Echo every `user_audio_chunk` back at once as an `audio` event with the same bytes and
    /// the next `event_id`.
    Echo,
    /// Send no audio; only record.
    Silent,
    /// Speak `reply_audio` once, in `chunk_bytes` pieces, once `after_user_bytes` of user audio
    /// have arrived and `think_time` has passed; one `audio` event per `chunk_interval` (the
    /// first at once), each with the next `event_id`.
    ///
    /// With `interrupt_after_chunks: Some(n)` (`1 ≤ n ≤` number of chunks; other values never
    /// interrupt): one `chunk_interval` after chunk `n`, sends
    /// `{"type":"interruption","interruption_event":{"event_id":E}}` with `E` the `event_id`
    /// of the last chunk sent, immediately followed by two stale `audio` events with
    /// `event_id` `E − 1` and `E` carrying `chunk_bytes` of [`STALE_AUDIO_BYTE`] (a relay must
    /// drop both); then, one `chunk_interval` later, the rest of `reply_audio` with new
    /// `event_id`s > `E`, still one per `chunk_interval`. The reply is spoken once per
    /// conversation and stops early if the client closes.
    Reply {
        /// Agent speech, raw μ-law.
        reply_audio: Arc<Vec<u8>>,
        /// Start once this many user audio bytes (decoded) have arrived (0 = right away).
        after_user_bytes: usize,
        /// Delay between reaching `after_user_bytes` and the first chunk.
        think_time: Duration,
        /// Bytes per `audio` event (e.g. 2000 = 250 ms). Must be > 0.
        chunk_bytes: usize,
        /// Time between `audio` events (e.g. 50 ms: faster than real time, as TTS is).
        chunk_interval: Duration,
        /// Interrupt after this many chunks (see above).
        interrupt_after_chunks: Option<usize>,
    },
    /// Send a non-JSON text frame, then a binary frame, then one valid `audio` event of
    /// [`GARBAGE_FOLLOWUP_AUDIO_BYTES`] of μ-law silence (`0xFF`); then behave like `Silent`.
    Garbage,
}

/// Configuration of a [`MockAgent`].
#[derive(Debug, Clone)]
pub struct MockAgentConfig {
    /// If `Some`, `get-signed-url` requires header `xi-api-key` equal to it (else 401), and
    /// the WebSocket requires a `conversation_signature` issued by `get-signed-url` (else 403).
    /// If `None`, both are open (public agent).
    pub api_key: Option<String>,
    /// The only agent id served (other ids get 404).
    pub agent_id: String,
    /// Reported in `conversation_initiation_metadata` as both `agent_output_audio_format` and
    /// `user_input_audio_format` (e.g. `"ulaw_8000"`, `"pcm_16000"`).
    pub audio_format: String,
    /// Scripted behaviour of every conversation.
    pub behavior: AgentBehavior,
    /// If `Some`, each conversation sends `{"type":"ping","ping_event":{"event_id":N,
    /// "ping_ms":null}}` this often (first one after one interval).
    pub ping_interval: Option<Duration>,
}

impl MockAgentConfig {
    /// Public agent `agent_id`: no API key, `"ulaw_8000"`, [`AgentBehavior::Silent`], no pings.
    pub fn new(agent_id: impl Into<String>) -> Self {
        MockAgentConfig {
            api_key: None,
            agent_id: agent_id.into(),
            audio_format: "ulaw_8000".to_owned(),
            behavior: AgentBehavior::Silent,
            ping_interval: None,
        }
    }
}

/// The ElevenLabs dialect: configuration plus the signatures issued so far and the
/// signed-URL requests seen.
pub struct ElevenLabs {
    config: MockAgentConfig,
    signatures: Mutex<HashSet<String>>,
    counter: AtomicU64,
    /// `get-signed-url` requests still to fail with 500 (see [`MockServer::fail_signed_urls`]).
    signed_url_failures: AtomicUsize,
    /// Arrival time of every `get-signed-url` request.
    signed_url_requests: Mutex<Vec<Instant>>,
    signed_url_notify: Notify,
}

impl ElevenLabs {
    /// The server's configuration.
    pub fn config(&self) -> &MockAgentConfig {
        &self.config
    }
}

/// ElevenLabs-specific recorded state of one conversation.
pub struct ElevenLabsState {
    pongs: Vec<i64>,
    /// Next scripted `event_id`.
    next_event_id: i64,
    /// `event_id` of the last scripted reply chunk.
    last_reply_id: i64,
}

impl Default for ElevenLabsState {
    fn default() -> Self {
        ElevenLabsState {
            pongs: Vec::new(),
            next_event_id: 1,
            last_reply_id: 0,
        }
    }
}

/// A running mock ElevenLabs server. Dropping it stops accepting new connections (running
/// conversations continue until their sockets close).
pub type MockAgent = MockServer<ElevenLabs>;

/// A test's handle on one conversation (cheap to clone). Methods that send ignore failures
/// (e.g. the client already went away); those are only logged at `debug`.
pub type ConversationHandle = SessionHandle<ElevenLabs>;

/// Starts a mock agent on `127.0.0.1:0` (an ephemeral port).
pub async fn start(config: MockAgentConfig) -> anyhow::Result<MockAgent> {
    if let AgentBehavior::Reply { chunk_bytes: 0, .. } = config.behavior {
        bail!("AgentBehavior::Reply::chunk_bytes must be > 0");
    }
    crate::peers::mock_server::serve(ElevenLabs {
        config,
        signatures: Mutex::new(HashSet::new()),
        counter: AtomicU64::new(0),
        signed_url_failures: AtomicUsize::new(0),
        signed_url_requests: Mutex::new(Vec::new()),
        signed_url_notify: Notify::new(),
    })
    .await
}

impl MockServer<ElevenLabs> {
    /// Base URL to configure as the ElevenLabs API origin: `http://127.0.0.1:<port>`.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Public-agent WebSocket URL: `ws://127.0.0.1:<port>/v1/convai/conversation?agent_id=ID`.
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}{CONVERSATION_PATH}?agent_id={}",
            self.addr(),
            encode_query_value(&self.dialect().config.agent_id)
        )
    }

    /// Returns the next conversation not yet returned, in WebSocket-accept order, waiting up
    /// to `timeout` for one to be accepted.
    pub async fn next_conversation(&self, timeout: Duration) -> anyhow::Result<ConversationHandle> {
        self.next_session(timeout).await
    }

    /// Number of conversations (accepted WebSockets) so far.
    pub fn conversations_started(&self) -> usize {
        self.sessions_started()
    }

    /// Conversation number `index` (0-based, accept order), if it exists. Does not affect
    /// [`next_conversation`](Self::next_conversation).
    pub fn conversation(&self, index: usize) -> Option<ConversationHandle> {
        self.session(index)
    }

    /// The next `n` `get-signed-url` requests answer `500 {"detail":"internal server error"}`,
    /// whatever key and agent they name (an outage of the REST API; `usize::MAX`: every one
    /// from now on). Replaces a count not used up yet; 0 ends the outage.
    pub fn fail_signed_urls(&self, n: usize) {
        self.dialect()
            .signed_url_failures
            .store(n, Ordering::SeqCst);
    }

    /// Arrival times of every `get-signed-url` request so far (answered or failed), in order.
    pub fn signed_url_requests(&self) -> Vec<Instant> {
        lock(&self.dialect().signed_url_requests).clone()
    }

    /// Waits until at least `n` `get-signed-url` requests have arrived; returns their arrival
    /// times.
    pub async fn wait_signed_url_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Instant>> {
        let d = self.dialect();
        wait_for(
            &d.signed_url_notify,
            timeout,
            || {
                format!(
                    "{n} signed-URL request(s) (have {})",
                    lock(&d.signed_url_requests).len()
                )
            },
            || {
                let r = lock(&d.signed_url_requests);
                (r.len() >= n).then(|| r.clone())
            },
        )
        .await
    }
}

impl SessionHandle<ElevenLabs> {
    /// The `conversation_id` sent in `conversation_initiation_metadata` (`conv_<n>`, n from 1).
    pub fn conversation_id(&self) -> &str {
        self.id()
    }

    /// Waits for the client's `conversation_initiation_client_data` message and returns it
    /// whole (including `"type"`). Errors on timeout, or if the client's first message was
    /// something else, or the connection ended first.
    pub async fn init_data(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.init_message(timeout).await
    }

    /// `event_id`s of every `pong` received, in order.
    pub fn pongs(&self) -> Vec<i64> {
        self.read(|s| s.x.pongs.clone())
    }

    /// Waits until a `pong` with `event_id` has arrived.
    pub async fn wait_pong(&self, event_id: i64, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(
            timeout,
            |s| format!("pong {event_id} (have {:?})", s.x.pongs),
            |s| s.x.pongs.contains(&event_id).then_some(()),
        )
        .await
    }

    /// Sends `{"type":"audio","audio_event":{"audio_base_64":B64(bytes),"event_id":event_id}}`.
    pub async fn send_audio(&self, bytes: &[u8], event_id: i64) {
        self.send_all(vec![audio_event(bytes, event_id)]).await;
    }

    /// Sends `{"type":"interruption","interruption_event":{"event_id":event_id}}`.
    pub async fn send_interruption(&self, event_id: i64) {
        self.send_all(vec![interruption(event_id)]).await;
    }

    /// Sends `{"type":"ping","ping_event":{"event_id":event_id,"ping_ms":null}}`.
    pub async fn send_ping(&self, event_id: i64) {
        self.send_all(vec![ping(event_id)]).await;
    }

    fn take_event_id(&self) -> i64 {
        self.update(|s| {
            let id = s.x.next_event_id;
            s.x.next_event_id += 1;
            id
        })
    }
}

fn audio_event(bytes: &[u8], event_id: i64) -> Outgoing {
    json!({
        "type": "audio",
        "audio_event": {"audio_base_64": B64.encode(bytes), "event_id": event_id}
    })
    .into()
}

fn interruption(event_id: i64) -> Outgoing {
    json!({"type": "interruption", "interruption_event": {"event_id": event_id}}).into()
}

fn ping(event_id: i64) -> Outgoing {
    json!({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": null}}).into()
}

/// A hard-to-guess token (hex, 32 digits) from the std hasher's random keys and a counter.
fn random_token(d: &ElevenLabs) -> String {
    let n = d.counter.fetch_add(1, Ordering::Relaxed);
    let mut out = String::new();
    for salt in [0u64, 1] {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl Dialect for ElevenLabs {
    type State = ElevenLabsState;
    const INIT_TYPE: &'static str = "conversation_initiation_client_data";

    fn session_id(&self, n: usize) -> String {
        format!("conv_{n}")
    }

    fn route(&self, addr: SocketAddr, req: &Request<Incoming>) -> Route {
        let query = parse_query(req.uri().query().unwrap_or(""));
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let cfg = &self.config;
        let fail = |status, detail| Route::Respond(detail_response(status, detail));
        if req.method() != hyper::Method::GET {
            return fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        match req.uri().path() {
            SIGNED_URL_PATH => {
                lock(&self.signed_url_requests).push(Instant::now());
                self.signed_url_notify.notify_waiters();
                let failing = self
                    .signed_url_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n > 0).then(|| if n == usize::MAX { n } else { n - 1 })
                    })
                    .is_ok();
                if failing {
                    return fail(StatusCode::INTERNAL_SERVER_ERROR, "internal server error");
                }
                if let Some(key) = &cfg.api_key {
                    let given = req.headers().get("xi-api-key").map(|v| v.as_bytes());
                    if given != Some(key.as_bytes()) {
                        return fail(StatusCode::UNAUTHORIZED, "invalid_api_key");
                    }
                }
                if param("agent_id") != Some(cfg.agent_id.as_str()) {
                    return fail(StatusCode::NOT_FOUND, "agent not found");
                }
                let sig = random_token(self);
                lock(&self.signatures).insert(sig.clone());
                let url = format!(
                    "ws://{addr}{CONVERSATION_PATH}?agent_id={}&conversation_signature={sig}",
                    encode_query_value(&cfg.agent_id)
                );
                Route::Respond(json_response(
                    StatusCode::OK,
                    json!({ "signed_url": url }).to_string(),
                ))
            }
            CONVERSATION_PATH => {
                if param("agent_id") != Some(cfg.agent_id.as_str()) {
                    return fail(StatusCode::NOT_FOUND, "agent not found");
                }
                if cfg.api_key.is_some() {
                    let ok = param("conversation_signature")
                        .is_some_and(|s| lock(&self.signatures).contains(s));
                    if !ok {
                        return fail(StatusCode::FORBIDDEN, "invalid conversation signature");
                    }
                }
                Route::Accept
            }
            _ => fail(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn is_audio(&self, msg: &Value) -> bool {
        msg.get("user_audio_chunk").is_some()
    }

    /// `conversation_initiation_metadata` (sent whatever the first message was), then the
    /// garbage of [`AgentBehavior::Garbage`].
    fn on_first(&self, s: &ConversationHandle, _init: bool) -> Vec<Outgoing> {
        let cfg = &self.config;
        let mut outs = vec![json!({
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": s.id(),
                "agent_output_audio_format": cfg.audio_format,
                "user_input_audio_format": cfg.audio_format,
            }
        })
        .into()];
        if let AgentBehavior::Garbage = cfg.behavior {
            let id = s.take_event_id();
            outs.extend(script::garbage(audio_event(
                &[0xFF; GARBAGE_FOLLOWUP_AUDIO_BYTES],
                id,
            )));
        }
        outs
    }

    fn start_tasks(&self, s: &ConversationHandle) -> Vec<JoinHandle<()>> {
        let cfg = &self.config;
        let mut tasks = Vec::new();
        if let Some(every) = cfg.ping_interval {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
                ticker.tick().await; // the first tick is immediate
                loop {
                    ticker.tick().await;
                    let id = s.take_event_id();
                    s.send_all(vec![ping(id)]).await;
                }
            }));
        }
        if let AgentBehavior::Reply {
            reply_audio,
            after_user_bytes,
            think_time,
            chunk_bytes,
            chunk_interval,
            interrupt_after_chunks,
        } = &cfg.behavior
        {
            let r = ReplyScript {
                reply_audio: reply_audio.clone(),
                after_user_bytes: *after_user_bytes,
                think_time: *think_time,
                chunk_bytes: *chunk_bytes,
                chunk_interval: *chunk_interval,
                interrupt_after_chunks: *interrupt_after_chunks,
                user_transcript: String::new(),
                agent_transcript: String::new(),
            };
            tasks.push(tokio::spawn(script::run_reply(s.clone(), r)));
        }
        tasks
    }

    fn on_message(&self, s: &ConversationHandle, value: Value, raw: &str) -> Vec<Outgoing> {
        let Some(obj) = value.as_object() else {
            s.protocol_error(format!(
                "message is not a JSON object: {}",
                truncate(raw, 200)
            ));
            return Vec::new();
        };
        if let Some(chunk) = obj.get("user_audio_chunk") {
            if obj.len() != 1 {
                s.protocol_error(format!(
                    "user_audio_chunk message has extra fields: {}",
                    truncate(raw, 200)
                ));
            }
            let Some(b64) = chunk.as_str() else {
                s.protocol_error(format!(
                    "user_audio_chunk is not a string: {}",
                    truncate(raw, 200)
                ));
                return Vec::new();
            };
            let audio = match B64.decode(b64) {
                Ok(a) => a,
                Err(e) => {
                    s.protocol_error(format!("user_audio_chunk is not valid base64 ({e})"));
                    return Vec::new();
                }
            };
            s.record_audio(&audio);
            if matches!(self.config.behavior, AgentBehavior::Echo) {
                let id = s.take_event_id();
                return vec![audio_event(&audio, id)];
            }
            return Vec::new();
        }
        match obj.get("type").and_then(Value::as_str) {
            Some("pong") => match obj.get("event_id").and_then(Value::as_i64) {
                Some(id) => s.update(|st| st.x.pongs.push(id)),
                None => s.protocol_error(format!(
                    "pong without an integer event_id: {}",
                    truncate(raw, 200)
                )),
            },
            Some("conversation_initiation_client_data") => {
                s.protocol_error("duplicate conversation_initiation_client_data".into());
                s.update(|st| st.push_other(value.clone()));
            }
            Some(_) => s.update(|st| st.push_other(value.clone())),
            None => s.protocol_error(format!(
                "message has neither `type` nor `user_audio_chunk`: {}",
                truncate(raw, 200)
            )),
        }
        Vec::new()
    }
}

impl Speaking for ElevenLabs {
    fn reply_prelude(&self, _s: &ConversationHandle, _r: &ReplyScript) -> Vec<Outgoing> {
        Vec::new()
    }

    fn reply_begin(&self, _s: &ConversationHandle, _r: &ReplyScript) -> Vec<Outgoing> {
        Vec::new()
    }

    fn reply_chunk(&self, s: &ConversationHandle, chunk: &[u8]) -> Outgoing {
        let id = s.take_event_id();
        s.update(|st| st.x.last_reply_id = id);
        audio_event(chunk, id)
    }

    /// `interruption` for the last chunk's id `E`, then two stale chunks with ids `E − 1`
    /// and `E`.
    fn reply_cut(&self, s: &ConversationHandle, r: &ReplyScript) -> Vec<Outgoing> {
        let e = s.read(|st| st.x.last_reply_id);
        let stale = vec![STALE_AUDIO_BYTE; r.chunk_bytes];
        vec![
            interruption(e),
            audio_event(&stale, e - 1),
            audio_event(&stale, e),
        ]
    }

    fn reply_finish(&self, _s: &ConversationHandle, _r: &ReplyScript) -> Vec<Outgoing> {
        Vec::new()
    }
}
