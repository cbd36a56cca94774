//! The call machine: every per-call decision, with no sockets, no tokio and no clock of its
//! own (after quinn-proto's `Connection`). Time comes in as an `Instant` argument, so every
//! timer is testable without sleeping.
//!
//! # Using it
//! Inputs, in any order: [`CallMachine::handle_twilio`] (a decoded Twilio event),
//! [`CallMachine::handle_agent`] (a decoded agent event; decode with
//! [`CallMachine::dialect_mut`]), [`CallMachine::handle_agent_connected`],
//! [`CallMachine::handle_tool_result`], [`CallMachine::handle_write_blocked`] /
//! [`CallMachine::handle_write_done`] (socket progress), [`CallMachine::handle_bad_input`],
//! [`CallMachine::handle_timeout`], and [`CallMachine::end`] for transport-level endings.
//!
//! Outputs: [`CallMachine::poll_transmit`] (the next message a leg owes, encoded into a
//! buffer the driver owns), [`CallMachine::poll_timeout`] (the next deadline),
//! [`CallMachine::poll_event`] (connect the agent, call or cancel a tool webhook), and
//! [`CallMachine::end_reason`] (set once the call is over).
//!
//! # What it owns
//! The agent outbox (caller audio, capped in bytes: the early-audio limit before the agent is
//! ready, the outbox limit after; oldest dropped), the Twilio outbox (agent audio, capped;
//! `clear` first, marks every 100 ms of audio), the interruption filter, playout and marks,
//! keypad digits, pending tool calls, the call's timers (start, agent ready, Twilio idle,
//! maximum duration, write stalls, echo playback, tool timeouts, keypad entry, frame
//! coalescing), per-call metrics, and the end reason.

use super::outbox::AudioQueue;
use super::playout::{self, MarkOutcome, Playout};
use super::{CallSettings, EndReason};
use crate::agent::echo::EchoAgent;
use crate::agent::{AgentEvent, AgentKind, CallParams, Dialect, ReplyKey, Speaker, ToolOutput};
use crate::audio::vad::{SpeechDetector, SpeechEvent};
use crate::obs::calls::{CallSummary, Latencies, Quantiles};
use crate::obs::latency::LatencyHistogram;
use crate::obs::metrics::{
    CallEventKind, CallMetrics, Direction, DropReason, Leg, Sample, ToolResult,
};
use crate::twilio::codec::{self as tw, TwilioEvent};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A leg of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The Twilio Media Streams socket.
    Twilio = 0,
    /// The agent socket.
    Agent = 1,
}

/// What the driver must do for the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// `start` was accepted and the call's agent chosen (counted per agent).
    Started(AgentKind),
    /// Connect the agent leg for this dialect with the call's parameters
    /// ([`CallMachine::params`]).
    ConnectAgent(AgentKind),
    /// POST this tool call to the webhook; answer with [`CallMachine::handle_tool_result`].
    CallTool {
        /// The agent's call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments (a JSON object).
        arguments: serde_json::Value,
    },
    /// Stop waiting for this tool call's webhook (it timed out).
    CancelTool(String),
}

/// Bad messages logged at `warn` per call; later ones are counted, not logged.
pub const BAD_INPUT_WARN_LIMIT: u32 = 5;

/// Most tool calls of one call in flight at once; more get an error result at once.
pub const MAX_TOOL_CALLS_IN_FLIGHT: usize = 4;

/// Most tool results waiting to be written to the agent (or held until its reply ends);
/// more are discarded and counted (`relay_tool_calls_total{result="discarded"}`).
pub const MAX_TOOL_RESULTS_WAITING: usize = 16;

/// Most keypad digits collected before they are sent anyway.
pub const MAX_DTMF_DIGITS: usize = 32;

/// Shortest agent audio worth a Twilio `media` message on its own: 20 ms (160 bytes). A
/// shorter tail of a reply waits for more audio, the reply's end, or [`COALESCE_HOLD`].
pub const MIN_MEDIA_BYTES: usize = 160;

/// Longest a sub-20 ms tail of agent audio is held back for more (dialects with small deltas).
pub const COALESCE_HOLD: Duration = Duration::from_millis(40);

/// Most turns whose latencies are kept per call for the summary (older ones still count in
/// Prometheus).
pub const MAX_TURN_SAMPLES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Upgraded, waiting for `start`.
    AwaitStart,
    /// `start` received; the agent is connecting or its session is not ready yet.
    Connecting,
    /// Audio flows both ways.
    Ready,
}

/// One queued agent-leg command (control messages go before caller audio).
#[derive(Debug, Clone)]
enum AgentCmd {
    SessionInit,
    Pong(u64),
    ToolResult { id: String, output: ToolOutput },
    Dtmf(String),
    BargeIn { reply: ReplyKey, played_ms: u64 },
}

/// The agent side: a dialect session, the built-in echo, or not chosen yet.
#[derive(Debug)]
enum Agent {
    None,
    Echo(EchoAgent),
    Dialect(Dialect),
}

/// A tool call waiting for its webhook.
#[derive(Debug)]
struct PendingTool {
    id: String,
    deadline: Instant,
}

/// Compact latency samples of rare events (turns, barge-ins), for the call summary.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u32>);

