//! Peers for the call-control tests (tests/call_control.rs), all on loopback:
//!
//! - [`PlayingCaller`]: a simulated Twilio caller that plays what it receives at 8 bytes per
//!   ms (a play queue that starts when audio arrives and drains in real time), echoes each
//!   mark only once the audio before it has played (or never, when asked), streams 20 ms
//!   frames of μ-law silence until it hangs up, and timestamps everything on tokio's clock;
//! - [`RestMock`]: a Twilio REST API that records each request with its arrival time and
//!   answers `200` with a call resource (or a configured failure);
//! - [`RawWebhook`]: a tool webhook answering each tool name with a fixed raw JSON body;
//! - [`post_form`]: one form POST with optional `X-Twilio-Signature`, for the callbacks.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound, TwilioSender};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Waits until `check` returns `Some`, re-checking whenever `notify` fires; panics naming
/// `what` after `timeout`.
async fn wait_on<S, T>(
    state: &Mutex<S>,
    notify: &Notify,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&S) -> Option<T>,
) -> T
where
    S: std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check(&lock(state)) {
            return v;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            if let Some(v) = check(&lock(state)) {
                return v;
            }
            panic!(
                "timed out after {timeout:?} waiting for {what}; state: {:?}",
                lock(state)
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Duration of `bytes` of μ-law (125 µs per byte).
pub fn audio_duration(bytes: usize) -> Duration {
    Duration::from_micros(bytes as u64 * 125)
}

// ---- the caller ---------------------------------------------------------------------------

/// What a [`PlayingCaller`] has received and done so far.
#[derive(Default)]
pub struct Heard {
    /// Every `media` payload byte, in arrival order.
    pub audio: Vec<u8>,
    /// Arrival time and size of each `media` message.
    pub media: Vec<(Instant, usize)>,
    /// When all the audio received so far has finished playing (`None` before any).
    pub play_end: Option<Instant>,
    /// Marks received: name, arrival time, and when the audio before it finishes playing.
    pub marks: Vec<(String, Instant, Instant)>,
    /// Marks echoed, with the time each was sent.
    pub echoed: Vec<(String, Instant)>,
    /// `clear` messages received.
    pub clears: usize,
    /// When each `clear` arrived.
    pub clear_times: Vec<Instant>,
    /// The relay's Close frame (code) and its arrival time.
    pub closed: Option<(Option<u16>, Instant)>,
    /// The connection is over (Close, end of stream or a transport error).
    pub ended: bool,
    /// When the caller sent `stop` (it then stops echoing and streaming).
    pub stopped: Option<Instant>,
    /// Protocol violations and transport errors seen.
    pub errors: Vec<String>,
    /// Marks waiting for their audio to play: (name, due).
    pending: VecDeque<(String, Instant)>,
    /// The caller's own 20 ms frames so far (sent or, when the source said so, lost).
    pub frames: u64,
    /// When `start` was sent (the stream's time 0).
    pub started: Option<Instant>,
}

/// Plays `queue` (its front starting at `clock`) until `t`, into `out`.
fn play_until(
    queue: &mut VecDeque<u8>,
    clock: &mut Option<Instant>,
    t: Instant,
    out: &mut Vec<u8>,
) {
    if let Some(c) = *clock {
        let n = ((t.saturating_duration_since(c).as_micros() / 125) as usize).min(queue.len());
        out.extend(queue.drain(..n));
        *clock = Some(c + audio_duration(n));
        if queue.is_empty() {
            *clock = None;
        }
    }
}

impl Heard {
    /// The agent audio as the caller heard it: each `media` plays back to back from its
    /// arrival, and a `clear` drops what had not played yet.
    pub fn played(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut queue: VecDeque<u8> = VecDeque::new();
        let mut clock: Option<Instant> = None; // when the queue's front starts playing
        let mut at = 0;
        let mut events: Vec<(Instant, Option<usize>)> =
            self.media.iter().map(|&(t, n)| (t, Some(n))).collect();
        events.extend(self.clear_times.iter().map(|&t| (t, None)));
        events.sort_by_key(|e| e.0);
        for (t, e) in events {
            play_until(&mut queue, &mut clock, t, &mut out);
            match e {
                Some(n) => {
                    queue.extend(&self.audio[at..at + n]);
                    at += n;
                    clock.get_or_insert(t);
                }
                None => {
                    queue.clear();
                    clock = None;
                }
            }
        }
        let end = self
            .stopped
            .or(self.closed.map(|c| c.1))
            .unwrap_or_else(Instant::now);
        play_until(&mut queue, &mut clock, end, &mut out);
        out
    }
}

impl std::fmt::Debug for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heard")
            .field("audio_bytes", &self.audio.len())
            .field("media_messages", &self.media.len())
            .field(
                "marks",
                &self.marks.iter().map(|m| &m.0).collect::<Vec<_>>(),
            )
            .field(
                "echoed",
                &self.echoed.iter().map(|m| &m.0).collect::<Vec<_>>(),
            )
            .field("clears", &self.clears)
            .field("closed", &self.closed.map(|c| c.0))
            .field("ended", &self.ended)
            .field("stopped", &self.stopped.is_some())
            .field("errors", &self.errors)
            .finish()
    }
}

