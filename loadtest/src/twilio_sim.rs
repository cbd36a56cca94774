//! Simulated Twilio Media Streams caller (the WebSocket **client** on the Twilio leg).
//!
//! Outbound (simulated Twilio → relay) messages use Twilio's exact shapes: `connected`, `start`,
//! `media`, `mark`, `dtmf` and `stop`, with `sequenceNumber`, `media.chunk` and
//! `media.timestamp` as JSON strings holding decimal integers. Client frames are masked.
//!
//! Inbound (relay → simulated Twilio) messages are validated as strictly as Twilio does: only
//! `media`, `mark` and `clear`; exactly the documented fields and no others; valid base64; the
//! `streamSid` given in `start`. Any violation is returned as an error of type
//! [`TwilioProtocolError`] whose message says what was wrong. Binary frames are violations too.
//!
//! Low level: [`TwilioClient`] (or its halves [`TwilioSender`] / [`TwilioReceiver`]).
//! High level: [`run_call`] plays a whole call from a [`CallScript`] and emulates Twilio's
//! playback queue (real-time drain, mark echoes, `clear`), returning a [`CallReport`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::truncate;
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use fastwebsockets::WebSocketError;
use http_body_util::Empty;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Mutex};
use tokio::time::{Instant as TInstant, MissedTickBehavior};

use crate::ws::{self, SpawnExecutor, WsMessage, WsReader, WsWriter};

/// Parameters of the Twilio `start` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartParams {
    /// `start.accountSid` (Twilio: `AC` + 32 hex digits).
    pub account_sid: String,
    /// `start.callSid` (Twilio: `CA` + 32 hex digits).
    pub call_sid: String,
    /// `start.streamSid` and the top-level `streamSid` (Twilio: `MZ` + 32 hex digits). The
    /// relay must put this exact value in every message it sends back.
    pub stream_sid: String,
    /// `start.customParameters`, the `<Parameter name value>` pairs, in this order.
    pub custom_parameters: Vec<(String, String)>,
}

impl StartParams {
    /// Well-formed, distinct sids for simulated call number `n` (`AC…`, `CA…`, `MZ…`, each
    /// followed by 32 lowercase hex digits) and no custom parameters.
    pub fn for_call(n: u64) -> Self {
        StartParams {
            account_sid: format!("AC{:032x}", 0xacu64),
            call_sid: format!("CA{n:032x}"),
            stream_sid: format!("MZ{n:032x}"),
            custom_parameters: Vec::new(),
        }
    }
}

/// One message from the relay, after strict validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioInbound {
    /// `{"event":"media","streamSid":S,"media":{"payload":B64}}`; `payload` is decoded μ-law.
    Media {
        /// The message's `streamSid`.
        stream_sid: String,
        /// Decoded audio bytes (μ-law, 8 bytes per ms).
        payload: Vec<u8>,
    },
    /// `{"event":"mark","streamSid":S,"mark":{"name":N}}`.
    Mark {
        /// The message's `streamSid`.
        stream_sid: String,
        /// `mark.name`.
        name: String,
    },
    /// `{"event":"clear","streamSid":S}`.
    Clear {
        /// The message's `streamSid`.
        stream_sid: String,
    },
    /// The relay sent a WebSocket Close frame (already answered). `code` is `None` when the
    /// Close frame had no payload. After this, `recv` returns `Ok(None)`.
    Close {
        /// Close status code, e.g. 1000.
        code: Option<u16>,
        /// Close reason text (lossy UTF-8).
        reason: String,
    },
}

/// A relay → Twilio message that Twilio would reject (warning 31950/31951). Returned (inside
/// `anyhow::Error`, so use `err.downcast_ref::<TwilioProtocolError>()`) by
/// [`TwilioReceiver::recv`] and [`parse_server_message`]. After such an error the connection is
/// still usable and `recv` can be called again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioProtocolError {
    /// What was wrong, followed by (a prefix of) the offending message.
    pub message: String,
}

impl fmt::Display for TwilioProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Twilio protocol violation: {}", self.message)
    }
}

impl std::error::Error for TwilioProtocolError {}

