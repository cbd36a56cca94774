//! The built-in echo agent: plays the caller's audio back after a fixed delay, so the relay
//! runs end to end with no vendor account. Sans-IO: the call loop feeds caller frames with
//! the current time and takes frames that are due; a timer in the call wakes it.
//!
//! Memory is bounded: at most `capacity_frames` frames are held; overflow drops the oldest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delay queue of caller frames.
#[derive(Debug)]
pub struct EchoAgent {
    delay: Duration,
    capacity_frames: usize,
    /// Audio bytes of all queued frames, back to back.
    audio: VecDeque<u8>,
    /// (due time, length in bytes) per queued frame, oldest first.
    frames: VecDeque<(Instant, usize)>,
}

impl EchoAgent {
    /// An echo agent returning audio after `delay`, holding at most the delay's worth of
    /// 20 ms frames plus one second of slack.
    pub fn new(delay: Duration) -> Self {
        let capacity_frames = (delay.as_millis() / 20) as usize + 50;
        Self {
            delay,
            capacity_frames,
            audio: VecDeque::new(),
            frames: VecDeque::new(),
        }
    }

    /// Queues one caller frame received at `now`. Returns how many old frames were dropped
    /// to make room (0 or 1).
    pub fn push(&mut self, now: Instant, audio: &[u8]) -> u64 {
        let mut dropped = 0;
        if self.frames.len() >= self.capacity_frames {
            if let Some((_, len)) = self.frames.pop_front() {
                self.audio.drain(..len);
                dropped = 1;
            }
        }
        self.audio.extend(audio);
        self.frames.push_back((now + self.delay, audio.len()));
        dropped
    }

    /// When the oldest queued frame is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.frames.front().map(|&(due, _)| due)
    }

    /// Moves the oldest frame into `out` (replacing its contents) if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        match self.frames.front() {
            Some(&(due, len)) if due <= now => {
                self.frames.pop_front();
                out.clear();
                out.extend(self.audio.drain(..len));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_frames_in_order_after_the_delay() {
        let t0 = Instant::now();
        let mut e = EchoAgent::new(Duration::from_millis(100));
        e.push(t0, &[1, 2]);
        e.push(t0 + Duration::from_millis(20), &[3]);
        let mut out = Vec::new();
        assert!(!e.pop_due(t0 + Duration::from_millis(99), &mut out));
        assert_eq!(e.next_due(), Some(t0 + Duration::from_millis(100)));
        assert!(e.pop_due(t0 + Duration::from_millis(100), &mut out));
        assert_eq!(out, [1, 2]);
        assert!(!e.pop_due(t0 + Duration::from_millis(100), &mut out));
        assert!(e.pop_due(t0 + Duration::from_millis(200), &mut out));
        assert_eq!(out, [3]);
        assert_eq!(e.next_due(), None);
    }

    #[test]
    fn overflow_drops_oldest() {
        let t0 = Instant::now();
        let mut e = EchoAgent::new(Duration::from_millis(0));
        let mut dropped = 0;
        for i in 0..60u8 {
            dropped += e.push(t0, &[i]);
        }
        assert_eq!(dropped, 10);
        let mut out = Vec::new();
        assert!(e.pop_due(t0, &mut out));
        assert_eq!(out, [10]);
    }
}
