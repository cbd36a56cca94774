//! The shared skeleton of the mock voice-agent servers (hyper 1 + fastwebsockets, on
//! `127.0.0.1:0`): one accept loop, HTTP routing and WebSocket upgrade, one read loop per
//! session, the recorded state of each session and the wait/notify, send and close helpers.
//! A [`Dialect`] supplies only what differs between agent APIs: which requests it accepts
//! (paths, auth), which message opens a session, what it answers, and its own recorded extras.
//!
//! Dialects in this crate:
//!
//! | dialect | module | server type | session handle |
//! |---|---|---|---|
//! | ElevenLabs Conversational AI | [`crate::peers::agent_sim`] | [`crate::peers::agent_sim::MockAgent`] | [`crate::peers::agent_sim::ConversationHandle`] |
//! | AssemblyAI Voice Agent API | [`crate::peers::assemblyai_sim`] | [`crate::peers::assemblyai_sim::MockAssemblyAi`] | [`crate::peers::assemblyai_sim::AssemblyAiSession`] |
//! | OpenAI Realtime API (GA) | [`crate::peers::openai_sim`] | [`crate::peers::openai_sim::MockRealtime`] | [`crate::peers::openai_sim::RealtimeSession`] |
//!
//! Every server is a [`MockServer<D>`] and every session a [`SessionHandle<D>`]: the methods
//! documented here work the same for all three dialects; each dialect module adds its own.
//! The scripted behaviours and steps shared by the AssemblyAI and OpenAI mocks are in
//! [`script`].
//!
//! Session life cycle (the same for every dialect):
//!
//! 1. the WebSocket is accepted ([`Dialect::route`] said so); the session is registered
//!    (in accept order) and [`Dialect::on_open`] may send something (OpenAI: `session.created`);
//! 2. the client's **first message** must be the dialect's init message
//!    ([`Dialect::INIT_TYPE`]); anything else (another type, invalid JSON, a binary frame) is
//!    recorded as a protocol error. After the first text message [`Dialect::on_first`]
//!    answers and [`Dialect::start_tasks`] starts the scripted behaviour;
//! 3. every later text message goes to [`Dialect::on_message`]; binary frames are protocol
//!    errors;
//! 4. the session ends when the client closes or the TCP stream ends (or the test resets
//!    the connection with [`SessionHandle::reset`]); its tasks are stopped.
//!
//! Recording is bounded: each recorded list keeps at most [`MAX_RECORDED_ITEMS`] entries and
//! the caller audio at most [`MAX_RECORDED_AUDIO_BYTES`] bytes (a test call never gets near
//! either); entries beyond are counted ([`SessionHandle::dropped_records`]), not kept. There
//! are no queues between tasks: senders write through one shared writer.

pub mod script;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

use crate::truncate;
use crate::ws::{self, WsMessage, WsWriter};

/// Most entries kept in each recorded list of a session (messages, protocol errors, tool
/// results, …, and receive times of audio chunks); later entries are counted, not kept.
pub const MAX_RECORDED_ITEMS: usize = 100_000;
/// Most caller audio bytes kept per session (64 MiB, over two hours of μ-law); later bytes
/// are counted ([`SessionHandle::user_audio_len`]), not kept.
pub const MAX_RECORDED_AUDIO_BYTES: usize = 64 << 20;

/// An HTTP response of a mock server.
pub type Resp = Response<Full<Bytes>>;

