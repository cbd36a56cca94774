//! Playout: agent audio on its way to the caller. Owns the caller-leg outbox (agent audio,
//! capped in bytes, oldest dropped), the `clear` owed after a barge-in (it goes before
//! anything else), marks every [`super::playout::MARK_INTERVAL_MS`] of audio and their echoes
//! (played or flushed, [`Playout`]), the coalescing of small deltas to 20 ms frames, and which
//! reply is playing from which offset (what a barge-in tells the agent was heard).
//!
//! Sans-IO: the machine hands it audio and the carrier's codec, and takes encoded messages.

use super::outbox::AudioQueue;
use super::playout::{self, MarkOutcome, Playout};
use crate::agent::ReplyKey;
use crate::carrier::CarrierSession;
use crate::wire::b64::{self, PayloadError};
use std::time::{Duration, Instant};

/// Shortest agent audio worth a carrier `media` message on its own: 20 ms (160 bytes). A
/// shorter tail of a reply waits for more audio, the reply's end, or [`COALESCE_HOLD`].
pub const MIN_MEDIA_BYTES: usize = 160;

/// Longest a sub-20 ms tail of agent audio is held back for more (dialects with small deltas).
pub const COALESCE_HOLD: Duration = Duration::from_millis(40);

/// What one [`CallerOut::transmit`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmitted {
    /// Nothing is owed now.
    Nothing,
    /// A `clear`; carries the ms of unmarked audio it flushed.
    Clear {
        /// Sent but unmarked audio the clear flushed, ms.
        flushed_tail_ms: u64,
    },
    /// Audio.
    Audio {
        /// μ-law bytes in the message.
        bytes: usize,
        /// Its reply.
        reply: ReplyKey,
        /// Whether this is the first audio of that reply.
        first_of_reply: bool,
        /// When the agent message it came from was read.
        read_at: Instant,
        /// Whether that message is now fully written (its latency can be recorded).
        done: bool,
    },
    /// A mark.
    Mark,
}

/// The agent-audio side of the caller leg.
#[derive(Debug)]
pub struct CallerOut {
    queue: AudioQueue,
    /// A `clear` is owed before anything else; carries the signal time.
    clear_owed: Option<Instant>,
    /// A `clear` was handed to the writer at this signal time: its latency is recorded when
    /// the write completes.
    clear_pending: Option<Instant>,
    mark_owed: bool,
    /// Whether the newest queued agent audio may still grow (its reply is not done).
    tail_open: bool,
    coalesce: bool,
    playout: Playout,
    /// The reply playing, the playout offset (ms) its first audio went out at, ms sent.
    reply_key: ReplyKey,
    reply_start_ms: u64,
    reply_sent_ms: u64,
    /// A mark is forced once this much audio (ms offset) went out, whatever the interval
    /// (the end of a drain notice).
    force_mark_at: Option<u64>,
    mark: String,
    scratch: Vec<u8>,
}

impl CallerOut {
    /// An empty outbox; `coalesce` for dialects whose audio arrives in small deltas.
    pub fn new(coalesce: bool) -> CallerOut {
        CallerOut {
            queue: AudioQueue::default(),
            clear_owed: None,
            clear_pending: None,
            mark_owed: false,
            tail_open: false,
            coalesce,
            playout: Playout::default(),
            reply_key: ReplyKey(0),
            reply_start_ms: 0,
            reply_sent_ms: 0,
            force_mark_at: None,
            mark: String::new(),
            scratch: Vec::new(),
        }
    }

    /// Sets whether small deltas are coalesced (known once the dialect is).
    pub fn set_coalesce(&mut self, coalesce: bool) {
        self.coalesce = coalesce;
    }

    /// Agent audio (base64 μ-law) of `reply` read at `now`, decoded straight into the
    /// outbox; returns (bytes queued, items dropped to stay under `cap`).
    ///
    /// # Errors
    /// [`PayloadError`] for invalid base64 (nothing is queued).
    #[inline]
    pub fn push_b64(
        &mut self,
        payload: &str,
        reply: ReplyKey,
        now: Instant,
        cap: usize,
    ) -> Result<(usize, u64), PayloadError> {
        let n = b64::decode_append(payload, self.queue.bytes.tail())?;
        if n == 0 {
            return Ok((0, 0));
        }
        Ok((n, self.commit(n, reply, now, cap)))
    }

    /// Raw agent audio (a local agent, the drain notice); returns items dropped.
    pub fn push_raw(&mut self, audio: &[u8], reply: ReplyKey, now: Instant, cap: usize) -> u64 {
        if audio.is_empty() {
            return 0;
        }
        self.queue.bytes.tail().extend_from_slice(audio);
        self.commit(audio.len(), reply, now, cap)
    }

