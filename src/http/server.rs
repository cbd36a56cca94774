//! The HTTP server: accept loop, hyper http1 connections with upgrades, limits before the
//! upgrade, routing, call admission, and drain on shutdown.
//!
//! Routes: `GET /media` (Twilio Media Streams WebSocket, upgraded by hand with
//! fastwebsockets), `POST /twiml` (incoming-call webhook → TwiML), `POST /outbound-call`,
//! `POST /call-status`, `POST /stream-status` (see `control`), `GET /calls[/{call_sid}]`
//! (see `admin`), `GET /metrics`, `GET /healthz`, `GET /readyz`. Calls are tracked by a
//! `TaskTracker` of our own because upgraded sockets leave hyper's view. Owns admission
//! (`--max-calls`, 503) and the pre-upgrade limits ([`HttpLimits`]), not call behaviour
//! (see `call`).

use super::{text, BearerToken, Resp};
use crate::agent::AgentKind;
use crate::auth::signature::SignatureValidator;
use crate::auth::tokens::{LiveStreams, StreamTokens};
use crate::call::{self, CallContext};
use crate::config::{ConfigError, ServeArgs};
use crate::http::control::Control;
use crate::obs::metrics::{Metrics, UpgradeResult};
use crate::wire::ws::{Prefixed, Role, WsReader, WsWriter};
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
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Largest webhook body accepted, in bytes.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 64 * 1024;

/// Limits that protect the server before a connection upgrades (or while it serves plain
/// HTTP). Defaults are far above anything a Twilio webhook needs.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time allowed for a request's head (hyper's header read timeout). Default 10 s.
    pub header_read_timeout: Duration,
    /// Time allowed to read a webhook body. Default 10 s.
    pub body_read_timeout: Duration,
    /// Most concurrent connections that have not upgraded; more are closed at once. Default
    /// 1024.
    pub max_pending_connections: usize,
    /// Largest request head in bytes (hyper's read buffer limit, at least 8 KiB). Default
    /// 16 KiB.
    pub max_header_bytes: usize,
}

/// How long closing calls may take after the drain timeout cancelled them.
pub const HARD_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Shared server state.
struct State {
    ctx: Arc<CallContext>,
    args: ServeArgs,
    active: AtomicUsize,
    draining: AtomicBool,
    tracker: TaskTracker,
    /// Cancelled when the drain timeout passes: calls close with 1001.
    calls_cancel: CancellationToken,
    /// Twilio signature validation, when `TWILIO_AUTH_TOKEN` is configured.
    signatures: Option<SignatureValidator>,
    /// Outbound calls and status callbacks.
    control: Control,
    limits: HttpLimits,
    /// HTTP connections accepted and not yet upgraded or closed.
    pending: AtomicUsize,
    admin_token: Option<BearerToken>,
}

/// A bound relay, ready to [`Relay::run`].
pub struct Relay {
    listener: TcpListener,
    state: Arc<State>,
}

impl Relay {
    /// Validates `args`, builds metrics and TLS, and binds the listener.
    ///
    /// # Errors
    /// [`ConfigError`] for bad configuration (before binding), or the bind error.
    pub async fn bind(args: ServeArgs) -> anyhow::Result<Relay> {
        let settings = args.call_settings()?;
        let tls = crate::wire::net::tls_client_config()
            .map_err(|e| ConfigError(format!("TLS setup failed: {e}")))?;
        let http = crate::wire::http_client::HttpClient::new(&tls);
        let metrics = Metrics::new();
        metrics.calls_max.set(args.max_calls as f64);
        // Authenticated mode: signatures checked, streams bound to calls by relay_token.
        let (signatures, tokens) = match (&args.twilio_auth_token, &args.public_host) {
            (Some(token), Some(host)) if !token.expose().is_empty() => {
                let tokens = match &args.relay_token_secret {
                    Some(secret) => StreamTokens::new(secret.expose().as_bytes()),
                    None => StreamTokens::from_auth_token(token.expose()),
                };
                (
                    Some(SignatureValidator::new(token.expose(), host)),
                    Some(Arc::new(tokens)),
                )
            }
            _ => (None, None),
        };
        if signatures.is_none() {
            warn!("TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked; every stream admitted is counted in relay_streams_unauthenticated_total");
        }
        Control::register_metrics(&metrics);
        let control = Control::new(
            &args,
            http.clone(),
            metrics.clone(),
            signatures.clone(),
            tokens.clone(),
        );
        let listener = listen(args.listen, args.listen_backlog)?;
        let state = Arc::new(State {
            ctx: Arc::new(CallContext {
                settings: Arc::new(settings),
                metrics,
                tls,
                http,
                tokens,
                live: Arc::new(LiveStreams::default()),
                calls: Arc::new(crate::obs::calls::CallRegistry::default()),
            }),
            limits: args.http_limits(),
            pending: AtomicUsize::new(0),
            admin_token: args
                .admin_token
                .as_ref()
                .filter(|t| !t.expose().is_empty())
                .map(|t| BearerToken::new(t.expose())),
            args,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            calls_cancel: CancellationToken::new(),
            signatures,
            control,
        });
        Ok(Relay { listener, state })
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
        let Relay { listener, state } = self;
        let upkeep_state = state.clone();
        let upkeep = tokio::spawn(async move {
            // Histogram observations wait in the exporter until upkeep: keep that short.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                upkeep_state.ctx.metrics.run_upkeep();
                upkeep_state.ctx.metrics.tasks_alive.set(
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks() as f64,
                );
                upkeep_state.control.upkeep();
            }
        });
        info!(
            agent = state.ctx.settings.default_agent.as_str(),
            addr = ?listener.local_addr().ok(),
            "media-relay listening"
        );
        let stop_accepting = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(listener, state.clone(), stop_accepting.clone()));
        shutdown.await;

        state.draining.store(true, Ordering::SeqCst);
        state.ctx.metrics.draining.set(1.0);
        let drain = Duration::from_secs(state.args.drain_timeout_secs);
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
            // Calls that play the drain notice need its length (plus Twilio's confirmation).
            let notice = state
                .ctx
                .settings
                .drain_notice
                .as_ref()
                .map_or(Duration::ZERO, |n| {
                    Duration::from_millis(crate::audio::bytes_to_ms(n.len() as u64))
                        + crate::call::DRAIN_NOTICE_GRACE
                });
            if tokio::time::timeout(HARD_STOP_TIMEOUT + notice, state.tracker.wait())
                .await
                .is_err()
            {
                warn!("some calls did not close in time");
            }
        }
        stop_accepting.cancel();
        let _ = accept.await;
        upkeep.abort();
        info!("media-relay stopped");
    }
}

