//! The call's figures for `GET /calls` and the summary line.

use super::*;

impl CallMachine {
    /// The call's figures as of `now` (`started_unix_ms`: the upgrade in Unix ms).
    pub fn summary(&self, now: Instant, started_unix_ms: u64) -> CallSummary {
        let h = |h: &LatencyHistogram| Quantiles {
            count: h.count(),
            p50_ms: h.quantile(0.5).map(ms),
            p95_ms: h.quantile(0.95).map(ms),
            p99_ms: h.quantile(0.99).map(ms),
            max_ms: h.max().map(ms),
        };
        let s = |s: &Samples| Quantiles {
            count: s.len() as u64,
            p50_ms: s.quantile(0.5).map(|v| v * 1e3),
            p95_ms: s.quantile(0.95).map(|v| v * 1e3),
            p99_ms: s.quantile(0.99).map(|v| v * 1e3),
            max_ms: s.quantile(1.0).map(|v| v * 1e3),
        };
        let (played_ms, flushed_ms) = self.playout_ms();
        let f = &self.figures;
        let (to_agent, to_caller) = (Direction::ToAgent.index(), Direction::ToCaller.index());
        CallSummary {
            call_sid: self.call_sid.clone(),
            stream_sid: self.stream_sid.clone(),
            carrier: self.carrier.kind().as_str(),
            agent: self.kind.as_str(),
            state: if self.end.is_some() { "ended" } else { "live" },
            outcome: self.end.as_ref().map(|e| e.outcome().as_str()),
            started_unix_ms,
            duration_ms: now.saturating_duration_since(self.started_at).as_millis() as u64,
            frames_caller_to_agent: self.cm.frames_total(Direction::ToAgent),
            frames_agent_to_caller: self.cm.frames_total(Direction::ToCaller),
            dropped_caller_to_agent: self.cm.dropped_total[to_agent],
            dropped_agent_to_caller: self.cm.dropped_total[to_caller],
            inbound_frames_missing: self.cm.missing_total(),
            played_ms,
            flushed_ms,
            barge_ins: self.cm.events_total(CallEventKind::BargeIn),
            dtmf_digits: self.cm.events_total(CallEventKind::DtmfDigit),
            tool_calls: self.tools.calls,
            bad_inputs: f.bad_inputs,
            latency: Latencies {
                forward_caller_to_agent: h(&self.cm.latency[to_agent]),
                forward_agent_to_caller: h(&self.cm.latency[to_caller]),
                turn: s(&f.turn),
                agent_turn: s(&f.agent_turn),
                barge_in: s(&f.barge_in),
                playout_lag: s(&f.playout_lag),
                inbound_jitter: h(&self.cm.jitter),
                agent_ping_rtt: s(&f.ping_rtt),
            },
            action: self
                .action_record
                .as_ref()
                .map(|a| crate::obs::calls::ActionSummary {
                    action: a.kind.as_str(),
                    source: a.source.as_str(),
                    result: a.result.as_str(),
                    target: a.target.clone(),
                    transfer_result: None,
                }),
            recoveries: self
                .recovery
                .records()
                .iter()
                .map(|r| crate::obs::calls::RecoverySummary {
                    cause: r.cause.as_str(),
                    result: r.result.map(|x| x.as_str()),
                    attempts: r.attempts,
                    at_ms: r.at_ms,
                    gap_ms: r.gap_ms,
                })
                .collect(),
            recording: self.recording_summary(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
