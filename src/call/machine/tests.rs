//! Machine-level tests: every timer, barge-in, marks, early audio, outboxes, tools, DTMF and
//! turn timing, driven with an injected clock. No sockets, no sleeps.

use super::*;
use crate::agent::assemblyai::BargeInTrigger;
use crate::agent::{assemblyai, echo, elevenlabs, openai, AgentSettings, SharedSettings};
use crate::auth::Secret;
use crate::call::tool_webhook::ToolSettings;
use crate::carrier::twilio::codec::is_mulaw_8k_mono;
use crate::carrier::{CallerEvent, Media, Start};
use crate::obs::labels::ErrorKind;
use serde_json::Value;

pub(super) const SID: &str = "MZ00000000000000000000000000000001";

pub(super) fn settings(default_agent: AgentKind) -> CallSettings {
    CallSettings {
        default_agent,
        agents: AgentSettings {
            shared: SharedSettings {
                tools: serde_json::json!([]),
                ..SharedSettings::default()
            },
            echo: Some(echo::Settings {
                delay: Duration::from_millis(500),
            }),
            elevenlabs: Some(elevenlabs::Settings {
                api_key: None,
                agent_id: "agent".into(),
                api_base: "http://127.0.0.1:9".into(),
            }),
            assemblyai: Some(assemblyai::Settings {
                api_key: Secret::new("k"),
                url: "ws://127.0.0.1:9/v1/ws".into(),
                voice: None,
                barge_in: BargeInTrigger::ReplyInterrupted,
                rollover: None,
            }),
            openai: Some(openai::Settings {
                api_key: Secret::new("k"),
                url: "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime".into(),
                voice: "alloy".into(),
                transcription_model: None,
                rollover: None,
            }),
            ..AgentSettings::default()
        },
        early_audio_bytes: 800,
        agent_connect_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(10),
        caller_idle_timeout: Duration::from_secs(10),
        max_call_duration: Duration::from_secs(3600),
        caller_chunk_bytes: 800,
        agent_outbox_bytes: 480,
        caller_outbox_bytes: 4000,
        write_stall_timeout: Duration::from_secs(5),
        dtmf_interdigit: Duration::from_millis(1500),
        tools: ToolSettings {
            webhook_url: Some("http://127.0.0.1:9/tools".parse().unwrap()),
            ..ToolSettings::default()
        },
        drain_notice: None,
        summary_interval: Duration::from_secs(5),
        control: crate::call::settings::CallControl {
            builtin_tools: true,
            dial_timeout_secs: 30,
            ..Default::default()
        },
        // Off here: these tests check what a failure ends as (control_tests and
        // continuity_tests turn it on).
        continuity: crate::call::settings::Continuity {
            max_recoveries: 0,
            ..crate::call::settings::Continuity::defaults()
        },
        post_call: None,
        recording: None,
        voicemail_audio: None,
    }
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn b64(audio: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(audio)
}

pub(super) fn start_event<'a>(
    params: &[(&'a str, &'a str)],
    enc: &'a str,
    rate: u64,
    ch: u64,
) -> CallerEvent<'a> {
    CallerEvent::Start(Start {
        stream_sid: SID,
        call_sid: "CA1",
        account_sid: "AC1",
        custom_parameters: params.to_vec(),
        encoding: Some(enc),
        sample_rate: Some(rate),
        channels: Some(ch),
        mulaw_8k_mono: is_mulaw_8k_mono(Some(enc), Some(rate), Some(ch)),
    })
}

pub(super) struct Call {
    pub(super) m: CallMachine,
    pub(super) t0: Instant,
}

impl Call {
    pub(super) fn new(s: CallSettings) -> Call {
        let t0 = Instant::now();
        Call {
            m: CallMachine::new(Arc::new(s), CarrierKind::Twilio, t0),
            t0,
        }
    }

    pub(super) fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    /// `start`, then the driver's admission answer (no token required, no older stream).
    pub(super) fn start(&mut self, params: &[(&str, &str)], at: u64) {
        self.m
            .handle_caller(start_event(params, "audio/x-mulaw", 8000, 1), self.at(at));
        if let Some(CallEvent::Admit { .. }) = self.m.poll_event() {
            self.m.handle_admission(None, false, self.at(at));
        }
    }

    pub(super) fn media(&mut self, audio: &[u8], chunk: u64, at: u64) {
        let p = b64(audio);
        self.m.handle_caller(
            CallerEvent::Media(Media {
                track: Some("inbound"),
                chunk: Some(chunk),
                timestamp_ms: Some(chunk.saturating_mul(20)),
                payload: &p,
            }),
            self.at(at),
        );
    }

    /// Decodes `json` with the call's dialect and hands it to the machine.
    pub(super) fn agent(&mut self, json: &str, at: u64) {
        let mut b = json.as_bytes().to_vec();
        let mut sc = simd_json::Buffers::default();
        let ev = self
            .m
            .dialect_mut()
            .expect("a dialect")
            .decode(&mut b, &mut sc)
            .expect("valid agent JSON");
        self.m.handle_agent(ev, self.at(at));
    }

