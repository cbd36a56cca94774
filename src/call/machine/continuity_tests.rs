//! Agent-failure continuity through the whole machine, with an injected clock: hold audio at
//! once, reconnects per dialect (resume, re-seed without a second greeting), the caller's
//! last second sent to the new session, the apology and the hang-up or transfer when
//! recovery is exhausted, the silent-agent timeout.

use super::control_tests::{audio_msg, call_settings};
use super::tests::*;
use super::*;
use crate::call::settings::{CallControl, Continuity, TransferDest};
use serde_json::Value;

fn continuity() -> Continuity {
    Continuity {
        max_recoveries: 3,
        deadline: Duration::from_secs(20),
        resume_caller_audio_bytes: 8000,
        response_timeout: Some(Duration::from_secs(15)),
        fallback: Vec::new(),
        hold_audio: std::sync::Arc::from(vec![0x11u8; 800]),
        failure_audio: std::sync::Arc::from(vec![0x22u8; 1600]),
    }
}

fn call(kind: AgentKind) -> Call {
    let mut s = call_settings(kind, CallControl::default());
    s.continuity = continuity();
    let mut c = Call::new(s);
    c.start(&[("first_message", "Hello, Acme here.")], 0);
    while c.m.poll_event().is_some() {}
    c.m.handle_agent_connected();
    ready_msg(&mut c, kind, 0);
    c.drain(Leg::Agent, 0);
    c
}

fn ready_msg(c: &mut Call, kind: AgentKind, at: u64) {
    match kind {
        AgentKind::Openai => c.agent(r#"{"type":"session.updated","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#, at),
        AgentKind::Assemblyai => c.agent(r#"{"type":"session.ready","session_id":"sess_1"}"#, at),
        AgentKind::Elevenlabs => elevenlabs_ready(c, at),
        _ => {} // local dialects are ready at once
    }
}

/// The caller leg's output at `at`: (audio bytes, events other than media and marks).
fn heard(c: &mut Call, at: u64) -> (Vec<u8>, Vec<Value>) {
    let (audio, other) = c.twilio_audio(at);
    (
        audio,
        other.into_iter().filter(|m| m["event"] != "mark").collect(),
    )
}

fn transcripts(c: &mut Call, kind: AgentKind) {
    let (user, agent) = match kind {
        AgentKind::Openai => (
            r#"{"type":"conversation.item.input_audio_transcription.completed","transcript":"Where is my order?"}"#,
            r#"{"type":"response.output_audio_transcript.done","transcript":"It shipped yesterday."}"#,
        ),
        AgentKind::Assemblyai => (
            r#"{"type":"transcript.user","text":"Where is my order?"}"#,
            r#"{"type":"transcript.agent","text":"It shipped yesterday."}"#,
        ),
        _ => (
            r#"{"type":"user_transcript","user_transcription_event":{"user_transcript":"Where is my order?"}}"#,
            r#"{"type":"agent_response","agent_response_event":{"agent_response":"It shipped yesterday."}}"#,
        ),
    };
    c.agent(user, 50);
    c.agent(agent, 60);
}

#[test]
fn a_closed_agent_socket_holds_the_caller_and_a_reseeded_openai_session_takes_over() {
    let mut c = call(AgentKind::Openai);
    transcripts(&mut c, AgentKind::Openai);
    c.agent(&audio_msg(AgentKind::Openai, 500), 100);
    heard(&mut c, 100);
    let gen = c.m.agent_generation();
    c.m.handle_agent_closed(Some(1006), c.at(200));
    assert!(c.end().is_none(), "the caller stays on the line");
    assert_ne!(
        c.m.agent_generation(),
        gen,
        "the driver retires the dead socket"
    );
    let (audio, other) = heard(&mut c, 200);
    assert_eq!(
        other,
        vec![serde_json::json!({"event":"clear","streamSid":SID})]
    );
    assert!(
        audio.len() >= 3200 && audio.iter().all(|&b| b == 0x11),
        "hold audio at once"
    );
    // The first attempt is at once: a fresh session without a greeting, history replayed.
    c.m.handle_timeout(c.at(200));
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::ConnectAgent(AgentKind::Openai))
    );
    // The caller keeps speaking during the gap: 2 s of it, of which the last 1 s goes on.
    for i in 0..100u8 {
        c.media(&[i; 160], 100 + u64::from(i), 200 + 20 * u64::from(i));
    }
    c.m.handle_agent_connected();
    let init = c.drain(Leg::Agent, 2200);
    let kinds: Vec<&str> = init.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "conversation.item.create",
            "conversation.item.create",
            "conversation.item.create"
        ],
        "no greeting response.create"
    );
    assert_eq!(init[1]["item"]["content"][0]["text"], "Where is my order?");
    assert_eq!(init[2]["item"]["role"], "assistant");
    assert_eq!(init[3]["item"]["role"], "system");
    ready_msg(&mut c, AgentKind::Openai, 2300);
    let (_, other) = heard(&mut c, 2300);
    assert_eq!(
        other,
        vec![serde_json::json!({"event":"clear","streamSid":SID})],
        "hold stops"
    );
    let sent = c.drain(Leg::Agent, 2300);
    let mut caller = Vec::new();
    for m in &sent {
        let mut a = Vec::new();
        crate::wire::b64::decode(m["audio"].as_str().unwrap(), &mut a).unwrap();
        caller.extend(a);
    }
    assert_eq!(caller.len(), 8000, "the last second of the gap");
    assert_eq!(caller[..160], [50u8; 160]);
    c.agent(&audio_msg(AgentKind::Openai, 100), 2500);
    let (audio, _) = heard(&mut c, 2500);
    assert!(
        audio.iter().all(|&b| b == 0x5a) && audio.len() == 800,
        "the agent is heard again"
    );
    let r = &c.m.recoveries()[0];
    assert_eq!(
        r.result,
        Some(crate::obs::labels::RecoveryResult::Recovered)
    );
    assert_eq!(
        r.gap_ms,
        Some(2400),
        "last agent audio (100 ms) to the first after (2.5 s)"
    );
}