/// Locks `m`, ignoring poisoning (a panicking test task must not wedge the mock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until `check` returns `Some`, re-checking after every `notify_waiters` on `notify`.
pub(crate) async fn wait_for<T>(
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

/// Pushes `item` unless `list` is full (then counts it in `dropped`).
pub(crate) fn push_capped<T>(list: &mut Vec<T>, item: T, dropped: &mut usize) {
    if list.len() < MAX_RECORDED_ITEMS {
        list.push(item);
    } else {
        *dropped += 1;
    }
}

// ---------------------------------------------------------------------------------------
// HTTP helpers (also used by the lean bench agent)
// ---------------------------------------------------------------------------------------

/// A response with `body` and `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"detail": detail}` with `status` (the ElevenLabs error shape).
pub fn detail_response(status: StatusCode, detail: &str) -> Resp {
    json_response(status, json!({ "detail": detail }).to_string())
}

/// True if the request's `Authorization` header is exactly `Bearer <key>`.
pub fn bearer_matches(req: &Request<Incoming>, key: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(key)
}

/// Parses `a=b&c=d` with percent- and `+`-decoding.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The value of query parameter `name` in the request URI, if present (first occurrence).
pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    parse_query(req.uri().query().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Percent-decodes `s` (and `+` → space); malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
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
pub fn encode_query_value(s: &str) -> String {
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

/// The file descriptor of the TCP connection a request came on (in every request's
/// extensions, so an upgraded session can reset its connection: [`SessionHandle::reset`]).
/// Only the number: it is valid while the connection (or the upgraded stream) is alive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnFd(pub(crate) RawFd);

/// The accept loop: serves HTTP/1.1 (with upgrades) on `listener`, answering each request
/// with `handler` (with the connection's [`ConnFd`] in its extensions). Returns the loop's
/// task; aborting it stops accepting (connections already accepted keep running).
pub(crate) fn spawn_http_server<F>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Resp + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("mock server accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let fd = ConnFd(tcp.as_raw_fd());
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(fd);
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!("mock server connection error: {e}");
                }
            });
        }
    })
}

