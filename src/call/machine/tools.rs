//! Tool calls: the agent asks, the tool webhook answers (through the driver), the agent
//! hears the result in its dialect's shape. This part owns the limits (per call, in flight,
//! results waiting), each call's timeout, and the dialects that want results only once their
//! reply is done (AssemblyAI).

use super::agent_cmds::{AgentCmd, AgentCmds};
use crate::agent::ToolOutput;
use crate::obs::labels::ToolResult;
use std::time::{Duration, Instant};

/// Most tool calls of one call in flight at once; more get an error result at once.
pub const MAX_TOOL_CALLS_IN_FLIGHT: usize = 4;

/// Most tool results waiting to be written to the agent (or held until its reply ends);
/// more are discarded and counted (`relay_tool_calls_total{result="discarded"}`).
pub const MAX_TOOL_RESULTS_WAITING: usize = 16;

/// A tool call waiting for its webhook.
#[derive(Debug)]
struct Pending {
    id: String,
    deadline: Instant,
    /// Tool name and arguments (JSON text), for the call's history.
    call: (String, String),
}

/// What to do with a tool call the agent asked for.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Call the webhook.
    Call,
    /// Refuse at once with this result and message.
    Refuse(ToolResult, &'static str),
}

/// The tool calls of one call.
#[derive(Debug)]
pub struct Tools {
    pending: Vec<Pending>,
    held: Vec<(String, ToolOutput, bool)>,
    /// Whether the agent's latest reply event is its `reply.done` (results may go).
    reply_done_latest: bool,
    /// Tool calls asked for so far.
    pub calls: u32,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            pending: Vec::new(),
            held: Vec::new(),
            reply_done_latest: true,
            calls: 0,
        }
    }
}

impl Tools {
    /// The agent asked for a tool call: decides whether it goes to the webhook.
    pub fn decide(
        &mut self,
        arguments_ok: Result<(), &'static str>,
        configured: bool,
        max_per_call: u32,
    ) -> Decision {
        self.calls = self.calls.saturating_add(1);
        match arguments_ok {
            Err(reason) => Decision::Refuse(ToolResult::InvalidArguments, reason),
            Ok(()) if !configured => Decision::Refuse(
                ToolResult::NotConfigured,
                "no tools are configured on this relay",
            ),
            Ok(()) if self.calls > max_per_call => Decision::Refuse(
                ToolResult::LimitReached,
                "this call has used up its tool calls",
            ),
            Ok(()) if self.pending.len() >= MAX_TOOL_CALLS_IN_FLIGHT => {
                Decision::Refuse(ToolResult::LimitReached, "too many tool calls in progress")
            }
            Ok(()) => Decision::Call,
        }
    }

    /// Tool call `id` went to the webhook at `now`.
    pub fn started(&mut self, id: String, now: Instant, timeout: Duration) {
        self.started_call(id, now, timeout, String::new(), String::new());
    }

    /// As [`Tools::started`], remembering the tool's name and arguments (JSON text).
    pub fn started_call(
        &mut self,
        id: String,
        now: Instant,
        timeout: Duration,
        name: String,
        arguments: String,
    ) {
        self.pending.push(Pending {
            id,
            deadline: now + timeout,
            call: (name, arguments),
        });
    }

    /// The webhook answered for `id`: its tool name and arguments; `None` if it had timed
    /// out already.
    pub fn answered(&mut self, id: &str) -> Option<(String, String)> {
        let i = self.pending.iter().position(|t| t.id == id)?;
        Some(self.pending.swap_remove(i).call)
    }

