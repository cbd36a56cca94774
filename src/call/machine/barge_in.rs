//! Barge-in: the interruption filter (audio of a reply the caller cut is stale, queued or
//! still arriving), and when the dialect's signal says the caller cut in while agent audio may
//! still be playing, a `clear` to the carrier and the dialect's barge-in command carrying what
//! the caller heard (OpenAI `conversation.item.truncate`).

use super::agent_cmds::{AgentCmd, AgentCmds};
use super::caller_out::CallerOut;
use crate::agent::ReplyKey;
use crate::obs::call_metrics::CallMetrics;
use crate::obs::labels::{CallEventKind, Direction, DropReason};
use std::time::Instant;
use tracing::info;

/// The interruption filter of one call.
#[derive(Debug, Default)]
pub struct BargeIn {
    /// Replies up to here were cut.
    through: Option<ReplyKey>,
}

impl BargeIn {
    /// Whether audio of `reply` is stale (its reply was cut).
    #[inline]
    pub fn is_stale(&self, reply: ReplyKey) -> bool {
        self.through.is_some_and(|cut| reply <= cut)
    }

    /// Cuts replies up to `through`: queued audio of them is dropped, later audio of them
    /// too; with `signal` (this event is the dialect's barge-in signal) and agent audio
    /// possibly still playing, the carrier gets a `clear` and the dialect its barge-in
    /// command. Returns whether a `clear` is owed now.
    pub fn interrupt(
        &mut self,
        through: ReplyKey,
        signal: bool,
        now: Instant,
        out: &mut CallerOut,
        cmds: &mut AgentCmds,
        cm: &mut CallMetrics,
    ) -> bool {
        if self.through.is_some_and(|cut| through <= cut) {
            return false;
        }
        self.through = Some(through);
        let dropped = out.drop_replies_through(through);
        cm.drop_frames(Direction::ToCaller, DropReason::Interrupted, dropped);
        let playing = dropped > 0 || out.queued_ms() > 0;
        if !(signal && playing) {
            return false;
        }
        out.owe_clear(now);
        cm.event(CallEventKind::BargeIn);
        if let Some((reply, played_ms)) = out.heard_of_current(through) {
            cmds.push(AgentCmd::BargeIn { reply, played_ms });
        }
        info!(
            through = through.0,
            "barge-in: clearing the caller's playback"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_reply_is_stale_and_a_clear_is_owed_only_while_audio_plays() {
        let t0 = Instant::now();
        let mut b = BargeIn::default();
        let mut out = CallerOut::new(false);
        let mut cmds = AgentCmds::default();
        let mut cm = CallMetrics::default();
        // Nothing playing: the filter moves, no clear.
        assert!(!b.interrupt(ReplyKey(1), true, t0, &mut out, &mut cmds, &mut cm));
        assert!(b.is_stale(ReplyKey(1)) && !b.is_stale(ReplyKey(2)));
        out.push_raw(&[0; 800], ReplyKey(2), t0, 10_000);
        // Not the dialect's signal: audio dropped, no clear.
        assert!(!b.interrupt(ReplyKey(2), false, t0, &mut out, &mut cmds, &mut cm));
        assert_eq!(cm.dropped_total[Direction::ToCaller.index()], 1);
        out.push_raw(&[0; 800], ReplyKey(3), t0, 10_000);
        assert!(b.interrupt(ReplyKey(3), true, t0, &mut out, &mut cmds, &mut cm));
        assert_eq!(cm.events_total(CallEventKind::BargeIn), 1);
        // An older key never moves the filter back.
        assert!(!b.interrupt(ReplyKey(2), true, t0, &mut out, &mut cmds, &mut cm));
    }
}
