//! The call supervisor: one task per call owns the Twilio leg, the agent leg (or the echo
//! agent), both write halves, the early-audio buffer, playout accounting and the call's
//! metrics accumulators, and decides when and why the call ends.
//!
//! Structure: both sockets are read through cancel-safe `ws::WsReader`s, so a single
//! `select!` loop can wait on {Twilio message, agent message, agent connect, timers,
//! shutdown} without losing a half-read frame. Handlers translate through the sans-IO codecs
//! and queue frames on the *other* leg's buffered writer; after each round the loop takes
//! whatever else is already readable (bounded) and then flushes each dirty writer once, so a
//! burst costs one write syscall per socket. Each write half has exactly one owner: this task.
//!
//! Not owned here: HTTP and admission (`server`), wire formats (`twilio::codec`,
//! `agent::elevenlabs`), connecting (`agent::connect`).

pub mod playout;

use crate::agent::connect::{self, ConnectError};
use crate::agent::echo::EchoAgent;
use crate::agent::{elevenlabs, AgentEvent, AgentKind};
use crate::config::CallSettings;
use crate::obs::metrics::{CallMetrics, Direction, DropReason, Leg, Metrics};
use crate::twilio::codec::{self as tw, TwilioEvent};
use crate::wire::ws::{Message, Prefixed, ReadError, WsReader, WsWriter};
use futures_util::FutureExt;
use playout::{MarkOutcome, Playout};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Largest Twilio message accepted, in bytes (Twilio's are ~400 bytes; stack.md suggests a
/// small cap). A larger one is skipped unbuffered and ends the call (close 1009).
pub const MAX_TWILIO_MESSAGE_BYTES: usize = 64 * 1024;

/// How long one socket write (or flush) may block before the peer is declared stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing each socket may take at the end of a call.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most messages taken from one socket without yielding back to the loop, per round.
const BATCH_MESSAGES: usize = 16;

/// Resting size of a call's outbound scratch buffers (bytes): one encoded media message.
const SCRATCH_REST_BYTES: usize = 512;

/// Scratch buffers grown beyond this by a large message are given back after the flush
/// (bytes).
const SCRATCH_KEEP_BYTES: usize = 2048;

/// Loop turns between direct checks of the stop token and the call deadline (at most this
/// many batches, i.e. `BATCH_MESSAGES` × this many messages, before a stop is seen on a leg
/// that never goes quiet).
const STARVATION_CHECK_TURNS: u32 = 8;

/// Read half of the Twilio socket (hyper's leftover bytes chained in front).
pub type TwilioRead = WsReader<Prefixed<OwnedReadHalf>>;
/// Write half of the Twilio socket (frames queued until flushed).
pub type TwilioWrite = WsWriter<OwnedWriteHalf>;

/// What every call shares: settings, metrics, TLS configuration.
#[derive(Debug)]
pub struct CallContext {
    /// Per-call settings from configuration.
    pub settings: CallSettings,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
    /// The shared TLS client configuration for agent connections.
    pub tls: Arc<rustls::ClientConfig>,
    /// Stream token checks; `Some` only in the authenticated mode (TWILIO_AUTH_TOKEN set).
    pub tokens: Option<Arc<crate::auth::tokens::StreamTokens>>,
    /// Live streams by call SID (duplicate policy: the newest stream replaces the older).
    pub live: Arc<crate::auth::tokens::LiveStreams>,
}

/// Why a call ended: a normal ending is not an error. [`EndReason::outcome`] is the
/// `outcome` label of `relay_calls_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop`: the call ended normally.
    TwilioStop,
    /// The Twilio socket closed (close frame or TCP end) without `stop`.
    TwilioClosed,
    /// The Twilio leg broke the protocol in a way that ends the call (e.g. oversized frame).
    TwilioError(&'static str),
    /// The agent closed its socket; carries its close code.
    AgentClosed(Option<u16>),
    /// The agent leg failed after connecting (read/write error).
    AgentError(&'static str),
    /// The agent could not be connected, or did not report ready in time.
    AgentConnectFailed(&'static str),
    /// The agent's negotiated audio formats are not μ-law 8 kHz both ways (we never transcode).
    AudioFormatMismatch,
    /// No `start` arrived in time after the upgrade.
    StartTimeout,
    /// The relay is shutting down and the drain timeout passed.
    Shutdown,
    /// The call reached `--max-call-duration-secs`.
    MaxDuration,
    /// The stream's `relay_token` was missing or wrong (authenticated mode); carries the kind.
    TokenRejected(&'static str),
    /// A newer stream for the same call SID replaced this one.
    Replaced,
}

impl EndReason {
    /// Bounded label value.
    pub fn outcome(&self) -> &'static str {
        match self {
            EndReason::TwilioStop => "twilio_stop",
            EndReason::TwilioClosed => "twilio_closed",
            EndReason::TwilioError(_) => "twilio_error",
            EndReason::AgentClosed(_) => "agent_closed",
            EndReason::AgentError(_) => "agent_error",
            EndReason::AgentConnectFailed(_) => "agent_connect_failed",
            EndReason::AudioFormatMismatch => "audio_format_mismatch",
            EndReason::StartTimeout => "start_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::MaxDuration => "max_duration",
            EndReason::TokenRejected(_) => "token_rejected",
            EndReason::Replaced => "replaced",
        }
    }

    /// Close code and reason sent to Twilio.
    fn twilio_close(&self) -> (u16, &'static str) {
        match self {
            EndReason::Shutdown => (1001, "relay shutting down"),
            EndReason::TwilioError("message_too_large") => (1009, "message too large"),
            EndReason::TwilioError("invalid_utf8") => (1007, "invalid UTF-8"),
            EndReason::TwilioError(_) => (1002, "protocol error"),
            EndReason::AgentConnectFailed(_) | EndReason::AudioFormatMismatch => {
                (1011, "agent unavailable")
            }
            EndReason::AgentError(_) => (1011, "agent error"),
            EndReason::TokenRejected(_) => (1008, "invalid stream token"),
            EndReason::Replaced => (1000, "replaced by a newer stream"),
            _ => (1000, "call ended"),
        }
    }

    /// Close code and reason sent to the agent.
    fn agent_close(&self) -> (u16, &'static str) {
        match self {
            EndReason::Shutdown => (1001, "relay shutting down"),
            EndReason::AgentError("websocket_protocol") => (1002, "protocol error"),
            EndReason::AgentError("invalid_utf8") => (1007, "invalid UTF-8"),
            _ => (1000, "call ended"),
        }
    }
}

/// Runs one call on an upgraded Twilio socket until it ends; never panics on input.
/// `shutdown` is cancelled when the relay's drain timeout passes (close with 1001).
pub async fn run(
    t_read: TwilioRead,
    t_write: TwilioWrite,
    ctx: Arc<CallContext>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!(
        "call",
        call_sid = tracing::field::Empty,
        stream_sid = tracing::field::Empty,
        agent = ctx.settings.agent.as_str()
    );
    run_inner(t_read, t_write, ctx, shutdown)
        .instrument(span)
        .await
}

/// The state the handlers work on. Streams and the connect future live outside it so the
/// `select!` can borrow them while handlers borrow this.
struct Call {
    ctx: Arc<CallContext>,
    t_tx: TwilioWrite,
    a_tx: Option<connect::AgentWrite>,
    echo: Option<EchoAgent>,
    /// Set by `start`.
    stream_sid: String,
    call_sid: String,
    custom_parameters: Vec<(String, String)>,
    agent_ready: bool,
    /// Caller audio waiting for the agent: (read time, μ-law bytes), oldest first.
    early: VecDeque<Vec<u8>>,
    /// Highest agent audio `event_id` seen, and the interruption filter.
    max_audio_event_id: u64,
    interrupted_through: Option<u64>,
    playout: Playout,
    cm: CallMetrics,
    /// Read instants of frames queued but not yet flushed, per destination writer.
    pending_twilio: Vec<Instant>,
    pending_agent: Vec<Instant>,
    /// Reused buffers: decoded audio, outbound frames, mark names.
    audio: Vec<u8>,
    t_out: Vec<u8>,
    a_out: Vec<u8>,
    mark: String,
    /// Cancelled when a newer stream for the same call SID arrives.
    replaced: CancellationToken,
    /// This stream's id in the live-stream registry, once registered.
    live_id: Option<u64>,
    /// Writers with frames queued since the last flush.
    twilio_dirty: bool,
    agent_dirty: bool,
    barge_ins: u64,
    dtmf_digits: u64,
    /// The close frame each peer sent (its code, if any), owed a close reply (RFC 6455 §5.5.1).
    twilio_peer_close: Option<Option<u16>>,
    agent_peer_close: Option<Option<u16>>,
}

/// What the Twilio handler asks the loop to do next.
enum Flow {
    Continue,
    /// `start` arrived: begin the agent leg.
    StartAgent,
}

async fn run_inner(
    t_read: TwilioRead,
    t_write: TwilioWrite,
    ctx: Arc<CallContext>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut t_rx = t_read;
    let mut a_rx: Option<connect::AgentRead> = None;
    let mut connecting: Option<connect::ConnectFuture> = None;
    let mut connect_started = started;
    let s = &ctx.settings;
    let mut call = Call {
        t_tx: t_write,
        a_tx: None,
        echo: None,
        stream_sid: String::new(),
        call_sid: String::new(),
        custom_parameters: Vec::new(),
        agent_ready: false,
        early: VecDeque::new(),
        max_audio_event_id: 0,
        interrupted_through: None,
        playout: Playout::default(),
        cm: CallMetrics::default(),
        pending_twilio: Vec::with_capacity(BATCH_MESSAGES),
        pending_agent: Vec::with_capacity(BATCH_MESSAGES),
        audio: Vec::with_capacity(crate::audio::MULAW_CHUNK_BYTES),
        t_out: Vec::with_capacity(SCRATCH_REST_BYTES),
        a_out: Vec::with_capacity(SCRATCH_REST_BYTES),
        mark: String::new(),
        replaced: shutdown.child_token(),
        live_id: None,
        twilio_dirty: false,
        agent_dirty: false,
        barge_ins: 0,
        dtmf_digits: 0,
        twilio_peer_close: None,
        agent_peer_close: None,
        ctx: ctx.clone(),
    };

    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut max_duration = pin!(tokio::time::sleep(s.max_call_duration));
    // Until `start`: the start timeout; after it, until the agent is ready: the connect timeout.
    let mut setup_deadline = pin!(tokio::time::sleep(s.start_timeout));
    let mut echo_timer = pin!(tokio::time::sleep_until(far));
    // One future for both ways a call is stopped from outside: `replaced` is a child of
    // `shutdown`, so it fires for either; `shutdown.is_cancelled()` tells which.
    let stop = call.replaced.clone();
    let mut stopped = pin!(stop.cancelled());
    let stop_reason = || {
        if shutdown.is_cancelled() {
            EndReason::Shutdown
        } else {
            EndReason::Replaced
        }
    };

    let mut turns: u32 = 0;
    let end: EndReason = loop {
        if let Err(end) = call.flush_dirty().await {
            break end;
        }
        if call.cm.fold_due() {
            call.cm.fold(&call.ctx.metrics);
        }
        // A peer that keeps a socket always readable would starve the stop and deadline
        // branches, which the biased select below polls last; so every few turns check them
        // directly (not every turn: `is_cancelled` takes the token's lock).
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(STARVATION_CHECK_TURNS) {
            if stop.is_cancelled() {
                break stop_reason();
            }
            if max_duration.is_elapsed() {
                break EndReason::MaxDuration;
            }
        }
        let setup_pending = !call.agent_ready;
        let echo_armed = call.echo.as_ref().and_then(|e| e.next_due()).is_some();
        let step: Result<(), EndReason> = tokio::select! {
            // Sockets first: most wake-ups are a frame, and then nothing else is polled.
            biased;
            msg = t_rx.next() => {
                let mut r = call.on_twilio(msg).await;
                // Take what else is already readable, bounded, before flushing once.
                let mut n = 1;
                while matches!(r, Ok(Flow::Continue)) && n < BATCH_MESSAGES {
                    match t_rx.next().now_or_never() {
                        Some(msg) => { r = call.on_twilio(msg).await; n += 1; }
                        None => break,
                    }
                }
                match r {
                    Ok(Flow::Continue) => Ok(()),
                    Ok(Flow::StartAgent) => {
                        setup_deadline.as_mut().reset(tokio::time::Instant::now() + s.agent_connect_timeout);
                        match s.agent {
                            AgentKind::Echo => {
                                call.echo = Some(EchoAgent::new(s.echo_delay));
                                call.agent_ready = true;
                                info!("echo agent ready");
                            }
                            AgentKind::Elevenlabs => {
                                connect_started = Instant::now();
                                let ctx2 = ctx.clone();
                                let agent_override = call.agent_id_override();
                                connecting = Some(Box::pin(async move {
                                    match ctx2.settings.elevenlabs.clone() {
                                        Some(mut el) => {
                                            if let Some(id) = agent_override {
                                                el.agent_id = id;
                                            }
                                            connect::connect_elevenlabs(&el, &ctx2.tls).await
                                        }
                                        None => Err(ConnectError::Handshake("ElevenLabs is not configured".into())),
                                    }
                                }));
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            res = async { connecting.as_mut().expect("guarded by the branch condition").await }, if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok((reader, writer)) => {
                        ctx.metrics.agent_connect.record(connect_started.elapsed().as_secs_f64());
                        a_rx = Some(reader);
                        call.on_agent_connected(writer).await
                    }
                    Err(e) => {
                        ctx.metrics.error(Leg::Agent, e.kind());
                        warn!(error = %e, kind = e.kind(), "agent connect failed");
                        Err(EndReason::AgentConnectFailed(e.kind()))
                    }
                }
            }
            msg = async { a_rx.as_mut().expect("guarded by the branch condition").next().await }, if a_rx.is_some() => {
                let mut r = call.on_agent(msg).await;
                let mut n = 1;
                while r.is_ok() && n < BATCH_MESSAGES {
                    let Some(rx) = a_rx.as_mut() else { break };
                    match rx.next().now_or_never() {
                        Some(msg) => { r = call.on_agent(msg).await; n += 1; }
                        None => break,
                    }
                }
                r
            }
            _ = &mut echo_timer, if echo_armed => call.on_echo_due().await,
            _ = &mut setup_deadline, if setup_pending => Err(if call.stream_sid.is_empty() {
                EndReason::StartTimeout
            } else {
                EndReason::AgentConnectFailed("ready_timeout")
            }),
            _ = &mut max_duration => Err(EndReason::MaxDuration),
            _ = &mut stopped => Err(stop_reason()),
        };
        if let Err(end) = step {
            break end;
        }
        if let Some(due) = call.echo.as_ref().and_then(|e| e.next_due()) {
            let due = tokio::time::Instant::from_std(due);
            if echo_timer.deadline() != due {
                echo_timer.as_mut().reset(due);
            }
        }
    };

    // Best effort: deliver what is queued, then close both legs (RFC 6455 §7: send Close,
    // then read until the peer's Close or EOF so unread bytes do not turn into a TCP reset).
    let _ = call.flush_dirty().await;
    let (code, reason) = end.twilio_close();
    let (a_code, a_reason) = end.agent_close();
    let twilio_open = !matches!(end, EndReason::TwilioClosed);
    let agent_open = !matches!(end, EndReason::AgentClosed(_));
    let (t_peer_close, a_peer_close) = (call.twilio_peer_close, call.agent_peer_close);
    let close_twilio = async {
        if let Some(received) = t_peer_close {
            // Answer the caller's close; as the server we then drop TCP (RFC 6455 §7.1.1).
            let _ = call.t_tx.close_reply(received).await;
        } else if twilio_open && call.t_tx.close(code, reason).await.is_ok() {
            linger(&mut t_rx).await;
        }
    };
    let close_agent = async {
        if let (Some(a_tx), Some(a_rx)) = (call.a_tx.as_mut(), a_rx.as_mut()) {
            if let Some(received) = a_peer_close {
                // Answer the agent's close; as the client we wait for the server to drop TCP.
                if a_tx.close_reply(received).await.is_ok() {
                    linger(a_rx).await;
                }
            } else if agent_open && a_tx.close(a_code, a_reason).await.is_ok() {
                linger(a_rx).await;
            }
        }
    };
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        futures_util::future::join(close_twilio, close_agent),
    )
    .await;
    drop(t_rx);
    drop(a_rx);
    call.finish(&end, started);
}

thread_local! {
    /// simd-json parser scratch, one per worker thread: parsing never awaits, so calls can
    /// share it instead of each holding its own (≈1.5 KiB per leg).
    static SCRATCH: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::new(512));
}

/// Runs `f` with this thread's parser scratch.
fn with_scratch<T>(f: impl FnOnce(&mut simd_json::Buffers) -> T) -> T {
    SCRATCH.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        // Not reentrant in practice; a fresh scratch keeps it correct if it ever is.
        Err(_) => f(&mut simd_json::Buffers::new(512)),
    })
}

/// Reads and discards until the peer's Close, EOF or an error (the caller bounds the time).
async fn linger<R: tokio::io::AsyncRead + Unpin>(rx: &mut WsReader<R>) {
    loop {
        match rx.next().await {
            Ok(Message::Close { .. }) | Err(ReadError::Eof) => return,
            Err(ReadError::TooLarge { .. }) | Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Awaits `fut` under [`WRITE_TIMEOUT`], arming the timer only if the first poll does not
/// finish it. Almost every flush completes on its first poll (the socket has room), so the
/// common path reads no clock and touches no timer; `Err(())` means the timeout passed.
async fn within_write_timeout<F>(fut: F) -> Result<std::io::Result<()>, ()>
where
    F: Future<Output = std::io::Result<()>>,
{
    let mut fut = pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(WRITE_TIMEOUT, fut)
            .await
            .map_err(|_| ()),
    }
}

/// Awaits one write on the Twilio leg under [`WRITE_TIMEOUT`].
async fn twilio_write<F>(fut: F) -> Result<(), EndReason>
where
    F: Future<Output = std::io::Result<()>>,
{
    match within_write_timeout(fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "Twilio write failed");
            Err(EndReason::TwilioClosed)
        }
        Err(_) => Err(EndReason::TwilioError("write_timeout")),
    }
}

/// Awaits one write on the agent leg under [`WRITE_TIMEOUT`].
async fn agent_write<F>(fut: F) -> Result<(), EndReason>
where
    F: Future<Output = std::io::Result<()>>,
{
    match within_write_timeout(fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "agent write failed");
            Err(EndReason::AgentError("write_failed"))
        }
        Err(_) => Err(EndReason::AgentError("write_timeout")),
    }
}

