//! AssemblyAI Voice Agent and OpenAI Realtime end to end over loopback (issue 9), beside
//! ElevenLabs (tests/relay.rs): loadtest's simulated Twilio caller playing the speech
//! fixtures against the relay and the mock agents, which speak the public wire formats.
//! Per dialect: byte-exact audio both ways, session gating, barge-in → `clear` with stale
//! audio dropped (OpenAI: `audio_end_ms` checked against the marks the caller echoed), a tool
//! round trip through a local webhook (signature checked by the webhook, a timeout, an error
//! status), DTMF, fatal and non-fatal error events, and the agent chosen per call.

mod common;

use common::webhook::{self, Answer};
use common::*;
use loadtest::agent_sim::{self, MockAgentConfig, STALE_AUDIO_BYTE};
use loadtest::assemblyai_sim::{self, AssemblyAiConfig, ToolArgsField};
use loadtest::fixtures;
use loadtest::mock_server::script::{Action, Behavior, ReplyScript, Step, Wait};
use loadtest::openai_sim::{self, RealtimeConfig};
use loadtest::twilio_sim::{run_call, CallScript, TwilioClient, TwilioInbound};
use media_relay::agent::AgentKind;
use media_relay::auth::Secret;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const WEBHOOK_SECRET: &str = "whsec-relay-tests";

/// A relay that knows all three vendor dialects (mocks on loopback) and a tool webhook.
fn all_dialects(
    default: AgentKind,
    assemblyai_url: &str,
    openai_url: &str,
    elevenlabs_base: &str,
    webhook_url: Option<&str>,
) -> media_relay::config::ServeArgs {
    let mut a = elevenlabs_args(elevenlabs_base, "agent_el", None);
    a.call.agent = Some(default);
    a.agents.assemblyai.assemblyai_api_key = Some(Secret::new("test-key"));
    a.agents.assemblyai.assemblyai_url = assemblyai_url.into();
    a.agents.openai.openai_api_key = Some(Secret::new("test-key"));
    a.agents.openai.openai_realtime_url = openai_url.into();
    a.call.tool_webhook_url = webhook_url.map(str::to_owned);
    a.call.tool_webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    a.call.tool_timeout_ms = 500;
    a.call.dtmf_interdigit_ms = 200;
    a
}

fn reply_script(reply: &Arc<Vec<u8>>, after: usize) -> ReplyScript {
    ReplyScript {
        after_user_bytes: after,
        think_time: Duration::from_millis(100),
        chunk_bytes: 1600,
        chunk_interval: Duration::from_millis(40),
        ..ReplyScript::new(reply.clone())
    }
}