    /// Everything `side` would transmit at `at`, as JSON values.
    pub(super) fn drain(&mut self, side: Leg, at: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while self.m.poll_transmit(side, &mut buf, self.at(at)) {
            out.push(serde_json::from_slice(&buf).expect("transmitted JSON"));
        }
        out
    }

    pub(super) fn twilio_audio(&mut self, at: u64) -> (Vec<u8>, Vec<Value>) {
        let msgs = self.drain(Leg::Caller, at);
        let mut audio = Vec::new();
        let mut other = Vec::new();
        for m in msgs {
            if m["event"] == "media" {
                let mut a = Vec::new();
                crate::wire::b64::decode(m["media"]["payload"].as_str().unwrap(), &mut a).unwrap();
                audio.extend(a);
            } else {
                other.push(m);
            }
        }
        (audio, other)
    }

    pub(super) fn end(&self) -> Option<&EndReason> {
        self.m.end_reason()
    }
}

pub(super) fn dropped(m: &CallMachine, d: Direction) -> u64 {
    m.metrics().dropped_total[d.index()]
}

// === timers ===

#[test]
fn start_timeout() {
    let mut c = Call::new(settings(AgentKind::Echo));
    assert_eq!(c.m.poll_timeout(), Some(c.at(10_000)));
    c.m.handle_timeout(c.at(9_999));
    assert!(c.end().is_none());
    c.m.handle_timeout(c.at(10_000));
    assert_eq!(c.end(), Some(&EndReason::StartTimeout));
    assert_eq!(c.m.poll_timeout(), None);
}

#[test]
fn agent_ready_timeout() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 100);
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::Started(AgentKind::Elevenlabs))
    );
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::ConnectAgent(AgentKind::Elevenlabs))
    );
    assert_eq!(c.m.poll_timeout(), Some(c.at(10_100)));
    c.m.handle_agent_connected();
    c.m.handle_timeout(c.at(10_099));
    assert!(c.end().is_none());
    c.m.handle_timeout(c.at(10_100));
    assert_eq!(
        c.end(),
        Some(&EndReason::AgentConnectFailed(ErrorKind::ReadyTimeout))
    );
}

#[test]
fn max_duration() {
    let mut s = settings(AgentKind::Echo);
    s.max_call_duration = Duration::from_secs(60);
    s.caller_idle_timeout = Duration::from_secs(3600);
    let mut c = Call::new(s);
    c.start(&[], 0);
    c.m.handle_timeout(c.at(59_999));
    assert!(c.end().is_none());
    c.m.handle_timeout(c.at(60_000));
    assert_eq!(c.end(), Some(&EndReason::MaxDuration));
}

#[test]
fn twilio_idle_timeout_rearms_while_media_flows() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[], 0);
    assert_eq!(c.m.poll_timeout(), Some(c.at(10_000)));
    c.media(&[0xFF; 160], 1, 1_000);
    c.m.handle_timeout(c.at(10_000));
    assert!(c.end().is_none(), "media arrived 9 s before: re-armed");
    assert!(c.m.poll_timeout().unwrap() <= c.at(11_000));
    c.drain(Leg::Caller, 10_000);
    c.m.handle_timeout(c.at(11_000));
    assert_eq!(c.end(), Some(&EndReason::CallerIdle));
}

#[test]
fn write_stall_ends_the_call_per_leg() {
    for (side, reason) in [
        (Leg::Caller, EndReason::CallerStalled),
        (Leg::Agent, EndReason::AgentStalled),
    ] {
        let mut s = settings(AgentKind::Echo);
        s.caller_idle_timeout = Duration::from_secs(3600);
        let mut c = Call::new(s);
        c.start(&[], 0);
        c.m.handle_write_blocked(side, c.at(100));
        c.m.handle_write_blocked(side, c.at(2_000)); // the first block time counts
        assert_eq!(c.m.poll_timeout(), Some(c.at(5_100)));
        c.m.handle_write_done(side, c.at(3_000));
        c.m.handle_timeout(c.at(5_100));
        assert!(c.end().is_none(), "progress reset the stall clock");
        c.m.handle_write_blocked(side, c.at(6_000));
        c.m.handle_timeout(c.at(11_000));
        assert_eq!(c.end(), Some(&reason));
    }
}

#[test]
fn echo_plays_back_after_its_delay_with_marks() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[], 0);
    let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i + 1; 160]).collect();
    for (i, f) in frames.iter().enumerate() {
        c.media(f, i as u64 + 1, 20 * i as u64);
    }
    assert_eq!(c.m.poll_timeout(), Some(c.at(500)));
    assert!(c.drain(Leg::Caller, 499).is_empty());
    c.m.handle_timeout(c.at(500));
    let (audio, other) = c.twilio_audio(500);
    assert_eq!(audio, frames[0]);
    assert!(other.is_empty(), "no mark before 100 ms of audio");
    c.m.handle_timeout(c.at(580));
    let (audio, other) = c.twilio_audio(580);
    assert_eq!(audio, frames[1..].concat());
    assert_eq!(
        other,
        vec![serde_json::json!({"event":"mark","streamSid":SID,"mark":{"name":"ms-100"}})]
    );
}

