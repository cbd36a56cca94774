//! The simulated carrier caller (the WebSocket **client** on the carrier leg), shared by every
//! carrier: one implementation, parameterised by a [`CarrierWire`] that knows one carrier's
//! message shapes and rules. [`crate::peers::twilio_sim`] and [`crate::peers::telnyx_sim`] are
//! the two wires; each names its instantiation of the types here (`TwilioClient` =
//! [`CarrierClient`]`<Twilio>`, `telnyx_sim::CallScript` = [`CallScript`]`<Telnyx>`, …), so
//! tests pick the carrier by the module they import from.
//!
//! What is shared:
//!
//! - the connection: plain `ws://` client handshake with extra headers, a URL path that may
//!   carry a query (`?relay_token=…`), masked frames, pings answered and Close echoed without
//!   anyone polling the sender ([`CarrierClient`], [`CarrierSender`], [`CarrierReceiver`]);
//! - the numbering, identical on both carriers: one sequence counter across every message that
//!   has one (`start` is `"1"`), `media.chunk` counting media messages from `"1"`, and
//!   `media.timestamp` derived from the audio sent (ms of audio in all earlier media messages),
//!   all as JSON strings, so a call's messages are deterministic;
//! - strict validation of every message the relay sends ([`CarrierWire::parse`]): the shapes
//!   both carriers accept (`media`/`mark`/`clear`, exactly the documented keys, non-empty
//!   base64, non-empty mark names) are checked here, and each wire adds its envelope rule
//!   (Twilio: the stream's `streamSid`; Telnyx: no stream id at all); binary frames are
//!   violations too;
//! - [`run_call`]: a whole scripted call ([`CallScript`]) with emulation of the carrier's
//!   playback queue (real-time drain at 8 bytes per ms, marks echoed when the audio before them
//!   has played, `clear` flushing the queue and echoing every pending mark at once), optional
//!   reordering of the media frames on the wire ([`FrameOrder`]), and a [`CallReport`] with a
//!   byte-exact capture of the audio received.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use fastwebsockets::WebSocketError;
use http_body_util::Empty;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Mutex};
use tokio::time::{Instant as TInstant, MissedTickBehavior};

use crate::truncate;
use crate::ws::{self, SpawnExecutor, WsMessage, WsReader, WsWriter};

/// One carrier's wire format: how the simulated caller writes each message it sends, and how
/// strictly it judges what the relay sends back. Implemented by
/// [`Twilio`](crate::peers::twilio_sim::Twilio) and [`Telnyx`](crate::peers::telnyx_sim::Telnyx)
/// (unit types used only as type parameters).
///
/// The caller owns the numbering and passes the numbers in; the wire only lays them out.
/// `start` arguments are the `start` that was sent on this connection, or `None` before it.
pub trait CarrierWire: fmt::Debug + Clone + Send + Sync + 'static {
    /// The carrier's name, for messages (`"Twilio"`, `"Telnyx"`).
    const NAME: &'static str;
    /// Parameters of the `start` message (the call's identity, custom parameters, …).
    type Start: fmt::Debug + Clone + Send + Sync + 'static;
    /// One message from the relay after validation (plus the relay's Close).
    type Inbound: fmt::Debug + Send + 'static;
    /// A relay → carrier message the carrier would reject.
    type ProtocolError: std::error::Error + Send + Sync + 'static;

    /// The `connected` message (no sequence number).
    fn connected() -> String;
    /// The `start` message, with sequence number `sequence`.
    fn start(sequence: u64, start: &Self::Start) -> String;
    /// One inbound `media` message carrying `payload_b64` (base64 of the raw audio).
    fn media(numbers: MediaNumbers, payload_b64: &str, start: Option<&Self::Start>) -> String;
    /// A `mark` echo (carrier → relay: "the audio before mark `name` has played").
    fn mark(sequence: u64, name: &str, start: Option<&Self::Start>) -> String;
    /// A `dtmf` event for key `digit`.
    fn dtmf(sequence: u64, digit: &str, start: Option<&Self::Start>) -> String;
    /// The `stop` message (the call ended).
    fn stop(sequence: u64, start: Option<&Self::Start>) -> String;
    /// Validates and decodes one text message from the relay.
    fn parse(text: &str, start: Option<&Self::Start>)
        -> Result<Self::Inbound, Self::ProtocolError>;
    /// The violation for a binary frame of `len` bytes (carriers accept only text frames).
    fn binary_frame(len: usize) -> Self::ProtocolError;
    /// The message standing for the relay's Close frame.
    fn close(code: Option<u16>, reason: String) -> Self::Inbound;
    /// What a message means to the playback emulation of [`run_call`].
    fn view(msg: &Self::Inbound) -> InboundView<'_>;
}

