//! The call driver: the only async code of a call. It owns both sockets (read halves through
//! cancel-safe `WsReader`s, write halves through cancel-safe `WsWriter`s), the agent connect
//! future, the tool-webhook futures and one timer, and feeds a [`CallMachine`].
//!
//! Each loop turn: act on the machine's events; move what each leg owes from the machine into
//! that leg's writer (bounded per turn) and try to write it once; arm the timer from
//! [`CallMachine::poll_timeout`]; then wait in one `select!` on {Twilio message, agent
//! message, Twilio writable, agent writable, agent connected, tool answer, timer, stop}.
//! Each leg's writes are a branch of their own, so a stalled agent socket never stops Twilio
//! reads or a `clear` to Twilio (and the other way round); the machine caps each outbox and
//! ends a call whose leg stays stalled.
//!
//! Also owns what needs shared state at `start`: the stream-token check and the live-stream
//! registry (duplicate policy), and the end of the call: best-effort flush, closing
//! handshakes, metrics fold, summary line.

use super::machine::{CallEvent, CallMachine, Side};
use super::tools::{self, ToolRequest};
use super::{CallContext, EndReason, CLOSE_TIMEOUT};
use crate::agent::connect::{AgentRead, AgentWrite, ConnectFuture, ConnectSpec};
use crate::agent::{AgentKind, ToolOutput};
use crate::obs::metrics::{Leg, ToolResult};
use crate::twilio::codec::{self as tw, TwilioEvent};
use crate::wire::ws::{Message, Prefixed, ReadError, WsReader, WsWriter};
use futures_util::FutureExt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Read half of the Twilio socket (hyper's leftover bytes chained in front).
pub type TwilioRead = WsReader<Prefixed<OwnedReadHalf>>;
/// Write half of the Twilio socket.
pub type TwilioWrite = WsWriter<OwnedWriteHalf>;

/// Most messages taken from one socket per turn before writing (batching: one write per
/// socket per burst).
const BATCH_MESSAGES: usize = 16;

/// Most bytes a writer holds unwritten; beyond it, audio waits in the machine's outbox
/// (where its byte cap applies).
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Loop turns between direct checks of the stop token and the timer (a peer that keeps its
/// socket always readable would otherwise starve the branches the biased select polls last).
const STARVATION_CHECK_TURNS: u32 = 8;

/// How often a live call republishes its figures for `GET /calls`.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// Scratch buffers grown beyond this by a large message are released after the turn.
const SCRATCH_KEEP_BYTES: usize = 4096;

type ToolFuture = Pin<Box<dyn Future<Output = (ToolResult, ToolOutput)> + Send>>;

/// Runs one call on an upgraded Twilio socket until it ends; never panics on input.
/// `shutdown` is cancelled when the relay's drain deadline passes (close 1001).
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
        agent = tracing::field::Empty,
    );
    drive(t_read, t_write, ctx, shutdown).instrument(span).await
}

thread_local! {
    /// simd-json parser scratch, one per worker thread: parsing never awaits, so calls share
    /// it instead of each holding its own (≈1.5 KiB per leg).
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

/// The driver's own per-call state besides the machine.
struct Legs {
    t_tx: TwilioWrite,
    a_tx: Option<AgentWrite>,
    /// A close frame each peer sent, owed a close reply (RFC 6455 §5.5.1).
    twilio_peer_close: Option<Option<u16>>,
    agent_peer_close: Option<Option<u16>>,
    scratch: Vec<u8>,
    live_id: Option<u64>,
    replaced: CancellationToken,
    /// Each writer's `bytes_written` when last looked at (Twilio, agent).
    seen_written: [u64; 2],
    /// For the end bookkeeping: the call's `/calls` entry and its live-stream call SID.
    ctx: Arc<CallContext>,
    registry_id: u64,
    live_sid: Option<String>,
    /// Set by [`finish`]; if the task ends without it (a panic), `Drop` still removes the
    /// call's registry entries so it does not stay "live" forever.
    finished: bool,
}

impl Drop for Legs {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::error!("call task ended without its end bookkeeping; removing its entries");
        if let (Some(sid), Some(id)) = (self.live_sid.as_deref(), self.live_id) {
            self.ctx.live.remove(sid, id);
        }
        self.ctx.calls.abandon(self.registry_id);
    }
}

