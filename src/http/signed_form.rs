//! The one reader of signed carrier webhooks (incoming-call markup fetches, status
//! callbacks, relay-signed markup URLs): a bounded body within the read timeout, the
//! carrier's signature over it, and a form-decoded view. Every refusal is answered and
//! counted the same way: 413/408/400 for the body (a timeout counted in
//! `relay_http_connections_rejected_total{reason="body_timeout"}`), 403 for a bad signature
//! (counted in `relay_errors_total{leg=<carrier>,kind}`).

use super::{body_error, error_json, read_body, unix_now, BodyError, Resp};
use crate::carrier::{CarrierKind, CarrierSettings, SignedRequest};
use crate::obs::labels::HttpRejectReason;
use crate::obs::metrics::Metrics;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, StatusCode};
use std::time::Duration;
use tracing::warn;

/// A webhook whose signature checked out.
#[derive(Debug)]
pub struct SignedForm {
    /// Path and query as requested.
    pub path_and_query: String,
    /// The query (after `?`), possibly empty.
    pub query: String,
    /// The raw body.
    pub body: Bytes,
    /// The body's form fields, in order.
    pub fields: Vec<(String, String)>,
}

impl SignedForm {
    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads and checks a webhook of `carrier`: at most `limit` bytes within `timeout`, signed
/// as the carrier signs (when it is authenticated).
///
/// # Errors
/// The response to answer instead (already counted and logged).
pub async fn read_signed_form(
    req: Request<Incoming>,
    carrier: CarrierKind,
    carriers: &CarrierSettings,
    limit: usize,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<SignedForm, Resp> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let query = req.uri().query().unwrap_or("").to_owned();
    let (parts, body) = req.into_parts();
    let body = match read_body(body, limit, timeout).await {
        Ok(b) => b,
        Err(e) => {
            if e == BodyError::Timeout {
                metrics.http_rejected(HttpRejectReason::BodyTimeout);
            }
            return Err(body_error(e));
        }
    };
    if let Some(refused) = verify(
        carrier,
        carriers,
        &path_and_query,
        &parts.headers,
        &body,
        metrics,
    ) {
        return Err(refused);
    }
    let fields = form_urlencoded::parse(&body).into_owned().collect();
    Ok(SignedForm {
        path_and_query,
        query,
        body,
        fields,
    })
}

/// The signature check: `None` when it holds, else the 403 to answer (already counted and
/// logged).
fn verify(
    carrier: CarrierKind,
    carriers: &CarrierSettings,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    metrics: &Metrics,
) -> Option<Resp> {
    let signed = SignedRequest {
        path_and_query,
        headers,
        body,
        now_unix: unix_now(),
    };
    match carrier.control().verify_webhook(carriers, signed) {
        Ok(()) => None,
        Err(e) => {
            metrics.caller_error(carrier.index(), e.kind());
            let path = path_and_query.split('?').next().unwrap_or("");
            warn!(
                carrier = carrier.as_str(),
                path,
                kind = %e.kind(),
                "refused a webhook: bad signature"
            );
            Some(error_json(
                StatusCode::FORBIDDEN,
                "invalid_signature",
                "invalid carrier signature",
            ))
        }
    }
}
