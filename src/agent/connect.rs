//! Connecting the agent leg: what each dialect connects to ([`ConnectSpec`]: URL, headers,
//! an optional REST step), the ElevenLabs signed-URL fetch over the pooled HTTP client, and
//! the client WebSocket handshake over TCP or TLS, ending in split halves.
//!
//! Owns URL derivation, the `xi-api-key` request (ElevenLabs "get signed URL" endpoint,
//! <https://elevenlabs.io/docs/agents-platform/api-reference/conversations/get-signed-url>),
//! `Authorization: Bearer` for AssemblyAI and OpenAI, `Sec-WebSocket-Accept` verification
//! (fastwebsockets' client does not check it) and recovering the raw stream from hyper's
//! upgrade. Does not own what is said on the socket (the dialects, `call`).

use super::{AgentKind, AgentSettings, CallParams};
use crate::auth::Secret;
use crate::wire::http_client::HttpClient;
use crate::wire::net::{self, BoxIo, NetError};
use crate::wire::ws::{Prefixed, Role, WsReader, WsWriter};
use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};

/// Largest agent message accepted, in bytes. ElevenLabs' Python SDK accepts 16 MiB because a
/// first audio event can be large; OpenAI allows events of up to 15 MiB.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 16 << 20;

/// Time allowed for the ElevenLabs signed-URL request.
pub const SIGNED_URL_TIMEOUT: Duration = Duration::from_secs(10);

/// Read half of an agent socket.
pub type AgentRead = WsReader<Prefixed<ReadHalf<BoxIo>>>;
/// Write half of an agent socket (frames queued until flushed; see `ws::WsWriter`).
pub type AgentWrite = WsWriter<WriteHalf<BoxIo>>;

/// ElevenLabs settings, from configuration.
#[derive(Debug, Clone)]
pub struct ElevenLabsSettings {
    /// API key: when set the relay fetches a signed URL (private agents); `Debug` redacts it.
    pub api_key: Option<Secret>,
    /// The agent id.
    pub agent_id: String,
    /// REST origin, e.g. `https://api.elevenlabs.io`; the WebSocket origin follows from it
    /// (`https` → `wss`, `http` → `ws`).
    pub api_base: String,
}

/// Why the agent could not be connected; [`ConnectError::kind`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Network-level failure (URL, TCP, TLS, HTTP).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The signed-URL endpoint answered a non-200 status.
    #[error("get-signed-url answered HTTP {0}")]
    SignedUrlStatus(StatusCode),
    /// The signed-URL response had no usable `signed_url`.
    #[error("get-signed-url response has no valid signed_url")]
    SignedUrlBody,
    /// The WebSocket handshake failed (non-101 answer or I/O).
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The server's `Sec-WebSocket-Accept` did not match our key.
    #[error("Sec-WebSocket-Accept mismatch")]
    BadAccept,
    /// Connecting took longer than the configured timeout.
    #[error("agent connect timed out")]
    Timeout,
    /// The call asked for an agent the relay has no settings for.
    #[error("{0} is not configured on this relay")]
    NotConfigured(&'static str),
}

impl ConnectError {
    /// Stable snake_case name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Net(e) => e.kind(),
            ConnectError::SignedUrlStatus(_) => "signed_url_status",
            ConnectError::SignedUrlBody => "signed_url_body",
            ConnectError::Handshake(_) => "handshake",
            ConnectError::BadAccept => "bad_accept",
            ConnectError::Timeout => "connect_timeout",
            ConnectError::NotConfigured(_) => "agent_not_configured",
        }
    }
}

/// Derives the public conversation URL from the REST origin:
/// `{ws(s) origin}/v1/convai/conversation?agent_id={id}`.
///
/// # Errors
/// [`NetError::InvalidUrl`] for an origin that is not `http(s)://host[:port]`.
pub fn public_conversation_url(api_base: &str, agent_id: &str) -> Result<String, NetError> {
    let base = api_base.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return Err(NetError::InvalidUrl(format!(
            "ELEVENLABS_API_BASE must start with http:// or https://: {base}"
        )));
    };
    Ok(format!(
        "{ws_base}/v1/convai/conversation?agent_id={}",
        encode_query(agent_id)
    ))
}

fn encode_query(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Fetches a signed conversation URL: `GET {base}/v1/convai/conversation/get-signed-url
/// ?agent_id=` with header `xi-api-key`, over the pooled client. The URL is treated as opaque.
///
/// # Errors
/// [`ConnectError::SignedUrlStatus`], [`ConnectError::SignedUrlBody`], or a network error.
pub async fn fetch_signed_url(
    http: &HttpClient,
    api_base: &str,
    agent_id: &str,
    api_key: &Secret,
) -> Result<String, ConnectError> {
    let url = format!(
        "{}/v1/convai/conversation/get-signed-url?agent_id={}",
        api_base.trim_end_matches('/'),
        encode_query(agent_id)
    );
    let req = Request::get(url.as_str())
        .header("xi-api-key", api_key.expose())
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| NetError::InvalidUrl(e.to_string()))?;
    let (status, body) = http.request(req, 64 * 1024, SIGNED_URL_TIMEOUT).await?;
    if status != StatusCode::OK {
        return Err(ConnectError::SignedUrlStatus(status));
    }
    #[derive(serde::Deserialize)]
    struct SignedUrl {
        signed_url: String,
    }
    let parsed: SignedUrl =
        serde_json::from_slice(&body).map_err(|_| ConnectError::SignedUrlBody)?;
    if !(parsed.signed_url.starts_with("wss://") || parsed.signed_url.starts_with("ws://")) {
        return Err(ConnectError::SignedUrlBody);
    }
    Ok(parsed.signed_url)
}

