//! The agent leg: one dialect-neutral event and command vocabulary, and one sans-IO
//! translator per agent API.
//!
//! Owns [`AgentEvent`] (what an agent said, in neutral terms), the [`Dialect`] trait every
//! translator implements, the per-call session parameters ([`CallParams`]) and what a dialect
//! connects to ([`ConnectSpec`], pure: the I/O is `call::connect`). Does not own the call
//! (see `call`): the machine decides when to send what; a translator only turns bytes into
//! events and commands into bytes.
//!
//! Two kinds of dialect: **socket** dialects speak an agent API over a WebSocket
//! ([`elevenlabs`], [`assemblyai`], [`openai`]); **local** dialects run inside the relay with
//! no socket ([`echo`], [`scripted`]) and are driven by the call machine's clock.
//!
//! # Adding a dialect
//! One file here implementing [`Dialect`] (its flags and settings, its connect details, its
//! session init, decoders and encoders, its tool and DTMF forms, its README row in
//! [`Dialect::INFO`]) and one line in the [`dialects!`] list below. That line declares the
//! module and generates [`AgentKind`] (names and metric labels), [`Session`] (static dispatch
//! on the per-frame path: no `dyn`), [`AgentArgs`] (its flags flattened into
//! `media-relay serve`) and [`AgentSettings`].

pub mod call_tools;
pub mod history;

pub(crate) use call_tools::offered_tools;
pub use call_tools::{
    call_tool_definitions, recording_tool_definitions, END_CALL_TOOL, PAUSE_RECORDING_TOOL,
    RESUME_RECORDING_TOOL, TRANSFER_CALL_TOOL,
};

use crate::auth::Secret;
use crate::obs::labels::ErrorKind;
use std::time::Instant;

/// How a replacement session starts after the call's agent connection failed, or at a
/// rollover: the session to resume (AssemblyAI) and the conversation so far (the others are
/// re-seeded with it, and never greet again).
#[derive(Debug, Clone, Default)]
pub struct Seed {
    /// The vendor's session to resume, when it offers resumption.
    pub resume_id: Option<String>,
    /// The conversation so far, oldest first.
    pub history: Vec<history::Turn>,
}

