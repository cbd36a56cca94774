//! Per-call metric accumulators, folded into the shared [`Metrics`] every
//! [`CallMetrics::FOLD_EVERY_FRAMES`] frames, when an event was counted, and at call end.
//! Lives inside the call: no atomics and no lookups on the per-frame path.

use super::labels::{
    ActionKind, ActionResult, ActionSource, CallEventKind, Direction, DropReason, ErrorKind, Leg,
    RecoveryResult, Sample, ToolResult, TransferResult,
};
use super::latency::LatencyHistogram;
use super::metrics::Metrics;

/// One call's counts since its last fold, and its totals for the summary.
#[derive(Default)]
pub struct CallMetrics {
    /// The call's agent (index into the agent labels).
    pub agent: usize,
    /// The call's carrier (index into the carrier labels).
    pub carrier: usize,
    frames: [u64; 2],
    bytes: [u64; 2],
    folded_frames: [u64; 2],
    folded_bytes: [u64; 2],
    /// Relay-added latency per direction (`Direction` order).
    pub latency: [LatencyHistogram; 2],
    /// Inbound jitter.
    pub jitter: LatencyHistogram,
    /// Dropped frames by direction and reason, not yet folded.
    drops: [[u64; DropReason::COUNT]; 2],
    /// Totals of dropped frames per direction (for the summary).
    pub dropped_total: [u64; 2],
    events: [u64; CallEventKind::COUNT],
    /// Event totals (for the summary).
    events_total: [u64; CallEventKind::COUNT],
    tools: [u64; ToolResult::COUNT],
    /// At most one row per (leg, kind) pair: bounded by construction.
    errors: Vec<(Leg, ErrorKind, u64)>,
    missing_frames: u64,
    missing_total: u64,
    /// Samples for shared histograms that are rare enough to record one by one (turns,
    /// barge-ins, pings, mark lags): (which, seconds).
    samples: Vec<(Sample, f64)>,
    playout_bytes: [u64; 2],
    /// Call actions by (action, source, result): at most one row per combination.
    actions: Vec<((ActionKind, ActionSource, ActionResult), u64)>,
    transfers_update_failed: u64,
    /// Recoveries by `RecoveryResult`.
    recoveries: [u64; RecoveryResult::COUNT],
    events_dirty: bool,
}

/// Most rare-event samples kept between folds; the oldest are folded at once beyond it.
const MAX_SAMPLES: usize = 256;

impl CallMetrics {
    /// Fold roughly every 5 s of audio per direction (250 frames of 20 ms).
    pub const FOLD_EVERY_FRAMES: u32 = 250;

    /// Events are folded at most this often (a call with marks flowing has an event every
    /// 100 ms; Prometheus scrapes every few seconds).
    pub const EVENT_FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// Accumulators for a call of `agent` through `carrier`.
    pub fn new(agent: usize, carrier: usize) -> CallMetrics {
        CallMetrics {
            agent,
            carrier,
            ..CallMetrics::default()
        }
    }

    /// Records one relayed frame of `audio_bytes` μ-law bytes.
    #[inline]
    pub fn frame(&mut self, d: Direction, audio_bytes: usize) {
        self.frames[d.index()] += 1;
        self.bytes[d.index()] += audio_bytes as u64;
    }

    /// Records `n` dropped frames.
    #[inline]
    pub fn drop_frames(&mut self, d: Direction, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped_total[d.index()] += n;
        self.drops[d.index()][reason.index()] += n;
        self.events_dirty = true;
    }

    /// Counts one event.
    #[inline]
    pub fn event(&mut self, e: CallEventKind) {
        self.events[e.index()] += 1;
        self.events_total[e.index()] += 1;
        self.events_dirty = true;
    }

    /// Counts a tool call's result.
    pub fn tool(&mut self, r: ToolResult) {
        self.tools[r.index()] += 1;
        self.events_dirty = true;
    }

    /// Counts an error.
    pub fn error(&mut self, leg: Leg, kind: ErrorKind) {
        self.errors_n(leg, kind, 1);
    }

    /// Counts `n` errors.
    pub fn errors_n(&mut self, leg: Leg, kind: ErrorKind, n: u64) {
        if n == 0 {
            return;
        }
        match self
            .errors
            .iter_mut()
            .find(|(l, k, _)| *l == leg && *k == kind)
        {
            Some((_, _, c)) => *c += n,
            // Bounded by construction: one row per (leg, kind) pair.
            None => self.errors.push((leg, kind, n)),
        }
        self.events_dirty = true;
    }

    /// Counts frames missing from the carrier's media sequence.
    pub fn missing_frames(&mut self, n: u64) {
        self.missing_frames = self.missing_frames.saturating_add(n);
        self.missing_total = self.missing_total.saturating_add(n);
        self.events_dirty = true;
    }

    /// Frames missing from the carrier's media sequence so far.
    pub fn missing_total(&self) -> u64 {
        self.missing_total
    }

