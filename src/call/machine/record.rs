//! The call's recording, as the machine sees it: what to record starts at admission (by
//! `--record` and the stream's `relay_record` parameter), every caller chunk and every agent
//! chunk sent goes into the [`Timeline`], clears and mark echoes move its playout clock, and
//! finished blocks leave as [`CallEvent::RecordingBlock`] for the driver to hand to the
//! writer. Pause and resume (PCI) come from the built-in tools, the tool webhook's
//! `"action"` and `--recording-pause-digit`.

use super::*;
use crate::call::recording::{Block, Pause, RecordingAction, Timeline};
use crate::obs::labels::{ActionKind, ActionResult, ActionSource};

/// How long after a block is due the recording's timer wakes a call whose caller frames
/// stopped (with frames flowing, blocks go with them and the timer never fires).
pub const RECORDING_TIMER_SLACK: Duration = Duration::from_secs(1);

impl CallMachine {
    /// Starts recording at `now` if this call is to be recorded.
    pub(super) fn start_recording(&mut self, now: Instant) {
        let Some(r) = &self.cfg.recording else { return };
        if !r.records(&self.custom_parameters) {
            return;
        }
        self.recording = Some(Timeline::new(now));
        self.events.push_back(CallEvent::RecordingStarted);
    }

    /// Whether this call is being recorded.
    pub fn recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Moves finished blocks to the driver at `now`. Blocks are taken with the caller's
    /// frames (every 20 ms anyway); the timer, [`RECORDING_TIMER_SLACK`] after the next
    /// block is due, only wakes the call when the caller's frames stop.
    pub(super) fn poll_recording(&mut self, now: Instant) {
        let Some(t) = self.recording.as_mut() else {
            return;
        };
        while let Some(b) = t.poll_block(now) {
            self.events.push_back(CallEvent::RecordingBlock(b));
        }
        self.timers.set(
            Timer::Recording,
            Some(t.next_block_at() + RECORDING_TIMER_SLACK),
        );
    }

    /// After a caller frame at `now`: takes a block when one is due.
    pub(super) fn record_tick(&mut self, now: Instant) {
        if self
            .recording
            .as_ref()
            .is_some_and(|t| now >= t.next_block_at())
        {
            self.poll_recording(now);
        }
    }

    /// The call is over at `now`: the last samples and the paused spans (for the writer's
    /// finish), and whether the timeline left agent audio out.
    pub fn finish_recording(&mut self, now: Instant) -> Option<(Option<Block>, Vec<Pause>, bool)> {
        let mut t = self.recording.take()?;
        let last = t.finish(now);
        Some((last, t.pauses().to_vec(), t.dropped_ahead() > 0))
    }

    /// A keypad digit at `now`: `true` when it was the pause digit (handled here, not sent
    /// to the agent). Digits pressed while paused are not logged.
    pub(super) fn recording_key(&mut self, digit: &str, now: Instant) -> bool {
        let Some(pause) = self.cfg.recording.as_ref().and_then(|r| r.pause_digit) else {
            return false;
        };
        if digit.len() != 1 || !digit.starts_with(pause) {
            return false;
        }
        let action = if self.recording.as_ref().is_some_and(Timeline::paused) {
            RecordingAction::Resume
        } else {
            RecordingAction::Pause
        };
        self.recording_action(action, ActionSource::Dtmf, None, now);
        true
    }

    /// The recording's part of the call summary (no location: the driver knows it).
    pub(super) fn recording_summary(&self) -> Option<crate::obs::calls::RecordingSummary> {
        let t = self.recording.as_ref()?;
        Some(crate::obs::calls::RecordingSummary {
            location: None,
            paused: t.paused(),
            pauses_ms: t
                .pauses()
                .iter()
                .map(|p| (p.from / 8, p.to.map(|t| t / 8)))
                .collect(),
            degraded: t.dropped_ahead() > 0,
        })
    }

    /// Whether recording is paused (keypad digits are then not logged).
    pub fn recording_paused(&self) -> bool {
        self.recording.as_ref().is_some_and(Timeline::paused)
    }

    /// Pauses or resumes the recording at `now`, asked by `source` (answered to the agent
    /// when a tool call asked). Counted in `relay_call_actions_total`; refused as
    /// `unavailable` when the call is not recorded.
    pub fn recording_action(
        &mut self,
        action: RecordingAction,
        source: ActionSource,
        tool_call: Option<String>,
        now: Instant,
    ) {
        let kind = match action {
            RecordingAction::Pause => ActionKind::PauseRecording,
            RecordingAction::Resume => ActionKind::ResumeRecording,
        };
        let answer = match self.recording.as_mut() {
            Some(t) => {
                match action {
                    RecordingAction::Pause => t.pause(now),
                    RecordingAction::Resume => t.resume(now),
                }
                self.cm.action(kind, source, ActionResult::Accepted);
                info!(
                    action = kind.as_str(),
                    source = source.as_str(),
                    "recording {}",
                    if t.paused() { "paused" } else { "resumed" }
                );
                Ok(serde_json::json!({ "status": if t.paused() { "paused" } else { "recording" } }))
            }
            None => {
                self.cm.action(kind, source, ActionResult::Unavailable);
                debug!(
                    action = kind.as_str(),
                    "recording action on a call that is not recorded"
                );
                Err("this call is not being recorded".to_owned())
            }
        };
        if let Some(id) = tool_call {
            self.tool_result_out(id, answer, false);
            self.deliver_local_cmds(now);
        }
    }
}
