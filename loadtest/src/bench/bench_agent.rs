//! Lean mock voice agent for load runs (the harness's agent side), in each dialect the relay
//! speaks ([`BenchDialect`]):
//!
//! - **ElevenLabs** as [`crate::peers::agent_sim`] (signed-URL endpoint, conversation WebSocket,
//!   `conversation_initiation_client_data` → `conversation_initiation_metadata` with
//!   `ulaw_8000` both ways, `user_audio_chunk` in, `audio`/`interruption` out);
//! - **AssemblyAI** as [`crate::peers::assemblyai_sim`] (`/v1/ws`, `Authorization: Bearer`,
//!   `session.update` → `session.ready`, `input.audio` in, `reply.started`/`reply.audio`/
//!   `reply.done` out, `input.speech.started`/`stopped` at the caller's turn edges, barge-in as
//!   `transcript.agent{interrupted:true}` + `reply.done{status:"interrupted"}`);
//! - **OpenAI Realtime** as [`crate::peers::openai_sim`] (`/v1/realtime?model=`, `Authorization:
//!   Bearer`, `session.created`, `session.update` → `session.updated`,
//!   `input_audio_buffer.append` in, `response.created`/`response.output_audio.delta`/
//!   `response.output_audio.done`/`response.done` out, `input_audio_buffer.speech_started`/
//!   `stopped` at the turn edges, barge-in as `speech_started` + `response.done{status:
//!   "cancelled"}`, `conversation.item.truncate` answered and checked against the audio sent).
//!
//! Unlike the test mocks it records nothing per message: it is built for thousands of frames
//! per second and for the harness's checks. It shares the HTTP skeleton of
//! [`crate::peers::mock_server`] (accept loop, upgrade, auth check), which is per connection; the
//! per-frame path (prefix match, base64, tag check, echo) is its own:
//!
//! - it knows the frame tags ([`crate::bench::tag`]): each received frame is checked at once for
//!   cross-talk (call index), loss/duplication/reorder (sequence) and byte-exactness, and its
//!   one-way latency *caller send → agent receive* is recorded on the harness clock;
//! - [`AgentMode::Echo`] echoes every frame immediately as one 160-byte agent-audio message,
//!   re-tagged with the agent's send time (bytes 32..48, see `tag`) so the caller can time the
//!   *agent → caller* direction too;
//! - [`AgentMode::Conversation`] answers each caller turn with the agent fixture after a think
//!   time, in chunks faster than real time, and optionally handles barge-in: when the caller
//!   starts the next turn while the reply is still being sent, it sends the dialect's barge-in
//!   signal (and records when, for the barge-in latency) and stops the reply.
//!
//! Per-call results go into the [`AgentRun`] the harness installs with
//! [`BenchAgent::set_run`]. The call is identified by `lt_call=<index>`: for ElevenLabs in
//! the `lt_call` dynamic variable (the relay forwards the Twilio `customParameters` as dynamic
//! variables); for AssemblyAI and OpenAI, which have no variables, in the call's `prompt`
//! parameter, which the relay sends as `session.system_prompt` / `session.instructions` (the
//! harness sets it, see [`call_prompt`]).
//!
//! In a fault run ([`crate::bench::faults`]) the mock also kills agent sockets on the
//! harness's schedule (Close 1011 or a TCP reset) and takes the relay's reconnects in its
//! stride: AssemblyAI's `session.resume` (naming the `sess_<call>` id the mock gave out) is
//! answered with `session.ready`, ElevenLabs' `contextual_update` and OpenAI's
//! `conversation.item.create` are counted, not errors, and a call's frame check carries
//! over from one conversation to the next.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hdrhistogram::Histogram;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::bench::faults::{AgentFaults, KillMode, KILL_CLOSE_CODE};
use crate::bench::procs::RelayAgent;
use crate::bench::tag::{self, FramePlan, FrameTag};
use crate::peers::agent_sim::{CONVERSATION_PATH, SIGNED_URL_PATH};
use crate::peers::mock_server::{
    accept_websocket, bearer_matches, detail_response, json_response, ConnFd, Resp,
};
use crate::ws::{self, WsMessage, WsWriter};
use crate::MULAW_FRAME_BYTES;

/// Name of the custom parameter / dynamic variable carrying the call index.
pub const CALL_PARAM: &str = "lt_call";

/// The key and agent id the relay is given (defined beside [`RelayAgent`], which hands them to
/// the relay; re-exported here because the bench agent checks them).
pub use crate::bench::procs::{BENCH_AGENT_ID, BENCH_API_KEY};

/// OpenAI model named in the bench agent's Realtime URL.
pub const BENCH_OPENAI_MODEL: &str = "gpt-realtime";

/// Which agent API the bench agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchDialect {
    /// ElevenLabs Conversational AI.
    #[default]
    ElevenLabs,
    /// AssemblyAI Voice Agent API.
    AssemblyAi,
    /// OpenAI Realtime API (GA).
    OpenAi,
}

impl BenchDialect {
    /// Every dialect.
    pub const ALL: [BenchDialect; 3] = [
        BenchDialect::ElevenLabs,
        BenchDialect::AssemblyAi,
        BenchDialect::OpenAi,
    ];

