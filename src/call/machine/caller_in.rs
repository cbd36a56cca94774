//! The caller leg into the machine: carrier events, `start` and admission, inbound audio
//! and its timing, mark echoes, and bad input from either leg.

use super::*;

impl CallMachine {
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
                self.caller_audio(m.payload, m.timestamp_ms, now);
                self.record_tick(now);
            }
            CallerEvent::Start(st) => self.start(st, now),
            CallerEvent::Mark { name } => self.mark_echo(name, now),
            CallerEvent::Dtmf { digit } => {
                self.cm.event(CallEventKind::DtmfDigit);
                if self.recording_key(digit, now) {
                    self.sync_timers();
                    return;
                }
                if self.recording_paused() {
                    debug!("dtmf (recording paused: digit not logged)");
                } else {
                    debug!(digit, "dtmf");
                }
                if self.operator_key(digit, now) {
                    self.sync_timers();
                    return;
                }
                if let Some(digits) = self.dtmf.push(digit, now, self.cfg.dtmf_interdigit) {
                    self.send_dtmf(digits, now);
                }
            }
            // After the relay's redirect the `stop` is the transfer (its REST answer may
            // still be on its way), not a hang-up.
            CallerEvent::Stop => self.end(if self.actions.transferring() {
                EndReason::Transferred
            } else {
                EndReason::CallerHangup
            }),
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

    pub(super) fn mark_echo(&mut self, name: &str, now: Instant) {
        let (outcome, lag) = self.out.on_mark_echo(name, now);
        match outcome {
            MarkOutcome::Played(ms) => {
                self.cm.event(CallEventKind::MarkPlayed);
                if let Some(t) = self.recording.as_mut() {
                    t.mark_played(now, self.out.played_through_ms());
                }
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
                if self.actions.active().is_some() {
                    self.progress(now);
                }
            }
            MarkOutcome::Flushed(ms) => {
                self.cm.event(CallEventKind::MarkFlushed);
                self.cm.playout(false, crate::audio::ms_to_bytes(ms));
            }
            MarkOutcome::Unknown => debug!(name, "ignored unknown mark echo"),
        }
    }

    pub(super) fn start(&mut self, st: Start<'_>, now: Instant) {
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
        self.start_recording(now);
        self.poll_recording(now);
        if self.voicemail_at_admission(now) {
            self.sync_timers();
            return;
        }
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
    pub(super) fn inbound_timing(&mut self, now: Instant, chunk: Option<u64>) {
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
    pub(super) fn caller_audio(&mut self, payload: &str, timestamp_ms: Option<u64>, now: Instant) {
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
                if let Some(t) = self.recording.as_mut() {
                    t.caller(now, timestamp_ms, self.early.last(n));
                }
                // During an agent recovery only the last part of the gap is kept.
                let early_cap = if self.recovery.recovering() {
                    self.cfg.continuity.resume_caller_audio_bytes
                } else {
                    self.cfg.early_audio_bytes
                };
                let (reason, dropped) =
                    self.early
                        .commit(n, now, early_cap, self.cfg.agent_outbox_bytes);
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
                if let Some(t) = self.recording.as_mut() {
                    t.caller(now, timestamp_ms, &self.audio_scratch);
                }
                if let Some(s) = agent {
                    let dropped = s.on_caller_audio(now, &self.audio_scratch);
                    self.cm.frame(Direction::ToAgent, n);
                    self.cm
                        .drop_frames(Direction::ToCaller, DropReason::EchoQueueFull, dropped);
                }
            }
        }
    }

    pub(super) fn bad_payload(&mut self) {
        self.handle_bad_input(
            Leg::Caller,
            ErrorKind::InvalidBase64,
            &"media.payload is not valid base64",
        );
    }

    pub(super) fn empty_payload(&mut self) {
        // Nothing to relay; an empty item would still take a place in the outbox.
        self.handle_bad_input(
            Leg::Caller,
            ErrorKind::EmptyPayload,
            &"media.payload is empty",
        );
    }

    /// The newest reply key the agent has used.
    pub(super) fn newest_reply(&self) -> ReplyKey {
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
}
