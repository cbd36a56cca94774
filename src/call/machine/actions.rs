//! Call actions: `end_call` and `transfer`, one vocabulary for every source (built-in tools,
//! ElevenLabs system and client tools, the tool webhook's answer, the operator key, the agent
//! ending its session).
//!
//! Both wait until the caller has heard what the agent was saying: the agent's current reply
//! ends (its reply-done event, its socket closing, or [`QUIET`] without agent audio while no
//! reply is open), every queued agent byte goes to the carrier, then a mark at the end of it;
//! the action runs when the carrier echoes that mark as played, or at a safety cap of the
//! unplayed audio plus [`CAP_GRACE`] (a carrier may lose an echo). Then `end_call` ends the
//! call and a transfer asks the driver to redirect it (the carrier's REST update); the
//! carrier's `stop` that follows ends the stream as transferred.
//!
//! Sans-IO: the machine feeds agent activity and playout, and polls [`Actions::poll`].

use super::caller_out::CallerOut;
use crate::call::end::EndReason;
use crate::call::settings::{CallControl, TransferDest};
use crate::obs::labels::{ActionKind, ActionResult, ActionSource};
use std::time::{Duration, Instant};

/// With no reply open, agent silence this long counts as the end of what it was saying.
pub const QUIET: Duration = Duration::from_millis(1500);

/// Beyond the unplayed audio, how long the carrier may take to echo the final mark.
pub const CAP_GRACE: Duration = Duration::from_secs(2);

/// Longest the REST update of a transfer may take before the agent is told it failed (the
/// driver's request has its own, shorter timeout).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a summary whispered to the person who answers a transfer, in characters.
pub const MAX_SUMMARY_CHARS: usize = 500;

/// A call action as its source asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAction {
    /// Hang up once the goodbye was heard.
    EndCall {
        /// Why, for the record.
        reason: Option<String>,
    },
    /// Hand the caller to a person.
    Transfer {
        /// A `--transfer-targets` name, or an E.164 number when any number is allowed.
        target: String,
        /// Why, for the record.
        reason: Option<String>,
        /// What the person who answers hears first (at most [`MAX_SUMMARY_CHARS`]).
        summary: Option<String>,
    },
}

impl CallAction {
    /// Its `action` label.
    pub fn kind(&self) -> ActionKind {
        match self {
            CallAction::EndCall { .. } => ActionKind::EndCall,
            CallAction::Transfer { .. } => ActionKind::Transfer,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Waiting for the agent's current reply to end and its audio to leave the outbox.
    Finishing,
    /// Everything sent; waiting for the mark at `end_ms` to echo as played, or the cap.
    Playing { end_ms: u64, cap: Instant },
    /// Transfer: the carrier's REST update is in flight.
    Updating { deadline: Instant },
    /// Transfer: the update succeeded; the carrier's `stop` ends the stream.
    Redirected,
}

#[derive(Debug)]
struct Active {
    kind: ActionKind,
    source: ActionSource,
    /// The tool call to answer once the action's outcome is known.
    tool_call: Option<String>,
    /// The end reason of an `end_call`.
    end: EndReason,
    dest: Option<TransferDest>,
    summary: Option<String>,
    target: String,
    stage: Stage,
    /// Quiet is counted from here (the request, or the newest agent audio after it).
    quiet_from: Instant,
    reply_done: bool,
    agent_gone: bool,
    /// The action's tool call was answered while the agent's results are held until its
    /// reply is done: that reply's end only releases the answer, the reply after it is the
    /// one to wait for.
    answer_held: bool,
}

/// What the machine must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// A mark is owed at the end of the audio sent (`end_ms`).
    OweMark(u64),
    /// End the call with this reason; `cut_ms` of sent audio had not played.
    End {
        /// The reason.
        reason: EndReason,
        /// Sent but unconfirmed audio, ms.
        cut_ms: u64,
    },
    /// Redirect the call to `dest` (announcement heard; `cut_ms` as above).
    Transfer {
        /// Where.
        dest: TransferDest,
        /// The whisper.
        summary: Option<String>,
        /// The target's name as asked for.
        target: String,
        /// Sent but unconfirmed audio, ms.
        cut_ms: u64,
    },
}

/// The call's action in progress (at most one).
#[derive(Debug, Default)]
pub struct Actions {
    active: Option<Active>,
    /// Whether an agent reply is open (started, not done): quiet does not count then.
    reply_open: bool,
}

impl Actions {
    /// Asks for `action` from `source` at `now` (answering `tool_call` later, if any).
    /// `rest` says whether the carrier can redirect calls.
    ///
    /// # Errors
    /// The refusal's result label and the message for the agent.
    pub fn request(
        &mut self,
        action: CallAction,
        source: ActionSource,
        tool_call: Option<String>,
        now: Instant,
        control: &CallControl,
        rest: bool,
    ) -> Result<(), (ActionResult, &'static str)> {
        if self.active.is_some() {
            return Err((
                ActionResult::InProgress,
                "another call action is already in progress",
            ));
        }
        let (kind, dest, summary, target, end) = match action {
            CallAction::EndCall { .. } => {
                let end = if source == ActionSource::Agent {
                    EndReason::AgentEnded
                } else {
                    EndReason::AgentEndCall
                };
                (ActionKind::EndCall, None, None, String::new(), end)
            }
            CallAction::Transfer {
                target, summary, ..
            } => {
                let Some(dest) = control
                    .resolve(&target)
                    .or_else(|| operator_literal(control, &target))
                else {
                    return Err((
                        ActionResult::UnknownTarget,
                        "unknown transfer target: name one of the configured targets",
                    ));
                };
                if !rest {
                    return Err((
                        ActionResult::Unavailable,
                        "transfers are not available on this relay",
                    ));
                }
                let summary = summary.map(|s| s.chars().take(MAX_SUMMARY_CHARS).collect());
                (
                    ActionKind::Transfer,
                    Some(dest),
                    summary,
                    target,
                    EndReason::Transferred,
                )
            }
        };
        self.active = Some(Active {
            kind,
            source,
            tool_call,
            end,
            dest,
            summary,
            target,
            stage: Stage::Finishing,
            quiet_from: now,
            reply_done: false,
            agent_gone: false,
            answer_held: false,
        });
        Ok(())
    }

