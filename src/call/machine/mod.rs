//! The call machine: every per-call decision, with no sockets, no tokio and no clock of its
//! own (after quinn-proto's `Connection`). Time comes in as an `Instant` argument, so every
//! timer is testable without sleeping. It knows no vendor and no carrier: the call's
//! `agent::Session` and `carrier::CarrierSession` translate.
//!
//! # Using it
//! Inputs, in any order: [`CallMachine::handle_caller`] (a decoded carrier event; decode with
//! [`CallMachine::carrier_mut`]), [`CallMachine::handle_agent`] (a decoded agent event; decode
//! with [`CallMachine::dialect_mut`]), [`CallMachine::handle_admission`],
//! [`CallMachine::handle_agent_connected`], [`CallMachine::handle_tool_result`],
//! [`CallMachine::handle_write_blocked`] / [`CallMachine::handle_write_progress`] /
//! [`CallMachine::handle_write_done`] (socket progress), [`CallMachine::handle_bad_input`],
//! [`CallMachine::handle_drain_deadline`], [`CallMachine::handle_timeout`], and
//! [`CallMachine::end`] for transport-level endings.
//!
//! Outputs: [`CallMachine::poll_transmit`] (the next message a leg owes, encoded into a
//! buffer the driver owns), [`CallMachine::poll_timeout`] (the next deadline),
//! [`CallMachine::poll_event`] (admit the stream, connect the agent, call or cancel a tool
//! webhook), and [`CallMachine::end_reason`] (set once the call is over).
//!
//! # Parts
//! The machine is a composition of small sans-IO parts, each with its own state and tests,
//! their deadlines in one [`timers::TimerTable`]:
//! [`caller_out`] (playout: the caller-leg outbox, clear, marks, played/flushed),
//! [`barge_in`] (the interruption filter), [`early_audio`] (caller audio for the agent, held
//! while it connects), [`agent_cmds`] (what the agent leg owes besides audio), [`tools`],
//! [`dtmf`], and [`figures`] (turn latency and the call's samples). This file routes events
//! between them and owns the call's phase and end.

pub mod agent_cmds;
pub mod barge_in;
pub mod caller_out;
pub mod dtmf;
pub mod early_audio;
pub mod figures;
pub mod outbox;
pub mod playout;
pub mod timers;
pub mod tools;

use super::end::EndReason;
use super::settings::{CallSettings, DRAIN_NOTICE_GRACE};
use crate::agent::{
    AgentEvent, AgentKind, CallParams, LocalEvent, ReplyKey, Session, Speaker, ToolOutput,
};
use crate::auth::tokens::TokenError;
use crate::carrier::{CallerEvent, CarrierKind, CarrierSession, Start};
use crate::obs::call_metrics::CallMetrics;
use crate::obs::calls::{CallSummary, Latencies, Quantiles};
use crate::obs::labels::{
    CallEventKind, Direction, DropReason, ErrorKind, Leg, Sample, ToolResult,
};
use crate::obs::latency::LatencyHistogram;
use agent_cmds::{AgentCmd, AgentCmds};
use barge_in::BargeIn;
use caller_out::{CallerOut, Transmitted};
use dtmf::Dtmf;
use early_audio::EarlyAudio;
use figures::{CallFigures, Samples, Turns};
use playout::MarkOutcome;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timers::{Timer, TimerTable};
use tools::{Decision, Tools};
use tracing::{debug, info, warn};

/// What the driver must do for the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// Check the stream's token for `call_sid` (when the carrier requires one) and register
    /// it as the call's live stream; answer with [`CallMachine::handle_admission`].
    Admit {
        /// The call's id at the carrier.
        call_sid: String,
        /// The stream token it presented (its `relay_token` parameter, or the one in its URL).
        token: Option<String>,
    },
    /// `start` was accepted and the call's agent chosen (counted per agent and carrier).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Upgraded, waiting for `start`.
    AwaitStart,
    /// `start` arrived; the stream's admission (token, live registry) is being checked.
    Admitting,
    /// Admitted; the agent is connecting or its session is not ready yet.
    Connecting,
    /// Audio flows both ways.
    Ready,
}