    fn commit(&mut self, n: usize, reply: ReplyKey, now: Instant, cap: usize) -> u64 {
        // Small deltas join the newest item of the same reply while it is under 20 ms.
        let merge = self.coalesce
            && self
                .queue
                .items
                .back()
                .is_some_and(|last| last.reply == reply && last.len < MIN_MEDIA_BYTES);
        self.queue.commit(n, now, reply, merge);
        self.tail_open = true;
        self.queue.enforce_cap(cap.max(1))
    }

    /// No more audio will come for the current reply: a held tail may go.
    pub fn reply_ended(&mut self) {
        self.tail_open = false;
    }

    /// Drops queued audio of replies up to `through`; returns how many items.
    pub fn drop_replies_through(&mut self, through: ReplyKey) -> u64 {
        self.queue.drop_replies_through(through)
    }

    /// Drops everything queued; returns how many items.
    pub fn drop_all(&mut self) -> u64 {
        self.queue.clear()
    }

    /// Whether the carrier may still be playing agent audio (queued here or there).
    pub fn playing(&self) -> bool {
        !self.queue.is_empty() || self.playout.queued_ms() > 0
    }

    /// Upper bound on the ms of agent audio the carrier still holds.
    pub fn queued_ms(&self) -> u64 {
        self.playout.queued_ms()
    }

    /// A `clear` is owed (signal at `now`); a mark owed before it is no longer.
    pub fn owe_clear(&mut self, now: Instant) {
        self.clear_owed = Some(now);
        self.mark_owed = false;
    }

    /// What the caller heard of the current reply if it is at or below `through`: (reply,
    /// ms played, confirmed by echoed marks, never more than was sent).
    pub fn heard_of_current(&self, through: ReplyKey) -> Option<(ReplyKey, u64)> {
        (self.reply_key <= through && self.reply_sent_ms > 0).then(|| {
            let played = self
                .playout
                .played_through_ms()
                .saturating_sub(self.reply_start_ms)
                .min(self.reply_sent_ms);
            (self.reply_key, played)
        })
    }

    /// Forces a mark once audio up to `at_ms` went out.
    pub fn force_mark_at(&mut self, at_ms: u64) {
        self.force_mark_at = Some(at_ms);
    }

    /// Owes a mark now at the end of the audio sent (`at_ms`, the current offset), even if
    /// no audio follows: how a goodbye's end is confirmed.
    pub fn owe_mark_at(&mut self, at_ms: u64) {
        self.force_mark_at = Some(at_ms);
        self.mark_owed = true;
    }

    /// Whether no agent audio waits in the outbox.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// ms of agent audio sent so far.
    pub fn sent_ms(&self) -> u64 {
        self.playout.sent_ms()
    }

    /// ms of agent audio confirmed played so far (the offset of the newest played mark).
    pub fn played_through_ms(&self) -> u64 {
        self.playout.played_through_ms()
    }

    /// (played ms, flushed ms) so far.
    pub fn totals_ms(&self) -> (u64, u64) {
        let (p, f, _, _) = self.playout.totals();
        (p, f)
    }

    /// A mark echoed at `now`: what it meant, and for a played mark the time since it was
    /// sent.
    pub fn on_mark_echo(&mut self, name: &str, now: Instant) -> (MarkOutcome, Option<Duration>) {
        self.playout.on_mark_echo_at(name, now)
    }

    /// Everything handed to the caller writer reached the socket at `now`: returns the
    /// latency of a `clear` among it (signal → written).
    pub fn written(&mut self, now: Instant) -> Option<Duration> {
        self.clear_pending
            .take()
            .map(|signal| now.saturating_duration_since(signal))
    }

    /// When a held sub-20 ms tail must go out, if one is held.
    pub fn hold_deadline(&self) -> Option<Instant> {
        if !self.coalesce || !self.tail_open || self.queue.items.len() != 1 {
            return None;
        }
        let item = self.queue.items.front()?;
        (item.len < MIN_MEDIA_BYTES).then_some(item.read_at + COALESCE_HOLD)
    }

    /// The agent audio of the newest [`Transmitted::Audio`] (raw μ-law, as encoded).
    pub fn last_audio(&self) -> &[u8] {
        &self.scratch
    }

    /// Cheap: whether [`CallerOut::transmit`] would give something now.
    #[inline]
    pub fn wants_transmit(&self) -> bool {
        self.clear_owed.is_some() || !self.queue.is_empty() || self.mark_owed
    }

