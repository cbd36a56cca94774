//! The Telnyx carrier end to end over loopback: loadtest's simulated Telnyx caller
//! (`loadtest::telnyx_sim`, written from Telnyx's media-streaming docs: `stream_id`,
//! `sequence_number`, `custom_parameters` as an object or a list, frames out of order, and a
//! strict check that the relay sends only `media`/`mark`/`clear` with no stream id) against
//! the relay and the mock agents of every dialect. The Telnyx counterparts of tests/relay.rs,
//! tests/dialects.rs and tests/security.rs: byte-exact audio both ways with shuffled frames,
//! custom parameters, marks, barge-in, DTMF, tools, Ed25519-signed TeXML webhooks, stream
//! tokens in the stream URL, and bad input.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::webhook::{self, Answer};
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use loadtest::agent_sim::{self, AgentBehavior, MockAgentConfig, STALE_AUDIO_BYTE};
use loadtest::assemblyai_sim::{self, AssemblyAiConfig};
use loadtest::fixtures;
use loadtest::mock_server::script::{Action, Behavior, ReplyScript, Step, Wait};
use loadtest::openai_sim::{self, RealtimeConfig};
use loadtest::telnyx_sim::{
    run_call, CallReport, CallScript, CustomParametersShape, FrameOrder, StartParams, TelnyxClient,
    TelnyxInbound,
};
use media_relay::agent::AgentKind;
use media_relay::auth::Secret;
use media_relay::carrier::telnyx::REORDER_WINDOW;
use media_relay::config::ServeArgs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const WEBHOOK_SECRET: &str = "whsec-telnyx-tests";
const ADMIN: &str = "admin-telnyx-tests";
/// An address nothing listens on, for the dialects a test does not use.
const NOWHERE_WS: &str = "ws://127.0.0.1:9/v1/ws";
const NOWHERE_HTTP: &str = "http://127.0.0.1:9";

// ---- set-up ---------------------------------------------------------------------------------

/// A relay that knows every dialect (vendor mocks on loopback, the local echo agent), serves
/// Telnyx without signature checks (these tests are about the media path; signatures have
/// their own tests below), and answers `/calls` behind [`ADMIN`].
fn all_dialects(
    default: AgentKind,
    assemblyai_url: &str,
    openai_url: &str,
    elevenlabs_base: &str,
    webhook_url: Option<&str>,
) -> ServeArgs {
    let mut a = elevenlabs_args(elevenlabs_base, "agent_el", None);
    a.call.agent = Some(default);
    a.agents.assemblyai.assemblyai_api_key = Some(Secret::new("test-key"));
    a.agents.assemblyai.assemblyai_url = assemblyai_url.into();
    a.agents.openai.openai_api_key = Some(Secret::new("test-key"));
    a.agents.openai.openai_realtime_url = openai_url.into();
    a.agents.echo.echo_delay_ms = 100;
    a.call.tool_webhook_url = webhook_url.map(str::to_owned);
    a.call.tool_webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    a.call.tool_timeout_ms = 2000;
    a.call.dtmf_interdigit_ms = 200;
    a.carriers.telnyx.insecure_skip_telnyx_signature = true;
    a.http.admin_token = Some(Secret::new(ADMIN));
    a
}

/// The relay's Telnyx media URL (no token).
fn telnyx_url(relay: &TestRelay) -> String {
    format!("ws://{}/telnyx/media", relay.addr)
}

/// Telnyx `start` parameters for simulated call `n` with these custom parameters, written
/// in `shape`.
fn telnyx_start(n: u64, params: &[(&str, &str)], shape: CustomParametersShape) -> StartParams {
    let mut s = StartParams::for_call(n);
    s.custom_parameters = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.custom_parameters_shape = shape;
    s
}

