//! The call driver: the only async code of a call. It owns both sockets (read halves through
//! cancel-safe `WsReader`s, write halves through cancel-safe `WsWriter`s), the agent connect
//! future, the tool-webhook futures and one timer, and feeds a [`CallMachine`].
//!
//! Each loop turn: act on the machine's events ([`on_event`]); move what each leg owes from
//! the machine into that leg's writer and try to write it once ([`Legs::flush`]); fold the
//! call's metrics when due; arm the timer from [`CallMachine::poll_timeout`]; then wait in one
//! `select!` on {caller message, agent message, caller writable, agent writable, agent
//! connected, tool answer, timer, stop}. Each leg's writes are a branch of their own, so a
//! stalled agent socket never stops caller reads or a `clear` to the carrier (and the other
//! way round); the machine caps each outbox and ends a call whose leg stays stalled.
//!
//! Also owns what needs shared state: the stream-token check and the live-stream registry at
//! admission (the machine decides what they mean), and the end of the call: best-effort
//! flush, closing handshakes, metrics fold, summary line.

use super::connect::{self as agent_connect, AgentRead, AgentWrite, ConnectFuture};
use super::machine::{CallEvent, CallMachine};
use super::settings::{CallContext, CLOSE_TIMEOUT};
use super::tool_webhook::{self, ToolRequest, WebhookAnswer};
use super::transfer;
use super::EndReason;
use crate::agent::AgentKind;
use crate::carrier::{CarrierKind, Decoded};
use crate::obs::labels::{ErrorKind, Leg};
use crate::wire::net::{TcpRead, TcpWrite};
use crate::wire::ws::{Message, Prefixed, ReadError, WsReader, WsWriter};
use futures_util::FutureExt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Read half of the carrier socket (hyper's leftover bytes chained in front).
pub type CallerRead = WsReader<Prefixed<TcpRead>>;
/// Write half of the carrier socket.
pub type CallerWrite = WsWriter<TcpWrite>;

/// Most messages taken from one socket per turn before writing (batching: one write per
/// socket per burst).
const BATCH_MESSAGES: usize = 16;

/// Most bytes a writer holds unwritten; beyond it, audio waits in the machine's outbox
/// (where its byte cap applies).
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Loop turns between direct checks of the stop token and the timer (a peer that keeps its
/// socket always readable would otherwise starve the branches the biased select polls last).
const STARVATION_CHECK_TURNS: u32 = 8;

/// Scratch buffers grown beyond this by a large message are released after the turn.
const SCRATCH_KEEP_BYTES: usize = 4096;

type ToolFuture = Pin<Box<dyn Future<Output = WebhookAnswer> + Send>>;

use super::transfer::UpdateFuture;

/// Runs one call on an upgraded carrier socket until it ends; never panics on input.
/// `url_token` is a stream token the carrier carried in the upgrade URL. `shutdown` is
/// cancelled when the relay's drain deadline passes (close 1001).
pub async fn run(
    c_read: CallerRead,
    c_write: CallerWrite,
    carrier: CarrierKind,
    url_token: Option<String>,
    ctx: Arc<CallContext>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!(
        "call",
        carrier = carrier.as_str(),
        call_sid = tracing::field::Empty,
        stream_sid = tracing::field::Empty,
        agent = tracing::field::Empty,
    );
    drive(c_read, c_write, carrier, url_token, ctx, shutdown)
        .instrument(span)
        .await
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
    c_tx: CallerWrite,
    a_tx: Option<AgentWrite>,
    /// A close frame each peer sent, owed a close reply (RFC 6455 §5.5.1).
    caller_peer_close: Option<Option<u16>>,
    agent_peer_close: Option<Option<u16>>,
    scratch: Vec<u8>,
    /// A frame the carrier's reordering window released.
    released: Vec<u8>,
    live_id: Option<u64>,
    replaced: CancellationToken,
    /// Each writer's `bytes_written` when last looked at (caller, agent).
    seen_written: [u64; 2],
    /// For the end bookkeeping: the call's `/calls` entry and its live-stream call SID.
    ctx: Arc<CallContext>,
    registry_id: u64,
    live_sid: Option<String>,
    started_unix_ms: u64,
    connecting: Option<(ConnectFuture, Instant, AgentKind)>,
    /// The machine's agent generation the held agent socket (and connect) belongs to.
    agent_gen: u64,
    tool_calls: Vec<(String, ToolFuture)>,
    /// A transfer's REST update in flight.
    updating: Option<UpdateFuture>,
    /// The call's recording, when it is recorded.
    recorder: Option<crate::call::recording::Recorder>,
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
            self.c_tx.bytes_written(),
            self.a_tx.as_ref().map_or(0, |w| w.bytes_written()),
        ];
        for (leg, i) in [(Leg::Caller, 0), (Leg::Agent, 1)] {
            if written[i] != self.seen_written[i] {
                self.seen_written[i] = written[i];
                m.handle_write_progress(leg, now);
            }
        }
    }

    /// The agent's socket closed while the call goes on (a call action finishes without
    /// it): its close is answered in the background, bounded by [`CLOSE_TIMEOUT`].
    fn retire_agent(&mut self, mut rx: AgentRead) {
        let Some(mut tx) = self.a_tx.take() else {
            return;
        };
        self.seen_written[1] = 0;
        let peer_close = self.agent_peer_close.take();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                match peer_close {
                    Some(received) => {
                        let _ = tx.close_reply(received).await;
                    }
                    None => {
                        if tx.close(1000, "").await.is_ok() {
                            linger(&mut rx).await;
                        }
                    }
                }
            })
            .await;
        });
    }

    /// Moves what each leg owes into its writer and tries to write it once.
    async fn flush(&mut self, m: &mut CallMachine, now: Instant) {
        fill(m, Leg::Caller, &mut self.c_tx, &mut self.scratch, now);
        try_write(m, Leg::Caller, &mut self.c_tx, now).await;
        if let Some(a_tx) = self.a_tx.as_mut() {
            fill(m, Leg::Agent, a_tx, &mut self.scratch, now);
            try_write(m, Leg::Agent, a_tx, now).await;
        }
        self.note_progress(m, now);
        if self.scratch.capacity() > SCRATCH_KEEP_BYTES {
            self.scratch = Vec::with_capacity(512);
        }
    }
}