#[test]
fn tool_webhook_timeout_gives_the_agent_an_error() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    c.agent(r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"user_input_audio_format":"ulaw_8000","agent_output_audio_format":"ulaw_8000"}}"#, 10);
    c.drain(Leg::Agent, 10);
    c.agent(r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"lookup","tool_call_id":"t1","parameters":{"order":"42"}}}"#, 1_000);
    match c.m.poll_event() {
        Some(CallEvent::CallTool {
            id,
            name,
            arguments,
        }) => {
            assert_eq!((id.as_str(), name.as_str()), ("t1", "lookup"));
            assert_eq!(arguments["order"], "42");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.m.poll_timeout(), Some(c.at(9_000)));
    c.m.handle_timeout(c.at(9_000));
    assert_eq!(c.m.poll_event(), Some(CallEvent::CancelTool("t1".into())));
    let sent = c.drain(Leg::Agent, 9_000);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "client_tool_result");
    assert_eq!(sent[0]["is_error"], true);
    // A late answer is ignored.
    c.m.handle_tool_result(
        "t1",
        (ToolResult::Ok, Ok(serde_json::json!("late"))).into(),
        c.at(0),
    );
    assert!(c.drain(Leg::Agent, 9_001).is_empty());
}

#[test]
fn dtmf_digits_go_out_after_the_interdigit_time_or_on_hash() {
    let mut c = Call::new(settings(AgentKind::Openai));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    c.agent(r#"{"type":"session.updated","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#, 10);
    c.drain(Leg::Agent, 10);
    for (d, t) in [("4", 100), ("2", 600)] {
        c.m.handle_caller(CallerEvent::Dtmf { digit: d }, c.at(t));
    }
    assert!(c.drain(Leg::Agent, 700).is_empty());
    assert_eq!(c.m.poll_timeout(), Some(c.at(2_100)));
    c.m.handle_timeout(c.at(2_100));
    let sent = c.drain(Leg::Agent, 2_100);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[0]["item"]["content"][0]["text"],
        "The caller pressed 42 on the phone keypad."
    );
    assert_eq!(sent[1]["type"], "response.create");
    c.m.handle_caller(CallerEvent::Dtmf { digit: "7" }, c.at(3_000));
    c.m.handle_caller(CallerEvent::Dtmf { digit: "#" }, c.at(3_100));
    let sent = c.drain(Leg::Agent, 3_100);
    assert_eq!(
        sent[0]["item"]["content"][0]["text"],
        "The caller pressed 7# on the phone keypad."
    );
    assert_eq!(c.m.metrics().events_total(CallEventKind::DtmfDigit), 4);
}

// === early audio, outboxes ===

pub(super) fn elevenlabs_ready(c: &mut Call, at: u64) {
    c.agent(r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"c","user_input_audio_format":"ulaw_8000","agent_output_audio_format":"ulaw_8000"}}"#, at);
}

#[test]
fn early_audio_is_held_until_ready_capped_in_bytes_then_sent_in_order() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[("customer", "Jane")], 0);
    c.m.poll_event();
    c.m.poll_event();
    // Seven 160-byte frames against an 800-byte early buffer: the two oldest go.
    for i in 0..7u8 {
        c.media(&[i; 160], i as u64 + 1, 20 * i as u64);
    }
    assert!(
        c.drain(Leg::Agent, 150).is_empty(),
        "nothing before the socket opens"
    );
    c.m.handle_agent_connected();
    let init = c.drain(Leg::Agent, 160);
    assert_eq!(init.len(), 1, "only the session init before ready");
    assert_eq!(init[0]["type"], "conversation_initiation_client_data");
    assert_eq!(init[0]["dynamic_variables"]["customer"], "Jane");
    // An oversized frame counts by its bytes, not as one frame.
    c.media(&[9; 700], 8, 170);
    assert_eq!(
        dropped(&c.m, Direction::ToAgent),
        2 + 5,
        "the 700-byte frame pushed out five older frames"
    );
    elevenlabs_ready(&mut c, 200);
    let sent = c.drain(Leg::Agent, 200);
    let audio: Vec<u8> = sent
        .iter()
        .flat_map(|m| {
            let mut a = Vec::new();
            crate::wire::b64::decode(m["user_audio_chunk"].as_str().unwrap(), &mut a).unwrap();
            a
        })
        .collect();
    assert_eq!(audio, [vec![6u8; 100], vec![9u8; 700]].concat());
}