    /// Encodes the next message owed into `out` (audio chunked to `chunk_bytes`).
    pub fn transmit(
        &mut self,
        carrier: &CarrierSession,
        stream: &str,
        chunk_bytes: usize,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Transmitted {
        if let Some(signal) = self.clear_owed.take() {
            carrier.encode_clear(stream, out);
            let flushed_tail_ms = self.playout.on_clear();
            self.clear_pending = Some(signal);
            self.reply_sent_ms = 0;
            return Transmitted::Clear { flushed_tail_ms };
        }
        let held = self.hold_deadline().is_some_and(|d| now < d);
        if !held {
            if let Some((read_at, reply, done)) =
                self.queue.take_front(chunk_bytes.max(1), &mut self.scratch)
            {
                let n = self.scratch.len();
                carrier.encode_media(stream, &self.scratch, out);
                if reply != self.reply_key {
                    self.reply_key = reply;
                    self.reply_sent_ms = 0;
                }
                let first_of_reply = self.reply_sent_ms == 0;
                if first_of_reply {
                    self.reply_start_ms = self.playout.sent_ms();
                }
                self.playout.on_audio_sent(n);
                self.reply_sent_ms += crate::audio::bytes_to_ms(n as u64).max(u64::from(n > 0));
                self.mark_owed = true;
                return Transmitted::Audio {
                    bytes: n,
                    reply,
                    first_of_reply,
                    read_at,
                    done,
                };
            }
        }
        if self.mark_owed {
            self.mark_owed = false;
            let forced = self
                .force_mark_at
                .is_some_and(|end_ms| self.playout.sent_ms() >= end_ms)
                .then(|| self.playout.force_mark());
            if let Some(ms) = forced.flatten().or_else(|| self.playout.take_mark()) {
                playout::mark_name(ms, &mut self.mark);
                carrier.encode_mark(stream, &self.mark, out);
                self.playout.on_mark_sent(ms, now);
                return Transmitted::Mark;
            }
        }
        Transmitted::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::CarrierKind;

    const SID: &str = "MZ00000000000000000000000000000001";

    fn drain(o: &mut CallerOut, at: Instant) -> Vec<serde_json::Value> {
        let c = CarrierSession::new(CarrierKind::Twilio);
        let mut out = Vec::new();
        let mut v = Vec::new();
        while o.transmit(&c, SID, 800, &mut out, at) != Transmitted::Nothing {
            v.push(serde_json::from_slice(&out).unwrap());
        }
        v
    }

    #[test]
    fn a_clear_goes_first_and_marks_follow_audio() {
        let t0 = Instant::now();
        let mut o = CallerOut::new(false);
        o.push_raw(&[0x55; 1600], ReplyKey(1), t0, 10_000);
        let msgs = drain(&mut o, t0);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0]["event"], "media");
        assert_eq!(msgs[2]["event"], "mark");
        assert_eq!(msgs[2]["mark"]["name"], "ms-200");
        o.push_raw(&[0x55; 800], ReplyKey(2), t0, 10_000);
        o.owe_clear(t0);
        let msgs = drain(&mut o, t0);
        assert_eq!(msgs[0]["event"], "clear");
        assert_eq!(
            o.written(t0 + Duration::from_millis(3)),
            Some(Duration::from_millis(3))
        );
        assert_eq!(o.written(t0), None);
    }

    #[test]
    fn small_deltas_are_held_up_to_the_coalesce_time() {
        let t0 = Instant::now();
        let mut o = CallerOut::new(true);
        o.push_raw(&[1; 80], ReplyKey(1), t0, 10_000);
        assert_eq!(o.hold_deadline(), Some(t0 + COALESCE_HOLD));
        assert!(drain(&mut o, t0).is_empty());
        o.push_raw(&[1; 80], ReplyKey(1), t0, 10_000);
        assert_eq!(o.hold_deadline(), None, "20 ms now: it may go");
        let msgs = drain(&mut o, t0);
        assert_eq!(msgs[0]["event"], "media");
        o.push_raw(&[1; 40], ReplyKey(1), t0, 10_000);
        o.reply_ended();
        assert_eq!(o.hold_deadline(), None);
    }

    #[test]
    fn what_was_heard_never_exceeds_what_was_sent() {
        let t0 = Instant::now();
        let mut o = CallerOut::new(false);
        o.push_raw(&[0; 800], ReplyKey(3), t0, 10_000);
        drain(&mut o, t0);
        assert_eq!(o.heard_of_current(ReplyKey(3)), Some((ReplyKey(3), 0)));
        o.on_mark_echo("ms-100", t0);
        assert_eq!(o.heard_of_current(ReplyKey(3)), Some((ReplyKey(3), 100)));
        assert_eq!(o.heard_of_current(ReplyKey(2)), None);
    }
}