/// Binds `addr` with `SO_REUSEADDR` and listens with `backlog` (capped by the kernel at
/// `net.core.somaxconn`), the one thing `TcpListener::bind` does not let us choose.
///
/// # Errors
/// The socket, bind or listen error.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
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
        if state.pending.fetch_add(1, Ordering::SeqCst) >= state.limits.max_pending_connections {
            state.pending.fetch_sub(1, Ordering::SeqCst);
            m.count(
                "relay_http_connections_rejected_total",
                &[("reason", "limit")],
                1,
            );
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
                .header_read_timeout(state.limits.header_read_timeout)
                .max_buf_size(state.limits.max_header_bytes.max(8192));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                if e.is_timeout() {
                    state.ctx.metrics.count(
                        "relay_http_connections_rejected_total",
                        &[("reason", "header_timeout")],
                        1,
                    );
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

async fn route(
    req: Request<Incoming>,
    state: Arc<State>,
    peer: SocketAddr,
) -> Result<Resp, std::convert::Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/media") => media(req, &state, peer),
        (&Method::POST, "/twiml") => twiml(req, &state).await,
        (&Method::POST, "/outbound-call") => state.control.outbound_call(req, peer).await,
        (&Method::POST, "/twiml/outbound") => state.control.outbound_twiml(req).await,
        (&Method::POST, "/call-status") => state.control.call_status(req).await,
        (&Method::POST, "/stream-status") => state.control.stream_status(req).await,
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(state.ctx.metrics.render())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/calls") => {
            super::admin::calls(&req, state.admin_token.as_ref(), &state.ctx.calls)
        }
        (&Method::GET, p) if p.starts_with("/calls/") => {
            super::admin::calls(&req, state.admin_token.as_ref(), &state.ctx.calls)
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
struct Admission(Arc<State>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.ctx.metrics.calls_active.decrement(1.0);
    }
}

fn media(mut req: Request<Incoming>, state: &Arc<State>, peer: SocketAddr) -> Resp {
    let m = &state.ctx.metrics;
    if state.draining.load(Ordering::SeqCst) {
        m.upgrade(UpgradeResult::RejectedDraining);
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        m.upgrade(UpgradeResult::BadRequest);
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    }
    if let Some(v) = &state.signatures {
        let sig = header_str(&req, "x-twilio-signature");
        if let Err(e) = v.validate_upgrade(req.uri().path(), sig) {
            m.upgrade(UpgradeResult::RejectedSignature);
            m.error(crate::obs::metrics::Leg::Twilio, e.kind());
            warn!(%peer, kind = e.kind(), "refused a media stream: bad Twilio signature");
            return text(StatusCode::FORBIDDEN, "invalid Twilio signature\n");
        }
    }
    let max = state.args.max_calls;
    if state
        .active
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        m.upgrade(UpgradeResult::RejectedCapacity);
        warn!(max_calls = max, "refused a call: at capacity");
        return text(StatusCode::SERVICE_UNAVAILABLE, "at capacity\n");
    }
    m.calls_active.increment(1.0);
    let admission = Admission(state.clone());
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => {
            m.upgrade(UpgradeResult::BadRequest);
            debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad WebSocket upgrade\n");
        }
    };
    m.upgrade(UpgradeResult::Accepted);
    if state.signatures.is_none() {
        m.streams_unauthenticated.increment(1);
    }
    let ctx = state.ctx.clone();
    let cancel = state.calls_cancel.child_token();
    state.tracker.spawn(async move {
        let _admission = admission;
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => {
                debug!(error = %e, %peer, "upgrade did not complete");
                return;
            }
        };
        let Ok(parts) = ws
            .into_inner()
            .into_inner()
            .downcast::<TokioIo<TcpStream>>()
        else {
            ctx.metrics
                .error(crate::obs::metrics::Leg::Internal, "upgrade_downcast");
            warn!("upgraded connection is not a TCP stream");
            return;
        };
        let (r, w) = parts.io.into_inner().into_split();
        let reader = WsReader::new(
            Prefixed::new(parts.read_buf, r),
            Role::Server,
            call::MAX_TWILIO_MESSAGE_BYTES,
        );
        call::run(reader, WsWriter::new(w, Role::Server), ctx, cancel).await;
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn header_str<'a, B>(req: &'a Request<B>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn twiml(req: Request<Incoming>, state: &Arc<State>) -> Resp {
    let signature = header_str(&req, "x-twilio-signature").to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/twiml".into());
    let host = state.args.public_host.clone().or_else(|| {
        req.headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let agent = match agent_from_query(req.uri().query(), &state.ctx.settings) {
        Ok(a) => a,
        Err(msg) => return super::error_json(StatusCode::BAD_REQUEST, "invalid_agent", &msg),
    };
    let body = match super::read_body(
        req.into_body(),
        MAX_WEBHOOK_BODY_BYTES,
        state.limits.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            if e == super::BodyError::Timeout {
                state.ctx.metrics.count(
                    "relay_http_connections_rejected_total",
                    &[("reason", "body_timeout")],
                    1,
                );
            }
            return super::body_error(e);
        }
    };
    if let Some(v) = &state.signatures {
        if let Err(e) = v.validate_form(&path_and_query, &body, &signature) {
            state
                .ctx
                .metrics
                .error(crate::obs::metrics::Leg::Twilio, e.kind());
            warn!(kind = e.kind(), "refused /twiml: bad Twilio signature");
            return text(StatusCode::FORBIDDEN, "invalid Twilio signature\n");
        }
    }
    let Some(host) = host else {
        return text(
            StatusCode::BAD_REQUEST,
            "no public host configured and no Host header\n",
        );
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut params: Vec<(&str, &str)> = Vec::new();
    for k in ["From", "To", "CallSid"] {
        if let Some(v) = get(k) {
            params.push((k, v));
        }
    }
    let agent_params = state.args.agent_parameters();
    for (k, v) in &agent_params {
        params.push((k, v.as_str()));
    }
    if let Some(a) = agent {
        params.push(("agent", a.as_str()));
    }
    let token;
    if let Some(tokens) = &state.ctx.tokens {
        let Some(call_sid) = get("CallSid").filter(|s| !s.is_empty()) else {
            return text(StatusCode::BAD_REQUEST, "CallSid is required\n");
        };
        token = tokens.token_for_call(call_sid);
        params.push(("relay_token", token.as_str()));
    }
    match crate::http::twiml::connect_stream(&host, &params) {
        Ok(xml) => {
            info!(
                call_sid = get("CallSid").unwrap_or(""),
                "answered incoming call with TwiML"
            );
            let mut r = Response::new(Full::new(Bytes::from(xml)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/xml"),
            );
            r
        }
        Err(e) => {
            warn!(error = %e, "refused to emit TwiML");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a stream parameter is too long\n",
            )
        }
    }
}

/// The `agent` query parameter of `/twiml` (an operator points each Twilio number's webhook
/// at `/twiml?agent=NAME`; Twilio's signature covers the query). `None` without one.
///
/// # Errors
/// A message for an unknown or unconfigured agent (answered 400 at TwiML time, so the call
/// never reaches a stream).
fn agent_from_query(
    query: Option<&str>,
    settings: &crate::call::CallSettings,
) -> Result<Option<AgentKind>, String> {
    let Some(name) = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "agent")
            .map(|(_, v)| v.into_owned())
    }) else {
        return Ok(None);
    };
    let kind = AgentKind::from_name(&name).ok_or_else(|| {
        format!("unknown agent {name:?}: use elevenlabs, assemblyai, openai or echo")
    })?;
    if !settings.agents.is_configured(kind) {
        return Err(format!("agent {name} is not configured on this relay"));
    }
    Ok(Some(kind))
}