#[test]
fn a_full_agent_outbox_drops_the_oldest_caller_audio_and_twilio_is_unaffected() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    c.drain(Leg::Agent, 0);
    // The agent socket stops taking data: nothing is drained from the agent side.
    c.m.handle_write_blocked(Leg::Agent, c.at(10));
    for i in 0..6u8 {
        c.media(&[i; 160], i as u64 + 1, 20 + 20 * i as u64);
    }
    assert_eq!(
        dropped(&c.m, Direction::ToAgent),
        3,
        "480-byte cap keeps 3 frames"
    );
    // Agent audio and a barge-in still reach Twilio.
    c.agent(
        r#"{"type":"audio","audio_event":{"audio_base_64":"//////////8=","event_id":3}}"#,
        200,
    );
    let (audio, _) = c.twilio_audio(200);
    assert_eq!(audio.len(), 8);
    c.agent(
        r#"{"type":"interruption","interruption_event":{"event_id":3}}"#,
        210,
    );
    let sent = c.drain(Leg::Caller, 210);
    assert_eq!(sent[0]["event"], "clear");
}

#[test]
fn a_full_twilio_outbox_drops_the_oldest_agent_audio() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    let chunk = b64(&[1u8; 1500]);
    for id in 1..=4 {
        c.agent(
            &format!(
                r#"{{"type":"audio","audio_event":{{"audio_base_64":"{chunk}","event_id":{id}}}}}"#
            ),
            10,
        );
    }
    // 6000 bytes into a 4000-byte outbox: the first event is dropped, the second cut; each
    // counts once.
    assert_eq!(dropped(&c.m, Direction::ToCaller), 2);
    let (audio, _) = c.twilio_audio(20);
    assert_eq!(audio.len(), 4000);
}

/// The echo agent's playback goes through the same byte-capped Twilio outbox as a vendor
/// agent's (found by the `call_machine` fuzz target: it used to skip the cap).
#[test]
fn echo_playback_respects_the_twilio_outbox_cap() {
    let mut s = settings(AgentKind::Echo);
    s.caller_outbox_bytes = 320;
    let mut c = Call::new(s);
    c.start(&[], 0);
    for i in 0..6u8 {
        c.media(&[i + 1; 160], i as u64 + 1, 20 * i as u64);
    }
    // Twilio takes nothing while the echo comes due: six frames into a 320-byte outbox.
    c.m.handle_write_blocked(Leg::Caller, c.at(10));
    c.m.handle_timeout(c.at(600));
    assert_eq!(dropped(&c.m, Direction::ToCaller), 4);
    let (audio, _) = c.twilio_audio(600);
    assert_eq!(
        audio,
        [[5u8; 160], [6u8; 160]].concat(),
        "the newest two frames remain"
    );
}

// === barge-in and marks ===

#[test]
fn elevenlabs_barge_in_clears_first_and_drops_stale_audio() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    let a = b64(&[7u8; 800]);
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":5}}}}"#),
        100,
    );
    let (audio, marks) = c.twilio_audio(100);
    assert_eq!(audio.len(), 800);
    assert_eq!(marks[0]["mark"]["name"], "ms-100");
    // Queued (not yet sent) audio of the same reply, then the interruption.
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":5}}}}"#),
        110,
    );
    c.agent(
        r#"{"type":"interruption","interruption_event":{"event_id":5}}"#,
        120,
    );
    let sent = c.drain(Leg::Caller, 120);
    assert_eq!(
        sent,
        vec![serde_json::json!({"event":"clear","streamSid":SID})]
    );
    // Late audio of reply 5 is dropped; reply 6 plays.
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":5}}}}"#),
        130,
    );
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":6}}}}"#),
        140,
    );
    let (audio, _) = c.twilio_audio(140);
    assert_eq!(audio.len(), 800);
    assert_eq!(
        dropped(&c.m, Direction::ToCaller),
        2,
        "one queued, one late"
    );
    assert_eq!(c.m.metrics().events_total(CallEventKind::BargeIn), 1);
    // The clear was written: the barge-in latency is recorded.
    c.m.handle_write_done(Leg::Caller, c.at(121));
    assert_eq!(c.m.figures().barge_in.len(), 1);
    // Marks sent before the clear echo back as flushed.
    c.m.handle_caller(CallerEvent::Mark { name: "ms-100" }, c.at(150));
    assert_eq!(c.m.playout_ms(), (0, 100));
    // A second interruption of the same reply does nothing.
    c.agent(
        r#"{"type":"interruption","interruption_event":{"event_id":5}}"#,
        160,
    );
    assert!(c
        .drain(Leg::Caller, 160)
        .iter()
        .all(|m| m["event"] != "clear"));
}

