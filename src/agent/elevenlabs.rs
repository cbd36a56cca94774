//! ElevenLabs Conversational AI WebSocket dialect: sans-IO decode of server messages into
//! [`AgentEvent`]s and encode of the client messages. Wire shapes from the ElevenLabs Agents
//! Platform WebSocket API reference
//! (<https://elevenlabs.io/docs/agents-platform/api-reference/agents-platform/websocket>).
//!
//! Owns: its flags, the wire shapes, the custom-parameter → `conversation_initiation_client_data`
//! mapping, the connect plan (the public conversation URL, or a signed URL fetched first for
//! private agents: "get signed URL",
//! <https://elevenlabs.io/docs/agents-platform/api-reference/conversations/get-signed-url>),
//! and tolerant handling of uncertain items (a legacy `audio.chunk` shape, an
//! `interruption_event` without `event_id`, unknown types). The reply key is the audio
//! `event_id` itself. Does not own: the I/O of connecting (`call::connect`), the interruption
//! filter (see `call`), or sockets.

use super::{
    AgentEvent, CallParams, ConnectError, ConnectSpec, DecodeError, Dialect, DialectInfo,
    ReplyKey, Seed, SettingsError, SharedSettings, Speaker, ToolOutput, UrlFetch,
};
use crate::auth::Secret;
use crate::wire::json::LenientU64;
use crate::wire::net::NetError;
use serde::Deserialize;

/// ElevenLabs flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "elevenlabs_flags")]
pub struct Args {
    /// ElevenLabs API key: when set, each call fetches a signed URL (private agents).
    #[arg(long, env = "ELEVENLABS_API_KEY", hide_env_values = true)]
    pub elevenlabs_api_key: Option<Secret>,

    /// ElevenLabs agent id.
    #[arg(long, env = "ELEVENLABS_AGENT_ID")]
    pub elevenlabs_agent_id: Option<String>,

    /// ElevenLabs REST origin; the WebSocket origin follows from it (https → wss).
    #[arg(
        long,
        env = "ELEVENLABS_API_BASE",
        default_value = "https://api.elevenlabs.io"
    )]
    pub elevenlabs_api_base: String,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// ElevenLabs settings, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// API key: when set the relay fetches a signed URL (private agents); `Debug` redacts it.
    pub api_key: Option<Secret>,
    /// The agent id.
    pub agent_id: String,
    /// REST origin, e.g. `https://api.elevenlabs.io`; the WebSocket origin follows from it
    /// (`https` → `wss`, `http` → `ws`).
    pub api_base: String,
}

/// Derives the public conversation URL from the REST origin:
/// `{ws(s) origin}/v1/convai/conversation?agent_id={id}`.
///
/// # Errors
/// [`NetError::InvalidUrl`] for an origin that is not `http(s)://host[:port]`.
pub fn public_conversation_url(api_base: &str, agent_id: &str) -> Result<String, NetError> {
    let base = api_base.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return Err(NetError::InvalidUrl(format!(
            "ELEVENLABS_API_BASE must start with http:// or https://: {base}"
        )));
    };
    Ok(format!(
        "{ws_base}/v1/convai/conversation?agent_id={}",
        encode_query(agent_id)
    ))
}

