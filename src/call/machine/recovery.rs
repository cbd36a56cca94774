//! Agent-failure continuity: when the agent leg fails, the caller stays on the line with hold
//! audio while the relay reconnects (backoff from [`BACKOFF_START`], ×2, capped at
//! [`BACKOFF_CAP`], with jitter, inside a per-failure deadline and at most a number of
//! recoveries per call). This part owns the schedule, the hold-audio pacer and the record of
//! each recovery; the machine owns what a failure does to the other parts.
//!
//! Sans-IO: the machine reports failures, attempts and readiness, and polls
//! [`Recovery::poll`] for the next attempt.

use crate::obs::labels::{RecoveryCause, RecoveryResult};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first retry's delay after a failed attempt.
pub const BACKOFF_START: Duration = Duration::from_millis(100);

/// The longest delay between attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Hold audio is kept this far ahead of real time in the carrier's buffer.
pub const HOLD_LEAD: Duration = Duration::from_millis(400);

/// How often the hold pacer tops the carrier's buffer up.
pub const HOLD_TICK: Duration = Duration::from_millis(100);

/// Most recoveries listed in a call's summary.
pub const MAX_RECORDS: usize = 16;

/// The continuity policy (from configuration).
#[derive(Debug, Clone)]
pub struct Continuity {
    /// Recoveries allowed per call (0 turns continuity off: a failed agent ends the call).
    pub max_recoveries: u32,
    /// How long one failure may take to recover.
    pub deadline: Duration,
    /// Caller audio of the gap sent to the new session, bytes (its last part).
    pub resume_caller_audio_bytes: usize,
    /// A connected agent that says nothing this long after the caller stopped speaking has
    /// failed (`None`: off).
    pub response_timeout: Option<Duration>,
    /// Agents tried in order once recovery of the call's agent is exhausted.
    pub fallback: Vec<crate::agent::AgentKind>,
    /// Looped while the agent is away (μ-law 8 kHz).
    pub hold_audio: Arc<[u8]>,
    /// Played when recovery failed, before the transfer or hang-up (μ-law 8 kHz).
    pub failure_audio: Arc<[u8]>,
}

/// One recovery as the call's summary lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRecord {
    /// What failed.
    pub cause: RecoveryCause,
    /// How it ended (`None` while in progress).
    pub result: Option<RecoveryResult>,
    /// Attempts made.
    pub attempts: u32,
    /// When it began, ms since the call's start.
    pub at_ms: u64,
    /// Last agent audio before the failure → first agent audio after it, once known.
    pub gap_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The agent is healthy (or the call never needed a recovery).
    Idle,
    /// The next attempt is due at `at`.
    Waiting { at: Instant },
    /// An attempt is connecting (its deadline is the machine's connect timer).
    Connecting,
    /// Recovery gave up.
    Exhausted,
}

/// The recovery state of one call.
#[derive(Debug)]
pub struct Recovery {
    state: State,
    /// The current failure's deadline and attempts.
    deadline: Option<Instant>,
    attempts: u32,
    /// Recoveries started on this call.
    started: u32,
    /// Agent audio: the newest before the failure (for the gap figure).
    last_agent_audio: Option<Instant>,
    gap_from: Option<Instant>,
    records: Vec<RecoveryRecord>,
    rng: u64,
    /// Hold audio: the clip, the position in it, when it started, bytes sent.
    hold: Option<Hold>,
    /// A fresh session to open outside a recovery (a rollover whose resume was refused), due
    /// at this time.
    fresh_due: Option<Instant>,
}

#[derive(Debug)]
struct Hold {
    clip: Arc<[u8]>,
    pos: usize,
    started: Instant,
    sent: u64,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            state: State::Idle,
            deadline: None,
            attempts: 0,
            started: 0,
            last_agent_audio: None,
            gap_from: None,
            records: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            hold: None,
            fresh_due: None,
        }
    }
}

/// What a failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Recover: the first attempt is scheduled.
    Recovering,
    /// Recovery is not allowed (off, or this call used up its recoveries).
    Exhausted,
}

impl Recovery {
    /// Seeds the jitter with something per call (the stream id's hash).
    pub fn seed(&mut self, s: u64) {
        self.rng ^= s | 1;
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64*: ±20 % so calls that failed together do not retry together.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let f = 0.8 + 0.4 * (r as f64 / (1u64 << 53) as f64);
        d.mul_f64(f)
    }

    /// Agent audio arrived at `now` (the gap's end, after a recovery).
    #[inline]
    pub fn agent_audio(&mut self, now: Instant) -> Option<Duration> {
        self.last_agent_audio = Some(now);
        let from = self.gap_from.take()?;
        let gap = now.saturating_duration_since(from);
        if let Some(r) = self.records.last_mut() {
            r.gap_ms = Some(gap.as_millis() as u64);
        }
        Some(gap)
    }

