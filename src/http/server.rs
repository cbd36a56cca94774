//! The HTTP server: accept loop, hyper http1 connections with upgrades, limits before the
//! upgrade, routing, call admission, and drain on shutdown.
//!
//! Routes: every carrier's routes (`carrier::Routes`: its media WebSocket, upgraded by hand
//! with fastwebsockets; its incoming-call webhook; its outbound markup fetch; its status
//! callbacks), `POST /outbound-call`, `GET /calls[/{call_sid}]` (see `admin`),
//! `GET /metrics`, `GET /healthz`, `GET /readyz`. A carrier that is not served answers 404 on
//! its routes. Calls are tracked by a `TaskTracker` of our own because upgraded sockets leave
//! hyper's view. Owns admission (`--max-calls`, 503) and the pre-upgrade limits, not call
//! behaviour (see `call`).

use super::callbacks::{self, CallbackKind, CallbackMetrics};
use super::outbound::Outbound;
use super::settings::{ControlSettings, HttpSettings, RelaySettings, RuntimeLayout};
use super::{text, Resp};
use crate::agent::AgentKind;
use crate::auth::tokens::{LiveStreams, StreamTokens};

use crate::call::{CallContext, DRAIN_NOTICE_GRACE};
use crate::carrier::CarrierKind;
use crate::obs::labels::HttpRejectReason;
use crate::obs::metrics::{MetricLabels, Metrics};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long closing calls may take after the drain timeout cancelled them.
pub const HARD_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The name of the per-core layout's blocking-pool threads (file and DNS work moved off a
/// worker); its workers are `main` and `relay-worker-1` .. `relay-worker-{N-1}`.
pub const BLOCKING_THREAD_NAME: &str = "relay-blocking";

/// Least time the drain gives recordings and post-call records after the calls closed.
pub const RECORDS_FLUSH_MIN: Duration = Duration::from_secs(2);

/// Shared server state.
pub struct State {
    /// What every call shares.
    pub ctx: Arc<CallContext>,
    /// The server's settings.
    pub http: HttpSettings,
    /// The call-control routes' settings.
    pub control: ControlSettings,
    /// Calls in progress.
    pub active: AtomicUsize,
    /// Set once shutdown was asked for.
    pub draining: AtomicBool,
    /// Every call task.
    pub tracker: TaskTracker,
    /// Cancelled when the drain timeout passes: calls close with 1001.
    pub calls_cancel: CancellationToken,
    /// Stream tokens and relay-signed URLs (when a carrier is authenticated).
    pub tokens: Option<Arc<StreamTokens>>,
    /// The outbound-call API.
    pub outbound: Outbound,
    /// The status callbacks' counters.
    pub callback_metrics: CallbackMetrics,
    /// HTTP connections accepted and not yet upgraded or closed.
    pending: AtomicUsize,
}

/// A bound relay, ready to [`Relay::run`].
pub struct Relay {
    /// The listener served by the runtime `run` is called on.
    listener: TcpListener,
    /// Per-core layout: the other workers, each a single-thread runtime with its own
    /// `SO_REUSEPORT` listener registered with it (none in the multi-thread layout).
    workers: Vec<Worker>,
    state: Arc<State>,
}

/// One more worker of the per-core layout, built (and its listener registered) by
/// [`Relay::bind`] and started on a thread of its own by [`Relay::run`]. Dropped without
/// being served (a later bind step failed, the thread could not start, the relay was never
/// run), it closes its listener and shuts its runtime down in the background: dropping a
/// runtime the ordinary way inside an async context panics.
struct Worker {
    runtime: Option<tokio::runtime::Runtime>,
    listener: Option<TcpListener>,
    /// `--runtime uring`: the bound listener only. A tokio-uring runtime cannot move
    /// between threads, so the worker's thread builds its own and registers this there.
    std_listener: Option<std::net::TcpListener>,
}

/// The runtimes whose live tasks `relay_tasks_alive` sums (uring workers add theirs when
/// their thread starts).
type RuntimeHandles = Arc<std::sync::Mutex<Vec<tokio::runtime::Handle>>>;