fn encode_query(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Reads `signed_url` out of a "get signed URL" answer; `None` unless it is a `ws(s)://` URL.
/// The URL is treated as opaque.
pub fn parse_signed_url(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct SignedUrl {
        signed_url: String,
    }
    let parsed: SignedUrl = serde_json::from_slice(body).ok()?;
    (parsed.signed_url.starts_with("wss://") || parsed.signed_url.starts_with("ws://"))
        .then_some(parsed.signed_url)
}

impl Dialect for Session {
    type Args = Args;
    type Settings = Settings;
    const INFO: DialectInfo = DialectInfo {
        title: "ElevenLabs Conversational AI",
        connects_to: "`wss://api.elevenlabs.io/v1/convai/conversation` (signed URL with an API key)",
        barge_in: "`interruption` (audio with `event_id` ≤ its id is dropped)",
        tools: "`client_tool_call` → `client_tool_result`",
        dtmf: "`user_message`",
        setup: "set ELEVENLABS_AGENT_ID",
    };

    fn settings(a: &Args) -> Result<Option<Settings>, SettingsError> {
        let Some(agent_id) = a
            .elevenlabs_agent_id
            .clone()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(None);
        };
        public_conversation_url(&a.elevenlabs_api_base, &agent_id)
            .map_err(|e| SettingsError(e.to_string()))?;
        Ok(Some(Settings {
            api_key: super::nonempty(&a.elevenlabs_api_key),
            agent_id,
            api_base: a.elevenlabs_api_base.clone(),
        }))
    }

    /// The public conversation URL, or (with an API key) a signed URL fetched first:
    /// `GET {base}/v1/convai/conversation/get-signed-url?agent_id=` with `xi-api-key`. A
    /// per-call agent id replaces the configured one.
    fn connect(s: &Settings, params: &CallParams) -> Result<Option<ConnectSpec>, ConnectError> {
        let agent_id = params.agent_id.as_deref().unwrap_or(&s.agent_id);
        let url = public_conversation_url(&s.api_base, agent_id)?;
        let fetch_url = s.api_key.clone().map(|key| UrlFetch {
            url: format!(
                "{}/v1/convai/conversation/get-signed-url?agent_id={}",
                s.api_base.trim_end_matches('/'),
                encode_query(agent_id)
            ),
            headers: vec![("xi-api-key", key)],
            parse: parse_signed_url,
        });
        Ok(Some(ConnectSpec {
            url,
            headers: Vec::new(),
            fetch_url,
        }))
    }

    fn new(_: &Settings, _: &SharedSettings, params: CallParams) -> Session {
        Session::new(params)
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
        match (index, &self.context) {
            (0, _) => {
                encode_initiation(&self.params, out);
                true
            }
            (1, Some(text)) => {
                out.clear();
                let _ = serde_json::to_writer(
                    &mut *out,
                    &serde_json::json!({ "type": "contextual_update", "text": text }),
                );
                true
            }
            _ => false,
        }
    }

    fn recover(_: &Settings, _: &SharedSettings, params: CallParams, seed: Seed) -> Session {
        Session::recover(params, seed)
    }

    #[inline]
    fn encode_audio(&self, audio: &[u8], out: &mut Vec<u8>) {
        encode_user_audio(audio, out)
    }

    fn encode_pong(&self, id: u64, out: &mut Vec<u8>) -> bool {
        encode_pong(id, out);
        true
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

    /// ElevenLabs sends audio in large events: nothing to coalesce.
    fn coalesces_small_deltas(&self) -> bool {
        false
    }

    /// ElevenLabs has no speech-stopped event: its final caller transcript ends the caller's
    /// turn.
    fn transcript_ends_turn(&self) -> bool {
        true
    }

    fn close_code_meaning(&self, code: u16) -> &'static str {
        close_code_meaning(code)
    }

    /// ElevenLabs closes with 1000 when the agent ended the conversation (its `end_call`
    /// system tool, or the maximum duration): hang up after the goodbye.
    fn close_is_end_signal(&self, code: Option<u16>) -> bool {
        code == Some(1000)
    }
}

/// Audio format name that means "G.711 μ-law 8 kHz" in ElevenLabs' metadata.
pub const ULAW_8000: &str = "ulaw_8000";

/// One call's ElevenLabs session: its parameters and the newest audio `event_id` seen.
#[derive(Debug)]
pub struct Session {
    params: CallParams,
    max_event_id: u64,
    /// A replacement conversation's `contextual_update` (the conversation so far).
    context: Option<String>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    audio_event: Option<WireAudio<'a>>,
    /// Legacy shape (older ElevenLabs Twilio guide): `{"type":"audio","audio":{"chunk":…}}`.
    #[serde(borrow, default)]
    audio: Option<WireLegacyAudio<'a>>,
    #[serde(default)]
    interruption_event: Option<WireEventId>,
    #[serde(default)]
    ping_event: Option<WirePing>,
    #[serde(borrow, default)]
    conversation_initiation_metadata_event: Option<WireMetadata<'a>>,
    #[serde(borrow, default)]
    agent_response_event: Option<WireAgentResponse<'a>>,
    #[serde(borrow, default)]
    user_transcription_event: Option<WireUserTranscript<'a>>,
    #[serde(borrow, default)]
    client_tool_call: Option<WireToolCall<'a>>,
    #[serde(borrow, default)]
    error_event: Option<WireError<'a>>,
    #[serde(borrow, default)]
    agent_tool_response: Option<WireToolResponse<'a>>,
}

