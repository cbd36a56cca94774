//! Playout accounting for agent audio sent to Twilio (Twilio Media Streams `mark` and
//! `clear`, <https://www.twilio.com/docs/voice/media-streams/websocket-messages>).
//!
//! The relay names every mark after the cumulative milliseconds of agent audio it had sent
//! when the mark was queued (`"ms-1340"`). Twilio echoes a mark when the audio before it has
//! played, and also echoes every pending mark at once when a `clear` flushes its buffer, so
//! marks echoed after a clear that were sent before it count as *flushed*, not played.
//! Sans-IO: no clock, no sockets; the call feeds sends, clears and echoes in order.

/// Prefix of mark names the relay generates.
pub const MARK_PREFIX: &str = "ms-";

/// Least agent audio (ms) between two marks. Agent audio that trickles in 20 ms frames (the
/// echo agent, small provider deltas) would otherwise get one mark, and one echo to read
/// back, per frame: three messages per frame instead of one. Audio after the last mark
/// stays unmarked until more audio follows; playout totals lag by less than this.
pub const MARK_INTERVAL_MS: u64 = 100;

/// What an echoed mark meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOutcome {
    /// The audio up to the mark played; carries the newly played ms.
    Played(u64),
    /// The audio up to the mark was flushed by a `clear`; carries the flushed ms.
    Flushed(u64),
    /// Not one of ours (or a repeat): ignored.
    Unknown,
}

/// Most marks whose send time is kept for the playout-lag measurement (one per ≥ 100 ms of
/// audio: 512 cover 51 s of queued audio; older send times are forgotten, not grown).
pub const MAX_TIMED_MARKS: usize = 512;

/// Per-call playout state.
#[derive(Debug, Default, Clone)]
pub struct Playout {
    /// Send time of marks in flight: (offset ms, when written), oldest first.
    in_flight: std::collections::VecDeque<(u64, std::time::Instant)>,
    /// Offset (ms) of the newest mark echoed as played.
    played_through_ms: u64,
    /// μ-law bytes of agent audio written to Twilio.
    sent_bytes: u64,
    /// `sent_ms` at the last mark queued (marks are only sent when audio was sent since).
    last_mark_ms: u64,
    /// Offset (ms) of the newest echoed mark.
    acked_ms: u64,
    /// `sent_ms` when the most recent `clear` was sent: audio up to here was flushed unless
    /// a mark confirmed it played before.
    cleared_through_ms: u64,
    /// Totals.
    played_ms: u64,
    flushed_ms: u64,
    marks_played: u64,
    marks_flushed: u64,
}

impl Playout {
    /// Records `bytes` of agent audio handed to Twilio.
    #[inline]
    pub fn on_audio_sent(&mut self, bytes: usize) {
        self.sent_bytes += bytes as u64;
    }

    /// Milliseconds of agent audio sent so far.
    pub fn sent_ms(&self) -> u64 {
        crate::audio::bytes_to_ms(self.sent_bytes)
    }

    /// If at least [`MARK_INTERVAL_MS`] of audio was sent since the last mark, returns the
    /// offset (cumulative ms) of the mark to send now and remembers it; otherwise `None`.
    pub fn take_mark(&mut self) -> Option<u64> {
        let ms = self.sent_ms();
        (ms >= self.last_mark_ms + MARK_INTERVAL_MS).then(|| {
            self.last_mark_ms = ms;
            ms
        })
    }

    /// Records when the mark for offset `ms` went to Twilio (for the playout lag).
    pub fn on_mark_sent(&mut self, ms: u64, now: std::time::Instant) {
        if self.in_flight.len() >= MAX_TIMED_MARKS {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((ms, now));
    }

    /// Like [`Playout::take_mark`] whatever the interval, when any audio went out since the
    /// last mark (the drain notice wants a mark right at its end).
    pub fn force_mark(&mut self) -> Option<u64> {
        let ms = self.sent_ms();
        (ms > self.last_mark_ms).then(|| {
            self.last_mark_ms = ms;
            ms
        })
    }

    /// Records that a `clear` was sent: every mark already sent is flushed, not played, and
    /// so is the audio sent after the last mark. Returns the ms of that unmarked tail, which
    /// no mark echo will report (it counts as flushed now).
    pub fn on_clear(&mut self) -> u64 {
        let sent = self.sent_ms();
        let tail = sent.saturating_sub(self.last_mark_ms.max(self.cleared_through_ms));
        self.flushed_ms += tail;
        self.cleared_through_ms = sent;
        self.in_flight.clear();
        tail
    }

    /// Offset (ms of agent audio since the call began) up to which Twilio confirmed playing.
    pub fn played_through_ms(&self) -> u64 {
        self.played_through_ms
    }

    /// Like [`Playout::on_mark_echo`], and for a played mark also the time since it was
    /// sent (the playout lag), when its send time is known.
    pub fn on_mark_echo_at(
        &mut self,
        name: &str,
        now: std::time::Instant,
    ) -> (MarkOutcome, Option<std::time::Duration>) {
        let outcome = self.on_mark_echo(name);
        let mut lag = None;
        if let MarkOutcome::Played(_) = outcome {
            let through = self.played_through_ms;
            while let Some(&(ms, at)) = self.in_flight.front() {
                if ms > through {
                    break;
                }
                self.in_flight.pop_front();
                if ms == through {
                    lag = Some(now.saturating_duration_since(at));
                }
            }
        }
        (outcome, lag)
    }

    /// Upper bound on the ms of audio Twilio still holds: sent, neither confirmed played
    /// nor flushed by a `clear`.
    pub fn queued_ms(&self) -> u64 {
        self.sent_ms()
            .saturating_sub(self.acked_ms.max(self.cleared_through_ms))
    }

    /// Handles a mark echoed by Twilio.
    pub fn on_mark_echo(&mut self, name: &str) -> MarkOutcome {
        let Some(ms) = name
            .strip_prefix(MARK_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return MarkOutcome::Unknown;
        };
        if ms <= self.acked_ms || ms > self.last_mark_ms {
            return MarkOutcome::Unknown;
        }
        let from = self.acked_ms;
        self.acked_ms = ms;
        if ms <= self.cleared_through_ms {
            let delta = ms - from;
            self.flushed_ms += delta;
            self.marks_flushed += 1;
            MarkOutcome::Flushed(delta)
        } else {
            // Audio up to the last clear was flushed (counted then), not played.
            let delta = ms - from.max(self.cleared_through_ms);
            self.played_ms += delta;
            self.marks_played += 1;
            self.played_through_ms = ms;
            MarkOutcome::Played(delta)
        }
    }

    /// (played ms, flushed ms, marks played, marks flushed) so far.
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.played_ms,
            self.flushed_ms,
            self.marks_played,
            self.marks_flushed,
        )
    }
}