fn script(relay: &TestRelay, start: StartParams, audio: Arc<Vec<u8>>) -> CallScript {
    let mut s = CallScript::new(telnyx_url(relay), start, audio);
    s.linger = Duration::from_millis(2500);
    s
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

fn assert_clean(report: &CallReport, what: &str) {
    assert!(
        report.protocol_errors.is_empty(),
        "{what}: the relay sent what Telnyx rejects: {:?}",
        report.protocol_errors
    );
}

/// The relay's `/calls/{call_sid}` summary of a live or recently ended call.
async fn summary(addr: SocketAddr, call_sid: &str) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = http_with(
        addr,
        "GET",
        &format!("/calls/{call_sid}"),
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200, "/calls/{call_sid}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Sends `frames` frames of μ-law silence in real time (20 ms apart) on the stream, in line
/// with the other numbered messages, stopping early if the relay closes it.
fn send_silence(client: &TelnyxClient, frames: usize) -> tokio::task::JoinHandle<()> {
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

/// Reads until the relay closes the stream; returns the close code and how many `media`
/// messages arrived before it. Panics on a protocol violation or if nothing closes in time.
async fn wait_telnyx_close(client: &mut TelnyxClient) -> (Option<u16>, usize) {
    let deadline = tokio::time::Instant::now() + T;
    let mut media = 0;
    loop {
        let next = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("relay closes the Telnyx socket in time");
        match next {
            Ok(Some(TelnyxInbound::Close { code, .. })) => return (code, media),
            Ok(None) => return (None, media),
            Ok(Some(TelnyxInbound::Media { .. })) => media += 1,
            Ok(Some(_)) => continue,
            Err(e) => panic!("Telnyx-side protocol error: {e:#}"),
        }
    }
}

/// Reads media until `n` bytes of audio arrived; returns them. Panics if the relay closes
/// the stream, violates the wire, or is too slow.
async fn recv_audio(client: &mut TelnyxClient, n: usize) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + T;
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("media in time")
        {
            Ok(Some(TelnyxInbound::Media { payload })) => out.extend_from_slice(&payload),
            Ok(Some(TelnyxInbound::Close { code, reason })) => {
                panic!("stream closed ({code:?} {reason}) instead of media")
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended instead of media"),
            Err(e) => panic!("Telnyx-side protocol error: {e:#}"),
        }
    }
    out
}

fn mark_ms(name: &str) -> u64 {
    name.strip_prefix("ms-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("mark {name:?} is not ms-<n>"))
}

// ---- 1. audio both ways, custom parameters --------------------------------------------------

/// Four concurrent Telnyx calls, one per dialect (picked by the `agent` custom parameter,
/// sent as an object on two calls and as a list on the other two; the default agent is
/// ElevenLabs, so a lost parameter would show as a second ElevenLabs conversation), each
/// streaming the caller fixture with its frames shuffled up to [`REORDER_WINDOW`] places.
/// Every agent hears the caller's audio in `sequence_number` order, byte for byte; every
/// caller hears its agent's audio byte for byte; nothing the relay sends breaks the Telnyx
/// wire; no frame is given up on.
///
/// The callers do not echo marks here: a mark echo is numbered when sent, so while a media
/// frame is held back on the wire the echo would occupy a place of the relay's window too
/// (see `a_mark_echo_overtaking_a_late_frame_does_not_cost_caller_audio`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_telnyx_frames_reach_every_dialect_in_order_and_replies_come_back_byte_exact() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let half = caller.len() / 2;
    let aai = assemblyai_sim::start(
        AssemblyAiConfig::new().with_behavior(Behavior::Reply(reply_script(&reply, half))),
    )
    .await
    .unwrap();
    let oai = openai_sim::start(
        RealtimeConfig::new().with_behavior(Behavior::Reply(reply_script(&reply, half))),
    )
    .await
    .unwrap();
    let mut el_cfg = MockAgentConfig::new("agent_el");
    el_cfg.behavior = AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: half,
        think_time: Duration::from_millis(100),
        chunk_bytes: 2000,
        chunk_interval: Duration::from_millis(40),
        interrupt_after_chunks: None,
    };
    let el = agent_sim::start(el_cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        &aai.ws_url(),
        &oai.ws_url(),
        &el.api_base(),
        None,
    ))
    .await;

    use CustomParametersShape::{List, Object};
    let calls = [
        ("echo", Object, vec![("agent", "echo")]),
        (
            "elevenlabs",
            List,
            vec![("agent", "elevenlabs"), ("customer_name", "Ada")],
        ),
        (
            "assemblyai",
            Object,
            vec![("agent", "assemblyai"), ("prompt", "Be brief (aai).")],
        ),
        (
            "openai",
            List,
            vec![("agent", "openai"), ("prompt", "Be brief (oai).")],
        ),
    ];
    let mut runs = Vec::new();
    for (i, (agent, shape, params)) in calls.iter().enumerate() {
        let n = 100 + i as u64;
        let mut s = script(&relay, telnyx_start(n, params, *shape), caller.clone());
        s.frame_order = FrameOrder::Shuffle {
            seed: n,
            window: REORDER_WINDOW,
        };
        s.mark_echo = false;
        runs.push((*agent, n, tokio::spawn(run_call(s))));
    }
    let mut ended = Vec::new();
    for (agent, n, run) in runs {
        let report = run.await.unwrap().unwrap();
        assert_clean(&report, agent);
        assert!(
            report.frames_out_of_order > 0,
            "{agent}: the shuffle sent frames out of order"
        );
        let want: &[u8] = if agent == "echo" { &caller } else { &reply };
        assert_eq!(report.received_audio.len(), want.len(), "{agent}");
        assert!(
            report.received_audio == want,
            "{agent}: the agent's audio to the caller is not byte-exact"
        );
        ended.push((agent, n));
    }
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        4.0,
    )
    .await;
    for (agent, n) in ended {
        let s = summary(relay.addr, &StartParams::for_call(n).call_control_id).await;
        assert_eq!(s["carrier"], "telnyx", "{s}");
        assert_eq!(s["agent"], agent, "{s}");
        assert_eq!(s["stream_sid"], StartParams::for_call(n).stream_id.as_str());
        assert_eq!(s["frames_caller_to_agent"], (caller.len() / 160) as u64);
        assert_eq!(s["inbound_frames_missing"], 0, "{s}");
        assert_eq!(s["bad_inputs"], 0, "{s}");
    }

    // The vendor agents heard the caller in order, byte for byte, and got their parameters.
    let conv = el.next_conversation(T).await.unwrap();
    assert!(
        conv.protocol_errors().is_empty(),
        "{:?}",
        conv.protocol_errors()
    );
    assert!(
        conv.user_audio() == *caller,
        "ElevenLabs: caller audio reordered or altered"
    );
    let init = conv.init_data(T).await.unwrap();
    assert_eq!(init["dynamic_variables"]["customer_name"], "Ada", "{init}");
    let s = aai.next_session(T).await.unwrap();
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
    assert!(
        s.user_audio() == *caller,
        "AssemblyAI: caller audio reordered or altered"
    );
    assert_eq!(
        s.init_message(T).await.unwrap()["session"]["system_prompt"],
        "Be brief (aai)."
    );
    let s = oai.next_session(T).await.unwrap();
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
    assert!(
        s.user_audio() == *caller,
        "OpenAI: caller audio reordered or altered"
    );
    assert_eq!(
        s.init_message(T).await.unwrap()["session"]["instructions"],
        "Be brief (oai)."
    );
    assert_eq!(el.conversations_started(), 1);
    assert_eq!(aai.sessions_started(), 1);
    assert_eq!(oai.sessions_started(), 1);

    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_hangup\"}"),
        4.0
    );
    assert_eq!(
        metric(&m, "relay_carrier_calls_started_total{carrier=\"telnyx\"}"),
        4.0
    );
    assert_eq!(
        metric(&m, "relay_carrier_calls_started_total{carrier=\"twilio\"}"),
        0.0
    );
    for a in ["echo", "elevenlabs", "assemblyai", "openai"] {
        assert_eq!(
            metric(&m, &format!("relay_calls_started_total{{agent=\"{a}\"}}")),
            1.0,
            "{a}"
        );
    }
    // Nothing given up on by the reordering window, nothing missing in the chunk numbers.
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"out_of_order\"}"
        ),
        0.0
    );
    assert_eq!(metric(&m, "relay_inbound_frames_missing_total"), 0.0);
    // The caller leg is labelled with the carrier.
    assert_eq!(
        metric(&m, "relay_frames_total{direction=\"telnyx_to_agent\"}"),
        (4 * caller.len() / 160) as f64
    );
    assert_eq!(
        metric(&m, "relay_audio_bytes_total{direction=\"agent_to_telnyx\"}"),
        (3 * reply.len() + caller.len()) as f64
    );
    assert_eq!(
        metric(&m, "relay_frames_total{direction=\"twilio_to_agent\"}"),
        0.0
    );
}