    /// Whether a webhook call is in flight.
    pub fn in_flight(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The agent session is gone: calls in flight are forgotten (their ids are returned, to
    /// be cancelled) and held results dropped.
    pub fn abandon(&mut self) -> Vec<String> {
        self.held.clear();
        self.reply_done_latest = true;
        self.pending.drain(..).map(|p| p.id).collect()
    }

    /// The earliest timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|t| t.deadline).min()
    }

    /// Removes and returns the calls that timed out by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        self.pending.retain(|t| {
            if now >= t.deadline {
                out.push(t.id.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// Whether a result delivered now would be held until the agent's reply is done (for a
    /// dialect that `hold`s results).
    pub fn holds(&self, hold: bool) -> bool {
        hold && !self.reply_done_latest
    }

    /// A result for the agent (`followup`: it is asked to respond): queued, held until the
    /// reply is done (`hold`), or discarded when too many already wait. Returns `false` when
    /// discarded.
    pub fn deliver(
        &mut self,
        id: String,
        output: ToolOutput,
        followup: bool,
        hold: bool,
        cmds: &mut AgentCmds,
    ) -> bool {
        if self.held.len() + cmds.tool_results() >= MAX_TOOL_RESULTS_WAITING {
            return false;
        }
        if hold && !self.reply_done_latest {
            self.held.push((id, output, followup));
        } else {
            cmds.push(AgentCmd::ToolResult {
                id,
                output,
                followup,
            });
        }
        true
    }

    /// A reply began: results wait (for dialects that hold them).
    pub fn reply_started(&mut self) {
        self.reply_done_latest = false;
    }

    /// The reply ended: held results go now, or (interrupted) are discarded; returns how
    /// many were discarded.
    pub fn reply_done(&mut self, interrupted: bool, cmds: &mut AgentCmds) -> u64 {
        self.reply_done_latest = true;
        if interrupted {
            let n = self.held.len() as u64;
            self.held.clear();
            n
        } else {
            for (id, output, followup) in self.held.drain(..) {
                cmds.push(AgentCmd::ToolResult {
                    id,
                    output,
                    followup,
                });
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_with_a_reason() {
        let mut t = Tools::default();
        assert_eq!(
            t.decide(Ok(()), false, 32),
            Decision::Refuse(
                ToolResult::NotConfigured,
                "no tools are configured on this relay"
            )
        );
        assert_eq!(
            t.decide(Err("arguments are not a JSON object"), true, 32),
            Decision::Refuse(
                ToolResult::InvalidArguments,
                "arguments are not a JSON object"
            )
        );
        let now = Instant::now();
        for i in 0..MAX_TOOL_CALLS_IN_FLIGHT {
            assert_eq!(t.decide(Ok(()), true, 32), Decision::Call);
            t.started(i.to_string(), now, Duration::from_secs(1));
        }
        assert_eq!(
            t.decide(Ok(()), true, 32),
            Decision::Refuse(ToolResult::LimitReached, "too many tool calls in progress")
        );
        let mut t = Tools::default();
        assert_eq!(t.decide(Ok(()), true, 1), Decision::Call);
        assert!(matches!(
            t.decide(Ok(()), true, 1),
            Decision::Refuse(ToolResult::LimitReached, _)
        ));
    }

    #[test]
    fn timeouts_expire_in_order_and_late_answers_are_ignored() {
        let mut t = Tools::default();
        let t0 = Instant::now();
        t.started("a".into(), t0, Duration::from_millis(100));
        t.started("b".into(), t0, Duration::from_millis(300));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(t.expired(t0 + Duration::from_millis(150)), ["a"]);
        assert!(t.answered("a").is_none());
        assert!(t.answered("b").is_some());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn held_results_go_after_the_reply_or_are_discarded_when_it_was_cut() {
        let mut t = Tools::default();
        let mut c = AgentCmds::default();
        t.reply_started();
        assert!(t.deliver("x".into(), Ok(serde_json::json!(1)), true, true, &mut c));
        assert_eq!(c.tool_results(), 0);
        assert_eq!(t.reply_done(false, &mut c), 0);
        assert_eq!(c.tool_results(), 1);
        t.reply_started();
        assert!(t.deliver("y".into(), Ok(serde_json::json!(2)), true, true, &mut c));
        assert_eq!(t.reply_done(true, &mut c), 1);
        assert_eq!(c.tool_results(), 1);
        for i in 0..MAX_TOOL_RESULTS_WAITING {
            let ok = t.deliver(i.to_string(), Ok(serde_json::json!(0)), true, false, &mut c);
            assert_eq!(ok, i + 1 < MAX_TOOL_RESULTS_WAITING);
        }
    }
}
