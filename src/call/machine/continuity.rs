//! Agent failures into the machine: detection sources call [`CallMachine::agent_failed`];
//! the caller keeps the line (hold audio within one turn of the driver), the [`Recovery`]
//! part schedules reconnects, a replacement session is seeded from the call's history, and
//! an exhausted recovery plays the apology and then transfers to the operator target or
//! hangs up (mark-gated, as any call action).
//!
//! [`Recovery`]: super::recovery::Recovery

use super::actions::CallAction;
use super::recovery::Failed;
use super::*;
use crate::agent::Seed;
use crate::obs::labels::{ActionSource, RecoveryCause, RecoveryResult};

impl CallMachine {
    /// Which agent connection the machine expects: bumped at every failure and rollover, so
    /// the driver retires the socket it holds when this changes.
    pub fn agent_generation(&self) -> u64 {
        self.agent_generation
    }

    /// The recoveries of this call so far.
    pub fn recoveries(&self) -> &[super::recovery::RecoveryRecord] {
        self.recovery.records()
    }

    /// The driver could not connect the agent (`kind` says why) at `now`.
    pub fn handle_agent_connect_failed(&mut self, kind: ErrorKind, now: Instant) {
        self.agent_failed(
            RecoveryCause::ConnectFailed,
            EndReason::AgentConnectFailed(kind),
            now,
        );
    }

    /// The agent socket failed (reset, protocol error, write error) at `now`.
    pub fn handle_agent_error(&mut self, kind: ErrorKind, now: Instant) {
        self.agent_failed(RecoveryCause::Reset, EndReason::AgentError(kind), now);
    }

    /// The agent leg failed at `now` with `cause`; `reason` is how the call ends if it is
    /// not recovered. During a call action the action finishes without the agent.
    pub(super) fn agent_failed(&mut self, cause: RecoveryCause, reason: EndReason, now: Instant) {
        if self.end.is_some() {
            return;
        }
        if self.actions.active().is_some() || self.recovery.exhausted() {
            self.agent_gone = true;
            self.actions.agent_gone();
            self.progress(now);
            if self.actions.active().is_none() && !self.recovery.exhausted() {
                self.end(reason);
            }
            self.sync_timers();
            return;
        }
        let policy = self.cfg.continuity.clone();
        let at_ms = now.saturating_duration_since(self.started_at).as_millis() as u64;
        let was_recovering = self.recovery.recovering();
        match self.recovery.fail(cause, now, at_ms, &policy) {
            Failed::Recovering => {
                self.agent_generation += 1;
                self.agent_gone = true;
                if !was_recovering {
                    warn!(
                        cause = cause.as_str(),
                        agent = self.kind.as_str(),
                        "agent leg failed: holding the caller and reconnecting"
                    );
                    self.failure_reason = Some(reason);
                    self.hold_caller(now);
                } else {
                    debug!(cause = cause.as_str(), "reconnect attempt failed");
                }
            }
            Failed::Exhausted if policy.max_recoveries == 0 => {
                self.end(reason);
                return;
            }
            Failed::Exhausted => {
                if self.failure_reason.is_none() {
                    self.failure_reason = Some(reason);
                }
                self.recovery_exhausted(now);
            }
        }
        self.sync_timers();
    }

    /// The agent is away: what was queued for the caller gives way to hold audio, caller
    /// audio waits (its last part goes to the next session), pending agent commands and tool
    /// calls are dropped (a new session does not know their ids).
    fn hold_caller(&mut self, now: Instant) {
        let dropped = self.out.drop_all();
        self.cm
            .drop_frames(Direction::ToCaller, DropReason::AgentFailed, dropped);
        if self.out.queued_ms() > 0 {
            self.out.owe_clear(now);
        }
        self.out.reply_ended();
        self.cmds = AgentCmds::default();
        for id in self.tools.abandon() {
            self.cm.tool(ToolResult::Discarded);
            self.events.push_back(CallEvent::CancelTool(id));
        }
        self.early.clear();
        self.early.ready_at = None;
        self.phase = Phase::Connecting;
        self.timers.set(Timer::Phase, None);
        self.recovery
            .start_hold(self.cfg.continuity.hold_audio.clone(), now);
        self.top_up_hold(now);
    }

    /// Hold audio due by `now` into the caller outbox.
    pub(super) fn top_up_hold(&mut self, now: Instant) {
        let mut buf = std::mem::take(&mut self.audio_scratch);
        let next = self.recovery.hold_audio(now, &mut buf);
        if !buf.is_empty() {
            self.out
                .push_raw(&buf, HOLD_REPLY, now, self.cfg.caller_outbox_bytes);
            self.out.reply_ended();
        }
        self.audio_scratch = buf;
        self.timers.set(Timer::Hold, next);
    }

