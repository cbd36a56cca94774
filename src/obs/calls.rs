//! Live and recently ended calls' own figures, for `GET /calls` and `GET /calls/{call_sid}`
//! and the one summary line each call logs when it ends.
//!
//! Memory is bounded: one [`CallSummary`] per live call (at most `--max-calls`), plus the
//! [`RECENT_CALLS`] most recently ended ones (older ones are forgotten). A call publishes
//! its figures every few seconds (when it folds its metrics) and once more when it ends.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Ended calls kept for `GET /calls/{call_sid}` (about 1 KiB each).
pub const RECENT_CALLS: usize = 1000;

/// p50/p95/p99/max of one latency in one call, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Quantiles {
    /// Observations.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Largest, ms.
    pub max_ms: Option<f64>,
}

/// A call's latencies (see the README's metric table for what each one measures).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latencies {
    /// Relay-added latency, caller audio (carrier → agent).
    pub forward_caller_to_agent: Quantiles,
    /// Relay-added latency, agent audio (agent → carrier).
    pub forward_agent_to_caller: Quantiles,
    /// Turn latency measured by the relay (caller speech end → first reply audio written).
    pub turn: Quantiles,
    /// Turn latency from the agent's own end-of-speech signal.
    pub agent_turn: Quantiles,
    /// Interruption signal → `clear` written.
    pub barge_in: Quantiles,
    /// Mark sent → echoed as played.
    pub playout_lag: Quantiles,
    /// Inbound media inter-arrival deviation from 20 ms.
    pub inbound_jitter: Quantiles,
    /// Agent-reported ping round trip.
    pub agent_ping_rtt: Quantiles,
}

/// One call's figures, as `GET /calls` shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CallSummary {
    /// The carrier's call id (Twilio call SID, Telnyx call control id).
    pub call_sid: String,
    /// The carrier's stream id.
    pub stream_sid: String,
    /// The carrier (`twilio`, `telnyx`).
    pub carrier: &'static str,
    /// The agent dialect.
    pub agent: &'static str,
    /// `live` or `ended`.
    pub state: &'static str,
    /// How it ended (the `relay_calls_total` outcome), once ended.
    pub outcome: Option<&'static str>,
    /// Start (the upgrade), Unix time in ms.
    pub started_unix_ms: u64,
    /// Duration so far, ms.
    pub duration_ms: u64,
    /// Caller frames relayed.
    pub frames_caller_to_agent: u64,
    /// Agent frames relayed (carrier media messages).
    pub frames_agent_to_caller: u64,
    /// Caller frames dropped.
    pub dropped_caller_to_agent: u64,
    /// Agent frames dropped.
    pub dropped_agent_to_caller: u64,
    /// Carrier media frames missing (gaps in `media.chunk`).
    pub inbound_frames_missing: u64,
    /// Agent audio confirmed played, ms.
    pub played_ms: u64,
    /// Agent audio flushed by `clear`, ms.
    pub flushed_ms: u64,
    /// Barge-ins (clears sent).
    pub barge_ins: u64,
    /// Keypad digits.
    pub dtmf_digits: u64,
    /// Tool calls requested.
    pub tool_calls: u32,
    /// Bad messages skipped.
    pub bad_inputs: u32,
    /// Latencies.
    pub latency: Latencies,
    /// The call action asked for (the newest), if any.
    pub action: Option<ActionSummary>,
    /// Agent-leg recoveries and rollovers, oldest first.
    pub recoveries: Vec<RecoverySummary>,
    /// The call's recording, when it is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingSummary>,
}

/// A call's recording in its summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RecordingSummary {
    /// Where the WAV file is (written as `.part` until the call ended).
    pub location: Option<String>,
    /// Whether recording is paused now.
    pub paused: bool,
    /// Paused spans, ms since the stream's `start`: `[from, to]` (`to` null while paused).
    pub pauses_ms: Vec<(u64, Option<u64>)>,
    /// Whether audio was lost (the writer fell behind).
    pub degraded: bool,
}

/// One agent recovery in a call's summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RecoverySummary {
    /// What failed (`closed`, `reset`, `stalled`, `fatal_error`, `silent`, `connect_failed`,
    /// `ready_timeout`, `rollover`).
    pub cause: &'static str,
    /// `recovered`, `exhausted`, `rollover`; `null` while in progress.
    pub result: Option<&'static str>,
    /// Reconnect attempts.
    pub attempts: u32,
    /// When it began, ms since the call's start.
    pub at_ms: u64,
    /// Last agent audio before the failure → first after it, ms.
    pub gap_ms: Option<u64>,
}

