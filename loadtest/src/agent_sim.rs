//! Mock ElevenLabs Conversational AI server (hyper 1 + fastwebsockets, on `127.0.0.1:0`).
//!
//! Routes (protocols.md §2.1):
//!
//! - `GET /v1/convai/conversation/get-signed-url?agent_id=ID` → `200 {"signed_url":
//!   "ws://127.0.0.1:PORT/v1/convai/conversation?agent_id=ID&conversation_signature=SIG"}`.
//!   If [`MockAgentConfig::api_key`] is set, header `xi-api-key` must equal it (else 401).
//!   An unknown `agent_id` is 404.
//! - `GET /v1/convai/conversation?agent_id=ID[&conversation_signature=SIG]`: WebSocket upgrade.
//!   Unknown `agent_id` → 404; with an API key configured, a missing or never-issued
//!   signature → 403; not an upgrade request → 400. Signatures stay valid for the server's
//!   lifetime and may be reused.
//! - anything else → 404.
//!
//! Each accepted WebSocket is a conversation (§2.2): the client's first message must be
//! `conversation_initiation_client_data` (anything else is recorded as a protocol error); the
//! server then answers `conversation_initiation_metadata` and runs the configured
//! [`AgentBehavior`]. Tests inspect and drive conversations through [`ConversationHandle`];
//! manual commands work alongside the scripted behaviour.

use std::collections::HashSet;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::truncate;
use anyhow::{anyhow, bail};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::ws::{self, WsMessage, WsWriter};

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until `check` returns `Some`, re-checking after every `notify_waiters` on `notify`.
async fn wait_for<T>(
    notify: &Notify,
    timeout: Duration,
    what: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check() {
            return Ok(v);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            if let Some(v) = check() {
                return Ok(v);
            }
            bail!("timed out after {timeout:?} waiting for {}", what());
        }
    }
}

/// Recorded state of one conversation.
#[derive(Default)]
struct ConvState {
    init: Option<Value>,
    user_audio: Vec<u8>,
    chunk_times: Vec<Instant>,
    pongs: Vec<i64>,
    other: Vec<Value>,
    protocol_errors: Vec<String>,
    /// `Some(code)` once the client closed (code it sent, if any) or the TCP stream ended.
    closed: Option<Option<u16>>,
    messages_seen: usize,
}

struct Conversation {
    id: String,
    writer: WsWriter,
    state: Mutex<ConvState>,
    notify: Notify,
    /// Next scripted `event_id`.
    next_event_id: AtomicI64,
}

impl Conversation {
    fn update<R>(&self, f: impl FnOnce(&mut ConvState) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.notify.notify_waiters();
        r
    }

    fn protocol_error(&self, e: String) {
        tracing::debug!(conversation = %self.id, "protocol error: {e}");
        self.update(|s| s.protocol_errors.push(e));
    }

    fn take_event_id(&self) -> i64 {
        self.next_event_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn send(&self, text: String) {
        if let Err(e) = self.writer.send_text(text).await {
            tracing::debug!(conversation = %self.id, "send failed: {e}");
        }
    }

    async fn send_audio(&self, bytes: &[u8], event_id: i64) {
        let msg = json!({
            "type": "audio",
            "audio_event": {"audio_base_64": B64.encode(bytes), "event_id": event_id}
        });
        self.send(msg.to_string()).await;
    }

    fn is_closed(&self) -> bool {
        lock(&self.state).closed.is_some()
    }
}

/// A test's handle on one conversation (cheap to clone). Methods that send ignore failures
/// (e.g. the client already went away); those are only logged at `debug`.
#[derive(Clone)]
pub struct ConversationHandle {
    conv: Arc<Conversation>,
}

impl ConversationHandle {
    /// The `conversation_id` sent in `conversation_initiation_metadata` (`conv_<n>`, n from 1).
    pub fn conversation_id(&self) -> &str {
        &self.conv.id
    }

    /// Waits for the client's `conversation_initiation_client_data` message and returns it
    /// whole (including `"type"`). Errors on timeout, or if the client's first message was
    /// something else, or the connection ended first.
    pub async fn init_data(&self, timeout: Duration) -> anyhow::Result<Value> {
        let c = &self.conv;
        wait_for(
            &c.notify,
            timeout,
            || "conversation_initiation_client_data".into(),
            || {
                let s = lock(&c.state);
                if let Some(v) = &s.init {
                    return Some(Ok(v.clone()));
                }
                // `messages_seen` is bumped just before `init` is stored: only a recorded
                // protocol error proves the first message was something else.
                if s.messages_seen > 0 && !s.protocol_errors.is_empty() {
                    return Some(Err(anyhow!(
                        "first client message was not conversation_initiation_client_data: {:?}",
                        s.protocol_errors
                    )));
                }
                s.closed.map(|code| {
                    Err(anyhow!(
                        "connection ended (close code {code:?}) before init"
                    ))
                })
            },
        )
        .await?
    }