impl Legs {
    /// Tells the machine about write progress since the last look: a leg whose socket
    /// took any bytes is slow, not stalled (its stall clock starts again).
    fn note_progress(&mut self, m: &mut CallMachine, now: Instant) {
        let written = [
            self.t_tx.bytes_written(),
            self.a_tx.as_ref().map_or(0, |w| w.bytes_written()),
        ];
        for (side, i) in [(Side::Twilio, 0), (Side::Agent, 1)] {
            if written[i] != self.seen_written[i] {
                self.seen_written[i] = written[i];
                m.handle_write_progress(side, now);
            }
        }
    }
}

async fn drive(
    mut t_rx: TwilioRead,
    t_tx: TwilioWrite,
    ctx: Arc<CallContext>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut m = CallMachine::new(ctx.settings.clone(), started);
    let registry_id = ctx.calls.register(m.summary(started, started_unix_ms));
    let mut legs = Legs {
        t_tx,
        a_tx: None,
        twilio_peer_close: None,
        agent_peer_close: None,
        scratch: Vec::with_capacity(512),
        live_id: None,
        replaced: shutdown.child_token(),
        seen_written: [0; 2],
        ctx: ctx.clone(),
        registry_id,
        live_sid: None,
        finished: false,
    };
    let mut a_rx: Option<AgentRead> = None;
    let mut connecting: Option<(ConnectFuture, Instant, AgentKind)> = None;
    let mut tool_calls: Vec<(String, ToolFuture)> = Vec::new();
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut timer = pin!(tokio::time::sleep_until(far));
    let mut timer_at: Option<Instant> = None;
    // One future for both ways a call is stopped from outside: `replaced` is a child of
    // `shutdown`, so it fires for either; `shutdown.is_cancelled()` tells which.
    let stop = legs.replaced.clone();
    let mut stopped = pin!(stop.cancelled());
    let stop_reason = || {
        if shutdown.is_cancelled() {
            EndReason::Shutdown
        } else {
            EndReason::Replaced
        }
    };
    let mut turns: u32 = 0;
    // The stop future fires once; a drain notice may keep the call up for a few seconds more.
    let mut stop_seen = false;
    let (mut last_fold, mut last_summary) = (started, started);

    loop {
        // 1. What the machine asked for.
        while let Some(ev) = m.poll_event() {
            match ev {
                CallEvent::Started(kind) => {
                    tracing::Span::current().record("agent", kind.as_str());
                    ctx.metrics.call_started(kind as usize);
                    // `GET /calls/{sid}` finds the call from its start on.
                    ctx.calls
                        .update(registry_id, m.summary(Instant::now(), started_unix_ms));
                }
                CallEvent::ConnectAgent(kind) => {
                    match ConnectSpec::new(kind, &ctx.settings.agents, &m.params()) {
                        Ok(spec) => {
                            let (http, tls) = (ctx.http.clone(), ctx.tls.clone());
                            let fut: ConnectFuture =
                                Box::pin(async move { spec.connect(&http, &tls).await });
                            connecting = Some((fut, Instant::now(), kind));
                        }
                        Err(e) => {
                            ctx.metrics.agent_connect(kind as usize, 0.0, false);
                            ctx.metrics.error(Leg::Agent, e.kind());
                            warn!(error = %e, "agent connect failed");
                            m.end(EndReason::AgentConnectFailed(e.kind()));
                        }
                    }
                }
                CallEvent::CallTool {
                    id,
                    name,
                    arguments,
                } => {
                    let req = ToolRequest {
                        call_sid: m.call_sid().to_owned(),
                        stream_sid: m.stream_sid().to_owned(),
                        agent: m.agent_kind().as_str(),
                        tool_call_id: id.clone(),
                        name,
                        arguments,
                    };
                    let (http, c) = (ctx.http.clone(), ctx.clone());
                    tool_calls.push((
                        id,
                        Box::pin(async move {
                            tools::call_webhook(&http, &c.settings.tools, req).await
                        }),
                    ));
                }
                CallEvent::CancelTool(id) => tool_calls.retain(|(i, _)| *i != id),
            }
        }
        if m.end_reason().is_some() {
            break;
        }
        // 2. Move what each leg owes into its writer and try to write it once.
        let now = Instant::now();
        fill(&mut m, Side::Twilio, &mut legs.t_tx, &mut legs.scratch, now);
        try_write(&mut m, Side::Twilio, &mut legs.t_tx, now).await;
        if let Some(a_tx) = legs.a_tx.as_mut() {
            fill(&mut m, Side::Agent, a_tx, &mut legs.scratch, now);
            try_write(&mut m, Side::Agent, a_tx, now).await;
        }
        legs.note_progress(&mut m, now);
        if legs.scratch.capacity() > SCRATCH_KEEP_BYTES {
            legs.scratch = Vec::with_capacity(512);
        }
        if m.metrics()
            .fold_due(now.saturating_duration_since(last_fold))
        {
            m.metrics_mut().fold(&ctx.metrics);
            last_fold = now;
            if now.saturating_duration_since(last_summary) >= SUMMARY_INTERVAL {
                ctx.calls
                    .update(registry_id, m.summary(now, started_unix_ms));
                last_summary = now;
            }
        }
        if m.end_reason().is_some() {
            break;
        }
        // 3. One timer for every deadline of the machine.
        let next = m.poll_timeout();
        if next != timer_at {
            timer_at = next;
            let at = next.map_or(far, tokio::time::Instant::from_std);
            timer.as_mut().reset(at);
        }
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(STARVATION_CHECK_TURNS) {
            if !stop_seen && stop.is_cancelled() {
                stop_seen = true;
                on_stop(&mut m, &ctx, stop_reason());
                continue;
            }
            if timer_at.is_some_and(|t| t <= Instant::now()) {
                legs.note_progress(&mut m, Instant::now());
                m.handle_timeout(Instant::now());
                continue;
            }
        }
        let t_pending = legs.t_tx.pending_bytes() > 0;
        let a_pending = legs.a_tx.as_ref().is_some_and(|w| w.pending_bytes() > 0);
        // 4. Wait for the next thing to happen.
        tokio::select! {
            // Sockets first: most wake-ups are a frame, and then nothing else is polled.
            biased;
            msg = t_rx.next() => {
                on_twilio(&mut m, &mut legs, &ctx, msg);
                let mut n = 1;
                while m.end_reason().is_none() && n < BATCH_MESSAGES {
                    match t_rx.next().now_or_never() {
                        Some(msg) => { on_twilio(&mut m, &mut legs, &ctx, msg); n += 1; }
                        None => break,
                    }
                }
            }
            msg = async { a_rx.as_mut().expect("guarded by the branch condition").next().await }, if a_rx.is_some() => {
                on_agent(&mut m, &mut legs, msg);
                let mut n = 1;
                while m.end_reason().is_none() && n < BATCH_MESSAGES {
                    let Some(rx) = a_rx.as_mut() else { break };
                    match rx.next().now_or_never() {
                        Some(msg) => { on_agent(&mut m, &mut legs, msg); n += 1; }
                        None => break,
                    }
                }
            }
            r = std::future::poll_fn(|cx| legs.t_tx.poll_flush(cx)), if t_pending => {
                written(&mut m, Side::Twilio, r, Instant::now());
            }
            r = std::future::poll_fn(|cx| legs.a_tx.as_mut().expect("guarded by the branch condition").poll_flush(cx)), if a_pending => {
                written(&mut m, Side::Agent, r, Instant::now());
            }
            res = async { (&mut connecting.as_mut().expect("guarded by the branch condition").0).await }, if connecting.is_some() => {
                let (_, since, kind) = connecting.take().expect("guarded by the branch condition");
                let secs = since.elapsed().as_secs_f64();
                match res {
                    Ok((reader, writer)) => {
                        ctx.metrics.agent_connect(kind as usize, secs, true);
                        debug!(connect_ms = (secs * 1e3) as u64, "agent connected");
                        a_rx = Some(reader);
                        legs.a_tx = Some(writer);
                        m.handle_agent_connected();
                    }
                    Err(e) => {
                        ctx.metrics.agent_connect(kind as usize, secs, false);
                        ctx.metrics.error(Leg::Agent, e.kind());
                        warn!(error = %e, kind = e.kind(), "agent connect failed");
                        m.end(EndReason::AgentConnectFailed(e.kind()));
                    }
                }
            }
            (id, result, output) = poll_tools(&mut tool_calls), if !tool_calls.is_empty() => {
                m.handle_tool_result(&id, result, output);
            }
            _ = &mut timer, if timer_at.is_some() => {
                legs.note_progress(&mut m, Instant::now());
                m.handle_timeout(Instant::now());
            }
            _ = &mut stopped, if !stop_seen => {
                stop_seen = true;
                on_stop(&mut m, &ctx, stop_reason());
            }
        }
    }

    let end = m.end_reason().cloned().unwrap_or(EndReason::TwilioClosed);
    tracing::Span::current().record("agent", m.agent_kind().as_str());
    close_legs(&mut m, &mut legs, &mut t_rx, a_rx.as_mut(), &end).await;
    drop(t_rx);
    drop(a_rx);
    finish(
        m,
        &mut legs,
        &ctx,
        &end,
        started,
        started_unix_ms,
        registry_id,
    );
}

