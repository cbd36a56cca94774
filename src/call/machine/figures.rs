//! A call's own figures: turn latency (the caller stops speaking → the first audio of the
//! agent's reply goes to the carrier, measured both from the relay's own speech detector and
//! from the agent's end-of-speech signal), barge-in latency, playout lag, ping round trips,
//! and compact samples of each for the summary line and `GET /calls/{sid}`.

use crate::agent::ReplyKey;
use crate::audio::vad::{SpeechDetector, SpeechEvent};
use crate::obs::call_metrics::CallMetrics;
use crate::obs::labels::Sample;
use std::time::{Duration, Instant};

/// Most turns whose latencies are kept per call for the summary (older ones still count in
/// Prometheus).
pub const MAX_TURN_SAMPLES: usize = 256;

/// Compact latency samples of rare events (turns, barge-ins), for the call summary.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u32>);

impl Samples {
    /// Adds one (at most [`MAX_TURN_SAMPLES`] are kept).
    pub fn push(&mut self, d: Duration) {
        if self.0.len() < MAX_TURN_SAMPLES {
            self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    /// Quantile `q` in seconds (nearest rank), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1] as f64 / 1e6)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The per-call figures the machine keeps for the summary and `GET /calls`.
#[derive(Debug, Default, Clone)]
pub struct CallFigures {
    /// Relay-measured turn latencies.
    pub turn: Samples,
    /// Turn latencies from the agent's own end-of-speech signal.
    pub agent_turn: Samples,
    /// Barge-in latencies (signal → `clear` written).
    pub barge_in: Samples,
    /// Playout lags (mark sent → echoed as played).
    pub playout_lag: Samples,
    /// Agent-reported ping round trips.
    pub ping_rtt: Samples,
    /// Bad messages skipped.
    pub bad_inputs: u32,
}

/// The turn clocks: when the caller last stopped speaking and no reply audio went out since,
/// with the newest reply key at that moment (a reply counts only if it is newer).
#[derive(Debug, Default)]
pub struct Turns {
    speech: SpeechDetector,
    turn_from: Option<(Instant, ReplyKey)>,
    agent_turn_from: Option<(Instant, ReplyKey)>,
}

impl Turns {
    /// One caller frame heard at `now` (raw μ-law); `newest` is the newest reply key.
    #[inline]
    pub fn caller_frame(&mut self, frame: &[u8], now: Instant, newest: ReplyKey) {
        match self.speech.push(frame, now) {
            Some(SpeechEvent::Ended(at)) => self.turn_from = Some((at, newest)),
            Some(SpeechEvent::Started(_)) => {
                self.turn_from = None;
                self.agent_turn_from = None;
            }
            None => {}
        }
    }

    /// When the caller stopped speaking, while no reply audio went out since.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.turn_from.map(|(at, _)| at)
    }

    /// Whether the caller is speaking now.
    pub fn caller_speaking(&self) -> bool {
        self.speech.speaking()
    }

    /// The agent says the caller stopped speaking (its speech-stopped event, or its final
    /// caller transcript for dialects without one).
    pub fn agent_heard_end(&mut self, now: Instant, newest: ReplyKey) {
        self.agent_turn_from.get_or_insert((now, newest));
    }

    /// The first audio of reply `reply` went to the carrier at `now`: a turn ends here if the
    /// caller finished speaking before the reply began.
    pub fn first_reply_audio(
        &mut self,
        reply: ReplyKey,
        now: Instant,
        cm: &mut CallMetrics,
        f: &mut CallFigures,
    ) {
        if let Some((at, before)) = self.turn_from {
            if reply > before {
                let d = now.saturating_duration_since(at);
                cm.sample(Sample::Turn, d.as_secs_f64());
                f.turn.push(d);
                self.turn_from = None;
            }
        }
        if let Some((at, before)) = self.agent_turn_from {
            if reply > before {
                let d = now.saturating_duration_since(at);
                cm.sample(Sample::AgentTurn, d.as_secs_f64());
                f.agent_turn.push(d);
                self.agent_turn_from = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.quantile(0.5), None);
        for ms in [30, 10, 20, 40] {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.quantile(0.5), Some(0.02));
        assert_eq!(s.quantile(1.0), Some(0.04));
        assert_eq!(s.quantile(0.0), Some(0.01));
        for _ in 0..1000 {
            s.push(Duration::from_millis(1));
        }
        assert_eq!(s.len(), MAX_TURN_SAMPLES);
    }

    #[test]
    fn a_turn_ends_only_with_a_newer_reply() {
        let mut t = Turns::default();
        let mut cm = CallMetrics::default();
        let mut f = CallFigures::default();
        let t0 = Instant::now();
        t.agent_heard_end(t0, ReplyKey(3));
        t.first_reply_audio(
            ReplyKey(3),
            t0 + Duration::from_millis(100),
            &mut cm,
            &mut f,
        );
        assert!(f.agent_turn.is_empty());
        t.first_reply_audio(
            ReplyKey(4),
            t0 + Duration::from_millis(700),
            &mut cm,
            &mut f,
        );
        assert_eq!(f.agent_turn.quantile(1.0), Some(0.7));
    }
}