    /// The relay's name for it (`--agent` value): `elevenlabs`, `assemblyai`, `openai`.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchDialect::ElevenLabs => "elevenlabs",
            BenchDialect::AssemblyAi => "assemblyai",
            BenchDialect::OpenAi => "openai",
        }
    }

    /// Type of the client's init message.
    fn init_type(self) -> &'static str {
        match self {
            BenchDialect::ElevenLabs => "conversation_initiation_client_data",
            BenchDialect::AssemblyAi | BenchDialect::OpenAi => "session.update",
        }
    }

    /// The canonical opening of a caller-audio message, up to the base64 (the relay's
    /// encoders write exactly this; anything else takes the parsing path).
    fn audio_prefix(self) -> &'static str {
        match self {
            BenchDialect::ElevenLabs => r#"{"user_audio_chunk":""#,
            BenchDialect::AssemblyAi => r#"{"type":"input.audio","audio":""#,
            BenchDialect::OpenAi => r#"{"type":"input_audio_buffer.append","audio":""#,
        }
    }
}

/// The call's `prompt` custom parameter that identifies call `index` to the bench agent in
/// the AssemblyAI and OpenAI dialects (`lt_call=<index>`).
pub fn call_prompt(index: usize) -> String {
    format!("{CALL_PARAM}={index}")
}

