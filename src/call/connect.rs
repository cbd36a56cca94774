//! Connecting a call's agent leg from its dialect's [`ConnectSpec`]: the optional URL fetch
//! first (ElevenLabs signed URLs) over the pooled HTTP client, then the client WebSocket
//! handshake (`wire::ws_client`). The only I/O of connecting; what to connect to is the
//! dialect's (`agent`).

use crate::agent::{ConnectError, ConnectSpec, UrlFetch, MAX_AGENT_MESSAGE_BYTES};
use crate::wire::http_client::HttpClient;
use crate::wire::net::NetError;
use crate::wire::ws_client::{self, ClientRead, ClientWrite};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Read half of an agent socket.
pub type AgentRead = ClientRead;
/// Write half of an agent socket.
pub type AgentWrite = ClientWrite;

/// A boxed connect future, so the call loop can hold it across `select!` iterations.
pub type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<(AgentRead, AgentWrite), ConnectError>> + Send>>;

/// Time allowed for the URL fetch (ElevenLabs signed URL).
pub const URL_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest URL-fetch answer read, in bytes.
pub const MAX_URL_FETCH_BYTES: usize = 64 * 1024;

/// Resolves the URL (fetching it first if the dialect says so) and opens the WebSocket.
///
/// # Errors
/// Any [`ConnectError`] (the call machine applies the overall timeout).
pub async fn connect(
    spec: ConnectSpec,
    http: &HttpClient,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(AgentRead, AgentWrite), ConnectError> {
    let url = match &spec.fetch_url {
        Some(f) => fetch_url(http, f).await?,
        None => spec.url.clone(),
    };
    Ok(ws_client::connect(&url, &spec.headers, tls, MAX_AGENT_MESSAGE_BYTES).await?)
}

/// `GET` the fetch URL and read the WebSocket URL out of its 200 answer.
///
/// # Errors
/// [`ConnectError::UrlFetchStatus`], [`ConnectError::UrlFetchBody`], or a network error.
pub async fn fetch_url(http: &HttpClient, f: &UrlFetch) -> Result<String, ConnectError> {
    let mut req = Request::get(f.url.as_str()).header("accept", "application/json");
    for (name, value) in &f.headers {
        let mut v = hyper::header::HeaderValue::from_str(value.expose())
            .map_err(|_| NetError::InvalidUrl(format!("invalid {name} header value")))?;
        v.set_sensitive(true);
        req = req.header(*name, v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| NetError::InvalidUrl(e.to_string()))?;
    let (status, body) = http
        .request(req, MAX_URL_FETCH_BYTES, URL_FETCH_TIMEOUT)
        .await?;
    if status != StatusCode::OK {
        return Err(ConnectError::UrlFetchStatus(status.as_u16()));
    }
    (f.parse)(&body).ok_or(ConnectError::UrlFetchBody)
}