/// `agent_tool_response` (its AsyncAPI `AgentToolResponseData`): every field tolerated missing.
#[derive(Deserialize)]
struct WireToolResponse<'a> {
    #[serde(borrow, default)]
    tool_name: Option<&'a str>,
    #[serde(borrow, default)]
    tool_type: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireAudio<'a> {
    #[serde(borrow, default)]
    audio_base_64: Option<&'a str>,
    #[serde(default)]
    event_id: LenientU64,
}

#[derive(Deserialize)]
struct WireLegacyAudio<'a> {
    #[serde(borrow, default)]
    chunk: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireEventId {
    #[serde(default)]
    event_id: LenientU64,
}

#[derive(Deserialize)]
struct WireMetadata<'a> {
    #[serde(borrow, default)]
    conversation_id: Option<&'a str>,
    #[serde(borrow, default)]
    agent_output_audio_format: Option<&'a str>,
    #[serde(borrow, default)]
    user_input_audio_format: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireAgentResponse<'a> {
    #[serde(borrow, default)]
    agent_response: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireUserTranscript<'a> {
    #[serde(borrow, default)]
    user_transcript: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireToolCall<'a> {
    #[serde(borrow, default)]
    tool_name: Option<&'a str>,
    #[serde(borrow, default)]
    tool_call_id: Option<&'a str>,
    #[serde(default)]
    parameters: Option<simd_json::OwnedValue>,
}

#[derive(Deserialize)]
struct WirePing {
    #[serde(default)]
    event_id: LenientU64,
    #[serde(default)]
    ping_ms: LenientU64,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(default)]
    code: LenientU64,
    #[serde(borrow, default)]
    message: Option<&'a str>,
    #[serde(borrow, default)]
    error_type: Option<&'a str>,
}

impl Session {
    /// A session for a call with these parameters.
    pub fn new(params: CallParams) -> Session {
        Session {
            params,
            max_event_id: 0,
            context: None,
        }
    }

    /// A replacement conversation: the call's overrides and dynamic variables with
    /// `first_message` set to an empty string (ElevenLabs: "if empty, agent waits for user
    /// to start", so no second greeting), then a `contextual_update` with the conversation
    /// so far and a note that the line was briefly interrupted.
    pub fn recover(mut params: CallParams, seed: Seed) -> Session {
        params.first_message = Some(String::new());
        let mut context = super::history::RESUME_NOTE.to_owned();
        if !seed.history.is_empty() {
            context.push_str("\n\nThe conversation so far:\n");
            context.push_str(&super::history::as_text(&seed.history));
        }
        let mut s = Session::new(params);
        s.context = Some(context);
        s
    }

    /// The newest audio `event_id` seen (what an interruption without an id cuts).
    pub fn current_reply(&self) -> ReplyKey {
        ReplyKey(self.max_event_id)
    }

