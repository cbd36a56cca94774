use crate::{any_string, b64, must_be_json, records};
use media_relay::agent::assemblyai::BargeInTrigger;
use media_relay::agent::{
    assemblyai, dtmf_text, elevenlabs, openai, AgentEvent, AgentKind, AgentSettings, CallParams,
    ReplyKey, Session, ToolOutput,
};
use media_relay::auth::Secret;

/// The three socket dialects configured (the local echo agent decodes no frames: not fuzzed
/// here). Fields are assigned one by one, so settings added later keep their defaults.
fn settings(sel: u8) -> AgentSettings {
    let mut a = AgentSettings::default();
    a.shared.tools = if sel & 8 == 0 {
        serde_json::json!([])
    } else {
        serde_json::json!([{"name":"lookup_order","description":"Look up an order",
            "parameters":{"type":"object","properties":{"order":{"type":"string"}}}}])
    };
    a.elevenlabs = Some(elevenlabs::Settings {
        api_key: None,
        agent_id: "agent_fuzz".into(),
        api_base: "https://api.elevenlabs.io".into(),
    });
    a.assemblyai = Some(assemblyai::Settings {
        api_key: Secret::new("k"),
        url: "wss://agents.assemblyai.com/v1/ws".into(),
        voice: Some("ivy".into()),
        barge_in: if sel & 4 == 0 {
            BargeInTrigger::ReplyInterrupted
        } else {
            BargeInTrigger::SpeechStarted
        },
        rollover: None,
    });
    a.openai = Some(openai::Settings {
        api_key: Secret::new("k"),
        url: "wss://api.openai.com/v1/realtime?model=gpt-realtime".into(),
        voice: "alloy".into(),
        transcription_model: None,
        rollover: None,
    });
    a.echo = None;
    a
}

/// Every part of a multi-part command, each checked as JSON.
fn parts(what: &str, mut f: impl FnMut(usize, &mut Vec<u8>) -> bool) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut vals = Vec::new();
    for part in 0..8 {
        if !f(part, &mut out) {
            return vals;
        }
        vals.push(must_be_json(what, &out));
    }
    panic!("{what}: more than 8 parts");
}

fn check_tool_result(d: &Session, id: &str, output: &ToolOutput) {
    for followup in [true, false] {
        let vals = parts("encode_tool_result", |p, out| {
            d.encode_tool_result(p, id, output, followup, out)
        });
        assert!(!vals.is_empty(), "no tool result message");
        assert!(
            any_string(&vals[0], &mut |s| s == id),
            "tool result does not carry the call id {id:?}: {}",
            vals[0]
        );
    }
}

fn check_dtmf(d: &Session, digits: &str) {
    let vals = parts("encode_dtmf", |p, out| d.encode_dtmf(p, digits, out));
    assert!(!vals.is_empty(), "no dtmf message");
    let text = dtmf_text(digits);
    assert!(
        any_string(&vals[0], &mut |s| s == text),
        "dtmf message does not carry {text:?}: {}",
        vals[0]
    );
}

