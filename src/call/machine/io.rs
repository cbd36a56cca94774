//! Deadlines and sockets: the timer table's expiries, write progress of both legs, and what
//! each leg owes (`poll_transmit`).

use super::*;

impl CallMachine {
    pub(super) fn stall_timer(leg: Leg) -> Timer {
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
                        self.timers.set(Timer::Phase, None);
                        self.agent_failed(
                            crate::obs::labels::RecoveryCause::ReadyTimeout,
                            EndReason::AgentConnectFailed(ErrorKind::ReadyTimeout),
                            now,
                        );
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
                Timer::CallerStall => {
                    warn!(
                        leg = self.carrier.kind().as_str(),
                        "socket accepted nothing in time; ending the call"
                    );
                    self.end(EndReason::CallerStalled);
                }
                Timer::AgentStall => {
                    warn!(leg = "agent", "socket accepted nothing in time");
                    self.timers.set(Timer::AgentStall, None);
                    self.agent_failed(
                        crate::obs::labels::RecoveryCause::Stalled,
                        EndReason::AgentStalled,
                        now,
                    );
                }
                Timer::Hold => self.top_up_hold(now),
                Timer::Recovery => self.recovery_timer(now),
                Timer::AgentSilent => self.response_timer(now),
                Timer::Rollover => self.rollover_timer(now),
                Timer::Recording => self.poll_recording(now),
                Timer::LocalAgent => self.poll_local_agent(now),
                Timer::Tools => {
                    for id in self.tools.expired(now) {
                        warn!(call_id = %id, "tool webhook timed out");
                        self.cm.tool(ToolResult::Timeout);
                        self.events.push_back(CallEvent::CancelTool(id.clone()));
                        self.tool_result_out(id, Err("the tool webhook timed out".into()), true);
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
                Timer::Action => {
                    if self.actions.update_overdue(now) {
                        self.handle_call_update(
                            Err("the carrier did not answer the update in time".into()),
                            now,
                        );
                    } else {
                        self.progress(now);
                    }
                }
            }
        }
        self.sync_timers();
    }

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
                if !sent && self.actions.active().is_some() {
                    // The outbox drained: a call action may owe its final mark now.
                    self.progress(now);
                    return self.transmit_caller(out, now);
                }
                sent
            }
            Leg::Agent => self.transmit_agent(out),
            Leg::Internal => false,
        }
    }

    pub(super) fn transmit_caller(&mut self, out: &mut Vec<u8>, now: Instant) -> bool {
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
                if let Some(t) = self.recording.as_mut() {
                    t.clear(now);
                }
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
                    self.voicemail_reply_started(now);
                }
                self.cm.frame(Direction::ToCaller, bytes);
                if let Some(t) = self.recording.as_mut() {
                    t.agent(now, self.out.last_audio());
                }
                if done {
                    self.written_pending[CALLER].push(read_at);
                }
                true
            }
            Transmitted::Mark => true,
        }
    }

    pub(super) fn transmit_agent(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(d) = self
            .agent
            .as_ref()
            .filter(|a| !a.is_local() && !self.agent_gone)
        else {
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
}