    /// The recovery schedule's deadline passed, or an attempt (or a rollover's fresh
    /// session) is due.
    pub(super) fn recovery_timer(&mut self, now: Instant) {
        if self.recovery.take_fresh_due(now) && !self.recovery.recovering() {
            self.reconnect(now);
            return;
        }
        if self.recovery.past_deadline(now) {
            self.recovery.give_up();
            self.recovery_exhausted(now);
            return;
        }
        if self.recovery.poll(now) {
            self.reconnect(now);
        }
    }

    /// Opens a replacement session for the call's agent, seeded with what it needs.
    fn reconnect(&mut self, now: Instant) {
        let resume_id = if self.resume_refused {
            None
        } else {
            self.agent.as_ref().and_then(Session::resume_id)
        };
        let seed = Seed {
            resume_id,
            history: self.history.to_vec(),
        };
        let Some(session) = Session::recover(self.kind, &self.cfg.agents, self.params(), seed)
        else {
            self.recovery.give_up();
            self.recovery_exhausted(now);
            return;
        };
        info!(
            agent = self.kind.as_str(),
            resume = session.resume_id().is_some(),
            "reconnecting the agent"
        );
        self.open_session(session, now);
    }

    /// Makes `session` the call's agent session and asks the driver to connect it (a local
    /// one is ready at once).
    fn open_session(&mut self, session: Session, now: Instant) {
        self.barge = BargeIn::default();
        self.out.set_coalesce(session.coalesces_small_deltas());
        self.agent_gone = false;
        self.rollover_at = Session::rollover_after(self.kind, &self.cfg.agents).map(|d| now + d);
        if session.is_local() {
            self.agent = Some(session);
            self.session_ready(now);
        } else {
            self.agent = Some(session);
            self.phase = Phase::Connecting;
            self.timers
                .set(Timer::Phase, Some(now + self.cfg.agent_connect_timeout));
            self.events.push_back(CallEvent::ConnectAgent(self.kind));
        }
    }

    /// The agent's session is ready at `now`: a recovery (or rollover) is over. A resume
    /// refused earlier concerned an older session: this one may be resumed after a failure.
    pub(super) fn session_ready(&mut self, now: Instant) {
        self.phase = Phase::Ready;
        self.timers.set(Timer::Phase, None);
        self.resume_refused = false;
        if self.recovery.recovering() {
            // Of the caller's audio during the gap, the last part goes to the new session.
            let cap = self.cfg.continuity.resume_caller_audio_bytes;
            let dropped = self.early.keep_last(cap);
            self.cm
                .drop_frames(Direction::ToAgent, DropReason::EarlyBufferFull, dropped);
        }
        if self.rollover_at.is_none() {
            self.rollover_at =
                Session::rollover_after(self.kind, &self.cfg.agents).map(|d| now + d);
        }
        self.early.ready_at = Some(now);
        if self.recovery.recovered() {
            info!(agent = self.kind.as_str(), "agent recovered");
            self.cm.recovery(RecoveryResult::Recovered);
            self.end_hold(now);
        }
    }

    /// Stops the hold audio, if it plays: what is queued of it is dropped (it is not agent
    /// audio) and the carrier's buffer cleared.
    fn end_hold(&mut self, now: Instant) {
        if self.recovery.stop_hold() {
            self.timers.set(Timer::Hold, None);
            self.out.drop_all();
            self.out.owe_clear(now);
        }
    }

    /// The vendor refused to resume: the next attempt is a fresh, seeded session, at once.
    /// During a recovery that is the recovery's next attempt; otherwise the refused resume
    /// was a rollover's, and its fresh session is opened at the next timer turn (without hold
    /// audio, as the rollover's; not when the connect timer runs out, with the caller in
    /// silence meanwhile). Never from here: the driver retires the refused socket when it
    /// sees the new generation, and a connect asked for in the same turn would go with it.
    pub(super) fn resume_refused(&mut self, now: Instant) {
        info!("the agent refused to resume the session; starting a fresh one");
        self.resume_refused = true;
        self.agent_generation += 1;
        self.agent_gone = true;
        if self.recovery.recovering() {
            self.recovery.retry_now(now);
        } else {
            self.recovery.fresh_session(now);
        }
        self.sync_timers();
    }

