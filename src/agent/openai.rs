//! OpenAI Realtime API (GA) dialect: sans-IO decode of server events into [`AgentEvent`]s and
//! encode of client events, from OpenAI's Realtime API reference
//! (<https://platform.openai.com/docs/api-reference/realtime>) and its Twilio guide.
//!
//! Owns the wire shapes, `session.update` with `audio/pcmu` both ways, the greeting as a
//! `response.create`, function-call results (a `function_call_output` item, then
//! `response.create`), and `conversation.item.truncate` after a barge-in. The reply key is a
//! counter bumped for each new `item_id` in the audio deltas; the current item id is kept for
//! the truncate. Beta event names (`response.audio.delta`, `response.audio.done`) are accepted
//! too. Does not own when to send what (the call machine) or sockets.

use super::{
    AgentEvent, CallParams, ConnectError, ConnectSpec, DecodeError, Dialect, DialectInfo,
    ReplyKey, Seed, SettingsError, SharedSettings, Speaker, ToolOutput,
};
use crate::auth::Secret;
use crate::wire::json::{write_str, MaybeStr};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// OpenAI flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "openai_flags")]
pub struct Args {
    /// OpenAI API key (`Authorization: Bearer`).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,

    /// OpenAI Realtime WebSocket URL (the model is its `model` query parameter).
    #[arg(
        long,
        env = "OPENAI_REALTIME_URL",
        default_value = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )]
    pub openai_realtime_url: String,

    /// OpenAI Realtime model; replaces the URL's `model` parameter when set.
    #[arg(long, env = "OPENAI_REALTIME_MODEL")]
    pub openai_model: Option<String>,

    /// OpenAI voice when the call's `voice_id` parameter sets none.
    #[arg(long, env = "OPENAI_VOICE", default_value = "alloy")]
    pub openai_voice: String,

    /// Transcription model for the caller's speech (`audio.input.transcription`), so the
    /// relay keeps the conversation for re-seeding after a failure and the post-call record;
    /// empty turns it off.
    #[arg(
        long,
        env = "OPENAI_TRANSCRIPTION_MODEL",
        default_value = "gpt-4o-mini-transcribe"
    )]
    pub openai_transcription_model: String,

    /// Roll a call's session over to a new, re-seeded one (at a quiet moment) after this many
    /// seconds; a Realtime session lasts at most 60 minutes. 0 turns rollover off.
    #[arg(long, env = "OPENAI_ROLLOVER_SECS", default_value_t = 3_480)]
    pub openai_rollover_secs: u64,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// OpenAI Realtime settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `Authorization: Bearer` key.
    pub api_key: Secret,
    /// WebSocket URL including `?model=`.
    pub url: String,
    /// Default voice when the call sets none.
    pub voice: String,
    /// Caller transcription model (`None`: off).
    pub transcription_model: Option<String>,
    /// Roll over after this long (`None`: never).
    pub rollover: Option<std::time::Duration>,
}

/// `url` with query parameter `name` set to `value` (replaced if present).
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    pairs.push((name.to_owned(), value.to_owned()));
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base}?{q}")
}

impl Dialect for Session {
    type Args = Args;
    type Settings = Settings;
    const INFO: DialectInfo = DialectInfo {
        title: "OpenAI Realtime API (GA)",
        connects_to: "`wss://api.openai.com/v1/realtime?model=…` (`Authorization: Bearer`)",
        barge_in: "`input_audio_buffer.speech_started`, then `conversation.item.truncate` at the played position",
        tools: "`response.function_call_arguments.done` → `function_call_output` item + `response.create`",
        dtmf: "a user `input_text` item + `response.create`",
        setup: "set OPENAI_API_KEY",
    };

