//! Lean mock ElevenLabs agent for load runs (the harness's agent side).
//!
//! Speaks the same ElevenLabs Conversational AI dialect as [`crate::agent_sim`] (signed-URL
//! endpoint, conversation WebSocket, `conversation_initiation_client_data` →
//! `conversation_initiation_metadata` with `ulaw_8000` both ways, `user_audio_chunk` in,
//! `audio`/`interruption` out) but is built for thousands of frames per second and for the
//! harness's checks rather than for test inspection:
//!
//! - it knows the frame tags ([`crate::tag`]): each received frame is checked at once for
//!   cross-talk (call index), loss/duplication/reorder (sequence) and byte-exactness, and its
//!   one-way latency *caller send → agent receive* is recorded on the harness clock;
//! - [`AgentMode::Echo`] echoes every frame immediately, re-tagged with the agent's send time
//!   (bytes 16..24) so the caller can time the *agent → caller* direction too;
//! - [`AgentMode::Conversation`] answers each caller turn with the agent fixture after a think
//!   time, in chunks faster than real time, and optionally handles barge-in: when the caller
//!   starts the next turn while the reply is still being sent, it sends `interruption` (and
//!   records when, for the barge-in latency) and stops the reply.
//!
//! Per-call results go into the [`AgentRun`] the harness installs with
//! [`BenchAgent::set_run`]; the call is identified by the `lt_call` dynamic variable (the
//! relay forwards the Twilio `customParameters` as dynamic variables).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::agent_sim::{CONVERSATION_PATH, SIGNED_URL_PATH};
use crate::tag::{self, FramePlan, FrameTag};
use crate::ws::{self, WsMessage, WsWriter};

/// Name of the custom parameter / dynamic variable carrying the call index.
pub const CALL_PARAM: &str = "lt_call";

/// Scripted agent turn-taking for conversation mode.
#[derive(Debug, Clone)]
pub struct ConversationScript {
    /// Agent speech (μ-law) sent once per caller turn.
    pub reply: Arc<Vec<u8>>,
    /// Delay between the caller's last speech frame arriving and the first reply chunk.
    pub think_time: Duration,
    /// Bytes per `audio` event (1600 = 200 ms of audio).
    pub chunk_bytes: usize,
    /// Time between `audio` events (faster than real time, as TTS is).
    pub chunk_interval: Duration,
    /// Interrupt the reply when the caller starts the next turn while it is still being sent.
    pub barge_in: bool,
}

/// What the mock does with caller audio.
#[derive(Debug, Clone)]
pub enum AgentMode {
    /// Echo each frame at once, re-tagged with the agent send time.
    Echo,
    /// Answer each caller turn (see [`ConversationScript`]).
    Conversation(ConversationScript),
}

/// Per-call counters kept by the agent side (what the mock received from the relay).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentCallStats {
    /// `user_audio_chunk` messages received.
    pub frames: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Frames whose sequence number was already received.
    pub duplicates: u64,
    /// Frames arriving with a sequence number lower than one already received.
    pub reordered: u64,
    /// Frames tagged with another call's index.
    pub cross_talk: u64,
    /// Frames whose bytes differ from what the caller sent (or of the wrong length).
    pub corrupt: u64,
    /// Frames echoed back (echo mode).
    pub echoed: u64,
    /// Reply turns started (conversation mode).
    pub replies: u64,
    /// Interruptions sent (barge-in).
    pub interruptions: u64,
    /// Messages the mock could not make sense of (bad JSON, bad base64, binary frames).
    pub protocol_errors: u64,
}

impl AgentCallStats {
    fn add(&mut self, o: &AgentCallStats) {
        self.frames += o.frames;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.cross_talk += o.cross_talk;
        self.corrupt += o.corrupt;
        self.echoed += o.echoed;
        self.replies += o.replies;
        self.interruptions += o.interruptions;
        self.protocol_errors += o.protocol_errors;
    }
}