    /// Decodes one server text frame in place (borrowing and scratch reuse as in the Twilio
    /// codec).
    ///
    /// # Errors
    /// [`DecodeError::MalformedJson`] for invalid JSON, [`DecodeError::MissingType`] when
    /// there is no `type`, [`DecodeError::MissingField`] when `audio` has no payload or `ping`
    /// has no `event_id`. Unknown types decode to [`AgentEvent::Other`].
    pub fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<AgentEvent<'a>, DecodeError> {
        let w: Wire<'a> = simd_json::serde::from_slice_with_buffers(frame, scratch)
            .map_err(DecodeError::MalformedJson)?;
        let kind = w.kind.ok_or(DecodeError::MissingType)?;
        Ok(match kind {
            "audio" => {
                let (payload, event_id) = match (w.audio_event, w.audio) {
                    (Some(a), _) if a.audio_base_64.is_some() => (a.audio_base_64, a.event_id.0),
                    (_, Some(l)) => (l.chunk, None),
                    (a, None) => (None, a.and_then(|a| a.event_id.0)),
                };
                let payload_b64 =
                    payload.ok_or(DecodeError::MissingField("audio_event.audio_base_64"))?;
                // Audio without an id belongs to the newest reply.
                let id = event_id.unwrap_or(self.max_event_id);
                self.max_event_id = self.max_event_id.max(id);
                AgentEvent::Audio {
                    reply: ReplyKey(id),
                    payload_b64,
                }
            }
            "interruption" => AgentEvent::Interrupted {
                through: w
                    .interruption_event
                    .and_then(|e| e.event_id.0)
                    .map(ReplyKey),
            },
            "ping" => {
                let p = w
                    .ping_event
                    .ok_or(DecodeError::MissingField("ping_event.event_id"))?;
                AgentEvent::Ping {
                    id: p
                        .event_id
                        .0
                        .ok_or(DecodeError::MissingField("ping_event.event_id"))?,
                    rtt_ms: p.ping_ms.0,
                }
            }
            "conversation_initiation_metadata" => {
                let m =
                    w.conversation_initiation_metadata_event
                        .ok_or(DecodeError::MissingField(
                            "conversation_initiation_metadata_event",
                        ))?;
                let ok = |f: Option<&str>| f == Some(ULAW_8000);
                AgentEvent::Ready {
                    session_id: m.conversation_id,
                    formats_ok: ok(m.user_input_audio_format) && ok(m.agent_output_audio_format),
                    input_format: m.user_input_audio_format,
                    output_format: m.agent_output_audio_format,
                }
            }
            "agent_response" => AgentEvent::Transcript {
                speaker: Speaker::Agent,
                text: w
                    .agent_response_event
                    .and_then(|e| e.agent_response)
                    .unwrap_or(""),
            },
            "user_transcript" => AgentEvent::Transcript {
                speaker: Speaker::Caller,
                text: w
                    .user_transcription_event
                    .and_then(|e| e.user_transcript)
                    .unwrap_or(""),
            },
            "client_tool_call" => {
                let t = w
                    .client_tool_call
                    .ok_or(DecodeError::MissingField("client_tool_call"))?;
                AgentEvent::ToolCall {
                    id: t
                        .tool_call_id
                        .ok_or(DecodeError::MissingField("client_tool_call.tool_call_id"))?,
                    name: t.tool_name.unwrap_or(""),
                    arguments: super::json_object(t.parameters),
                }
            }
            "agent_response_complete" => AgentEvent::ReplyDone { interrupted: false },
            // Only sent when the agent's client events include it (UNCERTAIN whether
            // `transfer_to_number` is reported on a non-native WebSocket); a missing
            // `tool_type` counts as a system tool.
            "agent_tool_response" => match w.agent_tool_response {
                Some(t) if t.tool_type.is_none_or(|ty| ty == "system") => AgentEvent::SystemTool {
                    name: t.tool_name.unwrap_or(""),
                },
                _ => AgentEvent::Other { kind },
            },
            "error" => {
                let e = w.error_event;
                AgentEvent::Error {
                    code: e.as_ref().and_then(|e| e.error_type),
                    numeric_code: e.as_ref().and_then(|e| e.code.0),
                    message: e.as_ref().and_then(|e| e.message),
                    // The close frame that follows ends the call.
                    fatal: false,
                }
            }
            other => AgentEvent::Other { kind: other },
        })
    }

}

/// Writes `{"user_audio_chunk":"<base64>"}` into `out` (cleared).
#[inline]
pub fn encode_user_audio(audio: &[u8], out: &mut Vec<u8>) {
    crate::wire::b64::message(b"{\"user_audio_chunk\":\"", audio, b"\"}", out);
}

/// Writes `{"type":"pong","event_id":N}` into `out` (cleared).
pub fn encode_pong(event_id: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"type\":\"pong\",\"event_id\":{event_id}}}");
}