/// Declares the dialects: `Variant => module`, one line each.
macro_rules! dialects {
    ( $( $(#[$meta:meta])* $variant:ident => $module:ident ),+ $(,)? ) => {
        dialects!(@with_dollar ($) $( $(#[$meta])* $variant => $module ),+);
    };
    (@with_dollar ($d:tt) $( $(#[$meta:meta])* $variant:ident => $module:ident ),+ ) => {
        $( $(#[$meta])* pub mod $module; )+

        /// Which agent a call talks to: the server default (`--agent`) or the call's
        /// `agent` stream parameter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
        pub enum AgentKind {
            $( $(#[$meta])* $variant ),+
        }

        impl AgentKind {
            /// Every kind, in label order (metrics create one series per kind at start).
            pub const ALL: &'static [AgentKind] = &[$(AgentKind::$variant),+];
            /// The kinds' names (the `agent` parameter and metric label), in label order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($module)),+];

            /// Name used in logs, the `agent` parameter and the `agent` metric label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AgentKind::$variant => stringify!($module)),+
                }
            }

            /// Its index in [`AgentKind::ALL`] (metric series are indexed by it).
            pub const fn index(self) -> usize {
                self as usize
            }

            /// Parses a name as given in the `agent` parameter (exact, lower case).
            pub fn from_name(name: &str) -> Option<AgentKind> {
                AgentKind::ALL.iter().copied().find(|k| k.as_str() == name)
            }

            /// The dialect's README facts.
            pub const fn info(self) -> &'static DialectInfo {
                match self {
                    $(AgentKind::$variant => &<$module::Session as Dialect>::INFO),+
                }
            }

            /// Whether the dialect runs inside the relay (no socket).
            pub const fn is_local(self) -> bool {
                match self {
                    $(AgentKind::$variant => <$module::Session as Dialect>::LOCAL),+
                }
            }
        }

        /// The translator of one call's agent session: static dispatch, no `dyn` on the
        /// frame path. Created when the call knows its agent and parameters.
        #[derive(Debug)]
        pub enum Session {
            $( $(#[$meta])* $variant($module::Session) ),+
        }

        /// `dispatch!(session, s => expr)`: `expr` with `s` bound to the dialect's session.
        macro_rules! dispatch {
            ($d s:expr, $d x:ident => $d body:expr) => {
                match $d s { $(Session::$variant($d x) => $d body),+ }
            };
        }

        impl Session {
            /// The translator for `kind` with this call's parameters; `None` when `kind` is
            /// not configured on this relay.
            pub fn new(kind: AgentKind, settings: &AgentSettings, params: CallParams) -> Option<Session> {
                Some(match kind {
                    $(AgentKind::$variant => Session::$variant(<$module::Session as Dialect>::new(
                        settings.$module.as_ref()?,
                        &settings.shared,
                        params,
                    ))),+
                })
            }

            /// A replacement session for `kind` after the call's agent connection failed (or
            /// for a rollover), seeded with `seed`; `None` when `kind` is not configured.
            pub fn recover(kind: AgentKind, settings: &AgentSettings, params: CallParams, seed: Seed) -> Option<Session> {
                Some(match kind {
                    $(AgentKind::$variant => Session::$variant(<$module::Session as Dialect>::recover(
                        settings.$module.as_ref()?,
                        &settings.shared,
                        params,
                        seed,
                    ))),+
                })
            }

            /// How long a session of `kind` may run before the relay rolls it over to a new one
            /// at a quiet moment (the vendor's session cap less a margin); `None`: no cap.
            pub fn rollover_after(kind: AgentKind, settings: &AgentSettings) -> Option<std::time::Duration> {
                match kind {
                    $(AgentKind::$variant => settings.$module.as_ref().and_then(<$module::Session as Dialect>::rollover_after)),+
                }
            }

            /// Which API this is.
            pub fn kind(&self) -> AgentKind {
                match self {
                    $(Session::$variant(_) => AgentKind::$variant),+
                }
            }
        }

        /// Every dialect's flags (flattened into `media-relay serve`).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct AgentArgs {
            /// Flags shared by the dialects.
            #[command(flatten)]
            pub shared: SharedArgs,
            $( #[command(flatten)] #[allow(missing_docs)] pub $module: <$module::Session as Dialect>::Args, )+
        }

        /// Everything the dialects need from configuration: each dialect's settings when
        /// configured, and what they share.
        #[derive(Debug, Clone, Default)]
        pub struct AgentSettings {
            /// Shared by the dialects.
            pub shared: SharedSettings,
            $( #[allow(missing_docs)] pub $module: Option<<$module::Session as Dialect>::Settings>, )+
        }

        impl AgentSettings {
            /// Validates every dialect's flags.
            ///
            /// # Errors
            /// [`SettingsError`] naming the flag.
            pub fn from_args(args: &AgentArgs) -> Result<AgentSettings, SettingsError> {
                Ok(AgentSettings {
                    shared: SharedSettings::from_args(&args.shared)?,
                    $( $module: <$module::Session as Dialect>::settings(&args.$module)?, )+
                })
            }

            /// Whether calls can use `kind`.
            pub fn is_configured(&self, kind: AgentKind) -> bool {
                match kind {
                    $(AgentKind::$variant => self.$module.is_some()),+
                }
            }

            /// What `kind` connects to for a call with these parameters; `None` for a
            /// local dialect.
            ///
            /// # Errors
            /// [`ConnectError::NotConfigured`], or a bad configured URL.
            pub fn connect_spec(&self, kind: AgentKind, params: &CallParams) -> Result<Option<ConnectSpec>, ConnectError> {
                match kind {
                    $(AgentKind::$variant => {
                        let s = self.$module.as_ref().ok_or(ConnectError::NotConfigured(kind.as_str()))?;
                        <$module::Session as Dialect>::connect(s, params)
                    }),+
                }
            }
        }
    };
}

dialects! {
    /// ElevenLabs Conversational AI (Agents Platform) WebSocket.
    Elevenlabs => elevenlabs,
    /// AssemblyAI Voice Agent API.
    Assemblyai => assemblyai,
    /// OpenAI Realtime API (GA).
    Openai => openai,
    /// The built-in echo agent: plays the caller's audio back after a delay. No account needed.
    Echo => echo,
    /// The built-in scripted agent: plays clips and makes tool calls from a JSON script.
    Scripted => scripted,
}

/// A dialect's row in the README's dialect table.
#[derive(Debug, Clone, Copy)]
pub struct DialectInfo {
    /// Product name.
    pub title: &'static str,
    /// Where it runs: the vendor's API, or inside the relay.
    pub connects_to: &'static str,
    /// What makes the relay clear the caller's playback.
    pub barge_in: &'static str,
    /// How tool calls and results travel.
    pub tools: &'static str,
    /// How keypad digits reach it.
    pub dtmf: &'static str,
    /// What configures it (a configuration error names it when `--agent` picks the dialect
    /// unconfigured).
    pub setup: &'static str,
}

/// A translator of one agent API (or a local agent). Methods with defaults describe the
/// common case; a dialect overrides what differs. Socket dialects implement the encoders and
/// [`Dialect::decode`]; local dialects implement [`Dialect::on_caller_audio`],
/// [`Dialect::next_due`] and [`Dialect::poll_local`].
pub trait Dialect: Sized + std::fmt::Debug + Send {
    /// Its flags (a clap `Args` group).
    type Args: clap::Args + Clone + std::fmt::Debug + Default;
    /// Its validated settings.
    type Settings: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// Its README row.
    const INFO: DialectInfo;
    /// True for a dialect that runs inside the relay (no socket).
    const LOCAL: bool = false;

    /// Validates the flags; `None` when the dialect is not configured.
    ///
    /// # Errors
    /// [`SettingsError`] naming the offending flag.
    fn settings(args: &Self::Args) -> Result<Option<Self::Settings>, SettingsError>;

    /// What a call with these parameters connects to (`None` for a local dialect).
    ///
    /// # Errors
    /// [`ConnectError`] for a bad configured URL.
    fn connect(
        settings: &Self::Settings,
        params: &CallParams,
    ) -> Result<Option<ConnectSpec>, ConnectError>;

    /// One call's session.
    fn new(settings: &Self::Settings, shared: &SharedSettings, params: CallParams) -> Self;

    /// A replacement session after a failure or at a rollover (see [`Seed`]); by default a
    /// new session as at the call's start.
    fn recover(
        settings: &Self::Settings,
        shared: &SharedSettings,
        params: CallParams,
        seed: Seed,
    ) -> Self {
        let _ = seed;
        Self::new(settings, shared, params)
    }

    /// The vendor's id of this session when it can be resumed on a new socket.
    fn resume_id(&self) -> Option<String> {
        None
    }

    /// The session cap to roll over before (see [`Session::rollover_after`]).
    fn rollover_after(settings: &Self::Settings) -> Option<std::time::Duration> {
        let _ = settings;
        None
    }

    /// Decodes one text frame in place (simd-json; `scratch` is reused parser state).
    ///
    /// # Errors
    /// [`DecodeError`] for frames that are not the dialect's JSON; unknown types are
    /// [`AgentEvent::Other`], not errors.
    fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        let _ = (frame, scratch);
        Err(DecodeError::MissingType)
    }

    /// Session-opening message number `index` (0, 1, …) into `out`; `false` when there are
    /// no more.
    fn encode_session_init(&self, index: usize, out: &mut Vec<u8>) -> bool {
        let _ = (index, out);
        false
    }

    /// Caller audio (raw μ-law) as the dialect's input-audio message.
    fn encode_audio(&self, audio: &[u8], out: &mut Vec<u8>) {
        let _ = (audio, out);
    }

    /// The answer to an application-level ping; `false` for dialects without pings.
    fn encode_pong(&self, id: u64, out: &mut Vec<u8>) -> bool {
        let _ = (id, out);
        false
    }

    /// A tool result, part `part` (0, 1, …) of it; `false` when done.
    /// With `followup` the agent is asked to respond to the result (OpenAI's
    /// `response.create`); without, the result is only recorded (the call is ending or
    /// leaving).
    fn encode_tool_result(
        &self,
        part: usize,
        call_id: &str,
        output: &ToolOutput,
        followup: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        let _ = (part, call_id, output, followup, out);
        false
    }

    /// Keypad digits the caller entered, part `part`; `false` when done.
    fn encode_dtmf(&self, part: usize, digits: &str, out: &mut Vec<u8>) -> bool {
        let _ = (part, digits, out);
        false
    }

    /// After a barge-in that cut reply `reply` when `played_ms` of it had played: the command
    /// that tells the agent what the caller heard; `false` for dialects without one.
    fn encode_barge_in(&self, reply: ReplyKey, played_ms: u64, out: &mut Vec<u8>) -> bool {
        let _ = (reply, played_ms, out);
        false
    }

    /// The reply audio is currently being attributed to.
    fn current_reply(&self) -> ReplyKey {
        ReplyKey(0)
    }

    /// Whether the agent's speech-start event cuts the current reply.
    fn clears_on_speech_started(&self) -> bool {
        false
    }

    /// Whether [`AgentEvent::Interrupted`] events count as the barge-in signal.
    fn clears_on_interrupted(&self) -> bool {
        true
    }

    /// Whether tool results wait until the latest reply is done.
    fn holds_tool_results_until_reply_done(&self) -> bool {
        false
    }

    /// Whether the dialect's audio arrives in small deltas worth coalescing to 20 ms.
    fn coalesces_small_deltas(&self) -> bool {
        true
    }

    /// Whether the caller's final transcript ends the caller's turn (for dialects with no
    /// speech-stopped event).
    fn transcript_ends_turn(&self) -> bool {
        false
    }

    /// Whether the relay's own tools (`end_call`, `transfer_call`) are declared in this
    /// dialect's session, so a call of them is a built-in tool (otherwise a tool of that name
    /// is the agent's own client tool).
    fn offers_relay_tools(&self) -> bool {
        false
    }

    /// Whether the agent closing its socket with `code` is its way of ending the call (then
    /// the call hangs up after the goodbye is heard, instead of failing).
    fn close_is_end_signal(&self, code: Option<u16>) -> bool {
        let _ = code;
        false
    }

    /// What the agent's close code means, for the log line.
    fn close_code_meaning(&self, code: u16) -> &'static str {
        match code {
            1000 => "normal closure",
            1001 => "going away",
            1002 => "protocol error",
            1008 => "policy violation",
            1011 => "internal server error",
            _ => "unlisted close code",
        }
    }

    /// Local dialects: one caller frame heard at `now`; returns frames dropped to make room.
    fn on_caller_audio(&mut self, now: Instant, audio: &[u8]) -> u64 {
        let _ = (now, audio);
        0
    }

    /// Local dialects: when [`Dialect::poll_local`] next has something.
    fn next_due(&self) -> Option<Instant> {
        None
    }

    /// Local dialects: the next event due at `now` (audio goes to `audio`, replacing it).
    fn poll_local(&mut self, now: Instant, audio: &mut Vec<u8>) -> Option<LocalEvent> {
        let _ = (now, audio);
        None
    }

    /// Local dialects: a tool result for one of their tool calls.
    fn on_tool_result(&mut self, call_id: &str, output: &ToolOutput, now: Instant) {
        let _ = (call_id, output, now);
    }

    /// Local dialects: keypad digits.
    fn on_dtmf(&mut self, digits: &str, now: Instant) {
        let _ = (digits, now);
    }
}

impl Session {
    /// Whether this session runs inside the relay (no socket).
    #[inline]
    pub fn is_local(&self) -> bool {
        self.kind().is_local()
    }

    /// See [`Dialect::decode`].
    ///
    /// # Errors
    /// [`DecodeError`].
    #[inline]
    pub fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        dispatch!(self, s => Dialect::decode(s, frame, scratch))
    }

    /// See [`Dialect::encode_session_init`].
    pub fn encode_session_init(&self, index: usize, out: &mut Vec<u8>) -> bool {
        dispatch!(self, s => Dialect::encode_session_init(s, index, out))
    }

    /// See [`Dialect::encode_audio`].
    #[inline]
    pub fn encode_audio(&self, audio: &[u8], out: &mut Vec<u8>) {
        dispatch!(self, s => Dialect::encode_audio(s, audio, out))
    }

    /// See [`Dialect::encode_pong`].
    pub fn encode_pong(&self, id: u64, out: &mut Vec<u8>) -> bool {
        dispatch!(self, s => Dialect::encode_pong(s, id, out))
    }

    /// See [`Dialect::encode_tool_result`].
    pub fn encode_tool_result(
        &self,
        part: usize,
        call_id: &str,
        output: &ToolOutput,
        followup: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        dispatch!(self, s => Dialect::encode_tool_result(s, part, call_id, output, followup, out))
    }

    /// See [`Dialect::encode_dtmf`].
    pub fn encode_dtmf(&self, part: usize, digits: &str, out: &mut Vec<u8>) -> bool {
        dispatch!(self, s => Dialect::encode_dtmf(s, part, digits, out))
    }

    /// See [`Dialect::encode_barge_in`].
    pub fn encode_barge_in(&self, reply: ReplyKey, played_ms: u64, out: &mut Vec<u8>) -> bool {
        dispatch!(self, s => Dialect::encode_barge_in(s, reply, played_ms, out))
    }

    /// See [`Dialect::current_reply`].
    #[inline]
    pub fn current_reply(&self) -> ReplyKey {
        dispatch!(self, s => Dialect::current_reply(s))
    }

    /// See [`Dialect::clears_on_speech_started`].
    pub fn clears_on_speech_started(&self) -> bool {
        dispatch!(self, s => Dialect::clears_on_speech_started(s))
    }

    /// See [`Dialect::clears_on_interrupted`].
    pub fn clears_on_interrupted(&self) -> bool {
        dispatch!(self, s => Dialect::clears_on_interrupted(s))
    }

    /// See [`Dialect::holds_tool_results_until_reply_done`].
    pub fn holds_tool_results_until_reply_done(&self) -> bool {
        dispatch!(self, s => Dialect::holds_tool_results_until_reply_done(s))
    }

    /// See [`Dialect::coalesces_small_deltas`].
    pub fn coalesces_small_deltas(&self) -> bool {
        dispatch!(self, s => Dialect::coalesces_small_deltas(s))
    }

    /// See [`Dialect::transcript_ends_turn`].
    pub fn transcript_ends_turn(&self) -> bool {
        dispatch!(self, s => Dialect::transcript_ends_turn(s))
    }

    /// See [`Dialect::offers_relay_tools`].
    pub fn offers_relay_tools(&self) -> bool {
        dispatch!(self, s => Dialect::offers_relay_tools(s))
    }

    /// See [`Dialect::close_is_end_signal`].
    pub fn close_is_end_signal(&self, code: Option<u16>) -> bool {
        dispatch!(self, s => Dialect::close_is_end_signal(s, code))
    }

    /// See [`Dialect::resume_id`].
    pub fn resume_id(&self) -> Option<String> {
        dispatch!(self, s => Dialect::resume_id(s))
    }

    /// See [`Dialect::close_code_meaning`].
    pub fn close_code_meaning(&self, code: u16) -> &'static str {
        dispatch!(self, s => Dialect::close_code_meaning(s, code))
    }

    /// See [`Dialect::on_caller_audio`].
    #[inline]
    pub fn on_caller_audio(&mut self, now: Instant, audio: &[u8]) -> u64 {
        dispatch!(self, s => Dialect::on_caller_audio(s, now, audio))
    }

    /// See [`Dialect::next_due`].
    pub fn next_due(&self) -> Option<Instant> {
        dispatch!(self, s => Dialect::next_due(s))
    }

    /// See [`Dialect::poll_local`].
    pub fn poll_local(&mut self, now: Instant, audio: &mut Vec<u8>) -> Option<LocalEvent> {
        dispatch!(self, s => Dialect::poll_local(s, now, audio))
    }

    /// See [`Dialect::on_tool_result`].
    pub fn on_tool_result(&mut self, call_id: &str, output: &ToolOutput, now: Instant) {
        dispatch!(self, s => Dialect::on_tool_result(s, call_id, output, now))
    }

    /// See [`Dialect::on_dtmf`].
    pub fn on_dtmf(&mut self, digits: &str, now: Instant) {
        dispatch!(self, s => Dialect::on_dtmf(s, digits, now))
    }
}

/// What a local dialect did, in neutral terms (its audio is in the buffer it was handed).
#[derive(Debug, Clone, PartialEq)]
pub enum LocalEvent {
    /// Agent speech of reply `.0` (the raw μ-law is in the audio buffer).
    Audio(ReplyKey),
    /// A reply began.
    ReplyStarted,
    /// The current reply is done.
    ReplyDone,
    /// The agent asks the relay to run a tool.
    ToolCall {
        /// The call id, echoed with the result.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments (a JSON object).
        arguments: serde_json::Value,
    },
    /// The agent ended the session.
    Ended,
}

/// Flags shared by the dialects.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SharedArgs {
    /// JSON file with the tool definitions offered to AssemblyAI and OpenAI agents: an array
    /// of `{"name","description","parameters"}` (a call's `tools` parameter replaces them).
    #[arg(long, env = "RELAY_AGENT_TOOLS_FILE")]
    pub agent_tools_file: Option<std::path::PathBuf>,
}

/// Settings shared by the dialects.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// Tool definitions offered to AssemblyAI and OpenAI agents (a JSON array of
    /// `{name, description, parameters}`); ElevenLabs client tools are defined on the agent.
    pub tools: serde_json::Value,
    /// The relay's own call tools (`end_call`, `transfer_call`) declared beside them (a JSON
    /// array; empty with `--builtin-call-tools false`).
    pub call_tools: Vec<serde_json::Value>,
}

impl Default for SharedSettings {
    fn default() -> Self {
        SharedSettings {
            tools: serde_json::Value::Array(Vec::new()),
            call_tools: Vec::new(),
        }
    }
}

impl SharedSettings {
    /// Reads and checks the tools file.
    ///
    /// # Errors
    /// [`SettingsError`] for an unreadable file or one that is not an array of named tools.
    pub fn from_args(a: &SharedArgs) -> Result<SharedSettings, SettingsError> {
        let tools = match &a.agent_tools_file {
            None => serde_json::Value::Array(Vec::new()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    SettingsError(format!(
                        "cannot read --agent-tools-file {}: {e}",
                        path.display()
                    ))
                })?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| SettingsError(format!("--agent-tools-file is not JSON: {e}")))?;
                let ok = v.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|t| t.get("name").is_some_and(serde_json::Value::is_string))
                });
                if !ok {
                    return Err(SettingsError(
                        "--agent-tools-file must hold a JSON array of objects with a \"name\""
                            .into(),
                    ));
                }
                v
            }
        };
        Ok(SharedSettings {
            tools,
            call_tools: Vec::new(),
        })
    }
}