/// The call is stopped from outside: a newer stream replaced it (ends now), or the drain
/// deadline passed (the machine may play the drain notice first).
fn on_stop(m: &mut CallMachine, ctx: &CallContext, reason: EndReason) {
    if reason == EndReason::Shutdown {
        if m.handle_drain_deadline(Instant::now()) {
            ctx.metrics.count("relay_drain_notices_total", &[], 1);
        }
    } else {
        m.end(reason);
    }
}

/// Moves what `side` owes into its writer, up to [`WRITE_BATCH_BYTES`] unwritten.
fn fill<W: tokio::io::AsyncWrite + Unpin>(
    m: &mut CallMachine,
    side: Side,
    w: &mut WsWriter<W>,
    scratch: &mut Vec<u8>,
    now: Instant,
) {
    if !m.wants_transmit(side) {
        return;
    }
    while w.pending_bytes() < WRITE_BATCH_BYTES && m.poll_transmit(side, scratch, now) {
        if w.send_text(scratch).is_err() {
            return; // a close was sent: the call is ending
        }
    }
}

/// One write attempt without waiting: finishing tells the machine the leg drained; not
/// finishing starts its stall clock (the select branch keeps writing).
async fn try_write<W: tokio::io::AsyncWrite + Unpin>(
    m: &mut CallMachine,
    side: Side,
    w: &mut WsWriter<W>,
    now: Instant,
) {
    if w.pending_bytes() == 0 {
        return;
    }
    let r = std::future::poll_fn(|cx| Poll::Ready(w.poll_flush(cx))).await;
    match r {
        Poll::Ready(r) => written(m, side, r, now),
        Poll::Pending => m.handle_write_blocked(side, now),
    }
}

