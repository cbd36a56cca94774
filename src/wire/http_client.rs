//! The relay's one outbound HTTP client: hyper-util's pooled client over rustls (shared
//! `ClientConfig`, so TLS sessions resume), used for every request around a call — the
//! ElevenLabs signed URL, tool webhooks, the Twilio REST API. Connections are kept and
//! reused, so a call's setup does not pay a TCP and TLS handshake each time.
//!
//! Owns: pooling, timeouts and response-size limits. Does not own any protocol.

use super::net::NetError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per host.
pub const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// TCP connect timeout for a new pooled connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A cheap-to-clone pooled HTTP/1.1 client for `http://` and `https://` URLs.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// A client using `tls` for `https://` (TCP_NODELAY on, pooled).
    pub fn new(tls: &Arc<rustls::ClientConfig>) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((**tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(https);
        HttpClient { inner }
    }

    /// Sends `req` (absolute URI) and reads a response body of at most `max_body_bytes`,
    /// all within `timeout`.
    ///
    /// # Errors
    /// [`NetError::Timeout`], [`NetError::Http`] (connect, TLS or protocol failure),
    /// [`NetError::BodyTooLarge`].
    pub async fn request(
        &self,
        req: Request<Full<Bytes>>,
        max_body_bytes: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), NetError> {
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| NetError::Http(error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), max_body_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        NetError::BodyTooLarge(max_body_bytes)
                    } else {
                        NetError::Http(e.to_string())
                    }
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| NetError::Timeout)?
    }
}

/// An error and its sources on one line (hyper's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two requests to one server travel on one pooled TCP connection.
    #[tokio::test]
    async fn reuses_connections() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a2 = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {
                                let _ = s
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        let c = HttpClient::new(&crate::wire::net::tls_client_config().unwrap());
        for _ in 0..3 {
            let req = Request::get(format!("http://{addr}/x"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let (status, body) = c.request(req, 100, Duration::from_secs(5)).await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn limits_and_timeouts() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut big, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = big.read(&mut buf).await;
            let _ = big
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            let _ = big.write_all(&[b'x'; 1000]).await;
            let (_silent, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let c = HttpClient::new(&crate::wire::net::tls_client_config().unwrap());
        let get = || {
            Request::get(format!("http://{addr}/x"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let e = c
            .request(get(), 100, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind().as_str(), "body_too_large");
        let e = c
            .request(get(), 100, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.kind().as_str(), "timeout");
    }
}
