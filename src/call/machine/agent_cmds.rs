//! The agent leg's command queue: what the call owes the agent besides caller audio (the
//! session-opening messages, pongs, tool results, keypad digits, barge-in commands), in
//! order, ahead of audio. Multi-message commands (OpenAI's tool result is an item, then
//! `response.create`) go out part by part; a half-sent command is never reordered.
//!
//! Bounded: at most one pong waits (a newer ping replaces its id), keypad entries not yet
//! sent merge into one, and tool results are capped by the tools part.

use crate::agent::{ReplyKey, Session, ToolOutput};
use std::collections::VecDeque;

/// Most keypad digits one queued entry holds (two entries' worth).
pub const MAX_QUEUED_DIGITS: usize = 64;

/// One queued agent-leg command.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCmd {
    /// The dialect's session-opening messages.
    SessionInit,
    /// Answer an application-level ping.
    Pong(u64),
    /// A tool result.
    ToolResult {
        /// The agent's call id.
        id: String,
        /// The result or error.
        output: ToolOutput,
        /// Whether the agent is asked to respond to it.
        followup: bool,
    },
    /// Keypad digits.
    Dtmf(String),
    /// What the caller heard of a cut reply (OpenAI `conversation.item.truncate`).
    BargeIn {
        /// The cut reply.
        reply: ReplyKey,
        /// Milliseconds of it played.
        played_ms: u64,
    },
}

/// The queue.
#[derive(Debug, Default)]
pub struct AgentCmds {
    q: VecDeque<AgentCmd>,
    /// Part of the front command already sent.
    part: usize,
}

impl AgentCmds {
    /// Whether anything is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The socket opened: the session-opening messages go first.
    pub fn session_init(&mut self) {
        self.q.push_front(AgentCmd::SessionInit);
    }

    /// Queues `cmd` last.
    pub fn push(&mut self, cmd: AgentCmd) {
        self.q.push_back(cmd);
    }

    /// Index of the first command not started yet.
    fn first_unsent(&self) -> usize {
        usize::from(self.part > 0).min(self.q.len())
    }

    /// A pong for ping `id`: one pong waits at most (a newer ping replaces the id of one not
    /// yet sent); it goes before queued audio and commands, never inside a half-sent one.
    pub fn pong(&mut self, id: u64) {
        let at = self.first_unsent();
        match self
            .q
            .iter_mut()
            .skip(at)
            .find(|c| matches!(c, AgentCmd::Pong(_)))
        {
            Some(AgentCmd::Pong(waiting)) => *waiting = id,
            _ => self.q.insert(at, AgentCmd::Pong(id)),
        }
    }

    /// Keypad digits: entries not sent yet join into one (at most [`MAX_QUEUED_DIGITS`]), so
    /// a caller pressing keys while the agent socket is slow cannot grow the queue.
    pub fn dtmf(&mut self, digits: String) {
        let at = self.first_unsent();
        match self
            .q
            .iter_mut()
            .skip(at)
            .find(|c| matches!(c, AgentCmd::Dtmf(_)))
        {
            Some(AgentCmd::Dtmf(waiting)) => {
                let room = MAX_QUEUED_DIGITS.saturating_sub(waiting.len());
                waiting.extend(digits.chars().take(room));
            }
            _ => self.q.push_back(AgentCmd::Dtmf(digits)),
        }
    }

    /// Tool results queued.
    pub fn tool_results(&self) -> usize {
        self.q
            .iter()
            .filter(|c| matches!(c, AgentCmd::ToolResult { .. }))
            .count()
    }

    /// Encodes the next message into `out`; `ready` false lets only the session init out.
    /// `false` when nothing (more) can go now.
    pub fn transmit(&mut self, d: &Session, ready: bool, out: &mut Vec<u8>) -> bool {
        while let Some(cmd) = self.q.front() {
            if !ready && !matches!(cmd, AgentCmd::SessionInit) {
                return false;
            }
            let part = self.part;
            let sent = match cmd {
                AgentCmd::SessionInit => d.encode_session_init(part, out),
                AgentCmd::Pong(id) => part == 0 && d.encode_pong(*id, out),
                AgentCmd::ToolResult {
                    id,
                    output,
                    followup,
                } => d.encode_tool_result(part, id, output, *followup, out),
                AgentCmd::Dtmf(digits) => d.encode_dtmf(part, digits, out),
                AgentCmd::BargeIn { reply, played_ms } => {
                    part == 0 && d.encode_barge_in(*reply, *played_ms, out)
                }
            };
            if sent {
                self.part += 1;
                return true;
            }
            self.q.pop_front();
            self.part = 0;
        }
        false
    }

    /// For a local agent: the next command to hand it directly (no encoding).
    pub fn pop(&mut self) -> Option<AgentCmd> {
        self.part = 0;
        self.q.pop_front()
    }

    /// Commands queued (tests).
    #[cfg(test)]
    pub fn queued(&self) -> Vec<AgentCmd> {
        self.q.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pong_waits_at_most_and_goes_first() {
        let mut c = AgentCmds::default();
        c.push(AgentCmd::Dtmf("1".into()));
        c.pong(1);
        c.pong(2);
        assert_eq!(c.queued(), [AgentCmd::Pong(2), AgentCmd::Dtmf("1".into())]);
        c.session_init();
        assert_eq!(c.queued()[0], AgentCmd::SessionInit);
    }

    #[test]
    fn unsent_keypad_entries_merge_and_are_bounded() {
        let mut c = AgentCmds::default();
        for _ in 0..100 {
            c.dtmf("12".into());
        }
        let q = c.queued();
        assert_eq!(q.len(), 1);
        match &q[0] {
            AgentCmd::Dtmf(d) => assert_eq!(d.len(), MAX_QUEUED_DIGITS),
            other => panic!("{other:?}"),
        }
    }
}
