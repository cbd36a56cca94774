//! AssemblyAI Voice Agent API dialect: sans-IO decode of server events into [`AgentEvent`]s
//! and encode of client events, from AssemblyAI's Voice Agent API documentation
//! (<https://www.assemblyai.com/docs/voice-agents/voice-agent-api>: events reference, message
//! sequence, audio format, tool calling, turn detection and interruptions).
//!
//! Owns the wire shapes and three tolerant paths the documentation leaves open: error events
//! that carry no `type` field at all, tool calls whose arguments are in `arguments` or in
//! `args`, and `reply.audio` that arrives without a `reply.started` before it. The reply key
//! is a counter bumped per reply (`reply.audio` carries no reply id). Does not own when to
//! send what (the call machine) or sockets.

use super::{
    AgentEvent, CallParams, ConnectError, ConnectSpec, DecodeError, Dialect, DialectInfo,
    ReplyKey, Seed, SettingsError, SharedSettings, Speaker, ToolOutput,
};
use crate::auth::Secret;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Which caller-speech signal makes the AssemblyAI dialect clear the caller's playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BargeInTrigger {
    /// `reply.done{status:"interrupted"}` or `transcript.agent{interrupted:true}`: the
    /// agent's own verdict; back-channels ("uh-huh") do not cut the reply.
    #[default]
    ReplyInterrupted,
    /// `input.speech.started`: faster, but may cut the reply on a back-channel.
    SpeechStarted,
}

/// AssemblyAI flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "assemblyai_flags")]
pub struct Args {
    /// AssemblyAI Voice Agent API key (`Authorization: Bearer`).
    #[arg(long, env = "ASSEMBLYAI_API_KEY", hide_env_values = true)]
    pub assemblyai_api_key: Option<Secret>,

    /// AssemblyAI Voice Agent WebSocket URL.
    #[arg(
        long,
        env = "ASSEMBLYAI_URL",
        default_value = "wss://agents.assemblyai.com/v1/ws"
    )]
    pub assemblyai_url: String,

    /// AssemblyAI voice when the call's `voice_id` parameter sets none (service default:
    /// `ivy`).
    #[arg(long, env = "ASSEMBLYAI_VOICE")]
    pub assemblyai_voice: Option<String>,

    /// Which AssemblyAI signal clears the caller's playback: `reply-interrupted` (the
    /// agent's verdict; back-channels do not cut) or `speech-started` (faster, may cut on
    /// "uh-huh").
    #[arg(
        long,
        env = "ASSEMBLYAI_BARGE_IN",
        value_enum,
        default_value = "reply-interrupted"
    )]
    pub assemblyai_barge_in: BargeInTrigger,

    /// Roll a call's session over to a new one (resumed, at a quiet moment) after this many
    /// seconds; AssemblyAI ends sessions at `max_session_duration_seconds` (default 3 h) with no
    /// warning. 0 turns rollover off.
    #[arg(long, env = "ASSEMBLYAI_ROLLOVER_SECS", default_value_t = 10_620)]
    pub assemblyai_rollover_secs: u64,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// AssemblyAI Voice Agent settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `Authorization: Bearer` key.
    pub api_key: Secret,
    /// WebSocket URL, default `wss://agents.assemblyai.com/v1/ws`.
    pub url: String,
    /// Default voice (`output.voice`) when the call sets none; `None` = the service default.
    pub voice: Option<String>,
    /// Barge-in trigger.
    pub barge_in: BargeInTrigger,
    /// Roll over after this long (`None`: never).
    pub rollover: Option<std::time::Duration>,
}

impl Dialect for Session {
    type Args = Args;
    type Settings = Settings;
    const INFO: DialectInfo = DialectInfo {
        title: "AssemblyAI Voice Agent API",
        connects_to: "`wss://agents.assemblyai.com/v1/ws` (`Authorization: Bearer`)",
        barge_in: "`reply.done{status:\"interrupted\"}` / `transcript.agent{interrupted:true}` (or `input.speech.started` with `--assemblyai-barge-in speech-started`)",
        tools: "`tool.call` → `tool.result` (held until `reply.done`)",
        dtmf: "`reply.create` with the digits as instructions",
        setup: "set ASSEMBLYAI_API_KEY",
    };