/// One call's state. See the module docs for the input/output contract.
pub struct CallMachine {
    cfg: Arc<CallSettings>,
    phase: Phase,
    started_at: Instant,
    timers: TimerTable,
    /// The newest caller-leg message time (the idle check re-arms from it).
    last_caller_at: Instant,
    stream_sid: String,
    call_sid: String,
    custom_parameters: Vec<(String, String)>,
    /// A stream token the carrier carried in the upgrade URL (Telnyx).
    url_token: Option<String>,
    kind: AgentKind,
    agent: Option<Session>,
    carrier: CarrierSession,
    early: EarlyAudio,
    out: CallerOut,
    cmds: AgentCmds,
    barge: BargeIn,
    tools: Tools,
    dtmf: Dtmf,
    turns: Turns,
    figures: CallFigures,
    /// Read times of messages handed to a writer (caller, agent), recorded as latency once
    /// written.
    written_pending: [Vec<Instant>; 2],
    /// Last inbound media: arrival time and its chunk number.
    last_media: Option<(Instant, Option<u64>)>,
    events: VecDeque<CallEvent>,
    cm: CallMetrics,
    end: Option<EndReason>,
    /// The drain notice is playing: the call closes once the carrier played up to this
    /// offset (ms of agent audio), or at its deadline.
    notice: Option<u64>,
    audio_scratch: Vec<u8>,
}

impl std::fmt::Debug for CallMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMachine")
            .field("phase", &self.phase)
            .field("stream_sid", &self.stream_sid)
            .field("carrier", &self.carrier.kind())
            .field("agent", &self.kind)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

const CALLER: usize = 0;
const AGENT: usize = 1;

impl CallMachine {
    /// A call whose socket from `carrier` was upgraded at `now`.
    pub fn new(cfg: Arc<CallSettings>, carrier: CarrierKind, now: Instant) -> CallMachine {
        let kind = cfg.default_agent;
        let mut timers = TimerTable::default();
        timers.set(Timer::Phase, Some(now + cfg.start_timeout));
        timers.set(Timer::MaxDuration, Some(now + cfg.max_call_duration));
        CallMachine {
            phase: Phase::AwaitStart,
            started_at: now,
            timers,
            last_caller_at: now,
            stream_sid: String::new(),
            call_sid: String::new(),
            custom_parameters: Vec::new(),
            url_token: None,
            kind,
            agent: None,
            carrier: CarrierSession::new(carrier),
            early: EarlyAudio::default(),
            out: CallerOut::new(false),
            cmds: AgentCmds::default(),
            barge: BargeIn::default(),
            tools: Tools::default(),
            dtmf: Dtmf::default(),
            turns: Turns::default(),
            figures: CallFigures::default(),
            written_pending: [Vec::new(), Vec::new()],
            last_media: None,
            events: VecDeque::new(),
            cm: CallMetrics::new(kind.index(), carrier.index()),
            end: None,
            notice: None,
            audio_scratch: Vec::new(),
            cfg,
        }
    }

    // === accessors ===

    /// The stream id (empty before `start`).
    pub fn stream_sid(&self) -> &str {
        &self.stream_sid
    }

    /// The call id (empty before `start`).
    pub fn call_sid(&self) -> &str {
        &self.call_sid
    }

    /// The call's agent (the default until `start` names another).
    pub fn agent_kind(&self) -> AgentKind {
        self.kind
    }

    /// The call's carrier.
    pub fn carrier_kind(&self) -> CarrierKind {
        self.carrier.kind()
    }

    /// The call's session parameters (from the start message).
    pub fn params(&self) -> CallParams {
        CallParams::from_custom_parameters(&self.custom_parameters)
    }

    /// A stream parameter of the start message.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.custom_parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The stream token the carrier carried in its upgrade URL (set before `start`).
    pub fn set_url_token(&mut self, token: Option<String>) {
        self.url_token = token;
    }

    /// The call's dialect, to decode agent frames with (`None` before `start`).
    pub fn dialect_mut(&mut self) -> Option<&mut Session> {
        self.agent.as_mut()
    }

    /// The call's dialect.
    pub fn dialect(&self) -> Option<&Session> {
        self.agent.as_ref()
    }

    /// The call's carrier codec, to decode caller frames with.
    pub fn carrier_mut(&mut self) -> &mut CarrierSession {
        &mut self.carrier
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
        self.out.totals_ms()
    }

    /// When the call began (the upgrade).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Ends the call (the first reason sticks).
    pub fn end(&mut self, reason: EndReason) {
        if self.end.is_none() {
            debug!(reason = %reason.outcome(), "call ending");
            self.end = Some(reason);
            self.timers.clear();
        }
    }

    /// The deadlines that follow from the parts' state (held tail, local agent, tools,
    /// keypad), brought into the table after every input.
    fn sync_timers(&mut self) {
        if self.end.is_some() {
            return;
        }
        self.timers
            .set(Timer::CoalesceHold, self.out.hold_deadline());
        self.timers.set(
            Timer::LocalAgent,
            self.agent
                .as_ref()
                .filter(|a| a.is_local())
                .and_then(Session::next_due),
        );
        self.timers.set(Timer::Tools, self.tools.next_deadline());
        self.timers.set(Timer::Dtmf, self.dtmf.deadline);
    }