impl Samples {
    fn push(&mut self, d: Duration) {
        if self.0.len() < MAX_TURN_SAMPLES {
            self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    /// Quantile `q` in seconds (nearest rank), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1] as f64 / 1e6)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The per-call figures the machine keeps for the summary and `GET /calls`.
#[derive(Debug, Default, Clone)]
pub struct CallFigures {
    /// Relay-measured turn latencies.
    pub turn: Samples,
    /// Turn latencies from the agent's own end-of-speech signal.
    pub agent_turn: Samples,
    /// Barge-in latencies (signal → `clear` written).
    pub barge_in: Samples,
    /// Playout lags (mark sent → echoed as played).
    pub playout_lag: Samples,
    /// Agent-reported ping round trips.
    pub ping_rtt: Samples,
    /// Tool calls requested.
    pub tool_calls: u32,
    /// Bad messages skipped.
    pub bad_inputs: u32,
}

/// One call's state. See the module docs for the input/output contract.
pub struct CallMachine {
    cfg: Arc<CallSettings>,
    phase: Phase,
    started_at: Instant,
    /// When the agent became ready: caller audio read before it waited in the early buffer,
    /// which is not relay-added latency.
    ready_at: Option<Instant>,
    phase_deadline: Instant,
    max_deadline: Instant,
    /// Twilio idle check: the deadline armed, and the newest Twilio message time.
    idle_deadline: Option<Instant>,
    last_twilio_at: Instant,
    stream_sid: String,
    call_sid: String,
    custom_parameters: Vec<(String, String)>,
    kind: AgentKind,
    agent: Agent,
    agent_cmds: VecDeque<AgentCmd>,
    /// Part of the front command already sent (multi-message commands).
    cmd_part: usize,
    agent_audio: AudioQueue,
    twilio_audio: AudioQueue,
    /// A `clear` is owed to Twilio before anything else; carries the signal time.
    clear_owed: Option<Instant>,
    mark_owed: bool,
    /// Whether the newest queued agent audio may still grow (its reply is not done).
    tail_open: bool,
    coalesce: bool,
    interrupted_through: Option<ReplyKey>,
    playout: Playout,
    /// Per current reply: playout offset (ms) when its first audio went out, and ms sent.
    reply_key: ReplyKey,
    reply_start_ms: u64,
    reply_sent_ms: u64,
    speech: SpeechDetector,
    /// Caller speech ended (relay VAD / agent signal) and no reply audio went out since;
    /// with the newest reply key at that moment.
    turn_from: Option<(Instant, ReplyKey)>,
    agent_turn_from: Option<(Instant, ReplyKey)>,
    dtmf: String,
    dtmf_deadline: Option<Instant>,
    tools: Vec<PendingTool>,
    held_tool_results: Vec<(String, ToolOutput)>,
    reply_done_latest: bool,
    stall_since: [Option<Instant>; 2],
    /// Read times of messages handed to a writer, recorded as latency once written.
    written_pending: [Vec<Instant>; 2],
    clear_pending: Option<Instant>,
    /// Last inbound media: arrival time and `media.chunk`.
    last_media: Option<(Instant, Option<u64>)>,
    events: VecDeque<CallEvent>,
    cm: CallMetrics,
    figures: CallFigures,
    end: Option<EndReason>,
    /// The drain notice is playing: the call closes once Twilio played up to this offset
    /// (ms of agent audio), or at the deadline.
    notice: Option<(u64, Instant)>,
    mark: String,
    audio_scratch: Vec<u8>,
}

impl std::fmt::Debug for CallMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMachine")
            .field("phase", &self.phase)
            .field("stream_sid", &self.stream_sid)
            .field("agent", &self.kind)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl CallMachine {
    /// A call whose Twilio socket was upgraded at `now`.
    pub fn new(cfg: Arc<CallSettings>, now: Instant) -> CallMachine {
        let kind = cfg.default_agent;
        CallMachine {
            phase: Phase::AwaitStart,
            started_at: now,
            ready_at: None,
            phase_deadline: now + cfg.start_timeout,
            max_deadline: now + cfg.max_call_duration,
            idle_deadline: None,
            last_twilio_at: now,
            stream_sid: String::new(),
            call_sid: String::new(),
            custom_parameters: Vec::new(),
            kind,
            agent: Agent::None,
            agent_cmds: VecDeque::new(),
            cmd_part: 0,
            agent_audio: AudioQueue::default(),
            twilio_audio: AudioQueue::default(),
            clear_owed: None,
            mark_owed: false,
            tail_open: false,
            coalesce: false,
            interrupted_through: None,
            playout: Playout::default(),
            reply_key: ReplyKey(0),
            reply_start_ms: 0,
            reply_sent_ms: 0,
            speech: SpeechDetector::default(),
            turn_from: None,
            agent_turn_from: None,
            dtmf: String::new(),
            dtmf_deadline: None,
            tools: Vec::new(),
            held_tool_results: Vec::new(),
            reply_done_latest: true,
            stall_since: [None, None],
            written_pending: [Vec::new(), Vec::new()],
            clear_pending: None,
            last_media: None,
            events: VecDeque::new(),
            cm: {
                let mut cm = CallMetrics::default();
                cm.agent = kind as usize;
                cm
            },
            figures: CallFigures::default(),
            end: None,
            notice: None,
            mark: String::new(),
            audio_scratch: Vec::new(),
            cfg,
        }
    }

    // === accessors ===

    /// The stream SID (empty before `start`).
    pub fn stream_sid(&self) -> &str {
        &self.stream_sid
    }

    /// The call SID (empty before `start`).
    pub fn call_sid(&self) -> &str {
        &self.call_sid
    }

    /// The call's agent (the default until `start` names another).
    pub fn agent_kind(&self) -> AgentKind {
        self.kind
    }

    /// The call's session parameters (from `start.customParameters`).
    pub fn params(&self) -> CallParams {
        CallParams::from_custom_parameters(&self.custom_parameters)
    }

    /// A custom parameter of `start`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.custom_parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The call's dialect, to decode agent frames with (`None` for echo or before `start`).
    pub fn dialect_mut(&mut self) -> Option<&mut Dialect> {
        match &mut self.agent {
            Agent::Dialect(d) => Some(d),
            _ => None,
        }
    }

    /// Why the call ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end.as_ref()
    }

    /// Per-call metric accumulators (the driver folds them into the shared metrics).
    pub fn metrics_mut(&mut self) -> &mut CallMetrics {
        &mut self.cm
    }

    /// Per-call metric accumulators.
    pub fn metrics(&self) -> &CallMetrics {
        &self.cm
    }

    /// Per-call figures for the summary.
    pub fn figures(&self) -> &CallFigures {
        &self.figures
    }

    /// Playout totals: (played ms, flushed ms).
    pub fn playout_ms(&self) -> (u64, u64) {
        let (p, f, _, _) = self.playout.totals();
        (p, f)
    }

    /// When the call began (the upgrade).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// The relay's drain deadline passed at `now`: with a notice configured and a stream to
    /// play it on, Twilio's playback is cleared, the notice queued, and the call closes
    /// (outcome `shutdown`) once Twilio confirms it played, or [`super::DRAIN_NOTICE_GRACE`]
    /// after its length; otherwise the call closes at once. Returns whether a notice plays.
    pub fn handle_drain_deadline(&mut self, now: Instant) -> bool {
        if self.end.is_some() || self.notice.is_some() {
            return false;
        }
        let Some(notice) = self.cfg.drain_notice.clone() else {
            self.end(EndReason::Shutdown);
            return false;
        };
        if self.stream_sid.is_empty() || notice.is_empty() {
            self.end(EndReason::Shutdown);
            return false;
        }
        // What the agent was saying gives way to the notice.
        let dropped = self.twilio_audio.clear();
        self.cm
            .drop_frames(Direction::AgentToTwilio, DropReason::Draining, dropped);
        if self.playout.queued_ms() > 0 {
            self.clear_owed = Some(now);
        }
        self.twilio_audio.bytes.tail().extend_from_slice(&notice);
        self.twilio_audio
            .commit(notice.len(), now, ReplyKey(u64::MAX), false);
        self.tail_open = false;
        let notice_ms = crate::audio::bytes_to_ms(notice.len() as u64);
        let end_ms = self.playout.sent_ms() + notice_ms;
        self.notice = Some((
            end_ms,
            now + Duration::from_millis(notice_ms) + super::DRAIN_NOTICE_GRACE,
        ));
        info!(
            notice_ms,
            "drain deadline: playing the drain notice before closing"
        );
        true
    }

    /// Ends the call (the first reason sticks).
    pub fn end(&mut self, reason: EndReason) {
        if self.end.is_none() {
            debug!(reason = reason.outcome(), "call ending");
            self.end = Some(reason);
        }
    }

    // === Twilio leg ===

    /// Handles one decoded Twilio message read at `now`.
    pub fn handle_twilio(&mut self, ev: TwilioEvent<'_>, now: Instant) {
        self.last_twilio_at = now;
        match ev {
            TwilioEvent::Media(m) => {
                if self.phase == Phase::AwaitStart {
                    self.handle_bad_input(Leg::Twilio, "media_before_start", &"media before start");
                    return;
                }
                self.inbound_timing(now, m.chunk);
                self.caller_audio(m.payload, now);
            }
            TwilioEvent::Start(st) => self.start(st, now),
            TwilioEvent::Mark { name } => {
                let (outcome, lag) = self.playout.on_mark_echo_at(name, now);
                match outcome {
                    MarkOutcome::Played(ms) => {
                        self.cm.event(CallEventKind::MarkPlayed);
                        self.cm.playout(true, crate::audio::ms_to_bytes(ms));
                        if self
                            .notice
                            .is_some_and(|(end_ms, _)| self.playout.played_through_ms() >= end_ms)
                        {
                            self.end(EndReason::Shutdown);
                        }
                        if let Some(lag) = lag {
                            self.cm.sample(Sample::PlayoutLag, lag.as_secs_f64());
                            self.figures.playout_lag.push(lag);
                        }
                    }
                    MarkOutcome::Flushed(ms) => {
                        self.cm.event(CallEventKind::MarkFlushed);
                        self.cm.playout(false, crate::audio::ms_to_bytes(ms));
                    }
                    MarkOutcome::Unknown => debug!(name, "ignored unknown mark echo"),
                }
            }
            TwilioEvent::Dtmf { digit } => {
                self.cm.event(CallEventKind::DtmfDigit);
                debug!(digit, "dtmf");
                if self.dtmf.len() < MAX_DTMF_DIGITS {
                    self.dtmf.push_str(digit);
                }
                if digit == "#" || self.dtmf.len() >= MAX_DTMF_DIGITS {
                    self.flush_dtmf();
                } else {
                    self.dtmf_deadline = Some(now + self.cfg.dtmf_interdigit);
                }
            }
            TwilioEvent::Stop => self.end(EndReason::TwilioStop),
            TwilioEvent::Connected { protocol, version } => {
                debug!(?protocol, ?version, "Twilio connected");
            }
            TwilioEvent::Other { event } => {
                self.cm.event(CallEventKind::UnknownTwilioEvent);
                debug!(event, "skipped unknown Twilio event");
            }
        }
    }

    fn start(&mut self, st: tw::Start<'_>, now: Instant) {
        if self.phase != Phase::AwaitStart {
            self.handle_bad_input(
                Leg::Twilio,
                "duplicate_start",
                &"second start on one stream",
            );
            return;
        }
        self.stream_sid = st.stream_sid.to_owned();
        self.call_sid = st.call_sid.to_owned();
        self.custom_parameters = st
            .custom_parameters
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if !tw::is_mulaw_8k_mono(&st) {
            self.cm.error(Leg::Twilio, "media_format_unsupported");
            warn!(
                encoding = ?st.encoding,
                sample_rate = ?st.sample_rate,
                channels = ?st.channels,
                "refused stream: media format is not audio/x-mulaw 8000 Hz mono (the relay never transcodes)"
            );
            self.end(EndReason::MediaFormatUnsupported);
            return;
        }
        if let Some(name) = self.param("agent").map(str::to_owned) {
            match AgentKind::from_name(&name) {
                Some(k) => self.kind = k,
                None => {
                    warn!(agent = %name, "refused stream: unknown agent");
                    self.cm.error(Leg::Agent, "agent_not_configured");
                    self.end(EndReason::AgentConnectFailed("unknown_agent"));
                    return;
                }
            }
        }
        self.cm.agent = self.kind as usize;
        self.idle_deadline = Some(now + self.cfg.twilio_idle_timeout);
        info!(
            account_sid = st.account_sid,
            parameters = st.custom_parameters.len(),
            agent = self.kind.as_str(),
            "stream started"
        );
        self.events.push_back(CallEvent::Started(self.kind));
        if self.kind == AgentKind::Echo {
            self.agent = Agent::Echo(EchoAgent::new(self.cfg.echo_delay));
            self.phase = Phase::Ready;
            return;
        }
        match Dialect::new(self.kind, &self.cfg.agents, self.params()) {
            Some(d) => {
                self.coalesce = !matches!(d, Dialect::Elevenlabs(_));
                self.agent = Agent::Dialect(d);
                self.phase = Phase::Connecting;
                self.phase_deadline = now + self.cfg.agent_connect_timeout;
                self.events.push_back(CallEvent::ConnectAgent(self.kind));
            }
            None => {
                warn!(
                    agent = self.kind.as_str(),
                    "refused stream: agent not configured on this relay"
                );
                self.cm.error(Leg::Agent, "agent_not_configured");
                self.end(EndReason::AgentConnectFailed("agent_not_configured"));
            }
        }
    }

    /// Jitter (inter-arrival minus 20 ms) and missing frames (gaps in `media.chunk`).
    fn inbound_timing(&mut self, now: Instant, chunk: Option<u64>) {
        if let Some((prev_at, prev_chunk)) = self.last_media {
            let gap = now.saturating_duration_since(prev_at);
            let dev = gap.abs_diff(crate::audio::FRAME_DURATION);
            self.cm.jitter.record(dev);
            if let (Some(p), Some(c)) = (prev_chunk, chunk) {
                // Frames skipped in the numbering, but never more than could have been sent
                // in the time that passed (one per 20 ms, plus one): a peer jumping its
                // `chunk` numbers cannot inflate the count.
                let skipped = c.saturating_sub(p).saturating_sub(1);
                let possible = (gap.as_millis() / 20) as u64 + 1;
                if skipped > 0 {
                    self.cm.missing_frames(skipped.min(possible));
                }
            }
        }
        self.last_media = Some((now, chunk));
    }

    /// Routes one caller frame (base64 `payload`, read at `now`): decoded straight into the
    /// agent outbox (or the echo agent), measured by the speech detector.
    fn caller_audio(&mut self, payload: &str, now: Instant) {
        let to_outbox = matches!(self.agent, Agent::Dialect(_));
        let decoded = if to_outbox {
            tw::decode_payload_append(payload, self.agent_audio.bytes.tail())
        } else {
            tw::decode_payload(payload, &mut self.audio_scratch).map(|()| self.audio_scratch.len())
        };
        let Ok(n) = decoded else {
            self.handle_bad_input(
                Leg::Twilio,
                "invalid_base64",
                &"media.payload is not valid base64",
            );
            return;
        };
        if n == 0 {
            // Nothing to relay; an empty item would still take a place in the outbox.
            self.handle_bad_input(Leg::Twilio, "empty_payload", &"media.payload is empty");
            return;
        }
        // Turn timing from the caller's own audio.
        let speech = {
            let frame: &[u8] = if to_outbox {
                let all = self.agent_audio.bytes.front(usize::MAX);
                &all[all.len() - n..]
            } else {
                &self.audio_scratch
            };
            self.speech.push(frame, now)
        };
        match speech {
            Some(SpeechEvent::Ended(at)) => self.turn_from = Some((at, self.newest_reply())),
            Some(SpeechEvent::Started(_)) => {
                self.turn_from = None;
                self.agent_turn_from = None;
            }
            None => {}
        }
        match &mut self.agent {
            Agent::Echo(e) => {
                let dropped = e.push(now, &self.audio_scratch);
                self.cm.frame(Direction::TwilioToAgent, n);
                self.cm
                    .drop_frames(Direction::AgentToTwilio, DropReason::EchoQueueFull, dropped);
            }
            Agent::Dialect(_) => {
                self.agent_audio.commit(n, now, ReplyKey(0), false);
                let (cap, reason) = if self.phase == Phase::Ready {
                    (self.cfg.agent_outbox_bytes, DropReason::OutboxFull)
                } else {
                    (self.cfg.early_audio_bytes, DropReason::EarlyBufferFull)
                };
                let dropped = self.agent_audio.enforce_cap(cap.max(1));
                self.cm
                    .drop_frames(Direction::TwilioToAgent, reason, dropped);
            }
            Agent::None => {}
        }
    }

    /// Index of the first agent command not started yet (the front one may be a half-sent
    /// multi-message command).
    fn first_unsent_cmd(&self) -> usize {
        usize::from(self.cmd_part > 0).min(self.agent_cmds.len())
    }

    /// The first agent command not started yet that `is` picks, to merge a new one into.
    fn unsent_cmd(&mut self, is: impl Fn(&AgentCmd) -> bool) -> Option<&mut AgentCmd> {
        let at = self.first_unsent_cmd();
        self.agent_cmds.iter_mut().skip(at).find(|c| is(c))
    }

    /// The newest reply key the agent has used.
    fn newest_reply(&self) -> ReplyKey {
        match &self.agent {
            Agent::Dialect(d) => d.current_reply(),
            _ => ReplyKey(0),
        }
    }

    /// Counts a message that was skipped, logging the first few at `warn` (rate-limited per
    /// call, so one hostile peer cannot flood the log).
    pub fn handle_bad_input(
        &mut self,
        leg: Leg,
        kind: &'static str,
        reason: &dyn std::fmt::Display,
    ) {
        self.cm.error(leg, kind);
        self.figures.bad_inputs = self.figures.bad_inputs.saturating_add(1);
        let n = self.figures.bad_inputs;
        if n <= BAD_INPUT_WARN_LIMIT {
            warn!(leg = leg.as_str(), kind, reason = %reason, "skipped bad message");
            if n == BAD_INPUT_WARN_LIMIT {
                warn!("further bad messages on this call are counted, not logged (see the call summary)");
            }
        } else {
            debug!(leg = leg.as_str(), kind, reason = %reason, "skipped bad message");
        }
    }

    // === agent leg ===

    /// The agent socket is open: the session-opening messages go first.
    pub fn handle_agent_connected(&mut self) {
        self.agent_cmds.push_front(AgentCmd::SessionInit);
    }

    /// Handles one decoded agent message read at `now`.
    pub fn handle_agent(&mut self, ev: AgentEvent<'_>, now: Instant) {
        match ev {
            AgentEvent::Audio { reply, payload_b64 } => {
                self.agent_audio_in(reply, payload_b64, now)
            }
            AgentEvent::Ready {
                session_id,
                formats_ok,
                input_format,
                output_format,
            } => {
                if !formats_ok {
                    self.cm.error(Leg::Agent, "audio_format_mismatch");
                    warn!(
                        ?input_format,
                        ?output_format,
                        "agent audio formats are not G.711 μ-law 8 kHz both ways; configure the agent for μ-law 8000 Hz (the relay never transcodes)"
                    );
                    self.end(EndReason::AudioFormatMismatch);
                    return;
                }
                if self.phase == Phase::Connecting {
                    info!(
                        ?session_id,
                        early_bytes = self.agent_audio.len(),
                        "agent ready"
                    );
                    // The early audio goes out first, in order.
                    self.phase = Phase::Ready;
                    self.ready_at = Some(now);
                }
            }
            AgentEvent::Interrupted { through } => {
                let through = through.unwrap_or_else(|| self.newest_reply());
                let signal = self.dialect().is_some_and(Dialect::clears_on_interrupted);
                self.interrupt(through, signal, now);
            }
            AgentEvent::SpeechStarted => {
                if self
                    .dialect()
                    .is_some_and(Dialect::clears_on_speech_started)
                {
                    let through = self.newest_reply();
                    self.interrupt(through, true, now);
                }
            }
            AgentEvent::SpeechStopped => {
                self.agent_turn_from
                    .get_or_insert((now, self.newest_reply()));
            }
            AgentEvent::Transcript { speaker, text } => {
                if speaker == Speaker::Caller
                    && matches!(self.dialect(), Some(Dialect::Elevenlabs(_)))
                {
                    // ElevenLabs has no speech-stopped event: its final caller transcript
                    // ends the caller's turn. (AssemblyAI and OpenAI send transcripts after
                    // their speech-stopped event, sometimes after the reply began.)
                    self.agent_turn_from
                        .get_or_insert((now, self.newest_reply()));
                }
                debug!(speaker = ?speaker, text, "transcript");
            }
            AgentEvent::ReplyStarted => self.reply_done_latest = false,
            AgentEvent::ReplyDone { interrupted } => {
                self.tail_open = false;
                self.reply_done_latest = true;
                if interrupted {
                    let through = self.newest_reply();
                    let signal = self.dialect().is_some_and(Dialect::clears_on_interrupted);
                    self.interrupt(through, signal, now);
                    for _ in self.held_tool_results.drain(..) {
                        self.cm.tool(ToolResult::Discarded);
                    }
                } else {
                    let held: Vec<_> = self.held_tool_results.drain(..).collect();
                    for (id, output) in held {
                        self.agent_cmds
                            .push_back(AgentCmd::ToolResult { id, output });
                    }
                }
            }
            AgentEvent::AudioDone => self.tail_open = false,
            AgentEvent::ToolCall {
                id,
                name,
                arguments,
            } => self.tool_call(id, name, arguments, now),
            AgentEvent::Ping { id, rtt_ms } => {
                // One pong waits at most: a newer ping replaces the id of one not yet sent.
                // Otherwise it goes before any queued audio, but never inside a half-sent
                // multi-message command.
                match self.unsent_cmd(|c| matches!(c, AgentCmd::Pong(_))) {
                    Some(AgentCmd::Pong(waiting)) => *waiting = id,
                    _ => {
                        let at = self.first_unsent_cmd();
                        self.agent_cmds.insert(at, AgentCmd::Pong(id));
                    }
                }
                if let Some(ms) = rtt_ms {
                    let d = Duration::from_millis(ms);
                    self.cm.sample(Sample::PingRtt, d.as_secs_f64());
                    self.figures.ping_rtt.push(d);
                }
            }
            AgentEvent::Error {
                code,
                numeric_code,
                message,
                fatal,
            } => {
                self.cm.error(Leg::Agent, "agent_error_event");
                warn!(
                    ?code,
                    ?numeric_code,
                    ?message,
                    fatal,
                    "agent reported an error"
                );
                if fatal {
                    self.end(EndReason::AgentError("agent_error_event"));
                }
            }
            AgentEvent::Ended => {
                info!("agent ended the session");
                self.end(EndReason::AgentEnded);
            }
            AgentEvent::Other { kind } => {
                self.cm.event(CallEventKind::UnknownAgentEvent);
                debug!(kind, "skipped agent message type");
            }
        }
    }

    fn dialect(&self) -> Option<&Dialect> {
        match &self.agent {
            Agent::Dialect(d) => Some(d),
            _ => None,
        }
    }

    fn agent_audio_in(&mut self, reply: ReplyKey, payload_b64: &str, now: Instant) {
        if self.notice.is_some() {
            self.cm
                .drop_frames(Direction::AgentToTwilio, DropReason::Draining, 1);
            return;
        }
        if self.interrupted_through.is_some_and(|cut| reply <= cut) {
            self.cm
                .drop_frames(Direction::AgentToTwilio, DropReason::Interrupted, 1);
            debug!(
                reply = reply.0,
                "dropped stale agent audio after an interruption"
            );
            return;
        }
        let q = &mut self.twilio_audio;
        let n = match tw::decode_payload_append(payload_b64, q.bytes.tail()) {
            Ok(n) => n,
            Err(_) => {
                self.handle_bad_input(
                    Leg::Agent,
                    "invalid_base64",
                    &"agent audio is not valid base64",
                );
                return;
            }
        };
        if n == 0 {
            return;
        }
        // Small deltas join the newest item of the same reply while it is under 20 ms.
        let merge = self.coalesce
            && self
                .twilio_audio
                .items
                .back()
                .is_some_and(|last| last.reply == reply && last.len < MIN_MEDIA_BYTES);
        self.twilio_audio.commit(n, now, reply, merge);
        self.tail_open = true;
        let dropped = self
            .twilio_audio
            .enforce_cap(self.cfg.twilio_outbox_bytes.max(1));
        self.cm
            .drop_frames(Direction::AgentToTwilio, DropReason::OutboxFull, dropped);
    }

    /// Cuts replies up to `through`: queued audio of them is dropped, later audio of them
    /// too; with `signal` (this event is the dialect's barge-in signal) and agent audio
    /// possibly still playing, Twilio gets a `clear` and the dialect its barge-in command.
    fn interrupt(&mut self, through: ReplyKey, signal: bool, now: Instant) {
        if self.interrupted_through.is_some_and(|cut| through <= cut) {
            return;
        }
        self.interrupted_through = Some(through);
        let dropped = self.twilio_audio.drop_replies_through(through);
        self.cm
            .drop_frames(Direction::AgentToTwilio, DropReason::Interrupted, dropped);
        let playing = dropped > 0 || self.playout.queued_ms() > 0;
        if !(signal && playing) {
            return;
        }
        self.clear_owed = Some(now);
        self.mark_owed = false;
        self.cm.event(CallEventKind::BargeIn);
        // What the caller heard of the cut reply: confirmed by echoed marks, never more than
        // was sent.
        if self.reply_key <= through && self.reply_sent_ms > 0 {
            let played = self
                .playout
                .played_through_ms()
                .saturating_sub(self.reply_start_ms)
                .min(self.reply_sent_ms);
            self.agent_cmds.push_back(AgentCmd::BargeIn {
                reply: self.reply_key,
                played_ms: played,
            });
        }
        info!(through = through.0, "barge-in: clearing Twilio's playback");
    }

    fn flush_dtmf(&mut self) {
        self.dtmf_deadline = None;
        if self.dtmf.is_empty() {
            return;
        }
        let digits = std::mem::take(&mut self.dtmf);
        if !matches!(self.agent, Agent::Dialect(_)) {
            return;
        }
        // Entries the agent has not been sent yet join into one (at most MAX_DTMF_DIGITS
        // more digits are kept), so a caller pressing keys while the agent socket is slow
        // cannot grow the queue.
        match self.unsent_cmd(|c| matches!(c, AgentCmd::Dtmf(_))) {
            Some(AgentCmd::Dtmf(waiting)) => {
                let room = (2 * MAX_DTMF_DIGITS).saturating_sub(waiting.len());
                waiting.extend(digits.chars().take(room));
            }
            _ => self.agent_cmds.push_back(AgentCmd::Dtmf(digits)),
        }
    }

    fn tool_call(
        &mut self,
        id: &str,
        name: &str,
        arguments: Result<serde_json::Value, &'static str>,
        now: Instant,
    ) {
        self.figures.tool_calls = self.figures.tool_calls.saturating_add(1);
        let configured = self.cfg.tools.webhook_url.is_some();
        let used_up = self.figures.tool_calls > self.cfg.tools.max_per_call;
        let refused = match &arguments {
            Err(reason) => Some((ToolResult::InvalidArguments, *reason)),
            Ok(_) if !configured => Some((
                ToolResult::NotConfigured,
                "no tools are configured on this relay",
            )),
            Ok(_) if used_up => Some((
                ToolResult::LimitReached,
                "this call has used up its tool calls",
            )),
            Ok(_) if self.tools.len() >= MAX_TOOL_CALLS_IN_FLIGHT => {
                Some((ToolResult::LimitReached, "too many tool calls in progress"))
            }
            Ok(_) => None,
        };
        if let Some((r, msg)) = refused {
            self.cm.tool(r);
            info!(
                tool = name,
                call_id = id,
                result = r.as_str(),
                "tool call refused"
            );
            self.tool_result_out(id.to_owned(), Err(msg.to_owned()));
            return;
        }
        match arguments {
            Err(_) => {}
            Ok(arguments) => {
                info!(tool = name, call_id = id, "calling the tool webhook");
                self.tools.push(PendingTool {
                    id: id.to_owned(),
                    deadline: now + self.cfg.tools.timeout,
                });
                self.events.push_back(CallEvent::CallTool {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments,
                });
            }
        }
    }

    /// The webhook answered (or failed) for tool call `id`.
    pub fn handle_tool_result(&mut self, id: &str, result: ToolResult, output: ToolOutput) {
        let Some(i) = self.tools.iter().position(|t| t.id == id) else {
            return; // timed out already
        };
        self.tools.swap_remove(i);
        self.cm.tool(result);
        self.tool_result_out(id.to_owned(), output);
    }

    fn tool_result_out(&mut self, id: String, output: ToolOutput) {
        // An agent that keeps asking while not reading its socket cannot grow the queue:
        // beyond this many results waiting, further ones are discarded (and counted).
        let waiting = self.held_tool_results.len()
            + self
                .agent_cmds
                .iter()
                .filter(|c| matches!(c, AgentCmd::ToolResult { .. }))
                .count();
        if waiting >= MAX_TOOL_RESULTS_WAITING {
            self.cm.tool(ToolResult::Discarded);
            return;
        }
        let hold = self
            .dialect()
            .is_some_and(Dialect::holds_tool_results_until_reply_done);
        if hold && !self.reply_done_latest {
            self.held_tool_results.push((id, output));
        } else {
            self.agent_cmds
                .push_back(AgentCmd::ToolResult { id, output });
        }
    }

    // === timers and socket progress ===

    /// The driver could not write everything to `side`'s socket at `now`.
    pub fn handle_write_blocked(&mut self, side: Side, now: Instant) {
        self.stall_since[side as usize].get_or_insert(now);
    }

    /// `side`'s socket took some bytes at `now` but not all: the peer reads, slowly. A
    /// stall is a leg that accepts nothing, so its clock starts again.
    pub fn handle_write_progress(&mut self, side: Side, now: Instant) {
        if let Some(since) = self.stall_since[side as usize].as_mut() {
            *since = now;
        }
    }

    /// Everything handed to `side`'s writer reached the socket at `now`.
    pub fn handle_write_done(&mut self, side: Side, now: Instant) {
        self.stall_since[side as usize] = None;
        let d = match side {
            Side::Twilio => Direction::AgentToTwilio,
            Side::Agent => Direction::TwilioToAgent,
        };
        let h: &mut LatencyHistogram = &mut self.cm.latency[d as usize];
        for t in self.written_pending[side as usize].drain(..) {
            h.record(now.saturating_duration_since(t));
        }
        if side == Side::Twilio {
            if let Some(signal) = self.clear_pending.take() {
                let d = now.saturating_duration_since(signal);
                self.cm.sample(Sample::BargeIn, d.as_secs_f64());
                self.figures.barge_in.push(d);
            }
        }
    }

    /// Handles every deadline that passed by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        match self.phase {
            Phase::AwaitStart if now >= self.phase_deadline => {
                self.end(EndReason::StartTimeout);
                return;
            }
            Phase::Connecting if now >= self.phase_deadline => {
                self.cm.error(Leg::Agent, "ready_timeout");
                warn!("agent did not connect and report ready in time");
                self.end(EndReason::AgentConnectFailed("ready_timeout"));
                return;
            }
            _ => {}
        }
        if self.notice.is_some_and(|(_, deadline)| now >= deadline) {
            self.end(EndReason::Shutdown);
            return;
        }
        if now >= self.max_deadline {
            self.end(EndReason::MaxDuration);
            return;
        }
        if let Some(idle) = self.idle_deadline {
            if now >= idle {
                let next = self.last_twilio_at + self.cfg.twilio_idle_timeout;
                if next > now {
                    self.idle_deadline = Some(next);
                } else {
                    warn!(
                        idle_secs = self.cfg.twilio_idle_timeout.as_secs(),
                        "Twilio sent nothing in time; ending the call"
                    );
                    self.end(EndReason::TwilioIdle);
                    return;
                }
            }
        }
        for (side, reason) in [
            (Side::Twilio, EndReason::TwilioStalled),
            (Side::Agent, EndReason::AgentStalled),
        ] {
            if self.stall_since[side as usize]
                .is_some_and(|s| now >= s + self.cfg.write_stall_timeout)
            {
                warn!(leg = ?side, "socket accepted nothing in time; ending the call");
                self.end(reason);
                return;
            }
        }
        if let Agent::Echo(e) = &mut self.agent {
            while e.pop_due(now, &mut self.audio_scratch) {
                if self.notice.is_some() {
                    self.cm
                        .drop_frames(Direction::AgentToTwilio, DropReason::Draining, 1);
                    continue;
                }
                let n = self.audio_scratch.len();
                self.twilio_audio
                    .bytes
                    .tail()
                    .extend_from_slice(&self.audio_scratch);
                self.twilio_audio.commit(n, now, ReplyKey(0), false);
                let dropped = self
                    .twilio_audio
                    .enforce_cap(self.cfg.twilio_outbox_bytes.max(1));
                self.cm
                    .drop_frames(Direction::AgentToTwilio, DropReason::OutboxFull, dropped);
            }
        }
        let mut expired = Vec::new();
        self.tools.retain(|t| {
            if now >= t.deadline {
                expired.push(t.id.clone());
                false
            } else {
                true
            }
        });
        for id in expired {
            warn!(call_id = %id, "tool webhook timed out");
            self.cm.tool(ToolResult::Timeout);
            self.events.push_back(CallEvent::CancelTool(id.clone()));
            self.tool_result_out(id, Err("the tool webhook timed out".into()));
        }
        if self.dtmf_deadline.is_some_and(|d| now >= d) {
            self.flush_dtmf();
        }
        // A held sub-20 ms tail is due: release it. It goes out as soon as the Twilio writer
        // takes it, and its deadline must not stay in the past meanwhile (the driver's timer
        // would fire at once, again and again, while the writer is full).
        if self.hold_deadline().is_some_and(|d| now >= d) {
            self.tail_open = false;
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let mut t = match self.phase {
            Phase::AwaitStart | Phase::Connecting => self.phase_deadline,
            Phase::Ready => self.max_deadline,
        }
        .min(self.max_deadline);
        let mut min = |d: Option<Instant>| {
            if let Some(d) = d {
                t = t.min(d);
            }
        };
        min(self.idle_deadline);
        for s in self.stall_since {
            min(s.map(|s| s + self.cfg.write_stall_timeout));
        }
        if let Agent::Echo(e) = &self.agent {
            min(e.next_due());
        }
        for tool in &self.tools {
            min(Some(tool.deadline));
        }
        min(self.dtmf_deadline);
        min(self.hold_deadline());
        min(self.notice.map(|(_, d)| d));
        Some(t)
    }

    /// When a held sub-20 ms tail must go out, if one is held.
    fn hold_deadline(&self) -> Option<Instant> {
        if !self.coalesce || !self.tail_open || self.twilio_audio.items.len() != 1 {
            return None;
        }
        let item = self.twilio_audio.items.front()?;
        (item.len < MIN_MEDIA_BYTES).then_some(item.read_at + COALESCE_HOLD)
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    // === output ===

    /// Encodes the next message `side` owes into `out` (replacing its contents); `false`
    /// when there is nothing to send now. Audio is chunked to `--twilio-chunk-ms` for Twilio
    /// and follows control messages for the agent. Call repeatedly until `false`.
    pub fn poll_transmit(&mut self, side: Side, out: &mut Vec<u8>, now: Instant) -> bool {
        match side {
            Side::Twilio => self.transmit_twilio(out, now),
            Side::Agent => self.transmit_agent(out),
        }
    }

    fn transmit_twilio(&mut self, out: &mut Vec<u8>, now: Instant) -> bool {
        if self.stream_sid.is_empty() {
            return false;
        }
        if let Some(signal) = self.clear_owed.take() {
            tw::encode_clear(&self.stream_sid, out);
            let tail_ms = self.playout.on_clear();
            if tail_ms > 0 {
                self.cm.playout(false, crate::audio::ms_to_bytes(tail_ms));
            }
            self.clear_pending = Some(signal);
            self.reply_sent_ms = 0;
            return true;
        }
        let held = self.hold_deadline().is_some_and(|d| now < d);
        if !held {
            if let Some((read_at, reply, done)) = self
                .twilio_audio
                .take_front(self.cfg.twilio_chunk_bytes.max(1), &mut self.audio_scratch)
            {
                let n = self.audio_scratch.len();
                tw::encode_media(&self.stream_sid, &self.audio_scratch, out);
                if reply != self.reply_key || self.reply_sent_ms == 0 {
                    if reply != self.reply_key {
                        self.reply_key = reply;
                        self.reply_sent_ms = 0;
                    }
                    if self.reply_sent_ms == 0 {
                        self.reply_start_ms = self.playout.sent_ms();
                        self.first_reply_audio(reply, now);
                    }
                }
                self.playout.on_audio_sent(n);
                self.reply_sent_ms += crate::audio::bytes_to_ms(n as u64).max(u64::from(n > 0));
                self.cm.frame(Direction::AgentToTwilio, n);
                if done {
                    self.written_pending[Side::Twilio as usize].push(read_at);
                }
                self.mark_owed = true;
                return true;
            }
        }
        if self.mark_owed {
            self.mark_owed = false;
            let forced = self
                .notice
                .is_some_and(|(end_ms, _)| self.playout.sent_ms() >= end_ms)
                .then(|| self.playout.force_mark());
            if let Some(ms) = forced.flatten().or_else(|| self.playout.take_mark()) {
                playout::mark_name(ms, &mut self.mark);
                tw::encode_mark(&self.stream_sid, &self.mark, out);
                self.playout.on_mark_sent(ms, now);
                return true;
            }
        }
        false
    }

    /// The first audio of reply `reply` is going to Twilio at `now`: a turn ends here if the
    /// caller finished speaking before the reply began.
    fn first_reply_audio(&mut self, reply: ReplyKey, now: Instant) {
        if let Some((at, before)) = self.turn_from {
            if reply > before || matches!(self.agent, Agent::Echo(_)) {
                let d = now.saturating_duration_since(at);
                self.cm.sample(Sample::Turn, d.as_secs_f64());
                self.figures.turn.push(d);
                self.turn_from = None;
            }
        }
        if let Some((at, before)) = self.agent_turn_from {
            if reply > before {
                let d = now.saturating_duration_since(at);
                self.cm.sample(Sample::AgentTurn, d.as_secs_f64());
                self.figures.agent_turn.push(d);
                self.agent_turn_from = None;
            }
        }
    }

    fn transmit_agent(&mut self, out: &mut Vec<u8>) -> bool {
        let Agent::Dialect(d) = &self.agent else {
            return false;
        };
        while let Some(cmd) = self.agent_cmds.front() {
            if self.phase != Phase::Ready && !matches!(cmd, AgentCmd::SessionInit) {
                break;
            }
            let part = self.cmd_part;
            let sent = match cmd {
                AgentCmd::SessionInit => d.encode_session_init(part, out),
                AgentCmd::Pong(id) => {
                    part == 0 && {
                        d.encode_pong(*id, out);
                        true
                    }
                }
                AgentCmd::ToolResult { id, output } => d.encode_tool_result(part, id, output, out),
                AgentCmd::Dtmf(digits) => d.encode_dtmf(part, digits, out),
                AgentCmd::BargeIn { reply, played_ms } => {
                    part == 0 && d.encode_barge_in(*reply, *played_ms, out)
                }
            };
            if sent {
                self.cmd_part += 1;
                return true;
            }
            self.agent_cmds.pop_front();
            self.cmd_part = 0;
        }
        if self.phase != Phase::Ready {
            return false;
        }
        let Some((read_at, _, _)) = self
            .agent_audio
            .take_front(usize::MAX, &mut self.audio_scratch)
        else {
            return false;
        };
        d.encode_audio(&self.audio_scratch, out);
        self.cm
            .frame(Direction::TwilioToAgent, self.audio_scratch.len());
        if self.ready_at.is_some_and(|r| read_at >= r) {
            self.written_pending[Side::Agent as usize].push(read_at);
        }
        true
    }

    /// True when `side` has something to send that [`CallMachine::poll_transmit`] would
    /// give now (cheap; the driver uses it to skip empty fills).
    pub fn wants_transmit(&self, side: Side) -> bool {
        match side {
            Side::Twilio => {
                self.clear_owed.is_some() || !self.twilio_audio.is_empty() || self.mark_owed
            }
            Side::Agent => {
                !self.agent_cmds.is_empty()
                    || (self.phase == Phase::Ready && !self.agent_audio.is_empty())
            }
        }
    }
}

impl CallMachine {
    /// The call's figures as of `now` (`started_unix_ms`: the upgrade in Unix ms).
    pub fn summary(&self, now: Instant, started_unix_ms: u64) -> CallSummary {
        let h = |h: &LatencyHistogram| Quantiles {
            count: h.count(),
            p50_ms: h.quantile(0.5).map(ms),
            p95_ms: h.quantile(0.95).map(ms),
            p99_ms: h.quantile(0.99).map(ms),
            max_ms: h.max().map(ms),
        };
        let s = |s: &Samples| Quantiles {
            count: s.len() as u64,
            p50_ms: s.quantile(0.5).map(|v| v * 1e3),
            p95_ms: s.quantile(0.95).map(|v| v * 1e3),
            p99_ms: s.quantile(0.99).map(|v| v * 1e3),
            max_ms: s.quantile(1.0).map(|v| v * 1e3),
        };
        let (played_ms, flushed_ms) = self.playout_ms();
        let f = &self.figures;
        CallSummary {
            call_sid: self.call_sid.clone(),
            stream_sid: self.stream_sid.clone(),
            agent: self.kind.as_str(),
            state: if self.end.is_some() { "ended" } else { "live" },
            outcome: self.end.as_ref().map(EndReason::outcome),
            started_unix_ms,
            duration_ms: now.saturating_duration_since(self.started_at).as_millis() as u64,
            frames_twilio_to_agent: self.cm.frames_total(Direction::TwilioToAgent),
            frames_agent_to_twilio: self.cm.frames_total(Direction::AgentToTwilio),
            dropped_twilio_to_agent: self.cm.dropped_total[0],
            dropped_agent_to_twilio: self.cm.dropped_total[1],
            inbound_frames_missing: self.cm.missing_total(),
            played_ms,
            flushed_ms,
            barge_ins: self.cm.events_total[CallEventKind::BargeIn as usize],
            dtmf_digits: self.cm.events_total[CallEventKind::DtmfDigit as usize],
            tool_calls: f.tool_calls,
            bad_inputs: f.bad_inputs,
            latency: Latencies {
                forward_twilio_to_agent: h(&self.cm.latency[0]),
                forward_agent_to_twilio: h(&self.cm.latency[1]),
                turn: s(&f.turn),
                agent_turn: s(&f.agent_turn),
                barge_in: s(&f.barge_in),
                playout_lag: s(&f.playout_lag),
                inbound_jitter: h(&self.cm.jitter),
                agent_ping_rtt: s(&f.ping_rtt),
            },
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests;
