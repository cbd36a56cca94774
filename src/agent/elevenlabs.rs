//! ElevenLabs Conversational AI WebSocket dialect: sans-IO decode of server messages into
//! [`AgentEvent`]s and encode of the client messages (protocols.md §2.2–§2.5).
//!
//! Owns: the wire shapes, the custom-parameter → `conversation_initiation_client_data`
//! mapping, and tolerant handling of the UNCERTAIN items (legacy `audio.chunk`, an
//! `interruption_event` without `event_id`). Does not own: connecting (see `agent::connect`),
//! the interruption filter state (see `call`), or sockets.

use super::{AgentEvent, DecodeError};
use crate::wire::json::LenientU64;
use serde::Deserialize;

/// Audio format name that means "G.711 μ-law 8 kHz" in ElevenLabs' metadata (§2.4, §2.6).
pub const ULAW_8000: &str = "ulaw_8000";

/// Custom parameters that become `conversation_config_override` fields instead of dynamic
/// variables: (`customParameters` name, JSON path under the override).
pub const OVERRIDE_PARAMETERS: [&str; 4] = ["prompt", "first_message", "language", "voice_id"];

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
    ping_event: Option<WireEventId>,
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

/// Decodes one ElevenLabs server text frame in place (§2.4). Borrowing and scratch reuse as
/// in the Twilio codec.
///
/// # Errors
/// [`DecodeError::MalformedJson`] for invalid JSON, [`DecodeError::MissingType`] when there
/// is no `type`, [`DecodeError::MissingField`] when `audio` has no payload or `ping` has no
/// `event_id`. Unknown types decode to [`AgentEvent::Other`].
pub fn decode<'a>(
    frame: &'a mut [u8],
    scratch: &mut simd_json::Buffers,
) -> Result<AgentEvent<'a>, DecodeError> {
    let w: Wire<'a> = simd_json::serde::from_slice_with_buffers(frame, scratch)
        .map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
    let kind = w.kind.ok_or(DecodeError::MissingType)?;
    Ok(match kind {
        "audio" => {
            let (payload, event_id) = match (w.audio_event, w.audio) {
                (Some(a), _) if a.audio_base_64.is_some() => (a.audio_base_64, a.event_id.0),
                (_, Some(l)) => (l.chunk, None),
                (a, None) => (None, a.and_then(|a| a.event_id.0)),
            };
            AgentEvent::Audio {
                payload_b64: payload
                    .ok_or(DecodeError::MissingField("audio_event.audio_base_64"))?,
                event_id,
            }
        }
        "interruption" => AgentEvent::Interruption {
            event_id: w.interruption_event.and_then(|e| e.event_id.0),
        },
        "ping" => AgentEvent::Ping {
            event_id: w
                .ping_event
                .and_then(|e| e.event_id.0)
                .ok_or(DecodeError::MissingField("ping_event.event_id"))?,
        },
        "conversation_initiation_metadata" => {
            let m = w
                .conversation_initiation_metadata_event
                .ok_or(DecodeError::MissingField(
                    "conversation_initiation_metadata_event",
                ))?;
            AgentEvent::Ready {
                conversation_id: m.conversation_id,
                input_format: m.user_input_audio_format,
                output_format: m.agent_output_audio_format,
            }
        }
        "agent_response" => AgentEvent::AgentResponse {
            text: w
                .agent_response_event
                .and_then(|e| e.agent_response)
                .unwrap_or(""),
        },
        "user_transcript" => AgentEvent::UserTranscript {
            text: w
                .user_transcription_event
                .and_then(|e| e.user_transcript)
                .unwrap_or(""),
        },
        "client_tool_call" => {
            let t = w.client_tool_call;
            AgentEvent::ToolCall {
                name: t.as_ref().and_then(|t| t.tool_name).unwrap_or(""),
                call_id: t.as_ref().and_then(|t| t.tool_call_id).unwrap_or(""),
            }
        }
        "error" => {
            let e = w.error_event;
            AgentEvent::Error {
                code: e.as_ref().and_then(|e| e.code.0),
                error_type: e.as_ref().and_then(|e| e.error_type),
                message: e.as_ref().and_then(|e| e.message),
            }
        }
        other => AgentEvent::Other { kind: other },
    })
}

/// Writes `{"user_audio_chunk":"<base64>"}` (§2.3; no `type` field) into `out` (cleared).
#[inline]
pub fn encode_user_audio(audio: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(24 + base64_simd::STANDARD.encoded_length(audio.len()));
    out.extend_from_slice(b"{\"user_audio_chunk\":\"");
    base64_simd::STANDARD.encode_append(audio, out);
    out.extend_from_slice(b"\"}");
}

/// Writes `{"type":"pong","event_id":N}` (§2.3) into `out` (cleared).
pub fn encode_pong(event_id: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"type\":\"pong\",\"event_id\":{event_id}}}");
}