/// Builds `conversation_initiation_client_data` from a call's parameters: `prompt` (with the
/// relay's notes, [`CallParams::instructions`]) → `agent.prompt.prompt`, `first_message` → `agent.first_message`, `language` →
/// `agent.language`, `voice_id` → `tts.voice_id` under `conversation_config_override`; every
/// variable becomes a string dynamic variable (the relay's own `relay_*` parameters and
/// `agent` never reach here, see [`CallParams::from_custom_parameters`]).
pub fn encode_initiation(p: &CallParams, out: &mut Vec<u8>) {
    use serde_json::{json, Map, Value};
    let mut agent = Map::new();
    let mut tts = Map::new();
    // A prompt override only when the call sets a prompt (else the agent's own prompt
    // stays); it then carries the relay's notes too (voicemail, a failed transfer).
    if p.prompt.is_some() {
        if let Some(v) = p.instructions() {
            agent.insert("prompt".into(), json!({ "prompt": v }));
        }
    }
    if let Some(v) = &p.first_message {
        agent.insert("first_message".into(), Value::String(v.clone()));
    }
    if let Some(v) = &p.language {
        agent.insert("language".into(), Value::String(v.clone()));
    }
    if let Some(v) = &p.voice {
        tts.insert("voice_id".into(), Value::String(v.clone()));
    }
    let vars: Map<String, Value> = p
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut msg = Map::new();
    msg.insert(
        "type".into(),
        Value::String("conversation_initiation_client_data".into()),
    );
    let mut ovr = Map::new();
    if !agent.is_empty() {
        ovr.insert("agent".into(), Value::Object(agent));
    }
    if !tts.is_empty() {
        ovr.insert("tts".into(), Value::Object(tts));
    }
    if !ovr.is_empty() {
        msg.insert("conversation_config_override".into(), Value::Object(ovr));
    }
    msg.insert("dynamic_variables".into(), Value::Object(vars));
    msg.insert(
        "source_info".into(),
        json!({ "source": "media-relay", "version": env!("CARGO_PKG_VERSION") }),
    );
    out.clear();
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &Value::Object(msg));
}

/// `{"type":"client_tool_result","tool_call_id":…,"result":"…","is_error":…}`: `result` is a
/// string (the JSON text of a non-string result; the error message on failure).
pub fn encode_tool_result(call_id: &str, output: &ToolOutput, out: &mut Vec<u8>) {
    let (result, is_error) = match output {
        Ok(v) => (super::result_text(v), false),
        Err(e) => (e.clone(), true),
    };
    out.clear();
    let _ = serde_json::to_writer(
        &mut *out,
        &serde_json::json!({
            "type": "client_tool_result",
            "tool_call_id": call_id,
            "result": result,
            "is_error": is_error,
        }),
    );
}

/// DTMF as a `user_message` (the caller's keypad entry is their turn; ElevenLabs has no
/// keypad input message): `{"type":"user_message","text":"<DTMF_TEXT>"}`.
pub fn encode_dtmf(digits: &str, out: &mut Vec<u8>) {
    out.clear();
    let _ = serde_json::to_writer(
        &mut *out,
        &serde_json::json!({ "type": "user_message", "text": super::dtmf_text(digits) }),
    );
}