    /// Records one rare-event latency (seconds).
    pub fn sample(&mut self, which: Sample, seconds: f64) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push((which, seconds));
        }
        self.events_dirty = true;
    }

    /// Counts a call action's result.
    pub fn action(&mut self, a: ActionKind, source: ActionSource, r: ActionResult) {
        let key = (a, source, r);
        match self.actions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => self.actions.push((key, 1)),
        }
        if a == ActionKind::Transfer && r == ActionResult::UpdateFailed {
            self.transfers_update_failed += 1;
        }
        self.events_dirty = true;
    }

    /// Counts an agent recovery's end.
    pub fn recovery(&mut self, r: RecoveryResult) {
        self.recoveries[r.index()] += 1;
        self.events_dirty = true;
    }

    /// Agent audio confirmed played (`played`) or flushed, in bytes.
    pub fn playout(&mut self, played: bool, bytes: u64) {
        self.playout_bytes[usize::from(!played)] += bytes;
        self.events_dirty = true;
    }

    /// Frames relayed so far in direction `d`.
    pub fn frames_total(&self, d: Direction) -> u64 {
        self.frames[d.index()]
    }

    /// Events counted so far of kind `e`.
    pub fn events_total(&self, e: CallEventKind) -> u64 {
        self.events_total[e.index()]
    }

    /// True when a fold is due: enough frames accumulated, or an event has waited since the
    /// last fold, `since_fold` ago, for at least [`CallMetrics::EVENT_FOLD_INTERVAL`].
    #[inline]
    pub fn fold_due(&self, since_fold: std::time::Duration) -> bool {
        self.latency[0].unfolded() >= Self::FOLD_EVERY_FRAMES
            || self.latency[1].unfolded() >= Self::FOLD_EVERY_FRAMES
            || (self.events_dirty && since_fold >= Self::EVENT_FOLD_INTERVAL)
    }

    /// Adds everything accumulated since the last fold to the shared metrics.
    pub fn fold(&mut self, m: &Metrics) {
        let c = self.carrier;
        for d in [Direction::ToAgent, Direction::ToCaller] {
            let i = d.index();
            m.fold_frames(
                c,
                d,
                self.frames[i] - self.folded_frames[i],
                self.bytes[i] - self.folded_bytes[i],
            );
            self.folded_frames[i] = self.frames[i];
            self.folded_bytes[i] = self.bytes[i];
            if let Some(h) = m.latency(c, d) {
                self.latency[i].fold_into(h);
            }
        }
        self.jitter.fold_into(&m.jitter);
        if !self.events_dirty {
            return;
        }
        self.events_dirty = false;
        for (d, row) in [Direction::ToAgent, Direction::ToCaller]
            .into_iter()
            .zip(self.drops.iter_mut())
        {
            for (r, n) in DropReason::ALL.iter().zip(row.iter_mut()) {
                if *n > 0 {
                    m.fold_drops(c, d, *r, std::mem::take(n));
                }
            }
        }
        let a = self.agent;
        for (e, n) in CallEventKind::ALL.iter().zip(self.events.iter_mut()) {
            if *n > 0 {
                m.fold_event(a, c, *e, std::mem::take(n));
            }
        }
        for (t, n) in ToolResult::ALL.iter().zip(self.tools.iter_mut()) {
            if *n > 0 {
                m.fold_tool(a, *t, std::mem::take(n));
            }
        }
        for (leg, kind, n) in self.errors.drain(..) {
            m.errors(leg, c, kind, n);
        }
        if self.missing_frames > 0 {
            m.frames_missing
                .increment(std::mem::take(&mut self.missing_frames));
        }
        let [played, flushed] = std::mem::take(&mut self.playout_bytes);
        m.playout_played_bytes.increment(played);
        m.playout_flushed_bytes.increment(flushed);
        for (which, v) in self.samples.drain(..) {
            m.fold_sample(a, which, v);
        }
        for ((kind, source, result), n) in self.actions.drain(..) {
            for _ in 0..n {
                m.call_action(kind, source, result);
            }
        }
        for _ in 0..std::mem::take(&mut self.transfers_update_failed) {
            m.transfer(TransferResult::UpdateFailed);
        }
        for r in RecoveryResult::ALL {
            for _ in 0..std::mem::take(&mut self.recoveries[r.index()]) {
                m.agent_recovery(a, *r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::metrics::test_labels;

    #[test]
    fn a_fold_moves_counts_into_the_calls_carrier_and_agent_series() {
        let m = Metrics::new(test_labels());
        let mut cm = CallMetrics::new(2, 1);
        cm.frame(Direction::ToAgent, 160);
        cm.frame(Direction::ToCaller, 800);
        cm.drop_frames(Direction::ToAgent, DropReason::OutboxFull, 3);
        cm.event(CallEventKind::BargeIn);
        cm.event(CallEventKind::UnknownCallerEvent);
        cm.tool(ToolResult::Timeout);
        cm.error(Leg::Caller, ErrorKind::InvalidBase64);
        cm.error(Leg::Agent, ErrorKind::MissingType);
        cm.fold(&m);
        let t = m.render();
        for s in [
            "relay_frames_total{direction=\"telnyx_to_agent\"} 1",
            "relay_audio_bytes_total{direction=\"agent_to_telnyx\"} 800",
            "relay_frames_dropped_total{direction=\"telnyx_to_agent\",reason=\"outbox_full\"} 3",
            "relay_barge_ins_total{agent=\"openai\"} 1",
            "relay_unknown_events_total{agent=\"openai\",leg=\"telnyx\"} 1",
            "relay_tool_calls_total{agent=\"openai\",result=\"timeout\"} 1",
            "relay_errors_total{leg=\"telnyx\",kind=\"invalid_base64\"} 1",
            "relay_errors_total{leg=\"agent\",kind=\"missing_type\"} 1",
            "relay_frames_total{direction=\"twilio_to_agent\"} 0",
        ] {
            assert!(t.contains(s), "{s}");
        }
        // Folding again adds nothing new.
        cm.fold(&m);
        assert!(m
            .render()
            .contains("relay_frames_total{direction=\"telnyx_to_agent\"} 1"));
    }
}