    fn settings(a: &Args) -> Result<Option<Settings>, SettingsError> {
        let Some(api_key) = super::nonempty(&a.openai_api_key) else {
            return Ok(None);
        };
        let mut url = super::check_ws_url(&a.openai_realtime_url, "OPENAI_REALTIME_URL")?;
        if let Some(model) = a.openai_model.as_deref().filter(|m| !m.is_empty()) {
            url = with_query_param(&url, "model", model);
        }
        Ok(Some(Settings {
            api_key,
            url,
            voice: a.openai_voice.clone(),
            transcription_model: Some(a.openai_transcription_model.trim().to_owned())
                .filter(|m| !m.is_empty()),
            rollover: (a.openai_rollover_secs > 0)
                .then(|| std::time::Duration::from_secs(a.openai_rollover_secs)),
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
        Session::encode_session_init(self, index, out)
    }

    #[inline]
    fn encode_audio(&self, audio: &[u8], out: &mut Vec<u8>) {
        encode_append(audio, out)
    }

    fn encode_tool_result(
        &self,
        part: usize,
        call_id: &str,
        output: &ToolOutput,
        followup: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        (part == 0 || followup) && encode_tool_result(part, call_id, output, out)
    }

    fn encode_dtmf(&self, part: usize, digits: &str, out: &mut Vec<u8>) -> bool {
        encode_dtmf(part, digits, out)
    }

    fn encode_barge_in(&self, reply: ReplyKey, played_ms: u64, out: &mut Vec<u8>) -> bool {
        self.encode_truncate(reply, played_ms, out)
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

    fn rollover_after(s: &Settings) -> Option<std::time::Duration> {
        s.rollover
    }

    /// The server cancels the response on speech start (`interrupt_response`).
    fn clears_on_speech_started(&self) -> bool {
        true
    }
}

/// The GA format type of G.711 μ-law.
pub const PCMU: &str = "audio/pcmu";

/// One call's OpenAI Realtime session.
#[derive(Debug)]
pub struct Session {
    /// `session.update`, then (with a greeting) `response.create`.
    init: Vec<Vec<u8>>,
    /// Reply key of the current audio item, and its `item_id`.
    reply: u64,
    item_id: String,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    item_id: Option<&'a str>,
    #[serde(borrow, default)]
    delta: Option<&'a str>,
    #[serde(borrow, default)]
    call_id: Option<&'a str>,
    #[serde(borrow, default)]
    name: Option<&'a str>,
    #[serde(default)]
    arguments: Option<simd_json::OwnedValue>,
    #[serde(borrow, default)]
    transcript: Option<&'a str>,
    #[serde(borrow, default)]
    session: Option<WireSession<'a>>,
    #[serde(borrow, default)]
    response: Option<WireResponse<'a>>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireSession<'a> {
    #[serde(borrow, default)]
    id: Option<&'a str>,
    #[serde(borrow, default)]
    audio: Option<WireAudio<'a>>,
}

#[derive(Deserialize)]
struct WireAudio<'a> {
    #[serde(borrow, default)]
    input: Option<WireDirection<'a>>,
    #[serde(borrow, default)]
    output: Option<WireDirection<'a>>,
}

#[derive(Deserialize)]
struct WireDirection<'a> {
    #[serde(borrow, default)]
    format: Option<WireFormat<'a>>,
}

#[derive(Deserialize)]
struct WireFormat<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: MaybeStr<'a>,
}

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow, default)]
    status: MaybeStr<'a>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: MaybeStr<'a>,
    #[serde(borrow, default)]
    code: MaybeStr<'a>,
    #[serde(borrow, default)]
    message: MaybeStr<'a>,
}