    /// All user audio received (`user_audio_chunk` payloads, base64-decoded, concatenated).
    pub fn user_audio(&self) -> Vec<u8> {
        lock(&self.conv.state).user_audio.clone()
    }

    /// Number of `user_audio_chunk` messages received.
    pub fn user_audio_chunks(&self) -> usize {
        lock(&self.conv.state).chunk_times.len()
    }

    /// Receive time of each `user_audio_chunk` message, in order.
    pub fn user_audio_chunk_times(&self) -> Vec<Instant> {
        lock(&self.conv.state).chunk_times.clone()
    }

    /// Waits until at least `n` bytes of (decoded) user audio have arrived.
    pub async fn wait_user_audio_bytes(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let c = &self.conv;
        wait_for(
            &c.notify,
            timeout,
            || {
                format!(
                    "{n} bytes of user audio (have {})",
                    lock(&c.state).user_audio.len()
                )
            },
            || (lock(&c.state).user_audio.len() >= n).then_some(()),
        )
        .await
    }

    /// `event_id`s of every `pong` received, in order.
    pub fn pongs(&self) -> Vec<i64> {
        lock(&self.conv.state).pongs.clone()
    }

    /// Waits until a `pong` with `event_id` has arrived.
    pub async fn wait_pong(&self, event_id: i64, timeout: Duration) -> anyhow::Result<()> {
        let c = &self.conv;
        wait_for(
            &c.notify,
            timeout,
            || format!("pong {event_id} (have {:?})", lock(&c.state).pongs),
            || lock(&c.state).pongs.contains(&event_id).then_some(()),
        )
        .await
    }

    /// Sends `{"type":"audio","audio_event":{"audio_base_64":B64(bytes),"event_id":event_id}}`.
    pub async fn send_audio(&self, bytes: &[u8], event_id: i64) {
        self.conv.send_audio(bytes, event_id).await;
    }

    /// Sends `{"type":"interruption","interruption_event":{"event_id":event_id}}`.
    pub async fn send_interruption(&self, event_id: i64) {
        let msg = json!({"type": "interruption", "interruption_event": {"event_id": event_id}});
        self.conv.send(msg.to_string()).await;
    }

    /// Sends `{"type":"ping","ping_event":{"event_id":event_id,"ping_ms":null}}`.
    pub async fn send_ping(&self, event_id: i64) {
        let msg = json!({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": null}});
        self.conv.send(msg.to_string()).await;
    }

    /// Sends `raw` as one text frame, unchanged.
    pub async fn send_text(&self, raw: String) {
        self.conv.send(raw).await;
    }

    /// Sends `raw` as one binary frame.
    pub async fn send_binary(&self, raw: Vec<u8>) {
        if let Err(e) = self.conv.writer.send_binary(raw).await {
            tracing::debug!(conversation = %self.conv.id, "send failed: {e}");
        }
    }

    /// Sends a Close frame (`code`, `reason`), as ElevenLabs does to end a conversation
    /// (1000 normal, 1002 operational, 1008 contract, 1011 internal). The connection is
    /// released once the client answers or the TCP stream ends.
    pub async fn close(&self, code: u16, reason: &str) {
        if let Err(e) = self.conv.writer.send_close(code, reason).await {
            tracing::debug!(conversation = %self.conv.id, "close failed: {e}");
        }
    }

    /// Waits until the client closed the WebSocket or the TCP connection ended. Returns the
    /// close code the client sent (`None` if it sent an empty Close or none at all).
    /// Errors on timeout.
    pub async fn wait_closed(&self, timeout: Duration) -> anyhow::Result<Option<u16>> {
        let c = &self.conv;
        wait_for(
            &c.notify,
            timeout,
            || format!("conversation {} to close", c.id),
            || lock(&c.state).closed,
        )
        .await
    }

    /// True once the client closed or the connection ended.
    pub fn is_closed(&self) -> bool {
        self.conv.is_closed()
    }

    /// Protocol violations by the client, in order (e.g. first message not
    /// `conversation_initiation_client_data`, invalid JSON, binary frames, bad base64, unknown
    /// message shapes). Empty for a well-behaved client.
    pub fn protocol_errors(&self) -> Vec<String> {
        lock(&self.conv.state).protocol_errors.clone()
    }

    /// Every valid client message other than the init data, `user_audio_chunk` and `pong`
    /// (e.g. `user_activity`, `contextual_update`), parsed, in order.
    pub fn other_messages(&self) -> Vec<Value> {
        lock(&self.conv.state).other.clone()
    }
}

/// Server state shared by all connections.
struct Shared {
    config: MockAgentConfig,
    addr: SocketAddr,
    signatures: Mutex<HashSet<String>>,
    conversations: Mutex<Vec<ConversationHandle>>,
    /// Index of the next conversation `next_conversation` returns.
    next_taken: Mutex<usize>,
    notify: Notify,
    counter: AtomicU64,
}

/// A running mock agent server. Dropping it stops accepting new connections (running
/// conversations continue until their sockets close).
pub struct MockAgent {
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Drop for MockAgent {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Starts a mock agent on `127.0.0.1:0` (an ephemeral port).
pub async fn start(config: MockAgentConfig) -> anyhow::Result<MockAgent> {
    if let AgentBehavior::Reply { chunk_bytes: 0, .. } = config.behavior {
        bail!("AgentBehavior::Reply::chunk_bytes must be > 0");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        config,
        addr,
        signatures: Mutex::new(HashSet::new()),
        conversations: Mutex::new(Vec::new()),
        next_taken: Mutex::new(0),
        notify: Notify::new(),
        counter: AtomicU64::new(0),
    });
    let accept_shared = shared.clone();
    let accept_task = tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("mock agent accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let shared = accept_shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(shared, req)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!("mock agent connection error: {e}");
                }
            });
        }
    });
    Ok(MockAgent {
        shared,
        accept_task,
    })
}