/// Parses the call index out of a prompt made by [`call_prompt`].
fn parse_call_prompt(prompt: &str) -> Option<usize> {
    let rest = &prompt[prompt.find(&format!("{CALL_PARAM}="))? + CALL_PARAM.len() + 1..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Scripted agent turn-taking for conversation mode.
#[derive(Debug, Clone)]
pub struct ConversationScript {
    /// Agent speech (μ-law) sent once per caller turn.
    pub reply: Arc<Vec<u8>>,
    /// Delay between the caller's last speech frame arriving and the first reply chunk.
    pub think_time: Duration,
    /// Bytes per agent-audio message (1600 = 200 ms of audio).
    pub chunk_bytes: usize,
    /// Time between agent-audio messages (faster than real time, as TTS is).
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

/// When the ElevenLabs mock sends its keepalive `ping`s (the relay must answer each with a
/// `pong`). Other dialects have no agent pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingSchedule {
    /// After every this many caller frames of a conversation (250 = every 5 s of audio), in
    /// line with the echo that follows the frame: the default.
    EveryFrames(u64),
    /// On a timer of its own per conversation, every this many milliseconds (1000: as the
    /// real service and the outside test of issue 19 do), independent of the audio, so a
    /// ping is a message of its own for the relay to read.
    IntervalMs(u64),
}

impl Default for PingSchedule {
    fn default() -> Self {
        PingSchedule::EveryFrames(PING_EVERY_FRAMES)
    }
}

/// Per-call counters kept by the agent side (what the mock received from the relay).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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
    /// `conversation.item.truncate` messages received (OpenAI dialect, after barge-ins).
    pub truncates: u64,
    /// Messages the mock could not make sense of (bad JSON, bad base64, binary frames), and
    /// dialect rule violations (OpenAI: a truncate past the audio sent for the item).
    pub protocol_errors: u64,
    /// `ping`s sent (ElevenLabs).
    #[serde(default)]
    pub pings: u64,
    /// `pong`s received that answered the ping awaiting one (ElevenLabs).
    #[serde(default)]
    pub pongs: u64,
}

impl AgentCallStats {
    /// Adds `o`'s counters to these.
    pub fn add(&mut self, o: &AgentCallStats) {
        self.frames += o.frames;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.cross_talk += o.cross_talk;
        self.corrupt += o.corrupt;
        self.echoed += o.echoed;
        self.replies += o.replies;
        self.interruptions += o.interruptions;
        self.truncates += o.truncates;
        self.protocol_errors += o.protocol_errors;
        self.pings += o.pings;
        self.pongs += o.pongs;
    }
}

/// Per-call slot shared between the harness's caller and the mock agent.
#[derive(Default)]
pub struct AgentSlot {
    /// When the mock received the session's init message (ElevenLabs
    /// `conversation_initiation_client_data`, AssemblyAI/OpenAI `session.update`; ns since
    /// epoch; 0 = not yet).
    pub init_ns: AtomicU64,
    /// When the mock last sent its barge-in signal (ElevenLabs `interruption`, AssemblyAI
    /// `reply.done{status:"interrupted"}`, OpenAI `input_audio_buffer.speech_started`; ns
    /// since epoch; 0 = never).
    pub interrupt_ns: AtomicU64,
    /// Final counters, written when the conversation ends.
    pub stats: Mutex<Option<AgentCallStats>>,
    /// Frames echoed so far (echo mode; the caller-side loss reference).
    pub echoed: AtomicU64,
    /// A fault run's frame check of the call, kept across its conversations.
    check: tokio::sync::Mutex<Option<FrameCheck>>,
    /// A fault run's kill state of the call.
    pub(crate) fault: FaultSlot,
}

/// One call's kill state in a fault run ([`crate::bench::faults`]).
#[derive(Default)]
pub(crate) struct FaultSlot {
    /// The call's live conversation, if any (what a kill marks).
    conn: Mutex<Option<LiveConn>>,
    /// The newest kill of the call, ns since the epoch (0: none).
    pub(crate) last_kill_ns: AtomicU64,
    /// Every kill of the call.
    kills: Mutex<Vec<u64>>,
    /// When each of its conversations began (the init message read).
    conv_starts: Mutex<Vec<u64>>,
}

/// A live conversation as its killer sees it.
#[derive(Clone)]
struct LiveConn {
    /// Set by the killer; the conversation acts on it at its next message.
    killed: Arc<AtomicBool>,
    /// Wakes the conversation at once (reset mode).
    reset: Arc<tokio::sync::Notify>,
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
    /// Conversations that identified their call (a call has more than one when the relay
    /// reconnects).
    pub conversations_started: AtomicUsize,
    /// Conversations that never identified themselves (no/invalid `lt_call`).
    pub unidentified: AtomicUsize,
    /// When the ElevenLabs mock pings (see [`AgentRun::with_ping`]).
    pub ping: PingSchedule,
    /// Agent-socket faults of the run, if any ([`crate::bench::faults`]).
    pub(crate) faults: Option<Arc<AgentFaults>>,
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
            conversations_started: AtomicUsize::new(0),
            unidentified: AtomicUsize::new(0),
            ping: PingSchedule::default(),
            faults: None,
        }
    }

    /// The same run with agent-socket faults (kills made by [`AgentRun::kill`]).
    pub(crate) fn with_faults(mut self, faults: Arc<AgentFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Kills call `call`'s live agent socket (fault runs): marks it, and the conversation
    /// closes it (see [`crate::bench::faults::KillMode`]) at once. False, and counted as
    /// skipped, if the call has no live socket now.
    pub(crate) fn kill(&self, call: usize) -> bool {
        let Some(f) = &self.faults else {
            return false;
        };
        let Some(slot) = self.slots.get(call) else {
            return false;
        };
        let conn = lock(&slot.fault.conn).clone();
        match conn {
            Some(c) if !c.killed.swap(true, Ordering::Relaxed) => {
                c.reset.notify_one();
                true
            }
            _ => {
                f.kills_skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Receive counts of call `call`'s frames by sequence number, over all its
    /// conversations (fault runs; empty otherwise or while a conversation runs).
    pub(crate) fn agent_seen(&self, call: usize) -> Vec<u8> {
        self.slots
            .get(call)
            .and_then(|s| s.check.try_lock().ok())
            .and_then(|c| c.as_ref().map(|c| c.seen.clone()))
            .unwrap_or_default()
    }

    /// When call `call`'s agent socket was killed (fault runs).
    pub(crate) fn kill_times(&self, call: usize) -> Vec<u64> {
        self.slots
            .get(call)
            .map(|s| lock(&s.fault.kills).clone())
            .unwrap_or_default()
    }

    /// When each conversation of call `call` began (fault runs).
    pub(crate) fn conversation_starts(&self, call: usize) -> Vec<u64> {
        self.slots
            .get(call)
            .map(|s| lock(&s.fault.conv_starts).clone())
            .unwrap_or_default()
    }

    /// The same run with the ElevenLabs mock pinging on `ping` instead of every 250 frames.
    pub fn with_ping(mut self, ping: PingSchedule) -> Self {
        self.ping = ping;
        self
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
    dialect: BenchDialect,
    run: Arc<RwLock<Option<Arc<AgentRun>>>>,
    accept: JoinHandle<()>,
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl BenchAgent {
    /// Starts an ElevenLabs mock on `listen` (e.g. `127.0.0.1:0`).
    pub async fn start(listen: &str) -> anyhow::Result<BenchAgent> {
        Self::start_dialect(listen, BenchDialect::ElevenLabs).await
    }

    /// Starts a mock of `dialect` on `listen` (e.g. `127.0.0.1:0`).
    pub async fn start_dialect(listen: &str, dialect: BenchDialect) -> anyhow::Result<BenchAgent> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let run: Arc<RwLock<Option<Arc<AgentRun>>>> = Arc::new(RwLock::new(None));
        let run2 = run.clone();
        let accept = crate::peers::mock_server::spawn_http_server(listener, move |req| {
            route(addr, dialect, &run2, req)
        });
        Ok(BenchAgent {
            addr,
            dialect,
            run,
            accept,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> BenchDialect {
        self.dialect
    }

    /// `http://ADDR`, the value for the relay's `--elevenlabs-api-base` (ElevenLabs).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The agent WebSocket URL: ElevenLabs `ws://ADDR/v1/convai/conversation?agent_id=
    /// loadtest`, AssemblyAI `ws://ADDR/v1/ws` (`--assemblyai-url`), OpenAI
    /// `ws://ADDR/v1/realtime?model=gpt-realtime` (`--openai-realtime-url`).
    pub fn ws_url(&self) -> String {
        agent_ws_url(self.addr, self.dialect)
    }

    /// How to point a relay at this agent (see [`crate::bench::procs::spawn_relay_with`]).
    pub fn relay_agent(&self) -> RelayAgent {
        relay_agent_for(self.addr, self.dialect)
    }

    /// Installs the state of the next run (conversations opened afterwards use it).
    pub fn set_run(&self, run: Arc<AgentRun>) {
        *self.run.write().unwrap_or_else(|p| p.into_inner()) = Some(run);
    }
}

/// The agent WebSocket URL of a bench agent of `dialect` on `addr` (see
/// [`BenchAgent::ws_url`]).
pub fn agent_ws_url(addr: SocketAddr, dialect: BenchDialect) -> String {
    match dialect {
        BenchDialect::ElevenLabs => {
            format!("ws://{addr}{CONVERSATION_PATH}?agent_id={BENCH_AGENT_ID}")
        }
        BenchDialect::AssemblyAi => {
            format!("ws://{addr}{}", crate::peers::assemblyai_sim::WS_PATH)
        }
        BenchDialect::OpenAi => format!(
            "ws://{addr}{}?model={BENCH_OPENAI_MODEL}",
            crate::peers::openai_sim::WS_PATH
        ),
    }
}

/// How to point a relay at a bench agent of `dialect` on `addr` (see
/// [`BenchAgent::relay_agent`]).
pub fn relay_agent_for(addr: SocketAddr, dialect: BenchDialect) -> RelayAgent {
    match dialect {
        BenchDialect::ElevenLabs => RelayAgent::ElevenLabs {
            api_base: format!("http://{addr}"),
        },
        BenchDialect::AssemblyAi => RelayAgent::AssemblyAi {
            url: agent_ws_url(addr, dialect),
        },
        BenchDialect::OpenAi => RelayAgent::OpenAi {
            url: agent_ws_url(addr, dialect),
        },
    }
}

fn route(
    addr: SocketAddr,
    dialect: BenchDialect,
    run: &RwLock<Option<Arc<AgentRun>>>,
    req: Request<Incoming>,
) -> Resp {
    let path = req.uri().path();
    let ws_path = match dialect {
        BenchDialect::ElevenLabs => CONVERSATION_PATH,
        BenchDialect::AssemblyAi => crate::peers::assemblyai_sim::WS_PATH,
        BenchDialect::OpenAi => crate::peers::openai_sim::WS_PATH,
    };
    if dialect == BenchDialect::ElevenLabs && path == SIGNED_URL_PATH {
        let query = req.uri().query().unwrap_or("");
        return json_response(
            StatusCode::OK,
            json!({
                "signed_url": format!("ws://{addr}{CONVERSATION_PATH}?{query}&conversation_signature=x")
            })
            .to_string(),
        );
    }
    if path != ws_path {
        return detail_response(StatusCode::NOT_FOUND, "not found");
    }
    if dialect != BenchDialect::ElevenLabs && !bearer_matches(&req, BENCH_API_KEY) {
        return detail_response(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let Some(run) = run.read().unwrap_or_else(|p| p.into_inner()).clone() else {
        return detail_response(StatusCode::SERVICE_UNAVAILABLE, "no run");
    };
    let fd = req.extensions().get::<ConnFd>().map(|f| f.0);
    accept_websocket(req, move |ws| conversation(run, dialect, ws, fd))
}

/// Reply state shared by a conversation's reader and its reply task.
#[derive(Default)]
struct ReplyState {
    /// A reply is being sent.
    active: bool,
    /// The current reply was interrupted; send no more of it.
    interrupted: bool,
    /// Next ElevenLabs `event_id`.
    next_id: i64,
    /// ElevenLabs: `event_id` of the last audio event sent.
    last_id: i64,
    /// Replies begun (AssemblyAI `reply_<n>`, OpenAI `resp_<n>` / `item_<n>`).
    reply_no: u64,
    /// OpenAI: bytes of audio sent per reply item `(n, bytes)`, the last few.
    item_bytes: Vec<(u64, usize)>,
}

/// Reply items whose audio byte count is kept for truncate checks.
const TRACKED_ITEMS: usize = 4;

/// Frame-level bookkeeping for one conversation (in a fault run: for one call, over its
/// conversations).
struct FrameCheck {
    call: u32,
    seen: Vec<u8>,
    max_seq: Option<u32>,
    stats: AgentCallStats,
    /// Conversations that ended with this check.
    conversations: u32,
}

impl FrameCheck {
    fn new(call: usize) -> Self {
        FrameCheck {
            call: call as u32,
            seen: Vec::with_capacity(2048),
            max_seq: None,
            stats: AgentCallStats::default(),
            conversations: 0,
        }
    }

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
            if let Some(f) = run
                .faults
                .as_ref()
                .filter(|f| !f.is_affected(tag.call as usize))
            {
                let _ = lock(&f.c2a_unaffected).record(lat);
            }
        }
        Some(tag)
    }
}

/// Item id of the echoed audio (OpenAI).
const ECHO_ITEM: &str = "item_echo";

/// One agent-audio message: ElevenLabs `audio` (with `event_id` `id`), AssemblyAI
/// `reply.audio`, OpenAI `response.output_audio.delta` of item `item_<item>` (or
/// [`ECHO_ITEM`] for `item` 0).
fn audio_message(dialect: BenchDialect, audio: &[u8], id: i64, item: u64) -> String {
    let mut s = String::with_capacity(120 + audio.len() * 4 / 3);
    match dialect {
        BenchDialect::ElevenLabs => {
            s.push_str(r#"{"type":"audio","audio_event":{"audio_base_64":""#);
            B64.encode_string(audio, &mut s);
            s.push_str(r#"","event_id":"#);
            s.push_str(&id.to_string());
            s.push_str("}}");
        }
        BenchDialect::AssemblyAi => {
            s.push_str(r#"{"type":"reply.audio","data":""#);
            B64.encode_string(audio, &mut s);
            s.push_str(r#""}"#);
        }
        BenchDialect::OpenAi => {
            s.push_str(r#"{"type":"response.output_audio.delta","item_id":""#);
            if item == 0 {
                s.push_str(ECHO_ITEM);
            } else {
                s.push_str("item_");
                s.push_str(&item.to_string());
            }
            s.push_str(r#"","delta":""#);
            B64.encode_string(audio, &mut s);
            s.push_str(r#""}"#);
        }
    }
    s
}

/// The session's answer to the init message: ElevenLabs `conversation_initiation_metadata`,
/// AssemblyAI `session.ready`, OpenAI `session.updated` echoing the requested session.
fn ready_message(dialect: BenchDialect, call: usize, init: &Value) -> String {
    match dialect {
        BenchDialect::ElevenLabs => json!({
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": format!("conv_{call}"),
                "agent_output_audio_format": "ulaw_8000",
                "user_input_audio_format": "ulaw_8000",
            }
        }),
        BenchDialect::AssemblyAi => {
            json!({"type": "session.ready", "session_id": format!("sess_{call}")})
        }
        BenchDialect::OpenAi => {
            let mut session = init.get("session").cloned().unwrap_or_else(|| json!({}));
            if session.is_object() {
                session["id"] = json!(format!("sess_{call}"));
            }
            json!({"type": "session.updated", "session": session})
        }
    }
    .to_string()
}

/// The call index carried by a valid init message.
fn call_index(dialect: BenchDialect, init: &Value) -> Option<usize> {
    match dialect {
        BenchDialect::ElevenLabs => init
            .pointer(&format!("/dynamic_variables/{CALL_PARAM}"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<usize>().ok()),
        BenchDialect::AssemblyAi => init
            .pointer("/session/system_prompt")
            .and_then(Value::as_str)
            .and_then(parse_call_prompt),
        BenchDialect::OpenAi => init
            .pointer("/session/instructions")
            .and_then(Value::as_str)
            .and_then(parse_call_prompt),
    }
}

/// What the caller's speech start means in `dialect` (`cut`: the reply is barged in on).
fn speech_start_messages(
    dialect: BenchDialect,
    st: &ReplyState,
    cut: bool,
    heard_ms: u64,
) -> Vec<String> {
    match dialect {
        BenchDialect::ElevenLabs if cut => vec![format!(
            r#"{{"type":"interruption","interruption_event":{{"event_id":{}}}}}"#,
            st.last_id
        )],
        BenchDialect::ElevenLabs => Vec::new(),
        BenchDialect::AssemblyAi => {
            let mut v = vec![r#"{"type":"input.speech.started"}"#.to_owned()];
            if cut {
                v.push(format!(
                    r#"{{"type":"transcript.agent","text":"","reply_id":"reply_{}","interrupted":true}}"#,
                    st.reply_no
                ));
                v.push(r#"{"type":"reply.done","status":"interrupted"}"#.to_owned());
            }
            v
        }
        BenchDialect::OpenAi => {
            let mut v = vec![format!(
                r#"{{"type":"input_audio_buffer.speech_started","audio_start_ms":{heard_ms},"item_id":"item_user_{heard_ms}"}}"#
            )];
            if cut {
                v.push(format!(
                    r#"{{"type":"response.done","response":{{"id":"resp_{}","status":"cancelled"}}}}"#,
                    st.reply_no
                ));
            }
            v
        }
    }
}

/// What the caller's speech end means in `dialect`.
fn speech_end_messages(dialect: BenchDialect, heard_ms: u64) -> Vec<String> {
    match dialect {
        BenchDialect::ElevenLabs => Vec::new(),
        BenchDialect::AssemblyAi => vec![r#"{"type":"input.speech.stopped"}"#.to_owned()],
        BenchDialect::OpenAi => vec![format!(
            r#"{{"type":"input_audio_buffer.speech_stopped","audio_end_ms":{heard_ms}}}"#
        )],
    }
}

/// Opens reply `st.reply_no` (already bumped).
fn reply_begin_messages(dialect: BenchDialect, st: &ReplyState) -> Vec<String> {
    match dialect {
        BenchDialect::ElevenLabs => Vec::new(),
        BenchDialect::AssemblyAi => vec![format!(
            r#"{{"type":"reply.started","reply_id":"reply_{}"}}"#,
            st.reply_no
        )],
        BenchDialect::OpenAi => vec![format!(
            r#"{{"type":"response.created","response":{{"id":"resp_{}","status":"in_progress"}}}}"#,
            st.reply_no
        )],
    }
}

/// Closes reply `st.reply_no` after its last chunk.
fn reply_end_messages(dialect: BenchDialect, st: &ReplyState) -> Vec<String> {
    match dialect {
        BenchDialect::ElevenLabs => Vec::new(),
        BenchDialect::AssemblyAi => vec![
            format!(
                r#"{{"type":"transcript.agent","text":"","reply_id":"reply_{}","interrupted":false}}"#,
                st.reply_no
            ),
            r#"{"type":"reply.done","status":"completed"}"#.to_owned(),
        ],
        BenchDialect::OpenAi => vec![
            format!(
                r#"{{"type":"response.output_audio.done","item_id":"item_{}"}}"#,
                st.reply_no
            ),
            format!(
                r#"{{"type":"response.done","response":{{"id":"resp_{}","status":"completed"}}}}"#,
                st.reply_no
            ),
        ],
    }
}

/// Answers an OpenAI `conversation.item.truncate`: `conversation.item.truncated`, or `error`
/// (and `false`) when the item is unknown or `audio_end_ms` exceeds the audio sent for it.
fn answer_truncate(st: &ReplyState, v: &Value) -> (String, bool) {
    let item = v.get("item_id").and_then(Value::as_str).unwrap_or("");
    let end = v.get("audio_end_ms").and_then(Value::as_u64);
    let sent = item
        .strip_prefix("item_")
        .and_then(|n| n.parse::<u64>().ok())
        .and_then(|n| st.item_bytes.iter().find(|(i, _)| *i == n))
        .map(|(_, b)| *b);
    match (sent, end) {
        (Some(b), Some(end))
            if end.saturating_mul(crate::MULAW_BYTES_PER_MS as u64) <= b as u64 =>
        {
            (
                json!({"type": "conversation.item.truncated", "item_id": item,
                   "content_index": 0, "audio_end_ms": end})
                .to_string(),
                true,
            )
        }
        _ => (
            json!({"type": "error", "error": {"type": "invalid_request_error",
                   "code": "invalid_value",
                   "message": format!("cannot truncate {item} at {end:?} ms: {sent:?} bytes sent"),
                   "param": "audio_end_ms"}})
            .to_string(),
            false,
        ),
    }
}

/// ElevenLabs mock: a `ping` every this many caller frames (5 s of audio), as the real
/// service sends keepalives; the relay must answer each with a `pong` at once.
const PING_EVERY_FRAMES: u64 = 250;

/// ElevenLabs keepalive pings of one conversation: each `ping` carries the round-trip time
/// measured on the previous one in `ping_event.ping_ms` (null before the first pong), which
/// is what the relay reports as `relay_agent_ping_rtt_seconds`.
#[derive(Default)]
struct PingClock {
    next_id: i64,
    /// `event_id` and send time (ns) of the ping awaiting its pong.
    pending: Option<(i64, u64)>,
    last_rtt_ms: Option<u64>,
}

impl PingClock {
    /// The next `ping` message, sent at `now_ns`.
    fn ping(&mut self, now_ns: u64) -> String {
        self.next_id += 1;
        self.pending = Some((self.next_id, now_ns));
        json!({"type": "ping", "ping_event": {"event_id": self.next_id, "ping_ms": self.last_rtt_ms}})
            .to_string()
    }

    /// A `pong` arrived at `now_ns`: its RTT is reported with the next ping. True if it
    /// answered the ping awaiting one.
    fn pong(&mut self, v: &Value, now_ns: u64) -> bool {
        let id = v.get("event_id").and_then(Value::as_i64);
        if let Some((pending, sent)) = self.pending {
            if id == Some(pending) {
                self.last_rtt_ms = Some(now_ns.saturating_sub(sent) / 1_000_000);
                self.pending = None;
                return true;
            }
        }
        false
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a `ping` every `every` (the first one `every` after the conversation opened) until
/// `stop` resolves (its sender is dropped) or the connection fails.
async fn ping_loop(
    run: Arc<AgentRun>,
    writer: WsWriter,
    pings: Arc<Mutex<PingClock>>,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut stop => break,
        }
        let ping = lock(&pings).ping(run.now_ns());
        if writer.send_text(ping).await.is_err() {
            break;
        }
    }
}

/// The identity of a session-opening message: `(call index, resumed)`. AssemblyAI's
/// `session.resume` (a reconnect) names the session by the id the mock gave it
/// (`sess_<call>`).
fn opening_call(dialect: BenchDialect, v: &Value) -> Option<(usize, bool)> {
    let kind = v.get("type").and_then(Value::as_str);
    if kind == Some(dialect.init_type()) {
        return call_index(dialect, v).map(|i| (i, false));
    }
    if dialect == BenchDialect::AssemblyAi && kind == Some("session.resume") {
        return v
            .get("session_id")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("sess_"))
            .and_then(|n| n.parse().ok())
            .map(|i| (i, true));
    }
    None
}

/// Sets `SO_LINGER` 0 on the connection's socket (through a duplicate of its descriptor),
/// so that dropping the stream sends a TCP reset. Called only by the conversation that
/// holds the stream owning `fd`.
fn set_linger_zero(fd: Option<RawFd>) {
    let Some(fd) = fd else {
        tracing::warn!("no socket to reset: the connection closes normally");
        return;
    };
    // SAFETY: the caller holds the upgraded stream that owns `fd`, so it is open for the
    // duration of this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(dup) = borrowed.try_clone_to_owned() else {
        tracing::warn!("cannot duplicate the socket to reset it");
        return;
    };
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(dup));
    // Linger 0 does not block on close; the option belongs to the socket, so it holds for
    // the conversation's own descriptor too.
    #[allow(deprecated)]
    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
        tracing::warn!("cannot set SO_LINGER on the socket to reset it: {e}");
    }
}

/// How long a killed socket (close mode) is read for the relay's close.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// Runs one conversation until the relay closes it (or, in a fault run, until it is
/// killed: see [`crate::bench::faults`]).
async fn conversation(
    run: Arc<AgentRun>,
    dialect: BenchDialect,
    ws: fastwebsockets::WebSocket<ws::Stream>,
    fd: Option<RawFd>,
) {
    let (mut reader, writer) = ws::split(ws);
    if dialect == BenchDialect::OpenAi {
        let created = r#"{"type":"session.created","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcm","rate":24000}},"output":{"format":{"type":"audio/pcm","rate":24000}}}}}"#;
        let _ = writer.send_text(created.to_owned()).await;
    }
    // First message: the init message carrying the call index.
    let (call, resumed, init) = loop {
        match reader.next().await {
            Ok(WsMessage::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                match opening_call(dialect, &v).filter(|&(i, _)| i < run.slots.len()) {
                    Some((i, resumed)) => break (i, resumed, v),
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
    let faults = run.faults.clone();
    run.conversations_started.fetch_add(1, Ordering::Relaxed);
    // A fault run keeps the call's frame check across its conversations (the relay's
    // reconnects): the lock also orders a new conversation after a killed one.
    let mut kept = match &faults {
        Some(_) => Some(slot.check.lock().await),
        None => None,
    };
    let mut check = kept
        .as_mut()
        .and_then(|k| k.take())
        .unwrap_or_else(|| FrameCheck::new(call));
    if let Some(f) = &faults {
        if check.conversations > 0 {
            f.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if resumed {
            f.resumes.fetch_add(1, Ordering::Relaxed);
        }
        // Call setup is the first conversation's.
        let _ =
            slot.init_ns
                .compare_exchange(0, run.now_ns(), Ordering::Relaxed, Ordering::Relaxed);
    } else {
        slot.init_ns.store(run.now_ns(), Ordering::Relaxed);
    }
    let _ = writer.send_text(ready_message(dialect, call, &init)).await;
    drop(init);
    // The socket can be killed from now on.
    let live = faults.as_ref().map(|_| {
        let l = LiveConn {
            killed: Arc::new(AtomicBool::new(false)),
            reset: Arc::new(tokio::sync::Notify::new()),
        };
        lock(&slot.fault.conv_starts).push(run.now_ns());
        *lock(&slot.fault.conn) = Some(l.clone());
        l
    });
    let reset_mode = faults.as_ref().is_some_and(|f| f.mode == KillMode::Reset);

    let reply_state = Arc::new(tokio::sync::Mutex::new(ReplyState {
        next_id: 1,
        ..ReplyState::default()
    }));
    let mut echo_id: i64 = 1;
    let closed = Arc::new(AtomicBool::new(false));
    let mut reply_task: Option<JoinHandle<()>> = None;
    let mut buf = Vec::with_capacity(256);
    let prefix = dialect.audio_prefix();
    let pings = Arc::new(Mutex::new(PingClock::default()));
    let mut frames_in_call: u64 = 0;
    // Timed pings (ElevenLabs): a task of their own, stopped (never aborted: it may be
    // mid-write) when the conversation ends.
    let (ping_stop, ping_stopped) = tokio::sync::oneshot::channel::<()>();
    let ping_task = match (dialect, run.ping) {
        (BenchDialect::ElevenLabs, PingSchedule::IntervalMs(ms)) if ms > 0 => {
            Some(tokio::spawn(ping_loop(
                run.clone(),
                writer.clone(),
                pings.clone(),
                Duration::from_millis(ms),
                ping_stopped,
            )))
        }
        _ => None,
    };
    let every_frames = match run.ping {
        PingSchedule::EveryFrames(n) if dialect == BenchDialect::ElevenLabs => n,
        _ => 0,
    };
    let mut pongs: u64 = 0;
    let mut killed = false;
    loop {
        let next = match &live {
            // A reset may cut a read short: the connection is dropped right after.
            Some(l) if reset_mode => tokio::select! {
                biased;
                _ = l.reset.notified() => None,
                m = reader.next() => Some(m),
            },
            _ => Some(reader.next().await),
        };
        if live
            .as_ref()
            .is_some_and(|l| l.killed.load(Ordering::Relaxed))
        {
            // Killed (the killer only marks the socket): this task is the only one that
            // echoes, so every echo so far carries an agent time before the kill's, and
            // none follows it.
            killed = true;
            let now = run.now_ns();
            slot.fault.last_kill_ns.store(now, Ordering::Relaxed);
            lock(&slot.fault.kills).push(now);
            if let Some(f) = &faults {
                f.kills_done.fetch_add(1, Ordering::Relaxed);
                if let Some(Ok(WsMessage::Text(_))) = &next {
                    f.drained_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !reset_mode {
                let _ = writer
                    .send_close(KILL_CLOSE_CODE, "bench: agent socket killed")
                    .await;
            }
            break;
        }
        let text = match next {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Binary(_))) => {
                check.stats.protocol_errors += 1;
                continue;
            }
            _ => break,
        };
        let now = run.now_ns();
        let b64: Cow<'_, str> = if text.starts_with(prefix) && text.ends_with("\"}") {
            Cow::Borrowed(&text[prefix.len()..text.len() - 2])
        } else {
            // A control message, or audio in a non-canonical shape.
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                check.stats.protocol_errors += 1;
                continue;
            };
            let kind = v.get("type").and_then(Value::as_str);
            match (dialect, kind) {
                (BenchDialect::AssemblyAi, Some("input.audio"))
                | (BenchDialect::OpenAi, Some("input_audio_buffer.append")) => {
                    match v.get("audio").and_then(Value::as_str) {
                        Some(a) => Cow::Owned(a.to_owned()),
                        None => {
                            check.stats.protocol_errors += 1;
                            continue;
                        }
                    }
                }
                (BenchDialect::OpenAi, Some("conversation.item.truncate")) => {
                    check.stats.truncates += 1;
                    let st = reply_state.lock().await;
                    let (answer, ok) = answer_truncate(&st, &v);
                    if !ok {
                        check.stats.protocol_errors += 1;
                    }
                    let _ = writer.send_text(answer).await;
                    continue;
                }
                (BenchDialect::ElevenLabs, Some("pong")) => {
                    if lock(&pings).pong(&v, now) {
                        pongs += 1;
                    }
                    continue;
                }
                // Tool results, a reconnect's seed (ElevenLabs `contextual_update`, OpenAI
                // `conversation.item.create`), …: nothing to do for load runs.
                _ => {
                    if let Some(f) = &faults {
                        let n = match kind {
                            Some("contextual_update") => &f.context_updates,
                            Some("conversation.item.create") => &f.item_creates,
                            _ => &f.other_control,
                        };
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
            }
        };
        buf.clear();
        if B64.decode_vec(b64.as_bytes(), &mut buf).is_err() {
            check.stats.protocol_errors += 1;
            continue;
        }
        drop(b64);
        run.frames_rx.fetch_add(1, Ordering::Relaxed);
        frames_in_call += 1;
        if every_frames > 0 && frames_in_call.is_multiple_of(every_frames) {
            let ping = lock(&pings).ping(now);
            let _ = writer.send_text(ping).await;
        }
        let Some(tag) = check.check(&run, &buf, now) else {
            continue;
        };
        match &run.mode {
            AgentMode::Echo => {
                tag::write_agent_ts(&mut buf, run.now_ns());
                let msg = audio_message(dialect, &buf, echo_id, 0);
                echo_id += 1;
                if writer.send_text(msg).await.is_ok() {
                    check.stats.echoed += 1;
                    slot.echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
            AgentMode::Conversation(script) => {
                let Some(turns) = run.plan.turns else {
                    continue;
                };
                let heard_ms =
                    check.stats.frames * (MULAW_FRAME_BYTES / crate::MULAW_BYTES_PER_MS) as u64;
                if turns.is_speech_start(tag.seq) {
                    // Sent under the reply lock: no reply chunk can slip in between.
                    let mut st = reply_state.lock().await;
                    let cut = script.barge_in && st.active && !st.interrupted;
                    if cut {
                        st.interrupted = true;
                        check.stats.interruptions += 1;
                    }
                    // OpenAI: the relay clears on every speech_started while audio plays, so
                    // each one is a potential barge-in signal to time the clear from.
                    if cut || dialect == BenchDialect::OpenAi {
                        slot.interrupt_ns.store(run.now_ns(), Ordering::Relaxed);
                    }
                    for m in speech_start_messages(dialect, &st, cut, heard_ms) {
                        let _ = writer.send_text(m).await;
                    }
                }
                if turns.is_speech_end(tag.seq) {
                    for m in speech_end_messages(dialect, heard_ms) {
                        let _ = writer.send_text(m).await;
                    }
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
                        dialect,
                        script.clone(),
                        writer.clone(),
                        reply_state.clone(),
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
    drop(ping_stop);
    if let Some(t) = ping_task {
        let _ = t.await;
    }
    check.stats.pings += lock(&pings).next_id as u64;
    check.stats.pongs += pongs;
    if let Some(l) = &live {
        // No more kills of this socket.
        let mut conn = lock(&slot.fault.conn);
        if conn
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.killed, &l.killed))
        {
            *conn = None;
        }
    }
    match kept.as_mut() {
        Some(k) => {
            check.conversations += 1;
            *slot.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(check.stats.clone());
            **k = Some(check);
        }
        None => *slot.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(check.stats),
    }
    // The next conversation of the call may start now.
    drop(kept);
    if killed && reset_mode {
        set_linger_zero(fd);
        drop(reader);
    } else if killed {
        // Close 1011 was sent: read (without checking or echoing) until the relay closes.
        let drained = faults.as_ref().map(|f| &f.drained_frames);
        let _ = tokio::time::timeout(DRAIN_LIMIT, async {
            while let Ok(WsMessage::Text(_)) = reader.next().await {
                if let Some(d) = drained {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    }
    writer.release().await;
    run.conversations_done.fetch_add(1, Ordering::Relaxed);
}

/// Sends one reply: think, then the reply audio in chunks, unless interrupted; then the
/// dialect's end-of-reply messages if it was not.
async fn reply(
    dialect: BenchDialect,
    script: ConversationScript,
    writer: WsWriter,
    state: Arc<tokio::sync::Mutex<ReplyState>>,
    closed: Arc<AtomicBool>,
) {
    tokio::time::sleep(script.think_time).await;
    let mut ticker = tokio::time::interval(script.chunk_interval.max(Duration::from_micros(100)));
    let mut begun = false;
    let mut failed = false;
    for chunk in script.reply.chunks(script.chunk_bytes.max(1)) {
        ticker.tick().await;
        let mut st = state.lock().await;
        if st.interrupted || closed.load(Ordering::Relaxed) {
            break;
        }
        if !begun {
            begun = true;
            st.reply_no += 1;
            if dialect == BenchDialect::OpenAi {
                if st.item_bytes.len() >= TRACKED_ITEMS {
                    st.item_bytes.remove(0);
                }
                let n = st.reply_no;
                st.item_bytes.push((n, 0));
            }
            for m in reply_begin_messages(dialect, &st) {
                let _ = writer.send_text(m).await;
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.last_id = id;
        if let Some(e) = st.item_bytes.last_mut() {
            e.1 += chunk.len();
        }
        if writer
            .send_text(audio_message(dialect, chunk, id, st.reply_no))
            .await
            .is_err()
        {
            failed = true;
            break;
        }
    }
    let mut st = state.lock().await;
    if begun && !failed && !st.interrupted && !closed.load(Ordering::Relaxed) {
        for m in reply_end_messages(dialect, &st) {
            let _ = writer.send_text(m).await;
        }
    }
    st.active = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_prompts_round_trip() {
        assert_eq!(parse_call_prompt(&call_prompt(17)), Some(17));
        assert_eq!(
            parse_call_prompt("You are a bot. lt_call=3, be brief"),
            Some(3)
        );
        assert_eq!(parse_call_prompt("lt_call="), None);
        assert_eq!(parse_call_prompt("no call here"), None);
    }

    #[test]
    fn audio_messages_have_the_canonical_shapes() {
        for d in BenchDialect::ALL {
            let m = audio_message(d, &[0xFF, 0x7F], 5, 2);
            let v: Value = serde_json::from_str(&m).unwrap();
            let b64 = match d {
                BenchDialect::ElevenLabs => {
                    assert_eq!(v["audio_event"]["event_id"], 5);
                    &v["audio_event"]["audio_base_64"]
                }
                BenchDialect::AssemblyAi => &v["data"],
                BenchDialect::OpenAi => {
                    assert_eq!(v["item_id"], "item_2");
                    &v["delta"]
                }
            };
            assert_eq!(b64, "/38=");
        }
        let v: Value =
            serde_json::from_str(&audio_message(BenchDialect::OpenAi, &[1], 1, 0)).unwrap();
        assert_eq!(v["item_id"], ECHO_ITEM);
    }

    #[test]
    fn truncates_are_checked_against_the_audio_sent() {
        let st = ReplyState {
            item_bytes: vec![(3, 1600)],
            ..ReplyState::default()
        };
        let t = |item: &str, ms: u64| {
            answer_truncate(
                &st,
                &json!({"type":"conversation.item.truncate","item_id":item,"content_index":0,"audio_end_ms":ms}),
            )
        };
        assert!(t("item_3", 200).1);
        assert!(t("item_3", 0).1);
        assert!(!t("item_3", 201).1);
        assert!(!t("item_4", 10).1);
        assert!(t("item_3", 200).0.contains("conversation.item.truncated"));
        assert!(t("item_3", 201).0.contains(r#""type":"error""#));
    }
}