/// Validates one text message the relay sent to Twilio, exactly as Twilio's rules in
/// Twilio Media Streams messages describe, and decodes it.
///
/// `expected_stream_sid` is the `streamSid` of the `start` that was sent, or `None` if no
/// `start` was sent yet (then any message is a violation: Twilio cannot route it).
///
/// Checks: valid JSON object; `event` is one of `media`/`mark`/`clear`; exactly the documented
/// keys at every level (no missing, no extra); all values are strings; `streamSid` matches;
/// `media.payload` is non-empty standard base64 (with padding); `mark.name` is non-empty.
pub fn parse_server_message(
    text: &str,
    expected_stream_sid: Option<&str>,
) -> Result<TwilioInbound, TwilioProtocolError> {
    let fail = |what: String| TwilioProtocolError {
        message: format!("{what}; message: {}", truncate_with_len(text, 300)),
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| fail(format!("invalid JSON ({e})")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| fail("message is not a JSON object".into()))?;
    let event = match obj.get("event") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(fail(format!("`event` is not a string: {other}"))),
        None => return Err(fail("missing `event` field".into())),
    };
    let expected_keys: &[&str] = match event {
        "media" => &["event", "streamSid", "media"],
        "mark" => &["event", "streamSid", "mark"],
        "clear" => &["event", "streamSid"],
        other => {
            return Err(fail(format!(
                "unknown event {other:?} (Twilio accepts only media, mark, clear)"
            )))
        }
    };
    exact_keys(obj, expected_keys, event).map_err(&fail)?;
    let stream_sid = string_field(obj, "streamSid", event).map_err(&fail)?;
    match expected_stream_sid {
        None => return Err(fail(format!("{event} sent before the stream's start"))),
        Some(exp) if exp != stream_sid => {
            return Err(fail(format!(
                "streamSid {stream_sid:?} does not match the stream's {exp:?}"
            )))
        }
        Some(_) => {}
    }
    let stream_sid = stream_sid.to_owned();
    match event {
        "media" => {
            let media = object_field(obj, "media", event).map_err(&fail)?;
            exact_keys(media, &["payload"], "media.media").map_err(&fail)?;
            let payload = string_field(media, "payload", "media.media").map_err(&fail)?;
            if payload.is_empty() {
                return Err(fail("media.payload is empty".into()));
            }
            let payload = B64
                .decode(payload)
                .map_err(|e| fail(format!("media.payload is not valid base64 ({e})")))?;
            Ok(TwilioInbound::Media {
                stream_sid,
                payload,
            })
        }
        "mark" => {
            let mark = object_field(obj, "mark", event).map_err(&fail)?;
            exact_keys(mark, &["name"], "mark.mark").map_err(&fail)?;
            let name = string_field(mark, "name", "mark.mark").map_err(&fail)?;
            if name.is_empty() {
                return Err(fail("mark.name is empty".into()));
            }
            Ok(TwilioInbound::Mark {
                stream_sid,
                name: name.to_owned(),
            })
        }
        _ => Ok(TwilioInbound::Clear { stream_sid }),
    }
}

fn exact_keys(obj: &Map<String, Value>, expected: &[&str], what: &str) -> Result<(), String> {
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|k| !obj.contains_key(*k))
        .collect();
    let extra: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !expected.contains(k))
        .collect();
    match (missing.is_empty(), extra.is_empty()) {
        (true, true) => Ok(()),
        (false, true) => Err(format!("{what}: missing field(s) {missing:?}")),
        (true, false) => Err(format!("{what}: unexpected extra field(s) {extra:?}")),
        (false, false) => Err(format!(
            "{what}: missing field(s) {missing:?} and unexpected extra field(s) {extra:?}"
        )),
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{what}: `{key}` is not a string: {other}")),
        None => Err(format!("{what}: missing `{key}`")),
    }
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a Map<String, Value>, String> {
    match obj.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(format!("{what}: `{key}` is not an object: {other}")),
        None => Err(format!("{what}: missing `{key}`")),
    }
}