#[test]
fn assemblyai_resumes_the_same_session_then_reseeds_when_refused() {
    let mut c = call(AgentKind::Assemblyai);
    transcripts(&mut c, AgentKind::Assemblyai);
    c.m.handle_agent_error(ErrorKind::Io, c.at(100));
    c.m.handle_timeout(c.at(100));
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::ConnectAgent(AgentKind::Assemblyai))
    );
    c.m.handle_agent_connected();
    let init = c.drain(Leg::Agent, 150);
    assert_eq!(
        init,
        vec![serde_json::json!({"type":"session.resume","session_id":"sess_1"})]
    );
    let gen = c.m.agent_generation();
    c.agent(
        r#"{"type":"session.error","code":"session_not_found","message":"expired"}"#,
        200,
    );
    assert_ne!(c.m.agent_generation(), gen, "a fresh connection follows");
    c.m.handle_timeout(c.at(200));
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::ConnectAgent(AgentKind::Assemblyai))
    );
    c.m.handle_agent_connected();
    let init = c.drain(Leg::Agent, 250);
    assert_eq!(init[0]["type"], "session.update");
    let prompt = init[0]["session"]["system_prompt"].as_str().unwrap();
    assert!(
        prompt.contains("Caller: Where is my order?") && prompt.contains("Do not greet"),
        "{prompt}"
    );
    assert!(
        init[0]["session"].get("greeting").is_none(),
        "no second greeting"
    );
    c.agent(r#"{"type":"session.ready","session_id":"sess_2"}"#, 300);
    assert!(c.m.recoveries()[0].result.is_some());
}

#[test]
fn elevenlabs_is_reseeded_with_an_empty_first_message_and_a_contextual_update() {
    let mut c = call(AgentKind::Elevenlabs);
    transcripts(&mut c, AgentKind::Elevenlabs);
    c.m.handle_agent_closed(Some(1011), c.at(100));
    c.m.handle_timeout(c.at(100));
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::ConnectAgent(AgentKind::Elevenlabs))
    );
    c.m.handle_agent_connected();
    let init = c.drain(Leg::Agent, 150);
    assert_eq!(init[0]["type"], "conversation_initiation_client_data");
    assert_eq!(
        init[0]["conversation_config_override"]["agent"]["first_message"],
        ""
    );
    assert_eq!(init[1]["type"], "contextual_update");
    assert!(init[1]["text"]
        .as_str()
        .unwrap()
        .contains("Agent: It shipped yesterday."));
}