async fn drive(
    mut c_rx: CallerRead,
    c_tx: CallerWrite,
    carrier: CarrierKind,
    url_token: Option<String>,
    ctx: Arc<CallContext>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut m = CallMachine::new(ctx.settings.clone(), carrier, started);
    m.set_url_token(url_token);
    let registry_id = ctx.calls.register(m.summary(started, started_unix_ms));
    let mut legs = Legs {
        c_tx,
        a_tx: None,
        caller_peer_close: None,
        agent_peer_close: None,
        scratch: Vec::with_capacity(512),
        released: Vec::new(),
        live_id: None,
        replaced: shutdown.child_token(),
        seen_written: [0; 2],
        ctx: ctx.clone(),
        registry_id,
        live_sid: None,
        started_unix_ms,
        connecting: None,
        tool_calls: Vec::new(),
        agent_gen: 0,
        updating: None,
        recorder: None,
        finished: false,
    };
    m.set_transfers_available(transfers_available(&ctx, carrier));
    let mut a_rx: Option<AgentRead> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut timer = pin!(tokio::time::sleep_until(far));
    let mut timer_at: Option<Instant> = None;
    // One future for both ways a call is stopped from outside: `replaced` is a child of
    // `shutdown`, so it fires for either; `shutdown.is_cancelled()` tells which.
    let stop = legs.replaced.clone();
    // Polled on every turn that ends pending: only after the token woke it (see `stop`).
    let mut stopped = pin!(super::stop::PollWhenWoken::new(
        stop.clone().cancelled_owned()
    ));
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
    let summary_interval = ctx.settings.summary_interval;

    loop {
        // 0. An agent connection the machine gave up on is retired before anything new.
        if legs.agent_gen != m.agent_generation() {
            legs.agent_gen = m.agent_generation();
            legs.connecting = None;
            if let Some(rx) = a_rx.take() {
                legs.retire_agent(rx);
            }
            legs.a_tx = None;
            legs.agent_peer_close = None;
        }
        // 1. What the machine asked for.
        on_events(&mut m, &mut legs);
        if m.end_reason().is_some() {
            break;
        }
        // 2. Move what each leg owes into its writer and try to write it once.
        let now = Instant::now();
        legs.flush(&mut m, now).await;
        if m.metrics()
            .fold_due(now.saturating_duration_since(last_fold))
        {
            m.metrics_mut().fold(&ctx.metrics);
            last_fold = now;
            if now.saturating_duration_since(last_summary) >= summary_interval {
                ctx.calls.update(registry_id, summary(&m, &legs, now));
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
        let c_pending = legs.c_tx.pending_bytes() > 0;
        let a_pending = legs.a_tx.as_ref().is_some_and(|w| w.pending_bytes() > 0);
        // 4. Wait for the next thing to happen.
        tokio::select! {
            // Sockets first: most wake-ups are a frame, and then nothing else is polled.
            biased;
            msg = c_rx.next() => {
                on_caller(&mut m, &mut legs, &ctx, msg);
                let mut n = 1;
                while m.end_reason().is_none() && n < BATCH_MESSAGES {
                    match c_rx.next().now_or_never() {
                        Some(msg) => { on_caller(&mut m, &mut legs, &ctx, msg); n += 1; }
                        None => break,
                    }
                }
            }
            msg = async { a_rx.as_mut().expect("guarded by the branch condition").next().await }, if a_rx.is_some() => {
                on_agent(&mut m, &mut legs, msg);
                let mut n = 1;
                while m.end_reason().is_none() && !m.agent_gone() && n < BATCH_MESSAGES {
                    let Some(rx) = a_rx.as_mut() else { break };
                    match rx.next().now_or_never() {
                        Some(msg) => { on_agent(&mut m, &mut legs, msg); n += 1; }
                        None => break,
                    }
                }
                if m.agent_gone() && m.end_reason().is_none() {
                    if let Some(rx) = a_rx.take() {
                        legs.retire_agent(rx);
                    }
                }
            }
            r = std::future::poll_fn(|cx| legs.c_tx.poll_flush(cx)), if c_pending => {
                written(&mut m, Leg::Caller, r, Instant::now());
            }
            r = std::future::poll_fn(|cx| legs.a_tx.as_mut().expect("guarded by the branch condition").poll_flush(cx)), if a_pending => {
                written(&mut m, Leg::Agent, r, Instant::now());
            }
            res = async { (&mut legs.connecting.as_mut().expect("guarded by the branch condition").0).await }, if legs.connecting.is_some() => {
                let (_, since, kind) = legs.connecting.take().expect("guarded by the branch condition");
                let secs = since.elapsed().as_secs_f64();
                match res {
                    Ok((reader, writer)) => {
                        ctx.metrics.agent_connect(kind.index(), secs, true);
                        debug!(connect_ms = (secs * 1e3) as u64, "agent connected");
                        a_rx = Some(reader);
                        legs.a_tx = Some(writer);
                        m.handle_agent_connected();
                    }
                    Err(e) => {
                        ctx.metrics.agent_connect(kind.index(), secs, false);
                        ctx.metrics.agent_error(e.kind());
                        warn!(error = %e, kind = %e.kind(), "agent connect failed");
                        m.handle_agent_connect_failed(e.kind(), Instant::now());
                    }
                }
            }
            (id, answer) = poll_tools(&mut legs.tool_calls), if !legs.tool_calls.is_empty() => {
                m.handle_tool_result(&id, answer, Instant::now());
            }
            r = async { legs.updating.as_mut().expect("guarded by the branch condition").await }, if legs.updating.is_some() => {
                legs.updating = None;
                m.handle_call_update(r, Instant::now());
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

    let end = m.end_reason().cloned().unwrap_or(EndReason::CallerClosed);
    tracing::Span::current().record("agent", m.agent_kind().as_str());
    close_legs(&mut m, &mut legs, &mut c_rx, a_rx.as_mut(), &end).await;
    drop(c_rx);
    drop(a_rx);
    finish(m, &mut legs, &ctx, &end, started);
}

/// Acts on every event the machine has for the driver.
fn on_events(m: &mut CallMachine, legs: &mut Legs) {
    while let Some(ev) = m.poll_event() {
        on_event(m, legs, ev);
    }
}

/// Acts on one machine event.
fn on_event(m: &mut CallMachine, legs: &mut Legs, ev: CallEvent) {
    let ctx = legs.ctx.clone();
    match ev {
        CallEvent::Admit { call_sid, token } => {
            let check = admission_check(&ctx, m.carrier_kind(), &call_sid, token.as_deref());
            let mut replaced_older = false;
            if !matches!(check, Some(Err(_))) && legs.live_id.is_none() && !call_sid.is_empty() {
                let (id, replaced) = ctx.live.register(&call_sid, legs.replaced.clone());
                legs.live_id = Some(id);
                legs.live_sid = Some(call_sid.clone());
                if replaced {
                    ctx.metrics.duplicate_streams.increment(1);
                }
                replaced_older = replaced;
            }
            m.handle_admission(check, replaced_older, Instant::now());
        }
        CallEvent::Started(kind) => {
            tracing::Span::current().record("agent", kind.as_str());
            ctx.metrics
                .call_started(kind.index(), m.carrier_kind().index());
            // `GET /calls/{sid}` finds the call from its start on.
            ctx.calls
                .update(legs.registry_id, summary(m, legs, Instant::now()));
        }
        CallEvent::ConnectAgent(kind) => {
            match ctx.settings.agents.connect_spec(kind, &m.params()) {
                Ok(Some(spec)) => {
                    let (http, tls) = (ctx.http.clone(), ctx.tls.clone());
                    let fut: ConnectFuture =
                        Box::pin(async move { agent_connect::connect(spec, &http, &tls).await });
                    legs.connecting = Some((fut, Instant::now(), kind));
                }
                Ok(None) => {
                    // A local dialect needs no socket; the machine never asks for one.
                    debug!(agent = kind.as_str(), "local agent: nothing to connect");
                }
                Err(e) => {
                    ctx.metrics.agent_connect(kind.index(), 0.0, false);
                    ctx.metrics.agent_error(e.kind());
                    warn!(error = %e, "agent connect failed");
                    m.handle_agent_connect_failed(e.kind(), Instant::now());
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
            legs.tool_calls.push((
                id,
                Box::pin(
                    async move { tool_webhook::call_webhook(&http, &c.settings.tools, req).await },
                ),
            ));
        }
        CallEvent::CancelTool(id) => legs.tool_calls.retain(|(i, _)| *i != id),
        CallEvent::RecordingStarted => {
            if let Some(r) = &ctx.recordings {
                let stem = crate::call::recording::file_stem(m.call_sid(), m.stream_sid());
                legs.recorder = Some(r.open(stem));
            }
        }
        CallEvent::RecordingBlock(b) => {
            if let Some(r) = legs.recorder.as_mut() {
                r.push(b);
            }
        }
        CallEvent::Transfer { dest, summary } => {
            match transfer::redirect(&ctx, m, &dest, summary.as_deref()) {
                Ok(update) => legs.updating = Some(update),
                Err(e) => m.handle_call_update(Err(e), Instant::now()),
            }
        }
    }
}

/// Whether calls from `carrier` can be transferred: its REST API configured, a public host
/// for the markup's URLs, and the relay's signing key.
fn transfers_available(ctx: &CallContext, carrier: CarrierKind) -> bool {
    ctx.carriers.status(carrier).rest && ctx.public_host.is_some() && ctx.tokens.is_some()
}

/// The stream-token check for a carrier that requires tokens (an authenticated carrier,
/// with the relay's token secret): `None` when no check applies. Counted in
/// `relay_stream_tokens_total{result}`.
fn admission_check(
    ctx: &CallContext,
    carrier: CarrierKind,
    call_sid: &str,
    token: Option<&str>,
) -> Option<Result<(), crate::auth::tokens::TokenError>> {
    let tokens = ctx.tokens.as_ref()?;
    if !ctx.carriers.status(carrier).authenticated {
        return None;
    }
    let r = tokens.check(call_sid, token);
    ctx.metrics.stream_token(match &r {
        Ok(()) => crate::obs::labels::TokenResult::Valid,
        Err(e) => e.result(),
    });
    Some(r)
}

/// The call is stopped from outside: a newer stream replaced it (ends now), or the drain
/// deadline passed (the machine may play the drain notice first).
fn on_stop(m: &mut CallMachine, ctx: &CallContext, reason: EndReason) {
    if reason == EndReason::Shutdown {
        if m.handle_drain_deadline(Instant::now()) {
            ctx.metrics.drain_notices.increment(1);
        }
    } else {
        m.end(reason);
    }
}

/// Moves what `leg` owes into its writer, up to [`WRITE_BATCH_BYTES`] unwritten.
fn fill<W: tokio::io::AsyncWrite + Unpin>(
    m: &mut CallMachine,
    leg: Leg,
    w: &mut WsWriter<W>,
    scratch: &mut Vec<u8>,
    now: Instant,
) {
    if !m.wants_transmit(leg) {
        return;
    }
    while w.pending_bytes() < WRITE_BATCH_BYTES && m.poll_transmit(leg, scratch, now) {
        if w.send_text(scratch).is_err() {
            return; // a close was sent: the call is ending
        }
    }
}

/// One write attempt without waiting: finishing tells the machine the leg drained; not
/// finishing starts its stall clock (the select branch keeps writing).
async fn try_write<W: tokio::io::AsyncWrite + Unpin>(
    m: &mut CallMachine,
    leg: Leg,
    w: &mut WsWriter<W>,
    now: Instant,
) {
    if w.pending_bytes() == 0 {
        return;
    }
    let r = std::future::poll_fn(|cx| Poll::Ready(w.poll_flush(cx))).await;
    match r {
        Poll::Ready(r) => written(m, leg, r, now),
        Poll::Pending => m.handle_write_blocked(leg, now),
    }
}

/// A write on `leg` finished (`Ok`) or failed.
fn written(m: &mut CallMachine, leg: Leg, r: std::io::Result<()>, now: Instant) {
    match r {
        Ok(()) => m.handle_write_done(leg, now),
        Err(e) => {
            debug!(error = %e, leg = leg.as_str(), "write failed");
            match leg {
                Leg::Agent => m.handle_agent_error(ErrorKind::WriteFailed, now),
                _ => m.end(EndReason::CallerClosed),
            }
        }
    }
}

/// Polls the in-flight tool webhooks; resolves with the first answer.
async fn poll_tools(calls: &mut Vec<(String, ToolFuture)>) -> (String, WebhookAnswer) {
    std::future::poll_fn(|cx| {
        for i in 0..calls.len() {
            if let Poll::Ready(answer) = calls[i].1.as_mut().poll(cx) {
                let (id, _) = calls.swap_remove(i);
                return Poll::Ready((id, answer));
            }
        }
        Poll::Pending
    })
    .await
}

/// Handles one caller read: transport events here, messages in the machine (in the order
/// the carrier's codec settles, with the machine's events acted on after each).
fn on_caller(
    m: &mut CallMachine,
    legs: &mut Legs,
    ctx: &CallContext,
    msg: Result<Message<'_>, ReadError>,
) {
    let now = Instant::now();
    let text = match msg {
        Ok(Message::Text(t)) => t,
        Ok(Message::Close { code, reason }) => {
            debug!(?code, %reason, "the carrier closed the stream");
            release_held(m, legs, now);
            legs.caller_peer_close = Some(code);
            m.handle_caller_closed();
            return;
        }
        Ok(Message::Ping(p)) => {
            let _ = legs.c_tx.send_pong(p);
            return;
        }
        Ok(Message::Binary(b)) => {
            m.handle_bad_input(
                Leg::Caller,
                ErrorKind::BinaryFrame,
                &format_args!("binary frame of {} bytes; carriers send text", b.len()),
            );
            return;
        }
        Err(ReadError::Eof) => {
            debug!("the carrier's connection closed without a close frame");
            release_held(m, legs, now);
            m.handle_caller_closed();
            return;
        }
        Err(e) => {
            ctx.metrics.caller_error(m.carrier_kind().index(), e.kind());
            warn!(error = %e, kind = %e.kind(), "caller socket error; ending the call");
            m.end(match e.close_code() {
                Some(close_code) => EndReason::CallerError {
                    kind: e.kind(),
                    close_code,
                },
                None => EndReason::CallerClosed,
            });
            return;
        }
    };
    with_scratch(|sc| {
        match m.carrier_mut().decode(text, sc) {
            Ok(Decoded::Event(ev)) => caller_event(m, ev, now),
            Ok(Decoded::Held | Decoded::Late) => m.note_reordering(),
            Err(e) => m.handle_bad_input(Leg::Caller, e.kind(), &e),
        }
        while m.end_reason().is_none() && m.carrier_mut().take_released(&mut legs.released) {
            match m.carrier_mut().decode_released(&mut legs.released, sc) {
                Ok(ev) => caller_event(m, ev, now),
                Err(e) => m.handle_bad_input(Leg::Caller, e.kind(), &e),
            }
            if m.has_events() {
                on_events(m, legs);
            }
        }
    });
    if m.has_events() {
        on_events(m, legs);
    }
}

/// One caller event into the machine; a `start` names the call's span first.
fn caller_event(m: &mut CallMachine, ev: crate::carrier::CallerEvent<'_>, now: Instant) {
    if let crate::carrier::CallerEvent::Start(st) = &ev {
        let span = tracing::Span::current();
        span.record("call_sid", st.call_sid);
        span.record("stream_sid", st.stream_sid);
    }
    m.handle_caller(ev, now);
}

/// The carrier's stream ends: frames its reordering window still holds go in, gaps skipped.
fn release_held(m: &mut CallMachine, legs: &mut Legs, now: Instant) {
    m.carrier_mut().release_all();
    with_scratch(|sc| {
        while m.end_reason().is_none() && m.carrier_mut().take_released(&mut legs.released) {
            match m.carrier_mut().decode_released(&mut legs.released, sc) {
                Ok(ev) => caller_event(m, ev, now),
                Err(e) => m.handle_bad_input(Leg::Caller, e.kind(), &e),
            }
        }
    });
    m.note_reordering();
}

/// Handles one agent read: transport events here, messages in the machine.
fn on_agent(m: &mut CallMachine, legs: &mut Legs, msg: Result<Message<'_>, ReadError>) {
    let now = Instant::now();
    let text = match msg {
        Ok(Message::Text(t)) => t,
        Ok(Message::Close { code, reason }) => {
            let meaning = match (code, m.dialect()) {
                (Some(c), Some(d)) => d.close_code_meaning(c),
                _ => "no code",
            };
            info!(?code, %reason, meaning, "agent closed the session");
            legs.agent_peer_close = Some(code);
            m.handle_agent_closed(code, now);
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
                ErrorKind::BinaryFrame,
                &format_args!(
                    "binary frame of {} bytes; agent dialects are JSON text",
                    b.len()
                ),
            );
            return;
        }
        Err(ReadError::Eof) => {
            info!("agent connection closed without a close frame");
            m.handle_agent_closed(None, now);
            return;
        }
        Err(ReadError::TooLarge { limit }) => {
            m.handle_bad_input(
                Leg::Agent,
                ErrorKind::MessageTooLarge,
                &format_args!("agent message over {limit} bytes"),
            );
            return;
        }
        Err(e) => {
            m.metrics_mut().error(Leg::Agent, e.kind());
            warn!(error = %e, kind = %e.kind(), "agent socket error");
            m.handle_agent_error(e.kind(), now);
            return;
        }
    };
    with_scratch(|sc| {
        let decoded = m.dialect_mut().map(|d| d.decode(text, sc));
        // The event borrows `text`, not the machine, so it can be handed in now.
        match decoded {
            Some(Ok(ev)) => m.handle_agent(ev, now),
            Some(Err(e)) => m.handle_bad_input(Leg::Agent, e.kind(), &e),
            None => {}
        }
    });
    if m.has_events() {
        on_events(m, legs);
    }
}

/// Best effort at the end: write what is queued, then close both legs (RFC 6455 §7: answer
/// a peer's close; otherwise send ours and read until its reply or EOF, so unread bytes do
/// not turn into a TCP reset), all under [`CLOSE_TIMEOUT`].
async fn close_legs(
    m: &mut CallMachine,
    legs: &mut Legs,
    c_rx: &mut CallerRead,
    a_rx: Option<&mut AgentRead>,
    end: &EndReason,
) {
    let now = Instant::now();
    let (code, reason) = end.caller_close();
    let (a_code, a_reason) = end.agent_close();
    let caller_open = !end.caller_gone() || legs.caller_peer_close.is_some();
    let agent_open = !end.agent_gone() || legs.agent_peer_close.is_some();
    if !matches!(end, EndReason::CallerStalled) {
        fill(m, Leg::Caller, &mut legs.c_tx, &mut legs.scratch, now);
    }
    if let (Some(a_tx), false) = (legs.a_tx.as_mut(), matches!(end, EndReason::AgentStalled)) {
        fill(m, Leg::Agent, a_tx, &mut legs.scratch, now);
    }
    let (c_peer, a_peer) = (legs.caller_peer_close, legs.agent_peer_close);
    let c_tx = &mut legs.c_tx;
    let close_caller = async {
        if !caller_open {
            return;
        }
        if let Some(received) = c_peer {
            // Answer the caller's close; as the server we then drop TCP (RFC 6455 §7.1.1).
            let _ = c_tx.close_reply(received).await;
        } else if c_tx.close(code, reason).await.is_ok() {
            linger(c_rx).await;
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
        futures_util::future::join(close_caller, close_agent),
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
) {
    legs.finished = true;
    if let Some(id) = legs.live_id {
        ctx.live.remove(m.call_sid(), id);
    }
    let metrics = &ctx.metrics;
    m.metrics_mut().fold(metrics);
    let duration = started.elapsed();
    metrics.call_duration.record(duration.as_secs_f64());
    let summary = summary(&m, legs, Instant::now());
    finish_recording(&mut m, legs);
    let f = m.figures();
    let l = &summary.latency;
    metrics.call_quality(
        m.agent_kind().index(),
        m.carrier_kind().index(),
        f.turn.quantile(0.95),
        [
            l.forward_caller_to_agent.p99_ms.map(|v| v / 1e3),
            l.forward_agent_to_caller.p99_ms.map(|v| v / 1e3),
        ],
    );
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
                end_reason = %end.outcome(),
                detail = ?end,
                duration_ms = duration.as_millis() as u64,
                frames_caller_to_agent = summary.frames_caller_to_agent,
                frames_agent_to_caller = summary.frames_agent_to_caller,
                dropped_caller_to_agent = summary.dropped_caller_to_agent,
                dropped_agent_to_caller = summary.dropped_agent_to_caller,
                inbound_frames_missing = summary.inbound_frames_missing,
                played_ms = summary.played_ms,
                flushed_ms = summary.flushed_ms,
                barge_ins = summary.barge_ins,
                dtmf_digits = summary.dtmf_digits,
                tool_calls = summary.tool_calls,
                recoveries = summary.recoveries.len(),
                action = summary.action.as_ref().map_or("", |a| a.action),
                bad_inputs = summary.bad_inputs,
                forward_caller_to_agent_ms = %q(&l.forward_caller_to_agent),
                forward_agent_to_caller_ms = %q(&l.forward_agent_to_caller),
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
    if let Some(q) = &ctx.post_call {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        q.send(
            crate::obs::labels::PostCallType::PostCallTranscription,
            super::post_call::transcription(&summary, m.history(), m.stream_parameters(), now_unix),
        );
    }
    ctx.calls.finish(legs.registry_id, summary);
    // Last, so that whoever sees this call in `relay_calls_total` also finds its other
    // counters folded and its summary at `/calls/{sid}`.
    metrics.call_ended(end.outcome());
}

/// The call's figures for `/calls`, with what only the driver knows (the recording's file).
fn summary(m: &CallMachine, legs: &Legs, now: Instant) -> crate::obs::calls::CallSummary {
    let mut s = m.summary(now, legs.started_unix_ms);
    if let (Some(r), Some(rec)) = (s.recording.as_mut(), legs.recorder.as_ref()) {
        r.location = Some(rec.location().to_owned());
        r.degraded |= rec.degraded();
    }
    s
}

/// Hands the recording's last blocks and its finish to the writer (never waits).
fn finish_recording(m: &mut CallMachine, legs: &mut Legs) {
    let Some(mut rec) = legs.recorder.take() else {
        return;
    };
    // Blocks the machine queued after the loop's last look at its events.
    while let Some(ev) = m.poll_event() {
        if let CallEvent::RecordingBlock(b) = ev {
            rec.push(b);
        }
    }
    let (last, pauses, degraded) = m.finish_recording(Instant::now()).unwrap_or_default();
    rec.finish(
        last,
        crate::call::recording::writer::FinishNote {
            call_sid: m.call_sid().to_owned(),
            stream_sid: m.stream_sid().to_owned(),
            agent: m.agent_kind().as_str(),
            pauses,
            degraded,
        },
    );
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::call::settings::CallSettings;

    /// The call task's future and the machine are part of every call's memory (budget: 24 KiB
    /// per call at the margin, sockets included); print them so a change shows.
    #[tokio::test]
    async fn call_future_size() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (r, w) = crate::wire::net::split_accepted(c).unwrap();
        let reader = WsReader::new(
            Prefixed::new(bytes::Bytes::new(), r),
            crate::wire::ws::Role::Server,
            1024,
        );
        let writer = WsWriter::new(w, crate::wire::ws::Role::Server);
        let tls = crate::wire::net::tls_client_config().unwrap();
        let carriers =
            crate::carrier::CarrierSettings::from_args(&Default::default(), &Default::default())
                .unwrap();
        let ctx = Arc::new(CallContext {
            settings: Arc::new(CallSettings::defaults()),
            carriers: Arc::new(carriers),
            metrics: crate::obs::metrics::Metrics::new(crate::obs::metrics::MetricLabels {
                agents: AgentKind::NAMES.to_vec(),
                carriers: CarrierKind::NAMES.to_vec(),
            }),
            http: crate::wire::http_client::HttpClient::new(&tls),
            tls,
            tokens: None,
            live: Arc::new(crate::auth::tokens::LiveStreams::default()),
            calls: Arc::new(crate::obs::calls::CallRegistry::default()),
            public_host: None,
            post_call: None,
            recordings: None,
        });
        let fut = run(
            reader,
            writer,
            CarrierKind::Twilio,
            None,
            ctx.clone(),
            CancellationToken::new(),
        );
        eprintln!(
            "call future: {} bytes; CallMachine: {} bytes; CallMetrics: {} bytes; summary: {} bytes",
            std::mem::size_of_val(&fut),
            std::mem::size_of::<CallMachine>(),
            std::mem::size_of::<crate::obs::call_metrics::CallMetrics>(),
            std::mem::size_of::<crate::obs::calls::CallSummary>(),
        );
        assert!(std::mem::size_of_val(&fut) < 16 * 1024);
    }
}
