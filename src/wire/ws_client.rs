//! Client WebSocket connections (the agent legs): the RFC 6455 opening handshake over TCP or
//! TLS through fastwebsockets, `Sec-WebSocket-Accept` verification (fastwebsockets' client
//! does not check it), and recovering the raw stream from hyper's upgrade so our own framing
//! ([`super::ws`]) carries the data path. Knows no vendor.

use super::net::{self, BoxIo, NetError};
use super::ws::{Prefixed, Role, WsReader, WsWriter};
use crate::auth::Secret;
use crate::obs::labels::ErrorKind;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{ReadHalf, WriteHalf};

/// Read half of a client socket.
pub type ClientRead = WsReader<Prefixed<ReadHalf<BoxIo>>>;
/// Write half of a client socket (frames queued until flushed; see `ws::WsWriter`).
pub type ClientWrite = WsWriter<WriteHalf<BoxIo>>;

/// Why a client WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Network-level failure (URL, TCP, TLS).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The WebSocket handshake failed (non-101 answer or I/O).
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The server's `Sec-WebSocket-Accept` did not match our key.
    #[error("Sec-WebSocket-Accept mismatch")]
    BadAccept,
}

impl HandshakeError {
    /// The `kind` label of `relay_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::Net(e) => e.kind(),
            HandshakeError::Handshake(_) => ErrorKind::Handshake,
            HandshakeError::BadAccept => ErrorKind::BadAccept,
        }
    }
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// Opens a client WebSocket to `url` (`ws://` or `wss://`) with extra upgrade-request
/// `headers` (values are secrets: never logged), verifies the handshake, and splits it into
/// our own framing halves, reading messages of at most `max_message_bytes`.
///
/// # Errors
/// Network errors, [`HandshakeError::Handshake`], [`HandshakeError::BadAccept`].
pub async fn connect(
    url: &str,
    headers: &[(&'static str, Secret)],
    tls: &Arc<rustls::ClientConfig>,
    max_message_bytes: usize,
) -> Result<(ClientRead, ClientWrite), HandshakeError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| NetError::InvalidUrl(e.to_string()))?;
    let io = net::open_stream(&uri, tls).await?;
    let key = fastwebsockets::handshake::generate_key();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let mut req = Request::get(path)
        .header(hyper::header::HOST, net::authority(&uri)?)
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", &key)
        .header("Sec-WebSocket-Version", "13");
    for (name, value) in headers {
        let mut v = hyper::header::HeaderValue::from_str(value.expose())
            .map_err(|_| NetError::InvalidUrl(format!("invalid {name} header value")))?;
        v.set_sensitive(true);
        req = req.header(*name, v);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| NetError::InvalidUrl(e.to_string()))?;
    let (ws, resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, io)
        .await
        .map_err(|e| HandshakeError::Handshake(e.to_string()))?;
    let accept = resp
        .headers()
        .get("Sec-WebSocket-Accept")
        .map(|v| v.as_bytes().to_vec());
    if accept.as_deref() != Some(expected_accept(&key).as_bytes()) {
        return Err(HandshakeError::BadAccept);
    }
    let upgraded = ws.into_inner().into_inner();
    let parts = upgraded
        .downcast::<TokioIo<BoxIo>>()
        .map_err(|_| HandshakeError::Handshake("unexpected upgraded stream type".into()))?;
    let (r, w) = tokio::io::split(parts.io.into_inner());
    let reader = WsReader::new(
        Prefixed::new(parts.read_buf, r),
        Role::Client,
        max_message_bytes,
    );
    Ok((reader, WsWriter::new(w, Role::Client)))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn expected_accept(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64_simd::STANDARD.encode_to_string(h.finalize())
}

/// A boxed connect future, so a call loop can hold it across `select!` iterations.
pub type ConnectFuture<E> =
    Pin<Box<dyn Future<Output = Result<(ClientRead, ClientWrite), E>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3 example.
        assert_eq!(
            expected_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