/// A write on `side` finished (`Ok`) or failed.
fn written(m: &mut CallMachine, side: Side, r: std::io::Result<()>, now: Instant) {
    match r {
        Ok(()) => m.handle_write_done(side, now),
        Err(e) => {
            debug!(error = %e, leg = ?side, "write failed");
            m.end(match side {
                Side::Twilio => EndReason::TwilioClosed,
                Side::Agent => EndReason::AgentError("write_failed"),
            });
        }
    }
}

/// Polls the in-flight tool webhooks; resolves with the first answer.
async fn poll_tools(calls: &mut Vec<(String, ToolFuture)>) -> (String, ToolResult, ToolOutput) {
    std::future::poll_fn(|cx| {
        for i in 0..calls.len() {
            if let Poll::Ready((result, output)) = calls[i].1.as_mut().poll(cx) {
                let (id, _) = calls.swap_remove(i);
                return Poll::Ready((id, result, output));
            }
        }
        Poll::Pending
    })
    .await
}

/// Handles one Twilio read: transport events here, messages in the machine.
fn on_twilio(
    m: &mut CallMachine,
    legs: &mut Legs,
    ctx: &CallContext,
    msg: Result<Message<'_>, ReadError>,
) {
    let now = Instant::now();
    let text = match msg {
        Ok(Message::Text(t)) => t,
        Ok(Message::Close { code, reason }) => {
            debug!(?code, %reason, "Twilio closed the stream");
            legs.twilio_peer_close = Some(code);
            m.end(EndReason::TwilioClosed);
            return;
        }
        Ok(Message::Ping(p)) => {
            let _ = legs.t_tx.send_pong(p);
            return;
        }
        Ok(Message::Binary(b)) => {
            m.handle_bad_input(
                Leg::Twilio,
                "binary_frame",
                &format_args!("binary frame of {} bytes; Twilio sends text", b.len()),
            );
            return;
        }
        Err(ReadError::Eof) => {
            debug!("Twilio connection closed without a close frame");
            m.end(EndReason::TwilioClosed);
            return;
        }
        Err(e) => {
            ctx.metrics.error(Leg::Twilio, e.kind());
            warn!(error = %e, kind = e.kind(), "Twilio socket error; ending the call");
            m.end(match e.close_code() {
                Some(close_code) => EndReason::TwilioError {
                    kind: e.kind(),
                    close_code,
                },
                None => EndReason::TwilioClosed,
            });
            return;
        }
    };
    with_scratch(|sc| match tw::decode(text, sc) {
        Ok(TwilioEvent::Start(st)) => {
            let span = tracing::Span::current();
            span.record("call_sid", st.call_sid);
            span.record("stream_sid", st.stream_sid);
            if let Some(reason) = admit(ctx, legs, &st) {
                m.end(reason);
                return;
            }
            m.handle_twilio(TwilioEvent::Start(st), now);
        }
        Ok(ev) => m.handle_twilio(ev, now),
        Err(e) => m.handle_bad_input(Leg::Twilio, e.kind(), &e),
    });
}