impl Heard {
    /// Arrival time of the last `media` message.
    pub fn last_media_at(&self) -> Option<Instant> {
        self.media.last().map(|m| m.0)
    }
}

struct CallerShared {
    heard: Mutex<Heard>,
    notify: Notify,
}

impl CallerShared {
    fn update<R>(&self, f: impl FnOnce(&mut Heard) -> R) -> R {
        let r = f(&mut lock(&self.heard));
        self.notify.notify_waiters();
        r
    }
}

/// A Twilio caller with playback emulation; see the module docs.
pub struct PlayingCaller {
    pub tx: TwilioSender,
    shared: Arc<CallerShared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PlayingCaller {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl PlayingCaller {
    /// Connects to `url` with `headers`, sends `connected` and `start`, then streams silence
    /// every 20 ms; echoes marks once played when `echo_marks`.
    pub async fn connect(
        url: &str,
        headers: &[(String, String)],
        start: &StartParams,
        echo_marks: bool,
    ) -> PlayingCaller {
        Self::connect_streaming(url, headers, start, echo_marks, |_| Some([0xFF; 160])).await
    }

    /// Like [`PlayingCaller::connect`], streaming `frame(k)` as its `k`-th 20 ms frame
    /// (`None`: the frame is numbered, and so its timestamp taken, but lost on the way).
    pub async fn connect_streaming(
        url: &str,
        headers: &[(String, String)],
        start: &StartParams,
        echo_marks: bool,
        frame: fn(u64) -> Option<[u8; 160]>,
    ) -> PlayingCaller {
        let client = TwilioClient::connect(url, headers)
            .await
            .expect("the relay accepts the stream");
        let (tx, mut rx) = client.split();
        let shared = Arc::new(CallerShared {
            heard: Mutex::new(Heard::default()),
            notify: Notify::new(),
        });
        tx.send_connected().await.unwrap();
        tx.send_start(start).await.unwrap();
        lock(&shared.heard).started = Some(Instant::now());

        let s = shared.clone();
        let receiver = tokio::spawn(async move {
            loop {
                let next = rx.recv().await;
                let at = Instant::now();
                let over = s.update(|h| match next {
                    Ok(Some(TwilioInbound::Media { payload, .. })) => {
                        let end =
                            h.play_end.map_or(at, |e| e.max(at)) + audio_duration(payload.len());
                        h.play_end = Some(end);
                        h.media.push((at, payload.len()));
                        h.audio.extend_from_slice(&payload);
                        false
                    }
                    Ok(Some(TwilioInbound::Mark { name, .. })) => {
                        let due = h.play_end.map_or(at, |e| e.max(at));
                        h.marks.push((name.clone(), at, due));
                        h.pending.push_back((name, due));
                        false
                    }
                    Ok(Some(TwilioInbound::Clear { .. })) => {
                        h.clears += 1;
                        h.clear_times.push(at);
                        h.play_end = Some(at);
                        for m in h.pending.iter_mut() {
                            m.1 = at;
                        }
                        false
                    }
                    Ok(Some(TwilioInbound::Close { code, .. })) => {
                        h.closed = Some((code, at));
                        h.ended = true;
                        true
                    }
                    Ok(None) => {
                        h.ended = true;
                        true
                    }
                    Err(e) => {
                        let fatal = !e.is::<loadtest::twilio_sim::TwilioProtocolError>();
                        h.errors.push(format!("{e:#}"));
                        h.ended |= fatal;
                        fatal
                    }
                });
                if over {
                    return;
                }
            }
        });

        let (s, t) = (shared.clone(), tx.clone());
        let echoer = tokio::spawn(async move {
            if !echo_marks {
                return;
            }
            loop {
                let notified = s.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let now = Instant::now();
                let next = {
                    let mut h = lock(&s.heard);
                    if h.ended || h.stopped.is_some() {
                        return;
                    }
                    match h.pending.front() {
                        Some((_, due)) if *due <= now => Ok(h.pending.pop_front().unwrap().0),
                        Some((_, due)) => Err(Some(*due)),
                        None => Err(None),
                    }
                };
                match next {
                    Ok(name) => {
                        if t.send_mark(&name).await.is_err() {
                            return;
                        }
                        let at = Instant::now();
                        s.update(|h| h.echoed.push((name, at)));
                    }
                    Err(Some(due)) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(due) => {}
                            _ = &mut notified => {}
                        }
                    }
                    Err(None) => notified.await,
                }
            }
        });

        let (s, t) = (shared.clone(), tx.clone());
        let streamer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                {
                    let h = lock(&s.heard);
                    if h.ended || h.stopped.is_some() {
                        return;
                    }
                }
                let k = lock(&s.heard).frames;
                let sent = match frame(k) {
                    Some(audio) => t.send_media(&audio).await.is_ok(),
                    None => {
                        let _lost = t.encode_media(&[0xFF; 160]).await;
                        true
                    }
                };
                if !sent {
                    return;
                }
                s.update(|h| h.frames += 1);
            }
        });
        PlayingCaller {
            tx,
            shared,
            tasks: vec![receiver, echoer, streamer],
        }
    }

    /// Reads the state.
    pub fn heard<R>(&self, f: impl FnOnce(&Heard) -> R) -> R {
        f(&lock(&self.shared.heard))
    }

    /// Waits (up to `timeout`) until `check` holds; panics naming `what` otherwise.
    pub async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&Heard) -> Option<T>,
    ) -> T {
        wait_on(
            &self.shared.heard,
            &self.shared.notify,
            timeout,
            what,
            check,
        )
        .await
    }

    /// Waits for the relay's Close frame; returns its code and arrival time.
    pub async fn wait_closed(&self, timeout: Duration) -> (Option<u16>, Instant) {
        self.wait("the relay's Close", timeout, |h| {
            h.closed.or_else(|| {
                h.ended
                    .then(|| panic!("stream ended without a Close: {h:?}"))
            })
        })
        .await
    }

    /// Hangs up as Twilio does: `stop` (no more echoes or media after it).
    pub async fn stop(&self) {
        let at = Instant::now();
        self.shared.update(|h| h.stopped = Some(at));
        self.tx.send_stop().await.unwrap();
    }
}

