//! A local tool webhook for tests: records every request (headers, body), checks the
//! relay's `X-Relay-Signature` independently (its own HMAC-SHA256 over "{timestamp}.{body}"),
//! and answers each tool by name: a result, an error status, a bad body, or too late.
//! HTTP/1.1 with keep-alive, loopback only.

use hmac::{Hmac, Mac};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the webhook answers a tool.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 `{"result": value}`.
    Result(serde_json::Value),
    /// This status with an empty body.
    Status(u16),
    /// 200 with a body that is not `{"result": …}`.
    BadBody,
    /// 200 `{"result": "late"}` after this delay.
    Slow(Duration),
}

/// One request the webhook received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Whether `X-Relay-Signature` matched the HMAC computed here.
    pub signature_ok: bool,
}

/// A running webhook.
pub struct Webhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    /// Its URL (`http://127.0.0.1:port/tools`).
    pub fn url(&self) -> String {
        format!("http://{}/tools", self.addr)
    }

    /// Requests so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn sig(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Starts a webhook answering tool `name` with `answers[name]` (unknown names: 404), checking
/// signatures with `secret`.
pub async fn start(secret: &str, answers: Vec<(&str, Answer)>) -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    let secret = secret.to_owned();
    let answers: Arc<Vec<(String, Answer)>> = Arc::new(
        answers
            .into_iter()
            .map(|(n, a)| (n.to_owned(), a))
            .collect(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (rec, secret, answers) = (rec.clone(), secret.clone(), answers.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request: head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let h = |n: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == n)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let len: usize = h("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + 4 + len {
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    let body: Vec<u8> = buf[head_end + 4..head_end + 4 + len].to_vec();
                    buf.drain(..head_end + 4 + len);
                    let signature_ok =
                        h("x-relay-signature") == sig(&secret, &h("x-relay-timestamp"), &body);
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let name = json["name"].as_str().unwrap_or("").to_owned();
                    rec.lock().unwrap().push(Received {
                        headers: headers.clone(),
                        body: json,
                        signature_ok,
                    });
                    let answer = answers
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, a)| a.clone());
                    let (status, out) = match answer {
                        Some(Answer::Result(v)) => {
                            (200, serde_json::json!({ "result": v }).to_string())
                        }
                        Some(Answer::Status(code)) => (code, String::new()),
                        Some(Answer::BadBody) => (200, "not json".to_owned()),
                        Some(Answer::Slow(d)) => {
                            tokio::time::sleep(d).await;
                            (200, r#"{"result":"late"}"#.to_owned())
                        }
                        None => (404, String::new()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
                        out.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Webhook {
        addr,
        received,
        task,
    }
}