    fn settings(a: &Args) -> Result<Option<Settings>, SettingsError> {
        let Some(api_key) = super::nonempty(&a.assemblyai_api_key) else {
            return Ok(None);
        };
        Ok(Some(Settings {
            api_key,
            url: super::check_ws_url(&a.assemblyai_url, "ASSEMBLYAI_URL")?,
            voice: a.assemblyai_voice.clone().filter(|v| !v.is_empty()),
            barge_in: a.assemblyai_barge_in,
            rollover: (a.assemblyai_rollover_secs > 0)
                .then(|| std::time::Duration::from_secs(a.assemblyai_rollover_secs)),
        }))
    }

    fn connect(s: &Settings, _: &CallParams) -> Result<Option<ConnectSpec>, ConnectError> {
        Ok(Some(ConnectSpec {
            url: s.url.clone(),
            headers: vec![(
                "authorization",
                Secret::new(format!("Bearer {}", s.api_key.expose())),
            )],
            fetch_url: None,
        }))
    }

    fn new(s: &Settings, shared: &SharedSettings, p: CallParams) -> Session {
        Session::new(s, shared, p)
    }

    #[inline]
    fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        Session::decode(self, frame, scratch)
    }

    fn encode_session_init(&self, index: usize, out: &mut Vec<u8>) -> bool {
        index == 0 && Session::encode_session_init(self, out)
    }

    #[inline]
    fn encode_audio(&self, audio: &[u8], out: &mut Vec<u8>) {
        encode_input_audio(audio, out)
    }

    fn encode_tool_result(
        &self,
        part: usize,
        call_id: &str,
        output: &ToolOutput,
        _followup: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        part == 0 && {
            encode_tool_result(call_id, output, out);
            true
        }
    }

    fn encode_dtmf(&self, part: usize, digits: &str, out: &mut Vec<u8>) -> bool {
        part == 0 && {
            encode_dtmf(digits, out);
            true
        }
    }

    fn current_reply(&self) -> ReplyKey {
        Session::current_reply(self)
    }

    fn offers_relay_tools(&self) -> bool {
        true
    }

    fn recover(s: &Settings, shared: &SharedSettings, p: CallParams, seed: Seed) -> Session {
        Session::recover(s, shared, p, seed)
    }

    fn resume_id(&self) -> Option<String> {
        self.session_id.clone()
    }

    fn rollover_after(s: &Settings) -> Option<std::time::Duration> {
        s.rollover
    }

    fn clears_on_speech_started(&self) -> bool {
        self.barge_in == BargeInTrigger::SpeechStarted
    }

    /// With `speech-started` as the trigger, the later verdict is only a filter update.
    fn clears_on_interrupted(&self) -> bool {
        self.barge_in == BargeInTrigger::ReplyInterrupted
    }

    /// AssemblyAI wants tool results only once `reply.done` is the latest event, and drops
    /// them after an interrupted reply (its tool-calling guide).
    fn holds_tool_results_until_reply_done(&self) -> bool {
        true
    }
}

/// The encoding name of G.711 μ-law in AssemblyAI's `format` objects.
pub const PCMU: &str = "audio/pcmu";

/// `session.error` codes after which the session is over (AssemblyAI's error list: auth,
/// internal errors, capacity, resume failures, the duration cap, agent start-up). Any other
/// code (`invalid_format`, `invalid_audio`, `invalid_value`, `immutable_field`,
/// `invalid_config`, or one not yet documented) leaves the session open.
pub const FATAL_ERROR_CODES: [&str; 9] = [
    "UNAUTHORIZED",
    "FORBIDDEN",
    "INTERNAL_ERROR",
    "server_error",
    "session_not_found",
    "session_forbidden",
    "session_expired",
    "agent_init_failed",
    "agent_timeout",
];

/// One call's AssemblyAI session.
#[derive(Debug)]
pub struct Session {
    /// The first `session.update`, built once.
    init: Vec<u8>,
    barge_in: BargeInTrigger,
    /// Reply counter (the reply key) and whether a reply is open.
    reply: u64,
    reply_open: bool,
    /// The last reply ended interrupted: audio before the next `reply.started` is its stale
    /// tail, not a new reply.
    last_interrupted: bool,
    /// The session's id (from `session.ready`), for `session.resume` on a new socket.
    session_id: Option<String>,
    /// This socket resumes that session (`session.resume` is its first message).
    resuming: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    session_id: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a str>,
    #[serde(borrow, default)]
    text: Option<&'a str>,
    #[serde(borrow, default)]
    status: Option<&'a str>,
    #[serde(default)]
    interrupted: Option<bool>,
    #[serde(borrow, default)]
    call_id: Option<&'a str>,
    #[serde(borrow, default)]
    name: Option<&'a str>,
    #[serde(default)]
    arguments: Option<simd_json::OwnedValue>,
    #[serde(default)]
    args: Option<simd_json::OwnedValue>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a str>,
    #[serde(borrow, default)]
    error: Option<&'a str>,
}