/// Authenticated mode: the stream's `relay_token` must match its call SID before any audio
/// reaches an agent. Then the live-stream registry applies
/// the duplicate policy (the newest stream for a call SID replaces the older).
fn admit(ctx: &CallContext, legs: &mut Legs, st: &tw::Start<'_>) -> Option<EndReason> {
    let param = |name: &str| {
        st.custom_parameters
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    };
    if let Some(tokens) = ctx.tokens.as_ref() {
        let m = &ctx.metrics;
        match tokens.check(st.call_sid, param("relay_token")) {
            Ok(()) => m.count("relay_stream_tokens_total", &[("result", "valid")], 1),
            Err(e) => {
                m.count("relay_stream_tokens_total", &[("result", e.kind())], 1);
                m.error(Leg::Twilio, e.kind());
                warn!(reason = %e, "refused stream: bad relay_token");
                return Some(EndReason::TokenRejected(e.kind()));
            }
        }
    }
    if legs.live_id.is_none() && !st.call_sid.is_empty() {
        let (id, replaced_older) = ctx.live.register(st.call_sid, legs.replaced.clone());
        legs.live_id = Some(id);
        legs.live_sid = Some(st.call_sid.to_owned());
        if replaced_older {
            ctx.metrics.count("relay_duplicate_streams_total", &[], 1);
            warn!("a second stream for this call arrived: it replaces the older one (policy: keep the newest)");
        }
    }
    None
}