/// Where and how one call's agent leg connects.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    /// The dialect.
    pub kind: AgentKind,
    /// The WebSocket URL (`ws://` or `wss://`), unless a signed URL must be fetched first.
    pub url: String,
    /// Extra upgrade-request headers (e.g. `Authorization: Bearer …`).
    pub headers: Vec<(&'static str, Secret)>,
    /// ElevenLabs private agent: fetch a signed URL first (REST origin, agent id, API key).
    pub signed_url: Option<(String, String, Secret)>,
}

impl ConnectSpec {
    /// The connect plan for `kind` with this call's parameters (a per-call ElevenLabs agent
    /// id replaces the configured one).
    ///
    /// # Errors
    /// [`ConnectError::NotConfigured`] when the relay has no settings for `kind` (or it is
    /// echo, which does not connect); [`ConnectError::Net`] for a bad configured URL.
    pub fn new(
        kind: AgentKind,
        settings: &AgentSettings,
        params: &CallParams,
    ) -> Result<ConnectSpec, ConnectError> {
        let not_configured = || ConnectError::NotConfigured(kind.as_str());
        match kind {
            AgentKind::Elevenlabs => {
                let el = settings.elevenlabs.as_ref().ok_or_else(not_configured)?;
                let agent_id = params.agent_id.as_deref().unwrap_or(&el.agent_id);
                let url = public_conversation_url(&el.api_base, agent_id)?;
                Ok(ConnectSpec {
                    kind,
                    url,
                    headers: Vec::new(),
                    signed_url: el
                        .api_key
                        .clone()
                        .map(|k| (el.api_base.clone(), agent_id.to_owned(), k)),
                })
            }
            AgentKind::Assemblyai => {
                let a = settings.assemblyai.as_ref().ok_or_else(not_configured)?;
                Ok(ConnectSpec {
                    kind,
                    url: a.url.clone(),
                    headers: vec![("authorization", bearer(&a.api_key))],
                    signed_url: None,
                })
            }
            AgentKind::Openai => {
                let o = settings.openai.as_ref().ok_or_else(not_configured)?;
                Ok(ConnectSpec {
                    kind,
                    url: o.url.clone(),
                    headers: vec![("authorization", bearer(&o.api_key))],
                    signed_url: None,
                })
            }
            AgentKind::Echo => Err(not_configured()),
        }
    }

    /// Resolves the URL (fetching a signed one if needed) and opens the WebSocket.
    ///
    /// # Errors
    /// Any [`ConnectError`] (the call machine applies the overall timeout).
    pub async fn connect(
        self,
        http: &HttpClient,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(AgentRead, AgentWrite), ConnectError> {
        let url = match &self.signed_url {
            Some((base, agent_id, key)) => fetch_signed_url(http, base, agent_id, key).await?,
            None => self.url.clone(),
        };
        connect_ws_with(&url, &self.headers, tls).await
    }
}

fn bearer(key: &Secret) -> Secret {
    Secret::new(format!("Bearer {}", key.expose()))
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

/// Opens a client WebSocket to `url` (`ws://` or `wss://`), verifies the handshake, and
/// splits it into our own framing halves (fastwebsockets does the handshake only).
///
/// # Errors
/// Network errors, [`ConnectError::Handshake`], [`ConnectError::BadAccept`].
pub async fn connect_ws(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(AgentRead, AgentWrite), ConnectError> {
    connect_ws_with(url, &[], tls).await
}

/// [`connect_ws`] with extra upgrade-request headers (values are secrets: never logged).
///
/// # Errors
/// As [`connect_ws`].
pub async fn connect_ws_with(
    url: &str,
    headers: &[(&'static str, Secret)],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(AgentRead, AgentWrite), ConnectError> {
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
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let accept = resp
        .headers()
        .get("Sec-WebSocket-Accept")
        .map(|v| v.as_bytes().to_vec());
    if accept.as_deref() != Some(expected_accept(&key).as_bytes()) {
        return Err(ConnectError::BadAccept);
    }
    let upgraded = ws.into_inner().into_inner();
    let parts = upgraded
        .downcast::<TokioIo<BoxIo>>()
        .map_err(|_| ConnectError::Handshake("unexpected upgraded stream type".into()))?;
    let (r, w) = tokio::io::split(parts.io.into_inner());
    let reader = WsReader::new(
        Prefixed::new(parts.read_buf, r),
        Role::Client,
        MAX_AGENT_MESSAGE_BYTES,
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

/// A boxed connect future, so the call loop can hold it across `select!` iterations.
pub type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<(AgentRead, AgentWrite), ConnectError>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_public_url() {
        assert_eq!(
            public_conversation_url("https://api.elevenlabs.io/", "agent 1").unwrap(),
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent+1"
        );
        assert_eq!(
            public_conversation_url("http://127.0.0.1:9000", "a").unwrap(),
            "ws://127.0.0.1:9000/v1/convai/conversation?agent_id=a"
        );
        assert!(public_conversation_url("ftp://x", "a").is_err());
    }

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3 example.
        assert_eq!(
            expected_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