impl Call {
    fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    fn skip(&self, leg: Leg, kind: &'static str, reason: &dyn std::fmt::Display) {
        self.metrics().error(leg, kind);
        warn!(leg = leg.as_str(), kind, reason = %reason, "skipped bad message");
    }

    // === Twilio leg ===

    /// Handles one Twilio message. Caller audio is queued on the agent writer (flushed by the
    /// loop), kept in the early buffer, or handed to the echo agent.
    async fn on_twilio(&mut self, msg: Result<Message<'_>, ReadError>) -> Result<Flow, EndReason> {
        let read_at = Instant::now();
        let msg = match msg {
            Ok(m) => m,
            Err(ReadError::Eof) => {
                debug!("Twilio connection closed without a close frame");
                return Err(EndReason::TwilioClosed);
            }
            Err(e) => {
                self.metrics().error(Leg::Twilio, e.kind());
                warn!(error = %e, kind = e.kind(), "Twilio socket error; ending call");
                return Err(EndReason::TwilioError(e.kind()));
            }
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close { code, reason } => {
                debug!(?code, %reason, "Twilio closed the stream");
                self.twilio_peer_close = Some(code);
                return Err(EndReason::TwilioClosed);
            }
            Message::Ping(p) => {
                self.t_tx
                    .send_pong(p)
                    .map_err(|_| EndReason::TwilioClosed)?;
                self.twilio_dirty = true;
                return Ok(Flow::Continue);
            }
            Message::Binary(b) => {
                let len = b.len();
                self.skip(
                    Leg::Twilio,
                    "binary_frame",
                    &format_args!("binary frame of {len} bytes; Twilio sends text"),
                );
                return Ok(Flow::Continue);
            }
        };
        let event = match with_scratch(|sc| tw::decode(text, sc)) {
            Ok(e) => e,
            Err(e) => {
                self.skip(Leg::Twilio, e.kind(), &e);
                return Ok(Flow::Continue);
            }
        };
        match event {
            TwilioEvent::Media(m) => {
                if self.stream_sid.is_empty() {
                    self.skip(Leg::Twilio, "media_before_start", &"media before start");
                    return Ok(Flow::Continue);
                }
                if tw::decode_payload(m.payload, &mut self.audio).is_err() {
                    self.skip(
                        Leg::Twilio,
                        "invalid_base64",
                        &"media.payload is not valid base64",
                    );
                    return Ok(Flow::Continue);
                }
                self.forward_caller_audio(read_at).await?;
            }
            TwilioEvent::Start(st) => {
                if !self.stream_sid.is_empty() {
                    self.skip(
                        Leg::Twilio,
                        "duplicate_start",
                        &"second start on one stream",
                    );
                    return Ok(Flow::Continue);
                }
                self.stream_sid = st.stream_sid.to_owned();
                self.call_sid = st.call_sid.to_owned();
                self.custom_parameters = st
                    .custom_parameters
                    .iter()
                    .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let span = tracing::Span::current();
                span.record("call_sid", st.call_sid);
                span.record("stream_sid", st.stream_sid);
                if st.encoding.is_some_and(|e| e != "audio/x-mulaw") {
                    warn!(encoding = ?st.encoding, "unexpected media encoding in start; relaying bytes unchanged");
                }
                info!(
                    account_sid = st.account_sid,
                    parameters = st.custom_parameters.len(),
                    "stream started"
                );
                self.check_stream_token()?;
                let (id, replaced_older) = self
                    .ctx
                    .live
                    .register(&self.call_sid, self.replaced.clone());
                self.live_id = Some(id);
                if replaced_older {
                    self.ctx
                        .metrics
                        .count("relay_duplicate_streams_total", &[], 1);
                    warn!("a second stream for this call arrived: it replaces the older one (policy: keep the newest)");
                }
                return Ok(Flow::StartAgent);
            }
            TwilioEvent::Mark { name } => {
                let m = &self.ctx.metrics;
                match self.playout.on_mark_echo(name) {
                    MarkOutcome::Played(ms) => {
                        m.marks_played.increment(1);
                        m.playout_played_bytes
                            .increment(crate::audio::ms_to_bytes(ms));
                    }
                    MarkOutcome::Flushed(ms) => {
                        m.marks_flushed.increment(1);
                        m.playout_flushed_bytes
                            .increment(crate::audio::ms_to_bytes(ms));
                    }
                    MarkOutcome::Unknown => debug!(name, "ignored unknown mark echo"),
                }
            }
            TwilioEvent::Dtmf { digit } => {
                self.dtmf_digits += 1;
                self.ctx.metrics.dtmf.increment(1);
                info!(digit, "dtmf");
            }
            TwilioEvent::Stop => return Err(EndReason::TwilioStop),
            TwilioEvent::Connected { protocol, version } => {
                debug!(?protocol, ?version, "Twilio connected");
            }
            TwilioEvent::Other { event } => {
                self.ctx.metrics.unknown_twilio_events.increment(1);
                debug!(event, "skipped unknown Twilio event");
            }
        }
        Ok(Flow::Continue)
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.custom_parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Authenticated mode: the stream's `relay_token` must match its call SID (or its
    /// single-use outbound nonce) before any audio reaches an agent.
    fn check_stream_token(&self) -> Result<(), EndReason> {
        let Some(tokens) = self.ctx.tokens.as_ref() else {
            return Ok(());
        };
        let m = &self.ctx.metrics;
        match tokens.check(
            &self.call_sid,
            self.param("relay_token"),
            self.param("relay_nonce"),
            Instant::now(),
        ) {
            Ok(()) => {
                m.count("relay_stream_tokens_total", &[("result", "valid")], 1);
                Ok(())
            }
            Err(e) => {
                m.count("relay_stream_tokens_total", &[("result", e.kind())], 1);
                m.error(Leg::Twilio, e.kind());
                warn!(reason = %e, "refused stream: bad relay_token");
                Err(EndReason::TokenRejected(e.kind()))
            }
        }
    }

    /// A per-call ElevenLabs agent id from the `relay_agent_id` parameter (set by
    /// `/outbound-call`), if present and well-formed.
    fn agent_id_override(&self) -> Option<String> {
        self.param("relay_agent_id")
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .map(str::to_owned)
    }

    /// Routes the caller frame in `self.audio` (read at `read_at`) to the echo agent, the
    /// agent socket, or the early buffer (bounded; overflow drops the oldest frame).
    async fn forward_caller_audio(&mut self, read_at: Instant) -> Result<(), EndReason> {
        let n = self.audio.len();
        if let Some(echo) = self.echo.as_mut() {
            let dropped = echo.push(read_at, &self.audio);
            self.cm.frame(Direction::TwilioToAgent, n);
            if dropped > 0 {
                self.cm
                    .drop_frames(Direction::AgentToTwilio, DropReason::EchoQueueFull, dropped);
            }
            return Ok(());
        }
        if self.agent_ready {
            if let Some(a_tx) = self.a_tx.as_mut() {
                elevenlabs::encode_user_audio(&self.audio, &mut self.a_out);
                a_tx.send_text(&self.a_out)
                    .map_err(|_| EndReason::AgentError("write_failed"))?;
                self.agent_dirty = true;
                self.pending_agent.push(read_at);
                self.cm.frame(Direction::TwilioToAgent, n);
                return Ok(());
            }
        }
        if self.early.len() >= self.ctx.settings.early_audio_frames.max(1) {
            self.early.pop_front();
            self.cm
                .drop_frames(Direction::TwilioToAgent, DropReason::EarlyBufferFull, 1);
        }
        self.early.push_back(self.audio.clone());
        Ok(())
    }

    // === agent leg ===

    /// The agent socket is open: send `conversation_initiation_client_data` first (§2.2).
    async fn on_agent_connected(&mut self, writer: connect::AgentWrite) -> Result<(), EndReason> {
        let a_tx = self.a_tx.insert(writer);
        let params: Vec<(&str, &str)> = self
            .custom_parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        elevenlabs::encode_initiation(&params, &mut self.a_out);
        a_tx.send_text(&self.a_out)
            .map_err(|_| EndReason::AgentError("write_failed"))?;
        agent_write(a_tx.flush()).await?;
        debug!("agent connected; initiation data sent");
        Ok(())
    }

    /// Handles one agent message.
    async fn on_agent(&mut self, msg: Result<Message<'_>, ReadError>) -> Result<(), EndReason> {
        let read_at = Instant::now();
        let msg = match msg {
            Ok(m) => m,
            Err(ReadError::Eof) => {
                info!("agent connection closed without a close frame");
                return Err(EndReason::AgentClosed(None));
            }
            Err(ReadError::TooLarge { limit }) => {
                self.skip(
                    Leg::Agent,
                    "message_too_large",
                    &format_args!("agent message over {limit} bytes"),
                );
                return Ok(());
            }
            Err(e) => {
                self.metrics().error(Leg::Agent, e.kind());
                warn!(error = %e, kind = e.kind(), "agent socket error; ending call");
                return Err(EndReason::AgentError(e.kind()));
            }
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close { code, reason } => {
                let meaning = code
                    .map(elevenlabs::close_code_meaning)
                    .unwrap_or("no code");
                info!(?code, %reason, meaning, "agent closed the conversation");
                self.agent_peer_close = Some(code);
                return Err(EndReason::AgentClosed(code));
            }
            Message::Ping(p) => {
                if let Some(a_tx) = self.a_tx.as_mut() {
                    a_tx.send_pong(p)
                        .map_err(|_| EndReason::AgentError("write_failed"))?;
                    self.agent_dirty = true;
                }
                return Ok(());
            }
            Message::Binary(b) => {
                let len = b.len();
                self.skip(
                    Leg::Agent,
                    "binary_frame",
                    &format_args!("binary frame of {len} bytes; the agent dialect is JSON text"),
                );
                return Ok(());
            }
        };
        let event = match with_scratch(|sc| elevenlabs::decode(text, sc)) {
            Ok(e) => e,
            Err(e) => {
                self.skip(Leg::Agent, e.kind(), &e);
                return Ok(());
            }
        };
        match event {
            AgentEvent::Audio {
                payload_b64,
                event_id,
            } => {
                if let Some(id) = event_id {
                    if self.interrupted_through.is_some_and(|cut| id <= cut) {
                        self.cm
                            .drop_frames(Direction::AgentToTwilio, DropReason::Interrupted, 1);
                        debug!(
                            event_id = id,
                            "dropped stale agent audio after interruption"
                        );
                        return Ok(());
                    }
                    self.max_audio_event_id = self.max_audio_event_id.max(id);
                }
                if tw::decode_payload(payload_b64, &mut self.audio).is_err() {
                    self.skip(Leg::Agent, "invalid_base64", &"audio is not valid base64");
                    return Ok(());
                }
                self.send_agent_audio(read_at).await?;
            }
            AgentEvent::Interruption { event_id } => {
                let cut = event_id.unwrap_or(self.max_audio_event_id);
                self.interrupted_through =
                    Some(self.interrupted_through.map_or(cut, |c| c.max(cut)));
                tw::encode_clear(&self.stream_sid, &mut self.t_out);
                self.t_tx
                    .send_text(&self.t_out)
                    .map_err(|_| EndReason::TwilioClosed)?;
                // A clear is sent at once, not batched.
                twilio_write(self.t_tx.flush()).await?;
                self.playout.on_clear();
                self.barge_ins += 1;
                self.ctx.metrics.barge_ins.increment(1);
                info!(event_id = ?event_id, "barge-in: sent clear");
            }
            AgentEvent::Ping { event_id } => {
                if let Some(a_tx) = self.a_tx.as_mut() {
                    elevenlabs::encode_pong(event_id, &mut self.a_out);
                    a_tx.send_text(&self.a_out)
                        .map_err(|_| EndReason::AgentError("write_failed"))?;
                    agent_write(a_tx.flush()).await?;
                }
            }
            AgentEvent::Ready {
                conversation_id,
                input_format,
                output_format,
            } => {
                let ok = |f: Option<&str>| f == Some(elevenlabs::ULAW_8000);
                if !(ok(input_format) && ok(output_format)) {
                    self.metrics().error(Leg::Agent, "audio_format_mismatch");
                    warn!(
                        ?input_format,
                        ?output_format,
                        "agent audio formats are not ulaw_8000 both ways; set the agent's input and output to μ-law 8000 Hz (the relay never transcodes)"
                    );
                    return Err(EndReason::AudioFormatMismatch);
                }
                info!(
                    ?conversation_id,
                    early_frames = self.early.len(),
                    "agent ready"
                );
                self.agent_ready = true;
                self.send_early_audio().await?;
            }
            AgentEvent::AgentResponse { text } => info!(agent_response = text, "agent said"),
            AgentEvent::UserTranscript { text } => info!(user_transcript = text, "caller said"),
            AgentEvent::ToolCall { name, call_id } => {
                self.ctx.metrics.tool_calls.increment(1);
                info!(
                    tool = name,
                    call_id, "agent requested a client tool; none configured"
                );
            }
            AgentEvent::Error {
                code,
                error_type,
                message,
            } => {
                self.metrics().error(Leg::Agent, "agent_error_event");
                warn!(
                    ?code,
                    ?error_type,
                    ?message,
                    meaning = code
                        .and_then(|c| u16::try_from(c).ok())
                        .map(elevenlabs::close_code_meaning),
                    "agent reported an error"
                );
            }
            AgentEvent::Other { kind } => {
                self.ctx.metrics.unknown_agent_events.increment(1);
                debug!(kind, "skipped agent message type");
            }
        }
        Ok(())
    }

    /// Sends the early buffer, in order, once the agent is ready.
    async fn send_early_audio(&mut self) -> Result<(), EndReason> {
        let Some(a_tx) = self.a_tx.as_mut() else {
            return Ok(());
        };
        while let Some(frame) = self.early.pop_front() {
            elevenlabs::encode_user_audio(&frame, &mut self.a_out);
            a_tx.send_text(&self.a_out)
                .map_err(|_| EndReason::AgentError("write_failed"))?;
            self.cm.frame(Direction::TwilioToAgent, frame.len());
        }
        self.agent_dirty = true;
        Ok(())
    }

    /// Sends the agent audio in `self.audio` to Twilio as `media` messages of at most
    /// `twilio_chunk_bytes` each.
    async fn send_agent_audio(&mut self, read_at: Instant) -> Result<(), EndReason> {
        let max = self.ctx.settings.twilio_chunk_bytes.max(1);
        for chunk in self.audio.chunks(max) {
            tw::encode_media(&self.stream_sid, chunk, &mut self.t_out);
            self.t_tx
                .send_text(&self.t_out)
                .map_err(|_| EndReason::TwilioClosed)?;
            self.playout.on_audio_sent(chunk.len());
            self.cm.frame(Direction::AgentToTwilio, chunk.len());
        }
        self.twilio_dirty = true;
        self.pending_twilio.push(read_at);
        Ok(())
    }

    /// The echo agent has frames due: send them to Twilio as agent audio.
    async fn on_echo_due(&mut self) -> Result<(), EndReason> {
        let now = Instant::now();
        loop {
            let Some(echo) = self.echo.as_mut() else {
                return Ok(());
            };
            if !echo.pop_due(now, &mut self.audio) {
                return Ok(());
            }
            self.send_agent_audio(now).await?;
        }
    }

    /// Flushes each writer that has queued frames (Twilio first gets a mark naming the
    /// cumulative ms sent, §5.4), then records relay-added latency for the flushed frames.
    async fn flush_dirty(&mut self) -> Result<(), EndReason> {
        if self.twilio_dirty {
            if let Some(ms) = self.playout.take_mark() {
                playout::mark_name(ms, &mut self.mark);
                tw::encode_mark(&self.stream_sid, &self.mark, &mut self.t_out);
                self.t_tx
                    .send_text(&self.t_out)
                    .map_err(|_| EndReason::TwilioClosed)?;
            }
            twilio_write(self.t_tx.flush()).await?;
            self.twilio_dirty = false;
            let now = Instant::now();
            let h = &mut self.cm.latency[Direction::AgentToTwilio as usize];
            for t in self.pending_twilio.drain(..) {
                h.record(now.saturating_duration_since(t));
            }
        }
        if self.agent_dirty {
            if let Some(a_tx) = self.a_tx.as_mut() {
                agent_write(a_tx.flush()).await?;
            }
            self.agent_dirty = false;
            let now = Instant::now();
            let h = &mut self.cm.latency[Direction::TwilioToAgent as usize];
            for t in self.pending_agent.drain(..) {
                h.record(now.saturating_duration_since(t));
            }
        }
        self.release_large_scratch();
        Ok(())
    }

    /// Gives back scratch buffers that a large message grew (an agent audio event of
    /// 100–500 ms is 1.2–5.4 KiB of JSON), so a call's resting memory stays sized for
    /// ~400-byte frames. Costs one free and one allocation per large message.
    fn release_large_scratch(&mut self) {
        for (v, rest) in [
            (&mut self.audio, crate::audio::MULAW_CHUNK_BYTES),
            (&mut self.t_out, SCRATCH_REST_BYTES),
            (&mut self.a_out, SCRATCH_REST_BYTES),
        ] {
            if v.capacity() > SCRATCH_KEEP_BYTES {
                *v = Vec::with_capacity(rest);
            }
        }
    }

    /// Folds metrics and writes the one summary line of the call.
    fn finish(mut self, end: &EndReason, started: Instant) {
        if let Some(id) = self.live_id {
            self.ctx.live.remove(&self.call_sid, id);
        }
        let m = self.ctx.metrics.clone();
        self.cm.fold(&m);
        let duration = started.elapsed();
        m.call_duration.record(duration.as_secs_f64());
        m.call_ended(end.outcome());
        let q = |d: Direction, q: f64| {
            self.cm.latency[d as usize]
                .quantile(q)
                .map(|v| v.as_micros() as u64)
        };
        let (played_ms, flushed_ms, _, _) = self.playout.totals();
        let level_warn = matches!(
            end,
            EndReason::TwilioError(_)
                | EndReason::AgentError(_)
                | EndReason::AgentConnectFailed(_)
                | EndReason::AudioFormatMismatch
                | EndReason::StartTimeout
                | EndReason::TokenRejected(_)
        );
        macro_rules! summary {
            ($lvl:ident) => {
                tracing::$lvl!(
                    end_reason = end.outcome(),
                    detail = ?end,
                    duration_ms = duration.as_millis() as u64,
                    frames_twilio_to_agent = self.cm.frames_total(Direction::TwilioToAgent),
                    frames_agent_to_twilio = self.cm.frames_total(Direction::AgentToTwilio),
                    dropped_twilio_to_agent = self.cm.dropped_total[0],
                    dropped_agent_to_twilio = self.cm.dropped_total[1],
                    latency_t2a_p50_us = ?q(Direction::TwilioToAgent, 0.5),
                    latency_t2a_p99_us = ?q(Direction::TwilioToAgent, 0.99),
                    latency_a2t_p50_us = ?q(Direction::AgentToTwilio, 0.5),
                    latency_a2t_p99_us = ?q(Direction::AgentToTwilio, 0.99),
                    played_ms,
                    flushed_ms,
                    barge_ins = self.barge_ins,
                    dtmf_digits = self.dtmf_digits,
                    "call ended"
                )
            };
        }
        if level_warn {
            summary!(warn);
        } else {
            summary!(info);
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[tokio::test]
    /// The call task's future is part of every call's memory (issue 3: ≤ 24 KiB per call in
    /// total); keep it small.
    async fn call_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (r, w) = c.into_split();
        let reader = WsReader::new(
            Prefixed::new(bytes::Bytes::new(), r),
            crate::wire::ws::Role::Server,
            1024,
        );
        let writer = WsWriter::new(w, crate::wire::ws::Role::Server);
        let ctx = Arc::new(CallContext {
            settings: crate::config::ServeArgs::defaults()
                .call_settings()
                .unwrap(),
            metrics: Metrics::new(),
            tls: crate::wire::net::tls_client_config().unwrap(),
            tokens: None,
            live: Arc::new(crate::auth::tokens::LiveStreams::default()),
        });
        let fut = run(reader, writer, ctx, CancellationToken::new());
        eprintln!(
            "call future: {} bytes; Call: {} bytes",
            std::mem::size_of_val(&fut),
            std::mem::size_of::<Call>()
        );
    }
}