/// A configuration error in a dialect's flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// Checks that `url` is a `ws://` or `wss://` URL with a host; `var` names the setting.
///
/// # Errors
/// [`SettingsError`].
pub fn check_ws_url(url: &str, var: &str) -> Result<String, SettingsError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| SettingsError(format!("{var} is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("ws") | Some("wss")) || uri.host().is_none() {
        return Err(SettingsError(format!(
            "{var} must be a ws:// or wss:// URL"
        )));
    }
    Ok(url.to_owned())
}

/// An API key flag with blank values treated as absent.
pub fn nonempty(s: &Option<Secret>) -> Option<Secret> {
    s.clone().filter(|k| !k.expose().trim().is_empty())
}

/// An opaque, per-call, monotonically increasing identity of one agent reply (ElevenLabs'
/// numeric `event_id`, or a counter a translator bumps for each new AssemblyAI `reply_id` /
/// OpenAI `item_id`). The machine only compares keys: audio whose key is at or below an
/// interruption's key is stale. `ReplyKey(0)` is "no reply yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyKey(pub u64);

/// Who spoke, in a transcript event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The caller.
    Caller,
    /// The agent.
    Agent,
}

/// One message from an agent in dialect-neutral terms, borrowing from the frame buffer.
#[derive(Debug, PartialEq)]
pub enum AgentEvent<'a> {
    /// The session is ready for caller audio. `formats_ok` is false when the agent reported
    /// audio formats other than G.711 μ-law 8 kHz (the relay never transcodes).
    Ready {
        /// Provider session or conversation id, for logs.
        session_id: Option<&'a str>,
        /// Whether both directions are μ-law 8 kHz (or the agent did not say otherwise).
        formats_ok: bool,
        /// The formats as reported, for the log line.
        input_format: Option<&'a str>,
        /// The formats as reported, for the log line.
        output_format: Option<&'a str>,
    },
    /// Agent speech: base64 μ-law (not yet validated) of reply `reply`.
    Audio {
        /// The reply this audio belongs to.
        reply: ReplyKey,
        /// Base64 μ-law (standard alphabet).
        payload_b64: &'a str,
    },
    /// The agent says its reply was cut by the caller: audio of replies up to `through`
    /// (`None`: every reply so far) is stale. ElevenLabs `interruption`, AssemblyAI
    /// `reply.done{status:"interrupted"}` / `transcript.agent{interrupted:true}`.
    Interrupted {
        /// The last stale reply.
        through: Option<ReplyKey>,
    },
    /// The agent's voice activity detection heard the caller start speaking (AssemblyAI
    /// `input.speech.started`, OpenAI `input_audio_buffer.speech_started`). Whether this
    /// cuts the agent's reply is the dialect's call ([`Dialect::clears_on_speech_started`]).
    SpeechStarted,
    /// The agent heard the caller stop speaking (its own turn timing).
    SpeechStopped,
    /// A reply began (AssemblyAI `reply.started`, OpenAI `response.created`).
    ReplyStarted,
    /// A reply ended; `interrupted` when the caller cut it.
    ReplyDone {
        /// `status == "interrupted"` (AssemblyAI), `status == "cancelled"` (OpenAI).
        interrupted: bool,
    },
    /// No more audio will come for the current reply (OpenAI `response.output_audio.done`):
    /// a held sub-frame tail may go out now.
    AudioDone,
    /// The agent asks the client to run a tool.
    ToolCall {
        /// Provider call id, echoed in the result.
        id: &'a str,
        /// Tool name.
        name: &'a str,
        /// The arguments as a JSON object, or why they are not one.
        arguments: Result<serde_json::Value, &'static str>,
    },
    /// Application-level keepalive: answer at once with [`Dialect::encode_pong`].
    Ping {
        /// The id to echo.
        id: u64,
        /// Round-trip time the agent measured on earlier pings, in ms, if it says.
        rtt_ms: Option<u64>,
    },
    /// A final transcript line (logged at debug).
    Transcript {
        /// Who said it.
        speaker: Speaker,
        /// The text.
        text: &'a str,
    },
    /// The provider reported an error. `fatal` errors end the call (`agent_error`).
    Error {
        /// The provider's code or type, e.g. `invalid_format`, `override_error`, `1008`.
        code: Option<&'a str>,
        /// Numeric code when the provider gives one.
        numeric_code: Option<u64>,
        /// Human-readable message.
        message: Option<&'a str>,
        /// Whether the session is over.
        fatal: bool,
    },
    /// The agent ended the session cleanly (AssemblyAI `session.ended`).
    Ended,
    /// The vendor refused to resume the session (AssemblyAI `session_not_found`,
    /// `session_forbidden`): a fresh, seeded session is needed.
    ResumeRefused,
    /// The agent ran one of its platform's system tools (ElevenLabs `agent_tool_response`
    /// with `tool_type` `system`: `end_call`, `transfer_to_number`, …); its arguments are not
    /// on the wire.
    SystemTool {
        /// The tool's name (empty when the event had none).
        name: &'a str,
    },
    /// Any other message type: tolerated and counted.
    Other {
        /// The `type` value.
        kind: &'a str,
    },
}