impl MockAgent {
    /// The listening address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Base URL to configure as the ElevenLabs API origin: `http://127.0.0.1:<port>`.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Public-agent WebSocket URL: `ws://127.0.0.1:<port>/v1/convai/conversation?agent_id=ID`.
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}{CONVERSATION_PATH}?agent_id={}",
            self.shared.addr,
            encode_query_value(&self.shared.config.agent_id)
        )
    }

    /// Returns the next conversation not yet returned, in WebSocket-accept order, waiting up
    /// to `timeout` for one to be accepted.
    pub async fn next_conversation(&self, timeout: Duration) -> anyhow::Result<ConversationHandle> {
        let s = &self.shared;
        wait_for(
            &s.notify,
            timeout,
            || "a new agent conversation".into(),
            || {
                let convs = lock(&s.conversations);
                let mut next = lock(&s.next_taken);
                let c = convs.get(*next)?.clone();
                *next += 1;
                Some(c)
            },
        )
        .await
    }

    /// Number of conversations (accepted WebSockets) so far.
    pub fn conversations_started(&self) -> usize {
        lock(&self.shared.conversations).len()
    }

    /// Conversation number `index` (0-based, accept order), if it exists. Does not affect
    /// [`next_conversation`](Self::next_conversation).
    pub fn conversation(&self, index: usize) -> Option<ConversationHandle> {
        lock(&self.shared.conversations).get(index).cloned()
    }
}

type Resp = Response<Full<Bytes>>;

fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(status: StatusCode, detail: &str) -> Resp {
    text_response(status, json!({ "detail": detail }).to_string())
}

fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let cfg = &shared.config;
    if req.method() != hyper::Method::GET {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    match path.as_str() {
        SIGNED_URL_PATH => {
            if let Some(key) = &cfg.api_key {
                let given = req.headers().get("xi-api-key").map(|v| v.as_bytes());
                if given != Some(key.as_bytes()) {
                    return error_response(StatusCode::UNAUTHORIZED, "invalid_api_key");
                }
            }
            if param("agent_id") != Some(cfg.agent_id.as_str()) {
                return error_response(StatusCode::NOT_FOUND, "agent not found");
            }
            let sig = random_token(&shared);
            lock(&shared.signatures).insert(sig.clone());
            let url = format!(
                "ws://{}{CONVERSATION_PATH}?agent_id={}&conversation_signature={sig}",
                shared.addr,
                encode_query_value(&cfg.agent_id)
            );
            text_response(StatusCode::OK, json!({ "signed_url": url }).to_string())
        }
        CONVERSATION_PATH => {
            if param("agent_id") != Some(cfg.agent_id.as_str()) {
                return error_response(StatusCode::NOT_FOUND, "agent not found");
            }
            if cfg.api_key.is_some() {
                let ok = param("conversation_signature")
                    .is_some_and(|s| lock(&shared.signatures).contains(s));
                if !ok {
                    return error_response(StatusCode::FORBIDDEN, "invalid conversation signature");
                }
            }
            if !fastwebsockets::upgrade::is_upgrade_request(&req) {
                return error_response(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
            }
            let mut req = req;
            let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
                Ok(x) => x,
                Err(e) => return error_response(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            tokio::spawn(async move {
                match fut.await {
                    Ok(ws) => run_conversation(shared, ws).await,
                    Err(e) => tracing::debug!("mock agent upgrade failed: {e}"),
                }
            });
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, Full::new(Bytes::new()))
        }
        _ => error_response(StatusCode::NOT_FOUND, "not found"),
    }
}

/// A hard-to-guess token (hex, 32 digits) from the std hasher's random keys and a counter.
fn random_token(shared: &Shared) -> String {
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
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

/// Parses `a=b&c=d` with percent- and `+`-decoding.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b[i] == b'%' && i + 3 <= b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters.
fn encode_query_value(s: &str) -> String {
    let mut out = String::new();
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Runs one conversation until the client closes or the connection ends.
async fn run_conversation(shared: Arc<Shared>, ws: fastwebsockets::WebSocket<ws::Stream>) {
    let (mut reader, writer) = ws::split(ws);
    let conv = {
        let mut convs = lock(&shared.conversations);
        let conv = Arc::new(Conversation {
            id: format!("conv_{}", convs.len() + 1),
            writer: writer.clone(),
            state: Mutex::new(ConvState::default()),
            notify: Notify::new(),
            next_event_id: AtomicI64::new(1),
        });
        convs.push(ConversationHandle { conv: conv.clone() });
        conv
    };
    shared.notify.notify_waiters();

    let cfg = &shared.config;
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let msg = match reader.next().await {
            Ok(m) => m,
            Err(e) => {
                conv.protocol_error(format!("WebSocket error: {e}"));
                conv.update(|s| s.closed = Some(None));
                break;
            }
        };
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Binary(b) => {
                conv.protocol_error(format!(
                    "binary frame ({} bytes); the agent API takes JSON text frames",
                    b.len()
                ));
                conv.update(|s| s.messages_seen += 1);
                continue;
            }
            WsMessage::Close { code, .. } => {
                conv.update(|s| s.closed = Some(code));
                break;
            }
            WsMessage::Eof => {
                conv.update(|s| s.closed = Some(None));
                break;
            }
        };
        let first = conv.update(|s| {
            s.messages_seen += 1;
            s.messages_seen == 1
        });
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                conv.protocol_error(format!("invalid JSON ({e}): {}", truncate(&text, 200)));
                if first {
                    tasks = start_scripts(&conv, cfg).await;
                }
                continue;
            }
        };
        let is_init = value.get("type").and_then(Value::as_str)
            == Some("conversation_initiation_client_data");
        if first {
            if is_init {
                conv.update(|s| s.init = Some(value.clone()));
            } else {
                conv.protocol_error(format!(
                    "first message is not conversation_initiation_client_data: {}",
                    truncate(&text, 200)
                ));
            }
            tasks = start_scripts(&conv, cfg).await;
            if is_init {
                continue;
            }
        }
        handle_client_message(&conv, cfg, value, &text).await;
    }
    for t in tasks {
        t.abort();
    }
    writer.release().await;
}

/// Handles one parsed client message after the first.
async fn handle_client_message(
    conv: &Arc<Conversation>,
    cfg: &MockAgentConfig,
    value: Value,
    raw: &str,
) {
    let Some(obj) = value.as_object() else {
        conv.protocol_error(format!(
            "message is not a JSON object: {}",
            truncate(raw, 200)
        ));
        return;
    };
    if let Some(chunk) = obj.get("user_audio_chunk") {
        if obj.len() != 1 {
            conv.protocol_error(format!(
                "user_audio_chunk message has extra fields: {}",
                truncate(raw, 200)
            ));
        }
        let Some(b64) = chunk.as_str() else {
            conv.protocol_error(format!(
                "user_audio_chunk is not a string: {}",
                truncate(raw, 200)
            ));
            return;
        };
        let audio = match B64.decode(b64) {
            Ok(a) => a,
            Err(e) => {
                conv.protocol_error(format!("user_audio_chunk is not valid base64 ({e})"));
                return;
            }
        };
        let now = Instant::now();
        conv.update(|s| {
            s.user_audio.extend_from_slice(&audio);
            s.chunk_times.push(now);
        });
        if matches!(cfg.behavior, AgentBehavior::Echo) {
            let id = conv.take_event_id();
            conv.send_audio(&audio, id).await;
        }
        return;
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("pong") => match obj.get("event_id").and_then(Value::as_i64) {
            Some(id) => conv.update(|s| s.pongs.push(id)),
            None => conv.protocol_error(format!(
                "pong without an integer event_id: {}",
                truncate(raw, 200)
            )),
        },
        Some("conversation_initiation_client_data") => {
            conv.protocol_error("duplicate conversation_initiation_client_data".into());
            conv.update(|s| s.other.push(value.clone()));
        }
        Some(_) => conv.update(|s| s.other.push(value.clone())),
        None => conv.protocol_error(format!(
            "message has neither `type` nor `user_audio_chunk`: {}",
            truncate(raw, 200)
        )),
    }
}

