//! A post-call webhook receiver on loopback: records each request (arrival, `Relay-Signature`
//! header, body) and answers the first `fail` with 500, then 200; and the receiver's side of
//! the signature check (`t=…,v0=<hex HMAC-SHA256 of "{t}.{body}">`).

#![allow(dead_code)]

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The key the tests configure as `--post-call-webhook-secret`.
pub const SECRET: &str = "post-call-secret";

/// (arrival, signature header, body) of each request; the first `fail` get 500.
pub type Seen = Arc<Mutex<Vec<(Instant, Option<String>, Vec<u8>)>>>;

pub async fn receiver(fail: usize) -> (std::net::SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let sig = req
                            .headers()
                            .get("relay-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        let n = {
                            let mut g = s.lock().unwrap();
                            g.push((Instant::now(), sig, body));
                            g.len()
                        };
                        let status = if n <= fail {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

pub fn verify(sig: &str, body: &[u8]) -> bool {
    let Some((t, v0)) = sig
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v0=")?)))
    else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v0
}
