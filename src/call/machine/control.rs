//! Call actions into and out of the machine: where each source's request enters
//! ([`CallMachine::request_action`]), how the [`Actions`] part's steps become marks, an end or
//! a [`CallEvent::Transfer`] for the driver, and the carrier's answer to a transfer's REST
//! update ([`CallMachine::handle_call_update`]).

use super::actions::{CallAction, Step};
use super::*;
use crate::agent::{END_CALL_TOOL, TRANSFER_CALL_TOOL};
use crate::obs::labels::{ActionKind, ActionResult, ActionSource};

/// The call action a call's summary reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// `end_call` or `transfer`.
    pub kind: ActionKind,
    /// Who asked.
    pub source: ActionSource,
    /// What became of it so far.
    pub result: ActionResult,
    /// A transfer's target as named.
    pub target: Option<String>,
}

impl CallMachine {
    /// Whether the carrier can redirect this call (REST credentials, a public host and the
    /// relay's URL signing key): without, transfers are refused as `unavailable`.
    pub fn set_transfers_available(&mut self, available: bool) {
        self.transfers_available = available;
    }

    /// The call action of this call, if one was asked for (the newest).
    pub fn action_record(&self) -> Option<&ActionRecord> {
        self.action_record.as_ref()
    }

    /// Asks for a call action from `source` at `now`; `tool_call` is the agent's call id
    /// when a tool call asked (answered with the outcome). A refusal is counted, logged and,
    /// for a tool call, answered to the agent as a tool error.
    pub fn request_action(
        &mut self,
        action: CallAction,
        source: ActionSource,
        tool_call: Option<String>,
        now: Instant,
    ) {
        if self.end.is_some() {
            return;
        }
        let kind = action.kind();
        let target = match &action {
            CallAction::Transfer { target, .. } => Some(target.clone()),
            CallAction::EndCall { .. } => None,
        };
        let reason = match &action {
            CallAction::EndCall { reason } | CallAction::Transfer { reason, .. } => reason.clone(),
        };
        match self.actions.request(
            action,
            source,
            tool_call.clone(),
            now,
            &self.cfg.control,
            self.transfers_available,
        ) {
            Err((result, msg)) => {
                self.cm.action(kind, source, result);
                warn!(
                    action = kind.as_str(),
                    source = source.as_str(),
                    result = result.as_str(),
                    target = target.as_deref().unwrap_or(""),
                    "call action refused: {msg}"
                );
                if let Some(id) = tool_call {
                    self.tool_result_out(id, Err(msg.to_owned()), true);
                    self.deliver_local_cmds(now);
                }
                if self.action_record.is_none() {
                    self.action_record = Some(ActionRecord {
                        kind,
                        source,
                        result,
                        target,
                    });
                }
            }
            Ok(()) => {
                self.cm.action(kind, source, ActionResult::Accepted);
                info!(
                    action = kind.as_str(),
                    source = source.as_str(),
                    target = target.as_deref().unwrap_or(""),
                    reason = reason.as_deref().unwrap_or(""),
                    "call action accepted: it runs once the agent's audio was heard"
                );
                self.action_record = Some(ActionRecord {
                    kind,
                    source,
                    result: ActionResult::Accepted,
                    target,
                });
                if self.agent_gone {
                    self.actions.agent_gone();
                }
                // An `end_call` tool call is answered at once (the agent may say its goodbye
                // after the answer; the gate then waits for that reply); a transfer's is
                // answered with its outcome.
                if let (ActionKind::EndCall, Some(id)) = (kind, tool_call) {
                    let held = self.tool_result_out(
                        id,
                        Ok(serde_json::json!({ "status": "ending", "note": "the call ends once the caller has heard you" })),
                        false,
                    );
                    self.actions.answered(now, held);
                    self.deliver_local_cmds(now);
                }
                self.progress(now);
            }
        }
    }

