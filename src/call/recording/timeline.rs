//! A call's two recorded channels on the caller's timeline (sans-IO: the call feeds what it
//! received and sent with the time, and takes finished blocks).
//!
//! Positions are samples (= μ-law bytes of one channel, 8 per ms) since the stream's
//! `start`.
//! - **Left, the caller**: each inbound chunk at its `media.timestamp` (ms since the stream
//!   started, Twilio Media Streams <https://www.twilio.com/docs/voice/media-streams/websocket-messages#media-message>),
//!   gaps from missing chunks filled with μ-law silence; a chunk without a timestamp, or one
//!   behind the previous, follows the previous one.
//! - **Right, the agent as the caller heard it**: a playout clock. Audio sent to the carrier
//!   plays back to back in real time from when it was sent (the carrier queues what is sent
//!   ahead); a mark echo that arrives later than the clock expected its audio to finish moves
//!   what follows it to the echo's time; a `clear` cuts what the clock had not yet played,
//!   so flushed audio never appears. When the call ends, what had not played is cut too.
//! - **Pauses** (PCI): both channels are silence over a paused span, so timing stays true.
//!
//! Samples are committed [`COMMIT_LAG`] behind the clock (a mark echo can still move audio
//! that recent) in blocks of [`BLOCK_SAMPLES`]. Memory per call: a lag and a block of both
//! channels (16 KB) plus the agent audio sent ahead of playout, at most [`MAX_AHEAD_SAMPLES`]
//! (beyond that the recording is marked degraded and the excess is not recorded).

use super::wav::SILENCE;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples per ms.
const PER_MS: u64 = 8;

/// How far behind the playout clock samples are committed (500 ms = 4000 samples).
pub const COMMIT_LAG: u64 = 4000;

/// Samples per block handed to the writer (500 ms).
pub const BLOCK_SAMPLES: u64 = 4000;

/// Agent audio kept ahead of the playout clock (60 s); more is not recorded (degraded).
pub const MAX_AHEAD_SAMPLES: u64 = 60 * 8000;

/// A caller timestamp ahead of the relay's own clock by more than this (1 s) is taken as
/// the clock's time instead (a bad timestamp must not allocate hours of silence).
pub const MAX_CALLER_LEAD: u64 = 8000;

/// A mark echo later than expected by at most this (40 ms) leaves the clock alone.
pub const MARK_TOLERANCE: u64 = 320;

/// Agent send positions kept for mark correction (one per chunk sent).
const MAX_SEGMENTS: usize = 4096;

/// Finished samples of both channels, from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Position of the first sample.
    pub start: u64,
    /// Caller samples.
    pub left: Vec<u8>,
    /// Agent samples (same length).
    pub right: Vec<u8>,
}

/// A paused span `[from, to)` in samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// First paused sample.
    pub from: u64,
    /// First sample after the pause (`None` while paused).
    pub to: Option<u64>,
}

/// One call's recording timeline.
#[derive(Debug)]
pub struct Timeline {
    origin: Instant,
    /// Samples handed out in blocks.
    committed: u64,
    /// Caller samples from `committed`.
    left: VecDeque<u8>,
    /// Agent samples from `committed` (silence where nothing played), up to the playout end.
    right: VecDeque<u8>,
    /// (agent byte offset, position) where each send started, oldest first.
    segments: VecDeque<(u64, u64)>,
    /// Agent bytes sent so far.
    agent_sent: u64,
    pauses: Vec<Pause>,
    /// Agent audio not recorded because too much was ahead of playout.
    dropped_ahead: u64,
}

impl Timeline {
    /// A timeline whose position 0 is `origin` (when the stream's `start` arrived).
    pub fn new(origin: Instant) -> Timeline {
        Timeline {
            origin,
            committed: 0,
            left: VecDeque::with_capacity((COMMIT_LAG + BLOCK_SAMPLES) as usize),
            right: VecDeque::with_capacity((COMMIT_LAG + BLOCK_SAMPLES) as usize),
            segments: VecDeque::new(),
            agent_sent: 0,
            pauses: Vec::new(),
            dropped_ahead: 0,
        }
    }

    /// The clock's position at `now`.
    pub fn position(&self, now: Instant) -> u64 {
        let us = now.saturating_duration_since(self.origin).as_micros();
        u64::try_from(us * u128::from(PER_MS) / 1000).unwrap_or(u64::MAX)
    }