#[test]
fn exhausted_recovery_plays_the_apology_then_hangs_up_once_it_was_heard() {
    let mut c = call(AgentKind::Openai);
    c.m.handle_agent_closed(Some(1006), c.at(100));
    let mut now = 100;
    let mut attempts = 0;
    // Every reconnect fails at once, until the 20 s deadline.
    while c.end().is_none() && now < 30_000 {
        c.m.handle_timeout(c.at(now));
        while let Some(ev) = c.m.poll_event() {
            if ev == CallEvent::ConnectAgent(AgentKind::Openai) {
                attempts += 1;
                c.m.handle_agent_connect_failed(ErrorKind::Connect, c.at(now));
            }
        }
        if c.m.actions.active().is_some() {
            break;
        }
        let next =
            c.m.poll_timeout()
                .map_or(now + 100, |t| t.duration_since(c.t0).as_millis() as u64);
        // Deadlines fall between whole ms: step past them.
        now = next.max(now + 1);
    }
    assert!(attempts >= 10, "{attempts} attempts");
    assert!(now <= 20_200, "gave up at the deadline: {now} ms");
    let (audio, _) = heard(&mut c, now);
    assert!(audio.ends_with(&[0x22; 1600]), "the apology plays");
    assert!(c.end().is_none(), "not before it was heard");
    let (_, marks, _) = {
        let mut c2 = Vec::new();
        let out = c.drain(Leg::Caller, now);
        for m in out {
            c2.push(m);
        }
        (0, c2, 0)
    };
    let _ = marks;
    c.m.handle_timeout(c.at(now + 6_000));
    assert_eq!(
        c.end(),
        Some(&EndReason::AgentClosed(Some(1006))),
        "the cap ends it"
    );
    assert_eq!(
        c.m.recoveries()[0].result,
        Some(crate::obs::labels::RecoveryResult::Exhausted)
    );
}

#[test]
fn exhausted_recovery_transfers_to_the_operator_when_it_can() {
    let mut s = call_settings(
        AgentKind::Openai,
        CallControl {
            targets: vec![("desk".into(), TransferDest::Number("+15551230001".into()))],
            operator_target: Some("desk".into()),
            dial_timeout_secs: 30,
            ..CallControl::default()
        },
    );
    s.continuity = Continuity {
        max_recoveries: 0,
        ..continuity()
    };
    s.continuity.max_recoveries = 1;
    s.continuity.deadline = Duration::from_secs(1);
    let mut c = Call::new(s);
    c.m.set_transfers_available(true);
    c.start(&[], 0);
    while c.m.poll_event().is_some() {}
    c.m.handle_agent_connected();
    ready_msg(&mut c, AgentKind::Openai, 0);
    c.m.handle_agent_closed(None, c.at(100));
    c.m.handle_timeout(c.at(1200));
    while c.m.poll_event().is_some() {}
    let mut marks = Vec::new();
    for m in c.drain(Leg::Caller, 1200) {
        if m["event"] == "mark" {
            marks.push(m["mark"]["name"].as_str().unwrap().to_owned());
        }
    }
    for name in &marks {
        c.m.handle_caller(CallerEvent::Mark { name }, c.at(3000));
    }
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::Transfer {
            dest: TransferDest::Number("+15551230001".into()),
            summary: Some("The caller's AI agent failed; the caller was told.".into()),
        })
    );
}

#[test]
fn a_connected_agent_that_never_answers_the_caller_is_a_failure() {
    let mut c = call(AgentKind::Openai);
    // One second of loud speech, then silence: the caller waits for a reply.
    for i in 0..50u64 {
        let f: Vec<u8> = (0..160)
            .map(|j| if j % 2 == 0 { 0x00 } else { 0x80 })
            .collect();
        c.media(&f, i + 1, 1000 + 20 * i);
    }
    for i in 50..150u64 {
        c.media(&[0xFF; 160], i + 1, 1000 + 20 * i);
    }
    let deadline = c.m.poll_timeout().unwrap();
    let at = deadline.duration_since(c.t0).as_millis() as u64;
    assert!((15_000..18_000).contains(&at), "the response timeout: {at}");
    c.m.handle_timeout(deadline);
    assert_eq!(
        c.m.recoveries()[0].cause,
        crate::obs::labels::RecoveryCause::Silent
    );
    assert!(c.end().is_none());
}