impl Worker {
    /// Serves the listener on this (the worker's own) thread until `stop`; the runtime ends
    /// with the call, and with it what is left on it (idle HTTP connections, pooled client
    /// connections).
    fn serve(mut self, state: Arc<State>, stop: CancellationToken, handles: RuntimeHandles) {
        if let (Some(runtime), Some(listener)) = (self.runtime.take(), self.listener.take()) {
            runtime.block_on(accept_loop(listener, state, stop));
        } else if let Some(listener) = self.std_listener.take() {
            serve_uring(listener, state, stop, handles);
        }
    }
}

/// A uring worker's thread: its own tokio-uring runtime, its listener registered there.
#[cfg(feature = "uring")]
fn serve_uring(
    listener: std::net::TcpListener,
    state: Arc<State>,
    stop: CancellationToken,
    handles: RuntimeHandles,
) {
    let served = crate::wire::uring::block_on(async move {
        if let Ok(mut h) = handles.lock() {
            h.push(tokio::runtime::Handle::current());
        }
        match TcpListener::from_std(listener) {
            Ok(l) => accept_loop(l, state, stop).await,
            Err(e) => warn!(error = %e, "a uring worker cannot register its listener"),
        }
    });
    if let Err(e) = served {
        warn!(error = %e, "a uring worker cannot start io_uring; its listener is closed");
    }
}