    /// The end reason of the `end_call` in progress (the relay's own after a failed
    /// recovery: the failure's).
    pub fn set_end_reason(&mut self, reason: EndReason) {
        if let Some(a) = self.active.as_mut() {
            a.end = reason;
        }
    }

    /// Whether an agent reply is open (started, not done).
    pub fn reply_open(&self) -> bool {
        self.reply_open
    }

    /// Whether an action is in progress.
    pub fn active(&self) -> Option<(ActionKind, ActionSource)> {
        self.active.as_ref().map(|a| (a.kind, a.source))
    }

    /// Whether the call is winding down for an action (barge-in then leaves the goodbye
    /// alone, unless configured otherwise).
    pub fn closing(&self) -> bool {
        self.active.is_some()
    }

    /// Whether a transfer's redirect was accepted by the carrier (its `stop` is expected).
    pub fn redirected(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.stage == Stage::Redirected)
    }

    /// Drops the action in progress (caller speech cancelled an `end_call`); returns its
    /// tool call, if any.
    pub fn cancel(&mut self) -> Option<String> {
        self.active.take().and_then(|a| a.tool_call)
    }

    /// Agent audio arrived at `now`.
    #[inline]
    pub fn agent_audio(&mut self, now: Instant) {
        if let Some(a) = self.active.as_mut() {
            a.quiet_from = now;
        }
    }

    /// A reply began.
    pub fn reply_started(&mut self) {
        self.reply_open = true;
    }

    /// The agent's current reply ended at `now`.
    pub fn reply_done(&mut self, now: Instant) {
        self.reply_open = false;
        if let Some(a) = self.active.as_mut() {
            if a.answer_held {
                // This reply's end releases the answer; what the agent says to it follows.
                a.answer_held = false;
                a.quiet_from = now;
            } else {
                a.reply_done = true;
            }
        }
    }

    /// The action's tool call was answered at `now` (`held`: the answer waits for the
    /// agent's reply to end). The agent may speak to the answer (its goodbye), so the reply
    /// that counts is the next one, or [`QUIET`] without one.
    pub fn answered(&mut self, now: Instant, held: bool) {
        if let Some(a) = self.active.as_mut() {
            if held {
                a.answer_held = true;
            } else {
                a.reply_done = false;
                a.quiet_from = now;
            }
        }
    }

    /// Whether agent audio still belongs to what the caller must hear: until the reply the
    /// action waits for is done (later audio is dropped as `call_ending`).
    pub fn accepts_audio(&self) -> bool {
        self.active
            .as_ref()
            .is_none_or(|a| a.stage == Stage::Finishing && !a.reply_done && !a.agent_gone)
    }

