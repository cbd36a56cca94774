//! The media WebSocket upgrade of each carrier: the carrier's check of the upgrade request
//! (Twilio's `X-Twilio-Signature`; Telnyx signs nothing, its stream token rides in the URL),
//! admission (`--max-calls`, draining), the upgrade by hand with fastwebsockets, and the call
//! task on the relay's tracker.

use super::server::{Admission, State};
use super::{text, Resp};
use crate::call;
use crate::carrier::CarrierKind;
use crate::obs::labels::{ErrorKind, UpgradeResult};
use crate::wire::ws::{Prefixed, Role, WsReader, WsWriter};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// `GET` on `carrier`'s media path: upgrades and starts the call, or refuses.
pub fn upgrade(
    mut req: Request<Incoming>,
    carrier: CarrierKind,
    state: &Arc<State>,
    peer: SocketAddr,
) -> Resp {
    let m = &state.ctx.metrics;
    if state.draining.load(Ordering::SeqCst) {
        m.upgrade(UpgradeResult::RejectedDraining);
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        m.upgrade(UpgradeResult::BadRequest);
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let url_token = match carrier.control().verify_upgrade(
        &state.ctx.carriers,
        &path_and_query,
        req.headers(),
    ) {
        Ok(t) => t,
        Err(e) => {
            m.upgrade(UpgradeResult::RejectedSignature);
            m.caller_error(carrier.index(), e.kind());
            warn!(%peer, carrier = carrier.as_str(), kind = %e.kind(), "refused a media stream: bad signature");
            return text(StatusCode::FORBIDDEN, "invalid carrier signature\n");
        }
    };
    let max = state.http.max_calls;
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
    if !state.ctx.carriers.status(carrier).authenticated {
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
            ctx.metrics.internal_error(ErrorKind::UpgradeDowncast);
            warn!("upgraded connection is not a TCP stream");
            return;
        };
        let (r, w) = match crate::wire::net::split_accepted(parts.io.into_inner()) {
            Ok(halves) => halves,
            Err(e) => {
                ctx.metrics.internal_error(ErrorKind::UringSocket);
                warn!(error = %e, "cannot move the call socket to io_uring");
                return;
            }
        };
        let reader = WsReader::new(
            Prefixed::new(parts.read_buf, r),
            Role::Server,
            call::MAX_CALLER_MESSAGE_BYTES,
        );
        call::run(
            reader,
            WsWriter::new(w, Role::Server),
            carrier,
            url_token,
            ctx,
            cancel,
        )
        .await;
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
