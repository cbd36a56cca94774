//! The agent leg: one dialect-neutral event and command vocabulary, and one sans-IO
//! translator per agent API.
//!
//! Owns [`AgentEvent`] (what an agent said, in neutral terms), [`Dialect`] (static dispatch
//! over the translators: [`elevenlabs`], [`assemblyai`], [`openai`]), the per-call session
//! parameters ([`CallParams`]), the dialect settings, and connecting ([`connect`]). The
//! built-in [`echo`] agent needs no socket and is driven by the call machine directly.
//!
//! Does not own the call (see `call`): the machine decides when to send what; a translator
//! only turns bytes into events and commands into bytes. Adding a dialect means one new file
//! here and one variant in [`AgentKind`] and [`Dialect`].

pub mod assemblyai;
pub mod connect;
pub mod echo;
pub mod elevenlabs;
pub mod openai;

use crate::auth::Secret;

/// Which agent a call talks to: the server default (`--agent`) or the call's `agent`
/// stream parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum AgentKind {
    /// ElevenLabs Conversational AI (Agents Platform) WebSocket.
    Elevenlabs,
    /// AssemblyAI Voice Agent API.
    Assemblyai,
    /// OpenAI Realtime API (GA).
    Openai,
    /// The built-in echo agent: plays the caller's audio back after a delay. No account needed.
    Echo,
}

impl AgentKind {
    /// Every kind, in label order (metrics create one series per kind at start).
    pub const ALL: [AgentKind; 4] = [
        AgentKind::Elevenlabs,
        AgentKind::Assemblyai,
        AgentKind::Openai,
        AgentKind::Echo,
    ];

    /// Name used in logs, the `agent` parameter and the `agent` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Elevenlabs => "elevenlabs",
            AgentKind::Assemblyai => "assemblyai",
            AgentKind::Openai => "openai",
            AgentKind::Echo => "echo",
        }
    }

    /// Parses a name as given in the `agent` parameter (exact, lower case).
    pub fn from_name(name: &str) -> Option<AgentKind> {
        AgentKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
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
    /// Any other message type: tolerated and counted.
    Other {
        /// The `type` value.
        kind: &'a str,
    },
}

/// Why an agent frame could not be decoded; [`DecodeError::kind`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not valid JSON; carries the parser's message.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The object has no `type` field (and is not a tolerated type-less shape).
    #[error("message has no \"type\" field")]
    MissingType,
    /// A known message lacks a field the relay needs.
    #[error("message is missing {0}")]
    MissingField(&'static str),
}

impl DecodeError {
    /// Stable snake_case name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::MissingType => "missing_type",
            DecodeError::MissingField(_) => "missing_field",
        }
    }
}

/// Per-call session parameters, from the stream's `customParameters` (set by `/twiml` from
/// configuration, or by `/outbound-call`). Names starting with `relay_`, and `agent`, are
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
}

/// Parameter names that carry agent settings rather than variables.
pub const SETTING_PARAMETERS: [&str; 5] =
    ["prompt", "first_message", "language", "voice_id", "tools"];

impl CallParams {
    /// Sorts a stream's custom parameters into settings and variables.
    pub fn from_custom_parameters(params: &[(String, String)]) -> CallParams {
        let mut p = CallParams::default();
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
                _ if k.starts_with("relay_") => {}
                _ => p.variables.push((k.clone(), v.clone())),
            }
        }
        p
    }
}

/// True for an ElevenLabs agent id the relay accepts in a parameter: `[A-Za-z0-9_-]{1,64}`.
pub fn is_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Which caller-speech signal makes the AssemblyAI dialect clear Twilio's playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BargeInTrigger {
    /// `reply.done{status:"interrupted"}` or `transcript.agent{interrupted:true}`: the
    /// agent's own verdict; back-channels ("uh-huh") do not cut the reply.
    ReplyInterrupted,
    /// `input.speech.started`: faster, but may cut the reply on a back-channel.
    SpeechStarted,
}

/// AssemblyAI Voice Agent settings.
#[derive(Debug, Clone)]
pub struct AssemblyAiSettings {
    /// `Authorization: Bearer` key.
    pub api_key: Secret,
    /// WebSocket URL, default `wss://agents.assemblyai.com/v1/ws`.
    pub url: String,
    /// Default voice (`output.voice`) when the call sets none; `None` = the service default.
    pub voice: Option<String>,
    /// Barge-in trigger.
    pub barge_in: BargeInTrigger,
}

