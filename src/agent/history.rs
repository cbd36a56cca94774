//! The conversation as the relay heard it: the dialects' final transcripts of each turn (the
//! caller's and the agent's) and finished tool calls, bounded in turns and bytes. The same
//! record seeds a replacement agent session after a failure (ElevenLabs `contextual_update`,
//! OpenAI `conversation.item.create` replay, AssemblyAI system prompt) and is the transcript
//! of the post-call record.

use std::collections::VecDeque;

/// Most turns kept; older ones are dropped (and counted).
pub const MAX_TURNS: usize = 64;

/// Most bytes of text kept over all turns; older turns are dropped to stay under it.
pub const MAX_BYTES: usize = 16 * 1024;

/// Most bytes of one turn's text (longer ones are cut at a character boundary).
pub const MAX_TURN_BYTES: usize = 2048;

/// Who spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The caller (the vendors' "user").
    Caller,
    /// The agent.
    Agent,
}

impl Role {
    /// `user` or `agent`, as post-call transcripts name them.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Caller => "user",
            Role::Agent => "agent",
        }
    }
}

/// A finished tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolTurn {
    /// The tool's name.
    pub name: String,
    /// Its arguments (JSON text).
    pub arguments: String,
    /// Its result or error (JSON text).
    pub output: String,
}

/// One entry of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who.
    pub role: Role,
    /// What was said (empty for a tool call).
    pub text: String,
    /// When, ms since the stream's `start`.
    pub at_ms: u64,
    /// A tool call the agent made (then `role` is [`Role::Agent`]).
    pub tool: Option<ToolTurn>,
}

impl Turn {
    fn bytes(&self) -> usize {
        self.text.len()
            + self
                .tool
                .as_ref()
                .map_or(0, |t| t.name.len() + t.arguments.len() + t.output.len())
    }
}

/// The bounded conversation of one call.
#[derive(Debug, Clone, Default)]
pub struct History {
    turns: VecDeque<Turn>,
    bytes: usize,
    /// Turns dropped to stay within the bounds.
    pub dropped: u32,
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl History {
    /// A final transcript of `role` at `at_ms` (empty text is ignored).
    pub fn said(&mut self, role: Role, text: &str, at_ms: u64) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.push(Turn {
            role,
            text: cut(text, MAX_TURN_BYTES),
            at_ms,
            tool: None,
        });
    }

    /// A finished tool call at `at_ms`.
    pub fn tool(&mut self, name: &str, arguments: &str, output: &str, at_ms: u64) {
        self.push(Turn {
            role: Role::Agent,
            text: String::new(),
            at_ms,
            tool: Some(ToolTurn {
                name: cut(name, 128),
                arguments: cut(arguments, MAX_TURN_BYTES / 2),
                output: cut(output, MAX_TURN_BYTES / 2),
            }),
        });
    }

    fn push(&mut self, t: Turn) {
        self.bytes += t.bytes();
        self.turns.push_back(t);
        while self.turns.len() > MAX_TURNS || self.bytes > MAX_BYTES {
            let Some(old) = self.turns.pop_front() else {
                break;
            };
            self.bytes -= old.bytes();
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// The turns kept, oldest first.
    pub fn turns(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter()
    }

    /// A copy of the turns kept.
    pub fn to_vec(&self) -> Vec<Turn> {
        self.turns.iter().cloned().collect()
    }

    /// Number of turns kept.
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    /// True when nothing was said yet.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

/// The conversation as plain text lines (`Caller: …`, `Agent: …`, `Tool name(args) → out`),
/// for dialects seeded with text.
pub fn as_text(turns: &[Turn]) -> String {
    let mut out = String::new();
    for t in turns {
        match (&t.tool, t.role) {
            (Some(tool), _) => {
                out.push_str(&format!(
                    "(tool {}({}) returned {})\n",
                    tool.name, tool.arguments, tool.output
                ));
            }
            (None, Role::Caller) => {
                out.push_str("Caller: ");
                out.push_str(&t.text);
                out.push('\n');
            }
            (None, Role::Agent) => {
                out.push_str("Agent: ");
                out.push_str(&t.text);
                out.push('\n');
            }
        }
    }
    out
}

/// What a replacement agent session is told about the interruption.
pub const RESUME_NOTE: &str = "The phone line to the caller was briefly interrupted and the conversation continues in a new session. Do not greet the caller again; continue from where the conversation left off.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_turns_and_bytes_with_the_drops_counted() {
        let mut h = History::default();
        for i in 0..100 {
            h.said(Role::Caller, &format!("turn {i}"), i);
        }
        assert_eq!(h.len(), MAX_TURNS);
        assert_eq!(h.dropped, 36);
        assert_eq!(h.turns().next().unwrap().text, "turn 36");
        let mut h = History::default();
        for _ in 0..20 {
            h.said(Role::Agent, &"x".repeat(5000), 0);
        }
        assert!(h.bytes <= MAX_BYTES);
        assert_eq!(h.turns().next().unwrap().text.len(), MAX_TURN_BYTES);
        h.said(Role::Agent, "   ", 1);
        assert_eq!(h.len(), 8, "blank transcripts are not turns");
        let cut_text = cut("ééé", 3);
        assert_eq!(cut_text, "é");
    }

    #[test]
    fn text_form_names_each_speaker() {
        let mut h = History::default();
        h.said(Role::Caller, "Where is my order?", 1000);
        h.tool(
            "lookup_order",
            "{\"order\":\"42\"}",
            "{\"status\":\"shipped\"}",
            1500,
        );
        h.said(Role::Agent, "It has shipped.", 2000);
        assert_eq!(
            as_text(&h.to_vec()),
            "Caller: Where is my order?\n(tool lookup_order({\"order\":\"42\"}) returned {\"status\":\"shipped\"})\nAgent: It has shipped.\n"
        );
    }
}