/// The same custom parameters sent as an object and as a `[{name, value}]` list become the
/// same ElevenLabs overrides and dynamic variables (and `relay_token` is never forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_parameters_as_an_object_or_a_list_reach_the_agent_alike() {
    let el = agent_sim::start(MockAgentConfig::new("agent_el"))
        .await
        .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        NOWHERE_WS,
        NOWHERE_WS,
        &el.api_base(),
        None,
    ))
    .await;
    let params = [
        ("prompt", "You are Acme's phone agent."),
        ("first_message", "Hi, Acme here."),
        ("customer_name", "Jane \"JD\" Doe"),
        ("tier", "gold"),
        ("relay_token", "never-forwarded"),
    ];
    let audio = Arc::new(vec![0xFFu8; 160 * 10]);
    let mut inits = Vec::new();
    for (n, shape) in [
        (200, CustomParametersShape::Object),
        (201, CustomParametersShape::List),
    ] {
        let mut s = script(&relay, telnyx_start(n, &params, shape), audio.clone());
        s.linger = Duration::from_millis(200);
        let report = run_call(s).await.unwrap();
        assert_clean(&report, &format!("{shape:?}"));
        let conv = el.next_conversation(T).await.unwrap();
        inits.push((shape, conv.init_data(T).await.unwrap()));
    }
    for (shape, init) in &inits {
        let o = &init["conversation_config_override"];
        assert_eq!(
            o["agent"]["prompt"]["prompt"], "You are Acme's phone agent.",
            "{shape:?}: {init}"
        );
        assert_eq!(o["agent"]["first_message"], "Hi, Acme here.", "{shape:?}");
        let vars = init["dynamic_variables"].as_object().unwrap();
        assert_eq!(vars["customer_name"], "Jane \"JD\" Doe", "{shape:?}");
        assert_eq!(vars["tier"], "gold", "{shape:?}");
        assert!(!vars.contains_key("relay_token"), "{shape:?}: {init}");
        assert!(!vars.contains_key("prompt"), "{shape:?}: {init}");
    }
    assert_eq!(
        inits[0].1["dynamic_variables"], inits[1].1["dynamic_variables"],
        "object and list give the same variables"
    );
    assert_eq!(
        inits[0].1["conversation_config_override"],
        inits[1].1["conversation_config_override"]
    );
}

// ---- 2. marks -------------------------------------------------------------------------------

/// The relay marks its audio to Telnyx every 100 ms (`ms-<offset>`); the caller echoes each
/// once the audio before it has played, and the relay counts them as played: every echo in
/// `relay_marks_total{result="played"}`, the last echoed offset as the call's `played_ms`,
/// the same amount in `relay_playout_audio_bytes_total{result="played"}`, nothing flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_mark_echoes_count_as_played_audio() {
    let relay = start_relay(all_dialects(
        AgentKind::Echo,
        NOWHERE_WS,
        NOWHERE_WS,
        NOWHERE_HTTP,
        None,
    ))
    .await;
    let caller = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 100].to_vec());
    let start = telnyx_start(300, &[], CustomParametersShape::Object);
    let call_sid = start.call_control_id.clone();
    let report = run_call(script(&relay, start, caller.clone()))
        .await
        .unwrap();
    assert_clean(&report, "echo");
    assert!(report.received_audio == *caller, "echo is not byte-exact");
    assert!(
        report.marks_received.len() >= 10,
        "2 s of audio is marked every 100 ms: {:?}",
        report.marks_received
    );
    let offsets: Vec<u64> = report.marks_received.iter().map(|m| mark_ms(m)).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "mark offsets increase: {offsets:?}"
    );
    let sent_ms = caller.len() as u64 / 8;
    let last = *offsets.last().unwrap();
    assert!(
        last <= sent_ms && last + media_relay::call::machine::playout::MARK_INTERVAL_MS > sent_ms,
        "last mark {last} ms for {sent_ms} ms of audio"
    );
    // Playback took 2 s and the linger 2.5 s: every mark was echoed, in order.
    assert_eq!(report.marks_echoed, report.marks_received);

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_marks_total{agent=\"echo\",result=\"played\"}"),
        report.marks_echoed.len() as f64
    );
    assert_eq!(
        metric(&m, "relay_marks_total{agent=\"echo\",result=\"flushed\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "relay_playout_audio_bytes_total{result=\"played\"}"),
        (last * 8) as f64
    );
    assert_eq!(
        metric(&m, "relay_playout_audio_bytes_total{result=\"flushed\"}"),
        0.0
    );
    assert!(metric(&m, "relay_playout_lag_seconds_count{agent=\"echo\"}") >= 1.0);
    let s = summary(relay.addr, &call_sid).await;
    assert_eq!(s["carrier"], "telnyx");
    assert_eq!(s["played_ms"], last, "{s}");
    assert_eq!(s["flushed_ms"], 0, "{s}");
    assert!(
        s["latency"]["playout_lag"]["count"].as_u64().unwrap() >= 1,
        "{s}"
    );
}

// ---- 3. barge-in ----------------------------------------------------------------------------