/// Handles one agent read: transport events here, messages in the machine.
fn on_agent(m: &mut CallMachine, legs: &mut Legs, msg: Result<Message<'_>, ReadError>) {
    let now = Instant::now();
    let text = match msg {
        Ok(Message::Text(t)) => t,
        Ok(Message::Close { code, reason }) => {
            let meaning = code.map_or("no code", crate::agent::elevenlabs::close_code_meaning);
            info!(?code, %reason, meaning, "agent closed the session");
            legs.agent_peer_close = Some(code);
            m.end(EndReason::AgentClosed(code));
            return;
        }
        Ok(Message::Ping(p)) => {
            if let Some(a_tx) = legs.a_tx.as_mut() {
                let _ = a_tx.send_pong(p);
            }
            return;
        }
        Ok(Message::Binary(b)) => {
            m.handle_bad_input(
                Leg::Agent,
                "binary_frame",
                &format_args!(
                    "binary frame of {} bytes; agent dialects are JSON text",
                    b.len()
                ),
            );
            return;
        }
        Err(ReadError::Eof) => {
            info!("agent connection closed without a close frame");
            m.end(EndReason::AgentClosed(None));
            return;
        }
        Err(ReadError::TooLarge { limit }) => {
            m.handle_bad_input(
                Leg::Agent,
                "message_too_large",
                &format_args!("agent message over {limit} bytes"),
            );
            return;
        }
        Err(e) => {
            m.metrics_mut().error(Leg::Agent, e.kind());
            warn!(error = %e, kind = e.kind(), "agent socket error; ending the call");
            m.end(EndReason::AgentError(e.kind()));
            return;
        }
    };
    let decoded = with_scratch(|sc| {
        m.dialect_mut()
            .map(|d| d.decode(text, sc).map_err(|e| (e.kind(), e.to_string())))
    });
    // The event borrows `text`, not the machine, so it can be handed in now.
    match decoded {
        Some(Ok(ev)) => m.handle_agent(ev, now),
        Some(Err((kind, reason))) => m.handle_bad_input(Leg::Agent, kind, &reason),
        None => {}
    }
}

/// Best effort at the end: write what is queued, then close both legs (RFC 6455 §7: answer
/// a peer's close; otherwise send ours and read until its reply or EOF, so unread bytes do
/// not turn into a TCP reset), all under [`CLOSE_TIMEOUT`].
async fn close_legs(
    m: &mut CallMachine,
    legs: &mut Legs,
    t_rx: &mut TwilioRead,
    a_rx: Option<&mut AgentRead>,
    end: &EndReason,
) {
    let now = Instant::now();
    let (code, reason) = end.twilio_close();
    let (a_code, a_reason) = end.agent_close();
    let twilio_open = !matches!(end, EndReason::TwilioClosed) || legs.twilio_peer_close.is_some();
    let agent_open = !matches!(end, EndReason::AgentClosed(_)) || legs.agent_peer_close.is_some();
    let twilio_stalled = matches!(end, EndReason::TwilioStalled);
    let agent_stalled = matches!(end, EndReason::AgentStalled);
    if !twilio_stalled {
        fill(m, Side::Twilio, &mut legs.t_tx, &mut legs.scratch, now);
    }
    if let (Some(a_tx), false) = (legs.a_tx.as_mut(), agent_stalled) {
        fill(m, Side::Agent, a_tx, &mut legs.scratch, now);
    }
    let (t_peer, a_peer) = (legs.twilio_peer_close, legs.agent_peer_close);
    let t_tx = &mut legs.t_tx;
    let close_twilio = async {
        if !twilio_open {
            return;
        }
        if let Some(received) = t_peer {
            // Answer the caller's close; as the server we then drop TCP (RFC 6455 §7.1.1).
            let _ = t_tx.close_reply(received).await;
        } else if t_tx.close(code, reason).await.is_ok() {
            linger(t_rx).await;
        }
    };
    let close_agent = async {
        let (Some(a_tx), Some(a_rx)) = (legs.a_tx.as_mut(), a_rx) else {
            return;
        };
        if !agent_open {
            return;
        }
        let closed = match a_peer {
            // Answer the agent's close; as the client we wait for the server to drop TCP.
            Some(received) => a_tx.close_reply(received).await,
            None => a_tx.close(a_code, a_reason).await,
        };
        if closed.is_ok() {
            linger(a_rx).await;
        }
    };
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        futures_util::future::join(close_twilio, close_agent),
    )
    .await;
}