    /// Whether a recovery is in progress (the agent is away).
    pub fn recovering(&self) -> bool {
        matches!(self.state, State::Waiting { .. } | State::Connecting)
    }

    /// Whether recovery gave up on this call.
    pub fn exhausted(&self) -> bool {
        self.state == State::Exhausted
    }

    /// The agent failed at `now` (`at_ms` since the call's start) with `cause`.
    pub fn fail(
        &mut self,
        cause: RecoveryCause,
        now: Instant,
        at_ms: u64,
        policy: &Continuity,
    ) -> Failed {
        if self.recovering() {
            // A failure while recovering: that attempt failed.
            return self.attempt_failed(now);
        }
        if self.started >= policy.max_recoveries {
            self.state = State::Exhausted;
            return Failed::Exhausted;
        }
        self.started += 1;
        self.attempts = 0;
        self.deadline = Some(now + policy.deadline);
        self.gap_from = self.last_agent_audio.or(Some(now));
        self.state = State::Waiting { at: now };
        if self.records.len() < MAX_RECORDS {
            self.records.push(RecoveryRecord {
                cause,
                result: None,
                attempts: 0,
                at_ms,
                gap_ms: None,
            });
        }
        Failed::Recovering
    }

    /// A reconnect attempt failed at `now`: the next one after the backoff, unless that is
    /// past the deadline.
    pub fn attempt_failed(&mut self, now: Instant) -> Failed {
        let exp = self.attempts.saturating_sub(1).min(16);
        let delay = self.jitter((BACKOFF_START * 2u32.pow(exp)).min(BACKOFF_CAP));
        let at = now + delay;
        if self.deadline.is_some_and(|d| at >= d) {
            self.state = State::Exhausted;
            self.finish(RecoveryResult::Exhausted);
            return Failed::Exhausted;
        }
        self.state = State::Waiting { at };
        Failed::Recovering
    }

    /// Retry at once (the vendor refused to resume; a fresh session is next).
    pub fn retry_now(&mut self, now: Instant) {
        if self.recovering() {
            self.state = State::Waiting { at: now };
        }
    }