/// JSON string literal for `s` (quoted and escaped).
fn js(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// State shared by the two halves of one connection.
#[derive(Default)]
struct Session {
    /// The `start` that was sent, if any (the receiver checks `streamSid` against it).
    start: std::sync::Mutex<Option<StartParams>>,
}

impl Session {
    fn start(&self) -> Option<StartParams> {
        self.start.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters of the sending side. Held locked across each write so numbering matches wire order.
#[derive(Default)]
struct Counters {
    /// Last `sequenceNumber` used (0 before `start`).
    sequence: u64,
    /// Last `media.chunk` used (0 before the first media).
    chunk: u64,
    /// μ-law bytes sent in media messages so far.
    media_bytes: u64,
}

/// Sending half of a simulated Twilio connection. Cheap to clone; all clones share the
/// counters and the socket, and every method takes `&self`, so it can be used from several
/// tasks (messages are numbered in the order they hit the wire).
///
/// Numbering, as Twilio does it: `sequenceNumber` is one counter across every message that
/// has one (`start` is `"1"`, then `media`, `mark`, `dtmf`, `stop` each take the next);
/// `connected` has none. `media.chunk` counts media messages from `"1"`. `media.timestamp` is
/// derived from the audio sent, not the wall clock: the ms of audio in all earlier media
/// messages (total earlier bytes ÷ 8), i.e. `20 × (chunk − 1)` with 160-byte frames. That keeps
/// it deterministic.
#[derive(Clone)]
pub struct TwilioSender {
    writer: WsWriter,
    counters: Arc<Mutex<Counters>>,
    session: Arc<Session>,
}

impl TwilioSender {
    fn stream_sid(&self) -> String {
        self.session
            .start()
            .map(|s| s.stream_sid)
            .unwrap_or_default()
    }

    async fn send(&self, text: String) -> anyhow::Result<()> {
        self.writer
            .send_text(text)
            .await
            .map_err(|e| anyhow!("sending to the relay failed: {e}"))
    }

    /// Sends `{"event":"connected","protocol":"Call","version":"1.0.0"}` (no sequence number).
    pub async fn send_connected(&self) -> anyhow::Result<()> {
        self.send(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_owned())
            .await
    }

    /// Sends `start` with `tracks: ["inbound"]` and `mediaFormat {encoding:"audio/x-mulaw",
    /// sampleRate:8000, channels:1}`; records `params` so later messages carry its `streamSid`
    /// and the receiver checks the relay's `streamSid` against it.
    pub async fn send_start(&self, params: &StartParams) -> anyhow::Result<()> {
        let mut custom = Map::new();
        for (k, v) in &params.custom_parameters {
            custom.insert(k.clone(), Value::String(v.clone()));
        }
        let mut c = self.counters.lock().await;
        c.sequence += 1;
        let text = format!(
            concat!(
                r#"{{"event":"start","sequenceNumber":"{}","start":{{"accountSid":{},"#,
                r#""streamSid":{},"callSid":{},"tracks":["inbound"],"#,
                r#""mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"#,
                r#""customParameters":{}}},"streamSid":{}}}"#
            ),
            c.sequence,
            js(&params.account_sid),
            js(&params.stream_sid),
            js(&params.call_sid),
            Value::Object(custom),
            js(&params.stream_sid),
        );
        *self.session.start.lock().unwrap_or_else(|p| p.into_inner()) = Some(params.clone());
        self.send(text).await
    }

    /// Sends one inbound `media` message carrying `audio` (raw μ-law, any length; Twilio uses
    /// 160 bytes = 20 ms) base64-encoded, with `track:"inbound"` and the next `chunk`,
    /// `timestamp` and `sequenceNumber` (see the type docs for the numbering).
    pub async fn send_media(&self, audio: &[u8]) -> anyhow::Result<()> {
        let sid = js(&self.stream_sid());
        let payload = B64.encode(audio);
        let mut c = self.counters.lock().await;
        c.sequence += 1;
        c.chunk += 1;
        let timestamp_ms = c.media_bytes / crate::MULAW_BYTES_PER_MS as u64;
        c.media_bytes += audio.len() as u64;
        let text = format!(
            concat!(
                r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","#,
                r#""chunk":"{}","timestamp":"{}","payload":"{}"}},"streamSid":{}}}"#
            ),
            c.sequence, c.chunk, timestamp_ms, payload, sid
        );
        self.send(text).await
    }

    /// Sends a `mark` echo (Twilio → relay: "audio before mark `name` has played").
    pub async fn send_mark(&self, name: &str) -> anyhow::Result<()> {
        let sid = js(&self.stream_sid());
        let mut c = self.counters.lock().await;
        c.sequence += 1;
        let text = format!(
            r#"{{"event":"mark","sequenceNumber":"{}","streamSid":{},"mark":{{"name":{}}}}}"#,
            c.sequence,
            sid,
            js(name)
        );
        self.send(text).await
    }

    /// Sends a `dtmf` event for key `digit` (e.g. `"1"`, `"#"`), `track:"inbound_track"`.
    pub async fn send_dtmf(&self, digit: &str) -> anyhow::Result<()> {
        let sid = js(&self.stream_sid());
        let mut c = self.counters.lock().await;
        c.sequence += 1;
        let text = format!(
            concat!(
                r#"{{"event":"dtmf","streamSid":{},"sequenceNumber":"{}","#,
                r#""dtmf":{{"track":"inbound_track","digit":{}}}}}"#
            ),
            sid,
            c.sequence,
            js(digit)
        );
        self.send(text).await
    }

    /// Sends `stop` (call ended) with the `accountSid`/`callSid` from `start` (empty strings if
    /// no `start` was sent). Does not close the socket.
    pub async fn send_stop(&self) -> anyhow::Result<()> {
        let start = self.session.start();
        let (account, call, sid) = match &start {
            Some(s) => (
                s.account_sid.as_str(),
                s.call_sid.as_str(),
                s.stream_sid.as_str(),
            ),
            None => ("", "", ""),
        };
        let mut c = self.counters.lock().await;
        c.sequence += 1;
        let text = format!(
            concat!(
                r#"{{"event":"stop","sequenceNumber":"{}","stop":{{"accountSid":{},"#,
                r#""callSid":{}}},"streamSid":{}}}"#
            ),
            c.sequence,
            js(account),
            js(call),
            js(sid)
        );
        self.send(text).await
    }

    /// Sends `text` as one text frame, unchanged (for malformed-input tests). Does not touch
    /// the counters.
    pub async fn send_text_raw(&self, text: String) -> anyhow::Result<()> {
        self.send(text).await
    }

    /// Sends `bytes` as one binary frame (Twilio never does this).
    pub async fn send_binary_raw(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.writer
            .send_binary(bytes)
            .await
            .map_err(|e| anyhow!("sending to the relay failed: {e}"))
    }

    /// Sends a Close frame with status `code` and an empty reason (a no-op if a Close was
    /// already sent). Keep calling [`TwilioReceiver::recv`] to see the relay's Close reply.
    pub async fn close(&self, code: u16) -> anyhow::Result<()> {
        self.writer
            .send_close(code, "")
            .await
            .map_err(|e| anyhow!("sending Close to the relay failed: {e}"))
    }
}

/// Receiving half of a simulated Twilio connection.
///
/// Pings are answered and a Close from the relay is echoed automatically: fastwebsockets'
/// `auto_pong`/`auto_close` stay on and the control frames they owe are written through the
/// shared writer of the matching [`TwilioSender`] (a mutex, not a channel), so the receiver
/// works without anyone polling the sender.
///
/// [`recv`](Self::recv) is **not cancel-safe** (a read dropped mid-frame desynchronises the
/// stream): do not race it in `select!`; give it its own task instead.
pub struct TwilioReceiver {
    reader: WsReader,
    session: Arc<Session>,
    done: bool,
    /// How the connection ended, once it has (see [`TwilioReceiver::ended_with`]).
    ended: Option<Option<u16>>,
}

impl TwilioReceiver {
    /// Waits for the next message from the relay.
    ///
    /// - `Ok(Some(msg))`: a valid `media`/`mark`/`clear`, or [`TwilioInbound::Close`].
    /// - `Ok(None)`: the connection is over (after a Close, or TCP ended without one).
    /// - `Err(e)` with `e.downcast_ref::<TwilioProtocolError>()` = `Some`: the relay sent
    ///   something Twilio would reject (bad message or a binary frame); you may keep reading.
    /// - any other `Err`: a WebSocket/transport failure; later calls return `Ok(None)`.
    pub async fn recv(&mut self) -> anyhow::Result<Option<TwilioInbound>> {
        if self.done {
            return Ok(None);
        }
        let msg = match self.reader.next().await {
            Ok(m) => m,
            Err(e) => {
                self.done = true;
                return Err(anyhow!("WebSocket error reading from the relay: {e}"));
            }
        };
        match msg {
            WsMessage::Text(text) => {
                let start = self.session.start();
                let expected = start.as_ref().map(|s| s.stream_sid.as_str());
                Ok(Some(parse_server_message(&text, expected)?))
            }
            WsMessage::Binary(b) => Err(TwilioProtocolError {
                message: format!(
                    "binary frame ({} bytes); Twilio accepts only text frames (warning 31950)",
                    b.len()
                ),
            }
            .into()),
            WsMessage::Close { code, reason } => {
                self.done = true;
                self.ended = Some(Some(code.unwrap_or(1005)));
                Ok(Some(TwilioInbound::Close { code, reason }))
            }
            WsMessage::Eof => {
                self.done = true;
                self.ended = Some(None);
                Ok(None)
            }
        }
    }
}

impl TwilioReceiver {
    /// The next text message exactly as received, **without** Twilio validation (the load
    /// harness validates with [`parse_server_message`] itself, or — against the floor echo
    /// server, which reflects the caller's own messages — not at all). Binary frames are
    /// skipped. `Ok(None)` once the connection is over (Close received or TCP ended).
    /// Not cancel-safe, like [`recv`](Self::recv).
    pub async fn recv_raw(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if self.done {
                return Ok(None);
            }
            match self.reader.next().await {
                Ok(WsMessage::Text(t)) => return Ok(Some(t)),
                Ok(WsMessage::Binary(_)) => continue,
                Ok(WsMessage::Close { code, .. }) => {
                    self.done = true;
                    self.ended = Some(Some(code.unwrap_or(1005)));
                    return Ok(None);
                }
                Ok(WsMessage::Eof) => {
                    self.done = true;
                    self.ended = Some(None);
                    return Ok(None);
                }
                Err(e) => {
                    self.done = true;
                    self.ended = Some(None);
                    return Err(anyhow!("WebSocket error reading from the relay: {e}"));
                }
            }
        }
    }

    /// How the connection ended: `None` while it has not; `Some(Some(code))` after a Close
    /// frame from the relay (1005 when it carried no code); `Some(None)` when TCP ended or
    /// failed without one.
    pub fn ended_with(&self) -> Option<Option<u16>> {
        self.ended
    }
}

/// A connected simulated Twilio caller: a [`TwilioSender`] and a [`TwilioReceiver`] in one.
/// Use [`split`](Self::split) to send and receive from different tasks.
pub struct TwilioClient {
    sender: TwilioSender,
    receiver: TwilioReceiver,
}

impl TwilioClient {
    /// Connects to `url` (`ws://host:port/path`, plain TCP only) sending `headers` (name,
    /// value) in the upgrade request, e.g. `X-Twilio-Signature`. Fails if the server does not
    /// answer `101 Switching Protocols` (the error names the status).
    pub async fn connect(url: &str, headers: &[(String, String)]) -> anyhow::Result<TwilioClient> {
        match Self::try_connect(url, headers).await? {
            Ok(c) => Ok(c),
            Err(status) => bail!("{url}: server refused the WebSocket upgrade with HTTP {status}"),
        }
    }

    /// Like [`connect`](Self::connect), but an HTTP answer other than 101 is returned as
    /// `Ok(Err(status))` (e.g. 403 for a bad signature, 503 when the relay sheds load).
    /// Connection failures and malformed handshakes are `Err`.
    pub async fn try_connect(
        url: &str,
        headers: &[(String, String)],
    ) -> anyhow::Result<Result<TwilioClient, u16>> {
        let (authority, path) = parse_ws_url(url)?;
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        tcp.set_nodelay(true)?;
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("Host", authority)
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .context("building the upgrade request")?;
        let ws = match fastwebsockets::handshake::client(&SpawnExecutor, req, tcp).await {
            Ok((ws, _resp)) => ws,
            Err(WebSocketError::InvalidStatusCode(status)) => return Ok(Err(status)),
            Err(e) => bail!("{url}: WebSocket handshake failed: {e}"),
        };
        let (reader, writer) = ws::split(ws);
        let session = Arc::new(Session::default());
        Ok(Ok(TwilioClient {
            sender: TwilioSender {
                writer,
                counters: Arc::new(Mutex::new(Counters::default())),
                session: session.clone(),
            },
            receiver: TwilioReceiver {
                reader,
                session,
                done: false,
                ended: None,
            },
        }))
    }

    /// Splits into independently usable halves (see [`TwilioReceiver`] for how control frames
    /// are answered).
    pub fn split(self) -> (TwilioSender, TwilioReceiver) {
        (self.sender, self.receiver)
    }

    /// The sending half (cloneable).
    pub fn sender(&self) -> &TwilioSender {
        &self.sender
    }

    /// See [`TwilioSender::send_connected`].
    pub async fn send_connected(&self) -> anyhow::Result<()> {
        self.sender.send_connected().await
    }

    /// See [`TwilioSender::send_start`].
    pub async fn send_start(&self, params: &StartParams) -> anyhow::Result<()> {
        self.sender.send_start(params).await
    }

    /// See [`TwilioSender::send_media`].
    pub async fn send_media(&self, audio: &[u8]) -> anyhow::Result<()> {
        self.sender.send_media(audio).await
    }

    /// See [`TwilioSender::send_mark`].
    pub async fn send_mark(&self, name: &str) -> anyhow::Result<()> {
        self.sender.send_mark(name).await
    }

    /// See [`TwilioSender::send_dtmf`].
    pub async fn send_dtmf(&self, digit: &str) -> anyhow::Result<()> {
        self.sender.send_dtmf(digit).await
    }

    /// See [`TwilioSender::send_stop`].
    pub async fn send_stop(&self) -> anyhow::Result<()> {
        self.sender.send_stop().await
    }

    /// See [`TwilioSender::send_text_raw`].
    pub async fn send_text_raw(&self, text: String) -> anyhow::Result<()> {
        self.sender.send_text_raw(text).await
    }

    /// See [`TwilioSender::send_binary_raw`].
    pub async fn send_binary_raw(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.sender.send_binary_raw(bytes).await
    }

    /// See [`TwilioSender::close`].
    pub async fn close(&self, code: u16) -> anyhow::Result<()> {
        self.sender.close(code).await
    }

    /// See [`TwilioReceiver::recv`] (not cancel-safe).
    pub async fn recv(&mut self) -> anyhow::Result<Option<TwilioInbound>> {
        self.receiver.recv().await
    }
}

/// Splits `ws://host:port/path?query` into (`host:port`, `/path?query`).
fn parse_ws_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("{url}: only ws:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) => bail!("{url}: missing path before the query"),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url}: missing host");
    }
    Ok((authority, path))
}