    /// Whether a transfer's redirect was sent or accepted: the carrier's `stop` (or close)
    /// that follows is the transfer, not a hang-up.
    pub fn transferring(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| matches!(a.stage, Stage::Updating { .. } | Stage::Redirected))
    }

    /// The agent's socket is gone (nothing more will come from it).
    pub fn agent_gone(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.agent_gone = true;
        }
    }

    /// The next moment [`Actions::poll`] may have something to do without new input.
    pub fn deadline(&self) -> Option<Instant> {
        let a = self.active.as_ref()?;
        match a.stage {
            Stage::Finishing if !self.reply_open && !a.reply_done && !a.agent_gone => {
                Some(a.quiet_from + QUIET)
            }
            Stage::Finishing | Stage::Redirected => None,
            Stage::Playing { cap, .. } => Some(cap),
            Stage::Updating { deadline } => Some(deadline),
        }
    }

    /// Moves the action on at `now`, given the playout state.
    pub fn poll(&mut self, now: Instant, out: &CallerOut) -> Step {
        let Some(a) = self.active.as_mut() else {
            return Step::Wait;
        };
        if a.stage == Stage::Finishing {
            let said =
                a.reply_done || a.agent_gone || (!self.reply_open && now >= a.quiet_from + QUIET);
            if !said || !out.queue_is_empty() {
                return Step::Wait;
            }
            let end_ms = out.sent_ms();
            let unplayed = end_ms.saturating_sub(out.played_through_ms());
            a.stage = Stage::Playing {
                end_ms,
                cap: now + Duration::from_millis(unplayed) + CAP_GRACE,
            };
            if unplayed > 0 {
                return Step::OweMark(end_ms);
            }
        }
        let Stage::Playing { end_ms, cap } = a.stage else {
            return Step::Wait;
        };
        let played = out.played_through_ms();
        if played < end_ms && now < cap {
            return Step::Wait;
        }
        let cut_ms = end_ms.saturating_sub(played);
        match a.kind {
            // Recording actions act at once and never enter the gate (`CallAction::kind`
            // gives only end_call and transfer); were one here, it would end like end_call.
            ActionKind::EndCall | ActionKind::PauseRecording | ActionKind::ResumeRecording => {
                Step::End {
                    reason: a.end.clone(),
                    cut_ms,
                }
            }
            ActionKind::Transfer => {
                a.stage = Stage::Updating {
                    deadline: now + UPDATE_TIMEOUT,
                };
                Step::Transfer {
                    dest: a
                        .dest
                        .clone()
                        .unwrap_or(TransferDest::Number(String::new())),
                    summary: a.summary.clone(),
                    target: a.target.clone(),
                    cut_ms,
                }
            }
        }
    }

    /// Whether the transfer's update has waited past its deadline at `now`.
    pub fn update_overdue(&self, now: Instant) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| matches!(a.stage, Stage::Updating { deadline } if now >= deadline))
    }

    /// The carrier answered the transfer's update: `Ok` → redirected (the tool call to
    /// answer, if any, is returned); `Err` → the action is over (its tool call returned, to
    /// be told of the failure).
    pub fn update_result(&mut self, ok: bool) -> Option<(Option<String>, ActionSource)> {
        let a = self.active.as_mut()?;
        if !matches!(a.stage, Stage::Updating { .. }) {
            return None;
        }
        if ok {
            a.stage = Stage::Redirected;
            Some((a.tool_call.take(), a.source))
        } else {
            let a = self.active.take()?;
            Some((a.tool_call, a.source))
        }
    }
}