/// Sends `frames` frames of μ-law silence in real time (20 ms apart) on `client`'s stream,
/// stopping early if the relay closes it.
fn send_silence(client: &TwilioClient, frames: usize) -> tokio::task::JoinHandle<()> {
    let sender = client.sender().clone();
    tokio::spawn(async move {
        for _ in 0..frames {
            if sender.send_media(&[0xFF; 160]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn call(relay: &TestRelay, n: u64, params: &[(&str, &str)], audio: Arc<Vec<u8>>) -> CallScript {
    let mut s = CallScript::new(relay.media_url(), start_params(n, params), audio);
    s.linger = Duration::from_millis(2500);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_call_end_to_end_with_session_gating() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let mut cfg = AssemblyAiConfig::new()
        .with_behavior(Behavior::Reply(reply_script(&reply, caller.len() / 2)));
    // session.ready comes late: caller audio must wait for it in the early buffer.
    cfg.ready_delay = Some(Duration::from_millis(400));
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Assemblyai,
        &mock.ws_url(),
        "ws://127.0.0.1:9/v1/realtime",
        "http://127.0.0.1:9",
        None,
    ))
    .await;
    let params = [
        ("prompt", "Be brief."),
        ("first_message", "Hi, Acme here."),
        ("voice_id", "ivy"),
    ];
    let report = run_call(call(&relay, 1, &params, caller.clone()))
        .await
        .unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    let s = mock.next_session(T).await.unwrap();
    let init = s.init_message(T).await.unwrap();
    assert_eq!(init["type"], "session.update");
    for dir in ["input", "output"] {
        assert_eq!(init["session"][dir]["format"]["encoding"], "audio/pcmu");
        assert_eq!(init["session"][dir]["format"]["sample_rate"], 8000);
    }
    assert_eq!(init["session"]["system_prompt"], "Be brief.");
    assert_eq!(init["session"]["greeting"], "Hi, Acme here.");
    assert_eq!(init["session"]["output"]["voice"], "ivy");
    assert_eq!(
        s.request_header("authorization").as_deref(),
        Some("Bearer test-key")
    );
    // No input.audio before session.ready, and every caller byte arrived in order.
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
    assert!(s.user_audio() == *caller, "caller audio byte-exact");
    // The agent's reply reached the caller byte-exact.
    assert!(report.received_audio == *reply, "agent audio byte-exact");
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_started_total{agent=\"assemblyai\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_agent_connect_duration_seconds_count{agent=\"assemblyai\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_barge_in_clears_and_drops_the_stale_tail() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(vec![0x55u8; 16_000]);
    let script = ReplyScript {
        interrupt_after_chunks: Some(2),
        ..reply_script(&reply, 1600)
    };
    let mock =
        assemblyai_sim::start(AssemblyAiConfig::new().with_behavior(Behavior::Reply(script)))
            .await
            .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Assemblyai,
        &mock.ws_url(),
        "ws://127.0.0.1:9/v1/realtime",
        "http://127.0.0.1:9",
        None,
    ))
    .await;
    let report = run_call(call(&relay, 2, &[], caller)).await.unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert!(report.clears >= 1, "barge-in sent clear");
    assert!(
        !report.received_audio.contains(&STALE_AUDIO_BYTE),
        "stale audio of the cut reply reached the caller"
    );
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert!(
        metric(
            &m,
            "relay_frames_dropped_total{direction=\"agent_to_twilio\",reason=\"interrupted\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(&m, "relay_barge_ins_total{agent=\"assemblyai\"}"),
        1.0
    );
    assert!(
        metric(
            &m,
            "relay_barge_in_latency_seconds_count{agent=\"assemblyai\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_tools_dtmf_and_errors() {
    let hook = webhook::start(
        WEBHOOK_SECRET,
        vec![
            (
                "lookup_order",
                Answer::Result(serde_json::json!({"status": "shipped"})),
            ),
            ("slow_tool", Answer::Slow(Duration::from_secs(3))),
            ("broken_tool", Answer::Status(500)),
        ],
    )
    .await;
    let steps = vec![
        Step::new(
            Wait::UserBytes(800),
            Action::ToolCall {
                call_id: "call_1".into(),
                name: "lookup_order".into(),
                arguments: serde_json::json!({"order": "42"}),
            },
        ),
        Step::new(
            Wait::ClientMessages {
                kind: "tool.result".into(),
                count: 1,
            },
            Action::ToolCall {
                call_id: "call_2".into(),
                name: "slow_tool".into(),
                arguments: serde_json::json!({}),
            },
        ),
        Step::new(
            Wait::ClientMessages {
                kind: "tool.result".into(),
                count: 2,
            },
            Action::ToolCall {
                call_id: "call_3".into(),
                name: "broken_tool".into(),
                arguments: serde_json::json!({}),
            },
        ),
    ];
    let mut cfg = AssemblyAiConfig::new()
        .with_behavior(Behavior::Silent)
        .with_steps(steps);
    cfg.tool_args_field = ToolArgsField::Args;
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Assemblyai,
        &mock.ws_url(),
        "ws://127.0.0.1:9/v1/realtime",
        "http://127.0.0.1:9",
        Some(&hook.url()),
    ))
    .await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client
        .send_start(&start_params(3, &[("customer", "Ada")]))
        .await
        .unwrap();
    let frames = send_silence(&client, 150);
    let s = mock.next_session(T).await.unwrap();
    let results = s.wait_tool_results(3, T).await.unwrap();
    // The webhook's answer, as AssemblyAI wants it: a string.
    assert_eq!(results[0].call_id, "call_1");
    assert_eq!(results[0].output, r#"{"status":"shipped"}"#);
    assert!(
        results[1].output.contains("timed out"),
        "{:?}",
        results[1].output
    );
    assert!(
        results[2].output.contains("HTTP 500"),
        "{:?}",
        results[2].output
    );
    let received = hook.received();
    assert_eq!(received.len(), 3);
    assert!(
        received.iter().all(|r| r.signature_ok),
        "X-Relay-Signature verified"
    );
    let b = &received[0].body;
    assert_eq!(b["call_sid"], start_params(3, &[]).call_sid.as_str());
    assert_eq!(b["agent"], "assemblyai");
    assert_eq!(b["tool_call_id"], "call_1");
    assert_eq!(b["name"], "lookup_order");
    assert_eq!(
        b["arguments"],
        serde_json::json!({"order": "42"}),
        "args accepted like arguments"
    );

    // DTMF reaches the agent as a reply.create with the digits.
    for d in ["7", "3", "#"] {
        client.send_dtmf(d).await.unwrap();
    }
    let inputs = s.wait_text_inputs(1, T).await.unwrap();
    assert_eq!(
        inputs[0].text,
        "The caller pressed 73# on the phone keypad."
    );

    // A non-fatal error leaves the call up; a type-less fatal one (sent after it on the same
    // socket) ends it.
    s.send_error("invalid_audio", "not fatal").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!s.is_closed());
    s.send_typeless_error("UNAUTHORIZED", "key revoked").await;
    assert_eq!(wait_twilio_close(&mut client).await, Some(1011));
    frames.abort();
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"agent_error\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"agent_error_event\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_tool_calls_total{agent=\"assemblyai\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_tool_calls_total{agent=\"assemblyai\",result=\"timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_tool_calls_total{agent=\"assemblyai\",result=\"error_status\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "relay_dtmf_total{agent=\"assemblyai\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_session_ended_ends_the_call_cleanly() {
    let steps = vec![Step::new(Wait::UserBytes(1600), Action::End)];
    let mock = assemblyai_sim::start(
        AssemblyAiConfig::new()
            .with_behavior(Behavior::Silent)
            .with_steps(steps),
    )
    .await
    .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Assemblyai,
        &mock.ws_url(),
        "ws://127.0.0.1:9/v1/realtime",
        "http://127.0.0.1:9",
        None,
    ))
    .await;
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let report = run_call(call(&relay, 4, &[], caller)).await.unwrap();
    assert_eq!(report.close_code, Some(1000));
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"agent_ended\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_call_end_to_end_with_greeting_and_coalesced_deltas() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    // 10 ms deltas: the relay coalesces them into 20 ms (160-byte) media messages.
    let script = ReplyScript {
        chunk_bytes: 80,
        chunk_interval: Duration::from_millis(2),
        ..reply_script(&reply, caller.len() / 2)
    };
    let mock = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Reply(script)))
        .await
        .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Openai,
        "ws://127.0.0.1:9/v1/ws",
        &mock.ws_url(),
        "http://127.0.0.1:9",
        None,
    ))
    .await;
    let params = [
        ("prompt", "Be brief."),
        ("first_message", "Hello from Acme"),
    ];
    let report = run_call(call(&relay, 5, &params, caller.clone()))
        .await
        .unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    let s = mock.next_session(T).await.unwrap();
    let init = s.init_message(T).await.unwrap();
    assert_eq!(init["type"], "session.update");
    assert_eq!(init["session"]["type"], "realtime");
    assert_eq!(
        init["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(
        init["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(init["session"]["instructions"], "Be brief.");
    // The greeting is a response.create right after the update.
    let creates = s.messages_of_type("response.create");
    assert!(!creates.is_empty());
    assert!(creates[0].message["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("Hello from Acme"));
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
    assert!(s.user_audio() == *caller, "caller audio byte-exact");
    assert!(report.received_audio == *reply, "agent audio byte-exact");
    // Coalescing: 10 ms deltas became media messages of at least 20 ms (but the last).
    assert!(
        report.media_messages * 160 <= reply.len() + 160,
        "{} media messages for {} bytes",
        report.media_messages,
        reply.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_barge_in_truncates_at_what_the_caller_heard() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(vec![0x55u8; 48_000]);
    let script = ReplyScript {
        chunk_bytes: 800,
        chunk_interval: Duration::from_millis(60),
        interrupt_after_chunks: Some(20),
        ..reply_script(&reply, 1600)
    };
    let mock = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Reply(script)))
        .await
        .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Openai,
        "ws://127.0.0.1:9/v1/ws",
        &mock.ws_url(),
        "http://127.0.0.1:9",
        None,
    ))
    .await;
    let report = run_call(call(&relay, 6, &[], caller)).await.unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert!(report.clears >= 1);
    assert!(!report.received_audio.contains(&STALE_AUDIO_BYTE));
    let s = mock.next_session(T).await.unwrap();
    let t = s.wait_truncates(1, T).await.unwrap();
    // What the caller had played by the marks it echoed before the clear arrived. The relay
    // decides when the agent's speech-start arrives, so a mark echoed in the last moments
    // before the clear may still have been in flight: audio_end_ms is one of the echoed
    // offsets, at least every mark echoed 50 ms before the clear, at most all of them.
    let clear_at = report.clears_at[0];
    let echoed_before = |margin: Duration| {
        report
            .marks_echoed
            .iter()
            .zip(&report.marks_echoed_at)
            .filter(|(_, at)| **at + margin < clear_at)
            .filter_map(|(name, _)| name.strip_prefix("ms-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let heard = echoed_before(Duration::ZERO);
    let surely_heard = echoed_before(Duration::from_millis(50));
    assert!(heard > 0, "some of the reply played before the barge-in");
    assert!(
        (surely_heard..=heard).contains(&t[0].audio_end_ms)
            && report
                .marks_echoed
                .contains(&format!("ms-{}", t[0].audio_end_ms)),
        "audio_end_ms {} not an echoed offset in {surely_heard}..={heard}",
        t[0].audio_end_ms
    );
    assert!(t[0].accepted, "never more than was sent: {:?}", t[0]);
    assert!(t[0].audio_end_ms <= t[0].sent_ms.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tools_dtmf_and_non_fatal_errors() {
    let hook = webhook::start(
        WEBHOOK_SECRET,
        vec![
            (
                "lookup_order",
                Answer::Result(serde_json::json!({"status": "shipped"})),
            ),
            ("bad", Answer::BadBody),
        ],
    )
    .await;
    let steps = vec![
        Step::new(
            Wait::UserBytes(800),
            Action::ToolCall {
                call_id: "fc_1".into(),
                name: "lookup_order".into(),
                arguments: serde_json::json!({"order": "42"}),
            },
        ),
        Step::new(
            Wait::ClientMessages {
                kind: "response.create".into(),
                count: 1,
            },
            Action::ToolCall {
                call_id: "fc_2".into(),
                name: "bad".into(),
                arguments: serde_json::json!({}),
            },
        ),
    ];
    let mock = openai_sim::start(
        RealtimeConfig::new()
            .with_behavior(Behavior::Silent)
            .with_steps(steps),
    )
    .await
    .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Openai,
        "ws://127.0.0.1:9/v1/ws",
        &mock.ws_url(),
        "http://127.0.0.1:9",
        Some(&hook.url()),
    ))
    .await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&start_params(7, &[])).await.unwrap();
    let frames = send_silence(&client, 150);
    let s = mock.next_session(T).await.unwrap();
    let results = s.wait_tool_results(2, T).await.unwrap();
    assert_eq!(results[0].call_id, "fc_1");
    assert_eq!(results[0].output, r#"{"status":"shipped"}"#);
    assert!(
        results[1].output.contains("error"),
        "{:?}",
        results[1].output
    );
    // Each result is followed by response.create (the model answers with it).
    s.wait_messages_of_type("response.create", 2, T)
        .await
        .unwrap();
    assert!(hook.received().iter().all(|r| r.signature_ok));
    assert_eq!(hook.received()[0].body["agent"], "openai");
    for d in ["1", "2"] {
        client.send_dtmf(d).await.unwrap();
    }
    let inputs = s.wait_text_inputs(1, T).await.unwrap();
    assert_eq!(inputs[0].text, "The caller pressed 12 on the phone keypad.");
    // An error event does not end the call.
    s.send_error("invalid_value", "ignored").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!s.is_closed());
    client.send_stop().await.unwrap();
    assert_eq!(wait_twilio_close(&mut client).await, Some(1000));
    frames.abort();
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_tool_calls_total{agent=\"openai\",result=\"bad_response\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"agent_error_event\"}"
        ),
        1.0
    );
}

/// One relay, one default, and each call choosing its agent by its `agent` parameter; the
/// TwiML webhook refuses unknown names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_chosen_per_call_by_parameter() {
    let aai = assemblyai_sim::start(AssemblyAiConfig::new().with_behavior(Behavior::Echo))
        .await
        .unwrap();
    let oai = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Echo))
        .await
        .unwrap();
    let mut el_cfg = MockAgentConfig::new("agent_el");
    el_cfg.behavior = agent_sim::AgentBehavior::Echo;
    let el = agent_sim::start(el_cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Assemblyai,
        &aai.ws_url(),
        &oai.ws_url(),
        &el.api_base(),
        None,
    ))
    .await;
    let audio = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 50].to_vec());
    let mut runs = Vec::new();
    for (i, agent) in [None, Some("openai"), Some("elevenlabs"), Some("echo")]
        .into_iter()
        .enumerate()
    {
        let params: Vec<(&str, &str)> = agent.map(|a| ("agent", a)).into_iter().collect();
        let mut s = call(&relay, 10 + i as u64, &params, audio.clone());
        s.linger = Duration::from_millis(1500);
        runs.push(tokio::spawn(run_call(s)));
    }
    for r in runs {
        let report = r.await.unwrap().unwrap();
        assert!(
            report.protocol_errors.is_empty(),
            "{:?}",
            report.protocol_errors
        );
        assert!(
            report.received_audio == *audio,
            "each agent echoed its call byte-exact"
        );
    }
    assert_eq!(aai.sessions_started(), 1);
    assert_eq!(oai.sessions_started(), 1);
    assert_eq!(el.conversations_started(), 1);
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        4.0,
    )
    .await;
    for a in ["assemblyai", "openai", "elevenlabs", "echo"] {
        assert_eq!(
            metric(&m, &format!("relay_calls_started_total{{agent=\"{a}\"}}")),
            1.0,
            "{a}"
        );
    }
    // At TwiML time: a known agent is put in the stream parameters, an unknown one refused.
    let (status, twiml) = http(
        relay.addr,
        "POST",
        "/twiml?agent=openai",
        "CallSid=CA1&From=%2B15550001111",
    )
    .await;
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains("<Parameter name=\"agent\" value=\"openai\"/>"),
        "{twiml}"
    );
    let (status, body) = http(relay.addr, "POST", "/twiml?agent=gpt", "CallSid=CA1").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("invalid_agent") && body.contains("unknown agent"),
        "{body}"
    );
}