/// An interruption from each vendor agent (ElevenLabs `interruption`, AssemblyAI
/// `input.speech.started`, OpenAI `input_audio_buffer.speech_started`) mid-reply: the relay
/// sends Telnyx exactly one `clear` (no stream id), the two stale chunks of the cut reply
/// are dropped (counted under `agent_to_telnyx`) and never reach the caller, marks pending
/// at the clear count as flushed, and OpenAI is told to truncate at what the caller's echoed
/// marks say was heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_interruption_sends_telnyx_clear_and_drops_the_stale_audio() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 100].to_vec());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let mut el_cfg = MockAgentConfig::new("agent_el");
    el_cfg.behavior = AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: 160 * 25,
        think_time: Duration::from_millis(50),
        chunk_bytes: 2000,
        chunk_interval: Duration::from_millis(40),
        interrupt_after_chunks: Some(2),
    };
    let el = agent_sim::start(el_cfg).await.unwrap();
    let tone = Arc::new(vec![0x55u8; 16_000]);
    let aai = assemblyai_sim::start(AssemblyAiConfig::new().with_behavior(Behavior::Reply(
        ReplyScript {
            interrupt_after_chunks: Some(2),
            ..reply_script(&tone, 1600)
        },
    )))
    .await
    .unwrap();
    let long_tone = Arc::new(vec![0x55u8; 48_000]);
    let oai = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Reply(
        ReplyScript {
            chunk_bytes: 800,
            chunk_interval: Duration::from_millis(60),
            interrupt_after_chunks: Some(20),
            ..reply_script(&long_tone, 1600)
        },
    )))
    .await
    .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        &aai.ws_url(),
        &oai.ws_url(),
        &el.api_base(),
        None,
    ))
    .await;
    let mut runs = Vec::new();
    for (i, agent) in ["elevenlabs", "assemblyai", "openai"]
        .into_iter()
        .enumerate()
    {
        let n = 400 + i as u64;
        let start = telnyx_start(n, &[("agent", agent)], CustomParametersShape::Object);
        runs.push((
            agent,
            n,
            tokio::spawn(run_call(script(&relay, start, caller.clone()))),
        ));
    }
    let mut reports = Vec::new();
    for (agent, n, run) in runs {
        let report = run.await.unwrap().unwrap();
        assert_clean(&report, agent);
        assert_eq!(report.clears, 1, "{agent}: one interruption, one clear");
        assert!(
            !report
                .received_audio
                .windows(800)
                .any(|w| w.iter().all(|&b| b == STALE_AUDIO_BYTE)),
            "{agent}: stale audio of the cut reply reached the caller"
        );
        reports.push((agent, n, report));
    }
    // ElevenLabs sends the rest of its reply after the interruption: all of it arrives.
    assert!(
        reports[0].2.received_audio == *reply,
        "ElevenLabs reply altered"
    );

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        3.0,
    )
    .await;
    let mut dropped_total = 0;
    for (agent, n, report) in &reports {
        assert_eq!(
            metric(&m, &format!("relay_barge_ins_total{{agent=\"{agent}\"}}")),
            1.0,
            "{agent}"
        );
        assert!(
            metric(
                &m,
                &format!("relay_barge_in_latency_seconds_count{{agent=\"{agent}\"}}")
            ) >= 1.0,
            "{agent}"
        );
        let s = summary(relay.addr, &StartParams::for_call(*n).call_control_id).await;
        assert_eq!(s["barge_ins"], 1, "{agent}: {s}");
        let dropped = s["dropped_agent_to_caller"].as_u64().unwrap();
        assert_eq!(
            dropped, 2,
            "{agent}: the two stale chunks, and only they: {s}"
        );
        dropped_total += dropped;
        assert_eq!(
            s["frames_agent_to_caller"].as_u64().unwrap(),
            report.media_messages as u64,
            "{agent}"
        );
    }
    // Every drop was a stale chunk, under the carrier's direction label.
    assert_eq!(
        metric(
            &m,
            "relay_frames_dropped_total{direction=\"agent_to_telnyx\",reason=\"interrupted\"}"
        ),
        dropped_total as f64
    );
    assert_eq!(
        metric(
            &m,
            "relay_frames_dropped_total{direction=\"agent_to_twilio\",reason=\"interrupted\"}"
        ),
        0.0
    );
    assert!(
        metric(
            &m,
            "relay_marks_total{agent=\"elevenlabs\",result=\"flushed\"}"
        ) >= 1.0,
        "marks pending at the clear come back flushed"
    );

    // OpenAI: truncated at an offset the caller echoed before the clear (see
    // tests/dialects.rs for the margin: a mark echoed in the last moments before the clear
    // may still have been in flight).
    let report = &reports[2].2;
    let s = oai.next_session(T).await.unwrap();
    let t = s.wait_truncates(1, T).await.unwrap();
    let clear_at = report.clears_at[0];
    let echoed_before = |margin: Duration| {
        report
            .marks_echoed
            .iter()
            .zip(&report.marks_echoed_at)
            .filter(|(_, at)| **at + margin < clear_at)
            .map(|(name, _)| mark_ms(name))
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
}

// ---- 4. DTMF and tools ----------------------------------------------------------------------

/// Telnyx `dtmf` events reach each vendor dialect as its keypad text: ElevenLabs
/// `user_message`, AssemblyAI `reply.create`, OpenAI `conversation.item.create`; `#` ends
/// the digits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_keypad_digits_reach_every_dialect_as_keypad_text() {
    let aai = assemblyai_sim::start(AssemblyAiConfig::new().with_behavior(Behavior::Silent))
        .await
        .unwrap();
    let oai = openai_sim::start(RealtimeConfig::new().with_behavior(Behavior::Silent))
        .await
        .unwrap();
    let el = agent_sim::start(MockAgentConfig::new("agent_el"))
        .await
        .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        &aai.ws_url(),
        &oai.ws_url(),
        &el.api_base(),
        None,
    ))
    .await;
    let mut clients = Vec::new();
    for (i, agent) in ["elevenlabs", "assemblyai", "openai"]
        .into_iter()
        .enumerate()
    {
        let client = TelnyxClient::connect(&telnyx_url(&relay), &[])
            .await
            .unwrap();
        client.send_connected().await.unwrap();
        client
            .send_start(&telnyx_start(
                500 + i as u64,
                &[("agent", agent)],
                CustomParametersShape::List,
            ))
            .await
            .unwrap();
        let frames = send_silence(&client, 250);
        clients.push((agent, client, frames));
    }
    // Digits only once each agent is connected (the relay sends them on the live session).
    let conv = el.next_conversation(T).await.unwrap();
    conv.init_data(T).await.unwrap();
    let aai_s = aai.next_session(T).await.unwrap();
    aai_s.init_message(T).await.unwrap();
    let oai_s = oai.next_session(T).await.unwrap();
    oai_s.init_message(T).await.unwrap();
    for (_, client, _) in &clients {
        for d in ["4", "2", "#"] {
            client.send_dtmf(d).await.unwrap();
        }
    }
    let want = "The caller pressed 42# on the phone keypad.";
    let msgs = conv
        .wait_messages_of_type("user_message", 1, T)
        .await
        .unwrap();
    assert_eq!(msgs[0].message["text"], want);
    assert_eq!(aai_s.wait_text_inputs(1, T).await.unwrap()[0].text, want);
    assert_eq!(oai_s.wait_text_inputs(1, T).await.unwrap()[0].text, want);
    for (agent, mut client, frames) in clients {
        client.send_stop().await.unwrap();
        assert_eq!(
            wait_telnyx_close(&mut client).await.0,
            Some(1000),
            "{agent}"
        );
        frames.abort();
    }
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        3.0,
    )
    .await;
    for a in ["elevenlabs", "assemblyai", "openai"] {
        assert_eq!(
            metric(&m, &format!("relay_dtmf_total{{agent=\"{a}\"}}")),
            3.0,
            "{a}"
        );
    }
    let s = summary(relay.addr, &StartParams::for_call(500).call_control_id).await;
    assert_eq!(s["dtmf_digits"], 3, "{s}");
}