/// Reads and discards until the peer's close, EOF or an error (the caller bounds the time).
async fn linger<R: tokio::io::AsyncRead + Unpin>(rx: &mut WsReader<R>) {
    loop {
        match rx.next().await {
            Ok(Message::Close { .. }) | Err(ReadError::Eof) => return,
            Err(ReadError::TooLarge { .. }) | Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Folds metrics, publishes the final figures, and writes the one summary line of the call.
fn finish(
    mut m: CallMachine,
    legs: &mut Legs,
    ctx: &CallContext,
    end: &EndReason,
    started: Instant,
    started_unix_ms: u64,
    registry_id: u64,
) {
    legs.finished = true;
    if let Some(id) = legs.live_id {
        ctx.live.remove(m.call_sid(), id);
    }
    let metrics = &ctx.metrics;
    m.metrics_mut().fold(metrics);
    let duration = started.elapsed();
    metrics.call_duration.record(duration.as_secs_f64());
    let summary = m.summary(Instant::now(), started_unix_ms);
    let f = m.figures();
    metrics.call_quality(
        m.agent_kind() as usize,
        f.turn.quantile(0.95),
        [
            summary
                .latency
                .forward_twilio_to_agent
                .p99_ms
                .map(|v| v / 1e3),
            summary
                .latency
                .forward_agent_to_twilio
                .p99_ms
                .map(|v| v / 1e3),
        ],
    );
    let l = &summary.latency;
    let q = |q: &crate::obs::calls::Quantiles| {
        format!(
            "n={} p50={} p95={} p99={} max={}",
            q.count,
            fmt_ms(q.p50_ms),
            fmt_ms(q.p95_ms),
            fmt_ms(q.p99_ms),
            fmt_ms(q.max_ms)
        )
    };
    macro_rules! line {
        ($lvl:ident) => {
            tracing::$lvl!(
                end_reason = end.outcome(),
                detail = ?end,
                duration_ms = duration.as_millis() as u64,
                frames_twilio_to_agent = summary.frames_twilio_to_agent,
                frames_agent_to_twilio = summary.frames_agent_to_twilio,
                dropped_twilio_to_agent = summary.dropped_twilio_to_agent,
                dropped_agent_to_twilio = summary.dropped_agent_to_twilio,
                inbound_frames_missing = summary.inbound_frames_missing,
                played_ms = summary.played_ms,
                flushed_ms = summary.flushed_ms,
                barge_ins = summary.barge_ins,
                dtmf_digits = summary.dtmf_digits,
                tool_calls = summary.tool_calls,
                bad_inputs = summary.bad_inputs,
                forward_twilio_to_agent_ms = %q(&l.forward_twilio_to_agent),
                forward_agent_to_twilio_ms = %q(&l.forward_agent_to_twilio),
                turn_ms = %q(&l.turn),
                agent_turn_ms = %q(&l.agent_turn),
                barge_in_ms = %q(&l.barge_in),
                playout_lag_ms = %q(&l.playout_lag),
                inbound_jitter_ms = %q(&l.inbound_jitter),
                agent_ping_rtt_ms = %q(&l.agent_ping_rtt),
                "call ended"
            )
        };
    }
    if end.is_failure() {
        line!(warn);
    } else {
        line!(info);
    }
    ctx.calls.finish(registry_id, summary);
    // Last, so that whoever sees this call in `relay_calls_total` also finds its other
    // counters folded and its summary at `/calls/{sid}`.
    metrics.call_ended(end.outcome());
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The call task's future and the machine are part of every call's memory (budget: 24 KiB
    /// per call at the margin, sockets included); print them so a change shows.
    #[tokio::test]
    async fn call_future_size() {
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
        let settings = crate::config::ServeArgs::defaults()
            .call_settings()
            .unwrap();
        let tls = crate::wire::net::tls_client_config().unwrap();
        let ctx = Arc::new(CallContext {
            settings: Arc::new(settings),
            metrics: crate::obs::metrics::Metrics::new(),
            http: crate::wire::http_client::HttpClient::new(&tls),
            tls,
            tokens: None,
            live: Arc::new(crate::auth::tokens::LiveStreams::default()),
            calls: Arc::new(crate::obs::calls::CallRegistry::default()),
        });
        let fut = run(reader, writer, ctx.clone(), CancellationToken::new());
        eprintln!(
            "call future: {} bytes; CallMachine: {} bytes; CallMetrics: {} bytes; summary: {} bytes",
            std::mem::size_of_val(&fut),
            std::mem::size_of::<CallMachine>(),
            std::mem::size_of::<crate::obs::metrics::CallMetrics>(),
            std::mem::size_of::<crate::obs::calls::CallSummary>(),
        );
        assert!(std::mem::size_of_val(&fut) < 16 * 1024);
    }
}