/// A call's action in its summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ActionSummary {
    /// `end_call` or `transfer` (`relay_call_actions_total{action}`).
    pub action: &'static str,
    /// Who asked (`relay_call_actions_total{source}`).
    pub source: &'static str,
    /// What became of it (`relay_call_actions_total{result}`).
    pub result: &'static str,
    /// A transfer's target as named.
    pub target: Option<String>,
    /// A transfer's end as the carrier's dial result told this instance
    /// (`relay_transfers_total{result}`), once known.
    pub transfer_result: Option<&'static str>,
}

/// The registry: live calls by id, and a ring of recently ended ones.
#[derive(Debug, Default)]
pub struct CallRegistry {
    live: Mutex<HashMap<u64, CallSummary>>,
    recent: Mutex<VecDeque<CallSummary>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl CallRegistry {
    /// Adds a live call; returns its registry id.
    pub fn register(&self, s: CallSummary) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, s);
        id
    }

    /// Replaces a live call's figures.
    pub fn update(&self, id: u64, s: CallSummary) {
        if let Some(v) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            *v = s;
        }
    }

    /// Moves a call from live to recently ended, with its final figures.
    pub fn finish(&self, id: u64, s: CallSummary) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT_CALLS {
            r.pop_front();
        }
        r.push_back(s);
    }

    /// Forgets a live call that ended without [`CallRegistry::finish`] (its task panicked).
    pub fn abandon(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Live calls, oldest first.
    pub fn live(&self) -> Vec<CallSummary> {
        let mut v: Vec<CallSummary> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.started_unix_ms);
        v
    }

    /// Records a transfer's dial result on the newest call with this call SID (live or
    /// recently ended); `false` when this instance has no such call.
    pub fn set_transfer_result(&self, call_sid: &str, result: &'static str) -> bool {
        let set = |s: &mut CallSummary| {
            let a = s.action.get_or_insert(ActionSummary {
                action: "transfer",
                source: "",
                result: "",
                target: None,
                transfer_result: None,
            });
            a.transfer_result = Some(result);
        };
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = live
                .values_mut()
                .filter(|s| s.call_sid == call_sid)
                .max_by_key(|s| s.started_unix_ms)
            {
                set(s);
                return true;
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.iter_mut().rev().find(|s| s.call_sid == call_sid) {
            Some(s) => {
                set(s);
                true
            }
            None => false,
        }
    }

    /// A live call with this call SID, else the most recent ended one.
    pub fn get(&self, call_sid: &str) -> Option<CallSummary> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = live
            .values()
            .filter(|s| s.call_sid == call_sid)
            .max_by_key(|s| s.started_unix_ms)
        {
            return Some(s.clone());
        }
        drop(live);
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|s| s.call_sid == call_sid)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sid: &str, t: u64) -> CallSummary {
        CallSummary {
            call_sid: sid.into(),
            started_unix_ms: t,
            state: "live",
            ..CallSummary::default()
        }
    }

    #[test]
    fn live_then_recent_and_bounded() {
        let r = CallRegistry::default();
        let a = r.register(call("CA1", 1));
        let b = r.register(call("CA2", 2));
        assert_eq!(r.live().len(), 2);
        let mut done = call("CA1", 1);
        done.state = "ended";
        r.finish(a, done.clone());
        assert_eq!(r.live().len(), 1);
        assert_eq!(r.get("CA1"), Some(done));
        let mut upd = call("CA2", 2);
        upd.frames_caller_to_agent = 7;
        r.update(b, upd.clone());
        assert_eq!(r.get("CA2"), Some(upd));
        assert_eq!(r.get("CA3"), None);
        for i in 0..(RECENT_CALLS as u64 + 10) {
            let id = r.register(call(&format!("X{i}"), i));
            r.finish(id, call(&format!("X{i}"), i));
        }
        assert_eq!(r.recent.lock().unwrap().len(), RECENT_CALLS);
        assert_eq!(r.get("X0"), None);
        assert!(r.get(&format!("X{}", RECENT_CALLS + 9)).is_some());
    }
}