    /// Moves the call action on at `now`.
    pub(super) fn progress(&mut self, now: Instant) {
        loop {
            if self.end.is_some() {
                return;
            }
            match self.actions.poll(now, &self.out) {
                Step::Wait => break,
                Step::OweMark(end_ms) => {
                    debug!(
                        end_ms,
                        "call action: the agent finished; a mark follows its last byte"
                    );
                    self.out.owe_mark_at(end_ms);
                }
                Step::End { reason, cut_ms } => {
                    self.goodbye_cut(cut_ms);
                    info!(
                        cut_ms,
                        outcome = reason.outcome().as_str(),
                        "call action: the goodbye was heard; ending the call"
                    );
                    self.end(reason);
                    return;
                }
                Step::Transfer {
                    dest,
                    summary,
                    target,
                    cut_ms,
                } => {
                    self.goodbye_cut(cut_ms);
                    info!(
                        cut_ms,
                        target,
                        dest = dest.as_str(),
                        "call action: the announcement was heard; redirecting the call"
                    );
                    self.events.push_back(CallEvent::Transfer { dest, summary });
                    break;
                }
            }
        }
        self.timers.set(Timer::Action, self.actions.deadline());
    }

    fn goodbye_cut(&mut self, cut_ms: u64) {
        self.cm.sample(Sample::GoodbyeCut, cut_ms as f64 / 1e3);
        if cut_ms > 0 {
            warn!(
                cut_ms,
                "the carrier never confirmed the end of the agent's audio (safety cap)"
            );
        }
    }

    /// The driver's answer to [`CallEvent::Transfer`]: the carrier's REST update succeeded
    /// (`Ok`: its `stop` follows and ends the stream as transferred) or failed (the caller
    /// stays with the agent, which is told; with no agent left the call ends as
    /// `transfer_failed`).
    pub fn handle_call_update(&mut self, result: Result<(), String>, now: Instant) {
        let ok = result.is_ok();
        let Some((tool_call, source)) = self.actions.update_result(ok) else {
            return;
        };
        match result {
            Ok(()) => {
                info!("transfer: the carrier accepted the redirect; its stop ends the stream");
                if let Some(id) = tool_call {
                    self.tool_result_out(
                        id,
                        Ok(serde_json::json!({ "status": "transferring" })),
                        false,
                    );
                }
            }
            Err(e) => {
                self.cm
                    .action(ActionKind::Transfer, source, ActionResult::UpdateFailed);
                if let Some(r) = self.action_record.as_mut() {
                    r.result = ActionResult::UpdateFailed;
                }
                warn!(error = %e, "transfer failed: the carrier's REST update did not succeed");
                if self.agent_gone {
                    self.end(EndReason::TransferFailed);
                    return;
                }
                if let Some(id) = tool_call {
                    self.tool_result_out(
                        id,
                        Err(format!(
                            "the transfer could not be placed ({e}); the caller is still with you"
                        )),
                        true,
                    );
                }
            }
        }
        self.deliver_local_cmds(now);
        self.sync_timers();
    }

    /// The agent's socket closed (`code`, if it sent one) at `now`. During a call action the
    /// call goes on until the caller heard the rest; a dialect whose clean close means "end
    /// the call" (ElevenLabs 1000) hangs up after the goodbye; any other close ends the call
    /// as `agent_closed`.
    pub fn handle_agent_closed(&mut self, code: Option<u16>, now: Instant) {
        if self.end.is_some() {
            return;
        }
        self.agent_gone = true;
        self.actions.agent_gone();
        if self.actions.active().is_some() {
            self.progress(now);
            self.sync_timers();
            return;
        }
        if self
            .agent
            .as_ref()
            .is_some_and(|d| d.close_is_end_signal(code))
        {
            self.request_action(
                CallAction::EndCall { reason: None },
                ActionSource::SystemTool,
                None,
                now,
            );
            self.sync_timers();
            return;
        }
        self.agent_failed(
            crate::obs::labels::RecoveryCause::Closed,
            EndReason::AgentClosed(code),
            now,
        );
    }

    /// Whether the agent leg is gone while the call goes on (its socket may be retired).
    pub fn agent_gone(&self) -> bool {
        self.agent_gone
    }

