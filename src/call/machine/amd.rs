//! Outbound calls that reached voicemail (Twilio answering-machine detection, `AnsweredBy`
//! in the stream's `relay_answered_by` parameter,
//! <https://www.twilio.com/docs/voice/answering-machine-detection>): once the machine's
//! greeting ended, the call leaves its message and hangs up after it was heard (the
//! mark-gated hang-up of `end_call`). The message is `--voicemail-audio-file`, played by the
//! relay with no agent session, or else the agent's own first reply (told by its
//! instructions and the `answered_by` variable; `relay_voicemail_message` becomes its
//! `first_message`).

use super::continuity::HOLD_REPLY;
use super::*;
use crate::obs::labels::ActionSource;
use actions::CallAction;

impl CallMachine {
    /// At admission, `now`: whether the relay leaves the voicemail itself (then no agent
    /// session is opened). With the agent leaving it, arms the hang-up after its first reply.
    pub(super) fn voicemail_at_admission(&mut self, now: Instant) -> bool {
        if !self.params().reached_voicemail() {
            return false;
        }
        info!(
            answered_by = self.param("relay_answered_by").unwrap_or(""),
            "outbound call reached voicemail: leaving the message"
        );
        let Some(audio) = self.cfg.voicemail_audio.clone() else {
            self.voicemail_pending = true;
            return false;
        };
        self.phase = Phase::Ready;
        self.timers.set(Timer::Phase, None);
        self.agent_gone = true;
        self.out
            .push_raw(&audio, HOLD_REPLY, now, self.cfg.caller_outbox_bytes);
        self.out.reply_ended();
        self.hang_up_after_voicemail(now);
        true
    }

    /// The agent's first reply started playing at `now`: when it is the voicemail message,
    /// the call ends once it was heard.
    pub(super) fn voicemail_reply_started(&mut self, now: Instant) {
        if std::mem::take(&mut self.voicemail_pending) {
            self.hang_up_after_voicemail(now);
        }
    }

    fn hang_up_after_voicemail(&mut self, now: Instant) {
        self.request_action(
            CallAction::EndCall {
                reason: Some("voicemail left".into()),
            },
            ActionSource::Amd,
            None,
            now,
        );
        self.actions.set_end_reason(EndReason::VoicemailLeft);
        if self.agent_gone {
            self.actions.agent_gone();
        }
        self.progress(now);
    }
}