impl Session {
    /// A session for one call: the first `session.update` carries μ-law 8 kHz both ways plus
    /// the call's prompt, greeting, voice and tools (locked after the first update).
    pub fn new(s: &Settings, shared: &SharedSettings, p: CallParams) -> Session {
        let fmt = json!({ "encoding": PCMU, "sample_rate": 8000 });
        let mut session = Map::new();
        if let Some(v) = p.instructions() {
            session.insert("system_prompt".into(), Value::String(v));
        }
        if let Some(v) = &p.first_message {
            session.insert("greeting".into(), Value::String(v.clone()));
        }
        let tools = super::offered_tools(&p, shared);
        if !tools.is_empty() {
            session.insert("tools".into(), Value::Array(tools));
        }
        session.insert("input".into(), json!({ "format": fmt }));
        let mut output = Map::new();
        if let Some(v) = p.voice.as_ref().or(s.voice.as_ref()) {
            output.insert("voice".into(), Value::String(v.clone()));
        }
        output.insert("format".into(), fmt);
        session.insert("output".into(), Value::Object(output));
        let init = serde_json::to_vec(&json!({ "type": "session.update", "session": session }))
            .unwrap_or_default();
        Session {
            init,
            barge_in: s.barge_in,
            reply: 0,
            reply_open: false,
            last_interrupted: false,
            session_id: None,
            resuming: false,
        }
    }

    /// A replacement session: `session.resume` of `seed.resume_id` when there is one
    /// (AssemblyAI keeps a dropped session 30 s); otherwise a fresh session whose system
    /// prompt carries the conversation so far, without a greeting (the API has no way to
    /// seed conversation items).
    pub fn recover(s: &Settings, shared: &SharedSettings, mut p: CallParams, seed: Seed) -> Session {
        if let Some(id) = seed.resume_id {
            let mut session = Session::new(s, shared, p);
            session.init = serde_json::to_vec(&json!({ "type": "session.resume", "session_id": id }))
                .unwrap_or_default();
            session.session_id = Some(id);
            session.resuming = true;
            return session;
        }
        p.first_message = None;
        let mut prompt = p.instructions().unwrap_or_default();
        if !prompt.is_empty() {
            prompt.push_str("\n\n");
        }
        prompt.push_str(super::history::RESUME_NOTE);
        if !seed.history.is_empty() {
            prompt.push_str("\n\nThe conversation so far:\n");
            prompt.push_str(&super::history::as_text(&seed.history));
        }
        p.prompt = Some(prompt);
        p.transfer_failed = None;
        Session::new(s, shared, p)
    }

    /// The configured barge-in trigger.
    pub fn barge_in(&self) -> BargeInTrigger {
        self.barge_in
    }

    /// The reply audio is attributed to.
    pub fn current_reply(&self) -> ReplyKey {
        ReplyKey(self.reply)
    }

    /// The first `session.update`.
    pub fn encode_session_init(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.extend_from_slice(&self.init);
        true
    }

