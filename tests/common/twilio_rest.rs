//! A mock Twilio REST API (hyper 1) on 127.0.0.1:0 for `/outbound-call` tests: records each
//! request's method, path, headers and raw body, and answers `201 {"sid": "CA…"}` (a new SID
//! per request) or a configured error. Loopback only.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    /// Header names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as `application/x-www-form-urlencoded`, in order, repeats kept.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// Every value of form field `name`, in order.
    pub fn form_values(&self, name: &str) -> Vec<String> {
        self.form()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }
}

#[derive(Debug)]
struct Shared {
    requests: Vec<Recorded>,
    /// `None`: 201 with a fresh SID; `Some`: this status and body.
    reply: Option<(u16, String)>,
}

/// The running mock.
pub struct MockTwilio {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockTwilio {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SID the mock returns for its `n`th request (0-based, counting every request).
pub fn call_sid(n: usize) -> String {
    format!("CA{n:032x}")
}

impl MockTwilio {
    pub async fn start() -> MockTwilio {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared {
            requests: Vec::new(),
            reply: None,
        }));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, s.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MockTwilio { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, for `twilio_api_base`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every later request with `status` and `body` (JSON).
    pub fn fail_with(&self, status: u16, body: &str) {
        self.shared.lock().unwrap().reply = Some((status, body.to_owned()));
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().requests.clone()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Mutex<Shared>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let (status, body) = {
        let mut s = shared.lock().unwrap();
        let n = s.requests.len();
        s.requests.push(Recorded {
            method,
            path,
            headers,
            body,
        });
        match &s.reply {
            Some((status, body)) => (*status, body.clone()),
            None => (
                201,
                format!(
                    r#"{{"sid":"{}","account_sid":"AC","status":"queued","direction":"outbound-api"}}"#,
                    call_sid(n)
                ),
            ),
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