    fn left_end(&self) -> u64 {
        self.committed + self.left.len() as u64
    }

    fn play_end(&self) -> u64 {
        self.committed + self.right.len() as u64
    }

    /// Caller audio received at `now`, stamped `timestamp_ms` by the carrier.
    pub fn caller(&mut self, now: Instant, timestamp_ms: Option<u64>, audio: &[u8]) {
        let end = self.left_end();
        let limit = self.position(now) + MAX_CALLER_LEAD;
        let at = timestamp_ms
            .map_or(end, |t| t.saturating_mul(PER_MS).min(limit))
            .max(end);
        self.left
            .extend(std::iter::repeat_n(SILENCE, (at - end) as usize));
        self.left.extend(audio);
    }

    /// Agent audio sent to the carrier at `now`.
    pub fn agent(&mut self, now: Instant, audio: &[u8]) {
        let now_pos = self.position(now);
        let end = self.play_end();
        let at = end.max(now_pos);
        let room = (now_pos + MAX_AHEAD_SAMPLES).saturating_sub(at);
        let take = audio.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.dropped_ahead += (audio.len() - take) as u64;
        self.right
            .extend(std::iter::repeat_n(SILENCE, (at - end) as usize));
        if self.segments.len() >= MAX_SEGMENTS {
            self.segments.pop_front();
        }
        self.segments.push_back((self.agent_sent, at));
        self.right.extend(&audio[..take]);
        self.agent_sent += audio.len() as u64;
    }

    /// A `clear` was sent at `now`: what the clock had not played is cut.
    pub fn clear(&mut self, now: Instant) {
        let cut = self.position(now).max(self.committed);
        self.right.truncate((cut - self.committed) as usize);
        self.segments.retain(|&(_, pos)| pos < cut);
    }

    /// Twilio echoed, at `now`, a mark sent after `offset_ms` ms of agent audio, as played.
    /// When that is later than the clock expected, what follows the mark moves to `now`.
    pub fn mark_played(&mut self, now: Instant, offset_ms: u64) {
        let offset = offset_ms * PER_MS;
        let Some(&(seg_off, seg_pos)) = self.segments.iter().rev().find(|(o, _)| *o <= offset)
        else {
            return;
        };
        let expected = seg_pos + (offset - seg_off);
        let now_pos = self.position(now);
        if expected < self.committed
            || expected >= self.play_end()
            || now_pos <= expected + MARK_TOLERANCE
        {
            return;
        }
        let late = now_pos - expected;
        let at = (expected - self.committed) as usize;
        // Silence in at `at`: appended, then rotated in front of the tail (a memmove).
        self.right
            .extend(std::iter::repeat_n(SILENCE, late as usize));
        self.right.make_contiguous()[at..].rotate_right(late as usize);
        for seg in self.segments.iter_mut().filter(|(o, _)| *o >= offset) {
            seg.1 += late;
        }
        let i = self.segments.partition_point(|(o, _)| *o < offset);
        if self.segments.get(i).is_none_or(|(o, _)| *o != offset) {
            self.segments.insert(i, (offset, now_pos));
        }
    }

    /// Recording pauses at `now` (a no-op while paused).
    pub fn pause(&mut self, now: Instant) {
        if self.pauses.last().is_none_or(|p| p.to.is_some()) {
            let from = self.position(now).max(self.committed);
            self.pauses.push(Pause { from, to: None });
        }
    }

    /// Recording resumes at `now` (a no-op unless paused).
    pub fn resume(&mut self, now: Instant) {
        let pos = self.position(now);
        if let Some(p) = self.pauses.last_mut().filter(|p| p.to.is_none()) {
            p.to = Some(pos.max(p.from));
        }
    }

    /// Whether recording is paused.
    pub fn paused(&self) -> bool {
        self.pauses.last().is_some_and(|p| p.to.is_none())
    }

    /// The paused spans so far.
    pub fn pauses(&self) -> &[Pause] {
        &self.pauses
    }

    /// Agent bytes not recorded because more than [`MAX_AHEAD_SAMPLES`] were ahead.
    pub fn dropped_ahead(&self) -> u64 {
        self.dropped_ahead
    }