/// Tool calls through a Telnyx call: AssemblyAI `tool.call` and an ElevenLabs
/// `client_tool_call` go to the tool webhook (signed, naming the Telnyx call control id and
/// stream id) and its answers come back to each agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_round_trips_through_a_telnyx_call() {
    let hook = webhook::start(
        WEBHOOK_SECRET,
        vec![
            (
                "lookup_order",
                Answer::Result(serde_json::json!({"status": "shipped"})),
            ),
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
                name: "broken_tool".into(),
                arguments: serde_json::json!({}),
            },
        ),
    ];
    let aai = assemblyai_sim::start(
        AssemblyAiConfig::new()
            .with_behavior(Behavior::Silent)
            .with_steps(steps),
    )
    .await
    .unwrap();
    let el = agent_sim::start(MockAgentConfig::new("agent_el"))
        .await
        .unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Assemblyai,
        &aai.ws_url(),
        NOWHERE_WS,
        &el.api_base(),
        Some(&hook.url()),
    ))
    .await;
    let aai_start = telnyx_start(600, &[], CustomParametersShape::Object);
    let el_start = telnyx_start(601, &[("agent", "elevenlabs")], CustomParametersShape::List);
    let mut clients = Vec::new();
    for start in [&aai_start, &el_start] {
        let client = TelnyxClient::connect(&telnyx_url(&relay), &[])
            .await
            .unwrap();
        client.send_connected().await.unwrap();
        client.send_start(start).await.unwrap();
        let frames = send_silence(&client, 250);
        clients.push((client, frames));
    }

    let s = aai.next_session(T).await.unwrap();
    let results = s.wait_tool_results(2, T).await.unwrap();
    assert_eq!(results[0].call_id, "call_1");
    assert_eq!(results[0].output, r#"{"status":"shipped"}"#);
    assert_eq!(results[1].call_id, "call_2");
    assert!(
        results[1].output.contains("HTTP 500"),
        "{:?}",
        results[1].output
    );

    let conv = el.next_conversation(T).await.unwrap();
    conv.init_data(T).await.unwrap();
    conv.send_text(
        r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"lookup_order","tool_call_id":"toolu_1","parameters":{"order":"7"},"event_id":3}}"#
            .into(),
    )
    .await;
    let res = conv
        .wait_messages_of_type("client_tool_result", 1, T)
        .await
        .unwrap();
    let res = &res[0].message;
    assert_eq!(res["tool_call_id"], "toolu_1");
    assert_eq!(res["is_error"], false, "{res}");
    assert!(
        res["result"].to_string().contains("shipped"),
        "the webhook's answer: {res}"
    );

    let received = hook.received();
    assert_eq!(received.len(), 3);
    assert!(
        received.iter().all(|r| r.signature_ok),
        "X-Relay-Signature verified"
    );
    let by_id = |id: &str| {
        received
            .iter()
            .find(|r| r.body["tool_call_id"] == id)
            .unwrap_or_else(|| panic!("no webhook request for {id}"))
            .body
            .clone()
    };
    let b = by_id("call_1");
    assert_eq!(b["call_sid"], aai_start.call_control_id.as_str(), "{b}");
    assert_eq!(b["stream_sid"], aai_start.stream_id.as_str(), "{b}");
    assert_eq!(b["agent"], "assemblyai");
    assert_eq!(b["name"], "lookup_order");
    assert_eq!(b["arguments"], serde_json::json!({"order": "42"}));
    let b = by_id("toolu_1");
    assert_eq!(b["call_sid"], el_start.call_control_id.as_str(), "{b}");
    assert_eq!(b["stream_sid"], el_start.stream_id.as_str(), "{b}");
    assert_eq!(b["agent"], "elevenlabs");
    assert_eq!(b["arguments"], serde_json::json!({"order": "7"}));

    for (mut client, frames) in clients {
        client.send_stop().await.unwrap();
        assert_eq!(wait_telnyx_close(&mut client).await.0, Some(1000));
        frames.abort();
    }
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        2.0,
    )
    .await;
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
            "relay_tool_calls_total{agent=\"assemblyai\",result=\"error_status\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_tool_calls_total{agent=\"elevenlabs\",result=\"ok\"}"
        ),
        1.0
    );
    let s = summary(relay.addr, &aai_start.call_control_id).await;
    assert_eq!(s["tool_calls"], 2, "{s}");
}

// ---- 5. security ----------------------------------------------------------------------------

const PUBLIC_HOST: &str = "relay.example.com";

fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A relay with Telnyx authenticated: `TELNYX_PUBLIC_KEY` of [`signing_key`]`(7)` as the
/// portal shows it (base64 of the raw 32 bytes), a public host and a token secret; the echo
/// agent.
fn signed_args() -> ServeArgs {
    let mut a = args();
    a.carriers.telnyx.telnyx_public_key =
        Some(B64.encode(signing_key(7).verifying_key().as_bytes()));
    a.http.public_host = Some(PUBLIC_HOST.into());
    a.http.relay_token_secret = Some(Secret::new("relay-token-secret-for-telnyx-tests"));
    a.agents.echo.echo_delay_ms = 20;
    a
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `telnyx-signature-ed25519`: base64 of the Ed25519 signature of `"{timestamp}|{body}"`.
fn telnyx_signature(key: &SigningKey, timestamp: &str, body: &str) -> String {
    let msg = format!("{timestamp}|{body}");
    B64.encode(key.sign(msg.as_bytes()).to_bytes())
}

/// POSTs `body` to `path` with the Telnyx signature headers given (`None` leaves one out).
async fn post_signed(
    addr: SocketAddr,
    path: &str,
    body: &str,
    signature: Option<&str>,
    timestamp: Option<&str>,
) -> (u16, String) {
    let mut h = Vec::new();
    if let Some(s) = signature {
        h.push(("telnyx-signature-ed25519", s));
    }
    if let Some(t) = timestamp {
        h.push(("telnyx-timestamp", t));
    }
    http_with(addr, "POST", path, &h, body).await
}

/// A TeXML webhook body (form-encoded, as TeXML posts it) for call `call_sid`.
fn texml_body(call_sid: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("AccountSid", "0f7c6a2e-0000-4000-8000-000000000001")
        .append_pair("CallSid", call_sid)
        .append_pair("From", "+13125550100")
        .append_pair("To", "+13125550199")
        .finish()
}

/// Fetches the TeXML for `call_sid`, validly signed now; returns it.
async fn texml_for(addr: SocketAddr, call_sid: &str) -> String {
    let body = texml_body(call_sid);
    let ts = unix_now().to_string();
    let sig = telnyx_signature(&signing_key(7), &ts, &body);
    let (status, xml) = post_signed(addr, "/telnyx/texml", &body, Some(&sig), Some(&ts)).await;
    assert_eq!(status, 200, "{xml}");
    xml
}

/// The `<Stream url>` of a TeXML answer, XML-unescaped, pointed at the test relay (`wss://`
/// public host → `ws://` loopback address), as Telnyx would dial it.
fn stream_url(xml: &str, addr: SocketAddr) -> String {
    let url = xml
        .split("<Stream url=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no <Stream url> in {xml}"))
        .replace("&amp;", "&");
    let path = url
        .strip_prefix(&format!("wss://{PUBLIC_HOST}"))
        .unwrap_or_else(|| panic!("stream URL {url} is not on wss://{PUBLIC_HOST}"));
    format!("ws://{addr}{path}")
}