impl Session {
    /// A session for one call: `session.update` (`type: realtime`, audio output only,
    /// `audio/pcmu` in and out, server VAD, voice, instructions, tools) and, when the call
    /// has a greeting, `response.create` asking the model to say it.
    pub fn new(s: &Settings, shared: &SharedSettings, p: CallParams) -> Session {
        let mut session = Map::new();
        session.insert("type".into(), json!("realtime"));
        session.insert("output_modalities".into(), json!(["audio"]));
        let voice = p.voice.as_deref().unwrap_or(&s.voice);
        let mut input = json!({ "format": { "type": PCMU }, "turn_detection": { "type": "server_vad" } });
        if let Some(m) = &s.transcription_model {
            input["transcription"] = json!({ "model": m });
        }
        session.insert(
            "audio".into(),
            json!({
                "input": input,
                "output": { "format": { "type": PCMU }, "voice": voice },
            }),
        );
        if let Some(v) = p.instructions() {
            session.insert("instructions".into(), Value::String(v));
        }
        let tools = super::offered_tools(&p, shared);
        if !tools.is_empty() {
            session.insert("tools".into(), Value::Array(tools));
            session.insert("tool_choice".into(), json!("auto"));
        }
        let mut init =
            vec![
                serde_json::to_vec(&json!({ "type": "session.update", "session": session }))
                    .unwrap_or_default(),
            ];
        if let Some(greeting) = &p.first_message {
            init.push(
                serde_json::to_vec(&json!({
                    "type": "response.create",
                    "response": { "instructions": format!("Greet the caller by saying exactly: {greeting}") },
                }))
                .unwrap_or_default(),
            );
        }
        Session {
            init,
            reply: 0,
            item_id: String::new(),
        }
    }

    /// A replacement session: the same `session.update` without a greeting, then the
    /// finished conversation replayed with `conversation.item.create` (caller and agent text
    /// from their transcripts, tool calls with their outputs; audio items are never replayed)
    /// and a system item saying to continue without greeting again.
    pub fn recover(s: &Settings, shared: &SharedSettings, mut p: CallParams, seed: Seed) -> Session {
        p.first_message = None;
        p.transfer_failed = None;
        let mut session = Session::new(s, shared, p);
        let item = |item: Value| {
            serde_json::to_vec(&json!({ "type": "conversation.item.create", "item": item }))
                .unwrap_or_default()
        };
        for (i, t) in seed.history.iter().enumerate() {
            use super::history::Role;
            match (&t.tool, t.role) {
                (Some(tool), _) => {
                    let call_id = format!("relay_replay_{i}");
                    session.init.push(item(json!({
                        "type": "function_call", "call_id": call_id, "name": tool.name, "arguments": tool.arguments,
                    })));
                    session.init.push(item(json!({
                        "type": "function_call_output", "call_id": call_id, "output": tool.output,
                    })));
                }
                (None, Role::Caller) => session.init.push(item(json!({
                    "type": "message", "role": "user", "content": [{ "type": "input_text", "text": t.text }],
                }))),
                (None, Role::Agent) => session.init.push(item(json!({
                    "type": "message", "role": "assistant", "content": [{ "type": "output_text", "text": t.text }],
                }))),
            }
        }
        session.init.push(item(json!({
            "type": "message", "role": "system",
            "content": [{ "type": "input_text", "text": super::history::RESUME_NOTE }],
        })));
        session
    }

    /// The reply key of the current audio item.
    pub fn current_reply(&self) -> ReplyKey {
        ReplyKey(self.reply)
    }

    /// Session-opening message number `index`.
    pub fn encode_session_init(&self, index: usize, out: &mut Vec<u8>) -> bool {
        match self.init.get(index) {
            Some(m) => {
                out.clear();
                out.extend_from_slice(m);
                true
            }
            None => false,
        }
    }

    /// `conversation.item.truncate` for reply `reply` at `audio_end_ms` (only for the current
    /// item: earlier items finished playing).
    pub fn encode_truncate(&self, reply: ReplyKey, audio_end_ms: u64, out: &mut Vec<u8>) -> bool {
        if reply.0 != self.reply || self.item_id.is_empty() {
            return false;
        }
        out.clear();
        out.extend_from_slice(b"{\"type\":\"conversation.item.truncate\",\"item_id\":");
        write_str(out, &self.item_id);
        out.extend_from_slice(b",\"content_index\":0,\"audio_end_ms\":");
        out.extend_from_slice(audio_end_ms.to_string().as_bytes());
        out.push(b'}');
        true
    }

