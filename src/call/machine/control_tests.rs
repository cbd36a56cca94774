//! Call actions through the whole machine, per source and dialect, with an injected clock:
//! the goodbye gate (reply done, last byte sent, its mark echoed), the safety cap, transfers
//! and their REST outcome, refusals, the operator key, barge-in during a goodbye.

use super::actions::{CallAction, CAP_GRACE, QUIET, UPDATE_TIMEOUT};
use super::tests::*;
use super::*;
use crate::call::settings::{CallControl, TransferDest};
use crate::obs::labels::{ActionKind, ActionResult, ActionSource};
use serde_json::{json, Value};

fn control() -> CallControl {
    CallControl {
        targets: vec![
            ("sales".into(), TransferDest::Number("+15551230001".into())),
            (
                "support".into(),
                TransferDest::Sip("sip:queue@pbx.example.com".into()),
            ),
        ],
        operator_digit: Some('0'),
        operator_target: Some("support".into()),
        builtin_tools: true,
        dial_timeout_secs: 30,
        ..CallControl::default()
    }
}

/// A call of `kind` with the agent ready and transfers available.
fn ready(kind: AgentKind, control: CallControl) -> Call {
    let mut c = Call::new(call_settings(kind, control));
    c.m.set_transfers_available(true);
    c.start(&[], 0);
    while c.m.poll_event().is_some() {}
    c.m.handle_agent_connected();
    match kind {
        AgentKind::Openai => c.agent(r#"{"type":"session.updated","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#, 0),
        AgentKind::Assemblyai => c.agent(r#"{"type":"session.ready","session_id":"s"}"#, 0),
        AgentKind::Elevenlabs => elevenlabs_ready(&mut c, 0),
        _ => {} // local dialects are ready at once
    }
    c.drain(Leg::Agent, 0);
    c
}

/// Settings with the relay's call tools declared, room for 8 s of agent audio, no idle end.
pub(super) fn call_settings(kind: AgentKind, control: CallControl) -> CallSettings {
    let mut s = settings(kind);
    let names: Vec<String> = control.targets.iter().map(|(n, _)| n.clone()).collect();
    s.agents.shared.call_tools = crate::agent::call_tool_definitions(&names, false);
    s.control = control;
    s.caller_outbox_bytes = 64_000;
    s.caller_idle_timeout = Duration::from_secs(3600);
    s
}

/// `ms` of agent audio in the dialect's shape.
pub(super) fn audio_msg(kind: AgentKind, ms: usize) -> String {
    let a = b64(&vec![0x5a; ms * 8]);
    match kind {
        AgentKind::Openai => {
            format!(r#"{{"type":"response.output_audio.delta","item_id":"item_1","delta":"{a}"}}"#)
        }
        AgentKind::Assemblyai => format!(r#"{{"type":"reply.audio","data":"{a}"}}"#),
        _ => format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{a}","event_id":1}}}}"#),
    }
}

/// What the caller leg sends at `at`: (audio bytes, mark names, other events).
fn caller_out(c: &mut Call, at: u64) -> (usize, Vec<String>, Vec<Value>) {
    let (audio, other) = c.twilio_audio(at);
    let (marks, other): (Vec<Value>, Vec<Value>) =
        other.into_iter().partition(|m| m["event"] == "mark");
    let marks = marks
        .iter()
        .map(|m| m["mark"]["name"].as_str().unwrap_or("").to_owned())
        .collect();
    (audio.len(), marks, other)
}

fn echo_marks(c: &mut Call, marks: &[String], at: u64) {
    for name in marks {
        c.m.handle_caller(CallerEvent::Mark { name }, c.at(at));
    }
}

fn actions_counted(
    c: &CallMachine,
    kind: ActionKind,
    source: ActionSource,
    result: ActionResult,
) -> bool {
    c.action_record()
        .is_some_and(|r| r.kind == kind && r.source == source && r.result == result)
}

#[test]
fn openai_end_call_waits_for_the_goodbye_to_be_played_then_ends_with_nothing_cut() {
    let mut c = Call::new(call_settings(AgentKind::Openai, control()));
    c.start(&[], 0);
    while c.m.poll_event().is_some() {}
    c.m.handle_agent_connected();
    let init = c.drain(Leg::Agent, 0);
    let tools: Vec<&str> = init[0]["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["end_call", "transfer_call"],
        "the built-in tools are declared"
    );
    c.agent(r#"{"type":"session.updated","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#, 0);
    c.agent(r#"{"type":"response.created"}"#, 100);
    // A 3.05 s goodbye (its tail is shorter than the mark interval), then the call to end_call in the same response.
    c.agent(&audio_msg(AgentKind::Openai, 3050), 100);
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"call_end","name":"end_call","arguments":"{\"reason\":\"done\"}"}"#, 120);
    assert!(c.m.poll_event().is_none(), "never sent to the tool webhook");
    let answer = c.drain(Leg::Agent, 120);
    assert_eq!(
        answer.len(),
        1,
        "answered, without response.create: {answer:?}"
    );
    assert_eq!(answer[0]["item"]["call_id"], "call_end");
    let (bytes, mut marks, _) = caller_out(&mut c, 130);
    assert_eq!(bytes, 24_400, "the whole goodbye goes to the carrier");
    c.agent(
        r#"{"type":"response.done","response":{"status":"completed"}}"#,
        140,
    );
    marks.extend(caller_out(&mut c, 140).1);
    let (last, earlier) = marks.split_last().unwrap();
    assert_eq!(last, "ms-3050", "a mark after the last byte");
    // The carrier plays it: marks echo as the audio plays; the call ends at the last one.
    echo_marks(&mut c, earlier, 2000);
    assert!(c.end().is_none(), "not before the goodbye has played");
    echo_marks(&mut c, std::slice::from_ref(last), 3190);
    assert_eq!(c.end(), Some(&EndReason::AgentEndCall));
    assert_eq!(
        c.m.playout_ms(),
        (3050, 0),
        "nothing of the goodbye was cut"
    );
    assert!(actions_counted(
        &c.m,
        ActionKind::EndCall,
        ActionSource::BuiltinTool,
        ActionResult::Accepted
    ));
}

#[test]
fn without_mark_echoes_the_cap_ends_the_call_and_measures_the_cut() {
    let mut c = ready(AgentKind::Openai, control());
    c.agent(&audio_msg(AgentKind::Openai, 2000), 100);
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"e","name":"end_call","arguments":"{}"}"#, 110);
    c.agent(
        r#"{"type":"response.done","response":{"status":"completed"}}"#,
        120,
    );
    caller_out(&mut c, 120);
    let cap = c.m.poll_timeout().expect("the cap is armed");
    assert_eq!(cap, c.at(120) + Duration::from_millis(2000) + CAP_GRACE);
    c.m.handle_timeout(cap - Duration::from_millis(1));
    assert!(c.end().is_none());
    c.m.handle_timeout(cap);
    assert_eq!(c.end(), Some(&EndReason::AgentEndCall));
}

#[test]
fn elevenlabs_end_call_system_tool_then_close_1000_hangs_up_after_the_goodbye() {
    let mut c = ready(AgentKind::Elevenlabs, control());
    c.agent(&audio_msg(AgentKind::Elevenlabs, 1550), 100);
    c.agent(r#"{"type":"agent_tool_response","agent_tool_response":{"tool_name":"end_call","tool_call_id":"end_call_1","tool_type":"system","is_error":false,"is_called":true,"event_id":1}}"#, 110);
    let (bytes, mut marks, _) = caller_out(&mut c, 110);
    assert_eq!(bytes, 12_400);
    c.m.handle_agent_closed(Some(1000), c.at(120));
    assert!(
        c.end().is_none(),
        "the agent's close does not cut the goodbye"
    );
    assert!(c.m.agent_gone());
    marks.extend(caller_out(&mut c, 120).1);
    let (last, earlier) = marks.split_last().unwrap();
    assert_eq!(last, "ms-1550");
    echo_marks(&mut c, earlier, 1000);
    assert!(c.end().is_none());
    echo_marks(&mut c, std::slice::from_ref(last), 1620);
    assert_eq!(c.end(), Some(&EndReason::AgentEndCall));
    assert!(actions_counted(
        &c.m,
        ActionKind::EndCall,
        ActionSource::SystemTool,
        ActionResult::Accepted
    ));

    // A clean close alone means the same; any other close ends the call at once.
    let mut c = ready(AgentKind::Elevenlabs, control());
    c.agent(&audio_msg(AgentKind::Elevenlabs, 550), 100);
    let mut marks = caller_out(&mut c, 100).1;
    c.m.handle_agent_closed(Some(1000), c.at(110));
    assert!(c.end().is_none());
    marks.extend(caller_out(&mut c, 110).1);
    echo_marks(&mut c, &marks, 660);
    assert_eq!(c.end(), Some(&EndReason::AgentEndCall));
    let mut c = ready(AgentKind::Elevenlabs, control());
    c.m.handle_agent_closed(Some(1011), c.at(110));
    assert_eq!(c.end(), Some(&EndReason::AgentClosed(Some(1011))));
}

#[test]
fn assemblyai_end_call_waits_for_the_reply_the_answer_prompts() {
    let mut c = ready(AgentKind::Assemblyai, control());
    c.agent(r#"{"type":"reply.started","reply_id":"r1"}"#, 100);
    c.agent(
        r#"{"type":"tool.call","call_id":"c1","name":"end_call","args":{}}"#,
        110,
    );
    assert!(c.drain(Leg::Agent, 110).is_empty(), "held until reply.done");
    c.agent(r#"{"type":"reply.done"}"#, 120);
    let sent = c.drain(Leg::Agent, 120);
    assert_eq!(sent[0]["type"], "tool.result");
    // The agent says its goodbye in answer: the call waits for that reply.
    c.m.handle_timeout(c.at(120) + QUIET / 2);
    assert!(c.end().is_none());
    c.agent(r#"{"type":"reply.started","reply_id":"r2"}"#, 400);
    c.agent(&audio_msg(AgentKind::Assemblyai, 1050), 410);
    let (bytes, mut marks, _) = caller_out(&mut c, 410);
    assert_eq!(bytes, 8400);
    c.agent(r#"{"type":"reply.done"}"#, 2500);
    marks.extend(caller_out(&mut c, 2500).1);
    assert_eq!(marks.last().map(String::as_str), Some("ms-1050"));
    echo_marks(&mut c, &marks[..marks.len() - 1], 1000);
    assert!(c.end().is_none());
    echo_marks(&mut c, &marks, 2600);
    assert_eq!(c.end(), Some(&EndReason::AgentEndCall));
}

#[test]
fn session_ended_plays_what_was_sent_before_closing() {
    let mut c = ready(AgentKind::Assemblyai, control());
    c.agent(&audio_msg(AgentKind::Assemblyai, 850), 100);
    let mut marks = caller_out(&mut c, 100).1;
    c.agent(r#"{"type":"session.ended"}"#, 110);
    assert!(c.end().is_none());
    marks.extend(caller_out(&mut c, 110).1);
    echo_marks(&mut c, &marks, 960);
    assert_eq!(c.end(), Some(&EndReason::AgentEnded));
}

#[test]
fn a_transfer_is_placed_only_after_the_announcement_was_played() {
    let mut c = ready(AgentKind::Openai, control());
    c.agent(&audio_msg(AgentKind::Openai, 1200), 100);
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"t1","name":"transfer_call","arguments":"{\"target\":\"sales\",\"summary\":\"Order <42> & refund\"}"}"#, 110);
    assert!(
        c.drain(Leg::Agent, 110).is_empty(),
        "the result waits for the transfer"
    );
    c.agent(
        r#"{"type":"response.done","response":{"status":"completed"}}"#,
        120,
    );
    let (_, marks, _) = caller_out(&mut c, 120);
    assert!(
        c.m.poll_event().is_none(),
        "not before the announcement played"
    );
    echo_marks(&mut c, &marks, 1320);
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::Transfer {
            dest: TransferDest::Number("+15551230001".into()),
            summary: Some("Order <42> & refund".into()),
        })
    );
    // Agent audio after the announcement is not played.
    c.agent(&audio_msg(AgentKind::Openai, 100), 1330);
    assert_eq!(caller_out(&mut c, 1330).0, 0);
    assert_eq!(dropped(&c.m, Direction::ToCaller), 1);
    c.m.handle_call_update(Ok(()), c.at(1400));
    let sent = c.drain(Leg::Agent, 1400);
    assert_eq!(sent.len(), 1, "recorded without response.create: {sent:?}");
    assert!(sent[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("transferring"));
    c.m.handle_caller(CallerEvent::Stop, c.at(1500));
    assert_eq!(c.end(), Some(&EndReason::Transferred));
}

#[test]
fn a_failed_update_leaves_the_caller_with_the_agent_which_is_told() {
    let mut c = ready(AgentKind::Openai, control());
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"t1","name":"transfer_call","arguments":"{\"target\":\"support\"}"}"#, 100);
    c.agent(
        r#"{"type":"response.done","response":{"status":"completed"}}"#,
        110,
    );
    assert!(matches!(
        c.m.poll_event(),
        Some(CallEvent::Transfer {
            dest: TransferDest::Sip(_),
            ..
        })
    ));
    c.m.handle_call_update(Err("carrier answered HTTP 500".into()), c.at(200));
    let sent = c.drain(Leg::Agent, 200);
    assert_eq!(sent.len(), 2, "the error, then response.create: {sent:?}");
    assert!(sent[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("could not be placed"));
    assert_eq!(sent[1]["type"], "response.create");
    assert!(actions_counted(
        &c.m,
        ActionKind::Transfer,
        ActionSource::BuiltinTool,
        ActionResult::UpdateFailed
    ));
    // The call goes on: the agent speaks again and the caller hears it.
    c.agent(&audio_msg(AgentKind::Openai, 100), 300);
    assert_eq!(caller_out(&mut c, 300).0, 800);
    c.m.handle_caller(CallerEvent::Stop, c.at(400));
    assert_eq!(c.end(), Some(&EndReason::CallerHangup));

    // An update that never answers times out the same way.
    let mut c = ready(AgentKind::Openai, control());
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"t2","name":"transfer_call","arguments":"{\"target\":\"sales\"}"}"#, 100);
    c.agent(
        r#"{"type":"response.done","response":{"status":"completed"}}"#,
        110,
    );
    assert!(matches!(c.m.poll_event(), Some(CallEvent::Transfer { .. })));
    let deadline = c.m.poll_timeout().unwrap();
    assert_eq!(deadline, c.at(110) + UPDATE_TIMEOUT);
    c.m.handle_timeout(deadline);
    let sent = c.drain(Leg::Agent, 20_200);
    assert!(sent[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    assert!(c.end().is_none());
}

#[test]
fn refusals_are_tool_errors_and_leave_the_call_alone() {
    let mut c = ready(AgentKind::Openai, control());
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"x","name":"transfer_call","arguments":"{\"target\":\"+15559990000\"}"}"#, 100);
    let sent = c.drain(Leg::Agent, 100);
    assert!(sent[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("unknown transfer target"));
    assert_eq!(
        sent[1]["type"], "response.create",
        "the agent is asked to answer"
    );
    assert!(actions_counted(
        &c.m,
        ActionKind::Transfer,
        ActionSource::BuiltinTool,
        ActionResult::UnknownTarget
    ));
    // A second action while one is in progress, and end_call during a transfer.
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"t","name":"transfer_call","arguments":"{\"target\":\"sales\"}"}"#, 200);
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"t2","name":"transfer_call","arguments":"{\"target\":\"support\"}"}"#, 210);
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"e","name":"end_call","arguments":"{}"}"#, 220);
    let sent = c.drain(Leg::Agent, 220);
    let outputs: Vec<&str> = sent
        .iter()
        .filter_map(|m| m["item"]["output"].as_str())
        .collect();
    assert_eq!(outputs.len(), 2, "{sent:?}");
    assert!(outputs.iter().all(|o| o.contains("already in progress")));
    assert!(c.end().is_none());
    // Without REST access a transfer is unavailable.
    let mut c = ready(AgentKind::Openai, control());
    c.m.set_transfers_available(false);
    c.agent(r#"{"type":"response.function_call_arguments.done","call_id":"x","name":"transfer_call","arguments":"{\"target\":\"sales\"}"}"#, 100);
    let sent = c.drain(Leg::Agent, 100);
    assert!(sent[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("not available"));
}

#[test]
fn the_operator_key_transfers_and_is_not_sent_to_the_agent() {
    let mut c = ready(AgentKind::Openai, control());
    c.m.handle_caller(CallerEvent::Dtmf { digit: "0" }, c.at(100));
    assert!(c.drain(Leg::Agent, 100).is_empty());
    // No reply is open: the agent's quiet counts as done.
    c.m.handle_timeout(c.at(100) + QUIET);
    assert_eq!(
        c.m.poll_event(),
        Some(CallEvent::Transfer {
            dest: TransferDest::Sip("sip:queue@pbx.example.com".into()),
            summary: None,
        })
    );
    assert!(actions_counted(
        &c.m,
        ActionKind::Transfer,
        ActionSource::Dtmf,
        ActionResult::Accepted
    ));
    // Other keys still reach the agent.
    let mut c = ready(AgentKind::Openai, control());
    c.m.handle_caller(CallerEvent::Dtmf { digit: "5" }, c.at(100));
    c.m.handle_caller(CallerEvent::Dtmf { digit: "#" }, c.at(110));
    assert!(!c.drain(Leg::Agent, 110).is_empty());
}

#[test]
fn a_webhook_answer_can_end_the_call_after_the_agent_speaks_to_it() {
    let mut c = ready(AgentKind::Elevenlabs, control());
    c.agent(r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"cancel_order","tool_call_id":"w1","parameters":{}}}"#, 100);
    assert!(matches!(c.m.poll_event(), Some(CallEvent::CallTool { .. })));
    let answer = crate::call::tool_webhook::parse_answer(
        br#"{"result":{"cancelled":true},"action":{"type":"end_call","reason":"resolved"}}"#,
    );
    c.m.handle_tool_result("w1", answer, c.at(200));
    let sent = c.drain(Leg::Agent, 200);
    assert_eq!(sent[0]["type"], "client_tool_result");
    assert!(actions_counted(
        &c.m,
        ActionKind::EndCall,
        ActionSource::Webhook,
        ActionResult::Accepted
    ));
    c.agent(&audio_msg(AgentKind::Elevenlabs, 650), 300);
    let mut marks = caller_out(&mut c, 300).1;
    c.m.handle_timeout(c.at(300) + QUIET);
    assert!(c.end().is_none(), "waits for the mark");
    marks.extend(caller_out(&mut c, 1800).1);
    assert_eq!(marks.last().map(String::as_str), Some("ms-650"));
    echo_marks(&mut c, &marks, 1900);
    assert_eq!(c.end(), Some(&EndReason::AgentEndCall));
}

#[test]
fn elevenlabs_client_tools_named_after_the_call_tools_are_actions() {
    let mut c = ready(AgentKind::Elevenlabs, control());
    c.agent(r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"transfer_call","tool_call_id":"c1","parameters":{"target":"sales","summary":"s"}}}"#, 100);
    assert!(c.m.poll_event().is_none(), "not sent to the webhook");
    assert!(actions_counted(
        &c.m,
        ActionKind::Transfer,
        ActionSource::ClientTool,
        ActionResult::Accepted
    ));
    c.agent(r#"{"type":"agent_tool_response","agent_tool_response":{"tool_name":"transfer_to_number"}}"#, 110);
    // The system tool's transfer is refused as in progress (one action at a time).
    assert!(actions_counted(
        &c.m,
        ActionKind::Transfer,
        ActionSource::ClientTool,
        ActionResult::Accepted
    ));
}

#[test]
fn caller_speech_does_not_cut_a_goodbye_unless_configured() {
    for cancel in [false, true] {
        let mut c = ready(
            AgentKind::Elevenlabs,
            CallControl {
                end_call_cancel_on_speech: cancel,
                ..control()
            },
        );
        c.agent(&audio_msg(AgentKind::Elevenlabs, 1000), 100);
        c.agent(r#"{"type":"agent_tool_response","agent_tool_response":{"tool_name":"end_call","tool_type":"system"}}"#, 110);
        caller_out(&mut c, 110);
        c.agent(&audio_msg(AgentKind::Elevenlabs, 1000), 120);
        c.agent(
            r#"{"type":"interruption","interruption_event":{"event_id":1}}"#,
            130,
        );
        let (_, _, other) = caller_out(&mut c, 130);
        let cleared = other.iter().any(|m| m["event"] == "clear");
        assert_eq!(cleared, cancel, "cancel_on_speech={cancel}");
        let r = c.m.action_record().unwrap();
        assert_eq!(r.result == ActionResult::Cancelled, cancel);
    }
}

#[test]
fn caller_hangup_without_an_action_is_caller_hangup_and_a_redirect_close_is_transferred() {
    let mut c = ready(AgentKind::Openai, control());
    c.m.handle_caller_closed();
    assert_eq!(c.end(), Some(&EndReason::CallerClosed));
    let mut c = ready(AgentKind::Openai, control());
    c.m.request_action(
        CallAction::Transfer {
            target: "sales".into(),
            reason: None,
            summary: None,
        },
        ActionSource::Dtmf,
        None,
        c.at(10),
    );
    c.m.handle_timeout(c.at(10) + QUIET);
    assert!(matches!(c.m.poll_event(), Some(CallEvent::Transfer { .. })));
    // The carrier's stop may come before its REST answer.
    c.m.handle_caller_closed();
    assert_eq!(c.end(), Some(&EndReason::Transferred));
    let _ = json!(null);
}