/// Builds `conversation_initiation_client_data` (§2.3) from a call's `customParameters`:
/// `prompt` → `agent.prompt.prompt`, `first_message` → `agent.first_message`, `language` →
/// `agent.language`, `voice_id` → `tts.voice_id` under `conversation_config_override`; every
/// other parameter becomes a string dynamic variable, except names starting with `relay_`
/// (the relay's own, e.g. the per-call token), which are never forwarded.
pub fn encode_initiation(params: &[(&str, &str)], out: &mut Vec<u8>) {
    use serde_json::{json, Map, Value};
    let mut agent = Map::new();
    let mut tts = Map::new();
    let mut vars = Map::new();
    for &(k, v) in params {
        match k {
            "prompt" => {
                agent.insert("prompt".into(), json!({ "prompt": v }));
            }
            "first_message" | "language" => {
                agent.insert(k.into(), Value::String(v.into()));
            }
            "voice_id" => {
                tts.insert("voice_id".into(), Value::String(v.into()));
            }
            _ if k.starts_with("relay_") => {}
            _ => {
                vars.insert(k.into(), Value::String(v.into()));
            }
        }
    }
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

/// Meaning of an ElevenLabs close code (§2.5), for log lines.
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
        decode(&mut b, &mut sc).map(|e| format!("{e:?}"))
    }

    #[test]
    fn decodes_protocol_samples() {
        // protocols.md §2.4 examples.
        assert_eq!(
            dec(r#"{ "type": "conversation_initiation_metadata",
  "conversation_initiation_metadata_event": {
    "conversation_id": "conv_01jx", "agent_output_audio_format": "ulaw_8000", "user_input_audio_format": "ulaw_8000" } }"#)
            .unwrap(),
            r#"Ready { conversation_id: Some("conv_01jx"), input_format: Some("ulaw_8000"), output_format: Some("ulaw_8000") }"#
        );
        assert_eq!(
            dec(r#"{ "type": "audio", "audio_event": { "audio_base_64": "//7+/n5+", "event_id": 7 } }"#).unwrap(),
            r#"Audio { payload_b64: "//7+/n5+", event_id: Some(7) }"#
        );
        assert_eq!(
            dec(r#"{ "type": "interruption", "interruption_event": { "event_id": 8 } }"#).unwrap(),
            "Interruption { event_id: Some(8) }"
        );
        assert_eq!(
            dec(r#"{ "type": "ping", "ping_event": { "event_id": 12345, "ping_ms": 50 } }"#)
                .unwrap(),
            "Ping { event_id: 12345 }"
        );
        assert_eq!(
            dec(r#"{ "type": "user_transcript", "user_transcription_event": { "user_transcript": "I need help", "event_id": 6 } }"#).unwrap(),
            r#"UserTranscript { text: "I need help" }"#
        );
        assert_eq!(
            dec(r#"{ "type": "agent_response", "agent_response_event": { "agent_response": "Sure, what's your order number?", "event_id": 7 } }"#).unwrap(),
            r#"AgentResponse { text: "Sure, what's your order number?" }"#
        );
        assert_eq!(
            dec(r#"{ "type": "client_tool_call", "client_tool_call": { "tool_name": "lookup_order", "tool_call_id": "toolu_1", "parameters": {"order":"42"}, "event_id": 9 } }"#).unwrap(),
            r#"ToolCall { name: "lookup_order", call_id: "toolu_1" }"#
        );
        assert_eq!(
            dec(r#"{ "type": "error", "error_event": { "code": 1008, "message": "bad", "error_type": "override_error", "reason": "x", "debug_message": null, "details": null } }"#).unwrap(),
            r#"Error { code: Some(1008), error_type: Some("override_error"), message: Some("bad") }"#
        );
        assert_eq!(
            dec(r#"{ "type": "vad_score", "vad_score_event": { "vad_score": 0.93 } }"#).unwrap(),
            r#"Other { kind: "vad_score" }"#
        );
    }

    #[test]
    fn tolerant_paths_for_uncertain_items() {
        // UNCERTAIN §2.4: legacy audio shape.
        assert_eq!(
            dec(r#"{"type":"audio","audio":{"chunk":"AAAA"}}"#).unwrap(),
            r#"Audio { payload_b64: "AAAA", event_id: None }"#
        );
        // UNCERTAIN §2.4: interruption carrying `reason` instead of `event_id`.
        assert_eq!(
            dec(r#"{"type":"interruption","interruption_event":{"reason":"user spoke"}}"#).unwrap(),
            "Interruption { event_id: None }"
        );
        // event_id as a string.
        assert_eq!(
            dec(r#"{"type":"ping","ping_event":{"event_id":"3"}}"#).unwrap(),
            "Ping { event_id: 3 }"
        );
    }

    #[test]
    fn errors() {
        assert_eq!(dec("nope").unwrap_err().kind(), "malformed_json");
        assert_eq!(
            dec(r#"{"user_audio_chunk":"AA=="}"#).unwrap_err().kind(),
            "missing_type"
        );
        assert_eq!(
            dec(r#"{"type":"ping"}"#).unwrap_err().kind(),
            "missing_field"
        );
        assert_eq!(
            dec(r#"{"type":"audio","audio_event":{}}"#)
                .unwrap_err()
                .kind(),
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
    }

    #[test]
    fn initiation_maps_overrides_and_dynamic_variables() {
        let mut out = Vec::new();
        encode_initiation(
            &[
                ("prompt", "You are \"Acme\"."),
                ("first_message", "Hi!"),
                ("language", "en"),
                ("voice_id", "v1"),
                ("customer_name", "Jane"),
                ("From", "+15551234567"),
                ("relay_token", "secret"),
            ],
            &mut out,
        );
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

        encode_initiation(&[], &mut out);
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
                let _ = decode(&mut b, &mut sc);
            }

            #[test]
            fn user_audio_round_trips(chunk in proptest::collection::vec(any::<u8>(), 0..400)) {
                let mut out = Vec::new();
                encode_user_audio(&chunk, &mut out);
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                let mut back = Vec::new();
                crate::twilio::codec::decode_payload(v["user_audio_chunk"].as_str().unwrap(), &mut back).unwrap();
                prop_assert_eq!(back, chunk);
            }
        }
    }
}
