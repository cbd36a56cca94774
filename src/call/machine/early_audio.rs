//! Caller audio on its way to the agent: queued in one byte-capped outbox, held while the
//! agent connects (capped at `--early-audio-ms`, the oldest dropped as `early_buffer_full`)
//! and sent in order once it is ready; after that capped at `--agent-outbox-bytes`
//! (`outbox_full`) so a slow agent socket cannot grow memory.

use super::outbox::AudioQueue;
use crate::agent::ReplyKey;
use crate::obs::labels::DropReason;
use crate::wire::b64::{self, PayloadError};
use std::time::Instant;

/// The agent-bound audio of one call.
#[derive(Debug, Default)]
pub struct EarlyAudio {
    queue: AudioQueue,
    /// When the agent became ready: audio read before it waited in the early buffer, which
    /// is not relay-added latency.
    pub ready_at: Option<Instant>,
}

impl EarlyAudio {
    /// One caller frame (base64) read at `now`, decoded straight into the outbox. Returns the
    /// decoded frame's length and what was dropped to stay under the current cap.
    ///
    /// # Errors
    /// [`PayloadError`] for invalid base64 (nothing queued).
    #[inline]
    pub fn push_b64(&mut self, payload: &str) -> Result<usize, PayloadError> {
        b64::decode_append(payload, self.queue.bytes.tail())
    }

    /// The frame just decoded (the last `n` bytes), for the speech detector.
    #[inline]
    pub fn last(&self, n: usize) -> &[u8] {
        let all = self.queue.bytes.front(usize::MAX);
        &all[all.len() - n..]
    }

    /// Forgets the last `n` bytes decoded (an empty frame is not queued).
    pub fn commit(
        &mut self,
        n: usize,
        now: Instant,
        early_cap: usize,
        ready_cap: usize,
    ) -> (DropReason, u64) {
        self.queue.commit(n, now, ReplyKey(0), false);
        let (cap, reason) = if self.ready_at.is_some() {
            (ready_cap, DropReason::OutboxFull)
        } else {
            (early_cap, DropReason::EarlyBufferFull)
        };
        (reason, self.queue.enforce_cap(cap.max(1)))
    }

    /// Drops everything queued (the agent session it was for is gone).
    pub fn clear(&mut self) {
        self.queue.enforce_cap(0);
    }

    /// Keeps only the newest `cap` bytes; returns the frames dropped.
    pub fn keep_last(&mut self, cap: usize) -> u64 {
        self.queue.enforce_cap(cap.max(1))
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest frame into `out` (replacing it); returns its read time and whether it was
    /// read after the agent was ready (its latency counts as relay-added).
    pub fn take(&mut self, out: &mut Vec<u8>) -> Option<(Instant, bool)> {
        let (read_at, _, _) = self.queue.take_front(usize::MAX, out)?;
        Some((read_at, self.ready_at.is_some_and(|r| read_at >= r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_early_cap_applies_until_ready_then_the_outbox_cap() {
        let t0 = Instant::now();
        let mut e = EarlyAudio::default();
        let b64 = base64_simd::STANDARD.encode_to_string([7u8; 160]);
        for _ in 0..5 {
            let n = e.push_b64(&b64).unwrap();
            assert_eq!(e.last(n), [7u8; 160]);
            let (reason, _) = e.commit(n, t0, 480, 10_000);
            assert_eq!(reason, DropReason::EarlyBufferFull);
        }
        assert_eq!(e.len(), 480);
        e.ready_at = Some(t0 + Duration::from_millis(1));
        let n = e.push_b64(&b64).unwrap();
        assert_eq!(
            e.commit(n, t0 + Duration::from_millis(2), 480, 10_000),
            (DropReason::OutboxFull, 0)
        );
        let mut out = Vec::new();
        assert_eq!(e.take(&mut out), Some((t0, false)));
        assert!(e.push_b64("!!").is_err());
    }
}