/// The operator target given as a number or SIP URI (it needs no `--transfer-targets` name).
fn operator_literal(control: &CallControl, target: &str) -> Option<TransferDest> {
    (control.operator_target.as_deref() == Some(target))
        .then(|| TransferDest::parse(target))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ReplyKey;

    fn control() -> CallControl {
        CallControl {
            targets: vec![("sales".into(), TransferDest::Number("+15551230001".into()))],
            operator_target: Some("sip:desk@pbx.example.com".into()),
            builtin_tools: true,
            dial_timeout_secs: 30,
            ..CallControl::default()
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn sent(out: &mut CallerOut, bytes: usize, at: Instant) {
        let c = crate::carrier::CarrierSession::new(crate::carrier::CarrierKind::Twilio);
        out.push_raw(&vec![0x55; bytes], ReplyKey(1), at, 1 << 20);
        let mut buf = Vec::new();
        while out.transmit(&c, "MZ1", 800, &mut buf, at)
            != crate::call::machine::caller_out::Transmitted::Nothing
        {}
    }

    #[test]
    fn end_call_waits_for_the_reply_then_the_mark_of_the_last_byte() {
        let t0 = Instant::now();
        let mut a = Actions::default();
        let mut out = CallerOut::new(false);
        a.reply_started();
        a.request(
            CallAction::EndCall { reason: None },
            ActionSource::BuiltinTool,
            None,
            t0,
            &control(),
            true,
        )
        .unwrap();
        sent(&mut out, 16_000, t0); // 2 s of goodbye
        assert_eq!(
            a.poll(ms(t0, 100), &out),
            Step::Wait,
            "the reply is still open"
        );
        assert_eq!(a.deadline(), None);
        a.reply_done(ms(t0, 150));
        assert_eq!(a.poll(ms(t0, 200), &out), Step::OweMark(2000));
        assert_eq!(a.deadline(), Some(ms(t0, 200 + 2000 + 2000)));
        out.on_mark_echo("ms-1000", ms(t0, 1200));
        assert_eq!(a.poll(ms(t0, 1200), &out), Step::Wait);
        out.owe_mark_at(2000);
        let c = crate::carrier::CarrierSession::new(crate::carrier::CarrierKind::Twilio);
        let mut buf = Vec::new();
        out.transmit(&c, "MZ1", 800, &mut buf, ms(t0, 1200));
        out.on_mark_echo("ms-2000", ms(t0, 2200));
        assert_eq!(
            a.poll(ms(t0, 2200), &out),
            Step::End {
                reason: EndReason::AgentEndCall,
                cut_ms: 0
            }
        );
    }

    #[test]
    fn a_lost_echo_ends_at_the_cap_and_reports_what_was_cut() {
        let t0 = Instant::now();
        let mut a = Actions::default();
        let mut out = CallerOut::new(false);
        sent(&mut out, 8_000, t0);
        a.request(
            CallAction::EndCall { reason: None },
            ActionSource::Webhook,
            None,
            t0,
            &control(),
            true,
        )
        .unwrap();
        assert_eq!(a.deadline(), Some(t0 + QUIET));
        assert_eq!(a.poll(ms(t0, 1499), &out), Step::Wait);
        assert_eq!(a.poll(ms(t0, 1500), &out), Step::OweMark(1000));
        assert_eq!(a.poll(ms(t0, 4499), &out), Step::Wait);
        assert_eq!(
            a.poll(ms(t0, 4500), &out),
            Step::End {
                reason: EndReason::AgentEndCall,
                cut_ms: 1000
            }
        );
    }

    #[test]
    fn transfers_resolve_targets_and_refuse_what_they_cannot_do() {
        let t0 = Instant::now();
        let c = control();
        let mut a = Actions::default();
        let t = |target: &str| CallAction::Transfer {
            target: target.into(),
            reason: None,
            summary: Some("x".repeat(600)),
        };
        assert_eq!(
            a.request(t("nobody"), ActionSource::BuiltinTool, None, t0, &c, true),
            Err((
                ActionResult::UnknownTarget,
                "unknown transfer target: name one of the configured targets"
            ))
        );
        assert_eq!(
            a.request(
                t("+15559990000"),
                ActionSource::BuiltinTool,
                None,
                t0,
                &c,
                true
            )
            .unwrap_err()
            .0,
            ActionResult::UnknownTarget,
            "numbers need --transfer-allow-any-number"
        );
        assert_eq!(
            a.request(t("sales"), ActionSource::BuiltinTool, None, t0, &c, false)
                .unwrap_err()
                .0,
            ActionResult::Unavailable
        );
        a.request(
            t("sales"),
            ActionSource::Dtmf,
            Some("call-1".into()),
            t0,
            &c,
            true,
        )
        .unwrap();
        assert_eq!(
            a.request(
                CallAction::EndCall { reason: None },
                ActionSource::BuiltinTool,
                None,
                t0,
                &c,
                true
            )
            .unwrap_err()
            .0,
            ActionResult::InProgress
        );
        let out = CallerOut::new(false);
        a.agent_gone();
        match a.poll(t0, &out) {
            Step::Transfer { dest, summary, .. } => {
                assert_eq!(dest, TransferDest::Number("+15551230001".into()));
                assert_eq!(summary.unwrap().chars().count(), MAX_SUMMARY_CHARS);
            }
            other => panic!("{other:?}"),
        }
        assert!(!a.redirected());
        assert_eq!(
            a.update_result(true),
            Some((Some("call-1".into()), ActionSource::Dtmf))
        );
        assert!(a.redirected());
        // The operator target may be a literal destination.
        let mut b = Actions::default();
        b.request(
            t("sip:desk@pbx.example.com"),
            ActionSource::Dtmf,
            None,
            t0,
            &c,
            true,
        )
        .unwrap();
        let mut b2 = Actions::default();
        b2.request(t("sales"), ActionSource::BuiltinTool, None, t0, &c, true)
            .unwrap();
        b2.agent_gone();
        assert!(matches!(b2.poll(t0, &out), Step::Transfer { .. }));
        assert_eq!(
            b2.update_result(false),
            Some((None, ActionSource::BuiltinTool))
        );
        assert!(b2.active().is_none(), "a failed update ends the action");
    }
}