    /// Decodes one server event in place.
    ///
    /// # Errors
    /// [`DecodeError::MalformedJson`], [`DecodeError::MissingType`],
    /// [`DecodeError::MissingField`] (an audio delta without `delta`, a function call without
    /// `call_id`).
    pub fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        let w: Wire<'a> = simd_json::serde::from_slice_with_buffers(frame, scratch)
            .map_err(DecodeError::MalformedJson)?;
        let kind = w.kind.ok_or(DecodeError::MissingType)?;
        Ok(match kind {
            "response.output_audio.delta" | "response.audio.delta" => {
                let payload_b64 = w.delta.ok_or(DecodeError::MissingField(
                    "response.output_audio.delta.delta",
                ))?;
                let item = w.item_id.unwrap_or("");
                if self.reply == 0 || item != self.item_id {
                    self.reply += 1;
                    self.item_id.clear();
                    self.item_id.push_str(item);
                }
                AgentEvent::Audio {
                    reply: ReplyKey(self.reply),
                    payload_b64,
                }
            }
            "response.output_audio.done" | "response.audio.done" => AgentEvent::AudioDone,
            "input_audio_buffer.speech_started" => AgentEvent::SpeechStarted,
            "input_audio_buffer.speech_stopped" => AgentEvent::SpeechStopped,
            "session.updated" => {
                let fmt = |d: Option<&WireDirection<'a>>| {
                    d.and_then(|d| d.format.as_ref()).and_then(|f| f.kind.0)
                };
                let audio = w.session.as_ref().and_then(|s| s.audio.as_ref());
                let input = fmt(audio.and_then(|a| a.input.as_ref()));
                let output = fmt(audio.and_then(|a| a.output.as_ref()));
                // Absent formats are tolerated (the update asked for μ-law); present ones must be.
                let ok = |f: Option<&str>| f.is_none_or(|f| f == PCMU);
                AgentEvent::Ready {
                    session_id: w.session.as_ref().and_then(|s| s.id),
                    formats_ok: ok(input) && ok(output),
                    input_format: input,
                    output_format: output,
                }
            }
            "response.created" => AgentEvent::ReplyStarted,
            "response.done" => AgentEvent::ReplyDone {
                interrupted: w.response.as_ref().and_then(|r| r.status.0) == Some("cancelled"),
            },
            "response.function_call_arguments.done" => AgentEvent::ToolCall {
                id: w.call_id.ok_or(DecodeError::MissingField(
                    "response.function_call_arguments.done.call_id",
                ))?,
                name: w.name.unwrap_or(""),
                arguments: super::json_object(w.arguments),
            },
            "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
                AgentEvent::Transcript {
                    speaker: Speaker::Agent,
                    text: w.transcript.unwrap_or(""),
                }
            }
            "conversation.item.input_audio_transcription.completed" => AgentEvent::Transcript {
                speaker: Speaker::Caller,
                text: w.transcript.unwrap_or(""),
            },
            "error" => {
                let e = w.error.as_ref();
                AgentEvent::Error {
                    code: e.and_then(|e| e.code.0.or(e.kind.0)),
                    numeric_code: None,
                    message: e.and_then(|e| e.message.0),
                    // The session stays open; a fatal problem closes the socket.
                    fatal: false,
                }
            }
            other => AgentEvent::Other { kind: other },
        })
    }
}

/// `{"type":"input_audio_buffer.append","audio":"<base64>"}` into `out` (cleared).
#[inline]
pub fn encode_append(audio: &[u8], out: &mut Vec<u8>) {
    crate::wire::b64::message(
        b"{\"type\":\"input_audio_buffer.append\",\"audio\":\"",
        audio,
        b"\"}",
        out,
    );
}