/// Accepts `req` as a WebSocket: answers `101` and runs `then` on the upgraded socket in a
/// new task. Not an upgrade request (or a malformed one) → `400 {"detail": …}`.
pub(crate) fn accept_websocket<F, Fut>(mut req: Request<Incoming>, then: F) -> Resp
where
    F: FnOnce(fastwebsockets::WebSocket<ws::Stream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return detail_response(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return detail_response(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => then(ws).await,
            Err(e) => tracing::debug!("mock server upgrade failed: {e}"),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

// ---------------------------------------------------------------------------------------
// Dialects
// ---------------------------------------------------------------------------------------

/// What a dialect answers to an HTTP request.
pub enum Route {
    /// Answer with this response (e.g. 401, 404, or a REST endpoint's body).
    Respond(Resp),
    /// Accept it as a session WebSocket (a request that is not an upgrade gets 400).
    Accept,
}

/// Something a dialect hook wants sent, in order.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A Close frame (code, reason).
    Close(u16, String),
}

impl From<String> for Outgoing {
    fn from(s: String) -> Self {
        Outgoing::Text(s)
    }
}

impl From<Value> for Outgoing {
    fn from(v: Value) -> Self {
        Outgoing::Text(v.to_string())
    }
}

/// One agent API's specifics, plugged into the shared server. Implemented by
/// [`crate::peers::agent_sim::ElevenLabs`], [`crate::peers::assemblyai_sim::AssemblyAi`] and
/// [`crate::peers::openai_sim::OpenAiRealtime`]; the value holds the server's configuration (and
/// any server-wide state of the dialect). Hooks are synchronous and return what to send; the
/// skeleton sends it before reading the next client message.
pub trait Dialect: Sized + Send + Sync + 'static {
    /// Dialect-specific recorded state of one session.
    type State: Default + Send + 'static;
    /// The `type` of the message that must open a session.
    const INIT_TYPE: &'static str;

    /// Id of the `n`-th session (1-based), e.g. `conv_1`, `sess_1`.
    fn session_id(&self, n: usize) -> String;

    /// Routes one HTTP request (`addr` is the server's own address).
    fn route(&self, addr: SocketAddr, req: &Request<Incoming>) -> Route;

    /// True for the dialect's caller-audio message (not logged in [`SessionHandle::messages`]).
    fn is_audio(&self, msg: &Value) -> bool;

    /// True if `msg` is the session's init message (default: `type` == [`Self::INIT_TYPE`]).
    fn is_init(&self, msg: &Value) -> bool {
        msg.get("type").and_then(Value::as_str) == Some(Self::INIT_TYPE)
    }

    /// Sent as soon as the WebSocket is accepted (default: nothing).
    fn on_open(&self, _s: &SessionHandle<Self>) -> Vec<Outgoing> {
        Vec::new()
    }

    /// Answer to the client's first text message; `init` tells whether it was the init
    /// message (already recorded; otherwise a protocol error was recorded).
    fn on_first(&self, s: &SessionHandle<Self>, init: bool) -> Vec<Outgoing>;

    /// Starts the session's scripted tasks (after `on_first`'s messages went out). They are
    /// aborted when the session ends.
    fn start_tasks(&self, s: &SessionHandle<Self>) -> Vec<JoinHandle<()>>;

    /// Handles one parsed client message after the first (`raw` is its text).
    fn on_message(&self, s: &SessionHandle<Self>, msg: Value, raw: &str) -> Vec<Outgoing>;
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

/// One client message as received (every parsed JSON message except caller audio).
#[derive(Debug, Clone)]
pub struct ClientMessage {
    /// When it was read.
    pub at: Instant,
    /// The message.
    pub message: Value,
}

impl ClientMessage {
    /// Its `type`, if it has a string one.
    pub fn kind(&self) -> Option<&str> {
        self.message.get("type").and_then(Value::as_str)
    }
}

/// The recorded state of one session (generic part plus the dialect's `x`).
#[derive(Default)]
pub(crate) struct Record<X> {
    pub init: Option<Value>,
    pub audio: Vec<u8>,
    pub audio_total: usize,
    pub chunk_times: Vec<Instant>,
    pub chunks_total: usize,
    pub messages: Vec<ClientMessage>,
    pub other: Vec<Value>,
    pub protocol_errors: Vec<String>,
    /// `Some(code)` once the client closed (code it sent, if any) or the TCP stream ended.
    pub closed: Option<Option<u16>>,
    pub messages_seen: usize,
    /// Scripted replies finished (see [`script::ReplyScript`]).
    pub replies_done: usize,
    pub dropped: usize,
    pub x: X,
}

impl<X> Record<X> {
    pub(crate) fn push_error(&mut self, e: String) {
        push_capped(&mut self.protocol_errors, e, &mut self.dropped);
    }

    pub(crate) fn push_other(&mut self, v: Value) {
        push_capped(&mut self.other, v, &mut self.dropped);
    }
}

/// The upgrade request of a session.
#[derive(Debug, Clone)]
struct RequestInfo {
    uri: String,
    headers: Vec<(String, String)>,
    /// The connection's socket (see [`ConnFd`]).
    fd: Option<RawFd>,
}

pub(crate) struct Conn<D: Dialect> {
    id: String,
    index: usize,
    shared: Arc<Shared<D>>,
    writer: WsWriter,
    state: Mutex<Record<D::State>>,
    notify: Notify,
    request: RequestInfo,
    opened_at: Instant,
    /// Signalled by [`SessionHandle::reset`]; the session's read loop resets the connection.
    reset: Notify,
}

/// A test's handle on one session of a mock server (cheap to clone). Methods that send
/// ignore failures (e.g. the client already went away); those are only logged at `debug`.
pub struct SessionHandle<D: Dialect> {
    conn: Arc<Conn<D>>,
}

impl<D: Dialect> Clone for SessionHandle<D> {
    fn clone(&self) -> Self {
        SessionHandle {
            conn: self.conn.clone(),
        }
    }
}

impl<D: Dialect> std::fmt::Debug for SessionHandle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.conn.id)
            .finish_non_exhaustive()
    }
}

impl<D: Dialect> SessionHandle<D> {
    // --- crate-internal plumbing for dialects ---