    /// The next attempt is due at `now`: `true` once (the state moves to connecting).
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.state {
            State::Waiting { at } if now >= at => {
                self.attempts += 1;
                if let Some(r) = self.records.last_mut() {
                    r.attempts = self.attempts;
                }
                self.state = State::Connecting;
                true
            }
            _ => false,
        }
    }

    /// Whether the current failure's deadline passed at `now`.
    pub fn past_deadline(&self, now: Instant) -> bool {
        self.recovering() && self.deadline.is_some_and(|d| now >= d)
    }

    /// Gives up on the current failure (its deadline passed).
    pub fn give_up(&mut self) {
        self.state = State::Exhausted;
        self.finish(RecoveryResult::Exhausted);
    }

    /// The new session is ready: recovered.
    pub fn recovered(&mut self) -> bool {
        if !self.recovering() {
            return false;
        }
        self.state = State::Idle;
        self.deadline = None;
        self.finish(RecoveryResult::Recovered);
        true
    }

    /// A fallback agent takes over: the failure gets a fresh deadline and attempts.
    pub fn fall_back(&mut self, now: Instant, policy: &Continuity) {
        self.state = State::Waiting { at: now };
        self.deadline = Some(now + policy.deadline);
        self.attempts = 0;
    }

    /// A proactive rollover at `now` (`at_ms` since the start): recorded, not counted
    /// against the call's recoveries.
    pub fn rollover(&mut self, at_ms: u64) {
        if self.records.len() < MAX_RECORDS {
            self.records.push(RecoveryRecord {
                cause: RecoveryCause::Rollover,
                result: Some(RecoveryResult::Rollover),
                attempts: 1,
                at_ms,
                gap_ms: None,
            });
        }
    }

    fn finish(&mut self, result: RecoveryResult) {
        if let Some(r) = self.records.last_mut().filter(|r| r.result.is_none()) {
            r.result = Some(result);
        }
    }

    /// A fresh session is to be opened at `now`, outside a recovery (a rollover's resume was
    /// refused): [`Recovery::take_fresh_due`] says when, on the machine's next timer turn.
    pub fn fresh_session(&mut self, now: Instant) {
        self.fresh_due = Some(now);
    }

    /// Whether the fresh session of [`Recovery::fresh_session`] is due at `now` (`true` once).
    pub fn take_fresh_due(&mut self, now: Instant) -> bool {
        let due = self.fresh_due.is_some_and(|at| now >= at);
        if due {
            self.fresh_due = None;
        }
        due
    }

    /// The next moment [`Recovery::poll`], the deadline or a fresh session may need the
    /// machine.
    pub fn next_deadline(&self) -> Option<Instant> {
        let schedule = match self.state {
            State::Waiting { at } => Some(self.deadline.map_or(at, |d| at.min(d))),
            State::Connecting => self.deadline,
            _ => None,
        };
        schedule.into_iter().chain(self.fresh_due).min()
    }

    /// Every recovery of the call so far.
    pub fn records(&self) -> &[RecoveryRecord] {
        &self.records
    }

    // === hold audio ===

    /// Starts looping `clip` at `now`.
    pub fn start_hold(&mut self, clip: Arc<[u8]>, now: Instant) {
        if clip.is_empty() {
            return;
        }
        self.hold = Some(Hold {
            clip,
            pos: 0,
            started: now,
            sent: 0,
        });
    }

    /// Stops the hold audio; `true` if it was playing.
    pub fn stop_hold(&mut self) -> bool {
        self.hold.take().is_some()
    }

    /// Whether hold audio is playing.
    pub fn holding(&self) -> bool {
        self.hold.is_some()
    }

    /// Hold audio due by `now` (kept [`HOLD_LEAD`] ahead of real time) into `out`; the next
    /// top-up time, while holding.
    pub fn hold_audio(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Instant> {
        out.clear();
        let h = self.hold.as_mut()?;
        let due = crate::audio::ms_to_bytes(
            (now.saturating_duration_since(h.started) + HOLD_LEAD).as_millis() as u64,
        );
        while h.sent < due {
            let n = ((due - h.sent) as usize).min(h.clip.len() - h.pos);
            out.extend_from_slice(&h.clip[h.pos..h.pos + n]);
            h.pos = (h.pos + n) % h.clip.len();
            h.sent += n as u64;
        }
        Some(now + HOLD_TICK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Continuity {
        Continuity {
            max_recoveries: 2,
            deadline: Duration::from_secs(20),
            resume_caller_audio_bytes: 8000,
            response_timeout: Some(Duration::from_secs(15)),
            fallback: Vec::new(),
            hold_audio: Arc::from(vec![1u8; 1600]),
            failure_audio: Arc::from(vec![2u8; 800]),
        }
    }

    #[test]
    fn backoff_doubles_from_100_ms_to_a_2_s_cap_with_jitter_inside_the_deadline() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        assert_eq!(
            r.fail(RecoveryCause::Closed, t0, 0, &policy()),
            Failed::Recovering
        );
        assert!(r.poll(t0), "the first attempt is at once");
        assert!(!r.poll(t0));
        let mut now = t0;
        let mut delays = Vec::new();
        while r.attempt_failed(now) == Failed::Recovering {
            let at = r.next_deadline().unwrap();
            delays.push(at.saturating_duration_since(now));
            now = at;
            assert!(r.poll(now));
        }
        assert!(r.exhausted());
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert!((80..=120).contains(&ms[0]), "{ms:?}");
        assert!((160..=240).contains(&ms[1]), "{ms:?}");
        assert!(ms.iter().all(|&d| d <= 2400), "{ms:?}");
        assert!(
            ms.iter().rev().take(3).all(|&d| d >= 1600),
            "capped near 2 s: {ms:?}"
        );
        assert!(now <= t0 + Duration::from_secs(20));
        assert_eq!(r.records()[0].result, Some(RecoveryResult::Exhausted));
    }

    #[test]
    fn recoveries_per_call_are_capped_and_the_gap_is_measured() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        let p = policy();
        r.agent_audio(t0);
        for i in 0..2 {
            let at = t0 + Duration::from_secs(10 * (i + 1));
            assert_eq!(r.fail(RecoveryCause::Reset, at, 0, &p), Failed::Recovering);
            assert!(r.poll(at));
            assert!(r.recovered());
            let gap = r.agent_audio(at + Duration::from_millis(900)).unwrap();
            assert!(gap >= Duration::from_millis(900));
        }
        // From the last agent audio before the failure (10.9 s) to the first after (20.9 s).
        assert_eq!(r.records()[0].gap_ms, Some(10_900));
        assert_eq!(r.records()[1].gap_ms, Some(10_000));
        assert_eq!(
            r.fail(RecoveryCause::Reset, t0 + Duration::from_secs(60), 0, &p),
            Failed::Exhausted
        );
    }

    #[test]
    fn hold_audio_loops_and_stays_ahead_of_real_time() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        r.start_hold(Arc::from((0..=255u8).collect::<Vec<u8>>()), t0);
        let mut out = Vec::new();
        let next = r.hold_audio(t0, &mut out).unwrap();
        assert_eq!(out.len(), 3200, "400 ms ahead");
        assert_eq!(next, t0 + HOLD_TICK);
        r.hold_audio(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(out.len(), 800);
        assert_eq!(out[0], (3200 % 256) as u8, "continues the loop");
        assert!(r.stop_hold());
        assert_eq!(r.hold_audio(t0, &mut out), None);
    }
}