#[cfg(not(feature = "uring"))]
fn serve_uring(_: std::net::TcpListener, _: Arc<State>, _: CancellationToken, _: RuntimeHandles) {
    // Unreachable: the configuration refuses `--runtime uring` without the feature, so no
    // such worker is built.
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.listener.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Relay {
    /// Builds metrics and TLS from `settings` and binds the listener: one, or in the per-core
    /// layout one per worker thread, all `SO_REUSEPORT` on the same address (the first binds
    /// the address as given, so port 0 picks one port for all). The first listener is served
    /// by the runtime `run` is called on: in the per-core layout `main` gives it a
    /// single-thread runtime, so that thread is the first worker.
    ///
    /// # Errors
    /// The TLS setup, bind or runtime-building error.
    pub async fn bind(settings: RelaySettings) -> anyhow::Result<Relay> {
        let RelaySettings {
            http: http_settings,
            control,
            call,
            carriers,
        } = settings;
        let tls = crate::wire::net::tls_client_config()
            .map_err(|e| anyhow::anyhow!("TLS setup failed: {e}"))?;
        let http = crate::wire::http_client::HttpClient::new(&tls);
        let metrics = Metrics::new(MetricLabels {
            agents: AgentKind::NAMES.to_vec(),
            carriers: CarrierKind::NAMES.to_vec(),
        });
        metrics.calls_max.set(http_settings.max_calls as f64);
        let tokens = control.tokens.clone();
        for c in CarrierKind::ALL {
            let s = carriers.status(*c);
            if s.served && !s.authenticated {
                warn!(
                    carrier = c.as_str(),
                    "carrier signatures are NOT checked; every stream admitted is counted in relay_streams_unauthenticated_total"
                );
            }
        }
        let outbound = Outbound::new(
            control.api_token.clone(),
            control.public_host.clone(),
            tokens.clone(),
            control.outbound_calls_per_minute,
            control.default_carrier,
            &metrics,
        );
        let callback_metrics = CallbackMetrics::new(&metrics);
        let post_call = call.post_call.clone().map(|p| {
            crate::call::post_call::PostCallQueue::start(p, http.clone(), metrics.clone())
        });
        let recordings = match &call.recording {
            None => None,
            Some(r) => {
                let q = post_call.clone();
                let on_finished: Option<crate::call::recording::writer::OnFinished> =
                    q.map(|q| -> crate::call::recording::writer::OnFinished {
                        Arc::new(move |note, rec| {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs());
                            q.send(
                                crate::obs::labels::PostCallType::PostCallAudio,
                                crate::call::post_call::audio(note, rec, now),
                            );
                        })
                    });
                let uploader = match &r.upload {
                    None => None,
                    Some(t) => Some(Arc::new(
                        crate::call::recording::upload::Uploader::new(t.clone(), metrics.clone())
                            .map_err(std::io::Error::other)?,
                    )),
                };
                Some(Arc::new(crate::call::recording::Recordings::start(
                    r.dir.clone(),
                    r.queue_blocks,
                    metrics.clone(),
                    on_finished,
                    uploader,
                )?))
            }
        };
        let (listener, workers) = match http_settings.runtime {
            RuntimeLayout::MultiThread => (
                TcpListener::from_std(listen(
                    http_settings.listen,
                    http_settings.listen_backlog,
                    false,
                )?)?,
                Vec::new(),
            ),
            RuntimeLayout::PerCore => {
                let first = listen(http_settings.listen, http_settings.listen_backlog, true)?;
                let addr = first.local_addr()?;
                let mut workers = Vec::new();
                for _ in 1..http_settings.worker_threads.max(1) {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .thread_name(BLOCKING_THREAD_NAME)
                        .enable_all()
                        .build()?;
                    let listener = {
                        // Registers the listener with this worker's reactor.
                        let _in_worker = runtime.enter();
                        TcpListener::from_std(listen(addr, http_settings.listen_backlog, true)?)?
                    };
                    workers.push(Worker {
                        runtime: Some(runtime),
                        listener: Some(listener),
                        std_listener: None,
                    });
                }
                (TcpListener::from_std(first)?, workers)
            }
            RuntimeLayout::Uring => {
                let first = listen(http_settings.listen, http_settings.listen_backlog, true)?;
                let addr = first.local_addr()?;
                let mut workers = Vec::new();
                for _ in 1..http_settings.worker_threads.max(1) {
                    workers.push(Worker {
                        runtime: None,
                        listener: None,
                        std_listener: Some(listen(addr, http_settings.listen_backlog, true)?),
                    });
                }
                (TcpListener::from_std(first)?, workers)
            }
        };
        let state = Arc::new(State {
            ctx: Arc::new(CallContext {
                settings: Arc::new(call),
                carriers: Arc::new(carriers),
                metrics,
                tls,
                http,
                tokens: tokens.clone(),
                live: Arc::new(LiveStreams::default()),
                calls: Arc::new(crate::obs::calls::CallRegistry::default()),
                public_host: control.public_host.clone(),
                post_call,
                recordings,
            }),
            http: http_settings,
            control,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            calls_cancel: CancellationToken::new(),
            tokens,
            outbound,
            callback_metrics,
            pending: AtomicUsize::new(0),
        });
        Ok(Relay {
            listener,
            workers,
            state,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` answers 503 and new calls are
    /// refused with 503 while existing calls run on for up to `--drain-timeout-secs`; calls
    /// still running then are closed with 1001. Returns when every call has ended (or the
    /// hard-stop timeout passed).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Relay {
            listener,
            workers,
            state,
        } = self;
        let mut handles = vec![tokio::runtime::Handle::current()];
        handles.extend(
            workers
                .iter()
                .filter_map(|w| w.runtime.as_ref().map(|r| r.handle().clone())),
        );
        let runtimes: RuntimeHandles = Arc::new(std::sync::Mutex::new(handles));
        let worker_handles = runtimes.clone();
        let upkeep_state = state.clone();
        let upkeep = tokio::spawn(async move {
            // Histogram observations wait in the exporter until upkeep: keep that short.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                upkeep_state.ctx.metrics.run_upkeep();
                let alive: usize = runtimes.lock().map_or(0, |hs| {
                    hs.iter().map(|h| h.metrics().num_alive_tasks()).sum()
                });
                upkeep_state.ctx.metrics.tasks_alive.set(alive as f64);
                upkeep_state.outbound.upkeep();
            }
        });
        info!(
            agent = state.ctx.settings.default_agent.as_str(),
            addr = ?listener.local_addr().ok(),
            runtime = state.http.runtime.as_str(),
            worker_threads = 1 + workers.len(),
            "media-relay listening"
        );
        let stop_accepting = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(listener, state.clone(), stop_accepting.clone()));
        let mut threads = Vec::new();
        for (i, w) in workers.into_iter().enumerate() {
            let (state, stop) = (state.clone(), stop_accepting.clone());
            let handles = worker_handles.clone();
            // The worker moves into the thread: if the thread cannot start, it is dropped
            // here, its listener closed, and the kernel stops handing that socket
            // connections.
            let spawned = std::thread::Builder::new()
                .name(format!("relay-worker-{}", i + 1))
                .spawn(move || w.serve(state, stop, handles));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => warn!(error = %e, worker = i + 1, "cannot start a worker thread"),
            }
        }
        shutdown.await;

        state.draining.store(true, Ordering::SeqCst);
        state.ctx.metrics.draining.set(1.0);
        let drain = state.http.drain_timeout;
        let drain_started = std::time::Instant::now();
        info!(
            active_calls = state.active.load(Ordering::SeqCst),
            drain_timeout_secs = drain.as_secs(),
            "shutdown requested: draining calls"
        );
        state.tracker.close();
        if tokio::time::timeout(drain, state.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                active_calls = state.active.load(Ordering::SeqCst),
                "drain timeout passed: closing remaining calls with 1001"
            );
            state.calls_cancel.cancel();
            // Calls that play the drain notice need its length (plus the carrier's
            // confirmation).
            let notice = state
                .ctx
                .settings
                .drain_notice
                .as_ref()
                .map_or(Duration::ZERO, |n| {
                    Duration::from_millis(crate::audio::bytes_to_ms(n.len() as u64))
                        + DRAIN_NOTICE_GRACE
                });
            if tokio::time::timeout(HARD_STOP_TIMEOUT + notice, state.tracker.wait())
                .await
                .is_err()
            {
                warn!("some calls did not close in time");
            }
        }
        // Recordings finish on disk, then post-call records (a finished recording queues
        // its post_call_audio) go out, within what is left of the drain deadline (at least
        // RECORDS_FLUSH_MIN, so records of calls closed at the deadline get a chance).
        let left = || {
            drain
                .saturating_sub(drain_started.elapsed())
                .max(RECORDS_FLUSH_MIN)
        };
        if let Some(r) = state.ctx.recordings.clone() {
            let timeout = left();
            let done = tokio::task::spawn_blocking(move || r.wait_idle(timeout))
                .await
                .unwrap_or(false);
            if !done {
                warn!("drain: some recordings were not finished in time");
            }
        }
        if let Some(q) = &state.ctx.post_call {
            let pending = q.wait_idle(left()).await;
            if pending > 0 {
                warn!(
                    pending,
                    "drain: post-call records still undelivered at the deadline"
                );
            }
        }
        stop_accepting.cancel();
        let _ = accept.await;
        // The workers' accept loops end with the same token; their runtimes end with their
        // threads.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        upkeep.abort();
        info!("media-relay stopped");
    }
}

/// Binds `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT` with `reuse_port`: every socket of
/// the per-core layout binds the same address, and the kernel spreads connections over
/// them) and listens with `backlog` (capped by the kernel at `net.core.somaxconn`), the one
/// thing `TcpListener::bind` does not let us choose. Returns a non-blocking std listener, to
/// be registered with the runtime that will serve it.
///
/// # Errors
/// The socket, bind or listen error.
fn listen(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let m = &state.ctx.metrics;
    let timer = hyper_util::rt::TokioTimer::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE under load: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Cap connections that have not upgraded: a flood of idle or slow clients cannot
        // exhaust descriptors or memory, and calls in progress are not counted.
        let limits = &state.http.limits;
        if state.pending.fetch_add(1, Ordering::SeqCst) >= limits.max_pending_connections {
            state.pending.fetch_sub(1, Ordering::SeqCst);
            m.http_rejected(HttpRejectReason::Limit);
            debug!(%peer, "refused a connection: too many pending HTTP connections");
            drop(stream);
            continue;
        }
        m.gauge_pending(state.pending.load(Ordering::SeqCst));
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let timer = timer.clone();
        tokio::spawn(async move {
            let _pending = Pending(state.clone());
            let svc_state = state.clone();
            let svc = service_fn(move |req| route(req, svc_state.clone(), peer));
            let mut builder = http1::Builder::new();
            builder
                .timer(timer)
                .header_read_timeout(state.http.limits.header_read_timeout)
                .max_buf_size(state.http.limits.max_header_bytes.max(8192));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                if e.is_timeout() {
                    state
                        .ctx
                        .metrics
                        .http_rejected(HttpRejectReason::HeaderTimeout);
                }
                debug!(error = %e, %peer, "HTTP connection ended with an error");
            }
        });
    }
}

/// Counts a connection as pending (not upgraded) until it upgrades or closes: hyper's
/// connection future ends at either.
struct Pending(Arc<State>);

impl Drop for Pending {
    fn drop(&mut self) {
        let n = self.0.pending.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.ctx.metrics.gauge_pending(n);
    }
}

/// Which carrier route a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CarrierRoute {
    Media,
    Inbound,
    OutboundMarkup,
    CallStatus,
    StreamStatus,
    DialResult,
    Whisper,
}

fn carrier_route(path: &str) -> Option<(CarrierKind, CarrierRoute)> {
    CarrierKind::ALL.iter().find_map(|&c| {
        let r = c.routes();
        let route = [
            (r.media, CarrierRoute::Media),
            (r.inbound, CarrierRoute::Inbound),
            (r.outbound_markup, CarrierRoute::OutboundMarkup),
            (r.call_status, CarrierRoute::CallStatus),
            (r.stream_status, CarrierRoute::StreamStatus),
            (r.dial_result, CarrierRoute::DialResult),
            (r.whisper, CarrierRoute::Whisper),
        ]
        .into_iter()
        .find(|(p, _)| *p == path)?
        .1;
        Some((c, route))
    })
}

async fn route(
    req: Request<Incoming>,
    state: Arc<State>,
    peer: SocketAddr,
) -> Result<Resp, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if let Some((carrier, r)) = carrier_route(&path) {
        if !state.ctx.carriers.status(carrier).served {
            return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
        }
        let method_ok = match r {
            CarrierRoute::Media => req.method() == Method::GET,
            _ => req.method() == Method::POST,
        };
        if !method_ok {
            return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
        }
        return Ok(match r {
            CarrierRoute::Media => super::media::upgrade(req, carrier, &state, peer),
            CarrierRoute::Inbound => super::inbound::answer(req, carrier, &state).await,
            CarrierRoute::OutboundMarkup => state.outbound.markup(req, carrier, &state).await,
            CarrierRoute::CallStatus => {
                callbacks::status(req, carrier, CallbackKind::Call, &state).await
            }
            CarrierRoute::StreamStatus => {
                callbacks::status(req, carrier, CallbackKind::Stream, &state).await
            }
            CarrierRoute::DialResult => super::transfer::dial_result(req, carrier, &state).await,
            CarrierRoute::Whisper => super::transfer::whisper(req, carrier, &state).await,
        });
    }
    let resp = match (req.method(), path.as_str()) {
        (&Method::POST, "/outbound-call") => state.outbound.outbound_call(req, peer, &state).await,
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(state.ctx.metrics.render())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, p) if p == "/calls" || p.starts_with("/calls/") => {
            super::admin::calls(&req, state.http.admin_token.as_ref(), &state.ctx.calls)
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.draining.load(Ordering::SeqCst) {
                // The count lets a deploy wait for the calls this instance still holds.
                let mut r = Response::new(Full::new(Bytes::from(format!(
                    "draining {} calls\n",
                    state.active.load(Ordering::SeqCst)
                ))));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Decrements the active-call count and gauge when a call task ends.
pub struct Admission(pub Arc<State>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.ctx.metrics.calls_active.decrement(1.0);
    }
}
