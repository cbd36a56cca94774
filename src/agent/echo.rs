//! The built-in echo agent: plays the caller's audio back after a fixed delay, so the relay
//! runs end to end with no vendor account. Sans-IO: the call loop feeds caller frames with
//! the current time and takes frames that are due; a timer in the call wakes it.
//!
//! Memory is bounded in frames and in bytes: at most the delay's worth of 20 ms frames plus
//! one second, and at most the delay's worth of μ-law bytes plus one second (a caller sending
//! oversized frames cannot make it hold more); overflow drops the oldest frames.

use super::{
    CallParams, ConnectError, ConnectSpec, Dialect, DialectInfo, LocalEvent, ReplyKey,
    SettingsError, SharedSettings,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Echo flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "echo_flags")]
pub struct Args {
    /// Echo agent: delay before the caller's audio is played back, in ms.
    #[arg(long, env = "RELAY_ECHO_DELAY_MS", default_value_t = 500)]
    pub echo_delay_ms: u64,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// Echo settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long after it was heard a caller frame is played back.
    pub delay: Duration,
}

impl Dialect for Session {
    type Args = Args;
    type Settings = Settings;
    const LOCAL: bool = true;
    const INFO: DialectInfo = DialectInfo {
        title: "Echo (built in)",
        connects_to: "nothing: runs inside the relay, no account",
        barge_in: "none",
        tools: "none",
        dtmf: "ignored",
        setup: "nothing (always available)",
    };

    fn settings(a: &Args) -> Result<Option<Settings>, SettingsError> {
        if a.echo_delay_ms > 60_000 {
            return Err(SettingsError("--echo-delay-ms must be at most 60000".into()));
        }
        Ok(Some(Settings {
            delay: Duration::from_millis(a.echo_delay_ms),
        }))
    }

    fn connect(_: &Settings, _: &CallParams) -> Result<Option<ConnectSpec>, ConnectError> {
        Ok(None)
    }

    fn new(s: &Settings, _: &SharedSettings, _: CallParams) -> Session {
        Session::new(s.delay)
    }

    /// Each played frame is a reply of its own: the caller's speech end is answered by the
    /// first frame played after it.
    fn current_reply(&self) -> ReplyKey {
        ReplyKey(self.played)
    }

    fn coalesces_small_deltas(&self) -> bool {
        false
    }

    #[inline]
    fn on_caller_audio(&mut self, now: Instant, audio: &[u8]) -> u64 {
        self.push(now, audio)
    }

    fn next_due(&self) -> Option<Instant> {
        Session::next_due(self)
    }

    fn poll_local(&mut self, now: Instant, audio: &mut Vec<u8>) -> Option<LocalEvent> {
        self.pop_due(now, audio).then(|| {
            self.played += 1;
            LocalEvent::Audio(ReplyKey(self.played))
        })
    }
}

/// Delay queue of caller frames.
#[derive(Debug)]
pub struct Session {
    delay: Duration,
    /// Frames played back so far (the reply key).
    played: u64,
    capacity_frames: usize,
    capacity_bytes: usize,
    /// Audio bytes of all queued frames, back to back.
    audio: VecDeque<u8>,
    /// (due time, length in bytes) per queued frame, oldest first.
    frames: VecDeque<(Instant, usize)>,
}

impl Session {
    /// An echo agent returning audio after `delay`, holding at most the delay's worth of
    /// 20 ms frames (and of μ-law bytes) plus one second of slack.
    pub fn new(delay: Duration) -> Self {
        let capacity_frames = (delay.as_millis() / 20) as usize + 50;
        let capacity_bytes = crate::audio::ms_to_bytes(delay.as_millis() as u64 + 1000) as usize;
        Self {
            delay,
            played: 0,
            capacity_frames,
            capacity_bytes,
            audio: VecDeque::new(),
            frames: VecDeque::new(),
        }
    }

    /// Queues one caller frame received at `now`. Returns how many old frames were dropped
    /// to make room. A frame larger than the byte capacity is cut to it.
    pub fn push(&mut self, now: Instant, audio: &[u8]) -> u64 {
        let audio = &audio[..audio.len().min(self.capacity_bytes)];
        let mut dropped = 0;
        while self.frames.len() >= self.capacity_frames
            || self.audio.len() + audio.len() > self.capacity_bytes
        {
            let Some((_, len)) = self.frames.pop_front() else {
                break;
            };
            self.audio.drain(..len);
            dropped += 1;
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
        let mut e = Session::new(Duration::from_millis(100));
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
    fn holds_at_most_the_delay_plus_one_second_of_bytes() {
        let t0 = Instant::now();
        let mut e = Session::new(Duration::from_millis(500));
        // 12 KiB = 1.5 s of audio per frame, more than the 12,000-byte cap.
        let big = vec![7u8; 12 * 1024];
        let mut dropped = 0;
        for _ in 0..10 {
            dropped += e.push(t0, &big);
            assert!(e.audio.len() <= 12_000, "{}", e.audio.len());
        }
        assert_eq!(dropped, 9);
        let mut out = Vec::new();
        assert!(e.pop_due(t0 + Duration::from_secs(1), &mut out));
        assert_eq!(out.len(), 12_000);
    }

    #[test]
    fn overflow_drops_oldest() {
        let t0 = Instant::now();
        let mut e = Session::new(Duration::from_millis(0));
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