    /// When the next block is due (for a timer), given the clock.
    pub fn next_block_at(&self) -> Instant {
        let due = self.committed + BLOCK_SAMPLES + COMMIT_LAG;
        self.origin + Duration::from_micros(due * 1000 / PER_MS)
    }

    /// A block of [`BLOCK_SAMPLES`] when the clock is that far past the committed samples
    /// plus [`COMMIT_LAG`].
    pub fn poll_block(&mut self, now: Instant) -> Option<Block> {
        let frontier = self.position(now).saturating_sub(COMMIT_LAG);
        (frontier >= self.committed + BLOCK_SAMPLES).then(|| self.take(BLOCK_SAMPLES))
    }

    /// The call ended at `now`: agent audio the clock had not played is cut and every
    /// remaining sample is returned (`None` when there are none).
    pub fn finish(&mut self, now: Instant) -> Option<Block> {
        self.clear(now);
        self.resume(now);
        let end = self.left_end().max(self.play_end());
        (end > self.committed).then(|| self.take(end - self.committed))
    }

    fn take(&mut self, n: u64) -> Block {
        let len = n as usize;
        let start = self.committed;
        let chan = |q: &mut VecDeque<u8>| {
            let take = len.min(q.len());
            let mut v = Vec::with_capacity(len);
            let (a, b) = q.as_slices();
            let from_a = take.min(a.len());
            v.extend_from_slice(&a[..from_a]);
            v.extend_from_slice(&b[..take - from_a]);
            q.drain(..take);
            v.resize(len, SILENCE);
            // Give back what a burst of agent audio grew (the queue keeps its working size).
            if q.capacity() > 4 * (q.len() + len) {
                q.shrink_to(q.len() + len);
            }
            v
        };
        let mut left = chan(&mut self.left);
        let mut right = chan(&mut self.right);
        for p in &self.pauses {
            let from = p.from.max(start);
            let to = p.to.unwrap_or(u64::MAX).min(start + n);
            if from < to {
                let r = (from - start) as usize..(to - start) as usize;
                left[r.clone()].fill(SILENCE);
                right[r].fill(SILENCE);
            }
        }
        self.committed += n;
        let committed = self.committed;
        // Segments wholly before the committed samples can no longer be moved.
        while self.segments.len() > 1 && self.segments[1].1 <= committed {
            self.segments.pop_front();
        }
        Block { start, left, right }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Every block until the end, concatenated: (left, right).
    fn all(t: &mut Timeline, t0: Instant, end_ms: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut l, mut r) = (Vec::new(), Vec::new());
        let mut next = 0;
        let mut ms = 0;
        while ms <= end_ms {
            while let Some(b) = t.poll_block(at(t0, ms)) {
                assert_eq!(b.start, next);
                next += b.left.len() as u64;
                l.extend(b.left);
                r.extend(b.right);
            }
            ms += 20;
        }
        if let Some(b) = t.finish(at(t0, end_ms)) {
            assert_eq!(b.start, next);
            l.extend(b.left);
            r.extend(b.right);
        }
        (l, r)
    }