/// Why an agent frame could not be decoded; [`DecodeError::kind`] is the metric label. No
/// variant allocates: the parser's error is kept as it is and only formatted when logged.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// Not valid JSON; carries the parser's error.
    #[error("malformed JSON: {0}")]
    MalformedJson(simd_json::Error),
    /// The object has no `type` field (and is not a tolerated type-less shape).
    #[error("message has no \"type\" field")]
    MissingType,
    /// A known message lacks a field the relay needs.
    #[error("message is missing {0}")]
    MissingField(&'static str),
}

impl DecodeError {
    /// The `kind` label of `relay_errors_total{leg="agent"}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::MalformedJson(_) => ErrorKind::MalformedJson,
            DecodeError::MissingType => ErrorKind::MissingType,
            DecodeError::MissingField(_) => ErrorKind::MissingField,
        }
    }
}

/// Where and how one call's agent leg connects (pure: `call::connect` does the I/O).
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    /// The WebSocket URL (`ws://` or `wss://`), unless [`ConnectSpec::fetch_url`] gives it.
    pub url: String,
    /// Extra upgrade-request headers (e.g. `Authorization: Bearer …`).
    pub headers: Vec<(&'static str, Secret)>,
    /// A REST request whose answer names the WebSocket URL (ElevenLabs signed URLs).
    pub fetch_url: Option<UrlFetch>,
}