    /// The relay's drain deadline passed at `now`: with a notice configured and a stream to
    /// play it on, the caller's playback is cleared, the notice queued, and the call closes
    /// (outcome `shutdown`) once the carrier confirms it played, or [`DRAIN_NOTICE_GRACE`]
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
        let dropped = self.out.drop_all();
        self.cm
            .drop_frames(Direction::ToCaller, DropReason::Draining, dropped);
        if self.out.queued_ms() > 0 {
            self.out.owe_clear(now);
        }
        self.out
            .push_raw(&notice, ReplyKey(u64::MAX), now, usize::MAX);
        self.out.reply_ended();
        let notice_ms = crate::audio::bytes_to_ms(notice.len() as u64);
        let end_ms = self.out.sent_ms() + notice_ms;
        self.notice = Some(end_ms);
        self.out.force_mark_at(end_ms);
        self.timers.set(
            Timer::DrainNotice,
            Some(now + Duration::from_millis(notice_ms) + DRAIN_NOTICE_GRACE),
        );
        info!(
            notice_ms,
            "drain deadline: playing the drain notice before closing"
        );
        self.sync_timers();
        true
    }

    // === the caller leg ===

    /// Handles one decoded carrier message read at `now`.
    pub fn handle_caller(&mut self, ev: CallerEvent<'_>, now: Instant) {
        self.last_caller_at = now;
        match ev {
            CallerEvent::Media(m) => {
                if self.phase == Phase::AwaitStart {
                    self.handle_bad_input(
                        Leg::Caller,
                        ErrorKind::MediaBeforeStart,
                        &"media before start",
                    );
                    return;
                }
                self.inbound_timing(now, m.chunk);
                self.caller_audio(m.payload, now);
            }
            CallerEvent::Start(st) => self.start(st, now),
            CallerEvent::Mark { name } => self.mark_echo(name, now),
            CallerEvent::Dtmf { digit } => {
                self.cm.event(CallEventKind::DtmfDigit);
                debug!(digit, "dtmf");
                if let Some(digits) = self.dtmf.push(digit, now, self.cfg.dtmf_interdigit) {
                    self.send_dtmf(digits, now);
                }
            }
            CallerEvent::Stop => self.end(EndReason::CallerHangup),
            CallerEvent::Connected { protocol, version } => {
                debug!(?protocol, ?version, "carrier connected");
            }
            CallerEvent::Error {
                code,
                title,
                detail,
            } => {
                let reason = format_args!(
                    "the carrier reported an error: {} {} ({})",
                    code.unwrap_or(0),
                    title.unwrap_or(""),
                    detail.unwrap_or("")
                );
                self.handle_bad_input(Leg::Caller, ErrorKind::CarrierErrorEvent, &reason);
            }
            CallerEvent::Other { event } => {
                self.cm.event(CallEventKind::UnknownCallerEvent);
                debug!(event, "skipped unknown carrier event");
            }
        }
        self.sync_timers();
    }

    fn mark_echo(&mut self, name: &str, now: Instant) {
        let (outcome, lag) = self.out.on_mark_echo(name, now);
        match outcome {
            MarkOutcome::Played(ms) => {
                self.cm.event(CallEventKind::MarkPlayed);
                self.cm.playout(true, crate::audio::ms_to_bytes(ms));
                if self
                    .notice
                    .is_some_and(|end_ms| self.out.played_through_ms() >= end_ms)
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

    fn start(&mut self, st: Start<'_>, now: Instant) {
        if self.phase != Phase::AwaitStart {
            self.handle_bad_input(
                Leg::Caller,
                ErrorKind::DuplicateStart,
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
        if !st.mulaw_8k_mono {
            self.cm
                .error(Leg::Caller, ErrorKind::MediaFormatUnsupported);
            warn!(
                encoding = ?st.encoding,
                sample_rate = ?st.sample_rate,
                channels = ?st.channels,
                "refused stream: media format is not G.711 μ-law 8000 Hz mono (the relay never transcodes)"
            );
            self.end(EndReason::MediaFormatUnsupported);
            return;
        }
        if let Some(name) = self.param("agent").map(str::to_owned) {
            match AgentKind::from_name(&name) {
                Some(k) => self.kind = k,
                None => {
                    warn!(agent = %name, "refused stream: unknown agent");
                    self.cm.error(Leg::Agent, ErrorKind::AgentNotConfigured);
                    self.end(EndReason::AgentConnectFailed(ErrorKind::UnknownAgent));
                    return;
                }
            }
        }
        self.cm.agent = self.kind.index();
        self.phase = Phase::Admitting;
        let token = self
            .param("relay_token")
            .map(str::to_owned)
            .or_else(|| self.url_token.take());
        self.events.push_back(CallEvent::Admit {
            call_sid: self.call_sid.clone(),
            token,
        });
        let _ = now;
    }

    /// The driver's answer to [`CallEvent::Admit`] at `now`: the token check's result (when
    /// the carrier requires tokens), and whether this stream replaced an older live one of
    /// the same call.
    pub fn handle_admission(
        &mut self,
        token: Option<Result<(), TokenError>>,
        replaced_older: bool,
        now: Instant,
    ) {
        if self.end.is_some() || self.phase != Phase::Admitting {
            return;
        }
        if let Some(Err(e)) = token {
            self.cm.error(Leg::Caller, e.kind());
            warn!(reason = %e, "refused stream: bad relay_token");
            self.end(EndReason::TokenRejected(e.kind()));
            return;
        }
        if replaced_older {
            warn!("a second stream for this call arrived: it replaces the older one (policy: keep the newest)");
        }
        self.timers
            .set(Timer::CallerIdle, Some(now + self.cfg.caller_idle_timeout));
        info!(
            parameters = self.custom_parameters.len(),
            agent = self.kind.as_str(),
            carrier = self.carrier.kind().as_str(),
            "stream started"
        );
        self.events.push_back(CallEvent::Started(self.kind));
        let Some(session) = Session::new(self.kind, &self.cfg.agents, self.params()) else {
            warn!(
                agent = self.kind.as_str(),
                "refused stream: agent not configured on this relay"
            );
            self.cm.error(Leg::Agent, ErrorKind::AgentNotConfigured);
            self.end(EndReason::AgentConnectFailed(ErrorKind::AgentNotConfigured));
            return;
        };
        self.out.set_coalesce(session.coalesces_small_deltas());
        if session.is_local() {
            self.phase = Phase::Ready;
            self.early.ready_at = Some(now);
            self.timers.set(Timer::Phase, None);
        } else {
            self.phase = Phase::Connecting;
            self.timers
                .set(Timer::Phase, Some(now + self.cfg.agent_connect_timeout));
            self.events.push_back(CallEvent::ConnectAgent(self.kind));
        }
        self.agent = Some(session);
        self.sync_timers();
    }

    /// Jitter (inter-arrival minus 20 ms) and missing frames (gaps in the chunk numbers).
    fn inbound_timing(&mut self, now: Instant, chunk: Option<u64>) {
        if let Some((prev_at, prev_chunk)) = self.last_media {
            let gap = now.saturating_duration_since(prev_at);
            let dev = gap.abs_diff(crate::audio::FRAME_DURATION);
            self.cm.jitter.record(dev);
            if let (Some(p), Some(c)) = (prev_chunk, chunk) {
                // Frames skipped in the numbering, but never more than could have been sent
                // in the time that passed (one per 20 ms, plus one): a peer jumping its
                // chunk numbers cannot inflate the count.
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
    /// agent outbox (or handed to a local agent), measured by the speech detector.
    fn caller_audio(&mut self, payload: &str, now: Instant) {
        let newest = self.newest_reply();
        match &mut self.agent {
            Some(s) if !s.is_local() => {
                let n = match self.early.push_b64(payload) {
                    Ok(n) => n,
                    Err(_) => return self.bad_payload(),
                };
                if n == 0 {
                    return self.empty_payload();
                }
                self.turns.caller_frame(self.early.last(n), now, newest);
                let (reason, dropped) = self.early.commit(
                    n,
                    now,
                    self.cfg.early_audio_bytes,
                    self.cfg.agent_outbox_bytes,
                );
                self.cm.drop_frames(Direction::ToAgent, reason, dropped);
            }
            agent => {
                if crate::wire::b64::decode(payload, &mut self.audio_scratch).is_err() {
                    return self.bad_payload();
                }
                let n = self.audio_scratch.len();
                if n == 0 {
                    return self.empty_payload();
                }
                self.turns.caller_frame(&self.audio_scratch, now, newest);
                if let Some(s) = agent {
                    let dropped = s.on_caller_audio(now, &self.audio_scratch);
                    self.cm.frame(Direction::ToAgent, n);
                    self.cm
                        .drop_frames(Direction::ToCaller, DropReason::EchoQueueFull, dropped);
                }
            }
        }
    }

    fn bad_payload(&mut self) {
        self.handle_bad_input(
            Leg::Caller,
            ErrorKind::InvalidBase64,
            &"media.payload is not valid base64",
        );
    }

    fn empty_payload(&mut self) {
        // Nothing to relay; an empty item would still take a place in the outbox.
        self.handle_bad_input(
            Leg::Caller,
            ErrorKind::EmptyPayload,
            &"media.payload is empty",
        );
    }

    /// The newest reply key the agent has used.
    fn newest_reply(&self) -> ReplyKey {
        self.agent
            .as_ref()
            .map_or(ReplyKey(0), Session::current_reply)
    }

    /// Counts a message that was skipped, logging the first few at `warn` (rate-limited per
    /// call, so one hostile peer cannot flood the log). The reason is only formatted when
    /// logged.
    pub fn handle_bad_input(&mut self, leg: Leg, kind: ErrorKind, reason: &dyn std::fmt::Display) {
        self.cm.error(leg, kind);
        self.figures.bad_inputs = self.figures.bad_inputs.saturating_add(1);
        let n = self.figures.bad_inputs;
        let leg_label = match leg {
            Leg::Caller => self.carrier.kind().as_str(),
            other => other.as_str(),
        };
        if n <= BAD_INPUT_WARN_LIMIT {
            warn!(leg = leg_label, kind = %kind, reason = %reason, "skipped bad message");
            if n == BAD_INPUT_WARN_LIMIT {
                warn!("further bad messages on this call are counted, not logged (see the call summary)");
            }
        } else {
            debug!(leg = leg_label, kind = %kind, reason = %reason, "skipped bad message");
        }
    }

    // === the agent leg ===

    /// The agent socket is open: the session-opening messages go first.
    pub fn handle_agent_connected(&mut self) {
        self.cmds.session_init();
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
                    self.cm.error(Leg::Agent, ErrorKind::AudioFormatMismatch);
                    warn!(
                        ?input_format,
                        ?output_format,
                        "agent audio formats are not G.711 μ-law 8 kHz both ways; configure the agent for μ-law 8000 Hz (the relay never transcodes)"
                    );
                    self.end(EndReason::AudioFormatMismatch);
                    return;
                }
                if self.phase == Phase::Connecting {
                    info!(?session_id, early_bytes = self.early.len(), "agent ready");
                    // The early audio goes out first, in order.
                    self.phase = Phase::Ready;
                    self.early.ready_at = Some(now);
                    self.timers.set(Timer::Phase, None);
                }
            }
            AgentEvent::Interrupted { through } => {
                let through = through.unwrap_or_else(|| self.newest_reply());
                let signal = self
                    .agent
                    .as_ref()
                    .is_some_and(Session::clears_on_interrupted);
                self.interrupt(through, signal, now);
            }
            AgentEvent::SpeechStarted => {
                if self
                    .agent
                    .as_ref()
                    .is_some_and(Session::clears_on_speech_started)
                {
                    let through = self.newest_reply();
                    self.interrupt(through, true, now);
                }
            }
            AgentEvent::SpeechStopped => {
                let newest = self.newest_reply();
                self.turns.agent_heard_end(now, newest);
            }
            AgentEvent::Transcript { speaker, text } => {
                if speaker == Speaker::Caller
                    && self
                        .agent
                        .as_ref()
                        .is_some_and(Session::transcript_ends_turn)
                {
                    let newest = self.newest_reply();
                    self.turns.agent_heard_end(now, newest);
                }
                debug!(speaker = ?speaker, text, "transcript");
            }
            AgentEvent::ReplyStarted => self.tools.reply_started(),
            AgentEvent::ReplyDone { interrupted } => self.reply_done(interrupted, now),
            AgentEvent::AudioDone => self.out.reply_ended(),
            AgentEvent::ToolCall {
                id,
                name,
                arguments,
            } => self.tool_call(id, name, arguments, now),
            AgentEvent::Ping { id, rtt_ms } => {
                self.cmds.pong(id);
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
                self.cm.error(Leg::Agent, ErrorKind::AgentErrorEvent);
                warn!(
                    ?code,
                    ?numeric_code,
                    ?message,
                    fatal,
                    "agent reported an error"
                );
                if fatal {
                    self.end(EndReason::AgentError(ErrorKind::AgentErrorEvent));
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
        self.sync_timers();
    }

    fn reply_done(&mut self, interrupted: bool, now: Instant) {
        self.out.reply_ended();
        if interrupted {
            let through = self.newest_reply();
            let signal = self
                .agent
                .as_ref()
                .is_some_and(Session::clears_on_interrupted);
            self.interrupt(through, signal, now);
        }
        for _ in 0..self.tools.reply_done(interrupted, &mut self.cmds) {
            self.cm.tool(ToolResult::Discarded);
        }
    }

    fn agent_audio_in(&mut self, reply: ReplyKey, payload_b64: &str, now: Instant) {
        if self.notice.is_some() {
            self.cm
                .drop_frames(Direction::ToCaller, DropReason::Draining, 1);
            return;
        }
        if self.barge.is_stale(reply) {
            self.cm
                .drop_frames(Direction::ToCaller, DropReason::Interrupted, 1);
            debug!(
                reply = reply.0,
                "dropped stale agent audio after an interruption"
            );
            return;
        }
        match self
            .out
            .push_b64(payload_b64, reply, now, self.cfg.caller_outbox_bytes)
        {
            Ok((_, dropped)) => {
                self.cm
                    .drop_frames(Direction::ToCaller, DropReason::OutboxFull, dropped)
            }
            Err(_) => self.handle_bad_input(
                Leg::Agent,
                ErrorKind::InvalidBase64,
                &"agent audio is not valid base64",
            ),
        }
    }

    fn interrupt(&mut self, through: ReplyKey, signal: bool, now: Instant) {
        self.barge.interrupt(
            through,
            signal,
            now,
            &mut self.out,
            &mut self.cmds,
            &mut self.cm,
        );
    }

    /// Whatever a local agent has due at `now`.
    fn poll_local_agent(&mut self, now: Instant) {
        let mut audio = std::mem::take(&mut self.audio_scratch);
        while let Some(ev) = self
            .agent
            .as_mut()
            .and_then(|s| s.poll_local(now, &mut audio))
        {
            match ev {
                LocalEvent::Audio(reply) => {
                    if self.notice.is_some() {
                        self.cm
                            .drop_frames(Direction::ToCaller, DropReason::Draining, 1);
                        continue;
                    }
                    let dropped =
                        self.out
                            .push_raw(&audio, reply, now, self.cfg.caller_outbox_bytes);
                    self.cm
                        .drop_frames(Direction::ToCaller, DropReason::OutboxFull, dropped);
                }
                LocalEvent::ReplyStarted => self.tools.reply_started(),
                LocalEvent::ReplyDone => self.reply_done(false, now),
                LocalEvent::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    self.tool_call(&id, &name, Ok(arguments), now);
                    self.deliver_local_cmds(now);
                }
                LocalEvent::Ended => {
                    info!("agent ended the session");
                    self.end(EndReason::AgentEnded);
                    break;
                }
            }
        }
        self.audio_scratch = audio;
    }

    /// A local agent takes its commands (tool results, keypad digits) at once.
    fn deliver_local_cmds(&mut self, now: Instant) {
        let Some(s) = self.agent.as_mut().filter(|s| s.is_local()) else {
            return;
        };
        while let Some(cmd) = self.cmds.pop() {
            match cmd {
                AgentCmd::ToolResult { id, output } => s.on_tool_result(&id, &output, now),
                AgentCmd::Dtmf(digits) => s.on_dtmf(&digits, now),
                AgentCmd::SessionInit | AgentCmd::Pong(_) | AgentCmd::BargeIn { .. } => {}
            }
        }
    }

    fn send_dtmf(&mut self, digits: String, now: Instant) {
        if self.agent.is_none() {
            return;
        }
        self.cmds.dtmf(digits);
        self.deliver_local_cmds(now);
    }

    fn tool_call(
        &mut self,
        id: &str,
        name: &str,
        arguments: Result<serde_json::Value, &'static str>,
        now: Instant,
    ) {
        let decision = self.tools.decide(
            arguments.as_ref().map(|_| ()).map_err(|e| *e),
            self.cfg.tools.webhook_url.is_some(),
            self.cfg.tools.max_per_call,
        );
        match (decision, arguments) {
            (Decision::Refuse(r, msg), _) => {
                self.cm.tool(r);
                info!(
                    tool = name,
                    call_id = id,
                    result = r.as_str(),
                    "tool call refused"
                );
                self.tool_result_out(id.to_owned(), Err(msg.to_owned()));
            }
            (Decision::Call, Ok(arguments)) => {
                info!(tool = name, call_id = id, "calling the tool webhook");
                self.tools
                    .started(id.to_owned(), now, self.cfg.tools.timeout);
                self.events.push_back(CallEvent::CallTool {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments,
                });
            }
            (Decision::Call, Err(_)) => {}
        }
    }

    /// The webhook answered (or failed) for tool call `id` at `now`.
    pub fn handle_tool_result(
        &mut self,
        id: &str,
        result: ToolResult,
        output: ToolOutput,
        now: Instant,
    ) {
        if !self.tools.answered(id) {
            return; // timed out already
        }
        self.cm.tool(result);
        self.tool_result_out(id.to_owned(), output);
        self.deliver_local_cmds(now);
        self.sync_timers();
    }

    fn tool_result_out(&mut self, id: String, output: ToolOutput) {
        let hold = self
            .agent
            .as_ref()
            .is_some_and(Session::holds_tool_results_until_reply_done);
        if !self.tools.deliver(id, output, hold, &mut self.cmds) {
            self.cm.tool(ToolResult::Discarded);
        }
    }

    // === timers and socket progress ===

    fn stall_timer(leg: Leg) -> Timer {
        match leg {
            Leg::Agent => Timer::AgentStall,
            _ => Timer::CallerStall,
        }
    }

    /// The carrier's reordering window held a frame back or gave up on one: counts what it
    /// gave up on (`relay_errors_total{kind="out_of_order"}`).
    pub fn note_reordering(&mut self) {
        let n = self.carrier.take_out_of_order();
        self.cm.errors_n(Leg::Caller, ErrorKind::OutOfOrder, n);
    }

    /// The driver could not write everything to `leg`'s socket at `now`.
    pub fn handle_write_blocked(&mut self, leg: Leg, now: Instant) {
        let t = Self::stall_timer(leg);
        if self.end.is_none() && self.timers.get(t).is_none() {
            self.timers.set(t, Some(now + self.cfg.write_stall_timeout));
        }
    }

    /// `leg`'s socket took some bytes at `now` but not all: the peer reads, slowly. A
    /// stall is a leg that accepts nothing, so its clock starts again.
    pub fn handle_write_progress(&mut self, leg: Leg, now: Instant) {
        let t = Self::stall_timer(leg);
        if self.timers.get(t).is_some() {
            self.timers.set(t, Some(now + self.cfg.write_stall_timeout));
        }
    }

    /// Everything handed to `leg`'s writer reached the socket at `now`.
    pub fn handle_write_done(&mut self, leg: Leg, now: Instant) {
        self.timers.set(Self::stall_timer(leg), None);
        let (i, d) = match leg {
            Leg::Agent => (AGENT, Direction::ToAgent),
            _ => (CALLER, Direction::ToCaller),
        };
        let h: &mut LatencyHistogram = &mut self.cm.latency[d.index()];
        for t in self.written_pending[i].drain(..) {
            h.record(now.saturating_duration_since(t));
        }
        if leg == Leg::Caller {
            if let Some(d) = self.out.written(now) {
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
        let due: Vec<Timer> = self.timers.due(now).collect();
        for t in due {
            if self.end.is_some() {
                break;
            }
            match t {
                Timer::Phase => match self.phase {
                    Phase::AwaitStart => self.end(EndReason::StartTimeout),
                    Phase::Admitting | Phase::Connecting => {
                        self.cm.error(Leg::Agent, ErrorKind::ReadyTimeout);
                        warn!("agent did not connect and report ready in time");
                        self.end(EndReason::AgentConnectFailed(ErrorKind::ReadyTimeout));
                    }
                    Phase::Ready => self.timers.set(Timer::Phase, None),
                },
                Timer::DrainNotice => self.end(EndReason::Shutdown),
                Timer::MaxDuration => self.end(EndReason::MaxDuration),
                Timer::CallerIdle => {
                    let next = self.last_caller_at + self.cfg.caller_idle_timeout;
                    if next > now {
                        self.timers.set(Timer::CallerIdle, Some(next));
                    } else {
                        warn!(
                            idle_secs = self.cfg.caller_idle_timeout.as_secs(),
                            "the carrier sent nothing in time; ending the call"
                        );
                        self.end(EndReason::CallerIdle);
                    }
                }
                Timer::CallerStall | Timer::AgentStall => {
                    let (leg, reason) = if t == Timer::CallerStall {
                        (Leg::Caller, EndReason::CallerStalled)
                    } else {
                        (Leg::Agent, EndReason::AgentStalled)
                    };
                    warn!(
                        leg = leg.as_str(),
                        "socket accepted nothing in time; ending the call"
                    );
                    self.end(reason);
                }
                Timer::LocalAgent => self.poll_local_agent(now),
                Timer::Tools => {
                    for id in self.tools.expired(now) {
                        warn!(call_id = %id, "tool webhook timed out");
                        self.cm.tool(ToolResult::Timeout);
                        self.events.push_back(CallEvent::CancelTool(id.clone()));
                        self.tool_result_out(id, Err("the tool webhook timed out".into()));
                    }
                    self.deliver_local_cmds(now);
                }
                Timer::Dtmf => {
                    if let Some(digits) = self.dtmf.flush() {
                        self.send_dtmf(digits, now);
                    }
                }
                // A held sub-20 ms tail is due: release it. It goes out as soon as the caller
                // writer takes it, and its deadline must not stay in the past meanwhile (the
                // driver's timer would fire at once, again and again, while the writer is full).
                Timer::CoalesceHold => self.out.reply_ended(),
            }
        }
        self.sync_timers();
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        self.timers.next()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// Whether events wait for the driver (cheap).
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    // === output ===

    /// Encodes the next message `leg` owes into `out` (replacing its contents); `false`
    /// when there is nothing to send now. Agent audio is chunked to `--twilio-chunk-ms` for
    /// the carrier; caller audio follows control messages for the agent. Call repeatedly
    /// until `false`.
    pub fn poll_transmit(&mut self, leg: Leg, out: &mut Vec<u8>, now: Instant) -> bool {
        match leg {
            Leg::Caller => {
                let sent = self.transmit_caller(out, now);
                self.timers
                    .set(Timer::CoalesceHold, self.out.hold_deadline());
                sent
            }
            Leg::Agent => self.transmit_agent(out),
            Leg::Internal => false,
        }
    }

    fn transmit_caller(&mut self, out: &mut Vec<u8>, now: Instant) -> bool {
        if self.stream_sid.is_empty() {
            return false;
        }
        match self.out.transmit(
            &self.carrier,
            &self.stream_sid,
            self.cfg.caller_chunk_bytes,
            out,
            now,
        ) {
            Transmitted::Nothing => false,
            Transmitted::Clear { flushed_tail_ms } => {
                if flushed_tail_ms > 0 {
                    self.cm
                        .playout(false, crate::audio::ms_to_bytes(flushed_tail_ms));
                }
                true
            }
            Transmitted::Audio {
                bytes,
                reply,
                first_of_reply,
                read_at,
                done,
            } => {
                if first_of_reply {
                    self.turns
                        .first_reply_audio(reply, now, &mut self.cm, &mut self.figures);
                }
                self.cm.frame(Direction::ToCaller, bytes);
                if done {
                    self.written_pending[CALLER].push(read_at);
                }
                true
            }
            Transmitted::Mark => true,
        }
    }

    fn transmit_agent(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(d) = self.agent.as_ref().filter(|a| !a.is_local()) else {
            return false;
        };
        let ready = self.phase == Phase::Ready;
        if self.cmds.transmit(d, ready, out) {
            return true;
        }
        if !ready {
            return false;
        }
        let Some((read_at, counts)) = self.early.take(&mut self.audio_scratch) else {
            return false;
        };
        d.encode_audio(&self.audio_scratch, out);
        self.cm.frame(Direction::ToAgent, self.audio_scratch.len());
        if counts {
            self.written_pending[AGENT].push(read_at);
        }
        true
    }

    /// True when `leg` has something to send that [`CallMachine::poll_transmit`] would
    /// give now (cheap; the driver uses it to skip empty fills).
    #[inline]
    pub fn wants_transmit(&self, leg: Leg) -> bool {
        match leg {
            Leg::Caller => self.out.wants_transmit(),
            Leg::Agent => {
                !self.cmds.is_empty() || (self.phase == Phase::Ready && !self.early.is_empty())
            }
            Leg::Internal => false,
        }
    }

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
        let (to_agent, to_caller) = (Direction::ToAgent.index(), Direction::ToCaller.index());
        CallSummary {
            call_sid: self.call_sid.clone(),
            stream_sid: self.stream_sid.clone(),
            carrier: self.carrier.kind().as_str(),
            agent: self.kind.as_str(),
            state: if self.end.is_some() { "ended" } else { "live" },
            outcome: self.end.as_ref().map(|e| e.outcome().as_str()),
            started_unix_ms,
            duration_ms: now.saturating_duration_since(self.started_at).as_millis() as u64,
            frames_caller_to_agent: self.cm.frames_total(Direction::ToAgent),
            frames_agent_to_caller: self.cm.frames_total(Direction::ToCaller),
            dropped_caller_to_agent: self.cm.dropped_total[to_agent],
            dropped_agent_to_caller: self.cm.dropped_total[to_caller],
            inbound_frames_missing: self.cm.missing_total(),
            played_ms,
            flushed_ms,
            barge_ins: self.cm.events_total(CallEventKind::BargeIn),
            dtmf_digits: self.cm.events_total(CallEventKind::DtmfDigit),
            tool_calls: self.tools.calls,
            bad_inputs: f.bad_inputs,
            latency: Latencies {
                forward_caller_to_agent: h(&self.cm.latency[to_agent]),
                forward_agent_to_caller: h(&self.cm.latency[to_caller]),
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