/// `{"type":"response.create"}`.
fn encode_response_create(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(br#"{"type":"response.create"}"#);
}

/// Part 0: the `function_call_output` item (`output` is a string: the result's JSON text, or
/// `{"error": message}`); part 1: `response.create` so the model answers with it.
pub fn encode_tool_result(
    part: usize,
    call_id: &str,
    output: &ToolOutput,
    out: &mut Vec<u8>,
) -> bool {
    match part {
        0 => {
            let text = match output {
                Ok(v) => super::result_text(v),
                Err(e) => json!({ "error": e }).to_string(),
            };
            out.clear();
            let _ = serde_json::to_writer(
                &mut *out,
                &json!({
                    "type": "conversation.item.create",
                    "item": { "type": "function_call_output", "call_id": call_id, "output": text },
                }),
            );
            true
        }
        1 => {
            encode_response_create(out);
            true
        }
        _ => false,
    }
}

/// Part 0: the keypad entry as a user text item; part 1: `response.create`.
pub fn encode_dtmf(part: usize, digits: &str, out: &mut Vec<u8>) -> bool {
    match part {
        0 => {
            out.clear();
            let _ = serde_json::to_writer(
                &mut *out,
                &json!({
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{ "type": "input_text", "text": super::dtmf_text(digits) }],
                    },
                }),
            );
            true
        }
        1 => {
            encode_response_create(out);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn settings() -> Settings {
        Settings {
            api_key: Secret::new("k"),
            url: "wss://api.openai.com/v1/realtime?model=gpt-realtime".into(),
            voice: "alloy".into(),
            transcription_model: None,
            rollover: None,
        }
    }

    fn dec(s: &mut Session, json: &str) -> Result<String, DecodeError> {
        let mut b = json.as_bytes().to_vec();
        let mut sc = simd_json::Buffers::default();
        s.decode(&mut b, &mut sc).map(|e| format!("{e:?}"))
    }

    fn session() -> Session {
        Session::new(
            &settings(),
            &SharedSettings::default(),
            CallParams::default(),
        )
    }

    #[test]
    fn session_update_asks_for_pcmu_both_ways_and_greets() {
        let agents = SharedSettings {
            tools: json!([{"name":"lookup_order","description":"d","parameters":{"type":"object"}}]),
            ..SharedSettings::default()
        };
        let p = CallParams {
            prompt: Some("Be brief.".into()),
            first_message: Some("Hi, Acme here.".into()),
            voice: Some("marin".into()),
            ..CallParams::default()
        };
        let s = Session::new(&settings(), &agents, p);
        let mut out = Vec::new();
        assert!(s.encode_session_init(0, &mut out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "session.update");
        let ss = &v["session"];
        assert_eq!(ss["type"], "realtime");
        assert_eq!(ss["audio"]["input"]["format"]["type"], "audio/pcmu");
        assert_eq!(ss["audio"]["output"]["format"]["type"], "audio/pcmu");
        assert_eq!(ss["audio"]["output"]["voice"], "marin");
        assert_eq!(ss["instructions"], "Be brief.");
        assert_eq!(ss["tools"][0]["type"], "function");
        assert_eq!(ss["tools"][0]["name"], "lookup_order");
        assert!(s.encode_session_init(1, &mut out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "response.create");
        assert!(v["response"]["instructions"]
            .as_str()
            .unwrap()
            .contains("Hi, Acme here."));
        assert!(!s.encode_session_init(2, &mut out));
        // Without a greeting there is only the update.
        assert!(!session().encode_session_init(1, &mut out));
    }

    #[test]
    fn decodes_the_documented_events_and_keys_replies_by_item() {
        let mut s = session();
        assert_eq!(
            dec(&mut s, r#"{"type":"session.updated","session":{"id":"sess_1","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"},"voice":"alloy"}}}}"#).unwrap(),
            r#"Ready { session_id: Some("sess_1"), formats_ok: true, input_format: Some("audio/pcmu"), output_format: Some("audio/pcmu") }"#
        );
        assert!(dec(&mut s, r#"{"type":"session.updated","session":{"audio":{"output":{"format":{"type":"audio/pcm","rate":24000}}}}}"#)
            .unwrap()
            .contains("formats_ok: false"));
        assert_eq!(
            dec(&mut s, r#"{ "type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1", "item_id": "item_a", "output_index": 0, "content_index": 0, "delta": "//7+" }"#).unwrap(),
            r#"Audio { reply: ReplyKey(1), payload_b64: "//7+" }"#
        );
        assert!(dec(
            &mut s,
            r#"{"type":"response.output_audio.delta","item_id":"item_a","delta":"AA=="}"#
        )
        .unwrap()
        .contains("ReplyKey(1)"));
        // A new item is a new reply; the beta name works too.
        assert!(dec(
            &mut s,
            r#"{"type":"response.audio.delta","item_id":"item_b","delta":"AA=="}"#
        )
        .unwrap()
        .contains("ReplyKey(2)"));
        assert_eq!(s.current_reply(), ReplyKey(2));
        assert_eq!(
            dec(&mut s, r#"{ "type": "input_audio_buffer.speech_started", "event_id": "event_2", "audio_start_ms": 12840, "item_id": "item_user_1" }"#).unwrap(),
            "SpeechStarted"
        );
        assert_eq!(
            dec(
                &mut s,
                r#"{"type":"response.output_audio.done","item_id":"item_b"}"#
            )
            .unwrap(),
            "AudioDone"
        );
        assert_eq!(
            dec(
                &mut s,
                r#"{"type":"response.done","response":{"status":"cancelled"}}"#
            )
            .unwrap(),
            "ReplyDone { interrupted: true }"
        );
        assert_eq!(
            dec(&mut s, r#"{"type":"response.function_call_arguments.done","call_id":"call_1","name":"lookup_order","arguments":"{\"order\":\"42\"}","item_id":"i","response_id":"r","output_index":0}"#).unwrap(),
            r#"ToolCall { id: "call_1", name: "lookup_order", arguments: Ok(Object {"order": String("42")}) }"#
        );
        assert_eq!(
            dec(&mut s, r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value","message":"bad","param":null,"event_id":null}}"#).unwrap(),
            r#"Error { code: Some("invalid_value"), numeric_code: None, message: Some("bad"), fatal: false }"#
        );
        // A numeric or null code does not make the event undecodable.
        assert!(dec(
            &mut s,
            r#"{"type":"error","error":{"type":"server_error","code":null}}"#
        )
        .unwrap()
        .contains("server_error"));
        assert_eq!(
            dec(&mut s, r#"{"type":"rate_limits.updated","rate_limits":[]}"#).unwrap(),
            r#"Other { kind: "rate_limits.updated" }"#
        );
    }

    #[test]
    fn truncate_names_the_current_item() {
        let mut s = session();
        let mut out = Vec::new();
        assert!(!s.encode_truncate(ReplyKey(1), 100, &mut out));
        dec(
            &mut s,
            r#"{"type":"response.output_audio.delta","item_id":"item_asst_1","delta":"AA=="}"#,
        )
        .unwrap();
        assert!(s.encode_truncate(ReplyKey(1), 1340, &mut out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"type":"conversation.item.truncate","item_id":"item_asst_1","content_index":0,"audio_end_ms":1340})
        );
        assert!(!s.encode_truncate(ReplyKey(0), 1, &mut out));
    }

    #[test]
    fn encodes_tool_results_and_dtmf_as_two_messages() {
        let mut out = Vec::new();
        encode_append(&[0xff], &mut out);
        assert_eq!(
            out,
            br#"{"type":"input_audio_buffer.append","audio":"/w=="}"#
        );
        assert!(encode_tool_result(
            0,
            "call_1",
            &Ok(json!({"status":"shipped"})),
            &mut out
        ));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"call_1","output":"{\"status\":\"shipped\"}"}})
        );
        assert!(encode_tool_result(1, "call_1", &Ok(json!(1)), &mut out));
        assert_eq!(out, br#"{"type":"response.create"}"#);
        assert!(!encode_tool_result(2, "call_1", &Ok(json!(1)), &mut out));
        assert!(encode_dtmf(0, "5", &mut out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["item"]["content"][0]["text"],
            "The caller pressed 5 on the phone keypad."
        );
        assert!(encode_dtmf(1, "5", &mut out));
        assert!(!encode_dtmf(2, "5", &mut out));
    }
}