/// A whole simulated call for [`run_call`].
#[derive(Debug, Clone)]
pub struct CallScript {
    /// Relay URL, `ws://127.0.0.1:port/path`.
    pub url: String,
    /// Extra upgrade-request headers (name, value), e.g. `X-Twilio-Signature`.
    pub headers: Vec<(String, String)>,
    /// The `start` message parameters.
    pub start: StartParams,
    /// Caller audio (raw μ-law) to stream after `start`.
    pub audio: Arc<Vec<u8>>,
    /// Bytes per `media` message (160 = 20 ms, as Twilio); the last one may be shorter. Must be > 0.
    pub frame_bytes: usize,
    /// Time between `media` messages (20 ms for real time). Zero is treated as 1 µs.
    pub frame_interval: Duration,
    /// Send `stop` after the linger time (as Twilio does when the caller hangs up).
    pub send_stop: bool,
    /// How long to keep receiving (and echoing marks) after the last audio frame, before `stop`.
    pub linger: Duration,
    /// Emulate Twilio's mark echoes (see [`run_call`]). If false, marks are only recorded.
    pub mark_echo: bool,
}

impl CallScript {
    /// A real-time script: 160-byte frames every 20 ms, `send_stop: true`, 1 s linger,
    /// `mark_echo: true`.
    pub fn new(url: impl Into<String>, start: StartParams, audio: Arc<Vec<u8>>) -> Self {
        CallScript {
            url: url.into(),
            headers: Vec::new(),
            start,
            audio,
            frame_bytes: crate::MULAW_FRAME_BYTES,
            frame_interval: Duration::from_millis(20),
            send_stop: true,
            linger: Duration::from_secs(1),
            mark_echo: true,
        }
    }
}