/// Per-call slot shared between the harness's caller and the mock agent.
#[derive(Default)]
pub struct AgentSlot {
    /// When the mock received `conversation_initiation_client_data` (ns since epoch; 0 = not yet).
    pub init_ns: AtomicU64,
    /// When the mock last sent `interruption` (ns since epoch; 0 = never).
    pub interrupt_ns: AtomicU64,
    /// Final counters, written when the conversation ends.
    pub stats: Mutex<Option<AgentCallStats>>,
    /// Frames echoed so far (echo mode; the caller-side loss reference).
    pub echoed: AtomicU64,
}

/// One load run's shared agent-side state.
pub struct AgentRun {
    /// The harness clock's zero.
    pub epoch: Instant,
    /// What callers send under their tags.
    pub plan: FramePlan,
    /// Echo or conversation.
    pub mode: AgentMode,
    /// Latencies are recorded for frames whose caller send time (ns since epoch) lies in
    /// this window (the steady window).
    pub window_ns: (u64, u64),
    /// Per-call slots, indexed by call index.
    pub slots: Vec<AgentSlot>,
    /// One-way latency caller send → agent receive (ns) of frames in the window.
    pub caller_to_agent: Mutex<Histogram<u64>>,
    /// Frames received by the mock in this run (all calls).
    pub frames_rx: AtomicU64,
    /// Conversations that ended (stats written).
    pub conversations_done: AtomicUsize,
    /// Conversations that never identified themselves (no/invalid `lt_call`).
    pub unidentified: AtomicUsize,
}