/// ElevenLabs tool calls and DTMF (its audio path is in tests/relay.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_tools_and_dtmf() {
    let hook = webhook::start(
        WEBHOOK_SECRET,
        vec![(
            "lookup_order",
            Answer::Result(serde_json::json!("order 42 shipped")),
        )],
    )
    .await;
    let mock = agent_sim::start(MockAgentConfig::new("agent_el"))
        .await
        .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        "ws://127.0.0.1:9/v1/ws",
        "ws://127.0.0.1:9/v1/realtime",
        &mock.api_base(),
        Some(&hook.url()),
    ))
    .await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&start_params(20, &[])).await.unwrap();
    let conv = mock.next_conversation(T).await.unwrap();
    conv.init_data(T).await.unwrap();
    conv.send_text(
        r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"lookup_order","tool_call_id":"toolu_1","parameters":{"order":"42"},"event_id":3}}"#
            .into(),
    )
    .await;
    client.send_dtmf("5").await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let (mut result, mut dtmf) = (None, None);
    while (result.is_none() || dtmf.is_none()) && tokio::time::Instant::now() < deadline {
        for m in conv.other_messages() {
            match m["type"].as_str() {
                Some("client_tool_result") => result = Some(m.clone()),
                Some("user_message") => dtmf = Some(m.clone()),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = result.expect("client_tool_result");
    assert_eq!(result["tool_call_id"], "toolu_1");
    assert_eq!(result["result"], "order 42 shipped");
    assert_eq!(result["is_error"], false);
    assert_eq!(
        dtmf.expect("user_message")["text"],
        "The caller pressed 5 on the phone keypad."
    );
    assert!(hook.received()[0].signature_ok);
    assert_eq!(hook.received()[0].body["agent"], "elevenlabs");
    client.send_stop().await.unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(T, client.recv()).await.unwrap() {
        if matches!(m, TwilioInbound::Close { .. }) {
            break;
        }
    }
}