/// What happened during a [`run_call`].
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// All `media` payload bytes from the relay, decoded and concatenated in arrival order
    /// (including audio later flushed by `clear`).
    pub received_audio: Vec<u8>,
    /// Number of valid `media` messages received.
    pub media_messages: usize,
    /// Names of the `mark` messages received from the relay, in order.
    pub marks_received: Vec<String>,
    /// Names of the marks echoed back to the relay, in the order echoed.
    pub marks_echoed: Vec<String>,
    /// When each of [`CallReport::marks_echoed`] was echoed (same order).
    pub marks_echoed_at: Vec<Instant>,
    /// Number of `clear` messages received.
    pub clears: usize,
    /// When each `clear` arrived.
    pub clears_at: Vec<Instant>,
    /// Close code of the relay's Close frame, if the relay closed first. `None` if it never
    /// sent a Close (TCP ended, or we had to close after the 2 s wait) or sent an empty one.
    pub close_code: Option<u16>,
    /// Every violation of Twilio's rules seen (see [`TwilioProtocolError`]), plus transport
    /// failures prefixed with `"transport: "`. Empty for a well-behaved relay.
    pub protocol_errors: Vec<String>,
    /// When the first `media` message arrived.
    pub first_media_at: Option<Instant>,
    /// Number of `media` messages sent to the relay.
    pub frames_sent: usize,
}

