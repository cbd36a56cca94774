//! The machine's deadlines in one table (after quinn-proto's `TimerTable`): each part arms
//! and disarms its own entries, the machine takes the earliest for `poll_timeout` and handles
//! every expired one in `handle_timeout`.

use crate::label_enum;
use std::time::Instant;

label_enum! {
    /// Every deadline a call can have.
    pub enum Timer {
        /// Waiting for `start` (upgrade → start), then for the agent to be ready.
        Phase = "phase",
        /// The drain notice must have played by now.
        DrainNotice = "drain_notice",
        /// `--max-call-duration-secs`.
        MaxDuration = "max_duration",
        /// The caller leg's silence check (re-armed lazily from the last message time).
        CallerIdle = "caller_idle",
        /// The caller socket has accepted nothing since this deadline minus the stall limit.
        CallerStall = "caller_stall",
        /// The agent socket likewise.
        AgentStall = "agent_stall",
        /// A local agent's next output.
        LocalAgent = "local_agent",
        /// The earliest tool-webhook timeout.
        Tools = "tools",
        /// Keypad digits are sent once no new digit came in time.
        Dtmf = "dtmf",
        /// A held sub-20 ms tail of agent audio must go out.
        CoalesceHold = "coalesce_hold",
        /// A call action's next step (the agent's quiet, the final mark's cap, the REST
        /// update's timeout).
        Action = "action",
        /// Hold audio needs topping up.
        Hold = "hold",
        /// An agent reconnect attempt is due, or the recovery deadline.
        Recovery = "recovery",
        /// The agent may have gone silent after the caller spoke.
        AgentSilent = "agent_silent",
        /// The agent session's rollover time.
        Rollover = "rollover",
        /// The recording's next block is due.
        Recording = "recording",
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    at: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arms (`Some`) or disarms (`None`) `t`.
    #[inline]
    pub fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.at[t.index()] = at;
    }

    /// `t`'s deadline, if armed.
    #[inline]
    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t.index()]
    }

    /// Whether `t` is armed and due at `now`.
    #[inline]
    pub fn is_due(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|d| d <= now)
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// Every armed timer due at `now`, in [`Timer`] order.
    pub fn due(&self, now: Instant) -> impl Iterator<Item = Timer> + '_ {
        Timer::ALL
            .iter()
            .copied()
            .filter(move |t| self.is_due(*t, now))
    }

    /// Disarms everything.
    pub fn clear(&mut self) {
        self.at = [None; Timer::COUNT];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_armed_deadline_wins_and_due_lists_expired_ones() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::MaxDuration, Some(ms(1000)));
        t.set(Timer::Dtmf, Some(ms(200)));
        t.set(Timer::Phase, Some(ms(500)));
        assert_eq!(t.next(), Some(ms(200)));
        assert_eq!(t.due(ms(499)).collect::<Vec<_>>(), [Timer::Dtmf]);
        assert_eq!(
            t.due(ms(500)).collect::<Vec<_>>(),
            [Timer::Phase, Timer::Dtmf]
        );
        t.set(Timer::Dtmf, None);
        assert_eq!(t.next(), Some(ms(500)));
        assert!(!t.is_due(Timer::Dtmf, ms(10_000)));
        t.clear();
        assert_eq!(t.next(), None);
    }
}