/// A `GET` whose JSON answer holds the WebSocket URL.
#[derive(Debug, Clone)]
pub struct UrlFetch {
    /// The request URL.
    pub url: String,
    /// Request headers (secrets).
    pub headers: Vec<(&'static str, Secret)>,
    /// Reads the WebSocket URL out of a 200 answer's body.
    pub parse: fn(&[u8]) -> Option<String>,
}

/// Why the agent could not be connected; [`ConnectError::kind`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Network-level failure (URL, TCP, TLS, HTTP).
    #[error(transparent)]
    Net(#[from] crate::wire::net::NetError),
    /// The URL request answered a non-200 status.
    #[error("the signed-URL request answered HTTP {0}")]
    UrlFetchStatus(u16),
    /// The URL request's answer had no usable URL.
    #[error("the signed-URL answer has no valid URL")]
    UrlFetchBody,
    /// The WebSocket handshake failed.
    #[error(transparent)]
    Handshake(#[from] crate::wire::ws_client::HandshakeError),
    /// Connecting took longer than the configured timeout.
    #[error("agent connect timed out")]
    Timeout,
    /// The call asked for an agent the relay has no settings for.
    #[error("{0} is not configured on this relay")]
    NotConfigured(&'static str),
}

impl ConnectError {
    /// The `kind` label of `relay_errors_total{leg="agent"}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::Net(e) => e.kind(),
            ConnectError::UrlFetchStatus(_) => ErrorKind::SignedUrlStatus,
            ConnectError::UrlFetchBody => ErrorKind::SignedUrlBody,
            ConnectError::Handshake(e) => e.kind(),
            ConnectError::Timeout => ErrorKind::ConnectTimeout,
            ConnectError::NotConfigured(_) => ErrorKind::AgentNotConfigured,
        }
    }
}

/// Largest agent message accepted, in bytes. ElevenLabs' Python SDK accepts 16 MiB because a
/// first audio event can be large; OpenAI allows events of up to 15 MiB.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 16 << 20;

/// Per-call session parameters, from the stream's parameters (set by the inbound-call markup
/// from configuration, or by `/outbound-call`). Names starting with `relay_`, and `agent`, are
/// the relay's own and never reach an agent as variables.
#[derive(Debug, Clone, Default)]
pub struct CallParams {
    /// `prompt`: system prompt / instructions.
    pub prompt: Option<String>,
    /// `first_message`: what the agent says first (greeting).
    pub first_message: Option<String>,
    /// `language` (ISO code).
    pub language: Option<String>,
    /// `voice_id`: the agent's voice.
    pub voice: Option<String>,
    /// `tools`: a JSON array of tool definitions `{name, description, parameters}` (replaces
    /// the configured tools for this call).
    pub tools: Option<serde_json::Value>,
    /// `relay_agent_id`: a per-call ElevenLabs agent id.
    pub agent_id: Option<String>,
    /// Every other parameter: ElevenLabs dynamic variables.
    pub variables: Vec<(String, String)>,
    /// `transfer_failed`: the call came back from a transfer that failed with this
    /// `DialCallStatus` (`busy`, `no-answer`, `failed`, `canceled`). Also a variable.
    pub transfer_failed: Option<String>,
    /// `relay_answered_by`: the carrier's answering-machine verdict of an outbound call
    /// (Twilio `AnsweredBy`). Also the variable `answered_by`. When a machine's greeting
    /// ended, `relay_voicemail_message` (if given) becomes the `first_message`.
    pub answered_by: Option<String>,
}

/// Parameter names that carry agent settings rather than variables (the agent overrides the
/// relay builds itself; a dynamic variable may not use these names, nor `agent`, nor any name
/// starting with `relay_`).
pub const SETTING_PARAMETERS: [&str; 5] =
    ["prompt", "first_message", "language", "voice_id", "tools"];

/// Whether `name` may be used for a dynamic variable: not empty, no control characters, not
/// reserved ([`SETTING_PARAMETERS`], `agent`, `relay_*`). The one home of that rule.
pub fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("relay_")
        && name != "agent"
        && !SETTING_PARAMETERS.contains(&name)
        && !name.chars().any(char::is_control)
}

