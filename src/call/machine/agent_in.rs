//! The agent leg into the machine: decoded agent events, a local agent's events, tool
//! calls and their results, keypad digits for the agent.

use super::*;

impl CallMachine {
    /// The agent socket is open: the session-opening messages go first.
    pub fn handle_agent_connected(&mut self) {
        self.cmds.session_init();
    }

    /// Handles one decoded agent message read at `now`.
    pub fn handle_agent(&mut self, ev: AgentEvent<'_>, now: Instant) {
        self.last_agent_msg_at = now;
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
                    self.session_ready(now);
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
                let role = match speaker {
                    Speaker::Caller => crate::agent::history::Role::Caller,
                    Speaker::Agent => crate::agent::history::Role::Agent,
                };
                let at_ms = now.saturating_duration_since(self.started_at).as_millis() as u64;
                self.history.said(role, text, at_ms);
            }
            AgentEvent::ReplyStarted => {
                self.tools.reply_started();
                self.actions.reply_started();
            }
            AgentEvent::ReplyDone { interrupted } => self.reply_done(interrupted, now),
            AgentEvent::AudioDone => {
                self.out.reply_ended();
                self.actions.reply_done(now);
                self.progress(now);
            }
            AgentEvent::SystemTool { name } => self.system_tool(name, now),
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
                    self.agent_failed(
                        crate::obs::labels::RecoveryCause::FatalError,
                        EndReason::AgentError(ErrorKind::AgentErrorEvent),
                        now,
                    );
                    return;
                }
            }
            AgentEvent::Ended => self.agent_ended(now),
            AgentEvent::ResumeRefused => self.resume_refused(now),
            AgentEvent::Other { kind } => {
                self.cm.event(CallEventKind::UnknownAgentEvent);
                debug!(kind, "skipped agent message type");
            }
        }
        self.sync_timers();
    }

    /// The agent ended its session (AssemblyAI `session.ended`, a local agent): what it
    /// said is heard first, then the call ends as `agent_ended` (or the action in progress
    /// finishes without it).
    pub(super) fn agent_ended(&mut self, now: Instant) {
        info!("agent ended the session");
        if self.actions.active().is_none() {
            self.request_action(
                crate::call::machine::actions::CallAction::EndCall { reason: None },
                crate::obs::labels::ActionSource::Agent,
                None,
                now,
            );
        }
        self.agent_gone = true;
        self.actions.agent_gone();
        self.progress(now);
    }

    pub(super) fn reply_done(&mut self, interrupted: bool, now: Instant) {
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
        self.actions.reply_done(now);
        self.progress(now);
    }

    pub(super) fn agent_audio_in(&mut self, reply: ReplyKey, payload_b64: &str, now: Instant) {
        if self.notice.is_some() {
            self.cm
                .drop_frames(Direction::ToCaller, DropReason::Draining, 1);
            return;
        }
        if !self.actions.accepts_audio() {
            self.cm
                .drop_frames(Direction::ToCaller, DropReason::CallEnding, 1);
            return;
        }
        self.actions.agent_audio(now);
        if let Some(gap) = self.recovery.agent_audio(now) {
            self.cm.sample(Sample::RecoveryGap, gap.as_secs_f64());
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

    pub(super) fn interrupt(&mut self, through: ReplyKey, signal: bool, now: Instant) {
        if let Some((kind, _)) = self.actions.active() {
            // The goodbye or announcement plays out; caller speech cancels an `end_call`
            // only when configured to.
            let cancel = kind == crate::obs::labels::ActionKind::EndCall
                && self.cfg.control.end_call_cancel_on_speech
                && !self.agent_gone;
            if !cancel {
                debug!("caller speech during a call action: the agent's audio plays on");
                return;
            }
            info!("caller speech cancelled the agent's end_call");
            self.actions.cancel();
            if let Some(r) = self.action_record.as_mut() {
                r.result = crate::obs::labels::ActionResult::Cancelled;
                self.cm.action(kind, r.source, r.result);
            }
            self.timers.set(Timer::Action, None);
        }
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
    pub(super) fn poll_local_agent(&mut self, now: Instant) {
        let mut audio = std::mem::take(&mut self.audio_scratch);
        while let Some(ev) = self
            .agent
            .as_mut()
            .and_then(|s| s.poll_local(now, &mut audio))
        {
            match ev {
                LocalEvent::Audio(reply) => {
                    if self.notice.is_some() || !self.actions.accepts_audio() {
                        let why = if self.notice.is_some() {
                            DropReason::Draining
                        } else {
                            DropReason::CallEnding
                        };
                        self.cm.drop_frames(Direction::ToCaller, why, 1);
                        continue;
                    }
                    self.actions.agent_audio(now);
                    if let Some(gap) = self.recovery.agent_audio(now) {
                        self.cm.sample(Sample::RecoveryGap, gap.as_secs_f64());
                    }
                    let dropped =
                        self.out
                            .push_raw(&audio, reply, now, self.cfg.caller_outbox_bytes);
                    self.cm
                        .drop_frames(Direction::ToCaller, DropReason::OutboxFull, dropped);
                }
                LocalEvent::ReplyStarted => {
                    self.tools.reply_started();
                    self.actions.reply_started();
                }
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
                    self.agent_ended(now);
                    break;
                }
            }
        }
        self.audio_scratch = audio;
    }

    /// A local agent takes its commands (tool results, keypad digits) at once.
    pub(super) fn deliver_local_cmds(&mut self, now: Instant) {
        let Some(s) = self.agent.as_mut().filter(|s| s.is_local()) else {
            return;
        };
        while let Some(cmd) = self.cmds.pop() {
            match cmd {
                AgentCmd::ToolResult { id, output, .. } => s.on_tool_result(&id, &output, now),
                AgentCmd::Dtmf(digits) => s.on_dtmf(&digits, now),
                AgentCmd::SessionInit | AgentCmd::Pong(_) | AgentCmd::BargeIn { .. } => {}
            }
        }
    }

    pub(super) fn send_dtmf(&mut self, digits: String, now: Instant) {
        if self.agent.is_none() {
            return;
        }
        self.cmds.dtmf(digits);
        self.deliver_local_cmds(now);
    }

    pub(super) fn tool_call(
        &mut self,
        id: &str,
        name: &str,
        arguments: Result<serde_json::Value, &'static str>,
        now: Instant,
    ) {
        if self.call_tool(id, name, arguments.as_ref().map_err(|e| *e), now) {
            return;
        }
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
                self.tool_result_out(id.to_owned(), Err(msg.to_owned()), true);
            }
            (Decision::Call, Ok(arguments)) => {
                info!(tool = name, call_id = id, "calling the tool webhook");
                self.tools.started_call(
                    id.to_owned(),
                    now,
                    self.cfg.tools.timeout,
                    name.to_owned(),
                    arguments.to_string(),
                );
                self.events.push_back(CallEvent::CallTool {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments,
                });
            }
            (Decision::Call, Err(_)) => {}
        }
    }

    /// The webhook answered (or failed) for tool call `id` at `now`. An answer carrying a
    /// call action starts it: the agent hears the result first (and may speak to it), then
    /// the action's gate runs as for any source.
    pub fn handle_tool_result(&mut self, id: &str, answer: WebhookAnswer, now: Instant) {
        let Some((name, arguments)) = self.tools.answered(id) else {
            return; // timed out already
        };
        let output = match &answer.output {
            Ok(v) => v.to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        };
        let at_ms = now.saturating_duration_since(self.started_at).as_millis() as u64;
        self.history.tool(&name, &arguments, &output, at_ms);
        self.cm.tool(answer.result);
        let held = self.tool_result_out(id.to_owned(), answer.output, true);
        if let Some(r) = answer.recording {
            self.recording_action(r, crate::obs::labels::ActionSource::Webhook, None, now);
        }
        if let Some(action) = answer.action {
            self.request_action(action, crate::obs::labels::ActionSource::Webhook, None, now);
            self.actions.answered(now, held);
        }
        self.deliver_local_cmds(now);
        self.sync_timers();
    }

    /// Queues a tool result for the agent (`followup`: it is asked to respond); returns
    /// whether it is held until the agent's reply is done.
    pub(super) fn tool_result_out(
        &mut self,
        id: String,
        output: ToolOutput,
        followup: bool,
    ) -> bool {
        let hold = self
            .agent
            .as_ref()
            .is_some_and(Session::holds_tool_results_until_reply_done);
        let held = self.tools.holds(hold);
        if !self
            .tools
            .deliver(id, output, followup, hold, &mut self.cmds)
        {
            self.cm.tool(ToolResult::Discarded);
        }
        held
    }
}
