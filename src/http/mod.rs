//! The control plane: everything before and around the WebSocket upgrade. The accept loop,
//! limits, routing, admission and drain ([`server`]), the media upgrade per carrier
//! ([`media`]), the one signed-webhook reader ([`signed_form`]), the incoming-call webhook
//! ([`inbound`]), outbound calls ([`outbound`]), carrier status callbacks ([`callbacks`]), and
//! the admin routes `GET /calls` ([`admin`]). Its settings are plain structs ([`settings`]).
//! Calls themselves live in `call`; each carrier's markup, signatures and REST in `carrier`.

pub mod admin;
pub mod callbacks;
pub mod inbound;
pub mod media;
pub mod outbound;
pub mod server;
pub mod settings;
pub mod signed_form;
pub mod transfer;

pub use crate::auth::BearerToken;

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

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An XML (TwiML/TeXML) response.
pub fn xml_response(xml: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(xml)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    r
}

/// The value of header `name` as text (`""` when absent or not text).
pub fn header_str<'a, B>(req: &'a hyper::Request<B>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