impl CallParams {
    /// Sorts a stream's custom parameters into settings and variables.
    pub fn from_custom_parameters(params: &[(String, String)]) -> CallParams {
        let mut p = CallParams::default();
        let mut voicemail = None;
        for (k, v) in params {
            match k.as_str() {
                "prompt" => p.prompt = Some(v.clone()),
                "first_message" => p.first_message = Some(v.clone()),
                "language" => p.language = Some(v.clone()),
                "voice_id" => p.voice = Some(v.clone()),
                "tools" => {
                    p.tools = serde_json::from_str::<serde_json::Value>(v)
                        .ok()
                        .filter(|t| t.is_array())
                }
                "relay_agent_id" => {
                    p.agent_id = Some(v.clone()).filter(|id| is_agent_id(id));
                }
                "agent" => {}
                "transfer_failed" => {
                    p.transfer_failed = Some(v.clone());
                    p.variables.push((k.clone(), v.clone()));
                }
                "relay_answered_by" => {
                    p.answered_by = Some(v.clone());
                    p.variables.push(("answered_by".into(), v.clone()));
                }
                "relay_voicemail_message" => voicemail = Some(v.clone()),
                _ if k.starts_with("relay_") => {}
                _ => p.variables.push((k.clone(), v.clone())),
            }
        }
        if p.reached_voicemail() {
            if let Some(m) = voicemail.filter(|m| !m.trim().is_empty()) {
                p.first_message = Some(m);
            }
        }
        p
    }