    /// Decodes one server event in place.
    ///
    /// # Errors
    /// [`DecodeError::MalformedJson`], [`DecodeError::MissingType`] (no `type` and not an
    /// error shape), [`DecodeError::MissingField`] (`reply.audio` without `data`, `tool.call`
    /// without `call_id`).
    pub fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        let w: Wire<'a> = simd_json::serde::from_slice_with_buffers(frame, scratch)
            .map_err(DecodeError::MalformedJson)?;
        let Some(kind) = w.kind else {
            // Tolerated: error events without a `type` field.
            if w.code.is_some() || w.error.is_some() {
                return Ok(error_event(w.code.or(w.error), w.message));
            }
            return Err(DecodeError::MissingType);
        };
        Ok(match kind {
            "reply.audio" => {
                let payload_b64 = w
                    .data
                    .ok_or(DecodeError::MissingField("reply.audio.data"))?;
                if !self.reply_open && !self.last_interrupted {
                    // Audio without `reply.started`: a reply of its own (unless it trails an
                    // interrupted reply, whose key it keeps so the machine drops it).
                    self.reply += 1;
                    self.reply_open = true;
                }
                AgentEvent::Audio {
                    reply: ReplyKey(self.reply),
                    payload_b64,
                }
            }
            "session.ready" => {
                if let Some(id) = w.session_id {
                    if self.session_id.as_deref() != Some(id) {
                        self.session_id = Some(id.to_owned());
                    }
                }
                self.resuming = false;
                AgentEvent::Ready {
                session_id: w.session_id,
                // The formats were set in the first update and cannot change afterwards.
                formats_ok: true,
                input_format: Some(PCMU),
                output_format: Some(PCMU),
            }
            }
            "session.error" | "error"
                if self.resuming
                    && matches!(w.code.or(w.error), Some("session_not_found" | "session_forbidden")) =>
            {
                self.resuming = false;
                self.session_id = None;
                AgentEvent::ResumeRefused
            }
            "input.speech.started" => AgentEvent::SpeechStarted,
            "input.speech.stopped" => AgentEvent::SpeechStopped,
            "reply.started" => {
                self.reply += 1;
                self.reply_open = true;
                self.last_interrupted = false;
                AgentEvent::ReplyStarted
            }
            "reply.done" => {
                // A missing status counts as completed.
                let interrupted = w.status == Some("interrupted");
                self.reply_open = false;
                self.last_interrupted = interrupted;
                AgentEvent::ReplyDone { interrupted }
            }
            "transcript.agent" if w.interrupted == Some(true) => AgentEvent::Interrupted {
                through: Some(ReplyKey(self.reply)),
            },
            "transcript.agent" => AgentEvent::Transcript {
                speaker: Speaker::Agent,
                text: w.text.unwrap_or(""),
            },
            "transcript.user" => AgentEvent::Transcript {
                speaker: Speaker::Caller,
                text: w.text.unwrap_or(""),
            },
            "tool.call" => AgentEvent::ToolCall {
                id: w
                    .call_id
                    .ok_or(DecodeError::MissingField("tool.call.call_id"))?,
                name: w.name.unwrap_or(""),
                arguments: super::json_object(w.arguments.or(w.args)),
            },
            "session.error" | "error" => error_event(w.code.or(w.error), w.message),
            "session.ended" => AgentEvent::Ended,
            other => AgentEvent::Other { kind: other },
        })
    }
}

fn error_event<'a>(code: Option<&'a str>, message: Option<&'a str>) -> AgentEvent<'a> {
    AgentEvent::Error {
        code,
        numeric_code: None,
        message,
        fatal: code.is_some_and(|c| FATAL_ERROR_CODES.contains(&c)),
    }
}

/// `{"type":"input.audio","audio":"<base64>"}` into `out` (cleared).
#[inline]
pub fn encode_input_audio(audio: &[u8], out: &mut Vec<u8>) {
    crate::wire::b64::message(b"{\"type\":\"input.audio\",\"audio\":\"", audio, b"\"}", out);
}

/// `{"type":"tool.result","call_id":…,"result":"<string>"}`: a failure is a result too (the
/// API has no error flag), as `{"error": message}` text.
pub fn encode_tool_result(call_id: &str, output: &ToolOutput, out: &mut Vec<u8>) {
    let result = match output {
        Ok(v) => super::result_text(v),
        Err(e) => json!({ "error": e }).to_string(),
    };
    out.clear();
    let _ = serde_json::to_writer(
        &mut *out,
        &json!({ "type": "tool.result", "call_id": call_id, "result": result }),
    );
}

