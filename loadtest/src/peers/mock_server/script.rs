//! Scripted behaviour shared by the mock agents: the reply engine (all three dialects) and,
//! for the AssemblyAI and OpenAI mocks, [`Behavior`], timed [`Step`]s and the tool-result /
//! text-input records.
//!
//! The engines own *when* things are sent; the dialect hooks ([`Speaking`], [`Scripted`])
//! own *what* is sent. A reply ([`ReplyScript`]) goes like this, with the dialect's messages
//! at each point (AssemblyAI | OpenAI):
//!
//! 1. wait until `after_user_bytes` of caller audio have arrived;
//! 2. **prelude** — the caller's turn as the agent heard it: `input.speech.started`,
//!    `input.speech.stopped`, `transcript.user` | `input_audio_buffer.speech_started`,
//!    `input_audio_buffer.speech_stopped`,
//!    `conversation.item.input_audio_transcription.completed`;
//! 3. `think_time`;
//! 4. **begin** (`reply.started` | `response.created`, new item) then one audio message per
//!    `chunk_interval` (the first at once) of `chunk_bytes` each (`reply.audio` |
//!    `response.output_audio.delta`);
//! 5. with `interrupt_after_chunks: Some(n)` (`1 ≤ n ≤` chunks), one interval after chunk
//!    `n` the **cut**: `input.speech.started`, `transcript.agent{interrupted:true}`,
//!    `reply.done{status:"interrupted"}`, then two stale `reply.audio` of the cut reply |
//!    `input_audio_buffer.speech_started`, two stale deltas of the cut item,
//!    `response.done{status:"cancelled"}`. Stale audio is `chunk_bytes` of
//!    [`crate::peers::agent_sim::STALE_AUDIO_BYTE`]. One interval later the rest of the reply audio
//!    follows as a **new** reply (step 4 again);
//! 6. **finish**: `transcript.agent{interrupted:false}`, `reply.done{status:"completed"}` |
//!    `response.output_audio.done`, `response.output_audio_transcript.done`,
//!    `response.done{status:"completed"}`; the session's
//!    [`replies_done`](super::SessionHandle::replies_done) count goes up.
//!
//! The reply is spoken once per session and stops early if the client closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use super::{push_capped, Dialect, Outgoing, SessionHandle};

/// What a mock agent does on its own in each session, once the client's init message came.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Send every caller audio message back at once as agent audio with the same bytes (split
    /// into pieces of the config's `echo_chunk_bytes` when that is > 0).
    Echo,
    /// Send no audio; only record (and run the [`Step`]s).
    Silent,
    /// Speak once (see [`ReplyScript`] and the module docs).
    Reply(ReplyScript),
    /// Send a non-JSON text frame, then a binary frame, then one valid agent-audio message of
    /// [`crate::peers::agent_sim::GARBAGE_FOLLOWUP_AUDIO_BYTES`] of μ-law silence (`0xFF`); then
    /// behave like `Silent`.
    Garbage,
}

/// A scripted agent reply (see the module docs for the message sequence).
#[derive(Debug, Clone)]
pub struct ReplyScript {
    /// Agent speech, raw μ-law.
    pub reply_audio: Arc<Vec<u8>>,
    /// Start once this many caller audio bytes (decoded) have arrived (0 = right away).
    pub after_user_bytes: usize,
    /// Delay between the prelude and the first audio chunk.
    pub think_time: Duration,
    /// Bytes per audio message (e.g. 80 = 10 ms deltas, 1600 = 200 ms). Must be > 0.
    pub chunk_bytes: usize,
    /// Time between audio messages.
    pub chunk_interval: Duration,
    /// Barge in after this many chunks (`1 ≤ n ≤` number of chunks; other values never do).
    pub interrupt_after_chunks: Option<usize>,
    /// What the caller said (the user transcript).
    pub user_transcript: String,
    /// What the agent says (the agent transcript).
    pub agent_transcript: String,
}

impl ReplyScript {
    /// `reply_audio` right away, no think time, 1600-byte chunks every 50 ms, no barge-in,
    /// placeholder transcripts.
    pub fn new(reply_audio: Arc<Vec<u8>>) -> Self {
        ReplyScript {
            reply_audio,
            after_user_bytes: 0,
            think_time: Duration::ZERO,
            chunk_bytes: 1600,
            chunk_interval: Duration::from_millis(50),
            interrupt_after_chunks: None,
            user_transcript: "Hello, I have a question about my order.".into(),
            agent_transcript: "Sure, I can help you with that.".into(),
        }
    }
}