    /// Whether the call reached an answering machine whose greeting ended (leave the
    /// message now).
    pub fn reached_voicemail(&self) -> bool {
        self.answered_by
            .as_deref()
            .and_then(crate::obs::labels::AnsweredBy::from_label)
            .is_some_and(crate::obs::labels::AnsweredBy::leave_message)
    }
}

impl CallParams {
    /// The system prompt for dialects that take one (`prompt`), with a note for the agent
    /// when the call came back from a failed transfer.
    pub fn instructions(&self) -> Option<String> {
        let mut notes: Vec<String> = Vec::new();
        if let Some(status) = &self.transfer_failed {
            notes.push(format!(
                "The caller was just transferred to a person, but the transfer did not go through ({status}). Tell the caller, and offer to take a message or help further."
            ));
        }
        if self.reached_voicemail() {
            notes.push(VOICEMAIL_NOTE.to_owned());
        }
        if notes.is_empty() {
            return self.prompt.clone();
        }
        let note = notes.join("\n\n");
        Some(match &self.prompt {
            Some(p) => format!("{p}\n\n{note}"),
            None => note,
        })
    }
}

/// What an agent is told when an outbound call reached voicemail (with the prompt, for the
/// dialects that take instructions; ElevenLabs gets `answered_by` as a variable).
pub const VOICEMAIL_NOTE: &str = "This call reached an answering machine: you are leaving a voicemail, and no one will answer. Say your message once, briefly, then stop; the relay hangs up after it.";

/// True for an ElevenLabs agent id the relay accepts in a parameter: `[A-Za-z0-9_-]{1,64}`.
/// The one home of that rule.
pub fn is_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A tool result for the agent: `Ok(result JSON)` or `Err(error message)`.
pub type ToolOutput = Result<serde_json::Value, String>;

/// Tool-call arguments as a JSON object: an object as is, a string holding a JSON object
/// (OpenAI sends `arguments` as JSON text) parsed; anything else is refused with a reason.
pub(crate) fn json_object(
    v: Option<simd_json::OwnedValue>,
) -> Result<serde_json::Value, &'static str> {
    let v = match v {
        None => return Ok(serde_json::Value::Object(Default::default())),
        Some(v) => serde_json::to_value(v).map_err(|_| "arguments are not JSON")?,
    };
    let v = match v {
        serde_json::Value::String(s) if s.trim().is_empty() => {
            serde_json::Value::Object(Default::default())
        }
        serde_json::Value::String(s) => {
            serde_json::from_str(&s).map_err(|_| "arguments are not valid JSON")?
        }
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        other => other,
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err("arguments are not a JSON object")
    }
}