/// DTMF as `reply.create` with the keypad entry as instructions (the API has no keypad
/// input; a reply is what the caller expects after pressing keys).
pub fn encode_dtmf(digits: &str, out: &mut Vec<u8>) {
    out.clear();
    let _ = serde_json::to_writer(
        &mut *out,
        &json!({ "type": "reply.create", "instructions": super::dtmf_text(digits) }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn settings(barge_in: BargeInTrigger) -> Settings {
        Settings {
            api_key: Secret::new("k"),
            url: "wss://agents.assemblyai.com/v1/ws".into(),
            voice: Some("ivy".into()),
            barge_in,
            rollover: None,
        }
    }

    fn session() -> Session {
        Session::new(
            &settings(BargeInTrigger::ReplyInterrupted),
            &SharedSettings::default(),
            CallParams::default(),
        )
    }

    fn dec(s: &mut Session, json: &str) -> Result<String, DecodeError> {
        let mut b = json.as_bytes().to_vec();
        let mut sc = simd_json::Buffers::default();
        s.decode(&mut b, &mut sc).map(|e| format!("{e:?}"))
    }

    #[test]
    fn first_update_carries_pcmu_both_ways_and_the_call_settings() {
        let agents = SharedSettings {
            tools: json!([{"name":"lookup_order","description":"d","parameters":{"type":"object"}}]),
            ..SharedSettings::default()
        };
        let p = CallParams {
            prompt: Some("Be brief.".into()),
            first_message: Some("Hi! How can I help?".into()),
            ..CallParams::default()
        };
        let s = Session::new(&settings(BargeInTrigger::ReplyInterrupted), &agents, p);
        let mut out = Vec::new();
        assert!(s.encode_session_init(&mut out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "session.update");
        let s = &v["session"];
        assert_eq!(s["system_prompt"], "Be brief.");
        assert_eq!(s["greeting"], "Hi! How can I help?");
        for dir in ["input", "output"] {
            assert_eq!(s[dir]["format"]["encoding"], "audio/pcmu");
            assert_eq!(s[dir]["format"]["sample_rate"], 8000);
        }
        assert_eq!(s["output"]["voice"], "ivy");
        assert_eq!(
            s["tools"],
            json!([{"type":"function","name":"lookup_order","description":"d","parameters":{"type":"object"}}])
        );
    }

    #[test]
    fn decodes_the_documented_events() {
        let mut s = session();
        assert_eq!(
            dec(
                &mut s,
                r#"{ "type": "session.ready", "session_id": "sess_abc123" }"#
            )
            .unwrap(),
            r#"Ready { session_id: Some("sess_abc123"), formats_ok: true, input_format: Some("audio/pcmu"), output_format: Some("audio/pcmu") }"#
        );
        assert_eq!(
            dec(&mut s, r#"{"type":"input.speech.started"}"#).unwrap(),
            "SpeechStarted"
        );
        assert_eq!(
            dec(&mut s, r#"{"type":"input.speech.stopped"}"#).unwrap(),
            "SpeechStopped"
        );
        assert_eq!(
            dec(&mut s, r#"{ "type": "transcript.user", "text": "What's the weather in Tokyo?", "item_id": "item_abc123" }"#).unwrap(),
            r#"Transcript { speaker: Caller, text: "What's the weather in Tokyo?" }"#
        );
        assert_eq!(
            dec(
                &mut s,
                r#"{ "type": "reply.started", "reply_id": "reply_abc123" }"#
            )
            .unwrap(),
            "ReplyStarted"
        );
        assert_eq!(
            dec(&mut s, r#"{ "type": "reply.audio", "data": "//7+" }"#).unwrap(),
            r#"Audio { reply: ReplyKey(1), payload_b64: "//7+" }"#
        );
        assert_eq!(
            dec(&mut s, r#"{ "type": "transcript.agent", "text": "It's 22°C and sunny.", "reply_id": "reply_abc123", "item_id": "item_abc123", "interrupted": false }"#).unwrap(),
            r#"Transcript { speaker: Agent, text: "It's 22°C and sunny." }"#
        );
        assert_eq!(
            dec(&mut s, r#"{ "type": "reply.done", "status": "completed" }"#).unwrap(),
            "ReplyDone { interrupted: false }"
        );
        assert_eq!(
            dec(&mut s, r#"{ "type": "tool.call", "call_id": "call_abc123", "name": "get_weather", "arguments": { "location": "Tokyo" } }"#).unwrap(),
            r#"ToolCall { id: "call_abc123", name: "get_weather", arguments: Ok(Object {"location": String("Tokyo")}) }"#
        );
        assert_eq!(
            dec(&mut s, r#"{ "type": "session.ended" }"#).unwrap(),
            "Ended"
        );
        assert_eq!(
            dec(&mut s, r#"{"type":"session.updated"}"#).unwrap(),
            r#"Other { kind: "session.updated" }"#
        );
    }

    #[test]
    fn barge_in_signals_and_reply_keys() {
        let mut s = session();
        dec(&mut s, r#"{"type":"reply.started","reply_id":"r1"}"#).unwrap();
        assert_eq!(s.current_reply(), ReplyKey(1));
        assert_eq!(
            dec(
                &mut s,
                r#"{"type":"transcript.agent","text":"It's","interrupted":true}"#
            )
            .unwrap(),
            "Interrupted { through: Some(ReplyKey(1)) }"
        );
        // Late audio of the cut reply keeps its key (the machine drops it).
        assert!(dec(&mut s, r#"{"type":"reply.audio","data":"AA=="}"#)
            .unwrap()
            .contains("ReplyKey(1)"));
        assert_eq!(
            dec(&mut s, r#"{"type":"reply.done","status":"interrupted"}"#).unwrap(),
            "ReplyDone { interrupted: true }"
        );
        // Audio trailing the interrupted reply keeps its key (stale), until a new reply.
        assert!(dec(&mut s, r#"{"type":"reply.audio","data":"AA=="}"#)
            .unwrap()
            .contains("ReplyKey(1)"));
        // A missing status counts as completed.
        assert_eq!(
            dec(&mut s, r#"{"type":"reply.done"}"#).unwrap(),
            "ReplyDone { interrupted: false }"
        );
        // Audio with no reply.started before it opens a reply of its own.
        assert!(dec(&mut s, r#"{"type":"reply.audio","data":"AA=="}"#)
            .unwrap()
            .contains("ReplyKey(2)"));
        let speech = Session::new(
            &settings(BargeInTrigger::SpeechStarted),
            &SharedSettings::default(),
            CallParams::default(),
        );
        assert_eq!(speech.barge_in(), BargeInTrigger::SpeechStarted);
    }

    #[test]
    fn tolerant_paths() {
        let mut s = session();
        // Tool arguments under `args` (the official Twilio example reads this name).
        assert_eq!(
            dec(
                &mut s,
                r#"{"type":"tool.call","call_id":"c1","name":"end_call","args":{"reason":"done"}}"#
            )
            .unwrap(),
            r#"ToolCall { id: "c1", name: "end_call", arguments: Ok(Object {"reason": String("done")}) }"#
        );
        // An error event with no type field at all.
        assert_eq!(
            dec(&mut s, r#"{"code":"UNAUTHORIZED","message":"bad key"}"#).unwrap(),
            r#"Error { code: Some("UNAUTHORIZED"), numeric_code: None, message: Some("bad key"), fatal: true }"#
        );
        assert_eq!(
            dec(&mut s, r#"{"error":"session_expired"}"#).unwrap(),
            r#"Error { code: Some("session_expired"), numeric_code: None, message: None, fatal: true }"#
        );
        // Non-fatal codes leave the session open; unknown codes too.
        for code in [
            "invalid_format",
            "invalid_audio",
            "invalid_value",
            "immutable_field",
            "invalid_config",
            "something_new",
        ] {
            let e = dec(
                &mut s,
                &format!(r#"{{"type":"session.error","code":"{code}","message":"m"}}"#),
            )
            .unwrap();
            assert!(e.ends_with("fatal: false }"), "{e}");
        }
        for code in FATAL_ERROR_CODES {
            let e = dec(
                &mut s,
                &format!(r#"{{"type":"session.error","code":"{code}"}}"#),
            )
            .unwrap();
            assert!(e.ends_with("fatal: true }"), "{e}");
        }
        assert_eq!(
            dec(&mut s, r#"{"no":"type"}"#).unwrap_err().kind().as_str(),
            "missing_type"
        );
        assert_eq!(
            dec(&mut s, r#"{"type":"reply.audio"}"#).unwrap_err().kind().as_str(),
            "missing_field"
        );
    }

    #[test]
    fn encodes_client_events() {
        let mut out = Vec::new();
        encode_input_audio(&[0xff, 0x7f], &mut out);
        assert_eq!(out, br#"{"type":"input.audio","audio":"/38="}"#);
        encode_tool_result("call_1", &Ok(json!({"temp_c": 22})), &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"type":"tool.result","call_id":"call_1","result":"{\"temp_c\":22}"})
        );
        encode_tool_result("call_2", &Err("tool webhook timed out".into()), &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"], r#"{"error":"tool webhook timed out"}"#);
        encode_dtmf("7", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "reply.create");
        assert_eq!(
            v["instructions"],
            "The caller pressed 7 on the phone keypad."
        );
    }
}