/// What the receiving task tells the call loop.
enum RecvEvent {
    Msg(TwilioInbound, TInstant),
    Violation(String),
    Fatal(String),
    Ended,
}

/// Duration of `bytes` of μ-law audio (125 µs per byte).
fn audio_duration(bytes: usize) -> Duration {
    Duration::from_micros(bytes as u64 * 125)
}

/// Emulation of Twilio's outbound playback queue for [`run_call`].
struct Playback {
    /// When everything queued so far has finished playing.
    play_end: TInstant,
    /// Marks waiting for the audio before them to play: (name, due time).
    pending_marks: VecDeque<(String, TInstant)>,
}

/// Runs one simulated call against the relay and reports what happened.
///
/// 1. Connects (`script.headers` in the upgrade), sends `connected` and `start`.
/// 2. Sends `script.audio` in `frame_bytes` pieces, one per `frame_interval` tick
///    (`tokio::time::interval`, `MissedTickBehavior::Burst`), while a separate task receives.
/// 3. Emulates Twilio playback: received media joins a play queue that drains in real time
///    (8 bytes per ms, starting when it arrives if the queue was empty); a received `mark` is
///    echoed with [`TwilioSender::send_mark`] once all audio queued before it has played (at
///    once if nothing is queued); `clear` empties the queue and echoes every pending mark
///    immediately, in order. Marks are not echoed after `stop`.
/// 4. After the last frame, keeps receiving for `linger`, then sends `stop` (if `send_stop`)
///    and waits up to 2 s for the relay to close. If it does not, sends Close 1000 and waits
///    up to 1 s more for the reply.
///
/// Timing uses tokio's clock (`tokio::time::Instant`), so it follows `tokio::time::pause`;
/// [`CallReport::first_media_at`] is that clock converted with `into_std`.
///
/// If the relay closes early the call ends there (no `stop`). Protocol violations and
/// mid-call transport failures are collected in [`CallReport::protocol_errors`] rather than
/// returned; `Err` means the call could not start (connection or upgrade refused, or the
/// `connected`/`start` messages could not be sent) or `frame_bytes` is 0.
pub async fn run_call(script: CallScript) -> anyhow::Result<CallReport> {
    if script.frame_bytes == 0 {
        bail!("CallScript::frame_bytes must be > 0");
    }
    let client = TwilioClient::connect(&script.url, &script.headers).await?;
    let (tx, mut rx) = client.split();

    let (ev_tx, mut ev_rx) = mpsc::channel::<RecvEvent>(1024);
    let recv_task = tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(Some(m)) => RecvEvent::Msg(m, TInstant::now()),
                Ok(None) => RecvEvent::Ended,
                Err(e) if e.is::<TwilioProtocolError>() => RecvEvent::Violation(e.to_string()),
                Err(e) => RecvEvent::Fatal(format!("{e:#}")),
            };
            let last = matches!(
                ev,
                RecvEvent::Ended
                    | RecvEvent::Fatal(_)
                    | RecvEvent::Msg(TwilioInbound::Close { .. }, _)
            );
            if ev_tx.send(ev).await.is_err() || last {
                break;
            }
        }
    });

    let mut report = CallReport::default();
    tx.send_connected().await?;
    tx.send_start(&script.start).await?;

    let mut playback = Playback {
        play_end: TInstant::now(),
        pending_marks: VecDeque::new(),
    };
    let mut ticker = tokio::time::interval(script.frame_interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);

    #[derive(PartialEq, Eq)]
    enum Phase {
        Sending,
        Lingering,
        AwaitClose,
    }
    let mut phase = Phase::Sending;
    let mut deadline = tokio::time::Instant::now();
    let mut offset = 0usize;
    let mut echo_allowed = script.mark_echo;
    let mut connection_over = false; // the relay closed, or the stream ended
    let mut send_error: Option<String> = None;
    if script.audio.is_empty() {
        phase = Phase::Lingering;
        deadline = tokio::time::Instant::now() + script.linger;
    }

    loop {
        let mark_due = if echo_allowed {
            playback.pending_marks.front().map(|m| m.1)
        } else {
            None
        };
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { connection_over = true; break };
                if handle_event(ev, &mut report, &mut playback, echo_allowed) {
                    connection_over = true;
                    break;
                }
                if echo_allowed {
                    if let Err(e) = echo_due_marks(&tx, &mut playback, &mut report).await {
                        send_error.get_or_insert(e);
                        echo_allowed = false;
                    }
                }
            }
            _ = ticker.tick(), if phase == Phase::Sending => {
                let end = (offset + script.frame_bytes).min(script.audio.len());
                match tx.send_media(&script.audio[offset..end]).await {
                    Ok(()) => {
                        report.frames_sent += 1;
                        offset = end;
                        if offset >= script.audio.len() {
                            phase = Phase::Lingering;
                            deadline = tokio::time::Instant::now() + script.linger;
                        }
                    }
                    Err(e) => {
                        send_error.get_or_insert(format!("{e:#}"));
                        echo_allowed = false;
                        phase = Phase::AwaitClose;
                        deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
                }
            }
            _ = sleep_until_opt(mark_due) => {
                if let Err(e) = echo_due_marks(&tx, &mut playback, &mut report).await {
                    send_error.get_or_insert(e);
                    echo_allowed = false;
                }
            }
            _ = tokio::time::sleep_until(deadline), if phase != Phase::Sending => {
                if phase == Phase::Lingering {
                    echo_allowed = false;
                    if script.send_stop {
                        if let Err(e) = tx.send_stop().await {
                            send_error.get_or_insert(format!("{e:#}"));
                        }
                    }
                    phase = Phase::AwaitClose;
                    deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                } else {
                    break;
                }
            }
        }
    }

    if !connection_over {
        // The relay did not close in time: close from our side and wait briefly for the reply.
        let _ = tx.close(1000).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(ev) = ev_rx.recv().await {
                let close_reply = matches!(ev, RecvEvent::Msg(TwilioInbound::Close { .. }, _));
                if close_reply {
                    // The reply to our own Close is not the relay's close code.
                    break;
                }
                if handle_event(ev, &mut report, &mut playback, false) {
                    break;
                }
            }
        })
        .await;
    }
    recv_task.abort();
    if let Some(e) = send_error {
        if report.close_code.is_none() && !connection_over {
            report.protocol_errors.push(format!("transport: {e}"));
        }
    }
    Ok(report)
}