    /// The carrier's socket closed without a `stop`: after an accepted redirect that is the
    /// transfer; otherwise `caller_closed`.
    pub fn handle_caller_closed(&mut self) {
        self.end(if self.actions.transferring() {
            EndReason::Transferred
        } else {
            EndReason::CallerClosed
        });
    }

    /// The operator key, when it is `digit`: a transfer to the operator target.
    pub(super) fn operator_key(&mut self, digit: &str, now: Instant) -> bool {
        let c = &self.cfg.control;
        let (Some(key), Some(target)) = (c.operator_digit, c.operator_target.clone()) else {
            return false;
        };
        if digit.len() != 1 || !digit.starts_with(key) {
            return false;
        }
        info!(digit, "the caller pressed the operator key");
        self.request_action(
            CallAction::Transfer {
                target,
                reason: Some("the caller pressed the operator key".into()),
                summary: None,
            },
            ActionSource::Dtmf,
            None,
            now,
        );
        true
    }

    /// An agent platform's system tool ran (ElevenLabs `end_call`, `transfer_to_number`).
    pub(super) fn system_tool(&mut self, name: &str, now: Instant) {
        let action = match name {
            "end_call" => CallAction::EndCall { reason: None },
            // Its arguments are not on the wire: the operator target, else the first target.
            "transfer_to_number" => {
                let c = &self.cfg.control;
                let Some(target) = c
                    .operator_target
                    .clone()
                    .or_else(|| c.targets.first().map(|(n, _)| n.clone()))
                else {
                    self.cm.action(
                        ActionKind::Transfer,
                        ActionSource::SystemTool,
                        ActionResult::UnknownTarget,
                    );
                    warn!("the agent ran transfer_to_number, but no transfer target is configured (--operator-target, --transfer-targets)");
                    return;
                };
                CallAction::Transfer {
                    target,
                    reason: None,
                    summary: None,
                }
            }
            other => {
                debug!(tool = other, "agent ran a system tool");
                return;
            }
        };
        self.request_action(action, ActionSource::SystemTool, None, now);
    }

    /// A tool call named after one of the relay's call tools, when the relay handles it:
    /// a built-in tool (declared by the relay) or an ElevenLabs client tool. `false` when the
    /// call is an ordinary tool call.
    pub(super) fn call_tool(
        &mut self,
        id: &str,
        name: &str,
        arguments: Result<&serde_json::Value, &'static str>,
        now: Instant,
    ) -> bool {
        let recording = crate::call::recording::RecordingAction::from_label(name);
        if name != END_CALL_TOOL && name != TRANSFER_CALL_TOOL && recording.is_none() {
            return false;
        }
        let Some(offers) = self.agent.as_ref().map(Session::offers_relay_tools) else {
            return false;
        };
        let source = match (offers, self.cfg.control.builtin_tools) {
            (true, true) => ActionSource::BuiltinTool,
            (true, false) => return false, // the operator's own tool of that name
            (false, _) => ActionSource::ClientTool,
        };
        self.tools.calls = self.tools.calls.saturating_add(1);
        if let Some(r) = recording {
            self.recording_action(r, source, Some(id.to_owned()), now);
            return true;
        }
        let text = |k: &str| {
            arguments
                .ok()
                .and_then(|a| a.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let action = if name == END_CALL_TOOL {
            CallAction::EndCall {
                reason: text("reason"),
            }
        } else {
            let Some(target) = text("target") else {
                let kind = ActionKind::Transfer;
                self.cm.action(kind, source, ActionResult::UnknownTarget);
                warn!(call_id = id, "transfer_call without a target refused");
                self.tool_result_out(
                    id.to_owned(),
                    Err("transfer_call needs a \"target\": one of the configured targets".into()),
                    true,
                );
                self.deliver_local_cmds(now);
                return true;
            };
            CallAction::Transfer {
                target,
                reason: text("reason"),
                summary: text("summary"),
            }
        };
        self.request_action(action, source, Some(id.to_owned()), now);
        true
    }
}