/// The agent dialects (`agent::Session` over ElevenLabs, AssemblyAI, OpenAI Realtime): a
/// session built from fuzz-chosen call parameters decodes a sequence of fuzz-chosen agent
/// frames, and everything it encodes in answer is valid JSON carrying what it should.
///
/// Input: `[sel][params]\0[frame]\0[frame]…`. `sel` % 3 picks the dialect, bit 2 the
/// AssemblyAI barge-in trigger, bit 3 configured default tools. `params` is a form-encoded
/// list of stream custom parameters (`prompt=…&tools=[…]&customer=…`), sorted by
/// `CallParams::from_custom_parameters` as the call does. Frames are separated by NUL bytes.
///
/// Checks, besides "never panics":
/// - every session-opening message is valid JSON (prompts, greetings and variables escaped);
/// - an audio event's reply key is never newer than `current_reply()`, which never goes back;
/// - tool-call arguments, when accepted, are a JSON object; a tool result (success and
///   failure) for the call id is valid JSON and carries the call id verbatim;
/// - a ping's pong is valid JSON with the same id; keypad input with any "digits" (here: any
///   decoded string) is valid JSON that carries `dtmf_text(digits)`;
/// - the barge-in command and encoded caller audio are valid JSON, the audio exactly base64;
/// - a decode error has a metric label (`kind().as_str()`) and a message.
pub fn agent_dialects(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let kind = [
        AgentKind::Elevenlabs,
        AgentKind::Assemblyai,
        AgentKind::Openai,
    ][usize::from(sel % 3)];
    let settings = settings(sel);
    let mut recs = records(rest);
    let params: Vec<(String, String)> = form_urlencoded::parse(recs.next().unwrap_or_default())
        .into_owned()
        .collect();
    let params = CallParams::from_custom_parameters(&params);
    let mut d = Session::new(kind, &settings, params).expect("configured dialect");
    assert_eq!(d.kind(), kind);
    assert!(!d.is_local());

    let init = parts("encode_session_init", |i, out| {
        d.encode_session_init(i, out)
    });
    assert!(!init.is_empty(), "no session-opening message");

    let mut scratch = simd_json::Buffers::default();
    let mut out = Vec::new();
    for frame in recs {
        let mut frame = frame.to_vec();
        let before = d.current_reply();
        let ev = match d.decode(&mut frame, &mut scratch) {
            Ok(ev) => ev,
            Err(e) => {
                assert!(!e.kind().as_str().is_empty());
                let _ = e.to_string();
                continue;
            }
        };
        // Own every borrowed field, so the dialect can be used again below.
        let after = d.current_reply();
        assert!(
            after >= before,
            "current_reply went back: {before:?} -> {after:?}"
        );
        match ev {
            AgentEvent::Audio { reply, payload_b64 } => {
                assert!(reply <= after, "audio of {reply:?} newer than {after:?}");
                let mut audio = Vec::new();
                if media_relay::wire::b64::decode(payload_b64, &mut audio).is_ok() {
                    d.encode_audio(&audio, &mut out);
                    let v = must_be_json("encode_audio", &out);
                    let want = b64(&audio);
                    assert!(any_string(&v, &mut |s| s == want), "audio not carried: {v}");
                }
                let played = audio.len() as u64 / 8;
                if d.encode_barge_in(reply, played, &mut out) {
                    must_be_json("encode_barge_in", &out);
                }
            }
            AgentEvent::ToolCall {
                id,
                name,
                arguments,
            } => {
                let id = id.to_owned();
                let name = name.to_owned();
                if let Ok(a) = &arguments {
                    assert!(a.is_object(), "arguments accepted but not an object: {a}");
                }
                let ok: ToolOutput = Ok(arguments
                    .clone()
                    .unwrap_or(serde_json::Value::String(name.clone())));
                check_tool_result(&d, &id, &ok);
                check_tool_result(&d, &id, &Err(name.clone()));
                check_dtmf(&d, &name);
            }
            AgentEvent::Ping { id, rtt_ms: _ } => {
                assert!(
                    d.encode_pong(id, &mut out),
                    "{kind:?} decoded a ping it cannot answer"
                );
                let v = must_be_json("encode_pong", &out);
                assert!(
                    v.as_object()
                        .is_some_and(|o| o.values().any(|x| x.as_u64() == Some(id))),
                    "pong does not echo {id}: {v}"
                );
            }
            AgentEvent::Transcript { speaker: _, text } => {
                let text = text.to_owned();
                check_dtmf(&d, &text);
            }
            AgentEvent::Error { code, message, .. } => {
                let code = code.unwrap_or("").to_owned();
                let message = message.unwrap_or("").to_owned();
                check_tool_result(&d, &code, &Err(message));
            }
            AgentEvent::Interrupted { through } => {
                let r = through.unwrap_or(after);
                if d.encode_barge_in(r, u64::MAX, &mut out) {
                    must_be_json("encode_barge_in", &out);
                }
            }
            AgentEvent::Other { kind } => {
                let kind = kind.to_owned();
                check_dtmf(&d, &kind);
            }
            _ => {}
        }
        if d.encode_barge_in(ReplyKey(after.0), 0, &mut out) {
            must_be_json("encode_barge_in", &out);
        }
        let _ = (d.clears_on_interrupted(), d.clears_on_speech_started());
        let _ = (
            d.holds_tool_results_until_reply_done(),
            d.coalesces_small_deltas(),
            d.transcript_ends_turn(),
        );
        for code in [1000, 1008, 1011, 4000, 0] {
            assert!(!d.close_code_meaning(code).is_empty());
        }
    }
}
