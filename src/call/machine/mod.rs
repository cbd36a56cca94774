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

pub mod actions;
pub mod agent_cmds;
mod agent_in;
mod amd;
pub mod barge_in;
mod caller_in;
pub mod caller_out;
mod continuity;
pub mod control;
pub mod dtmf;
pub mod early_audio;
pub mod figures;
mod io;
pub mod outbox;
pub mod playout;
mod record;
pub mod recovery;
mod summary;
pub mod timers;
pub mod tools;

use super::end::EndReason;
use super::settings::TransferDest;
use super::settings::{CallSettings, DRAIN_NOTICE_GRACE};
use super::tool_webhook::WebhookAnswer;
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
use actions::Actions;
use agent_cmds::{AgentCmd, AgentCmds};
use barge_in::BargeIn;
use caller_out::{CallerOut, Transmitted};
use control::ActionRecord;
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
    /// This call is recorded: open its recording (named by the call and stream SIDs).
    RecordingStarted,
    /// Hand these recorded samples to the recording writer.
    RecordingBlock(crate::call::recording::Block),
    /// Redirect the call to a person through the carrier's REST API (the announcement was
    /// heard); answer with [`CallMachine::handle_call_update`].
    Transfer {
        /// Where.
        dest: TransferDest,
        /// What the person who answers hears first.
        summary: Option<String>,
    },
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
    actions: Actions,
    action_record: Option<ActionRecord>,
    /// Whether the carrier can redirect this call (see
    /// [`CallMachine::set_transfers_available`]).
    transfers_available: bool,
    /// The agent's socket is gone while the call goes on (a call action finishes, or a
    /// recovery reconnects).
    agent_gone: bool,
    recovery: recovery::Recovery,
    /// The conversation as heard (re-seeding, the post-call record).
    history: crate::agent::history::History,
    /// Bumped when the agent connection the machine expects changes.
    agent_generation: u64,
    /// How the call ends if the current failure is not recovered.
    failure_reason: Option<EndReason>,
    /// The next `--agent-fallback` entry to try.
    fallback_index: usize,
    /// The vendor refused to resume: re-seed instead.
    resume_refused: bool,
    /// The newest agent message (the response timeout's reference).
    last_agent_msg_at: Instant,
    /// When the agent session rolls over.
    rollover_at: Option<Instant>,
    /// The call's recording timeline, when it is recorded.
    recording: Option<crate::call::recording::Timeline>,
    /// The call reached voicemail and the agent's first reply is the message.
    voicemail_pending: bool,
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
            actions: Actions::default(),
            action_record: None,
            transfers_available: false,
            agent_gone: false,
            recovery: recovery::Recovery::default(),
            history: crate::agent::history::History::default(),
            agent_generation: 0,
            failure_reason: None,
            fallback_index: 0,
            resume_refused: false,
            last_agent_msg_at: now,
            rollover_at: None,
            recording: None,
            voicemail_pending: false,
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

    /// The start message's stream parameters (name, value), in order.
    pub fn stream_parameters(&self) -> &[(String, String)] {
        &self.custom_parameters
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
        self.timers.set(Timer::Action, self.actions.deadline());
        self.timers
            .set(Timer::Recovery, self.recovery.next_deadline());
        self.timers
            .set(Timer::AgentSilent, self.response_deadline());
        self.timers.set(Timer::Rollover, self.rollover_at);
    }

    /// The conversation heard so far.
    pub fn history(&self) -> &crate::agent::history::History {
        &self.history
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
}

#[cfg(test)]
mod continuity_tests;
#[cfg(test)]
mod control_tests;
#[cfg(test)]
mod tests;