/// OpenAI Realtime settings.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// `Authorization: Bearer` key.
    pub api_key: Secret,
    /// WebSocket URL including `?model=`.
    pub url: String,
    /// Default voice when the call sets none.
    pub voice: String,
}

/// Everything the dialects need from configuration.
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    /// ElevenLabs, when configured.
    pub elevenlabs: Option<connect::ElevenLabsSettings>,
    /// AssemblyAI, when configured.
    pub assemblyai: Option<AssemblyAiSettings>,
    /// OpenAI, when configured.
    pub openai: Option<OpenAiSettings>,
    /// Tool definitions offered to AssemblyAI and OpenAI agents (a JSON array of
    /// `{name, description, parameters}`); ElevenLabs client tools are defined on the agent.
    pub tools: serde_json::Value,
}

impl AgentSettings {
    /// Whether calls can use `kind` (echo always can).
    pub fn is_configured(&self, kind: AgentKind) -> bool {
        match kind {
            AgentKind::Elevenlabs => self.elevenlabs.is_some(),
            AgentKind::Assemblyai => self.assemblyai.is_some(),
            AgentKind::Openai => self.openai.is_some(),
            AgentKind::Echo => true,
        }
    }
}

/// The translator of one call's agent session: static dispatch, no `dyn` on the frame path.
/// Created when the call knows its agent and parameters; lives as long as the agent leg.
#[derive(Debug)]
pub enum Dialect {
    /// ElevenLabs Conversational AI.
    Elevenlabs(elevenlabs::Session),
    /// AssemblyAI Voice Agent.
    Assemblyai(assemblyai::Session),
    /// OpenAI Realtime.
    Openai(openai::Session),
}

/// A tool result for the agent: `Ok(result JSON)` or `Err(error message)`.
pub type ToolOutput = Result<serde_json::Value, String>;

impl Dialect {
    /// The translator for `kind` (not `Echo`, which has none) with this call's parameters;
    /// `None` when `kind` is echo or not configured.
    pub fn new(kind: AgentKind, settings: &AgentSettings, params: CallParams) -> Option<Dialect> {
        Some(match kind {
            AgentKind::Elevenlabs => {
                settings.elevenlabs.as_ref()?;
                Dialect::Elevenlabs(elevenlabs::Session::new(params))
            }
            AgentKind::Assemblyai => Dialect::Assemblyai(assemblyai::Session::new(
                settings.assemblyai.as_ref()?,
                settings,
                params,
            )),
            AgentKind::Openai => Dialect::Openai(openai::Session::new(
                settings.openai.as_ref()?,
                settings,
                params,
            )),
            AgentKind::Echo => return None,
        })
    }

    /// Which API this is.
    pub fn kind(&self) -> AgentKind {
        match self {
            Dialect::Elevenlabs(_) => AgentKind::Elevenlabs,
            Dialect::Assemblyai(_) => AgentKind::Assemblyai,
            Dialect::Openai(_) => AgentKind::Openai,
        }
    }