// ---- the carrier's REST API ---------------------------------------------------------------

/// One request the REST mock received.
#[derive(Debug, Clone)]
pub struct RestRequest {
    /// When it arrived (its head).
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RestRequest {
    /// The form body, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct RestState {
    requests: Vec<RestRequest>,
    failure: Option<(u16, String)>,
}

/// A Twilio REST API mock; see the module docs.
pub struct RestMock {
    pub addr: SocketAddr,
    state: Arc<Mutex<RestState>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RestMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RestMock {
    pub async fn start() -> RestMock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RestState::default()));
        let notify = Arc::new(Notify::new());
        let (st, no) = (state.clone(), notify.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, no) = (st.clone(), no.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| rest_answer(req, st.clone(), no.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RestMock {
            addr,
            state,
            notify,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, for `twilio_api_base`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every later request with `status` and `body`.
    pub fn fail_with(&self, status: u16, body: &str) {
        lock(&self.state).failure = Some((status, body.to_owned()));
    }

    pub fn requests(&self) -> Vec<RestRequest> {
        lock(&self.state).requests.clone()
    }

    /// Waits until `n` requests arrived; returns them all.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<RestRequest> {
        wait_on(&self.state, &self.notify, timeout, "REST requests", |s| {
            (s.requests.len() >= n).then(|| s.requests.clone())
        })
        .await
    }
}

async fn rest_answer(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<RestState>>,
    notify: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let at = Instant::now();
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
    let (status, answer) = {
        let mut s = lock(&state);
        let sid = path
            .rsplit('/')
            .next()
            .and_then(|p| p.strip_suffix(".json"))
            .unwrap_or("CA")
            .to_owned();
        s.requests.push(RestRequest {
            at,
            method,
            path,
            headers,
            body,
        });
        match &s.failure {
            Some((status, body)) => (*status, body.clone()),
            None => (
                200,
                format!(r#"{{"sid":"{sid}","status":"in-progress","account_sid":"AC"}}"#),
            ),
        }
    };
    notify.notify_waiters();
    let mut r = Response::new(Full::new(Bytes::from(answer)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

// ---- the tool webhook ---------------------------------------------------------------------

/// A tool webhook answering tool `name` with a raw 200 JSON body; unknown names get 404.
pub struct RawWebhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawWebhook {
    pub async fn start(answers: &[(&str, &str)]) -> RawWebhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers: Arc<Vec<(String, String)>> = Arc::new(
            answers
                .iter()
                .map(|(n, b)| (n.to_string(), b.to_string()))
                .collect(),
        );
        let rec = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rec, answers) = (rec.clone(), answers.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (rec, answers) = (rec.clone(), answers.clone());
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let json: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let name = json["name"].as_str().unwrap_or("").to_owned();
                            lock(&rec).push(json);
                            let answer = answers.iter().find(|(n, _)| *n == name);
                            let mut r = Response::new(Full::new(Bytes::from(
                                answer.map(|a| a.1.clone()).unwrap_or_default(),
                            )));
                            if answer.is_none() {
                                *r.status_mut() = StatusCode::NOT_FOUND;
                            }
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RawWebhook {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/tools", self.addr)
    }

    /// The JSON bodies received, in order.
    pub fn received(&self) -> Vec<serde_json::Value> {
        lock(&self.received).clone()
    }
}

// ---- form posts -----------------------------------------------------------------------------

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs `params` form-encoded to `path_and_query` with `X-Twilio-Signature: signature`
/// when given (`Connection: close`).
pub async fn post_form(
    addr: SocketAddr,
    path_and_query: &str,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut req = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(s) = signature {
        req.push_str(&format!("X-Twilio-Signature: {s}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}