/// A tool result as the string AssemblyAI and ElevenLabs expect: a JSON string as its text,
/// anything else as its JSON text.
pub(crate) fn result_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Tool definitions in the flat function shape `{type:"function", name, description,
/// parameters}` that AssemblyAI and OpenAI both take (entries that are not objects with a name
/// are skipped).
pub(crate) fn function_tools(tools: &serde_json::Value) -> Vec<serde_json::Value> {
    tools
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t.get("name").is_some_and(serde_json::Value::is_string))
                .map(|t| {
                    let mut t = t.clone();
                    if let Some(o) = t.as_object_mut() {
                        o.entry("type")
                            .or_insert_with(|| serde_json::Value::String("function".into()));
                    }
                    t
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The sentence every dialect receives for keypad digits (see the README's DTMF table).
pub fn dtmf_text(digits: &str) -> String {
    format!("The caller pressed {digits} on the phone keypad.")
}

/// The README's dialect table, generated from [`Dialect::INFO`] of every registered dialect
/// (a test keeps the README in step: `the_readme_lists_every_dialect`).
pub fn readme_table() -> String {
    let mut s = String::from(
        "| `agent` | dialect | connects to | barge-in | tools | DTMF |\n|---|---|---|---|---|---|\n",
    );
    for k in AgentKind::ALL {
        let i = k.info();
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            k.as_str(),
            i.title,
            i.connects_to,
            i.barge_in,
            i.tools,
            i.dtmf
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_dialect_as_media_relay_dialects_prints_it() {
        let readme = include_str!("../../README.md");
        let table = readme_table();
        assert!(
            readme.contains(table.trim()),
            "README.md's dialect table differs from `media-relay dialects`:\n{table}"
        );
    }

    #[test]
    fn tool_arguments_must_be_objects() {
        let owned = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            simd_json::to_owned_value(&mut b).unwrap()
        };
        assert_eq!(json_object(Some(owned(r#"{"a":1}"#))).unwrap()["a"], 1);
        assert_eq!(
            json_object(Some(owned(r#""{\"order\":\"42\"}""#))).unwrap()["order"],
            "42"
        );
        assert!(json_object(None).unwrap().as_object().unwrap().is_empty());
        assert!(json_object(Some(owned(r#""""#))).unwrap().is_object());
        assert_eq!(
            json_object(Some(owned("[1]"))),
            Err("arguments are not a JSON object")
        );
        assert_eq!(
            json_object(Some(owned(r#""{nope""#))),
            Err("arguments are not valid JSON")
        );
        assert_eq!(result_text(&serde_json::json!("ok")), "ok");
        assert_eq!(result_text(&serde_json::json!({"a":1})), r#"{"a":1}"#);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in AgentKind::ALL {
            assert_eq!(AgentKind::from_name(k.as_str()), Some(*k));
            assert_eq!(AgentKind::NAMES[k.index()], k.as_str());
        }
        assert_eq!(AgentKind::from_name("ElevenLabs"), None);
        assert_eq!(AgentKind::from_name("gpt"), None);
    }

    #[test]
    fn parameters_are_sorted_into_settings_and_variables() {
        let raw: Vec<(String, String)> = [
            ("prompt", "Be brief."),
            ("first_message", "Hi!"),
            ("voice_id", "ivy"),
            (
                "tools",
                r#"[{"name":"lookup","description":"d","parameters":{}}]"#,
            ),
            ("agent", "openai"),
            ("relay_token", "t"),
            ("relay_agent_id", "agent_1"),
            ("customer", "Jane"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = CallParams::from_custom_parameters(&raw);
        assert_eq!(p.prompt.as_deref(), Some("Be brief."));
        assert_eq!(p.first_message.as_deref(), Some("Hi!"));
        assert_eq!(p.voice.as_deref(), Some("ivy"));
        assert_eq!(p.tools.as_ref().unwrap()[0]["name"], "lookup");
        assert_eq!(p.agent_id.as_deref(), Some("agent_1"));
        assert_eq!(p.variables, vec![("customer".into(), "Jane".into())]);
        // A malformed tools parameter or agent id is ignored, not fatal.
        let p = CallParams::from_custom_parameters(&[
            ("tools".into(), "{not json".into()),
            ("relay_agent_id".into(), "bad id!".into()),
        ]);
        assert!(p.tools.is_none() && p.agent_id.is_none());
    }

    #[test]
    fn variable_names_and_agent_ids() {
        assert!(is_variable_name("customer_name"));
        for bad in ["", "relay_x", "agent", "prompt", "tools", "a\nb"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
        assert!(is_agent_id("agent_1-A"));
        assert!(is_agent_id(&"a".repeat(64)));
        assert!(!is_agent_id(&"a".repeat(65)));
        assert!(!is_agent_id(""));
        assert!(!is_agent_id("a b"));
        assert!(!is_agent_id("a/b"));
        assert!(!is_agent_id("é"));
    }

    #[test]
    fn function_tools_are_flat_and_typed() {
        let t = function_tools(&serde_json::json!([
            {"name": "a", "description": "d", "parameters": {}},
            {"type": "function", "name": "b"},
            {"description": "no name"},
            7
        ]));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["type"], "function");
        assert_eq!(t[1]["name"], "b");
    }
}