/// The relay token in a TeXML answer's stream URL (percent-decoded).
fn url_token(xml: &str) -> String {
    let url = stream_url(xml, "127.0.0.1:1".parse().unwrap());
    let query = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "relay_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no relay_token in the stream URL of {xml}"))
}

/// With `TELNYX_PUBLIC_KEY` set, `POST /telnyx/texml` answers bidirectional PCMU TeXML with
/// the call's stream token in the stream URL (and a `<Parameter>`) then `<Hangup/>`, but only
/// for an Ed25519 signature over `"{timestamp}|{body}"` by that key with a timestamp within
/// the tolerance; anything else is 403 and counted in `relay_errors_total{leg="telnyx",kind}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texml_webhook_answers_only_a_valid_fresh_ed25519_signature() {
    let relay = start_relay(signed_args()).await;
    let addr = relay.addr;
    let call = StartParams::for_call(700).call_control_id;
    let body = texml_body(&call);
    let key = signing_key(7);
    let now = unix_now();
    let ts = now.to_string();
    let good = telnyx_signature(&key, &ts, &body);

    let (status, xml) = post_signed(addr, "/telnyx/texml", &body, Some(&good), Some(&ts)).await;
    assert_eq!(status, 200, "{xml}");
    let token = url_token(&xml);
    assert!(!token.is_empty());
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://relay.example.com/telnyx/media?relay_token="),
        "{xml}"
    );
    for want in [
        " bidirectionalMode=\"rtp\"".to_owned(),
        " bidirectionalCodec=\"PCMU\"".to_owned(),
        " statusCallback=\"https://relay.example.com/telnyx/stream-status\"".to_owned(),
        format!("<Parameter name=\"CallSid\" value=\"{call}\"/>"),
        "<Parameter name=\"From\" value=\"+13125550100\"/>".to_owned(),
        format!("<Parameter name=\"relay_token\" value=\"{token}\"/>"),
    ] {
        assert!(xml.contains(&want), "TeXML lacks {want}: {xml}");
    }
    assert!(
        xml.ends_with("</Stream></Connect><Hangup/></Response>"),
        "{xml}"
    );
    // The token is the call's: another call gets another, the same call the same.
    assert_ne!(url_token(&texml_for(addr, "v3:another-call").await), token);
    assert_eq!(url_token(&texml_for(addr, &call).await), token);

    // A minute past the 300 s tolerance either way (clear of a second ticking over).
    let stale = (now - 360).to_string();
    let future = (now + 360).to_string();
    let tampered = body.replace("%2B13125550100", "%2B19995550100");
    let refused: Vec<(&str, String, Option<String>, Option<String>)> = vec![
        // Signed over another body, by another key, over another timestamp.
        ("mismatch", tampered, Some(good.clone()), Some(ts.clone())),
        (
            "mismatch",
            body.clone(),
            Some(telnyx_signature(&signing_key(8), &ts, &body)),
            Some(ts.clone()),
        ),
        (
            "mismatch",
            body.clone(),
            Some(good.clone()),
            Some((now - 1).to_string()),
        ),
        // Validly signed, but older (or newer) than the 300 s tolerance.
        (
            "stale",
            body.clone(),
            Some(telnyx_signature(&key, &stale, &body)),
            Some(stale),
        ),
        (
            "stale",
            body.clone(),
            Some(telnyx_signature(&key, &future, &body)),
            Some(future),
        ),
        // Missing headers.
        ("missing", body.clone(), None, None),
        ("missing", body.clone(), None, Some(ts.clone())),
        ("missing", body.clone(), Some(good.clone()), None),
        // Not base64 of 64 bytes.
        (
            "malformed",
            body.clone(),
            Some("bm90IGEgc2lnbmF0dXJl".into()),
            Some(ts.clone()),
        ),
    ];
    for (kind, body, sig, ts) in &refused {
        let (status, answer) =
            post_signed(addr, "/telnyx/texml", body, sig.as_deref(), ts.as_deref()).await;
        assert_eq!(status, 403, "{kind}: {answer}");
        assert!(!answer.contains("<Stream"), "{kind}: {answer}");
    }
    let m = metrics(addr).await;
    for (kind, n) in [
        ("mismatch", 3.0),
        ("stale", 2.0),
        ("missing", 3.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("relay_errors_total{{leg=\"telnyx\",kind=\"signature_{kind}\"}}")
            ),
            n,
            "signature_{kind}"
        );
        assert_eq!(
            metric(
                &m,
                &format!("relay_errors_total{{leg=\"twilio\",kind=\"signature_{kind}\"}}")
            ),
            0.0,
            "signature_{kind}"
        );
    }
}

/// Telnyx's status callbacks are signed the same way: a valid signature is 200 and counted
/// by event, an unsigned one 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_status_callbacks_need_a_valid_signature() {
    let relay = start_relay(signed_args()).await;
    let body = "CallSid=v3%3Acall-1&StreamSid=s-1&StreamEvent=stream-started";
    let ts = unix_now().to_string();
    let sig = telnyx_signature(&signing_key(7), &ts, body);
    let (status, _) = post_signed(
        relay.addr,
        "/telnyx/stream-status",
        body,
        Some(&sig),
        Some(&ts),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_signed(relay.addr, "/telnyx/stream-status", body, None, None).await;
    assert_eq!(status, 403);
    let body = "CallSid=v3%3Acall-1&CallStatus=completed";
    let sig = telnyx_signature(&signing_key(7), &ts, body);
    let (status, _) = post_signed(
        relay.addr,
        "/telnyx/call-status",
        body,
        Some(&sig),
        Some(&ts),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_signed(
        relay.addr,
        "/telnyx/call-status",
        body,
        Some(&telnyx_signature(&signing_key(9), &ts, body)),
        Some(&ts),
    )
    .await;
    assert_eq!(status, 403);
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_stream_status_callbacks_total{event=\"stream-started\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_call_status_callbacks_total{status=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"signature_missing\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"signature_mismatch\"}"
        ),
        1.0
    );
}

