//! Outbound connections: TCP or TLS streams to `ws(s)://` URLs (agent WebSockets) and the
//! shared rustls client configuration; the owned halves of an accepted call socket
//! ([`split_accepted`]). On a `--runtime uring` thread both move to io_uring. HTTP requests
//! go through `http_client`.
//!
//! Owns: name resolution + connect, TLS (one `Arc<ClientConfig>` for the process, so
//! session resumption works across calls, TLS session resumption), body size limits. Does not own
//! WebSocket framing (see `ws`) or any protocol.

use crate::obs::labels::ErrorKind;
use hyper::Uri;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A bidirectional byte stream (plain TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`]: one type for TCP and TLS streams.
pub type BoxIo = Box<dyn Io>;

/// Why an outbound connection or request failed; [`NetError::kind`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The URL has no host, or an unsupported scheme.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// DNS or TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// TLS handshake failed (or the host is not a valid server name).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The response body exceeded the limit.
    #[error("response body over {0} bytes")]
    BodyTooLarge(usize),
    /// The exchange took longer than allowed.
    #[error("timed out")]
    Timeout,
}

impl NetError {
    /// The `kind` label of `relay_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetError::InvalidUrl(_) => ErrorKind::InvalidUrl,
            NetError::Connect(_) => ErrorKind::Connect,
            NetError::Tls(_) => ErrorKind::Tls,
            NetError::Http(_) => ErrorKind::Http,
            NetError::BodyTooLarge(_) => ErrorKind::BodyTooLarge,
            NetError::Timeout => ErrorKind::Timeout,
        }
    }
}

/// The process-wide TLS client configuration: ring provider, webpki roots, TLS 1.2 + 1.3.
///
/// # Errors
/// Only if the ring provider rejects its own default protocol versions (never in practice).
pub fn tls_client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Whether a URL scheme needs TLS (`https`, `wss`) or not (`http`, `ws`).
pub fn scheme_is_tls(uri: &Uri) -> Result<bool, NetError> {
    match uri.scheme_str() {
        Some("https") | Some("wss") => Ok(true),
        Some("http") | Some("ws") => Ok(false),
        other => Err(NetError::InvalidUrl(format!(
            "unsupported scheme {other:?}"
        ))),
    }
}

/// Opens a TCP (and, for `https`/`wss`, TLS) stream to the URL's host and port
/// (default 443 with TLS, 80 without). TCP_NODELAY is set: these are latency-sensitive.
///
/// # Errors
/// [`NetError::InvalidUrl`], [`NetError::Connect`], [`NetError::Tls`].
pub async fn open_stream(uri: &Uri, tls: &Arc<rustls::ClientConfig>) -> Result<BoxIo, NetError> {
    let is_tls = scheme_is_tls(uri)?;
    let host = uri
        .host()
        .ok_or_else(|| NetError::InvalidUrl("no host".into()))?;
    let port = uri.port_u16().unwrap_or(if is_tls { 443 } else { 80 });
    let host_for_connect = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host_for_connect, port))
        .await
        .map_err(NetError::Connect)?;
    let _ = tcp.set_nodelay(true);
    #[cfg(feature = "uring")]
    if super::uring::active() {
        let tcp = super::uring::Stream::from_tokio(tcp).map_err(NetError::Connect)?;
        return match is_tls {
            false => Ok(Box::new(tcp)),
            true => Ok(Box::new(tls_over(tcp, host_for_connect, tls).await?)),
        };
    }
    match is_tls {
        false => Ok(Box::new(tcp)),
        true => Ok(Box::new(tls_over(tcp, host_for_connect, tls).await?)),
    }
}

/// The TLS client handshake with `host` over `io`.
async fn tls_over<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    host: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<T>, NetError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, io)
        .await
        .map_err(|e| NetError::Tls(e.to_string()))
}

/// Splits an accepted connection (a carrier's media socket after its upgrade) into owned
/// halves: tokio's epoll halves, or on a `--runtime uring` thread io_uring halves.
///
/// # Errors
/// Only on a uring thread: the socket could not be moved to io_uring.
pub fn split_accepted(tcp: TcpStream) -> std::io::Result<(TcpRead, TcpWrite)> {
    #[cfg(feature = "uring")]
    if super::uring::active() {
        let (r, w) = super::uring::Stream::from_tokio(tcp)?.into_split();
        return Ok((TcpRead::Uring(r), TcpWrite::Uring(w)));
    }
    let (r, w) = tcp.into_split();
    Ok((TcpRead::Epoll(r), TcpWrite::Epoll(w)))
}

/// The read half of an accepted TCP connection ([`split_accepted`]).
pub enum TcpRead {
    /// tokio's socket (epoll readiness, one `recvfrom` per read).
    Epoll(OwnedReadHalf),
    /// An io_uring socket (`--runtime uring`).
    #[cfg(feature = "uring")]
    Uring(super::uring::ReadHalf),
}

/// The write half of an accepted TCP connection ([`split_accepted`]).
pub enum TcpWrite {
    /// tokio's socket (one `sendto` per write).
    Epoll(OwnedWriteHalf),
    /// An io_uring socket (`--runtime uring`).
    #[cfg(feature = "uring")]
    Uring(super::uring::WriteHalf),
}

impl AsyncRead for TcpRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TcpRead::Epoll(r) => Pin::new(r).poll_read(cx, buf),
            #[cfg(feature = "uring")]
            TcpRead::Uring(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TcpWrite::Epoll(w) => Pin::new(w).poll_write(cx, buf),
            #[cfg(feature = "uring")]
            TcpWrite::Uring(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TcpWrite::Epoll(w) => Pin::new(w).poll_flush(cx),
            #[cfg(feature = "uring")]
            TcpWrite::Uring(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TcpWrite::Epoll(w) => Pin::new(w).poll_shutdown(cx),
            #[cfg(feature = "uring")]
            TcpWrite::Uring(w) => Pin::new(w).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TcpWrite::Epoll(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            #[cfg(feature = "uring")]
            TcpWrite::Uring(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TcpWrite::Epoll(w) => w.is_write_vectored(),
            #[cfg(feature = "uring")]
            TcpWrite::Uring(w) => w.is_write_vectored(),
        }
    }
}

/// `host[:port]` of a URL, for the `Host` header.
pub fn authority(uri: &Uri) -> Result<String, NetError> {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| NetError::InvalidUrl("no authority".into()))
}