impl AgentRun {
    /// A fresh run for `calls` calls.
    pub fn new(
        epoch: Instant,
        plan: FramePlan,
        mode: AgentMode,
        window_ns: (u64, u64),
        calls: usize,
    ) -> Self {
        AgentRun {
            epoch,
            plan,
            mode,
            window_ns,
            slots: (0..calls).map(|_| AgentSlot::default()).collect(),
            caller_to_agent: Mutex::new(new_histogram()),
            frames_rx: AtomicU64::new(0),
            conversations_done: AtomicUsize::new(0),
            unidentified: AtomicUsize::new(0),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Sum of every finished conversation's counters.
    pub fn totals(&self) -> AgentCallStats {
        let mut t = AgentCallStats::default();
        for s in &self.slots {
            if let Some(st) = &*s.stats.lock().unwrap_or_else(|p| p.into_inner()) {
                t.add(st);
            }
        }
        t
    }
}

/// A latency histogram in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The running mock agent server. Dropping it stops accepting connections.
pub struct BenchAgent {
    addr: SocketAddr,
    run: Arc<RwLock<Option<Arc<AgentRun>>>>,
    accept: JoinHandle<()>,
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl BenchAgent {
    /// Starts the mock on `listen` (e.g. `127.0.0.1:0`).
    pub async fn start(listen: &str) -> anyhow::Result<BenchAgent> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let run: Arc<RwLock<Option<Arc<AgentRun>>>> = Arc::new(RwLock::new(None));
        let run2 = run.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let run = run2.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let run = run.clone();
                        async move { Ok::<_, Infallible>(route(addr, run, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(BenchAgent { addr, run, accept })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the value for the relay's `--elevenlabs-api-base`.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Installs the state of the next run (conversations opened afterwards use it).
    pub fn set_run(&self, run: Arc<AgentRun>) {
        *self.run.write().unwrap_or_else(|p| p.into_inner()) = Some(run);
    }
}

fn response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn route(
    addr: SocketAddr,
    run: Arc<RwLock<Option<Arc<AgentRun>>>>,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match path.as_str() {
        SIGNED_URL_PATH => response(
            StatusCode::OK,
            serde_json::json!({
                "signed_url": format!("ws://{addr}{CONVERSATION_PATH}?{query}&conversation_signature=x")
            })
            .to_string(),
        ),
        CONVERSATION_PATH if fastwebsockets::upgrade::is_upgrade_request(&req) => {
            let Some(run) = run.read().unwrap_or_else(|p| p.into_inner()).clone() else {
                return response(StatusCode::SERVICE_UNAVAILABLE, "no run".into());
            };
            let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
                Ok(x) => x,
                Err(e) => return response(StatusCode::BAD_REQUEST, e.to_string()),
            };
            tokio::spawn(async move {
                if let Ok(ws) = fut.await {
                    conversation(run, ws).await;
                }
            });
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, Full::new(Bytes::new()))
        }
        _ => response(StatusCode::NOT_FOUND, "not found".into()),
    }
}

/// Reply state shared by a conversation's reader and its reply task.
#[derive(Default)]
struct ReplyState {
    /// A reply is being sent.
    active: bool,
    /// The current reply was interrupted; send no more of it.
    interrupted: bool,
    /// `event_id` of the last audio event sent.
    last_id: i64,
}

/// Frame-level bookkeeping for one conversation.
struct FrameCheck {
    call: u32,
    seen: Vec<u8>,
    max_seq: Option<u32>,
    stats: AgentCallStats,
}

impl FrameCheck {
    /// Checks one received frame; returns its tag if it is this call's.
    fn check(&mut self, run: &AgentRun, frame: &[u8], now_ns: u64) -> Option<FrameTag> {
        self.stats.frames += 1;
        let Some(tag) = FrameTag::read(frame) else {
            self.stats.corrupt += 1;
            return None;
        };
        if tag.call != self.call {
            self.stats.cross_talk += 1;
            return None;
        }
        if !run.plan.matches(frame, tag.seq, None) {
            self.stats.corrupt += 1;
        }
        let i = tag.seq as usize;
        if i >= self.seen.len() {
            self.seen.resize(i + 1, 0);
        }
        self.seen[i] = self.seen[i].saturating_add(1);
        if self.seen[i] > 1 {
            self.stats.duplicates += 1;
        } else {
            self.stats.unique += 1;
        }
        match self.max_seq {
            Some(m) if tag.seq < m => self.stats.reordered += 1,
            _ => self.max_seq = Some(tag.seq),
        }
        if tag.sent_ns >= run.window_ns.0 && tag.sent_ns <= run.window_ns.1 {
            let lat = now_ns.saturating_sub(tag.sent_ns).max(1);
            let _ = run
                .caller_to_agent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(lat);
        }
        Some(tag)
    }
}

fn audio_event(audio: &[u8], event_id: i64) -> String {
    let mut s = String::with_capacity(80 + audio.len() * 4 / 3);
    s.push_str(r#"{"type":"audio","audio_event":{"audio_base_64":""#);
    B64.encode_string(audio, &mut s);
    s.push_str(r#"","event_id":"#);
    s.push_str(&event_id.to_string());
    s.push_str("}}");
    s
}

/// Runs one conversation until the relay closes it.
async fn conversation(run: Arc<AgentRun>, ws: fastwebsockets::WebSocket<ws::Stream>) {
    let (mut reader, writer) = ws::split(ws);
    // First message: conversation_initiation_client_data carrying the call index.
    let call = loop {
        match reader.next().await {
            Ok(WsMessage::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v.get("type").and_then(Value::as_str)
                    != Some("conversation_initiation_client_data")
                {
                    run.unidentified.fetch_add(1, Ordering::Relaxed);
                    writer.release().await;
                    return;
                }
                let idx = v
                    .pointer(&format!("/dynamic_variables/{CALL_PARAM}"))
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&i| i < run.slots.len());
                match idx {
                    Some(i) => break i,
                    None => {
                        run.unidentified.fetch_add(1, Ordering::Relaxed);
                        writer.release().await;
                        return;
                    }
                }
            }
            Ok(WsMessage::Binary(_)) => continue,
            _ => {
                run.unidentified.fetch_add(1, Ordering::Relaxed);
                writer.release().await;
                return;
            }
        }
    };
    let slot = &run.slots[call];
    slot.init_ns.store(run.now_ns(), Ordering::Relaxed);
    let meta = serde_json::json!({
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": format!("conv_{call}"),
            "agent_output_audio_format": "ulaw_8000",
            "user_input_audio_format": "ulaw_8000",
        }
    });
    let _ = writer.send_text(meta.to_string()).await;

    let mut check = FrameCheck {
        call: call as u32,
        seen: Vec::with_capacity(2048),
        max_seq: None,
        stats: AgentCallStats::default(),
    };
    let reply_state = Arc::new(tokio::sync::Mutex::new(ReplyState::default()));
    let next_id = Arc::new(AtomicI64::new(1));
    let closed = Arc::new(AtomicBool::new(false));
    let mut reply_task: Option<JoinHandle<()>> = None;
    let mut buf = Vec::with_capacity(256);
    const PREFIX: &str = r#"{"user_audio_chunk":""#;
    loop {
        let text = match reader.next().await {
            Ok(WsMessage::Text(t)) => t,
            Ok(WsMessage::Binary(_)) => {
                check.stats.protocol_errors += 1;
                continue;
            }
            _ => break,
        };
        let now = run.now_ns();
        let b64 = if text.starts_with(PREFIX) && text.ends_with("\"}") {
            &text[PREFIX.len()..text.len() - 2]
        } else {
            // pong or another control message: nothing to do for load runs.
            if serde_json::from_str::<Value>(&text).is_err() {
                check.stats.protocol_errors += 1;
            }
            continue;
        };
        buf.clear();
        if B64.decode_vec(b64, &mut buf).is_err() {
            check.stats.protocol_errors += 1;
            continue;
        }
        run.frames_rx.fetch_add(1, Ordering::Relaxed);
        let Some(tag) = check.check(&run, &buf, now) else {
            continue;
        };
        match &run.mode {
            AgentMode::Echo => {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                tag::write_agent_ts(&mut buf, run.now_ns());
                if writer.send_text(audio_event(&buf, id)).await.is_ok() {
                    check.stats.echoed += 1;
                    slot.echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
            AgentMode::Conversation(script) => {
                let Some(turns) = run.plan.turns else {
                    continue;
                };
                if script.barge_in && turns.is_speech_start(tag.seq) {
                    let mut st = reply_state.lock().await;
                    if st.active && !st.interrupted {
                        st.interrupted = true;
                        let e = st.last_id;
                        slot.interrupt_ns.store(run.now_ns(), Ordering::Relaxed);
                        let msg = format!(
                            r#"{{"type":"interruption","interruption_event":{{"event_id":{e}}}}}"#
                        );
                        let _ = writer.send_text(msg).await;
                        check.stats.interruptions += 1;
                    }
                }
                if turns.is_speech_end(tag.seq) {
                    check.stats.replies += 1;
                    if let Some(t) = reply_task.take() {
                        // The previous reply is finished or interrupted by now; never abort
                        // a task that may be mid-write: wait for it instead.
                        reply_state.lock().await.interrupted = true;
                        let _ = t.await;
                    }
                    {
                        let mut st = reply_state.lock().await;
                        st.active = true;
                        st.interrupted = false;
                    }
                    reply_task = Some(tokio::spawn(reply(
                        script.clone(),
                        writer.clone(),
                        reply_state.clone(),
                        next_id.clone(),
                        closed.clone(),
                    )));
                }
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    if let Some(t) = reply_task {
        let _ = t.await;
    }
    writer.release().await;
    *slot.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(check.stats);
    run.conversations_done.fetch_add(1, Ordering::Relaxed);
}

/// Sends one reply: think, then the reply audio in chunks, unless interrupted.
async fn reply(
    script: ConversationScript,
    writer: WsWriter,
    state: Arc<tokio::sync::Mutex<ReplyState>>,
    next_id: Arc<AtomicI64>,
    closed: Arc<AtomicBool>,
) {
    tokio::time::sleep(script.think_time).await;
    let mut ticker = tokio::time::interval(script.chunk_interval.max(Duration::from_micros(100)));
    for chunk in script.reply.chunks(script.chunk_bytes.max(1)) {
        ticker.tick().await;
        let mut st = state.lock().await;
        if st.interrupted || closed.load(Ordering::Relaxed) {
            break;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        st.last_id = id;
        if writer.send_text(audio_event(chunk, id)).await.is_err() {
            break;
        }
    }
    state.lock().await.active = false;
}