/// Formats a mark name for `ms` into `out` (cleared first).
pub fn mark_name(ms: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(out, "{MARK_PREFIX}{ms}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn played_then_flushed_after_clear() {
        let mut p = Playout::default();
        p.on_audio_sent(1600); // 200 ms
        assert_eq!(p.take_mark(), Some(200));
        assert_eq!(p.take_mark(), None);
        p.on_audio_sent(400); // 50 ms: below the mark interval
        assert_eq!(p.take_mark(), None);
        p.on_audio_sent(400);
        assert_eq!(p.take_mark(), Some(300));
        assert_eq!(p.queued_ms(), 300);
        assert_eq!(p.on_mark_echo("ms-200"), MarkOutcome::Played(200));
        assert_eq!(p.queued_ms(), 100);
        p.on_clear();
        assert_eq!(p.queued_ms(), 0);
        // Twilio echoes the pending mark at once after clear: flushed, not played.
        assert_eq!(p.on_mark_echo("ms-300"), MarkOutcome::Flushed(100));
        // New audio after the clear plays normally.
        p.on_audio_sent(800);
        assert_eq!(p.take_mark(), Some(400));
        assert_eq!(p.on_mark_echo("ms-400"), MarkOutcome::Played(100));
        assert_eq!(p.totals(), (300, 100, 2, 1));
    }

    /// Audio sent after the last mark and before a `clear` is flushed too, and does not
    /// count as played when the next mark after the clear comes back.
    #[test]
    fn the_unmarked_tail_before_a_clear_is_flushed() {
        let mut p = Playout::default();
        p.on_audio_sent(800); // 100 ms
        assert_eq!(p.take_mark(), Some(100));
        p.on_audio_sent(400); // 50 ms, below the mark interval: unmarked
        assert_eq!(p.take_mark(), None);
        assert_eq!(p.queued_ms(), 150);
        assert_eq!(p.on_clear(), 50);
        assert_eq!(p.queued_ms(), 0);
        assert_eq!(p.on_mark_echo("ms-100"), MarkOutcome::Flushed(100));
        p.on_audio_sent(800); // 100 ms after the clear
        assert_eq!(p.queued_ms(), 100);
        assert_eq!(p.take_mark(), Some(250));
        assert_eq!(p.on_mark_echo("ms-250"), MarkOutcome::Played(100));
        assert_eq!(p.totals(), (100, 150, 1, 1));
    }

    #[test]
    fn playout_lag_and_played_offset() {
        let t0 = std::time::Instant::now();
        let ms = |n| std::time::Duration::from_millis(n);
        let mut p = Playout::default();
        p.on_audio_sent(800);
        let m1 = p.take_mark().unwrap();
        p.on_mark_sent(m1, t0);
        p.on_audio_sent(800);
        let m2 = p.take_mark().unwrap();
        p.on_mark_sent(m2, t0 + ms(5));
        assert_eq!(
            p.on_mark_echo_at("ms-100", t0 + ms(120)),
            (MarkOutcome::Played(100), Some(ms(120)))
        );
        assert_eq!(p.played_through_ms(), 100);
        p.on_clear();
        // Flushed marks give no lag and do not move the played offset.
        assert_eq!(
            p.on_mark_echo_at("ms-200", t0 + ms(130)),
            (MarkOutcome::Flushed(100), None)
        );
        assert_eq!(p.played_through_ms(), 100);
    }

    #[test]
    fn foreign_repeated_and_future_marks_are_ignored() {
        let mut p = Playout::default();
        p.on_audio_sent(160);
        assert_eq!(p.take_mark(), None);
        p.on_audio_sent(640);
        assert_eq!(p.take_mark(), Some(100));
        assert_eq!(p.on_mark_echo("someone-else"), MarkOutcome::Unknown);
        assert_eq!(p.on_mark_echo("ms-x"), MarkOutcome::Unknown);
        assert_eq!(p.on_mark_echo("ms-999"), MarkOutcome::Unknown);
        assert_eq!(p.on_mark_echo("ms-100"), MarkOutcome::Played(100));
        assert_eq!(p.on_mark_echo("ms-100"), MarkOutcome::Unknown);
        let mut s = String::new();
        mark_name(20, &mut s);
        assert_eq!(s, "ms-20");
    }
}