    /// Decodes one text frame in place (simd-json; `scratch` is reused parser state).
    ///
    /// # Errors
    /// [`DecodeError`] for frames that are not the dialect's JSON; unknown types are
    /// [`AgentEvent::Other`], not errors.
    #[inline]
    pub fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        match self {
            Dialect::Elevenlabs(s) => s.decode(frame, scratch),
            Dialect::Assemblyai(s) => s.decode(frame, scratch),
            Dialect::Openai(s) => s.decode(frame, scratch),
        }
    }

    /// The messages that open the session, in order (one per call of `index` = 0, 1, …;
    /// `false` when there are no more): ElevenLabs `conversation_initiation_client_data`,
    /// AssemblyAI `session.update` (μ-law both ways, locked fields in the first update),
    /// OpenAI `session.update` (`audio/pcmu`) and, with a greeting, `response.create`.
    pub fn encode_session_init(&self, index: usize, out: &mut Vec<u8>) -> bool {
        match self {
            Dialect::Elevenlabs(s) => index == 0 && s.encode_session_init(out),
            Dialect::Assemblyai(s) => index == 0 && s.encode_session_init(out),
            Dialect::Openai(s) => s.encode_session_init(index, out),
        }
    }

    /// Caller audio (raw μ-law) as the dialect's input-audio message.
    #[inline]
    pub fn encode_audio(&self, audio: &[u8], out: &mut Vec<u8>) {
        match self {
            Dialect::Elevenlabs(_) => elevenlabs::encode_user_audio(audio, out),
            Dialect::Assemblyai(_) => assemblyai::encode_input_audio(audio, out),
            Dialect::Openai(_) => openai::encode_append(audio, out),
        }
    }

    /// The answer to an application-level ping (ElevenLabs only has them).
    pub fn encode_pong(&self, id: u64, out: &mut Vec<u8>) {
        elevenlabs::encode_pong(id, out);
    }

    /// A tool result in the dialect's shape; `part` 0, 1, … for multi-message results
    /// (OpenAI: the `function_call_output` item, then `response.create`). `false` when done.
    pub fn encode_tool_result(
        &self,
        part: usize,
        call_id: &str,
        output: &ToolOutput,
        out: &mut Vec<u8>,
    ) -> bool {
        match self {
            Dialect::Elevenlabs(_) => {
                part == 0 && {
                    elevenlabs::encode_tool_result(call_id, output, out);
                    true
                }
            }
            Dialect::Assemblyai(_) => {
                part == 0 && {
                    assemblyai::encode_tool_result(call_id, output, out);
                    true
                }
            }
            Dialect::Openai(_) => openai::encode_tool_result(part, call_id, output, out),
        }
    }

    /// Keypad digits the caller entered, as the dialect's natural input (see the README's
    /// DTMF table); `part` as in [`Dialect::encode_tool_result`].
    pub fn encode_dtmf(&self, part: usize, digits: &str, out: &mut Vec<u8>) -> bool {
        match self {
            Dialect::Elevenlabs(_) => {
                part == 0 && {
                    elevenlabs::encode_dtmf(digits, out);
                    true
                }
            }
            Dialect::Assemblyai(_) => {
                part == 0 && {
                    assemblyai::encode_dtmf(digits, out);
                    true
                }
            }
            Dialect::Openai(_) => openai::encode_dtmf(part, digits, out),
        }
    }

    /// Whether the agent's speech-start event cuts the current reply (clear Twilio, drop its
    /// audio). ElevenLabs sends its own `interruption`; AssemblyAI per configuration; OpenAI
    /// always (the server cancels the response on speech start, `interrupt_response`).
    pub fn clears_on_speech_started(&self) -> bool {
        match self {
            Dialect::Elevenlabs(_) => false,
            Dialect::Assemblyai(s) => s.barge_in() == BargeInTrigger::SpeechStarted,
            Dialect::Openai(_) => true,
        }
    }

    /// Whether [`AgentEvent::Interrupted`] events count as the barge-in signal (false for
    /// AssemblyAI configured to clear on speech start: the later verdict is then only a
    /// filter update).
    pub fn clears_on_interrupted(&self) -> bool {
        match self {
            Dialect::Assemblyai(s) => s.barge_in() == BargeInTrigger::ReplyInterrupted,
            _ => true,
        }
    }

    /// The reply audio is currently being attributed to (for barge-in bookkeeping).
    pub fn current_reply(&self) -> ReplyKey {
        match self {
            Dialect::Elevenlabs(s) => s.current_reply(),
            Dialect::Assemblyai(s) => s.current_reply(),
            Dialect::Openai(s) => s.current_reply(),
        }
    }

    /// After a barge-in that cut reply `reply` when `played_ms` of it had played (never
    /// more than was sent): the command that tells the agent what the caller heard (OpenAI
    /// `conversation.item.truncate`), written to `out`; `false` for dialects without one.
    pub fn encode_barge_in(&self, reply: ReplyKey, played_ms: u64, out: &mut Vec<u8>) -> bool {
        match self {
            Dialect::Openai(s) => s.encode_truncate(reply, played_ms, out),
            _ => false,
        }
    }

    /// AssemblyAI wants tool results only once `reply.done` is the latest event, and drops
    /// them after an interrupted reply (its tool-calling guide); the others take them at once.
    pub fn holds_tool_results_until_reply_done(&self) -> bool {
        matches!(self, Dialect::Assemblyai(_))
    }
}

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

/// The sentence every dialect receives for keypad digits (see the README's DTMF table).
pub fn dtmf_text(digits: &str) -> String {
    format!("The caller pressed {digits} on the phone keypad.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_labels_follow_agent_kinds() {
        for k in AgentKind::ALL {
            assert_eq!(crate::obs::metrics::AGENT_LABELS[k as usize], k.as_str());
        }
        assert_eq!(
            AgentKind::ALL.len(),
            crate::obs::metrics::AGENT_LABELS.len()
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
            assert_eq!(AgentKind::from_name(k.as_str()), Some(k));
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
}