#[test]
fn openai_barge_in_truncates_at_the_played_position_never_past_what_was_sent() {
    let mut c = Call::new(settings(AgentKind::Openai));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    c.agent(r#"{"type":"session.updated","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#, 0);
    c.drain(Leg::Agent, 0);
    // 300 ms of item A, sent in three 100 ms deltas with a mark after each.
    let d = b64(&[3u8; 800]);
    let mut marks = Vec::new();
    for t in [10u64, 110, 210] {
        c.agent(
            &format!(
                r#"{{"type":"response.output_audio.delta","item_id":"item_A","delta":"{d}"}}"#
            ),
            t,
        );
        let (_, m) = c.twilio_audio(t);
        marks.extend(m);
    }
    let names: Vec<&str> = marks
        .iter()
        .map(|m| m["mark"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ms-100", "ms-200", "ms-300"]);
    // Twilio played 200 ms so far.
    for name in ["ms-100", "ms-200"] {
        c.m.handle_caller(CallerEvent::Mark { name }, c.at(250));
    }
    c.agent(r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":900,"item_id":"item_user"}"#, 260);
    assert_eq!(c.drain(Leg::Caller, 260)[0]["event"], "clear");
    let sent = c.drain(Leg::Agent, 260);
    assert_eq!(
        sent,
        vec![
            serde_json::json!({"type":"conversation.item.truncate","item_id":"item_A","content_index":0,"audio_end_ms":200})
        ]
    );
    // After the clear every outstanding mark echoes: flushed, not played.
    c.m.handle_caller(CallerEvent::Mark { name: "ms-300" }, c.at(261));
    assert_eq!(c.m.playout_ms(), (200, 100));

    // If marks claim more than the item's audio (earlier items played), it is capped.
    let mut c2 = Call::new(settings(AgentKind::Openai));
    c2.start(&[], 0);
    c2.m.poll_event();
    c2.m.poll_event();
    c2.m.handle_agent_connected();
    c2.agent(r#"{"type":"session.updated"}"#, 0);
    c2.drain(Leg::Agent, 0);
    c2.agent(
        &format!(r#"{{"type":"response.output_audio.delta","item_id":"item_A","delta":"{d}"}}"#),
        10,
    );
    c2.twilio_audio(10);
    c2.m.handle_caller(CallerEvent::Mark { name: "ms-100" }, c2.at(120));
    let short = b64(&[4u8; 400]);
    c2.agent(
        &format!(
            r#"{{"type":"response.output_audio.delta","item_id":"item_B","delta":"{short}"}}"#
        ),
        130,
    );
    c2.twilio_audio(130);
    c2.agent(r#"{"type":"input_audio_buffer.speech_started"}"#, 140);
    let sent = c2.drain(Leg::Agent, 140);
    assert_eq!(sent[0]["item_id"], "item_B");
    assert_eq!(
        sent[0]["audio_end_ms"], 0,
        "nothing of item B confirmed played"
    );
}

#[test]
fn openai_small_deltas_are_coalesced_to_20_ms() {
    let mut c = Call::new(settings(AgentKind::Openai));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    c.agent(r#"{"type":"session.updated"}"#, 0);
    c.drain(Leg::Agent, 0);
    let d = b64(&[5u8; 80]); // 10 ms
    c.agent(
        &format!(r#"{{"type":"response.output_audio.delta","item_id":"i","delta":"{d}"}}"#),
        10,
    );
    assert!(c.drain(Leg::Caller, 10).is_empty(), "10 ms is held");
    assert_eq!(c.m.poll_timeout(), Some(c.at(50)));
    c.agent(
        &format!(r#"{{"type":"response.output_audio.delta","item_id":"i","delta":"{d}"}}"#),
        20,
    );
    let sent = c.drain(Leg::Caller, 20);
    assert_eq!(sent.len(), 1);
    let mut a = Vec::new();
    crate::wire::b64::decode(sent[0]["media"]["payload"].as_str().unwrap(), &mut a).unwrap();
    assert_eq!(a.len(), 160);
    // A lone tail goes out after the hold time, or at once when the audio is done.
    c.agent(
        &format!(r#"{{"type":"response.output_audio.delta","item_id":"i","delta":"{d}"}}"#),
        30,
    );
    assert!(c.drain(Leg::Caller, 69).is_empty());
    assert_eq!(c.drain(Leg::Caller, 70).len(), 1);
    c.agent(
        &format!(r#"{{"type":"response.output_audio.delta","item_id":"i","delta":"{d}"}}"#),
        80,
    );
    c.agent(r#"{"type":"response.output_audio.done","item_id":"i"}"#, 81);
    assert_eq!(c.drain(Leg::Caller, 81).len(), 1);
}

// === AssemblyAI specifics ===

#[test]
fn assemblyai_gates_audio_on_session_ready_and_holds_tool_results_until_reply_done() {
    let mut c = Call::new(settings(AgentKind::Assemblyai));
    c.start(&[("first_message", "Hello!")], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    c.media(&[1; 160], 1, 10);
    let sent = c.drain(Leg::Agent, 10);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "session.update");
    assert_eq!(sent[0]["session"]["greeting"], "Hello!");
    assert_eq!(
        sent[0]["session"]["input"]["format"]["encoding"],
        "audio/pcmu"
    );
    c.agent(r#"{"type":"session.ready","session_id":"s"}"#, 20);
    let sent = c.drain(Leg::Agent, 20);
    assert_eq!(sent[0]["type"], "input.audio");

    c.agent(r#"{"type":"reply.started","reply_id":"r1"}"#, 30);
    c.agent(
        r#"{"type":"tool.call","call_id":"c1","name":"lookup","args":{"order":"7"}}"#,
        40,
    );
    assert!(matches!(c.m.poll_event(), Some(CallEvent::CallTool { .. })));
    c.m.handle_tool_result(
        "c1",
        (ToolResult::Ok, Ok(serde_json::json!({"status":"shipped"}))).into(),
        c.at(0),
    );
    assert!(c.drain(Leg::Agent, 50).is_empty(), "held until reply.done");
    c.agent(r#"{"type":"reply.done","status":"completed"}"#, 60);
    let sent = c.drain(Leg::Agent, 60);
    assert_eq!(
        sent[0],
        serde_json::json!({"type":"tool.result","call_id":"c1","result":"{\"status\":\"shipped\"}"})
    );

    // After an interrupted reply, held results are discarded (and counted).
    c.agent(r#"{"type":"reply.started","reply_id":"r2"}"#, 70);
    c.agent(
        r#"{"type":"tool.call","call_id":"c2","name":"lookup","arguments":{}}"#,
        80,
    );
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_tool_result(
        "c2",
        (ToolResult::Ok, Ok(serde_json::json!(1))).into(),
        c.at(0),
    );
    c.agent(r#"{"type":"reply.done","status":"interrupted"}"#, 90);
    assert!(c
        .drain(Leg::Agent, 90)
        .iter()
        .all(|m| m["type"] != "tool.result"));
}

#[test]
fn assemblyai_fatal_errors_end_the_call_and_session_ended_ends_it_cleanly() {
    let mut c = Call::new(settings(AgentKind::Assemblyai));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.agent(
        r#"{"type":"session.error","code":"invalid_audio","message":"m"}"#,
        10,
    );
    assert!(c.end().is_none(), "non-fatal");
    c.agent(r#"{"code":"session_expired","message":"duration cap"}"#, 20);
    assert_eq!(
        c.end(),
        Some(&EndReason::AgentError(ErrorKind::AgentErrorEvent))
    );
    let mut c = Call::new(settings(AgentKind::Assemblyai));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.agent(r#"{"type":"session.ended"}"#, 10);
    assert_eq!(c.end(), Some(&EndReason::AgentEnded));
}

// === start checks, selection, bad input ===

#[test]
fn start_refuses_other_media_formats() {
    for (enc, rate, ch) in [
        ("audio/x-alaw", 8000, 1),
        ("audio/x-mulaw", 16000, 1),
        ("audio/x-mulaw", 8000, 2),
    ] {
        let mut c = Call::new(settings(AgentKind::Echo));
        c.m.handle_caller(start_event(&[], enc, rate, ch), c.at(0));
        assert_eq!(
            c.end(),
            Some(&EndReason::MediaFormatUnsupported),
            "{enc} {rate} {ch}"
        );
    }
}

#[test]
fn the_agent_parameter_selects_the_dialect() {
    for (name, kind) in [
        ("openai", AgentKind::Openai),
        ("assemblyai", AgentKind::Assemblyai),
        ("elevenlabs", AgentKind::Elevenlabs),
    ] {
        let mut c = Call::new(settings(AgentKind::Echo));
        c.start(&[("agent", name)], 0);
        assert_eq!(c.m.poll_event(), Some(CallEvent::Started(kind)));
        assert_eq!(c.m.poll_event(), Some(CallEvent::ConnectAgent(kind)));
        assert_eq!(c.m.agent_kind(), kind);
    }
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[("agent", "nope")], 0);
    assert_eq!(
        c.end(),
        Some(&EndReason::AgentConnectFailed(ErrorKind::UnknownAgent))
    );
    let mut s = settings(AgentKind::Echo);
    s.agents.openai = None;
    let mut c = Call::new(s);
    c.start(&[("agent", "openai")], 0);
    assert_eq!(
        c.end(),
        Some(&EndReason::AgentConnectFailed(
            ErrorKind::AgentNotConfigured
        ))
    );
}

#[test]
fn bad_input_is_counted_and_skipped() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.media(&[1; 160], 1, 0); // before start
    c.start(&[], 10);
    c.m.handle_caller(
        CallerEvent::Media(Media {
            track: None,
            chunk: None,
            timestamp_ms: None,
            payload: "not*base64",
        }),
        c.at(20),
    );
    for _ in 0..10 {
        c.m.handle_bad_input(Leg::Caller, ErrorKind::MalformedJson, &"x");
    }
    // An empty payload has nothing to relay: counted as bad input, not queued.
    c.media(&[], 2, 30);
    assert!(c.end().is_none());
    assert_eq!(c.m.figures().bad_inputs, 13);
    c.m.handle_timeout(c.at(2_000));
    assert!(c.twilio_audio(2_000).0.is_empty(), "nothing to echo");
    // Every kind counted is one the caller leg can have.
    assert!(ErrorKind::EmptyPayload.legs().contains(&Leg::Caller));
}

#[test]
fn chunk_numbers_cannot_inflate_missing_frames() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[], 0);
    c.media(&[0xFF; 160], 1, 0);
    // A jump by 10^19 after 20 ms counts at most the frames 20 ms can hold, and
    // `u64::MAX` does not overflow.
    c.media(&[0xFF; 160], 10_000_000_000_000_000_000, 20);
    c.media(&[0xFF; 160], u64::MAX, 40);
    c.media(&[0xFF; 160], 3, 60);
    assert!(
        c.m.metrics().missing_total() <= 4,
        "{}",
        c.m.metrics().missing_total()
    );
}

/// A held sub-20 ms tail whose hold time passed while the Twilio writer was full (the
/// driver does not ask for output then) must not leave a deadline in the past: the driver's
/// timer would fire again at once, forever.
#[test]
fn a_due_held_tail_leaves_no_deadline_in_the_past() {
    let mut c = Call::new(settings(AgentKind::Openai));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    c.agent(r#"{"type":"session.updated"}"#, 0);
    c.drain(Leg::Agent, 0);
    let d = b64(&[5u8; 80]); // 10 ms: held
    c.agent(
        &format!(r#"{{"type":"response.output_audio.delta","item_id":"i","delta":"{d}"}}"#),
        10,
    );
    assert_eq!(c.m.poll_timeout(), Some(c.at(50)));
    c.m.handle_timeout(c.at(50));
    assert!(c.m.poll_timeout().is_some_and(|t| t > c.at(50)));
    // The tail goes out as soon as the writer takes it.
    assert_eq!(c.twilio_audio(60).0.len(), 80);
}

/// A peer that pings while its socket is backed up gets one pong (for its newest ping),
/// not a queue of them.
#[test]
fn pongs_waiting_for_the_agent_do_not_pile_up() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    c.drain(Leg::Agent, 0);
    for id in 1..=50 {
        c.agent(
            &format!(r#"{{"type":"ping","ping_event":{{"event_id":{id},"ping_ms":null}}}}"#),
            10,
        );
    }
    let sent = c.drain(Leg::Agent, 10);
    let pongs: Vec<_> = sent.iter().filter(|m| m["type"] == "pong").collect();
    assert_eq!(pongs.len(), 1);
    assert_eq!(pongs[0]["event_id"], 50);
}

/// Keypad entries waiting for the agent join into one (bounded), however often the caller
/// presses `#`.
#[test]
fn keypad_entries_waiting_for_the_agent_are_bounded() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    c.drain(Leg::Agent, 0);
    for _ in 0..200 {
        for digit in ["1", "#"] {
            c.m.handle_caller(CallerEvent::Dtmf { digit }, c.at(10));
        }
    }
    let sent = c.drain(Leg::Agent, 10);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let text = sent[0]["text"].as_str().unwrap_or_default();
    assert!(text.len() < 2 * dtmf::MAX_DTMF_DIGITS + 60, "{text}");
}

/// A slow reader is not a stalled one: each bit of progress restarts the stall clock.
#[test]
fn write_progress_restarts_the_stall_clock() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[], 0);
    c.m.handle_write_blocked(Leg::Caller, c.at(0));
    c.m.handle_write_progress(Leg::Caller, c.at(4_000));
    c.media(&[0xFF; 160], 1, 4_500);
    c.media(&[0xFF; 160], 2, 8_500);
    c.m.handle_timeout(c.at(8_999));
    assert!(c.end().is_none(), "progress at 4 s: not stalled at 9 s");
    c.m.handle_timeout(c.at(9_000));
    assert_eq!(c.end(), Some(&EndReason::CallerStalled));
}

#[test]
fn an_unconfigured_elevenlabs_agent_is_refused_at_start() {
    let mut s = settings(AgentKind::Elevenlabs);
    s.agents.elevenlabs = None;
    let mut c = Call::new(s);
    c.start(&[], 0);
    assert_eq!(
        c.end(),
        Some(&EndReason::AgentConnectFailed(
            ErrorKind::AgentNotConfigured
        ))
    );
}

#[test]
fn missing_frames_and_jitter_are_measured() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[], 0);
    c.media(&[0xFF; 160], 1, 0);
    c.media(&[0xFF; 160], 2, 20);
    c.media(&[0xFF; 160], 5, 85); // chunks 3 and 4 missing, 45 ms late
    assert_eq!(c.m.metrics().missing_total(), 2);
    assert_eq!(c.m.metrics().jitter.count(), 2);
    assert!(c.m.metrics().jitter.max().unwrap() >= ms(45));
}

// === turn timing ===

fn voiced(frames: usize) -> Vec<u8> {
    (0..frames * 160)
        .map(|i| if i % 2 == 0 { 0x90 } else { 0x10 })
        .collect()
}

#[test]
fn turn_latency_runs_from_the_callers_speech_end_to_the_first_reply_audio() {
    let mut c = Call::new(settings(AgentKind::Elevenlabs));
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    c.drain(Leg::Agent, 0);
    let speech = voiced(25);
    let mut t = 0;
    let mut chunk = 1;
    for f in speech.chunks(160) {
        c.media(f, chunk, t);
        chunk += 1;
        t += 20;
    }
    let speech_end = t - 20;
    for _ in 0..30 {
        c.media(&[0xFF; 160], chunk, t);
        chunk += 1;
        t += 20;
    }
    c.drain(Leg::Agent, t);
    // The agent says ElevenLabs caller transcript at t, then answers 300 ms later.
    c.agent(
        r#"{"type":"user_transcript","user_transcription_event":{"user_transcript":"hi"}}"#,
        t,
    );
    let a = b64(&[7u8; 800]);
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":1}}}}"#),
        t + 300,
    );
    c.twilio_audio(t + 300);
    let turn = c.m.figures().turn.quantile(1.0).unwrap();
    assert!(
        (turn - (t + 300 - speech_end) as f64 / 1e3).abs() < 1e-9,
        "{turn}"
    );
    let agent_turn = c.m.figures().agent_turn.quantile(1.0).unwrap();
    assert!((agent_turn - 0.3).abs() < 1e-9, "{agent_turn}");
    // More audio of the same reply is not another turn.
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":1}}}}"#),
        t + 400,
    );
    c.twilio_audio(t + 400);
    assert_eq!(c.m.figures().turn.len(), 1);
}

// === drain ===

#[test]
fn drain_deadline_without_a_notice_ends_at_once() {
    let mut c = Call::new(settings(AgentKind::Echo));
    c.start(&[], 0);
    assert!(!c.m.handle_drain_deadline(c.at(100)));
    assert_eq!(c.end(), Some(&EndReason::Shutdown));
}

#[test]
fn drain_notice_replaces_the_agents_audio_and_the_call_closes_once_it_played() {
    let mut s = settings(AgentKind::Elevenlabs);
    s.drain_notice = Some(Arc::from(vec![0x11u8; 1600])); // 200 ms
    let mut c = Call::new(s);
    c.start(&[], 0);
    c.m.poll_event();
    c.m.poll_event();
    c.m.handle_agent_connected();
    elevenlabs_ready(&mut c, 0);
    let a = b64(&[7u8; 800]);
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":1}}}}"#),
        10,
    );
    c.twilio_audio(10); // 100 ms sent, playing
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":1}}}}"#),
        20,
    );
    assert!(c.m.handle_drain_deadline(c.at(30)));
    assert!(!c.m.handle_drain_deadline(c.at(31)), "once");
    assert!(c.end().is_none());
    let sent = c.drain(Leg::Caller, 30);
    assert_eq!(
        sent[0]["event"], "clear",
        "the agent's playing audio is cleared"
    );
    let mut notice = Vec::new();
    for m in &sent {
        if m["event"] == "media" {
            let mut a = Vec::new();
            crate::wire::b64::decode(m["media"]["payload"].as_str().unwrap(), &mut a).unwrap();
            notice.extend(a);
        }
    }
    assert_eq!(
        notice,
        vec![0x11u8; 1600],
        "the queued agent audio gave way to the notice"
    );
    let last = sent.last().unwrap();
    assert_eq!(last["event"], "mark");
    assert_eq!(last["mark"]["name"], "ms-300");
    // Agent audio during the notice is dropped.
    c.agent(
        &format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":2}}}}"#),
        40,
    );
    assert!(c.drain(Leg::Caller, 40).is_empty());
    // Twilio confirms the notice played: the call closes.
    c.m.handle_caller(CallerEvent::Mark { name: "ms-300" }, c.at(250));
    assert_eq!(c.end(), Some(&EndReason::Shutdown));
}

#[test]
fn drain_notice_closes_at_its_deadline_without_confirmation() {
    let mut s = settings(AgentKind::Echo);
    s.drain_notice = Some(Arc::from(vec![0x11u8; 800])); // 100 ms
    let mut c = Call::new(s);
    c.start(&[], 0);
    assert!(c.m.handle_drain_deadline(c.at(1_000)));
    c.drain(Leg::Caller, 1_000);
    let deadline = c.at(1_100) + crate::call::DRAIN_NOTICE_GRACE;
    assert_eq!(c.m.poll_timeout(), Some(deadline));
    c.m.handle_timeout(deadline - ms(1));
    assert!(c.end().is_none());
    c.m.handle_timeout(deadline);
    assert_eq!(c.end(), Some(&EndReason::Shutdown));
}