    /// Applies `f` to the recorded state and wakes every waiter.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Record<D::State>) -> R) -> R {
        let r = f(&mut lock(&self.conn.state));
        self.conn.notify.notify_waiters();
        r
    }

    /// Reads the recorded state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Record<D::State>) -> R) -> R {
        f(&lock(&self.conn.state))
    }

    /// Records a protocol violation by the client.
    pub(crate) fn protocol_error(&self, e: String) {
        tracing::debug!(session = %self.conn.id, "protocol error: {e}");
        self.update(|s| s.push_error(e));
    }

    /// Records caller audio (decoded) received now.
    pub(crate) fn record_audio(&self, audio: &[u8]) {
        let now = Instant::now();
        self.update(|s| {
            let room = MAX_RECORDED_AUDIO_BYTES.saturating_sub(s.audio.len());
            s.audio.extend_from_slice(&audio[..audio.len().min(room)]);
            s.audio_total += audio.len();
            s.chunks_total += 1;
            push_capped(&mut s.chunk_times, now, &mut s.dropped);
        });
    }

    /// Decodes the base64 audio string `field` of `msg` (recording a protocol error naming
    /// `what` if it is missing, not a string or not base64).
    pub(crate) fn decode_audio_field(
        &self,
        msg: &Value,
        field: &str,
        what: &str,
    ) -> Option<Vec<u8>> {
        let Some(b64) = msg.get(field).and_then(Value::as_str) else {
            self.protocol_error(format!(
                "{what} without a string `{field}`: {}",
                truncate(&msg.to_string(), 200)
            ));
            return None;
        };
        match B64.decode(b64) {
            Ok(a) => Some(a),
            Err(e) => {
                self.protocol_error(format!("{what}.{field} is not valid base64 ({e})"));
                None
            }
        }
    }

    /// Waits until `check` on the recorded state returns `Some`.
    pub(crate) async fn wait_state<T>(
        &self,
        timeout: Duration,
        what: impl Fn(&Record<D::State>) -> String,
        mut check: impl FnMut(&Record<D::State>) -> Option<T>,
    ) -> anyhow::Result<T> {
        let c = &self.conn;
        wait_for(
            &c.notify,
            timeout,
            || what(&lock(&c.state)),
            || check(&lock(&c.state)),
        )
        .await
    }

    /// Sends `outs` in order (failures logged at debug and the rest skipped).
    pub(crate) async fn send_all(&self, outs: Vec<Outgoing>) {
        for o in outs {
            let r = match o {
                Outgoing::Text(t) => self.conn.writer.send_text(t).await,
                Outgoing::Binary(b) => self.conn.writer.send_binary(b).await,
                Outgoing::Close(code, reason) => self.conn.writer.send_close(code, &reason).await,
            };
            if let Err(e) = r {
                tracing::debug!(session = %self.conn.id, "send failed: {e}");
                return;
            }
        }
    }

    // --- public API, the same for every dialect ---

    /// The session id (`conv_<n>` for ElevenLabs, `sess_<n>` for the others; n from 1).
    pub fn id(&self) -> &str {
        &self.conn.id
    }

    /// 0-based accept order of this session on its server.
    pub fn index(&self) -> usize {
        self.conn.index
    }

    /// The dialect (its configuration) of the server this session belongs to.
    pub fn dialect(&self) -> &D {
        &self.conn.shared.dialect
    }

    /// When the WebSocket was accepted.
    pub fn opened_at(&self) -> Instant {
        self.conn.opened_at
    }

    /// Path and query of the upgrade request, e.g. `/v1/realtime?model=gpt-realtime`.
    pub fn request_uri(&self) -> &str {
        &self.conn.request.uri
    }

    /// Value of header `name` (case-insensitive) in the upgrade request, if it was sent.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.conn
            .request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// Waits for the client's init message ([`Dialect::INIT_TYPE`]) and returns it whole
    /// (including `"type"`). Errors on timeout, or if the client's first message was
    /// something else, or the connection ended first.
    pub async fn init_message(&self, timeout: Duration) -> anyhow::Result<Value> {
        let init_type = D::INIT_TYPE;
        self.wait_state(
            timeout,
            |_| init_type.to_owned(),
            |s| {
                if let Some(v) = &s.init {
                    return Some(Ok(v.clone()));
                }
                // `messages_seen` is bumped just before `init` is stored: only a recorded
                // protocol error proves the first message was something else.
                if s.messages_seen > 0 && !s.protocol_errors.is_empty() {
                    return Some(Err(anyhow!(
                        "first client message was not {init_type}: {:?}",
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

    /// All caller audio received (base64-decoded, concatenated; at most
    /// [`MAX_RECORDED_AUDIO_BYTES`]).
    pub fn user_audio(&self) -> Vec<u8> {
        self.read(|s| s.audio.clone())
    }

    /// Total caller audio bytes received (decoded), including any beyond the recording cap.
    pub fn user_audio_len(&self) -> usize {
        self.read(|s| s.audio_total)
    }

    /// Number of caller-audio messages received.
    pub fn user_audio_chunks(&self) -> usize {
        self.read(|s| s.chunks_total)
    }

    /// Receive time of each caller-audio message, in order.
    pub fn user_audio_chunk_times(&self) -> Vec<Instant> {
        self.read(|s| s.chunk_times.clone())
    }

    /// Waits until at least `n` bytes of (decoded) caller audio have arrived.
    pub async fn wait_user_audio_bytes(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(
            timeout,
            |s| format!("{n} bytes of user audio (have {})", s.audio_total),
            |s| (s.audio_total >= n).then_some(()),
        )
        .await
    }

    /// Every parsed client message except caller audio (the init message included), in
    /// order, with its receive time.
    pub fn messages(&self) -> Vec<ClientMessage> {
        self.read(|s| s.messages.clone())
    }

    /// The client messages whose `type` is `kind`, in order.
    pub fn messages_of_type(&self, kind: &str) -> Vec<ClientMessage> {
        self.read(|s| {
            s.messages
                .iter()
                .filter(|m| m.kind() == Some(kind))
                .cloned()
                .collect()
        })
    }

    /// Waits until at least `n` client messages of type `kind` have arrived; returns all of
    /// them.
    pub async fn wait_messages_of_type(
        &self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ClientMessage>> {
        self.wait_state(
            timeout,
            |s| {
                let types: Vec<_> = s.messages.iter().filter_map(ClientMessage::kind).collect();
                format!("{n} `{kind}` message(s) (have types {types:?})")
            },
            |s| {
                let v: Vec<ClientMessage> = s
                    .messages
                    .iter()
                    .filter(|m| m.kind() == Some(kind))
                    .cloned()
                    .collect();
                (v.len() >= n).then_some(v)
            },
        )
        .await
    }

    /// Every valid client message the dialect has no specific record for, parsed, in order
    /// (see each dialect's docs for what counts).
    pub fn other_messages(&self) -> Vec<Value> {
        self.read(|s| s.other.clone())
    }

    /// Protocol violations by the client, in order (e.g. a first message that is not the
    /// init message, invalid JSON, binary frames, bad base64, unknown message shapes, and the
    /// dialect's own rules). Empty for a well-behaved client.
    pub fn protocol_errors(&self) -> Vec<String> {
        self.read(|s| s.protocol_errors.clone())
    }

    /// Waits until at least `n` protocol errors were recorded; returns them all.
    pub async fn wait_protocol_errors(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        self.wait_state(
            timeout,
            |s| format!("{n} protocol error(s) (have {:?})", s.protocol_errors),
            |s| (s.protocol_errors.len() >= n).then(|| s.protocol_errors.clone()),
        )
        .await
    }

    /// Scripted replies finished so far (dialects with scripted replies).
    pub fn replies_done(&self) -> usize {
        self.read(|s| s.replies_done)
    }

    /// Recorded entries dropped because a list or the audio buffer was full.
    pub fn dropped_records(&self) -> usize {
        self.read(|s| s.dropped)
    }

    /// Sends `raw` as one text frame, unchanged.
    pub async fn send_text(&self, raw: String) {
        self.send_all(vec![Outgoing::Text(raw)]).await;
    }

    /// Sends `raw` as one binary frame.
    pub async fn send_binary(&self, raw: Vec<u8>) {
        self.send_all(vec![Outgoing::Binary(raw)]).await;
    }

    /// Sends a Close frame (`code`, `reason`). The connection is released once the client
    /// answers or the TCP stream ends.
    pub async fn close(&self, code: u16, reason: &str) {
        if let Err(e) = self.conn.writer.send_close(code, reason).await {
            tracing::debug!(session = %self.conn.id, "close failed: {e}");
        }
    }

    /// Waits until the client closed the WebSocket or the TCP connection ended. Returns the
    /// close code the client sent (`None` if it sent an empty Close or none at all).
    /// Errors on timeout.
    pub async fn wait_closed(&self, timeout: Duration) -> anyhow::Result<Option<u16>> {
        let id = self.conn.id.clone();
        self.wait_state(
            timeout,
            move |_| format!("session {id} to close"),
            |s| s.closed,
        )
        .await
    }

    /// True once the client closed or the connection ended.
    pub fn is_closed(&self) -> bool {
        self.read(|s| s.closed.is_some())
    }

    /// Resets the TCP connection (`SO_LINGER` 0, then close: the client reads a reset, no
    /// Close frame and no FIN), as a crashed server or a middlebox would; the session ends
    /// (recorded as closed with no code) and its tasks stop. Returns once the session has let
    /// go of the connection, i.e. the reset is sent (waits at most a second; a no-op if the
    /// session already ended).
    pub async fn reset(&self) {
        self.conn.reset.notify_one();
        if let Err(e) = self.wait_closed(Duration::from_secs(1)).await {
            tracing::debug!(session = %self.conn.id, "reset: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Server state shared by all connections.
pub(crate) struct Shared<D: Dialect> {
    dialect: D,
    addr: SocketAddr,
    sessions: Mutex<Vec<SessionHandle<D>>>,
    /// Index of the next session `next_session` returns.
    next_taken: Mutex<usize>,
    notify: Notify,
}

/// A running mock server of dialect `D`. Dropping it stops accepting new connections
/// (running sessions continue until their sockets close).
pub struct MockServer<D: Dialect> {
    shared: Arc<Shared<D>>,
    accept_task: JoinHandle<()>,
}

impl<D: Dialect> Drop for MockServer<D> {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Starts a mock server of `dialect` on `127.0.0.1:0` (an ephemeral port).
pub async fn serve<D: Dialect>(dialect: D) -> anyhow::Result<MockServer<D>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        dialect,
        addr,
        sessions: Mutex::new(Vec::new()),
        next_taken: Mutex::new(0),
        notify: Notify::new(),
    });
    let s = shared.clone();
    let accept_task = spawn_http_server(listener, move |req| match s.dialect.route(addr, &req) {
        Route::Respond(r) => r,
        Route::Accept => {
            let request = RequestInfo {
                uri: req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                fd: req.extensions().get::<ConnFd>().map(|f| f.0),
            };
            let s = s.clone();
            accept_websocket(req, move |ws| run_session(s, ws, request))
        }
    });
    Ok(MockServer {
        shared,
        accept_task,
    })
}

impl<D: Dialect> MockServer<D> {
    /// The listening address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The dialect (its configuration).
    pub fn dialect(&self) -> &D {
        &self.shared.dialect
    }

    /// Returns the next session not yet returned, in WebSocket-accept order, waiting up to
    /// `timeout` for one to be accepted.
    pub async fn next_session(&self, timeout: Duration) -> anyhow::Result<SessionHandle<D>> {
        let s = &self.shared;
        wait_for(
            &s.notify,
            timeout,
            || "a new agent session".into(),
            || {
                let sessions = lock(&s.sessions);
                let mut next = lock(&s.next_taken);
                let c = sessions.get(*next)?.clone();
                *next += 1;
                Some(c)
            },
        )
        .await
    }

    /// Number of sessions (accepted WebSockets) so far.
    pub fn sessions_started(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    /// Session number `index` (0-based, accept order), if it exists. Does not affect
    /// [`next_session`](Self::next_session).
    pub fn session(&self, index: usize) -> Option<SessionHandle<D>> {
        lock(&self.shared.sessions).get(index).cloned()
    }
}

/// Runs one session until the client closes or the connection ends.
async fn run_session<D: Dialect>(
    shared: Arc<Shared<D>>,
    ws: fastwebsockets::WebSocket<ws::Stream>,
    request: RequestInfo,
) {
    let (mut reader, writer) = ws::split(ws);
    let h = {
        let mut sessions = lock(&shared.sessions);
        let index = sessions.len();
        let h = SessionHandle {
            conn: Arc::new(Conn {
                id: shared.dialect.session_id(index + 1),
                index,
                shared: shared.clone(),
                writer: writer.clone(),
                state: Mutex::new(Record::default()),
                notify: Notify::new(),
                request,
                opened_at: Instant::now(),
                reset: Notify::new(),
            }),
        };
        sessions.push(h.clone());
        h
    };
    shared.notify.notify_waiters();
    let d = &shared.dialect;
    h.send_all(d.on_open(&h)).await;

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut reset = false;
    loop {
        // `next` is not cancel-safe, but it is only cancelled by a reset, after which the
        // reader is dropped unread.
        let next = tokio::select! {
            m = reader.next() => Some(m),
            _ = h.conn.reset.notified() => None,
        };
        let Some(next) = next else {
            set_linger_zero(h.conn.request.fd);
            reset = true;
            break;
        };
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                h.protocol_error(format!("WebSocket error: {e}"));
                h.update(|s| s.closed = Some(None));
                break;
            }
        };
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Binary(b) => {
                h.protocol_error(format!(
                    "binary frame ({} bytes); the agent API takes JSON text frames",
                    b.len()
                ));
                h.update(|s| s.messages_seen += 1);
                continue;
            }
            WsMessage::Close { code, .. } => {
                h.update(|s| s.closed = Some(code));
                break;
            }
            WsMessage::Eof => {
                h.update(|s| s.closed = Some(None));
                break;
            }
        };
        let first = h.update(|s| {
            s.messages_seen += 1;
            s.messages_seen == 1
        });
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                h.protocol_error(format!("invalid JSON ({e}): {}", truncate(&text, 200)));
                if first {
                    h.send_all(d.on_first(&h, false)).await;
                    tasks = d.start_tasks(&h);
                }
                continue;
            }
        };
        if !d.is_audio(&value) {
            let m = ClientMessage {
                at: Instant::now(),
                message: value.clone(),
            };
            h.update(|s| push_capped(&mut s.messages, m, &mut s.dropped));
        }
        if first {
            let is_init = d.is_init(&value);
            if is_init {
                h.update(|s| s.init = Some(value.clone()));
            } else {
                h.protocol_error(format!(
                    "first message is not {}: {}",
                    D::INIT_TYPE,
                    truncate(&text, 200)
                ));
            }
            h.send_all(d.on_first(&h, is_init)).await;
            tasks = d.start_tasks(&h);
            if is_init {
                continue;
            }
        }
        let outs = d.on_message(&h, value, &text);
        h.send_all(outs).await;
    }
    for t in tasks {
        t.abort();
    }
    drop(reader);
    writer.release().await;
    if reset {
        h.update(|s| s.closed = Some(None));
    }
}

/// Sets `SO_LINGER` 0 on the connection's socket (through a duplicate of its descriptor), so
/// that closing it sends a TCP reset instead of a FIN. Called only while the session still
/// holds the upgraded stream, so `fd` is the session's own socket.
fn set_linger_zero(fd: Option<RawFd>) {
    let Some(fd) = fd else {
        tracing::warn!("no socket to reset: the connection closes normally");
        return;
    };
    // SAFETY: the caller (the session's read loop) holds the upgraded stream that owns `fd`,
    // so it is open for the duration of this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let dup = match borrowed.try_clone_to_owned() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("cannot duplicate the socket to reset it: {e}");
            return;
        }
    };
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(dup));
    // Linger 0 does not block on close (the deprecation is about positive timeouts); the
    // option belongs to the socket, so it holds for the session's own descriptor too. Only
    // the duplicate is closed here; the reset goes out when the session drops the stream.
    #[allow(deprecated)]
    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
        tracing::warn!("cannot set SO_LINGER on the socket to reset it: {e}");
    }
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