    /// Recovery gave up: the next fallback agent, or the apology and then the transfer to
    /// the operator target (when transfers are possible) or a hang-up once it was heard.
    fn recovery_exhausted(&mut self, now: Instant) {
        self.cm.recovery(RecoveryResult::Exhausted);
        let policy = &self.cfg.continuity;
        while let Some(&next) = policy.fallback.get(self.fallback_index) {
            self.fallback_index += 1;
            if next == self.kind || !self.cfg.agents.is_configured(next) {
                continue;
            }
            warn!(
                from = self.kind.as_str(),
                to = next.as_str(),
                "agent recovery exhausted: falling back"
            );
            self.kind = next;
            self.resume_refused = true;
            let p = self.cfg.continuity.clone();
            self.recovery.fall_back(now, &p);
            self.reconnect(now);
            return;
        }
        warn!(
            agent = self.kind.as_str(),
            "agent recovery exhausted: playing the apology"
        );
        self.agent_gone = true;
        self.agent_generation += 1;
        self.end_hold(now);
        let apology = self.cfg.continuity.failure_audio.clone();
        if !apology.is_empty() {
            self.out
                .push_raw(&apology, HOLD_REPLY, now, self.cfg.caller_outbox_bytes);
            self.out.reply_ended();
        }
        let reason = self
            .failure_reason
            .clone()
            .unwrap_or(EndReason::AgentClosed(None));
        let transfer = self
            .cfg
            .control
            .operator_target
            .clone()
            .filter(|_| self.transfers_available);
        let action = match transfer {
            Some(target) => CallAction::Transfer {
                target,
                reason: Some("the agent could not be recovered".into()),
                summary: Some("The caller's AI agent failed; the caller was told.".into()),
            },
            None => CallAction::EndCall {
                reason: Some("the agent could not be recovered".into()),
            },
        };
        self.request_action(action, ActionSource::Recovery, None, now);
        self.actions.set_end_reason(reason.clone());
        self.actions.agent_gone();
        if self.actions.active().is_none() {
            self.end(reason);
            return;
        }
        self.progress(now);
    }

    /// A caller turn got no agent message within the response timeout: the agent is
    /// connected but dead.
    pub(super) fn response_timer(&mut self, now: Instant) {
        let Some(limit) = self.cfg.continuity.response_timeout else {
            return;
        };
        let Some(since) = self.turns.waiting_since() else {
            return;
        };
        if self.phase != Phase::Ready || self.last_agent_msg_at >= since || self.tools.in_flight() {
            return;
        }
        if now >= since + limit {
            warn!(
                timeout_ms = limit.as_millis() as u64,
                "the agent said nothing after the caller spoke"
            );
            self.agent_failed(
                RecoveryCause::Silent,
                EndReason::AgentError(ErrorKind::ReadyTimeout),
                now,
            );
        }
    }

    /// When the response timer should look next.
    pub(super) fn response_deadline(&self) -> Option<Instant> {
        let limit = self.cfg.continuity.response_timeout?;
        if self.phase != Phase::Ready || self.agent.as_ref().is_none_or(Session::is_local) {
            return None;
        }
        let since = self.turns.waiting_since()?;
        (self.last_agent_msg_at < since).then_some(since + limit)
    }

    /// The session's rollover time came: switch to a new session at a quiet moment (no
    /// reply playing, nothing queued for the caller, the caller not speaking), without hold
    /// audio; otherwise look again shortly.
    pub(super) fn rollover_timer(&mut self, now: Instant) {
        let quiet = self.phase == Phase::Ready
            && self.actions.active().is_none()
            && !self.recovery.recovering()
            && !self.actions_reply_open()
            && self.out.queue_is_empty()
            && self.out.played_through_ms() >= self.out.sent_ms()
            && !self.turns.caller_speaking();
        if !quiet {
            self.rollover_at = Some(now + Duration::from_millis(500));
            return;
        }
        info!(
            agent = self.kind.as_str(),
            "rolling the agent session over before its cap"
        );
        let at_ms = now.saturating_duration_since(self.started_at).as_millis() as u64;
        self.recovery.rollover(at_ms);
        self.cm.recovery(RecoveryResult::Rollover);
        self.agent_generation += 1;
        let seed = Seed {
            resume_id: self.agent.as_ref().and_then(Session::resume_id),
            history: self.history.to_vec(),
        };
        match Session::recover(self.kind, &self.cfg.agents, self.params(), seed) {
            Some(session) => {
                self.early.ready_at = None;
                self.open_session(session, now);
            }
            None => self.rollover_at = None,
        }
    }

    fn actions_reply_open(&self) -> bool {
        self.actions.reply_open()
    }
}

/// The reply key of hold audio and the apology (never an agent's).
pub(super) const HOLD_REPLY: ReplyKey = ReplyKey(u64::MAX - 1);