    #[test]
    fn caller_chunks_land_at_their_timestamps_and_gaps_are_silence() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        for i in 0..150u64 {
            if i == 10 || i == 11 {
                continue; // two chunks lost
            }
            t.caller(at(t0, i * 20 + 5), Some(i * 20), &[(i % 100) as u8; 160]);
        }
        let (l, r) = all(&mut t, t0, 3000);
        assert_eq!(l.len(), 150 * 160);
        for i in 0..150usize {
            let want = if i == 10 || i == 11 {
                SILENCE
            } else {
                (i % 100) as u8
            };
            assert!(
                l[i * 160..(i + 1) * 160].iter().all(|&b| b == want),
                "chunk {i}"
            );
        }
        assert!(r.iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn agent_audio_plays_back_to_back_from_when_it_was_sent() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        // 400 ms of audio sent at once at 100 ms, then 80 ms more at 1000 ms (after the
        // first finished playing at 500 ms).
        t.agent(at(t0, 100), &[1; 3200]);
        t.agent(at(t0, 1000), &[2; 640]);
        let (_, r) = all(&mut t, t0, 2000);
        assert!(r[..800].iter().all(|&b| b == SILENCE));
        assert!(r[800..4000].iter().all(|&b| b == 1));
        assert!(r[4000..8000].iter().all(|&b| b == SILENCE));
        assert!(r[8000..8640].iter().all(|&b| b == 2));
        assert!(r[8640..].iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn a_clear_cuts_what_had_not_played_and_it_never_appears() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.agent(at(t0, 0), &[7; 8000]); // 1 s of audio sent at 0
        t.clear(at(t0, 250)); // cleared after 250 ms played
        t.agent(at(t0, 300), &[9; 800]);
        let (_, r) = all(&mut t, t0, 2000);
        assert!(r[..2000].iter().all(|&b| b == 7));
        assert!(r[2000..2400].iter().all(|&b| b == SILENCE));
        assert!(r[2400..3200].iter().all(|&b| b == 9));
        assert_eq!(r.iter().filter(|&&b| b == 7).count(), 2000);
    }

    #[test]
    fn a_late_mark_echo_moves_what_follows_it() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.agent(at(t0, 0), &[1; 800]); // 100 ms
        t.agent(at(t0, 0), &[2; 800]); // the next 100 ms
                                       // The mark after the first 100 ms comes back at 300 ms: playback started 200 ms late.
        t.mark_played(at(t0, 300), 100);
        let (_, r) = all(&mut t, t0, 1500);
        assert!(r[..800].iter().all(|&b| b == 1));
        assert!(r[800..2400].iter().all(|&b| b == SILENCE));
        assert!(r[2400..3200].iter().all(|&b| b == 2));
        // An echo on time changes nothing.
        let mut t = Timeline::new(t0);
        t.agent(at(t0, 0), &[1; 800]);
        t.agent(at(t0, 0), &[2; 800]);
        t.mark_played(at(t0, 120), 100);
        let (_, r) = all(&mut t, t0, 1500);
        assert!(r[..1600]
            .iter()
            .zip([1u8; 800].iter().chain(&[2u8; 800]))
            .all(|(a, b)| a == b));
    }

    #[test]
    fn paused_spans_are_silent_on_both_channels_and_listed() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.agent(at(t0, 0), &[3; 24_000]); // 3 s
        for i in 0..150u64 {
            if i == 50 {
                t.pause(at(t0, 1000));
            }
            if i == 100 {
                t.resume(at(t0, 2000));
            }
            t.caller(at(t0, i * 20), Some(i * 20), &[4; 160]);
        }
        assert_eq!(
            t.pauses(),
            [Pause {
                from: 8000,
                to: Some(16_000)
            }]
        );
        let (l, r) = all(&mut t, t0, 3000);
        assert!(l[..8000].iter().all(|&b| b == 4) && r[..8000].iter().all(|&b| b == 3));
        assert!(l[8000..16_000].iter().all(|&b| b == SILENCE));
        assert!(r[8000..16_000].iter().all(|&b| b == SILENCE));
        assert!(
            l[16_000..24_000].iter().all(|&b| b == 4) && r[16_000..24_000].iter().all(|&b| b == 3)
        );
    }

    #[test]
    fn what_had_not_played_when_the_call_ended_is_cut() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.agent(at(t0, 0), &[5; 16_000]); // 2 s sent, the call ends after 500 ms
        let b = t.finish(at(t0, 500)).expect("samples");
        assert_eq!(b.right, vec![5; 4000]);
        assert_eq!(b.left, vec![SILENCE; 4000]);
    }

    #[test]
    fn bad_timestamps_and_floods_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.caller(at(t0, 0), Some(u64::MAX / 2), &[1; 160]);
        assert!(t.left.len() <= (MAX_CALLER_LEAD + 160) as usize);
        for _ in 0..100 {
            t.agent(at(t0, 0), &[2; 48_000]);
        }
        assert!(t.right.len() as u64 <= MAX_AHEAD_SAMPLES);
        assert_eq!(t.dropped_ahead(), 100 * 48_000 - MAX_AHEAD_SAMPLES);
        assert!(t.segments.len() <= MAX_SEGMENTS);
    }

    #[test]
    fn blocks_are_half_seconds_a_lag_behind_the_clock() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        assert!(t.poll_block(at(t0, 999)).is_none());
        let b = t
            .poll_block(at(t0, 1000))
            .expect("due at 1 s: 500 ms block + 500 ms lag");
        assert_eq!((b.start, b.left.len(), b.right.len()), (0, 4000, 4000));
        assert_eq!(t.next_block_at(), at(t0, 1500));
    }
}