/// Sleeps until `at`, or forever if `None`.
async fn sleep_until_opt(at: Option<TInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Applies one receive event to the report and playback. Returns true when the connection is
/// over (relay Close, end of stream, or transport failure).
fn handle_event(
    ev: RecvEvent,
    report: &mut CallReport,
    playback: &mut Playback,
    queue_marks: bool,
) -> bool {
    match ev {
        RecvEvent::Msg(TwilioInbound::Media { payload, .. }, at) => {
            report.first_media_at.get_or_insert(at.into_std());
            report.media_messages += 1;
            playback.play_end = playback.play_end.max(at) + audio_duration(payload.len());
            report.received_audio.extend_from_slice(&payload);
            false
        }
        RecvEvent::Msg(TwilioInbound::Mark { name, .. }, _) => {
            report.marks_received.push(name.clone());
            if queue_marks {
                playback.pending_marks.push_back((name, playback.play_end));
            }
            false
        }
        RecvEvent::Msg(TwilioInbound::Clear { .. }, at) => {
            report.clears += 1;
            report.clears_at.push(at.into_std());
            playback.play_end = at;
            // Every pending mark is now due (echoed by echo_due_marks right after).
            for m in playback.pending_marks.iter_mut() {
                m.1 = at;
            }
            false
        }
        RecvEvent::Msg(TwilioInbound::Close { code, .. }, _) => {
            report.close_code = code;
            true
        }
        RecvEvent::Violation(s) => {
            report.protocol_errors.push(s);
            false
        }
        RecvEvent::Fatal(s) => {
            report.protocol_errors.push(format!("transport: {s}"));
            true
        }
        RecvEvent::Ended => true,
    }
}

/// Echoes, in order, every pending mark whose audio has played.
async fn echo_due_marks(
    tx: &TwilioSender,
    playback: &mut Playback,
    report: &mut CallReport,
) -> Result<(), String> {
    let now = TInstant::now();
    while playback.pending_marks.front().is_some_and(|m| m.1 <= now) {
        let Some((name, _)) = playback.pending_marks.pop_front() else {
            break;
        };
        tx.send_mark(&name).await.map_err(|e| format!("{e:#}"))?;
        report.marks_echoed.push(name);
        report.marks_echoed_at.push(now.into_std());
    }
    Ok(())
}

/// [`truncate`] plus the original length when something was cut.
fn truncate_with_len(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        format!("{} ({} bytes)", truncate(s, max), s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "MZ00000000000000000000000000000001";

    fn err(text: &str) -> String {
        parse_server_message(text, Some(SID)).unwrap_err().message
    }

    #[test]
    fn accepts_documented_shapes() {
        let m = parse_server_message(
            &format!(r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"/38="}}}}"#),
            Some(SID),
        )
        .unwrap();
        assert_eq!(
            m,
            TwilioInbound::Media {
                stream_sid: SID.into(),
                payload: vec![0xFF, 0x7F]
            }
        );
        let m = parse_server_message(
            &format!(r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":"r1:c2"}}}}"#),
            Some(SID),
        )
        .unwrap();
        assert!(matches!(m, TwilioInbound::Mark { name, .. } if name == "r1:c2"));
        let m = parse_server_message(
            &format!(r#"{{"event":"clear","streamSid":"{SID}"}}"#),
            Some(SID),
        )
        .unwrap();
        assert!(matches!(m, TwilioInbound::Clear { .. }));
    }

    #[test]
    fn rejects_violations() {
        assert!(err("not json").contains("invalid JSON"));
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err(r#"{"streamSid":"x"}"#).contains("missing `event`"));
        assert!(
            err(&format!(r#"{{"event":"stop","streamSid":"{SID}"}}"#)).contains("unknown event")
        );
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"AAAA","track":"outbound"}}}}"#
        ))
        .contains("extra field(s) [\"track\"]"));
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","sequenceNumber":"1","media":{{"payload":"AAAA"}}}}"#
        ))
        .contains("extra field(s) [\"sequenceNumber\"]"));
        assert!(err(&format!(r#"{{"event":"media","streamSid":"{SID}"}}"#))
            .contains("missing field(s) [\"media\"]"));
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"!!!"}}}}"#
        ))
        .contains("not valid base64"));
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":""}}}}"#
        ))
        .contains("empty"));
        assert!(err(r#"{"event":"clear","streamSid":"MZother"}"#).contains("does not match"));
        assert!(err(&format!(
            r#"{{"event":"mark","streamSid":"{SID}","mark":{{}}}}"#
        ))
        .contains("missing field(s) [\"name\"]"));
        assert!(err(&format!(
            r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":7}}}}"#
        ))
        .contains("not a string"));
        let before_start =
            parse_server_message(r#"{"event":"clear","streamSid":"MZ1"}"#, None).unwrap_err();
        assert!(before_start.message.contains("before the stream's start"));
    }

    #[test]
    fn ws_url_parsing() {
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:80/twilio/media?x=1").unwrap(),
            ("127.0.0.1:80", "/twilio/media?x=1")
        );
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:80").unwrap(),
            ("127.0.0.1:80", "/")
        );
        assert!(parse_ws_url("wss://127.0.0.1/").is_err());
        assert!(parse_ws_url("ws:///x").is_err());
    }
}