/// Meaning of an ElevenLabs close code, for log lines.
pub fn close_code_meaning(code: u16) -> &'static str {
    match code {
        1000 => "normal: agent ended the conversation or max duration reached",
        1002 => "operational: timeout, safety, or LLM/TTS/ASR failure",
        1008 => "input or contract: invalid message, auth, overrides, missing dynamic variables",
        1011 => "internal server error",
        _ => "unlisted close code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<String, DecodeError> {
        let mut b = s.as_bytes().to_vec();
        let mut sc = simd_json::Buffers::default();
        Session::new(CallParams::default())
            .decode(&mut b, &mut sc)
            .map(|e| format!("{e:?}"))
    }

    #[test]
    fn decodes_the_documented_samples() {
        // Examples from the ElevenLabs WebSocket API reference.
        assert_eq!(
            dec(r#"{ "type": "conversation_initiation_metadata",
  "conversation_initiation_metadata_event": {
    "conversation_id": "conv_01jx", "agent_output_audio_format": "ulaw_8000", "user_input_audio_format": "ulaw_8000" } }"#)
            .unwrap(),
            r#"Ready { session_id: Some("conv_01jx"), formats_ok: true, input_format: Some("ulaw_8000"), output_format: Some("ulaw_8000") }"#
        );
        assert!(dec(r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"agent_output_audio_format":"pcm_16000","user_input_audio_format":"ulaw_8000"}}"#)
            .unwrap()
            .contains("formats_ok: false"));
        assert_eq!(
            dec(r#"{ "type": "audio", "audio_event": { "audio_base_64": "//7+/n5+", "event_id": 7 } }"#).unwrap(),
            r#"Audio { reply: ReplyKey(7), payload_b64: "//7+/n5+" }"#
        );
        assert_eq!(
            dec(r#"{ "type": "interruption", "interruption_event": { "event_id": 8 } }"#).unwrap(),
            "Interrupted { through: Some(ReplyKey(8)) }"
        );
        assert_eq!(
            dec(r#"{ "type": "ping", "ping_event": { "event_id": 12345, "ping_ms": 50 } }"#)
                .unwrap(),
            "Ping { id: 12345, rtt_ms: Some(50) }"
        );
        assert_eq!(
            dec(r#"{ "type": "user_transcript", "user_transcription_event": { "user_transcript": "I need help", "event_id": 6 } }"#).unwrap(),
            r#"Transcript { speaker: Caller, text: "I need help" }"#
        );
        assert_eq!(
            dec(r#"{ "type": "agent_response", "agent_response_event": { "agent_response": "Sure, what's your order number?", "event_id": 7 } }"#).unwrap(),
            r#"Transcript { speaker: Agent, text: "Sure, what's your order number?" }"#
        );
        assert_eq!(
            dec(r#"{ "type": "client_tool_call", "client_tool_call": { "tool_name": "lookup_order", "tool_call_id": "toolu_1", "parameters": {"order":"42"}, "event_id": 9 } }"#).unwrap(),
            r#"ToolCall { id: "toolu_1", name: "lookup_order", arguments: Ok(Object {"order": String("42")}) }"#
        );
        assert_eq!(
            dec(r#"{ "type": "error", "error_event": { "code": 1008, "message": "bad", "error_type": "override_error", "reason": "x", "debug_message": null, "details": null } }"#).unwrap(),
            r#"Error { code: Some("override_error"), numeric_code: Some(1008), message: Some("bad"), fatal: false }"#
        );
        assert_eq!(
            dec(r#"{ "type": "vad_score", "vad_score_event": { "vad_score": 0.93 } }"#).unwrap(),
            r#"Other { kind: "vad_score" }"#
        );
    }

    #[test]
    fn tolerant_paths_for_uncertain_items() {
        // Legacy audio shape from an older ElevenLabs Twilio guide: no id, newest reply.
        let mut s = Session::new(CallParams::default());
        let mut sc = simd_json::Buffers::default();
        let mut b =
            br#"{"type":"audio","audio_event":{"audio_base_64":"AAAA","event_id":4}}"#.to_vec();
        s.decode(&mut b, &mut sc).unwrap();
        let mut b = br#"{"type":"audio","audio":{"chunk":"AAAA"}}"#.to_vec();
        assert_eq!(
            format!("{:?}", s.decode(&mut b, &mut sc).unwrap()),
            r#"Audio { reply: ReplyKey(4), payload_b64: "AAAA" }"#
        );
        assert_eq!(s.current_reply(), ReplyKey(4));
        // An interruption carrying `reason` instead of `event_id` (one docs snippet).
        assert_eq!(
            dec(r#"{"type":"interruption","interruption_event":{"reason":"user spoke"}}"#).unwrap(),
            "Interrupted { through: None }"
        );
        // event_id as a string.
        assert_eq!(
            dec(r#"{"type":"ping","ping_event":{"event_id":"3"}}"#).unwrap(),
            "Ping { id: 3, rtt_ms: None }"
        );
        // Tool arguments that are not an object are reported, not fatal.
        assert!(dec(r#"{"type":"client_tool_call","client_tool_call":{"tool_call_id":"t","parameters":[1]}}"#)
            .unwrap()
            .contains("Err(\"arguments are not a JSON object\")"));
    }

    #[test]
    fn derives_public_url() {
        assert_eq!(
            public_conversation_url("https://api.elevenlabs.io/", "agent 1").unwrap(),
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent+1"
        );
        assert_eq!(
            public_conversation_url("http://127.0.0.1:9000", "a").unwrap(),
            "ws://127.0.0.1:9000/v1/convai/conversation?agent_id=a"
        );
        assert!(public_conversation_url("ftp://x", "a").is_err());
    }

    #[test]
    fn signed_urls_must_be_websocket_urls() {
        assert_eq!(
            parse_signed_url(br#"{"signed_url":"wss://x/y?conversation_signature=s"}"#).as_deref(),
            Some("wss://x/y?conversation_signature=s")
        );
        assert_eq!(parse_signed_url(br#"{"signed_url":"https://x"}"#), None);
        assert_eq!(parse_signed_url(b"nope"), None);
    }

    #[test]
    fn errors() {
        assert_eq!(dec("nope").unwrap_err().kind().as_str(), "malformed_json");
        assert_eq!(
            dec(r#"{"user_audio_chunk":"AA=="}"#).unwrap_err().kind().as_str(),
            "missing_type"
        );
        assert_eq!(
            dec(r#"{"type":"ping"}"#).unwrap_err().kind().as_str(),
            "missing_field"
        );
        assert_eq!(
            dec(r#"{"type":"audio","audio_event":{}}"#)
                .unwrap_err().kind().as_str(),
            "missing_field"
        );
    }

    #[test]
    fn encodes_client_messages() {
        let mut out = Vec::new();
        encode_user_audio(&[0xff, 0xfe], &mut out);
        assert_eq!(out, br#"{"user_audio_chunk":"//4="}"#);
        encode_pong(12345, &mut out);
        assert_eq!(out, br#"{"type":"pong","event_id":12345}"#);
        encode_tool_result("toolu_1", &Ok(serde_json::json!({"ok": true})), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"client_tool_result","tool_call_id":"toolu_1","result":"{\"ok\":true}","is_error":false})
        );
        encode_tool_result("toolu_2", &Err("webhook timed out".into()), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"], "webhook timed out");
        assert_eq!(v["is_error"], true);
        encode_dtmf("42#", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "user_message");
        assert_eq!(v["text"], "The caller pressed 42# on the phone keypad.");
    }

    #[test]
    fn initiation_maps_overrides_and_dynamic_variables() {
        let raw: Vec<(String, String)> = [
            ("prompt", "You are \"Acme\"."),
            ("first_message", "Hi!"),
            ("language", "en"),
            ("voice_id", "v1"),
            ("customer_name", "Jane"),
            ("From", "+15551234567"),
            ("relay_token", "secret"),
            ("agent", "elevenlabs"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut out = Vec::new();
        encode_initiation(&CallParams::from_custom_parameters(&raw), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "conversation_initiation_client_data");
        let o = &v["conversation_config_override"];
        assert_eq!(o["agent"]["prompt"]["prompt"], "You are \"Acme\".");
        assert_eq!(o["agent"]["first_message"], "Hi!");
        assert_eq!(o["agent"]["language"], "en");
        assert_eq!(o["tts"]["voice_id"], "v1");
        let vars = v["dynamic_variables"].as_object().unwrap();
        assert_eq!(vars.len(), 2);
        assert_eq!(vars["customer_name"], "Jane");
        assert_eq!(vars["From"], "+15551234567");

        encode_initiation(&CallParams::default(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("conversation_config_override").is_none());
        assert_eq!(v["dynamic_variables"], serde_json::json!({}));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        proptest! {
            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let mut b = bytes;
                let mut sc = simd_json::Buffers::default();
                let _ = Session::new(CallParams::default()).decode(&mut b, &mut sc);
            }

            #[test]
            fn user_audio_round_trips(chunk in proptest::collection::vec(any::<u8>(), 0..400)) {
                let mut out = Vec::new();
                encode_user_audio(&chunk, &mut out);
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                let mut back = Vec::new();
                crate::wire::b64::decode(v["user_audio_chunk"].as_str().unwrap(), &mut back).unwrap();
                prop_assert_eq!(back, chunk);
            }
        }
    }
}