/// Telnyx signs no media upgrade, so with the carrier authenticated a stream is admitted only
/// with its call's `relay_token`: in the stream URL exactly as the TeXML gave it (or as the
/// TeXML's `<Parameter>`, which arrives in `custom_parameters`). No token, a forged one, or
/// another call's: closed with 1008 before any audio flows, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telnyx_stream_is_admitted_only_with_its_calls_relay_token() {
    let relay = start_relay(signed_args()).await;
    let addr = relay.addr;
    let call_a = StartParams::for_call(701);
    let call_b = StartParams::for_call(702);
    let call_c = StartParams::for_call(703);
    let xml_a = texml_for(addr, &call_a.call_control_id).await;
    let xml_b = texml_for(addr, &call_b.call_control_id).await;
    let xml_c = texml_for(addr, &call_c.call_control_id).await;
    let bare = telnyx_url(&relay);

    // No token, a forged one, call B's: refused at `start`, nothing echoed.
    for (what, url) in [
        ("no token", bare.clone()),
        ("forged token", format!("{bare}?relay_token=forged")),
        ("another call's token", stream_url(&xml_b, addr)),
    ] {
        let mut c = TelnyxClient::connect(&url, &[]).await.unwrap();
        c.send_connected().await.unwrap();
        c.send_start(&call_a).await.unwrap();
        let _ = c.send_media(&[0x42; 160]).await;
        let (code, media) = wait_telnyx_close(&mut c).await;
        assert_eq!(code, Some(1008), "{what}");
        assert_eq!(media, 0, "{what}: audio flowed before the refusal");
    }

    // The stream URL of call A's TeXML: admitted, the echo agent plays the audio back.
    let mut good = TelnyxClient::connect(&stream_url(&xml_a, addr), &[])
        .await
        .unwrap();
    good.send_connected().await.unwrap();
    good.send_start(&call_a).await.unwrap();
    good.send_media(&[0x42; 160]).await.unwrap();
    assert_eq!(recv_audio(&mut good, 160).await, vec![0x42; 160]);
    good.send_stop().await.unwrap();
    assert_eq!(wait_telnyx_close(&mut good).await.0, Some(1000));

    // The token as a custom parameter (the TeXML's <Parameter>) on a bare URL: admitted.
    let mut by_param = TelnyxClient::connect(&bare, &[]).await.unwrap();
    by_param.send_connected().await.unwrap();
    let mut start_c = call_c.clone();
    start_c.custom_parameters = vec![("relay_token".into(), url_token(&xml_c))];
    start_c.custom_parameters_shape = CustomParametersShape::List;
    by_param.send_start(&start_c).await.unwrap();
    by_param.send_media(&[0x43; 160]).await.unwrap();
    assert_eq!(recv_audio(&mut by_param, 160).await, vec![0x43; 160]);
    by_param.send_stop().await.unwrap();
    assert_eq!(wait_telnyx_close(&mut by_param).await.0, Some(1000));

    let m = wait_metric(addr, "relay_calls_total{outcome=\"caller_hangup\"}", 2.0).await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_hangup\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"token_rejected\"}"),
        3.0
    );
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"token_missing\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"token_invalid\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"valid\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"token_missing\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"token_invalid\"}"
        ),
        2.0
    );
    assert_eq!(metric(&m, "relay_upgrades_total{result=\"accepted\"}"), 5.0);
    assert_eq!(metric(&m, "relay_streams_unauthenticated_total"), 0.0);
}

// ---- 6. bad input ---------------------------------------------------------------------------

/// A Telnyx caller sending malformed JSON (unnumbered, and numbered and released from the
/// reordering window), a `media` whose payload is not base64, an `error` event and an
/// unknown event: each is counted under `leg="telnyx"` and skipped, its valid frames still
/// reach the agent and its `stop` still ends it as a hang-up; a concurrent Telnyx call is
/// untouched (byte-exact, no bad inputs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_telnyx_input_is_counted_and_skipped_while_another_telnyx_call_goes_on() {
    let mut cfg = MockAgentConfig::new("agent_el");
    cfg.behavior = AgentBehavior::Echo;
    let el = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        NOWHERE_WS,
        NOWHERE_WS,
        &el.api_base(),
        None,
    ))
    .await;
    let caller = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 150].to_vec());
    let healthy_start = telnyx_start(800, &[("who", "healthy")], CustomParametersShape::Object);
    let mut s = script(&relay, healthy_start.clone(), caller.clone());
    s.linger = Duration::from_millis(500);
    let healthy = tokio::spawn(run_call(s));
    let healthy_conv = el.next_conversation(T).await.unwrap();
    assert_eq!(
        healthy_conv.init_data(T).await.unwrap()["dynamic_variables"]["who"],
        "healthy"
    );

    let bad_start = telnyx_start(801, &[("who", "bad")], CustomParametersShape::List);
    let mut bad = TelnyxClient::connect(&telnyx_url(&relay), &[])
        .await
        .unwrap();
    bad.send_connected().await.unwrap();
    bad.send_start(&bad_start).await.unwrap();
    let tx = bad.sender().clone();
    // Malformed JSON with no sequence number: decoded (and refused) as it arrives.
    tx.send_text_raw("{this is not json".into()).await.unwrap();
    // A media frame, in line, whose payload is not base64.
    tx.send_numbered(|seq, st| {
        format!(
            r#"{{"event":"media","sequence_number":"{seq}","media":{{"track":"inbound","chunk":"1","timestamp":"0","payload":"not*base64!"}},"stream_id":"{}"}}"#,
            st.unwrap().stream_id
        )
    })
    .await
    .unwrap();
    // Telnyx's own error event.
    tx.send_error(
        100003,
        "malformed_frame",
        "Received frame was not formed correctly",
    )
    .await
    .unwrap();
    // An event nobody knows.
    tx.send_numbered(|seq, st| {
        format!(
            r#"{{"event":"someday","sequence_number":"{seq}","stream_id":"{}"}}"#,
            st.unwrap().stream_id
        )
    })
    .await
    .unwrap();
    // A valid frame numbered N sent after a broken one numbered N + 1: the broken one waits
    // in the reordering window, then is refused when released.
    let first = [0x55u8; 160];
    let held_back = tx.encode_media(&first).await;
    tx.send_numbered(|seq, _| {
        format!(r#"{{"event":"media","sequence_number":"{seq}","media":{{"payload":"#)
    })
    .await
    .unwrap();
    tx.send_text_raw(held_back).await.unwrap();
    let second = [0x66u8; 160];
    tx.send_media(&second).await.unwrap();

    let bad_conv = el.next_conversation(T).await.unwrap();
    assert_eq!(
        bad_conv.init_data(T).await.unwrap()["dynamic_variables"]["who"],
        "bad"
    );
    bad_conv.wait_user_audio_bytes(320, T).await.unwrap();
    assert_eq!(
        bad_conv.user_audio(),
        [first, second].concat(),
        "only the valid frames, in order"
    );
    // The echo of its valid audio comes back, then `stop` ends it as a hang-up.
    assert_eq!(recv_audio(&mut bad, 320).await, [first, second].concat());
    // Both calls were live at once.
    let auth = format!("Bearer {ADMIN}");
    let (_, live) = http_with(
        relay.addr,
        "GET",
        "/calls",
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["count"], 2, "{live}");
    bad.send_stop().await.unwrap();
    assert_eq!(wait_telnyx_close(&mut bad).await.0, Some(1000));

    let report = healthy.await.unwrap().unwrap();
    assert_clean(&report, "healthy");
    assert!(
        report.received_audio == *caller,
        "the healthy call was disturbed"
    );
    assert!(healthy_conv.user_audio() == *caller);

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        2.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_hangup\"}"),
        2.0
    );
    for (kind, n) in [
        ("malformed_json", 2.0),
        ("invalid_base64", 1.0),
        ("carrier_error_event", 1.0),
        ("out_of_order", 0.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("relay_errors_total{{leg=\"telnyx\",kind=\"{kind}\"}}")
            ),
            n,
            "{kind}"
        );
        assert_eq!(
            metric(
                &m,
                &format!("relay_errors_total{{leg=\"twilio\",kind=\"{kind}\"}}")
            ),
            0.0,
            "{kind}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "relay_unknown_events_total{agent=\"elevenlabs\",leg=\"telnyx\"}"
        ),
        1.0
    );
    let s = summary(relay.addr, &bad_start.call_control_id).await;
    assert_eq!(s["bad_inputs"], 4, "{s}");
    assert_eq!(s["outcome"], "caller_hangup", "{s}");
    let s = summary(relay.addr, &healthy_start.call_control_id).await;
    assert_eq!(s["bad_inputs"], 0, "{s}");
    assert_eq!(s["frames_caller_to_agent"], 150, "{s}");
}