/// One timed step of a session script: wait for `wait`, then do `action`. A session's steps
/// run in order in one task (alongside the [`Behavior`]), starting when the init message
/// came; a step whose wait can no longer be met (the client closed) ends the script.
#[derive(Debug, Clone)]
pub struct Step {
    /// What to wait for (after the previous step).
    pub wait: Wait,
    /// What to do then.
    pub action: Action,
}

impl Step {
    /// A step.
    pub fn new(wait: Wait, action: Action) -> Self {
        Step { wait, action }
    }
}

/// When a [`Step`] fires.
#[derive(Debug, Clone)]
pub enum Wait {
    /// At once.
    Now,
    /// After this long (from the previous step).
    For(Duration),
    /// Once at least this many caller audio bytes (decoded, in total) have arrived.
    UserBytes(usize),
    /// Once at least `count` client messages of type `kind` have arrived in total (e.g.
    /// `tool.result`, `conversation.item.create`, `response.create`).
    ClientMessages {
        /// The message `type`.
        kind: String,
        /// How many.
        count: usize,
    },
    /// Once at least this many scripted replies have finished.
    RepliesDone(usize),
}

/// What a [`Step`] does.
#[derive(Debug, Clone)]
pub enum Action {
    /// The dialect's tool call: AssemblyAI `tool.call{call_id,name,arguments|args}` (an
    /// object); OpenAI `response.function_call_arguments.done{call_id,name,arguments}` (the
    /// arguments as JSON text). The relay's answer is recorded as a [`ToolResult`].
    ToolCall {
        /// Provider call id.
        call_id: String,
        /// Tool name.
        name: String,
        /// Arguments (normally a JSON object).
        arguments: Value,
    },
    /// The dialect's error event: AssemblyAI `session.error{code,message}`; OpenAI
    /// `error{error:{type:"invalid_request_error",code,message}}`.
    Error {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The dialect's caller-speech-start event (`input.speech.started` |
    /// `input_audio_buffer.speech_started`).
    SpeechStarted,
    /// Agent audio (one message; OpenAI: a delta of the current item, or a new one).
    Audio(Vec<u8>),
    /// End the session the dialect's way: AssemblyAI `session.ended`; OpenAI has no such
    /// event, so a Close frame 1000.
    End,
    /// Send this text frame unchanged (e.g. any event, malformed JSON, or AssemblyAI's
    /// type-less `{"code":…,"message":…}` error).
    Text(String),
    /// Send this binary frame.
    Binary(Vec<u8>),
    /// Send a Close frame.
    Close {
        /// Close code.
        code: u16,
        /// Reason.
        reason: String,
    },
}

/// A tool result the client sent back.
#[derive(Debug, Clone)]
pub struct ToolResult {
    /// The call id it answers.
    pub call_id: String,
    /// The result string (AssemblyAI `result`, OpenAI `output`; if the client sent something
    /// other than a string, its JSON text, and a protocol error is recorded).
    pub output: String,
    /// The whole message.
    pub message: Value,
    /// When it was read.
    pub at: Instant,
}

/// A text input the client sent in place of speech (the relay uses these for keypad digits):
/// AssemblyAI `reply.create{instructions}`; OpenAI `conversation.item.create` of a user
/// `message` (its `input_text` parts joined).
#[derive(Debug, Clone)]
pub struct TextInput {
    /// The text.
    pub text: String,
    /// The whole message.
    pub message: Value,
    /// When it was read.
    pub at: Instant,
}

/// Tool results and text inputs of one session (part of the AssemblyAI and OpenAI state).
#[derive(Debug, Default)]
pub struct Exchanges {
    pub(crate) tool_results: Vec<ToolResult>,
    pub(crate) text_inputs: Vec<TextInput>,
}

/// Reply hooks of a dialect (what the reply engine sends at each point; see module docs).
pub trait Speaking: Dialect {
    /// The caller's turn as the agent heard it, before the think time.
    fn reply_prelude(&self, s: &SessionHandle<Self>, r: &ReplyScript) -> Vec<Outgoing>;
    /// A reply starts (before its first chunk).
    fn reply_begin(&self, s: &SessionHandle<Self>, r: &ReplyScript) -> Vec<Outgoing>;
    /// One chunk of reply audio.
    fn reply_chunk(&self, s: &SessionHandle<Self>, chunk: &[u8]) -> Outgoing;
    /// The barge-in signal plus two stale chunks of the cut reply.
    fn reply_cut(&self, s: &SessionHandle<Self>, r: &ReplyScript) -> Vec<Outgoing>;
    /// The reply finished normally.
    fn reply_finish(&self, s: &SessionHandle<Self>, r: &ReplyScript) -> Vec<Outgoing>;
}

/// Step hooks of the AssemblyAI and OpenAI dialects.
pub trait Scripted: Speaking {
    /// The tool results and text inputs inside the dialect's state.
    fn exchanges(state: &Self::State) -> &Exchanges;
    /// Mutable access to them.
    fn exchanges_mut(state: &mut Self::State) -> &mut Exchanges;
    /// The dialect's agent-audio message for `audio`.
    fn agent_audio(&self, s: &SessionHandle<Self>, audio: &[u8]) -> Outgoing;
    /// The dialect's messages for a dialect-specific action ([`Action::ToolCall`],
    /// [`Action::Error`], [`Action::SpeechStarted`], [`Action::End`]).
    fn dialect_action(&self, s: &SessionHandle<Self>, a: &Action) -> Vec<Outgoing>;
}

/// Runs one reply (see the module docs); spawn it as a session task.
pub(crate) async fn run_reply<D: Speaking>(s: SessionHandle<D>, r: ReplyScript) {
    let after = r.after_user_bytes;
    let waited = s
        .wait_state(
            Duration::from_secs(24 * 3600),
            |_| "user audio".into(),
            |st| {
                if st.closed.is_some() {
                    Some(false)
                } else {
                    (st.audio_total >= after).then_some(true)
                }
            },
        )
        .await;
    if !matches!(waited, Ok(true)) {
        return;
    }
    let d = s.dialect();
    s.send_all(d.reply_prelude(&s, &r)).await;
    tokio::time::sleep(r.think_time).await;
    let mut ticker = tokio::time::interval(r.chunk_interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let chunks: Vec<&[u8]> = r.reply_audio.chunks(r.chunk_bytes.max(1)).collect();
    let mut open = false;
    for i in 0..=chunks.len() {
        if s.is_closed() {
            return;
        }
        if r.interrupt_after_chunks == Some(i) && i > 0 {
            ticker.tick().await;
            s.send_all(d.reply_cut(&s, &r)).await;
            open = false;
        }
        let Some(chunk) = chunks.get(i) else { break };
        ticker.tick().await;
        let mut outs = Vec::new();
        if !open {
            outs = d.reply_begin(&s, &r);
            open = true;
        }
        outs.push(d.reply_chunk(&s, chunk));
        s.send_all(outs).await;
    }
    if open {
        s.send_all(d.reply_finish(&s, &r)).await;
    }
    s.update(|st| st.replies_done += 1);
}

/// Runs a session's steps in order; spawn it as a session task.
pub(crate) async fn run_steps<D: Scripted>(s: SessionHandle<D>, steps: Vec<Step>) {
    const FOREVER: Duration = Duration::from_secs(24 * 3600);
    for step in steps {
        let ok = match &step.wait {
            Wait::Now => true,
            Wait::For(d) => {
                tokio::time::sleep(*d).await;
                true
            }
            Wait::UserBytes(n) => {
                let n = *n;
                wait_or_closed(&s, FOREVER, move |st| st.audio_total >= n).await
            }
            Wait::ClientMessages { kind, count } => {
                let (kind, count) = (kind.clone(), *count);
                wait_or_closed(&s, FOREVER, move |st| {
                    st.messages
                        .iter()
                        .filter(|m| m.kind() == Some(&kind))
                        .count()
                        >= count
                })
                .await
            }
            Wait::RepliesDone(n) => {
                let n = *n;
                wait_or_closed(&s, FOREVER, move |st| st.replies_done >= n).await
            }
        };
        if !ok || s.is_closed() {
            return;
        }
        s.send_all(action_outgoing(&s, &step.action)).await;
    }
}

/// What `a` sends in dialect `D`.
pub(crate) fn action_outgoing<D: Scripted>(s: &SessionHandle<D>, a: &Action) -> Vec<Outgoing> {
    match a {
        Action::Text(t) => vec![Outgoing::Text(t.clone())],
        Action::Binary(b) => vec![Outgoing::Binary(b.clone())],
        Action::Close { code, reason } => vec![Outgoing::Close(*code, reason.clone())],
        Action::Audio(bytes) => vec![s.dialect().agent_audio(s, bytes)],
        Action::ToolCall { .. } | Action::Error { .. } | Action::SpeechStarted | Action::End => {
            s.dialect().dialect_action(s, a)
        }
    }
}

/// Waits until `cond` holds (true) or the client closed (false).
async fn wait_or_closed<D: Dialect>(
    s: &SessionHandle<D>,
    timeout: Duration,
    cond: impl Fn(&super::Record<D::State>) -> bool,
) -> bool {
    let r = s
        .wait_state(
            timeout,
            |_| "a step's condition".into(),
            |st| {
                if cond(st) {
                    Some(true)
                } else if st.closed.is_some() {
                    Some(false)
                } else {
                    None
                }
            },
        )
        .await;
    matches!(r, Ok(true))
}

/// The [`Behavior::Garbage`] messages, with `audio` the dialect's valid follow-up.
pub(crate) fn garbage(audio: Outgoing) -> Vec<Outgoing> {
    vec![
        Outgoing::Text("this is not JSON {".to_owned()),
        Outgoing::Binary(vec![0xde, 0xad, 0xbe, 0xef]),
        audio,
    ]
}

/// Splits `audio` into pieces of `chunk` bytes (`0` = one piece).
pub(crate) fn pieces(audio: &[u8], chunk: usize) -> impl Iterator<Item = &[u8]> {
    audio.chunks(if chunk == 0 {
        audio.len().max(1)
    } else {
        chunk
    })
}

/// Starts the behaviour and step tasks common to the AssemblyAI and OpenAI mocks.
pub(crate) fn start_common<D: Scripted>(
    s: &SessionHandle<D>,
    behavior: &Behavior,
    steps: &[Step],
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Behavior::Reply(r) = behavior {
        tasks.push(tokio::spawn(run_reply(s.clone(), r.clone())));
    }
    if !steps.is_empty() {
        tasks.push(tokio::spawn(run_steps(s.clone(), steps.to_vec())));
    }
    tasks
}

impl<D: Scripted> SessionHandle<D> {
    /// Records a tool result.
    pub(crate) fn record_tool_result(&self, r: ToolResult) {
        self.update(|st| {
            let dropped = &mut st.dropped;
            push_capped(&mut D::exchanges_mut(&mut st.x).tool_results, r, dropped);
        });
    }

    /// Records a text input.
    pub(crate) fn record_text_input(&self, t: TextInput) {
        self.update(|st| {
            let dropped = &mut st.dropped;
            push_capped(&mut D::exchanges_mut(&mut st.x).text_inputs, t, dropped);
        });
    }

    /// Tool results the client sent, in order, with receive times.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        self.read(|st| D::exchanges(&st.x).tool_results.clone())
    }

    /// Waits until at least `n` tool results have arrived; returns them all.
    pub async fn wait_tool_results(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ToolResult>> {
        self.wait_state(
            timeout,
            |st| {
                format!(
                    "{n} tool result(s) (have {})",
                    D::exchanges(&st.x).tool_results.len()
                )
            },
            |st| {
                let r = &D::exchanges(&st.x).tool_results;
                (r.len() >= n).then(|| r.clone())
            },
        )
        .await
    }

    /// Text inputs (keypad digits, as the relay sends them) the client sent, in order.
    pub fn text_inputs(&self) -> Vec<TextInput> {
        self.read(|st| D::exchanges(&st.x).text_inputs.clone())
    }

    /// Waits until at least `n` text inputs have arrived; returns them all.
    pub async fn wait_text_inputs(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<TextInput>> {
        self.wait_state(
            timeout,
            |st| {
                format!(
                    "{n} text input(s) (have {})",
                    D::exchanges(&st.x).text_inputs.len()
                )
            },
            |st| {
                let r = &D::exchanges(&st.x).text_inputs;
                (r.len() >= n).then(|| r.clone())
            },
        )
        .await
    }

    /// Does `action` now (as a [`Step`] would).
    pub async fn perform(&self, action: Action) {
        let outs = action_outgoing(self, &action);
        self.send_all(outs).await;
    }

    /// Sends `audio` as one agent-audio message (AssemblyAI `reply.audio`; OpenAI a delta of
    /// the current item, or of a new one if none is open).
    pub async fn send_agent_audio(&self, audio: &[u8]) {
        self.perform(Action::Audio(audio.to_vec())).await;
    }

    /// Sends the dialect's tool call (see [`Action::ToolCall`]).
    pub async fn send_tool_call(&self, call_id: &str, name: &str, arguments: Value) {
        self.perform(Action::ToolCall {
            call_id: call_id.into(),
            name: name.into(),
            arguments,
        })
        .await;
    }

    /// Sends the dialect's error event (see [`Action::Error`]).
    pub async fn send_error(&self, code: &str, message: &str) {
        self.perform(Action::Error {
            code: code.into(),
            message: message.into(),
        })
        .await;
    }

    /// Sends the dialect's caller-speech-start event.
    pub async fn send_speech_started(&self) {
        self.perform(Action::SpeechStarted).await;
    }

    /// Ends the session the dialect's way (see [`Action::End`]).
    pub async fn end_session(&self) {
        self.perform(Action::End).await;
    }
}