/// Sends `conversation_initiation_metadata` and spawns the scripted behaviour and pinger.
async fn start_scripts(conv: &Arc<Conversation>, cfg: &MockAgentConfig) -> Vec<JoinHandle<()>> {
    let meta = json!({
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conv.id,
            "agent_output_audio_format": cfg.audio_format,
            "user_input_audio_format": cfg.audio_format,
        }
    });
    conv.send(meta.to_string()).await;

    let mut tasks = Vec::new();
    if let Some(every) = cfg.ping_interval {
        let conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticker.tick().await; // the first tick is immediate
            loop {
                ticker.tick().await;
                let id = conv.take_event_id();
                let msg = json!({"type": "ping", "ping_event": {"event_id": id, "ping_ms": null}});
                conv.send(msg.to_string()).await;
            }
        }));
    }
    match &cfg.behavior {
        AgentBehavior::Echo | AgentBehavior::Silent => {}
        AgentBehavior::Garbage => {
            conv.send("this is not JSON {".to_owned()).await;
            if let Err(e) = conv.writer.send_binary(vec![0xde, 0xad, 0xbe, 0xef]).await {
                tracing::debug!("send failed: {e}");
            }
            let id = conv.take_event_id();
            conv.send_audio(&[0xFF; GARBAGE_FOLLOWUP_AUDIO_BYTES], id)
                .await;
        }
        AgentBehavior::Reply {
            reply_audio,
            after_user_bytes,
            think_time,
            chunk_bytes,
            chunk_interval,
            interrupt_after_chunks,
        } => {
            let conv = conv.clone();
            let (reply_audio, after, think, chunk_bytes, interval, interrupt) = (
                reply_audio.clone(),
                *after_user_bytes,
                *think_time,
                *chunk_bytes,
                *chunk_interval,
                *interrupt_after_chunks,
            );
            tasks.push(tokio::spawn(async move {
                let waited = wait_for(
                    &conv.notify,
                    Duration::from_secs(24 * 3600),
                    || "user audio".into(),
                    || {
                        let s = lock(&conv.state);
                        if s.closed.is_some() {
                            Some(false)
                        } else {
                            (s.user_audio.len() >= after).then_some(true)
                        }
                    },
                )
                .await;
                if !matches!(waited, Ok(true)) {
                    return;
                }
                tokio::time::sleep(think).await;
                let mut ticker = tokio::time::interval(interval.max(Duration::from_micros(1)));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let chunks: Vec<&[u8]> = reply_audio.chunks(chunk_bytes).collect();
                let mut last_id = 0i64;
                for i in 0..=chunks.len() {
                    if conv.is_closed() {
                        return;
                    }
                    if interrupt == Some(i) && i > 0 {
                        ticker.tick().await;
                        send_scripted_interruption(&conv, last_id, chunk_bytes).await;
                    }
                    let Some(chunk) = chunks.get(i) else { break };
                    ticker.tick().await;
                    last_id = conv.take_event_id();
                    conv.send_audio(chunk, last_id).await;
                }
            }));
        }
    }
    tasks
}

/// The interruption part of [`AgentBehavior::Reply`]: `interruption` for `e`, then two stale
/// chunks with `event_id`s `e - 1` and `e`.
async fn send_scripted_interruption(conv: &Conversation, e: i64, chunk_bytes: usize) {
    let msg = json!({"type": "interruption", "interruption_event": {"event_id": e}});
    conv.send(msg.to_string()).await;
    let stale = vec![STALE_AUDIO_BYTE; chunk_bytes];
    conv.send_audio(&stale, e - 1).await;
    conv.send_audio(&stale, e).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_query("agent_id=a%20b+c&x=&y&conversation_signature=%2Fz%"),
            vec![
                ("agent_id".into(), "a b c".into()),
                ("x".into(), "".into()),
                ("y".into(), "".into()),
                ("conversation_signature".into(), "/z%".into()),
            ]
        );
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(encode_query_value("ag ent/1"), "ag%20ent%2F1");
    }
}