// ---- reordering at the window's edge ----------------------------------------------------------

/// A frame that comes more than [`REORDER_WINDOW`] messages late: the relay stops waiting for
/// it once the window is full (the gap is skipped and counted), delivers the frames after it
/// in order, and drops it when it finally arrives (counted again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_later_than_the_window_is_skipped_and_counted() {
    let mut cfg = MockAgentConfig::new("agent_el");
    cfg.behavior = AgentBehavior::Silent;
    let el = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        NOWHERE_WS,
        NOWHERE_WS,
        &el.api_base(),
        None,
    ))
    .await;
    let start = telnyx_start(900, &[], CustomParametersShape::Object);
    let mut client = TelnyxClient::connect(&telnyx_url(&relay), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&start).await.unwrap();
    let frames: Vec<[u8; 160]> = (0..12u8).map(|i| [i + 1; 160]).collect();
    let mut wire = Vec::new();
    for f in &frames {
        wire.push(client.sender().encode_media(f).await);
    }
    // Frame 2 arrives after REORDER_WINDOW + 1 later frames.
    let late = wire.remove(2);
    let mut order = wire;
    order.insert(2 + REORDER_WINDOW + 1, late);
    for text in order {
        client.send_text_raw(text).await.unwrap();
    }
    let conv = el.next_conversation(T).await.unwrap();
    let expected: Vec<u8> = frames
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    conv.wait_user_audio_bytes(expected.len(), T).await.unwrap();
    client.send_stop().await.unwrap();
    assert_eq!(wait_telnyx_close(&mut client).await.0, Some(1000));
    assert_eq!(
        conv.user_audio(),
        expected,
        "every frame but the late one, in sequence order"
    );
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    // The skipped gap, then the late frame itself.
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"out_of_order\"}"
        ),
        2.0
    );
}

/// A mark echo is numbered in the same `sequence_number` series as media, when it is sent.
/// A caller playing the agent's audio echoes marks every 100 ms, so a media frame late by
/// [`REORDER_WINDOW`] frames (within the documented window: "frames held back waiting for a
/// missing `sequence_number` (4 × 20 ms of audio)") may have a mark echo overtake it too.
/// The frame must still reach the agent, in order, with nothing counted as out of order.
///
/// With `run_call` and `FrameOrder::Shuffle { window: REORDER_WINDOW }` plus mark echoes, 3
/// of 8 echo calls lost frames (4 frames, `out_of_order` 8); with window 3, or without mark
/// echoes, none did. This is the same loss made deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_echo_overtaking_a_late_frame_does_not_cost_caller_audio() {
    let mut cfg = MockAgentConfig::new("agent_el");
    cfg.behavior = AgentBehavior::Echo;
    let el = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(all_dialects(
        AgentKind::Elevenlabs,
        NOWHERE_WS,
        NOWHERE_WS,
        &el.api_base(),
        None,
    ))
    .await;
    let mut client = TelnyxClient::connect(&telnyx_url(&relay), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client
        .send_start(&telnyx_start(960, &[], CustomParametersShape::Object))
        .await
        .unwrap();
    let frames: Vec<[u8; 160]> = (0..20u8).map(|i| [i + 1; 160]).collect();
    // In order first: the agent echoes it, so the relay marks its audio to Telnyx.
    for f in &frames[..10] {
        client.send_media(f).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + T;
    let mark = loop {
        match tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("a mark from the relay in time")
        {
            Ok(Some(TelnyxInbound::Mark { name })) => break name,
            Ok(Some(TelnyxInbound::Media { .. })) => continue,
            other => panic!("expected a mark, got {other:?}"),
        }
    };
    // Frame 10 is numbered, then overtaken by REORDER_WINDOW later frames and the mark echo.
    let tx = client.sender().clone();
    let late = tx.encode_media(&frames[10]).await;
    for f in &frames[11..11 + REORDER_WINDOW] {
        tx.send_media(f).await.unwrap();
    }
    tx.send_mark(&mark).await.unwrap();
    tx.send_text_raw(late).await.unwrap();
    for f in &frames[11 + REORDER_WINDOW..] {
        tx.send_media(f).await.unwrap();
    }
    let conv = el.next_conversation(T).await.unwrap();
    client.send_stop().await.unwrap();
    assert_eq!(wait_telnyx_close(&mut client).await.0, Some(1000));
    conv.wait_closed(T).await.unwrap();
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    let got = conv.user_audio();
    assert!(
        got == frames.concat(),
        "caller frames lost or reordered: the agent got frames {:?}",
        got.chunks(160).map(|f| f[0] - 1).collect::<Vec<_>>()
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"telnyx\",kind=\"out_of_order\"}"
        ),
        0.0
    );
}
