//! The control plane: everything before and around the WebSocket upgrade. The accept loop,
//! limits, routing, admission and drain ([`server`]), TwiML ([`twiml`]), outbound calls and
//! Twilio status callbacks ([`control`]), and the admin routes `GET /calls` ([`admin`]).
//! Calls themselves live in `call`.

pub mod admin;
pub mod control;
pub mod server;
pub mod twiml;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::time::Duration;

/// A response with a complete body.
pub type Resp = Response<Full<Bytes>>;

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the route's limit (413).
    TooLarge,
    /// Not complete within `--body-read-timeout-ms` (408).
    Timeout,
    /// The connection failed while reading (400).
    Read,
}

/// Reads a request body of at most `limit` bytes within `timeout` (a client that trickles
/// its body cannot hold a connection longer).
///
/// # Errors
/// [`BodyError`].
pub async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Read),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": code, "message": message}` with `status`.
pub fn error_json(status: StatusCode, code: &'static str, message: &str) -> Resp {
    json_response(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

/// The answer for a body that could not be read.
pub fn body_error(e: BodyError) -> Resp {
    match e {
        BodyError::TooLarge => error_json(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ),
        BodyError::Timeout => error_json(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body not received in time",
        ),
        BodyError::Read => error_json(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "could not read the request body",
        ),
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A bearer token compared in constant time through its SHA-256 (neither the value nor its
/// length leaks through timing).
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

impl BearerToken {
    /// The expected token.
    pub fn new(token: &str) -> BearerToken {
        use sha2::Digest;
        BearerToken(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// True when the request's `Authorization` header carries this token.
    pub fn matches<B>(&self, req: &hyper::Request<B>) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|t| {
                let hash: [u8; 32] = sha2::Sha256::digest(t.as_bytes()).into();
                bool::from(hash.ct_eq(&self.0))
            })
    }
}