/// The numbers of one `media` message (see the [module docs](self) for how they are counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaNumbers {
    /// The message's sequence number.
    pub sequence: u64,
    /// `media.chunk`: 1 for the first media message, then +1 each.
    pub chunk: u64,
    /// `media.timestamp`: ms of audio in all earlier media messages.
    pub timestamp_ms: u64,
}

/// A carrier-neutral view of one validated relay message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundView<'a> {
    /// `media` with its decoded audio.
    Media(&'a [u8]),
    /// `mark` with its name.
    Mark(&'a str),
    /// `clear`.
    Clear,
    /// The relay's Close frame, with its code if it had one.
    Close(Option<u16>),
}

/// State shared by the two halves of one connection.
struct Session<W: CarrierWire> {
    /// The `start` that was sent, if any (the receiver validates against it).
    start: std::sync::Mutex<Option<Arc<W::Start>>>,
}

impl<W: CarrierWire> Session<W> {
    fn new() -> Self {
        Session {
            start: std::sync::Mutex::new(None),
        }
    }

    fn start(&self) -> Option<Arc<W::Start>> {
        self.start.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters of the sending side. Held locked across each write so numbering matches wire order.
#[derive(Default)]
struct Counters {
    /// Last sequence number used (0 before `start`).
    sequence: u64,
    /// Last `media.chunk` used (0 before the first media).
    chunk: u64,
    /// μ-law bytes sent in media messages so far.
    media_bytes: u64,
}

impl Counters {
    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn next_media(&mut self, audio_len: usize) -> MediaNumbers {
        self.sequence += 1;
        self.chunk += 1;
        let timestamp_ms = self.media_bytes / crate::MULAW_BYTES_PER_MS as u64;
        self.media_bytes += audio_len as u64;
        MediaNumbers {
            sequence: self.sequence,
            chunk: self.chunk,
            timestamp_ms,
        }
    }
}

/// Sending half of a simulated carrier connection. Cheap to clone; all clones share the
/// counters and the socket, and every method takes `&self`, so it can be used from several
/// tasks (messages are numbered in the order they hit the wire, except with
/// [`encode_media`](Self::encode_media), whose whole point is to break that).
///
/// Numbering (both carriers): one sequence counter across every message that has one (`start`
/// is `"1"`, then `media`, `mark`, `dtmf`, `stop` each take the next); `connected` has none.
/// `media.chunk` counts media messages from `"1"`. `media.timestamp` is derived from the audio
/// sent, not the wall clock: the ms of audio in all earlier media messages (total earlier bytes
/// ÷ 8), i.e. `20 × (chunk − 1)` with 160-byte frames. That keeps it deterministic.
pub struct CarrierSender<W: CarrierWire> {
    writer: WsWriter,
    counters: Arc<Mutex<Counters>>,
    session: Arc<Session<W>>,
}

impl<W: CarrierWire> Clone for CarrierSender<W> {
    fn clone(&self) -> Self {
        CarrierSender {
            writer: self.writer.clone(),
            counters: self.counters.clone(),
            session: self.session.clone(),
        }
    }
}

impl<W: CarrierWire> CarrierSender<W> {
    async fn send(&self, text: String) -> anyhow::Result<()> {
        self.writer
            .send_text(text)
            .await
            .map_err(|e| anyhow!("sending to the relay failed: {e}"))
    }

    /// Sends the wire's `connected` message (no sequence number).
    pub async fn send_connected(&self) -> anyhow::Result<()> {
        self.send(W::connected()).await
    }

    /// Sends the wire's `start` (sequence number `"1"` on a fresh connection) and records
    /// `params`: later messages carry its stream id and the receiver validates against it.
    pub async fn send_start(&self, params: &W::Start) -> anyhow::Result<()> {
        let mut c = self.counters.lock().await;
        let text = W::start(c.next_sequence(), params);
        *self.session.start.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(params.clone()));
        self.send(text).await
    }

    /// Sends one inbound `media` message carrying `audio` (raw μ-law, any length; carriers use
    /// 160 bytes = 20 ms) base64-encoded, with the next chunk, timestamp and sequence number.
    pub async fn send_media(&self, audio: &[u8]) -> anyhow::Result<()> {
        let start = self.session.start();
        let payload = B64.encode(audio);
        let mut c = self.counters.lock().await;
        let text = W::media(c.next_media(audio.len()), &payload, start.as_deref());
        self.send(text).await
    }

    /// The `media` message [`send_media`](Self::send_media) would send now, numbered now but
    /// **not sent**: send it later with [`send_text_raw`](Self::send_text_raw), after messages
    /// numbered later, to simulate a carrier whose frames arrive out of order (as Telnyx
    /// documents they may).
    pub async fn encode_media(&self, audio: &[u8]) -> String {
        let start = self.session.start();
        let payload = B64.encode(audio);
        let numbers = self.counters.lock().await.next_media(audio.len());
        W::media(numbers, &payload, start.as_deref())
    }

    /// Sends a `mark` echo (carrier → relay: "audio before mark `name` has played").
    pub async fn send_mark(&self, name: &str) -> anyhow::Result<()> {
        self.send_numbered(|seq, start| W::mark(seq, name, start))
            .await
    }

    /// Sends a `dtmf` event for key `digit` (e.g. `"1"`, `"#"`).
    pub async fn send_dtmf(&self, digit: &str) -> anyhow::Result<()> {
        self.send_numbered(|seq, start| W::dtmf(seq, digit, start))
            .await
    }

    /// Sends `stop` (call ended), naming the call from `start` (empty strings if no `start`
    /// was sent). Does not close the socket.
    pub async fn send_stop(&self) -> anyhow::Result<()> {
        self.send_numbered(W::stop).await
    }

    /// Sends the message `build` makes from the next sequence number and the `start` sent (if
    /// any): for messages the wire has but the common API does not (e.g. Telnyx `error`) or
    /// deliberately odd ones that should still be numbered in line.
    pub async fn send_numbered(
        &self,
        build: impl FnOnce(u64, Option<&W::Start>) -> String,
    ) -> anyhow::Result<()> {
        let start = self.session.start();
        let mut c = self.counters.lock().await;
        let text = build(c.next_sequence(), start.as_deref());
        self.send(text).await
    }

    /// Sends `text` as one text frame, unchanged (for malformed-input tests, or a message from
    /// [`encode_media`](Self::encode_media)). Does not touch the counters.
    pub async fn send_text_raw(&self, text: String) -> anyhow::Result<()> {
        self.send(text).await
    }

    /// Sends `bytes` as one binary frame (carriers never do this).
    pub async fn send_binary_raw(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.writer
            .send_binary(bytes)
            .await
            .map_err(|e| anyhow!("sending to the relay failed: {e}"))
    }

    /// Sends a Close frame with status `code` and an empty reason (a no-op if a Close was
    /// already sent). Keep calling [`CarrierReceiver::recv`] to see the relay's Close reply.
    pub async fn close(&self, code: u16) -> anyhow::Result<()> {
        self.writer
            .send_close(code, "")
            .await
            .map_err(|e| anyhow!("sending Close to the relay failed: {e}"))
    }
}

/// Receiving half of a simulated carrier connection.
///
/// Pings are answered and a Close from the relay is echoed automatically: fastwebsockets'
/// `auto_pong`/`auto_close` stay on and the control frames they owe are written through the
/// shared writer of the matching [`CarrierSender`] (a mutex, not a channel), so the receiver
/// works without anyone polling the sender.
///
/// [`recv`](Self::recv) is **not cancel-safe** (a read dropped mid-frame desynchronises the
/// stream): do not race it in `select!`; give it its own task instead.
pub struct CarrierReceiver<W: CarrierWire> {
    reader: WsReader,
    session: Arc<Session<W>>,
    done: bool,
    /// How the connection ended, once it has (see [`CarrierReceiver::ended_with`]).
    ended: Option<Option<u16>>,
}

impl<W: CarrierWire> CarrierReceiver<W> {
    /// Waits for the next message from the relay.
    ///
    /// - `Ok(Some(msg))`: a valid `media`/`mark`/`clear`, or the wire's Close message.
    /// - `Ok(None)`: the connection is over (after a Close, or TCP ended without one).
    /// - `Err(e)` with `e.downcast_ref::<W::ProtocolError>()` = `Some`: the relay sent
    ///   something the carrier would reject (bad message or a binary frame); you may keep
    ///   reading.
    /// - any other `Err`: a WebSocket/transport failure; later calls return `Ok(None)`.
    pub async fn recv(&mut self) -> anyhow::Result<Option<W::Inbound>> {
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
                Ok(Some(W::parse(&text, start.as_deref())?))
            }
            WsMessage::Binary(b) => Err(W::binary_frame(b.len()).into()),
            WsMessage::Close { code, reason } => {
                self.done = true;
                self.ended = Some(Some(code.unwrap_or(1005)));
                Ok(Some(W::close(code, reason)))
            }
            WsMessage::Eof => {
                self.done = true;
                self.ended = Some(None);
                Ok(None)
            }
        }
    }

    /// The next text message exactly as received, **without** validation (the load harness
    /// validates with the wire's parser itself, or — against the floor echo server, which
    /// reflects the caller's own messages — not at all). Binary frames are skipped. `Ok(None)`
    /// once the connection is over (Close received or TCP ended). Not cancel-safe, like
    /// [`recv`](Self::recv).
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

/// A connected simulated carrier caller: a [`CarrierSender`] and a [`CarrierReceiver`] in one.
/// Use [`split`](Self::split) to send and receive from different tasks.
pub struct CarrierClient<W: CarrierWire> {
    sender: CarrierSender<W>,
    receiver: CarrierReceiver<W>,
}

impl<W: CarrierWire> CarrierClient<W> {
    /// Connects to `url` (`ws://host:port/path?query`, plain TCP only; the query, e.g.
    /// `?relay_token=…`, is sent as is) sending `headers` (name, value) in the upgrade
    /// request, e.g. `X-Twilio-Signature`. Fails if the server does not answer
    /// `101 Switching Protocols` (the error names the status).
    pub async fn connect(url: &str, headers: &[(String, String)]) -> anyhow::Result<Self> {
        match Self::try_connect(url, headers).await? {
            Ok(c) => Ok(c),
            Err(status) => bail!("{url}: server refused the WebSocket upgrade with HTTP {status}"),
        }
    }

    /// Like [`connect`](Self::connect), but an HTTP answer other than 101 is returned as
    /// `Ok(Err(status))` (e.g. 403 for a bad signature or token, 503 when the relay sheds
    /// load). Connection failures and malformed handshakes are `Err`.
    pub async fn try_connect(
        url: &str,
        headers: &[(String, String)],
    ) -> anyhow::Result<Result<Self, u16>> {
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
        let session = Arc::new(Session::new());
        Ok(Ok(CarrierClient {
            sender: CarrierSender {
                writer,
                counters: Arc::new(Mutex::new(Counters::default())),
                session: session.clone(),
            },
            receiver: CarrierReceiver {
                reader,
                session,
                done: false,
                ended: None,
            },
        }))
    }

    /// Splits into independently usable halves (see [`CarrierReceiver`] for how control
    /// frames are answered).
    pub fn split(self) -> (CarrierSender<W>, CarrierReceiver<W>) {
        (self.sender, self.receiver)
    }

    /// The sending half (cloneable).
    pub fn sender(&self) -> &CarrierSender<W> {
        &self.sender
    }

    /// See [`CarrierSender::send_connected`].
    pub async fn send_connected(&self) -> anyhow::Result<()> {
        self.sender.send_connected().await
    }

    /// See [`CarrierSender::send_start`].
    pub async fn send_start(&self, params: &W::Start) -> anyhow::Result<()> {
        self.sender.send_start(params).await
    }

    /// See [`CarrierSender::send_media`].
    pub async fn send_media(&self, audio: &[u8]) -> anyhow::Result<()> {
        self.sender.send_media(audio).await
    }

    /// See [`CarrierSender::send_mark`].
    pub async fn send_mark(&self, name: &str) -> anyhow::Result<()> {
        self.sender.send_mark(name).await
    }

    /// See [`CarrierSender::send_dtmf`].
    pub async fn send_dtmf(&self, digit: &str) -> anyhow::Result<()> {
        self.sender.send_dtmf(digit).await
    }

    /// See [`CarrierSender::send_stop`].
    pub async fn send_stop(&self) -> anyhow::Result<()> {
        self.sender.send_stop().await
    }

    /// See [`CarrierSender::send_text_raw`].
    pub async fn send_text_raw(&self, text: String) -> anyhow::Result<()> {
        self.sender.send_text_raw(text).await
    }

    /// See [`CarrierSender::send_binary_raw`].
    pub async fn send_binary_raw(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.sender.send_binary_raw(bytes).await
    }

    /// See [`CarrierSender::close`].
    pub async fn close(&self, code: u16) -> anyhow::Result<()> {
        self.sender.close(code).await
    }

    /// See [`CarrierReceiver::recv`] (not cancel-safe).
    pub async fn recv(&mut self) -> anyhow::Result<Option<W::Inbound>> {
        self.receiver.recv().await
    }
}

/// Splits `ws://host:port/path?query` into (`host:port`, `/path?query`).
pub(crate) fn parse_ws_url(url: &str) -> anyhow::Result<(&str, &str)> {
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

/// The order in which [`run_call`] puts its media frames on the wire. Numbering is never
/// affected: frame `k` (0-based, in audio order) always carries the `k`-th piece of the audio
/// and the chunk, timestamp and sequence number it would have had in order (it is numbered
/// when its tick comes, then held back if the order says so). A relay that orders by sequence
/// number must therefore still hand the agent exactly [`CallScript::audio`].
///
/// Twilio delivers in order (one TCP stream from one sender); Telnyx documents that "media
/// frame order is not guaranteed". Keep displacements small (a few frames): a relay's reorder
/// window is finite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FrameOrder {
    /// Every frame is sent at its own tick, in order.
    #[default]
    InOrder,
    /// Exchange the wire positions of these pairs of frames (0-based indexes in audio order),
    /// applied one after another to the in-order sequence. `(3, 4)` sends frame 4 where frame
    /// 3 belonged and frame 3 right after it. An index past the last frame is an error.
    SwapPairs(Vec<(usize, usize)>),
    /// A deterministic shuffle from `seed` in which no frame is sent more than `window`
    /// places from its in-order position (`window: 0` is in order).
    Shuffle {
        /// Seed of the shuffle (the same seed and frame count give the same order).
        seed: u64,
        /// Largest displacement of any frame, in places.
        window: usize,
    },
}

impl FrameOrder {
    /// The wire order for a call of `frames` media frames: element `k` is the index (in audio
    /// order) of the `k`-th media frame sent. Always a permutation of `0..frames`. Errs if a
    /// [`FrameOrder::SwapPairs`] index is `>= frames`.
    pub fn wire_order(&self, frames: usize) -> anyhow::Result<Vec<usize>> {
        let mut order: Vec<usize> = (0..frames).collect();
        match self {
            FrameOrder::InOrder => {}
            FrameOrder::SwapPairs(pairs) => {
                for &(a, b) in pairs {
                    if a >= frames || b >= frames {
                        bail!(
                            "FrameOrder::SwapPairs: ({a}, {b}) is past the last of {frames} frames"
                        );
                    }
                    order.swap(a, b);
                }
            }
            FrameOrder::Shuffle { seed, window } => {
                // Each frame gets the key `index + r`, r uniform in [0, window + 1) (fixed
                // point, 20 fraction bits); sorting by key moves no frame more than `window`
                // places either way: a frame more than `window` later has a larger key.
                const ONE: u64 = 1 << 20;
                let mut rng = SplitMix64(*seed);
                let span = (*window as u64 + 1) * ONE;
                let mut keyed: Vec<(u64, usize)> = order
                    .iter()
                    .map(|&i| (i as u64 * ONE + rng.next() % span, i))
                    .collect();
                keyed.sort_by_key(|&(key, _)| key);
                order = keyed.into_iter().map(|(_, i)| i).collect();
            }
        }
        Ok(order)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny deterministic generator for [`FrameOrder`].
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A whole simulated call for [`run_call`], on wire `W` (`twilio_sim::CallScript` and
/// `telnyx_sim::CallScript` name the two).
#[derive(Debug, Clone)]
pub struct CallScript<W: CarrierWire> {
    /// Relay URL, `ws://127.0.0.1:port/path`, optionally with a query (`?relay_token=…`).
    pub url: String,
    /// Extra upgrade-request headers (name, value), e.g. `X-Twilio-Signature`.
    pub headers: Vec<(String, String)>,
    /// The `start` message parameters.
    pub start: W::Start,
    /// Caller audio (raw μ-law) to stream after `start`.
    pub audio: Arc<Vec<u8>>,
    /// Bytes per `media` message (160 = 20 ms, as the carriers); the last one may be shorter.
    /// Must be > 0.
    pub frame_bytes: usize,
    /// Time between `media` messages (20 ms for real time). Zero is treated as 1 µs.
    pub frame_interval: Duration,
    /// Send `stop` after the linger time (as the carrier does when the caller hangs up).
    pub send_stop: bool,
    /// How long to keep receiving (and echoing marks) after the last audio frame, before `stop`.
    pub linger: Duration,
    /// Emulate the carrier's mark echoes (see [`run_call`]). If false, marks are only recorded.
    pub mark_echo: bool,
    /// Wire order of the media frames ([`FrameOrder::InOrder`] unless set).
    pub frame_order: FrameOrder,
}

impl<W: CarrierWire> CallScript<W> {
    /// A real-time script: 160-byte frames every 20 ms, `send_stop: true`, 1 s linger,
    /// `mark_echo: true`, frames in order.
    pub fn new(url: impl Into<String>, start: W::Start, audio: Arc<Vec<u8>>) -> Self {
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
            frame_order: FrameOrder::InOrder,
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
    /// Every violation of the carrier's rules seen (the wire's protocol error), plus transport
    /// failures prefixed with `"transport: "`. Empty for a well-behaved relay.
    pub protocol_errors: Vec<String>,
    /// When the first `media` message arrived.
    pub first_media_at: Option<Instant>,
    /// Number of `media` messages sent to the relay.
    pub frames_sent: usize,
    /// How many of the media frames sent went out at a wire position other than their place in
    /// audio order (0 unless [`CallScript::frame_order`] reorders).
    pub frames_out_of_order: usize,
}

/// What the receiving task tells the call loop.
enum RecvEvent<I> {
    Msg(I, TInstant),
    Violation(String),
    Fatal(String),
    Ended,
}

/// Duration of `bytes` of μ-law audio (125 µs per byte).
fn audio_duration(bytes: usize) -> Duration {
    Duration::from_micros(bytes as u64 * 125)
}

/// Emulation of the carrier's outbound playback queue for [`run_call`].
struct Playback {
    /// When everything queued so far has finished playing.
    play_end: TInstant,
    /// Marks waiting for the audio before them to play: (name, due time).
    pending_marks: VecDeque<(String, TInstant)>,
}

/// The media frames of a call, numbered at their own tick and put on the wire in
/// [`CallScript::frame_order`].
struct FrameQueue {
    /// Wire order (see [`FrameOrder::wire_order`]).
    order: Vec<usize>,
    /// Next frame (audio order) to number.
    next_frame: usize,
    /// Next wire position to send.
    next_wire: usize,
    /// Numbered frames not sent yet, by audio-order index.
    held: BTreeMap<usize, String>,
}

impl FrameQueue {
    fn done(&self) -> bool {
        self.next_wire >= self.order.len()
    }
}

/// Runs one simulated call against the relay and reports what happened.
///
/// 1. Connects (`script.headers` in the upgrade), sends `connected` and `start`.
/// 2. Sends `script.audio` in `frame_bytes` pieces, one numbered per `frame_interval` tick
///    (`tokio::time::interval`, `MissedTickBehavior::Burst`), while a separate task receives.
///    Each frame goes on the wire as soon as [`CallScript::frame_order`] allows: at its own
///    tick when in order, otherwise held until the frames meant to precede it are sent.
/// 3. Emulates the carrier's playback: received media joins a play queue that drains in real
///    time (8 bytes per ms, starting when it arrives if the queue was empty); a received
///    `mark` is echoed with [`CarrierSender::send_mark`] once all audio queued before it has
///    played (at once if nothing is queued); `clear` empties the queue and echoes every
///    pending mark immediately, in order. Marks are not echoed after `stop`.
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
/// `connected`/`start` messages could not be sent), `frame_bytes` is 0, or the frame order is
/// invalid for this audio.
pub async fn run_call<W: CarrierWire>(script: CallScript<W>) -> anyhow::Result<CallReport> {
    if script.frame_bytes == 0 {
        bail!("CallScript::frame_bytes must be > 0");
    }
    let mut frames = FrameQueue {
        order: script
            .frame_order
            .wire_order(script.audio.len().div_ceil(script.frame_bytes))?,
        next_frame: 0,
        next_wire: 0,
        held: BTreeMap::new(),
    };
    let client = CarrierClient::<W>::connect(&script.url, &script.headers).await?;
    let (tx, mut rx) = client.split();

    let (ev_tx, mut ev_rx) = mpsc::channel::<RecvEvent<W::Inbound>>(1024);
    let recv_task = tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(Some(m)) => RecvEvent::Msg(m, TInstant::now()),
                Ok(None) => RecvEvent::Ended,
                Err(e) if e.is::<W::ProtocolError>() => RecvEvent::Violation(e.to_string()),
                Err(e) => RecvEvent::Fatal(format!("{e:#}")),
            };
            let last = match &ev {
                RecvEvent::Ended | RecvEvent::Fatal(_) => true,
                RecvEvent::Msg(m, _) => matches!(W::view(m), InboundView::Close(_)),
                RecvEvent::Violation(_) => false,
            };
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
    let mut echo_allowed = script.mark_echo;
    let mut connection_over = false; // the relay closed, or the stream ended
    let mut send_error: Option<String> = None;
    if frames.done() {
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
                if handle_event::<W>(ev, &mut report, &mut playback, echo_allowed) {
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
                match send_next_frame(&tx, &script, &mut frames, &mut report).await {
                    Ok(()) => {
                        if frames.done() {
                            phase = Phase::Lingering;
                            deadline = tokio::time::Instant::now() + script.linger;
                        }
                    }
                    Err(e) => {
                        send_error.get_or_insert(e);
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
                if let RecvEvent::Msg(m, _) = &ev {
                    if matches!(W::view(m), InboundView::Close(_)) {
                        // The reply to our own Close is not the relay's close code.
                        break;
                    }
                }
                if handle_event::<W>(ev, &mut report, &mut playback, false) {
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

/// One sending tick: numbers the next frame in audio order, then sends every numbered frame
/// whose wire turn has come. With [`FrameOrder::InOrder`] that is exactly the frame just
/// numbered, so the wire carries the same bytes as [`CarrierSender::send_media`] would.
async fn send_next_frame<W: CarrierWire>(
    tx: &CarrierSender<W>,
    script: &CallScript<W>,
    frames: &mut FrameQueue,
    report: &mut CallReport,
) -> Result<(), String> {
    let k = frames.next_frame;
    if k < frames.order.len() {
        let from = k * script.frame_bytes;
        let to = (from + script.frame_bytes).min(script.audio.len());
        let text = tx.encode_media(&script.audio[from..to]).await;
        frames.held.insert(k, text);
        frames.next_frame += 1;
    }
    while let Some(&want) = frames.order.get(frames.next_wire) {
        let Some(text) = frames.held.remove(&want) else {
            break;
        };
        tx.send_text_raw(text).await.map_err(|e| format!("{e:#}"))?;
        if want != frames.next_wire {
            report.frames_out_of_order += 1;
        }
        frames.next_wire += 1;
        report.frames_sent += 1;
    }
    Ok(())
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
fn handle_event<W: CarrierWire>(
    ev: RecvEvent<W::Inbound>,
    report: &mut CallReport,
    playback: &mut Playback,
    queue_marks: bool,
) -> bool {
    match ev {
        RecvEvent::Msg(msg, at) => match W::view(&msg) {
            InboundView::Media(payload) => {
                report.first_media_at.get_or_insert(at.into_std());
                report.media_messages += 1;
                playback.play_end = playback.play_end.max(at) + audio_duration(payload.len());
                report.received_audio.extend_from_slice(payload);
                false
            }
            InboundView::Mark(name) => {
                report.marks_received.push(name.to_owned());
                if queue_marks {
                    playback
                        .pending_marks
                        .push_back((name.to_owned(), playback.play_end));
                }
                false
            }
            InboundView::Clear => {
                report.clears += 1;
                report.clears_at.push(at.into_std());
                playback.play_end = at;
                // Every pending mark is now due (echoed by echo_due_marks right after).
                for m in playback.pending_marks.iter_mut() {
                    m.1 = at;
                }
                false
            }
            InboundView::Close(code) => {
                report.close_code = code;
                true
            }
        },
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
async fn echo_due_marks<W: CarrierWire>(
    tx: &CarrierSender<W>,
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

// ---- the relay → carrier messages both carriers accept ---------------------------------------

/// One relay → carrier message of a shape both carriers accept, after strict validation.
#[derive(Debug)]
pub(crate) enum PlaybackMessage {
    /// `media` with its decoded payload.
    Media(Vec<u8>),
    /// `mark` with its name.
    Mark(String),
    /// `clear`.
    Clear,
}

/// What a wire adds to the shared shapes `{"event":"media",…,"media":{"payload":B64}}`,
/// `{"event":"mark",…,"mark":{"name":N}}` and `{"event":"clear",…}`.
pub(crate) struct PlaybackRules<'a> {
    /// The carrier's name, for messages.
    pub carrier: &'a str,
    /// Top-level keys every message must carry besides `event` and its body (Twilio:
    /// `streamSid`).
    pub envelope: &'a [&'a str],
    /// Top-level keys refused with a reason of their own, before the exact-keys check (Telnyx:
    /// the stream ids), and that reason.
    pub forbidden: (&'a [&'a str], &'a str),
}

/// Validates one text message from the relay against the shapes in [`PlaybackRules`].
///
/// Checks, in order: valid JSON object; `event` a string naming `media`, `mark` or `clear`; no
/// forbidden key; exactly the keys `event` + envelope + body at the top level and exactly
/// `payload` / `name` in the body (no missing, no extra); then `check_envelope(event, obj)`
/// (the wire's own rules, e.g. the stream id); then the body: `media.payload` a non-empty
/// string of standard base64 (with padding), `mark.name` a non-empty string. Errors are the
/// finished message: what was wrong, then (a prefix of) `text`.
pub(crate) fn parse_playback_message(
    text: &str,
    rules: &PlaybackRules<'_>,
    check_envelope: impl FnOnce(&str, &Map<String, Value>) -> Result<(), String>,
) -> Result<PlaybackMessage, String> {
    let fail = |what: String| format!("{what}; message: {}", truncate_with_len(text, 300));
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
    let body = match event {
        "media" | "mark" => Some(event),
        "clear" => None,
        other => {
            return Err(fail(format!(
                "unknown event {other:?} ({} accepts only media, mark, clear)",
                rules.carrier
            )))
        }
    };
    let (forbidden, why) = rules.forbidden;
    if let Some(key) = forbidden.iter().find(|k| obj.contains_key(**k)) {
        return Err(fail(format!("{event} carries `{key}`; {why}")));
    }
    let mut expected = vec!["event"];
    expected.extend_from_slice(rules.envelope);
    expected.extend(body);
    exact_keys(obj, &expected, event).map_err(fail)?;
    check_envelope(event, obj).map_err(fail)?;
    match event {
        "media" => {
            let media = object_field(obj, "media", event).map_err(fail)?;
            exact_keys(media, &["payload"], "media.media").map_err(fail)?;
            let payload = string_field(media, "payload", "media.media").map_err(fail)?;
            if payload.is_empty() {
                return Err(fail("media.payload is empty".into()));
            }
            let payload = B64
                .decode(payload)
                .map_err(|e| fail(format!("media.payload is not valid base64 ({e})")))?;
            Ok(PlaybackMessage::Media(payload))
        }
        "mark" => {
            let mark = object_field(obj, "mark", event).map_err(fail)?;
            exact_keys(mark, &["name"], "mark.mark").map_err(fail)?;
            let name = string_field(mark, "name", "mark.mark").map_err(fail)?;
            if name.is_empty() {
                return Err(fail("mark.name is empty".into()));
            }
            Ok(PlaybackMessage::Mark(name.to_owned()))
        }
        _ => Ok(PlaybackMessage::Clear),
    }
}

/// Checks that `obj` has exactly the keys `expected` (no missing, no extra); `what` names the
/// object in the error.
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

/// `obj[key]` as a string.
pub(crate) fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{what}: `{key}` is not a string: {other}")),
        None => Err(format!("{what}: missing `{key}`")),
    }
}

/// `obj[key]` as an object.
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
pub(crate) fn js(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
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

    #[test]
    fn ws_url_parsing() {
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:80/twilio/media?x=1").unwrap(),
            ("127.0.0.1:80", "/twilio/media?x=1")
        );
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:80/telnyx?relay_token=a%2Bb").unwrap(),
            ("127.0.0.1:80", "/telnyx?relay_token=a%2Bb")
        );
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:80").unwrap(),
            ("127.0.0.1:80", "/")
        );
        assert!(parse_ws_url("wss://127.0.0.1/").is_err());
        assert!(parse_ws_url("ws:///x").is_err());
        assert!(parse_ws_url("ws://127.0.0.1:80?x=1").is_err());
    }

    fn is_permutation(order: &[usize]) -> bool {
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        sorted.iter().copied().eq(0..order.len())
    }

    #[test]
    fn frame_orders() {
        assert_eq!(FrameOrder::InOrder.wire_order(4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(
            FrameOrder::SwapPairs(vec![(1, 2), (4, 6)])
                .wire_order(8)
                .unwrap(),
            vec![0, 2, 1, 3, 6, 5, 4, 7]
        );
        assert!(FrameOrder::SwapPairs(vec![(2, 3)]).wire_order(3).is_err());
        assert_eq!(
            FrameOrder::Shuffle { seed: 9, window: 0 }
                .wire_order(50)
                .unwrap(),
            (0..50).collect::<Vec<_>>()
        );
        for window in 1..=3 {
            for seed in 0..20 {
                let order = FrameOrder::Shuffle { seed, window }
                    .wire_order(200)
                    .unwrap();
                assert!(is_permutation(&order));
                for (pos, &frame) in order.iter().enumerate() {
                    assert!(pos.abs_diff(frame) <= window, "seed {seed}: {order:?}");
                }
                assert_eq!(
                    order,
                    FrameOrder::Shuffle { seed, window }
                        .wire_order(200)
                        .unwrap(),
                    "deterministic"
                );
                assert_ne!(order, (0..200).collect::<Vec<_>>(), "seed {seed} shuffles");
            }
        }
        assert!(FrameOrder::Shuffle { seed: 1, window: 3 }
            .wire_order(0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn media_numbering_follows_audio() {
        let mut c = Counters::default();
        assert_eq!(c.next_sequence(), 1);
        let n: Vec<MediaNumbers> = [160, 160, 80, 160]
            .iter()
            .map(|&len| c.next_media(len))
            .collect();
        assert_eq!(
            n.iter()
                .map(|m| (m.sequence, m.chunk, m.timestamp_ms))
                .collect::<Vec<_>>(),
            vec![(2, 1, 0), (3, 2, 20), (4, 3, 40), (5, 4, 50)]
        );
    }
}
